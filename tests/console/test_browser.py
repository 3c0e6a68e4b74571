"""The console in a real browser: Playwright for Python driving Debian's chromium.

A dispatcher signs in, sees a red alert that the pipeline writes appear on the board
within 1 s without reloading (the live feed finds it by polling, as it would from a
separate pipeline process), acknowledges it, resolves it with a note and reads the audit
entry. A supervisor sees the waterlogging suggestion, activates the plan for the street
with one confirmation, and each grid's dispatcher sees their grid's task appear; an
acknowledgement shows up live on the supervisor's screen. Screenshots go to the test's
temp dir.

``.ci/run`` installs chromium (``apt-get install chromium``) when it is missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from alerts.console import ConsoleServer, create_app
from alerts.console.passwords import hash_password
from storage import users
from tests.console.conftest import (
    GRID_A,
    PASSWORD,
    STREET_A,
    TEST_COST,
    Env,
    cheap_options,
)

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LIVE_S = 1.0
"""The issue's bound: a new alert is on the board within 1 s."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def server(env: Env) -> Iterator[ConsoleServer]:
    app = create_app(
        env.storage, env.registry, service=env.service, clock=env.clock, options=cheap_options()
    )
    with ConsoleServer(app) as srv:
        yield srv


class Screen:
    """One signed-in browser context; JavaScript errors fail the test."""

    def __init__(self, browser: Browser, url: str, name: str) -> None:
        self.name = name
        self.errors: list[str] = []
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.page: Page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url)
        self.page.fill("#login-name", name)
        self.page.fill("#login-password", PASSWORD)
        self.page.click("#login-submit")
        expect(self.page.locator("#who")).to_contain_text(name)
        expect(self.page.locator("#live")).to_have_class("live on")  # the live feed is open

    def close(self) -> None:
        self.context.close()
        assert not self.errors, f"JavaScript errors for {self.name}: {self.errors}"


@pytest.fixture
def screens(browser: Browser, server: ConsoleServer) -> Iterator[Any]:
    opened: list[Screen] = []

    def open_screen(name: str) -> Screen:
        s = Screen(browser, server.url, name)
        opened.append(s)
        return s

    yield open_screen
    for s in opened:
        s.close()


@pytest.mark.parametrize("backend", ["postgres"])  # the API suite covers both backends
def test_dispatcher_sees_a_red_alert_live_then_acks_and_resolves_it(
    env: Env, screens: Any, tmp_path: Path
) -> None:
    ann = screens("ann")
    page = ann.page
    expect(page.locator("#board-empty")).to_be_visible()
    alert = env.entrapment(GRID_A, floor=11)  # the pipeline writes it; nobody pokes the console
    row = page.locator(f"tr.alert-row[data-id='{alert}']")
    expect(row).to_be_visible(timeout=LIVE_S * 1000)
    expect(row).to_have_class("alert-row red state-open fresh")
    expect(row).to_contain_text("trapped passenger")
    expect(row).to_contain_text("floor 11")
    expect(page.locator("#count-red")).to_have_text("1")
    page.screenshot(path=str(tmp_path / "dispatcher-board.png"))

    row.click()
    drawer = page.locator("#detail")
    expect(drawer).to_have_attribute("data-id", str(alert))
    page.click("#detail-actions [data-action='ack']")
    expect(drawer).to_have_attribute("data-state", "acknowledged")
    expect(row).to_contain_text("acknowledged")
    page.fill("#resolve-note", "passengers freed at floor 11, technician on site")
    page.click("#resolve-form [data-action='resolve']")
    expect(drawer).to_have_attribute("data-state", "resolved")
    entry = page.locator("#audit li[data-action='resolved']")
    expect(entry).to_contain_text("by ann")
    expect(entry).to_contain_text("passengers freed at floor 11, technician on site")
    expect(page.locator("#audit li[data-action='acknowledged']")).to_contain_text("by ann")
    page.screenshot(path=str(tmp_path / "dispatcher-resolved.png"))
    expect(row).to_be_hidden()  # resolved alerts leave the active board
    # The store agrees with the screen.
    audit = env.service.get_alert(alert, _everything()).audit
    assert [(e.action, e.actor) for e in audit][-2:] == [
        ("acknowledged", "ann"),
        ("resolved", "ann"),
    ]
    _keep(tmp_path)


@pytest.mark.parametrize("backend", ["postgres"])
def test_supervisor_activates_waterlogging_and_each_grid_sees_its_task(
    env: Env, screens: Any, tmp_path: Path
) -> None:
    grids = env.registry.grids_of_street(STREET_A)
    names = {GRID_A: "ann", "s01c01g02": "bob"}
    for g in grids:  # one dispatcher for every grid of the street
        if g not in names:
            names[g] = f"disp-{g}"
            users.create_user(
                env.storage,
                name=names[g],
                role="dispatcher",
                grids=[g],
                password_hash=hash_password(PASSWORD, TEST_COST),
                now_ms=env.clock.now_ms(),
            )
    dispatchers = {g: screens(names[g]) for g in grids}
    sue = screens("sue")
    page = sue.page

    area_alert = env.waterlogging(STREET_A)  # area correlation suggests the plan
    banner = page.locator(f".banner.suggest[data-suggestion='{area_alert}']")
    expect(banner).to_contain_text("Urban waterlogging suggested for street s01")
    page.screenshot(path=str(tmp_path / "supervisor-suggestion.png"))
    banner.locator("button[data-activate='urban_waterlogging']").click()
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(f"each of the {len(grids)} grids of street s01")
    page.click("#confirm-ok")  # the one confirmation
    expect(banner).to_be_hidden()

    (status,) = env.service.list_activations(_everything())
    assert status.activation["plan"] == "urban_waterlogging" and status.grids == grids
    for g, screen in dispatchers.items():
        task = screen.page.locator(f".banner.task[data-task='{status.id}/{g}']")
        expect(task).to_contain_text(f"PLAN URBAN WATERLOGGING — grid {g}")
        expect(task).to_contain_text("drainage crew")
        # a dispatcher sees their own grid's task only
        assert screen.page.locator(".banner.task").count() == 1
    dispatchers[GRID_A].page.screenshot(path=str(tmp_path / "dispatcher-task.png"))

    page.goto(page.url.split("#")[0] + "#/plans")
    card = page.locator(f".activation[data-activation='{status.id}']")
    expect(card.locator("[data-role='acked']")).to_have_text(f"0/{len(grids)} acknowledged")
    ann_task = dispatchers[GRID_A].page.locator(f".banner.task[data-task='{status.id}/{GRID_A}']")
    ann_task.locator("button[data-ack-task]").click()
    expect(ann_task).to_contain_text("acknowledged by ann")
    # The acknowledgement shows on the supervisor's screen without a reload.
    expect(card.locator("[data-role='acked']")).to_have_text(f"1/{len(grids)} acknowledged")
    expect(card.locator(f".taskchip.acked[data-grid='{GRID_A}']")).to_contain_text("ann")
    page.screenshot(path=str(tmp_path / "supervisor-plan.png"), full_page=True)
    _keep(tmp_path)


def _everything() -> Any:
    from alerts.model import Scope

    return Scope.everything()


def _keep(tmp_path: Path) -> None:
    """Copy screenshots where a human can look (GRIDWATCH_SCREENSHOTS=dir), if asked."""
    import os

    out = os.environ.get("GRIDWATCH_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        for png in tmp_path.glob("*.png"):
            shutil.copy(png, Path(out) / png.name)
    assert list(tmp_path.glob("*.png")), "no screenshot was saved"
