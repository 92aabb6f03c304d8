"""Plans to profiles, by hand-checked examples and invariants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpp_gateway import ChargingProfile, PlanError, failsafe_profile, plan_to_profile
from ocpp_gateway.dispatch import limit_at, measured_current_a, parse_rate_units
from ocpp_gateway.frames import validate_call

T0 = datetime(2024, 1, 15, 17, 0, tzinfo=UTC)
Q = timedelta(minutes=15)


def plan(*limits: float) -> list[tuple[datetime, float]]:
    return [(T0 + i * Q, a) for i, a in enumerate(limits)]


def test_plan_becomes_amps_profile_starting_in_the_current_interval():
    p = plan_to_profile(
        plan(16, 16, 10, 0),
        end=T0 + 4 * Q,
        now=T0 + Q + timedelta(minutes=3),
        phases=3,
        voltage_v=230,
        transaction_id=7,
    )
    assert p.start_schedule == T0 + Q  # in the past: the point is never unlimited meanwhile
    assert [(x.start_s, x.limit, x.number_phases) for x in p.periods] == [
        (0, 16.0, 3),
        (900, 10.0, 3),
        (1800, 0.0, 3),
    ]
    assert p.duration_s == 2700 and p.purpose == "TxProfile" and p.transaction_id == 7
    validate_call(
        "SetChargingProfile", {"connectorId": 1, "csChargingProfiles": p.to_ocpp()}, from_charge_point=False
    )
    assert ChargingProfile.from_ocpp(p.to_ocpp()) == p


def test_watts_with_voltage_and_phases():
    p = plan_to_profile(
        plan(10, 6.5),
        end=T0 + 2 * Q,
        now=T0,
        phases=1,
        voltage_v=230,
        rate_unit="W",
        purpose="TxDefaultProfile",
    )
    assert [x.limit for x in p.periods] == [2300.0, 1495.0] and p.rate_unit == "W"
    assert p.transaction_id is None


def test_merging_to_max_periods_never_loosens_a_limit():
    limits = [16, 6, 16, 6, 16, 6, 16, 6, 10, 12]
    p = plan_to_profile(
        plan(*limits),
        end=T0 + len(limits) * Q,
        now=T0,
        phases=3,
        voltage_v=230,
        max_periods=4,
        transaction_id=1,
    )
    assert len(p.periods) <= 4
    for i, a in enumerate(limits):
        assert limit_at(p, T0 + i * Q + Q / 2, voltage_v=230, phases=3) <= a


def test_fallback_period_after_the_plan_and_before_it():
    p = plan_to_profile(
        plan(16),
        end=T0 + Q,
        now=T0 - timedelta(minutes=10),
        phases=3,
        voltage_v=230,
        transaction_id=1,
        fallback_limit_a=6.0,
    )
    assert [(x.start_s, x.limit) for x in p.periods] == [(0, 6.0), (600, 16.0), (1500, 6.0)]
    assert p.duration_s is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"plan": []}, "plan"),
        ({"plan": [(T0, -1.0)]}, "plan[0].limit_a"),
        ({"plan": [(T0.replace(tzinfo=None), 6.0)]}, "plan[0].start"),
        ({"plan": [(T0, 6.0), (T0, 7.0)]}, "plan[1].start"),
        ({"end": T0}, "end"),
        ({"phases": 2}, "phases"),
    ],
)
def test_nonsense_plans_are_refused_naming_the_field(kwargs, field):
    args = {
        "plan": plan(6),
        "end": T0 + Q,
        "now": T0,
        "phases": 3,
        "voltage_v": 230.0,
        "transaction_id": 1,
    } | kwargs
    with pytest.raises(PlanError) as e:
        plan_to_profile(**args)
    assert e.value.field == field


def test_failsafe_is_open_ended_and_starts_in_the_past():
    p = failsafe_profile(6.0, now=T0)
    assert p.start_schedule < T0 and p.duration_s is None and p.periods[0].limit == 6.0 and p.stack_level == 0
    w = failsafe_profile(6.0, rate_unit="W", phases=3, voltage_v=230)
    assert w.periods[0].limit == 4140.0


def test_rate_units_and_measured_current():
    assert parse_rate_units("Current") == ("A",) and parse_rate_units("Power") == ("W",)
    assert parse_rate_units("Current,Power") == ("A", "W") and parse_rate_units(None) == ("A", "W")
    sv = [{"measurand": "Current.Import", "phase": p, "value": v} for p, v in (("L1", "9.5"), ("L2", "10.2"))]
    assert measured_current_a(sv, voltage_v=230, phases=3) == pytest.approx(10.2)
    power = [{"measurand": "Power.Active.Import", "unit": "kW", "value": "6.9"}]
    assert measured_current_a(power, voltage_v=230, phases=3) == pytest.approx(10.0)
    assert measured_current_a([{"value": "100"}], voltage_v=230, phases=3) is None


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=32), min_size=1, max_size=40),
    st.integers(min_value=1, max_value=12),
    st.integers(min_value=0, max_value=39 * 900),
)
def test_profile_never_above_plan_and_within_max_periods(limits, max_periods, now_s):
    now = T0 + timedelta(seconds=now_s)
    end = T0 + len(limits) * Q
    if end <= now:
        return
    p = plan_to_profile(
        plan(*limits), end=end, now=now, phases=3, voltage_v=230, max_periods=max_periods, transaction_id=1
    )
    assert len(p.periods) <= max_periods and p.periods[0].start_s == 0 and p.start_schedule <= now
    for i, a in enumerate(limits):
        mid = T0 + i * Q + Q / 2
        if mid >= now.replace(microsecond=0):
            assert limit_at(p, mid, voltage_v=230, phases=3) <= a + 1e-9
