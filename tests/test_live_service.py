"""The live service end to end: ``serve``'s gateway, REST API and control loop with simulated
charge points over real websockets, on a shared simulated clock.

What is checked is what the grid sees: on every phase, the sum of the limits the points have
been told (each point's own composite limit, the point's maximum where it has none) never
exceeds the site's limit; a grid operator's limit reaches every point without the clock moving;
with the service killed, the profiles the points keep hold the limit for every minute after,
ending on each point's failsafe; a restart recovers every running transaction.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio

from noxblock import serve
from noxblock.auth import TokenStore
from noxblock.live import ControlSettings
from ocpp_gateway.simulator import Fleet, ManualClock, PointSpec, SimSession
from scheduler.loaders import load_site

pytestmark = pytest.mark.asyncio

T0 = datetime(2024, 3, 4, 17, 0, tzinfo=UTC)
WAIT_S = 30.0  # generous for a slow CI box; never a timing assertion
SITE_A = 50.0

SITE_TOML = """
[site]
id = "lippe"
voltage_v = 230.0
max_current_a = {site_a}

[[groups]]
id = "feeder"
max_current_a = 30.0

{points}
"""

POINT = """
[[charge_points]]
id = "{id}"
group = "{group}"
phases = {phases}
phase_rotation = "{rotation}"
max_current_a = 16.0
min_current_a = 6.0
"""

#: id, group, phases, rotation
POINTS = [
    ("CP01", "feeder", 3, "L1L2L3"),
    ("CP02", "feeder", 3, "L2L3L1"),
    ("CP03", "site", 3, "L3L1L2"),
    ("CP04", "site", 1, "L2L3L1"),
    ("CP05", "site", 3, "L1L2L3"),
]


def write_site(tmp_path: Path) -> Path:
    text = SITE_TOML.format(
        site_a=SITE_A,
        points="".join(POINT.format(id=i, group=g, phases=p, rotation=r) for i, g, p, r in POINTS),
    )
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def sessions() -> dict[str, list[SimSession]]:
    m = timedelta(minutes=1)
    return {
        "CP01": [SimSession(T0 + 2 * m, T0 + 150 * m, 20.0, id_tag="TAG-A", session_id="a")],
        "CP02": [SimSession(T0 + 3 * m, T0 + 180 * m, 25.0, id_tag="TAG-B", session_id="b")],
        "CP03": [
            SimSession(T0 + 4 * m, T0 + 120 * m, 12.0, max_power_kw=7.0, id_tag="TAG-C", session_id="c")
        ],
        "CP04": [SimSession(T0 + 20 * m, T0 + 170 * m, 8.0, id_tag="TAG-D", session_id="d")],
        # CP05 stays empty: an idle connector that gets a share of what is left.
    }


ROTATION = {"L1L2L3": (0, 1, 2), "L2L3L1": (1, 2, 0), "L3L1L2": (2, 0, 1)}


def phase_load_a(fleet: Fleet, at: datetime) -> tuple[np.ndarray, np.ndarray]:
    """(site (3,), feeder (3,)): the sum of what every point's profiles allow at ``at`` [A]."""
    site, feeder = np.zeros(3), np.zeros(3)
    for cp_id, group, phases, rotation in POINTS:
        point = fleet[cp_id]
        conn = point.connectors[1]
        limit = point.allowed_a(1, at)
        a = 16.0 if limit is None else min(limit, 16.0)
        if a < 6.0:
            a = 0.0
        used = ROTATION[rotation][: min(conn.ev_phases, phases)]
        for g in used:
            site[g] += a
            if group == "feeder":
                feeder[g] += a
    return site, feeder


