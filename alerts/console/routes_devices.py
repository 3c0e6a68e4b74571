"""A device's page (place, constants, alerts, silences), its recent readings, and silences."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Depends, Path, Query

from alerts.console.audit import note_device_alerts
from alerts.console.convert import alert_out, silence_out
from alerts.console.deps import Console, Principal, console, principal
from alerts.console.schemas import (
    DeviceOut,
    OkOut,
    PlaceOut,
    SeriesOut,
    SilenceIn,
    SilenceOut,
)
from alerts.model import NotFoundError
from gridwatch.domain import FIELDS
from gridwatch.errors import StorageError
from storage import queries as readings

router = APIRouter(prefix="/api", tags=["devices"], dependencies=[Depends(principal)])

Ctx = Annotated[Console, Depends(console)]
Who = Annotated[Principal, Depends(principal)]
DeviceId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.\-]{1,32}$", description="device id")]
_CONSTANTS = ("floor_height_m", "rated_speed_mps", "depth_m", "overflow_level_m", "interval_s")


def _device(who: Principal, ctx: Console, device_id: str) -> int:
    """Dense index of a device inside the user's scope; 404 otherwise (same message)."""
    i = int(ctx.registry.index_of([device_id])[0])
    if i < 0 or not who.access.sees_grid(ctx.registry.grid_of(i)):
        raise NotFoundError(f"device {device_id!r} does not exist or is outside your grids")
    return i


@router.get(
    "/devices/{device_id}", response_model=DeviceOut, summary="A device, its alerts and silences"
)
def device(device_id: DeviceId, who: Who, ctx: Ctx) -> DeviceOut:
    reg = ctx.registry
    i = _device(who, ctx, device_id)
    place = reg.place(i)
    page = ctx.service.list_alerts(who.access.scope, device_id=device_id, limit=100)
    now = ctx.clock.now_ms()
    mine = {
        ("device", device_id),
        ("grid", place.grid),
        ("community", place.community),
        ("street", place.street),
    }
    if place.building:
        mine.add(("building", place.building))
    silences = [
        silence_out(s)
        for s in ctx.service.list_silences(who.access.scope)
        if (s.scope, s.target) in mine
    ]
    constants = {c: float(v) for c in _CONSTANTS if math.isfinite(v := float(getattr(reg, c)[i]))}
    floors = int(reg.floors[i])
    return DeviceOut(
        device_id=device_id,
        kind=reg.kind_of(i).value,
        place=PlaceOut(
            street=place.street,
            community=place.community,
            grid=place.grid,
            building=place.building,
            floor=None,
        ),
        floors=floors if floors >= 0 else None,
        constants=constants,
        alerts=[alert_out(a, reg, now) for a in page.items],
        silences=silences,
    )


def _downsample(
    ts: npt.NDArray[np.int64], cols: dict[str, npt.NDArray[Any]], points: int
) -> tuple[npt.NDArray[np.int64], dict[str, npt.NDArray[np.float64]]]:
    """At most ``points`` samples: the mean of each time bucket (a chart has ~600 px)."""
    values = {k: v.astype(np.float64) for k, v in cols.items()}
    if ts.size <= points:
        return ts, values
    edges = np.linspace(ts[0], ts[-1] + 1, points + 1)
    bucket = np.clip(np.searchsorted(edges, ts, side="right") - 1, 0, points - 1)
    n = np.bincount(bucket, minlength=points)
    keep = n > 0
    out_ts = (np.bincount(bucket, weights=ts, minlength=points)[keep] / n[keep]).astype(np.int64)
    out: dict[str, npt.NDArray[np.float64]] = {}
    for k, v in values.items():
        ok = ~np.isnan(v)
        s = np.bincount(bucket[ok], weights=v[ok], minlength=points)
        c = np.bincount(bucket[ok], minlength=points)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[k] = np.where(c > 0, s / np.maximum(c, 1), np.nan)[keep]
    return out_ts, out


