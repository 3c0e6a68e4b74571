"""What a facade camera's tracker reports: thrown objects and the things that are not.

A track is a list of points ``(t, height_m, horizontal_m)`` in facade coordinates (after
calibration), one per video frame (every 40-100 ms), with 5 cm of measurement noise.
A camera sees its facade between ``view_bottom_m`` and ``view_top_m``; some cameras do
not see the top floors, so a fall from there is seen only from part-way down, and every
tracker needs a few frames to lock on, so the release itself is never a point.

Falling objects are ballistic with quadratic air drag (terminal speed 60-120 m/s, a
bottle or a flowerpot): ``dv/dt = -g - (g / vt^2) v |v|``, solved in closed form.
The object is released from a window sill ``SILL_M`` above its floor's level, with an
optional small upward toss, so the labelled origin floor ``f`` satisfies
``release_height_m = (f - 1) * floor_height_m + SILL_M``.

Distractors follow other laws on purpose: birds fly (no ballistic curvature), leaves fall
at 1-2 m/s with flutter, insects jitter for under a second close to the lens, and rain
streaks fall fast but at constant speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

G = 9.81
SILL_M = 1.0
POINT_NOISE_M = 0.05
FRAME_MS = (40, 50, 67, 80, 100)


@dataclass(frozen=True, slots=True)
class View:
    """What one camera sees: facade band, width, frame interval, building geometry."""

    bottom_m: float
    top_m: float
    width_m: float
    frame_ms: int
    floors: int
    floor_height_m: float

    @property
    def building_m(self) -> float:
        return self.floors * self.floor_height_m


@dataclass(slots=True)
class Track:
    """Points relative to the event start (ms), and what the label should say."""

    t_ms: npt.NDArray[np.int64]
    height_m: npt.NDArray[np.float64]
    horizontal_m: npt.NDArray[np.float64]
    end_ms: int
    extra: dict[str, Any] = field(default_factory=dict)


def _frames(
    r: np.random.Generator, view: View, t_end_s: float, latency_s: float
) -> npt.NDArray[np.float64]:
    dt = view.frame_ms / 1000
    n = max(0, int((t_end_s - latency_s) / dt) + 1)
    t = latency_s + dt * np.arange(n)
    return t + r.uniform(-0.002, 0.002, n)


def _visible(
    view: View, t: npt.NDArray[np.float64], h: npt.NDArray[np.float64], x: npt.NDArray[np.float64]
) -> npt.NDArray[np.bool_]:
    return (h >= view.bottom_m) & (h <= view.top_m) & (x >= -5) & (x <= view.width_m + 5)


def _finish(
    r: np.random.Generator,
    view: View,
    t: npt.NDArray[np.float64],
    h: npt.NDArray[np.float64],
    x: npt.NDArray[np.float64],
    *,
    end_ms: int,
    extra: dict[str, Any],
) -> Track | None:
    vis = _visible(view, t, h, x)
    if vis.sum() < 3:
        return None
    # A tracker loses an object for good once it leaves the view: keep the first visible run.
    first = int(np.argmax(vis))
    stop = first + int(np.argmin(vis[first:])) if not vis[first:].all() else vis.size
    if stop - first < 3:
        return None
    t, h, x = t[first:stop], h[first:stop], x[first:stop]
    h = h + r.normal(0, POINT_NOISE_M, h.size)
    x = x + r.normal(0, POINT_NOISE_M, x.size)
    t_ms = np.round(t * 1000).astype(np.int64)
    return Track(t_ms, h, x, max(end_ms, int(t_ms[-1]) + 1), extra)


def fall_height(
    h0: float, u0: float, vt: float, t: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Height of an object released at ``h0`` with upward speed ``u0`` and terminal speed ``vt``.

    >>> round(float(fall_height(20.0, 0.0, 1e6, np.array([1.0]))[0]), 3)  # no drag: h0 - g/2
    15.095
    >>> round(float(fall_height(20.0, 0.0, 60.0, np.array([1.0]))[0]), 3)  # drag: a bit less
    15.117
    """
    k = vt * vt / G
    th0 = math.atan(u0 / vt)
    t_apex = vt / G * th0
    h_apex = h0 - k * math.log(math.cos(th0))
    up = t < t_apex
    out = np.empty_like(t)
    out[up] = h0 + k * np.log(np.cos(th0 - G * t[up] / vt) / math.cos(th0))
    tau = t[~up] - t_apex
    z = G * tau / vt
    # log(cosh z) = log1p(2 sinh^2(z/2)): exact for the small z of light drag
    out[~up] = h_apex - k * np.log1p(2 * np.sinh(z / 2) ** 2)
    return out


