"""Board query latency of the dispatcher console with 10,000 open alerts.

The alerts are made the pipeline's way (detections -> rules engine -> dispatcher ->
storage) on a 40,000-device district (100 grids, 12 streets), then the console is served
by ``gridwatch console`` in a process of its own (as in production: the measuring client
does not share its interpreter) and asked for board pages over HTTP with a bearer token, as an
administrator (every alert), a street supervisor and a grid dispatcher, first page and
deep pages (keyset cursors), with and without a grade filter. The bare baseline is the
same query without HTTP, auth or JSON: ``AlertService.list_alerts`` plus the grade
counts, called directly. The overview (every grid's tile) is timed too.

Usage: ``python bench/console_api.py [--quick] [--backend postgres|sqlite|both]``
(PostgreSQL: ``GRIDWATCH_TEST_PG_URL``, default postgresql://postgres@127.0.0.1:5432/test,
in a schema of its own that is dropped afterwards). Goal: board p99 < 100 ms.
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alerts.console.access import scope_for
from alerts.console.passwords import ScryptCost, hash_password
from alerts.console.queries import ACTIVE_STATES, grade_counts
from alerts.dispatch import Dispatcher
from alerts.service import AlertService
from gridwatch.batch import Detections
from gridwatch.clock import ManualClock
from gridwatch.domain import DetectionKind, DeviceKind
from gridwatch.registry import Registry
from rules.engine import RulesEngine
from rules.load import load_rules
from sim.fleet import FleetSpec, build_fleet
from storage import users
from storage.engine import Storage
from storage.testing import PG_TEST_URL, temp_storage

SEED = 20261126
GOAL_P99_MS = 100.0
PASSWORD = "benchmark password"
COST = ScryptCost(n=2**12, r=8, p=1)  # sign-in is not what is measured


def make_alerts(storage: Storage, reg: Registry, clock: ManualClock, target: int) -> int:
    """About ``target`` open alerts: every elevator trapped (red), manholes forecasting
    overflow (red / yellow by time to overflow); returns the open count."""
    rng = np.random.default_rng(SEED)
    engine = RulesEngine(load_rules(registry=reg), reg, clock)
    d = Dispatcher(storage, engine, clock=clock)
    d.start()
    el = reg.devices_of_kind(DeviceKind.ELEVATOR)
    n_el = min(el.size, target // 2)
    el = rng.choice(el, n_el, replace=False)
    for part in np.array_split(el, max(1, n_el // 1000)):
        d.handle(
            Detections.of(
                DetectionKind.ENTRAPMENT, part, clock.now_ms(), 1.0, stopped_s=60.0, floor_no=5.0
            )
        )
        clock.advance(1)
    sw = rng.choice(reg.devices_of_kind(DeviceKind.SEWAGE), target - n_el, replace=False)
    tto = rng.uniform(300, 3500, sw.size)
    for _ in range(3):  # for_s = 20 s: three forecasts 10 s apart
        d.handle(
            Detections.of(
                DetectionKind.OVERFLOW_FORECAST, sw, clock.now_ms(), 0.8, time_to_overflow_s=tto
            )
        )
        clock.advance(10)
    d.tick()
    d.close()
    if storage.dialect == "postgres":
        with storage.connection() as conn:  # what autovacuum does after a bulk change
            conn.execute("ANALYZE alerts")
    with storage.connection(readonly=True) as conn:
        return int(
            conn.execute("SELECT count(*) FROM alerts WHERE state <> 'resolved'").fetchone()[0]
        )


@contextlib.contextmanager
def serve_console(storage: Storage, registry_file: Path) -> Iterator[str]:
    """``gridwatch console`` on a free port in a child process; yields its URL."""
    url = storage.url
    if storage.dialect == "postgres":
        url = f"{url}{'&' if '?' in url else '?'}schema={storage.schema}"  # type: ignore[attr-defined]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridwatch", "--log-level", "WARNING", "console", "--db", url,
         "--port", "0", "--registry", str(registry_file), "--no-migrate"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "listening on " not in line:
            raise RuntimeError(f"gridwatch console did not start: {line!r}")
        base = line.strip().rsplit(" ", 1)[-1]
        for _ in range(200):
            try:
                if httpx.get(f"{base}/api/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def run_backend(backend: str, quick: bool, tmp: str) -> dict[str, Any]:
    target = 10_000
    reps = 60 if quick else 300
    reg = build_fleet(FleetSpec(n_devices=40_000, seed=SEED))
    clock = ManualClock(1_780_000_000_000)
    with temp_storage(backend, pg_url=PG_TEST_URL, tmp_dir=tmp) as storage:  # type: ignore[arg-type]
        t0 = time.perf_counter()
        n_open = make_alerts(storage, reg, clock, target)
        setup_s = time.perf_counter() - t0
        street = str(reg.street_ids[0])
        grid = reg.grids_of_street(street)[0]
        for name, role, grids, st in (
            ("admin", "admin", [], None),
            ("supervisor", "supervisor", [], street),
            ("dispatcher", "dispatcher", [grid], None),
        ):
            users.create_user(
                storage, name=name, role=role, grids=grids, street=st,
                password_hash=hash_password(PASSWORD, COST), now_ms=clock.now_ms(),
            )  # fmt: skip
        service = AlertService(storage, reg, clock=clock)
        registry_file = Path(tmp) / f"registry-{backend}.csv"
        reg.to_csv(registry_file)

        # bare baseline: the same reads, no HTTP / auth / JSON
        admin_scope = scope_for(users.get_user(storage, "admin"), reg)  # type: ignore[arg-type]

        def bare() -> None:
            service.list_alerts(admin_scope, states=list(ACTIVE_STATES), limit=50)
            grade_counts(storage, grids=None, streets=[], states=ACTIVE_STATES)

        bare()
        bare_ms = timed(bare, reps)

        res: dict[str, Any] = {}
        all_board: list[float] = []
        with (
            serve_console(storage, registry_file) as url,
            httpx.Client(base_url=url, timeout=30) as http,
        ):
            for role in ("admin", "supervisor", "dispatcher"):
                tok = http.post(
                    "/api/auth/tokens", json={"name": role, "password": PASSWORD}
                ).json()
                h = {"Authorization": f"Bearer {tok['token']}"}
                first = http.get("/api/board", headers=h, params={"limit": 50})
                first.raise_for_status()
                body = first.json()
                total = body["counts"]["total"]
                # collect cursors of up to 20 pages for deep-page requests
                cursors: list[str | None] = [None]
                cur = body["next_cursor"]
                while cur and len(cursors) < 20:
                    cursors.append(cur)
                    cur = http.get(
                        "/api/board", headers=h, params={"limit": 50, "cursor": cur}
                    ).json()["next_cursor"]
                rng = np.random.default_rng(SEED)
                samples: list[float] = []
                for i in range(reps):
                    params: dict[str, Any] = {"limit": 50}
                    c = cursors[int(rng.integers(len(cursors)))] if i % 2 else None
                    if c:
                        params["cursor"] = c
                    if i % 3 == 0:
                        params["grade"] = "red"
                    t = time.perf_counter()
                    r = http.get("/api/board", headers=h, params=params)
                    samples.append((time.perf_counter() - t) * 1000)
                    if r.status_code != 200:
                        raise RuntimeError(f"board {role}: {r.status_code} {r.text[:200]}")
                over = timed(
                    lambda h=h: http.get("/api/overview", headers=h).raise_for_status(), reps // 3
                )
                all_board += samples
                res[f"board_{role}_alerts"] = total
                res[f"board_{role}_p50_ms"] = round(statistics.median(samples), 2)
                res[f"board_{role}_p99_ms"] = round(pct(samples, 99), 2)
                res[f"overview_{role}_p99_ms"] = round(pct(over, 99), 2)
        res.update(
            {
                "open_alerts": n_open,
                "board_p50_ms": round(statistics.median(all_board), 2),
                "board_p99_ms": round(pct(all_board, 99), 2),
                "bare_board_p50_ms": round(statistics.median(bare_ms), 2),
                "bare_board_p99_ms": round(pct(bare_ms, 99), 2),
                "board_requests": len(all_board),
                "setup_s": round(setup_s, 1),
            }
        )
        return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="fewer requests, PostgreSQL only (< 1 min)"
    )
    ap.add_argument("--backend", choices=("postgres", "sqlite", "both"), default=None)
    args = ap.parse_args()
    backend = args.backend or ("postgres" if args.quick else "both")
    backends = ["postgres", "sqlite"] if backend == "both" else [backend]
    out: dict[str, Any] = {
        "bench": "console_api",
        "quick": args.quick,
        "goal_board_p99_ms": GOAL_P99_MS,
    }
    with tempfile.TemporaryDirectory(prefix="gw-console-bench-") as tmp:
        for b in backends:
            t = time.perf_counter()
            r = run_backend(b, args.quick, tmp)
            print(
                f"{b}: "
                + ", ".join(f"{k}={v}" for k, v in r.items())
                + f" ({time.perf_counter() - t:.1f} s)"
            )
            if b == backends[0]:
                out.update({"backend": b, **r})
            else:
                out.update({f"{b}_{k}": v for k, v in r.items()})
    out["ok"] = all(
        v < GOAL_P99_MS
        for k, v in out.items()
        if k.endswith("board_p99_ms") and "bare" not in k and "goal" not in k
    )
    print(orjson.dumps(out).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
