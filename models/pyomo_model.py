"""The charging MILP as a Pyomo model: the readable, exportable, solver-agnostic form.

This is the model of :mod:`models.formulation` (read its docstring for the maths), written the
textbook way for analysts and as the "plain formulation" the benchmark compares against:

* the minimum current is a binary ``on[p]`` with two linking rows per pair
  (``current_a[p] <= ub * on[p]`` and ``current_a[p] >= min * on[p]``) instead of a
  semi-continuous column;
* every other row, column, bound and objective coefficient is the formulation's, and rows the
  formulation leaves out (limits that cannot bind, unbalance rows out of reach) are left out
  here too, so the two models have the same optimum and the same LP relaxation.

Index sets are derived once from the :class:`~models.compiled.Compiled` arrays with numpy; each
constraint family is one indexed ``Constraint`` whose rule only sums a precomputed list of pairs.

Components (units in the names)
-------------------------------
Sets
    ``PAIRS`` (pair number p; ``session_of[p]``, ``step_of[p]`` say which session and step),
    ``ENERGY_ROWS`` (session ids with a pair), ``LIMIT_ROWS`` (node id, step, phase),
    ``RESERVE_ROWS`` (node id, step, phase; capacity held for EVs expected later),
    ``PEAK_ROWS`` (step, phase), ``UNBALANCE_ROWS`` (phase a, phase b, step),
    ``FAIRNESS_ROWS`` (session ids), ``TARGETS`` ("intensity", "budget"), ``PHASES``.
Variables
    ``current_a[p]`` [A] in [0, pair_ub_a], ``on[p]`` binary, ``peak_a[phase]`` [A],
    ``share`` [-] in [0, 1], ``excess_kg[target]`` [kg] >= 0, ``over_reserve_a[row]`` [A] in
    [0, reserve].
Constraints
    ``energy_kwh``, ``max_when_on_a``, ``min_when_on_a``, ``limit_a``, ``reserve_a``, ``peak_def_a``,
    ``unbalance_a``, ``fairness_kwh``, ``target_kg``.
Objective
    ``cost_eur`` (EUR-equivalent, without the constant value of all energy wanted).

Build with :func:`build_pyomo_model` (pure, no solver); :func:`solve_plain` hands the model as
is to HiGHS through Pyomo's own interface (``pyomo.contrib.solver`` "highs") and extracts a
:class:`~models.schedule.Schedule`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyomo.environ as pyo
from pyomo.contrib.solver.common.factory import SolverFactory
from pyomo.contrib.solver.common.results import SolutionStatus, TerminationCondition
from pyomo.core.expr import LinearExpression

from models.compiled import LAXITY_FLOOR_H, Compiled, compile_problem
from models.errors import SolverError
from models.highs import SolveStatus
from models.problem import PHASES, Problem
from models.schedule import Schedule

__all__ = ["PlainResult", "build_pyomo_model", "extract_schedule", "solve_plain"]

log = logging.getLogger(__name__)

#: Demand within this of the headroom [A] counts as fitting (as in models.formulation).
_FIT_TOL_A = 1e-9
#: The three phase differences the unbalance rows bound, in the formulation's order.
_PHASE_PAIRS = ((0, 1), (1, 2), (2, 0))


@dataclass(frozen=True)
class PlainResult:
    """Outcome of :func:`solve_plain`.

    Attributes
    ----------
    status : SolveStatus
        OPTIMAL (within ``mip_rel_gap``), FEASIBLE (time limit with an incumbent), NO_SOLUTION
        (time limit, no incumbent), INFEASIBLE, or ERROR (see ``message``).
    objective_eur : float or None
        Objective of the incumbent [EUR-equivalent], without the constant value of all energy
        wanted (see :mod:`models.formulation`).
    bound_eur : float or None
        Best proven lower bound on the objective [EUR-equivalent].
    gap : float or None
        (objective - bound) / max(|objective|, 1e-9) [-].
    build_s : float
        Compiling the problem and constructing the Pyomo model [s].
    solve_s : float
        Everything inside the solver call: Pyomo's hand-off to HiGHS, the solve, and loading the
        values back into the model [s].
    total_s : float
        Wall-clock time of the whole :func:`solve_plain` call [s].
    schedule : Schedule or None
        Per-phase current [A] of every session in every step; ``None`` without an incumbent.
    message : str
        Pyomo's termination condition.
    highs_s : float or None
        HiGHS's own run time as it reports it (part of ``solve_s``; the rest is Pyomo's
        hand-off) [s].
    """

    status: SolveStatus
    objective_eur: float | None
    bound_eur: float | None
    gap: float | None
    build_s: float
    solve_s: float
    total_s: float
    schedule: Schedule | None
    message: str = ""
    highs_s: float | None = None

    @property
    def ok(self) -> bool:
        """Whether there is a schedule (OPTIMAL or FEASIBLE)."""
        return self.status in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE)


# ---------------------------------------------------------------- index sets, in numpy


class _Row(NamedTuple):
    """One row: ``lower <= sum_i coefs[i] * current_a[pairs[i]] + own_coef * own <= upper``.

    ``own`` is the family's own column (``peak_a``, ``share``, ``excess_kg``), if it has one.
    """

    pairs: list[int]
    coefs: list[float]
    lower: float | None
    upper: float | None
    own_coef: float = 0.0


def _group(keys: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unique ``keys`` (sorted) and the ``members`` of each, in their original order."""
    if keys.size == 0:
        return keys, []
    order = np.argsort(keys, kind="stable")
    uniq, starts = np.unique(keys[order], return_index=True)
    return uniq, np.split(members[order], starts[1:])


