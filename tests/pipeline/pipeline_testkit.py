"""Helpers of the pipeline tests: the CLI as a child process, brokers of our own, checks.

Tests that stop or restart a broker start their OWN Mosquitto on a free loopback port
with the shipped ``deploy/mosquitto.conf`` (only the port, persistence directory, log
destination and user changed); the machine's shared services are never stopped.
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from gridwatch.batch import ReadingBatch
from gridwatch.domain import DeviceKind

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_CONF = ROOT / "deploy" / "mosquitto.conf"

ALERT_DEVICE_KIND: dict[str, DeviceKind] = {
    "trapped_passenger": DeviceKind.ELEVATOR,
    "overspeed": DeviceKind.ELEVATOR,
    "door_fault": DeviceKind.ELEVATOR,
    "elevator_fault_warning": DeviceKind.ELEVATOR,
    "vibration_rising": DeviceKind.ELEVATOR,
    "cover_displaced": DeviceKind.SEWAGE,
    "overflow_imminent": DeviceKind.SEWAGE,
    "level_high": DeviceKind.SEWAGE,
    "blockage_suspected": DeviceKind.SEWAGE,
    "falling_object": DeviceKind.HIGHFALL,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child gridwatch: no GRIDWATCH_* of the caller's, our tree first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDWATCH_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


class Gridwatch:
    """``gridwatch <args>`` as a child process with its logs in a file (JSON lines)."""

    def __init__(self, args: Sequence[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.args = list(args)
        self.cwd = cwd
        self.env = env
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Gridwatch:
        fh = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gridwatch", "--log-format", "json", *self.args],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the test runner is not sent to it
        )
        fh.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        if self.proc is None:
            raise RuntimeError("not started")
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"gridwatch {self.args[:2]} did not exit within {timeout} s\n{self.tail()}"
            ) from None

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the clean shutdown every test relies on."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                out.append({"event": line.decode(errors="replace")})
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.logs() if r.get("event") == name]

    def tail(self, n: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


@contextmanager
def running(gw: Gridwatch) -> Iterator[Gridwatch]:
    gw.start()
    try:
        yield gw
    finally:
        gw.kill()


# -- brokers of our own ------------------------------------------------------------------


def render_conf(port: int, data_dir: Path) -> str:
    out = []
    for line in DEPLOY_CONF.read_text().splitlines():
        key = line.split(" ", 1)[0]
        if key == "listener":
            line = f"listener {port} 127.0.0.1"
        elif key == "persistence_location":
            line = f"persistence_location {data_dir}/"
        elif key == "log_dest":
            line = f"log_dest file {data_dir / 'mosquitto.log'}"
        out.append(line)
    out.append(f"user {getpass.getuser()}")
    return "\n".join(out) + "\n"


class OwnBroker:
    """A Mosquitto of this test: start, stop (SIGTERM saves its sessions), restart."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.conf = data_dir / "mosquitto.conf"
        self.conf.write_text(render_conf(self.port, data_dir))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> OwnBroker:
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not listen on {self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
        self.proc = None


# -- what the database holds ---------------------------------------------------------------


def sqlite_rows(db: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # not migrated yet
    finally:
        conn.close()


def stored_keys(conn: Any, dialect: str, kind: DeviceKind) -> np.ndarray:
    """Every stored (device_id, ts_ms) of a kind as one sorted int-pair array per device id."""
    if dialect == "postgres":
        sql = (
            f"SELECT d.device_id, (extract(epoch FROM r.ts) * 1000)::bigint "
            f"FROM readings_{kind.value} r JOIN devices d ON d.device_key = r.device"
        )
    else:
        sql = (
            f"SELECT d.device_id, r.ts_ms FROM readings_{kind.value} r "
            "JOIN devices d ON d.device_key = r.device"
        )
    rows = conn.execute(sql).fetchall()
    return np.array(
        [(str(d), int(t)) for d, t in rows], dtype=[("device", "U16"), ("ts_ms", "i8")]
    )


def published_keys(batches: Sequence[ReadingBatch], registry: Any) -> np.ndarray:
    """The (device_id, ts_ms) pairs of what the simulator sent."""
    if not batches:
        return np.zeros(0, dtype=[("device", "U16"), ("ts_ms", "i8")])
    dev = np.concatenate([registry.device_ids[b.device] for b in batches])
    ts = np.concatenate([b.ts_ms for b in batches])
    out = np.zeros(dev.size, dtype=[("device", "U16"), ("ts_ms", "i8")])
    out["device"] = dev
    out["ts_ms"] = ts
    return out
