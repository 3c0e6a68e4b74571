"""The live feed: one poller watches the alert tables, every open event stream gets what
its user may see.

Alerts are written by the pipeline, possibly in another process, so the console cannot
rely on in-process callbacks: one owned thread (``console-live-feed``, started with the
app and stopped with it) polls a four-number change token every ``poll_interval_s``
(0.25 s) and, when it moved, reads the new audit events and plan changes once for all
subscribers. ``notify()`` lets an embedding pipeline wake it at once after it wrote
alerts. Each subscriber gets only the events of alerts and plans inside its scope,
handed to the event loop that serves its stream (an app may be served by several loops:
uvicorn workers share nothing, but tests run several clients on one app). A subscriber
too slow to drain its queue gets one ``resync`` instead of an unbounded backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from alerts.console import queries
from alerts.console.access import Access
from alerts.console.options import ConsoleOptions
from gridwatch.clock import Clock
from storage.engine import Storage

log = logging.getLogger(__name__)

MAX_EVENTS_PER_POLL: Final = 1000
"""More new audit events than this in one poll (a storm): subscribers resync instead."""
QUEUE_SIZE: Final = 256
PLAN_MEMORY_MS: Final = 3_600_000
"""A closed plan is reported for an hour after closing, then forgotten by the feed."""
MAX_BACKOFF_S: Final = 5.0
GAP_TTL_S: Final = 10.0
"""How long a hole in the event ids is watched for a late commit (then: a rollback)."""

Message = tuple[str, Any, "frozenset[str] | None", "str | None", "int | None"]


def sse(event: str, data: Any, event_id: int | None = None) -> str:
    """One Server-Sent Events message (``data`` as a single JSON line)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {orjson.dumps(data).decode()}\n\n"


@dataclass(eq=False, slots=True)
class Subscriber:
    """One open stream: its queue lives on ``loop``; only that loop touches it."""

    access: Access
    session_id: int
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[str | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=QUEUE_SIZE)
    )
    overflowed: bool = False

    def offer(self, message: str | None) -> None:
        """Runs on ``loop``. ``None`` ends the stream."""
        if message is None:  # close after what is queued (make room if it is full)
            if self.queue.full():
                while not self.queue.empty():
                    self.queue.get_nowait()
            self.queue.put_nowait(None)
            return
        if self.overflowed:
            if not self.queue.empty():
                return
            self.overflowed = False  # the client read the resync: deliver again
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.overflowed = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(sse("resync", {"reason": "too many events"}))

    def send(self, message: str | None) -> None:
        """From any thread: hand ``message`` to the stream's loop."""
        with contextlib.suppress(RuntimeError):  # the loop closed: the stream is gone
            self.loop.call_soon_threadsafe(self.offer, message)


