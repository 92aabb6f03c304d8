"""The live service end to end (``serve``'s gateway, REST API and control loop with simulated charge
points over real websockets, on a shared :class:`ManualClock`), for what a grid operator and an
operator rely on beyond the plain closed loop of ``test_live_service.py``:

* a point that ignores its limits (a simulated "liar") is flagged by the gateway after
  ``compliance_violations`` meter samples above its limit, and from then on is planned as
  inflexible load at its maximum: the status lists it as non-compliant, and the limits the
  obeying points are told plus the liar's maximum keep the site's limit on every phase;
* drivers' needs through the API: 401 without a token, 403 for a viewer, 404 for an unknown
  transaction, 422 for a departure without a UTC offset or a bad energy, 204 and the estimate
  from the driver otherwise;
* section 14a: a grid operator's limit with ``min_per_point_kw: 4.2`` below what the EVs charging
  are guaranteed raises the limit the loop plans with to the sum of their guaranteed currents;
* the audit entry of a limit request gets its ``measured_response`` one control interval after
  the request, not before.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from noxblock import serve
from noxblock.auth import TokenStore
from noxblock.live import ControlSettings
from ocpp_gateway.simulator import Fleet, ManualClock, PointSpec, SimSession
from scheduler.loaders import load_site

pytestmark = pytest.mark.asyncio

T0 = datetime(2024, 3, 4, 17, 0, tzinfo=UTC)
WAIT_S = 30.0  # generous for a slow CI box; never a timing assertion
SITE_A = 40.0
MAX_A = 16.0
STEP = timedelta(minutes=5)
M = timedelta(minutes=1)

#: id, phases, rotation (all on the connection, no feeder)
POINTS = [
    ("CP01", 3, "L1L2L3"),
    ("CP02", 3, "L2L3L1"),
    ("CP03", 3, "L3L1L2"),
    ("CP04", 3, "L1L2L3"),  # stays empty: an idle connector
]
ROTATION = {"L1L2L3": (0, 1, 2), "L2L3L1": (1, 2, 0), "L3L1L2": (2, 0, 1)}

SITE_TOML = """
[site]
id = "lippe"
voltage_v = 230.0
max_current_a = {site_a}
"""

POINT = """
[[charge_points]]
id = "{id}"
phases = {phases}
phase_rotation = "{rotation}"
max_current_a = {max_a}
min_current_a = 6.0
"""


def sessions() -> dict[str, list[SimSession]]:
    """Three EVs that want more than they can get in the test; CP04 stays empty."""
    return {
        "CP01": [SimSession(T0 + 1 * M, T0 + 300 * M, 60.0, id_tag="TAG-A", session_id="a")],
        "CP02": [SimSession(T0 + 1 * M, T0 + 240 * M, 60.0, id_tag="TAG-B", session_id="b")],
        "CP03": [SimSession(T0 + 1 * M, T0 + 360 * M, 60.0, id_tag="TAG-C", session_id="c")],
    }


class Running:
    """``serve`` with the control loop and the simulated fleet, started on one ManualClock."""

    def __init__(self, tmp_path: Path, policy: str, liar: str | None) -> None:
        text = SITE_TOML.format(site_a=SITE_A) + "".join(
            POINT.format(id=i, phases=p, rotation=r, max_a=MAX_A) for i, p, r in POINTS
        )
        self.site_path = tmp_path / "site.toml"
        self.site_path.write_text(text)
        self.data_dir = tmp_path / "var"
        self.clock = ManualClock(T0)
        self.policy = policy
        self.liar = liar
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

    async def __aenter__(self) -> Running:
        self.services = await serve.start_services(
            serve.build_config(self.args),
            self.data_dir,
            port=0,
            api_port=0,
            site_config=load_site(self.site_path),
            control=ControlSettings(
                step=STEP,
                horizon=timedelta(hours=4),
                coarse_step=None,
                policy=self.policy,
                solver_time_limit_s=10.0,
                deadline_s=60.0,
            ),
            clock=self.clock,
        )
        specs = [
            PointSpec(i, phases=p, max_current_a=MAX_A, meter_interval_s=60.0, obeys_profiles=i != self.liar)
            for i, p, _ in POINTS
        ]
        self.fleet = Fleet.build(
            self.services.gateway.url,
            specs,
            sessions(),
            clock=self.clock,
            reconnect_max_s=0.5,
            call_timeout_s=10.0,
        )
        self.fleet.start()
        await wait_for(lambda: len(self.gateway.connected_ids()) == len(POINTS))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.fleet.stop()
        await self.services.stop()

    @property
    def gateway(self) -> Any:
        return self.services.gateway

    @property
    def control(self) -> Any:
        return self.services.control

    def token(self, role: str, site: str | None = None) -> dict[str, str]:
        tokens = TokenStore.in_dir(self.data_dir)
        try:
            return {"Authorization": f"Bearer {tokens.create(role, site=site)[1]}"}
        finally:
            tokens.close()

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.services.api_url)

    async def run_minutes(self, minutes: int, *, until: Any = None) -> None:
        """Advance the clock minute by minute with the periodic re-plan every control interval;
        stop early once ``until()`` holds."""
        for _ in range(minutes):
            await self.clock.advance(60)
            if self.clock.now().minute % 5 == 0:
                await self.control.loop.replan("interval")
            if until is not None and until():
                return

    def told_a(self, cp_id: str, at: datetime) -> float:
        """What a point's profiles allow its connector 1 at ``at`` (its maximum without one) [A]."""
        limit = self.fleet[cp_id].allowed_a(1, at)
        a = MAX_A if limit is None else min(limit, MAX_A)
        return a if a >= 6.0 else 0.0


