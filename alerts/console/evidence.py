"""The few evidence numbers a dispatcher reads first, as short text, and the floor.

Detectors attach many numbers (``score``, fit residuals, ...); a dispatcher deciding whom
to send needs three: how long until it gets worse (time to overflow), where exactly
(the floor a car is stuck at or an object fell from), and how long it has lasted
(stopped for, silent for). Unknown keys are left to the detail view.

>>> headline({"time_to_overflow_s": 250.0, "level_m": 3.2, "overflow_level_m": 4.0})
['overflow in 4 min 10 s', 'level 3.20 m of 4.00 m']
>>> floor_of({"origin_floor": 11.6})
12
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final


def duration(seconds: float) -> str:
    """Human duration at the precision a dispatcher needs (``4 min 10 s``, ``2 h 5 min``)."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        m, r = divmod(s, 60)
        return f"{m} min {r} s" if r else f"{m} min"
    h, r = divmod(s, 3600)
    return f"{h} h {r // 60} min" if r >= 60 else f"{h} h"


def _num(ev: Mapping[str, Any], key: str) -> float | None:
    v = ev.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def floor_of(ev: Mapping[str, Any]) -> int | None:
    """Floor of the car (``floor_no``) or of a fall's origin (``origin_floor``), if known."""
    for key in ("floor_no", "origin_floor", "floor"):
        v = _num(ev, key)
        if v is not None:
            return round(v)
    return None


def _overflow(ev: Mapping[str, Any]) -> str | None:
    v = _num(ev, "time_to_overflow_s")
    return None if v is None else f"overflow in {duration(v)}"


def _level(ev: Mapping[str, Any]) -> str | None:
    lv, top = _num(ev, "level_m"), _num(ev, "overflow_level_m")
    if lv is None:
        return None
    return f"level {lv:.2f} m of {top:.2f} m" if top is not None else f"level {lv:.2f} m"


def _stopped(ev: Mapping[str, Any]) -> str | None:
    v = _num(ev, "stopped_s")
    return None if v is None else f"stopped for {duration(v)}"


def _fall(ev: Mapping[str, Any]) -> str | None:
    fl, h = _num(ev, "origin_floor"), _num(ev, "release_height_m")
    if fl is None and h is None:
        return None
    if fl is None:
        return f"fell from about {h:.0f} m"
    return f"fell from about floor {round(fl)}" + (f" ({h:.0f} m)" if h is not None else "")


def _car_floor(ev: Mapping[str, Any]) -> str | None:
    v = _num(ev, "floor_no")
    return None if v is None else f"car at floor {round(v)}"


def _speed(ev: Mapping[str, Any]) -> str | None:
    v, rated = _num(ev, "speed_mps"), _num(ev, "rated_speed_mps")
    if v is None or rated is None:
        return None
    return f"speed {abs(v):.2f} m/s (rated {rated:.2f})"


def _vibration(ev: Mapping[str, Any]) -> str | None:
    v, base = _num(ev, "vibration_mps2"), _num(ev, "vibration_baseline_mps2")
    if v is None:
        return None
    return f"vibration {v:.2f} m/s²" + (f" (usual {base:.2f})" if base is not None else "")


def _tilt(ev: Mapping[str, Any]) -> str | None:
    v = _num(ev, "tilt_deg")
    return None if v is None else f"cover tilted {v:.0f}°"


def _silent(ev: Mapping[str, Any]) -> str | None:
    v = _num(ev, "silent_s")
    return None if v is None else f"silent for {duration(v)}"


def _stuck(ev: Mapping[str, Any]) -> str | None:
    v = _num(ev, "stuck_s")
    return None if v is None else f"reading frozen for {duration(v)}"


def _area(ev: Mapping[str, Any]) -> str | None:
    n = _num(ev, "devices")
    grids = ev.get("grids")
    if n is None:
        return None
    where = f" in {len(grids)} grids" if isinstance(grids, list) and grids else ""
    return f"{round(n)} devices{where}"


_PARTS: Final[tuple[Callable[[Mapping[str, Any]], str | None], ...]] = (
    _overflow,
    _level,
    _stopped,
    _car_floor,
    _fall,
    _speed,
    _vibration,
    _tilt,
    _silent,
    _stuck,
    _area,
)


def headline(ev: Mapping[str, Any]) -> list[str]:
    """Up to four short phrases, most urgent first."""
    out = [p for p in (f(ev) for f in _PARTS) if p]
    return out[:4]
