"""Publishing alert changes to MQTT for integrators: ``{root}/v1/{grid}/alerts/{grade}``, QoS 1.

Messages come from the ``alert_outbox`` table, written in the same transaction as the
alert change, and a row is deleted only after the broker acknowledged its PUBLISH
(PUBACK) *with success*. A crash or a broker outage therefore delays messages but never
drops one; after a crash between PUBACK and delete a message may be sent twice (at least
once, as QoS 1 itself). Payload: the alert summary as JSON with ``event`` = opened |
upgraded | escalated | cleared.

The publisher connects like the collector (``gridwatch.broker.MqttSettings``: username and
password, TLS, protocol). A production broker (``gridwatch broker-auth``) refuses
anonymous clients and checks every PUBLISH against its ACL. MQTT 5 (the default) tells
the publisher about a refused PUBLISH in the PUBACK's reason code ("Not authorized"), so
such rows stay in the outbox; MQTT 3.1.1 acknowledges a refused PUBLISH like an accepted
one and the message would be lost, which is why 5 is the default here.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gridwatch.broker import MqttSettings, apply_login
from gridwatch.contract import DEFAULT_ROOT, alert_topic
from storage import alerts as db

log = logging.getLogger(__name__)


class AlertPublishError(ConnectionError):
    """The broker refused our connection or some of our messages (they stay in the outbox)."""


class AlertPublisher:
    """Drains the outbox into MQTT. Owns one paho client and its network thread
    (started by ``start()``, stopped by ``stop()``).

    ``broker`` is a host name (anonymous, plain TCP, port ``port``) or ``MqttSettings``
    carrying credentials and TLS settings.
    """

    def __init__(
        self,
        storage: Any,
        broker: str | MqttSettings = "127.0.0.1",
        port: int = 1883,
        *,
        root: str = DEFAULT_ROOT,
        client_id: str = "gridwatch-alerts",
        batch: int = 500,
        ack_timeout_s: float = 10.0,
    ) -> None:
        conn = MqttSettings(host=broker, port=port) if isinstance(broker, str) else broker
        self.storage = storage
        self.broker = conn
        self.host = conn.host
        self.port = conn.port
        self.root = root
        self.batch = batch
        self.ack_timeout_s = ack_timeout_s
        self.published = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._refused_mids: dict[int, str] = {}
        self._connack: Any = None
        self._connack_event = threading.Event()
        self._client = self._make_client(conn, client_id)
        self._started = False

    def _make_client(self, conn: MqttSettings, client_id: str) -> mqtt.Client:
        v5 = conn.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else False,
        )
        apply_login(client, conn)
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        return client

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._connack = reason
        self._connack_event.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _props: Any) -> None:
        # runs on paho's thread before the message's info is marked published
        if getattr(reason, "is_failure", False):
            with self._lock:
                self._refused_mids[mid] = str(reason)

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect; raises ``AlertPublishError`` (or ``OSError``) when the broker says no."""
        where = f"MQTT broker {self.host}:{self.port}"
        self._connack_event.clear()
        self._connack = None
        self._client.connect(self.host, self.port, keepalive=self.broker.keepalive_s)
        self._client.loop_start()
        deadline = time.monotonic() + timeout_s
        while not self._client.is_connected():
            reason = self._connack
            if self._connack_event.is_set() and getattr(reason, "is_failure", False):
                self.stop()
                raise AlertPublishError(
                    f"{where} refused the alert publisher ({reason}); user {self.broker.username!r}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise AlertPublishError(f"{where} did not accept the alert publisher")
            time.sleep(0.01)
        self._started = True
        log.info(
            "alert publisher connected",
            extra={"host": self.host, "port": self.port, "user": self.broker.username},
        )

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        self._started = False

    def __enter__(self) -> AlertPublisher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def drain(self) -> int:
        """Publish what the outbox holds (in order); returns messages acknowledged.

        Raises ``AlertPublishError`` when the broker refused a message (its ACL): that row
        and the rows after it stay in the outbox for the next drain.
        """
        total = 0
        while True:
            with self.storage.connection(readonly=True) as conn:
                rows = db.outbox(conn, self.storage, self.batch)
            if not rows:
                return total
            infos = []
            for rid, grid, grade, payload in rows:
                topic = alert_topic(grid, grade, root=self.root)
                infos.append((rid, topic, self._client.publish(topic, payload.encode(), qos=1)))
            done = []
            refusal: tuple[str, str] | None = None
            deadline = time.monotonic() + self.ack_timeout_s
            for rid, topic, info in infos:
                remaining = max(0.0, deadline - time.monotonic())
                try:
                    info.wait_for_publish(timeout=remaining)
                except (RuntimeError, ValueError):
                    break
                if not info.is_published():
                    break
                with self._lock:
                    reason = self._refused_mids.pop(info.mid, None)
                if reason is not None:
                    refusal = (topic, reason)
                    break
                done.append(rid)
            with self._lock:  # forget refusals of messages after the first failure
                for _rid, _topic, info in infos:
                    self._refused_mids.pop(info.mid, None)
            if done:
                with self.storage.connection() as conn:
                    db.delete_outbox(conn, self.storage, done)
            total += len(done)
            self.published += len(done)
            if refusal is not None:
                self.refused += 1
                raise AlertPublishError(
                    f"MQTT broker {self.host}:{self.port} refused alert message on {refusal[0]} "
                    f"({refusal[1]}) for user {self.broker.username!r}; it stays in the outbox "
                    "(does the broker ACL let this account write the alert topics?)"
                )
            if len(done) < len(rows):
                log.warning(
                    "alert publish incomplete; will retry",
                    extra={"acked": len(done), "sent": len(rows)},
                )
                return total