class Service:
    """``serve`` with the control loop, restartable on the same data directory."""

    def __init__(self, tmp_path: Path, clock: ManualClock) -> None:
        self.site_path = write_site(tmp_path)
        self.data_dir = tmp_path / "var"
        self.clock = clock
        self.services: serve.Services | None = None
        parser = argparse.ArgumentParser()
        serve.add_arguments(parser)
        self.args = parser.parse_args(
            [
                "--site",
                str(self.site_path),
                "--port",
                "0",
                "--api-port",
                "0",
                "--data-dir",
                str(self.data_dir),
            ]
        )

    async def start(self, port: int = 0) -> serve.Services:
        config = serve.build_config(self.args)
        self.services = await serve.start_services(
            config,
            self.data_dir,
            port=port,
            api_port=0,
            site_config=load_site(self.site_path),
            control=ControlSettings(
                step=timedelta(minutes=5),
                horizon=timedelta(hours=4),
                coarse_step=None,
                solver_time_limit_s=10.0,
                deadline_s=60.0,
            ),
            clock=self.clock,
        )
        return self.services

    async def stop(self) -> None:
        if self.services is not None:
            await self.services.stop()
            self.services = None


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Service, Fleet, ManualClock]]:
    clock = ManualClock(T0)
    svc = Service(tmp_path, clock)
    services = await svc.start()
    fleet = Fleet.build(
        services.gateway.url,
        [PointSpec(i, phases=p, meter_interval_s=60.0) for i, _, p, _ in POINTS],
        sessions(),
        clock=clock,
        reconnect_max_s=0.5,
        call_timeout_s=10.0,
    )
    fleet.start()
    try:
        yield svc, fleet, clock
    finally:
        await fleet.stop()
        await svc.stop()


async def wait_for(cond: Any, timeout_s: float = WAIT_S) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout_s)


def make_token(svc: Service, role: str, site: str | None = None) -> str:
    tokens = TokenStore.in_dir(svc.data_dir)
    try:
        return tokens.create(role, site=site)[1]
    finally:
        tokens.close()


def dump(fleet: Fleet, at: datetime) -> str:
    out = []
    for cp_id, *_ in POINTS:
        tx = fleet[cp_id].connectors[1].tx
        lim = fleet[cp_id].allowed_a(1, at)
        out.append(
            f"{cp_id} tx={None if tx is None else tx.transaction_id} limit={lim} "
            + str(
                [
                    (
                        i.connector_id,
                        i.profile.purpose,
                        i.profile.stack_level,
                        i.profile.transaction_id,
                        str(i.profile.start_schedule),
                        [(p.start_s, p.limit) for p in i.profile.periods[:6]],
                    )
                    for i in fleet[cp_id].profiles.installed
                ]
            )
        )
    return "\n".join(out)


def check_limits(fleet: Fleet, at: datetime) -> None:
    site, feeder = phase_load_a(fleet, at)
    assert (site <= SITE_A + 1e-6).all(), f"site {site} A over {SITE_A} A at {at}:\n{dump(fleet, at)}"
    assert (feeder <= 30.0 + 1e-6).all(), f"feeder {feeder} A over 30 A at {at}"


