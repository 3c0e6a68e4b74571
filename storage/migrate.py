"""Versioned SQL migrations: ``NNNN_<name>.sql`` files applied in order, each once.

Any file in the dialect's directory is picked up, so another stage adds its tables by
dropping a file in (``0002_alerts.sql``). Applied versions are recorded with a checksum in
``schema_migrations``; an applied file that later changed is refused rather than silently
skipped, because the database would no longer match what the file says.
Each migration runs in its own transaction; PostgreSQL serialises concurrent migrators
with an advisory lock, SQLite with its write lock.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gridwatch.errors import StorageError

if TYPE_CHECKING:
    from storage.engine import Storage

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x6772_6964  # "grid": one advisory lock id for every gridwatch migrator

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_ms BIGINT NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        return self.path.stem


def discover(directory: Path) -> list[Migration]:
    """Migrations of a directory in version order; malformed names and clashes are errors."""
    if not directory.is_dir():
        raise StorageError(f"migrations directory {directory} does not exist")
    out: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        m = _NAME.match(path.name)
        if not m:
            raise StorageError(
                f"{path}: migration files are named NNNN_<lower_snake_name>.sql "
                "(e.g. 0002_alerts.sql)"
            )
        version = int(m.group(1))
        if version in out:
            raise StorageError(
                f"{path.name} and {out[version].path.name} share version {version}: "
                "renumber one of them"
            )
        out[version] = Migration(version, m.group(2), path, path.read_text(encoding="utf-8"))
    return [out[v] for v in sorted(out)]


def split_sqlite_script(script: str) -> list[str]:
    """Statements of a script, split where SQLite says a statement is complete.

    ``executescript`` would commit the open transaction first; splitting keeps each
    migration atomic. ``sqlite3.complete_statement`` understands triggers' BEGIN...END.
    """
    statements: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip().strip(";").strip():
                statements.append(buf.strip())
            buf = ""
    if _strip_comments(buf).strip():
        raise StorageError(f"incomplete SQL statement at the end of the script: {buf[:200]!r}")
    return statements


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in text.splitlines())


def applied_versions(conn: Any, storage: Storage) -> dict[int, tuple[str, str]]:
    rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
    return {int(v): (str(n), str(c)) for v, n, c in rows}


def apply_migrations(storage: Storage, directory: Path) -> list[str]:
    migrations = discover(directory)
    applied_now: list[str] = []
    for mig in migrations:
        with storage.connection() as conn:
            if storage.dialect == "postgres":
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            conn.execute(_CREATE_TABLE)
            done = applied_versions(conn, storage)
            if mig.version in done:
                _name, checksum = done[mig.version]
                if checksum != mig.checksum:
                    raise StorageError(
                        f"migration {mig.label} was applied with checksum {checksum} but the "
                        f"file now has {mig.checksum}: migrations are immutable once applied; "
                        "add a new migration instead of editing this one"
                    )
                continue
            _execute_script(conn, storage, mig)
            conn.execute(
                storage.sql(
                    "INSERT INTO schema_migrations (version, name, checksum, applied_ms) "
                    "VALUES (%s, %s, %s, %s)"
                ),
                (mig.version, mig.name, mig.checksum, time.time_ns() // 1_000_000),
            )
        log.info("migration applied", extra={"migration": mig.label, "dialect": storage.dialect})
        applied_now.append(mig.label)
    return applied_now


def _execute_script(conn: Any, storage: Storage, mig: Migration) -> None:
    try:
        if storage.dialect == "postgres":
            conn.execute(mig.sql)
        else:
            for statement in split_sqlite_script(mig.sql):
                conn.execute(statement)
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"migration {mig.path} failed: {exc}") from exc


def current_version(storage: Storage) -> int:
    """Highest applied migration version; 0 for a database never migrated."""
    with storage.connection(readonly=True) as conn:
        if storage.dialect == "postgres":
            exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0]
        else:
            exists = conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_migrations'"
            ).fetchone()
        if not exists:
            return 0
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)