def _energy_rows(c: Compiled) -> dict[str, _Row]:
    """Session id -> energy row, for sessions with at least one pair [kWh]."""
    sessions, pairs = _group(c.pair_s, np.arange(c.n_pairs))
    ids = c.problem.sessions
    return {
        ids[s].id: _Row(p.tolist(), c.pair_kwh_per_a[p].tolist(), None, float(c.energy_kwh[s]))
        for s, p in zip(sessions.tolist(), pairs, strict=True)
    }


def _limit_rows(c: Compiled) -> dict[tuple[str, int, str], _Row]:
    """(node, step, phase) -> limit row, where some pair loads it and could overload it [A]."""
    n_t = c.n_steps
    # Every (node, pair) the pair hangs under, then every grid phase the pair loads.
    node_of, pair_of = np.nonzero(c.member[:, c.pair_s])
    entry, phase = np.nonzero(c.pair_phase_mask[pair_of])
    node, pair = node_of[entry], pair_of[entry]
    key = (node * n_t + c.pair_k[pair]) * 3 + phase
    headroom = c.headroom_a.reshape(-1)  # (N, T, 3) in C order: index (n * T + k) * 3 + f
    # Summed in pair order per row, as models.formulation does, so the kept rows are the same.
    demand = np.bincount(key, weights=c.pair_ub_a[pair], minlength=headroom.size)
    keep = (demand > headroom + _FIT_TOL_A)[key]
    uniq, pairs = _group(key[keep], pair[keep])
    n_idx, rest = np.divmod(uniq, n_t * 3)
    k_idx, f_idx = np.divmod(rest, 3)
    return {
        (c.node_ids[n], k, PHASES[f]): _Row(p.tolist(), [1.0] * p.size, None, h)
        for n, k, f, p, h in zip(
            n_idx.tolist(), k_idx.tolist(), f_idx.tolist(), pairs, headroom[uniq].tolist(), strict=True
        )
    }


def _reserve_rows(c: Compiled) -> dict[tuple[str, int, str], tuple[_Row, float]]:
    """(node, step, phase) -> (row ``sum current - over <= headroom - held``, held [A]).

    Only where capacity is held and the pairs on the row could reach into it, as in
    :mod:`models.formulation`.
    """
    out: dict[tuple[str, int, str], tuple[_Row, float]] = {}
    ps, pk = c.pair_s, c.pair_k
    for n, node_id in enumerate(c.node_ids):
        in_node = c.member[n][ps]
        for f, phase in enumerate(PHASES):
            held = c.reserve_a[n, :, f]
            if not held.any():
                continue
            sel = np.nonzero(in_node & c.pair_phase_mask[:, f])[0]
            demand = np.bincount(pk[sel], weights=c.pair_ub_a[sel], minlength=c.n_steps)
            room = c.headroom_a[n, :, f] - held
            keep = (demand > room + 1e-9) & (held > 1e-9)
            sel = sel[keep[pk[sel]]]
            steps, pairs = _group(pk[sel], sel)
            for k, p in zip(steps.tolist(), pairs, strict=True):
                row = _Row(p.tolist(), [1.0] * p.size, None, float(room[k]), -1.0)
                out[(node_id, k, phase)] = (row, float(held[k]))
    return out


