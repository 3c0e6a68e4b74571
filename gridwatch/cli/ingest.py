"""``gridwatch ingest`` (an MQTT collector), ``gridwatch broker-auth``, ``gridwatch deadletters``.

The collector stores what it accepts either in a database (``--db``, through
``storage``) or in an append-only reading log (``--out``, ``ingest.sinks.ReadingLog``),
and acknowledges each MQTT message only once its readings are there.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from gridwatch import contract
from gridwatch.deadletter import DeadLetter
from gridwatch.errors import ConfigError
from gridwatch.registry import Registry

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    _register_ingest(sub)
    _register_broker_auth(sub)
    _register_deadletters(sub)


# -- gridwatch ingest ------------------------------------------------------------------


def _register_ingest(sub: Any) -> None:
    p = sub.add_parser(
        "ingest",
        help="run an MQTT collector until Ctrl-C",
        description=(
            "Subscribe to the telemetry topics (docs/protocol.md) at QoS 1 with a persistent "
            "session, validate, micro-batch, store, then acknowledge. See docs/ingest.md."
        ),
    )
    p.add_argument("--mqtt", default="mqtt://127.0.0.1:1883", help="broker URL (mqtts:// = TLS)")
    p.add_argument("--registry", type=Path, required=True, help="device registry (CSV/JSONL)")
    part = p.add_mutually_exclusive_group()
    part.add_argument("--partition", help="k/N: take grids with crc32(grid) %% N == k (0-based)")
    part.add_argument("--grids", help="comma-separated grid ids to take")
    p.add_argument(
        "--client-id",
        help="MQTT client id = persistent session (default gridwatch-collector[-kofN]); "
        "reuse it after a restart to get what was queued meanwhile",
    )
    p.add_argument("--root", default=contract.DEFAULT_ROOT, help="topic root (default gw)")
    store = p.add_argument_group("where accepted readings go")
    store.add_argument(
        "--db",
        help="storage URL: postgresql://... or sqlite:///path.db (default: storage.url of "
        "the configuration, sqlite:///./data/gridwatch.db)",
    )
    store.add_argument("--config", type=Path, help="TOML configuration file (for --db)")
    store.add_argument("--out", type=Path, help="append-only reading log file")
    store.add_argument(
        "--dead-letters",
        type=Path,
        help="dead-letter log (JSON lines); default: the database, or OUT.deadletters.jsonl",
    )
    store.add_argument("--no-fsync", action="store_true", help="do not fsync the log files")
    store.add_argument("--spill-dir", type=Path, help="--db: where to spill while it is down")
    auth = p.add_argument_group("broker authentication and TLS (off by default)")
    auth.add_argument("--username", help="broker user (or in the URL)")
    auth.add_argument(
        "--password-env", help="name of the environment variable holding the password"
    )
    auth.add_argument("--ca-file", help="CA bundle to verify the broker (mqtts://)")
    auth.add_argument("--cert-file", help="client certificate (mutual TLS)")
    auth.add_argument("--key-file", help="client key (mutual TLS)")
    auth.add_argument("--tls-insecure", action="store_true", help="skip hostname verification")
    mq = p.add_argument_group("MQTT session")
    mq.add_argument(
        "--protocol",
        choices=("5", "3.1.1"),
        default="5",
        help="MQTT version (default 5: its Receive Maximum works on any broker; 3.1.1, the "
        "default of `gridwatch run`, costs less CPU but needs the broker's "
        "max_inflight_messages >= 2x --flush-messages, see docs/operations.md)",
    )
    mq.add_argument("--session-expiry-s", type=int, default=86_400, help="MQTT 5 (default 1 day)")
    mq.add_argument("--receive-maximum", type=int, default=20_000, help="MQTT 5 in-flight window")
    mq.add_argument("--keepalive-s", type=int, default=30)
    lim = p.add_argument_group("validation and batching")
    lim.add_argument("--flush-ms", type=float, default=50.0, help="time-based flush (ms)")
    lim.add_argument("--flush-rows", type=int, default=65_536)
    lim.add_argument("--flush-messages", type=int, default=2_000)
    lim.add_argument("--max-payload-bytes", type=int, default=1 << 20)
    lim.add_argument(
        "--max-future-s", type=float, default=600.0, help="ts ahead of now (0 = no limit)"
    )
    lim.add_argument(
        "--max-age-s", type=float, default=7 * 86_400.0, help="ts age limit (0 = no limit)"
    )
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics here")
    p.add_argument("--metrics-addr", default="127.0.0.1")
    p.add_argument("--stats-every-s", type=float, default=10.0, help="log a stats line")
    p.set_defaults(func=_ingest)


def _ingest(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry, start_http_server

    from ingest.collector import Collector
    from ingest.config import IngestConfig
    from ingest.metrics import IngestMetrics
    from ingest.mqtt import MqttCollector, MqttSettings
    from ingest.partition import collector_filters, parse_partition

    if args.db is not None and args.out is not None:
        raise ConfigError("give --db URL or --out FILE, not both")
    if args.out is None and args.db is None:
        from gridwatch.config import load_settings

        args.db = load_settings(args.config).storage.url
    registry = Registry.load(args.registry)
    partition = parse_partition(args.partition) if args.partition else None
    grids = [g.strip() for g in args.grids.split(",") if g.strip()] if args.grids else None
    cfg = IngestConfig(
        root=args.root,
        max_payload_bytes=args.max_payload_bytes,
        max_future_s=args.max_future_s or None,
        max_age_s=args.max_age_s or None,
        flush_interval_s=args.flush_ms / 1000,
        flush_rows=args.flush_rows,
        flush_messages=args.flush_messages,
    )
    filters = collector_filters(registry, root=args.root, grids=grids, partition=partition)
    client_id = args.client_id or (
        f"gridwatch-collector-{partition[0]}of{partition[1]}"
        if partition
        else "gridwatch-collector"
    )
    password = os.environ.get(args.password_env) if args.password_env else None
    if args.password_env and password is None:
        raise ConfigError(f"--password-env {args.password_env}: variable is not set")
    settings = MqttSettings.from_url(
        args.mqtt,
        client_id=client_id,
        username=args.username,
        password=password,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        tls_insecure=args.tls_insecure or None,
        protocol=args.protocol,
        session_expiry_s=args.session_expiry_s,
        receive_maximum=args.receive_maximum,
        keepalive_s=args.keepalive_s,
    )
    if cfg.flush_messages * 2 > settings.receive_maximum and settings.protocol == "5":
        raise ConfigError(
            f"--flush-messages {cfg.flush_messages} must be at most half of "
            f"--receive-maximum {settings.receive_maximum}: a flush's messages stay "
            "unacknowledged until it is stored"
        )
    if settings.protocol == "3.1.1":
        log.warning(
            "MQTT 3.1.1: the broker's max_inflight_messages must be at least twice "
            "--flush-messages, or the collector waits for acknowledgements it holds back",
            extra={"flush_messages": cfg.flush_messages},
        )

    prom = CollectorRegistry(auto_describe=True)
    metrics = IngestMetrics(prom)
    closers: list[Any] = []
    sinks, dead_sink, last_ts = _open_stores(args, registry, closers)
    collector = Collector(
        registry,
        sinks=sinks,
        dead_letters=dead_sink,
        config=cfg,
        metrics=metrics,
        last_ts_ms=last_ts,
    )
    front = MqttCollector(collector, settings, filters)
    server = None
    if args.metrics_port:
        server, _thread = start_http_server(
            args.metrics_port, addr=args.metrics_addr, registry=prom
        )

    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    log.info(
        "collector starting",
        extra={
            "client_id": client_id,
            "broker": f"{settings.host}:{settings.port}",
            "filters": len(filters),
            "partition": args.partition,
            "devices": len(registry),
        },
    )
    front.start()
    try:
        last = (time.monotonic(), 0, 0)
        while not stop.wait(args.stats_every_s):
            now = time.monotonic()
            dt = max(now - last[0], 1e-9)
            log.info(
                "ingest stats",
                extra={
                    "messages_per_s": round((collector.messages - last[1]) / dt, 1),
                    "readings_per_s": round((collector.accepted - last[2]) / dt, 1),
                    "rejected": dict(collector.rejected),
                    "unacked": front.unacked,
                    "connected": front.connected,
                    "queue_depth": collector.dispatcher.depth,
                },
            )
            last = (now, collector.messages, collector.accepted)
    finally:
        front.stop()
        collector.close()
        for closer in reversed(closers):
            closer()
        if server is not None:
            server.shutdown()
        for s, h in old.items():
            signal.signal(s, h)
    return 0


def _open_stores(
    args: argparse.Namespace, registry: Registry, closers: list[Any]
) -> tuple[list[Any], Any, Any]:
    from ingest.sinks import DeadLetterLog, ReadingLog

    fsync = not args.no_fsync
    if args.out is not None:
        log_sink = ReadingLog(args.out, registry, fsync=fsync)
        closers.append(log_sink.close)
        dl_path = args.dead_letters or args.out.with_name(args.out.name + ".deadletters.jsonl")
        dead = DeadLetterLog(dl_path, fsync=fsync)
        closers.append(dead.close)
        return [log_sink], dead, log_sink.last_ts_ms(len(registry))
    from storage import open_storage
    from storage.writer import DEFAULT_SPILL_DIR, ReadingWriter

    store = open_storage(args.db)
    closers.append(store.close)
    store.migrate()
    keys = store.save_registry(registry)
    writer = ReadingWriter(store, keys, spill_dir=args.spill_dir or DEFAULT_SPILL_DIR).start()
    closers.append(writer.stop)
    dead_sink: Any = store
    if args.dead_letters is not None:
        dead_sink = DeadLetterLog(args.dead_letters, fsync=fsync)
        closers.append(dead_sink.close)
    return [_WriterSink(writer)], dead_sink, None


class _WriterSink:
    """``storage.ReadingWriter`` as a durable batch sink: ``sync`` waits until the rows are
    committed or spilled to fsynced files, so a flush is acknowledged only once they are
    durable, and acknowledgements go on while the database is down."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def write(self, batch: Any) -> None:
        self.writer.submit(batch)

    def sync(self) -> None:
        while not self.writer.sync(timeout=5.0):
            log.warning("waiting for the reading writer before acknowledging")


