"""Readings to MQTT messages, and the sinks that take them (a broker, or a function).

``MessageEncoder`` turns a ``ReadingBatch`` into ``(topic, payload)`` pairs with the
contract's encoders: gateway batches (one message per grid and kind, at most
``max_batch`` readings, binary ``GWB1`` or JSON) or per-device JSON on each device's own
topic. Grouping is one stable ``argsort`` per batch, so a device's readings keep their
time order inside a message and across messages.

``MqttPublisher`` is a sink that publishes to a broker with back-pressure: at QoS 1 it
never holds more than ``max_pending`` unacknowledged messages (MQTT's packet ids allow
65,535; paho refuses more, ``mosquitto_pub -l`` silently drops them), and at QoS 0 it
waits every ``QOS0_SYNC_EVERY`` messages until the socket has taken the previous ones,
so a slow broker slows the simulator instead of filling memory.

Per acknowledgement paho rescans every queued message for one to send when its in-flight
window is limited (``Client._update_inflight``, O(queued) per PUBACK): with
``max_inflight >= max_pending`` the window is ours alone and paho's is switched off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import numpy.typing as npt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gridwatch.batch import ReadingBatch
from gridwatch.contract import (
    DEFAULT_ROOT,
    batch_topic,
    encode_binary,
    encode_device_json,
    encode_json_batch,
    telemetry_topic,
)
from gridwatch.domain import DeviceKind
from gridwatch.errors import ConfigError, GridwatchError
from gridwatch.registry import Registry

log = logging.getLogger(__name__)

Sink = Callable[[str, bytes], None]
"""Where messages go: ``sink(topic, payload)``; the in-process transport is one of these."""

MAX_UNACKED = 65_535
QOS0_SYNC_EVERY = 512


class PayloadFormat(StrEnum):
    BINARY = "binary"  # gateway batch, GWB1
    JSON = "json"  # gateway batch, JSON columns
    DEVICE = "device"  # per-device JSON (ThingsBoard shape) on the device's topic


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    readings: int


class MessageEncoder:
    """Cuts reading batches into contract messages; see the module docstring."""

    def __init__(
        self,
        registry: Registry,
        fmt: PayloadFormat | str = PayloadFormat.BINARY,
        root: str = DEFAULT_ROOT,
        max_batch: int = 500,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.registry = registry
        self.fmt = PayloadFormat(fmt)
        self.root = root
        self.max_batch = max_batch
        self._ids_b = registry.device_ids.astype(np.bytes_)
        self._grids = registry.grid_ids.tolist()
        self._topics: dict[tuple[int, DeviceKind], str] = {}

    def _slices(
        self, batch: ReadingBatch
    ) -> tuple[npt.NDArray[np.intp], list[tuple[int, int, int]]]:
        """Row order and ``(key, start, stop)`` runs: per grid chunked, or per device."""
        if self.fmt is PayloadFormat.DEVICE:
            key = batch.device
        else:
            key = self.registry.device_grid[batch.device]
            if self._grids and len(self._grids) < 2**15:
                key = key.astype(np.int16)  # a stable sort of 16-bit keys is a radix sort
        order = np.argsort(key, kind="stable")
        ks = key[order]
        cuts = np.flatnonzero(ks[1:] != ks[:-1]) + 1
        starts = np.concatenate([[0], cuts]).tolist()
        stops = np.concatenate([cuts, [ks.size]]).tolist()
        keys = ks[starts].tolist() if ks.size else []
        runs: list[tuple[int, int, int]] = []
        step = self.max_batch
        for k, a, b in zip(keys, starts, stops, strict=True):
            if self.fmt is PayloadFormat.DEVICE or b - a <= step:
                runs.append((k, a, b))
            else:
                runs += [(k, s, min(s + step, b)) for s in range(a, b, step)]
        return order, runs

    def count(self, batch: ReadingBatch) -> int:
        """How many messages ``messages(batch)`` would give, without encoding (dry runs)."""
        return len(self._slices(batch)[1]) if len(batch) else 0

    def messages(self, batch: ReadingBatch) -> Iterator[Message]:
        if not len(batch):
            return
        order, runs = self._slices(batch)
        kind = batch.kind
        dev = batch.device[order]
        ts = batch.ts_ms[order]
        cols = {k: v[order] for k, v in batch.fields.items()}
        if self.fmt is PayloadFormat.DEVICE:
            ids = self.registry.device_ids
            grid = self.registry.device_grid
            for d, a, b in runs:
                topic = telemetry_topic(self._grids[grid[d]], kind, str(ids[d]), root=self.root)
                payload = encode_device_json(ts[a:b], {k: v[a:b] for k, v in cols.items()})
                yield Message(topic, payload, b - a)
            return
        encode = encode_binary if self.fmt is PayloadFormat.BINARY else encode_json_batch
        ids_b = self._ids_b[dev]
        for g, a, b in runs:
            known = self._topics.get((g, kind))
            topic = known or batch_topic(self._grids[g], kind, root=self.root)
            if known is None:
                self._topics[(g, kind)] = topic
            payload = encode(kind, ids_b[a:b], ts[a:b], {k: v[a:b] for k, v in cols.items()})
            yield Message(topic, payload, b - a)


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """``mqtt://[user[:password]@]host[:port]``; the password never shows in repr or logs."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        user = f"{self.username}:***@" if self.username else ""
        return f"BrokerUrl(mqtt://{user}{self.host}:{self.port})"

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        if parsed.scheme not in ("mqtt", "tcp"):
            raise ConfigError(f"broker url {url!r}: scheme must be mqtt:// or tcp://")
        if not parsed.hostname:
            raise ConfigError(f"broker url {url!r} has no host")
        try:
            port = parsed.port or 1883
        except ValueError as exc:
            raise ConfigError(f"broker url {url!r}: bad port") from exc
        return cls(
            parsed.hostname,
            port,
            unquote(parsed.username) if parsed.username else None,
            unquote(parsed.password) if parsed.password else None,
        )


