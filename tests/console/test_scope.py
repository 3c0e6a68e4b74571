"""Every endpoint checks scope server-side: the app's routes are enumerated, so a new endpoint
without a case here fails ``test_every_route_has_a_scope_case``.

Grid B (``s02c01g01``, street s02) has an alert, a silenced device, an active plan and a
waterlogging suggestion. Dispatcher ``ann`` (grid A) and supervisor ``sue`` (street s01)
must get 403/404 for each of B's resources and never find B's data in a list; nobody
gets anything without credentials; no cookie request changes state without the CSRF token.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from alerts.console import ConsoleServer, create_app
from alerts.model import Scope
from tests.console.conftest import GRID_A, GRID_B, STREET_B, Env, app_routes, cheap_options

PUBLIC = {
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/tokens"),
    ("GET", "/api/health"),
    ("GET", "/"),
}


@dataclass
class World:
    env: Env
    b_alert: int
    b_device: str
    b_silence: int
    b_activation: int
    b_suggestion: int
    b_audit: int
    next_elevator: int = 2


@pytest.fixture
def world(env: Env) -> World:
    env.entrapment(GRID_A)
    b_alert = env.entrapment(GRID_B)
    b_device = env.service.get_alert(b_alert, Scope.everything()).alert.device_id
    assert b_device is not None
    carl = env.login("carl")
    b_silence = carl.post(
        f"/api/devices/{b_device}/silence", json={"duration_s": 3600, "reason": "B works"}
    ).json()["id"]
    b_activation = (
        env.login("tom")
        .post("/api/plans/activations", json={"plan": "gas_leak", "level": "grid", "area": GRID_B})
        .json()["id"]
    )
    b_suggestion = env.waterlogging(STREET_B)
    b_audit = len(env.service.get_alert(b_alert, Scope.everything()).audit)
    return World(env, b_alert, b_device, b_silence, b_activation, b_suggestion, b_audit)


def _ids(items: list[dict[str, Any]]) -> set[int]:
    return {int(a["id"]) for a in items}


def _blocked(r: httpx.Response) -> None:
    assert r.status_code in (403, 404), (
        f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    )


# -- one check per route: `c` is the signed-in client of ann or sue ---------------------------

Check = Callable[[TestClient, World], None]


def check_logout(c: TestClient, w: World) -> None:
    carl = w.env.login("carl")
    assert c.post("/api/auth/logout").status_code == 200
    assert carl.get("/api/me").status_code == 200  # only one's own session ends
    assert c.get("/api/me").status_code == 401


def check_me(c: TestClient, w: World) -> None:
    assert GRID_B not in {g["id"] for g in c.get("/api/me").json()["grids"]}


def check_openapi(c: TestClient, w: World) -> None:
    r = c.get("/api/openapi.json")
    assert r.status_code == 200 and GRID_B not in r.text


def check_board(c: TestClient, w: World) -> None:
    assert w.b_alert not in _ids(c.get("/api/board").json()["items"])
    assert w.b_alert not in _ids(c.get("/api/board", params={"state": "resolved"}).json()["items"])
    _blocked(c.get("/api/board", params={"grid": GRID_B}))
    assert c.get("/api/board", params={"device": w.b_device}).json()["items"] == []


def check_alert(c: TestClient, w: World) -> None:
    _blocked(c.get(f"/api/alerts/{w.b_alert}"))


def _still_open(w: World) -> None:
    alert = w.env.service.get_alert(w.b_alert, Scope.everything())
    assert alert.alert.state == "open" and len(alert.audit) == w.b_audit


def check_ack(c: TestClient, w: World) -> None:
    _blocked(c.post(f"/api/alerts/{w.b_alert}/ack"))
    _still_open(w)


def check_start(c: TestClient, w: World) -> None:
    _blocked(c.post(f"/api/alerts/{w.b_alert}/start"))
    _still_open(w)


def check_resolve(c: TestClient, w: World) -> None:
    _blocked(c.post(f"/api/alerts/{w.b_alert}/resolve", json={"note": "not mine"}))
    _still_open(w)


def check_overview(c: TestClient, w: World) -> None:
    body = c.get("/api/overview").json()
    assert GRID_B not in {t["grid"] for t in body["grids"]}
    assert body["totals"]["total"] >= 1  # grid A's alert is there


def check_device(c: TestClient, w: World) -> None:
    _blocked(c.get(f"/api/devices/{w.b_device}"))


def check_readings(c: TestClient, w: World) -> None:
    _blocked(c.get(f"/api/devices/{w.b_device}/readings"))


def check_silence(c: TestClient, w: World) -> None:
    before = len(w.env.service.list_silences(Scope.everything()))
    _blocked(
        c.post(f"/api/devices/{w.b_device}/silence", json={"duration_s": 600, "reason": "x y"})
    )
    assert len(w.env.service.list_silences(Scope.everything())) == before


def check_silences(c: TestClient, w: World) -> None:
    assert w.b_silence not in _ids(c.get("/api/silences").json())


def check_revoke(c: TestClient, w: World) -> None:
    _blocked(c.post(f"/api/silences/{w.b_silence}/revoke"))
    assert w.b_silence in {s.id for s in w.env.service.list_silences(Scope.everything())}


def check_plans(c: TestClient, w: World) -> None:
    r = c.get("/api/plans")  # the plan definitions: no grid data in them
    assert r.status_code == 200 and len(r.json()["plans"]) == 5 and GRID_B not in r.text


def check_activations(c: TestClient, w: World) -> None:
    for state in ("active", "all"):
        acts = c.get("/api/plans/activations", params={"state": state}).json()["activations"]
        assert w.b_activation not in _ids(acts)
        assert all(t["grid"] != GRID_B for a in acts for t in a["tasks"])


def check_activate(c: TestClient, w: World) -> None:
    for level, area in (("grid", GRID_B), ("street", STREET_B), ("community", "s02c01")):
        _blocked(
            c.post(
                "/api/plans/activations",
                json={"plan": "high_rise_fire", "level": level, "area": area},
            )
        )
    titles = [s.activation["plan"] for s in w.env.service.list_activations(Scope.everything())]
    assert "high_rise_fire" not in titles


def check_activation(c: TestClient, w: World) -> None:
    _blocked(c.get(f"/api/plans/activations/{w.b_activation}"))


def check_close(c: TestClient, w: World) -> None:
    _blocked(c.post(f"/api/plans/activations/{w.b_activation}/close"))
    assert (
        w.env.service.plan_status(w.b_activation, Scope.everything()).activation["state"]
        == "active"
    )


def check_task_ack(c: TestClient, w: World) -> None:
    _blocked(c.post(f"/api/plans/activations/{w.b_activation}/tasks/{GRID_B}/ack"))
    _blocked(c.post(f"/api/plans/activations/{w.b_activation}/tasks/{GRID_A}/ack"))
    status = w.env.service.plan_status(w.b_activation, Scope.everything())
    assert status.acked == 0


def check_suggestions(c: TestClient, w: World) -> None:
    found = c.get("/api/plans/suggestions").json()["suggestions"]
    assert w.b_suggestion not in {s["alert"]["id"] for s in found}


def check_events(c: TestClient, w: World) -> None:
    """The live feed of ann/sue never carries grid B's events (real server, real stream)."""
    secret = c.cookies.get("gw_session")
    env = w.env
    app = create_app(
        env.storage, env.registry, service=env.service, clock=env.clock, options=cheap_options()
    )  # one app per server: the TestClient's app keeps its own event loop
    with ConsoleServer(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        http.cookies.set("gw_session", secret or "")
        events: list[tuple[str, dict[str, Any]]] = []
        got_a = threading.Event()

        def read() -> None:
            with contextlib.suppress(httpx.HTTPError), http.stream("GET", "/api/events") as r:
                events.append(("status", {"code": r.status_code}))
                kind = ""
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        events.append((kind, json.loads(line[6:])))
                        if kind == "alert" and events[-1][1]["grid"] == GRID_A:
                            got_a.set()
                            return

        reader = threading.Thread(target=read, name="sse-reader")
        reader.start()
        _wait(lambda: any(k == "hello" for k, _ in events))
        nth = w.next_elevator
        w.next_elevator += 1
        b2 = w.env.entrapment(GRID_B, nth)  # B first: it would arrive before A's
        a2 = w.env.entrapment(GRID_A, nth)
        srv.app.state.console.hub.notify()
        assert got_a.wait(20), events
        reader.join(10)
    assert events[0] == ("status", {"code": 200})
    alert_ids = {d["alert_id"] for k, d in events if k == "alert"}
    assert a2 in alert_ids and b2 not in alert_ids and w.b_alert not in alert_ids


def _wait(cond: Callable[[], bool], timeout_s: float = 20) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


CASES: dict[tuple[str, str], Check] = {
    ("POST", "/api/auth/logout"): check_logout,
    ("GET", "/api/me"): check_me,
    ("GET", "/api/openapi.json"): check_openapi,
    ("GET", "/api/board"): check_board,
    ("GET", "/api/alerts/{alert_id}"): check_alert,
    ("POST", "/api/alerts/{alert_id}/ack"): check_ack,
    ("POST", "/api/alerts/{alert_id}/start"): check_start,
    ("POST", "/api/alerts/{alert_id}/resolve"): check_resolve,
    ("GET", "/api/overview"): check_overview,
    ("GET", "/api/devices/{device_id}"): check_device,
    ("GET", "/api/devices/{device_id}/readings"): check_readings,
    ("POST", "/api/devices/{device_id}/silence"): check_silence,
    ("GET", "/api/silences"): check_silences,
    ("POST", "/api/silences/{silence_id}/revoke"): check_revoke,
    ("GET", "/api/plans"): check_plans,
    ("GET", "/api/plans/activations"): check_activations,
    ("POST", "/api/plans/activations"): check_activate,
    ("GET", "/api/plans/activations/{activation_id}"): check_activation,
    ("POST", "/api/plans/activations/{activation_id}/close"): check_close,
    ("POST", "/api/plans/activations/{activation_id}/tasks/{grid}/ack"): check_task_ack,
    ("GET", "/api/plans/suggestions"): check_suggestions,
    ("GET", "/api/events"): check_events,
}


def routes(env: Env) -> set[tuple[str, str]]:
    return {(m, p) for m, p, _, _ in app_routes(env.app)}


def test_every_route_has_a_scope_case(env: Env) -> None:
    found = routes(env)
    missing = found - PUBLIC - set(CASES)
    assert not missing, f"routes without a scope test: {sorted(missing)}"
    assert not (set(CASES) | PUBLIC) - found, "cases for routes that no longer exist"


def test_grid_b_is_out_of_reach_on_every_route(world: World) -> None:
    """One world per backend, every route for both users (a world takes a while to build)."""
    failures = []
    for user in ("ann", "sue"):
        for route in sorted(CASES):
            try:
                CASES[route](world.env.login(user), world)
            except AssertionError as exc:
                failures.append(f"{user} {route[0]} {route[1]}: {exc}")
    assert not failures, "\n".join(failures)


def _concrete(path: str, w: World) -> str:
    return path.format(
        alert_id=w.b_alert,
        device_id=w.b_device,
        silence_id=w.b_silence,
        activation_id=w.b_activation,
        grid=GRID_B,
    )


@pytest.fixture
def anonymous(world: World) -> Iterator[TestClient]:
    yield world.env.client()


def test_every_route_but_sign_in_needs_credentials(world: World, anonymous: TestClient) -> None:
    checked = 0
    for method, path in sorted(routes(world.env) - PUBLIC):
        for headers in (
            {},
            {"Authorization": "Bearer gwt_forged"},
            {"Cookie": "gw_session=forged"},
        ):
            r = anonymous.request(method, _concrete(path, world), headers=headers, json={})
            assert r.status_code == 401, f"{method} {path} {headers}: {r.status_code}"
            assert r.headers["www-authenticate"].startswith("Bearer")
            checked += 1
    assert checked == 3 * len(CASES)


def test_every_state_change_with_a_cookie_needs_the_csrf_token(world: World) -> None:
    ann = world.env.login("ann")
    token = ann.headers.pop("X-CSRF-Token")
    unsafe = sorted((m, p) for m, p in routes(world.env) - PUBLIC if m != "GET")
    assert len(unsafe) >= 9  # every POST; a new one is covered automatically
    for method, path in unsafe:
        for headers in ({}, {"X-CSRF-Token": token[:-2] + "xx"}):
            r = ann.request(method, _concrete(path, world), headers=headers, json={})
            assert r.status_code == 403, f"{method} {path}: {r.status_code} {r.text}"
            assert "CSRF" in r.json()["detail"]
    assert ann.get("/api/me").status_code == 200  # still signed in: nothing was changed
