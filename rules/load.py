"""Loading and checking a rules file: every mistake is reported with file, key path, value
and expectation, e.g. ``rules.toml: grids.g12.overflow_forecast.for_s = -5: must be >= 0``.

The whole file is checked before anything is refused (as Alertmanager's ``amtool check-config``
does), so an engineer fixes every mistake in one round. References are checked too: grid,
street, community, building and device ids against the registry when one is given, and
``suggest_plan`` against the plans file's plan names when they are given.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from gridwatch.domain import AlertKind, DetectionKind, Grade
from gridwatch.errors import ConfigError
from gridwatch.registry import Registry
from rules.config import NotifySpec, RuleEntry, RulesFile, _default_notify
from rules.resolve import MISSING, Problem, Rule, build_rule, merge

DEFAULT_RULES_PATH = Path(__file__).resolve().parent / "default_rules.toml"


class RulesError(ConfigError):
    """A rules file was refused; ``errors`` holds one line per problem, in file order."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors = list(errors)
        head = f"{source}: {len(self.errors)} problem(s); the file was refused"
        super().__init__("\n".join([*self.errors, head]) if len(self.errors) > 1 else errors[0])


@dataclass(frozen=True, slots=True)
class Window:
    """A maintenance window from the rules file, times in epoch ms (wall clock)."""

    scope: str
    target: str
    alerts: frozenset[AlertKind]
    starts_ms: int
    ends_ms: int
    by: str
    reason: str


@dataclass(frozen=True)
class RuleSet:
    """A validated rules file, ready to resolve a detection kind for any place."""

    source: str
    file: RulesFile
    root: dict[DetectionKind, Rule]
    windows: tuple[Window, ...]
    digest: str
    plan_names: frozenset[str] | None = field(default=None, compare=False)

    def layers(
        self,
        kind: DetectionKind,
        street: str | None = None,
        community: str | None = None,
        grid: str | None = None,
    ) -> list[tuple[str, RuleEntry]]:
        """The tree levels that speak about ``kind`` on this path, root first."""
        out: list[tuple[str, RuleEntry]] = []
        if kind in self.file.rules:
            out.append((f"rules.{kind.value}", self.file.rules[kind]))
        for table, key in (
            ("streets", street),
            ("communities", community),
            ("grids", grid),
        ):
            entry = getattr(self.file, table).get(key, {}).get(kind) if key else None
            if entry is not None:
                out.append((f"{table}.{key}.{kind.value}", entry))
        return out

    def resolve(
        self,
        kind: DetectionKind,
        *,
        street: str | None = None,
        community: str | None = None,
        grid: str | None = None,
    ) -> Rule | None:
        """The effective rule for ``kind`` at this place; None when the file has no rule for it.

        Raises ``RulesError`` when this particular combination of overrides is inconsistent
        (each override alone was checked at load; ``compile`` checks every real path).
        """
        layers = self.layers(kind, street, community, grid)
        if not layers or kind not in self.file.rules:
            return None
        values, sources = merge(kind, self.file.defaults, layers)
        rule, problems = build_rule(kind, values, sources, layers[-1][0])
        if rule is None:
            raise RulesError(self.source, [format_problem(self.source, p, None) for p in problems])
        return rule

    def notify(self, grade: Grade) -> NotifySpec:
        return self.file.notify.get(grade) or _default_notify()[grade]


