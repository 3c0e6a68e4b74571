"""The console's JSON API on real PostgreSQL and SQLite: board, actions with audit, overview,
device page, silences, plans and suggestions, validation messages and the OpenAPI document."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gridwatch.domain import DeviceKind
from tests.console.conftest import (
    GRID_A,
    GRID_A2,
    GRID_B,
    STREET_A,
    Env,
    app_routes,
    write_readings,
)


def test_board_orders_red_yellow_green_then_newest_and_counts(env: Env) -> None:
    old_red = env.entrapment(GRID_A, 0)
    yellow = env.overflow(GRID_A, 0, tto_s=3000)  # within the hour: yellow
    new_red = env.entrapment(GRID_A, 1, floor=3)
    env.entrapment(GRID_B, 0)  # carl's grid: never on ann's board
    ann = env.login("ann")
    body = ann.get("/api/board").json()
    assert [(a["id"], a["grade"]) for a in body["items"]] == [
        (new_red, "red"),
        (old_red, "red"),
        (yellow, "yellow"),
    ]
    assert body["counts"] == {"red": 2, "yellow": 1, "green": 0, "total": 3}
    first = body["items"][0]
    assert first["place"] == {
        "street": "s01",
        "community": "s01c01",
        "grid": GRID_A,
        "building": first["place"]["building"],
        "floor": 3,
    }
    assert first["place"]["building"].startswith(GRID_A)
    assert first["device_kind"] == "elevator"
    assert first["headline"] == ["stopped for 40 s", "car at floor 3"]
    assert first["state"] == "open" and first["age_s"] >= 0
    yellow_row = body["items"][2]
    assert yellow_row["headline"][0] == "overflow in 50 min"
    # Filters: grade narrows the page, the counts keep every grade for the chips.
    reds = ann.get("/api/board", params={"grade": "red"}).json()
    assert [a["id"] for a in reds["items"]] == [new_red, old_red]
    assert reds["counts"]["total"] == 2 and reds["counts"]["yellow"] == 1
    kinds = ann.get("/api/board", params={"kind": "overflow_imminent"}).json()
    assert [a["id"] for a in kinds["items"]] == [yellow]
    assert kinds["counts"] == {"red": 0, "yellow": 1, "green": 0, "total": 1}


def test_board_pages_with_a_cursor(env: Env) -> None:
    ids = [env.entrapment(GRID_A, i) for i in range(5)]
    ann = env.login("ann")
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        body = ann.get("/api/board", params=params).json()
        seen += [a["id"] for a in body["items"]]
        assert body["counts"]["total"] == 5
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == ids[::-1]


def test_lifecycle_actions_are_audited_with_the_users_name(env: Env) -> None:
    alert = env.entrapment(GRID_A)
    ann = env.login("ann")
    r = ann.post(f"/api/alerts/{alert}/ack", json={"note": "calling the intercom"})
    assert r.status_code == 200 and r.json()["state"] == "acknowledged"
    assert r.json()["acked_by"] == "ann"
    again = ann.post(f"/api/alerts/{alert}/ack")
    assert again.status_code == 409
    assert "is acknowledged; cannot ack it" in again.json()["detail"]
    assert ann.post(f"/api/alerts/{alert}/start").json()["state"] == "in_progress"
    env.clock.advance(300)
    done = ann.post(f"/api/alerts/{alert}/resolve", json={"note": "freed at floor 7"})
    assert done.json()["state"] == "resolved" and done.json()["resolved_by"] == "ann"
    audit = ann.get(f"/api/alerts/{alert}").json()["audit"]
    assert [(e["action"], e["actor"], e["to_state"], e["note"]) for e in audit] == [
        ("opened", "gridwatch", "open", audit[0]["note"]),
        ("acknowledged", "ann", "acknowledged", "calling the intercom"),
        ("started", "ann", "in_progress", None),
        ("resolved", "ann", "resolved", "freed at floor 7"),
    ]
    # Resolved alerts leave the default board and show under state=resolved.
    assert ann.get("/api/board").json()["items"] == []
    resolved = ann.get("/api/board", params={"state": "resolved"}).json()["items"]
    assert [a["id"] for a in resolved] == [alert]


def test_bearer_token_works_without_csrf(env: Env) -> None:
    alert = env.entrapment(GRID_A)
    api = env.bearer("ann")
    assert api.get("/api/me").json()["csrf_token"] is None
    r = api.post(f"/api/alerts/{alert}/ack")
    assert r.status_code == 200 and r.json()["acked_by"] == "ann"


VALIDATION = [
    ("/api/alerts/{a}/resolve", {"note": "   "}, "body.note: String should have at least 1"),
    ("/api/alerts/{a}/resolve", {}, "body.note: Field required"),
    ("/api/alerts/{a}/ack", {"note": "x", "extra": 1}, "body.extra: Extra inputs are not"),
    ("/api/alerts/0/ack", {}, "path.alert_id: Input should be greater than or equal to 1"),
    ("/api/alerts/abc/ack", {}, "path.alert_id: Input should be a valid integer"),
    (
        "/api/devices/{d}/silence",
        {"duration_s": 5, "reason": "pump work"},
        "body.duration_s: Input should be greater than or equal to 60",
    ),
    (
        "/api/devices/{d}/silence",
        {"duration_s": 600, "reason": "x"},
        "body.reason: String should have at least 3",
    ),
    (
        "/api/devices/{d}/silence",
        {"duration_s": 600, "reason": "pump", "alerts": ["nope"]},
        "body.alerts.0: Input should be",
    ),
    (
        "/api/plans/activations",
        {"plan": "gas_leak", "level": "city", "area": "s01"},
        "body.level: Input should be 'street', 'community' or 'grid'",
    ),
    (
        "/api/plans/activations",
        {"plan": "flood", "level": "street", "area": "s01"},
        "plan 'flood' is not defined",
    ),
    (
        "/api/plans/activations",
        {"plan": "gas_leak", "level": "street", "area": "s01/x"},
        "body.area: String should match pattern",
    ),
]


@pytest.mark.parametrize(("path", "body", "message"), VALIDATION)
def test_validation_errors_are_422_with_a_clear_message(
    env: Env, path: str, body: dict[str, object], message: str
) -> None:
    alert = env.entrapment(GRID_A)
    device = env.service.get_alert(alert, _all()).alert.device_id
    sue = env.login("sue")
    r = sue.post(path.format(a=alert, d=device), json=body)
    assert r.status_code == 422, r.text
    assert message in r.json()["message"]


def test_query_validation_is_422_too(env: Env) -> None:
    ann = env.login("ann")
    for params, message in [
        ({"grade": "purple"}, "query.grade.0: Input should be 'red', 'yellow' or 'green'"),
        ({"limit": 0}, "query.limit: Input should be greater than or equal to 1"),
        ({"limit": 501}, "query.limit: Input should be less than or equal to 500"),
        ({"cursor": "1.2"}, "cursor = '1.2': not a cursor from a previous page"),
        ({"state": "closed"}, "query.state.0: Input should be 'open'"),
    ]:
        r = ann.get("/api/board", params=params)
        assert r.status_code == 422 and message in r.json()["message"], r.text


def test_overview_colours_each_grid_by_its_worst_open_alert(env: Env) -> None:
    env.overflow(GRID_A, 0, tto_s=3000)  # yellow
    env.entrapment(GRID_A)  # red
    env.overflow(GRID_A2, 0, tto_s=3000)  # yellow only
    env.entrapment(GRID_B)
    sue = env.login("sue")
    body = sue.get("/api/overview").json()
    tiles = {t["grid"]: t for t in body["grids"]}
    assert sorted(tiles) == env.registry.grids_of_street(STREET_A)
    assert tiles[GRID_A]["worst"] == "red" and tiles[GRID_A]["counts"]["total"] == 2
    assert tiles[GRID_A2]["worst"] == "yellow"
    assert tiles["s01c02g01"]["worst"] is None
    assert body["totals"] == {"red": 1, "yellow": 2, "green": 0, "total": 3}
    root = env.login("root").get("/api/overview").json()
    assert len(root["grids"]) == 8 and root["totals"]["total"] == 4


def test_device_page_has_readings_and_its_alerts(env: Env) -> None:
    dev = str(env.registry.device_ids[env.devices(GRID_A, DeviceKind.ELEVATOR)[0]])
    n = write_readings(env, dev, minutes=60, step_s=10)
    alert = env.entrapment(GRID_A)
    ann = env.login("ann")
    page = ann.get(f"/api/devices/{dev}").json()
    assert page["kind"] == "elevator" and page["place"]["grid"] == GRID_A
    assert [a["id"] for a in page["alerts"]] == [alert]
    assert page["constants"]["rated_speed_mps"] > 0 and page["floors"] > 0
    series = ann.get(f"/api/devices/{dev}/readings", params={"minutes": 60}).json()
    assert series["resolution"] == "raw" and len(series["ts_ms"]) == n
    assert set(series["fields"]) == {
        "position_m", "speed_mps", "vibration_mps2", "door_open", "occupancy", "load_kg"
    }  # fmt: skip
    assert series["units"]["speed_mps"] == "m/s"
    assert series["ts_ms"] == sorted(series["ts_ms"])
    assert series["until_ms"] == series["last_reading_ms"] + 1
    small = ann.get(f"/api/devices/{dev}/readings", params={"points": 50}).json()
    assert 40 <= len(small["ts_ms"]) <= 50  # downsampled for a chart
    # A device with no stored readings gives an empty series, not an error.
    other = str(env.registry.device_ids[env.devices(GRID_A, DeviceKind.SEWAGE)[0]])
    empty = ann.get(f"/api/devices/{other}/readings").json()
    assert empty["ts_ms"] == [] and empty["last_reading_ms"] is None


def test_silencing_a_device_is_recorded_on_its_alerts(env: Env) -> None:
    alert = env.entrapment(GRID_A)
    dev = env.service.get_alert(alert, _all()).alert.device_id
    ann = env.login("ann")
    r = ann.post(
        f"/api/devices/{dev}/silence",
        json={"duration_s": 3600, "reason": "lift maintenance, ticket 4411"},
    )
    assert r.status_code == 201, r.text
    s = r.json()
    assert (s["level"], s["target"], s["created_by"]) == ("device", dev, "ann")
    assert s["ends_ms"] - s["starts_ms"] == 3_600_000
    page = ann.get(f"/api/devices/{dev}").json()
    assert [x["id"] for x in page["silences"]] == [s["id"]]
    audit = ann.get(f"/api/alerts/{alert}").json()["audit"]
    assert audit[-1]["action"] == "silenced" and audit[-1]["actor"] == "ann"
    assert "lift maintenance, ticket 4411" in audit[-1]["note"]
    assert ann.post(f"/api/silences/{s['id']}/revoke").json() == {"ok": True}
    assert ann.get("/api/silences").json() == []
    assert ann.get(f"/api/alerts/{alert}").json()["audit"][-1]["action"] == "silence_ended"


def test_a_supervisor_activates_a_plan_and_each_grid_acknowledges_its_task(env: Env) -> None:
    sue = env.login("sue")
    r = sue.post(
        "/api/plans/activations",
        json={"plan": "urban_waterlogging", "level": "street", "area": STREET_A, "note": "storm"},
    )
    assert r.status_code == 201, r.text
    act = r.json()
    grids = env.registry.grids_of_street(STREET_A)
    assert [t["grid"] for t in act["tasks"]] == grids and act["acked"] == 0
    assert act["instructions"][0]["role"] == "grid_worker"
    # Each grid's dispatcher sees their own grid's task, and only that one.
    ann, bob, carl = env.login("ann"), env.login("bob"), env.login("carl")
    (mine,) = ann.get("/api/plans/activations").json()["activations"]
    assert [t["grid"] for t in mine["tasks"]] == [GRID_A] and mine["total"] == 1
    assert carl.get("/api/plans/activations").json()["activations"] == []
    r = ann.post(f"/api/plans/activations/{act['id']}/tasks/{GRID_A}/ack", json={"note": "on it"})
    assert r.status_code == 200 and r.json()["tasks"][0]["acked_by"] == "ann"
    assert ann.post(f"/api/plans/activations/{act['id']}/tasks/{GRID_A}/ack").status_code == 409
    assert bob.post(f"/api/plans/activations/{act['id']}/tasks/{GRID_A}/ack").status_code == 404
    status = sue.get(f"/api/plans/activations/{act['id']}").json()
    assert status["acked"] == 1 and status["total"] == len(grids)
    tiles = {t["grid"]: t["open_tasks"] for t in sue.get("/api/overview").json()["grids"]}
    assert tiles == {g: (0 if g == GRID_A else 1) for g in grids}
    # Activating again while active adds nothing; closing withdraws the rest.
    again = sue.post(
        "/api/plans/activations",
        json={"plan": "urban_waterlogging", "level": "street", "area": STREET_A},
    ).json()
    assert again["id"] == act["id"]
    closed = sue.post(f"/api/plans/activations/{act['id']}/close", json={"note": "receded"})
    assert closed.json()["state"] == "closed" and closed.json()["close_note"] == "receded"
    assert sue.get("/api/plans/activations").json()["activations"] == []
    everything = sue.get("/api/plans/activations", params={"state": "all"}).json()
    assert [a["id"] for a in everything["activations"]] == [act["id"]]


def test_only_supervisors_and_admins_run_plans(env: Env) -> None:
    ann = env.login("ann")
    body = {"plan": "gas_leak", "level": "grid", "area": GRID_A}
    r = ann.post("/api/plans/activations", json=body)
    assert r.status_code == 403 and "only supervisors" in r.json()["detail"]
    tom = env.login("tom")  # supervisor of the other street
    assert tom.post("/api/plans/activations", json=body).status_code == 404
    root = env.login("root")
    act = root.post("/api/plans/activations", json=body)
    assert act.status_code == 201
    assert ann.post(f"/api/plans/activations/{act.json()['id']}/close").status_code == 403


def test_area_correlation_suggests_the_plan_with_a_one_click_activation(env: Env) -> None:
    area_alert = env.waterlogging(STREET_A)
    sue = env.login("sue")
    (s,) = sue.get("/api/plans/suggestions").json()["suggestions"]
    assert (s["plan"], s["level"], s["area"]) == ("urban_waterlogging", "street", STREET_A)
    assert s["alert"]["id"] == area_alert and s["alert"]["place"]["grid"] is None
    assert env.login("tom").get("/api/plans/suggestions").json()["suggestions"] == []
    # The dispatchers of the street see the suggestion too (the button is the supervisor's).
    assert len(env.login("ann").get("/api/plans/suggestions").json()["suggestions"]) == 1
    r = sue.post(
        "/api/plans/activations",
        json={
            "plan": s["plan"],
            "level": s["level"],
            "area": s["area"],
            "source_alert_id": area_alert,
        },
    )
    assert r.status_code == 201 and r.json()["source_alert_id"] == area_alert
    assert sue.get("/api/plans/suggestions").json()["suggestions"] == []
    audit = sue.get(f"/api/alerts/{area_alert}").json()["audit"]
    assert audit[-1]["action"] == "plan_activated" and audit[-1]["actor"] == "sue"


def test_me_lists_the_scope(env: Env) -> None:
    me = env.login("sue").get("/api/me").json()
    assert me["role"] == "supervisor" and me["can_run_plans"] and me["streets"] == [STREET_A]
    assert [g["id"] for g in me["grids"]] == env.registry.grids_of_street(STREET_A)
    assert "trapped_passenger" in me["alert_kinds"]
    ann = env.login("ann").get("/api/me").json()
    assert [g["id"] for g in ann["grids"]] == [GRID_A] and ann["streets"] == []
    assert len(env.login("root").get("/api/me").json()["grids"]) == 8


def test_openapi_describes_every_api_route(env: Env) -> None:
    ann = env.login("ann")
    doc = ann.get("/api/openapi.json").json()
    assert doc["info"]["title"] == "gridwatch dispatcher console"
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    routes = {(m, p) for m, p, in_schema, _ in app_routes(env.app) if in_schema}
    assert routes and routes == documented
    assert "BoardOut" in doc["components"]["schemas"]


def test_the_page_and_its_assets_load_nothing_from_elsewhere(env: Env) -> None:
    c = env.client()
    page = c.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assets = [a for a in links if not a.startswith("#")]  # in-page routes
    assert assets and all(a.startswith("/static/") for a in assets), links
    for a in assets:
        r = c.get(a)
        assert r.status_code == 200, a
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", r.text), a


def _all() -> Any:
    from alerts.model import Scope

    return Scope.everything()