def _peak_rows(c: Compiled) -> dict[tuple[int, str], _Row]:
    """(step, phase) -> charging at the connection minus ``peak_a`` <= -base load [A]."""
    pair, phase = np.nonzero(c.pair_phase_mask)  # every pair loads the root
    uniq, pairs = _group(c.pair_k[pair] * 3 + phase, pair)
    k_idx, f_idx = np.divmod(uniq, 3)
    minus_base = (-c.base_load_a[k_idx, f_idx]).tolist()
    return {
        (k, PHASES[f]): _Row(p.tolist(), [1.0] * p.size, None, u, -1.0)
        for k, f, p, u in zip(k_idx.tolist(), f_idx.tolist(), pairs, minus_base, strict=True)
    }


def _unbalance_rows(c: Compiled, max_unbalance_a: float) -> dict[tuple[str, str, int], _Row]:
    """(phase a, phase b, step) -> unbalance row that the step's 1-phase pairs could break [A]."""
    base = c.base_load_a
    pmask = c.pair_phase_mask
    rows: dict[tuple[str, str, int], _Row] = {}
    for a, b in _PHASE_PAIRS:
        coef = pmask[:, a].astype(float) - pmask[:, b].astype(float)
        sel = np.nonzero(coef)[0]
        if sel.size == 0:
            continue
        steps, members = _group(c.pair_k[sel], sel)
        # Summed in pair order, as models.formulation does, so the kept rows are the same.
        _, row_of = np.unique(c.pair_k[sel], return_inverse=True)
        reach = np.bincount(row_of, weights=c.pair_ub_a[sel], minlength=steps.size)
        d = base[steps, a] - base[steps, b]
        allowed = np.maximum(max_unbalance_a, np.abs(d))
        need = reach > allowed - np.abs(d) - _FIT_TOL_A
        for j in np.nonzero(need)[0].tolist():
            p = members[j]
            lower, upper = float(-allowed[j] - d[j]), float(allowed[j] - d[j])
            rows[PHASES[a], PHASES[b], int(steps[j])] = _Row(p.tolist(), coef[p].tolist(), lower, upper)
    return rows


def _pair_cost_eur_per_a(c: Compiled) -> np.ndarray:
    """(P,) objective coefficient of every current [EUR/A], as in models.formulation."""
    prob = c.problem
    w = prob.weights
    ps, pk = c.pair_s, c.pair_k
    per_kwh = -w.unmet_energy_eur_per_kwh * c.priority[ps] + w.early_eur_per_kwh_h * c.mid_h[pk]
    if w.urgency_eur_per_kwh_h:
        urgency = 1.0 / np.maximum(c.laxity_h, LAXITY_FLOOR_H)
        per_kwh = per_kwh + w.urgency_eur_per_kwh_h * c.mid_h[pk] * urgency[ps]
    price = prob.signals.price_eur_per_mwh
    co2 = prob.signals.co2_g_per_kwh
    if price is not None:
        per_kwh = per_kwh + w.energy_cost * price[pk] / 1000.0
    if co2 is not None:
        per_kwh = per_kwh + w.co2_eur_per_kg * co2[pk] / 1000.0
    return c.pair_kwh_per_a * per_kwh


def _linear(variables: Sequence, coefs: Sequence[float], constant: float = 0.0) -> LinearExpression:
    return LinearExpression(constant=constant, linear_coefs=list(coefs), linear_vars=list(variables))


# ---------------------------------------------------------------- the model


