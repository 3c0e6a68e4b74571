"""Device identity enforced by the broker: Mosquitto password and ACL files from the registry.

The collector checks that a device's readings match its registered grid and kind, but
only the broker can stop device A from publishing *as* device B. ``broker_auth`` gives
every device (or every grid's gateway) its own credential whose ACL allows writing only
its own topics, plus a collector account that may read all telemetry and write the
alert topics (``{root}/v1/+/alerts/#``): the pipeline logs in with one account
(``mqtt.username``) for its collector and for the publisher of the alert outbox. No
device or gateway account may write there, so integrators can trust those topics.

Two ACL styles, because Mosquitto resolves a user's ACL by scanning the file's users:

- ``exact`` (default): one ``user`` block per credential naming its exact topics,
  grid and kind included. Precise; fine up to tens of thousands of users.
- ``pattern``: one ``pattern write {root}/v1/+/+/%u/telemetry`` line for every device
  (username = device id). Constant-size ACL for the full 480,000-device district; the
  grid and kind in the topic are then checked by the collector (``wrong_grid``,
  ``wrong_kind``) instead of the broker.

Passwords are Mosquitto 2's PBKDF2-SHA512 format (``$7$iterations$salt$hash``), written
by ``mosquitto_passwd -U`` when it is installed and by ``hashlib`` otherwise; the clear
passwords go to ``credentials.csv`` (mode 0600) for provisioning, and are reused when
the command runs again so that adding devices never changes existing passwords.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import logging
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from gridwatch.contract import VERSION, telemetry_topic
from gridwatch.domain import valid_id
from gridwatch.errors import ConfigError
from gridwatch.registry import Registry

log = logging.getLogger(__name__)

PBKDF2_ITERATIONS: Final = 101
"""What ``mosquitto_passwd`` of Mosquitto 2.0 uses; the broker reads any count."""
SALT_BYTES: Final = 12


@dataclass(frozen=True, slots=True)
class Credential:
    """One broker account. ``read``/``write`` are topic filters for the ACL."""

    username: str
    password: str
    role: Literal["device", "gateway", "collector", "publisher"]
    write: tuple[str, ...] = ()
    read: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never print a password
        return f"Credential({self.username!r}, role={self.role!r}, password='***')"


@dataclass(frozen=True, slots=True)
class AuthFiles:
    passwd: Path
    acl: Path
    credentials: Path
    conf: Path
    users: int


def alert_filter(root: str) -> str:
    """The topics the pipeline publishes alerts to (``contract.alert_topic``), as a filter."""
    return f"{root}/{VERSION}/+/alerts/#"


def mosquitto_hash(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """A Mosquitto 2 password-file hash (what ``mosquitto_passwd`` writes after ``user:``)."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    dk = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


def verify_mosquitto_hash(password: str, hashed: str) -> bool:
    try:
        _, kind, iterations, salt, dk = hashed.split("$")
    except ValueError:
        return False
    if kind != "7":
        return False
    ours = mosquitto_hash(password, salt=base64.b64decode(salt), iterations=int(iterations))
    return secrets.compare_digest(ours.rsplit("$", 1)[1], dk)


def plan_credentials(
    registry: Registry,
    *,
    root: str,
    per: Literal["device", "grid"] = "device",
    acl: Literal["exact", "pattern"] = "exact",
    collector_user: str = "gridwatch-collector",
    publisher_user: str | None = None,
    existing: Mapping[str, str] | None = None,
) -> list[Credential]:
    """The accounts for ``registry``; passwords from ``existing`` are kept."""
    existing = existing or {}
    if acl == "pattern" and per != "device":
        raise ConfigError("--acl pattern applies to per-device credentials only")
    for name in (collector_user, publisher_user):
        if name is not None and not valid_id(name):
            raise ConfigError(f"account name {name!r}: use 1-32 of A-Z a-z 0-9 _ . -")

    def password(user: str) -> str:
        return existing.get(user) or secrets.token_urlsafe(18)

    out = [
        Credential(
            collector_user,
            password(collector_user),
            "collector",
            read=(f"{root}/{VERSION}/+/+/+/telemetry", f"{root}/{VERSION}/+/+/batch"),
            write=(alert_filter(root),),
        )
    ]
    if publisher_user is not None:
        out.append(
            Credential(
                publisher_user,
                password(publisher_user),
                "publisher",
                write=(f"{root}/{VERSION}/+/+/+/telemetry", f"{root}/{VERSION}/+/+/batch"),
            )
        )
    taken = {c.username for c in out}
    if per == "grid":
        for grid in registry.grid_ids.tolist():
            user = f"gateway-{grid}"
            out.append(
                Credential(
                    user,
                    password(user),
                    "gateway",
                    write=(
                        f"{root}/{VERSION}/{grid}/+/batch",
                        f"{root}/{VERSION}/{grid}/+/+/telemetry",
                    ),
                )
            )
        return out
    cols = registry.columns()
    for device, kind, grid in zip(
        cols["device_id"].tolist(), cols["kind"].tolist(), cols["grid"].tolist(), strict=True
    ):
        if device in taken:
            raise ConfigError(f"device id {device!r} clashes with the account {device!r}")
        topics = () if acl == "pattern" else (telemetry_topic(grid, kind, device, root=root),)
        out.append(Credential(device, password(device), "device", write=topics))
    return out


