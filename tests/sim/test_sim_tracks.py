"""Falling-object physics: the closed form matches integration, and floors can be recovered."""

from __future__ import annotations

import numpy as np
import pytest

from sim import tracks


def _integrate(h0: float, u0: float, vt: float, t_end: float, dt: float = 1e-4) -> float:
    """RK4 of dv/dt = -g - (g / vt^2) v |v| (v up-positive)."""
    k = tracks.G / (vt * vt)

    def acc(v: float) -> float:
        return -tracks.G - k * v * abs(v)

    h, v = h0, u0
    for _ in range(round(t_end / dt)):
        k1v, k1h = acc(v), v
        k2v, k2h = acc(v + 0.5 * dt * k1v), v + 0.5 * dt * k1v
        k3v, k3h = acc(v + 0.5 * dt * k2v), v + 0.5 * dt * k2v
        k4v, k4h = acc(v + dt * k3v), v + dt * k3v
        v += dt / 6 * (k1v + 2 * k2v + 2 * k3v + k4v)
        h += dt / 6 * (k1h + 2 * k2h + 2 * k3h + k4h)
    return h


@pytest.mark.parametrize(("u0", "vt"), [(0.0, 60.0), (1.5, 60.0), (2.0, 120.0), (0.0, 1e6)])
def test_closed_form_matches_integration(u0: float, vt: float) -> None:
    for t in (0.05, 0.5, 1.5, 3.0):
        got = float(tracks.fall_height(80.0, u0, vt, np.array([t]))[0])
        assert got == pytest.approx(_integrate(80.0, u0, vt, t), abs=1e-3)


def _view(r: np.random.Generator) -> tracks.View:
    floors = int(r.integers(6, 35))
    fh = float(r.uniform(2.8, 3.3))
    top = floors * fh - float(r.uniform(3, 12)) if r.random() < 0.25 else floors * fh + 3
    frame = int(r.choice(tracks.FRAME_MS))
    return tracks.View(float(r.uniform(0, 4)), top, 40.0, frame, floors, fh)


def test_a_quadratic_fit_finds_the_origin_floor() -> None:
    """What a detector can do: the apex of a plain quadratic fit, inverted to a floor."""
    hits = n = 0
    for seed in range(400):
        r = np.random.default_rng(seed)
        view = _view(r)
        track = tracks.falling_object(r, view)
        assert track is not None
        t, h = track.t_ms / 1000, track.height_m
        assert t[0] >= 0.075 and np.all(np.diff(h) < 0.5)
        assert (h >= view.bottom_m - 0.3).all() and (h <= view.top_m + 0.3).all()
        c2, c1, c0 = np.polyfit(t, h, 2)
        apex = c0 - c1 * c1 / (4 * c2)
        floor = round((apex - tracks.SILL_M) / view.floor_height_m) + 1
        hits += abs(floor - track.extra["origin_floor"]) <= 1
        n += 1
    assert hits >= 0.99 * n


@pytest.mark.parametrize("make", [tracks.bird, tracks.leaf, tracks.insect, tracks.rain_streak])
def test_distractors_stay_in_view_and_have_enough_points(make: object) -> None:
    made = 0
    for seed in range(200):
        r = np.random.default_rng(seed)
        view = _view(r)
        track = make(r, view)  # type: ignore[operator]
        if track is None:
            continue
        made += 1
        assert track.t_ms.size >= 3 and np.all(np.diff(track.t_ms) > 0)
        assert (track.height_m <= view.top_m + 0.3).all()
    assert made >= 100
