"""The charge-point simulator against the real gateway on port 0: boot and charge, obey dispatched
profiles, a "liar" flagged, and a server restart survived without losing or doubling anything.

Time is simulated (a :class:`ManualClock` shared by the gateway and the points, or an accelerated
one); tests wait for states, never for wall-clock time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from ocpp_helpers import gateway_config

from ocpp_gateway import Gateway, SqliteStorage
from ocpp_gateway.dispatch import ChargingProfile, SchedulePeriod
from ocpp_gateway.simulator import (
    AcceleratedClock,
    Fleet,
    ManualClock,
    PointSpec,
    ProfileStore,
    SimSession,
    sessions_from_rows,
)

T0 = datetime(2024, 3, 4, 8, 0, tzinfo=UTC)
WAIT_S = 20.0  # generous: a slow CI box, never a timing assertion


class Harness:
    """A gateway and a fleet sharing one clock; stopped at the end of the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.gateways: list[Gateway] = []
        self.fleets: list[Fleet] = []

    async def gateway(self, clock: Any, port: int = 0, **overrides: Any) -> Gateway:
        overrides.setdefault("accept_unknown_id_tags", True)
        gw = Gateway(gateway_config(**overrides), SqliteStorage(self.tmp_path / "gw.sqlite"), clock=clock)
        await gw.start("127.0.0.1", port)
        self.gateways.append(gw)
        return gw

    async def stop_gateway(self, gw: Gateway) -> None:
        await gw.stop()
        gw.storage.close()
        self.gateways.remove(gw)

    def fleet(
        self, url: str, specs: list[PointSpec], sessions: dict[str, list[SimSession]], **kw: Any
    ) -> Fleet:
        kw.setdefault("reconnect_max_s", 0.5)
        kw.setdefault("call_timeout_s", 10.0)
        fleet = Fleet.build(url, specs, sessions, **kw)
        self.fleets.append(fleet)
        fleet.start()
        return fleet

    async def close(self) -> None:
        for fleet in self.fleets:
            await fleet.stop()
        for gw in list(self.gateways):
            await self.stop_gateway(gw)


@pytest_asyncio.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    yield h
    await h.close()


def session(arrive_min: float, depart_min: float, energy_kwh: float = 100.0, **kw: Any) -> SimSession:
    return SimSession(
        arrival=T0 + timedelta(minutes=arrive_min),
        departure=T0 + timedelta(minutes=depart_min),
        energy_kwh=energy_kwh,
        **kw,
    )


def currents_after(gw: Gateway, cp_id: str, after: datetime) -> list[float]:
    return [
        mv.value_num
        for mv in gw.storage.meter_values(cp_id, limit=100_000)
        if mv.measurand == "Current.Import" and mv.timestamp > after and mv.value_num is not None
    ]


@pytest.mark.asyncio
async def test_fleet_boots_and_charges(harness: Harness) -> None:
    clock = AcceleratedClock(600)  # ten simulated minutes per second
    gw = await harness.gateway(clock)
    now = clock.now()
    rows = [
        {"session_id": f"s{i}", "station_id": f"CP0{i}", "arrival": now.isoformat(),
         "departure": (now + timedelta(hours=3)).isoformat(), "energy_kwh": "1.0",
         "max_power_kw": "7.4" if i == 3 else "", "phases": "1" if i == 3 else ""}
        for i in (1, 2, 3)
    ]  # fmt: skip
    specs = [PointSpec(f"CP0{i}", meter_interval_s=30) for i in (1, 2, 3)]
    fleet = harness.fleet(gw.url, specs, sessions_from_rows(rows), clock=clock)

    def done() -> bool:
        txs = fleet.transactions()
        idle = all(p.queued == 0 for p in fleet.points.values())
        return len(txs) == 3 and all(t.stop_acknowledged for t in txs) and idle

    await fleet.wait_until(done, WAIT_S)
    assert sorted(gw.connected_ids()) == ["CP01", "CP02", "CP03"]
    for cp_id in ("CP01", "CP02", "CP03"):
        assert gw.storage.charge_point(cp_id).registration_status == "Accepted"
        (tx,) = gw.storage.transactions(charge_point_id=cp_id)
        assert tx.stop_time is not None and tx.stop_reason == "Local"  # stopped when full
        assert tx.meter_stop_wh - tx.meter_start_wh == pytest.approx(1000, abs=1)
        assert tx.id_tag == f"TAG-s{cp_id[-1]}"
        assert any(mv.measurand == "Power.Active.Import" for mv in gw.storage.meter_values(cp_id))
    # The 1-phase 7.4 kW EV draws on L1 only, at most 7.4 kW / 230 V = 32 A, capped at the point's 16 A.
    l2 = [mv.value_num for mv in gw.storage.meter_values("CP03") if mv.phase == "L2"]
    assert l2 and max(l2) == 0.0
    statuses = [r.status for r in gw.storage.status_history("CP01", 1)]
    assert statuses[0] == "Available" and "Charging" in statuses and statuses[-1] == "Available"