def load_rules(
    path: str | Path = DEFAULT_RULES_PATH,
    *,
    registry: Registry | None = None,
    plan_names: Iterable[str] | None = None,
) -> RuleSet:
    """Read and check a rules file; raises ``RulesError`` naming every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(str(path), [f"{path}: cannot read the rules file: {exc}"]) from exc
    return parse_rules(text, str(path), registry=registry, plan_names=plan_names)


def parse_rules(
    text: str,
    source: str = "rules.toml",
    *,
    registry: Registry | None = None,
    plan_names: Iterable[str] | None = None,
) -> RuleSet:
    """Check rules given as TOML text (``source`` names it in messages).

    >>> rs = parse_rules('''
    ... [rules.overflow_forecast]
    ... alert = "overflow_imminent"
    ... evidence = "time_to_overflow_s"
    ... worse = "lower"
    ... red = 1800
    ... yellow = 3600
    ... ''')
    >>> rule = rs.resolve(DetectionKind.OVERFLOW_FORECAST)
    >>> rule.grade_of(1500.0).value, rule.grade_of(2500.0).value, rule.grade_of(4000.0)
    ('red', 'yellow', None)
    >>> try:
    ...     parse_rules("[rules.stuck]\\nalert = 'sensor_stuck'\\nfor_s = -5\\n")
    ... except RulesError as exc:
    ...     print(exc)
    rules.toml: rules.stuck.for_s = -5: must be >= 0 (line 3)
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(source, [f"{source}: not valid TOML: {exc}"]) from exc
    try:
        model = RulesFile.model_validate(raw)
    except ValidationError as exc:
        errors = _pydantic_errors(exc, raw, source, text)
        raise RulesError(source, errors) from exc
    plans = frozenset(plan_names) if plan_names is not None else None
    problems, root, windows = _check(model, raw, registry, plans)
    if problems:
        lines = _dedupe([format_problem(source, p, text) for p in problems])
        raise RulesError(source, lines)
    return RuleSet(
        source=source,
        file=model,
        root=root,
        windows=tuple(windows),
        digest=hashlib.sha256(text.encode()).hexdigest()[:12],
        plan_names=plans,
    )


# -- semantic checks ------------------------------------------------------------------


def _check(
    model: RulesFile,
    raw: dict[str, Any],
    registry: Registry | None,
    plans: frozenset[str] | None,
) -> tuple[list[Problem], dict[DetectionKind, Rule], list[Window]]:
    problems: list[Problem] = []
    root: dict[DetectionKind, Rule] = {}
    for kind, entry in model.rules.items():
        values, sources = merge(kind, model.defaults, [(f"rules.{kind.value}", entry)])
        rule, errs = build_rule(kind, values, sources, f"rules.{kind.value}")
        problems += errs
        if rule is not None:
            root[kind] = rule
    known_ids: dict[str, set[str]] = {}
    if registry is not None:
        known_ids = {
            "streets": set(registry.street_ids.tolist()),
            "communities": set(registry.community_ids.tolist()),
            "grids": set(registry.grid_ids.tolist()),
        }
    for table in ("streets", "communities", "grids"):
        for place, overrides in getattr(model, table).items():
            if known_ids and place not in known_ids[table]:
                problems.append(
                    (
                        f"{table}.{place}",
                        MISSING,
                        f"unknown {table[:-1].rstrip('ie')}"
                        f"{'y' if table == 'communities' else ''} id: not in the registry",
                    )
                )
            for kind, entry in overrides.items():
                path = f"{table}.{place}.{kind.value}"
                if kind not in model.rules:
                    problems.append(
                        (path, MISSING, f"overrides nothing: there is no [rules.{kind.value}]")
                    )
                    continue
                layers = [(f"rules.{kind.value}", model.rules[kind]), (path, entry)]
                values, sources = merge(kind, model.defaults, layers)
                problems += build_rule(kind, values, sources, path)[1]
    problems += _check_inhibit(raw)
    for name, spec in model.correlate.items():
        base = f"correlate.{name}"
        if spec.alert in spec.sources:
            problems.append(
                (
                    f"{base}.sources",
                    [s.value for s in spec.sources],
                    f'must not contain the area alert itself ("{spec.alert.value}")',
                )
            )
        if plans is not None and spec.suggest_plan is not None and spec.suggest_plan not in plans:
            problems.append(
                (
                    f"{base}.suggest_plan",
                    spec.suggest_plan,
                    f"unknown plan; the plans file defines {sorted(plans)}",
                )
            )
    steps = model.escalation.red
    for i in range(1, len(steps)):
        if steps[i].after_s <= steps[i - 1].after_s:
            problems.append(
                (
                    f"escalation.red[{i}].after_s",
                    steps[i].after_s,
                    f"must be greater than the previous step's after_s ({steps[i - 1].after_s:g})",
                )
            )
    levels = [s.to for s in steps]
    if levels != sorted(levels, key=("community", "street").index) or len(set(levels)) != len(
        levels
    ):
        problems.append(
            ("escalation.red", levels, 'steps must go "community" then "street", each once')
        )
    windows = []
    for i, s in enumerate(model.silences):
        base = f"silences[{i}]"
        start = _parse_time(s.starts, f"{base}.starts", problems)
        end = _parse_time(s.ends, f"{base}.ends", problems)
        if start is not None and end is not None:
            if end <= start:
                problems.append((f"{base}.ends", s.ends, f"must be after starts ({s.starts})"))
            else:
                windows.append(
                    Window(s.scope, s.target, frozenset(s.alerts), start, end, s.by, s.reason)
                )
        if registry is not None and not _known_target(registry, s.scope, s.target):
            problems.append(
                (f"{base}.target", s.target, f"unknown {s.scope} id: not in the registry")
            )
    return problems, root, windows


