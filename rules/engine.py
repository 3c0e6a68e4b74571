"""The rules engine: columnar detections in, alert changes out.

Which time drives what (explicitly, because they differ on a real network):

- **Device time** (``Detections.ts_ms``) drives ``for_s`` (the condition must have held from
  its first hit to a later hit ``for_s`` apart), the alerts' ``first_seen_ms`` /
  ``last_seen_ms``, and the area-correlation windows. A backlog replayed fast therefore
  fires exactly as it would have live.
- **The engine clock** (the injected ``gridwatch.clock.Clock``, wall time) drives clearing
  (``clear_after_s`` without the condition present), the expiry of a pending condition
  whose detections stopped, silences and maintenance windows, and area-alert expiry.
  ``tick()`` is called by the same loop that feeds ``process()``, so a stalled pipeline
  does not clear alerts behind the dispatchers' backs.

Per (device, alert kind) the engine keeps one slot: idle -> pending (first hit) -> firing
(held ``for_s``) -> idle (cleared, or resolved by a dispatcher). A firing slot is the one
open alert of its (device, alert kind): repeated detections only add to its count
(written behind in batches by ``drain_updates``), and a worse level upgrades its grade;
grades never go down while the alert is open. A detection whose evidence is back inside
the hysteresis band still counts as present; only evidence beyond the band, or no
detection at all for ``clear_after_s``, lets the alert clear, so a noisy signal at the
threshold neither flaps nor re-fires.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gridwatch.batch import Detections
from gridwatch.clock import Clock
from gridwatch.domain import AlertKind, DetectionKind, Grade
from gridwatch.registry import Registry
from rules.correlate import AreaEvent, Correlator
from rules.load import RuleSet, load_rules
from rules.silences import Silence, SilenceIndex
from rules.slots import FIRING, IDLE, KEY_STRIDE, PENDING, SUPPRESSED, UNBOUND, Slots
from rules.table import ALERT_CODE, ALERT_KINDS, EVIDENCE_NONE, EVIDENCE_SCORE, RuleTable

log = logging.getLogger(__name__)

GRADES_BY_SEVERITY: Final = {g.severity: g for g in Grade}


@dataclass(frozen=True, slots=True)
class Opened:
    """An alert to create. ``slot`` links it back to the engine (``bind``); -1 for areas."""

    dedup_key: str
    alert: AlertKind
    grade: Grade
    scope: str
    scope_id: str
    place: dict[str, str | None]
    device_id: str | None
    detection: DetectionKind | None
    rule: str
    first_seen_ms: int
    last_seen_ms: int
    count: int
    value: float | None
    evidence: dict[str, Any]
    slot: int = -1
    area: tuple[str, int] | None = None
    suggest_plan: str | None = None
    silenced: bool = False


@dataclass(frozen=True, slots=True)
class Upgraded:
    alert_id: int
    grade: Grade
    value: float | None
    evidence: dict[str, Any]
    silenced: bool


@dataclass(frozen=True, slots=True)
class Cleared:
    """An alert whose condition is gone (auto-clear); counts not yet written ride along."""

    alert_id: int
    count_delta: int
    last_seen_ms: int


@dataclass(slots=True)
class Changes:
    opened: list[Opened] = field(default_factory=list)
    upgraded: list[Upgraded] = field(default_factory=list)
    cleared: list[Cleared] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.opened or self.upgraded or self.cleared)

    def extend(self, other: Changes) -> None:
        self.opened += other.opened
        self.upgraded += other.upgraded
        self.cleared += other.cleared


@dataclass(frozen=True, slots=True)
class Updates:
    """Write-behind batch: per open alert, detections added since the last drain."""

    alert_id: npt.NDArray[np.int64]
    count_delta: npt.NDArray[np.int64]
    last_seen_ms: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.alert_id.size)


@dataclass(frozen=True, slots=True)
class OpenAlert:
    """An alert already open in storage, given back to a restarted engine."""

    alert_id: int
    dedup_key: str
    alert: AlertKind
    grade: Grade
    scope: str
    scope_id: str
    first_seen_ms: int
    last_seen_ms: int


@dataclass(slots=True)
class EngineStats:
    detections: int = 0
    no_rule: int = 0
    below_threshold: int = 0
    opened: int = 0
    upgraded: int = 0
    cleared: int = 0
    silenced: int = 0
    inhibited: int = 0
    reloads: int = 0
    reload_failures: int = 0


@dataclass(frozen=True, slots=True)
class _Batch:
    """One part of a batch being applied: rows ``sel`` of ``det`` and their per-row arrays."""

    det: Detections
    sel: Any
    rid: npt.NDArray[np.int32]
    value: npt.NDArray[np.float64]
    now: int


class RulesEngine:
    """Turns ``Detections`` into ``Changes`` against one registry and one rules file."""

    def __init__(
        self,
        ruleset: RuleSet,
        registry: Registry,
        clock: Clock,
        silences: Iterable[Silence] = (),
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.stats = EngineStats()
        self.slots = Slots()
        self._db_silences: tuple[Silence, ...] = tuple(silences)
        self._install(ruleset, RuleTable.compile(ruleset, registry))

    # -- configuration --------------------------------------------------------------

    @property
    def ruleset(self) -> RuleSet:
        return self.table.ruleset

    def _install(self, ruleset: RuleSet, table: RuleTable) -> None:
        old = getattr(self, "correlators", {})
        self.table = table
        self.correlators = {
            name: old[name]
            if name in old and old[name].spec == spec
            else Correlator(name, spec, self.registry)
            for name, spec in ruleset.file.correlate.items()
        }
        n_codes = len(ALERT_KINDS)
        self._inhibit: list[tuple[int, str, npt.NDArray[np.bool_], npt.NDArray[np.int32]]] = []
        for spec in ruleset.file.inhibit:
            src = ALERT_CODE[spec.source]
            mask = np.zeros(n_codes, dtype=bool)
            for t in spec.targets:
                if t == "*":
                    mask[:] = True
                else:
                    mask[ALERT_CODE[AlertKind(t)]] = True
            mask[src] = False
            size = len(self.registry) if spec.scope == "device" else self.registry.building_ids.size
            self._inhibit.append((src, spec.scope, mask, np.zeros(max(size, 1), dtype=np.int32)))
        self._source_codes = np.zeros(n_codes, dtype=bool)
        for src, _, _, _ in self._inhibit:
            self._source_codes[src] = True
        self._recount_inhibitions()
        self._rebuild_silences()

    def reload(self, path: str | Path, *, plan_names: Iterable[str] | None = None) -> RuleSet:
        """Load a new rules file; on any error the rules in force stay and the error is raised.

        Open alerts, pending conditions and counts survive a reload: state is keyed by
        (device, alert kind), not by rule.
        """
        try:
            ruleset = load_rules(path, registry=self.registry, plan_names=plan_names)
            table = RuleTable.compile(ruleset, self.registry)
        except Exception:
            self.stats.reload_failures += 1
            log.warning(
                "rules reload refused; previous rules stay in force",
                extra={"path": str(path), "digest": self.ruleset.digest},
            )
            raise
        self._install(ruleset, table)
        self.stats.reloads += 1
        log.info("rules reloaded", extra={"path": str(path), "digest": ruleset.digest})
        return ruleset

    @property
    def db_silences(self) -> tuple[Silence, ...]:
        """The silences last given by ``set_silences`` (without the file's windows)."""
        return self._db_silences

    def set_silences(self, silences: Iterable[Silence]) -> None:
        """Replace the silences from storage (the rules file's windows are always added)."""
        self._db_silences = tuple(silences)
        self._rebuild_silences()

    def _rebuild_silences(self) -> None:
        windows = [
            Silence(w.scope, w.target, w.starts_ms, w.ends_ms, w.by, w.reason, w.alerts)
            for w in self.ruleset.windows
        ]
        self.silences = SilenceIndex(
            self.registry, [*windows, *self._db_silences], self.clock.now_ms()
        )

    # -- the hot path ---------------------------------------------------------------

    def process(self, det: Detections) -> Changes:
        """Apply one batch of detections; returns alerts to open, upgrade (never clear)."""
        changes = Changes()
        n = len(det)
        if n == 0:
            return changes
        self.stats.detections += n
        now = self.clock.now_ms()
        if now >= self.silences.next_change_ms:
            self._rebuild_silences()
        t = self.table
        dev = det.device
        rid = t.rid[det.kind.astype(np.intp), self.registry.device_grid[dev]]
        ok = rid >= 0
        if not ok.all():
            self.stats.no_rule += int((~ok).sum())
            if not ok.any():
                return changes
            det = det.take(np.flatnonzero(ok))
            rid = rid[ok]
            dev = det.device
        sev, present, value = self._grade(det, rid)
        acode = t.alert_code[rid]
        keys = dev.astype(np.int64) * KEY_STRIDE + acode
        src = self._source_codes[acode]
        parts = (np.flatnonzero(src), np.flatnonzero(~src)) if src.any() else (None,)
        for rows in parts:
            if rows is not None and rows.size == 0:
                continue
            sel = slice(None) if rows is None else rows
            b = _Batch(det, sel, rid[sel], value[sel], now)
            self._apply(
                b,
                keys=keys[sel],
                ts=det.ts_ms[sel],
                sev=sev[sel],
                present=present[sel],
                changes=changes,
            )
        hits = sev >= 0
        if self.correlators and hits.any():
            self._correlate(dev[hits], acode[hits], det.ts_ms[hits], now, changes)
        self.stats.below_threshold += int((~present).sum())
        return changes

    def _grade(
        self, det: Detections, rid: npt.NDArray[np.int32]
    ) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
        """Per row: fire severity (-1 below every level), present (hit or in band), value."""
        t = self.table
        n = len(det)
        value = np.full(n, np.nan)
        ev = t.evidence_idx[rid]
        for e in np.unique(ev).tolist():
            if e == EVIDENCE_NONE:
                continue
            rows = ev == e
            if e == EVIDENCE_SCORE:
                value[rows] = det.score[rows]
            else:
                col = det.evidence.get(t.evidence_names[e])
                if col is not None:
                    value[rows] = col[rows]
        graded = ~np.isnan(value)
        w = t.sign[rid] * value
        fire = t.fire_w[rid]
        sev = np.full(n, -1, dtype=np.int8)
        for s in (0, 1, 2):
            sev[graded & (w > fire[:, s])] = s
        sev = np.where(graded, sev, t.base_sev[rid]).astype(np.int8)
        score_ok = det.score >= t.min_score[rid]
        sev[~score_ok] = -1
        present = score_ok & ((sev >= 0) | ~graded | (w > t.hold_w[rid]))
        return sev, present, value

    def _apply(
        self,
        b: _Batch,
        *,
        keys: npt.NDArray[np.int64],
        ts: npt.NDArray[np.int64],
        sev: npt.NDArray[np.int8],
        present: npt.NDArray[np.bool_],
        changes: Changes,
    ) -> None:
        """Collapse rows into per-slot segments (runs of present / absent rows in time
        order) and apply them round by round, so each round touches a slot at most once."""
        n = keys.size
        order = np.lexsort((ts, keys))
        k = keys[order]
        p = present[order]
        brk = np.ones(n, dtype=bool)
        brk[1:] = (k[1:] != k[:-1]) | (p[1:] != p[:-1])
        starts = np.flatnonzero(brk)
        seg_key = k[starts]
        seg_present = p[starts]
        ts_o = ts[order]
        sev_o = sev[order]
        hit_o = sev_o >= 0
        big = np.iinfo(np.int64).max
        seg = {
            "n": np.diff(np.append(starts, n)),
            "first_ts": ts_o[starts],
            "last_ts": np.maximum.reduceat(ts_o, starts),
            "max_sev": np.maximum.reduceat(sev_o, starts),
            "first_hit": np.minimum.reduceat(np.where(hit_o, ts_o, big), starts),
            "last_hit": np.maximum.reduceat(np.where(hit_o, ts_o, -1), starts),
            "last_row": order[np.append(starts[1:], n) - 1],
            "worst_row": order[_argmax_segments(sev_o, starts, n)],
        }
        new_key = np.ones(starts.size, dtype=bool)
        new_key[1:] = seg_key[1:] != seg_key[:-1]
        first_seg = np.maximum.accumulate(np.where(new_key, np.arange(starts.size), 0))
        rank = np.arange(starts.size) - first_seg
        for r in range(int(rank.max()) + 1):
            idx = np.flatnonzero(rank == r)
            pres = idx[seg_present[idx]]
            gone = idx[~seg_present[idx]]
            if gone.size:
                rows = self.slots.find(seg_key[gone])
                rows = rows[rows >= 0]
                pend = rows[self.slots.phase[rows] == PENDING]
                self.slots.phase[pend] = IDLE
            if pres.size:
                rows = self.slots.rows(seg_key[pres])
                self._present(b, rows, {k2: v[pres] for k2, v in seg.items()}, changes)

    def _present(
        self,
        b: _Batch,
        rows: npt.NDArray[np.int64],
        seg: dict[str, npt.NDArray[Any]],
        changes: Changes,
    ) -> None:
        s = self.slots
        t = self.table
        last_row = seg["last_row"]
        r_rid = b.rid[last_row]
        has_hit = seg["last_hit"] >= 0
        clear_ms = t.clear_ms[r_rid]
        phase = s.phase[rows]
        # A pending condition whose detections stopped for longer than clear_after_s
        # (device time) starts again from this hit.
        stale = (phase == PENDING) & (seg["first_ts"] - s.last_dev[rows] > clear_ms)
        phase = np.where(stale, IDLE, phase)
        start = (phase == IDLE) & has_hit
        s.pend_since[rows[start]] = seg["first_hit"][start]
        s.pend_sev[rows[start]] = -1
        s.pend_count[rows[start]] = 0
        phase = np.where(start, PENDING, phase)
        pending = phase == PENDING
        s.pend_sev[rows[pending]] = np.maximum(s.pend_sev[rows[pending]], seg["max_sev"][pending])
        s.pend_count[rows[pending]] += seg["n"][pending]
        fire = pending & has_hit & (seg["last_hit"] - s.pend_since[rows] >= t.for_ms[r_rid])
        s.phase[rows] = phase
        s.rid[rows] = r_rid
        s.last_dev[rows] = seg["last_ts"]
        s.last_wall[rows] = b.now
        if fire.any():
            self._fire(b, rows[fire], seg["worst_row"][fire], seg["last_ts"][fire], changes)
        firing = (phase == FIRING) & ~fire
        if firing.any():
            fr = rows[firing]
            aid = s.alert_id[fr]
            held = aid == SUPPRESSED
            if held.any():
                # Re-check a held-back alert: its silence may have ended, its inhibitor cleared.
                hr = fr[held]
                s.sev[hr] = np.maximum(s.sev[hr], seg["max_sev"][firing][held])
                s.pend_count[hr] += seg["n"][firing][held]
                self._fire(
                    b,
                    hr,
                    seg["worst_row"][firing][held],
                    seg["last_ts"][firing][held],
                    changes,
                    retry=True,
                )
            live = ~held
            lr = fr[live]
            s.count_delta[lr] += seg["n"][firing][live]
            s.value[lr] = b.value[last_row[firing][live]]
            s.dirty[lr] = True
            worse = seg["max_sev"][firing][live] > s.sev[lr]
            if worse.any():
                up = lr[worse]
                s.sev[up] = seg["max_sev"][firing][live][worse]
                worst = seg["worst_row"][firing][live][worse]
                bound = s.alert_id[up] >= 0
                silenced = self.silences.silenced(s.device[up], s.acode[up], b.now)
                for i in np.flatnonzero(bound).tolist():
                    row = int(worst[i])
                    changes.upgraded.append(
                        Upgraded(
                            alert_id=int(s.alert_id[up[i]]),
                            grade=GRADES_BY_SEVERITY[int(s.sev[up[i]])],
                            value=_num(b.value[row]),
                            evidence=_evidence(b.det, b.sel, row),
                            silenced=bool(silenced[i]),
                        )
                    )
                self.stats.upgraded += int(bound.sum())

    def _fire(
        self,
        b: _Batch,
        rows: npt.NDArray[np.int64],
        worst_row: npt.NDArray[Any],
        last_ts: npt.NDArray[np.int64],
        changes: Changes,
        *,
        retry: bool = False,
    ) -> None:
        s = self.slots
        dev = s.device[rows]
        acode = s.acode[rows]
        if not retry:
            s.phase[rows] = FIRING
            s.sev[rows] = s.pend_sev[rows]
            s.first_dev[rows] = s.pend_since[rows]
            self._bump_inhibitors(dev, acode, +1)
        silenced = self.silences.silenced(dev, acode, b.now)
        inhibited = self._inhibited(dev, acode) & ~silenced
        held = silenced | inhibited
        if not retry:
            self.stats.silenced += int(silenced.sum())
            self.stats.inhibited += int(inhibited.sum())
        s.alert_id[rows[held]] = SUPPRESSED
        go = rows[~held]
        if go.size == 0:
            return
        s.alert_id[go] = UNBOUND
        s.count_delta[go] = 0
        s.dirty[go] = False
        self.stats.opened += int(go.size)
        reg = self.registry
        for i in np.flatnonzero(~held).tolist():
            row = int(rows[i])
            rule = self.table.rules[int(s.rid[row])]
            d = int(s.device[row])
            place = reg.place(d)
            device_id = str(reg.device_ids[d])
            worst = int(worst_row[i])
            s.value[row] = b.value[worst]
            changes.opened.append(
                Opened(
                    dedup_key=f"{device_id}:{rule.alert.value}",
                    alert=rule.alert,
                    grade=GRADES_BY_SEVERITY[int(s.sev[row])],
                    scope="device",
                    scope_id=device_id,
                    place={
                        "street": place.street,
                        "community": place.community,
                        "grid": place.grid,
                        "building": place.building,
                    },
                    device_id=device_id,
                    detection=rule.detection,
                    rule=rule.path,
                    first_seen_ms=int(s.first_dev[row]),
                    last_seen_ms=int(last_ts[i]),
                    count=int(s.pend_count[row]),
                    value=_num(b.value[worst]),
                    evidence=_evidence(b.det, b.sel, worst),
                    slot=row,
                )
            )

    # -- inhibition -------------------------------------------------------------------

    def _scope_index(self, scope: str, dev: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return dev if scope == "device" else self.registry.device_building[dev]

    def _bump_inhibitors(self, dev: npt.NDArray[Any], acode: npt.NDArray[Any], delta: int) -> None:
        for src, scope, _, counts in self._inhibit:
            m = acode == src
            if m.any():
                idx = self._scope_index(scope, dev[m])
                idx = idx[idx >= 0]
                np.add.at(counts, idx, delta)
                np.maximum(counts, 0, out=counts)

    def _inhibited(self, dev: npt.NDArray[Any], acode: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        out = np.zeros(dev.size, dtype=bool)
        for _, scope, mask, counts in self._inhibit:
            m = mask[acode]
            if m.any():
                idx = self._scope_index(scope, dev)
                out |= m & (idx >= 0) & (counts[np.maximum(idx, 0)] > 0)
        return out

    def _recount_inhibitions(self) -> None:
        """Rebuild the inhibitor counts from the firing slots and open building areas."""
        s = self.slots
        firing = np.flatnonzero(s.phase[: s.n] == FIRING)
        for _, _, _, counts in self._inhibit:
            counts[:] = 0
        self._bump_inhibitors(s.device[firing], s.acode[firing], +1)
        for c in self.correlators.values():
            if c.spec.scope == "building":
                for area in c.areas.values():
                    self._bump_area(c.spec.alert, area.scope_index, +1)

    def _bump_area(self, alert: AlertKind, building: int, delta: int) -> None:
        for src, scope, _, counts in self._inhibit:
            if scope == "building" and src == ALERT_CODE[alert]:
                counts[building] = max(0, counts[building] + delta)

    # -- correlation --------------------------------------------------------------------

    def _correlate(
        self,
        dev: npt.NDArray[np.int32],
        acode: npt.NDArray[np.int8],
        ts: npt.NDArray[np.int64],
        now: int,
        changes: Changes,
    ) -> None:
        now_dev = int(ts.max())
        for c in self.correlators.values():
            touched = c.observe(dev, acode, ts)
            for ev in c.evaluate(touched, now_dev, now):
                if not ev.new:
                    continue
                if c.spec.scope == "building":
                    self._bump_area(ev.alert, c.scope_index(ev.scope_id), +1)
                changes.opened.append(self._area_opened(c, ev, now))
                self.stats.opened += 1

    def _area_opened(self, c: Correlator, ev: AreaEvent, now: int) -> Opened:
        silenced = self.silences.covers_area(ev.scope, ev.scope_id, ev.alert, now)
        return Opened(
            dedup_key=ev.dedup_key,
            alert=ev.alert,
            grade=ev.grade,
            scope=ev.scope,
            scope_id=ev.scope_id,
            place=ev.place,
            device_id=None,
            detection=None,
            rule=f"correlate.{ev.name}",
            first_seen_ms=ev.first_seen_ms,
            last_seen_ms=ev.last_seen_ms,
            count=ev.n_devices,
            value=float(ev.n_devices),
            evidence=ev.evidence(),
            area=(c.name, c.scope_index(ev.scope_id)),
            suggest_plan=ev.suggest_plan,
            silenced=silenced,
        )

    # -- timers -------------------------------------------------------------------------

    def tick(self) -> Changes:
        """Clear what has been absent for ``clear_after_s`` of engine-clock time."""
        changes = Changes()
        now = self.clock.now_ms()
        if now >= self.silences.next_change_ms:
            self._rebuild_silences()
        s = self.slots
        rows = s.active()
        if rows.size:
            clear_ms = self.table.clear_ms[np.maximum(s.rid[rows], 0)]
            absent = now - s.last_wall[rows] >= clear_ms
            phase = s.phase[rows]
            aid = s.alert_id[rows]
            auto = self.table.auto_clear[np.maximum(s.rid[rows], 0)]
            expire_pending = rows[absent & (phase == PENDING)]
            s.phase[expire_pending] = IDLE
            held = absent & (phase == FIRING) & (aid == SUPPRESSED)
            clear = absent & (phase == FIRING) & (aid >= 0) & auto
            for r in rows[clear].tolist():
                changes.cleared.append(
                    Cleared(int(s.alert_id[r]), int(s.count_delta[r]), int(s.last_dev[r]))
                )
            done = rows[held | clear]
            self._bump_inhibitors(s.device[done], s.acode[done], -1)
            s.reset(done)
            self.stats.cleared += int(clear.sum())
        for c in self.correlators.values():
            for area in c.expire(now):
                if c.spec.scope == "building":
                    self._bump_area(c.spec.alert, area.scope_index, -1)
                if area.alert_id >= 0:
                    changes.cleared.append(Cleared(area.alert_id, 0, area.last_wall))
                    self.stats.cleared += 1
        return changes

    # -- storage links ----------------------------------------------------------------

    def bind(self, opened: Sequence[Opened], alert_ids: Sequence[int]) -> None:
        """Give opened alerts their storage ids (after the write that made them durable)."""
        for o, aid in zip(opened, alert_ids, strict=True):
            if o.area is not None:
                c = self.correlators.get(o.area[0])
                area = c.areas.get(o.area[1]) if c else None
                if area is not None:
                    area.alert_id = int(aid)
            elif o.slot >= 0 and self.slots.phase[o.slot] == FIRING:
                self.slots.alert_id[o.slot] = int(aid)

    def forget(self, alert_ids: Iterable[int]) -> int:
        """Alerts resolved through the lifecycle: their slots go idle (a recurrence is new)."""
        ids = np.fromiter(alert_ids, dtype=np.int64)
        if ids.size == 0:
            return 0
        s = self.slots
        rows = np.flatnonzero(np.isin(s.alert_id[: s.n], ids) & (s.phase[: s.n] == FIRING))
        self._bump_inhibitors(s.device[rows], s.acode[rows], -1)
        s.reset(rows)
        n = int(rows.size)
        wanted = set(ids.tolist())
        for c in self.correlators.values():
            for key, area in list(c.areas.items()):
                if area.alert_id in wanted:
                    del c.areas[key]
                    if c.spec.scope == "building":
                        self._bump_area(c.spec.alert, key, -1)
                    n += 1
        return n

    def restore(self, alerts: Iterable[OpenAlert]) -> int:
        """Rebuild firing slots and open areas from storage after a restart."""
        now = self.clock.now_ms()
        n = 0
        reg = self.registry
        for a in alerts:
            if a.scope == "device":
                d = int(reg.index_of([a.scope_id])[0])
                if d < 0:
                    continue
                row = int(self.slots.rows(np.array([d * KEY_STRIDE + ALERT_CODE[a.alert]]))[0])
                s = self.slots
                s.phase[row] = FIRING
                s.alert_id[row] = a.alert_id
                s.sev[row] = a.grade.severity
                s.first_dev[row] = a.first_seen_ms
                s.last_dev[row] = a.last_seen_ms
                s.last_wall[row] = now
                rid = self._rid_for(d, a.alert)
                s.rid[row] = rid
                n += 1
            else:
                for c in self.correlators.values():
                    if c.spec.alert == a.alert and c.spec.scope == a.scope:
                        idx = c.scope_index(a.scope_id)
                        if idx >= 0:
                            c.areas[idx] = _restored_area(idx, a.alert_id, now)
                            n += 1
        self._recount_inhibitions()
        return n

    def _rid_for(self, device: int, alert: AlertKind) -> int:
        """Any compiled rule of this device's grid producing ``alert`` (for its timers)."""
        g = int(self.registry.device_grid[device])
        col = self.table.rid[:, g]
        for r in col[col >= 0].tolist():
            if self.table.alert_code[r] == ALERT_CODE[alert]:
                return int(r)
        return -1

    def drain_updates(self) -> Updates:
        """Count / last-seen increments of open alerts since the last drain (write-behind)."""
        s = self.slots
        rows = np.flatnonzero(s.dirty[: s.n] & (s.alert_id[: s.n] >= 0))
        out = Updates(
            alert_id=s.alert_id[rows].copy(),
            count_delta=s.count_delta[rows].copy(),
            last_seen_ms=s.last_dev[rows].copy(),
            value=s.value[rows].copy(),
        )
        s.count_delta[rows] = 0
        s.dirty[rows] = False
        return out

    def requeue_updates(self, upd: Updates) -> None:
        """Put back counts whose write failed, so the next ``drain_updates`` includes them."""
        s = self.slots
        if len(upd) == 0:
            return
        rows = np.flatnonzero(np.isin(s.alert_id[: s.n], upd.alert_id))
        order = np.argsort(upd.alert_id)
        pos = np.searchsorted(upd.alert_id[order], s.alert_id[rows])
        s.count_delta[rows] += upd.count_delta[order][pos]
        s.dirty[rows] = True

    def open_slots(self) -> int:
        s = self.slots
        return int(np.count_nonzero((s.phase[: s.n] == FIRING) & (s.alert_id[: s.n] >= 0)))


def _restored_area(idx: int, alert_id: int, now: int) -> Any:
    from rules.correlate import Area

    return Area(idx, alert_id=alert_id, opened_wall=now, last_wall=now)


def _argmax_segments(
    values: npt.NDArray[Any], starts: npt.NDArray[Any], n: int
) -> npt.NDArray[np.int64]:
    """Position (in the sorted order) of the first maximum of each segment."""
    seg_id = np.repeat(np.arange(starts.size), np.diff(np.append(starts, n)))
    seg_max = np.maximum.reduceat(values, starts)
    is_max = values == seg_max[seg_id]
    pos = np.where(is_max, np.arange(n), n)
    return np.minimum.reduceat(pos, starts)


def _num(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


def _evidence(det: Detections, sel: Any, row: int) -> dict[str, Any]:
    """The numbers that made one detection fire, for the dispatcher (NaN evidence omitted)."""
    i = row if isinstance(sel, slice) else int(sel[row])
    out: dict[str, Any] = {"score": round(float(det.score[i]), 4), "ts_ms": int(det.ts_ms[i])}
    for name, col in det.evidence.items():
        v = float(col[i])
        if not np.isnan(v):
            out[name] = v
    return out
