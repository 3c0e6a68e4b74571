"""The alert publisher logs in like the collector, on a broker locked down by broker-auth.

Each test starts its own Mosquitto (``deploy/mosquitto.conf`` with the password and ACL
files that ``gridwatch broker-auth`` writes, anonymous clients refused) and drains a real
alert outbox (the dispatcher's) into it: with the pipeline account's credentials the
alerts reach an integrator; with a wrong password or an account the ACL does not allow,
the rows stay in the outbox until a publisher with the right credentials takes them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from pydantic import SecretStr

from alerts.mqtt import AlertPublisher, AlertPublishError
from gridwatch import config
from gridwatch.batch import Detections
from gridwatch.broker import MqttSettings
from gridwatch.clock import ManualClock
from gridwatch.contract import alert_topic
from gridwatch.domain import DetectionKind as K
from gridwatch.domain import DeviceKind
from gridwatch.logs import JsonFormatter
from gridwatch.pipeline.publisher import OutboxPump
from gridwatch.pipeline.worker import Worker
from gridwatch.registry import Registry
from ingest.brokerauth import broker_auth, mosquitto_hash, plan_credentials, read_credentials
from ingest.testing import OwnBroker, throwaway_pki
from storage.engine import Storage

pytestmark = pytest.mark.mqtt

PIPELINE_USER = "gridwatch-collector"
INTEGRATOR = ("integrator", "integrator-pw")  # an account only this test adds: reads alerts
sqlite_only = pytest.mark.parametrize("storage", ["sqlite"], indirect=True)


def _wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _locked_broker(data_dir: Path, auth_dir: Path, extra: tuple[str, ...] = ()) -> OwnBroker:
    """Mosquitto with ``deploy/mosquitto.conf``, broker-auth's files and ``extra`` lines."""
    return OwnBroker(data_dir, extra=extra, auth_conf=auth_dir / "mosquitto-auth.conf").start()


@pytest.fixture
def auth_dir(tmp_path: Path, small_registry: Registry) -> Path:
    """broker-auth's files (per grid, ``sim`` publisher) plus an integrator reading alerts."""
    out = tmp_path / "auth"
    broker_auth(
        small_registry,
        out,
        root="gw",
        per="grid",
        publisher_user="sim",
        use_mosquitto_passwd=False,
    )
    user, pw = INTEGRATOR
    with (out / "passwd").open("a") as fh:
        fh.write(f"{user}:{mosquitto_hash(pw)}\n")
    with (out / "acl").open("a") as fh:
        fh.write(f"\nuser {user}\ntopic read gw/v1/+/alerts/#\n")
    return out


@pytest.fixture
def locked_broker(tmp_path: Path, auth_dir: Path) -> Iterator[OwnBroker]:
    broker = _locked_broker(tmp_path / "mosquitto", auth_dir)
    try:
        yield broker
    finally:
        broker.stop()


