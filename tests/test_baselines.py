"""Baseline policies: hand-checked tiny cases and properties on random small sites."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.baselines import edf, equal_share, llf, uncontrolled
from models.compiled import TOL_A, compile_problem
from models.instances import lamppost_district
from models.problem import ROTATIONS, VDE_UNBALANCE_A, ChargePoint, Node, Problem, Session, Site, TimeGrid
from models.schedule import Schedule, check_schedule

T0 = datetime(2024, 3, 4, 18, 0, tzinfo=UTC)
STEP = timedelta(minutes=15)
#: Energy of 1 A per phase on 3 phases over a 15-minute step at 230 V [kWh/A].
KWH_PER_A_3PH = 230.0 * 3 * 0.25 / 1000.0
CONTROLLED = (equal_share, edf, llf)
ALL = (uncontrolled, *CONTROLLED)


def at(step: float) -> datetime:
    return T0 + step * STEP


def make_problem(
    site_a: float | tuple[float, float, float],
    points: list[ChargePoint],
    sessions: list[Session],
    *,
    n_steps: int = 8,
    groups: tuple[Node, ...] = (),
    **kwargs,
) -> Problem:
    site = Site("s", 230.0, site_a, groups=groups, charge_points=tuple(points))
    grid = TimeGrid.uniform(T0, STEP, n_steps)
    return Problem(site=site, grid=grid, sessions=tuple(sessions), **kwargs)


def ev(i: int, cp: str, arrive: float, leave: float, energy_kwh: float, **kw) -> Session:
    return Session(f"ev{i}", cp, at(arrive), at(leave), energy_kwh, **kw)


def kinds(schedule: Schedule, *, limits: bool = True) -> set[str]:
    return {v.kind for v in check_schedule(schedule, limits=limits)}


# ---------------------------------------------------------------- hand-checked cases


def test_edf_serves_earlier_deadline_first() -> None:
    cps = [ChargePoint("a"), ChargePoint("b")]
    need = 16 * KWH_PER_A_3PH * 4  # four steps at 16 A
    # Session order puts the later deadline first: EDF must not follow session order.
    sessions = [ev(0, "a", 0, 8, need), ev(1, "b", 0, 4, need)]
    schedule = edf(make_problem(16.0, cps, sessions))
    np.testing.assert_allclose(schedule.current_a[1], [16] * 4 + [0] * 4)
    np.testing.assert_allclose(schedule.current_a[0], [0] * 4 + [16] * 4)
    assert schedule.policy == "edf"
    assert check_schedule(schedule) == []
    np.testing.assert_allclose(schedule.energy_kwh, [need, need])


def test_edf_ties_go_to_session_order() -> None:
    cps = [ChargePoint("a"), ChargePoint("b")]
    sessions = [ev(0, "a", 0, 4, 50.0), ev(1, "b", 0, 4, 50.0)]
    schedule = edf(make_problem(16.0, cps, sessions, n_steps=4))
    np.testing.assert_allclose(schedule.current_a, [[16] * 4, [0] * 4])


def test_llf_serves_least_laxity_first() -> None:
    cps = [ChargePoint("a"), ChargePoint("b")]
    # ev0 leaves first but needs one step; ev1 leaves later and needs every step it has.
    sessions = [ev(0, "a", 0, 8, 16 * KWH_PER_A_3PH), ev(1, "b", 0, 10, 16 * KWH_PER_A_3PH * 10)]
    problem = make_problem(16.0, cps, sessions, n_steps=10)
    lax = llf(problem)
    np.testing.assert_allclose(lax.current_a[1], [16] * 10)
    np.testing.assert_allclose(lax.current_a[0], [0] * 10)
    early = edf(problem)
    np.testing.assert_allclose(early.current_a[0], [16] + [0] * 9)
    np.testing.assert_allclose(early.current_a[1], [0] + [16] * 9)
    assert lax.total_energy_kwh == pytest.approx(16 * KWH_PER_A_3PH * 10)


def test_equal_share_splits_evenly() -> None:
    cps = [ChargePoint("a"), ChargePoint("b")]
    sessions = [ev(0, "a", 0, 4, 50.0), ev(1, "b", 0, 4, 50.0)]
    schedule = equal_share(make_problem(20.0, cps, sessions, n_steps=4))
    np.testing.assert_allclose(schedule.current_a, 10.0)
    assert schedule.policy == "equal_share"
    assert check_schedule(schedule) == []


def test_equal_share_drops_latest_departure_below_minimum() -> None:
    cps = [ChargePoint(x) for x in "abc"]
    # 16 A / 3 = 5.3 A < 6 A: the latest departure (ev0, first in session order) sits out.
    sessions = [ev(0, "a", 0, 8, 50.0), ev(1, "b", 0, 6, 50.0), ev(2, "c", 0, 7, 50.0)]
    schedule = equal_share(make_problem(16.0, cps, sessions, n_steps=2))
    np.testing.assert_allclose(schedule.current_a, [[0, 0], [8, 8], [8, 8]])
    assert check_schedule(schedule) == []


def test_equal_share_is_max_min_fair_across_groups() -> None:
    # One EV behind a 10 A cable, two on the site: the cable EV gets 10 A, the other two
    # share the rest of the 40 A site (15 A each), not a single 10 A level for everyone.
    groups = (Node("cable", 10.0),)
    cps = [ChargePoint("g", node_id="cable"), ChargePoint("a"), ChargePoint("b")]
    sessions = [ev(0, "g", 0, 2, 50.0), ev(1, "a", 0, 2, 50.0), ev(2, "b", 0, 2, 50.0)]
    schedule = equal_share(make_problem(40.0, cps, sessions, n_steps=2, groups=groups))
    np.testing.assert_allclose(schedule.current_a, [[10, 10], [15, 15], [15, 15]])


def test_equal_share_energy_capped_share_is_reused() -> None:
    # ev0 needs only 6 A worth of energy in the step; ev1 takes the other 14 A of 20 A.
    cps = [ChargePoint("a"), ChargePoint("b")]
    sessions = [ev(0, "a", 0, 1, 6 * KWH_PER_A_3PH), ev(1, "b", 0, 1, 50.0)]
    schedule = equal_share(make_problem(20.0, cps, sessions, n_steps=1))
    np.testing.assert_allclose(schedule.current_a, [[6], [14]])


def test_group_limit_tighter_than_site() -> None:
    groups = (Node("cable", 10.0),)
    cps = [ChargePoint("g1", node_id="cable"), ChargePoint("g2", node_id="cable"), ChargePoint("a")]
    sessions = [ev(0, "g1", 0, 2, 50.0), ev(1, "g2", 0, 3, 50.0), ev(2, "a", 0, 2, 50.0)]
    problem = make_problem(100.0, cps, sessions, n_steps=2, groups=groups)
    for policy in CONTROLLED:
        schedule = policy(problem)
        # 10 A for two EVs is below 2 x 6 A: one EV (the earlier deadline) gets the cable.
        np.testing.assert_allclose(schedule.current_a, [[10, 10], [0, 0], [16, 16]])
        assert check_schedule(schedule) == []
    assert "limit" in kinds(uncontrolled(problem))


def test_one_phase_ev_on_rotated_point_loads_l2() -> None:
    cps = [ChargePoint("r", phase_rotation="L2L3L1")]
    sessions = [ev(0, "r", 0, 2, 50.0, phases=1)]
    for policy in ALL:
        schedule = policy(make_problem(32.0, cps, sessions, n_steps=2))
        conn = schedule.connection_current_a()
        np.testing.assert_allclose(conn[:, 0], 0.0)
        np.testing.assert_allclose(conn[:, 2], 0.0)
        np.testing.assert_allclose(conn[:, 1], 16.0)


def test_unbalance_caps_one_phase_ev() -> None:
    cps = [ChargePoint("a", phases=1, max_current_a=32.0)]
    sessions = [ev(0, "a", 0, 2, 50.0)]
    problem = make_problem(63.0, cps, sessions, n_steps=2, max_unbalance_a=VDE_UNBALANCE_A)
    for policy in CONTROLLED:
        schedule = policy(problem)
        np.testing.assert_allclose(schedule.current_a, 20.0)
        assert check_schedule(schedule) == []
    free = uncontrolled(problem)
    np.testing.assert_allclose(free.current_a, 32.0)
    assert kinds(free) == {"unbalance"}
    assert check_schedule(free, limits=False) == []


def test_unbalanced_base_load_is_not_made_worse() -> None:
    # Base load 30 A on L1 only: already above 20 A apart. A 1-phase EV on L1 would widen the
    # gap and gets nothing; one on L2 narrows it and charges.
    cps = [
        ChargePoint("p1", phases=1, phase_rotation="L1L2L3"),
        ChargePoint("p2", phases=1, phase_rotation="L2L3L1"),
    ]
    sessions = [ev(0, "p1", 0, 2, 50.0), ev(1, "p2", 0, 2, 50.0)]
    base = np.tile([30.0, 0.0, 0.0], (2, 1))
    problem = make_problem(63.0, cps, sessions, n_steps=2, base_load_a=base, max_unbalance_a=VDE_UNBALANCE_A)
    for policy in CONTROLLED:
        schedule = policy(problem)
        np.testing.assert_allclose(schedule.current_a, [[0, 0], [16, 16]])
        assert check_schedule(schedule) == []


def test_unbalance_can_be_switched_off() -> None:
    cps = [ChargePoint("a", phases=1, max_current_a=32.0)]
    sessions = [ev(0, "a", 0, 2, 50.0)]
    problem = make_problem(63.0, cps, sessions, n_steps=2, max_unbalance_a=None)
    for policy in ALL:
        np.testing.assert_allclose(policy(problem).current_a, 32.0)


def test_last_step_takes_only_the_remaining_energy() -> None:
    cps = [ChargePoint("a"), ChargePoint("b")]
    step_kwh = 16 * KWH_PER_A_3PH
    # ev0: the remainder needs 8 A, delivered. ev1: it needs 2 A < 6 A, left undelivered.
    sessions = [ev(0, "a", 0, 4, step_kwh + 8 * KWH_PER_A_3PH), ev(1, "b", 0, 4, step_kwh + 0.3)]
    problem = make_problem(100.0, cps, sessions, n_steps=4)
    for policy in ALL:
        schedule = policy(problem)
        np.testing.assert_allclose(schedule.current_a, [[16, 8, 0, 0], [16, 0, 0, 0]])
        np.testing.assert_allclose(schedule.unmet_energy_kwh, [0.0, 0.3], atol=1e-9)


def test_no_current_outside_presence() -> None:
    cps = [ChargePoint("a")]
    # Arrives mid-step 1, leaves mid-step 4: only steps 2 and 3 are whole.
    sessions = [ev(0, "a", 1.5, 4.5, 50.0)]
    problem = make_problem(100.0, cps, sessions, n_steps=6)
    for policy in ALL:
        np.testing.assert_allclose(policy(problem).current_a, [[0, 0, 16, 16, 0, 0]])


def test_time_varying_limit() -> None:
    cps = [ChargePoint("a")]
    sessions = [ev(0, "a", 0, 3, 50.0)]
    limit = np.array([np.inf, 5.0, 8.0])
    problem = make_problem(100.0, cps, sessions, n_steps=3, node_limits_a={"site": limit})
    for policy in CONTROLLED:
        np.testing.assert_allclose(policy(problem).current_a, [[16, 0, 8]])


def test_uncontrolled_ignores_limits() -> None:
    cps = [ChargePoint(x) for x in "abc"]
    sessions = [ev(i, x, 0, 4, 16 * KWH_PER_A_3PH * 2) for i, x in enumerate("abc")]
    schedule = uncontrolled(make_problem(32.0, cps, sessions, n_steps=4))
    np.testing.assert_allclose(schedule.current_a, [[16, 16, 0, 0]] * 3)
    assert schedule.policy == "uncontrolled"
    assert check_schedule(schedule, limits=False) == []
    assert kinds(schedule) == {"limit"}


def test_base_load_above_site_limit_stops_charging_on_that_phase() -> None:
    cps = [
        ChargePoint("three"),
        ChargePoint("one_l1", phases=1),
        ChargePoint("one_l2", phases=1, phase_rotation="L2L3L1"),
    ]
    sessions = [
        ev(0, "three", 0, 2, 50.0),
        ev(1, "one_l1", 0, 2, 50.0),
        ev(2, "one_l2", 0, 2, 50.0),
    ]
    base = np.array([[110.0, 10.0, 10.0], [50.0, 10.0, 10.0]])  # step 0: L1 10 A over
    problem = make_problem(100.0, cps, sessions, n_steps=2, base_load_a=base, max_unbalance_a=None)
    for policy in CONTROLLED:
        schedule = policy(problem)
        violations = check_schedule(schedule)
        assert {v.kind for v in violations} == {"base_load"}
        assert [(v.step, v.where) for v in violations] == [(0, "node site L1")]
        assert violations[0].excess == pytest.approx(10.0)
        # Nothing on L1 in step 0; L2 still charges.
        assert schedule.current_a[0, 0] == 0.0
        assert schedule.current_a[1, 0] == 0.0
        assert schedule.current_a[2, 0] == pytest.approx(16.0)
        assert schedule.current_a[0, 1] > 0.0
    free = uncontrolled(problem)
    assert {v.kind for v in check_schedule(free, limits=False)} == {"base_load"}


def test_no_sessions_and_unreachable_minimum() -> None:
    cps = [ChargePoint("a")]
    for policy in ALL:
        assert policy(make_problem(16.0, cps, [], n_steps=3)).current_a.shape == (0, 3)
    # An EV whose on-board limit (1 kW on 3 phases = 1.4 A) is below 6 A never charges.
    sessions = [ev(0, "a", 0, 3, 10.0, max_power_kw=1.0)]
    for policy in ALL:
        np.testing.assert_allclose(policy(make_problem(16.0, cps, sessions, n_steps=3)).current_a, 0)


def test_variable_step_lengths() -> None:
    # The remainder after a 1-hour step is too small for 6 A over an hour but fits a shorter
    # step: the rule is per step.
    grid = TimeGrid(
        (T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2), T0 + timedelta(hours=2, minutes=5))
    )
    site = Site("s", 230.0, 100.0, charge_points=(ChargePoint("a"),))
    hour_kwh = 230.0 * 3 / 1000.0  # 1 A on 3 phases for 1 h
    sessions = (Session("e", "a", T0, grid.end, 16 * hour_kwh + 0.5),)
    problem = Problem(site=site, grid=grid, sessions=sessions)
    for policy in ALL:
        schedule = policy(problem)
        five_min_a = 0.5 / (hour_kwh / 12)
        np.testing.assert_allclose(schedule.current_a, [[16, 0, five_min_a]])
        assert schedule.unmet_energy_kwh[0] == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------- random small instances


@st.composite
def problems(draw: st.DrawFn, *, unbalance: bool = True) -> Problem:
    n_steps = draw(st.integers(1, 8))
    if draw(st.booleans()):
        grid = TimeGrid.uniform(T0, STEP, n_steps)
    else:  # uneven steps
        minutes = draw(st.lists(st.sampled_from([5, 15, 30, 60]), min_size=n_steps, max_size=n_steps))
        bounds = [T0]
        for m in minutes:
            bounds.append(bounds[-1] + timedelta(minutes=m))
        grid = TimeGrid(tuple(bounds))
    limit = st.floats(0.0, 80.0)
    phase_limit = st.one_of(limit, st.tuples(limit, limit, limit))
    groups: list[Node] = []
    for g in range(draw(st.integers(0, 3))):
        parent = draw(st.sampled_from(["site", *(n.id for n in groups)]))
        groups.append(Node(f"g{g}", draw(phase_limit), parent))
    node_ids = ["site", *(n.id for n in groups)]
    cps = []
    for i in range(draw(st.integers(1, 5))):
        max_a = draw(st.sampled_from([6.0, 10.0, 16.0, 32.0]))
        cps.append(
            ChargePoint(
                f"cp{i}",
                node_id=draw(st.sampled_from(node_ids)),
                phases=draw(st.sampled_from([1, 3])),
                phase_rotation=draw(st.sampled_from(list(ROTATIONS))),
                max_current_a=max_a,
                min_current_a=draw(st.sampled_from([0.0, 6.0])),
            )
        )
    span_h = (grid.end - grid.start).total_seconds() / 3600.0
    sessions = []
    for i in range(draw(st.integers(0, 8))):
        arrive_h = draw(st.floats(-0.5, span_h))
        stay_h = draw(st.floats(0.1, span_h + 1.0))
        sessions.append(
            Session(
                f"ev{i}",
                draw(st.sampled_from(cps)).id,
                T0 + timedelta(hours=arrive_h),
                T0 + timedelta(hours=arrive_h + stay_h),
                draw(st.floats(0.0, 30.0)),
                max_power_kw=draw(st.one_of(st.none(), st.floats(1.0, 22.0))),
                phases=draw(st.sampled_from([None, 1, 3])),
            )
        )
    base = None
    if draw(st.booleans()):
        base = np.array(
            draw(st.lists(st.floats(0.0, 100.0), min_size=3 * n_steps, max_size=3 * n_steps))
        ).reshape(n_steps, 3)
    node_limits = {}
    if draw(st.booleans()):
        node = draw(st.sampled_from(node_ids))
        values = draw(st.lists(st.one_of(st.just(np.inf), limit), min_size=n_steps, max_size=n_steps))
        node_limits[node] = np.array(values)
    max_unbalance = draw(st.one_of(st.none(), st.floats(0.0, 30.0))) if unbalance else None
    site = Site("s", 230.0, draw(phase_limit), groups=tuple(groups), charge_points=tuple(cps))
    return Problem(
        site=site,
        grid=grid,
        sessions=tuple(sessions),
        base_load_a=base,
        node_limits_a=node_limits,
        max_unbalance_a=max_unbalance,
    )


FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _base_load_only(violations: list, problem: Problem) -> None:
    assert all(v.kind == "base_load" for v in violations), violations
    expected = int((compile_problem(problem).base_violation_a > 1e-4).sum())
    assert len(violations) == expected


@FAST
@given(problems())
def test_controlled_policies_are_feasible(problem: Problem) -> None:
    for policy in CONTROLLED:
        schedule = policy(problem)
        assert schedule.policy == policy.__name__
        _base_load_only(check_schedule(schedule), problem)


@FAST
@given(problems())
def test_uncontrolled_obeys_everything_but_limits(problem: Problem) -> None:
    _base_load_only(check_schedule(uncontrolled(problem), limits=False), problem)


@FAST
@given(problems())
def test_uncontrolled_delivers_at_least_as_much(problem: Problem) -> None:
    """Per session, uncontrolled delivers what any other policy does -- except that the
    0-or-minimum rule can strand its last bit: a remainder below ``min_current_a`` for a step
    stays undelivered, while a policy that charged slower may end on a larger, deliverable
    remainder. That gap is below the minimum current for the session's longest step."""
    c = compile_problem(problem)
    free = uncontrolled(problem).energy_kwh
    if c.n_sessions:
        stranded_kwh = c.min_current_a * (c.kwh_per_a * c.present).max(axis=1, initial=0.0)
    else:
        stranded_kwh = np.zeros(0)
    for policy in CONTROLLED:
        other = policy(problem).energy_kwh
        assert np.all(free + stranded_kwh >= other - 1e-6)


