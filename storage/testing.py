"""Test helpers every stage can reuse to run its storage tests on both backends.

``temp_storage("postgres" | "sqlite", ...)`` yields a migrated ``Storage`` in a place of
its own (a unique PostgreSQL schema on the ``test`` database, or a temp SQLite file) and
removes it afterwards. ``TcpProxy`` sits between a client and PostgreSQL so a test can
cut the database off and bring it back without touching the shared server.

Typical fixture (see ``tests/storage/conftest.py``)::

    @pytest.fixture(params=["postgres", "sqlite"])
    def storage(request, tmp_path, pg_url):
        with temp_storage(request.param, pg_url=pg_url, tmp_dir=tmp_path) as s:
            yield s
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt

from gridwatch.batch import ReadingBatch
from gridwatch.domain import FIELDS, DeviceKind
from gridwatch.registry import Registry
from storage.engine import MIGRATIONS_ROOT, Storage, open_storage
from storage.migrate import discover

log = logging.getLogger(__name__)

PG_TEST_URL = os.environ.get("GRIDWATCH_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS: tuple[Literal["postgres"], Literal["sqlite"]] = ("postgres", "sqlite")


def unique_schema(prefix: str = "gwt") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def pg_schema(pg_url: str = PG_TEST_URL, prefix: str = "gwt") -> Iterator[str]:
    """A fresh PostgreSQL schema name, created on entry and dropped (CASCADE) on exit."""
    import psycopg

    schema = unique_schema(prefix)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            # Kill stragglers (a writer thread a failing test left behind) so DROP never hangs.
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND datname = current_database() "
                "AND application_name LIKE %s",
                (f"%/{schema}",),
            )
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.contextmanager
def sqlite_url(tmp_dir: Path | str | None = None, name: str = "gridwatch.db") -> Iterator[str]:
    """A ``sqlite:///`` URL of a file in ``tmp_dir`` (or a new temp dir removed on exit)."""
    if tmp_dir is not None:
        yield f"sqlite:///{Path(tmp_dir).resolve() / name}"
        return
    with tempfile.TemporaryDirectory(prefix="gwt-sqlite-") as d:
        yield f"sqlite:///{Path(d) / name}"


@contextlib.contextmanager
def temp_storage(
    backend: Literal["postgres", "sqlite"],
    *,
    pg_url: str = PG_TEST_URL,
    tmp_dir: Path | str | None = None,
    migrate: bool = True,
    migrations_dir: Path | str | None = None,
) -> Iterator[Storage]:
    """A migrated (unless ``migrate=False``) storage of ``backend`` that vanishes on exit."""
    if backend == "postgres":
        with pg_schema(pg_url) as schema:
            storage = open_storage(pg_url, schema=schema)
            try:
                if migrate:
                    storage.migrate(migrations_dir)
                yield storage
            finally:
                storage.close()
    elif backend == "sqlite":
        with sqlite_url(tmp_dir, name=f"gridwatch-{uuid.uuid4().hex[:8]}.db") as url:
            storage = open_storage(url)
            try:
                if migrate:
                    storage.migrate(migrations_dir)
                yield storage
            finally:
                storage.close()
                path = Path(url.removeprefix("sqlite:///"))
                for suffix in ("", "-wal", "-shm"):
                    path.with_name(path.name + suffix).unlink(missing_ok=True)
    else:
        raise ValueError(f"backend must be 'postgres' or 'sqlite', got {backend!r}")


def migrations_through(
    backend: Literal["postgres", "sqlite"], version: int, dest: Path | str
) -> Path:
    """A directory holding ``backend``'s migrations up to ``version``: the schema an
    older release left, to upgrade from in a test or to compare against in a bench."""
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    for mig in discover(MIGRATIONS_ROOT / backend):
        if mig.version <= version:
            shutil.copy(mig.path, out)
    return out