class EventHub:
    """Owns the poller thread and the set of open event streams.

    ``start``/``stop`` are reference counted: every server (or test client) of the app
    starts it in its lifespan; the thread runs while at least one is up.
    """

    def __init__(self, storage: Storage, clock: Clock, options: ConsoleOptions) -> None:
        self.storage = storage
        self.clock = clock
        self.options = options
        self._subs: set[Subscriber] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._users = 0
        self._token: queries.Token | None = None
        self._cursor = 0
        self._gaps: dict[int, float] = {}
        self._plans: dict[int, queries.PlanState] = {}
        self._closing = False
        self.polls = 0
        self.errors = 0

    # -- life ---------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self._users += 1
            self._closing = False
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._token = None  # re-read the cursor: never replay what happened while down
            self._thread = threading.Thread(target=self._run, name="console-live-feed", daemon=True)
            self._thread.start()
        log.info("live feed started", extra={"poll_interval_s": self.options.poll_interval_s})

    def stop(self, timeout_s: float = 10.0) -> None:
        """The last user gone: end every open stream and the poller thread."""
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users:
                return
            thread, self._thread = self._thread, None
        self.close_streams()
        self._stop.set()
        self._wake.set()
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.error("live feed thread did not stop", extra={"timeout_s": timeout_s})
        log.info("live feed stopped", extra={"polls": self.polls, "errors": self.errors})

    def close_streams(self) -> None:
        """Thread-safe: end every open stream (before a server shutdown)."""
        with self._lock:
            self._closing = True
            subs = list(self._subs)
        for sub in subs:
            sub.send(None)

    def notify(self) -> None:
        """Thread-safe: something changed, poll now instead of at the next tick."""
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    # -- subscribers --------------------------------------------------------------------

    def subscribe(self, access: Access, session_id: int) -> Subscriber | None:
        """A new stream's queue on the running loop; None when closing or at the limit."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closing or len(self._subs) >= self.options.max_subscribers:
                return None
            sub = Subscriber(access, session_id, loop)
            self._subs.add(sub)
        self._wake.set()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subs.discard(sub)

    def end_session(self, session_id: int) -> None:
        """Close the streams of a session that signed out."""
        with self._lock:
            subs = [s for s in self._subs if s.session_id == session_id]
        for sub in subs:
            sub.send(sse("session_ended", {"reason": "signed out"}))
            sub.send(None)

    # -- polling (the poller thread) -----------------------------------------------------

    def _run(self) -> None:
        backoff = self.options.poll_interval_s
        while not self._stop.is_set():
            try:
                if self._token is None:
                    self._prime()
                messages = self._poll()
                backoff = self.options.poll_interval_s
                self.polls += 1
                for message in messages:
                    self._deliver(*message)
            except Exception:
                # The database is away; keep the streams open and retry, slower.
                self.errors += 1
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                log.exception("live feed poll failed", extra={"retry_s": backoff})
            self._wake.wait(backoff)
            self._wake.clear()

    def _prime(self) -> None:
        self._token = queries.change_token(self.storage)
        self._cursor = self._token.last_event
        self._gaps.clear()
        self._plans = queries.plan_states(self.storage, self.clock.now_ms() - PLAN_MEMORY_MS)

    def _poll(self) -> list[Message]:
        """New messages since the last poll as (kind, data, grids, street, id).

        ``grids``/``street`` say who may receive it: subscribers whose scope sees one of
        ``grids`` (or, for a street-wide alert, ``street``); ``grids=None``: everyone.
        """
        token = queries.change_token(self.storage)
        prev = self._token
        self._token = token
        out: list[Message] = []
        if prev is None:
            return out
        if token.last_event != prev.last_event or self._gaps:
            out += self._alert_events(token.last_event)
        if token.plans_part() != prev.plans_part():
            out += self._plan_changes()
        return out

    def _alert_events(self, newest: int) -> list[Message]:
        """Audit events not delivered yet, including ones that committed late.

        Ids come from a sequence in the order transactions *start* writing, not commit: a
        dispatcher batch may commit after a console acknowledgement with a higher id. A
        hole below the cursor is watched for ``GAP_TTL_S`` so a late event is still
        delivered once (a hole that never fills was a rollback).
        """
        now = time.monotonic()
        self._gaps = {i: t for i, t in self._gaps.items() if now - t < GAP_TTL_S}
        if not self._subs:  # nobody listens: just move the cursor
            self._cursor = max(self._cursor, newest)
            self._gaps.clear()
            return []
        start = min(self._gaps, default=self._cursor + 1)
        events = queries.events_after(self.storage, start - 1, MAX_EVENTS_PER_POLL + 1)
        if len(events) > MAX_EVENTS_PER_POLL and self._gaps:  # give up on old holes first
            self._gaps.clear()
            events = queries.events_after(self.storage, self._cursor, MAX_EVENTS_PER_POLL + 1)
        if len(events) > MAX_EVENTS_PER_POLL:
            self._cursor = max(self._cursor, newest)
            self._gaps.clear()
            return [("resync", {"reason": "alert storm"}, None, None, None)]
        fresh = [e for e in events if e["event_id"] > self._cursor or e["event_id"] in self._gaps]
        ids = {int(e["event_id"]) for e in events}
        top = max(ids, default=self._cursor)
        for i in range(self._cursor + 1, top):
            if i not in ids:
                self._gaps.setdefault(i, now)
        for i in ids:
            self._gaps.pop(i, None)
        self._cursor = max(self._cursor, top)
        out: list[Message] = []
        for e in fresh:
            grids = frozenset() if e["grid"] is None else frozenset({e["grid"]})
            out.append(("alert", e, grids, e["street"], int(e["event_id"])))
        return out

    def _plan_changes(self) -> list[Message]:
        now = self.clock.now_ms()
        states = queries.plan_states(self.storage, now - PLAN_MEMORY_MS)
        old = self._plans
        self._plans = states
        changed = [a for a, s in states.items() if old.get(a) != s]
        changed += [a for a in old if a not in states]
        out: list[Message] = []
        for aid in sorted(changed):
            grids = frozenset(queries.plan_grids(self.storage, aid))
            s = states.get(aid)
            data = {
                "activation_id": aid,
                "state": s.state if s else "closed",
            }
            out.append(("plan", data, grids, None, None))
        return out

    def _deliver(
        self,
        kind: str,
        data: Any,
        grids: frozenset[str] | None,
        street: str | None,
        event_id: int | None,
    ) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            if grids is not None and not _sees(sub.access, grids, street, kind):
                continue
            payload = data
            if kind == "plan" and grids is not None and sub.access.scope.grids is not None:
                payload = {**data, "grids": sorted(grids & sub.access.scope.grids)}
            sub.send(sse(kind, payload, event_id))


def _sees(access: Access, grids: frozenset[str], street: str | None, kind: str) -> bool:
    scope = access.scope
    if scope.grids is None:
        return True
    if grids:
        return bool(grids & scope.grids)
    # a street-wide alert (no grid) goes to those who see the street's area alerts
    return kind == "alert" and street is not None and street in scope.area_streets
