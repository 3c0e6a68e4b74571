"""``gridwatch user`` and ``gridwatch console`` from the command line (SQLite files)."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from gridwatch.cli import main
from gridwatch.registry import Registry
from storage import open_storage, users
from tests.console.conftest import GRID_A, STREET_A

ROOT = Path(__file__).resolve().parents[2]
PW = "a long enough password"


@pytest.fixture
def db(tmp_path: Path, district: Registry) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    with open_storage(url) as st:
        st.migrate()
        st.save_registry(district)
    yield url


def run(argv: list[str], monkeypatch: pytest.MonkeyPatch, stdin: str = "") -> int:
    """``gridwatch ARGV``; the root logger the CLI configures is put back afterwards."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return main(argv)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_user_add_checks_the_scope_and_hashes_the_password(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    add = ["user", "add", "zhang", "--db", db, "--password-stdin"]
    assert (
        run(
            [*add, "--role", "dispatcher", "--grids", f"{GRID_A},s01c01g02"], monkeypatch, PW + "\n"
        )
        == 0
    )
    assert "created dispatcher 'zhang' (grids s01c01g01, s01c01g02)" in capsys.readouterr().out
    with open_storage(db) as st:
        u = users.get_user(st, "zhang")
    assert u is not None and u.grids == (GRID_A, "s01c01g02") and u.role == "dispatcher"
    assert u.password_hash.startswith("scrypt$32768$8$3$") and PW not in u.password_hash
    x = ["user", "add", "x", "--db", db, "--password-stdin"]
    cases = [
        ([*add, "--role", "dispatcher", "--grids", GRID_A], "already exists"),
        ([*x, "--role", "dispatcher"], "a dispatcher needs --grids"),
        ([*x, "--role", "dispatcher", "--grids", "nowhere"], "unknown grids ['nowhere']"),
        ([*x, "--role", "supervisor", "--street", "s99"], "unknown street 's99'"),
        ([*x, "--role", "admin", "--street", STREET_A], "an admin sees every grid"),
    ]
    for argv, message in cases:
        assert run(argv, monkeypatch, PW + "\n") == 1
        assert message in capsys.readouterr().err
    assert (
        run(
            ["user", "add", "li", "--db", db, "--password-stdin", "--role", "admin"],
            monkeypatch,
            "short\n",
        )
        == 1
    )
    assert "at least 10 characters" in capsys.readouterr().err


def test_user_lifecycle(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--db", db]
    assert (
        run(
            [
                "user",
                "add",
                "li",
                *base,
                "--role",
                "supervisor",
                "--street",
                STREET_A,
                "--password-stdin",
            ],
            monkeypatch,
            PW + "\n",
        )
        == 0
    )
    assert (
        run(["user", "set", "li", *base, "--role", "dispatcher", "--grids", GRID_A], monkeypatch)
        == 0
    )
    assert run(["user", "list", *base, "--json"], monkeypatch) == 0
    out = capsys.readouterr().out
    listed = orjson.loads(out[out.index("[") :])
    assert listed == [
        {"name": "li", "role": "dispatcher", "grids": [GRID_A], "street": None, "disabled": False}
    ]
    with open_storage(db) as st:
        old = users.get_user(st, "li")
    assert (
        run(
            ["user", "passwd", "li", *base, "--password-stdin"],
            monkeypatch,
            "another good password\n",
        )
        == 0
    )
    with open_storage(db) as st:
        new = users.get_user(st, "li")
    assert old is not None and new is not None and old.password_hash != new.password_hash
    assert run(["user", "disable", "li", *base], monkeypatch) == 0
    with open_storage(db) as st:
        assert users.get_user(st, "li").disabled  # type: ignore[union-attr]
    assert run(["user", "enable", "li", *base], monkeypatch) == 0
    assert run(["user", "unlock", "li", *base], monkeypatch) == 0
    assert run(["user", "remove", "li", *base], monkeypatch) == 0
    assert run(["user", "remove", "li", *base], monkeypatch) == 1
    assert "no user 'li'" in capsys.readouterr().err


def test_console_command_serves_and_shuts_down_on_sigint(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (
        run(
            ["user", "add", "ops", "--db", db, "--role", "admin", "--password-stdin"],
            monkeypatch,
            PW + "\n",
        )
        == 0
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gridwatch",
            "--log-format",
            "json",
            "console",
            "--db",
            db,
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line + (
            proc.stderr.read() if proc.stderr else ""
        )
        url = line.strip().rsplit(" ", 1)[-1]
        with httpx.Client(base_url=url, timeout=10) as http:
            for _ in range(100):
                try:
                    if http.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    import time

                    time.sleep(0.05)
            r = http.post("/api/auth/login", json={"name": "ops", "password": PW})
            assert r.status_code == 200 and len(r.json()["grids"]) == 8
            assert http.get("/api/overview").status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130  # "interrupted", after a graceful shutdown
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    logs = proc.stderr.read() if proc.stderr else ""
    assert '"event":"signed in"' in logs and PW not in logs
    assert '"event":"live feed stopped"' in logs  # the app's shutdown ran
