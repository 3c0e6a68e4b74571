"""``gridwatch db``: migrate, inspect and maintain the store.

Every action takes ``--db URL`` (default: the configured ``storage.url``, itself
defaulting to the embedded ``sqlite:///./data/gridwatch.db``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import orjson

from gridwatch.config import load_settings
from gridwatch.registry import Registry
from storage.engine import Storage, mask_url, open_storage


def add_db_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help="postgresql://user@host:5432/db[?schema=s] or sqlite:///path.db "
        "(default: storage.url of the configuration, sqlite:///./data/gridwatch.db)",
    )
    p.add_argument("--config", type=Path, default=None, help="TOML configuration file")


def db_url(args: argparse.Namespace) -> str:
    if args.db:
        return str(args.db)
    return load_settings(args.config).storage.url


def open_from_args(args: argparse.Namespace) -> Storage:
    return open_storage(db_url(args))


def register(sub: Any) -> None:
    p = sub.add_parser("db", help="migrate, inspect and maintain the database")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)

    m = dsub.add_parser("migrate", help="apply pending schema migrations (idempotent)")
    add_db_option(m)
    m.set_defaults(func=_migrate)

    s = dsub.add_parser("stats", help="schema version, table sizes, partitions")
    add_db_option(s)
    s.add_argument("--json", action="store_true", help="print JSON instead of a summary")
    s.set_defaults(func=_stats)

    mt = dsub.add_parser(
        "maintain", help="create partitions ahead and apply retention (the writer does this hourly)"
    )
    add_db_option(mt)
    mt.add_argument("--retention-days", type=int, default=None, help="default: configuration")
    mt.add_argument("--ahead-days", type=int, default=2)
    mt.set_defaults(func=_maintain)

    r = dsub.add_parser("load-registry", help="store a registry file (keys stay stable)")
    add_db_option(r)
    r.add_argument("registry", type=Path, help="registry .csv or .jsonl")
    r.set_defaults(func=_load_registry)


def _migrate(args: argparse.Namespace) -> int:
    with open_from_args(args) as storage:
        applied = storage.migrate()
    url = mask_url(db_url(args))
    if applied:
        print(f"{url}: applied {', '.join(applied)}")
    else:
        print(f"{url}: up to date")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from storage.deadletters import dead_letter_counts
    from storage.stats import db_stats

    with open_from_args(args) as storage:
        stats = db_stats(storage)
        if stats["schema_version"]:
            stats["dead_letters_by_reason"] = {
                r: {"records": c, "rows": n} for r, (c, n) in dead_letter_counts(storage).items()
            }
    if args.json:
        print(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode())
        return 0
    _print_stats(mask_url(db_url(args)), stats)
    return 0


def _print_stats(url: str, stats: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{url}[/] ({stats['dialect']}), schema version {stats['schema_version']}")
    if "note" in stats:
        console.print(stats["note"])
        return
    console.print(
        f"partitioning: {stats['partitioning']}   devices: {stats['active_devices']} active, "
        f"{stats['tables']['devices']} ever   dead letters: {stats['tables']['dead_letters']}   "
        f"checkpoints: {stats['tables']['detector_checkpoints']}"
    )
    table = Table("kind", "readings", "partitions", "in default", "rollup rows", "size")
    for kind, r in stats["readings"].items():
        if stats["dialect"] == "sqlite":
            table.add_row(kind, f"{r['rows']:,}", "-", "-", f"{r['rollup_rows']:,}", "")
        elif "partitions" not in r:  # TimescaleDB: chunks are the extension's
            table.add_row(kind, f"~{r['rows_estimate']:,}", "hypertable", "-", "-", "")
        else:
            parts = r["partitions"]
            named = [
                p["name"].rsplit("_p", 1)[-1] for p in parts if not p["name"].endswith("_default")
            ]
            span = f"{len(named)} ({named[0]}..{named[-1]})" if named else "0"
            table.add_row(
                kind,
                f"~{r['rows_estimate']:,}",
                span,
                f"{r['default_partition_rows']:,}",
                f"~{r['rollup_rows_estimate']:,}",
                f"{(r['bytes'] + r['rollup_bytes']) / 1e6:,.1f} MB",
            )
    console.print(table)
    if stats.get("database_bytes"):
        console.print(f"database file: {stats['database_bytes'] / 1e6:,.1f} MB")
    if stats.get("dead_letters_by_reason"):
        dl = Table("dead-letter reason", "records", "rows")
        for reason, v in stats["dead_letters_by_reason"].items():
            dl.add_row(reason, f"{v['records']:,}", f"{v['rows']:,}")
        console.print(dl)


def _maintain(args: argparse.Namespace) -> int:
    from storage.maintenance import maintain
    from storage.partitions import PartitionPolicy

    retention = args.retention_days or load_settings(args.config).storage.retention_days
    policy = PartitionPolicy(ahead_days=args.ahead_days, retention_days=retention)
    with open_from_args(args) as storage:
        report = maintain(storage, time.time_ns() // 1_000_000, policy)
    print(orjson.dumps(report).decode())
    return 0


def _load_registry(args: argparse.Namespace) -> int:
    registry = Registry.load(args.registry)
    with open_from_args(args) as storage:
        storage.migrate()
        keys = storage.save_registry(registry)
    print(f"stored {len(registry)} devices (keys {int(keys.min())}..{int(keys.max())})")
    return 0
