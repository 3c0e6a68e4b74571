"""``gridwatch rules``: check a rules file, and see which entry a detection resolves to.

    gridwatch rules check my_rules.toml --registry district.csv
    gridwatch rules explain my_rules.toml overflow_forecast --grid s01c01g01 \\
        --evidence time_to_overflow_s=1500
    gridwatch rules default > my_rules.toml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gridwatch.domain import DetectionKind
from gridwatch.errors import ConfigError
from gridwatch.registry import Registry


def register(sub: Any) -> None:
    p = sub.add_parser("rules", help="check rules files and explain how a detection is graded")
    rsub = p.add_subparsers(dest="rules_command", metavar="ACTION", required=True)

    c = rsub.add_parser("check", help="validate a rules file (every problem, with its key path)")
    c.add_argument("file", type=Path)
    c.add_argument("--registry", type=Path, help="registry CSV/JSONL: also check grid/street ids")
    c.add_argument("--plans", type=Path, help="plans file: also check suggest_plan names")
    c.set_defaults(func=_check)

    e = rsub.add_parser("explain", help="which rule entry a sample detection resolves to")
    e.add_argument("file", type=Path)
    e.add_argument("kind", choices=[k.value for k in DetectionKind], metavar="KIND")
    e.add_argument("--grid", help="grid id (street and community come from --registry)")
    e.add_argument("--community")
    e.add_argument("--street")
    e.add_argument("--device", help="device id (needs --registry)")
    e.add_argument("--registry", type=Path)
    e.add_argument(
        "--evidence",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="evidence of the sample detection, e.g. time_to_overflow_s=1500 (repeatable)",
    )
    e.add_argument("--score", type=float, default=1.0, help="the detection's score (default 1)")
    e.set_defaults(func=_explain)

    d = rsub.add_parser("default", help="print the shipped default rules file")
    d.set_defaults(func=_default)


def _plan_names(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    from alerts.plans import load_plans

    return list(load_plans(path).plans)


def _check(args: argparse.Namespace) -> int:
    from rules.load import RulesError, load_rules
    from rules.table import RuleTable

    registry = Registry.load(args.registry) if args.registry else None
    try:
        rs = load_rules(args.file, registry=registry, plan_names=_plan_names(args.plans))
        if registry is not None:
            table = RuleTable.compile(rs, registry)
            extra = (
                f", {len(table.rules)} distinct compiled rules over {registry.grid_ids.size} grids"
            )
        else:
            extra = ""
    except RulesError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print(f"{args.file}: refused ({len(exc.errors)} problem(s))", file=sys.stderr)
        return 1
    print(f"{args.file}: ok: {len(rs.root)} rules, digest {rs.digest}{extra}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from rules.load import load_rules

    registry = Registry.load(args.registry) if args.registry else None
    grid, community, street = args.grid, args.community, args.street
    if args.device:
        if registry is None:
            raise ConfigError("--device needs --registry to find the device's grid")
        place = registry.place(registry.index(args.device))
        grid, community, street = place.grid, place.community, place.street
    if grid and registry is not None:
        community = community or registry.community_of_grid(grid)
        street = street or registry.street_of_grid(grid)
    rs = load_rules(args.file, registry=registry)
    kind = DetectionKind(args.kind)
    rule = rs.resolve(kind, street=street, community=community, grid=grid)
    where = ", ".join(
        f"{k}={v}" for k, v in (("street", street), ("community", community), ("grid", grid)) if v
    )
    if rule is None:
        print(f"{kind.value} at {where or 'district level'}: no rule (detections are ignored)")
        return 0
    print(f"{kind.value} at {where or 'district level'} resolves to [{rule.path}]")
    if not rule.enabled:
        print("  enabled = false: detections of this kind are ignored here")
    for key, value in rule.describe().items():
        if key == "detection":
            continue
        src = _source(rule, key)
        print(f"  {key:14s} = {value!s:<22s} from {src}")
    evidence = {}
    for item in args.evidence:
        name, _, raw = item.partition("=")
        try:
            evidence[name.strip()] = float(raw)
        except ValueError:
            raise ConfigError(f"--evidence {item!r}: expected NAME=NUMBER") from None
    value = args.score if rule.evidence == "score" else evidence.get(rule.evidence or "")
    if rule.min_score and args.score < rule.min_score:
        print(f"sample: score {args.score:g} < min_score {rule.min_score:g}: ignored")
        return 0
    grade = rule.grade_of(value)
    shown = "no evidence value" if value is None else f"{rule.evidence} = {value:g}"
    if grade is None:
        holds = rule.holds(value)
        print(
            f"sample ({shown}): below every level; "
            + ("an open alert would still hold (hysteresis band)" if holds else "condition absent")
        )
    else:
        print(
            f"sample ({shown}): fires {grade.value} {rule.alert.value} after {rule.for_s:g} s; "
            f"clears {rule.clear_after_s:g} s after the condition is gone"
            + ("" if rule.auto_clear else " only when a dispatcher resolves it")
        )
    return 0


def _source(rule: Any, key: str) -> str:
    if key in rule.sources:
        return str(rule.sources[key])
    return "defaults" if key in ("hysteresis", "min_score") else "(derived)"


def _default(args: argparse.Namespace) -> int:
    from rules.load import DEFAULT_RULES_PATH

    sys.stdout.write(DEFAULT_RULES_PATH.read_text(encoding="utf-8"))
    return 0
