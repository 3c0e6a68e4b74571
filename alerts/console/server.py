"""Serving the console with uvicorn: blocking (``serve``) or in an owned thread
(``ConsoleServer``, for the pipeline and for tests).

Open event streams never finish on their own, so a plain uvicorn shutdown would wait
for its graceful timeout on every open console. Both ways first ask the live feed to end
its streams, then stop the server: shutdown takes well under a second.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from alerts.console.deps import Console

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, console: Console) -> None:
        super().__init__(config)
        self._console = console

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._console.hub.close_streams()
        super().handle_exit(sig, frame)


def _config(app: FastAPI, host: str, port: int, **kwargs: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        timeout_graceful_shutdown=2,
        log_config=None,  # the CLI configured logging (JSON lines); uvicorn keeps it
        server_header=False,
        **kwargs,
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port`` (port 0: any free port).

    ``IPPROTO_TCP`` is explicit on purpose: asyncio turns Nagle off (TCP_NODELAY) only for
    sockets whose ``proto`` says TCP; with ``proto=0`` every keep-alive response would wait
    ~40 ms for the client's delayed ACK between its header and body segments.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(app: FastAPI, sock: socket.socket, **kwargs: Any) -> None:
    """Serve on a bound socket until SIGINT/SIGTERM (main thread)."""
    host, port = sock.getsockname()[:2]
    server = _Server(_config(app, host, port, **kwargs), app.state.console)
    log.info("console serving", extra={"url": url_of(sock)})
    server.run(sockets=[sock])


class ConsoleServer:
    """uvicorn in one named thread: ``start()`` returns once it accepts connections."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> None:
        self.app = app
        self.host = host
        self._sock = bind(host, port)
        self.port: int = self._sock.getsockname()[1]
        self._server = _Server(_config(app, host, self.port, **kwargs), app.state.console)
        self._thread = threading.Thread(
            target=self._run, name=f"console-http-{self.port}", daemon=True
        )
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return url_of(self._sock)

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # surfaced by start()/stop() in the owner's thread
            self._error = exc
            log.exception("console server crashed")

    def start(self, timeout_s: float = 10.0) -> ConsoleServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"console server failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"console server did not start within {timeout_s} s")
            time.sleep(0.01)
        log.info("console serving", extra={"url": self.url})
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.app.state.console.hub.close_streams()
        self._server.should_exit = True
        self._thread.join(timeout_s)
        self._sock.close()
        if self._thread.is_alive():
            raise RuntimeError(f"console server did not stop within {timeout_s} s")

    def __enter__(self) -> ConsoleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