# -- gridwatch broker-auth -------------------------------------------------------------


def _register_broker_auth(sub: Any) -> None:
    p = sub.add_parser(
        "broker-auth",
        help="write Mosquitto password + ACL files from the registry",
        description=(
            "One credential per device (or per grid gateway) that may publish only its own "
            "topics, and a pipeline account that reads all telemetry and writes the alert "
            "topics. Passwords are kept across runs (credentials.csv). See docs/scaling.md "
            "for EMQX."
        ),
    )
    p.add_argument("--registry", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--root", default=contract.DEFAULT_ROOT)
    p.add_argument("--per", choices=("device", "grid"), default="device")
    p.add_argument(
        "--acl",
        choices=("exact", "pattern"),
        default="exact",
        help="exact: per-user topics; pattern: one %%u line (large fleets)",
    )
    p.add_argument("--collector-user", default="gridwatch-collector")
    p.add_argument(
        "--publisher-user", help="also an account that may publish all telemetry (simulator)"
    )
    p.add_argument(
        "--hasher",
        choices=("auto", "mosquitto_passwd", "hashlib"),
        default="auto",
        help="auto: mosquitto_passwd when installed",
    )
    p.set_defaults(func=_broker_auth)


def _broker_auth(args: argparse.Namespace) -> int:
    from ingest.brokerauth import broker_auth

    registry = Registry.load(args.registry)
    files = broker_auth(
        registry,
        args.out,
        root=args.root,
        per=args.per,
        acl=args.acl,
        collector_user=args.collector_user,
        publisher_user=args.publisher_user,
        use_mosquitto_passwd={"auto": None, "mosquitto_passwd": True, "hashlib": False}[
            args.hasher
        ],
        source=str(args.registry),
    )
    print(f"wrote {files.users} accounts to {args.out}/")
    print(f"  {files.passwd.name}  {files.acl.name}  {files.credentials.name} (mode 0600)")
    print(f"  add to mosquitto.conf: include the lines of {files.conf}")
    return 0


# -- gridwatch deadletters ---------------------------------------------------------------


def _register_deadletters(sub: Any) -> None:
    p = sub.add_parser("deadletters", help="list refused input: counts by reason, latest records")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--db", help="storage URL (default: storage.url of the configuration)")
    src.add_argument("--file", type=Path, help="dead-letter log written by gridwatch ingest --out")
    p.add_argument("--config", type=Path, help="TOML configuration file (for --db)")
    p.add_argument("--reason", help="only this reason")
    p.add_argument("--since-s", type=float, help="only the last N seconds")
    p.add_argument("--show", type=int, default=10, help="latest records to print (0 = none)")
    p.set_defaults(func=_deadletters)


def _deadletters(args: argparse.Namespace) -> int:
    since_ms = None
    if args.since_s is not None:
        since_ms = time.time_ns() // 1_000_000 - round(args.since_s * 1000)
    if args.file is not None:
        from ingest.sinks import read_dead_letter_log

        letters = [
            d
            for d in read_dead_letter_log(args.file)
            if (args.reason is None or d.reason == args.reason)
            and (since_ms is None or d.received_ms >= since_ms)
        ]
        records: Counter[str] = Counter(d.reason for d in letters)
        rows: Counter[str] = Counter()
        for d in letters:
            rows[d.reason] += d.rows
        counts = {r: (records[r], rows[r]) for r, _ in records.most_common()}
        latest = sorted(letters, key=lambda d: d.received_ms, reverse=True)[: args.show]
    else:
        from gridwatch.config import load_settings
        from storage import open_storage

        url = args.db or load_settings(args.config).storage.url
        with open_storage(url) as store:
            counts = store.dead_letter_counts(since_ms=since_ms)
            if args.reason is not None:
                counts = {k: v for k, v in counts.items() if k == args.reason}
            latest = (
                store.dead_letters(reason=args.reason, since_ms=since_ms, limit=args.show)
                if args.show
                else []
            )
    _print_dead_letters(counts, latest)
    return 0


def _print_dead_letters(counts: dict[str, tuple[int, int]], latest: list[DeadLetter]) -> None:
    if not counts:
        print("no dead letters")
        return
    width = max(len(r) for r in counts)
    print(f"{'reason':<{width}}  {'records':>9}  {'rows':>9}")
    for reason, (n_records, n_rows) in counts.items():
        print(f"{reason:<{width}}  {n_records:>9}  {n_rows:>9}")
    print(
        f"{'total':<{width}}  {sum(c for c, _ in counts.values()):>9}  "
        f"{sum(n for _, n in counts.values()):>9}"
    )
    if latest:
        print("\nlatest:")
    for d in latest:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(d.received_ms / 1000))
        print(f"{when}Z  {d.reason}  rows={d.rows}  {d.topic}")
        if d.detail:
            print(f"    {d.detail}")
        print(f"    payload: {d.excerpt_text()[:160]!r}")