@pytest.mark.asyncio
@pytest.mark.parametrize("rate_units", ["Current", "Power"])
async def test_obeys_dispatched_profile(harness: Harness, rate_units: str) -> None:
    clock = ManualClock(T0)
    gw = await harness.gateway(clock)
    spec = PointSpec("CP01", rate_units=rate_units, meter_interval_s=60)
    fleet = harness.fleet(gw.url, [spec], {"CP01": [session(0, 240)]}, clock=clock)
    cp = fleet["CP01"]
    await fleet.wait_until(lambda: bool(cp.transactions) and cp.transactions[0].transaction_id is not None)
    assert cp.draw_a() == 16.0

    result = await gw.dispatch_plan("CP01", 1, [(T0, 10.0)], end=T0 + timedelta(hours=1))
    assert result.status == "Accepted" and result.verified is True
    assert result.profile.rate_unit == ("A" if rate_units == "Current" else "W")
    assert result.profile.purpose == "TxProfile"
    assert cp.draw_a() == pytest.approx(10.0)
    dispatched_at = clock.now()

    await clock.advance(5 * 60)
    await fleet.wait_until(lambda: len(currents_after(gw, "CP01", dispatched_at)) >= 15, WAIT_S)
    currents = currents_after(gw, "CP01", dispatched_at)
    assert max(currents) <= 10.0 and min(currents) == pytest.approx(10.0)
    assert gw.is_compliant("CP01") is not False

    # After the plan ends (no failsafe configured here) the point is unlimited again.
    await clock.advance(60 * 60)
    assert cp.draw_a() == 16.0


@pytest.mark.asyncio
async def test_liar_is_flagged_non_compliant(harness: Harness) -> None:
    clock = ManualClock(T0)
    gw = await harness.gateway(clock)
    specs = [PointSpec("CP01", obeys_profiles=False), PointSpec("CP02")]
    sessions = {cp: [session(0, 240, id_tag=f"TAG-{cp}")] for cp in ("CP01", "CP02")}
    fleet = harness.fleet(gw.url, specs, sessions, clock=clock)
    await fleet.wait_until(
        lambda: all(p.transactions and p.transactions[0].transaction_id for p in fleet.points.values())
    )
    for cp_id in ("CP01", "CP02"):
        result = await gw.dispatch_plan(cp_id, 1, [(T0, 8.0)], end=T0 + timedelta(hours=2))
        assert result.status == "Accepted"
        assert result.verified is True  # the liar reports the profile faithfully...
    dispatched_at = clock.now()

    await clock.advance(10 * 60)  # ...but keeps drawing 16 A
    await fleet.wait_until(
        lambda: gw.is_compliant("CP01") is False and len(currents_after(gw, "CP02", dispatched_at)) >= 30,
        WAIT_S,
    )
    assert "CP01" in gw.non_compliant() and "CP02" not in gw.non_compliant()
    assert max(currents_after(gw, "CP02", dispatched_at)) <= 8.0
    assert max(currents_after(gw, "CP01", dispatched_at)) == 16.0


