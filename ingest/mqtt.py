"""The MQTT front end: paho-mqtt 2.x, QoS 1, persistent session, acknowledge after hand-off.

How acknowledgements relate to batches. paho runs with ``manual_ack=True``; a message's
packet id travels with its rows into the pending flush, and only when the dispatcher
reports that every sink (and the dead-letter sink) has the flush does this front end
send the PUBACKs, in receive order. A crash anywhere before that leaves the messages
unacknowledged, so the broker redelivers them to the same session (fixed client id,
``clean_start=False`` + session expiry, or ``clean_session=False`` on 3.1.1); the
redelivered readings are refused as ``duplicate`` where the sinks already have them.

Because up to a whole flush is unacknowledged at once, the broker must allow that many
messages in flight: MQTT 5 collectors announce ``receive_maximum`` (Mosquitto honours a
client's Receive Maximum), and ``IngestConfig.flush_messages`` must stay well below it.
With MQTT 3.1.1 the broker's ``max_inflight_messages`` is the window
(``deploy/mosquitto.conf``).

Threading. One thread, owned by this object, runs paho (``Client.loop``), the
collector (``on_message`` is paho's callback) and sends acknowledgements; the dispatcher
thread only appends finished flushes to a deque. paho is never called from two threads.

Reading. paho reads a packet with one ``recv`` for the type byte, one per length byte and
one for the rest, and handles one packet per ``select`` wake-up: four system calls and a
loop turn per message, a third of what a small gateway message costs. ``_BufferedClient``
serves those reads from one large ``recv`` and the loop drains whole buffers
(``MqttCollector.run``); the bytes paho sees are the same. On MQTT 3.1.1 the complete
QoS 0/1 PUBLISH packets in that buffer are framed here and handed to the collector
directly (``fast_publish``); every other packet, and any partial one, is paho's.

Packet ids belong to a connection. When it drops, pending and in-flight tokens are
forgotten (``Collector.forget_tokens``: a new epoch): acknowledging an old id on the new
connection could acknowledge a *different* message that reuses the id.
"""

from __future__ import annotations

import logging
import random
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gridwatch.broker import MqttSettings, apply_login
from gridwatch.errors import ConfigError
from ingest.collector import Collector
from ingest.dispatch import DispatcherStoppedError, Flush

log = logging.getLogger(__name__)

_SUBSCRIBE_CHUNK = 64  # filters per SUBSCRIBE packet (a partition may have hundreds)
_PUBACK = 0x40  # MQTT control packet type PUBACK
_PUBACK_PACKET = struct.Struct("!BBH")  # type, remaining length 2, packet id
_ACKS_PER_WRITE = 16_384
_PAHO_2 = paho.mqtt.__version__.startswith("2.")
_READ_BYTES = 1 << 16
_PACKETS_PER_TURN = 2_000  # then acknowledgements and the time-based flush get a turn


