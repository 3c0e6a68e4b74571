"""Elevator detector: hand-built scenarios for each detection and each look-alike."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.config import DetectorConfig, load_config
from detectors.elevator import ElevatorDetector
from gridwatch.batch import Detections, ReadingBatch
from gridwatch.domain import DetectionKind, DeviceKind
from gridwatch.registry import Registry
from tests.detectors.conftest import T0, batch

K = DetectionKind


def readings(
    reg: Registry,
    device: str,
    times_s: list[float],
    *,
    position_m: float | list[float],
    speed_mps: float | list[float] = 0.0,
    door_open: float | list[float] = 0.0,
    occupancy: float | list[float] = 0.0,
    vibration_mps2: float | list[float] | None = None,
    load_kg: float | list[float] = float("nan"),
    jitter: bool = True,
) -> ReadingBatch:
    """Readings of one car at ``times_s`` after T0; a live sensor jitters slightly."""
    n = len(times_s)

    def col(v: float | list[float]) -> list[float]:
        return list(v) if isinstance(v, list) else [v] * n

    rng = np.random.default_rng(len(times_s))
    vib = col(vibration_mps2) if vibration_mps2 is not None else list(0.1 + 0.001 * rng.random(n))
    pos = [p + 0.001 * rng.standard_normal() * jitter for p in col(position_m)]
    return batch(
        reg,
        DeviceKind.ELEVATOR,
        [device] * n,
        [T0 + int(t * 1000) for t in times_s],
        position_m=pos,
        speed_mps=col(speed_mps),
        vibration_mps2=vib,
        door_open=col(door_open),
        occupancy=col(occupancy),
        load_kg=col(load_kg),
    )


def kinds(det: Detections) -> set[DetectionKind]:
    return {DetectionKind.from_code(int(k)) for k in det.kind}


def of_kind(det: Detections, kind: DetectionKind) -> Detections:
    return det.take(np.flatnonzero(det.kind == kind.code))


@pytest.fixture
def el(tiny: Registry, cfg: DetectorConfig) -> ElevatorDetector:
    return ElevatorDetector(tiny, cfg.elevator)


def test_trapped_between_floors_fires_at_30_s_not_before(
    el: ElevatorDetector, tiny: Registry
) -> None:
    # stopped 1.4 m above floor 3's landing (6.0 m), doors shut, two people inside
    b = readings(tiny, "el1", [0, 10, 20, 29.9], position_m=7.4, occupancy=2)
    assert K.ENTRAPMENT not in kinds(el.update(b))
    det = of_kind(
        el.update(readings(tiny, "el1", [30.0], position_m=7.4, occupancy=2)), K.ENTRAPMENT
    )
    assert len(det) == 1
    row = det.rows()[0]
    assert row["evidence"]["stopped_s"] == pytest.approx(30.0)
    assert row["evidence"]["occupancy_persons"] == 2
    assert row["evidence"]["at_landing"] == 0
    assert row["evidence"]["floor_no"] == 3  # nearest landing 6.0 m = 3rd floor
    assert row["evidence"]["landing_offset_m"] == pytest.approx(1.4, abs=0.01)


def test_normal_stop_at_landing_doors_open_is_not_entrapment(
    el: ElevatorDetector, tiny: Registry
) -> None:
    # arrives at floor 4 (9.0 m), doors open at once, people leave over 20 s, doors close
    times = [0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 25, 30, 40, 50, 60, 70]
    door = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    occ = [3, 3, 3, 3, 3, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    speed = [1.0, 0.6, 0.2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    pos = [6.5, 7.8, 8.8, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0]
    det = el.update(
        readings(tiny, "el1", times, position_m=pos, speed_mps=speed, door_open=door, occupancy=occ)
    )
    assert len(det) == 0
    assert len(el.tick(T0 + 120_000)) == 0


def test_doors_held_open_by_passengers_is_not_entrapment(
    el: ElevatorDetector, tiny: Registry
) -> None:
    times = list(np.arange(0, 125, 5.0))
    det = el.update(readings(tiny, "el1", times, position_m=9.0, door_open=1.0, occupancy=4))
    assert len(det) == 0
    assert len(el.tick(T0 + 125_000)) == 0


def test_empty_car_stopped_for_inspection_is_a_fault_not_entrapment(
    el: ElevatorDetector, tiny: Registry
) -> None:
    times = list(np.arange(0, 130, 10.0))
    det = el.update(readings(tiny, "el1", times, position_m=10.4, occupancy=0, load_kg=1.5))
    assert K.ENTRAPMENT not in kinds(det)
    stop = of_kind(det, K.STOPPED_BETWEEN_FLOORS)
    assert len(stop) > 0
    assert stop.evidence["stopped_s"].min() >= 60.0  # stopped_between_s
    assert len(of_kind(el.tick(T0 + 130_000), K.ENTRAPMENT)) == 0


def test_load_cell_counts_as_occupied_when_people_counter_says_zero(
    el: ElevatorDetector, tiny: Registry
) -> None:
    times = [0, 10, 20, 30]
    det = el.update(readings(tiny, "el1", times, position_m=10.4, occupancy=0, load_kg=140.0))
    assert K.ENTRAPMENT in kinds(det)


def test_doors_failing_to_open_at_a_landing(el: ElevatorDetector, tiny: Registry) -> None:
    times = [0, 10, 20, 30, 40]
    det = of_kind(
        el.update(readings(tiny, "el2", times, position_m=12.0, occupancy=1)), K.ENTRAPMENT
    )
    assert len(det) == 2  # at 30 s and 40 s: emitted while it holds
    assert set(det.evidence["at_landing"].tolist()) == {1.0}


def test_entrapment_on_the_timer_between_an_idle_cars_reports(
    el: ElevatorDetector, tiny: Registry
) -> None:
    el.update(readings(tiny, "el1", [0, 10, 20], position_m=7.4, occupancy=2))
    assert len(el.tick(T0 + 29_000)) == 0
    det = el.tick(T0 + 30_500)
    assert det.rows()[0]["kind"] == K.ENTRAPMENT
    assert det.rows()[0]["evidence"]["stopped_s"] == pytest.approx(30.5)
    # silent for longer than offline_factor * interval_s: offline wins, no evidence left
    assert len(el.tick(T0 + 20_000 + 31_000)) == 0


def test_a_frozen_sensor_repeating_one_reading_is_not_entrapment(
    el: ElevatorDetector, tiny: Registry
) -> None:
    # stuck sensor: the exact same (occupied, stopped, doors shut) reading every 10 s
    times = list(np.arange(0, 200, 10.0))
    det = el.update(
        readings(
            tiny, "el1", times, position_m=7.4, occupancy=2, vibration_mps2=0.137, jitter=False
        )
    )
    assert K.ENTRAPMENT not in kinds(det)


def test_overspeed_against_rated_speed(el: ElevatorDetector, tiny: Registry) -> None:
    # el2 is rated 1.75 m/s: 1.9 is 8.6 % over (fine), 2.1 is 20 % over
    det = el.update(
        readings(tiny, "el2", [0, 1, 2], position_m=[3, 5, 7], speed_mps=[1.75, 1.9, 2.1])
    )
    over = of_kind(det, K.OVERSPEED)
    assert len(over) == 1
    assert over.evidence["speed_ratio"][0] == pytest.approx(1.2, abs=1e-6)
    assert over.evidence["rated_speed_mps"][0] == pytest.approx(1.75)
    assert 0 < over.score[0] < 1


def test_door_open_while_moving(el: ElevatorDetector, tiny: Registry) -> None:
    det = el.update(
        readings(
            tiny,
            "el1",
            [0, 1, 2],
            position_m=[3, 3.5, 4.5],
            speed_mps=[0.2, 0.8, 1.0],
            door_open=1.0,
        )
    )
    dm = of_kind(det, K.DOOR_OPEN_MOVING)
    assert dm.evidence["speed_mps"].tolist() == pytest.approx([0.8, 1.0])


def test_repeated_door_reopen_cycles_at_one_stop(el: ElevatorDetector, tiny: Registry) -> None:
    # open 3 s, closed 2 s, open again ... without the car moving
    door = [1, 0, 1, 0, 1, 0, 1, 0]
    times = [0, 3, 5, 8, 10, 13, 15, 18]
    det = of_kind(
        el.update(readings(tiny, "el1", times, position_m=9.0, door_open=door, occupancy=1)),
        K.DOOR_REOPEN_CYCLES,
    )
    assert len(det) > 0
    first = det.rows()[0]
    assert first["ts_ms"] == T0 + 15_000  # the third re-opening
    assert first["evidence"]["reopen_count"] == 3


def test_reopens_separated_by_trips_do_not_accumulate(el: ElevatorDetector, tiny: Registry) -> None:
    door = [1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1]
    speed = [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0]
    pos = [9, 9, 9, 9, 10.5, 12, 12, 12, 12, 12, 10.5, 9, 9]
    times = [0, 3, 5, 8, 12, 16, 17, 20, 22, 25, 28, 32, 33]
    det = el.update(readings(tiny, "el1", times, position_m=pos, speed_mps=speed, door_open=door))
    assert K.DOOR_REOPEN_CYCLES not in kinds(det)


def test_gradual_vibration_rise_found_long_before_the_hard_threshold(tiny: Registry) -> None:
    cfg = load_config()
    el = ElevatorDetector(tiny, cfg.elevator)
    rng = np.random.default_rng(3)
    base = 0.2
    # 20 min of normal cruising readings, then a 1 %/min rise
    times = np.arange(0, 4 * 3600, 5.0)
    wear = 1.0 + np.clip((times - 1200) / 60, 0, None) * 0.01
    vib = base * wear * (1 + 0.1 * rng.standard_normal(times.size))
    b = readings(tiny, "el1", list(times), position_m=6.0, speed_mps=1.0, vibration_mps2=list(vib))
    det = of_kind(el.update(b), K.VIBRATION_RISE)
    assert len(det) > 0
    first = det.rows()[0]
    ratio = first["evidence"]["vibration_baseline_mps2"]
    assert ratio == pytest.approx(base, rel=0.1)  # the baseline did not follow the rise
    t_s = (first["ts_ms"] - T0) / 1000
    assert 1200 < t_s < 1200 + 40 * 60  # within 40 min, at under +40 %
    assert first["evidence"]["vibration_mps2"] < cfg.elevator.vibration_hard_mps2
    # and nothing fired in the normal part
    assert det.ts_ms.min() > T0 + 1_200_000


def test_steady_vibration_never_fires(tiny: Registry, cfg: DetectorConfig) -> None:
    el = ElevatorDetector(tiny, cfg.elevator)
    rng = np.random.default_rng(4)
    times = np.arange(0, 6 * 3600, 5.0)
    vib = 0.25 * (1 + 0.1 * rng.standard_normal(times.size))
    det = el.update(
        readings(tiny, "el3", list(times), position_m=6.0, speed_mps=2.5, vibration_mps2=list(vib))
    )
    assert K.VIBRATION_RISE not in kinds(det)


def test_first_reading_can_be_an_anomaly(el: ElevatorDetector, tiny: Registry) -> None:
    # a car that joins mid-stream already overspeeding with the doors open
    det = el.update(readings(tiny, "el3", [0], position_m=20.0, speed_mps=3.5, door_open=1.0))
    assert {K.OVERSPEED, K.DOOR_OPEN_MOVING} <= kinds(det)


def test_nan_speed_never_fires_and_never_poisons_state(
    el: ElevatorDetector, tiny: Registry
) -> None:
    nan = float("nan")
    det = el.update(
        readings(tiny, "el1", [0, 10, 20, 30, 40], position_m=7.4, speed_mps=nan, occupancy=2)
    )
    assert len(det) == 0
    assert np.isfinite(el.cusum_).all()
    # a good reading afterwards starts a fresh episode
    det = el.update(readings(tiny, "el1", [50, 60, 70, 80], position_m=7.4, occupancy=2))
    assert of_kind(det, K.ENTRAPMENT).evidence["stopped_s"].tolist() == [30.0]


def test_devices_joining_mid_stream_keep_their_own_state(
    el: ElevatorDetector, tiny: Registry
) -> None:
    el.update(readings(tiny, "el1", [0, 10, 20], position_m=7.4, occupancy=2))
    # el2 appears at 25 s, stopped between floors too
    el.update(readings(tiny, "el2", [25], position_m=4.4, occupancy=1))
    det = el.update(
        batch(
            tiny,
            DeviceKind.ELEVATOR,
            ["el1", "el2"],
            [T0 + 30_000, T0 + 30_000],
            position_m=[7.4, 4.4],
            speed_mps=[0, 0],
            vibration_mps2=[0.11, 0.12],
            door_open=[0, 0],
            occupancy=[2, 1],
        )
    )
    trapped = of_kind(det, K.ENTRAPMENT)
    assert tiny.device_ids[trapped.device].tolist() == ["el1"]


def test_wrong_kind_batch_is_refused(el: ElevatorDetector, tiny: Registry) -> None:
    with pytest.raises(ValueError, match="got a sewage batch"):
        el.update(ReadingBatch.empty(DeviceKind.SEWAGE))
    bad = readings(tiny, "el1", [0], position_m=3.0)
    bad = ReadingBatch(bad.kind, tiny.index_of(np.array(["sw1"])), bad.ts_ms, bad.fields)
    with pytest.raises(ValueError, match="not elevator devices"):
        el.update(bad)


def test_vibration_readings_learned_are_counted_per_motion_state_and_saturate(
    tiny: Registry, cfg: DetectorConfig
) -> None:
    el = ElevatorDetector(tiny, cfg.elevator)
    li = el.index.local_of[tiny.index("el1")]
    times = list(np.arange(0, 300 * 5.0, 5.0))
    el.update(readings(tiny, "el1", times, position_m=6.0))  # parked: the stopped baseline
    assert el.vib_n_[li].tolist() == [255, 0]
    el.update(readings(tiny, "el1", [1600.0, 1605.0], position_m=9.0, speed_mps=1.0))
    assert el.vib_n_[li].tolist() == [255, 2]  # cruising at rated speed: its own count
