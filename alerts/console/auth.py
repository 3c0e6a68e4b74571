"""Sign-in, sessions, bearer tokens, CSRF and lockout: the console's security core.

- A session or token is 32 random bytes; the database keeps only its SHA-256, so neither a
  table dump nor a log line can sign anybody in.
- Browser sessions ride in an HttpOnly, SameSite=Strict cookie and end after
  ``session_ttl_s`` or ``idle_timeout_s`` without use. Integrators use bearer tokens
  (``Authorization: Bearer gwt_...``) with an absolute lifetime.
- State-changing requests authenticated by the cookie must carry ``X-CSRF-Token``: an HMAC
  of the session secret that the page receives at sign-in (and from ``/api/me``) and a
  cross-site page cannot read. A foreign ``Origin`` is refused as well.
- Failed sign-ins are recorded per typed name and per address; a name with
  ``lockout_failures`` failures in ``lockout_window_s`` is refused for ``lockout_s``, even
  with the right password, and answers exactly like an existing one would (no account
  discovery). Unknown names spend the same KDF time as known ones.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import threading
from dataclasses import dataclass
from typing import Final, Literal

from alerts.console.errors import HttpError
from alerts.console.options import ConsoleOptions
from alerts.console.passwords import burn_time, hash_password, needs_rehash, verify_password
from gridwatch.clock import Clock
from storage import users as db
from storage.engine import Storage
from storage.users import SessionKind, SessionRecord, UserRecord

log = logging.getLogger(__name__)

COOKIE_NAME: Final = "gw_session"
CSRF_HEADER: Final = "x-csrf-token"
TOKEN_PREFIX: Final = "gwt_"
"""Bearer tokens start with a fixed prefix so secret scanners can recognise a leaked one."""
MAX_NAME: Final = 64


class AuthError(HttpError):
    """Not signed in (401), not allowed (403) or locked out (429)."""


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A valid session and its account; ``secret`` is the raw token (never logged)."""

    session: SessionRecord
    user: UserRecord
    via: Literal["cookie", "bearer"]
    secret: str

    def __repr__(self) -> str:
        return (
            f"Authenticated(user={self.user.name!r}, via={self.via!r}, session={self.session.id})"
        )


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(secret: str) -> str:
    """The CSRF token of a session: derived, so nothing more is stored or can go stale."""
    mac = hmac.new(secret.encode(), b"gridwatch-console-csrf", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def csrf_ok(secret: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(csrf_token(secret), str(sent))


class Authenticator:
    """Signs users in and checks every request's credentials against storage."""

    def __init__(self, storage: Storage, clock: Clock, options: ConsoleOptions) -> None:
        self.storage = storage
        self.clock = clock
        self.options = options
        self._kdf_slots = threading.BoundedSemaphore(options.max_concurrent_sign_ins)

    # -- sign-in ------------------------------------------------------------------------

    def login(
        self,
        name: str,
        password: str,
        remote: str,
        *,
        kind: SessionKind = "cookie",
        label: str | None = None,
        ttl_s: float | None = None,
    ) -> tuple[str, SessionRecord, UserRecord]:
        """Check a password and open a session (or token); ``AuthError`` says why not."""
        st = self.storage
        opts = self.options
        now = self.clock.now_ms()
        name = name[:MAX_NAME]
        window_start = now - round(opts.lockout_window_s * 1000)
        by_remote = db.failures_from_remote(st, remote, window_start)
        if by_remote.failures >= opts.remote_failures:
            self._refuse(name, remote, now, "address blocked")
            retry = by_remote.last_failure_ms + round(opts.lockout_window_s * 1000) - now
            raise AuthError(
                429,
                "too many failed sign-ins from this address; try again later",
                retry_after_s=max(1, retry // 1000),
            )
        by_name = db.failures_for_name(st, name, window_start)
        locked_until = by_name.last_failure_ms + round(opts.lockout_s * 1000)
        if by_name.failures >= opts.lockout_failures and now < locked_until:
            self._refuse(name, remote, now, "name locked")
            raise AuthError(
                429,
                "too many failed sign-ins for this name; it is locked for a while",
                retry_after_s=max(1, (locked_until - now + 999) // 1000),
            )
        user = db.get_user(st, name)
        if not self._kdf_slots.acquire(timeout=opts.sign_in_wait_s):
            raise AuthError(
                503, "too many sign-ins at once; try again in a moment", retry_after_s=2
            )
        try:
            if user is None:
                burn_time(password, opts.scrypt)
                ok = False
            else:
                ok = verify_password(password, user.password_hash) and not user.disabled
        finally:
            self._kdf_slots.release()
        if not ok or user is None:
            db.record_attempt(st, name=name, remote=remote, now_ms=now, outcome="fail")
            log.info(
                "sign-in failed",
                extra={"user": name, "remote": remote, "known": user is not None},
            )
            raise AuthError(401, "wrong name or password")
        db.record_attempt(st, name=name, remote=remote, now_ms=now, outcome="ok")
        if needs_rehash(user.password_hash, opts.scrypt):
            user = db.update_user(
                st, user.name, now_ms=now, password_hash=hash_password(password, opts.scrypt)
            )
        if kind == "cookie":
            life_s = opts.session_ttl_s
        else:
            life_s = min(ttl_s or opts.token_ttl_s, opts.token_ttl_max_s)
        secret = (TOKEN_PREFIX if kind == "bearer" else "") + secrets.token_urlsafe(32)
        session = db.create_session(
            st,
            token_hash=token_hash(secret),
            user_id=user.id,
            kind=kind,
            now_ms=now,
            expires_ms=now + round(life_s * 1000),
            label=label,
            remote=remote,
        )
        log.info(
            "signed in",
            extra={"user": user.name, "remote": remote, "kind": kind, "session_id": session.id},
        )
        return secret, session, user

    def _refuse(self, name: str, remote: str, now: int, why: str) -> None:
        db.record_attempt(self.storage, name=name, remote=remote, now_ms=now, outcome="refused")
        log.warning("sign-in refused", extra={"user": name, "remote": remote, "reason": why})

    def unlock(self, name: str, remote: str = "admin") -> None:
        db.record_attempt(
            self.storage,
            name=name[:MAX_NAME],
            remote=remote,
            now_ms=self.clock.now_ms(),
            outcome="unlock",
        )
        log.info("sign-in unlocked", extra={"user": name})

    # -- every request ------------------------------------------------------------------

    def authenticate(self, secret: str, via: Literal["cookie", "bearer"]) -> Authenticated:
        """The session of a cookie or bearer secret, or ``AuthError(401)`` saying why not."""
        if not secret or len(secret) > 200:
            raise AuthError(401, "sign in first")
        found = db.session_with_user(self.storage, token_hash(secret))
        if found is None:
            raise AuthError(401, "unknown or ended session; sign in again")
        session, user = found
        if via == "cookie" and session.kind != "cookie":
            raise AuthError(401, "an API token is sent as 'Authorization: Bearer', not a cookie")
        if via == "bearer" and session.kind != "bearer":
            raise AuthError(401, "a browser session cannot be used as a bearer token")
        now = self.clock.now_ms()
        if session.revoked_ms is not None or user.disabled:
            raise AuthError(401, "session ended (signed out or account disabled); sign in again")
        if now >= session.expires_ms:
            raise AuthError(401, "session expired; sign in again")
        if (
            session.kind == "cookie"
            and now - session.last_seen_ms > self.options.idle_timeout_s * 1000
        ):
            raise AuthError(401, "session expired after inactivity; sign in again")
        if now - session.last_seen_ms >= self.options.touch_interval_s * 1000:
            db.touch_session(self.storage, session.id, now)
        return Authenticated(session, user, via, secret)

    def logout(self, auth: Authenticated) -> None:
        db.revoke_session(self.storage, auth.session.id, self.clock.now_ms())
        log.info("signed out", extra={"user": auth.user.name, "session_id": auth.session.id})