@pytest.mark.asyncio
async def test_server_restart_reconnect_and_replay(harness: Harness) -> None:
    clock = ManualClock(T0)
    gw = await harness.gateway(clock)
    port = gw.port
    sessions = {
        "CP01": [session(1, 30, id_tag="TAG-1")],  # leaves while the server is down
        "CP02": [session(1, 600, id_tag="TAG-2")],  # charges throughout
        "CP03": [session(20, 600, id_tag="TAG-3")],  # arrives while the server is down
    }
    specs = [PointSpec(cp, meter_interval_s=60) for cp in sessions]
    fleet = harness.fleet(gw.url, specs, sessions, clock=clock)
    cp1, cp2, cp3 = fleet["CP01"], fleet["CP02"], fleet["CP03"]
    await fleet.wait_until(lambda: fleet.online_count() == 3, WAIT_S)
    await clock.advance(60)
    await fleet.wait_until(
        lambda: all(p.transactions and p.transactions[0].transaction_id for p in (cp1, cp2))
    )
    await clock.advance(5 * 60)
    await fleet.wait_until(lambda: all(p.queued == 0 for p in fleet.points.values()), WAIT_S)

    await harness.stop_gateway(gw)
    await fleet.wait_until(lambda: fleet.online_count() == 0, WAIT_S)
    await clock.advance(30 * 60)  # T0 + 36 min: CP01 gone, CP03 arrived, all offline
    assert cp1.transactions[0].stop is not None and not cp1.transactions[0].stop_acknowledged
    assert cp3.transactions and cp3.transactions[0].started_offline
    assert cp2.queued >= 25

    gw2 = await harness.gateway(clock, port=port)
    await fleet.wait_until(
        lambda: fleet.online_count() == 3 and all(p.queued == 0 for p in fleet.points.values()), WAIT_S
    )
    assert cp1.transactions[0].stop_acknowledged
    assert cp3.transactions[0].transaction_id is not None
    assert sum(p.stats["replayed"] for p in fleet.points.values()) > 0

    for p in fleet.points.values():
        stored = gw2.storage.transactions(charge_point_id=p.id)
        assert len(stored) == len(p.transactions) == 1, p.id  # none lost, none doubled
        (tx,), (sim,) = stored, p.transactions
        assert not tx.orphan
        assert tx.id == sim.transaction_id
        assert tx.start_time == sim.start.replace(microsecond=sim.start.microsecond // 1000 * 1000)
        assert tx.meter_start_wh == sim.meter_start_wh
        assert (tx.stop_time is None) == (sim.stop is None)
        if sim.stop is not None:
            assert tx.meter_stop_wh == sim.meter_stop_wh and tx.stop_reason == "EVDisconnected"
        energy_samples = [
            mv
            for mv in gw2.storage.meter_values(p.id, transaction_id=tx.id, limit=100_000)
            if mv.measurand == "Energy.Active.Import.Register" and mv.context == "Sample.Periodic"
        ]
        assert len(energy_samples) == sim.meter_values_queued  # every sample once
        registers = [mv.value_num for mv in energy_samples]
        assert registers == sorted(registers)


def test_profile_store_composite() -> None:
    """Stack levels within a purpose, minimum across purposes, W converted with the phases."""
    store = ProfileStore(voltage_v=230.0)
    t0 = T0

    def profile(pid: int, purpose: str, level: int, periods: list[tuple[int, float]], **kw: Any) -> Any:
        return ChargingProfile(
            profile_id=pid, stack_level=level, purpose=purpose, rate_unit=kw.pop("unit", "A"),  # type: ignore[arg-type]
            periods=tuple(SchedulePeriod(s, v) for s, v in periods), start_schedule=t0, **kw,
        )  # fmt: skip

    store.install(0, profile(1, "TxDefaultProfile", 0, [(0, 6.0)]), t0)
    store.install(1, profile(2, "TxProfile", 1, [(0, 12.0), (600, 8.0)], transaction_id=7), t0)
    store.install(1, profile(3, "TxProfile", 2, [(0, 14.0)], duration_s=300, transaction_id=7), t0)
    store.install(0, profile(4, "ChargePointMaxProfile", 0, [(0, 6900.0)], unit="W"), t0)
    limit: Callable[..., float | None] = store.limit_a
    assert limit(1, t0, transaction_id=7, tx_start=t0) == 10.0  # level 2 (14 A) capped by 6900 W / 690
    assert limit(1, t0 + timedelta(seconds=400), transaction_id=7, tx_start=t0) == 10.0
    assert limit(1, t0 + timedelta(seconds=700), transaction_id=7, tx_start=t0) == 8.0
    assert limit(1, t0 + timedelta(seconds=700), phases=1) == 6.0  # no transaction: TxDefaultProfile
    periods = store.composite(1, t0, 900, transaction_id=7, tx_start=t0, phases=3, max_current_a=16.0)
    assert periods == [(0, 10.0), (600, 8.0)]
    assert store.composite(1, t0, 900, unit="W", phases=3, max_current_a=16.0) == [(0, 4140.0)]
    assert store.clear(purpose="TxProfile") == 2
    assert store.clear(profile_id=99) == 0
    assert store.clear() == 2 and store.limit_a(1, t0) is None
