"""A Mosquitto of one's own, for tests and benchmarks that stop, restart or lock a broker.

It runs the shipped ``deploy/mosquitto.conf`` on a free loopback port; only the port,
the persistence directory, the log destination and the user change (and, for a broker
locked down by ``gridwatch broker-auth``, its ``allow_anonymous`` line becomes the
generated auth config). So what the tests and ``bench/e2e.py`` exercise is the broker
configuration a deployment gets, never the machine's shared broker.
"""

from __future__ import annotations

import getpass
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

DEPLOY_CONF = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto.conf"


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


def render_conf(
    port: int, data_dir: Path, extra: Sequence[str] = (), auth_conf: Path | None = None
) -> str:
    """``deploy/mosquitto.conf`` with this broker's port, directory, user (and auth)."""
    out = []
    for line in DEPLOY_CONF.read_text().splitlines():
        key = line.split(" ", 1)[0]
        if key == "listener":
            line = f"listener {port} 127.0.0.1"
        elif key == "persistence_location":
            line = f"persistence_location {data_dir}/"
        elif key == "log_dest":
            line = f"log_dest file {data_dir / 'mosquitto.log'}"
        elif key == "allow_anonymous" and auth_conf is not None:
            line = auth_conf.read_text()
        out.append(line)
    out.append(f"user {getpass.getuser()}")
    out += list(extra)
    return "\n".join(out) + "\n"


class OwnBroker:
    """A Mosquitto process: start, stop (SIGTERM saves its sessions), kill -9, restart."""

    def __init__(
        self, data_dir: Path, *, extra: Sequence[str] = (), auth_conf: Path | None = None
    ) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.conf = data_dir / "mosquitto.conf"
        self.conf.write_text(render_conf(self.port, data_dir, extra, auth_conf))
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
                raise RuntimeError(f"mosquitto exited: {err}\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mosquitto did not listen on {self.port}\n{self.log()}")
            time.sleep(0.05)
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM: Mosquitto saves its persistence file and exits (killed after ``timeout_s``)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.data_dir / "mosquitto.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""
