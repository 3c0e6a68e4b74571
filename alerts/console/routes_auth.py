"""Sign-in, sign-out, API tokens and "who am I"."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from alerts.console.access import Access, access_for
from alerts.console.auth import COOKIE_NAME, csrf_token
from alerts.console.deps import Console, Principal, check_origin, console, principal, remote_of
from alerts.console.schemas import AreaGrid, LoginIn, MeOut, OkOut, TokenIn, TokenOut
from gridwatch.domain import AlertKind
from gridwatch.registry import Registry
from storage.users import SessionRecord

public = APIRouter(prefix="/api/auth", tags=["auth"])
private = APIRouter(prefix="/api", tags=["auth"], dependencies=[Depends(principal)])

Ctx = Annotated[Console, Depends(console)]
Who = Annotated[Principal, Depends(principal)]


def _me(access: Access, registry: Registry, session: SessionRecord, csrf: str | None) -> MeOut:
    grids = [
        AreaGrid(id=g, community=registry.community_of_grid(g), street=registry.street_of_grid(g))
        for g in access.visible_grids(registry)
    ]
    if access.can_run_plans:
        scope = access.scope
        streets = (
            [str(s) for s in registry.street_ids.tolist()]
            if scope.grids is None
            else sorted(q for lv, q in scope.supervised if lv == "street")
        )
    else:
        streets = []
    return MeOut(
        name=access.name,
        role=access.role,
        street=access.street,
        grids=grids,
        streets=streets,
        can_run_plans=access.can_run_plans,
        csrf_token=csrf,
        session_expires_ms=session.expires_ms,
        alert_kinds=[k.value for k in AlertKind],
    )


@public.post(
    "/login",
    response_model=MeOut,
    summary="Sign in with name and password; sets the HttpOnly session cookie",
    responses={401: {"description": "wrong name or password"}, 429: {"description": "locked"}},
)
async def login(body: LoginIn, request: Request, response: Response, ctx: Ctx) -> MeOut:
    check_origin(request, ctx.options)
    secret, session, user = await run_in_threadpool(
        ctx.auth.login, body.name, body.password, remote_of(request), kind="cookie"
    )
    access = access_for(user, ctx.registry)
    secure = ctx.options.cookie_secure
    response.set_cookie(
        COOKIE_NAME,
        secret,
        max_age=round(ctx.options.session_ttl_s),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" if secure is None else secure,
    )
    response.headers["Cache-Control"] = "no-store"
    return _me(access, ctx.registry, session, csrf_token(secret))


@public.post(
    "/tokens",
    response_model=TokenOut,
    status_code=201,
    summary="Create an API bearer token (for integrators) from name and password",
    responses={401: {"description": "wrong name or password"}, 429: {"description": "locked"}},
)
async def create_token(body: TokenIn, request: Request, response: Response, ctx: Ctx) -> TokenOut:
    check_origin(request, ctx.options)
    secret, session, _user = await run_in_threadpool(
        ctx.auth.login,
        body.name,
        body.password,
        remote_of(request),
        kind="bearer",
        label=body.label,
        ttl_s=body.ttl_s,
    )
    response.headers["Cache-Control"] = "no-store"
    return TokenOut(token=secret, token_id=session.id, expires_ms=session.expires_ms)


@private.post("/auth/logout", response_model=OkOut, summary="End this session or token")
def logout(who: Who, ctx: Ctx, response: Response) -> OkOut:
    ctx.auth.logout(who.authenticated)
    ctx.hub.end_session(who.authenticated.session.id)
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
    return OkOut()


@private.get("/me", response_model=MeOut, summary="The signed-in user, their grids and CSRF token")
def me(who: Who, ctx: Ctx, response: Response) -> MeOut:
    auth = who.authenticated
    response.headers["Cache-Control"] = "no-store"
    csrf = csrf_token(auth.secret) if auth.via == "cookie" else None
    return _me(who.access, ctx.registry, auth.session, csrf)
