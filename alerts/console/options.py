"""The console's security and live-update policy, with the reason for each default.

Policy lives in one frozen model so the pipeline can pass its own (from ``gridwatch.toml``)
and tests can shorten a timer without touching code.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from alerts.console.passwords import DEFAULT_COST, ScryptCost


class ConsoleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    session_ttl_s: float = Field(
        default=12 * 3600, gt=0, description="a browser session ends after one 12 h shift"
    )
    idle_timeout_s: float = Field(
        default=30 * 60,
        gt=0,
        description="a browser session nobody used (no request, no open live view) for this "
        "long ends: a tab left open keeps it alive, a closed one does not",
    )
    token_ttl_s: float = Field(
        default=30 * 86_400, gt=0, description="default lifetime of an API bearer token"
    )
    token_ttl_max_s: float = Field(
        default=365 * 86_400, gt=0, description="longest lifetime a token may ask for"
    )
    lockout_failures: int = Field(
        default=5, ge=1, description="failed sign-ins of one name that lock it"
    )
    lockout_window_s: float = Field(
        default=15 * 60, gt=0, description="failures older than this are forgotten"
    )
    lockout_s: float = Field(
        default=15 * 60, gt=0, description="how long a locked name stays locked"
    )
    remote_failures: int = Field(
        default=30,
        ge=1,
        description="failed sign-ins from one address (any names) within the window that "
        "block the address: stops password spraying across many accounts",
    )
    cookie_secure: bool | None = Field(
        default=None,
        description="Secure flag of the session cookie; None: set when the request was https",
    )
    trusted_origins: tuple[str, ...] = Field(
        default=(),
        description="extra Origin values allowed on state-changing requests (a reverse proxy's "
        "public URL, e.g. https://console.example.org)",
    )
    poll_interval_s: float = Field(
        default=0.25,
        gt=0,
        le=1.0,
        description="how often the live feed looks for new alert events; well under the 1 s "
        "in which a new alert must reach the board",
    )
    keepalive_s: float = Field(
        default=15.0, gt=0, description="comment line on an idle event stream (proxies drop them)"
    )
    session_check_s: float = Field(
        default=30.0,
        gt=0,
        description="how often an open event stream re-checks its session (expiry, revocation)",
    )
    touch_interval_s: float = Field(
        default=60.0, ge=0, description="last-seen of a session is written at most this often"
    )
    max_concurrent_sign_ins: int = Field(
        default=4,
        ge=1,
        description="password checks at once (each scrypt check takes 32 MiB and ~0.3 s of a "
        "core): a burst of sign-ins queues instead of exhausting memory",
    )
    sign_in_wait_s: float = Field(
        default=10.0, gt=0, description="how long a sign-in waits for a free check, then 503"
    )
    max_subscribers: int = Field(default=500, ge=1, description="open event streams at most")
    scrypt: ScryptCost = Field(default=DEFAULT_COST, description="cost of new password hashes")
