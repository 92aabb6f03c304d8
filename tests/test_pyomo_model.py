"""The Pyomo model against the matrix formulation and HiGHS: same rows, same optimum, same LP bound."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pyomo.environ as pyo
import pytest
from pyomo.contrib.solver.common.factory import SolverFactory
from pyomo.contrib.solver.common.results import TerminationCondition
from pyomo.repn import generate_standard_repn

from models.compiled import compile_problem
from models.formulation import Formulation, build_formulation
from models.highs import SolverOptions, SolveStatus, solve, solve_lp_relaxation
from models.instances import lamppost_district
from models.problem import (
    PHASES,
    VDE_UNBALANCE_A,
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
from models.pyomo_model import _status, build_pyomo_model, solve_plain
from models.schedule import check_schedule

T0 = datetime(2024, 3, 4, 18, 0, tzinfo=UTC)
STEP = timedelta(minutes=15)
#: Energy of 1 A per phase on 3 phases over a 15-minute step at 230 V [kWh/A].
KWH_PER_A_3PH = 230.0 * 3 * 0.25 / 1000.0


def at(step: float) -> datetime:
    return T0 + step * STEP


def ev(i: int, cp: str, arrive: float, leave: float, energy_kwh: float, **kw) -> Session:
    return Session(f"ev{i}", cp, at(arrive), at(leave), energy_kwh, **kw)


def groups_instance() -> Problem:
    """A feeder with two cables, 1-phase EVs on rotated points, base load, a cable outage, signals."""
    n = 8
    groups = (
        Node("feeder", 40.0, "site"),
        Node("cable-1", 22.0, "feeder"),
        Node("cable-2", (16.0, 20.0, 16.0), "feeder"),
    )
    cps = (
        ChargePoint("a", node_id="cable-1", phase_rotation="L1L2L3"),
        ChargePoint("b", node_id="cable-1", phase_rotation="L2L3L1"),
        ChargePoint("c", node_id="cable-2", phase_rotation="L3L1L2"),
        ChargePoint("d", node_id="cable-2", phase_rotation="L2L3L1", phases=1),
        ChargePoint("e", node_id="site", max_current_a=32.0),
    )
    sessions = (
        ev(0, "a", 0, 8, 20.0),
        ev(1, "b", 0, 6, 6.0, phases=1, max_power_kw=3.7),
        ev(2, "c", 1, 7, 14.0, priority=1.5),
        ev(3, "d", 2, 8, 8.0),
        ev(4, "e", -2, 5, 30.0, max_power_kw=22.0),
        ev(5, "b", 6, 12, 5.0, phases=1),  # leaves after the grid ends
    )
    base = np.array([[12, 9, 14], [15, 11, 13], [18, 12, 20], [20, 14, 22]] * 2, float)
    price = np.array([120, 150, 180, 160, 110, 90, 80, 85], float)
    co2 = np.array([420, 460, 480, 450, 400, 360, 330, 320], float)
    outage = np.full(n, np.inf)
    outage[3:5] = 7.0
    return Problem(
        site=Site("hand", 230.0, (50.0, 45.0, 50.0), groups=groups, charge_points=cps),
        grid=TimeGrid.uniform(T0, STEP, n),
        sessions=sessions,
        base_load_a=base,
        node_limits_a={"cable-2": outage},
        signals=Signals(price_eur_per_mwh=price, co2_g_per_kwh=co2),
        weights=Weights(peak_eur_per_a=0.01),
    )


def unbalance_instance() -> Problem:
    """1-phase EVs piling onto L1 under the VDE 20 A rule; one step's base load is worse already."""
    cps = tuple(ChargePoint(f"p{i}", phase_rotation=r) for i, r in enumerate(["L1L2L3"] * 3 + ["L2L3L1"]))
    sessions = (
        ev(0, "p0", 0, 6, 8.0, phases=1),
        ev(1, "p1", 0, 6, 8.0, phases=1),
        ev(2, "p2", 1, 6, 6.0, phases=1),
        ev(3, "p3", 0, 4, 4.0, phases=1),
    )
    base = np.array([[10, 2, 5], [10, 2, 5], [30, 5, 6], [10, 8, 5], [4, 2, 5], [6, 6, 6]], float)
    return Problem(
        site=Site("unb", 230.0, 63.0, charge_points=cps),
        grid=TimeGrid.uniform(T0, STEP, 6),
        sessions=sessions,
        base_load_a=base,
        max_unbalance_a=VDE_UNBALANCE_A,
        weights=Weights(fairness_eur=1.0),
    )


