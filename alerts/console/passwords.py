"""Password hashing with the standard library's scrypt: no new dependency, a memory-hard KDF.

The default cost (N=2**15, r=8, p=3: 32 MiB and about 0.3 s per check on this machine's
cores) is one of OWASP's equivalent scrypt settings. Every hash records its own
parameters (``scrypt$N$r$p$salt$hash``, base64 without padding), so the default can rise
later without invalidating stored hashes; ``needs_rehash`` says when to upgrade one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

from gridwatch.errors import ConfigError

MIN_LENGTH: Final = 10
MAX_LENGTH: Final = 1024
"""Upper bound keeps one sign-in from hashing megabytes (a cheap denial of service)."""


@dataclass(frozen=True, slots=True)
class ScryptCost:
    n: int = 2**15
    r: int = 8
    p: int = 3

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1):
            raise ConfigError(f"scrypt n must be a power of two >= 2, got {self.n}")
        if self.r < 1 or self.p < 1:
            raise ConfigError(f"scrypt r and p must be >= 1, got r={self.r} p={self.p}")

    @property
    def maxmem(self) -> int:
        return 128 * self.r * self.n * 2 + 1024 * 1024


DEFAULT_COST: Final = ScryptCost()
_DKLEN: Final = 32


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_policy(password: str) -> None:
    """Refuse passwords too short to resist guessing, or too long to hash cheaply."""
    if len(password) < MIN_LENGTH:
        raise ConfigError(f"password must have at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise ConfigError(f"password must have at most {MAX_LENGTH} characters")


def hash_password(password: str, cost: ScryptCost = DEFAULT_COST) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=cost.n,
        r=cost.r,
        p=cost.p,
        dklen=_DKLEN,
        maxmem=cost.maxmem,
    )
    return f"scrypt${cost.n}${cost.r}${cost.p}${_b64(salt)}${_b64(key)}"


def _parse(stored: str) -> tuple[ScryptCost, bytes, bytes]:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a gridwatch scrypt hash")
    cost = ScryptCost(int(parts[1]), int(parts[2]), int(parts[3]))
    return cost, _unb64(parts[4]), _unb64(parts[5])


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches; a malformed stored hash never matches."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        cost, salt, expected = _parse(stored)
    except (ValueError, ConfigError):
        return False
    key = hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=cost.n,
        r=cost.r,
        p=cost.p,
        dklen=len(expected),
        maxmem=cost.maxmem,
    )
    return hmac.compare_digest(key, expected)


def needs_rehash(stored: str, cost: ScryptCost = DEFAULT_COST) -> bool:
    try:
        current, _, _ = _parse(stored)
    except (ValueError, ConfigError):
        return True
    return current.n < cost.n or current.n * current.r * current.p < cost.n * cost.r * cost.p


def burn_time(password: str, cost: ScryptCost = DEFAULT_COST) -> None:
    """Spend what a real check costs, so an unknown name answers as slowly as a known one."""
    hashlib.scrypt(
        password[:MAX_LENGTH].encode(),
        salt=bytes(16),
        n=cost.n,
        r=cost.r,
        p=cost.p,
        dklen=_DKLEN,
        maxmem=cost.maxmem,
    )
