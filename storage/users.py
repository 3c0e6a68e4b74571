"""Console accounts, sessions and sign-in attempts (tables of ``0003_console.sql``).

Only SQL lives here; the console (``alerts/console``) decides policy: what a password
hash looks like, how long a session lives, when an account locks. Secrets never reach
this module in the clear: sessions are stored and looked up by the SHA-256 of their
token, passwords as KDF hashes, and both fields are hidden from ``repr``.

Every statement is a fixed SQL text with parameters (``%s``, rewritten by
``Storage.sql`` for SQLite); lists travel as one parameter (``= ANY(%s)`` on PostgreSQL,
``json_each(?)`` on SQLite), never as SQL built from values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from gridwatch.errors import StorageError

if TYPE_CHECKING:
    from storage.engine import Storage

Role = Literal["dispatcher", "supervisor", "admin"]
ROLES: Final[tuple[Role, ...]] = ("dispatcher", "supervisor", "admin")
SessionKind = Literal["cookie", "bearer"]


class UserExistsError(StorageError):
    """An account of that name already exists."""


class UnknownUserError(StorageError):
    """No account of that name."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    name: str
    role: Role
    grids: tuple[str, ...]
    street: str | None
    disabled: bool
    created_ms: int
    updated_ms: int
    password_hash: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: int
    user_id: int
    kind: SessionKind
    label: str | None
    remote: str | None
    created_ms: int
    last_seen_ms: int
    expires_ms: int
    revoked_ms: int | None
    token_hash: str = field(repr=False)


_USER_COLS: Final = (
    "u.id, u.name, u.role, u.street, u.disabled, u.created_ms, u.updated_ms, u.password_hash"
)
_SESSION_COLS: Final = (
    "s.id, s.user_id, s.kind, s.label, s.remote, s.created_ms, s.last_seen_ms, s.expires_ms, "
    "s.revoked_ms, s.token_hash"
)
# Whole statements as constants: no SQL text is ever assembled from values at run time.
_USER_BY_NAME: Final = "SELECT " + _USER_COLS + " FROM console_users u WHERE u.name = %s"
_USER_BY_ID: Final = "SELECT " + _USER_COLS + " FROM console_users u WHERE u.id = %s"
_ALL_USERS: Final = "SELECT " + _USER_COLS + " FROM console_users u ORDER BY u.name"
_SESSION_BY_HASH: Final = (
    "SELECT " + _SESSION_COLS + ", " + _USER_COLS + " FROM console_sessions s "
    "JOIN console_users u ON u.id = s.user_id WHERE s.token_hash = %s"
)
_SESSIONS_OF_USER: Final = (
    "SELECT " + _SESSION_COLS + " FROM console_sessions s WHERE s.user_id = %s ORDER BY s.id"
)


def _user(row: Sequence[Any], grids: Iterable[str]) -> UserRecord:
    return UserRecord(
        id=int(row[0]),
        name=str(row[1]),
        role=row[2],
        street=row[3],
        disabled=bool(row[4]),
        created_ms=int(row[5]),
        updated_ms=int(row[6]),
        password_hash=str(row[7]),
        grids=tuple(sorted(grids)),
    )


def _session(row: Sequence[Any]) -> SessionRecord:
    return SessionRecord(
        id=int(row[0]),
        user_id=int(row[1]),
        kind=row[2],
        label=row[3],
        remote=row[4],
        created_ms=int(row[5]),
        last_seen_ms=int(row[6]),
        expires_ms=int(row[7]),
        revoked_ms=None if row[8] is None else int(row[8]),
        token_hash=str(row[9]),
    )


def _grids_of(storage: Storage, conn: Any, user_id: int) -> list[str]:
    rows = conn.execute(
        storage.sql("SELECT grid FROM console_user_grids WHERE user_id = %s"), (user_id,)
    ).fetchall()
    return [str(r[0]) for r in rows]


# -- accounts -----------------------------------------------------------------------


def create_user(
    storage: Storage,
    *,
    name: str,
    role: Role,
    password_hash: str,
    grids: Sequence[str] = (),
    street: str | None = None,
    now_ms: int,
) -> UserRecord:
    """Insert an account; raises ``UserExists`` when the name is taken."""
    if role not in ROLES:
        raise StorageError(f"role {role!r} is not one of {list(ROLES)}")
    with storage.connection() as conn:
        taken = conn.execute(
            storage.sql("SELECT 1 FROM console_users WHERE name = %s"), (name,)
        ).fetchone()
        if taken:
            raise UserExistsError(f"user {name!r} already exists")
        row = conn.execute(
            storage.sql(
                "INSERT INTO console_users (name, role, street, password_hash, disabled, "
                "created_ms, updated_ms) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id"
            ),
            (name, role, street, password_hash, False, now_ms, now_ms),
        ).fetchone()
        user_id = int(row[0])
        _write_grids(storage, conn, user_id, grids)
    found = get_user(storage, name)
    if found is None:  # pragma: no cover - the row was just committed
        raise StorageError(f"user {name!r} vanished right after it was created")
    return found


