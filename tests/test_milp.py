"""The charging MILP solved with HiGHS: hand-computed optima, both methods, and properties.

Unit of the hand computations: at 230 V, 1 A per phase for one hour is 0.23 kWh on one phase
and 0.69 kWh on three. The objective (models.formulation) is "cost minus the value of what is
delivered": with default weights every kWh is worth -2 EUR, plus 1e-4 EUR per kWh and hour of
delay (step mid-point), plus price and CO2 terms when signals are given.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.baselines import edf, equal_share, llf
from models.compiled import compile_problem
from models.errors import ProblemError
from models.formulation import build_formulation
from models.highs import SolveResult, SolverOptions, SolveStatus, solve, solve_lp_relaxation
from models.instances import lamppost_district
from models.problem import (
    ROTATIONS,
    ChargePoint,
    EmissionTarget,
    Node,
    Problem,
    Session,
    Signals,
    Site,
    TimeGrid,
    Weights,
)
from models.schedule import Schedule, check_schedule

T0 = datetime(2024, 3, 4, 18, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
#: Energy of 1 A per phase for one hour at 230 V [kWh/A], on three phases and on one.
KWH_3PH = 0.69
KWH_1PH = 0.23
#: Default weights: value of a kWh [EUR] and cost of delay [EUR/(kWh h)].
VALUE = 2.0
EARLY = 1e-4

METHODS = {
    "lp-repair": SolverOptions(method="lp-repair"),
    "mip": SolverOptions(method="mip", mip_rel_gap=1e-6),
}
BASELINES = (equal_share, edf, llf)


@pytest.fixture(params=list(METHODS))
def options(request: pytest.FixtureRequest) -> SolverOptions:
    return METHODS[request.param]


def make_problem(
    site_a: float | tuple[float, float, float],
    points: list[ChargePoint],
    sessions: list[Session],
    *,
    n_steps: int = 1,
    groups: tuple[Node, ...] = (),
    **kwargs,
) -> Problem:
    site = Site("s", 230.0, site_a, groups=groups, charge_points=tuple(points))
    return Problem(site=site, grid=TimeGrid.uniform(T0, HOUR, n_steps), sessions=tuple(sessions), **kwargs)


def ev(i: int, cp: str, arrive: float, leave: float, energy_kwh: float, **kw) -> Session:
    """Session ``ev{i}`` on point ``cp``, plugged in from hour ``arrive`` to hour ``leave``."""
    return Session(f"ev{i}", cp, T0 + arrive * HOUR, T0 + leave * HOUR, energy_kwh, **kw)


def solved(problem: Problem, options: SolverOptions) -> SolveResult:
    """Solve, and check what every tiny case must satisfy: optimal, no broken rule."""
    result = solve(problem, options)
    assert result.status == SolveStatus.OPTIMAL, result.message
    assert result.ok
    assert result.method == options.method
    assert check_schedule(result.schedule) == []
    assert result.bound_eur <= result.objective_eur + 1e-9
    return result


def formulation_objective(schedule: Schedule) -> float:
    """The MILP objective of any schedule, from the formulation's own coefficients.

    Pair currents go into the pair columns; the auxiliary columns get the values the
    formulation docstring defines (peak = highest connection current per phase, share =
    smallest share of need met, excess = emissions above the target). Checks on the way that
    the schedule is a feasible point of the matrices: nothing off the pairs, every pair 0 or in
    [min, pair_ub_a], every row within its bounds.
    """
    problem = schedule.problem
    c = compile_problem(problem)
    form = build_formulation(c)
    cur = schedule.current_a
    off_pairs = cur.copy()
    off_pairs[c.pair_s, c.pair_k] = 0.0
    assert np.all(off_pairs <= 1e-4), "current where the model has no pair"
    x_pairs = cur[c.pair_s, c.pair_k]
    assert np.all(x_pairs <= form.col_upper[: form.n_pairs] + 1e-6)
    assert np.all((x_pairs <= 1e-6) | (x_pairs >= form.semi_lower - 1e-6))
    x = np.zeros(form.n_cols)
    x[: form.n_pairs] = x_pairs
    if form.col_peak.stop > form.col_peak.start:
        x[form.col_peak] = schedule.connection_current_a().max(axis=0)
    if form.col_share is not None:
        served = np.unique(c.pair_s)
        served = served[c.energy_kwh[served] > 0]
        share = (schedule.energy_kwh[served] / c.energy_kwh[served]).min() if served.size else 1.0
        x[form.col_share] = np.clip(share, 0.0, 1.0)
    target, co2 = problem.target, problem.signals.co2_g_per_kwh
    if form.col_excess.stop > form.col_excess.start:
        kwh = c.pair_kwh_per_a * x_pairs
        excess = []
        if target.max_intensity_g_per_kwh is not None:
            excess.append(((co2[c.pair_k] - target.max_intensity_g_per_kwh) * kwh).sum() / 1000.0)
        if target.budget_kg is not None:
            excess.append((co2[c.pair_k] * kwh).sum() / 1000.0 - target.budget_kg)
        x[form.col_excess] = np.maximum(excess, 0.0)
    act = form.a @ x
    assert np.all(act <= form.row_upper + 1e-6), "a row of the formulation is broken"
    assert np.all(act >= form.row_lower - 1e-6), "a row of the formulation is broken"
    return float(form.c @ x)


def objective(*kwh_at_hour: tuple[float, float]) -> float:
    """Default-weight objective of energy delivered as (kWh, step mid-point hour) pairs."""
    return sum(-VALUE * e + EARLY * h * e for e, h in kwh_at_hour)


# ---------------------------------------------------------------- two EVs, one limit


def test_two_evs_share_the_site_limit(options: SolverOptions) -> None:
    # Site 16 A per phase, 3-phase EVs, two one-hour steps.
    # ev0 (step 0 only) wants 5 kWh = 5 / 0.69 = 7.246 A; ev1 (both steps) wants 12 kWh.
    # Step 0: ev0 7.246 A, ev1 takes the rest 16 - 7.246 = 8.754 A (>= 6 A) = 6.04 kWh, early
    # rather than late because of the delay cost. Step 1: ev1 the remaining 12 - 6.04 = 5.96 kWh
    # = 8.638 A. Everyone gets all: 17 kWh.
    problem = make_problem(
        16.0, [ChargePoint("a"), ChargePoint("b")], [ev(0, "a", 0, 1, 5.0), ev(1, "b", 0, 2, 12.0)], n_steps=2
    )
    result = solved(problem, options)
    a0 = 5.0 / KWH_3PH
    b1 = (12.0 - (16.0 - a0) * KWH_3PH) / KWH_3PH
    np.testing.assert_allclose(result.schedule.current_a, [[a0, 0.0], [16.0 - a0, b1]], atol=1e-6)
    np.testing.assert_allclose(result.schedule.energy_kwh, [5.0, 12.0])
    assert result.unmet_energy_kwh == pytest.approx(0.0, abs=1e-9)
    # -2 * 17 + 1e-4 * (0.5 * 5 + 0.5 * 6.04 + 1.5 * 5.96) = -33.998554
    expected = objective((5.0, 0.5), ((16.0 - a0) * KWH_3PH, 0.5), (b1 * KWH_3PH, 1.5))
    assert expected == pytest.approx(-33.998554)
    assert result.objective_eur == pytest.approx(expected, abs=1e-7)
    assert result.gap <= options.mip_rel_gap


def test_higher_priority_gets_the_whole_limit(options: SolverOptions) -> None:
    # One hour, 16 A, both want more than 16 A for an hour (11.04 kWh). Any split that leaves
    # both at 0 or >= 6 A delivers 16 * 0.69 = 11.04 kWh; priority 2 makes ev1's kWh worth more.
    problem = make_problem(
        16.0,
        [ChargePoint("a"), ChargePoint("b")],
        [ev(0, "a", 0, 1, 20.0), ev(1, "b", 0, 1, 20.0, priority=2.0)],
    )
    result = solved(problem, options)
    np.testing.assert_allclose(result.schedule.current_a, [[0.0], [16.0]], atol=1e-6)
    np.testing.assert_allclose(result.schedule.energy_kwh, [0.0, 11.04])
    # -2 * 2 * 11.04 + 1e-4 * 0.5 * 11.04
    assert result.objective_eur == pytest.approx(-4 * 11.04 + EARLY * 0.5 * 11.04)


def test_priority_can_outweigh_total_energy(options: SolverOptions) -> None:
    # 10 A per phase for an hour. ev0: 1-phase on L1, priority 4: at 10 A it gets 2.3 kWh,
    # worth 4 * 2 * 2.3 = 18.4 EUR. ev1: 3-phase, priority 1: at 10 A 6.9 kWh, worth 13.8 EUR.
    # Both loading L1 is impossible (6 + 6 > 10), so the MILP serves ev0 and delivers less
    # energy in total than EDF, which serves ev1 (earlier departure): priority-weighted energy
    # is what the MILP maximises, not kWh.
    points = [ChargePoint("one", phases=1), ChargePoint("three")]
    sessions = [ev(0, "one", 0, 2, 20.0, priority=4.0), ev(1, "three", 0, 1, 20.0)]
    problem = make_problem(10.0, points, sessions)
    result = solved(problem, options)
    np.testing.assert_allclose(result.schedule.current_a, [[10.0], [0.0]], atol=1e-6)
    baseline = edf(problem)
    np.testing.assert_allclose(baseline.current_a, [[0.0], [10.0]])
    assert result.schedule.total_energy_kwh == pytest.approx(2.3)
    assert baseline.total_energy_kwh == pytest.approx(6.9)
    assert result.objective_eur < formulation_objective(baseline)


# ---------------------------------------------------------------- phases and groups


@pytest.mark.parametrize(("rotation", "phase"), [("L1L2L3", 0), ("L2L3L1", 1), ("L3L1L2", 2)])
def test_one_phase_ev_loads_the_first_phase_of_the_rotation(
    options: SolverOptions, rotation: str, phase: int
) -> None:
    points = [ChargePoint("r", phase_rotation=rotation)]
    sessions = [ev(0, "r", 0, 1, 20.0, phases=1)]
    # A 10 A limit on that phase alone binds: 10 A = 2.3 kWh.
    tight = [100.0, 100.0, 100.0]
    tight[phase] = 10.0
    result = solved(make_problem(tuple(tight), points, sessions), options)
    np.testing.assert_allclose(result.schedule.current_a, [[10.0]], atol=1e-6)
    assert result.schedule.energy_kwh[0] == pytest.approx(10.0 * KWH_1PH)
    conn = result.schedule.connection_current_a()[0]
    np.testing.assert_allclose(np.delete(conn, phase), 0.0, atol=1e-9)
    assert conn[phase] == pytest.approx(10.0)
    # A 10 A limit on the two other phases does not: the EV takes its 16 A.
    loose = [10.0, 10.0, 10.0]
    loose[phase] = 100.0
    result = solved(make_problem(tuple(loose), points, sessions), options)
    np.testing.assert_allclose(result.schedule.current_a, [[16.0]], atol=1e-6)


def test_one_phase_ev_on_l2l3l1_point_with_l1_and_l2_limits(options: SolverOptions) -> None:
    points = [ChargePoint("r", phase_rotation="L2L3L1")]
    sessions = [ev(0, "r", 0, 1, 20.0, phases=1)]
    l2_only = solved(make_problem((100.0, 8.0, 100.0), points, sessions), options)
    np.testing.assert_allclose(l2_only.schedule.current_a, [[8.0]], atol=1e-6)
    l1_only = solved(make_problem((8.0, 100.0, 100.0), points, sessions), options)
    np.testing.assert_allclose(l1_only.schedule.current_a, [[16.0]], atol=1e-6)
    # A 1-phase point gives the same as a 1-phase EV on a 3-phase point.
    one_phase_point = [ChargePoint("r", phases=1, phase_rotation="L2L3L1")]
    sessions = [ev(0, "r", 0, 1, 20.0)]
    result = solved(make_problem((100.0, 8.0, 100.0), one_phase_point, sessions), options)
    np.testing.assert_allclose(result.schedule.current_a, [[8.0]], atol=1e-6)


def test_group_limit_tighter_than_the_site(options: SolverOptions) -> None:
    # Cable 10 A under a 100 A site. Two EVs on the cable cannot both be on (6 + 6 > 10 A):
    # the priority-1.5 one gets the whole 10 A; the EV at the site its full 16 A.
    groups = (Node("feeder", 60.0), Node("cable", 10.0, "feeder"))
    points = [ChargePoint("c1", node_id="cable"), ChargePoint("c2", node_id="cable"), ChargePoint("s")]
    sessions = [ev(0, "c1", 0, 2, 50.0), ev(1, "c2", 0, 2, 50.0, priority=1.5), ev(2, "s", 0, 2, 50.0)]
    result = solved(make_problem(100.0, points, sessions, n_steps=2, groups=groups), options)
    np.testing.assert_allclose(result.schedule.current_a, [[0, 0], [10, 10], [16, 16]], atol=1e-6)
    # Energy: (10 + 16) A * 0.69 kWh/A * 2 h.
    assert result.schedule.total_energy_kwh == pytest.approx(26 * KWH_3PH * 2)


def test_nested_group_limits_per_phase(options: SolverOptions) -> None:
    # Feeder 20 A on L1, cable under it 30 A: the feeder binds. Three 1-phase EVs on L1 under
    # the cable: at most three on if each >= 6 A, and 20 A in total; a 1-phase EV on L2 under
    # the same cable is not touched by the L1 limit.
    groups = (Node("feeder", (20.0, 100.0, 100.0)), Node("cable", 30.0, "feeder"))
    points = [ChargePoint(f"p{i}", node_id="cable", phases=1) for i in range(3)]
    points.append(ChargePoint("q", node_id="cable", phases=1, phase_rotation="L2L3L1"))
    sessions = [ev(i, f"p{i}", 0, 1, 20.0) for i in range(3)] + [ev(3, "q", 0, 1, 20.0)]
    result = solved(make_problem(100.0, points, sessions, groups=groups), options)
    cur = result.schedule.current_a[:, 0]
    assert cur[:3].sum() == pytest.approx(20.0)
    assert cur[3] == pytest.approx(16.0)
    assert result.schedule.total_energy_kwh == pytest.approx(36.0 * KWH_1PH)


# ---------------------------------------------------------------- the 0-or-minimum rule


def test_energy_below_one_minimum_step_gets_nothing(options: SolverOptions) -> None:
    # 3 kWh over a one-hour step is 3 / 0.69 = 4.35 A < 6 A: the EV cannot be served at all,
    # in any of its steps. The other EV takes the whole 16 A = 11.04 kWh per hour.
    points = [ChargePoint("a"), ChargePoint("b")]
    sessions = [ev(0, "a", 0, 2, 3.0), ev(1, "b", 0, 2, 50.0)]
    result = solved(make_problem(16.0, points, sessions, n_steps=2), options)
    np.testing.assert_allclose(result.schedule.current_a, [[0, 0], [16, 16]], atol=1e-6)
    np.testing.assert_allclose(result.schedule.unmet_energy_kwh, [3.0, 50.0 - 2 * 11.04])


def test_energy_below_one_minimum_step_alone() -> None:
    # The same EV alone: no pair can be on, the model is empty. (method="mip": see
    # test_mip_without_pairs_is_optimal_zero.)
    problem = make_problem(16.0, [ChargePoint("a")], [ev(0, "a", 0, 2, 3.0)], n_steps=2)
    result = solved(problem, METHODS["lp-repair"])
    np.testing.assert_allclose(result.schedule.current_a, 0.0)
    assert result.objective_eur == 0.0
    assert result.unmet_energy_kwh == pytest.approx(3.0)


def test_at_most_two_evs_on_when_three_minimums_do_not_fit(options: SolverOptions) -> None:
    # 16 A for three EVs capped at 10 A: 3 * 6 A = 18 A > 16 A, so one stays off; one alone
    # would use only 10 A, so exactly two are on and use all 16 A (11.04 kWh).
    points = [ChargePoint(x, max_current_a=10.0) for x in "abc"]
    sessions = [ev(i, x, 0, 1, 50.0) for i, x in enumerate("abc")]
    result = solved(make_problem(16.0, points, sessions), options)
    cur = result.schedule.current_a[:, 0]
    assert (cur > 0).sum() == 2
    assert cur.sum() == pytest.approx(16.0)
    assert np.all((cur == 0) | (cur >= 6.0 - 1e-9))
    assert result.schedule.total_energy_kwh == pytest.approx(11.04)


def test_lp_relaxation_bound_below_the_milp_optimum(options: SolverOptions) -> None:
    # Site 10 A, one hour. ev0 wants 8 A worth (5.52 kWh); ev1 is capped at 6 A.
    # LP relaxation: ev0 8 A + ev1 2 A = 10 A = 6.9 kWh. MILP: ev1 at 6 A leaves 4 A < 6 A for
    # ev0, so the best is ev0 8 A alone = 5.52 kWh (ev1 alone would give only 6 A).
    points = [ChargePoint("a"), ChargePoint("b", max_current_a=6.0)]
    sessions = [ev(0, "a", 0, 1, 8 * KWH_3PH), ev(1, "b", 0, 1, 50.0)]
    problem = make_problem(10.0, points, sessions)
    lp = solve_lp_relaxation(problem)
    assert lp.objective_eur == pytest.approx(objective((6.9, 0.5)))
    result = solved(problem, options)
    np.testing.assert_allclose(result.schedule.current_a, [[8.0], [0.0]], atol=1e-6)
    assert result.objective_eur == pytest.approx(objective((5.52, 0.5)))
    assert result.gap <= options.mip_rel_gap
    # The gap of the relaxation (20 %) is closed by branch and bound, not by the LP bound.
    assert result.bound_eur > lp.objective_eur + 1.0
    if options.method == "lp-repair":
        assert "mip_s" in result.stages


# ---------------------------------------------------------------- signals and targets


def test_price_moves_charging_to_cheap_steps(options: SolverOptions) -> None:
    # Prices 200, 50, 100 EUR/MWh; 15 kWh = 21.739 A-hours. The cheapest hour takes as much as
    # it can while the rest still makes 6 A in the next cheapest hour: 15.739 A + 6 A (16 A +
    # 5.739 A would break the 6 A rule). Cost 10.86 kWh * 0.05 + 4.14 kWh * 0.10 EUR/kWh.
    problem = make_problem(
        100.0,
        [ChargePoint("a")],
        [ev(0, "a", 0, 3, 15.0)],
        n_steps=3,
        signals=Signals(price_eur_per_mwh=[200.0, 50.0, 100.0]),
    )
    result = solved(problem, options)
    np.testing.assert_allclose(result.schedule.current_a, [[0.0, 15.0 / KWH_3PH - 6.0, 6.0]], atol=1e-6)
    assert result.schedule.energy_kwh[0] == pytest.approx(15.0)
    cheap_kwh, late_kwh = 15.0 - 6 * KWH_3PH, 6 * KWH_3PH
    expected = objective((cheap_kwh, 1.5), (late_kwh, 2.5)) + 0.05 * cheap_kwh + 0.10 * late_kwh
    assert result.objective_eur == pytest.approx(expected)


def reserve_problem(energy_kwh: float, held_a: float, rho_eur_per_kwh: float) -> Problem:
    """16 A per phase, one 3-phase EV for two hours, CO2 500 then 100 g/kWh (0.05 and 0.01 EUR
    per kWh at 0.1 EUR/kg); ``held_a`` of hour 1 held for later EVs at ``rho_eur_per_kwh``."""
    return make_problem(
        16.0,
        [ChargePoint("a")],
        [ev(0, "a", 0, 2, energy_kwh)],
        n_steps=2,
        signals=Signals(co2_g_per_kwh=[500.0, 100.0]),
        reserve_a={"site": [0.0, held_a]},
        weights=Weights(reserve_eur_per_kwh=rho_eur_per_kwh),
    )


def test_held_capacity_is_not_taken_for_a_cleaner_hour(options: SolverOptions) -> None:
    # 5 kWh = 7.246 A for an hour. Nothing held: all in the clean hour 1 (0.04 EUR/kWh less).
    free = solved(reserve_problem(5.0, 0.0, 0.1), options)
    np.testing.assert_allclose(free.schedule.current_a, [[0.0, 5.0 / KWH_3PH]], atol=1e-6)
    assert free.objective_eur == pytest.approx(objective((5.0, 1.5)) + 0.01 * 5.0)
    # The whole of hour 1 held at 0.1 EUR/kWh (more than the 0.04 saved): the dirty hour 0.
    held = solved(reserve_problem(5.0, 16.0, 0.1), options)
    np.testing.assert_allclose(held.schedule.current_a, [[5.0 / KWH_3PH, 0.0]], atol=1e-6)
    assert held.objective_eur == pytest.approx(objective((5.0, 0.5)) + 0.05 * 5.0)
    # Held, but at no cost: the reservation is off.
    off = solved(reserve_problem(5.0, 16.0, 0.0), options)
    np.testing.assert_allclose(off.schedule.current_a, free.schedule.current_a, atol=1e-6)


def test_held_capacity_is_used_rather_than_leave_an_ev_short(options: SolverOptions) -> None:
    # 15 kWh = 21.739 A-hours, but hour 0 takes 16 A at most: the rest must go into hour 1,
    # which is held. With the 6 A rule that is 15.739 A + 6 A, and the 6 A (4.14 kWh) pay the
    # reservation: energy comes first.
    result = solved(reserve_problem(15.0, 16.0, 0.1), options)
    np.testing.assert_allclose(result.schedule.current_a, [[15.0 / KWH_3PH - 6.0, 6.0]], atol=1e-6)
    assert result.schedule.energy_kwh[0] == pytest.approx(15.0)
    early_kwh, late_kwh = 15.0 - 6 * KWH_3PH, 6 * KWH_3PH
    expected = objective((early_kwh, 0.5), (late_kwh, 1.5)) + 0.05 * early_kwh + (0.01 + 0.1) * late_kwh
    assert result.objective_eur == pytest.approx(expected)


def test_held_capacity_must_be_finite_and_on_a_known_node() -> None:
    with pytest.raises(ProblemError, match=r"reserve_a\[nowhere\]"):
        Problem(
            site=Site("s", 230.0, 16.0, charge_points=(ChargePoint("a"),)),
            grid=TimeGrid.uniform(T0, HOUR, 2),
            reserve_a={"nowhere": [0.0, 1.0]},
        )
    with pytest.raises(ProblemError, match="infinite"):
        reserve_problem(5.0, np.inf, 0.1)
    with pytest.raises(ProblemError, match="negative"):
        reserve_problem(5.0, -1.0, 0.1)


def emission_problem(target: EmissionTarget | None) -> Problem:
    """CO2 500 then 100 g/kWh, price 0 then 300 EUR/MWh; one EV wants 10 kWh in two hours.

    Per kWh (price + 0.1 EUR/kg CO2): hour 0 costs 0.05 EUR, hour 1 0.31 EUR. Without a target
    everything goes into the dirty, cheap hour 0 (10 kWh = 14.493 A).
    """
    signals = Signals(price_eur_per_mwh=[0.0, 300.0], co2_g_per_kwh=[500.0, 100.0])
    return make_problem(
        100.0, [ChargePoint("a")], [ev(0, "a", 0, 2, 10.0)], n_steps=2, signals=signals, target=target
    )


def test_emission_target_moves_energy_to_clean_steps(options: SolverOptions) -> None:
    free = solved(emission_problem(None), options)
    np.testing.assert_allclose(free.schedule.current_a, [[10.0 / KWH_3PH, 0.0]], atol=1e-6)
    assert free.targets == ()
    # Cap 300 g/kWh with 10 EUR/kg: 500 x + 100 (10 - x) <= 300 * 10 gives x <= 5 kWh in hour 0.
    # A kWh more in hour 0 saves 0.26 EUR but costs 0.2 kg * 10 EUR/kg; a kWh less costs 0.26
    # EUR and saves nothing: exactly 5 + 5 kWh (7.246 A each, above 6 A).
    capped = solved(
        emission_problem(EmissionTarget(max_intensity_g_per_kwh=300.0, penalty_eur_per_kg=10.0)), options
    )
    np.testing.assert_allclose(capped.schedule.current_a, [[5 / KWH_3PH, 5 / KWH_3PH]], atol=1e-6)
    assert capped.schedule.energy_kwh[0] == pytest.approx(10.0)
    (report,) = capped.targets
    assert report.kind == "intensity"
    assert report.target == 300.0
    assert report.achieved == pytest.approx(300.0)
    assert report.excess_kg == pytest.approx(0.0, abs=1e-6)
    assert not report.missed
    # A penalty of 0.01 EUR/kg is not worth 0.26 EUR/kWh: all in hour 0, the target is missed
    # by (500 - 300) g/kWh * 10 kWh = 2 kg.
    cheap = solved(
        emission_problem(EmissionTarget(max_intensity_g_per_kwh=300.0, penalty_eur_per_kg=0.01)), options
    )
    np.testing.assert_allclose(cheap.schedule.current_a, free.schedule.current_a, atol=1e-6)
    (report,) = cheap.targets
    assert report.missed
    assert report.achieved == pytest.approx(500.0)
    assert report.excess_kg == pytest.approx(2.0)
    # The objective carries the penalty: -20 + 0.5 EUR (hour 0) + 1e-4 * 0.5 * 10 + 0.01 * 2 kg.
    assert cheap.objective_eur == pytest.approx(objective((10.0, 0.5)) + 0.5 + 0.02)


def test_co2_budget(options: SolverOptions) -> None:
    # Budget 3 kg: 0.5 x + 0.1 (10 - x) <= 3 gives x <= 5 kWh in hour 0; as above, 5 + 5 kWh.
    met = solved(emission_problem(EmissionTarget(budget_kg=3.0, penalty_eur_per_kg=10.0)), options)
    np.testing.assert_allclose(met.schedule.current_a, [[5 / KWH_3PH, 5 / KWH_3PH]], atol=1e-6)
    (report,) = met.targets
    assert (report.kind, report.target) == ("budget", 3.0)
    assert report.achieved == pytest.approx(3.0)
    assert not report.missed
    # Budget 0.5 kg cannot be kept with 10 kWh (at least 10 * 0.1 = 1 kg). At 10 EUR/kg a clean
    # kWh costs 0.31 + 1.0 EUR < 2 EUR of value: all 10 kWh in hour 1, missed by 0.5 kg.
    missed = solved(emission_problem(EmissionTarget(budget_kg=0.5, penalty_eur_per_kg=10.0)), options)
    np.testing.assert_allclose(missed.schedule.current_a, [[0.0, 10 / KWH_3PH]], atol=1e-6)
    (report,) = missed.targets
    assert report.missed
    assert report.achieved == pytest.approx(1.0)
    assert report.excess_kg == pytest.approx(0.5)
    # At 50 EUR/kg a kWh beyond the budget costs 0.31 + 5 EUR > 2 EUR: only the 5 kWh the
    # budget allows in hour 1 (0.5 kg / 0.1 kg/kWh), 7.246 A.
    strict = solved(emission_problem(EmissionTarget(budget_kg=0.5, penalty_eur_per_kg=50.0)), options)
    np.testing.assert_allclose(strict.schedule.current_a, [[0.0, 5 / KWH_3PH]], atol=1e-6)
    (report,) = strict.targets
    assert not report.missed
    assert report.achieved == pytest.approx(0.5)


def test_intensity_and_budget_together(options: SolverOptions) -> None:
    target = EmissionTarget(max_intensity_g_per_kwh=300.0, budget_kg=3.0, penalty_eur_per_kg=10.0)
    result = solved(emission_problem(target), options)
    assert [r.kind for r in result.targets] == ["intensity", "budget"]
    assert not any(r.missed for r in result.targets)
    np.testing.assert_allclose(result.schedule.current_a, [[5 / KWH_3PH, 5 / KWH_3PH]], atol=1e-6)


# ---------------------------------------------------------------- base load, grids, limits


def test_base_load_above_the_site_limit(options: SolverOptions) -> None:
    # Base load 110 A on L1 against a 100 A limit: nothing may charge on L1 (the 3-phase EV and
    # the 1-phase EV on L1); the 1-phase EV on L2 takes its 16 A. Not an error, not infeasible.
    points = [
        ChargePoint("three"),
        ChargePoint("one_l1", phases=1),
        ChargePoint("one_l2", phases=1, phase_rotation="L2L3L1"),
    ]
    sessions = [ev(0, "three", 0, 2, 50.0), ev(1, "one_l1", 0, 2, 50.0), ev(2, "one_l2", 0, 2, 50.0)]
    base = np.array([[110.0, 10.0, 10.0], [50.0, 10.0, 10.0]])
    problem = make_problem(100.0, points, sessions, n_steps=2, base_load_a=base)
    result = solve(problem, options)
    assert result.status == SolveStatus.OPTIMAL
    violations = check_schedule(result.schedule)
    assert [(v.kind, v.where, v.step) for v in violations] == [("base_load", "node site L1", 0)]
    assert violations[0].excess == pytest.approx(10.0)
    np.testing.assert_allclose(result.schedule.current_a, [[0, 16], [0, 16], [16, 16]], atol=1e-6)


def base_load_above_every_limit() -> Problem:
    return make_problem(
        50.0, [ChargePoint("a")], [ev(0, "a", 0, 1, 20.0)], base_load_a=np.array([[60.0, 70.0, 80.0]])
    )


def test_base_load_alone_above_every_limit() -> None:
    # No headroom on any phase: nothing can charge, the model is empty. (method="mip": see
    # test_mip_without_pairs_is_optimal_zero.)
    result = solve(base_load_above_every_limit(), METHODS["lp-repair"])
    assert result.status == SolveStatus.OPTIMAL
    np.testing.assert_allclose(result.schedule.current_a, 0.0)
    violations = check_schedule(result.schedule)
    assert [(v.kind, v.where) for v in violations] == [
        ("base_load", "node site L1"),
        ("base_load", "node site L2"),
        ("base_load", "node site L3"),
    ]
    np.testing.assert_allclose([v.excess for v in violations], [10.0, 20.0, 30.0])


def test_non_uniform_grid_uses_step_lengths(options: SolverOptions) -> None:
    # Graded: 15 min, 15 min, then 1 h, then 30 min (cut to the 2-hour horizon).
    grid = TimeGrid.graded(T0, 2 * HOUR, timedelta(minutes=15), timedelta(minutes=30), HOUR)
    np.testing.assert_allclose(grid.durations_h, [0.25, 0.25, 1.0, 0.5])
    site = Site("s", 230.0, 100.0, charge_points=(ChargePoint("a"), ChargePoint("b")))
    sessions = (
        # Cheapest step is the last (30 min): 5 kWh there is 5 / (0.69 * 0.5) = 14.493 A.
        Session("small", "a", T0, grid.end, 5.0),
        # Wants more than 16 A all the way: 16 A * 0.69 kWh/(A h) * 2 h = 22.08 kWh.
        Session("big", "b", T0, grid.end, 50.0),
    )
    price = Signals(price_eur_per_mwh=[100.0, 100.0, 100.0, 20.0])
    result = solved(Problem(site=site, grid=grid, sessions=sessions, signals=price), options)
    np.testing.assert_allclose(result.schedule.current_a[0], [0, 0, 0, 5.0 / (KWH_3PH * 0.5)], atol=1e-6)
    np.testing.assert_allclose(result.schedule.current_a[1], 16.0, atol=1e-6)
    np.testing.assert_allclose(result.schedule.energy_kwh, [5.0, 16 * KWH_3PH * 2.0])
    # The 6 A rule is per step length: 1 kWh is 1 / (0.69 * 0.25) = 5.797 A over 15 min,
    # 2.899 A over 30 min, 1.449 A over the hour: below 6 A everywhere, not deliverable.
    tiny = Problem(site=site, grid=grid, sessions=(Session("t", "a", T0, grid.end, 1.0),))
    assert compile_problem(tiny).n_pairs == 0
    # 1.1 kWh is 6.377 A over 15 min: deliverable in a short step only.
    short = solved(tiny.with_sessions([Session("t", "a", T0, grid.end, 1.1)]), options)
    assert short.schedule.energy_kwh[0] == pytest.approx(1.1)
    assert set(np.nonzero(short.schedule.current_a[0])[0]) <= {0, 1}


def test_time_varying_node_limit(options: SolverOptions) -> None:
    # The cable's operator limit: none, then 5 A (below the 6 A minimum: nothing charges), then
    # 8 A on L1 and 20 A on L2/L3. Step 2: the 3-phase EV at 8 A leaves 12 A of L2 for the
    # 1-phase EV on L2 (8 * 0.69 + 12 * 0.23 = 8.28 kWh beats 6 A + 14 A = 7.36 kWh).
    groups = (Node("cable", 40.0),)
    points = [ChargePoint("t", node_id="cable"), ChargePoint("o", node_id="cable", phase_rotation="L2L3L1")]
    sessions = [ev(0, "t", 0, 3, 50.0), ev(1, "o", 0, 3, 50.0, phases=1)]
    limits = np.array([[np.inf] * 3, [5.0] * 3, [8.0, 20.0, 20.0]])
    problem = make_problem(100.0, points, sessions, n_steps=3, groups=groups, node_limits_a={"cable": limits})
    result = solved(problem, options)
    np.testing.assert_allclose(result.schedule.current_a, [[16, 0, 8], [16, 0, 12]], atol=1e-6)


def test_time_varying_site_limit(options: SolverOptions) -> None:
    problem = make_problem(
        100.0,
        [ChargePoint("a")],
        [ev(0, "a", 0, 3, 50.0)],
        n_steps=3,
        node_limits_a={"site": [np.inf, 5.0, 8.0]},
    )
    result = solved(problem, options)
    np.testing.assert_allclose(result.schedule.current_a, [[16, 0, 8]], atol=1e-6)


def test_fairness_raises_the_smallest_share(options: SolverOptions) -> None:
    # One hour, 16 A, both want 11.04 kWh (16 A). ev1's priority 1.1 makes it win everything
    # without fairness (smallest share 0). A reward of 10 EUR per unit of the smallest share
    # outweighs the 0.2 EUR/kWh priority difference: 8 A each, shares 0.5 and 0.5.
    points = [ChargePoint("a"), ChargePoint("b")]
    sessions = [ev(0, "a", 0, 1, 11.04), ev(1, "b", 0, 1, 11.04, priority=1.1)]
    unfair = solved(make_problem(16.0, points, sessions), options)
    np.testing.assert_allclose(unfair.schedule.current_a, [[0.0], [16.0]], atol=1e-6)
    fair = solved(make_problem(16.0, points, sessions, weights=Weights(fairness_eur=10.0)), options)
    np.testing.assert_allclose(fair.schedule.current_a, [[8.0], [8.0]], atol=1e-6)
    share = fair.schedule.energy_kwh / 11.04
    assert share.min() == pytest.approx(0.5)
    assert fair.objective_eur == pytest.approx(formulation_objective(fair.schedule))
    # -2 * 5.52 - 2.2 * 5.52 + 1e-4 * 0.5 * 11.04 - 10 * 0.5
    assert fair.objective_eur == pytest.approx(-4.2 * 5.52 + EARLY * 0.5 * 11.04 - 5.0)


def test_unbalance_limit(options: SolverOptions) -> None:
    # 1-phase EVs: two on L1, one on L2; a 3-phase EV. With 20 A allowed between phases and
    # nothing on L3 but the 3-phase EV (which loads all alike), L1 and L2 each get at most
    # 20 A of 1-phase load: 20 + 20 A on one phase plus 16 A * 3 = 88 A-phases = 20.24 kWh.
    points = [
        ChargePoint("a", phases=1, max_current_a=32.0),
        ChargePoint("b", phases=1, max_current_a=32.0),
        ChargePoint("c", phases=1, max_current_a=32.0, phase_rotation="L2L3L1"),
        ChargePoint("d"),
    ]
    sessions = [ev(i, x, 0, 1, 50.0) for i, x in enumerate("abcd")]
    problem = make_problem(63.0, points, sessions, max_unbalance_a=20.0)
    result = solved(problem, options)
    cur = result.schedule.current_a[:, 0]
    assert cur[0] + cur[1] == pytest.approx(20.0)
    assert cur[2] == pytest.approx(20.0)
    assert cur[3] == pytest.approx(16.0)
    conn = result.schedule.connection_current_a()[0]
    np.testing.assert_allclose(conn, [36.0, 36.0, 16.0], atol=1e-6)
    assert result.schedule.total_energy_kwh == pytest.approx(88 * KWH_1PH)
    # Without the rule the 1-phase EVs take their 32 A; L1 then carries 32 + 32 + 16 > 63 A.
    free = solved(make_problem(63.0, points, sessions), options)
    assert free.schedule.total_energy_kwh > result.schedule.total_energy_kwh + 1.0


def test_unbalanced_base_load_is_not_made_worse(options: SolverOptions) -> None:
    # Base load 30 A on L1 only: a 1-phase EV on L1 would widen the 30 A gap and gets nothing;
    # one on L2 narrows L1-L2 and may charge until L2 - L3 reaches 20 A... its max 16 A.
    points = [ChargePoint("p1", phases=1), ChargePoint("p2", phases=1, phase_rotation="L2L3L1")]
    sessions = [ev(0, "p1", 0, 1, 50.0), ev(1, "p2", 0, 1, 50.0)]
    base = np.array([[30.0, 0.0, 0.0]])
    result = solved(make_problem(63.0, points, sessions, base_load_a=base, max_unbalance_a=20.0), options)
    np.testing.assert_allclose(result.schedule.current_a, [[0.0], [16.0]], atol=1e-6)


def test_peak_cost_flattens_the_profile(options: SolverOptions) -> None:
    # One EV wants 11.04 kWh (16 A-hours) over two hours. With a peak cost it takes 8 A + 8 A
    # instead of 16 A + 0 A: the peak term (per A on each phase) outweighs the delay cost.
    problem = make_problem(100.0, [ChargePoint("a")], [ev(0, "a", 0, 2, 11.04)], n_steps=2)
    early = solved(problem, options)
    np.testing.assert_allclose(early.schedule.current_a, [[16.0, 0.0]], atol=1e-6)
    flat_problem = make_problem(
        100.0, [ChargePoint("a")], [ev(0, "a", 0, 2, 11.04)], n_steps=2, weights=Weights(peak_eur_per_a=0.01)
    )
    flat = solved(flat_problem, options)
    np.testing.assert_allclose(flat.schedule.current_a, [[8.0, 8.0]], atol=1e-6)
    assert flat.objective_eur == pytest.approx(formulation_objective(flat.schedule))


# ---------------------------------------------------------------- bugs found


def _no_sessions() -> Problem:
    return make_problem(16.0, [ChargePoint("a")], [], n_steps=2)


def _energy_below_minimum() -> Problem:
    return make_problem(16.0, [ChargePoint("a")], [ev(0, "a", 0, 2, 3.0)], n_steps=2)


@pytest.mark.parametrize(
    "build",
    [_no_sessions, _energy_below_minimum, base_load_above_every_limit],
    ids=["no-sessions", "energy-below-minimum", "base-load-above-limits"],
)
def test_mip_without_pairs_is_optimal_zero(build) -> None:
    problem = build()
    assert compile_problem(problem).n_pairs == 0
    assert solve(problem, METHODS["lp-repair"]).status == SolveStatus.OPTIMAL
    result = solve(problem, METHODS["mip"])
    assert result.status == SolveStatus.OPTIMAL
    np.testing.assert_allclose(result.schedule.current_a, 0.0)
    assert result.objective_eur == 0.0


def test_mip_bound_without_minimum_current() -> None:
    # 5 kWh = 7.246 A in hour 0: objective -2 * 5 + 1e-4 * 0.5 * 5 = -9.99975.
    problem = make_problem(16.0, [ChargePoint("a", min_current_a=0.0)], [ev(0, "a", 0, 2, 5.0)], n_steps=2)
    result = solve(problem, METHODS["mip"])
    assert result.status == SolveStatus.OPTIMAL
    assert result.objective_eur == pytest.approx(objective((5.0, 0.5)))
    assert result.bound_eur <= result.objective_eur + 1e-9


def test_fairness_with_a_micro_request() -> None:
    # Site 1 A, one 1-phase 15-minute step: ev0 (1 kWh) can get 1 A = 0.0575 kWh, share 0.0575.
    # ev1 wants 6e-8 kWh; the fairness row needs only 0.0575 * 6e-8 kWh = 6e-8 A from it.
    points = [ChargePoint(x, phases=1, min_current_a=0.0) for x in "ab"]
    grid = TimeGrid.uniform(T0, timedelta(minutes=15), 1)
    sessions = (Session("ev0", "a", T0, grid.end, 1.0), Session("ev1", "b", T0, grid.end, 6e-8))
    site = Site("s", 230.0, 1.0, charge_points=tuple(points))
    problem = Problem(site=site, grid=grid, sessions=sessions, weights=Weights(fairness_eur=0.5))
    result = solve(problem, METHODS["lp-repair"])
    assert result.status == SolveStatus.OPTIMAL
    # -2 * 0.0575 + 1e-4 * 0.125 * 0.0575 - 0.5 * (smallest share of the returned schedule)
    assert result.objective_eur == pytest.approx(formulation_objective(result.schedule), abs=1e-6)


def _start_bug_problem(min_a: float) -> Problem:
    """Two 3-phase EVs under a 12 A site, steps of 5, 5, 5 and 15 minutes (found by the
    property tests below). ev0 (``min_a``..10 A) wants 1 kWh; ev1 (exactly 6 A or off) wants
    2 kWh. 1 A on 3 phases is 0.0575 kWh per 5 minutes and 0.1725 kWh per 15 minutes."""
    points = (
        ChargePoint("a", max_current_a=10.0, min_current_a=min_a),
        ChargePoint("b", max_current_a=6.0, min_current_a=6.0),
    )
    minute = timedelta(minutes=1)
    grid = TimeGrid((T0, T0 + 5 * minute, T0 + 10 * minute, T0 + 15 * minute, T0 + 30 * minute))
    sessions = (Session("ev0", "a", T0, grid.end, 1.0), Session("ev1", "b", T0, grid.end, 2.0))
    return Problem(site=Site("s", 230.0, 12.0, charge_points=points), grid=grid, sessions=sessions)


@pytest.mark.parametrize(
    ("min_a", "optimum_kwh"),
    [(6.0, 2.645), (0.0, 2.725)],
    ids=["both-6A-minimum", "ev0-no-minimum"],
)
def test_lp_repair_fallback_with_a_start_solution(min_a: float, optimum_kwh: float) -> None:
    # ev1 (6 A: 0.345 kWh per 5-minute step, 1.035 kWh for the 15-minute one) fits at most
    # 1.725 kWh under its 2 kWh: the long step and two short ones. ev0 (1 kWh) cannot use the
    # long step (1 kWh there is 5.8 A); beside ev1 it gets 6 A, alone 10 A of the short steps.
    # 6 A minimum: ev1 1.725 kWh + ev0 10 A + 6 A = 0.92 kWh (1 kWh would need 5.39 A in a third
    # step) = 2.645 kWh, better than ev1 1.38 + ev0 1.0. No minimum for ev0: 1.725 + 1.0 kWh.
    problem = _start_bug_problem(min_a)
    mip = solve(problem, METHODS["mip"])
    assert mip.status == SolveStatus.OPTIMAL
    assert mip.schedule.total_energy_kwh == pytest.approx(optimum_kwh)
    result = solve(problem, METHODS["lp-repair"])
    assert "mip_s" in result.stages  # the branch-and-bound fallback ran
    assert result.objective_eur == pytest.approx(formulation_objective(result.schedule), abs=1e-6)
    assert result.bound_eur <= result.objective_eur + 1e-9
    assert result.objective_eur <= mip.objective_eur + 0.01 * abs(mip.objective_eur)
    assert result.schedule.total_energy_kwh >= edf(problem).total_energy_kwh


# ---------------------------------------------------------------- random small instances


@st.composite
def problems(draw: st.DrawFn, *, dense: bool = False) -> Problem:
    """Small random problems: nested groups, 1/3-phase points and EVs, rotations, base load,
    time-varying limits, price and CO2 signals, uneven steps, optional unbalance and targets.
    ``dense``: longer grids, more sessions and tighter limits (more binding rows)."""
    n_steps = draw(st.integers(4, 12) if dense else st.integers(1, 8))
    if draw(st.booleans()):
        grid = TimeGrid.uniform(T0, timedelta(minutes=15), n_steps)
    else:  # uneven steps
        minutes = draw(st.lists(st.sampled_from([5, 15, 30, 60]), min_size=n_steps, max_size=n_steps))
        bounds = [T0]
        for m in minutes:
            bounds.append(bounds[-1] + timedelta(minutes=m))
        grid = TimeGrid(tuple(bounds))
    # Mostly limits that let someone charge; sometimes one below the 6 A minimum.
    top = 50.0 if dense else 80.0
    limit = st.one_of(st.floats(6.0, top), st.floats(6.0, top), st.floats(0.0, 6.0))
    phase_limit = st.one_of(limit, st.tuples(limit, limit, limit))
    groups: list[Node] = []
    for g in range(draw(st.integers(0, 3))):
        parent = draw(st.sampled_from(["site", *(n.id for n in groups)]))
        groups.append(Node(f"g{g}", draw(phase_limit), parent))
    node_ids = ["site", *(n.id for n in groups)]
    points = [
        ChargePoint(
            f"cp{i}",
            node_id=draw(st.sampled_from(node_ids)),
            phases=draw(st.sampled_from([1, 3])),
            phase_rotation=draw(st.sampled_from(list(ROTATIONS))),
            max_current_a=draw(st.sampled_from([6.0, 10.0, 16.0, 32.0])),
            min_current_a=draw(st.sampled_from([0.0, 6.0, 6.0])),
        )
        for i in range(draw(st.integers(1, 5)))
    ]
    span_h = (grid.end - grid.start).total_seconds() / 3600.0
    sessions = []
    for i in range(draw(st.integers(4, 14) if dense else st.integers(1, 8))):
        arrive_h = draw(st.one_of(st.floats(-0.5, 0.8 * span_h), st.floats(-0.5, 0.0)))
        stay_h = draw(st.one_of(st.floats(0.1, span_h + 1.0), st.floats(span_h / 2, span_h + 1.0)))
        sessions.append(
            Session(
                f"ev{i}",
                draw(st.sampled_from(points)).id,
                T0 + timedelta(hours=arrive_h),
                T0 + timedelta(hours=arrive_h + stay_h),
                draw(
                    st.one_of(st.floats(0.01, 30.0), st.floats(0.5, 30.0), st.floats(1.0, 20.0), st.just(0.0))
                ),
                max_power_kw=draw(st.one_of(st.none(), st.floats(1.0, 22.0))),
                phases=draw(st.sampled_from([None, 1, 3])),
                priority=draw(st.sampled_from([1.0, 1.0, 1.0, 0.5, 2.0])),
            )
        )

    def series(lo: float, hi: float) -> np.ndarray:
        return np.array(draw(st.lists(st.floats(lo, hi), min_size=n_steps, max_size=n_steps)))

    base = None
    if draw(st.booleans()):
        base = np.array(draw(st.lists(st.floats(0.0, 60.0), min_size=3 * n_steps, max_size=3 * n_steps)))
        base = base.reshape(n_steps, 3)
    node_limits = {}
    if draw(st.booleans()):
        values = draw(st.lists(st.one_of(st.just(np.inf), limit), min_size=n_steps, max_size=n_steps))
        node_limits[draw(st.sampled_from(node_ids))] = np.array(values)
    price = series(-50.0, 300.0) if draw(st.booleans()) else None
    co2 = series(0.0, 600.0) if draw(st.booleans()) else None
    target = None
    if co2 is not None and draw(st.booleans()):
        target = EmissionTarget(
            max_intensity_g_per_kwh=draw(st.one_of(st.none(), st.floats(0.0, 500.0))),
            budget_kg=draw(st.one_of(st.none(), st.floats(0.0, 10.0))),
            penalty_eur_per_kg=draw(st.floats(0.0, 2.0)),
        )
    weights = Weights(
        peak_eur_per_a=draw(st.sampled_from([0.0, 0.0, 0.001])),
        fairness_eur=draw(st.sampled_from([0.0, 0.0, 0.5])),
    )
    site = Site("s", 230.0, draw(phase_limit), groups=tuple(groups), charge_points=tuple(points))
    return Problem(
        site=site,
        grid=grid,
        sessions=tuple(sessions),
        base_load_a=base,
        node_limits_a=node_limits,
        signals=Signals(price_eur_per_mwh=price, co2_g_per_kwh=co2),
        weights=weights,
        target=target,
        max_unbalance_a=draw(st.one_of(st.none(), st.floats(0.0, 30.0))),
    )


PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_solve(problem: Problem, result: SolveResult, options: SolverOptions) -> bool:
    """Check one solve; ``False`` when its objective and bound are known not to be trusted."""
    c = compile_problem(problem)
    assert result.status in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE), (result.status, result.message)
    schedule = result.schedule
    assert all(v.kind == "base_load" for v in check_schedule(schedule)), check_schedule(schedule)
    cur = schedule.current_a
    min_a, max_a = c.min_current_a[:, None], c.max_current_a[:, None]
    assert np.all((cur == 0.0) | ((cur >= min_a - 1e-6) & (cur <= max_a + 1e-6)))
    assert np.all(schedule.energy_kwh <= c.energy_kwh + 1e-6)
    obj, bound = result.objective_eur, result.bound_eur
    tol = 1e-6 * max(1.0, abs(obj))
    # The reported objective is the schedule's, and a feasible point of the matrices.
    actual = formulation_objective(schedule)
    assert actual == pytest.approx(obj, rel=1e-6, abs=1e-6)
    assert bound <= obj + tol
    assert obj - bound <= result.gap * max(abs(obj), 1e-9) + tol
    if result.status == SolveStatus.OPTIMAL:
        assert result.gap <= options.mip_rel_gap + 1e-9
    # The bound is valid for every feasible schedule, the baselines' included.
    for policy in BASELINES:
        assert obj <= formulation_objective(policy(problem)) + result.gap * abs(obj) + tol, policy.__name__
    # Target reports agree with the schedule.
    co2 = problem.signals.co2_g_per_kwh
    if problem.target is not None and c.n_pairs:
        emitted_kg = float((co2[None, :] * cur * c.kwh_per_a).sum() / 1000.0)
        for report in result.targets:
            if report.kind == "budget":
                assert report.achieved == pytest.approx(emitted_kg, abs=1e-6)
                assert report.excess_kg == pytest.approx(max(emitted_kg - report.target, 0.0), abs=1e-6)
            else:
                cap_kg = report.target * schedule.total_energy_kwh / 1000.0
                assert report.excess_kg == pytest.approx(max(emitted_kg - cap_kg, 0.0), abs=1e-6)
            assert report.missed == (report.excess_kg > 1e-6)
    return True


def _check_both(problem: Problem) -> None:
    c = compile_problem(problem)
    results: dict[str, SolveResult] = {}
    trusted: dict[str, bool] = {}
    for name, options in METHODS.items():
        results[name] = solve(problem, options)
        trusted[name] = _check_solve(problem, results[name], options)
    if len(results) == 2 and all(trusted.values()):
        lp, mip = results["lp-repair"], results["mip"]
        tol = 1e-6 * max(1.0, abs(mip.objective_eur))
        assert lp.bound_eur <= mip.objective_eur + tol
        assert mip.bound_eur <= lp.objective_eur + tol
    # With default weights and equal priorities the value of energy dominates: the MILP
    # delivers at least what every baseline does, up to its gap (1 % of the request) and one
    # minimum-current step per session (a remainder worth less than the minimum in the cheap
    # steps may be left rather than moving energy to dearer steps to make room for it).
    # Never observed to bind: in several thousand examples the MILP never delivered less, but
    # for the lp-repair start-solution bug (its schedule there delivers 1.725 kWh, EDF 2.38).
    if problem.weights != Weights() or problem.target is not None:
        return
    if any(s.priority != 1.0 for s in problem.sessions) or not c.n_sessions:
        return
    stranded_kwh = (c.min_current_a[:, None] * c.kwh_per_a * c.present).max(axis=1, initial=0.0).sum()
    tol_kwh = 0.01 * c.energy_kwh.sum() + stranded_kwh + 1e-6
    for policy in BASELINES:
        baseline_kwh = policy(problem).total_energy_kwh
        for name, result in results.items():
            if trusted[name] or name == "mip":  # mip untrusted: only its bound
                assert result.schedule.total_energy_kwh >= baseline_kwh - tol_kwh, policy.__name__


@PROPERTY
@given(problems())
def test_random_small_problems(problem: Problem) -> None:
    _check_both(problem)


@PROPERTY
@given(problems(dense=True))
def test_random_dense_problems(problem: Problem) -> None:
    _check_both(problem)


# ---------------------------------------------------------------- a realistic district


def test_lamppost_district_150() -> None:
    problem = lamppost_district(150, seed=3)
    result = solve(problem)
    assert result.method == "lp-repair"
    assert result.status == SolveStatus.OPTIMAL
    assert result.gap <= 0.01
    assert check_schedule(result.schedule) == []
    assert result.bound_eur <= result.objective_eur
    assert formulation_objective(result.schedule) == pytest.approx(result.objective_eur, rel=1e-9)
    for policy in BASELINES:
        baseline = policy(problem)
        assert result.objective_eur <= formulation_objective(baseline)
        assert result.schedule.total_energy_kwh >= baseline.total_energy_kwh


def test_interior_point_lp_reaches_the_same_optimum_as_simplex() -> None:
    problem = lamppost_district(40, seed=2)
    simplex = solve_lp_relaxation(problem)
    ipm = solve_lp_relaxation(problem, SolverOptions(lp_solver="ipm"))
    assert ipm.ok and simplex.ok
    assert ipm.objective_eur == pytest.approx(simplex.objective_eur, rel=1e-6, abs=1e-6)
    with pytest.raises(ValueError, match="lp_solver"):
        SolverOptions(lp_solver="barrier")


def test_lazy_limit_rows_reach_the_whole_lp_optimum() -> None:
    problem = lamppost_district(80, seed=5)
    lazy = solve_lp_relaxation(problem)
    whole = solve_lp_relaxation(problem, lazy_rows=False)
    assert lazy.stages["rounds"] > 1  # rows were in fact added on the way
    assert lazy.objective_eur == pytest.approx(whole.objective_eur, rel=1e-9, abs=1e-9)
