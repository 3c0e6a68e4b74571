"""Alerts to MQTT for integrators: ``alerts.mqtt.AlertPublisher`` drained on an owned thread.

The dispatcher writes each alert change's MQTT message into the outbox table in the same
transaction as the alert; this pump publishes the outbox (QoS 1) and deletes a row only
after the broker's PUBACK. It drains when the detect stage signals new alerts and every
``interval_s`` otherwise, and keeps retrying through broker outages.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from alerts.mqtt import AlertPublisher
from ingest.mqtt import MqttSettings

log = logging.getLogger(__name__)


class OutboxPump:
    """Owns one ``AlertPublisher`` and the thread that drains the outbox into it."""

    def __init__(
        self,
        storage: Any,
        url: str,
        *,
        root: str,
        client_id: str,
        interval_s: float = 0.5,
    ) -> None:
        broker = MqttSettings.from_url(url)
        self.publisher = AlertPublisher(
            storage, broker.host, broker.port, root=root, client_id=client_id
        )
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0
        self.connected = False

    def start(self) -> OutboxPump:
        self._thread = threading.Thread(target=self._run, name="gridwatch-alert-mqtt", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(15)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.connected:
                    self.publisher.start()
                    self.connected = True
                self.published += self.publisher.drain()
            except Exception as exc:  # broker or database away: retry after a pause
                log.warning("alert publishing paused", extra={"error": str(exc)})
                if self.connected:
                    self._close()
                self._stop.wait(2.0)
                continue
            self._wake.wait(self.interval_s)
            self._wake.clear()
        if self.connected:
            try:
                self.published += self.publisher.drain()
            except Exception as exc:
                log.warning("last alert drain failed", extra={"error": str(exc)})
            self._close()

    def _close(self) -> None:
        try:
            self.publisher.stop()
        except Exception:
            log.debug("alert publisher close failed", exc_info=True)
        self.connected = False