def build_pyomo_model(problem_or_compiled: Problem | Compiled) -> pyo.ConcreteModel:
    """The MILP of :mod:`models.formulation` as a Pyomo ``ConcreteModel`` (pure; no solver).

    Parameters
    ----------
    problem_or_compiled : Problem or Compiled
        The problem, or its arrays from :func:`~models.compiled.compile_problem`.

    Returns
    -------
    pyomo.environ.ConcreteModel
        Components as listed in the module docstring. ``model.compiled`` is the
        :class:`~models.compiled.Compiled` it was built from (pair ``p`` is
        ``(compiled.pair_s[p], compiled.pair_k[p])``).

    Notes
    -----
    Peak, unbalance, fairness and target components exist only when the formulation has them
    (a positive weight, ``max_unbalance_a`` set, a target with CO2 signals, and at least one
    pair). The objective has no constant term, as in the formulation.
    """
    c = (
        problem_or_compiled
        if isinstance(problem_or_compiled, Compiled)
        else compile_problem(problem_or_compiled)
    )
    prob = c.problem
    w = prob.weights
    n_p = c.n_pairs
    ps, pk = c.pair_s, c.pair_k
    session_ids = [s.id for s in prob.sessions]
    ub = c.pair_ub_a.tolist()
    lo = c.min_current_a[ps].tolist()

    m = pyo.ConcreteModel(name=f"noxblock-plain-{prob.site.id}")
    m.compiled = c

    # --- pairs: current and on/off
    m.PAIRS = pyo.RangeSet(0, n_p - 1)
    m.PHASES = pyo.Set(initialize=PHASES, ordered=True)
    m.session_of = pyo.Param(m.PAIRS, initialize=[session_ids[s] for s in ps.tolist()], within=pyo.Any)
    m.step_of = pyo.Param(m.PAIRS, initialize=pk.tolist(), within=pyo.NonNegativeIntegers)
    m.current_a = pyo.Var(m.PAIRS, within=pyo.NonNegativeReals, bounds=lambda _m, p: (0.0, ub[p]))
    m.on = pyo.Var(m.PAIRS, within=pyo.Binary)
    cur = [m.current_a[p] for p in range(n_p)]
    on = [m.on[p] for p in range(n_p)]
    m.max_when_on_a = pyo.Constraint(m.PAIRS, rule=lambda _m, p: _linear([cur[p], on[p]], [1.0, -ub[p]]) <= 0)
    m.min_when_on_a = pyo.Constraint(m.PAIRS, rule=lambda _m, p: _linear([cur[p], on[p]], [1.0, -lo[p]]) >= 0)

    def family(rows: dict, own=None):
        """Rule of a family: the row's precomputed sum, plus ``own(*label)`` if the family has one."""

        def rule(_m, *label):
            row = rows[label[0] if len(label) == 1 else label]
            terms, coefs = [cur[p] for p in row.pairs], row.coefs
            if own is not None:
                terms, coefs = [*terms, own(*label)], [*coefs, row.own_coef]
            return (row.lower, _linear(terms, coefs), row.upper)

        return rule

    # --- energy per session
    energy = _energy_rows(c)
    m.ENERGY_ROWS = pyo.Set(initialize=list(energy), ordered=True)
    m.energy_kwh = pyo.Constraint(m.ENERGY_ROWS, rule=family(energy))

    # --- node limits
    limits = _limit_rows(c)
    m.LIMIT_ROWS = pyo.Set(initialize=list(limits), dimen=3, ordered=True)
    m.limit_a = pyo.Constraint(m.LIMIT_ROWS, rule=family(limits))

    cost = [_linear(cur, _pair_cost_eur_per_a(c).tolist())]

    # --- capacity held for EVs expected later (soft)
    if w.reserve_eur_per_kwh > 0 and n_p:
        held = _reserve_rows(c)
        rows = {label: row for label, (row, _) in held.items()}
        m.RESERVE_ROWS = pyo.Set(initialize=list(held), dimen=3, ordered=True)
        m.over_reserve_a = pyo.Var(m.RESERVE_ROWS, bounds=lambda _m, *label: (0.0, held[label][1]))
        over = m.over_reserve_a
        m.reserve_a = pyo.Constraint(m.RESERVE_ROWS, rule=family(rows, lambda *label: over[label]))
        eur_per_a = [w.reserve_eur_per_kwh * c.voltage_v * float(c.dt_h[label[1]]) / 1000.0 for label in held]
        cost.append(_linear([over[label] for label in held], eur_per_a))

    # --- peak at the connection
    if w.peak_eur_per_a > 0 and n_p:
        peak_lo = dict(zip(PHASES, c.base_load_a.max(axis=0).tolist(), strict=True))
        m.peak_a = pyo.Var(m.PHASES, bounds=lambda _m, f: (peak_lo[f], None))
        peaks = _peak_rows(c)
        m.PEAK_ROWS = pyo.Set(initialize=list(peaks), dimen=2, ordered=True)
        m.peak_def_a = pyo.Constraint(m.PEAK_ROWS, rule=family(peaks, lambda _k, phase: m.peak_a[phase]))
        cost.append(_linear([m.peak_a[f] for f in PHASES], [w.peak_eur_per_a] * 3))

    # --- unbalance at the connection
    if prob.max_unbalance_a is not None and n_p:
        unbalance = _unbalance_rows(c, prob.max_unbalance_a)
        m.UNBALANCE_ROWS = pyo.Set(initialize=list(unbalance), dimen=3, ordered=True)
        m.unbalance_a = pyo.Constraint(m.UNBALANCE_ROWS, rule=family(unbalance))

    # --- fairness: the smallest share of need met, over sessions that can be served
    if w.fairness_eur > 0 and n_p:
        m.share = pyo.Var(bounds=(0.0, 1.0))
        fair = {
            sid: _Row(row.pairs, [-k for k in row.coefs], None, 0.0, row.upper)
            for sid, row in energy.items()
            if row.upper > 0
        }
        m.FAIRNESS_ROWS = pyo.Set(initialize=list(fair), ordered=True)
        m.fairness_kwh = pyo.Constraint(m.FAIRNESS_ROWS, rule=family(fair, lambda _sid: m.share))
        cost.append(_linear([m.share], [-w.fairness_eur]))

    # --- pollution-reduction target (soft)
    target = prob.target
    co2 = prob.signals.co2_g_per_kwh
    if target is not None and co2 is not None and n_p:
        every = list(range(n_p))
        caps: dict[str, _Row] = {}
        if target.max_intensity_g_per_kwh is not None:
            g = (co2[pk] - target.max_intensity_g_per_kwh) / 1000.0 * c.pair_kwh_per_a
            caps["intensity"] = _Row(every, g.tolist(), None, 0.0, -1.0)
        if target.budget_kg is not None:
            g = co2[pk] / 1000.0 * c.pair_kwh_per_a
            caps["budget"] = _Row(every, g.tolist(), None, float(target.budget_kg), -1.0)
        m.TARGETS = pyo.Set(initialize=list(caps), ordered=True)
        m.excess_kg = pyo.Var(m.TARGETS, within=pyo.NonNegativeReals)
        m.target_kg = pyo.Constraint(m.TARGETS, rule=family(caps, lambda name: m.excess_kg[name]))
        cost.append(_linear([m.excess_kg[t] for t in caps], [target.penalty_eur_per_kg] * len(caps)))

    m.cost_eur = pyo.Objective(expr=pyo.quicksum(cost), sense=pyo.minimize)
    return m