def write_acl(path: Path, creds: Iterable[Credential], *, root: str, acl: str, source: str) -> None:
    lines = [
        f"# gridwatch broker ACL, generated by `gridwatch broker-auth` from {source}.",
        "# Regenerate it rather than editing it by hand.",
        "",
    ]
    if acl == "pattern":
        lines += [
            "# Every device (username = device id) may publish only under its own id.",
            f"pattern write {root}/{VERSION}/+/+/%u/telemetry",
            "",
        ]
    for c in creds:
        if not c.read and not c.write:
            continue
        lines.append(f"user {c.username}")
        lines += [f"topic read {t}" for t in c.read]
        lines += [f"topic write {t}" for t in c.write]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def write_password_file(
    path: Path, creds: Iterable[Credential], *, use_mosquitto_passwd: bool | None = None
) -> str:
    """Write the hashed password file; returns which hasher was used."""
    creds = list(creds)
    tool = shutil.which("mosquitto_passwd") if use_mosquitto_passwd is not False else None
    if use_mosquitto_passwd and tool is None:
        raise ConfigError("mosquitto_passwd is not installed")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        for c in creds:
            secret = c.password if tool else mosquitto_hash(c.password)
            fh.write(f"{c.username}:{secret}\n")
    if tool:
        try:
            subprocess.run([tool, "-U", str(tmp)], check=True, capture_output=True, timeout=3600)
        except subprocess.CalledProcessError as exc:
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"mosquitto_passwd -U failed: {exc.stderr.decode()[:500]}") from exc
    tmp.replace(path)
    return "mosquitto_passwd" if tool else "hashlib"


def read_credentials(path: Path) -> dict[str, str]:
    """``username -> password`` of an earlier ``credentials.csv`` ({} when absent)."""
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["username"]: row["password"] for row in csv.DictReader(fh)}


def write_credentials(path: Path, creds: Iterable[Credential]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["username", "password", "role", "write"])
        for c in creds:
            w.writerow([c.username, c.password, c.role, " ".join(c.write)])


def broker_auth(
    registry: Registry,
    out_dir: Path,
    *,
    root: str,
    per: Literal["device", "grid"] = "device",
    acl: Literal["exact", "pattern"] = "exact",
    collector_user: str = "gridwatch-collector",
    publisher_user: str | None = None,
    use_mosquitto_passwd: bool | None = None,
    source: str = "the registry",
) -> AuthFiles:
    """Write ``passwd``, ``acl``, ``credentials.csv`` and ``mosquitto-auth.conf`` to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = AuthFiles(
        out_dir / "passwd",
        out_dir / "acl",
        out_dir / "credentials.csv",
        out_dir / "mosquitto-auth.conf",
        0,
    )
    creds = plan_credentials(
        registry,
        root=root,
        per=per,
        acl=acl,
        collector_user=collector_user,
        publisher_user=publisher_user,
        existing=read_credentials(files.credentials),
    )
    write_credentials(files.credentials, creds)
    hasher = write_password_file(files.passwd, creds, use_mosquitto_passwd=use_mosquitto_passwd)
    write_acl(files.acl, creds, root=root, acl=acl, source=source)
    files.conf.write_text(
        "# Include in mosquitto.conf (replaces allow_anonymous true)\n"
        "allow_anonymous false\n"
        f"password_file {files.passwd.resolve()}\n"
        f"acl_file {files.acl.resolve()}\n",
        encoding="utf-8",
    )
    log.info(
        "broker credentials written",
        extra={"dir": str(out_dir), "users": len(creds), "hasher": hasher, "acl": acl},
    )
    return AuthFiles(files.passwd, files.acl, files.credentials, files.conf, len(creds))