def falling_object(r: np.random.Generator, view: View) -> Track | None:
    floors = max(view.floors, 3)
    floor = int(r.integers(3, floors + 1))
    h0 = (floor - 1) * view.floor_height_m + SILL_M
    u0 = 0.0 if r.random() < 0.6 else float(r.uniform(0.2, 2.0))
    vt = float(r.uniform(60, 120))
    x0 = float(r.uniform(2, max(view.width_m - 2, 3)))
    vx = float(r.uniform(-1.5, 1.5))
    k = vt * vt / G
    th0 = math.atan(u0 / vt)
    t_apex = vt / G * th0
    h_apex = h0 - k * math.log(math.cos(th0))
    t_impact = t_apex + vt / G * math.acosh(math.exp(h_apex / k))
    t = _frames(r, view, t_impact, float(r.uniform(0.08, 0.3)))
    t = t[t < t_impact]
    h = fall_height(h0, u0, vt, t)
    x = x0 + vx * t
    track = _finish(
        r,
        view,
        t,
        h,
        x,
        end_ms=int(t_impact * 1000),
        extra={
            "origin_floor": floor,
            "release_height_m": h0,
            "floor_height_m": view.floor_height_m,
            "sill_m": SILL_M,
            "toss_up_mps": u0,
            "terminal_mps": vt,
            "impact_ms_after_start": int(t_impact * 1000),
        },
    )
    return track


def bird(r: np.random.Generator, view: View) -> Track | None:
    dur = float(r.uniform(1.0, 4.0))
    t = _frames(r, view, dur, 0.0)
    speed = r.uniform(6, 15)
    heading = r.uniform(-0.45, 0.45) + (math.pi if r.random() < 0.5 else 0.0)
    turn = np.cumsum(r.normal(0, 0.6, t.size)) * (view.frame_ms / 1000)
    ang = heading + 0.3 * turn
    dt = view.frame_ms / 1000
    x = r.uniform(0, view.width_m) + np.cumsum(speed * np.cos(ang) * dt)
    flap = r.uniform(0.1, 0.3) * np.sin(2 * math.pi * r.uniform(3, 5) * t)
    h = r.uniform(3, view.building_m + 15) + np.cumsum(speed * np.sin(ang) * dt) + flap
    return _finish(r, view, t, h, x, end_ms=int(dur * 1000), extra={})


def leaf(r: np.random.Generator, view: View) -> Track | None:
    dur = float(r.uniform(3.0, 8.0))
    t = _frames(r, view, dur, 0.0)
    vt = r.uniform(0.8, 2.0)
    w = r.uniform(1.5, 3.0)
    h0 = r.uniform(5, max(6.0, min(view.building_m, 40.0)))
    h = h0 - vt * t + 0.2 * np.sin(2 * w * t)
    x = r.uniform(0, view.width_m) + r.uniform(-0.5, 0.5) * t + r.uniform(0.5, 1.5) * np.sin(w * t)
    keep = h > 0
    return _finish(r, view, t[keep], h[keep], x[keep], end_ms=int(dur * 1000), extra={})


def insect(r: np.random.Generator, view: View) -> Track | None:
    dur = float(r.uniform(0.3, 1.0))
    t = _frames(r, view, dur, 0.0)
    h = r.uniform(1, view.building_m) + np.cumsum(r.normal(0, 0.4, t.size))
    x = r.uniform(0, view.width_m) + np.cumsum(r.normal(0, 0.4, t.size))
    return _finish(r, view, t, h, x, end_ms=int(dur * 1000), extra={})


def rain_streak(r: np.random.Generator, view: View) -> Track | None:
    dur = float(r.uniform(0.3, 0.6))
    t = _frames(r, view, dur, 0.0)
    h = r.uniform(5, max(6.0, view.building_m)) - r.uniform(6.5, 9.0) * t
    x = r.uniform(0, view.width_m) + r.uniform(-0.5, 0.5) * t
    return _finish(r, view, t, h, x, end_ms=int(dur * 1000), extra={})
