"""Does the database's cost per reading stay flat as the day's partition grows?

The district writes ~4.5 billion readings a day into one day partition per kind. What
matters for a day of real time (and for any speed-up) is not the rate into an empty
table but the rate once the partition and its unique key are far larger than
``shared_buffers``. This bench writes a 480,000-device stream (every device once per
10 s round, arrival order shuffled by a per-device phase, as the pipeline sees it) in
50,000-row chunks through gridwatch's PostgreSQL sink (the writer's own COPY path,
chunks sorted by the key) into one day partition of the sewage table, and reports the
cost per row of each 2 M-row segment, for:

- ``time_first``: the current schema (migration 0005: unique key on (UTC second,
  device, ts));
- ``device_first``: the schema as migrations 0001-0004 left it (unique (device, ts)),
  for comparison.

Last stdout line: one JSON object with ``rows``, ``segment_rows``, and per schema
``<schema>_us_per_row`` (the segments), ``<schema>_first_us`` / ``_last_us`` (mean of the
first / last two segments) and ``<schema>_growth`` (last / first).

    python bench/storage_growth.py            # 16 M rows per schema (~5 min)
    python bench/storage_growth.py --quick    # 4 M rows, time-first only (< 1 min)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gridwatch.domain import FIELDS, DeviceKind  # noqa: E402
from storage.engine import Storage  # noqa: E402
from storage.maintenance import maintain  # noqa: E402
from storage.rows import Rows  # noqa: E402
from storage.sinks import PostgresSink  # noqa: E402
from storage.testing import PG_TEST_URL, migrations_through, temp_storage  # noqa: E402

KIND = DeviceKind.SEWAGE
N_DEVICES = 480_000
CHUNK = 50_000
SEGMENT = 2_000_000


def stream_chunks(start_ms: int, seed: int):  # type: ignore[no-untyped-def]
    """Endless 50k-row chunks of 10 s rounds of every device, in arrival (time) order."""
    rng = np.random.default_rng(seed)
    phase = rng.integers(0, 10_000, N_DEVICES)
    specs = FIELDS[KIND]
    rnd = 0
    while True:
        ts = start_ms + rnd * 10_000 + phase
        order = np.argsort(ts, kind="stable")
        dev, tsr = order.astype(np.int32), ts[order].astype(np.int64)
        for i in range(0, N_DEVICES, CHUNK):
            d, t = dev[i : i + CHUNK], tsr[i : i + CHUNK]
            fields = tuple(rng.uniform(s.lo, s.hi, d.size).astype(np.dtype(s.dtype)) for s in specs)
            yield Rows(KIND, d + 1, t, fields)  # device keys start at 1
        rnd += 1


def run(storage: Storage, total: int, now_ms: int, label: str) -> list[float]:
    maintain(storage, now_ms)  # today's partition exists before the clock starts
    sink = PostgresSink(storage, application_name=f"bench-growth-{label}")
    start_ms = now_ms // 86_400_000 * 86_400_000  # the start of today (UTC)
    out: list[float] = []
    written = seg_rows = 0
    seg_t0 = time.perf_counter()
    try:
        for rows in stream_chunks(start_ms, seed=7):
            sink.write([rows])
            written += len(rows)
            seg_rows += len(rows)
            if seg_rows >= SEGMENT:
                now = time.perf_counter()
                out.append(round((now - seg_t0) / seg_rows * 1e6, 2))
                print(f"  {label:12s} {written:>11,} rows  {out[-1]:6.2f} us/row", flush=True)
                seg_t0, seg_rows = now, 0
            if written >= total:
                break
    finally:
        sink.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 M rows, time-first only")
    ap.add_argument("--rows", type=float, default=None, help="rows per schema (default 16e6)")
    ap.add_argument("--pg-url", default=PG_TEST_URL)
    args = ap.parse_args(argv)
    total = int(args.rows or (4e6 if args.quick else 16e6))
    schemas = ("time_first",) if args.quick else ("time_first", "device_first")
    now_ms = time.time_ns() // 1_000_000
    result: dict[str, object] = {"bench": "storage_growth", "rows": total, "segment_rows": SEGMENT}
    with tempfile.TemporaryDirectory(prefix="gw-growth-") as tmp:
        old = migrations_through("postgres", 4, Path(tmp) / "0001-0004")
        for name in schemas:
            mdir = None if name == "time_first" else old
            with temp_storage("postgres", pg_url=args.pg_url, migrations_dir=mdir) as s:
                segs = run(s, total, now_ms, name)
            first, last = float(np.mean(segs[:2])), float(np.mean(segs[-2:]))
            result[f"{name}_us_per_row"] = segs
            result[f"{name}_first_us"] = round(first, 2)
            result[f"{name}_last_us"] = round(last, 2)
            result[f"{name}_growth"] = round(last / first, 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
