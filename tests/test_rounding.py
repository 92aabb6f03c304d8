"""Rounding the LP relaxation, the neighbourhood search, and the urgency term: tiny hand-checked cases.

Units as in tests/test_milp.py: at 230 V, 1 A on one phase for one hour is 0.23 kWh.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from models.compiled import LAXITY_FLOOR_H, compile_problem
from models.formulation import build_formulation
from models.highs import SolverOptions, SolveStatus, _neighbourhood, solve
from models.instances import lamppost_district
from models.problem import ChargePoint, Problem, Session, Site, TimeGrid, Weights
from models.repair import round_pattern
from models.schedule import check_schedule

T0 = datetime(2024, 3, 4, 18, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
KWH_1PH = 0.23


def one_phase_problem(limit_a: float, sessions: list[Session], n_steps: int, **kw) -> Problem:
    """Points a, b, c, all 1-phase on L1, 32 A max, 6 A min, under ``limit_a`` per phase."""
    cps = tuple(ChargePoint(p, phases=1, phase_rotation="L1L2L3", max_current_a=32.0) for p in "abc")
    site = Site("s", 230.0, limit_a, charge_points=cps)
    return Problem(site=site, grid=TimeGrid.uniform(T0, HOUR, n_steps), sessions=tuple(sessions), **kw)


def ev(i: int, cp: str, arrive: float, leave: float, energy_kwh: float) -> Session:
    return Session(f"ev{i}", cp, T0 + arrive * HOUR, T0 + leave * HOUR, energy_kwh)


# ---------------------------------------------------------------- round_pattern


def test_slivers_stay_off_larger_fractions_go_on_when_the_minimum_fits() -> None:
    # One step, 30 A: ev0 wants 20 A worth, ev1 and ev2 each 10 A worth.
    p = one_phase_problem(30.0, [ev(0, "a", 0, 1, 20 * KWH_1PH), ev(1, "b", 0, 1, 10 * KWH_1PH),
                                 ev(2, "c", 0, 1, 10 * KWH_1PH)], 1)  # fmt: skip
    form = build_formulation(compile_problem(p))
    # An LP point: ev0 at 20 A (on), ev1 at 4 A (2/3 of the minimum), ev2 at 1 A (a sliver).
    x = np.array([20.0, 4.0, 1.0])
    # Default: ev1 goes on (all-minimum load 6 + 6 = 12 <= 30), ev2 (1/6 of the minimum) stays off.
    assert round_pattern(form, x).tolist() == [True, True, False]
    # Every fraction considered: ev2 fits at its minimum too (6 + 6 + 6 = 18 <= 30).
    assert round_pattern(form, x, min_fraction=0.0).tolist() == [True, True, True]
    # Nothing fractional goes on.
    assert round_pattern(form, x, min_fraction=1.01).tolist() == [True, False, False]


def test_a_fraction_goes_on_only_if_every_minimum_still_fits() -> None:
    # 10 A: two EVs at their 6 A minimum would need 12 A.
    p = one_phase_problem(10.0, [ev(0, "a", 0, 1, 7 * KWH_1PH), ev(1, "b", 0, 1, 7 * KWH_1PH)], 1)
    form = build_formulation(compile_problem(p))
    assert round_pattern(form, np.array([7.0, 3.0])).tolist() == [True, False]


# ---------------------------------------------------------------- neighbourhood search


def test_neighbourhood_keeps_the_agreed_pairs_and_frees_the_rest() -> None:
    # Two steps of 30 A; three EVs each wanting 15 A for one hour (3.45 kWh), all present.
    p = one_phase_problem(30.0, [ev(i, "abc"[i], 0, 2, 15 * KWH_1PH) for i in range(3)], 2)
    c = compile_problem(p)
    form = build_formulation(c)
    assert c.pair_s.tolist() == [0, 0, 1, 1, 2, 2] and c.pair_k.tolist() == [0, 1, 0, 1, 0, 1]
    # LP and incumbent agree: ev0 on in step 0, off in step 1; ev1 off in step 0. The incumbent
    # (ev2 not served) is poor; the rest is free.
    x_lp = np.array([15.0, 0.0, 0.0, 10.0, 5.0, 10.0])
    x_inc = np.array([15.0, 0.0, 0.0, 15.0, 0.0, 0.0])
    found = _neighbourhood(form, SolverOptions(), x_lp, x_inc, 5.0)
    assert found is not None
    x, _ = found
    assert x[0] >= 6.0 - 1e-6 and x[1] == 0.0 and x[2] == 0.0  # the agreed pairs
    # Everything wanted fits (45 A-hours of 60): all three EVs are served in full.
    assert x[[0, 1]].sum() == pytest.approx(15.0, abs=1e-6)
    assert x[[2, 3]].sum() == pytest.approx(15.0, abs=1e-6)
    assert x[[4, 5]].sum() == pytest.approx(15.0, abs=1e-6)
    assert np.all((x == 0) | (x >= 6.0 - 1e-6))
    assert x[4] + x[0] <= 30.0 + 1e-6 and x[3] + x[5] <= 30.0 + 1e-6


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lp_repair_reaches_the_mip_optimum_on_districts(seed: int) -> None:
    p = lamppost_district(30, seed=seed)
    fast = solve(p, SolverOptions(mip_rel_gap=1e-4))
    exact = solve(p, SolverOptions(method="mip", mip_rel_gap=1e-6))
    assert fast.ok and exact.ok
    assert check_schedule(fast.schedule) == []
    assert fast.objective_eur <= exact.objective_eur + 1e-4 * abs(exact.objective_eur) + 1e-9


def test_neighbourhood_options_are_checked() -> None:
    with pytest.raises(ValueError, match="neighbourhood_gap"):
        SolverOptions(neighbourhood_gap=-1.0)
    with pytest.raises(ValueError, match="neighbourhood_time_s"):
        SolverOptions(neighbourhood_time_s=-1.0)
    # 0 s: no search, still a valid answer.
    p = one_phase_problem(30.0, [ev(0, "a", 0, 2, 10 * KWH_1PH)], 2)
    assert solve(p, SolverOptions(neighbourhood_time_s=0.0)).status == SolveStatus.OPTIMAL


def test_neighbourhood_can_free_the_first_steps() -> None:
    # Same case, but the incumbent agrees with the LP on every pair: only freeing step 0 lets
    # the search move ev1 into it.
    p = one_phase_problem(30.0, [ev(i, "abc"[i], 0, 2, 15 * KWH_1PH) for i in range(3)], 2)
    form = build_formulation(compile_problem(p))
    x_lp = np.array([15.0, 0.0, 0.0, 15.0, 0.0, 0.0])
    fixed = _neighbourhood(form, SolverOptions(), x_lp, x_lp.copy(), 5.0)
    assert fixed is not None and fixed[0][2] == 0.0 and fixed[0][4] == 0.0  # ev2 stays off
    freed = _neighbourhood(form, SolverOptions(neighbourhood_free_steps=1), x_lp, x_lp.copy(), 5.0)
    assert freed is not None
    assert freed[1] < fixed[1] - 1e-6  # better: ev2 is served in step 0
    assert freed[0][[4, 5]].sum() > 0


def test_node_limit_and_skipped_branch_and_bound() -> None:
    with pytest.raises(ValueError, match="max_nodes"):
        SolverOptions(max_nodes=0)
    with pytest.raises(ValueError, match="neighbourhood_free_steps"):
        SolverOptions(neighbourhood_free_steps=-1)
    p = lamppost_district(40, seed=2)
    # mip_rel_gap 0 can never be proven by rounding alone: branch and bound would run.
    skip = solve(p, SolverOptions(mip_rel_gap=0.0, branch_and_bound_time_s=0.0, max_nodes=50))
    assert skip.ok and "mip_s" not in skip.stages
    assert check_schedule(skip.schedule) == []
    again = solve(p, SolverOptions(mip_rel_gap=0.0, branch_and_bound_time_s=0.0, max_nodes=50))
    assert np.array_equal(skip.schedule.current_a, again.schedule.current_a)  # node limits repeat


# ---------------------------------------------------------------- urgency term


def test_laxity_and_urgency_coefficients_by_hand() -> None:
    # ev0: 4 h plugged, 7.36 kWh at 32 A x 230 V = 7.36 kW takes 1 h -> laxity 3 h.
    # ev1: arrives at hour 1, leaves at hour 2, wants 7.36 kWh -> laxity 0 h, floored to 0.25.
    w = Weights(early_eur_per_kwh_h=1e-4, urgency_eur_per_kwh_h=2e-4)
    p = one_phase_problem(60.0, [ev(0, "a", 0, 4, 7.36), ev(1, "b", 1, 2, 7.36)], 4, weights=w)
    c = compile_problem(p)
    np.testing.assert_allclose(c.laxity_h, [3.0, 0.0], atol=1e-12)
    form = build_formulation(c)
    u = 1.0 / np.maximum(c.laxity_h, LAXITY_FLOOR_H)
    per_kwh = -2.0 + 1e-4 * c.mid_h[c.pair_k] + 2e-4 * c.mid_h[c.pair_k] * u[c.pair_s]
    np.testing.assert_allclose(form.c[: c.n_pairs], c.pair_kwh_per_a * per_kwh, rtol=1e-12)
    # ev1's only step is hour 1 (mid-point 1.5 h): 0.23 * (-2 + 1.5e-4 + 2e-4 * 1.5 * 4).
    j = int(np.nonzero(c.pair_s == 1)[0][0])
    assert form.c[j] == pytest.approx(KWH_1PH * (-2.0 + 1.5e-4 + 1.2e-3), rel=1e-12)


def test_urgency_charges_the_ev_with_less_time_to_spare_first() -> None:
    # 30 A; both EVs want one full hour at 30 A (6.9 kWh). ev0 may stay 2 h, ev1 8 h: both
    # orders deliver everything; with urgency ev0 (laxity ~1 h) goes first.
    sessions = [ev(0, "a", 0, 2, 30 * KWH_1PH), ev(1, "b", 0, 8, 30 * KWH_1PH)]
    w = Weights(early_eur_per_kwh_h=0.0, urgency_eur_per_kwh_h=1e-4)
    for opts in (SolverOptions(mip_rel_gap=1e-6), SolverOptions(method="mip", mip_rel_gap=1e-6)):
        r = solve(one_phase_problem(30.0, sessions, 8, weights=w), opts)
        cur = r.schedule.current_a
        assert cur[0, 0] == pytest.approx(30.0, abs=1e-6)
        assert cur[1, 0] == pytest.approx(0.0, abs=1e-6)
        assert cur[1].sum() == pytest.approx(30.0, abs=1e-6)


def test_urgency_off_leaves_the_objective_as_before() -> None:
    sessions = [ev(0, "a", 0, 2, 5.0), ev(1, "b", 0, 8, 5.0)]
    a = build_formulation(compile_problem(one_phase_problem(30.0, sessions, 8)))
    b = build_formulation(
        compile_problem(one_phase_problem(30.0, sessions, 8, weights=Weights(urgency_eur_per_kwh_h=0.0)))
    )
    np.testing.assert_array_equal(a.c, b.c)
