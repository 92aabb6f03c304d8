"""The contract's path, from outside: ``noxblock serve`` as a process on the wall clock, charge
points written with the ``ocpp`` library (not our simulator), a grid operator's token from
``noxblock token create``, a limit PUT over REST, and what each point was told.

The points accept every profile and keep them as a real point would (per purpose and stack
level, a new profile replacing one of the same id); the test computes each point's limit from
what it holds, as the point itself would, and checks the sum per grid phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import (
    Action,
    ChargePointStatus,
    ChargingProfileStatus,
    ClearChargingProfileStatus,
    GetCompositeScheduleStatus,
    RegistrationStatus,
)
from websockets.asyncio.client import connect

pytestmark = pytest.mark.asyncio

NOXBLOCK = str(Path(sys.executable).parent / "noxblock")
SITE_ID = "acceptance-street"
SITE = f"""
[site]
id = "{SITE_ID}"
voltage_v = 230.0
max_current_a = 40.0

[[charge_points]]
id = "EXT-A"
phases = 3
phase_rotation = "L1L2L3"
max_current_a = 16.0
min_current_a = 6.0

[[charge_points]]
id = "EXT-B"
phases = 3
phase_rotation = "L2L3L1"
max_current_a = 16.0
min_current_a = 6.0

[[charge_points]]
id = "EXT-C"
phases = 1
phase_rotation = "L3L1L2"
max_current_a = 16.0
min_current_a = 6.0
"""
#: Grid phases of each point's phases.
PHASES = {"EXT-A": (0, 1, 2), "EXT-B": (1, 2, 0), "EXT-C": (2,)}
WAIT_S = 60.0  # generous for a slow CI box; never a timing assertion


class Point(ChargePoint):
    """A plain OCPP 1.6 point: accepts every profile and keeps them as a point does."""

    def __init__(self, cp_id: str, ws: Any) -> None:
        super().__init__(cp_id, ws)
        self.profiles: dict[int, dict[str, Any]] = {}  # chargingProfileId -> profile
        self.transaction_id: int | None = None
        self.told = 0

    @on(Action.set_charging_profile)
    def set_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any], **_: Any):
        p = cs_charging_profiles
        key = (p["charging_profile_purpose"], p["stack_level"])
        # A profile replaces the one with its id, and the one of its purpose and stack level.
        self.profiles = {
            i: q
            for i, q in self.profiles.items()
            if i != p["charging_profile_id"] and (q["charging_profile_purpose"], q["stack_level"]) != key
        }
        self.profiles[p["charging_profile_id"]] = p
        self.told += 1
        return call_result.SetChargingProfile(ChargingProfileStatus.accepted)

    @on(Action.clear_charging_profile)
    def clear_profile(self, **_: Any):
        return call_result.ClearChargingProfile(ClearChargingProfileStatus.accepted)

    @on(Action.get_composite_schedule)
    def composite(self, **_: Any):  # real points often cannot: the central system must cope
        return call_result.GetCompositeSchedule(GetCompositeScheduleStatus.rejected)

    @on(Action.get_configuration)
    def configuration(self, **_: Any):
        return call_result.GetConfiguration(
            configuration_key=[
                {"key": "ChargingScheduleAllowedChargingRateUnit", "readonly": True, "value": "Current"},
                {"key": "ChargingScheduleMaxPeriods", "readonly": True, "value": "24"},
                {"key": "ChargeProfileMaxStackLevel", "readonly": True, "value": "8"},
                {"key": "MaxChargingProfilesInstalled", "readonly": True, "value": "10"},
            ]
        )

    def limit_a(self, at: datetime) -> float:
        """The per-phase limit [A] this point applies at ``at``: per purpose the highest stack
        level valid then, TxProfile (of the running transaction) over TxDefaultProfile, the
        minimum with ChargePointMaxProfile; its maximum (16 A) where nothing limits."""

        def value(purpose: str) -> float | None:
            best: tuple[int, float] | None = None
            for p in self.profiles.values():
                if p["charging_profile_purpose"] != purpose:
                    continue
                if purpose == "TxProfile" and p.get("transaction_id") != self.transaction_id:
                    continue
                s = p["charging_schedule"]
                assert s["charging_rate_unit"] == "A"  # we said Current only
                start = datetime.fromisoformat(s["start_schedule"].replace("Z", "+00:00"))
                offset = (at - start).total_seconds()
                if offset < 0 or (s.get("duration") is not None and offset >= s["duration"]):
                    continue
                a = None
                for period in s["charging_schedule_period"]:
                    if period["start_period"] <= offset:
                        a = float(period["limit"])
                if a is not None and (best is None or p["stack_level"] > best[0]):
                    best = (p["stack_level"], a)
            return None if best is None else best[1]

        tx = value("TxProfile") if self.transaction_id is not None else None
        limit = tx if tx is not None else value("TxDefaultProfile")
        cap = value("ChargePointMaxProfile")
        out = min(x for x in (limit, cap, 16.0) if x is not None)
        return out if out >= 6.0 else 0.0


async def start_point(ocpp_url: str, cp_id: str, charging: bool, tasks: list) -> Point:
    ws = await connect(ocpp_url + cp_id, subprotocols=["ocpp1.6"])
    point = Point(cp_id, ws)
    tasks.append(asyncio.create_task(point.start()))
    boot = await point.call(call.BootNotification(charge_point_model="M1", charge_point_vendor="Elsewhere"))
    assert boot.status == RegistrationStatus.accepted
    await point.call(call.StatusNotification(1, "NoError", ChargePointStatus.available))
    if charging:
        now = datetime.now(UTC).isoformat()
        await point.call(call.StatusNotification(1, "NoError", ChargePointStatus.preparing))
        started = await point.call(call.StartTransaction(1, f"TAG-{cp_id}", 1000, now))
        point.transaction_id = started.transaction_id
        await point.call(call.StatusNotification(1, "NoError", ChargePointStatus.charging))
    return point


def phase_sum_a(points: dict[str, Point], at: datetime) -> list[float]:
    out = [0.0, 0.0, 0.0]
    for cp_id, point in points.items():
        for g in PHASES[cp_id]:
            out[g] += point.limit_a(at)
    return out


def token(data_dir: Path, *args: str) -> str:
    p = subprocess.run(
        [NOXBLOCK, "token", "create", *args, "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return p.stdout.strip().splitlines()[-1]


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, str, Path]]:
    site = tmp_path / "site.toml"
    site.write_text(SITE)
    data_dir = tmp_path / "var"
    proc = await asyncio.create_subprocess_exec(
        NOXBLOCK, "serve", "--site", str(site), "--port", "0", "--api-port", "0",
        "--data-dir", str(data_dir),
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        async with asyncio.timeout(WAIT_S):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("noxblock serve: OCPP ws://"), line
        yield line.split()[3].removesuffix("{id}"), line.split()[5], data_dir
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def until(cond: Any, what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not cond():
            await asyncio.sleep(0.1)


async def test_points_we_did_not_write_keep_a_grid_operators_limit_set_over_rest(served) -> None:
    ocpp_url, api_url, data_dir = served
    tasks: list[asyncio.Task[None]] = []
    points: dict[str, Point] = {}
    try:
        for cp_id, charging in (("EXT-A", True), ("EXT-B", True), ("EXT-C", False)):
            points[cp_id] = await start_point(ocpp_url, cp_id, charging, tasks)
        # Each point is told its share: the charging ones a TxProfile, the idle one a default.
        await until(
            lambda: (
                all(
                    any(p["charging_profile_purpose"] == "TxProfile" for p in points[c].profiles.values())
                    for c in ("EXT-A", "EXT-B")
                )
                and any(p["stack_level"] > 0 for p in points["EXT-C"].profiles.values())
            ),
            "profiles",
        )
        now = datetime.now(UTC)
        assert max(phase_sum_a(points, now)) <= 40.0 + 1e-6
        assert points["EXT-A"].limit_a(now) > 10.0  # two EVs on 40 A: more than the cut leaves

        grid = token(data_dir, "--role", "grid-operator", "--site", SITE_ID)
        viewer = token(data_dir, "--role", "viewer")
        body = {
            "blocks": [
                {"start": (now - timedelta(minutes=1)).isoformat(), "end": None, "max_current_a": 18.0}
            ]
        }
        async with httpx.AsyncClient(base_url=api_url, timeout=30.0) as http:
            url = f"/sites/{SITE_ID}/limits"
            assert (await http.put(url, json=body)).status_code == 401
            r = await http.put(url, json=body, headers={"Authorization": f"Bearer {viewer}"})
            assert r.status_code == 403
            r = await http.put(
                url, json={"blocks": [{"start": "soon"}]}, headers={"Authorization": f"Bearer {grid}"}
            )
            assert r.status_code == 422 and "start" in r.text
            r = await http.put(url, json=body, headers={"Authorization": f"Bearer {grid}"})
            assert r.status_code in (200, 204), r.text
            # Every point's own profiles add up to within the new limit, on every phase, now and
            # every 5 minutes of the next 30 hours (what they keep if the service went away).
            await until(lambda: max(phase_sum_a(points, datetime.now(UTC))) <= 18.0 + 1e-6, "the cut")
            at = datetime.now(UTC)
            for minute in range(0, 30 * 60, 5):  # beyond every plan's end: the failsafes too
                t = at + timedelta(minutes=minute)
                assert max(phase_sum_a(points, t)) <= 18.0 + 1e-6, (t, phase_sum_a(points, t))
            plan = (await http.get(f"/sites/{SITE_ID}/plan")).json()
        assert {e["charge_point_id"] for e in plan["charge_points"]} == set(points)
        # Both EVs still charge, each at its 6 A minimum at least.
        assert points["EXT-A"].limit_a(at) >= 6.0 and points["EXT-B"].limit_a(at) >= 6.0
    finally:
        for t in tasks:
            t.cancel()
        for point in points.values():
            with contextlib.suppress(Exception):
                await point._connection.close()
        await asyncio.gather(*tasks, return_exceptions=True)