class _BufferedClient(mqtt.Client):
    """paho's client reading the socket in large chunks (see the module docstring).

    Overrides ``_sock_recv`` (paho 2's single read primitive), ``_sock_close`` (what is
    buffered belongs to the current socket and dies with it) and ``_packet_read`` (the
    ``fast_publish`` path, taken only between packets: paho's framing state is empty).
    ``tests/ingest/test_durability.py`` runs a broker restart through both paths.
    """

    _rdata: bytes = b""
    _rpos: int = 0
    fast_publish: Callable[[bytes, bytes, int, int], None] | None = None
    """MQTT 3.1.1 only: called with (topic, payload, qos, packet id) for each complete
    QoS 0/1 PUBLISH already buffered, instead of paho's packet-by-packet path (framing
    state, ``MQTTMessage``, topic-filter matching: ~20 % of a worker at district load).
    Anything else (QoS 2, other packets, a partial packet) goes through paho."""

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed (then ``loop_read`` without ``select``)."""
        return len(self._rdata) - self._rpos

    def _sock_recv(self, bufsize: int) -> bytes:
        pos = self._rpos
        if pos >= len(self._rdata):
            data = super()._sock_recv(max(bufsize, _READ_BYTES))  # BlockingIOError: none
            if len(data) <= bufsize:
                return data  # all of it, or b"" (closed)
            self._rdata, pos = data, 0
        end = min(pos + bufsize, len(self._rdata))
        self._rpos = end
        return self._rdata[pos:end]

    def _sock_close(self) -> None:
        self._rdata, self._rpos = b"", 0
        super()._sock_close()

    def _packet_read(self) -> MQTTErrorCode:
        fast = self.fast_publish
        if fast is None or self._in_packet["command"] != 0 or self._rpos >= len(self._rdata):
            return super()._packet_read()
        data, pos, size = self._rdata, self._rpos, len(self._rdata)
        taken = 0
        while pos < size:
            cmd = data[pos]
            if cmd & 0xF0 != 0x30 or cmd & 0x06 == 0x06 or cmd & 0x06 == 0x04:
                break  # not a QoS 0/1 PUBLISH: paho's path
            length, mult, i = 0, 1, pos + 1
            while i < size and i - pos <= 4:
                b = data[i]
                length += (b & 0x7F) * mult
                mult <<= 7
                i += 1
                if not b & 0x80:
                    break
            else:
                break  # incomplete (or malformed) length: paho's path decides
            end = i + length
            if end > size or length < 2:
                break
            tlen = (data[i] << 8) | data[i + 1]
            j = i + 2 + tlen
            qos = (cmd >> 1) & 0x03
            mid = 0
            if qos:
                if j + 2 > end:
                    break
                mid = (data[j] << 8) | data[j + 1]
                j += 2
            if j > end:
                break
            self._rpos = pos = end  # consumed before the callback, which may raise
            taken += 1
            fast(data[i + 2 : i + 2 + tlen], data[j:end], qos, mid)
        if not taken:
            return super()._packet_read()
        with self._msgtime_mutex:
            self._last_bytes_received = time.monotonic()
        return MQTTErrorCode.MQTT_ERR_SUCCESS


class MqttCollector:
    """Subscribes ``filters`` and feeds ``collector``; ``start``/``stop`` or ``run``."""

    def __init__(
        self, collector: Collector, settings: MqttSettings, filters: Sequence[str]
    ) -> None:
        if not filters:
            raise ConfigError("a collector needs at least one topic filter")
        self.collector = collector
        self.settings = settings
        self.filters = list(filters)
        self._metrics = collector.metrics
        self._done: deque[Flush] = deque()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._pending_subs: set[int] = set()
        self._thread: threading.Thread | None = None
        self._first_connect = True
        self._client = self._make_client()
        collector.set_ack_handler(self._done.append)
        self.connects = 0
        self.reconnects = 0
        self.refusals = 0
        self.received_qos1 = 0
        self.acked = 0
        self.stale_acks = 0

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Run in a named thread owned by this object (``stop`` ends it)."""
        if self._thread is not None:
            return
        self.collector.start()
        self._thread = threading.Thread(
            target=self.run, name=f"gridwatch-ingest-mqtt-{self.settings.client_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Flush, wait for the sinks, send the last acknowledgements, disconnect."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """True once connected and every filter is subscribed."""
        return self._subscribed.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def alive(self) -> bool:
        """True while the network thread started by ``start`` runs (health checks)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def unacked(self) -> int:
        return self.received_qos1 - self.acked - self.stale_acks

    def run(self) -> None:
        """The network loop (blocking) until ``stop``; then a clean shutdown."""
        self.collector.start()
        delay = self.settings.reconnect_min_s
        sock_open = False
        c = self.collector
        client = self._client
        while not self._stop.is_set():
            if not sock_open:
                sock_open = self._open()
                if not sock_open:
                    delay = self._backoff(delay)
                    continue
            wait = c.next_flush_in()
            buffered = getattr(client, "buffered", 0)
            rc = client.loop(timeout=0.0 if buffered else 0.05 if wait is None else min(wait, 0.05))
            turns = 0
            while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and turns < _PACKETS_PER_TURN:
                if not getattr(client, "buffered", 0):
                    break
                rc = client.loop_read()  # packets already received: no select needed
                turns += 1
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                sock_open = False
                self._lost(rc)
                delay = self._backoff(delay)
                continue
            if self._connected.is_set():
                delay = self.settings.reconnect_min_s
            try:
                if self._done:
                    self._send_acks()
                c.poll()
            except DispatcherStoppedError:
                log.error("the sinks were stopped before the collector; stopping")
                break
            except Exception:
                # The worker's outer boundary: never let a bug end ingestion silently.
                log.exception("collector loop failed; continuing")
                self._stop.wait(0.1)
        self._shutdown(sock_open)

    # -- connection -----------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        v5 = s.protocol == "5"
        client = (_BufferedClient if _PAHO_2 else mqtt.Client)(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        apply_login(client, s)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        if not v5 and isinstance(client, _BufferedClient):
            client.fast_publish = self._deliver
        return client

    def _open(self) -> bool:
        s = self.settings
        try:
            if self._first_connect:
                if s.protocol == "5":
                    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                    props.SessionExpiryInterval = s.session_expiry_s
                    props.ReceiveMaximum = s.receive_maximum
                    self._client.connect(
                        s.host, s.port, s.keepalive_s, clean_start=False, properties=props
                    )
                else:
                    self._client.connect(s.host, s.port, s.keepalive_s)
                self._first_connect = False
            else:
                self._client.reconnect()
        except (OSError, ValueError) as exc:
            log.warning(
                "mqtt connect failed",
                extra={"host": s.host, "port": s.port, "client_id": s.client_id, "error": str(exc)},
            )
            return False
        return True

    def _backoff(self, delay: float) -> float:
        """Wait ``delay`` (with jitter, interruptible by ``stop``); return the next delay."""
        self._stop.wait(delay * random.uniform(0.8, 1.2))
        return min(delay * 2, self.settings.reconnect_max_s)

    def _lost(self, rc: MQTTErrorCode) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        self._metrics.connected.set(0)
        forgotten = self.collector.forget_tokens()  # their packet ids died with the connection
        self.stale_acks += forgotten
        self._metrics.stale_acks.inc(forgotten)
        if was_connected:
            log.warning(
                "mqtt connection lost; reconnecting",
                extra={"client_id": self.settings.client_id, "rc": int(rc)},
            )

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self.refusals += 1
            log.error(
                "mqtt connection refused",
                extra={"client_id": self.settings.client_id, "reason": str(reason)},
            )
            return
        self.connects += 1
        if self.connects > 1:
            self.reconnects += 1
            self._metrics.reconnects.inc()
            log.warning(
                "mqtt reconnected",
                extra={
                    "client_id": self.settings.client_id,
                    "session_present": bool(flags.session_present),
                    "reconnects": self.reconnects,
                },
            )
            if not flags.session_present:
                log.error(
                    "broker has no session for this collector: messages published while it "
                    "was away are lost (session expired, or broker persistence is off)",
                    extra={"client_id": self.settings.client_id},
                )
        else:
            log.info(
                "mqtt connected",
                extra={
                    "client_id": self.settings.client_id,
                    "session_present": bool(flags.session_present),
                    "filters": len(self.filters),
                },
            )
        self._connected.set()
        self._metrics.connected.set(1)
        self._pending_subs.clear()
        v5 = self.settings.protocol == "5"
        for i in range(0, len(self.filters), _SUBSCRIBE_CHUNK):
            chunk = self.filters[i : i + _SUBSCRIBE_CHUNK]
            opts: Any = SubscribeOptions(qos=self.settings.qos) if v5 else self.settings.qos
            _, mid = client.subscribe([(f, opts) for f in chunk])
            if mid is not None:
                self._pending_subs.add(mid)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            log.error("subscription refused", extra={"mid": mid, "reasons": refused})
            return
        self._pending_subs.discard(mid)
        if not self._pending_subs:
            self._subscribed.set()
            log.info("subscribed", extra={"filters": len(self.filters)})

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # paho keeps the topic's raw bytes; decoding them here keeps one path for both
        self._deliver(msg._topic, cast(bytes, msg.payload), msg.qos, msg.mid)

    def _deliver(self, topic: bytes, payload: bytes, qos: int, mid: int) -> None:
        """One received PUBLISH (paho's callback, or ``fast_publish`` on MQTT 3.1.1)."""
        try:
            name = topic.decode("utf-8")
        except UnicodeDecodeError:
            name = topic.decode("utf-8", "replace")  # refused as a bad topic downstream
        if qos:
            self.received_qos1 += 1
            self.collector.on_message(name, payload, mid)
        else:
            self.collector.on_message(name, payload)

    # -- acknowledgements -----------------------------------------------------

    def _send_acks(self) -> None:
        done = self._done
        epoch = self.collector.epoch
        mids: list[int] = []
        while done:
            flush = done.popleft()
            if flush.epoch != epoch:
                self.stale_acks += len(flush.tokens)
                self._metrics.stale_acks.inc(len(flush.tokens))
                continue
            mids += flush.tokens
        if mids:
            self._ack_many(mids)
            self.acked += len(mids)
            self._metrics.acks.inc(len(mids))
            self._metrics.unacked.set(self.unacked)
            self._metrics.pending_rows.set(self.collector.pending_rows)

    def _ack_many(self, mids: list[int]) -> None:
        """PUBACK every packet id, in order, in one socket write when paho allows it.

        ``Client.ack`` queues and writes each 4-byte PUBACK separately (two syscalls per
        message, as much as receiving it costs). paho 2's ``_packet_queue`` takes any
        prepared bytes, so a flush's PUBACKs go out as one blob; the bytes are exactly
        what ``Client.ack`` would send. Other paho versions fall back to ``ack``.
        """
        queue = getattr(self._client, "_packet_queue", None)
        if queue is None or len(mids) == 1 or not _PAHO_2:
            for mid in mids:
                self._client.ack(mid, 1)
            return
        for i in range(0, len(mids), _ACKS_PER_WRITE):
            chunk = mids[i : i + _ACKS_PER_WRITE]
            queue(_PUBACK, b"".join([_PUBACK_PACKET.pack(_PUBACK, 2, m) for m in chunk]), 0, 0)

    def _shutdown(self, sock_open: bool) -> None:
        c = self.collector
        c.flush()
        if not c.dispatcher.wait_idle(30.0):
            log.error("sinks did not finish; unacknowledged messages will be redelivered")
        if sock_open and self._connected.is_set():
            self._send_acks()
            self._client.disconnect()
            for _ in range(50):  # let paho write the acks and the DISCONNECT
                if self._client.loop(timeout=0.02) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
        self._connected.clear()
        self._metrics.connected.set(0)
        log.info(
            "collector stopped",
            extra={
                "client_id": self.settings.client_id,
                "messages": c.messages,
                "accepted": c.accepted,
                "acked": self.acked,
            },
        )