def _write_grids(storage: Storage, conn: Any, user_id: int, grids: Sequence[str]) -> None:
    conn.execute(storage.sql("DELETE FROM console_user_grids WHERE user_id = %s"), (user_id,))
    for grid in sorted(set(grids)):
        conn.execute(
            storage.sql("INSERT INTO console_user_grids (user_id, grid) VALUES (%s, %s)"),
            (user_id, grid),
        )


def get_user(storage: Storage, name: str) -> UserRecord | None:
    with storage.connection(readonly=True) as conn:
        row = conn.execute(storage.sql(_USER_BY_NAME), (name,)).fetchone()
        if row is None:
            return None
        return _user(row, _grids_of(storage, conn, int(row[0])))


def get_user_by_id(storage: Storage, user_id: int) -> UserRecord | None:
    with storage.connection(readonly=True) as conn:
        row = conn.execute(storage.sql(_USER_BY_ID), (user_id,)).fetchone()
        if row is None:
            return None
        return _user(row, _grids_of(storage, conn, user_id))


def list_users(storage: Storage) -> list[UserRecord]:
    with storage.connection(readonly=True) as conn:
        rows = conn.execute(_ALL_USERS).fetchall()
        grids: dict[int, list[str]] = {}
        for user_id, grid in conn.execute("SELECT user_id, grid FROM console_user_grids"):
            grids.setdefault(int(user_id), []).append(str(grid))
    return [_user(r, grids.get(int(r[0]), [])) for r in rows]


def update_user(
    storage: Storage,
    name: str,
    *,
    now_ms: int,
    password_hash: str | None = None,
    role: Role | None = None,
    grids: Sequence[str] | None = None,
    street: str | None = None,
    clear_street: bool = False,
    disabled: bool | None = None,
) -> UserRecord:
    """Change what is given; a new password or disabling revokes the account's sessions."""
    if role is not None and role not in ROLES:
        raise StorageError(f"role {role!r} is not one of {list(ROLES)}")
    with storage.connection() as conn:
        row = conn.execute(
            storage.sql("SELECT id FROM console_users WHERE name = %s"), (name,)
        ).fetchone()
        if row is None:
            raise UnknownUserError(f"no user {name!r}")
        user_id = int(row[0])
        if password_hash is not None:
            conn.execute(
                storage.sql("UPDATE console_users SET password_hash = %s WHERE id = %s"),
                (password_hash, user_id),
            )
        if role is not None:
            conn.execute(
                storage.sql("UPDATE console_users SET role = %s WHERE id = %s"), (role, user_id)
            )
        if street is not None or clear_street:
            conn.execute(
                storage.sql("UPDATE console_users SET street = %s WHERE id = %s"),
                (None if clear_street else street, user_id),
            )
        if disabled is not None:
            conn.execute(
                storage.sql("UPDATE console_users SET disabled = %s WHERE id = %s"),
                (disabled, user_id),
            )
        if grids is not None:
            _write_grids(storage, conn, user_id, grids)
        conn.execute(
            storage.sql("UPDATE console_users SET updated_ms = %s WHERE id = %s"),
            (now_ms, user_id),
        )
        if password_hash is not None or disabled:
            _revoke_user(storage, conn, user_id, now_ms)
    found = get_user(storage, name)
    if found is None:  # pragma: no cover
        raise UnknownUserError(f"no user {name!r}")
    return found


def delete_user(storage: Storage, name: str) -> None:
    with storage.connection() as conn:
        row = conn.execute(
            storage.sql("SELECT id FROM console_users WHERE name = %s"), (name,)
        ).fetchone()
        if row is None:
            raise UnknownUserError(f"no user {name!r}")
        user_id = int(row[0])
        # SQLite enforces ON DELETE CASCADE only with foreign_keys on; be explicit.
        conn.execute(storage.sql("DELETE FROM console_sessions WHERE user_id = %s"), (user_id,))
        conn.execute(storage.sql("DELETE FROM console_user_grids WHERE user_id = %s"), (user_id,))
        conn.execute(storage.sql("DELETE FROM console_users WHERE id = %s"), (user_id,))


# -- sessions and tokens --------------------------------------------------------------


def create_session(
    storage: Storage,
    *,
    token_hash: str,
    user_id: int,
    kind: SessionKind,
    now_ms: int,
    expires_ms: int,
    label: str | None = None,
    remote: str | None = None,
) -> SessionRecord:
    with storage.connection() as conn:
        row = conn.execute(
            storage.sql(
                "INSERT INTO console_sessions (token_hash, user_id, kind, label, remote, "
                "created_ms, last_seen_ms, expires_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "RETURNING id"
            ),
            (token_hash, user_id, kind, label, remote, now_ms, now_ms, expires_ms),
        ).fetchone()
    return SessionRecord(
        id=int(row[0]),
        user_id=user_id,
        kind=kind,
        label=label,
        remote=remote,
        created_ms=now_ms,
        last_seen_ms=now_ms,
        expires_ms=expires_ms,
        revoked_ms=None,
        token_hash=token_hash,
    )


