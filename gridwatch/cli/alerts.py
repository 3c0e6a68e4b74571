"""``gridwatch alerts`` and ``gridwatch plans``: the dispatcher's actions from a terminal.

    gridwatch alerts list --grid s01c01g01 --grade red --state open
    gridwatch alerts ack 42 --by zhang.wei
    gridwatch alerts resolve 42 --by zhang.wei --note "passengers freed, car at L3"
    gridwatch alerts silence --device el000123 --for 2h --by li.na --reason "annual inspection"
    gridwatch alerts queues
    gridwatch plans activate urban_waterlogging --street s03 --by zhang.wei
    gridwatch plans status 7

Every command takes ``--db URL`` (default ``sqlite:///./data/gridwatch.db``). The CLI acts
with full scope (an operator on the server); the console applies per-user scopes.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from gridwatch.errors import ConfigError
from gridwatch.registry import Registry

DEFAULT_DB = "sqlite:///./data/gridwatch.db"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=DEFAULT_DB, help=f"storage URL (default {DEFAULT_DB})")
    p.add_argument(
        "--registry", type=Path, help="registry CSV/JSONL (default: the one saved in --db)"
    )
    p.add_argument("--plans", type=Path, help="plans file (default: the shipped plans)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def register(sub: Any) -> None:
    p = sub.add_parser("alerts", help="list, acknowledge, resolve and silence alerts; queues")
    a = p.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)

    ls = a.add_parser("list", help="alerts, red first, newest first")
    _common(ls)
    ls.add_argument("--grid", action="append", help="only these grids (repeatable)")
    ls.add_argument("--grade", action="append", choices=["red", "yellow", "green"])
    ls.add_argument(
        "--state", action="append", choices=["open", "acknowledged", "in_progress", "resolved"]
    )
    ls.add_argument("--kind", action="append", help="alert kind (repeatable)")
    ls.add_argument("--device")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--cursor", help="next_cursor of the previous page")
    ls.set_defaults(func=_list)

    sh = a.add_parser("show", help="one alert with its audit trail")
    _common(sh)
    sh.add_argument("id", type=int)
    sh.set_defaults(func=_show)

    for name, helptext in (
        ("ack", "acknowledge (stops escalation)"),
        ("start", "mark in progress"),
        ("resolve", "resolve with a note"),
    ):
        t = a.add_parser(name, help=helptext)
        _common(t)
        t.add_argument("id", type=int)
        t.add_argument("--by", required=True, help="who acts (recorded in the audit trail)")
        t.add_argument("--note", required=name == "resolve")
        t.set_defaults(func=_transition, action=name)

    si = a.add_parser("silence", help="silence a place for a while (who and why recorded)")
    _common(si)
    where = si.add_mutually_exclusive_group(required=True)
    for level in ("device", "building", "grid", "community", "street"):
        where.add_argument(f"--{level}")
    si.add_argument("--for", dest="duration", required=True, help="e.g. 90m, 2h, 1d")
    si.add_argument("--by", required=True)
    si.add_argument("--reason", required=True)
    si.add_argument("--alert", action="append", default=[], help="only this alert kind")
    si.set_defaults(func=_silence)

    sl = a.add_parser("silences", help="active silences")
    _common(sl)
    sl.add_argument("--all", action="store_true", help="include expired ones")
    sl.set_defaults(func=_silences)

    us = a.add_parser("unsilence", help="end a silence now")
    _common(us)
    us.add_argument("id", type=int)
    us.add_argument("--by", required=True)
    us.set_defaults(func=_unsilence)

    q = a.add_parser("queues", help="dispatch queue depth per grid / community / street")
    _common(q)
    q.set_defaults(func=_queues)

    cl = a.add_parser("claim", help="claim items of one queue (leased; ack them after)")
    _common(cl)
    cl.add_argument("--level", default="grid", choices=["grid", "community", "street"])
    cl.add_argument("queue", help="grid / community / street id")
    cl.add_argument("--consumer", required=True)
    cl.add_argument("--limit", type=int, default=10)
    cl.add_argument("--lease-s", type=float, default=60.0)
    cl.set_defaults(func=_claim)

    ai = a.add_parser("ack-item", help="confirm delivery of claimed queue items")
    _common(ai)
    ai.add_argument("ids", type=int, nargs="+")
    ai.add_argument("--consumer", required=True)
    ai.set_defaults(func=_ack_items)

    pp = sub.add_parser("plans", help="activate, follow and close emergency plans")
    ps = pp.add_subparsers(dest="plans_command", metavar="ACTION", required=True)
    pl = ps.add_parser("list", help="the plans and their active activations")
    _common(pl)
    pl.set_defaults(func=_plans_list)
    ac = ps.add_parser("activate", help="one task in the queue of every grid of an area")
    _common(ac)
    ac.add_argument("plan")
    area = ac.add_mutually_exclusive_group(required=True)
    for level in ("street", "community", "grid"):
        area.add_argument(f"--{level}")
    ac.add_argument("--by", required=True)
    ac.add_argument("--note")
    ac.add_argument("--alert", type=int, help="the alert that prompted it")
    ac.set_defaults(func=_activate)
    st = ps.add_parser("status", help="each grid's acknowledgement of an activation")
    _common(st)
    st.add_argument("id", type=int)
    st.set_defaults(func=_status)
    ak = ps.add_parser("ack", help="a grid acknowledges its plan task")
    _common(ak)
    ak.add_argument("id", type=int)
    ak.add_argument("--grid", required=True)
    ak.add_argument("--by", required=True)
    ak.add_argument("--note")
    ak.set_defaults(func=_ack_task)
    cs = ps.add_parser("close", help="close an activation")
    _common(cs)
    cs.add_argument("id", type=int)
    cs.add_argument("--by", required=True)
    cs.add_argument("--note")
    cs.set_defaults(func=_close)


# -- plumbing ---------------------------------------------------------------------------


def _service(args: argparse.Namespace) -> Any:
    from alerts.plans import load_plans
    from alerts.service import AlertService
    from storage import open_storage

    storage = open_storage(args.db)
    storage.migrate()
    if args.registry:
        registry = Registry.load(args.registry)
    else:
        registry = storage.load_registry()
        if len(registry) == 0:
            raise ConfigError(
                f"{args.db} holds no device registry; pass --registry FILE "
                "(or start the pipeline once, which saves it)"
            )
    plans = load_plans(args.plans) if args.plans else None
    return AlertService(storage, registry, plans=plans)


def _scope() -> Any:
    from alerts.model import Scope

    return Scope.everything()


def _emit(args: argparse.Namespace, obj: Any, text: str) -> None:
    if args.json:
        sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(text)


def _ts(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ConfigError(f"--for {text!r}: expected a duration like 90s, 30m, 2h or 1d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


# -- alerts -----------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    svc = _service(args)
    page = svc.list_alerts(
        _scope(),
        grades=args.grade,
        states=args.state,
        kinds=args.kind,
        grids=args.grid,
        device_id=args.device,
        limit=args.limit,
        cursor=args.cursor,
    )
    lines = [
        f"{a.id:>7} {a.grade:6s} {a.state:12s} {a.kind:22s} {a.grid or a.street:12s} "
        f"{a.device_id or a.scope_id:14s} x{a.count:<6} opened {_ts(a.opened_ms)}"
        for a in page.items
    ]
    if page.next_cursor:
        lines.append(f"more: --cursor {page.next_cursor}")
    _emit(args, page.as_dict(), "\n".join(lines) or "no alerts")
    return 0


def _show(args: argparse.Namespace) -> int:
    d = _service(args).get_alert(args.id, _scope())
    a = d.alert
    lines = [
        f"alert {a.id}: {a.grade} {a.kind} ({a.state}) rule {a.rule}",
        f"  place: street {a.street} community {a.community} grid {a.grid} building {a.building}",
        f"  device {a.device_id}  count {a.count}  first seen {_ts(a.first_seen_ms)}  "
        f"last seen {_ts(a.last_seen_ms)}",
        f"  evidence: {orjson.dumps(a.evidence).decode()}",
    ]
    if a.suggested_plan:
        lines.append(f"  suggests plan: {a.suggested_plan}")
    lines.append("  audit:")
    lines += [
        f"    {_ts(e.ts_ms)} {e.actor:14s} {e.action:14s} "
        f"{(e.from_state or '') + ('->' + e.to_state if e.to_state else ''):26s} {e.note or ''}"
        for e in d.audit
    ]
    _emit(args, d.as_dict(), "\n".join(lines))
    return 0


def _transition(args: argparse.Namespace) -> int:
    svc = _service(args)
    if args.action == "resolve":
        a = svc.resolve(args.id, args.by, _scope(), note=args.note)
    else:
        a = getattr(svc, args.action)(args.id, args.by, _scope(), note=args.note)
    _emit(args, a.as_dict(), f"alert {a.id} is now {a.state}")
    return 0


def _silence(args: argparse.Namespace) -> int:
    level = next(
        lv for lv in ("device", "building", "grid", "community", "street") if getattr(args, lv)
    )
    s = _service(args).silence(
        args.by,
        _scope(),
        level=level,
        target=getattr(args, level),
        reason=args.reason,
        duration_s=parse_duration(args.duration),
        alerts=args.alert,
    )
    _emit(args, s.as_dict(), f"silence {s.id}: {level} {s.target} until {_ts(s.ends_ms)} UTC")
    return 0


def _silences(args: argparse.Namespace) -> int:
    rows = _service(args).list_silences(_scope(), include_expired=args.all)
    text = "\n".join(
        f"{s.id:>5} {s.scope:9s} {s.target:14s} {_ts(s.starts_ms)} -> {_ts(s.ends_ms)} "
        f"by {s.by}: {s.reason}"
        + (f" [{', '.join(sorted(a.value for a in s.alerts))}]" if s.alerts else "")
        for s in rows
    )
    _emit(args, [s.as_dict() for s in rows], text or "no silences")
    return 0


def _unsilence(args: argparse.Namespace) -> int:
    _service(args).revoke_silence(args.id, args.by, _scope())
    _emit(args, {"revoked": args.id}, f"silence {args.id} ended")
    return 0


def _queues(args: argparse.Namespace) -> int:
    rows = _service(args).queue_depths(_scope())
    text = "\n".join(
        f"{r['level']:9s} {r['queue']:14s} ready {r['ready']:>5} claimed {r['claimed']:>5} "
        f"waiting {r['waiting']:>5}"
        for r in rows
    )
    _emit(args, rows, text or "all queues empty")
    return 0


def _claim(args: argparse.Namespace) -> int:
    items = _service(args).claim(
        _scope(),
        level=args.level,
        queue=args.queue,
        consumer=args.consumer,
        limit=args.limit,
        lease_s=args.lease_s,
    )
    text = "\n".join(
        f"{i.id:>7} {i.item_kind:12s} sev {i.severity} alerts {list(i.alert_ids)} "
        f"{i.payload.get('kind') or i.payload.get('plan', '')}"
        for i in items
    )
    _emit(args, [i.as_dict() for i in items], text or "nothing to claim")
    return 0


def _ack_items(args: argparse.Namespace) -> int:
    done = _service(args).ack_items(args.ids, args.consumer)
    _emit(args, {"acked": done}, f"acked {done}")
    return 0 if len(done) == len(args.ids) else 1


# -- plans ------------------------------------------------------------------------------


def _plans_list(args: argparse.Namespace) -> int:
    svc = _service(args)
    active = svc.list_activations(_scope())
    lines = [f"{name:22s} {p.title}" for name, p in svc.plans.plans.items()]
    lines += [
        f"active #{s.id}: {s.activation['plan']} for {s.activation['area_level']} "
        f"{s.activation['area_id']} ({s.acked}/{len(s.tasks)} grids acknowledged)"
        for s in active
    ]
    _emit(
        args,
        {
            "plans": {k: v.model_dump() for k, v in svc.plans.plans.items()},
            "active": [s.as_dict() for s in active],
        },
        "\n".join(lines),
    )
    return 0


def _print_status(args: argparse.Namespace, s: Any) -> None:
    act = s.activation
    lines = [
        f"plan #{s.id} {act['plan']} ({s.plan['title']}) for {act['area_level']} {act['area_id']}: "
        f"{act['state']}, {s.acked}/{len(s.tasks)} grids acknowledged",
    ]
    lines += [
        f"  {t['grid']:14s} "
        + (
            f"acknowledged by {t['acked_by']} at {_ts(t['acked_ms'])}"
            if t["acked_ms"]
            else "waiting"
        )
        for t in s.tasks
    ]
    _emit(args, s.as_dict(), "\n".join(lines))


def _activate(args: argparse.Namespace) -> int:
    level = next(lv for lv in ("street", "community", "grid") if getattr(args, lv))
    s = _service(args).activate_plan(
        args.plan,
        args.by,
        _scope(),
        level=level,
        area=getattr(args, level),
        note=args.note,
        source_alert_id=args.alert,
    )
    _print_status(args, s)
    return 0


def _status(args: argparse.Namespace) -> int:
    _print_status(args, _service(args).plan_status(args.id, _scope()))
    return 0


def _ack_task(args: argparse.Namespace) -> int:
    _print_status(
        args, _service(args).ack_plan_task(args.id, args.grid, args.by, _scope(), note=args.note)
    )
    return 0


def _close(args: argparse.Namespace) -> int:
    _print_status(args, _service(args).close_plan(args.id, args.by, _scope(), note=args.note))
    return 0