def district(n: int, seed: int, **changes) -> Problem:
    """A short evening on a lamppost district, so that a 1e-6 gap is quick to prove."""
    p = lamppost_district(
        n,
        seed=seed,
        start=datetime(2023, 6, 5, 17, 0, tzinfo=UTC),
        horizon=timedelta(hours=8),
        step=timedelta(minutes=30),
    )
    return replace(p, **changes)


INSTANCES = {
    "groups": groups_instance,
    "unbalance": unbalance_instance,
    "district-10": lambda: district(10, 1),
    "district-16-peak": lambda: district(16, 3, weights=Weights(peak_eur_per_a=0.01)),
    "district-12-fairness": lambda: district(12, 2, weights=Weights(fairness_eur=1.0)),
    "district-16-unbalance": lambda: district(16, 3, max_unbalance_a=20.0),
    "district-14-targets": lambda: district(
        14, 4, target=EmissionTarget(max_intensity_g_per_kwh=330.0, budget_kg=10.0)
    ),
    "district-12-intensity": lambda: district(
        12, 5, target=EmissionTarget(max_intensity_g_per_kwh=300.0, penalty_eur_per_kg=2.0)
    ),
    "groups-reserve": lambda: replace(
        groups_instance(),
        reserve_a={"site": np.array([0, 5, 10, 40, 40, 20, 10, 0], float), "cable-2": np.full(8, 6.0)},
        weights=Weights(reserve_eur_per_kwh=0.3),
    ),
    "district-12-reserve": lambda: district(
        12, 7, reserve_a={"site": np.linspace(0.0, 60.0, 16)}, weights=Weights(reserve_eur_per_kwh=0.2)
    ),
    "district-20-all": lambda: district(
        20,
        6,
        weights=Weights(peak_eur_per_a=0.01, fairness_eur=1.0),
        max_unbalance_a=20.0,
        target=EmissionTarget(budget_kg=15.0),
    ),
}


@pytest.fixture(params=list(INSTANCES), scope="module")
def problem(request) -> Problem:
    return INSTANCES[request.param]()


# ---------------------------------------------------------------- same model, row by row

#: Pyomo constraint family -> name of its rows in models.formulation.
FAMILY = {
    "energy_kwh": "energy",
    "limit_a": "limit",
    "peak_def_a": "peak",
    "unbalance_a": "unbalance",
    "fairness_kwh": "fairness",
    "reserve_a": "reserve",
}


def _column(m: pyo.ConcreteModel, form: Formulation, var) -> int | None:
    """Column of ``var`` in the formulation; ``None`` for ``on`` (not in the matrix form)."""
    comp, idx = var.parent_component(), var.index()
    if comp is m.current_a:
        return idx
    if comp is m.find_component("peak_a"):
        return form.col_peak.start + PHASES.index(idx)
    if comp is m.find_component("share"):
        return form.col_share
    if comp is m.find_component("excess_kg"):
        return form.col_excess.start + list(m.TARGETS).index(idx)
    if comp is m.find_component("over_reserve_a"):
        return form.col_reserve.start + list(m.RESERVE_ROWS).index(idx)
    return None


def _pyomo_rows(m: pyo.ConcreteModel, form: Formulation) -> list[tuple]:
    rows = []
    for con in m.component_objects(pyo.Constraint):
        if con.name in ("max_when_on_a", "min_when_on_a"):
            continue
        for idx, cd in con.items():
            repn = generate_standard_repn(cd.body)
            terms = sorted(
                (_column(m, form, v), float(a))
                for v, a in zip(repn.linear_vars, repn.linear_coefs, strict=True)
                if a != 0
            )
            const = float(repn.constant)
            lo = -np.inf if cd.lb is None else cd.lb - const
            hi = np.inf if cd.ub is None else cd.ub - const
            name = idx if con.name == "target_kg" else FAMILY[con.name]
            rows.append((name, tuple(t[0] for t in terms), tuple(t[1] for t in terms), lo, hi))
    return sorted(rows, key=lambda r: (r[0], r[1], round(r[4], 9), round(r[3], 9)))


