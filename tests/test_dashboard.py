"""The dashboard in a real browser: headless Chromium (Debian's ``chromium`` and ``chromedriver``,
driven by Selenium) loads ``/`` from a running service with simulated charge points and we check
what a person on duty would see: the site, the limit, every point with its state and current,
the load chart, the plan ahead, the KPIs; then a grid operator cuts the limit and the page shows
the new limit and who set it.

Without chromium the test is skipped, unless ``NOXBLOCK_REQUIRE_BROWSER`` is set (CI sets it;
``make test`` installs chromium when it can).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from noxblock import serve
from noxblock.auth import TokenStore
from noxblock.live import ControlSettings
from ocpp_gateway.simulator import Fleet, ManualClock, PointSpec, SimSession
from scheduler.loaders import load_site

pytestmark = pytest.mark.asyncio

T0 = datetime(2024, 5, 6, 18, 0, tzinfo=UTC)
WAIT_S = 40.0

SITE = """
[site]
id = "kaiserstrasse"
voltage_v = 230.0
max_current_a = 50.0
""" + "".join(
    f"""
[[charge_points]]
id = "LP0{i}"
phases = 3
phase_rotation = "{rot}"
max_current_a = 16.0
"""
    for i, rot in ((1, "L1L2L3"), (2, "L2L3L1"), (3, "L3L1L2"))
)


def _browser() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture
def browser_paths() -> tuple[str, str]:
    found = _browser()
    if found is None:
        if os.environ.get("NOXBLOCK_REQUIRE_BROWSER"):
            pytest.fail("NOXBLOCK_REQUIRE_BROWSER is set but chromium/chromedriver are not installed")
        pytest.skip("chromium and chromedriver not installed (apt-get install chromium chromium-driver)")
    return found


@pytest_asyncio.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[serve.Services, Fleet, ManualClock, Path]]:
    site_path = tmp_path / "site.toml"
    site_path.write_text(SITE)
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(["--site", str(site_path), "--data-dir", str(tmp_path / "var")])
    clock = ManualClock(T0)
    services = await serve.start_services(
        serve.build_config(args),
        tmp_path / "var",
        port=0,
        api_port=0,
        site_config=load_site(site_path),
        control=ControlSettings(step=timedelta(minutes=5), horizon=timedelta(hours=6), coarse_step=None),
        clock=clock,
    )
    m = timedelta(minutes=1)
    sessions = {
        "LP01": [SimSession(T0 + 2 * m, T0 + 300 * m, 30.0, id_tag="TAG-1")],
        "LP02": [SimSession(T0 + 3 * m, T0 + 240 * m, 25.0, id_tag="TAG-2")],
    }
    fleet = Fleet.build(
        services.gateway.url,
        [PointSpec(f"LP0{i}", meter_interval_s=60.0) for i in (1, 2, 3)],
        sessions,
        clock=clock,
        reconnect_max_s=0.5,
    )
    fleet.start()
    try:
        yield services, fleet, clock, tmp_path / "var"
    finally:
        await fleet.stop()
        await services.stop()


async def _until(cond: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), WAIT_S)


def _chrome(paths: tuple[str, str]) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=paths[1]), options=options)


async def test_the_dashboard_shows_the_site_live_in_chromium(running, browser_paths) -> None:
    from selenium.webdriver.common.by import By

    services, _fleet, clock, data_dir = running
    ctl = services.control
    await _until(lambda: len(services.gateway.connected_ids()) == 3)
    for _ in range(10):
        await clock.advance(60)
    await _until(lambda: len(ctl.live.transactions()) == 2)
    await ctl.loop.replan("interval")
    base = services.api_url.removesuffix("/api/v1")

    driver = await asyncio.to_thread(_chrome, browser_paths)
    try:
        await asyncio.to_thread(driver.get, base + "/")

        def text(css: str) -> str:
            return driver.find_element(By.CSS_SELECTOR, css).text

        async def see(cond: Callable[[], bool]) -> None:
            # Selenium blocks: ask in a thread so the service keeps answering the page.
            async def check() -> bool:
                try:
                    return await asyncio.to_thread(cond)
                except Exception:  # element not rendered yet
                    return False

            async def poll() -> None:
                while not await check():
                    await asyncio.sleep(0.2)

            await asyncio.wait_for(poll(), WAIT_S)

        await see(lambda: text("#conn-state") == "live")
        await see(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#points tbody tr")) == 3)
        assert text("#site-id") == "kaiserstrasse"
        assert text("#limit") == "50.0 A"
        assert "site file" in text("#limit-source")

        def row(cp: str) -> dict[str, str]:
            tr = driver.find_element(By.CSS_SELECTOR, f'#points tbody tr[data-point="{cp}"]')
            return {
                "status": tr.find_element(By.CSS_SELECTOR, ".status").text,
                "drawing": tr.find_element(By.CSS_SELECTOR, ".drawing").text,
                "told": tr.find_element(By.CSS_SELECTOR, ".told").text,
                "cells": str(len(tr.find_elements(By.CSS_SELECTOR, ".cell"))),
            }

        await see(lambda: row("LP01")["status"] == "Charging" and float(row("LP01")["drawing"]) > 0)
        lp1, lp3 = await asyncio.to_thread(row, "LP01"), await asyncio.to_thread(row, "LP03")
        assert float(lp1["told"]) >= 6.0 and int(lp1["cells"]) > 1  # the plan ahead is drawn
        assert lp3["status"] == "Available" and lp3["drawing"] == "-"
        # The chart: one load line per phase and the limit.
        await see(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#chart polyline.load")) == 3)
        assert driver.find_elements(By.CSS_SELECTOR, "#chart polyline.limit")
        assert text("#violations") == "none"
        assert "milp" in text("#replan")

        # A grid operator cuts the limit now: the page shows it and who set it.
        tokens = TokenStore.in_dir(data_dir)
        try:
            record, token = tokens.create("grid-operator", site="kaiserstrasse")
        finally:
            tokens.close()
        body = {"blocks": [{"start": clock.now().isoformat(), "end": None, "max_current_a": 20.0}]}
        async with httpx.AsyncClient(base_url=services.api_url) as http:
            r = await http.put(
                "/sites/kaiserstrasse/limits", json=body, headers={"Authorization": f"Bearer {token}"}
            )
            assert r.status_code == 200, r.text
        await see(lambda: text("#limit") == "20.0 A")
        assert "grid operator" in text("#limit-source")
        assert f"grid-operator (token {record.id})" in text(".set-by")
        await _until(lambda: "limit change" in ctl.loop.last.reason)
        await see(lambda: float(row("LP01")["told"]) + float(row("LP02")["told"]) <= 20.0)
    finally:
        await asyncio.to_thread(driver.quit)