async def test_closed_loop_keeps_every_limit_charges_every_ev_and_survives_a_restart(world) -> None:
    svc, fleet, clock = world
    ctl = svc.services.control
    gw = svc.services.gateway
    await wait_for(lambda: len(gw.connected_ids()) == len(POINTS))
    await wait_for(lambda: all(fleet[i].profiles.installed for i, *_ in POINTS))  # failsafe at boot
    await ctl.loop.replan("test")
    check_limits(fleet, clock.now())

    # Drivers' needs: CP03's through its id tag's profile (before it arrives), the others'
    # through their transactions once they run; each PUT is an event that re-plans.
    token = make_token(svc, "operator")
    auth = {"Authorization": f"Bearer {token}"}
    m = timedelta(minutes=1)
    needs = {"CP01": (T0 + 150 * m, 20.0), "CP02": (T0 + 180 * m, 25.0), "CP04": (T0 + 170 * m, 8.0)}
    async with httpx.AsyncClient(base_url=svc.services.api_url) as http:
        r = await http.put("/id-tags/TAG-C/profile", json={"stay_h": 1.9, "energy_kwh": 12.0}, headers=auth)
        assert r.status_code == 204, r.text
        r = await http.put("/id-tags/TAG-C/profile", json={"stay_h": -1}, headers=auth)
        assert r.status_code == 422 and "stay_h" in r.text
        r = await http.put("/id-tags/TAG-C/profile", json={"stay_h": 2})
        assert r.status_code == 401

        replans_at_event = ctl.loop.replans
        for minute in range(1, 91):
            await clock.advance(60)
            if minute % 5 == 0:
                await ctl.loop.replan("interval")
            check_limits(fleet, clock.now())
            for t in ctl.live.transactions():
                cp = t["charge_point_id"]
                if cp in needs:
                    departure, kwh = needs.pop(cp)
                    body = {"departure": departure.isoformat(), "energy_kwh": kwh}
                    r = await http.put(f"/transactions/{t['transaction_id']}/needs", json=body, headers=auth)
                    assert r.status_code == 204, r.text
        r = await http.put("/transactions/999/needs", json={"energy_kwh": 3}, headers=auth)
        assert r.status_code == 404
        plan = (await http.get("/sites/lippe/plan")).json()
        status = (await http.get("/sites/lippe/status")).json()
        metrics = (await http.get(svc.services.api_url.replace("/api/v1", "/metrics"))).text
    assert {e["charge_point_id"] for e in plan["charge_points"]} == {p[0] for p in POINTS}
    assert plan["policy"] == "milp" and plan["step_s"] == 300
    assert all(e["intervals"][0]["start"] == plan["planned_at"] for e in plan["charge_points"])
    assert status["limit_source"] == "site file" and len(status["sessions"]) == 4
    sources = {t["charge_point_id"]: t["estimate_source"] for t in status["sessions"]}
    assert sources == {"CP01": "driver", "CP02": "driver", "CP03": "tag profile", "CP04": "driver"}
    assert "noxblock_replan_seconds" in metrics and 'noxblock_headroom_amperes{phase="L1"}' in metrics
    # Transaction starts asked for re-plans of their own (events), not only the periodic ones.
    assert ctl.loop.replans > replans_at_event + 18
    live = {t["charge_point_id"]: t for t in ctl.live.transactions()}
    assert set(live) == {"CP01", "CP02", "CP03", "CP04"}
    # CP03's EV takes at most 7 kW (10.1 A on three phases): learned from what it draws.
    assert live["CP03"]["learned_max_a"] is not None and live["CP03"]["learned_max_a"] <= 12.0
    assert sum(t["energy_delivered_kwh"] > 1.0 for t in live.values()) >= 3
    record = ctl.loop.last
    assert record.policy == "milp" and record.status == "ok" and record.evs == 4

    # Kill the service: what the points keep must hold the limit at every minute after, for
    # longer than the plan, and end on each point's failsafe.
    tx_before = {
        t["charge_point_id"]: (t["transaction_id"], t["energy_delivered_kwh"]) for t in live.values()
    }
    port = gw.port
    await svc.stop()
    now = clock.now()
    for minute in range(0, 6 * 60, 5):
        at = now + timedelta(minutes=minute)
        check_limits(fleet, at)
    far = now + timedelta(hours=12)
    failsafe = serve.build_config(svc.args)
    for cp_id, *_ in POINTS:
        limit = fleet[cp_id].profiles.limit_a(1, far, tx_start=far - timedelta(hours=13))
        assert limit is not None, cp_id
        assert limit <= failsafe.known(cp_id).failsafe_current_a + 1e-6, cp_id

    # While we are gone, time moves on and the points keep charging on their profiles; then the
    # service comes back on the same port and data directory.
    for _ in range(10):
        await clock.advance(60)
        check_limits(fleet, clock.now())
    services = await svc.start(port=port)
    ctl = services.control
    await wait_for(lambda: len(services.gateway.connected_ids()) == len(POINTS))
    await wait_for(lambda: all(fleet[i].queued == 0 for i, *_ in POINTS))
    await ctl.loop.replan("test")
    check_limits(fleet, clock.now())
    after = {t["charge_point_id"]: t for t in ctl.live.transactions()}
    assert {cp: t["transaction_id"] for cp, t in after.items()} == {cp: v[0] for cp, v in tx_before.items()}
    for cp, t in after.items():
        assert t["energy_delivered_kwh"] >= tx_before[cp][1]  # meter values of the gap came in
    txs = services.gateway.storage.transactions(limit=100)
    assert len(txs) == 4 and len({t.id for t in txs}) == 4  # none lost, none duplicated

    # Run to the end: every EV leaves, each with (nearly) all it wanted.
    for minute in range(100, 200):
        await clock.advance(60)
        if minute % 5 == 0:
            await ctl.loop.replan("interval")
        check_limits(fleet, clock.now())
    await wait_for(lambda: not services.gateway.storage.transactions(active=True))
    done = {
        t.charge_point_id: (t.meter_stop_wh - t.meter_start_wh) / 1000.0
        for t in services.gateway.storage.transactions()
    }
    wanted = {cp: s[0].energy_kwh for cp, s in sessions().items()}
    for cp, kwh in wanted.items():
        assert done[cp] >= 0.97 * kwh, (cp, done[cp], kwh)


