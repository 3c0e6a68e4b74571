"""``GET /api/events``: the live feed as Server-Sent Events.

Events: ``hello`` (on connect: fetch everything), ``alert`` (an audit event of an alert
in your scope: opened, upgraded, acknowledged, ...), ``plan`` (an activation touching
your grids changed), ``resync`` (too much happened: fetch everything), and
``session_ended`` (sign in again). The stream re-checks its session every
``session_check_s`` and ends when it expired or was revoked; an open stream counts as
use of the session (a console on a wall screen stays signed in for the shift).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from alerts.console.auth import AuthError
from alerts.console.deps import Console, Principal, console, principal
from alerts.console.errors import HttpError
from alerts.console.hub import Subscriber, sse

router = APIRouter(prefix="/api", tags=["live"], dependencies=[Depends(principal)])

Ctx = Annotated[Console, Depends(console)]
Who = Annotated[Principal, Depends(principal)]


async def _stream(ctx: Console, who: Principal, sub: Subscriber) -> AsyncIterator[str]:
    opts = ctx.options
    auth = who.authenticated
    loop = asyncio.get_running_loop()
    next_check = loop.time() + opts.session_check_s
    try:
        yield "retry: 2000\n\n"
        yield sse("hello", {"user": who.name, "now_ms": ctx.clock.now_ms()})
        while True:
            timeout = max(0.05, min(opts.keepalive_s, next_check - loop.time()))
            try:
                message = await asyncio.wait_for(sub.queue.get(), timeout=timeout)
            except TimeoutError:
                message = ": keepalive\n\n"
            if message is None:
                return
            yield message
            if loop.time() >= next_check:
                next_check = loop.time() + opts.session_check_s
                try:
                    await anyio.to_thread.run_sync(ctx.auth.authenticate, auth.secret, auth.via)
                except AuthError as exc:
                    yield sse("session_ended", {"reason": exc.message})
                    return
    finally:
        ctx.hub.unsubscribe(sub)


@router.get(
    "/events",
    summary="Live feed (text/event-stream) of alert and plan changes in your scope",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 503: {"description": "busy"}},
)
async def events(request: Request, who: Who, ctx: Ctx) -> StreamingResponse:
    if not ctx.hub.running:
        # Served without its lifespan (mounted in another app that does not forward it).
        raise HttpError(503, "the live feed is not running: start app.state.console.hub")
    sub = ctx.hub.subscribe(who.access, who.authenticated.session.id)
    if sub is None:
        raise HttpError(503, "too many live views open or the console is stopping; retry")
    return StreamingResponse(
        _stream(ctx, who, sub),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
