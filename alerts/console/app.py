"""``create_app``: the dispatcher console as one FastAPI application.

The pipeline (``gridwatch run``) builds it on its own storage and registry and serves it
with uvicorn; ``gridwatch console`` serves it alone. Everything the browser loads comes
from ``alerts/console/static`` (no CDN, works offline), under a Content-Security-Policy
that allows nothing but this origin. The OpenAPI document is at ``/api/openapi.json``
(signed in, like every other API path); the Swagger/ReDoc pages are off because they
load their scripts from a CDN.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from alerts.console import routes_alerts, routes_auth, routes_devices, routes_live, routes_plans
from alerts.console.auth import Authenticator
from alerts.console.deps import Console, principal
from alerts.console.errors import HttpError
from alerts.console.hub import EventHub
from alerts.console.options import ConsoleOptions
from alerts.console.queries import CountsCache
from alerts.model import NotFoundError, RequestError, TransitionError
from alerts.plans import PlansFile
from alerts.service import AlertService
from gridwatch.clock import Clock, SystemClock
from gridwatch.errors import RegistryError, StorageError
from gridwatch.registry import Registry
from storage.engine import Storage

log = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; media-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_HEADERS: Final = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SecurityHeaders:
    """Pure ASGI (streams pass straight through): hardening headers on every response,
    and ``no-store`` on API answers so no cache keeps alert data."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_api = str(scope.get("path", "")).startswith("/api/")

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in _HEADERS if k not in present]
                if is_api and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    """Readable errors that never echo the input back (it may be a password)."""
    errors = []
    parts = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ())]
        msg = str(e.get("msg", "invalid"))
        errors.append({"loc": loc, "msg": msg, "type": e.get("type")})
        parts.append(f"{'.'.join(loc)}: {msg}")
    return "; ".join(parts) or "invalid request", errors


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(HttpError)
    async def _http(request: Request, exc: HttpError) -> JSONResponse:
        headers = {}
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="gridwatch"'
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(exc.retry_after_s)
        return _error(exc.status, exc.message, headers)

    @app.exception_handler(NotFoundError)
    async def _not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(RegistryError)
    async def _registry(request: Request, exc: RegistryError) -> JSONResponse:
        return _error(404, f"{exc}; or it is outside your grids")

    @app.exception_handler(TransitionError)
    async def _conflict(request: Request, exc: TransitionError) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(RequestError)
    async def _request(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "message": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, errors = _validation_message(exc)
        return JSONResponse({"detail": errors, "message": message}, status_code=422)

    @app.exception_handler(StorageError)
    async def _storage(request: Request, exc: StorageError) -> JSONResponse:
        log.error(
            "storage refused a console request", extra={"path": request.url.path, "error": str(exc)}
        )
        return _error(503, "the alert store is unavailable; try again shortly")


def create_app(
    storage: Storage,
    registry: Registry,
    *,
    service: AlertService | None = None,
    clock: Clock | None = None,
    options: ConsoleOptions | None = None,
    plans: PlansFile | None = None,
) -> FastAPI:
    """The console app on ``storage`` (migrated) for ``registry``'s grids.

    ``service`` defaults to an ``AlertService`` on the same storage, registry and clock;
    pass the pipeline's own to share its plans file. ``app.state.console.hub.notify()``
    wakes the live feed at once (call it after writing alerts in the same process).
    """
    clock = clock or (service.clock if service is not None else SystemClock())
    options = options or ConsoleOptions()
    service = service or AlertService(storage, registry, plans=plans, clock=clock)
    hub = EventHub(storage, clock, options)
    ctx = Console(
        storage=storage,
        registry=registry,
        service=service,
        auth=Authenticator(storage, clock, options),
        hub=hub,
        clock=clock,
        options=options,
        counts=CountsCache(storage),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(hub.stop)

    app = FastAPI(
        title="gridwatch dispatcher console",
        version="1",
        summary="Graded alerts per grid, lifecycle actions, emergency plans, live feed.",
        description=(
            "Authenticate with the session cookie from `POST /api/auth/login` (then send "
            "`X-CSRF-Token` on POST requests) or with a bearer token from "
            "`POST /api/auth/tokens` (`Authorization: Bearer gwt_...`). Every answer is "
            "limited to the grids of the signed-in user."
        ),
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.console = ctx
    _install_handlers(app)
    app.include_router(routes_auth.public)
    app.include_router(routes_auth.private)
    app.include_router(routes_alerts.router)
    app.include_router(routes_plans.router)
    app.include_router(routes_devices.router)
    app.include_router(routes_live.router)

    @app.get("/api/openapi.json", include_in_schema=False, dependencies=[Depends(principal)])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/api/health", include_in_schema=False)
    def health() -> dict[str, Any]:
        return {"ok": True, "live_feed": hub.running}

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(SecurityHeaders)
    return app
