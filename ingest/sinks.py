"""Where flushed batches and dead letters go: two small protocols and simple sinks.

The collector hands every flush to ``BatchSink.write`` (detectors, storage, a test) and
``DeadLetterSink.write_dead_letters`` (storage's has the same name), then acknowledges
the flush's MQTT messages. A sink that returns has taken responsibility for the data; a
sink that raises is retried, and nothing is acknowledged until it succeeds.

``ReadingLog`` and ``DeadLetterLog`` are durable append-only files for a collector that
runs without a database (and for tests that kill it): each batch is one frame of the
contract's binary format, written and fsynced before the acknowledgement.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import orjson

from gridwatch.batch import ReadingBatch
from gridwatch.contract import decode_binary, encode_binary
from gridwatch.deadletter import DeadLetter
from gridwatch.domain import DeviceKind
from gridwatch.errors import PayloadError, StorageError
from gridwatch.registry import Registry

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<II")  # payload length, crc32 of payload


@runtime_checkable
class BatchSink(Protocol):
    """A consumer of accepted readings. ``write`` must not keep or mutate ``batch``'s
    arrays beyond the call unless it copies them; rows of one device are in time order."""

    def write(self, batch: ReadingBatch) -> None: ...


@runtime_checkable
class DurableSink(BatchSink, Protocol):
    """A sink whose ``write`` may buffer: ``sync`` returns once everything written so far
    is durable. The dispatcher calls it once per flush, before acknowledging the flush."""

    def sync(self) -> None: ...


@runtime_checkable
class DeadLetterSink(Protocol):
    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None: ...


@runtime_checkable
class Resumable(Protocol):
    """A durable sink that can tell the newest ``ts_ms`` it holds per device, so that a
    restarted collector refuses redelivered readings it already stored."""

    def last_ts_ms(self, n_devices: int) -> npt.NDArray[np.int64]: ...


class MemorySink:
    """Keeps every batch (tests, embedded pipelines). Thread-safe for one writer."""

    def __init__(self) -> None:
        self.batches: list[ReadingBatch] = []
        self._lock = threading.Lock()

    def write(self, batch: ReadingBatch) -> None:
        with self._lock:
            self.batches.append(batch)

    def rows(self) -> int:
        with self._lock:
            return sum(len(b) for b in self.batches)

    def of_kind(self, kind: DeviceKind) -> ReadingBatch:
        """All readings of ``kind`` so far, in arrival order, as one batch."""
        with self._lock:
            parts = [b for b in self.batches if b.kind == kind]
        return ReadingBatch.concat(parts) if parts else ReadingBatch.empty(kind)


class MemoryDeadLetters:
    """Keeps every dead letter in memory; ``counts`` sums rows by reason."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []
        self._lock = threading.Lock()

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        with self._lock:
            self.letters.extend(letters)

    def snapshot(self) -> list[DeadLetter]:
        with self._lock:
            return list(self.letters)

    def counts(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for dl in self.snapshot():
            out[dl.reason] += dl.rows
        return out


class ReadingLog:
    """Accepted readings appended to one file, durable before the acknowledgement.

    Frame = ``<u32 length><u32 crc32>`` + a ``GWB1`` payload whose device column holds
    registry device ids (not dense indexes, so the file outlives a registry reorder). A
    frame torn by a crash fails its length or CRC check: the reader stops there and the
    writer truncates it away when it reopens the file.
    """

    def __init__(self, path: str | Path, registry: Registry, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self._registry = registry
        self._fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        good = _scan_frames(self.path)
        self._fh = self.path.open("ab")
        if self._fh.tell() != good:
            log.warning(
                "truncating torn tail of reading log",
                extra={"path": str(self.path), "bytes": self._fh.tell() - good},
            )
            self._fh.truncate(good)
            self._fh.seek(good)

    def write(self, batch: ReadingBatch) -> None:
        if len(batch) == 0:
            return
        ids = self._registry.device_ids[batch.device].astype(np.bytes_)
        payload = encode_binary(batch.kind, ids, batch.ts_ms, batch.fields)
        self._fh.write(_FRAME.pack(len(payload), zlib.crc32(payload)) + payload)
        self._fh.flush()
        if self._fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def last_ts_ms(self, n_devices: int) -> npt.NDArray[np.int64]:
        if n_devices != len(self._registry):
            raise StorageError(f"registry has {len(self._registry)} devices, not {n_devices}")
        return reading_log_last_ts(self.path, self._registry)


def read_reading_log(
    path: str | Path,
    registry: Registry | None = None,
    *,
    index_of: Callable[[Any], npt.NDArray[np.int32]] | None = None,
) -> Iterator[Any]:
    """Yield ``(kind, device_ids, ts_ms, fields)`` per frame, or ``ReadingBatch`` with dense
    indexes when ``registry`` is given (unknown ids raise ``StorageError``). ``index_of``:
    a prepared id lookup (``ingest.ids.DeviceIds``) for callers that read many logs;
    by default one is built per call."""
    if registry is not None and index_of is None:
        from ingest.ids import DeviceIds

        index_of = DeviceIds(registry)
    for payload in _frames(Path(path)):
        try:
            (hlen,) = struct.unpack_from("<I", payload, 4)
            kind = DeviceKind(orjson.loads(payload[8 : 8 + hlen])["kind"])
            wire = decode_binary(kind, payload)
        except (PayloadError, ValueError, KeyError, TypeError, struct.error) as exc:
            raise StorageError(f"{path}: unreadable frame: {exc}") from exc
        if registry is None:
            yield kind, wire.device_ids, wire.ts_ms, dict(wire.fields)
            continue
        dev = index_of(wire.device_ids)  # type: ignore[misc]
        if (dev < 0).any():
            raise StorageError(f"{path}: device ids missing from the registry")
        yield ReadingBatch(
            kind, dev, wire.ts_ms.copy(), {k: v.copy() for k, v in wire.fields.items()}
        )


def reading_log_last_ts(path: str | Path, registry: Registry) -> npt.NDArray[np.int64]:
    """Newest ``ts_ms`` per dense device index in a reading log (int64 min where none)."""
    last = np.full(len(registry), np.iinfo(np.int64).min, dtype=np.int64)
    if not Path(path).exists():
        return last
    for batch in read_reading_log(path, registry):
        np.maximum.at(last, batch.device, batch.ts_ms)
    return last


def _frames(path: Path) -> Iterator[bytes]:
    if not path.exists():
        return
    data = path.read_bytes()
    pos = 0
    while pos + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, pos)
        end = pos + _FRAME.size + length
        if end > len(data):
            return
        payload = data[pos + _FRAME.size : end]
        if zlib.crc32(payload) != crc:
            return
        yield payload
        pos = end


def _scan_frames(path: Path) -> int:
    """Offset just past the last intact frame (0 for a missing file)."""
    if not path.exists():
        return 0
    return sum(_FRAME.size + len(p) for p in _frames(path))


class DeadLetterLog:
    """Dead letters appended as JSON lines, the excerpt hex-encoded (it may be any bytes)."""

    def __init__(self, path: str | Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._fh = self.path.open("ab")

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        lines = [
            orjson.dumps(
                {
                    "received_ms": dl.received_ms,
                    "topic": dl.topic,
                    "reason": dl.reason,
                    "rows": dl.rows,
                    "detail": dl.detail,
                    "excerpt": dl.excerpt.hex(),
                }
            )
            for dl in letters
        ]
        self._fh.write(b"\n".join(lines) + b"\n")
        self._fh.flush()
        if self._fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def read_dead_letter_log(path: str | Path) -> list[DeadLetter]:
    """Every intact line of a dead-letter log; a torn last line is skipped."""
    out: list[DeadLetter] = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_bytes().splitlines():
        try:
            obj = orjson.loads(line)
            out.append(
                DeadLetter(
                    obj["topic"],
                    obj["reason"],
                    bytes.fromhex(obj["excerpt"]),
                    int(obj["received_ms"]),
                    int(obj["rows"]),
                    obj["detail"],
                )
            )
        except (orjson.JSONDecodeError, KeyError, ValueError, TypeError):
            continue
    return out
