"""Dead-letter records: input gridwatch refused, kept with the reason, never dropped.

Ingest produces them, storage keeps them, the CLI and console list them. One record
stands for one (message, reason): a batch with 40 out-of-range rows gives one record
with ``rows=40`` and the first offending rows in ``detail``, not 40 Python objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

EXCERPT_BYTES: Final = 512
"""How much of a refused payload is kept: enough to recognise it, bounded in storage."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    reason: str
    excerpt: bytes
    received_ms: int
    rows: int = 1
    detail: str = ""

    @classmethod
    def of(
        cls,
        topic: str,
        reason: str,
        payload: bytes,
        received_ms: int,
        *,
        rows: int = 1,
        detail: str = "",
    ) -> DeadLetter:
        """A record with the payload cut to ``EXCERPT_BYTES`` and the detail to 1,000 chars."""
        return cls(
            topic[:512], reason, bytes(payload[:EXCERPT_BYTES]), received_ms, rows, detail[:1000]
        )

    def excerpt_text(self) -> str:
        """The excerpt as text for humans; undecodable bytes shown as escapes."""
        return self.excerpt.decode("utf-8", "backslashreplace")
