"""How a gridwatch process reaches and logs in to the MQTT broker.

Shared by the collectors (``ingest.mqtt``) and the alert publisher (``alerts.mqtt``), so
both read one set of connection settings and log in the same way: username and password
(never printed), TLS, protocol version.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from gridwatch.errors import ConfigError


class MqttSettings(BaseModel):
    """Connection settings of one collector. ``password`` is masked in reprs and logs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=1883, gt=0, lt=65536)
    client_id: str = Field(default="gridwatch-ingest", min_length=1, max_length=128)
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = Field(default=30, ge=5, le=65535)
    session_expiry_s: int = Field(
        default=86_400, ge=0, le=0xFFFFFFFF, description="how long the broker keeps the session"
    )
    receive_maximum: int = Field(
        default=20_000,
        ge=1,
        le=65_535,
        description="MQTT 5: messages the broker may have in flight",
    )
    reconnect_min_s: float = Field(default=0.2, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    qos: Literal[0, 1] = 1

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> MqttSettings:
        """``mqtt://[user[:password]@]host[:port]`` (``mqtts://`` turns TLS on, port 8883)."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ConfigError(f"--mqtt {url!r}: scheme must be mqtt:// or mqtts://")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"--mqtt {url!r}: {exc}") from exc
        values: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": port or (8883 if tls else 1883),
            "tls": tls,
        }
        if parts.username:
            values["username"] = unquote(parts.username)
        if parts.password:
            values["password"] = SecretStr(unquote(parts.password))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def apply_login(client: Any, s: MqttSettings) -> None:
    """Credentials and TLS of ``s`` on a paho client, before it connects."""
    if s.username is not None:
        client.username_pw_set(s.username, s.password.get_secret_value() if s.password else None)
    if s.tls:
        client.tls_set(ca_certs=s.ca_file, certfile=s.cert_file, keyfile=s.key_file)
        client.tls_insecure_set(s.tls_insecure)
