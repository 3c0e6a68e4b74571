"""The live feed over a real uvicorn server: scoped alert and plan events, sign-out and
expiry ending a stream, shutdown with streams open, and back-pressure on a slow reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from alerts.console import ConsoleServer, create_app
from alerts.console.auth import COOKIE_NAME
from alerts.console.hub import QUEUE_SIZE, Subscriber, sse
from alerts.model import Scope
from tests.console.conftest import GRID_A, GRID_B, PASSWORD, STREET_A, Env, cheap_options

LIVE = cheap_options(keepalive_s=0.2)
"""Frequent keepalives: a reader thread notices close() within 0.2 s."""


class Stream:
    """Reads one event stream in an owned thread; ``wait_for`` blocks until a match."""

    def __init__(self, base_url: str, cookie: str) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.status: int | None = None
        self.ended = threading.Event()
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._http = httpx.Client(base_url=base_url, timeout=30, cookies={COOKIE_NAME: cookie})
        self._thread = threading.Thread(target=self._read, name="sse-test-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            with contextlib.suppress(httpx.HTTPError), self._http.stream("GET", "/api/events") as r:
                self.status = r.status_code
                kind = ""
                for line in r.iter_lines():  # keepalives every 0.2 s let close() stop it
                    if self._stop.is_set():
                        return
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        with self._cond:
                            self.events.append((kind, json.loads(line[6:])))
                            self._cond.notify_all()
        finally:
            self.ended.set()
            with self._cond:
                self._cond.notify_all()

    def wait_for(
        self, pred: Callable[[str, dict[str, Any]], bool], timeout_s: float = 20
    ) -> dict[str, Any]:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: any(pred(k, d) for k, d in self.events) or self.ended.is_set(), timeout_s
            )
            found = [d for k, d in self.events if pred(k, d)]
        if not ok or not found:
            raise AssertionError(f"no matching event; got {self.events}")
        return found[0]

    def kinds(self) -> list[str]:
        with self._cond:
            return [k for k, _ in self.events]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._http.close()
        if self._thread.is_alive():
            raise AssertionError("stream reader did not stop")


@pytest.fixture
def server(env: Env) -> Iterator[ConsoleServer]:
    app = create_app(env.storage, env.registry, service=env.service, clock=env.clock, options=LIVE)
    srv = ConsoleServer(app).start()
    try:
        yield srv
    finally:
        srv.stop()


def cookie_of(env: Env, name: str) -> str:
    c = env.client()
    r = c.post("/api/auth/login", json={"name": name, "password": PASSWORD})
    assert r.status_code == 200
    return str(r.cookies[COOKIE_NAME])


def test_new_alerts_reach_the_streams_of_their_grid_only(env: Env, server: ConsoleServer) -> None:
    ann = Stream(server.url, cookie_of(env, "ann"))
    carl = Stream(server.url, cookie_of(env, "carl"))
    root = Stream(server.url, cookie_of(env, "root"))
    try:
        for s in (ann, carl, root):
            s.wait_for(lambda k, d: k == "hello")
        b = env.entrapment(GRID_B)
        a = env.entrapment(GRID_A, floor=9)
        server.app.state.console.hub.notify()
        got = ann.wait_for(lambda k, d: k == "alert" and d["alert_id"] == a)
        assert (got["action"], got["grade"], got["grid"], got["kind"]) == (
            "opened",
            "red",
            GRID_A,
            "trapped_passenger",
        )
        carl.wait_for(lambda k, d: k == "alert" and d["alert_id"] == b)
        root.wait_for(lambda k, d: k == "alert" and d["alert_id"] == a)
        root.wait_for(lambda k, d: k == "alert" and d["alert_id"] == b)
        # Acknowledging is an event too, with who did it.
        env.service.ack(a, "ann", Scope.everything())
        acked = ann.wait_for(lambda k, d: k == "alert" and d.get("action") == "acknowledged")
        assert acked["actor"] == "ann" and acked["state"] == "acknowledged"
        assert b not in {d["alert_id"] for k, d in ann.events if k == "alert"}
        assert a not in {d["alert_id"] for k, d in carl.events if k == "alert"}
    finally:
        for s in (ann, carl, root):
            s.close()


def test_plan_events_reach_the_grids_of_the_area(env: Env, server: ConsoleServer) -> None:
    ann = Stream(server.url, cookie_of(env, "ann"))
    carl = Stream(server.url, cookie_of(env, "carl"))
    try:
        ann.wait_for(lambda k, d: k == "hello")
        carl.wait_for(lambda k, d: k == "hello")
        status = env.service.activate_plan(
            "urban_waterlogging", "sue", Scope.everything(), level="street", area=STREET_A
        )
        got = ann.wait_for(lambda k, d: k == "plan")
        assert got == {"activation_id": status.id, "state": "active", "grids": [GRID_A]}
        env.service.ack_plan_task(status.id, GRID_A, "ann", Scope.everything())
        with ann._cond:
            n_before = len([1 for k, _ in ann.events if k == "plan"])
        ann.wait_for(
            lambda k, d: k == "plan" and len([1 for k, _ in ann.events if k == "plan"]) > n_before
        )
        # carl's grid is on another street: nothing about this plan reaches him
        env.entrapment(GRID_B)
        carl.wait_for(lambda k, d: k == "alert")
        assert "plan" not in carl.kinds()
    finally:
        ann.close()
        carl.close()


def test_signing_out_ends_the_stream(env: Env, server: ConsoleServer) -> None:
    cookie = cookie_of(env, "ann")
    s = Stream(server.url, cookie)
    try:
        s.wait_for(lambda k, d: k == "hello")
        with httpx.Client(base_url=server.url, cookies={COOKIE_NAME: cookie}) as http:
            csrf = http.get("/api/me").json()["csrf_token"]
            assert http.post("/api/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
        assert s.wait_for(lambda k, d: k == "session_ended") == {"reason": "signed out"}
        assert s.ended.wait(10)
    finally:
        s.close()


def test_an_expired_session_ends_the_stream(env: Env) -> None:
    app = create_app(
        env.storage,
        env.registry,
        service=env.service,
        clock=env.clock,
        options=cheap_options(session_check_s=0.05, keepalive_s=0.2),
    )
    with ConsoleServer(app) as srv:
        s = Stream(srv.url, cookie_of(env, "ann"))
        try:
            s.wait_for(lambda k, d: k == "hello")
            env.clock.advance(13 * 3600)
            got = s.wait_for(lambda k, d: k == "session_ended")
            assert got == {"reason": "session expired; sign in again"}
            assert s.ended.wait(10)
        finally:
            s.close()


def test_without_a_session_there_is_no_stream(env: Env, server: ConsoleServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/api/events").status_code == 401


def test_stopping_the_server_ends_open_streams(env: Env) -> None:
    app = create_app(env.storage, env.registry, service=env.service, clock=env.clock, options=LIVE)
    srv = ConsoleServer(app).start()
    streams = [Stream(srv.url, cookie_of(env, n)) for n in ("ann", "bob", "sue")]
    for s in streams:
        s.wait_for(lambda k, d: k == "hello")
    assert app.state.console.hub.subscribers == 3
    srv.stop(timeout_s=10)  # raises if uvicorn waited on the streams
    assert all(s.ended.wait(10) for s in streams)
    assert not app.state.console.hub.running
    for s in streams:
        s.close()


def test_a_slow_reader_gets_one_resync_instead_of_a_backlog() -> None:
    async def run() -> list[str | None]:
        sub = Subscriber(access=None, session_id=1, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
        for i in range(QUEUE_SIZE + 50):
            sub.offer(sse("alert", {"i": i}))
        drained = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
        sub.offer(sse("alert", {"i": "after"}))
        drained.append(sub.queue.get_nowait())
        return drained

    drained = asyncio.run(run())
    assert len(drained) == 2
    assert drained[0] is not None and drained[0].startswith("event: resync")
    assert drained[1] is not None and '"after"' in drained[1]


@pytest.mark.parametrize("backend", ["postgres"])  # SQLite serialises writers: no late commits
def test_an_event_that_commits_late_is_still_delivered_once(env: Env) -> None:
    """Event ids are handed out before commit: a batch may commit after a later ack."""
    from alerts.console.hub import EventHub
    from storage import alerts as db

    first = env.entrapment(GRID_A)
    second = env.entrapment(GRID_A, 1)
    hub = EventHub(env.storage, env.clock, LIVE)
    hub._subs.add(object())  # type: ignore[arg-type]  # someone listens
    hub._prime()
    slow = env.storage.connect_raw("slow-writer")
    try:
        # A transaction takes an event id and holds it...
        db.add_events(
            slow,
            env.storage,
            [(first, env.clock.now_ms(), "gridwatch", "late", None, None, None, None)],
        )
        # ...while a later one commits first.
        env.service.ack(second, "ann", Scope.everything())
        got = [m[1]["action"] for m in hub._poll() if m[0] == "alert"]
        assert got == ["acknowledged"]
        slow.commit()
        got = [m[1]["action"] for m in hub._poll() if m[0] == "alert"]
        assert got == ["late"]
        assert [m for m in hub._poll() if m[0] == "alert"] == []  # once
    finally:
        slow.close()


def test_the_listening_socket_says_tcp_so_asyncio_turns_nagle_off() -> None:
    """With ``proto=0`` asyncio skips TCP_NODELAY and keep-alive answers wait ~40 ms."""
    import socket

    from alerts.console.server import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