@router.get(
    "/devices/{device_id}/readings",
    response_model=SeriesOut,
    summary="The device's recent readings (the window ends at its latest reading)",
)
def device_readings(
    *,
    device_id: DeviceId,
    who: Who,
    ctx: Ctx,
    minutes: Annotated[int, Query(ge=1, le=7 * 24 * 60)] = 60,
    until_ms: Annotated[int | None, Query(ge=0)] = None,
    points: Annotated[int, Query(ge=10, le=5000)] = 600,
) -> SeriesOut:
    i = _device(who, ctx, device_id)
    kind = ctx.registry.kind_of(i)
    last: int | None = None
    try:
        latest = readings.last_readings(ctx.storage, kind, device_ids=[device_id])
        if len(latest):
            last = int(latest.ts_ms[0])
        end = (
            until_ms
            if until_ms is not None
            else (last + 1 if last is not None else ctx.clock.now_ms())
        )
        since = end - minutes * 60_000
        data = readings.series(ctx.storage, device_id, since, end)
    except StorageError as exc:
        # The device is in the registry the console was given but not in the stored one.
        raise NotFoundError(f"device {device_id!r} has no stored readings") from exc
    fields: dict[str, Any]
    if data.resolution == "raw":
        cols = dict(data.columns)
    else:  # rollups: chart the per-minute average of each field
        cols = {f.name: data.columns[f"{f.name}_avg"] for f in FIELDS[kind]}
    ts, values = _downsample(data.ts_ms, cols, points)
    fields = {
        k: [None if not math.isfinite(x) else round(x, 4) for x in v.tolist()]
        for k, v in values.items()
    }
    return SeriesOut(
        device_id=device_id,
        kind=kind.value,
        resolution=data.resolution,
        since_ms=since,
        until_ms=end,
        ts_ms=ts.tolist(),
        fields=fields,
        units={f.name: f.unit for f in FIELDS[kind]},
        last_reading_ms=last,
    )


@router.post(
    "/devices/{device_id}/silence",
    response_model=SilenceOut,
    status_code=201,
    summary="Silence the device's alerts for a period, with a reason",
)
def silence_device(device_id: DeviceId, body: SilenceIn, who: Who, ctx: Ctx) -> SilenceOut:
    _device(who, ctx, device_id)
    s = ctx.service.silence(
        who.name,
        who.access.scope,
        level="device",
        target=device_id,
        reason=body.reason,
        duration_s=body.duration_s,
        alerts=[a.value for a in body.alerts],
    )
    until = datetime.fromtimestamp(s.ends_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    kinds = f" ({', '.join(a.value for a in body.alerts)})" if body.alerts else ""
    note_device_alerts(
        ctx.service,
        who.access.scope,
        device_id,
        user=who.name,
        action="silenced",
        note=f"device silenced{kinds} until {until}: {s.reason}",
    )
    ctx.hub.notify()
    return silence_out(s)


@router.get("/silences", response_model=list[SilenceOut], summary="Active silences in your scope")
def silences(who: Who, ctx: Ctx) -> list[SilenceOut]:
    return [silence_out(s) for s in ctx.service.list_silences(who.access.scope)]


@router.post(
    "/silences/{silence_id}/revoke",
    response_model=OkOut,
    summary="End a silence now",
    responses={404: {"description": "no such silence in your scope"}},
)
def revoke_silence(silence_id: Annotated[int, Path(ge=1, le=2**62)], who: Who, ctx: Ctx) -> OkOut:
    target = next(
        (s for s in ctx.service.list_silences(who.access.scope) if s.id == silence_id), None
    )
    ctx.service.revoke_silence(silence_id, who.name, who.access.scope)
    if target is not None and target.scope == "device":
        note_device_alerts(
            ctx.service,
            who.access.scope,
            target.target,
            user=who.name,
            action="silence_ended",
            note=f"silence #{silence_id} ended early",
        )
        ctx.hub.notify()
    return OkOut()