async def test_a_grid_operator_limit_reaches_every_point_without_the_clock_moving(world) -> None:
    svc, fleet, clock = world
    ctl = svc.services.control
    gw = svc.services.gateway
    await wait_for(lambda: len(gw.connected_ids()) == len(POINTS))
    for _ in range(30):
        await clock.advance(60)
    await ctl.loop.replan("interval")
    site, _ = phase_load_a(fleet, clock.now())
    assert site.max() > 20.0  # the EVs use more than the cut will leave

    token = make_token(svc, "grid-operator", "lippe")
    body = {"blocks": [{"start": clock.now().isoformat(), "end": None, "max_current_a": 20.0}]}
    async with httpx.AsyncClient(base_url=svc.services.api_url) as http:
        r = await http.put("/sites/lippe/limits", json=body, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code in (200, 204), r.text
    now = clock.now()
    # No clock movement at all: the limit change is an event, re-planned and dispatched at once.
    await wait_for(lambda: "limit change" in ctl.loop.last.reason)
    assert (phase_load_a(fleet, now)[0] <= 20.0 + 1e-6).all()
    assert clock.now() == now
    assert max(ctl.loop.last.limit_a) == 20.0
    for minute in range(1, 30):
        await clock.advance(60)
        if minute % 5 == 0:
            await ctl.loop.replan("interval")
        assert (phase_load_a(fleet, clock.now())[0] <= 20.0 + 1e-6).all()


def failsafes_a(fleet: Fleet) -> dict[str, float]:
    """Per point, the limit of its stack-level-0 (failsafe) profile [A]."""
    out = {}
    for cp_id, *_ in POINTS:
        for i in fleet[cp_id].profiles.installed:
            if i.profile.stack_level == 0:
                out[cp_id] = i.profile.periods[0].limit
    return out


async def test_failsafes_follow_a_grid_operators_cut_and_come_back_after_it(world) -> None:
    svc, fleet, clock = world
    ctl = svc.services.control
    gw = svc.services.gateway
    await wait_for(lambda: len(gw.connected_ids()) == len(POINTS))
    await wait_for(lambda: len(failsafes_a(fleet)) == len(POINTS))
    assert set(failsafes_a(fleet).values()) == {10.0}  # 50 A over five points on L2
    token = make_token(svc, "grid-operator", "lippe")
    now = clock.now()
    body = {
        "blocks": [
            {
                "start": now.isoformat(),
                "end": (now + timedelta(minutes=30)).isoformat(),
                "max_current_a": 30.0,
            }
        ]
    }
    async with httpx.AsyncClient(base_url=svc.services.api_url) as http:
        r = await http.put("/sites/lippe/limits", json=body, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code in (200, 204), r.text
    # 30 A over five points on L2: 6 A each, kept by what every point falls back to.
    await wait_for(lambda: set(failsafes_a(fleet).values()) == {6.0})
    assert clock.now() == now
    for minute in range(1, 40):
        await clock.advance(60)
        if minute % 5 == 0:
            await ctl.loop.replan("interval")
        if minute < 30:
            check_limits_below(fleet, clock.now(), 30.0)
    await wait_for(lambda: set(failsafes_a(fleet).values()) == {10.0})


def check_limits_below(fleet: Fleet, at: datetime, limit_a: float) -> None:
    site, _ = phase_load_a(fleet, at)
    assert (site <= limit_a + 1e-6).all(), f"site {site} A over {limit_a} A at {at}:\n{dump(fleet, at)}"
