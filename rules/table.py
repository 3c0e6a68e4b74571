"""A rules file compiled against a registry into numpy lookup tables.

The engine never walks the rules tree per detection: ``rid[kind_code, grid_index]`` gives
the compiled rule of every detection with one fancy-index gather, and the per-rule arrays
(thresholds, timers, alert kind) are gathered by ``rid`` the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from gridwatch.domain import AlertKind, DetectionKind, Grade
from gridwatch.registry import Registry
from rules.load import RulesError, RuleSet
from rules.resolve import Rule

ALERT_KINDS: Final = tuple(AlertKind)
ALERT_CODE: Final = {k: i for i, k in enumerate(ALERT_KINDS)}
SEVERITY_GRADE: Final = {g.severity: g for g in Grade}
EVIDENCE_NONE: Final = -1
EVIDENCE_SCORE: Final = -2


@dataclass(frozen=True, slots=True)
class RuleTable:
    """Compiled rules. Severity indexes (0 green, 1 yellow, 2 red) index ``fire_w`` columns.

    ``fire_w[r, s]`` and ``hold_w[r]`` are in "worse-up" units: ``sign[r] * value``, so one
    comparison ``w > fire_w`` serves both ``worse = "higher"`` and ``worse = "lower"``.
    Undefined levels are ``+inf`` (never fire).
    """

    ruleset: RuleSet
    rules: tuple[Rule, ...]
    rid: npt.NDArray[np.int32]
    alert_code: npt.NDArray[np.int8]
    base_sev: npt.NDArray[np.int8]
    sign: npt.NDArray[np.float64]
    fire_w: npt.NDArray[np.float64]
    hold_w: npt.NDArray[np.float64]
    evidence_idx: npt.NDArray[np.int16]
    evidence_names: tuple[str, ...]
    min_score: npt.NDArray[np.float32]
    for_ms: npt.NDArray[np.int64]
    clear_ms: npt.NDArray[np.int64]
    auto_clear: npt.NDArray[np.bool_]

    @classmethod
    def compile(cls, ruleset: RuleSet, registry: Registry) -> RuleTable:
        """Resolve every (detection kind, grid) of the registry; refuses inconsistent paths."""
        n_grids = int(registry.grid_ids.size)
        kinds = tuple(DetectionKind)
        rid = np.full((len(kinds), n_grids), -1, dtype=np.int32)
        rules: list[Rule] = []
        problems: list[str] = []
        streets = registry.street_ids[registry.community_street[registry.grid_community]]
        comms = registry.community_ids[registry.grid_community]
        cache: dict[tuple[DetectionKind, tuple[str, ...]], int] = {}
        for g in range(n_grids):
            grid = str(registry.grid_ids[g])
            street, comm = str(streets[g]), str(comms[g])
            for kind in ruleset.root:
                layers = ruleset.layers(kind, street, comm, grid)
                ck = (kind, tuple(p for p, _ in layers))
                if ck in cache:
                    rid[kind.code, g] = cache[ck]
                    continue
                try:
                    rule = ruleset.resolve(kind, street=street, community=comm, grid=grid)
                except RulesError as exc:
                    problems += exc.errors
                    continue
                if rule is None or not rule.enabled:
                    cache[ck] = -1
                    continue
                cache[ck] = rid[kind.code, g] = len(rules)
                rules.append(rule)
        if problems:
            raise RulesError(ruleset.source, list(dict.fromkeys(problems)))
        return cls._arrays(ruleset, rules, rid)

    @classmethod
    def _arrays(cls, ruleset: RuleSet, rules: list[Rule], rid: npt.NDArray[np.int32]) -> RuleTable:
        n = len(rules)
        names = sorted({r.evidence for r in rules if r.evidence and r.evidence != "score"})
        fire_w = np.full((max(n, 1), 3), np.inf)
        hold_w = np.full(max(n, 1), -np.inf)
        sign = np.ones(max(n, 1))
        ev = np.full(max(n, 1), EVIDENCE_NONE, dtype=np.int16)
        for i, r in enumerate(rules):
            sign[i] = r.sign
            for g, t in r.thresholds.items():
                fire_w[i, g.severity] = r.sign * t
            hold_w[i] = r.hold_level()
            if r.evidence == "score":
                ev[i] = EVIDENCE_SCORE
            elif r.evidence:
                ev[i] = names.index(r.evidence)
        return cls(
            ruleset=ruleset,
            rules=tuple(rules),
            rid=rid,
            alert_code=np.array([ALERT_CODE[r.alert] for r in rules] or [0], dtype=np.int8),
            base_sev=np.array([r.grade.severity for r in rules] or [0], dtype=np.int8),
            sign=sign,
            fire_w=fire_w,
            hold_w=hold_w,
            evidence_idx=ev,
            evidence_names=tuple(names),
            min_score=np.array([r.min_score for r in rules] or [0], dtype=np.float32),
            for_ms=np.array([round(r.for_s * 1000) for r in rules] or [0], dtype=np.int64),
            clear_ms=np.array(
                [round(r.clear_after_s * 1000) for r in rules] or [0], dtype=np.int64
            ),
            auto_clear=np.array([r.auto_clear for r in rules] or [False], dtype=bool),
        )
