"""How fast readings reach the database: gridwatch's writers against a bare binary COPY.

Both PostgreSQL runs write the same rows (rounds of every device of a simulated fleet,
in ingest-sized batches per kind) into freshly migrated schemas, so into the same
partitioned tables with the same unique (device, ts) btree and BRIN indexes, committing
every ``--commit-rows`` rows. The bare baseline is the limit: numpy-built binary COPY
blocks written with psycopg, nothing else. The writer run is end to end: from the first
``submit`` until ``flush`` says every row is committed. Then the SQLite writer writes the
same rows into a temp file.

Last stdout line: one JSON object (``bare_copy_rows_per_s``, ``writer_rows_per_s``,
``ratio``, ``sqlite_rows_per_s``, ...). Goals: ratio >= 0.8, writer >= 300k rows/s,
SQLite >= 150k rows/s.

    python bench/storage_rate.py            # full: 480k devices x 4 rounds, 2 repeats
    python bench/storage_rate.py --quick    # < 1 min
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson

from gridwatch.batch import ReadingBatch
from gridwatch.domain import DeviceKind
from sim.fleet import FleetSpec, build_fleet
from storage.copybin import HEADER, TRAILER
from storage.engine import Storage
from storage.maintenance import maintain
from storage.rollups import refresh_rollups
from storage.schema import PG_EPOCH_OFFSET_MS, TABLES
from storage.testing import PG_TEST_URL, split_batch, synthetic_batch, temp_storage
from storage.writer import ReadingWriter


def make_stream(
    n_devices: int, rounds: int, batch_rows: int, seed: int, start_ms: int
) -> tuple[list[ReadingBatch], np.ndarray]:
    reg = build_fleet(FleetSpec(n_devices=n_devices, seed=seed))
    stream: list[ReadingBatch] = []
    for r in range(rounds):
        for kind in DeviceKind:
            b = synthetic_batch(
                reg, kind, start_ms=start_ms + r * 10_000, rounds=1, seed=seed * 100 + r
            )
            stream += split_batch(b, batch_rows)
    return stream, reg  # type: ignore[return-value]


def _bare_block(batch_dev: np.ndarray, ts_ms: np.ndarray, fields: Sequence[np.ndarray]) -> bytes:
    """A plain numpy-built binary COPY block: every field present (NaN stays NaN)."""
    spec = [("n", ">i2"), ("l0", ">i4"), ("d", ">i4"), ("l1", ">i4"), ("t", ">i8")]
    for i, f in enumerate(fields):
        spec += [(f"l{i + 2}", ">i4"), (f"v{i}", ">i8" if f.dtype.kind == "i" else ">f4")]
    rows = np.empty(batch_dev.size, dtype=spec)
    rows["n"], rows["l0"], rows["d"], rows["l1"] = 2 + len(fields), 4, batch_dev, 8
    rows["t"] = (ts_ms - PG_EPOCH_OFFSET_MS) * 1000
    for i, f in enumerate(fields):
        rows[f"l{i + 2}"] = f.dtype.itemsize
        rows[f"v{i}"] = f
    return rows.tobytes()


def chunks(stream: list[ReadingBatch], commit_rows: int) -> list[list[ReadingBatch]]:
    """The stream cut into commit-sized chunks exactly as the writer cuts it."""
    out: list[list[ReadingBatch]] = [[]]
    n = 0
    for b in stream:
        start = 0
        while start < len(b):
            take = min(len(b) - start, commit_rows - n)
            out[-1].append(b.take(np.arange(start, start + take)))
            n += take
            start += take
            if n == commit_rows:
                out.append([])
                n = 0
    return [c for c in out if c]


def run_bare(storage: Storage, keys: np.ndarray, stream: list[ReadingBatch], commit: int) -> float:
    conn = storage.connect_raw("bench-bare")
    parts = chunks(stream, commit)
    t0 = time.perf_counter()
    for chunk in parts:
        kinds: dict[DeviceKind, list[ReadingBatch]] = {}
        for b in chunk:
            kinds.setdefault(b.kind, []).append(b)
        with conn.cursor() as cur:
            for kind, bs in kinds.items():
                b = ReadingBatch.concat(bs)
                t = TABLES[kind]
                cols = ", ".join(["device", "ts", *(f'"{f}"' for f in t.fields)])
                payload = _bare_block(keys[b.device], b.ts_ms, [b.fields[f] for f in t.fields])
                with cur.copy(f"COPY {t.name} ({cols}) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.write(HEADER + payload + TRAILER)
        conn.commit()
    elapsed = time.perf_counter() - t0
    conn.close()
    return sum(len(b) for b in stream) / elapsed


def run_writer(
    storage: Storage, keys: np.ndarray, stream: list[ReadingBatch], commit: int, spill: Path
) -> float:
    w = ReadingWriter(
        storage,
        keys,
        spill_dir=spill,
        commit_rows=commit,
        max_memory_rows=max(4 * commit, 1_000_000),
        rollup_interval_s=None,
        maintenance_interval_s=None,
    ).start()
    try:
        t0 = time.perf_counter()
        for b in stream:
            w.submit(b)
        if not w.flush(timeout=600):
            raise RuntimeError(f"writer did not finish: {w.stats()}")
        elapsed = time.perf_counter() - t0
        st = w.stats()
    finally:
        w.stop()
    n = sum(len(b) for b in stream)
    if st.written_rows != n:
        raise RuntimeError(f"writer wrote {st.written_rows} of {n} rows: {st}")
    return n / elapsed


def fresh(backend: str, tmp: str, pg_url: str, now_ms: int):  # type: ignore[no-untyped-def]
    ctx = temp_storage(backend, pg_url=pg_url, tmp_dir=tmp)  # type: ignore[arg-type]
    storage = ctx.__enter__()
    maintain(storage, now_ms)  # today's partitions exist before the clock starts
    return ctx, storage


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run, under a minute")
    ap.add_argument("--pg-url", default=PG_TEST_URL)
    ap.add_argument("--devices", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--commit-rows", type=int, default=50_000)
    ap.add_argument("--batch-rows", type=int, default=5_000, help="rows per submitted batch")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--seed", type=int, default=20261126)
    args = ap.parse_args(argv)
    devices = args.devices or (100_000 if args.quick else 480_000)
    rounds = args.rounds or (3 if args.quick else 4)
    repeats = args.repeats or (1 if args.quick else 2)
    now_ms = time.time_ns() // 1_000_000
    start_ms = now_ms // 3_600_000 * 3_600_000  # this hour: inside today's partition
    stream, reg = make_stream(devices, rounds, args.batch_rows, args.seed, start_ms)
    n_rows = sum(len(b) for b in stream)
    print(f"{n_rows} rows ({devices} devices x {rounds} rounds), commit every {args.commit_rows}")

    bare, writer, sqlite, rollup = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        for rep in range(repeats):
            for name in ("bare", "writer"):
                ctx, s = fresh("postgres", tmp, args.pg_url, now_ms)
                try:
                    keys = s.save_registry(reg)
                    if name == "bare":
                        bare.append(run_bare(s, keys, stream, args.commit_rows))
                    else:
                        spill = Path(tmp) / f"spill-{rep}"
                        writer.append(run_writer(s, keys, stream, args.commit_rows, spill))
                        t0 = time.perf_counter()
                        for kind in DeviceKind:
                            refresh_rollups(s, kind, start_ms, start_ms + rounds * 10_000)
                        rollup.append(n_rows / (time.perf_counter() - t0))
                finally:
                    ctx.__exit__(None, None, None)
                rate = (bare if name == "bare" else writer)[-1]
                print(f"  run {rep + 1} {name:7s} {rate:12,.0f} rows/s", flush=True)
            ctx, s = fresh("sqlite", tmp, args.pg_url, now_ms)
            try:
                keys = s.save_registry(reg)
                sqlite.append(
                    run_writer(s, keys, stream, args.commit_rows, Path(tmp) / f"sq-{rep}")
                )
            finally:
                ctx.__exit__(None, None, None)
            print(f"  run {rep + 1} sqlite  {sqlite[-1]:12,.0f} rows/s", flush=True)

    result = {
        "bench": "storage_rate",
        "rows": n_rows,
        "devices": devices,
        "commit_rows": args.commit_rows,
        "batch_rows": args.batch_rows,
        "repeats": repeats,
        "bare_copy_rows_per_s": round(statistics.median(bare)),
        "writer_rows_per_s": round(statistics.median(writer)),
        "ratio": round(statistics.median(writer) / statistics.median(bare), 3),
        "sqlite_rows_per_s": round(statistics.median(sqlite)),
        "rollup_refresh_rows_per_s": round(statistics.median(rollup)),
        "bare_runs_rows_per_s": [round(x) for x in bare],
        "writer_runs_rows_per_s": [round(x) for x in writer],
    }
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
