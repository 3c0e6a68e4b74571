"""A Mosquitto of one's own, for tests and benchmarks that stop, restart or lock a broker.

It runs the shipped ``deploy/mosquitto.conf`` on a free loopback port; only the port,
the persistence directory, the log destination and the user change (and, for a broker
locked down by ``gridwatch broker-auth``, its ``allow_anonymous`` line becomes the
generated auth config). So what the tests and ``bench/e2e.py`` exercise is the broker
configuration a deployment gets, never the machine's shared broker. ``throwaway_pki``
makes the certificates for a TLS listener on such a broker.
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


def throwaway_pki(d: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, valid for a day (``openssl`` CLI):
    ``ca.crt`` for clients, ``srv.crt``/``srv.key`` for the broker's TLS listener."""
    d.mkdir(parents=True, exist_ok=True)
    f = {n: d / n for n in ("ca.key", "ca.crt", "srv.key", "srv.csr", "srv.crt", "san.ext")}

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(f["ca.key"]),
            "-out", str(f["ca.crt"]), "-days", "1", "-subj", "/CN=gridwatch test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(f["srv.key"]),
            "-out", str(f["srv.csr"]), "-subj", "/CN=127.0.0.1")  # fmt: skip
    f["san.ext"].write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", str(f["srv.csr"]), "-CA", str(f["ca.crt"]), "-CAkey",
            str(f["ca.key"]), "-CAcreateserial", "-out", str(f["srv.crt"]), "-days", "1",
            "-extfile", str(f["san.ext"]))  # fmt: skip
    for key in ("ca.key", "srv.key"):
        f[key].chmod(0o600)
    return f
