"""Security of the console: CSRF and origins, cookie flags, session expiry and revocation,
sign-in lockout and rate limit, secrets kept out of logs, headers, and SQL never built
from strings. Times move with a ``ManualClock``; nothing sleeps."""

from __future__ import annotations

import ast
import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from alerts.console import ConsoleServer, create_app
from alerts.console.auth import COOKIE_NAME, csrf_token, token_hash
from gridwatch.logs import JsonFormatter
from storage import users
from tests.console.conftest import GRID_A, PASSWORD, Env, cheap_options

ROOT = Path(__file__).resolve().parents[2]


# -- CSRF, origins, cookies --------------------------------------------------------------------


def test_csrf_token_is_bound_to_the_session(env: Env) -> None:
    alert = env.entrapment(GRID_A)
    ann, bob = env.login("ann"), env.login("bob")
    bobs_token = bob.headers["X-CSRF-Token"]
    r = ann.post(f"/api/alerts/{alert}/ack", headers={"X-CSRF-Token": bobs_token})
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    secret = ann.cookies.get(COOKIE_NAME)
    assert secret and ann.headers["X-CSRF-Token"] == csrf_token(secret)
    assert ann.get("/api/me").json()["csrf_token"] == csrf_token(secret)
    assert ann.post(f"/api/alerts/{alert}/ack").status_code == 200