def test_uncontrolled_can_deliver_less_because_of_the_minimum_rule() -> None:
    # The example behind the tolerance above: a 6 A limit in step 0 makes EDF charge 6 A,
    # then the remaining 14.3 A in step 1; uncontrolled charges 16 A and is left with a
    # remainder worth 4.3 A < 6 A, which it may not deliver.
    cps = [ChargePoint("a")]
    need = 20.3 * KWH_PER_A_3PH
    problem = make_problem(
        100.0, cps, [ev(0, "a", 0, 2, need)], n_steps=2, node_limits_a={"site": [6.0, np.inf]}
    )
    np.testing.assert_allclose(edf(problem).current_a, [[6.0, 14.3]])
    np.testing.assert_allclose(uncontrolled(problem).current_a, [[16.0, 0.0]])


@FAST
@given(problems(unbalance=False))
def test_priority_policies_are_greedy(problem: Problem) -> None:
    """Without the unbalance rule (whose rows a later session can loosen), every session a
    greedy policy leaves below its own cap is blocked by a full node/phase in that step."""
    c = compile_problem(problem)
    for policy in CONTROLLED:
        schedule = policy(problem)
        cur = schedule.current_a
        delivered = np.cumsum(cur * c.kwh_per_a, axis=1)
        remaining = c.energy_kwh[:, None] - np.hstack([np.zeros((c.n_sessions, 1)), delivered[:, :-1]])
        slack = c.headroom_a - c.phase_load_a(cur)  # (N, T, 3)
        for s, k in zip(*np.nonzero(c.present), strict=True):
            own = min(c.max_current_a[s], remaining[s, k] / c.kwh_per_a[s, k])
            if own < c.min_current_a[s] - TOL_A:
                assert cur[s, k] == 0.0
                continue
            room = min(
                own - cur[s, k],
                slack[np.ix_(c.member[:, s], [k], c.phase_mask[s])].min(),
            )
            if cur[s, k] == 0.0:
                assert room < max(c.min_current_a[s], 1e-6) + 1e-6, (policy.__name__, s, k, room)
            else:
                assert room <= 1e-6, (policy.__name__, s, k, room)


@FAST
@given(problems())
def test_policies_are_deterministic(problem: Problem) -> None:
    for policy in ALL:
        np.testing.assert_array_equal(policy(problem).current_a, policy(problem).current_a)


def test_lamppost_district_smoke() -> None:
    problem = lamppost_district(120, seed=3)
    free = uncontrolled(problem)
    assert check_schedule(free, limits=False) == []
    for policy in CONTROLLED:
        schedule = policy(problem)
        assert check_schedule(schedule) == []
        # Uncontrolled can strand a last remainder below the 6 A minimum that a slower policy
        # delivers (see test_uncontrolled_can_deliver_less_because_of_the_minimum_rule).
        c = compile_problem(problem)
        slack_kwh = float((c.min_current_a * c.kwh_per_a.max(axis=1)).sum())
        assert 0 < schedule.total_energy_kwh <= free.total_energy_kwh + slack_kwh
