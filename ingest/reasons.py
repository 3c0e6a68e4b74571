"""Dead-letter reason codes: the table in ``docs/protocol.md``, as data.

Row-level reasons have a small integer code so that validation can mark a whole batch in
one ``uint8`` array; the first five codes are ``gridwatch.contract.RowError`` on purpose,
so decoder output needs no translation. Message-level reasons (the whole payload is
unusable) are only ever strings: they come from ``PayloadError.reason`` or the collector.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

from gridwatch.contract import RowError


class RowReason(IntEnum):
    """Why one row (reading) was refused; 0 means accepted. Order = precedence."""

    OK = 0
    MISSING_FIELD = RowError.MISSING_FIELD
    NON_NUMERIC = RowError.NON_NUMERIC
    BAD_TS = RowError.BAD_TS
    BAD_DEVICE_ID = RowError.BAD_DEVICE_ID
    UNKNOWN_DEVICE = 5
    WRONG_KIND = 6
    WRONG_GRID = 7
    NOT_FINITE = 8
    OUT_OF_RANGE = 9
    NOT_INTEGER = 10
    TS_FUTURE = 11
    TS_TOO_OLD = 12
    DUPLICATE = 13
    LATE = 14

    @property
    def reason(self) -> str:
        return self.name.lower()


ROW_REASONS: Final = tuple(r.reason for r in RowReason)
"""``ROW_REASONS[code]`` is the reason string of a row code (index 0 is ``ok``)."""

MESSAGE_REASONS: Final = (
    "not_utf8",
    "not_json",
    "bad_shape",
    "bad_binary",
    "bad_topic",
    "oversize",
    "wrong_kind",
    "bad_ts",
    "internal_error",
)
"""Reasons that refuse a whole message. ``internal_error`` means a gridwatch bug, logged
with its traceback; the message is still kept as a dead letter rather than lost."""

ALL_REASONS: Final = tuple(dict.fromkeys((*ROW_REASONS[1:], *MESSAGE_REASONS)))
"""Every reason a dead letter can carry, for metrics (pre-created label values) and docs."""
