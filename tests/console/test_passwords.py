"""Password hashing: scrypt from the standard library, parameters stored with the hash."""

from __future__ import annotations

import pytest

from alerts.console.passwords import (
    DEFAULT_COST,
    ScryptCost,
    check_policy,
    hash_password,
    needs_rehash,
    verify_password,
)
from gridwatch.errors import ConfigError

CHEAP = ScryptCost(n=2**10, r=8, p=1)


def test_a_hash_verifies_its_password_only() -> None:
    h = hash_password("correct horse battery", CHEAP)
    assert h.startswith("scrypt$1024$8$1$") and "correct" not in h
    assert verify_password("correct horse battery", h)
    assert not verify_password("correct horse batterY", h)
    assert not verify_password("", h)
    assert hash_password("correct horse battery", CHEAP) != h  # a fresh salt each time


@pytest.mark.parametrize(
    "stored", ["", "plain", "scrypt$1024$8$1$salt", "bcrypt$1$2$3$4$5", "scrypt$1000$8$1$AA$AA"]
)
def test_malformed_hashes_never_match(stored: str) -> None:
    assert not verify_password("anything at all", stored)
    assert needs_rehash(stored)


def test_default_cost_meets_owasp_and_old_hashes_are_upgraded() -> None:
    assert (DEFAULT_COST.n, DEFAULT_COST.r, DEFAULT_COST.p) == (2**15, 8, 3)
    assert needs_rehash(hash_password("correct horse battery", CHEAP))
    assert not needs_rehash(hash_password("correct horse battery", CHEAP), CHEAP)


def test_overlong_passwords_are_refused_without_hashing() -> None:
    h = hash_password("correct horse battery", CHEAP)
    assert not verify_password("x" * 5000, h)


@pytest.mark.parametrize(
    ("password", "message"),
    [("short", "at least 10 characters"), ("x" * 1025, "at most 1024 characters")],
)
def test_policy(password: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_policy(password)
    check_policy("ten chars!")


def test_cost_parameters_are_checked() -> None:
    with pytest.raises(ConfigError, match="power of two"):
        ScryptCost(n=1000)
    with pytest.raises(ConfigError, match="r and p must be >= 1"):
        ScryptCost(p=0)
