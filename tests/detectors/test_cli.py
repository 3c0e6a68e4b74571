"""``gridwatch score-csv``: one pass, no look-ahead, the generic detector's score."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from detectors.config import load_config
from detectors.robust import RobustScorer
from gridwatch.cli import main


def write_series(path: Path, values: list[str], header: bool = True) -> None:
    lines = ["timestamp,value"] if header else []
    lines += [f"{1_780_000_000_000 + i * 10_000},{v}" for i, v in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")


def read_scores(path: Path) -> list[list[str]]:
    with path.open() as fh:
        return list(csv.reader(fh))


@pytest.fixture
def series() -> list[float]:
    rng = np.random.default_rng(0)
    x = 5 + np.cumsum(rng.normal(0, 0.01, 600)) + rng.normal(0, 0.05, 600)
    x[400] += 3.0
    return [round(float(v), 4) for v in x]


def test_scores_match_the_streaming_detector(tmp_path: Path, series: list[float]) -> None:
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_series(src, [str(v) for v in series])
    assert main(["score-csv", str(src), str(out)]) == 0
    rows = read_scores(out)
    assert rows[0] == ["timestamp", "value", "anomaly_score"]
    got = np.array([float(r[2]) for r in rows[1:]])
    g = load_config().generic
    rs = RobustScorer(
        1,
        warmup_readings=g.warmup_readings,
        alpha=g.alpha,
        trend_beta=g.trend_beta,
        huber_k=g.huber_k,
        score_z_lo=g.score_z_lo,
        score_z_hi=g.score_z_hi,
        shift_z=g.shift_z,
        shift_readings=g.shift_readings,
        min_scale=g.series_min_scale,
    )
    idx = np.zeros(1, np.int32)
    want = np.array([rs.update(idx, np.array([v]))[0][0] for v in series])
    np.testing.assert_allclose(got, want, atol=5e-5)  # written with 4 decimals
    assert got[400] == 1.0
    assert (got[:20] == 0).all()  # warm-up


def test_no_look_ahead(tmp_path: Path, series: list[float]) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_series(a, [str(v) for v in series])
    write_series(b, [str(v) for v in series[:300]])
    main(["score-csv", str(a), str(tmp_path / "a_out.csv")])
    main(["score-csv", str(b), str(tmp_path / "b_out.csv")])
    full = read_scores(tmp_path / "a_out.csv")[1:301]
    prefix = read_scores(tmp_path / "b_out.csv")[1:]
    assert full == prefix  # the first 300 scores do not depend on what follows


def test_missing_values_keep_their_row_and_get_no_score(tmp_path: Path) -> None:
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_series(src, ["1.0", "", "nan", "1.1", "abc"], header=False)
    assert main(["score-csv", str(src), str(out)]) == 0
    rows = read_scores(out)[1:]
    assert [r[1] for r in rows] == ["1.0", "", "nan", "1.1", "abc"]
    assert [r[2] for r in rows] == ["0.0000", "", "", "0.0000", ""]


def test_bad_rows_and_files_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.csv"
    src.write_text("timestamp,value\n1,2\n3,4,5\n")
    assert main(["score-csv", str(src), str(tmp_path / "o.csv")]) == 1
    assert "in.csv:3: expected 2 columns (timestamp,value), got 3" in capsys.readouterr().err
    assert main(["score-csv", str(tmp_path / "nope.csv"), str(tmp_path / "o.csv")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["score-csv", str(src), str(tmp_path / "o.csv"), "--channel", "sewage.depth"]) == 1
    assert "--channel 'sewage.depth': not one of" in capsys.readouterr().err


def test_channel_resolution_sets_the_scale_floor(tmp_path: Path) -> None:
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_series(src, ["0.500"] * 30 + ["0.503"])  # a 3 mm step on a flat level
    main(["score-csv", str(src), str(out)])
    raw = float(read_scores(out)[-1][2])
    main(["score-csv", str(src), str(out), "--channel", "sewage.level_m"])
    floored = float(read_scores(out)[-1][2])
    assert raw == 1.0  # no floor: a 3 mm step on a flat series is "infinitely" anomalous
    assert floored == 0.0  # 3 mm is below the 5 mm resolution of a level sensor
