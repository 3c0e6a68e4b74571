"""Acceptance against the machine's Mosquitto (127.0.0.1:1883), isolated by ``mqtt_root``."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from ingest_testkit import Publisher, assert_same_readings, expected_readings, wait_until

from gridwatch import contract
from gridwatch.domain import FIELDS, DeviceKind
from gridwatch.registry import Registry
from sim.engine import FleetSim, SimSpec
from sim.publish import MqttPublisher, PayloadFormat
from sim.replay import Replay, ReplaySpec

pytestmark = pytest.mark.mqtt


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _fleet_messages(reg: Registry, root: str, fmt: str, now: int) -> list[tuple[str, bytes]]:
    """Three readings of every device, cut into contract messages of ``fmt``."""
    rng = np.random.default_rng(11)
    out: list[tuple[str, bytes]] = []
    for kind in DeviceKind:
        devs = reg.devices_of_kind(kind)
        for step in range(3):
            cols: dict[str, Any] = {}
            for spec in FIELDS[kind]:
                if spec.dtype == "int64":
                    cols[spec.name] = rng.integers(0, 1000, devs.size)
                else:
                    v = rng.uniform(spec.lo, spec.hi, devs.size).astype(np.float32)
                    if not spec.required:
                        v[rng.random(devs.size) < 0.3] = np.nan
                    cols[spec.name] = v
            ts = np.full(devs.size, now - 60_000 + step * 1000, dtype=np.int64)
            if fmt == "device":
                for j, d in enumerate(devs.tolist()):
                    topic = contract.telemetry_topic(
                        reg.grid_of(d), kind, str(reg.device_ids[d]), root=root
                    )
                    out.append(
                        (
                            topic,
                            contract.encode_device_json(
                                ts[j : j + 1], {k: v[j : j + 1] for k, v in cols.items()}
                            ),
                        )
                    )
                continue
            encode = contract.encode_binary if fmt == "binary" else contract.encode_json_batch
            grid = reg.device_grid[devs]
            for g in np.unique(grid).tolist():
                sel = np.flatnonzero(grid == g)
                for a in range(0, sel.size, 200):
                    rows = sel[a : a + 200]
                    payload = encode(
                        kind,
                        reg.device_ids[devs[rows]],
                        ts[rows],
                        {k: v[rows] for k, v in cols.items()},
                    )
                    out.append(
                        (contract.batch_topic(str(reg.grid_ids[g]), kind, root=root), payload)
                    )
    return out


@pytest.mark.parametrize("case", ["binary/5", "json/5", "device/5", "binary/3.1.1"])
def test_fleet_replay_through_mosquitto_arrives_as_published(
    small_registry: Registry,
    mqtt_broker: tuple[str, int],
    mqtt_root: str,
    live_collector: Callable[..., Any],
    case: str,
) -> None:
    """MQTT 3.1.1 runs the collector's own PUBLISH framing (``_BufferedClient``). The
    machine's broker keeps a 3.1.1 subscriber to its default window of 20 messages in
    flight (and drops QoS 1 beyond 1,000 queued, so no 6,000-message device case here;
    ``test_durability`` runs 3.1.1 on ``deploy/mosquitto.conf``): that collector flushes
    every 10 messages instead of waiting 50 ms."""
    fmt, protocol = case.split("/")
    reg = small_registry
    small_flushes = {"flush_messages": 10} if protocol == "3.1.1" else {}
    front, sink, dead = live_collector(protocol=protocol, **small_flushes)
    messages = _fleet_messages(reg, mqtt_root, fmt, _now_ms())
    pub = Publisher(mqtt_broker[1])
    try:
        pub.publish_all(messages, timeout=60)
    finally:
        pub.close()
    total = 3 * len(reg)
    wait_until(lambda: sink.rows() >= total, 60, f"{total} readings")
    wait_until(lambda: front.acked == len(messages), 20, "every message acknowledged")
    expected = expected_readings(reg, messages, mqtt_root)
    for kind in DeviceKind:
        assert_same_readings(sink.of_kind(kind), expected[kind])
    assert dead.letters == []
    assert front.collector.messages == len(messages)
    assert front.unacked == 0


@pytest.mark.parametrize("fmt", [PayloadFormat.BINARY, PayloadFormat.DEVICE])
def test_sim_replay_over_mqtt_arrives_as_published(
    small_registry: Registry,
    mqtt_broker: tuple[str, int],
    mqtt_root: str,
    live_collector: Callable[..., Any],
    fmt: PayloadFormat,
) -> None:
    reg = small_registry
    front, sink, dead = live_collector()
    host, port = mqtt_broker
    sent: list[tuple[str, bytes]] = []
    sim = FleetSim(reg, SimSpec(start_ms=_now_ms() - 120_000, seed=9))
    with MqttPublisher(f"mqtt://{host}:{port}", qos=1) as publisher:

        def tee(topic: str, payload: bytes) -> None:
            sent.append((topic, payload))
            publisher(topic, payload)

        spec = ReplaySpec(
            speed=None,
            duration_s=60 if fmt is PayloadFormat.DEVICE else 120,
            fmt=fmt,
            root=mqtt_root,
        )
        stats = Replay(sim, tee, spec).run()
        assert publisher.flush(60)
    wait_until(lambda: front.acked >= len(sent), 60, "every sim message acknowledged")
    expected = expected_readings(reg, sent, mqtt_root)
    assert sum(len(b) for b in expected.values()) == stats.total_readings > 500
    for kind in DeviceKind:
        assert_same_readings(sink.of_kind(kind), expected[kind])
    assert dead.letters == []


# -- bad input ----------------------------------------------------------------------


class Cases:
    """Builds the bad messages, each with the reason it must be dead-lettered for."""

    def __init__(self, reg: Registry, root: str, now: int) -> None:
        self.reg, self.root, self.now = reg, root, now
        grid0 = str(reg.grid_ids[0])
        self.grid0 = grid0
        self.grid1 = str(reg.grid_ids[1])
        in0 = reg.devices_in_grids([grid0])
        in1 = reg.devices_in_grids([self.grid1])
        self.sw = [str(reg.device_ids[i]) for i in in0 if reg.kind[i] == DeviceKind.SEWAGE.code]
        self.sw1 = [str(reg.device_ids[i]) for i in in1 if reg.kind[i] == DeviceKind.SEWAGE.code]
        self.el = [str(reg.device_ids[i]) for i in in0 if reg.kind[i] == DeviceKind.ELEVATOR.code]
        self.hf = [str(reg.device_ids[i]) for i in in0 if reg.kind[i] == DeviceKind.HIGHFALL.code]
        self.cases: list[dict[str, Any]] = []
        self.good_rows: list[tuple[str, int]] = []  # (device, ts) that must be accepted
        self.t = now

    def ts(self) -> int:
        self.t += 1
        return self.t

    def topic(self, device: str, kind: str = "sewage", grid: str | None = None) -> str:
        return f"{self.root}/v1/{grid or self.grid0}/{kind}/{device}/telemetry"

    def batch(self, kind: str = "sewage", grid: str | None = None) -> str:
        return f"{self.root}/v1/{grid or self.grid0}/{kind}/batch"

    def add(
        self,
        name: str,
        reason: str,
        topic: str,
        payload: bytes,
        via: str,
        *,
        good: Sequence[tuple[str, int]] = (),
    ) -> None:
        self.cases.append(
            {"name": name, "reason": reason, "topic": topic, "payload": payload, "via": via}
        )
        self.good_rows += list(good)

    def sewage(self, device: str, ts: Any, **values: Any) -> bytes:
        vals = {"level_m": 1.0, "tilt_deg": 0.5, **values}
        return orjson.dumps({"ts": ts, "values": {k: v for k, v in vals.items() if v != "DROP"}})

    def build(self) -> list[dict[str, Any]]:
        s, el, hf = self.sw, self.el[0], self.hf[0]
        enc_b, enc_j = contract.encode_binary, contract.encode_json_batch
        sew = DeviceKind.SEWAGE
        # message-level
        self.add("not utf-8", "not_utf8", self.topic(s[0]), b"\xff\xfe\xfd level", "paho")
        self.add("truncated json", "not_json", self.topic(s[0]), b'{"ts": 1,', "cli")
        self.add(
            "NaN literal",
            "not_json",
            self.topic(s[0]),
            b'{"values": {"level_m": NaN, "tilt_deg": 1}}',
            "cli",
        )
        self.add("bare number", "bad_shape", self.topic(s[0]), b"42", "cli")
        self.add("empty list", "bad_shape", self.topic(s[0]), b"[]", "cli")
        self.add(
            "batch without values",
            "bad_shape",
            self.batch(),
            b'{"ts": [1], "device": ["x"]}',
            "cli",
        )
        self.add(
            "batch device not a list",
            "bad_shape",
            self.batch(),
            b'{"ts": 1, "device": "sw1", "values": {}}',
            "cli",
        )
        good_bin = enc_b(sew, [s[1]], [self.now], {"level_m": [1.0], "tilt_deg": [1.0]})
        self.add(
            "binary garbage header",
            "bad_binary",
            self.batch(),
            b"GWB1\x05\x00\x00\x00{oops",
            "paho",
        )
        self.add("binary truncated", "bad_binary", self.batch(), good_bin[:-12], "paho")
        self.add(
            "binary bad dtype",
            "bad_binary",
            self.batch(),
            good_bin.replace(b'"<f4"', b'"<U4"', 1),
            "paho",
        )
        self.add(
            "binary says elevator",
            "wrong_kind",
            self.batch(),
            enc_b(
                DeviceKind.ELEVATOR,
                [el],
                [self.now],
                {f.name: [0.0] for f in FIELDS[DeviceKind.ELEVATOR]},
            ),
            "paho",
        )
        self.add(
            "unknown kind in topic",
            "bad_topic",
            f"{self.root}/v1/{self.grid0}/toaster/{s[0]}/telemetry",
            self.sewage(s[0], self.ts()),
            "cli",
        )
        self.add(
            "empty device level",
            "bad_topic",
            f"{self.root}/v1/{self.grid0}/sewage//telemetry",
            self.sewage(s[0], self.ts()),
            "cli",
        )
        self.add(
            "oversize",
            "oversize",
            self.topic(s[0]),
            b'{"pad": "' + b"x" * (1 << 20) + b'"}',
            "paho",
        )
        # registry
        self.add(
            "unknown device",
            "unknown_device",
            self.topic("zz999999"),
            self.sewage("zz999999", self.ts()),
            "cli",
        )
        t1, t2 = self.ts(), self.ts()
        self.add(
            "unknown device row in a batch",
            "unknown_device",
            self.batch(),
            enc_j(sew, ["zz999999", s[2]], [t1, t2], {"level_m": [1, 2], "tilt_deg": [0, 0]}),
            "paho",
            good=[(s[2], t2)],
        )
        self.add(
            "device on another grid's topic",
            "wrong_grid",
            self.topic(s[3], grid=self.grid1),
            self.sewage(s[3], self.ts()),
            "cli",
        )
        t1, t2 = self.ts(), self.ts()
        self.add(
            "batch row of another grid",
            "wrong_grid",
            self.batch(grid=self.grid1),
            enc_b(
                sew, [s[3], self.sw1[0]], [t1, t2], {"level_m": [1.0, 1.0], "tilt_deg": [0.0, 0.0]}
            ),
            "paho",
            good=[(self.sw1[0], t2)],
        )
        elevator_values = {
            "position_m": 1,
            "speed_mps": 0,
            "vibration_mps2": 0.1,
            "door_open": 0,
            "occupancy": 0,
        }
        self.add(
            "sewage device as an elevator",
            "wrong_kind",
            self.topic(s[4], "elevator"),
            orjson.dumps({"ts": self.ts(), "values": elevator_values}),
            "cli",
        )
        t1, t2 = self.ts(), self.ts()
        self.add(
            "elevator row in a sewage batch",
            "wrong_kind",
            self.batch(),
            enc_j(sew, [el, s[5]], [t1, t2], {"level_m": [1, 1], "tilt_deg": [0, 0]}),
            "paho",
            good=[(s[5], t2)],
        )
        # fields
        self.add(
            "required field absent",
            "missing_field",
            self.topic(s[0]),
            self.sewage(s[0], self.ts(), level_m="DROP"),
            "cli",
        )
        self.add(
            "required field null",
            "missing_field",
            self.topic(s[0]),
            self.sewage(s[0], self.ts(), level_m=None),
            "cli",
        )
        self.add(
            "values not an object",
            "missing_field",
            self.topic(s[0]),
            orjson.dumps({"ts": self.ts(), "values": 5}),
            "cli",
        )
        t1 = self.ts()
        self.add(
            "list item not an object",
            "missing_field",
            self.topic(s[6]),
            orjson.dumps([{"ts": t1, "values": {"level_m": 1, "tilt_deg": 1}}, 7]),
            "paho",
            good=[(s[6], t1)],
        )
        self.add(
            "binary without a required column",
            "missing_field",
            self.batch(),
            enc_b(sew, [s[7]], [self.ts()], {"level_m": [1.0]}),
            "paho",
        )
        self.add(
            "string value",
            "non_numeric",
            self.topic(s[0]),
            self.sewage(s[0], self.ts(), level_m="1.2"),
            "cli",
        )
        self.add(
            "object value",
            "non_numeric",
            self.topic(s[0]),
            self.sewage(s[0], self.ts(), tilt_deg={"a": 1}),
            "cli",
        )
        self.add(
            "batch column not a list",
            "non_numeric",
            self.batch(),
            orjson.dumps(
                {"ts": [self.ts()], "device": [s[8]], "values": {"level_m": 5, "tilt_deg": [0]}}
            ),
            "paho",
        )
        t1, t2 = self.ts(), self.ts()
        self.add(
            "string inside a batch column",
            "non_numeric",
            self.batch(),
            orjson.dumps(
                {
                    "ts": [t1, t2],
                    "device": [s[8], s[9]],
                    "values": {"level_m": ["high", 2], "tilt_deg": [0, 0]},
                }
            ),
            "paho",
            good=[(s[9], t2)],
        )
        self.add(
            "binary NaN in a required field",
            "not_finite",
            self.batch(),
            enc_b(sew, [s[10]], [self.ts()], {"level_m": [np.nan], "tilt_deg": [1.0]}),
            "paho",
        )
        self.add(
            "binary +Inf in an optional field",
            "not_finite",
            self.batch(),
            enc_b(
                sew,
                [s[10]],
                [self.ts()],
                {"level_m": [1.0], "tilt_deg": [1.0], "rain_mmph": [np.inf]},
            ),
            "paho",
        )
        self.add(
            "level above range",
            "out_of_range",
            self.topic(s[0]),
            self.sewage(s[0], self.ts(), level_m=31),
            "cli",
        )
        self.add(
            "tilt below range",
            "out_of_range",
            self.topic(s[0]),
            self.sewage(s[0], self.ts(), tilt_deg=-1),
            "cli",
        )
        self.add(
            "optional rain above range",
            "out_of_range",
            self.topic(s[0]),
            self.sewage(s[0], self.ts(), rain_mmph=501),
            "cli",
        )
        self.add(
            "negative track id",
            "out_of_range",
            self.topic(hf, "highfall"),
            orjson.dumps({"ts": self.ts(), "values": {"track_id": -1}}),
            "cli",
        )
        self.add(
            "fractional track id",
            "not_integer",
            self.topic(hf, "highfall"),
            orjson.dumps({"ts": self.ts(), "values": {"track_id": 1.5}}),
            "cli",
        )
        # time
        self.add("ts a string", "bad_ts", self.topic(s[0]), self.sewage(s[0], "yesterday"), "cli")
        self.add("ts a boolean", "bad_ts", self.topic(s[0]), self.sewage(s[0], True), "cli")
        self.add("ts in microseconds", "bad_ts", self.topic(s[0]), self.sewage(s[0], 10**16), "cli")
        self.add(
            "batch ts scalar out of range",
            "bad_ts",
            self.batch(),
            orjson.dumps(
                {"ts": 10**16, "device": [s[11]], "values": {"level_m": [1], "tilt_deg": [1]}}
            ),
            "paho",
        )
        self.add(
            "ts an hour ahead",
            "ts_future",
            self.topic(s[0]),
            self.sewage(s[0], self.now + 3_600_000),
            "cli",
        )
        self.add(
            "ts a month old",
            "ts_too_old",
            self.topic(s[0]),
            self.sewage(s[0], self.now - 30 * 86_400_000),
            "cli",
        )
        t1 = self.ts()
        again = self.sewage(s[12], t1, level_m=2.5)
        self.add(
            "first of a redelivered pair", "", self.topic(s[12]), again, "paho", good=[(s[12], t1)]
        )
        self.add("exact redelivery", "duplicate", self.topic(s[12]), again, "paho")
        self.add(  # valid late data (e.g. a redelivery overtaken by newer readings): kept
            "late but new",
            "",
            self.topic(s[12]),
            self.sewage(s[12], t1 - 5),
            "cli",
            good=[(s[12], t1 - 5)],
        )
        self.add(
            "device id not a string",
            "bad_device_id",
            self.batch(),
            orjson.dumps(
                {"ts": [self.ts()], "device": [12345], "values": {"level_m": [1], "tilt_deg": [1]}}
            ),
            "paho",
        )
        return self.cases


def _mosquitto_pub(host: str, port: int, topic: str, payload: bytes, tmp: Path) -> None:
    path = tmp / "payload.bin"
    path.write_bytes(payload)
    subprocess.run(
        ["mosquitto_pub", "-h", host, "-p", str(port), "-q", "1", "-t", topic, "-f", str(path)],
        check=True,
        timeout=20,
        capture_output=True,
    )


def test_bad_input_is_dead_lettered_with_its_reason_and_good_input_kept(
    small_registry: Registry,
    mqtt_broker: tuple[str, int],
    mqtt_root: str,
    live_collector: Callable[..., Any],
    tmp_path: Path,
) -> None:
    reg = small_registry
    host, port = mqtt_broker
    front, sink, dead = live_collector()
    now = _now_ms()
    builder = Cases(reg, mqtt_root, now)
    cases = builder.build()
    bad = [c for c in cases if c["reason"]]
    assert len({c["name"] for c in bad}) >= 30
    assert {c["via"] for c in bad} == {"cli", "paho"}
    good_devices = [
        str(reg.device_ids[i]) for i in reg.devices_of_kind(DeviceKind.SEWAGE)[-len(cases) :]
    ]
    pub = Publisher(port)
    try:
        for case, good_dev in zip(cases, good_devices, strict=True):
            if case["via"] == "cli":
                _mosquitto_pub(host, port, case["topic"], case["payload"], tmp_path)
            else:
                pub.publish_all([(case["topic"], case["payload"])])
            t = builder.ts()
            # a good message right after every bad one, from the other publisher
            good_topic = contract.telemetry_topic(
                reg.grid_of(reg.index(good_dev)), "sewage", good_dev, root=mqtt_root
            )
            pub.publish_all([(good_topic, builder.sewage(good_dev, t))])
            builder.good_rows.append((good_dev, t))
    finally:
        pub.close()

    wait_until(lambda: len(dead.snapshot()) >= len(bad), 30, "every dead letter")
    wait_until(lambda: sink.rows() >= len(builder.good_rows), 30, "every good reading")
    wait_until(lambda: front.unacked == 0, 10, "every message acknowledged")
    letters = dead.snapshot()
    problems = []
    for case in bad:
        match = [
            d for d in letters if d.topic == case["topic"] and d.excerpt == case["payload"][:512]
        ]
        if [d.reason for d in match] != [case["reason"]]:
            problems.append(
                f"{case['name']}: expected {case['reason']}, got {[d.reason for d in match]}"
            )
    assert not problems, "\n".join(problems)
    assert len(letters) == len(bad)
    got = set()
    for kind in DeviceKind:
        b = sink.of_kind(kind)
        got |= {
            (str(reg.device_ids[d]), t)
            for d, t in zip(b.device.tolist(), b.ts_ms.tolist(), strict=True)
        }
    assert got == set(builder.good_rows)
    assert front.connected and front.alive  # the collector kept running
    assert front.collector.messages == 2 * len(cases)


def test_deadletters_cli_lists_counts_by_reason(tmp_path: Path) -> None:
    from gridwatch.deadletter import DeadLetter
    from ingest.sinks import DeadLetterLog

    path = tmp_path / "dl.jsonl"
    log = DeadLetterLog(path)
    log.write_dead_letters(
        [
            DeadLetter.of(
                "gw/v1/g/sewage/d/telemetry",
                "out_of_range",
                b'{"level_m": 99}',
                _now_ms(),
                rows=3,
                detail="3 of 3 rows",
            ),
            DeadLetter.of("gw/v1/g/sewage/batch", "not_json", b"\xff", _now_ms()),
            DeadLetter.of("gw/v1/g/sewage/batch", "not_json", b"{", _now_ms()),
        ]
    )
    log.close()
    with path.open("ab") as fh:
        fh.write(b'{"torn')  # a crash mid-line is skipped
    out = subprocess.run(
        [sys.executable, "-m", "gridwatch", "deadletters", "--file", str(path), "--show", "2"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["reason", "records", "rows"]
    assert lines[1].split() == ["not_json", "2", "2"]
    assert lines[2].split() == ["out_of_range", "1", "3"]
    assert lines[3].split() == ["total", "3", "5"]
    assert "latest:" in out
