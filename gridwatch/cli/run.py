"""``gridwatch run``: the whole pipeline, embedded by default, until Ctrl-C or SIGTERM.

With nothing configured it runs on the embedded default: the built-in simulated district
feeding the in-process transport, SQLite under ``./data``, the shipped rules and plans,
the console on http://127.0.0.1:8080 and metrics on http://127.0.0.1:9108/metrics.
``--mqtt``/``--db`` (or ``gridwatch.toml``) point it at a broker and PostgreSQL;
``--workers N`` splits the grids across N supervised processes. See docs/operations.md.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gridwatch.config import Settings, load_settings
from gridwatch.errors import ConfigError

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run the pipeline (embedded default: simulated fleet, SQLite, console)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="TOML settings file (default ./gridwatch.toml)")
    p.add_argument("--mqtt", metavar="URL", help="broker, e.g. mqtt://127.0.0.1:1883")
    p.add_argument("--db", metavar="URL", help="storage: postgresql://... or sqlite:///path.db")
    p.add_argument("--root", help="MQTT topic root (default gw)")
    p.add_argument("--registry", type=Path, help="device registry CSV/JSONL")
    p.add_argument("--rules", type=Path, help="rules TOML (default: shipped rules)")
    p.add_argument("--plans", type=Path, help="plans TOML (default: shipped plans)")
    p.add_argument("--data-dir", type=Path, help="spill files, backlog, checkpoints, status")
    p.add_argument("--workers", type=int, help="worker processes, grids split between them")
    p.add_argument("--partition", help="k/N: run only this share of the grids (separate machines)")
    p.add_argument(
        "--sim",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="feed from the built-in simulated fleet (default on; --no-sim: real devices)",
    )
    p.add_argument("--devices", type=int, help="simulated fleet size")
    p.add_argument("--speed", type=float, help="simulated seconds per wall second")
    p.add_argument("--seed", type=int, help="simulation seed")
    p.add_argument(
        "--demo-faults",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="inject one fault of every kind in the first minute (default on)",
    )
    p.add_argument(
        "--console", action=argparse.BooleanOptionalAction, default=None, help="serve the console"
    )
    p.add_argument("--console-host", help="console address (default 127.0.0.1)")
    p.add_argument("--console-port", type=int, help="console port (default 8080)")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0: any free)")
    p.add_argument("--no-metrics", action="store_true", help="serve no /metrics endpoint")
    p.add_argument("--duration", type=float, help="stop cleanly after this many seconds")
    p.add_argument("--no-summary", action="store_true", help="no live table on the terminal")
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=_run)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The effective settings: file < environment < these flags."""
    over: dict[str, Any] = {
        "data_dir": args.data_dir,
        "mqtt": {"url": args.mqtt, "root": args.root},
        "storage": {"url": args.db},
        "files": {"registry": args.registry, "rules": args.rules, "plans": args.plans},
        "sim": {
            "enabled": args.sim,
            "devices": args.devices,
            "speed": args.speed,
            "seed": args.seed,
            "demo_faults": args.demo_faults,
        },
        "pipeline": {
            "workers": args.workers,
            "partition": args.partition,
            "metrics_port": args.metrics_port,
        },
        "console": {
            "enabled": args.console,
            "host": args.console_host,
            "port": args.console_port,
        },
    }
    settings = load_settings(args.config, **over)
    if args.no_metrics:
        settings = settings.model_copy(
            update={"pipeline": settings.pipeline.model_copy(update={"metrics_port": None})}
        )
    return settings


def _run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    p = settings.pipeline
    if p.workers > 1 and p.partition is None and args.worker_index is None:
        if settings.mqtt.url is None:
            raise ConfigError(
                "--workers > 1 needs a broker (--mqtt URL): the embedded in-process transport "
                "lives inside one process"
            )
        from gridwatch.pipeline.supervisor import Supervisor

        sup = Supervisor(settings, duration_s=args.duration)
        return _serve(sup.run, sup.status_now, args, sup.stop_event)

    from gridwatch.pipeline.worker import Worker, WorkerOptions

    if args.worker_index is not None:
        from gridwatch.pipeline.status import worker_status_path

        k = args.worker_index
        options = WorkerOptions(
            name=f"worker-{k}",
            index=k,
            initialise_storage=False,
            serve_console=False,
            publish_alerts=k == 0,
            status_file=worker_status_path(Path(settings.data_dir), k),
            duration_s=args.duration,
            storage_attempts=60,
        )
        args.no_summary = True
    else:
        options = WorkerOptions(duration_s=args.duration)
    worker = Worker(settings, options)
    stop = threading.Event()
    return _serve(lambda: worker.run(stop), lambda: _worker_status(worker), args, stop)


def _worker_status(worker: Any) -> dict[str, Any]:
    return worker.status.last if worker.status is not None else {"state": worker.state}


def _serve(body: Any, status: Any, args: argparse.Namespace, stop: threading.Event) -> int:
    """Run ``body`` on a named thread; this (main) thread takes signals and shows progress."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["rc"] = body()
        except BaseException as exc:  # re-raised below in the main thread
            result["exc"] = exc
            stop.set()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            log.warning("second signal: still shutting down cleanly, please wait")
            return
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=target, name="gridwatch-pipeline")
    thread.start()
    try:
        if not args.no_summary and sys.stdout.isatty():
            _live(thread, status)
        else:
            _log_stats(thread, status)
        thread.join()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if "exc" in result:
        raise result["exc"]
    return int(result.get("rc", 1))


def _live(thread: threading.Thread, status: Any) -> None:
    from rich.live import Live

    from gridwatch.pipeline.summary import render

    with Live(render(status()), refresh_per_second=2, transient=False) as live:
        while thread.is_alive():
            thread.join(1.0)
            live.update(render(status()))


def _log_stats(thread: threading.Thread, status: Any, every_s: float = 10.0) -> None:
    from gridwatch.pipeline.summary import stats_line

    next_at = time.monotonic() + every_s
    while thread.is_alive():
        thread.join(0.5)
        if time.monotonic() >= next_at and thread.is_alive():
            next_at += every_s
            log.info("pipeline stats", extra=stats_line(status()))
