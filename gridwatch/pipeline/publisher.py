"""Alerts to MQTT for integrators: ``alerts.mqtt.AlertPublisher`` drained on an owned thread.

The dispatcher writes each alert change's MQTT message into the outbox table in the same
transaction as the alert; this pump publishes the outbox (QoS 1) and deletes a row only
after the broker's successful PUBACK. It drains when the detect stage signals new alerts
and every ``interval_s`` otherwise, and keeps retrying through broker outages, refused
logins and refused messages (backing off up to ``max_backoff_s``): nothing is lost, the
rows wait in the outbox until the broker takes them.

It logs in like the collector (``ingest.mqtt.MqttSettings``: username, password, TLS);
the password is never logged.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from alerts.mqtt import AlertPublisher
from ingest.mqtt import MqttSettings

log = logging.getLogger(__name__)


class OutboxPump:
    """Owns one ``AlertPublisher`` and the thread that drains the outbox into it.

    ``broker`` is the collector's ``MqttSettings`` (or a ``mqtt://`` URL, which may carry
    ``user:password@``); ``client_id`` replaces the settings' id (the collector's session
    must not be taken over by the publisher).
    """

    def __init__(
        self,
        storage: Any,
        broker: MqttSettings | str,
        *,
        root: str,
        client_id: str | None = None,
        interval_s: float = 0.5,
        retry_s: float = 2.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        settings = MqttSettings.from_url(broker) if isinstance(broker, str) else broker
        if client_id is not None:
            settings = settings.model_copy(update={"client_id": client_id})
        self.settings = settings
        self.publisher = AlertPublisher(storage, settings, root=root, client_id=settings.client_id)
        self.interval_s = interval_s
        self.retry_s = retry_s
        self.max_backoff_s = max_backoff_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0
        self.connected = False
        self.failures = 0
        self.last_error: str | None = None

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
        delay = self.retry_s
        while not self._stop.is_set():
            try:
                if not self.connected:
                    self.publisher.start()
                    self.connected = True
                self.published += self.publisher.drain()
            except Exception as exc:  # broker, login, ACL or database: retry after a pause
                self.failures += 1
                self.last_error = str(exc)
                log.warning(
                    "alert publishing paused; the outbox keeps the alerts",
                    extra={
                        "error": str(exc),
                        "host": self.settings.host,
                        "port": self.settings.port,
                        "user": self.settings.username,
                        "retry_s": delay,
                    },
                )
                if self.connected:
                    self._close()
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_backoff_s)
                continue
            delay = self.retry_s
            self.last_error = None
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