class Integrator:
    """An integrator's app: logs in, subscribes to every grid's alerts at QoS 1."""

    def __init__(self, port: int, **tls: Any) -> None:
        self.got: list[tuple[str, dict[str, Any]]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"integrator-{uuid.uuid4().hex[:6]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.username_pw_set(*INTEGRATOR)
        if tls:
            self.client.tls_set(**tls)
        self.client.on_message = lambda _c, _u, m: self.got.append(
            (m.topic, orjson.loads(m.payload))
        )
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe("gw/v1/+/alerts/+", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "integrator could not subscribe"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _three_alerts(make_dispatcher: Any, reg: Registry, clock: ManualClock) -> list[str]:
    """Open two red and one yellow alert; returns the topics their messages must reach."""
    d = make_dispatcher()
    el = reg.devices_of_kind(DeviceKind.ELEVATOR)[:2]
    d.handle(Detections.of(K.ENTRAPMENT, el, clock.now_ms(), 1.0, stopped_s=40.0))
    sw = reg.devices_of_kind(DeviceKind.SEWAGE)[:1]
    d.handle(Detections.of(K.STUCK, sw, clock.now_ms(), 1.0))
    return sorted(
        [alert_topic(reg.grid_of(int(e)), "red") for e in el]
        + [alert_topic(reg.grid_of(int(sw[0])), "yellow")]
    )


def _outbox(storage: Storage) -> int:
    with storage.connection(readonly=True) as conn:
        return int(conn.execute("SELECT count(*) FROM alert_outbox").fetchone()[0])


def _settings(port: int, password: str, **extra: Any) -> MqttSettings:
    return MqttSettings(
        port=port,
        client_id=f"gridwatch-alerts-{uuid.uuid4().hex[:6]}",
        username=PIPELINE_USER,
        password=SecretStr(password),
        **extra,
    )


def test_broker_auth_lets_only_the_pipeline_account_write_alerts(
    small_registry: Registry,
) -> None:
    for per in ("device", "grid"):
        creds = plan_credentials(small_registry, root="gw", per=per, publisher_user="sim")  # type: ignore[arg-type]
        writers = [c.username for c in creds if any("/alerts/" in t for t in c.write)]
        assert writers == [PIPELINE_USER]
        assert {c.username: c for c in creds}[PIPELINE_USER].write == ("gw/v1/+/alerts/#",)


def test_pump_with_the_pipeline_credentials_delivers_alerts(
    *,
    make_dispatcher: Any,
    storage: Storage,
    small_registry: Registry,
    clock: ManualClock,
    locked_broker: OwnBroker,
    auth_dir: Path,
) -> None:
    creds = read_credentials(auth_dir / "credentials.csv")
    expected = _three_alerts(make_dispatcher, small_registry, clock)
    assert _outbox(storage) == 3
    # anonymous, as the publisher connected before: refused at CONNECT, nothing sent
    anonymous = AlertPublisher(storage, "127.0.0.1", locked_broker.port, root="gw")
    with pytest.raises(AlertPublishError, match="refused"):
        anonymous.start(timeout_s=10)
    integrator = Integrator(locked_broker.port)
    pump = OutboxPump(storage, _settings(locked_broker.port, creds[PIPELINE_USER]), root="gw")
    pump.start()
    try:
        pump.wake()
        _wait_until(lambda: len(integrator.got) >= 3, 20, f"3 alerts\n{locked_broker.log()}")
        _wait_until(lambda: _outbox(storage) == 0, 10, "an empty outbox")
    finally:
        pump.stop()
        integrator.close()
    assert sorted(t for t, _ in integrator.got) == expected
    assert {p["event"] for _, p in integrator.got} == {"opened"}
    assert pump.published == 3 and pump.failures == 0


@sqlite_only
def test_the_worker_publishes_alerts_with_the_configured_account(
    *,
    make_dispatcher: Any,
    storage: Storage,
    small_registry: Registry,
    clock: ManualClock,
    locked_broker: OwnBroker,
    auth_dir: Path,
    tmp_path: Path,
) -> None:
    """``gridwatch run``'s settings (``[mqtt] username/password``) reach the publisher."""
    creds = read_credentials(auth_dir / "credentials.csv")
    expected = _three_alerts(make_dispatcher, small_registry, clock)
    settings = config.Settings(
        data_dir=tmp_path / "data",
        mqtt=config.MqttSettings(
            url=f"mqtt://127.0.0.1:{locked_broker.port}",
            username=PIPELINE_USER,
            password=SecretStr(creds[PIPELINE_USER]),
        ),
    )
    worker = Worker(settings)
    integrator = Integrator(locked_broker.port)
    try:
        with contextlib.ExitStack() as stack:
            worker._start_publisher(stack, storage)
            assert worker.publisher.settings.client_id == "gridwatch-collector-alerts"
            worker.publisher.wake()
            _wait_until(lambda: len(integrator.got) >= 3, 20, f"3 alerts\n{locked_broker.log()}")
            _wait_until(lambda: _outbox(storage) == 0, 10, "an empty outbox")
    finally:
        integrator.close()
    assert sorted(t for t, _ in integrator.got) == expected


@sqlite_only
def test_wrong_password_keeps_the_outbox_until_the_right_one_publishes_it(
    *,
    make_dispatcher: Any,
    storage: Storage,
    small_registry: Registry,
    clock: ManualClock,
    locked_broker: OwnBroker,
    auth_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    creds = read_credentials(auth_dir / "credentials.csv")
    expected = _three_alerts(make_dispatcher, small_registry, clock)
    integrator = Integrator(locked_broker.port)
    wrong = OutboxPump(
        storage, _settings(locked_broker.port, "not-the-password"), root="gw", retry_s=0.2
    )
    try:
        with caplog.at_level(logging.WARNING, logger="gridwatch.pipeline.publisher"):
            wrong.start()
            _wait_until(lambda: wrong.failures >= 2, 20, "two refused attempts")
            assert wrong._thread is not None and wrong._thread.is_alive()  # no crash: retrying
            wrong.stop()
        assert not wrong.connected and wrong.published == 0
        assert wrong.last_error is not None and "refused" in wrong.last_error
        paused = [r for r in caplog.records if r.getMessage().startswith("alert publishing paused")]
        assert paused and "refused" in paused[0].error  # type: ignore[attr-defined]
        assert _outbox(storage) == 3 and integrator.got == []  # nothing lost, nothing sent

        right = OutboxPump(storage, _settings(locked_broker.port, creds[PIPELINE_USER]), root="gw")
        right.start()
        try:
            _wait_until(lambda: len(integrator.got) >= 3, 20, "3 alerts after the fix")
            _wait_until(lambda: _outbox(storage) == 0, 10, "an empty outbox")
        finally:
            right.stop()
    finally:
        wrong.stop()
        integrator.close()
    assert sorted(t for t, _ in integrator.got) == expected


@sqlite_only
def test_an_account_the_acl_refuses_keeps_the_outbox(
    *,
    make_dispatcher: Any,
    storage: Storage,
    small_registry: Registry,
    clock: ManualClock,
    locked_broker: OwnBroker,
    auth_dir: Path,
) -> None:
    """A login that works but may not write alerts (the simulator's) loses nothing: MQTT 5's
    PUBACK says "Not authorized" and the rows stay (3.1.1 would acknowledge and drop)."""
    creds = read_credentials(auth_dir / "credentials.csv")
    _three_alerts(make_dispatcher, small_registry, clock)
    integrator = Integrator(locked_broker.port)
    sim = MqttSettings(port=locked_broker.port, username="sim", password=SecretStr(creds["sim"]))
    try:
        with AlertPublisher(storage, sim, root="gw", client_id="acl-refused") as pub:
            with pytest.raises(AlertPublishError, match=r"(?i)not authori"):
                pub.drain()
            assert pub.published == 0 and pub.refused == 1
        assert _outbox(storage) == 3
        ok = MqttSettings(
            port=locked_broker.port,
            username=PIPELINE_USER,
            password=SecretStr(creds[PIPELINE_USER]),
        )
        with AlertPublisher(storage, ok, root="gw", client_id="acl-allowed") as pub:
            assert pub.drain() == 3
        _wait_until(lambda: len(integrator.got) >= 3, 20, "3 alerts")
    finally:
        integrator.close()
    assert _outbox(storage) == 0


@sqlite_only
def test_the_password_never_appears_in_log_output(
    *,
    make_dispatcher: Any,
    storage: Storage,
    small_registry: Registry,
    clock: ManualClock,
    locked_broker: OwnBroker,
    auth_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    creds = read_credentials(auth_dir / "credentials.csv")
    right_pw, wrong_pw = creds[PIPELINE_USER], "Wr0ng-" + uuid.uuid4().hex
    _three_alerts(make_dispatcher, small_registry, clock)
    with caplog.at_level(logging.DEBUG):  # every logger, paho's included
        for pw in (wrong_pw, right_pw):
            url = f"mqtt://{PIPELINE_USER}:{pw}@127.0.0.1:{locked_broker.port}"
            pump = OutboxPump(storage, url, root="gw", client_id="log-check", retry_s=0.2)
            pump.publisher._client.enable_logger(logging.getLogger("paho.test"))
            pump.start()
            _wait_until(
                lambda p=pump: p.failures >= 1 or p.published >= 3,  # type: ignore[misc]
                20,
                "a refusal or the alerts",
            )
            pump.stop()
            text = repr(pump.settings) + str(pump.settings) + repr(pump.publisher.broker)
            assert pw not in text
    assert _outbox(storage) == 0  # the right password did publish
    formatter = JsonFormatter()
    output = "\n".join(formatter.format(r) for r in caplog.records)
    assert "alert publishing paused" in output and "alert publisher connected" in output
    assert PIPELINE_USER in output  # the account is named, so the check below means something
    assert wrong_pw not in output and right_pw not in output


@sqlite_only
def test_pump_over_tls_with_a_password(
    *,
    make_dispatcher: Any,
    storage: Storage,
    small_registry: Registry,
    clock: ManualClock,
    auth_dir: Path,
    tmp_path: Path,
) -> None:
    """``mqtts://`` + ``ca_file`` + password, as ``Worker._start_publisher`` builds them."""
    pki = throwaway_pki(tmp_path / "pki")
    broker = _locked_broker(
        tmp_path / "tls-broker",
        auth_dir,
        (f"cafile {pki['ca.crt']}", f"certfile {pki['srv.crt']}", f"keyfile {pki['srv.key']}"),
    )
    creds = read_credentials(auth_dir / "credentials.csv")
    expected = _three_alerts(make_dispatcher, small_registry, clock)
    integrator = Integrator(broker.port, ca_certs=str(pki["ca.crt"]))
    settings = MqttSettings.from_url(
        f"mqtts://127.0.0.1:{broker.port}",
        client_id="tls-alerts",
        username=PIPELINE_USER,
        password=SecretStr(creds[PIPELINE_USER]),
        ca_file=str(pki["ca.crt"]),
    )
    assert settings.tls
    untrusting = OutboxPump(
        storage, settings.model_copy(update={"ca_file": None}), root="gw", retry_s=0.2
    )
    pump = OutboxPump(storage, settings, root="gw")
    try:
        untrusting.start()  # no CA: the broker's certificate is not trusted
        _wait_until(lambda: untrusting.failures >= 1, 20, "a TLS failure")
        untrusting.stop()
        assert untrusting.published == 0 and _outbox(storage) == 3
        pump.start()
        _wait_until(lambda: len(integrator.got) >= 3, 20, f"3 alerts over TLS\n{broker.log()}")
        _wait_until(lambda: _outbox(storage) == 0, 10, "an empty outbox")
    finally:
        untrusting.stop()
        pump.stop()
        integrator.close()
        broker.stop()
    assert sorted(t for t, _ in integrator.got) == expected