class MqttPublisher:
    """A sink publishing to an MQTT broker with bounded unacknowledged messages.

    paho's network thread (``loop_start``) is owned by this object and stopped by
    ``close()``; use it as a context manager.
    """

    def __init__(
        self,
        url: str,
        qos: int = 1,
        *,
        client_id: str | None = None,
        max_inflight: int = 100,
        max_pending: int = 10_000,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if qos not in (0, 1):
            raise ConfigError(f"qos must be 0 or 1, got {qos}")
        if not 1 <= max_pending <= MAX_UNACKED:
            raise ConfigError(f"max_pending must be 1..{MAX_UNACKED}, got {max_pending}")
        if not 1 <= max_inflight <= max_pending:
            raise ConfigError(f"max_inflight must be 1..max_pending, got {max_inflight}")
        self.broker = BrokerUrl.parse(url)
        self.qos = qos
        self.max_pending = max_pending
        self.published = 0
        self.acked = 0
        self.bytes = 0
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._last_info: mqtt.MQTTMessageInfo | None = None
        self._sync_info: mqtt.MQTTMessageInfo | None = None
        self._closed = False
        self._waiters = 0  # threads waiting on _cond: acks notify only when someone waits
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"gridwatch-sim-{time.time_ns() % 10**9}",
            protocol=mqtt.MQTTv311,
        )
        if self.broker.username:
            client.username_pw_set(self.broker.username, self.broker.password)
        # max_pending already bounds what is unacknowledged; 0 = paho keeps no window
        client.max_inflight_messages_set(0 if max_inflight >= max_pending else max_inflight)
        client.max_queued_messages_set(0)  # we bound the queue ourselves
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        if qos == 1:
            client.on_publish = self._on_publish  # at QoS 0 a callback costs ~3x the rate
        self._client = client
        try:
            client.connect(self.broker.host, self.broker.port, keepalive=30)
        except OSError as exc:
            raise GridwatchError(f"cannot connect to MQTT broker {self.broker!r}: {exc}") from exc
        client.loop_start()
        if not self._connected.wait(connect_timeout_s):
            self.close()
            raise GridwatchError(f"MQTT broker {self.broker!r} did not accept the connection")

    # paho callbacks (network thread)
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("mqtt connect refused", extra={"reason": str(reason)})
            return
        log.info("mqtt connected", extra={"broker": repr(self.broker)})
        self._connected.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._connected.clear()
        if not self._closed:
            log.warning("mqtt disconnected", extra={"reason": str(reason)})

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        # Only this thread writes ``acked``; a waiter registers under the lock before it
        # checks ``acked``, so either it sees this increment or this sees the waiter.
        self.acked += 1
        if self._waiters:
            with self._cond:
                self._cond.notify_all()

    @property
    def unacked(self) -> int:
        return self.published - self.acked if self.qos == 1 else 0

    def __call__(self, topic: str, payload: bytes) -> None:
        if self.qos == 1 and self.published - self.acked >= self.max_pending:
            with self._cond:
                self._waiters += 1
                try:
                    while self.published - self.acked >= self.max_pending:
                        if not self._cond.wait(1.0) and not self._connected.is_set():
                            log.warning("waiting for the broker", extra={"unacked": self.unacked})
                finally:
                    self._waiters -= 1
        info = self._client.publish(topic, payload, qos=self.qos)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            raise GridwatchError("paho refused the message: its queue is full")
        self.published += 1
        self.bytes += len(payload)
        self._last_info = info
        if self.qos == 0 and self.published % QOS0_SYNC_EVERY == 0:
            # wait for the message of the previous sync point: one window stays in flight
            self._sync(self._sync_info)
            self._sync_info = info

    def _sync(self, info: mqtt.MQTTMessageInfo | None, timeout_s: float = 30.0) -> bool:
        if info is None:
            return True
        deadline = time.monotonic() + timeout_s
        while not info.is_published():
            if time.monotonic() > deadline:
                return False
            if self._connected.is_set():
                info.wait_for_publish(0.5)
            else:
                time.sleep(0.1)
        return True

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every message is acknowledged (QoS 1) or written (QoS 0)."""
        if self.qos == 0:
            return self._sync(self._last_info, timeout_s) and self._drain_qos0(timeout_s)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._waiters += 1
            try:
                while self.published - self.acked > 0:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(min(left, 0.5))
            finally:
                self._waiters -= 1
        return True

    def _drain_qos0(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._client.want_write():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush (bounded), disconnect and stop paho's network thread."""
        if self._closed:
            return
        if self._connected.is_set() and not self.flush(timeout_s):
            log.warning("closing with messages unacknowledged", extra={"unacked": self.unacked})
        self._closed = True
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GatewayPublisher:
    """A lean MQTT 3.1.1 QoS 1 publisher for load generation (``bench/e2e.py``).

    The simulated district stands for ~14,000 gateways on other machines; on the bench
    machine their CPU competes with the pipeline. paho costs ~45 µs per QoS 1 message
    (a ``MQTTMessage`` + ``MQTTMessageInfo``, a wake-up byte to its own thread, and a
    ``ReasonCode`` + ``Properties`` per PUBACK); this writes PUBLISH packets into one
    buffer sent in large writes and counts PUBACKs by parsing the bytes, on the caller's
    thread. Same wire traffic, same guarantees the bench needs: at most ``max_pending``
    unacknowledged, ``flush`` waits for every PUBACK. No reconnect: a lost connection
    raises ``GridwatchError`` (a benchmark run is void then), which is why ``gridwatch
    sim`` keeps ``MqttPublisher``. Call ``poll()`` while idle (keep-alive).
    """

    KEEPALIVE_S = 60
    SEND_BYTES = 64 * 1024

    def __init__(
        self,
        url: str,
        *,
        client_id: str | None = None,
        max_pending: int = 5_000,
        connect_timeout_s: float = 10.0,
    ) -> None:
        import socket

        if not 1 <= max_pending <= MAX_UNACKED:
            raise ConfigError(f"max_pending must be 1..{MAX_UNACKED}, got {max_pending}")
        self.broker = BrokerUrl.parse(url)
        self.max_pending = max_pending
        self.published = 0
        self.acked = 0
        self.bytes = 0
        self._mid = 0
        self._out = bytearray()
        self._in = bytearray()
        self._last_io = time.monotonic()
        try:
            self._sock = socket.create_connection(
                (self.broker.host, self.broker.port), timeout=connect_timeout_s
            )
        except OSError as exc:
            raise GridwatchError(f"cannot connect to MQTT broker {self.broker!r}: {exc}") from exc
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cid = (client_id or f"gridwatch-gw-{time.time_ns() % 10**9}").encode()
        flags, tail = 0x02, _mqtt_str(cid)  # clean session
        if self.broker.username:
            flags |= 0x80
            tail += _mqtt_str(self.broker.username.encode())
            if self.broker.password:
                flags |= 0x40
                tail += _mqtt_str(self.broker.password.encode())
        body = _mqtt_str(b"MQTT") + bytes([4, flags]) + self.KEEPALIVE_S.to_bytes(2, "big") + tail
        self._sock.sendall(b"\x10" + _varint(len(body)) + body)
        connack = self._recv_exactly(4)
        if connack[0] != 0x20 or connack[3] != 0:
            self._sock.close()
            raise GridwatchError(f"MQTT broker {self.broker!r} refused the connection: {connack!r}")
        self._sock.setblocking(False)

    @property
    def unacked(self) -> int:
        return self.published - self.acked

    def __call__(self, topic: str, payload: bytes) -> None:
        self._mid = self._mid % MAX_UNACKED + 1
        t = topic.encode()
        n = 2 + len(t) + 2 + len(payload)
        self._out += b"\x32" + _varint(n) + len(t).to_bytes(2, "big") + t
        self._out += self._mid.to_bytes(2, "big") + payload
        self.published += 1
        self.bytes += len(payload)
        if len(self._out) >= self.SEND_BYTES or self.unacked >= self.max_pending:
            self._send()
            while self.unacked >= self.max_pending:
                self._read(block=True)

    def poll(self) -> None:
        """Send what is buffered, count what was acknowledged, keep the connection alive."""
        if not self._out and time.monotonic() - self._last_io > self.KEEPALIVE_S / 2:
            self._out += b"\xc0\x00"  # PINGREQ
        self._send()
        self._read(block=False)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every message is acknowledged."""
        deadline = time.monotonic() + timeout_s
        self._send()
        while self.unacked > 0 and time.monotonic() < deadline:
            self._read(block=True, timeout_s=0.2)
        return self.unacked == 0

    def close(self, timeout_s: float = 10.0) -> None:
        try:
            if not self.flush(timeout_s):
                log.warning("closing with messages unacknowledged", extra={"unacked": self.unacked})
            self._out += b"\xe0\x00"  # DISCONNECT
            self._send()
        except GridwatchError:
            pass
        finally:
            self._sock.close()

    def __enter__(self) -> GatewayPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the socket ----------------------------------------------------------------------

    def _send(self) -> None:
        import select

        view = memoryview(self._out)
        sent = 0
        try:
            while sent < len(view):
                try:
                    sent += self._sock.send(view[sent:])
                except BlockingIOError:
                    self._read(block=False)  # the broker may wait for us to read its acks
                    select.select([self._sock], [self._sock], [], 1.0)
        except OSError as exc:
            raise GridwatchError(f"MQTT connection lost: {exc}") from exc
        finally:
            view.release()
            del self._out[:sent]
        if sent:
            self._last_io = time.monotonic()

    def _read(self, *, block: bool, timeout_s: float = 1.0) -> None:
        import select

        if block:
            select.select([self._sock], [], [], timeout_s)
        try:
            data = self._sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            raise GridwatchError(f"MQTT connection lost: {exc}") from exc
        if not data:
            raise GridwatchError("MQTT connection closed by the broker")
        buf = self._in
        buf += data
        pos = 0
        while len(buf) - pos >= 2:
            kind, length = buf[pos], buf[pos + 1]
            if length & 0x80:  # nothing the broker sends us is that long
                raise GridwatchError(f"unexpected MQTT packet {kind:#x} from the broker")
            if len(buf) - pos < 2 + length:
                break
            if kind == 0x40:
                self.acked += 1
            elif kind != 0xD0:  # PINGRESP is fine, anything else is not
                raise GridwatchError(f"unexpected MQTT packet {kind:#x} from the broker")
            pos += 2 + length
        del buf[:pos]

    def _recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise GridwatchError(f"MQTT broker {self.broker!r} closed the connection")
            data += chunk
        return data


def _mqtt_str(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)