def _check_inhibit(raw: dict[str, Any]) -> list[Problem]:
    out: list[Problem] = []
    valid = {k.value for k in AlertKind}
    for i, entry in enumerate(raw.get("inhibit", [])):
        for j, t in enumerate(entry.get("targets", [])):
            if t != "*" and t not in valid:
                out.append((f"inhibit[{i}].targets[{j}]", t, 'must be an alert kind or "*"'))
    return out


def _parse_time(value: str, path: str, problems: list[Problem]) -> int | None:
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        dt = None
    if dt is None or dt.tzinfo is None:
        problems.append(
            (path, value, "must be an ISO 8601 time with a zone, e.g. 2026-12-01T08:00:00+08:00")
        )
        return None
    return int(dt.timestamp() * 1000)


def _known_target(registry: Registry, scope: str, target: str) -> bool:
    if scope == "device":
        return bool(registry.index_of([target])[0] >= 0)
    ids = {
        "building": registry.building_ids,
        "grid": registry.grid_ids,
        "community": registry.community_ids,
        "street": registry.street_ids,
    }[scope]
    return bool((ids == target).any())


# -- messages ---------------------------------------------------------------------------


def format_problem(source: str, problem: Problem, text: str | None) -> str:
    path, value, expectation = problem
    line = _line_of(text, path) if text else None
    where = f" (line {line})" if line else ""
    if value is MISSING:
        return f"{source}: {path}: {expectation}{where}"
    return f"{source}: {path} = {_show(value)}: {expectation}{where}"


