"""Duplicate readings: exact (device, ts) matches, with late readings still accepted.

QoS 1 means at-least-once: a message is redelivered when its acknowledgement is lost
(collector crash, broker restart), and a publisher resends what the broker did not
acknowledge. Across such events MQTT does not even keep the order of messages, so "a
reading at or before the newest accepted one" is not a duplicate test: after a broker
restart Mosquitto was seen delivering hours-old queued messages after newer ones, and
that rule would have refused a third of a test's perfectly valid readings.

So the test is exact, with bounded memory, on per-device numpy arrays:

- ``last_ts[d]``: the newest accepted ``ts_ms`` of device ``d``. A newer reading is new
  (the common case, decided without any lookup).
- recent keys: every accepted ``(device, ts)`` of the last ``window_s`` seconds of
  arrival (at most ``max_keys``), packed into int64 and kept in a few sorted arrays.
  An older reading found there is a ``duplicate``; one not found is a *late* reading
  and is accepted (counted as late).
- ``floor[d]``: the newest ``ts_ms`` of device ``d`` that is no longer among the recent
  keys (forgotten after the window, or stored by an earlier process: a restarted
  collector seeds ``last_ts`` and ``floor`` from its sink). A reading at or before it
  cannot be told from a duplicate and is refused as ``late``.

Hence no reading is ever accepted twice, and a late reading is accepted as long as it
is newer than what the collector has forgotten.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import numpy as np
import numpy.typing as npt

NEVER: Final = np.iinfo(np.int64).min
"""``last_ts``/``floor`` of a device nothing is known about."""
TS_BASE_MS: Final = 1_577_836_800_000
"""2020-01-01: packed keys store ``ts - TS_BASE_MS``; earlier readings skip the exact test."""
_BUCKETS_PER_WINDOW: Final = 8
_YOUNG_SEGMENTS: Final = 32


class Dedup:
    """Duplicate and lateness state of every device; ``check`` judges one flush."""

    def __init__(
        self,
        n_devices: int,
        *,
        window_s: float = 600.0,
        max_keys: int = 8_000_000,
        last_ts_ms: npt.NDArray[np.int64] | None = None,
    ) -> None:
        if window_s <= 0 or max_keys < 1:
            raise ValueError(f"need window_s > 0 and max_keys >= 1, got {window_s}, {max_keys}")
        self.window_s = window_s
        self.max_keys = max_keys
        if last_ts_ms is None:
            self.last_ts = np.full(n_devices, NEVER, dtype=np.int64)
        else:
            if last_ts_ms.shape != (n_devices,):
                raise ValueError(
                    f"last_ts_ms has shape {last_ts_ms.shape}, registry has {n_devices}"
                )
            self.last_ts = last_ts_ms.astype(np.int64, copy=True)
        self.floor = self.last_ts.copy()
        self._dev_bits = max(1, int(n_devices - 1).bit_length())
        self._ts_bits = 63 - self._dev_bits
        self._ts_mask = (1 << self._ts_bits) - 1
        self._bucket_s = window_s / _BUCKETS_PER_WINDOW
        self._young: list[npt.NDArray[np.int64]] = []
        self._young_keys = 0
        self._young_since = 0.0
        self._buckets: deque[tuple[int, npt.NDArray[np.int64]]] = deque()
        self._bucket_keys = 0
        self.late_accepted = 0
        """Accepted readings that arrived after a newer one of their device (cumulative)."""

    @property
    def keys_held(self) -> int:
        return self._young_keys + self._bucket_keys

    def check(
        self, device: npt.NDArray[np.int32], ts_ms: npt.NDArray[np.int64], now_s: float
    ) -> tuple[npt.NDArray[np.int8], bool]:
        """Judge rows (arrival order) and remember the accepted ones.

        Returns per row 0 (accepted), 1 (``duplicate``) or 2 (``late``: refused), and
        whether some accepted row is older than another accepted or already known row of
        its device (the caller then restores time order within the device).

        >>> d = Dedup(4)
        >>> d.check(np.array([1, 1, 1, 1]), np.array([5, 3, 5, 7]) + TS_BASE_MS, 0.0)[0].tolist()
        [0, 0, 1, 0]
        >>> d.check(np.array([1, 1]), np.array([3, 4]) + TS_BASE_MS, 1.0)[0].tolist()
        [1, 0]
        """
        n = device.shape[0]
        codes = np.zeros(n, dtype=np.int8)
        if n == 0:
            return codes, False
        self._expire(now_s)
        order = np.lexsort((ts_ms, device))  # by device, then ts, then arrival (stable)
        d = device[order]
        t = ts_ms[order]
        same_dev = np.zeros(n, dtype=np.bool_)
        np.equal(d[1:], d[:-1], out=same_dev[1:])
        twin = np.zeros(n, dtype=np.bool_)  # an earlier arrival of this flush has the same key
        twin[1:] = same_dev[1:] & (t[1:] == t[:-1])
        newer = t > self.last_ts[d]
        late = ~newer & (t <= self.floor[d])
        packable = (t >= TS_BASE_MS) & (t - TS_BASE_MS <= self._ts_mask)
        old = ~newer & ~late & ~twin
        ask = old & packable
        late |= old & ~packable  # outside the packable era: cannot tell, refuse
        dup = twin & ~late
        if ask.any():
            dup[ask] = self._contains(self._pack(d[ask], t[ask]))
        accepted = ~dup & ~late
        sorted_codes = np.where(dup, 1, np.where(late, 2, 0)).astype(np.int8)
        codes[order] = sorted_codes

        da, ta, arrival = d[accepted], t[accepted], order[accepted]
        late_rows = int(np.count_nonzero(~newer & accepted))
        if da.size > 1:  # an older row of this flush that arrived after a newer one
            late_rows += int(np.count_nonzero((da[1:] == da[:-1]) & (arrival[1:] < arrival[:-1])))
        self.late_accepted += late_rows
        reorder = late_rows > 0
        if da.size:
            end = np.ones(da.size, dtype=np.bool_)
            end[:-1] = da[1:] != da[:-1]
            self.last_ts[da[end]] = np.maximum(self.last_ts[da[end]], ta[end])
            keep = packable[accepted]
            self._add(self._pack(da[keep], ta[keep]), now_s)
        return codes, reorder

    # -- recent keys ----------------------------------------------------------

    def _pack(
        self, device: npt.NDArray[np.int32], ts_ms: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        return (device.astype(np.int64) << self._ts_bits) | (ts_ms - TS_BASE_MS)

    def _contains(self, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        found = np.zeros(keys.shape[0], dtype=np.bool_)
        for seg in [*self._young, *(b for _, b in self._buckets)]:
            if seg.size:
                pos = np.minimum(np.searchsorted(seg, keys), seg.size - 1)
                found |= seg[pos] == keys
        return found

    def _add(self, sorted_keys: npt.NDArray[np.int64], now_s: float) -> None:
        if sorted_keys.size:
            if not self._young:
                self._young_since = now_s
            self._young.append(sorted_keys)
            self._young_keys += sorted_keys.size
        if len(self._young) >= _YOUNG_SEGMENTS or self._young_keys >= self.max_keys // 8:
            self._seal(now_s)
        while self.keys_held > self.max_keys:
            if not self._buckets:
                self._seal(now_s)
            self._forget(*self._buckets.popleft())

    def _seal(self, now_s: float) -> None:
        """Merge the young segments into the bucket of ``now_s`` (timsort merges runs)."""
        if not self._young:
            return
        bucket = int(now_s // self._bucket_s)
        parts = self._young
        if self._buckets and self._buckets[-1][0] == bucket:
            parts = [self._buckets.pop()[1], *parts]
        merged = np.concatenate(parts)
        merged.sort(kind="stable")
        self._buckets.append((bucket, merged))
        self._bucket_keys += self._young_keys
        self._young = []
        self._young_keys = 0

    def _expire(self, now_s: float) -> None:
        if self._young and now_s - self._young_since >= self._bucket_s:
            self._seal(self._young_since)
        horizon = now_s - self.window_s
        while self._buckets and (self._buckets[0][0] + 1) * self._bucket_s <= horizon:
            self._forget(*self._buckets.popleft())

    def _forget(self, _bucket: int, keys: npt.NDArray[np.int64]) -> None:
        """Drop keys; their devices' ``floor`` rises to the newest forgotten ``ts``."""
        self._bucket_keys -= keys.size
        if not keys.size:
            return
        dev = keys >> self._ts_bits
        end = np.ones(keys.size, dtype=np.bool_)
        end[:-1] = dev[1:] != dev[:-1]
        d = dev[end]
        t = (keys[end] & self._ts_mask) + TS_BASE_MS
        self.floor[d] = np.maximum(self.floor[d], t)
