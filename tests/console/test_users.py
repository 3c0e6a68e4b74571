"""Console accounts, sessions and sign-in attempts in storage (both backends)."""

from __future__ import annotations

import pytest

from storage import users
from storage.engine import Storage


def test_accounts(storage: Storage) -> None:
    u = users.create_user(
        storage,
        name="zhang",
        role="dispatcher",
        grids=["g2", "g1", "g1"],
        password_hash="h1",
        now_ms=5,
    )
    assert (u.name, u.role, u.grids, u.street, u.disabled, u.created_ms) == (
        "zhang", "dispatcher", ("g1", "g2"), None, False, 5,
    )  # fmt: skip
    assert "h1" not in repr(u)
    with pytest.raises(users.UserExistsError, match="user 'zhang' already exists"):
        users.create_user(storage, name="zhang", role="admin", password_hash="h", now_ms=6)
    with pytest.raises(users.StorageError, match="role 'boss' is not one of"):
        users.create_user(storage, name="x", role="boss", password_hash="h", now_ms=6)  # type: ignore[arg-type]
    users.create_user(
        storage, name="li", role="supervisor", street="s01", password_hash="h2", now_ms=7
    )
    assert [x.name for x in users.list_users(storage)] == ["li", "zhang"]
    changed = users.update_user(
        storage, "zhang", now_ms=9, grids=["g3"], role="supervisor", street="s02"
    )
    assert (changed.grids, changed.role, changed.street, changed.updated_ms) == (
        ("g3",),
        "supervisor",
        "s02",
        9,
    )
    cleared = users.update_user(storage, "zhang", now_ms=10, clear_street=True)
    assert cleared.street is None and cleared.grids == ("g3",)
    assert users.get_user_by_id(storage, u.id) == cleared
    users.delete_user(storage, "zhang")
    assert users.get_user(storage, "zhang") is None
    with pytest.raises(users.UnknownUserError, match="no user 'zhang'"):
        users.update_user(storage, "zhang", now_ms=11, disabled=True)


def test_sessions(storage: Storage) -> None:
    u = users.create_user(storage, name="a", role="admin", password_hash="h", now_ms=0)
    s = users.create_session(
        storage,
        token_hash="t1",
        user_id=u.id,
        kind="cookie",
        now_ms=10,
        expires_ms=100,
        remote="1.2.3.4",
    )
    found = users.session_with_user(storage, "t1")
    assert found is not None and found[0] == s and found[1].name == "a"
    assert "t1" not in repr(s)
    assert users.session_with_user(storage, "nope") is None
    users.touch_session(storage, s.id, 50)
    users.touch_session(storage, s.id, 40)  # never goes back
    assert users.user_sessions(storage, u.id)[0].last_seen_ms == 50
    users.create_session(
        storage, token_hash="t2", user_id=u.id, kind="bearer", now_ms=10, expires_ms=1000
    )
    assert users.revoke_session(storage, s.id, 60) and not users.revoke_session(storage, s.id, 61)
    # A new password ends every session of the account.
    users.update_user(storage, "a", now_ms=70, password_hash="h2")
    assert all(x.revoked_ms is not None for x in users.user_sessions(storage, u.id))
    assert users.purge_sessions(storage, before_ms=200) == 2


def test_failures_count_since_the_last_success_or_unlock(storage: Storage) -> None:
    def attempt(t: int, outcome: str, name: str = "a", remote: str = "r1") -> None:
        users.record_attempt(storage, name=name, remote=remote, now_ms=t, outcome=outcome)  # type: ignore[arg-type]

    for t in (10, 20, 30):
        attempt(t, "fail")
    assert users.failures_for_name(storage, "a", 0) == users.FailureCount(3, 30)
    assert users.failures_for_name(storage, "a", 15).failures == 2  # the window
    attempt(40, "ok")
    attempt(50, "fail")
    assert users.failures_for_name(storage, "a", 0) == users.FailureCount(1, 50)
    attempt(60, "refused")  # refused while locked: not a failure of the name...
    assert users.failures_for_name(storage, "a", 0).failures == 1
    attempt(65, "fail", name="b")
    assert users.failures_from_remote(storage, "r1", 0).failures == 6  # ...but of the address
    attempt(70, "unlock")
    assert users.failures_for_name(storage, "a", 0).failures == 0
    assert users.purge_attempts(storage, before_ms=55) == 5