def _show(value: Any) -> str:
    """A value as the engineer wrote it in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) and value != int(value) else f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _dedupe(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(lines))


_PATTERN_HELP = {
    r"^[A-Za-z0-9_.\-]{1,32}$": "must be an id of 1-32 of A-Z a-z 0-9 _ . -",
    r"^[a-z][a-z0-9_]{0,63}$": "must be a lower_snake_case name",
}


def _pydantic_errors(exc: ValidationError, raw: Any, source: str, text: str) -> list[str]:
    return validation_messages(exc, raw, source, text, _model_at)


def validation_messages(
    exc: ValidationError,
    raw: Any,
    source: str,
    text: str,
    model_at: Callable[[str], type[BaseModel] | None] | None = None,
) -> list[str]:
    """``file: key.path = value: expectation`` lines for a pydantic error on a TOML file.

    ``model_at(path)`` names the model of the table holding ``path`` so that an unknown key
    can list the keys that are allowed there. Shared with the plans file loader.
    """
    out = []
    for err in exc.errors():
        path, value, parent = _walk(raw, err["loc"])
        expectation = _expectation(err, parent, path, model_at or (lambda _p: None))
        out.append(format_problem(source, (path, value, expectation), text))
    return _dedupe(out)


def _walk(raw: Any, loc: tuple[Any, ...]) -> tuple[str, Any, Any]:
    """The key path of a pydantic location in the raw TOML, its value and its parent table."""
    parts: list[str] = []
    node: Any = raw
    parent: Any = None
    for part in loc:
        if part == "[key]":
            return ".".join(parts).replace(".[", "["), MISSING, ("[key]", node)
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            parts.append(f"[{part}]")
            parent, node = node, node[part]
        elif isinstance(node, dict) and part in node:
            parts.append(str(part))
            parent, node = node, node[part]
        elif isinstance(node, dict):
            parts.append(str(part))
            parent, node = node, MISSING
            break
        # other parts (union member tags) do not exist in the file
    return ".".join(parts).replace(".[", "["), node, parent


def _model_at(path: str) -> type[BaseModel] | None:
    """The model class that a table at ``path`` is validated with (for unknown-key help)."""
    from rules import config

    parts = re.sub(r"\[\d+\]", "", path).split(".")[:-1]
    if not parts or parts == [""]:
        return config.RulesFile
    head = parts[0]
    if head == "defaults":
        return config.Defaults
    if head == "rules" and len(parts) == 2:
        return config.RuleEntry
    if head in ("streets", "communities", "grids") and len(parts) == 3:
        return config.RuleEntry
    if head == "silences":
        return config.SilenceSpec
    if head == "inhibit":
        return config.InhibitSpec
    if head == "correlate" and len(parts) == 2:
        return config.CorrelateSpec
    if head == "escalation":
        return config.EscalationStep if len(parts) >= 2 else config.EscalationSpec
    if head == "notify" and len(parts) == 2:
        return config.NotifySpec
    return None


def _expectation(
    err: Any, parent: Any, path: str, model_at: Callable[[str], type[BaseModel] | None]
) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if isinstance(parent, tuple) and parent[0] == "[key]":
        table = path.split(".", maxsplit=1)[0]
        if table in ("rules", "streets", "communities", "grids"):
            return "unknown detection kind; expected one of " + ", ".join(
                k.value for k in DetectionKind
            )
        if table == "notify":
            return "unknown grade; expected red, yellow or green"
        return str(err["msg"])
    if kind == "extra_forbidden":
        model = model_at(path)
        keys = f"; expected one of {', '.join(model.model_fields)}" if model else ""
        return f"unknown key{keys}"
    if kind == "missing":
        return "missing: this key is required"
    if kind == "enum":
        expected = ctx.get("expected", "")
        if "trapped_passenger" in expected:
            return "not an alert kind; expected one of " + ", ".join(k.value for k in AlertKind)
        return f"must be one of {expected}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}"
    if kind in ("float_type", "float_parsing"):
        return "must be a number" + (" of seconds" if path.endswith("_s") else "")
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "must be a whole number"
    if kind in ("bool_type", "bool_parsing"):
        return "must be true or false"
    if kind == "string_type":
        return "must be a string"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']:g}"
    if kind == "greater_than":
        return f"must be > {ctx['gt']:g}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']:g}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "string_pattern_mismatch":
        return _PATTERN_HELP.get(ctx.get("pattern", ""), f"must match {ctx.get('pattern')}")
    if kind in ("model_type", "dict_type"):
        return "must be a table"
    if kind == "list_type":
        return "must be an array"
    return str(err["msg"])


def _line_of(text: str, path: str) -> int | None:
    """Best-effort line number of a key path: its table header, then the key under it."""
    parts = re.split(r"\.(?![^\[]*\])", path)
    key = parts[-1]
    lines = text.splitlines()
    # Find the deepest table header that is a prefix of the path.
    best: tuple[int, int] | None = None  # (depth, line index)
    for depth in range(len(parts), 0, -1):
        header = ".".join(parts[:depth])
        m = re.match(r"^(.*?)\[(\d+)\]$", header)
        if m:
            name, nth = m.group(1), int(m.group(2))
            seen = -1
            for i, line in enumerate(lines):
                if re.match(rf"^\s*\[\[\s*{re.escape(name)}\s*\]\]", line):
                    seen += 1
                    if seen == nth:
                        best = (depth, i)
                        break
        else:
            pat = re.compile(rf"^\s*\[\s*{re.escape(header)}\s*\]\s*(#.*)?$")
            for i, line in enumerate(lines):
                if pat.match(line):
                    best = (depth, i)
                    break
        if best:
            break
    start = best[1] if best else -1
    rest = parts[best[0] :] if best else parts
    dotted = re.escape(".".join(rest)) if rest else re.escape(key)
    key_pat = re.compile(rf"^\s*({dotted}|{re.escape(rest[0]) if rest else dotted})\s*=")
    for i in range(start + 1, len(lines)):
        if i > start + 1 and re.match(r"^\s*\[", lines[i]) and best:
            break
        if key_pat.match(lines[i]):
            return i + 1
    return start + 1 if best else None