class TcpProxy:
    """A loopback TCP proxy that can cut every connection and refuse new ones on demand.

    Stands in for a database outage: ``cut()`` closes all proxied connections (the
    client sees the server vanish mid-COPY) and makes new connections fail, ``restore()``
    accepts again. One owned, named thread; ``close()`` stops it.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._cut = False
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(
            target=self._run, name=f"tcp-proxy-{self.port}", daemon=True
        )
        self._thread.start()

    @classmethod
    def for_url(cls, url: str) -> tuple[TcpProxy, str]:
        """A proxy in front of a PostgreSQL URL's host:port, and the URL through it."""
        parts = urlsplit(url)
        proxy = cls(parts.hostname or "127.0.0.1", parts.port or 5432)
        user = f"{parts.username}@" if parts.username else ""
        netloc = f"{user}127.0.0.1:{proxy.port}"
        return proxy, urlunsplit(parts._replace(netloc=netloc))

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._peers) // 2

    def cut(self) -> None:
        """Drop every proxied connection and refuse new ones until ``restore()``."""
        with self._lock:
            self._cut = True
            socks = list(self._peers)
            self._peers.clear()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self._wake()
        log.info("proxy cut", extra={"port": self.port, "connections": len(socks) // 2})

    def restore(self) -> None:
        with self._lock:
            self._cut = False
        log.info("proxy restored", extra={"port": self.port})

    def close(self) -> None:
        self.cut()
        self._stop.set()
        self._wake()
        self._thread.join(timeout=5)
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.5):
                if key.data == "wake":
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    self._drop_closed()
                elif key.fileobj is self._listener:
                    self._accept()
                else:
                    self._pump(key.fileobj)  # type: ignore[arg-type]
        for s in list(self._sel.get_map().values()):
            if s.fileobj not in (self._listener, self._wake_r):
                with contextlib.suppress(OSError):
                    s.fileobj.close()  # type: ignore[union-attr]

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        with self._lock:
            refused = self._cut
        if refused:
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            refused = self._cut  # cut while we were connecting upstream: it must not survive
            if not refused:
                self._peers[client] = upstream
                self._peers[upstream] = client
        if refused:
            client.close()
            upstream.close()
            return
        self._sel.register(client, selectors.EVENT_READ, "peer")
        self._sel.register(upstream, selectors.EVENT_READ, "peer")

    def _pump(self, sock: socket.socket) -> None:
        with self._lock:
            other = self._peers.get(sock)
        data = b""
        if other is not None:
            try:
                data = sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
        if data and other is not None:
            try:
                other.setblocking(True)
                other.sendall(data)
                other.setblocking(False)
                return
            except OSError:
                pass
        self._close_pair(sock, other)

    def _close_pair(self, sock: socket.socket, other: socket.socket | None) -> None:
        with self._lock:
            self._peers.pop(sock, None)
            if other is not None:
                self._peers.pop(other, None)
        for s in (sock, other):
            if s is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(s)
            with contextlib.suppress(OSError):
                s.close()

    def _drop_closed(self) -> None:
        """Close sockets that ``cut()`` detached from the peer table."""
        with self._lock:
            live = set(self._peers)
        for key in list(self._sel.get_map().values()):
            s = key.fileobj
            if key.data == "peer" and s not in live:
                self._close_pair(s, None)  # type: ignore[arg-type]


def synthetic_batch(
    registry: Registry,
    kind: DeviceKind,
    *,
    start_ms: int,
    rounds: int = 1,
    interval_ms: int = 10_000,
    seed: int = 0,
    nan_share: float = 0.2,
) -> ReadingBatch:
    """``rounds`` readings from every device of ``kind``, one round per ``interval_ms``.

    Devices report in a shuffled order within a round (as over MQTT); optional fields are
    NaN in ``nan_share`` of rows; values are inside each field's physical range.
    """
    rng = np.random.default_rng(seed)
    devs = registry.devices_of_kind(kind)
    if devs.size == 0:
        return ReadingBatch.empty(kind)
    device = np.concatenate([rng.permutation(devs) for _ in range(rounds)]).astype(np.int32)
    offsets = rng.integers(0, interval_ms, device.size)
    ts = start_ms + np.repeat(np.arange(rounds, dtype=np.int64) * interval_ms, devs.size) + offsets
    fields: dict[str, npt.NDArray[Any]] = {}
    for spec in FIELDS[kind]:
        if spec.dtype == "int64":
            col: npt.NDArray[Any] = rng.integers(0, 1000, device.size).astype(np.int64)
        else:
            hi = min(spec.hi, spec.lo + 100.0)
            col = rng.uniform(spec.lo, hi, device.size).astype(spec.dtype)
            if not spec.required:
                col[rng.random(device.size) < nan_share] = np.nan
        fields[spec.name] = col
    return ReadingBatch(kind, device, ts.astype(np.int64), fields)


def split_batch(batch: ReadingBatch, size: int) -> list[ReadingBatch]:
    """``batch`` cut into consecutive batches of at most ``size`` rows."""
    return [batch.take(np.arange(i, min(i + size, len(batch)))) for i in range(0, len(batch), size)]