# ---------------------------------------------------------------- solve and extract


def _gap(obj: float, bound: float) -> float:
    return max(obj - bound, 0.0) / max(abs(obj), 1e-9)


def _status(tc: TerminationCondition, has_solution: bool) -> SolveStatus:
    if tc == TerminationCondition.convergenceCriteriaSatisfied:
        return SolveStatus.OPTIMAL if has_solution else SolveStatus.ERROR
    if tc in (TerminationCondition.provenInfeasible, TerminationCondition.infeasibleOrUnbounded):
        return SolveStatus.INFEASIBLE
    if tc in (
        TerminationCondition.maxTimeLimit,
        TerminationCondition.iterationLimit,
        TerminationCondition.interrupted,
    ):
        return SolveStatus.FEASIBLE if has_solution else SolveStatus.NO_SOLUTION
    return SolveStatus.ERROR


def extract_schedule(model: pyo.ConcreteModel, policy: str = "plain-milp") -> Schedule:
    """The schedule held by a solved model from :func:`build_pyomo_model`.

    A pair counts as on when ``on[p]`` rounds to 1; its current is then clipped into
    ``[min_current_a, pair_ub_a]`` (undoing solver tolerances), otherwise it is 0.

    Parameters
    ----------
    model : pyomo.environ.ConcreteModel
        A model whose variables hold values.
    policy : str
        Name stored in the schedule.

    Returns
    -------
    Schedule
        (S, T) per-phase current [A].
    """
    c: Compiled = model.compiled
    n_p = c.n_pairs
    x = np.array([model.current_a[p].value or 0.0 for p in range(n_p)], dtype=float)
    on = np.array([model.on[p].value or 0.0 for p in range(n_p)], dtype=float) > 0.5
    lo = c.min_current_a[c.pair_s]
    x = np.where(on, np.clip(x, lo, c.pair_ub_a), 0.0)
    cur = np.zeros((c.n_sessions, c.n_steps))
    cur[c.pair_s, c.pair_k] = x
    return Schedule(c.problem, cur, policy=policy)


