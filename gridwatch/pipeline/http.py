"""A tiny HTTP endpoint per pipeline process: ``/metrics``, ``/status``, ``/healthz``.

``/metrics`` is the Prometheus text format of the process's registry; ``/status`` the same
JSON as the status file; ``/healthz`` answers 200 while the pipeline is healthy and 503
otherwise (for a load balancer or a container runtime). Served by the standard library's
threading server on one owned, named thread; ``stop`` shuts it down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class MetricsServer:
    """Serves ``registry`` and ``status()`` on ``host:port`` (port 0 = any free port)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        status: Callable[[], dict[str, Any]],
        healthy: Callable[[], bool],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    outer._send(self, 200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif path == "/status":
                    body = orjson.dumps(status(), option=orjson.OPT_SERIALIZE_NUMPY)
                    outer._send(self, 200, "application/json", body)
                elif path == "/healthz":
                    ok = healthy()
                    outer._send(self, 200 if ok else 503, "text/plain", b"ok\n" if ok else b"no\n")
                else:
                    outer._send(self, 404, "text/plain", b"not found\n")

            def log_message(self, format: str, *args: Any) -> None:
                return  # requests are not events worth a log line

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, code: int, ctype: str, body: bytes) -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def start(self) -> MetricsServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"gridwatch-metrics-{self.port}", daemon=True
        )
        self._thread.start()
        log.info("metrics serving", extra={"url": self.url})
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
