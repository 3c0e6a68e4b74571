"""The transport-agnostic collector: bytes in, judged columnar micro-batches out.

``Collector.on_message(topic, payload, token)`` is the single entry point of every
transport (MQTT, in-process). A message is parsed just enough to group its rows by kind;
judging (registry, physics, clock, duplicates) runs once per flush over all pending rows
(``ingest.validate``), and the accepted rows leave as one ``ReadingBatch`` per kind
through the ``Dispatcher``. Every refused row or message becomes a ``DeadLetter`` in the
same flush, so its acknowledgement also waits until the dead letter is stored.

Threading: ``on_message``, ``poll``, ``flush`` and ``forget_tokens`` belong to one
thread, the transport's; sinks run on the dispatcher's thread. The collector never
raises on input: a payload that breaks an assumption is dead-lettered as
``internal_error`` with its traceback logged.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from gridwatch.batch import ReadingBatch
from gridwatch.clock import Clock, SystemClock
from gridwatch.contract import (
    BINARY_MAGIC,
    VERSION,
    decode_json_batch,
    parse_topic,
)
from gridwatch.deadletter import DeadLetter
from gridwatch.domain import FIELDS, DeviceKind
from gridwatch.errors import PayloadError
from gridwatch.registry import Registry
from ingest.config import IngestConfig
from ingest.dedup import Dedup
from ingest.dispatch import Dispatcher, DispatcherStoppedError, Flush
from ingest.ids import DeviceIds
from ingest.metrics import IngestMetrics
from ingest.reasons import ROW_REASONS, RowReason
from ingest.rows import ABSENT, BinaryRows, DeviceRows, RawRows, batch_rows
from ingest.sinks import BatchSink, DeadLetterSink
from ingest.validate import Limits, judge

log = logging.getLogger(__name__)

_CODE_BITS = 5  # RowReason codes fit in 5 bits; (message, reason) keys pack into one int64


class Collector:
    """Turns messages into validated per-kind batches for ``sinks``.

    ``last_ts_ms`` seeds duplicate detection (the newest stored ``ts_ms`` per dense
    device index, e.g. ``ReadingLog.last_ts_ms``), so that a restarted collector refuses
    what the broker redelivers but the sinks already hold (``ingest.dedup``).
    ``threaded=False`` runs the sinks inside ``flush`` (deterministic tests).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        sinks: Sequence[BatchSink] = (),
        dead_letters: DeadLetterSink | None = None,
        config: IngestConfig | None = None,
        clock: Clock | None = None,
        metrics: IngestMetrics | None = None,
        threaded: bool = True,
        last_ts_ms: npt.NDArray[np.int64] | None = None,
    ) -> None:
        self.registry = registry
        self.config = config or IngestConfig()
        self.clock = clock or SystemClock()
        self.metrics = metrics or IngestMetrics()
        cfg = self.config
        self.dispatcher = Dispatcher(
            sinks,
            dead_letters,
            clock=self.clock,
            metrics=self.metrics,
            max_pending=cfg.max_pending_flushes,
            threaded=threaded,
            retry_max_s=cfg.sink_retry_max_s,
        )
        self.dedup = Dedup(
            len(registry),
            window_s=cfg.dedup_window_s,
            max_keys=cfg.dedup_max_keys,
            last_ts_ms=last_ts_ms,
        )
        self._index_of = DeviceIds(registry)
        self._device_kind = registry.kind
        self._device_grid = registry.device_grid
        self._grid_index = {g: i for i, g in enumerate(registry.grid_ids.tolist())}
        self._kinds = {k.value: k for k in DeviceKind}
        self._root = cfg.root
        self._max_payload = cfg.max_payload_bytes
        self._flush_rows = cfg.flush_rows
        self._flush_messages = cfg.flush_messages
        self._flush_interval = cfg.flush_interval_s
        self._max_future_ms = None if cfg.max_future_s is None else round(cfg.max_future_s * 1e3)
        self._max_age_ms = None if cfg.max_age_s is None else round(cfg.max_age_s * 1e3)

        # pending state, reset by every flush
        self._dev_rows = {k: DeviceRows(k) for k in DeviceKind}
        self._bin_rows = {k: BinaryRows(k) for k in DeviceKind}
        self._chunks: dict[DeviceKind, list[RawRows]] = {k: [] for k in DeviceKind}
        self._m_topic: list[str] = []
        self._m_payload: list[bytes] = []
        self._m_ids: dict[int, npt.NDArray[Any]] = {}
        self._tokens: list[Any] = []
        self._dead: list[DeadLetter] = []
        self._rows_pending = 0
        self._batch_msgs = 0
        self._bytes = 0
        self._first_mono = 0.0

        self.epoch = 0
        self.flush_seq = 0
        self.messages = 0
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.ignored_key_rows = 0
        self.late_accepted = 0

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self.dispatcher.start()

    def close(self, timeout: float = 30.0) -> bool:
        """Flush what is pending and wait for the sinks; False if they did not finish.

        Safe to call twice. Messages pending when the dispatcher is already stopped are
        not acknowledged (the broker redelivers them).
        """
        try:
            self.flush()
        except DispatcherStoppedError:
            log.error("collector closed after its sinks; pending messages not handed on")
            return False
        return self.dispatcher.stop(timeout)

    def set_ack_handler(self, handler: Callable[[Flush], None] | None) -> None:
        """Called (on the dispatcher thread) with each flush once every sink has it."""
        self.dispatcher.on_done = handler

    def forget_tokens(self) -> int:
        """The connection the pending tokens belong to is gone: never acknowledge them.

        Their readings are still handed on; the broker redelivers the messages on the
        new connection, where they are refused as duplicates and acknowledged. Flushes
        already handed on keep the old ``epoch``, which tells the transport to drop
        their tokens too. Returns how many pending tokens were forgotten.
        """
        n = len(self._tokens)
        self._tokens = []
        self.epoch += 1
        return n

    # -- input ----------------------------------------------------------------

    @property
    def pending_messages(self) -> int:
        return len(self._m_topic)

    @property
    def pending_rows(self) -> int:
        return self._rows_pending

    def on_message(self, topic: str, payload: bytes, token: Any = None) -> None:
        """Take one message. ``token`` (optional) is returned in the flush's ``tokens``."""
        seq = len(self._m_topic)
        if seq == 0:
            self._first_mono = self.clock.monotonic()
        self._m_topic.append(topic)
        self._m_payload.append(payload)
        if token is not None:
            self._tokens.append(token)
        self._bytes += len(payload)
        try:
            if len(payload) > self._max_payload:
                raise PayloadError(
                    "oversize", f"{len(payload)} bytes > max_payload_bytes {self._max_payload}"
                )
            parts = topic.split("/")
            kind = self._kinds.get(parts[3]) if len(parts) > 4 else None
            if kind is None or parts[0] != self._root or parts[1] != VERSION:
                parse_topic(topic, self._root)  # raises bad_topic with the precise cause
                raise PayloadError("bad_topic", f"{topic!r} is not a telemetry topic")
            if len(parts) == 6 and parts[5] == "telemetry" and parts[4]:
                self._device_message(seq, kind, parts[2], parts[4], payload)
            elif len(parts) == 5 and parts[4] == "batch":
                self._batch_message(seq, kind, parts[2], payload)
            else:
                parse_topic(topic, self._root)
                raise PayloadError("bad_topic", f"{topic!r} is not a telemetry topic")
        except PayloadError as exc:
            self._reject_message(seq, exc.reason, exc.detail)
        except Exception as exc:
            # The outer boundary of the worker: log, count, dead-letter, carry on.
            log.exception("collector failed on a message", extra={"topic": topic[:200]})
            self._reject_message(seq, "internal_error", repr(exc))
        if self._rows_pending >= self._flush_rows or seq + 1 >= self._flush_messages:
            self.flush()

    def _device_message(
        self, seq: int, kind: DeviceKind, grid: str, device: str, payload: bytes
    ) -> None:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise _undecodable(payload, exc) from None
        rows = self._dev_rows[kind]
        g = self._grid_index.get(grid, -1)
        t = type(obj)
        if t is dict:
            vals = obj.get("values", ABSENT)
            if vals is ABSENT:  # flat values, optionally with a ts key
                ts = obj.pop("ts", ABSENT)
                vals = obj
            else:
                ts = obj.get("ts", ABSENT)
            rows.msg.append(seq)
            rows.device.append(device)
            rows.grid.append(g)
            rows.ts.append(self.clock.now_ms() if ts is ABSENT else ts)
            rows.vals.append(vals)
            self._rows_pending += 1
        elif t is list and obj:
            now = self.clock.now_ms()
            for item in obj:
                rows.msg.append(seq)
                rows.device.append(device)
                rows.grid.append(g)
                if type(item) is dict:
                    ts = item.get("ts", now)
                    rows.ts.append(ts)
                    rows.vals.append(item.get("values"))
                else:
                    rows.ts.append(0)
                    rows.vals.append(None)
            self._rows_pending += len(obj)
        else:
            raise PayloadError("bad_shape", "expected an object or a non-empty list of objects")

    def _batch_message(self, seq: int, kind: DeviceKind, grid: str, payload: bytes) -> None:
        if payload[:4] == BINARY_MAGIC:  # the gateway format: columns kept until the flush
            ids = self._bin_rows[kind].add(seq, self._grid_index.get(grid, -1), payload)
            self._batch_msgs += 1
            if len(ids):
                self._m_ids[seq] = ids
                self._rows_pending += len(ids)
            return
        wire = decode_json_batch(kind, payload)
        self._batch_msgs += 1
        n = len(wire)
        if n == 0:
            return
        self._m_ids[seq] = wire.device_ids
        self._chunks[kind].append(
            batch_rows(
                kind,
                seq,
                device=self._index_of(wire.device_ids),
                topic_grid=self._grid_index.get(grid, -1),
                ts_ms=wire.ts_ms,
                fields=dict(wire.fields),
                row_error=wire.row_error,
            )
        )
        self._rows_pending += n

    def _reject_message(self, seq: int, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        self.metrics.rejected.labels(reason).inc()
        self._dead.append(
            DeadLetter.of(
                self._m_topic[seq], reason, self._m_payload[seq], self.clock.now_ms(), detail=detail
            )
        )

    # -- flushing -------------------------------------------------------------

    def next_flush_in(self) -> float | None:
        """Seconds until the time-based flush is due (None when nothing is pending)."""
        if not self._m_topic:
            return None
        return max(0.0, self._first_mono + self._flush_interval - self.clock.monotonic())

    def poll(self) -> None:
        """Flush if the oldest pending message has waited ``flush_interval_s``."""
        if self._m_topic and self.clock.monotonic() - self._first_mono >= self._flush_interval:
            self.flush()

    def flush(self) -> None:
        """Judge everything pending and hand it on (may block: back-pressure)."""
        n_msgs = len(self._m_topic)
        if n_msgs == 0:
            return
        now_ms = self.clock.now_ms()
        now_mono = self.clock.monotonic()
        limits = Limits(now_ms, self._max_future_ms, self._max_age_ms)
        batches: list[ReadingBatch] = []
        dead = self._dead
        for kind in DeviceKind:
            raw = None
            try:
                raw = self._take_rows(kind)
                if raw is None:
                    continue
                batch = judge(
                    raw,
                    self._device_kind,
                    self._device_grid,
                    limits,
                    dedup=self.dedup,
                    now_s=now_mono,
                )
                if len(batch) < len(raw):
                    self._row_dead_letters(raw, limits, dead)
            except Exception as exc:
                # A bug, not bad input: keep every message of this kind as a dead letter
                # (and carry on) rather than kill the transport's thread.
                log.exception("judging a flush failed", extra={"kind": kind.value})
                self._internal_error(kind, raw, repr(exc), limits.now_ms, dead)
                continue
            if len(batch):
                batches.append(batch)
                self.metrics.readings.labels(kind.value).inc(len(batch))
                self.accepted += len(batch)

        late = self.dedup.late_accepted - self.late_accepted
        if late:
            self.late_accepted += late
            self.metrics.late.inc(late)
        flush = Flush(
            self.flush_seq, batches, dead, self._tokens, self.epoch, n_msgs, self._first_mono
        )
        self.flush_seq += 1
        self.messages += n_msgs
        m = self.metrics
        m.messages.labels("batch").inc(self._batch_msgs)
        m.messages.labels("device").inc(n_msgs - self._batch_msgs)
        m.bytes.inc(self._bytes)
        m.flushes.inc()
        m.flush_rows.observe(flush.rows)
        for dl in dead:
            m.dead_letters.labels(dl.reason).inc()
        self._m_topic = []
        self._m_payload = []
        self._m_ids = {}
        self._tokens = []
        self._dead = []
        self._rows_pending = 0
        self._batch_msgs = 0
        self._bytes = 0
        m.pending_rows.set(0)
        self.dispatcher.submit(flush)

    def _internal_error(
        self, kind: DeviceKind, raw: RawRows | None, detail: str, now_ms: int, out: list[DeadLetter]
    ) -> None:
        if raw is not None:
            seqs = np.unique(raw.msg).tolist()
        else:
            marker = f"/{kind.value}/"
            seqs = [i for i, t in enumerate(self._m_topic) if marker in t]
        self._dev_rows[kind].clear()
        self._bin_rows[kind].clear()
        self._chunks[kind] = []
        for seq in seqs:
            self.rejected["internal_error"] += 1
            self.metrics.rejected.labels("internal_error").inc()
            out.append(
                DeadLetter.of(
                    self._m_topic[seq],
                    "internal_error",
                    self._m_payload[seq],
                    now_ms,
                    detail=detail,
                )
            )

    def _take_rows(self, kind: DeviceKind) -> RawRows | None:
        parts: list[RawRows] = []
        sources = 0
        dev_rows = self._dev_rows[kind]
        if len(dev_rows):
            rows, ignored = dev_rows.columns(self._index_of)
            dev_rows.clear()
            parts.append(rows)
            sources += 1
            if ignored:
                self.ignored_key_rows += ignored
                self.metrics.ignored_keys.inc(ignored)
        bin_rows = self._bin_rows[kind]
        if len(bin_rows):
            try:
                parts.append(bin_rows.columns(self._index_of))
                sources += 1
            finally:
                bin_rows.clear()
        if self._chunks[kind]:
            parts += self._chunks[kind]
            self._chunks[kind] = []
            sources += 1
        if not parts:
            return None
        raw = RawRows.concat(kind, parts)
        if sources > 1:  # per-device, binary and JSON batches interleaved: arrival order
            raw = raw.take(np.argsort(raw.msg, kind="stable"))
        return raw

    def _row_dead_letters(self, raw: RawRows, limits: Limits, out: list[DeadLetter]) -> None:
        bad = np.flatnonzero(raw.code)
        codes = raw.code[bad]
        by_reason = np.bincount(codes, minlength=len(RowReason))
        for code in np.flatnonzero(by_reason).tolist():
            reason = ROW_REASONS[code]
            self.rejected[reason] += int(by_reason[code])
            self.metrics.rejected.labels(reason).inc(int(by_reason[code]))
        keys = (raw.msg[bad] << _CODE_BITS) | codes
        uniq, first, counts = np.unique(keys, return_index=True, return_counts=True)
        for key, f, count in zip(uniq.tolist(), first.tolist(), counts.tolist(), strict=True):
            seq, code = key >> _CODE_BITS, key & ((1 << _CODE_BITS) - 1)
            reason = ROW_REASONS[code]
            if code == RowReason.DUPLICATE and not self.config.dead_letter_duplicates:
                continue
            detail = self._explain(raw, int(bad[f]), RowReason(code), count, limits)
            out.append(
                DeadLetter.of(
                    self._m_topic[seq],
                    reason,
                    self._m_payload[seq],
                    limits.now_ms,
                    rows=count,
                    detail=detail,
                )
            )

    def _explain(self, raw: RawRows, row: int, code: RowReason, count: int, limits: Limits) -> str:
        """A one-line account of the first refused row of a (message, reason)."""
        seq = int(raw.msg[row])
        first = int(np.searchsorted(raw.msg, seq, side="left"))
        total = int(np.searchsorted(raw.msg, seq, side="right")) - first
        offset = row - first
        ids = self._m_ids.get(seq)
        if ids is not None:
            wire_id = ids[offset]
            device = wire_id.decode("ascii", "replace") if isinstance(wire_id, bytes) else wire_id
        else:
            device = self._m_topic[seq].split("/")[4]
        head = f"{count} of {total} rows; first: row {offset}, device {str(device)!r}"
        dev = int(raw.device[row])
        ts = int(raw.ts_ms[row])
        reg = self.registry
        field = int(raw.bad_field[row])
        if code == RowReason.OUT_OF_RANGE and field:
            spec = FIELDS[raw.kind][field - 1]
            value = float(raw.fields[spec.name][row])
            return f"{head}: {spec.name}={value:g} outside [{spec.lo:g}, {spec.hi:g}]"
        if field:  # not_finite, not_integer, missing_field, non_numeric
            spec = FIELDS[raw.kind][field - 1]
            value = float(raw.fields[spec.name][row])
            return f"{head}: field {spec.name}" + ("" if np.isnan(value) else f"={value:g}")
        if code == RowReason.WRONG_GRID:
            topic_grid = self._m_topic[seq].split("/")[2]
            return f"{head}: registered in grid {reg.grid_of(dev)!r}, topic says {topic_grid!r}"
        if code == RowReason.WRONG_KIND:
            return f"{head}: registered as {reg.kind_of(dev).value}, topic says {raw.kind.value}"
        if code == RowReason.TS_FUTURE:
            ahead_s = (ts - limits.now_ms) / 1e3
            return f"{head}: ts_ms={ts} is {ahead_s:.0f} s ahead of the collector clock"
        if code == RowReason.TS_TOO_OLD:
            age_d = (limits.now_ms - ts) / 86_400_000
            return f"{head}: ts_ms={ts} is {age_d:.1f} days old"
        if code == RowReason.DUPLICATE:
            return f"{head}: ts_ms={ts} was already accepted for this device"
        if code == RowReason.LATE:
            return (
                f"{head}: ts_ms={ts} is at or before {int(self.dedup.floor[dev])}, the newest "
                "reading of this device the collector no longer remembers (stored before a "
                "restart, or older than the duplicate window): cannot tell it from a duplicate"
            )
        return head


def _undecodable(payload: bytes, exc: Exception) -> PayloadError:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return PayloadError("not_utf8", "payload is not UTF-8 text")
    return PayloadError("not_json", f"payload is not JSON: {exc}")
