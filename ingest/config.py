"""Collector settings: validation limits and micro-batching, checked once at start-up.

Defaults are the contract's (``docs/protocol.md``): 1 MiB payloads, 10 minutes of clock
skew into the future, 7 days of history. Replaying an old simulated fleet needs the age
check off (``max_age_s=None``), which is why both time limits are optional.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gridwatch.contract import DEFAULT_ROOT


class IngestConfig(BaseModel):
    """Limits and batching of one collector. Immutable; build a new one to change it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    root: str = Field(default=DEFAULT_ROOT, min_length=1, description="MQTT topic root (gw)")
    max_payload_bytes: int = Field(
        default=1 << 20, gt=0, description="larger payloads are dead-lettered as oversize"
    )
    max_future_s: float | None = Field(
        default=600.0, ge=0, description="readings further ahead of the collector clock: ts_future"
    )
    max_age_s: float | None = Field(
        default=7 * 86400.0,
        gt=0,
        description="readings older than this: ts_too_old; None = no limit",
    )
    flush_interval_s: float = Field(
        default=0.05, gt=0, le=60, description="oldest pending reading waits at most this long"
    )
    flush_rows: int = Field(
        default=65_536, gt=0, description="flush once this many rows are pending"
    )
    flush_messages: int = Field(
        default=2_000,
        gt=0,
        description="flush once this many messages are pending; keep well under the MQTT "
        "receive maximum, since a message is acknowledged only after its flush is handed on",
    )
    max_pending_flushes: int = Field(
        default=4, gt=0, description="hand-off queue bound; a full queue blocks the transport"
    )
    dedup_window_s: float = Field(
        default=600.0,
        gt=0,
        description="exact (device, ts) duplicate detection covers this much arrival time; "
        "a late reading is accepted while it is newer than what was forgotten",
    )
    dedup_max_keys: int = Field(
        default=8_000_000, ge=1, description="memory bound of that window (8 bytes per reading)"
    )
    dead_letter_duplicates: bool = Field(
        default=True,
        description="store a dead-letter record for duplicates (they are always counted)",
    )
    sink_retry_max_s: float = Field(
        default=5.0, gt=0, description="longest back-off between retries of a failing sink"
    )

    @model_validator(mode="after")
    def _root_is_a_topic_level(self) -> IngestConfig:
        if any(c in self.root for c in "/+#"):
            raise ValueError(f"root = {self.root!r}: must be one topic level (no / + #)")
        return self