async def wait_for(cond: Any, timeout_s: float = WAIT_S) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout_s)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, policy: str = "milp", liar: str | None = None) -> AsyncIterator[Running]:
    async with Running(tmp_path, policy, liar) as r:
        yield r


def site_load_a(r: Running, at: datetime, inflexible: Sequence[str] = ()) -> np.ndarray:
    """(3,) per grid phase: the limits told to every point, a point in ``inflexible`` at its maximum."""
    load = np.zeros(3)
    for cp_id, phases, rotation in POINTS:
        a = MAX_A if cp_id in inflexible else r.told_a(cp_id, at)
        load[list(ROTATION[rotation][:phases])] += a
    return load


# -- a point that ignores its limits ---------------------------------------------------------------
async def test_a_liar_is_planned_as_inflexible_load_at_its_maximum(tmp_path: Path) -> None:
    # Equal share: with three EVs each is told 40 / 3 = 13.3 A, so the liar (16 A) is caught.
    async with running(tmp_path, "equal-share", liar="CP03") as r:
        gw, loop = r.gateway, r.control.loop
        await r.run_minutes(5, until=lambda: len(r.control.live.transactions()) == 3)
        await wait_for(lambda: len(r.control.live.transactions()) == 3)
        await loop.replan("interval")
        assert loop.last.inflexible == 0 and loop.last.evs == 3
        assert r.told_a("CP03", r.clock.now()) < MAX_A - 1.0  # told less than it draws
        # 3 samples above the limit after the 30 s grace: flagged within a few minutes.
        await r.run_minutes(30, until=lambda: gw.is_compliant("CP03") is False)
        assert gw.is_compliant("CP03") is False
        assert gw.is_compliant("CP01") is not False and gw.is_compliant("CP02") is not False
        rec = await loop.replan("test")
        assert rec.inflexible == 1 and rec.evs == 2
        # Its maximum on every phase is load the plan cannot move: (40 - 16) / 2 for each obeyer.
        assert rec.load_a == pytest.approx((SITE_A,) * 3, abs=0.2)
        now = r.clock.now()
        for cp_id in ("CP01", "CP02"):
            assert r.told_a(cp_id, now) == pytest.approx(12.0, abs=0.1), cp_id
        assert r.told_a("CP04", now) == 0.0
        assert ("CP03", 1) not in loop.orders
        assert (site_load_a(r, now, inflexible=["CP03"]) <= SITE_A + 1e-6).all()
        async with r.http() as http:
            status = (await http.get("/sites/lippe/status")).json()
            kpis = (await http.get("/sites/lippe/kpis")).json()
        assert status["non_compliant"] == ["CP03"]
        assert status["last_replan"]["inflexible"] == 1 and status["last_replan"]["evs"] == 2
        assert kpis["non_compliant"] == ["CP03"]
        # It stays inflexible; every minute after, what the others are told leaves room for it.
        for _ in range(15):
            await r.run_minutes(1)
            assert r.control.loop.last.inflexible == 1
            assert (site_load_a(r, r.clock.now(), inflexible=["CP03"]) <= SITE_A + 1e-6).all()


