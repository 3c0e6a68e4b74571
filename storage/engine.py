"""One storage interface, two backends chosen by URL: PostgreSQL (pooled psycopg 3) and
SQLite (stdlib, WAL), so ``gridwatch run`` needs no server and production gets a real one.

Every feature module (registry, dead letters, readings, queries) talks to a ``Storage``
through ``connection()`` and branches on ``dialect`` only where the SQL differs.
SQL written for both backends uses ``%s`` placeholders; ``Storage.sql`` rewrites them to
``?`` for SQLite.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from gridwatch.errors import StorageError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy as np
    import numpy.typing as npt

    from gridwatch.deadletter import DeadLetter
    from gridwatch.registry import Registry

log = logging.getLogger(__name__)

Dialect = Literal["postgres", "sqlite"]
MIGRATIONS_ROOT = Path(__file__).resolve().parent / "migrations"
DEFAULT_URL = "sqlite:///./data/gridwatch.db"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``: URLs end up in logs and reprs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class Storage(ABC):
    """A database gridwatch owns: migrations, pooled connections, feature methods.

    Feature methods (``save_registry``, ``write_dead_letters``, ...) are thin and live in
    their own modules; the backend classes only know how to connect.
    """

    dialect: ClassVar[Dialect]
    paramstyle: ClassVar[str]

    def __init__(self, url: str) -> None:
        self.url = url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({mask_url(self.url)!r})"

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def connection(self, *, readonly: bool = False) -> Any:
        """Context manager yielding a DB-API connection inside a transaction.

        Commits when the block succeeds, rolls back when it raises. ``readonly`` lets
        SQLite take no write lock (readers never wait for the writer in WAL mode).
        """

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def connect_raw(self, application_name: str = "gridwatch") -> Any:
        """A dedicated connection outside the pool (autocommit off), owned by the caller.

        The reading writer uses one so its long COPY transactions and reconnects never
        starve the pool that queries share.
        """

    def sql(self, query: str) -> str:
        """``query`` with ``%s`` placeholders in this backend's parameter style."""
        return query if self.paramstyle == "%s" else query.replace("%s", "?")

    @property
    def migrations_dir(self) -> Path:
        return MIGRATIONS_ROOT / self.dialect

    def migrate(self, migrations_dir: Path | str | None = None) -> list[str]:
        """Apply pending migrations in version order; returns the names applied ([] if none)."""
        from storage.migrate import apply_migrations

        return apply_migrations(self, Path(migrations_dir or self.migrations_dir))

    # -- features (implemented in their own modules) ---------------------------

    def save_registry(self, registry: Registry) -> npt.NDArray[np.int32]:
        from storage.devices import save_registry

        return save_registry(self, registry)

    def load_registry(self, *, include_retired: bool = False) -> Registry:
        from storage.devices import load_registry

        return load_registry(self, include_retired=include_retired)

    def device_keys(self, registry: Registry) -> npt.NDArray[np.int32]:
        from storage.devices import device_keys

        return device_keys(self, registry)

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        from storage.deadletters import write_dead_letters

        return write_dead_letters(self, letters)

    def dead_letters(
        self, *, reason: str | None = None, since_ms: int | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        from storage.deadletters import dead_letters

        return dead_letters(self, reason=reason, since_ms=since_ms, limit=limit)

    def dead_letter_counts(self, *, since_ms: int | None = None) -> dict[str, tuple[int, int]]:
        from storage.deadletters import dead_letter_counts

        return dead_letter_counts(self, since_ms=since_ms)

    def save_checkpoint(
        self, name: str, arrays: Mapping[str, npt.NDArray[Any]], *, saved_ms: int | None = None
    ) -> None:
        from storage.checkpoints import save_checkpoint

        save_checkpoint(self, name, arrays, saved_ms=saved_ms)

    def load_checkpoint(self, name: str) -> dict[str, npt.NDArray[Any]] | None:
        from storage.checkpoints import load_checkpoint

        return load_checkpoint(self, name)


class PostgresStorage(Storage):
    """PostgreSQL through a ``psycopg_pool.ConnectionPool``; tables live in ``schema``."""

    dialect: ClassVar[Dialect] = "postgres"
    paramstyle: ClassVar[str] = "%s"

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        pool_min: int = 1,
        pool_max: int = 4,
        connect_timeout_s: float = 5.0,
        timescale: str = "auto",
    ) -> None:
        from psycopg_pool import ConnectionPool

        conninfo, url_schema = _split_schema(url)
        schema = schema or url_schema or "public"
        if not _SCHEMA_NAME.match(schema):
            raise StorageError(
                f"schema {schema!r} is not a plain lower-case identifier (a-z, 0-9, _; <= 63)"
            )
        super().__init__(url)
        self.conninfo = conninfo
        self.schema = schema
        self.connect_timeout_s = connect_timeout_s
        self.timescale = timescale
        self._pool = ConnectionPool(
            conninfo,
            min_size=pool_min,
            max_size=pool_max,
            kwargs=self._connect_kwargs("gridwatch"),
            check=ConnectionPool.check_connection,
            open=False,
            name=f"gridwatch-{schema}",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except Exception as exc:  # pool raises PoolTimeout; name the server instead
            self._pool.close()
            raise StorageError(
                f"cannot connect to PostgreSQL at {mask_url(conninfo)}: {exc}"
            ) from exc
        with self._pool.connection() as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')

    def _connect_kwargs(self, application_name: str) -> dict[str, Any]:
        return {
            "options": f"-c search_path={self.schema},public",
            # The schema in the name lets an operator (and test clean-up) find our sessions.
            "application_name": f"{application_name}/{self.schema}"[-63:],
            "connect_timeout": max(1, round(self.connect_timeout_s)),
        }

    @contextmanager
    def connection(self, *, readonly: bool = False) -> Iterator[Any]:
        from psycopg_pool import PoolTimeout

        try:
            conn = self._pool.getconn(timeout=self.connect_timeout_s)
        except PoolTimeout as exc:
            raise StorageError(
                f"PostgreSQL at {mask_url(self.conninfo)} unavailable: no connection within "
                f"{self.connect_timeout_s} s ({exc})"
            ) from exc
        try:
            try:
                yield conn
            except BaseException:
                if not conn.closed:
                    with contextlib.suppress(Exception):  # a broken connection cannot roll back
                        conn.rollback()
                raise
            conn.commit()
        finally:
            self._pool.putconn(conn)

    def migrate(self, migrations_dir: Path | str | None = None) -> list[str]:
        """Apply migrations, then switch to TimescaleDB if ``timescale`` allows and it exists."""
        from storage.timescale import enable_timescale

        applied = super().migrate(migrations_dir)
        if enable_timescale(self, self.timescale):
            applied.append("timescale")
        return applied

    def connect_raw(self, application_name: str = "gridwatch") -> Any:
        import psycopg

        try:
            return psycopg.connect(self.conninfo, **self._connect_kwargs(application_name))
        except psycopg.OperationalError as exc:
            raise StorageError(f"cannot connect to {mask_url(self.conninfo)}: {exc}") from exc

    def close(self) -> None:
        self._pool.close()


def _split_schema(url: str) -> tuple[str, str | None]:
    """Strip a ``schema=`` query parameter (ours, not libpq's) from a PostgreSQL URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = [(k, v) for k, v in query if k != "schema"]
    return urlunsplit(parts._replace(query=urlencode(rest))), schema


class SqliteStorage(Storage):
    """An embedded SQLite file in WAL mode; one short-lived connection per ``connection()``.

    SQLite serialises writers; ``connection()`` takes the write lock up front
    (``BEGIN IMMEDIATE``) so a transaction never fails half-way on a lock upgrade, and
    ``readonly=True`` takes none, so queries run beside the writer.
    """

    dialect: ClassVar[Dialect] = "sqlite"
    paramstyle: ClassVar[str] = "?"

    def __init__(self, url: str, *, busy_timeout_s: float = 30.0) -> None:
        super().__init__(url)
        path = url.removeprefix("sqlite://")
        if not path.startswith("/") or path in ("/", "/:memory:"):
            raise StorageError(
                f"SQLite URL {url!r} must name a file: sqlite:///relative.db or sqlite:////abs.db"
            )
        self.path = Path(path[1:])
        self.busy_timeout_s = busy_timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self.connect_raw()
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        finally:
            conn.close()
        if mode != "wal":
            raise StorageError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")

    def connect_raw(self, application_name: str = "gridwatch") -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open SQLite database {self.path}: {exc}") from exc
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @contextmanager
    def connection(self, *, readonly: bool = False) -> Iterator[sqlite3.Connection]:
        conn = self.connect_raw()
        try:
            conn.execute("BEGIN" if readonly else "BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        finally:
            conn.close()

    def close(self) -> None:
        """Nothing to release: connections are closed when their block ends."""


def open_storage(url: str = DEFAULT_URL, **opts: Any) -> Storage:
    """Open the storage a URL names: ``postgresql://...`` or ``sqlite:///path.db``.

    PostgreSQL options: ``schema`` (also accepted as ``?schema=`` in the URL),
    ``pool_min``, ``pool_max``, ``connect_timeout_s``, ``timescale`` (``auto``: use
    TimescaleDB when the extension is installed, ``off``, ``require``). SQLite:
    ``busy_timeout_s``.
    Nothing is migrated here: call ``migrate()`` (start-up does).
    """
    scheme = urlsplit(url).scheme
    if scheme in ("postgresql", "postgres"):
        return PostgresStorage(url, **opts)
    if scheme == "sqlite":
        return SqliteStorage(url, **opts)
    raise StorageError(
        f"storage URL {mask_url(url)!r}: scheme {scheme!r} is not supported; "
        "use postgresql://user@host:port/db or sqlite:///path/to.db"
    )
