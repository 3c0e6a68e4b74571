"""Exceptions shared by every stage; each names what was wrong and where."""

from __future__ import annotations


class GridwatchError(Exception):
    """Base of every error gridwatch raises on purpose."""


class ConfigError(GridwatchError):
    """A configuration, rules, plans or registry file is invalid; the message names the key."""


class PayloadError(GridwatchError):
    """A payload cannot be decoded. ``reason`` is a stable code used for dead-letters."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message


class RegistryError(GridwatchError):
    """The device registry is inconsistent or a lookup failed."""


class StorageError(GridwatchError):
    """The storage backend refused an operation."""
