"""The ``mosquitto_pub`` examples of docs/protocol.md work and decode as documented.

Each example is taken from the document as written, its topic moved under the test's
own root (``gw/v1/`` -> ``{mqtt_root}/v1/``), sent with the real ``mosquitto_pub`` to the
real Mosquitto, received by a plain paho subscriber and decoded with the contract.
"""

from __future__ import annotations

import math
import re
import shlex
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gridwatch import contract
from gridwatch.domain import FIELDS, DeviceKind

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
NOW_MS = 1_790_000_000_000

pytestmark = pytest.mark.mqtt


def examples() -> list[list[str]]:
    """Every ``mosquitto_pub`` command in the document's ``sh`` blocks, as argv lists."""
    text = DOC.read_text(encoding="utf-8")
    commands: list[list[str]] = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        tokens = shlex.split(block.replace("\\\n", " "), comments=True)
        for tok in tokens:
            if tok == "mosquitto_pub":
                commands.append([tok])
            elif commands:
                commands[-1].append(tok)
    return commands


def _arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _expected_rows(
    kind: DeviceKind, topic_device: str | None, payload: Any
) -> list[dict[str, Any]]:
    """What the document says the payload means: one dict per reading."""
    names = [f.name for f in FIELDS[kind]]
    if isinstance(payload, dict) and "device" in payload:  # columnar JSON batch
        n = len(payload["device"])
        ts = payload["ts"] if isinstance(payload["ts"], list) else [payload["ts"]] * n
        return [
            {
                "device": payload["device"][i],
                "ts": ts[i],
                **{k: payload["values"].get(k, [None] * n)[i] for k in names},
            }
            for i in range(n)
        ]
    items = payload if isinstance(payload, list) else [payload]
    rows = []
    for item in items:
        if "values" in item:
            ts, values = item.get("ts", NOW_MS), item["values"]
        else:  # flat values, stamped on arrival unless they carry a ts
            ts, values = item.get("ts", NOW_MS), item
        rows.append({"device": topic_device, "ts": ts, **{k: values.get(k) for k in names}})
    return rows


def _num(v: Any) -> float:
    if v is None:
        return math.nan
    return float(v)


def test_the_document_has_an_example_of_every_payload_shape() -> None:
    found = examples()
    assert len(found) >= 4
    payloads = [orjson.loads(_arg(a, "-m")) for a in found]
    assert any(isinstance(p, list) for p in payloads)
    assert any(isinstance(p, dict) and "values" in p and "device" not in p for p in payloads)
    assert any(isinstance(p, dict) and "values" not in p for p in payloads)
    assert any(isinstance(p, dict) and "device" in p for p in payloads)
    assert {contract.parse_topic(_arg(a, "-t")).kind for a in found} == set(DeviceKind)


def test_examples_sent_with_mosquitto_pub_decode_as_documented(
    mqtt_broker: tuple[str, int], mqtt_root: str
) -> None:
    exe = shutil.which("mosquitto_pub")
    assert exe, "mosquitto_pub is not installed (apt-get install mosquitto-clients)"
    host, port = mqtt_broker
    received: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            received.append((msg.topic, bytes(msg.payload)))

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"doc-{uuid.uuid4().hex[:8]}")
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_connect = lambda c, *a: c.subscribe(f"{mqtt_root}/v1/#", qos=1)
    sub.connect(host, port)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        sent = []
        for argv in examples():
            argv = [exe if a == "mosquitto_pub" else a for a in argv]
            t = argv.index("-t") + 1
            assert argv[t].startswith("gw/v1/"), argv[t]
            argv[t] = f"{mqtt_root}/v1/" + argv[t][len("gw/v1/") :]
            h = argv.index("-h") + 1
            argv[h] = host
            argv += ["-p", str(port)]
            subprocess.run(argv, check=True, timeout=20, capture_output=True)
            sent.append((argv[t], _arg(argv, "-m")))
        deadline = time.monotonic() + 10
        while len(received) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert len(received) == len(sent)

    for (topic, text), (got_topic, payload) in zip(sent, received, strict=True):
        assert got_topic == topic
        assert payload == text.encode()
        info = contract.parse_topic(topic, root=mqtt_root)
        wire = contract.decode(info, payload, now_ms=NOW_MS)
        assert not wire.row_error.any(), f"{topic}: rows rejected {wire.row_error}"
        rows = _expected_rows(info.kind, info.device, orjson.loads(text))
        assert len(wire) == len(rows)
        ids = [d.decode() if isinstance(d, bytes) else d for d in wire.device_ids.tolist()]
        for i, row in enumerate(rows):
            assert ids[i] == row["device"]
            assert int(wire.ts_ms[i]) == row["ts"]
            for spec in FIELDS[info.kind]:
                want, got = _num(row[spec.name]), float(wire.fields[spec.name][i])
                assert got == want or (math.isnan(want) and math.isnan(got)), (
                    f"{topic} row {i} {spec.name}: documented {want}, decoded {got}"
                )