def _matrix_rows(form: Formulation) -> list[tuple]:
    a = form.a.tocsr()
    rows = []
    for i, name in enumerate(form.row_names):
        cols, vals = a.indices[a.indptr[i] : a.indptr[i + 1]], a.data[a.indptr[i] : a.indptr[i + 1]]
        keep = vals != 0
        order = np.argsort(cols[keep])
        cols, vals = cols[keep][order], vals[keep][order]
        if cols.size == 0:
            continue  # the energy row of a session without pairs
        rows.append((name, tuple(cols.tolist()), tuple(vals.tolist()), form.row_lower[i], form.row_upper[i]))
    return sorted(rows, key=lambda r: (r[0], r[1], round(r[4], 9), round(r[3], 9)))


def test_rows_columns_and_objective_match_the_formulation(problem: Problem) -> None:
    c = compile_problem(problem)
    form = build_formulation(c)
    m = build_pyomo_model(c)
    names = np.array(form.row_names, dtype=object)
    n_p = c.n_pairs

    # counts, family by family
    assert len(m.current_a) == len(m.on) == n_p
    assert len(m.max_when_on_a) == len(m.min_when_on_a) == n_p
    assert len(m.energy_kwh) == len(np.unique(c.pair_s))
    assert len(m.limit_a) == (names == "limit").sum()
    families = (("peak_def_a", "peak"), ("unbalance_a", "unbalance"), ("fairness_kwh", "fairness"))
    for comp, name in (*families, ("reserve_a", "reserve")):
        assert len(m.find_component(comp) or ()) == (names == name).sum(), comp
    targets = m.find_component("target_kg")
    assert len(targets or ()) == np.isin(names, ["intensity", "budget"]).sum()
    assert (m.find_component("peak_a") is not None) == (form.col_peak.stop > form.col_peak.start)
    assert (m.find_component("share") is not None) == (form.col_share is not None)
    n_vars = sum(len(v) for v in m.component_objects(pyo.Var))
    assert n_vars == form.n_cols + n_p  # the formulation's columns plus one binary per pair

    # every row, coefficient and bound
    ours, theirs = _pyomo_rows(m, form), _matrix_rows(form)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a[:2] == b[:2]
        np.testing.assert_allclose(a[2], b[2], rtol=1e-12, atol=0)
        np.testing.assert_allclose(a[3:], b[3:], rtol=1e-12, atol=1e-12)

    # column bounds and objective
    lower, upper, cost = np.zeros(form.n_cols), np.zeros(form.n_cols), np.zeros(form.n_cols)
    for v in m.component_data_objects(pyo.Var):
        j = _column(m, form, v)
        if j is None:
            assert v.is_binary()
            continue
        lower[j] = -np.inf if v.lb is None else v.lb
        upper[j] = np.inf if v.ub is None else v.ub
    repn = generate_standard_repn(m.cost_eur.expr)
    assert float(repn.constant) == 0.0
    for v, a in zip(repn.linear_vars, repn.linear_coefs, strict=True):
        cost[_column(m, form, v)] += a
    np.testing.assert_array_equal(lower, form.col_lower)
    np.testing.assert_array_equal(upper, form.col_upper)
    np.testing.assert_allclose(cost, form.c, rtol=1e-12, atol=0)


# ---------------------------------------------------------------- same optimum, same bound


