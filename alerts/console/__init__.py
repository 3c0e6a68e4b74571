"""The dispatcher web console: a FastAPI app over the alerts API, with its own static UI.

>>> from alerts.console import create_app          # doctest: +SKIP
>>> app = create_app(storage, registry)             # doctest: +SKIP

See ``docs/console.md``. ``ConsoleServer`` runs it with uvicorn in an owned thread.
"""

from __future__ import annotations

from alerts.console.app import create_app
from alerts.console.options import ConsoleOptions
from alerts.console.server import ConsoleServer

__all__ = ["ConsoleOptions", "ConsoleServer", "create_app"]
