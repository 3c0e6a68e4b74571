"""What every endpoint depends on: the console's parts and the authenticated principal.

``principal`` is the one gate: it reads the bearer token or the session cookie, checks
the session, and for state-changing methods checks the request's origin and (for
cookie sessions) the CSRF token. Every router except sign-in and the health probe
declares it, and ``tests/console/test_scope.py`` enumerates the routes to prove it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from fastapi import Request

from alerts.console.access import Access, access_for
from alerts.console.auth import (
    COOKIE_NAME,
    CSRF_HEADER,
    Authenticated,
    Authenticator,
    AuthError,
    csrf_ok,
)
from alerts.console.hub import EventHub
from alerts.console.options import ConsoleOptions
from alerts.console.queries import CountsCache
from alerts.service import AlertService
from gridwatch.clock import Clock
from gridwatch.registry import Registry
from storage.engine import Storage

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Console:
    """The parts one app instance works with (kept on ``app.state.console``)."""

    storage: Storage
    registry: Registry
    service: AlertService
    auth: Authenticator
    hub: EventHub
    clock: Clock
    options: ConsoleOptions
    counts: CountsCache


@dataclass(frozen=True, slots=True)
class Principal:
    authenticated: Authenticated
    access: Access

    @property
    def name(self) -> str:
        return self.access.name


def console(request: Request) -> Console:
    ctx: Console = request.app.state.console
    return ctx


def remote_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def check_origin(request: Request, options: ConsoleOptions) -> None:
    """Refuse a state-changing request a browser sent from another site."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise AuthError(403, "cross-site request refused")
    origin = request.headers.get("origin")
    if origin is None:
        return  # not a browser, or a same-origin request of an old one
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin != own and origin not in options.trusted_origins:
        raise AuthError(403, f"request from another site refused (Origin {origin[:100]})")


def credentials(request: Request) -> tuple[str, str]:
    """(secret, via) from ``Authorization: Bearer`` or the session cookie."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise AuthError(401, "the Authorization header must be 'Bearer <token>'")
        return secret.strip(), "bearer"
    cookie = request.cookies.get(COOKIE_NAME)
    if not cookie:
        raise AuthError(401, "sign in first (session cookie or bearer token required)")
    return cookie, "cookie"


def principal(request: Request) -> Principal:
    """The signed-in user of this request; raises ``AuthError`` (401/403) otherwise."""
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    ctx = console(request)
    secret, via = credentials(request)
    auth = ctx.auth.authenticate(secret, "bearer" if via == "bearer" else "cookie")
    if request.method not in SAFE_METHODS:
        check_origin(request, ctx.options)
        if via == "cookie" and not csrf_ok(secret, request.headers.get(CSRF_HEADER)):
            raise AuthError(403, "missing or wrong X-CSRF-Token header; reload the console")
    found = Principal(auth, access_for(auth.user, ctx.registry))
    request.state.principal = found
    return found