def test_optimum_matches_highs_mip_and_schedule_is_sound(problem: Problem) -> None:
    plain = solve_plain(problem, mip_rel_gap=1e-6)
    ref = solve(problem, SolverOptions(method="mip", mip_rel_gap=1e-6))
    assert plain.status == SolveStatus.OPTIMAL
    assert ref.status == SolveStatus.OPTIMAL
    assert plain.objective_eur == pytest.approx(ref.objective_eur, rel=1e-4)
    assert plain.bound_eur <= plain.objective_eur + 1e-9
    assert check_schedule(plain.schedule) == []
    assert plain.schedule.policy == "plain-milp"
    assert 0 < plain.build_s <= plain.total_s and 0 < plain.solve_s <= plain.total_s


def test_lp_relaxation_matches_highs(problem: Problem) -> None:
    m = build_pyomo_model(problem)
    pyo.TransformationFactory("core.relax_integer_vars").apply_to(m)
    res = SolverFactory("highs").solve(m, load_solutions=False)
    assert res.termination_condition == TerminationCondition.convergenceCriteriaSatisfied
    ref = solve_lp_relaxation(problem)
    assert res.incumbent_objective == pytest.approx(ref.objective_eur, rel=1e-7, abs=1e-9)


# ---------------------------------------------------------------- hand-checked cases


def test_minimum_current_makes_one_ev_sit_out() -> None:
    # A 10 A site, two EVs of at most 8 A (5.52 kW) with a 6 A minimum: both on would need 12 A,
    # so one EV charges at 8 A; the LP relaxation would share all 10 A.
    cps = (ChargePoint("a"), ChargePoint("b"))
    sessions = (ev(0, "a", 0, 1, 20.0, max_power_kw=5.52), ev(1, "b", 0, 1, 20.0, max_power_kw=5.52))
    problem = Problem(Site("s", 230.0, 10.0, charge_points=cps), TimeGrid.uniform(T0, STEP, 1), sessions)
    result = solve_plain(problem)
    assert result.status == SolveStatus.OPTIMAL
    np.testing.assert_allclose(sorted(result.schedule.current_a[:, 0]), [0.0, 8.0], atol=1e-6)
    early = Weights().early_eur_per_kwh_h * 0.125  # mid-point of the step [h]
    expected = 8 * KWH_PER_A_3PH * (-Weights().unmet_energy_eur_per_kwh + early)
    assert result.objective_eur == pytest.approx(expected, rel=1e-9)
    relaxed = solve_lp_relaxation(problem)
    assert relaxed.objective_eur == pytest.approx(expected * 10 / 8, rel=1e-9)


def test_no_sessions_is_an_empty_optimal_plan() -> None:
    site = Site("s", 230.0, 10.0, charge_points=(ChargePoint("a"),))
    problem = Problem(site, TimeGrid.uniform(T0, STEP, 4))
    result = solve_plain(problem)
    assert result.status == SolveStatus.OPTIMAL
    assert result.objective_eur == 0.0
    assert result.schedule.current_a.shape == (0, 4)
    assert len(build_pyomo_model(problem).current_a) == 0


def test_model_carries_readable_indices() -> None:
    m = build_pyomo_model(groups_instance())
    c = m.compiled
    p = int(np.nonzero(c.pair_s == 2)[0][0])
    assert m.session_of[p] == "ev2"
    assert m.step_of[p] == c.pair_k[p]
    assert all(node in ("site", "feeder", "cable-1", "cable-2") for node, _, _ in m.LIMIT_ROWS)
    assert {phase for _, _, phase in m.LIMIT_ROWS} <= set(PHASES)


@pytest.mark.parametrize(
    ("condition", "has_solution", "status"),
    [
        (TerminationCondition.convergenceCriteriaSatisfied, True, SolveStatus.OPTIMAL),
        (TerminationCondition.maxTimeLimit, True, SolveStatus.FEASIBLE),
        (TerminationCondition.maxTimeLimit, False, SolveStatus.NO_SOLUTION),
        (TerminationCondition.provenInfeasible, False, SolveStatus.INFEASIBLE),
        (TerminationCondition.infeasibleOrUnbounded, False, SolveStatus.INFEASIBLE),
        (TerminationCondition.error, False, SolveStatus.ERROR),
    ],
)
def test_termination_maps_to_status(condition, has_solution, status) -> None:
    assert _status(condition, has_solution) == status