# -- drivers' needs --------------------------------------------------------------------------------
async def test_driver_needs_are_checked_and_authorised(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        await r.run_minutes(3)
        await wait_for(lambda: len(r.control.live.transactions()) == 3)
        tx = next(t for t in r.control.live.transactions() if t["charge_point_id"] == "CP01")
        assert tx["estimate_source"] == "default"
        url = f"/transactions/{tx['transaction_id']}/needs"
        good = {"departure": (T0 + 90 * M).isoformat(), "energy_kwh": 12.5}
        operator, viewer = r.token("operator"), r.token("viewer")
        grid_operator = r.token("grid-operator", "lippe")
        async with r.http() as http:
            assert (await http.put(url, json=good)).status_code == 401
            bad_token = {"Authorization": "Bearer not-a-token"}
            assert (await http.put(url, json=good, headers=bad_token)).status_code == 401
            assert (await http.put(url, json=good, headers=viewer)).status_code == 403
            assert (await http.put(url, json=good, headers=grid_operator)).status_code == 403
            assert (
                await http.put("/transactions/999999/needs", json=good, headers=operator)
            ).status_code == 404
            naive = {"departure": "2024-03-04T18:30:00", "energy_kwh": 12.5}
            res = await http.put(url, json=naive, headers=operator)
            assert res.status_code == 422 and "departure" in res.text
            res = await http.put(url, json={"energy_kwh": 0}, headers=operator)
            assert res.status_code == 422 and "energy_kwh" in res.text
            res = await http.put(url, json={"energy_kwh": "lots"}, headers=operator)
            assert res.status_code == 422
            # Nothing refused was stored.
            assert r.control.needs.transaction(tx["transaction_id"]) is None
            res = await http.put(url, json=good, headers=operator)
            assert res.status_code == 204, res.text
        after = next(t for t in r.control.live.transactions() if t["charge_point_id"] == "CP01")
        assert after["estimate_source"] == "driver"
        assert after["estimated_departure"] == T0 + 90 * M and after["estimated_energy_kwh"] == 12.5
        await wait_for(lambda: "driver needs" in r.control.loop.last.reason)


# -- section 14a and the measured response ---------------------------------------------------------
# 4.2 kW on three phases at 230 V is 6.087 A, rounded up to the 0.1 A a profile carries, so that
# the point's limit, rounded down on the way out, still gives at least 4.2 kW.
GUARANTEED_A = 6.1


async def put_limit(r: Running, body: dict[str, Any]) -> int:
    async with r.http() as http:
        res = await http.put("/sites/lippe/limits", json=body, headers=r.token("grid-operator", "lippe"))
    assert res.status_code == 200, res.text
    return int(res.json()["blocks"][-1]["audit_id"])


async def audit(r: Running) -> list[dict[str, Any]]:
    async with r.http() as http:
        res = await http.get("/sites/lippe/limits/audit", headers=r.token("grid-operator", "lippe"))
    assert res.status_code == 200, res.text
    return res.json()


async def test_section_14a_raises_the_limit_to_the_guaranteed_current_of_each_ev(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        loop = r.control.loop
        await r.run_minutes(5)
        await wait_for(lambda: len(r.control.live.transactions()) == 3)
        await loop.replan("interval")
        assert loop.last.evs == 3
        body = {
            "blocks": [{"start": r.clock.now().isoformat(), "end": None, "max_current_a": 5.0}],
            "min_per_point_kw": 4.2,
        }
        await put_limit(r, body)
        await wait_for(lambda: "limit change" in loop.last.reason)
        # Three 3-phase EVs, each on every phase: 3 x 6.087 = 18.26 A per phase, not 5 A.
        assert loop.last.limit_a == pytest.approx((3 * GUARANTEED_A,) * 3)
        assert max(loop.last.load_a) <= 3 * GUARANTEED_A + 1e-6
        assert r.control.conditions.last_source == "grid operator"
        # More than the grid operator's 5 A is planned (the floor is used), never more than the floor.
        assert min(loop.last.load_a) > 5.0 + 1.0
        assert loop.orders[("CP04", 1)].first_a == 0.0  # the idle point gets nothing
        for _ in range(10):
            assert (site_load_a(r, r.clock.now()) <= 3 * GUARANTEED_A + 1e-6).all()
            await r.run_minutes(1)
            assert max(loop.last.limit_a) == pytest.approx(3 * GUARANTEED_A)


async def test_keeping_the_section_14a_floor_is_no_violation(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        loop = r.control.loop
        await r.run_minutes(5)
        await wait_for(lambda: len(r.control.live.transactions()) == 3)
        body = {
            "blocks": [{"start": r.clock.now().isoformat(), "end": None, "max_current_a": 5.0}],
            "min_per_point_kw": 4.2,
        }
        await put_limit(r, body)
        await wait_for(lambda: "limit change" in loop.last.reason)
        before = r.control.kpis()["violations"]
        await r.run_minutes(5)
        assert r.control.kpis()["violations"] == before


async def test_section_14a_gives_each_charging_ev_its_guaranteed_current(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        loop = r.control.loop
        await r.run_minutes(5)
        await wait_for(lambda: len(r.control.live.transactions()) == 3)
        body = {
            "blocks": [{"start": r.clock.now().isoformat(), "end": None, "max_current_a": 5.0}],
            "min_per_point_kw": 4.2,
        }
        await put_limit(r, body)
        await wait_for(lambda: "limit change" in loop.last.reason)
        firsts = {cp: o.first_a for (cp, _), o in loop.orders.items() if cp != "CP04"}
        assert all(a >= GUARANTEED_A - 1e-6 for a in firsts.values()), firsts


async def test_the_audit_gets_the_measured_response_one_interval_after_a_limit(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        loop = r.control.loop
        await r.run_minutes(10)
        await wait_for(lambda: len(r.control.live.transactions()) == 3)
        received = r.clock.now()
        body = {"blocks": [{"start": received.isoformat(), "end": None, "max_current_a": 20.0}]}
        audit_id = await put_limit(r, body)
        await wait_for(lambda: "limit change" in loop.last.reason)
        assert max(loop.last.limit_a) == 20.0
        violations = r.control.kpis()["violations"]
        # Less than one control interval later: not yet.
        for _ in range(4):
            await r.clock.advance(60)
        await loop.replan("interval")
        entry = next(a for a in await audit(r) if a["id"] == audit_id)
        assert entry["status"] == "accepted" and entry["measured_response"] is None
        # One control interval after the request: a re-plan settles it.
        await r.clock.advance(60)
        assert r.clock.now() - received == STEP
        await loop.replan("interval")
        entry = next(a for a in await audit(r) if a["id"] == audit_id)
        response = entry["measured_response"]
        assert response is not None
        assert datetime.fromisoformat(response["measured_at"]) == received + STEP
        assert response["limit_a"] == [20.0, 20.0, 20.0]
        assert response["within_limit"] is True
        assert max(response["measured_a"]) <= 20.0 + 1.0
        assert response["replans_since"] >= 2
        assert len(response["peak_since_received_a"]) == 3
        assert r.control.kpis()["violations"] == violations  # the points were told no more than 20 A
        # Settled once: a later sample does not write it again.
        await r.clock.advance(300)
        await loop.replan("interval")
        again = next(a for a in await audit(r) if a["id"] == audit_id)
        assert again["measured_response"] == response
