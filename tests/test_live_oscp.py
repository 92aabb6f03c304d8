"""OSCP 2.0 in the running service: a grid operator's Capacity Provider (a real HTTP server here)
registers, asks for a heartbeat interval and sends forecasts; the service sends it heartbeats and
the site's measurements with the token it was given, plans with the forecast, and falls back to
the fallback capacity once the operator's heartbeat stops.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI, Request, Response

from noxblock import serve
from noxblock.live import ControlSettings
from ocpp_gateway.simulator import Fleet, ManualClock, PointSpec, SimSession
from scheduler.loaders import load_site

pytestmark = pytest.mark.asyncio

T0 = datetime(2024, 9, 2, 18, 0, tzinfo=UTC)
WAIT_S = 30.0
DSO_TOKEN = "dso-to-fp-secret"
FP_TOKEN = "fp-to-dso-secret"

SITE = """
[site]
id = "hafen"
voltage_v = 230.0
max_current_a = 63.0

[[charge_points]]
id = "LP01"
max_current_a = 16.0

[[charge_points]]
id = "LP02"
phase_rotation = "L2L3L1"
max_current_a = 16.0
"""


class FakeCp:
    """The DSO's side: records what the FP posts to it."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, dict[str, Any]]] = []
        self.app = FastAPI()

        @self.app.post("/cp/{action}")
        async def anything(action: str, request: Request) -> Response:
            self.received.append((action, request.headers.get("authorization", ""), await request.json()))
            return Response(status_code=204)

    async def start(self) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off"))
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/cp"

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Any, ...]]:
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
        control=ControlSettings(step=timedelta(minutes=5), horizon=timedelta(hours=4), coarse_step=None),
        clock=clock,
        oscp_token=DSO_TOKEN,
    )
    cp = FakeCp()
    cp_url = await cp.start()
    m = timedelta(minutes=1)
    fleet = Fleet.build(
        services.gateway.url,
        [PointSpec("LP01", meter_interval_s=60.0), PointSpec("LP02", meter_interval_s=60.0)],
        {
            "LP01": [SimSession(T0 + m, T0 + 240 * m, 40.0, id_tag="TAG-1")],
            "LP02": [SimSession(T0 + m, T0 + 240 * m, 40.0, id_tag="TAG-2")],
        },
        clock=clock,
        reconnect_max_s=0.5,
    )
    fleet.start()
    try:
        yield services, fleet, clock, cp, cp_url
    finally:
        await fleet.stop()
        await services.stop()
        await cp.stop()


async def until(cond: Any) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), WAIT_S)


def told_a(fleet: Fleet, cp_id: str, at: datetime) -> float:
    limit = fleet[cp_id].allowed_a(1, at)
    return 16.0 if limit is None else min(limit, 16.0)


async def test_oscp_heartbeat_measurements_forecast_and_fallback(world) -> None:
    services, fleet, clock, cp, cp_url = world
    ctl = services.control
    fp = services.api_url.removesuffix("/api/v1") + "/oscp/fp/2.0"
    dso = {"Authorization": f"Token {DSO_TOKEN}"}
    await until(lambda: len(services.gateway.connected_ids()) == 2)
    for _ in range(5):
        await clock.advance(60)
    await until(lambda: len(ctl.live.transactions()) == 2)

    async with httpx.AsyncClient() as http:
        reg = {"token": FP_TOKEN, "version_url": [{"version": "2.0", "base_url": cp_url}]}
        assert (await http.post(f"{fp}/register", json=reg, headers=dso)).status_code == 204
        hs = {"required_behaviour": {"heartbeat_interval": 0.2}}
        assert (await http.post(f"{fp}/handshake", json=hs, headers=dso)).status_code == 204

        # We send heartbeats and measurements to the DSO with the token it gave us.
        await until(lambda: {a for a, _, _ in cp.received} >= {"heartbeat", "update_group_measurements"})
        assert all(auth == f"Token {FP_TOKEN}" for _, auth, _ in cp.received)
        hb = next(b for a, _, b in cp.received if a == "heartbeat")
        assert datetime.fromisoformat(hb["offline_mode_at"]) > clock.now()
        meas = next(b for a, _, b in cp.received if a == "update_group_measurements")
        assert meas["group_id"] == "hafen" and {m["phase"] for m in meas["measurements"]} == {
            "ONE",
            "TWO",
            "THREE",
        }
        assert all(m["unit"] == "A" and m["value"] >= 0 for m in meas["measurements"])

        # The DSO is alive for 10 minutes, forecasts 24 A and agrees a fallback of 12 A.
        now = clock.now()
        beat = {"offline_mode_at": (now + timedelta(minutes=10)).isoformat()}
        assert (await http.post(f"{fp}/heartbeat", json=beat, headers=dso)).status_code == 204
        for kind, amps in (("CONSUMPTION", 24.0), ("FALLBACK_CONSUMPTION", 12.0)):
            body = {
                "group_id": "hafen",
                "type": kind,
                "forecasted_blocks": [
                    {
                        "capacity": amps,
                        "phase": "ALL",
                        "unit": "A",
                        "start_time": now.isoformat(),
                        "end_time": (now + timedelta(hours=6)).isoformat(),
                    }
                ],
            }
            r = await http.post(f"{fp}/update_group_capacity_forecast", json=body, headers=dso)
            assert r.status_code == 204, r.text
        await until(lambda: "limit change" in ctl.loop.last.reason)
        assert ctl.loop.last.limit_a == (24.0, 24.0, 24.0)
        assert told_a(fleet, "LP01", now) + told_a(fleet, "LP02", now) <= 24.0
        status = (await http.get(f"{services.api_url}/sites/hafen/status")).json()
        assert status["limit_source"] == "grid operator"
        # Later measurements name the forecast's group.
        n = len(cp.received)
        await until(lambda: len(cp.received) > n + 2)
        assert cp.received[-1][2].get("group_id", "hafen") == "hafen"

        # The DSO's heartbeat stops: after offline_mode_at the fallback capacity governs.
        await clock.advance(11 * 60)
        await ctl.loop.replan("interval")
        assert ctl.loop.last.limit_a == (12.0, 12.0, 12.0)
        status = (await http.get(f"{services.api_url}/sites/hafen/status")).json()
        assert status["limit_source"] == "OSCP fallback"
        at = clock.now()
        assert told_a(fleet, "LP01", at) + told_a(fleet, "LP02", at) <= 12.0