def test_cross_site_requests_are_refused_even_with_the_token(env: Env) -> None:
    alert = env.entrapment(GRID_A)
    ann = env.login("ann")
    for headers in (
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},
    ):
        r = ann.post(f"/api/alerts/{alert}/ack", headers=headers)
        assert r.status_code == 403, headers
    assert (
        ann.post(f"/api/alerts/{alert}/ack", headers={"Origin": "http://testserver"}).status_code
        == 200
    )
    anon = env.client()
    r = anon.post(
        "/api/auth/login",
        json={"name": "ann", "password": PASSWORD},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403 and COOKIE_NAME not in r.cookies


def test_a_trusted_origin_is_accepted(env_with: Any) -> None:
    env = env_with(trusted_origins=("https://console.example.org",))
    alert = env.entrapment(GRID_A)
    ann = env.login("ann")
    r = ann.post(f"/api/alerts/{alert}/ack", headers={"Origin": "https://console.example.org"})
    assert r.status_code == 200


def test_login_takes_json_only(env: Env) -> None:
    anon = env.client()
    r = anon.post("/api/auth/login", data={"name": "ann", "password": PASSWORD})
    assert r.status_code == 422 and COOKIE_NAME not in r.cookies


def test_session_cookie_flags(env: Env) -> None:
    anon = env.client()
    r = anon.post("/api/auth/login", json={"name": "ann", "password": PASSWORD})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert "secure" not in cookie  # plain http on loopback
    tls = env.client()
    tls.base_url = httpx.URL("https://testserver")
    r = tls.post("/api/auth/login", json={"name": "ann", "password": PASSWORD})
    assert "; secure" in r.headers["set-cookie"].lower()
    assert r.headers["cache-control"] == "no-store"


def test_security_headers_on_every_answer(env: Env) -> None:
    ann = env.login("ann")
    for path in ("/", "/static/app.js", "/api/board", "/api/nope"):
        h = ann.get(path).headers
        assert "frame-ancestors 'none'" in h["content-security-policy"], path
        assert h["x-content-type-options"] == "nosniff"
        assert h["x-frame-options"] == "DENY"
        assert h["referrer-policy"] == "no-referrer"
    assert ann.get("/api/board").headers["cache-control"] == "no-store"


# -- sessions ------------------------------------------------------------------------------------


def test_idle_session_expires(env: Env) -> None:
    ann = env.login("ann")
    env.clock.advance(29 * 60)
    assert ann.get("/api/me").status_code == 200  # use resets the idle timer
    env.clock.advance(29 * 60)
    assert ann.get("/api/me").status_code == 200
    env.clock.advance(31 * 60)
    r = ann.get("/api/me")
    assert (
        r.status_code == 401
        and r.json()["detail"] == "session expired after inactivity; sign in again"
    )


def test_session_ends_after_its_lifetime_even_when_used(env: Env) -> None:
    ann = env.login("ann")
    for _ in range(12 * 4 - 1):
        env.clock.advance(15 * 60)
        assert ann.get("/api/me").status_code == 200
    env.clock.advance(15 * 60)
    r = ann.get("/api/me")
    assert r.status_code == 401 and r.json()["detail"] == "session expired; sign in again"


def test_bearer_tokens_expire_by_lifetime_not_idleness(env: Env) -> None:
    anon = env.client()
    tok = anon.post(
        "/api/auth/tokens", json={"name": "ann", "password": PASSWORD, "ttl_s": 7 * 86_400}
    ).json()
    assert tok["token"].startswith("gwt_")
    h = {"Authorization": f"Bearer {tok['token']}"}
    env.clock.advance(6 * 86_400)  # days without use: still valid
    assert anon.get("/api/me", headers=h).status_code == 200
    env.clock.advance(86_400)
    assert anon.get("/api/me", headers=h).status_code == 401
    # A token is not a cookie and a cookie is not a token.
    ann = env.login("ann")
    cookie = ann.cookies.get(COOKIE_NAME)
    assert anon.get("/api/me", headers={"Authorization": f"Bearer {cookie}"}).status_code == 401


def test_sign_out_and_password_change_end_sessions(env: Env) -> None:
    ann = env.login("ann")
    cookie = ann.cookies.get(COOKIE_NAME)
    assert ann.post("/api/auth/logout").status_code == 200
    replay = env.client()
    r = replay.get("/api/me", headers={"Cookie": f"{COOKIE_NAME}={cookie}"})
    assert r.status_code == 401 and "signed out" in r.json()["detail"]
    ann = env.login("ann")
    api = env.bearer("ann")
    users.update_user(env.storage, "ann", now_ms=env.clock.now_ms(), password_hash="scrypt$x")
    assert ann.get("/api/me").status_code == 401
    assert api.get("/api/me").status_code == 401
    users.update_user(env.storage, "bob", now_ms=env.clock.now_ms(), disabled=True)
    r = env.client().post("/api/auth/login", json={"name": "bob", "password": PASSWORD})
    assert r.status_code == 401 and r.json()["detail"] == "wrong name or password"


def test_sessions_are_stored_only_as_hashes(env: Env) -> None:
    ann = env.login("ann")
    secret = ann.cookies.get(COOKIE_NAME)
    assert secret
    with env.storage.connection(readonly=True) as conn:
        stored = [r[0] for r in conn.execute("SELECT token_hash FROM console_sessions")]
        hashes = [r[0] for r in conn.execute("SELECT password_hash FROM console_users")]
    assert stored == [token_hash(secret)] and secret not in stored
    assert all(h.startswith("scrypt$") and PASSWORD not in h for h in hashes)


# -- lockout and rate limit ---------------------------------------------------------------------


def _login(env: Env, name: str, password: str) -> httpx.Response:
    c = env.client()
    return c.post("/api/auth/login", json={"name": name, "password": password})


def test_repeated_failures_lock_the_name_even_for_the_right_password(env: Env) -> None:
    for _ in range(5):
        r = _login(env, "ann", "wrong password!")
        assert r.status_code == 401 and r.json()["detail"] == "wrong name or password"
    r = _login(env, "ann", PASSWORD)
    assert r.status_code == 429 and COOKIE_NAME not in r.cookies
    assert "locked" in r.json()["detail"]
    assert 1 <= int(r.headers["retry-after"]) <= 15 * 60
    # Attempts while locked do not extend the lock.
    env.clock.advance(10 * 60)
    assert _login(env, "ann", PASSWORD).status_code == 429
    env.clock.advance(5 * 60 + 1)
    assert _login(env, "ann", PASSWORD).status_code == 200
    # Success starts the count again.
    for _ in range(4):
        _login(env, "ann", "wrong password!")
    assert _login(env, "ann", PASSWORD).status_code == 200
    # Another account is not affected by ann's lock.
    assert _login(env, "bob", PASSWORD).status_code == 200


def test_unknown_names_answer_and_lock_like_known_ones(env: Env) -> None:
    for _ in range(5):
        r = _login(env, "mallory", "whatever it is")
        assert r.status_code == 401 and r.json()["detail"] == "wrong name or password"
    r = _login(env, "mallory", "whatever it is")
    assert r.status_code == 429


def test_an_administrator_unlocks_a_name(env: Env) -> None:
    for _ in range(5):
        _login(env, "ann", "wrong password!")
    assert _login(env, "ann", PASSWORD).status_code == 429
    env.app.state.console.auth.unlock("ann")
    assert _login(env, "ann", PASSWORD).status_code == 200


def test_one_address_spraying_many_names_is_blocked(env_with: Any) -> None:
    env = env_with(remote_failures=8)
    for i in range(8):
        assert _login(env, f"user{i}", "guess guess").status_code == 401
    r = _login(env, "ann", PASSWORD)  # the right password, but from the same address
    assert r.status_code == 429 and "address" in r.json()["detail"]
    env.clock.advance(15 * 60 + 1)
    assert _login(env, "ann", PASSWORD).status_code == 200


def test_password_checks_are_bounded_and_a_burst_waits_then_gets_503(env_with: Any) -> None:
    env = env_with(max_concurrent_sign_ins=1, sign_in_wait_s=0.05)
    slots = env.app.state.console.auth._kdf_slots
    assert slots.acquire(timeout=1)  # another sign-in is hashing
    try:
        r = _login(env, "ann", PASSWORD)
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
    finally:
        slots.release()
    assert _login(env, "ann", PASSWORD).status_code == 200


# -- no secrets in logs ----------------------------------------------------------------------------


@pytest.fixture
def log_text() -> Iterator[io.StringIO]:
    """Every log record of the server side, formatted as the CLI does (JSON lines).

    The test's own HTTP client (httpx/httpcore) logs the headers it receives at DEBUG; it
    is not part of the console process, so its records are left out.
    """
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    handler.addFilter(lambda r: not r.name.startswith(("httpx", "httpcore")))
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def test_no_secrets_in_logs(env: Env, log_text: io.StringIO) -> None:
    alert = env.entrapment(GRID_A)
    app = create_app(
        env.storage, env.registry, service=env.service, clock=env.clock, options=cheap_options()
    )
    secrets: list[str] = [PASSWORD, "wrong-but-secret-pw"]
    with ConsoleServer(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        assert (
            http.post("/api/auth/login", json={"name": "ann", "password": secrets[1]}).status_code
            == 401
        )
        r = http.post("/api/auth/login", json={"name": "ann", "password": PASSWORD})
        assert r.status_code == 200
        secrets += [http.cookies[COOKIE_NAME], r.json()["csrf_token"]]
        h = {"X-CSRF-Token": r.json()["csrf_token"]}
        assert http.post(f"/api/alerts/{alert}/ack", headers=h).status_code == 200
        tok = http.post("/api/auth/tokens", json={"name": "bob", "password": PASSWORD}).json()
        secrets.append(tok["token"])
        bearer = {"Authorization": f"Bearer {tok['token']}"}
        assert http.get("/api/board", headers=bearer).status_code == 200
        too_long = "x" * 2000 + "-secret-tail"
        r = http.post("/api/auth/login", json={"name": "ann", "password": too_long})
        assert r.status_code == 422 and "secret-tail" not in r.text  # input is never echoed
        secrets.append(too_long)
        assert http.post("/api/auth/logout", headers=h).status_code == 200
    with env.storage.connection(readonly=True) as conn:
        secrets += [r[0] for r in conn.execute("SELECT password_hash FROM console_users")]
        secrets += [r[0] for r in conn.execute("SELECT token_hash FROM console_sessions")]
    text = log_text.getvalue()
    assert '"event":"signed in"' in text and '"event":"sign-in failed"' in text
    assert "uvicorn.access" in text  # the access log was captured too
    leaked = [s[:12] for s in secrets if s in text]
    assert not leaked, f"secrets in the logs: {leaked}"


def test_reprs_hide_secrets(env: Env) -> None:
    user = users.get_user(env.storage, "ann")
    assert user is not None and "scrypt" not in repr(user)
    ann = env.login("ann")
    secret = ann.cookies.get(COOKIE_NAME)
    auth = env.app.state.console.auth.authenticate(secret, "cookie")
    assert secret and secret not in repr(auth) and "ann" in repr(auth)


# -- no SQL built from strings --------------------------------------------------------------------

SQL_MODULES = [*sorted((ROOT / "alerts" / "console").glob("*.py")), ROOT / "storage" / "users.py"]
_CONSTANT = re.compile(r"^_?[A-Z][A-Z0-9_]*$")


def _fixed_sql(node: ast.expr) -> bool:
    """A statement text that cannot carry a value: a literal, a constant, ``x.sql(fixed)``."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.Name):
        return bool(_CONSTANT.match(node.id))
    if isinstance(node, ast.IfExp):
        return _fixed_sql(node.body) and _fixed_sql(node.orelse)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr == "sql" and len(node.args) == 1 and _fixed_sql(node.args[0])
    return False


@pytest.mark.parametrize("path", SQL_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_sql_is_never_built_from_strings(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("execute", "executemany")
            and node.args
            and not _fixed_sql(node.args[0])
        ):
            bad.append(f"line {node.lineno}: {ast.unparse(node.args[0])[:80]}")
        # module-level SQL constants are built from literals only
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if any(_CONSTANT.match(n) for n in names) and node.value is not None:
                for sub in ast.walk(node.value):
                    if isinstance(sub, ast.JoinedStr | ast.FormattedValue):
                        bad.append(f"line {node.lineno}: f-string in constant {names}")
    assert not bad, bad


def test_the_sql_check_catches_a_built_statement() -> None:
    call = ast.parse('conn.execute(f"SELECT * FROM t WHERE a = {x}")').body[0].value  # type: ignore[attr-defined]
    assert not _fixed_sql(call.args[0])
    call = ast.parse('conn.execute(st.sql("SELECT 1 WHERE a = %s"), (x,))').body[0].value  # type: ignore[attr-defined]
    assert _fixed_sql(call.args[0])
    call = ast.parse("conn.execute(query, (x,))").body[0].value  # type: ignore[attr-defined]
    assert not _fixed_sql(call.args[0])