def solve_plain(
    problem: Problem,
    *,
    time_limit_s: float = 60.0,
    mip_rel_gap: float = 0.01,
    threads: int | None = None,
) -> PlainResult:
    """Build the Pyomo model and hand it as is to HiGHS through Pyomo's HiGHS interface.

    Parameters
    ----------
    problem : Problem
    time_limit_s : float
        Wall-clock limit of HiGHS [s].
    mip_rel_gap : float
        Stop when (incumbent - bound) / |incumbent| is at most this [-].
    threads : int or None
        HiGHS threads; ``None`` = HiGHS's default.

    Returns
    -------
    PlainResult
    """
    t0 = time.perf_counter()
    model = build_pyomo_model(problem)
    t1 = time.perf_counter()
    c: Compiled = model.compiled
    if c.n_pairs == 0:
        # Nothing to decide; HiGHS would report an empty model rather than an optimum.
        sched = Schedule(problem, np.zeros((c.n_sessions, c.n_steps)), policy="plain-milp")
        t2 = time.perf_counter()
        return PlainResult(SolveStatus.OPTIMAL, 0.0, 0.0, 0.0, t1 - t0, 0.0, t2 - t0, sched, "no pairs")

    opt = SolverFactory("highs")
    if not opt.available():
        raise SolverError("Pyomo's HiGHS interface is not available (is highspy installed?)")
    results = opt.solve(
        model,
        time_limit=float(time_limit_s),
        rel_gap=float(mip_rel_gap),
        threads=threads,
        load_solutions=False,
        raise_exception_on_nonoptimal_result=False,
    )
    has = results.solution_status in (SolutionStatus.optimal, SolutionStatus.feasible)
    if has:
        results.solution_loader.load_vars()
    t2 = time.perf_counter()
    tc = results.termination_condition
    status = _status(tc, has)
    highs_s = getattr(results.timing_info, "highs_time", None)
    log.info(
        "plain MILP: %d pairs, build %.3f s, solve %.3f s (HiGHS %s s), %s",
        c.n_pairs, t1 - t0, t2 - t1, highs_s, tc.name,
    )  # fmt: skip
    log.debug("HiGHS log:\n%s", results.solver_log)
    if status not in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
        total_s = time.perf_counter() - t0
        return PlainResult(status, None, None, None, t1 - t0, t2 - t1, total_s, None, tc.name, highs_s)
    obj = float(results.incumbent_objective)
    bound = None if results.objective_bound is None else float(results.objective_bound)
    gap = None if bound is None else _gap(obj, bound)
    if status == SolveStatus.OPTIMAL and gap is not None and gap > mip_rel_gap + 1e-9:
        status = SolveStatus.FEASIBLE
    sched = extract_schedule(model)
    total_s = time.perf_counter() - t0
    return PlainResult(status, obj, bound, gap, t1 - t0, t2 - t1, total_s, sched, tc.name, highs_s)
