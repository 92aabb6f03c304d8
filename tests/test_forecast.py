"""The arrival forecast: learned from a hand-made history, turned into expected EVs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from models.problem import ChargePoint, Session, Site
from scheduler.forecast import PREFIX, ArrivalForecast

STEP = timedelta(minutes=15)


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