def session_with_user(storage: Storage, token_hash: str) -> tuple[SessionRecord, UserRecord] | None:
    """The session of a token hash and its account (one round trip for both + grids)."""
    with storage.connection(readonly=True) as conn:
        row = conn.execute(
            storage.sql(_SESSION_BY_HASH),
            (token_hash,),
        ).fetchone()
        if row is None:
            return None
        session = _session(row[:10])
        user = _user(row[10:], _grids_of(storage, conn, session.user_id))
    return session, user


def touch_session(storage: Storage, session_id: int, now_ms: int) -> None:
    with storage.connection() as conn:
        conn.execute(
            storage.sql(
                "UPDATE console_sessions SET last_seen_ms = %s WHERE id = %s AND last_seen_ms < %s"
            ),
            (now_ms, session_id, now_ms),
        )


def revoke_session(storage: Storage, session_id: int, now_ms: int) -> bool:
    with storage.connection() as conn:
        cur = conn.execute(
            storage.sql(
                "UPDATE console_sessions SET revoked_ms = %s WHERE id = %s AND revoked_ms IS NULL"
            ),
            (now_ms, session_id),
        )
        return bool(cur.rowcount)


def _revoke_user(storage: Storage, conn: Any, user_id: int, now_ms: int) -> int:
    cur = conn.execute(
        storage.sql(
            "UPDATE console_sessions SET revoked_ms = %s WHERE user_id = %s AND revoked_ms IS NULL"
        ),
        (now_ms, user_id),
    )
    return int(cur.rowcount)


def revoke_user_sessions(storage: Storage, user_id: int, now_ms: int) -> int:
    with storage.connection() as conn:
        return _revoke_user(storage, conn, user_id, now_ms)


def user_sessions(storage: Storage, user_id: int) -> list[SessionRecord]:
    with storage.connection(readonly=True) as conn:
        rows = conn.execute(
            storage.sql(_SESSIONS_OF_USER),
            (user_id,),
        ).fetchall()
    return [_session(r) for r in rows]


def purge_sessions(storage: Storage, before_ms: int) -> int:
    """Delete sessions that expired or were revoked before ``before_ms``."""
    with storage.connection() as conn:
        cur = conn.execute(
            storage.sql(
                "DELETE FROM console_sessions WHERE expires_ms < %s "
                "OR (revoked_ms IS NOT NULL AND revoked_ms < %s)"
            ),
            (before_ms, before_ms),
        )
        return int(cur.rowcount)


# -- sign-in attempts -------------------------------------------------------------------


def record_attempt(
    storage: Storage,
    *,
    name: str,
    remote: str,
    now_ms: int,
    outcome: Literal["ok", "fail", "refused", "unlock"],
) -> None:
    with storage.connection() as conn:
        conn.execute(
            storage.sql(
                "INSERT INTO console_login_attempts (name, remote, ts_ms, outcome) "
                "VALUES (%s, %s, %s, %s)"
            ),
            (name, remote, now_ms, outcome),
        )


@dataclass(frozen=True, slots=True)
class FailureCount:
    """Failures counted for lockout, and the time of the latest one (0 when none)."""

    failures: int
    last_failure_ms: int


def failures_for_name(storage: Storage, name: str, since_ms: int) -> FailureCount:
    """Failures of ``name`` after ``since_ms`` and after its last success or unlock."""
    with storage.connection(readonly=True) as conn:
        reset = conn.execute(
            storage.sql(
                "SELECT max(ts_ms) FROM console_login_attempts "
                "WHERE name = %s AND outcome IN ('ok', 'unlock') AND ts_ms >= %s"
            ),
            (name, since_ms),
        ).fetchone()[0]
        start = max(since_ms, int(reset) + 1 if reset is not None else since_ms)
        row = conn.execute(
            storage.sql(
                "SELECT count(*), max(ts_ms) FROM console_login_attempts "
                "WHERE name = %s AND outcome = 'fail' AND ts_ms >= %s"
            ),
            (name, start),
        ).fetchone()
    return FailureCount(int(row[0]), int(row[1] or 0))


def failures_from_remote(storage: Storage, remote: str, since_ms: int) -> FailureCount:
    with storage.connection(readonly=True) as conn:
        row = conn.execute(
            storage.sql(
                "SELECT count(*), max(ts_ms) FROM console_login_attempts "
                "WHERE remote = %s AND outcome IN ('fail', 'refused') AND ts_ms >= %s"
            ),
            (remote, since_ms),
        ).fetchone()
    return FailureCount(int(row[0]), int(row[1] or 0))


def purge_attempts(storage: Storage, before_ms: int) -> int:
    with storage.connection() as conn:
        cur = conn.execute(
            storage.sql("DELETE FROM console_login_attempts WHERE ts_ms < %s"), (before_ms,)
        )
        return int(cur.rowcount)
