"""Publishing alert changes to MQTT for integrators: ``{root}/v1/{grid}/alerts/{grade}``, QoS 1.

Messages come from the ``alert_outbox`` table, written in the same transaction as the
alert change, and a row is deleted only after the broker acknowledged its PUBLISH
(PUBACK). A crash or a broker outage therefore delays messages but never drops one;
after a crash between PUBACK and delete a message may be sent twice (at least once, as
QoS 1 itself). Payload: the alert summary as JSON with ``event`` = opened | upgraded |
escalated | cleared.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gridwatch.contract import DEFAULT_ROOT, alert_topic
from storage import alerts as db

log = logging.getLogger(__name__)


class AlertPublisher:
    """Drains the outbox into MQTT. Owns one paho client and its network thread
    (started by ``start()``, stopped by ``stop()``)."""

    def __init__(
        self,
        storage: Any,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        root: str = DEFAULT_ROOT,
        client_id: str = "gridwatch-alerts",
        batch: int = 500,
        ack_timeout_s: float = 10.0,
    ) -> None:
        self.storage = storage
        self.host = host
        self.port = port
        self.root = root
        self.batch = batch
        self.ack_timeout_s = ack_timeout_s
        self.published = 0
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
        )
        self._client.max_inflight_messages_set(100)
        self._client.max_queued_messages_set(0)
        self._started = False

    def start(self, timeout_s: float = 10.0) -> None:
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        deadline = time.monotonic() + timeout_s
        while not self._client.is_connected():
            if time.monotonic() > deadline:
                self.stop()
                raise ConnectionError(f"MQTT broker {self.host}:{self.port} did not accept us")
            time.sleep(0.01)
        self._started = True
        log.info("alert publisher connected", extra={"host": self.host, "port": self.port})

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
        """Publish what the outbox holds (in order); returns messages acknowledged."""
        total = 0
        while True:
            with self.storage.connection(readonly=True) as conn:
                rows = db.outbox(conn, self.storage, self.batch)
            if not rows:
                return total
            infos = []
            for rid, grid, grade, payload in rows:
                topic = alert_topic(grid, grade, root=self.root)
                infos.append((rid, self._client.publish(topic, payload.encode(), qos=1)))
            done = []
            deadline = time.monotonic() + self.ack_timeout_s
            for rid, info in infos:
                remaining = max(0.0, deadline - time.monotonic())
                try:
                    info.wait_for_publish(timeout=remaining)
                except (RuntimeError, ValueError):
                    break
                if not info.is_published():
                    break
                done.append(rid)
            if done:
                with self.storage.connection() as conn:
                    db.delete_outbox(conn, self.storage, done)
            total += len(done)
            self.published += len(done)
            if len(done) < len(rows):
                log.warning(
                    "alert publish incomplete; will retry",
                    extra={"acked": len(done), "sent": len(rows)},
                )
                return total
