"""Forecasts from a hand-made history: expected EVs, and the capacity to hold for later EVs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from models.problem import ChargePoint, Session, Site, TimeGrid
from scheduler.forecast import PREFIX, ArrivalForecast, LearningReserve, LoadForecast
from scheduler.snapshot import EVState

STEP = timedelta(minutes=15)
#: Monday after the two weeks of history(), 08:00 UTC.
T_MON = datetime(2024, 3, 18, 8, 0, tzinfo=UTC)


def site() -> Site:
    rot = ("L1L2L3", "L2L3L1", "L3L1L2")
    cps = tuple(ChargePoint(f"p{i}", phases=1, phase_rotation=rot[i], max_current_a=32.0) for i in range(3))
    return Site("s", 230.0, 30.0, charge_points=cps)


def history() -> list[Session]:
    """Two weeks, Monday 2024-03-04 to Friday 2024-03-15 (UTC): every weekday at 09:00 one EV
    on p0 (L1) with 10 kWh, staying 8 h; nothing at the weekend."""
    out = []
    for day in range(12):
        t = datetime(2024, 3, 4, 9, 0, tzinfo=UTC) + timedelta(days=day)
        if t.weekday() < 5:
            out.append(Session(f"h{day}", "p0", t, t + timedelta(hours=8), 10.0))
    return out


def test_fit_by_hand() -> None:
    fc = ArrivalForecast.fit(history(), site(), tz="UTC", block_h=2)
    assert fc.groups == ((0,), (1,), (2,))
    assert fc.points == ("p0", "p1", "p2")
    # 10 sessions of 10 kWh over the 10 weekdays of the span: 10 kWh per weekday, block 8-10 h.
    assert fc.energy_kwh[0, 0, 4] == pytest.approx(10.0)
    assert fc.stay_h[0, 0, 4] == pytest.approx(8.0)
    assert fc.energy_kwh.sum() == pytest.approx(10.0)  # nothing else, nothing at the weekend


def test_until_drops_later_sessions() -> None:
    fc = ArrivalForecast.fit(history(), site(), tz="UTC", until=datetime(2024, 3, 9, tzinfo=UTC))
    # Monday to Friday of the first week: 5 sessions over 5 weekdays.
    assert fc.energy_kwh[0, 0, 4] == pytest.approx(10.0)
    assert fc.energy_kwh[0, 1].sum() == 0.0


def test_expected_evs() -> None:
    fc = ArrivalForecast.fit(history(), site(), tz="UTC")
    now = datetime(2024, 3, 18, 7, 0, tzinfo=UTC)  # a Monday
    evs = fc.expected(now, now + timedelta(hours=12), STEP, share=0.5)
    assert len(evs) == 1
    (e,) = evs
    assert e.session_id.startswith(PREFIX)
    assert e.charge_point_id == "p0"
    assert e.arrival == datetime(2024, 3, 18, 8, 0, tzinfo=UTC)  # the block's start
    assert e.departure == datetime(2024, 3, 18, 16, 0, tzinfo=UTC)
    assert e.energy_requested_kwh == pytest.approx(5.0)
    # At the weekend nothing is expected; never at or before now.
    sat = datetime(2024, 3, 23, 7, 0, tzinfo=UTC)
    assert fc.expected(sat, sat + timedelta(hours=12), STEP) == ()
    mid = datetime(2024, 3, 18, 9, 0, tzinfo=UTC)  # 09:15-10:00 of the 8-10 block is left
    (late,) = fc.expected(mid, mid + timedelta(hours=12), STEP)
    assert late.arrival == mid + STEP
    assert late.energy_requested_kwh == pytest.approx(10.0 * 0.375)  # 45 min of 2 h
    assert late.departure == mid + STEP + timedelta(hours=8)


def test_block_must_divide_a_day() -> None:
    with pytest.raises(ValueError, match="block_h"):
        ArrivalForecast.fit(history(), site(), block_h=5)


# ---------------------------------------------------------------- capacity held for later EVs


def grid_from(now: datetime, steps: int) -> TimeGrid:
    return TimeGrid.uniform(now, STEP, steps)


def test_load_forecast_by_hand() -> None:
    # Each weekday one EV on p0 (L1) at 09:00 with 10 kWh for 8 h: spread over its stay that
    # is 10 kWh / (8 h * 230 V) = 5.4348 A from 09:00 to 17:00.
    fc = LoadForecast.fit(history(), site(), tz="UTC", scale=1.0)
    now = datetime(2024, 3, 18, 8, 0, tzinfo=UTC)  # a Monday after the history
    held = fc.reserve_a(now, grid_from(now, 40))
    assert set(held) == {"site"}
    level = 10_000.0 / (8 * 230.0)
    l1 = held["site"][:, 0]
    # The step from 09:00 holds nothing: an EV arriving in it is not plugged in for all of it.
    np.testing.assert_allclose(l1, [0.0] * 5 + [level] * 31 + [0.0] * 4, rtol=1e-6)
    assert held["site"][:, 1:].sum() == 0.0  # p0 loads L1 only
    # Later the same morning the 09:00 EV has come: only the next day's is held.
    later = datetime(2024, 3, 18, 9, 30, tzinfo=UTC)
    held = fc.reserve_a(later, grid_from(later, 96))["site"][:, 0]
    assert held[:95].sum() == 0.0
    assert held[95] == pytest.approx(level)  # Tuesday 09:15-09:30
    # The mean is over the weekdays of the history's span (days without an EV count as 0);
    # scale multiplies.
    first_week = LoadForecast.fit(history()[:5], site(), tz="UTC", scale=2.0)
    np.testing.assert_allclose(first_week.reserve_a(now, grid_from(now, 40))["site"][:, 0], 2 * l1, rtol=1e-6)
    # Every other EV: five over the nine weekdays from Monday the 4th to Thursday the 14th.
    gaps = LoadForecast.fit(history()[::2], site(), tz="UTC")
    assert gaps.reserve_a(now, grid_from(now, 40))["site"][10, 0] == pytest.approx(level * 5 / 9)
    max90 = LoadForecast.fit(history()[:5], site(), tz="UTC", quantile=0.9)
    assert max90.reserve_a(now, grid_from(now, 40))["site"][10, 0] == pytest.approx(level)


def test_load_forecast_holds_everything_without_enough_days() -> None:
    fc = LoadForecast.fit(history(), site(), tz="UTC")
    saturday = datetime(2024, 3, 16, 8, 0, tzinfo=UTC)  # two weekend days in the span, < MIN_DAYS
    held = fc.reserve_a(saturday, grid_from(saturday, 4))["site"]
    assert held.shape == (4, 3)
    assert (held[1:] >= 1e5).all()  # more than any node has: everything is held
    assert (held[0] == 0).all()  # nobody arriving later is plugged in during the first step
    few = LoadForecast.fit(history()[:3], site(), tz="UTC")  # three weekdays
    monday = datetime(2024, 3, 18, 8, 0, tzinfo=UTC)
    assert (few.reserve_a(monday, grid_from(monday, 4))["site"][1:] >= 1e5).all()


def test_learning_reserve_learns_only_from_the_past() -> None:
    s = site()
    # Given as history but after the first snapshot: the future, never used.
    tue = datetime(2024, 3, 19, 9, 0, tzinfo=UTC)
    future = Session("future", "p1", tue, tue + timedelta(hours=8), 50.0)
    learner = LearningReserve([future], tz="UTC", scale=1.0)
    with pytest.raises(RuntimeError, match="observe"):
        learner.reserve_a(T_MON, grid_from(T_MON, 4))
    # It sees one EV on p0 arrive at 09:00 every weekday for a week.
    for day in range(5):
        now = T_MON + timedelta(days=day)
        learner.observe(now, s, ())
        # Fewer than five past weekdays: everything held.
        assert (learner.reserve_a(now, grid_from(now, 8))["site"][1:] >= 1e5).all()
        arrival = now + timedelta(hours=1)
        ev = EVState(f"d{day}", "p0", arrival, arrival + timedelta(hours=8), 10.0)
        learner.observe(arrival + timedelta(minutes=30), s, (ev,))
    monday = T_MON + timedelta(days=7)
    learner.observe(monday, s, ())
    held = learner.reserve_a(monday, grid_from(monday, 12))["site"]
    assert held[5, 0] == pytest.approx(10_000.0 / (8 * 230.0))  # 09:15 on L1, as learned
    assert held[:, 1].sum() == 0.0  # nothing on L2: the session on p1 was not learned from
