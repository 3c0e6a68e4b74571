"""``gridwatch console`` serves the dispatcher console alone; ``gridwatch user`` manages
its accounts.

    gridwatch user add zhang.wei --role dispatcher --grids s01c01g01 s01c01g02
    gridwatch user add li.na --role supervisor --street s01
    printf '%s\\n' "$PW" | gridwatch user add ops --role admin --password-stdin
    gridwatch console --db postgresql://gridwatch@db:5432/gridwatch --host 0.0.0.0 --port 8080

Passwords are read from a prompt (typed twice) or, for scripts, one line from stdin with
``--password-stdin``; never from the command line, where ``ps`` and shell history would
show them. Grids and streets are checked against the registry (the one stored in the
database, or ``--registry``).
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from gridwatch.cli.db import add_db_option, db_url, open_from_args
from gridwatch.errors import ConfigError
from gridwatch.registry import Registry
from storage.engine import Storage, mask_url

ROLES = ("dispatcher", "supervisor", "admin")


def register(sub: Any) -> None:
    c = sub.add_parser("console", help="serve the dispatcher web console")
    add_db_option(c)
    c.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    c.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free)")
    c.add_argument("--registry", type=Path, help="registry CSV/JSONL (default: the stored one)")
    c.add_argument("--plans", type=Path, help="plans file (default: the shipped plans)")
    c.add_argument(
        "--trusted-origin",
        action="append",
        default=[],
        metavar="URL",
        help="public origin behind a reverse proxy, e.g. https://console.example.org (repeatable)",
    )
    c.add_argument(
        "--cookie-secure",
        action="store_true",
        help="always mark the session cookie Secure (when TLS ends at a proxy)",
    )
    c.add_argument("--no-migrate", action="store_true", help="do not apply pending migrations")
    c.set_defaults(func=_console)

    u = sub.add_parser("user", help="manage console accounts")
    us = u.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    a = us.add_parser("add", help="create an account (password from a prompt or stdin)")
    a.add_argument("name")
    _scope_options(a, required_role=True)
    a.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    a.set_defaults(func=_add)
    s = us.add_parser("set", help="change an account's role, grids or street")
    s.add_argument("name")
    _scope_options(s, required_role=False)
    s.set_defaults(func=_set)
    pw = us.add_parser("passwd", help="set a new password (ends the account's sessions)")
    pw.add_argument("name")
    add_db_option(pw)
    pw.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    pw.set_defaults(func=_passwd)
    for name, helptext, fn in (
        ("disable", "refuse sign-in and end the account's sessions", _disable),
        ("enable", "allow sign-in again", _enable),
        ("unlock", "clear a sign-in lockout after failed attempts", _unlock),
        ("remove", "delete the account and its sessions", _remove),
    ):
        x = us.add_parser(name, help=helptext)
        x.add_argument("name")
        add_db_option(x)
        x.set_defaults(func=fn)
    ls = us.add_parser("list", help="list accounts")
    add_db_option(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)


def _scope_options(p: argparse.ArgumentParser, *, required_role: bool) -> None:
    add_db_option(p)
    p.add_argument("--role", choices=ROLES, required=required_role)
    p.add_argument(
        "--grids",
        nargs="+",
        default=None,
        metavar="GRID",
        help="grids the user works on (space or comma separated)",
    )
    p.add_argument("--street", default=None, help="a supervisor's street")
    p.add_argument("--registry", type=Path, help="registry to check grids against")


# -- helpers ----------------------------------------------------------------------------


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _registry(storage: Storage, path: Path | None) -> Registry:
    if path is not None:
        return Registry.load(path)
    reg = storage.load_registry()
    if len(reg) == 0:
        raise ConfigError(
            "no registry is stored in this database: load one (gridwatch db load-registry) "
            "or pass --registry FILE"
        )
    return reg  # type: ignore[no-any-return]


def _grids(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    out = [g.strip() for v in values for g in v.split(",") if g.strip()]
    return sorted(set(out))


def _check_scope(role: str, grids: list[str], street: str | None, registry: Registry) -> None:
    unknown = [g for g in grids if g not in set(registry.grid_ids.tolist())]
    if unknown:
        raise ConfigError(f"--grids: unknown grids {unknown} (not in the registry)")
    if street is not None and street not in set(registry.street_ids.tolist()):
        raise ConfigError(f"--street: unknown street {street!r} (not in the registry)")
    if role == "dispatcher" and not grids:
        raise ConfigError("a dispatcher needs --grids (the grids they work on)")
    if role == "dispatcher" and street:
        raise ConfigError("--street is for supervisors; give a dispatcher --grids")
    if role == "supervisor" and not street and not grids:
        raise ConfigError("a supervisor needs --street (or --grids)")
    if role == "admin" and (grids or street):
        raise ConfigError("an admin sees every grid: leave out --grids and --street")


def _read_password(from_stdin: bool) -> str:
    from alerts.console.passwords import check_policy

    if from_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise ConfigError("no terminal to ask for the password: pipe it with --password-stdin")
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the passwords differ")
    check_policy(password)
    return password


# -- user commands ------------------------------------------------------------------------


def _add(args: argparse.Namespace) -> int:
    from alerts.console.passwords import hash_password
    from storage import users

    grids = _grids(args.grids) or []
    with open_from_args(args) as storage:
        storage.migrate()
        _check_scope(args.role, grids, args.street, _registry(storage, args.registry))
        if users.get_user(storage, args.name) is not None:
            raise ConfigError(f"user {args.name!r} already exists (change it with 'user set')")
        password = _read_password(args.password_stdin)
        user = users.create_user(
            storage,
            name=args.name,
            role=args.role,
            grids=grids,
            street=args.street,
            password_hash=hash_password(password),
            now_ms=_now_ms(),
        )
    print(f"created {user.role} {user.name!r}" + _scope_text(user.grids, user.street))
    return 0


def _scope_text(grids: tuple[str, ...] | list[str], street: str | None) -> str:
    parts = []
    if street:
        parts.append(f"street {street}")
    if grids:
        parts.append(f"grids {', '.join(grids)}")
    return f" ({'; '.join(parts)})" if parts else ""


def _set(args: argparse.Namespace) -> int:
    from storage import users

    with open_from_args(args) as storage:
        user = users.get_user(storage, args.name)
        if user is None:
            raise ConfigError(f"no user {args.name!r}")
        role = args.role or user.role
        grids = _grids(args.grids)
        street = args.street if args.street is not None else user.street
        if role == "dispatcher" and args.street is None:
            street = None
        if role == "admin":
            grids, street = [], None
        _check_scope(
            role,
            list(user.grids) if grids is None else grids,
            street,
            _registry(storage, args.registry),
        )
        user = users.update_user(
            storage,
            args.name,
            now_ms=_now_ms(),
            role=role,
            grids=grids,
            street=street,
            clear_street=street is None,
        )
    print(f"{user.role} {user.name!r}" + _scope_text(user.grids, user.street))
    return 0


def _passwd(args: argparse.Namespace) -> int:
    from alerts.console.passwords import hash_password
    from storage import users

    with open_from_args(args) as storage:
        if users.get_user(storage, args.name) is None:
            raise ConfigError(f"no user {args.name!r}")
        password = _read_password(args.password_stdin)
        users.update_user(
            storage, args.name, now_ms=_now_ms(), password_hash=hash_password(password)
        )
    print(f"password of {args.name!r} changed; their sessions ended")
    return 0


def _disable(args: argparse.Namespace) -> int:
    from storage import users

    with open_from_args(args) as storage:
        users.update_user(storage, args.name, now_ms=_now_ms(), disabled=True)
    print(f"{args.name!r} disabled; their sessions ended")
    return 0


def _enable(args: argparse.Namespace) -> int:
    from storage import users

    with open_from_args(args) as storage:
        users.update_user(storage, args.name, now_ms=_now_ms(), disabled=False)
    print(f"{args.name!r} enabled")
    return 0


def _unlock(args: argparse.Namespace) -> int:
    from storage import users

    with open_from_args(args) as storage:
        users.record_attempt(
            storage, name=args.name, remote="cli", now_ms=_now_ms(), outcome="unlock"
        )
    print(f"{args.name!r} may sign in again")
    return 0


def _remove(args: argparse.Namespace) -> int:
    from storage import users

    with open_from_args(args) as storage:
        users.delete_user(storage, args.name)
    print(f"{args.name!r} removed")
    return 0


def _list(args: argparse.Namespace) -> int:
    from storage import users

    with open_from_args(args) as storage:
        found = users.list_users(storage)
    rows = [
        {
            "name": u.name,
            "role": u.role,
            "grids": list(u.grids),
            "street": u.street,
            "disabled": u.disabled,
        }
        for u in found
    ]
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not found:
        print("no users; create one with: gridwatch user add NAME --role ...")
    for u in found:
        flag = " (disabled)" if u.disabled else ""
        print(f"{u.name:20s} {u.role:10s}{_scope_text(u.grids, u.street)}{flag}")
    return 0


# -- the server ----------------------------------------------------------------------------


def _console(args: argparse.Namespace) -> int:
    from alerts.console import ConsoleOptions, create_app
    from alerts.console.server import bind, serve, url_of
    from alerts.plans import load_plans
    from alerts.service import AlertService
    from gridwatch.clock import SystemClock
    from storage import users

    storage = open_from_args(args)
    try:
        if not args.no_migrate:
            storage.migrate()
        registry = _registry(storage, args.registry)
        if not users.list_users(storage):
            print(
                "warning: no console accounts yet; create one with "
                "'gridwatch user add NAME --role admin'",
                file=sys.stderr,
            )
        clock = SystemClock()
        service = AlertService(
            storage,
            registry,
            plans=load_plans(args.plans) if args.plans else None,
            clock=clock,
        )
        options = ConsoleOptions(
            trusted_origins=tuple(args.trusted_origin),
            cookie_secure=True if args.cookie_secure else None,
        )
        app = create_app(storage, registry, service=service, clock=clock, options=options)
        try:
            sock = bind(args.host, args.port)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
        print(
            f"console for {mask_url(db_url(args))} ({registry.grid_ids.size} grids) "
            f"listening on {url_of(sock)}",
            flush=True,
        )
        serve(app, sock)
    finally:
        storage.close()
    return 0
