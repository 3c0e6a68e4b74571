"""The streaming anomaly score: warm-up, robustness, drift, level shifts, many series."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.config import load_config
from detectors.robust import RobustScorer


def scorer(n: int = 1, **over: float) -> RobustScorer:
    p = load_config().generic
    kw = {
        "warmup_readings": p.warmup_readings,
        "alpha": p.alpha,
        "trend_beta": p.trend_beta,
        "huber_k": p.huber_k,
        "score_z_lo": p.score_z_lo,
        "score_z_hi": p.score_z_hi,
        "shift_z": p.shift_z,
        "shift_readings": p.shift_readings,
        "min_scale": 0.01,
    }
    kw.update(over)
    return RobustScorer(n, **kw)  # type: ignore[arg-type]


def run(rs: RobustScorer, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.zeros(1, np.int32)
    out = [rs.update(idx, np.array([v])) for v in values]
    return np.array([o[0][0] for o in out]), np.array([o[2][0] for o in out])


def test_scores_are_zero_during_warm_up_and_in_0_1() -> None:
    rng = np.random.default_rng(0)
    x = 10 + rng.standard_normal(400)
    x[[2, 150, 300]] = [40, 40, -30]
    s, _ = run(scorer(), x)
    assert s[2] == 0.0
    assert s[150] == 1.0 and s[300] == 1.0
    assert np.all((s >= 0) & (s <= 1))
    assert np.sum(s > 0) <= 5


def test_a_first_reading_that_is_an_anomaly_does_not_poison_the_baseline() -> None:
    rng = np.random.default_rng(1)
    x = 0.5 + 0.003 * rng.standard_normal(60)
    x[0] = 2.5
    s, expected = run(scorer(min_scale=0.001), x)
    assert expected[3] == pytest.approx(0.5, abs=0.01)  # the third reading: median of 3
    assert expected[30] == pytest.approx(0.5, abs=0.003)
    assert np.all(s[1:] < load_config().generic.emit_score)


def test_outliers_do_not_move_the_baseline() -> None:
    rng = np.random.default_rng(2)
    x = 5 + 0.1 * rng.standard_normal(300)
    x[100:300:10] = 50.0  # a spike every 10 readings
    _, expected = run(scorer(), x)
    assert expected[-1] == pytest.approx(5.0, abs=0.1)


def test_linear_drift_is_followed_without_alarms() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(3000)
    x = 0.02 * t + rng.standard_normal(t.size)  # drift 0.02 sigma per reading
    s, expected = run(scorer(), x)
    assert np.sum(s[100:] > 0) == 0
    assert expected[-1] == pytest.approx(x[-200:].mean() + 0.02 * 100, abs=1.0)


def test_plain_ewma_without_trend_lags_a_drift() -> None:
    # why the trend term exists: a plain EWMA lags a drift by slope / alpha (5 sigmas here)
    rng = np.random.default_rng(4)
    t = np.arange(3000)
    x = 0.1 * t + rng.standard_normal(t.size)
    _, e_holt = run(scorer(), x)
    _, e_plain = run(scorer(trend_beta=0.0), x)
    truth = 0.1 * t
    assert np.abs(e_holt[1000:] - truth[1000:]).mean() < 0.5
    assert np.abs(e_plain[1000:] - truth[1000:]).mean() > 3.0


def test_a_level_shift_scores_briefly_then_is_learned() -> None:
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.standard_normal(300), 20 + rng.standard_normal(300)])
    s, expected = run(scorer(), x)
    shift = 6  # shift_readings
    assert np.all(s[300 : 300 + shift] == 1.0)
    assert np.sum(s[300 + shift + 5 :] > 0) == 0
    assert expected[-1] == pytest.approx(20, abs=0.5)


def test_many_series_at_once_equal_one_at_a_time() -> None:
    rng = np.random.default_rng(6)
    m, n = 7, 120
    x = rng.standard_normal((m, n)) * rng.uniform(0.1, 5, (m, 1)) + rng.uniform(-9, 9, (m, 1))
    together = scorer(m)
    got = np.array([together.update(np.arange(m, dtype=np.int32), x[:, j])[0] for j in range(n)]).T
    for i in range(m):
        alone, _ = run(scorer(), x[i])
        np.testing.assert_array_equal(got[i], alone)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_scalar_path_is_bit_for_bit_the_vector_path(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.standard_normal(2000)) * 0.1 + rng.standard_normal(2000)
    x[rng.integers(0, 2000, 30)] += rng.choice([-40, 40], 30)  # outliers
    x[1200:] += 25  # a level shift
    x[0] = 99.0  # a first reading that is an anomaly
    vec, one = scorer(), scorer()
    idx = np.zeros(1, np.int32)
    for v in x:
        s_v, z_v, e_v, sc_v = vec.update(idx, np.array([v]))
        s_o, z_o, e_o, sc_o = one.update_one(0, float(v))
        assert (s_v[0], z_v[0], e_v[0], sc_v[0]) == (s_o, z_o, e_o, sc_o)
    for k, arr in vec.state().items():
        np.testing.assert_array_equal(arr, one.state()[k], err_msg=k)


def test_a_run_of_series_as_a_slice_equals_its_indexes() -> None:
    # generic passes a slice for a chunk of consecutive devices (views, no gathers)
    rng = np.random.default_rng(12)
    kw = dict(
        warmup_readings=5,
        alpha=0.1,
        trend_beta=0.1,
        huber_k=3.0,
        score_z_lo=4.0,
        score_z_hi=10.0,
        shift_z=4.0,
        shift_readings=3,
        min_scale=0.01,
    )
    a, b = RobustScorer(20, **kw), RobustScorer(20, **kw)
    for step in range(30):  # warm-up (first readings, median of three) and level shifts
        x = rng.normal(0, 1, 8) + (6.0 if step >= 15 else 0.0)
        x[step % 8] += 20.0  # an outlier somewhere in the run
        ra = a.update(np.arange(7, 15), x)
        rb = b.update(slice(7, 15), x)
        for u, v in zip(ra, rb, strict=True):
            np.testing.assert_array_equal(u, v)
    for k, v in a.state().items():
        np.testing.assert_array_equal(v, b.state()[k], err_msg=k)
    assert (a.state()["meta_"][7:15] & 0xFFFFFF).tolist() == [30] * 8
