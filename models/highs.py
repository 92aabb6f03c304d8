"""Solve the charging MILP with HiGHS (``highspy``): the only module that knows the solver.

Two methods, same matrices (:mod:`models.formulation`), same result type:

``"lp-repair"`` (default)
    Solve the LP relaxation (its optimum is a valid bound; node-limit rows are added lazily, only
    once violated), decide which of its few currents between 0 and the minimum go on
    (:func:`models.repair.round_pattern`), and re-solve the LP with that on/off pattern fixed,
    warm-started ("polish"). If the pattern is refused (an unbalance row), the amounts are
    repaired directly (:func:`models.repair.repair`). If the incumbent is still more than
    ``neighbourhood_gap`` from the bound, HiGHS's branch and bound searches its neighbourhood
    (RINS, Danna, Rothberg and Le Pape 2005): every current on which the LP relaxation and the
    incumbent agree -- both off, or both at least the minimum -- is fixed off or to
    [minimum, bound], only the rest stay semi-continuous; that small MIP takes tens of
    milliseconds and, the relaxation being nearly tight, usually closes the gap. If the gap is
    still above ``mip_rel_gap``, HiGHS's branch and bound runs on the whole model with the time
    that is left. On the benchmark's lamppost districts the gap after polishing is around 1e-5.
``"mip"``
    The semi-continuous model handed to HiGHS's branch and bound as is.

Outcomes are a :class:`SolveStatus`, never a silent wrong answer: a time-out without any
incumbent, an infeasible model and a solver failure are their own statuses, and the caller
chooses the fallback.
"""

from __future__ import annotations

import enum
import logging
import os
import sys
import time
from dataclasses import dataclass, field

import highspy
import numpy as np

from models.compiled import compile_problem
from models.errors import SolverError
from models.formulation import Formulation, build_formulation
from models.problem import Problem
from models.repair import aux_columns, greedy_fill, repair, round_pattern
from models.schedule import Schedule

__all__ = [
    "SolveResult",
    "SolveStatus",
    "SolverOptions",
    "TargetReport",
    "solve",
    "solve_formulation",
    "solve_lp_relaxation",
]

log = logging.getLogger(__name__)


class SolveStatus(enum.Enum):
    """How a solve ended."""

    OPTIMAL = "optimal"
    """A schedule within the requested relative gap of the bound."""
    FEASIBLE = "feasible"
    """A schedule, but the time limit came before the gap was closed."""
    NO_SOLUTION = "no_solution"
    """The time limit came before any schedule was found."""
    INFEASIBLE = "infeasible"
    """The model has no solution (cannot happen for a valid problem: all-zero is feasible)."""
    ERROR = "error"
    """The solver failed; see ``message``."""


@dataclass(frozen=True)
class SolverOptions:
    """Options of one solve.

    Parameters
    ----------
    time_limit_s : float
        Wall-clock limit of the solve step [s].
    mip_rel_gap : float
        Stop when (incumbent - bound) / |incumbent| is at most this.
    threads : int or None
        HiGHS threads; ``None`` = HiGHS's default.
    method : {"lp-repair", "mip"}
    log_to_console : bool
        Let HiGHS print its log.
    neighbourhood_gap : float
        ``"lp-repair"``: search the incumbent's neighbourhood (see the module docstring) when
        its gap to the LP bound is above this; also the relative gap that search stops at.
    neighbourhood_time_s : float
        Wall-clock limit of that search [s] (within ``time_limit_s``); 0 = never search.
    branch_and_bound_time_s : float or None
        ``"lp-repair"``: wall-clock limit of the branch and bound on the whole model that runs
        when the gap is still above ``mip_rel_gap`` [s] (within ``time_limit_s``); ``None`` =
        all the time that is left; 0 = never run it. A rolling planner caps or skips it: it
        re-plans soon anyway.
    neighbourhood_free_steps : int
        Steps at the start of the horizon whose currents the neighbourhood search leaves free
        (semi-continuous) even where the LP and the incumbent agree: a rolling planner applies
        only the first step, so that is where a better on/off choice pays. A session the LP left
        fractional in those steps is left free in every step.
    max_nodes : int or None
        Branch-and-bound node limit of every HiGHS MIP run (the neighbourhood search and the
        whole model). Unlike a time limit it gives the same answer on a slower machine, so a
        simulation is reproducible; ``None`` = no limit.
    lp_solver : {"simplex", "ipm"}
        Algorithm of the LP relaxation: simplex (default; it warm-starts between the rounds of
        lazy limit rows) or the interior-point method with crossover. IPM was faster on one live
        snapshot (600 EVs x 36 steps: 2.6 s against 7.1 s) but slower on another (6.3 against
        3.4 s) and 20 to 25 times slower on the 1,000-session districts of
        ``bench/milp_scaling.py`` (56-73 s against 2.5-2.9 s).
    """

    time_limit_s: float = 60.0
    mip_rel_gap: float = 0.01
    threads: int | None = None
    method: str = "lp-repair"
    log_to_console: bool = False
    neighbourhood_gap: float = 1e-4
    neighbourhood_time_s: float = 1.0
    branch_and_bound_time_s: float | None = None
    max_nodes: int | None = None
    neighbourhood_free_steps: int = 0
    lp_solver: str = "simplex"

    def __post_init__(self) -> None:
        if self.lp_solver not in ("simplex", "ipm"):
            raise ValueError(f"lp_solver: must be 'simplex' or 'ipm', got {self.lp_solver!r}")
        if self.method not in ("lp-repair", "mip"):
            raise ValueError(f"method: must be 'lp-repair' or 'mip', got {self.method!r}")
        if not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s: must be > 0, got {self.time_limit_s}")
        if not self.mip_rel_gap >= 0:
            raise ValueError(f"mip_rel_gap: must be >= 0, got {self.mip_rel_gap}")
        if not self.neighbourhood_gap >= 0:
            raise ValueError(f"neighbourhood_gap: must be >= 0, got {self.neighbourhood_gap}")
        if not self.neighbourhood_time_s >= 0:
            raise ValueError(f"neighbourhood_time_s: must be >= 0, got {self.neighbourhood_time_s}")
        if self.max_nodes is not None and not (isinstance(self.max_nodes, int) and self.max_nodes >= 1):
            raise ValueError(f"max_nodes: must be an integer >= 1, got {self.max_nodes!r}")
        if self.branch_and_bound_time_s is not None and not self.branch_and_bound_time_s >= 0:
            raise ValueError(f"branch_and_bound_time_s: must be >= 0, got {self.branch_and_bound_time_s}")
        if not (isinstance(self.neighbourhood_free_steps, int) and self.neighbourhood_free_steps >= 0):
            raise ValueError(
                f"neighbourhood_free_steps: must be an integer >= 0, got {self.neighbourhood_free_steps!r}"
            )


@dataclass(frozen=True)
class TargetReport:
    """How the plan stands against a pollution-reduction target.

    ``kind`` is ``"intensity"`` (target and achieved in g/kWh) or ``"budget"`` (in kg);
    ``excess_kg`` is the emissions above the target [kg]; ``missed`` says whether it is > 0.
    """

    kind: str
    target: float
    achieved: float
    excess_kg: float
    missed: bool


@dataclass(frozen=True)
class SolveResult:
    """Outcome of a solve. ``schedule`` is ``None`` unless the status is OPTIMAL or FEASIBLE.

    Times [s]: ``build_s`` (arrays and matrices), ``handoff_s`` (passing the model to HiGHS),
    ``solve_s`` (everything HiGHS and the heuristics did), ``total_s`` (their sum).
    ``objective_eur`` and ``bound_eur`` exclude the constant value of all energy wanted (see
    :mod:`models.formulation`); ``gap`` is (objective - bound) / max(|objective|, 1e-9).
    """

    status: SolveStatus
    schedule: Schedule | None
    objective_eur: float | None
    bound_eur: float | None
    gap: float | None
    build_s: float
    handoff_s: float
    solve_s: float
    method: str
    targets: tuple[TargetReport, ...] = ()
    message: str = ""
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return self.build_s + self.handoff_s + self.solve_s

    @property
    def ok(self) -> bool:
        return self.status in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE)

    @property
    def unmet_energy_kwh(self) -> float | None:
        if self.schedule is None:
            return None
        return float(self.schedule.unmet_energy_kwh.sum())


def _gap(obj: float, bound: float) -> float:
    return max(obj - bound, 0.0) / max(abs(obj), 1e-9)


_banner_shown = False


def _construct() -> highspy.Highs:
    """A new ``Highs``; the first one of the process prints a banner to fd 1, which we swallow
    (it would otherwise land in the middle of a CLI's table or CSV output)."""
    global _banner_shown
    if _banner_shown:
        return highspy.Highs()
    _banner_shown = True
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            return highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _new_highs(opts: SolverOptions) -> highspy.Highs:
    h = _construct()
    h.setOptionValue("output_flag", bool(opts.log_to_console))
    h.setOptionValue("mip_rel_gap", float(opts.mip_rel_gap))
    if opts.threads is not None:
        h.setOptionValue("threads", int(opts.threads))
    if opts.max_nodes is not None:
        h.setOptionValue("mip_max_nodes", int(opts.max_nodes))
    return h


def _pass_model(
    h: highspy.Highs,
    form: Formulation,
    *,
    semicontinuous: bool,
    rows: np.ndarray | None = None,
    fix_on: np.ndarray | None = None,
    fix_off: np.ndarray | None = None,
) -> None:
    """Hand the model (or only ``rows`` of it) to HiGHS.

    With ``semicontinuous``, pairs in ``fix_on`` are continuous in [minimum, bound] and pairs in
    ``fix_off`` fixed at 0 (both (P,) bool masks); the other pairs stay semi-continuous.
    """
    a = form.a if rows is None else form.a.tocsr()[rows].tocsc()
    lp = highspy.HighsLp()
    lp.num_col_ = form.n_cols
    lp.num_row_ = a.shape[0]
    lp.col_cost_ = form.c
    lp.col_upper_ = form.col_upper
    lp.row_lower_ = form.row_lower if rows is None else form.row_lower[rows]
    lp.row_upper_ = form.row_upper if rows is None else form.row_upper[rows]
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = a.indptr
    lp.a_matrix_.index_ = a.indices
    lp.a_matrix_.value_ = a.data
    lower = form.col_lower.copy()
    if semicontinuous:
        n_p = form.n_pairs
        lower[:n_p] = form.semi_lower
        semi = form.semi_lower > 0
        if fix_on is not None:
            semi &= ~fix_on
        if fix_off is not None:
            semi &= ~fix_off
            lower[:n_p][fix_off] = 0.0
            upper = form.col_upper.copy()
            upper[:n_p][fix_off] = 0.0
            lp.col_upper_ = upper
        cont, sc = highspy.HighsVarType.kContinuous, highspy.HighsVarType.kSemiContinuous
        kinds = [cont] * form.n_cols
        for j in np.nonzero(semi)[0].tolist():
            kinds[j] = sc
        lp.integrality_ = kinds
    lp.col_lower_ = lower
    status = h.passModel(lp)
    if status == highspy.HighsStatus.kError:
        raise SolverError("HiGHS refused the model")


def _run(h: highspy.Highs, time_left_s: float) -> highspy.HighsModelStatus:
    # HiGHS's time limit counts from the first run() of this object, not from this one: a model
    # solved again (lazy limit rows, the repair LP) would otherwise be cut short.
    h.setOptionValue("time_limit", h.getRunTime() + max(float(time_left_s), 1e-3))
    h.run()
    return h.getModelStatus()


def _target_reports(form: Formulation, x_pairs: np.ndarray) -> tuple[TargetReport, ...]:
    prob = form.compiled.problem
    target = prob.target
    co2 = prob.signals.co2_g_per_kwh
    if target is None or co2 is None:
        return ()
    c = form.compiled
    energy = c.pair_kwh_per_a * x_pairs
    total_kwh = float(energy.sum())
    emitted_kg = float((co2[c.pair_k] * energy).sum() / 1000.0)
    out = []
    if target.max_intensity_g_per_kwh is not None:
        cap = target.max_intensity_g_per_kwh
        achieved = emitted_kg * 1000.0 / total_kwh if total_kwh > 0 else 0.0
        excess = max(emitted_kg - cap * total_kwh / 1000.0, 0.0)
        out.append(TargetReport("intensity", cap, achieved, excess, excess > 1e-6))
    if target.budget_kg is not None:
        excess = max(emitted_kg - target.budget_kg, 0.0)
        out.append(TargetReport("budget", target.budget_kg, emitted_kg, excess, excess > 1e-6))
    return tuple(out)


def _clean(form: Formulation, x_pairs: np.ndarray) -> np.ndarray:
    """Pair currents with solver noise removed: below 1e-9 A is 0, a hair under the minimum is
    the minimum, nothing above the bound."""
    x = np.where(x_pairs < 1e-9, 0.0, np.asarray(x_pairs, dtype=float))
    lo = form.semi_lower
    x = np.where((x > 0) & (x < lo), lo, x)
    return np.minimum(x, form.col_upper[: form.n_pairs])


def _evaluate(form: Formulation, x_pairs: np.ndarray) -> tuple[float, bool]:
    """Objective of a cleaned plan (auxiliary columns at their best) and whether it is feasible.

    Every answer is scored here rather than trusting a solver's own report (HiGHS 1.16 can
    mis-score a MIP start in its presolved space)."""
    x_full = aux_columns(form, x_pairs)
    act = form.a @ x_full
    scale = 1e-6 * np.maximum(1.0, np.abs(act))
    ok = bool(
        np.all(act <= form.row_upper + scale)
        and np.all(act >= form.row_lower - scale)
        and np.all(x_full <= form.col_upper + 1e-9)
    )
    on = x_pairs > 0
    ok = ok and bool(np.all(x_pairs[on] >= form.semi_lower[on] - 1e-9))
    return float(form.c @ x_full), ok


def _schedule(form: Formulation, x_pairs: np.ndarray, policy: str) -> Schedule:
    c = form.compiled
    cur = np.zeros((c.n_sessions, c.n_steps))
    cur[c.pair_s, c.pair_k] = x_pairs
    return Schedule(c.problem, cur, policy=policy)


class _LazyLP:
    """The LP relaxation in HiGHS with limit rows added only once they are violated.

    Most node limits never bind (a cable rarely fills up); leaving them out until the solution
    breaks one keeps the LP small. Each round adds every violated row and re-solves from the
    previous basis; the loop ends when none is violated, so the optimum is the full LP's.
    """

    def __init__(self, form: Formulation, opts: SolverOptions, *, lazy_rows: bool = True) -> None:
        self.form = form
        names = np.array(form.row_names)
        lazy = ((names == "limit") | (names == "reserve")) & lazy_rows
        self.h = _new_highs(opts)
        if opts.lp_solver == "ipm":
            self.h.setOptionValue("solver", "ipm")
        self.in_model = ~lazy
        self.a_csr = form.a.tocsr()
        _pass_model(self.h, form, semicontinuous=False, rows=np.nonzero(self.in_model)[0])
        self.rounds = 0

    def run(self, deadline: float) -> tuple[highspy.HighsModelStatus, np.ndarray | None]:
        form = self.form
        while True:
            st = _run(self.h, deadline - time.perf_counter())
            self.rounds += 1
            if st != highspy.HighsModelStatus.kOptimal:
                return st, None
            x = np.asarray(self.h.getSolution().col_value)
            out = np.nonzero(~self.in_model)[0]
            act = self.a_csr[out] @ x
            bad = out[(act > form.row_upper[out] + 1e-7) | (act < form.row_lower[out] - 1e-7)]
            if bad.size == 0:
                return st, x
            sub = self.a_csr[bad]
            self.h.addRows(
                bad.size,
                form.row_lower[bad],
                form.row_upper[bad],
                sub.nnz,
                sub.indptr[:-1].astype(np.int32),
                sub.indices.astype(np.int32),
                sub.data,
            )
            self.in_model[bad] = True

    @property
    def objective(self) -> float:
        return float(self.h.getInfo().objective_function_value)


def solve_lp_relaxation(
    problem: Problem, options: SolverOptions | None = None, *, lazy_rows: bool = True
) -> SolveResult:
    """The LP relaxation (minimum current not enforced): a bound, and its fractional plan.

    ``lazy_rows=False`` hands HiGHS every row at once (the benchmark's "whole LP" figure).
    """
    opts = options or SolverOptions()
    t0 = time.perf_counter()
    form = build_formulation(compile_problem(problem))
    t1 = time.perf_counter()
    if form.n_pairs == 0:  # nothing can charge
        obj, _ = _evaluate(form, np.zeros(0))
        return SolveResult(
            SolveStatus.OPTIMAL, _schedule(form, np.zeros(0), "lp-relaxation"), obj, obj, 0.0,
            t1 - t0, 0.0, 0.0, "lp",
        )  # fmt: skip
    lp = _LazyLP(form, opts, lazy_rows=lazy_rows)
    t2 = time.perf_counter()
    st, x = lp.run(t2 + opts.time_limit_s)
    t3 = time.perf_counter()
    if x is None:
        return SolveResult(
            _status_of(st, has_solution=False), None, None, None, None, t1 - t0, t2 - t1,
            t3 - t2, "lp", message=lp.h.modelStatusToString(st),
        )  # fmt: skip
    obj = lp.objective
    cur = np.zeros((form.compiled.n_sessions, form.compiled.n_steps))
    cur[form.compiled.pair_s, form.compiled.pair_k] = x[: form.n_pairs]
    return SolveResult(
        SolveStatus.OPTIMAL,
        Schedule(problem, cur, policy="lp-relaxation"),
        obj,
        obj,
        0.0,
        t1 - t0,
        t2 - t1,
        t3 - t2,
        "lp",
        stages={"rounds": lp.rounds},
    )


def _status_of(st: highspy.HighsModelStatus, *, has_solution: bool) -> SolveStatus:
    m = highspy.HighsModelStatus
    if st == m.kOptimal:
        return SolveStatus.OPTIMAL
    if st in (m.kInfeasible, m.kUnboundedOrInfeasible):
        return SolveStatus.INFEASIBLE
    if st in (m.kTimeLimit, m.kIterationLimit, m.kInterrupt, m.kSolutionLimit):
        return SolveStatus.FEASIBLE if has_solution else SolveStatus.NO_SOLUTION
    return SolveStatus.ERROR


def solve(problem: Problem, options: SolverOptions | None = None) -> SolveResult:
    """Plan ``problem``: build its matrices, hand them to HiGHS, solve, and extract a schedule."""
    t0 = time.perf_counter()
    form = build_formulation(compile_problem(problem))
    build_s = time.perf_counter() - t0
    return solve_formulation(form, options, build_s=build_s)


def solve_formulation(
    form: Formulation, options: SolverOptions | None = None, *, build_s: float = 0.0
) -> SolveResult:
    """Solve already-built matrices (see :func:`solve`)."""
    opts = options or SolverOptions()
    if opts.method == "mip":
        return _solve_mip(form, opts, build_s)
    return _solve_lp_repair(form, opts, build_s)


def _solve_mip(form: Formulation, opts: SolverOptions, build_s: float) -> SolveResult:
    if form.n_pairs == 0:  # nothing can charge; HiGHS would call the model "empty"
        x = np.zeros(0)
        obj, _ = _evaluate(form, x)
        return SolveResult(
            SolveStatus.OPTIMAL, _schedule(form, x, "milp"), obj, obj, 0.0, build_s, 0.0, 0.0, "mip"
        )
    t1 = time.perf_counter()
    h = _new_highs(opts)
    _pass_model(h, form, semicontinuous=True)
    t2 = time.perf_counter()
    st = _run(h, opts.time_limit_s)
    t3 = time.perf_counter()
    info = h.getInfo()
    has = info.primal_solution_status == 2  # kSolutionStatusFeasible
    status = _status_of(st, has_solution=has)
    if status == SolveStatus.OPTIMAL and not has:
        status = SolveStatus.ERROR
    if status not in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
        return SolveResult(
            status, None, None, None, None, build_s, t2 - t1, t3 - t2, "mip",
            message=h.modelStatusToString(st),
        )  # fmt: skip
    x = _clean(form, np.asarray(h.getSolution().col_value)[: form.n_pairs])
    obj, feasible = _evaluate(form, x)
    if not feasible:
        return SolveResult(
            SolveStatus.ERROR, None, None, None, None, build_s, t2 - t1, t3 - t2, "mip",
            message="HiGHS returned a plan that breaks a row",
        )  # fmt: skip
    has_integers = bool(np.any(form.semi_lower > 0))
    # Without semi-continuous columns HiGHS solves an LP and leaves the MIP bound unset.
    bound = float(info.mip_dual_bound) if has_integers else float(info.objective_function_value)
    if not np.isfinite(bound) or bound > obj:
        bound = min(bound, obj) if np.isfinite(bound) else -np.inf
    gap = _gap(obj, bound) if np.isfinite(bound) else float("inf")
    if status == SolveStatus.OPTIMAL and gap > opts.mip_rel_gap + 1e-9:
        status = SolveStatus.FEASIBLE
    return SolveResult(
        status, _schedule(form, x, "milp"), obj, bound, gap, build_s, t2 - t1, t3 - t2, "mip",
        targets=_target_reports(form, x),
    )  # fmt: skip


def _solve_lp_repair(form: Formulation, opts: SolverOptions, build_s: float) -> SolveResult:
    stages: dict[str, float] = {}
    t1 = time.perf_counter()
    lp = _LazyLP(form, opts)
    t2 = time.perf_counter()
    handoff_s = t2 - t1
    deadline = t2 + opts.time_limit_s

    def left() -> float:
        return deadline - time.perf_counter()

    def done(status, x, obj, bound, message="") -> SolveResult:
        if x is not None:
            x = _clean(form, x)
            obj, _ = _evaluate(form, x)
            bound = min(bound, obj)
            if _gap(obj, bound) > opts.mip_rel_gap + 1e-12 and status == SolveStatus.OPTIMAL:
                status = SolveStatus.FEASIBLE
        sched = None if x is None else _schedule(form, x, "milp")
        gap = None if obj is None or bound is None else _gap(obj, bound)
        targets = () if x is None else _target_reports(form, x)
        return SolveResult(
            status, sched, obj, bound, gap, build_s, handoff_s, time.perf_counter() - t2,
            "lp-repair", targets=targets, message=message, stages=stages,
        )  # fmt: skip

    n_p = form.n_pairs
    if n_p == 0:
        x_full = aux_columns(form, np.zeros(0))
        obj = float(form.c @ x_full)
        return done(SolveStatus.OPTIMAL, np.zeros(0), obj, obj)

    st, x_all = lp.run(deadline)
    stages["lp_s"] = time.perf_counter() - t2
    stages["lp_rounds"] = lp.rounds
    if x_all is None:
        status = _status_of(st, has_solution=False)
        return done(status, None, None, None, f"LP relaxation: {lp.h.modelStatusToString(st)}")
    bound = lp.objective
    x_lp = x_all[:n_p]

    tr = time.perf_counter()
    polished = _polish(lp, form, round_pattern(form, x_lp), deadline)
    if polished is None:  # an unbalance row refused the pattern: repair the amounts instead
        x = greedy_fill(form, repair(form, x_lp))
        polished = _polish(lp, form, x > 0, deadline)
        if polished is None:
            polished = (x, float(form.c @ aux_columns(form, x)))
    x, obj = _fill_and_polish(lp, form, *polished, deadline)
    if _gap(obj, bound) > opts.neighbourhood_gap:
        # The other rounding: every fraction whose minimum fits goes on. Slivers forced up to
        # the minimum can crowd out EVs about to leave (hence the default above), but on
        # many instances this pattern is the better one; keep whichever scores lower.
        other = _polish(lp, form, round_pattern(form, x_lp, min_fraction=0.0), deadline)
        if other is not None:
            other = _fill_and_polish(lp, form, *other, deadline)
            if other[1] < obj:
                x, obj = other
    stages["repair_polish_s"] = time.perf_counter() - tr
    x = _clean(form, x)
    obj = _evaluate(form, x)[0]
    gap = _gap(obj, bound)
    log.debug("lp-repair: bound %.6g incumbent %.6g gap %.3g", bound, obj, gap)
    if gap > opts.neighbourhood_gap and opts.neighbourhood_time_s > 0 and left() > 0.05:
        tn = time.perf_counter()
        better = _neighbourhood(form, opts, x_lp, x, min(opts.neighbourhood_time_s, left()))
        stages["neighbourhood_s"] = time.perf_counter() - tn
        if better is not None and better[1] < obj:
            x, obj = better
            gap = _gap(obj, bound)
    if gap <= opts.mip_rel_gap or left() <= 0.05 or opts.branch_and_bound_time_s == 0:
        status = SolveStatus.OPTIMAL if gap <= opts.mip_rel_gap else SolveStatus.FEASIBLE
        return done(status, x, obj, bound)

    # Not good enough: branch and bound with the time that is left. Our incumbent is kept
    # aside rather than passed as a start: HiGHS 1.16 can mis-score a start in its presolved
    # space and stop on it; every answer is re-scored by _evaluate.
    tm = time.perf_counter()
    hm = _new_highs(opts)
    _pass_model(hm, form, semicontinuous=True)
    bb_s = left() if opts.branch_and_bound_time_s is None else min(left(), opts.branch_and_bound_time_s)
    st = _run(hm, bb_s)
    stages["mip_s"] = time.perf_counter() - tm
    info = hm.getInfo()
    if info.primal_solution_status == 2:
        x_mip = _clean(form, np.asarray(hm.getSolution().col_value)[:n_p])
        mip_obj, feasible = _evaluate(form, x_mip)
        if feasible and mip_obj < obj:
            obj, x = mip_obj, x_mip
        mip_bound = float(info.mip_dual_bound)
        if np.isfinite(mip_bound) and mip_bound <= obj + 1e-9 * max(1.0, abs(obj)):
            bound = max(bound, mip_bound)
    gap = _gap(obj, bound)
    status = SolveStatus.OPTIMAL if gap <= opts.mip_rel_gap + 1e-12 else SolveStatus.FEASIBLE
    return done(status, x, obj, bound)


def _neighbourhood(
    form: Formulation, opts: SolverOptions, x_lp: np.ndarray, x_inc: np.ndarray, time_s: float
) -> tuple[np.ndarray, float] | None:
    """Branch and bound on the incumbent's neighbourhood (RINS; see the module docstring).

    Pairs the LP relaxation ``x_lp`` and the incumbent ``x_inc`` both have off are fixed off;
    pairs both have at or above the minimum are held in [minimum, bound] as continuous columns;
    the rest stay semi-continuous. Returns the cleaned plan and its objective, or ``None`` when
    HiGHS found nothing feasible in ``time_s``.
    """
    semi = form.semi_lower
    lp_on = x_lp >= semi - 1e-7
    lp_off = x_lp <= 1e-7
    inc_on = x_inc > 0
    fix_on = lp_on & inc_on
    fix_off = lp_off & ~inc_on
    if opts.neighbourhood_free_steps:
        early = form.compiled.pair_k < opts.neighbourhood_free_steps
        # Sessions the LP left fractional in those steps stay free in every step: a sliver
        # under the minimum there often means the EV fits better at another time, which the
        # fixed pairs would not let the search find (generated street, seed 2: a 3-phase EV at
        # 4 A beside a 1-phase EV with minutes to spare).
        ps = form.compiled.pair_s
        sliver = early & ~lp_on & ~lp_off
        free = early | np.isin(ps, np.unique(ps[sliver]))
        fix_on &= ~free
        fix_off &= ~free
    h = _new_highs(opts)
    h.setOptionValue("mip_rel_gap", float(opts.neighbourhood_gap))
    _pass_model(h, form, semicontinuous=True, fix_on=fix_on, fix_off=fix_off)
    _run(h, time_s)
    if h.getInfo().primal_solution_status != 2:  # kSolutionStatusFeasible
        return None
    x = _clean(form, np.asarray(h.getSolution().col_value)[: form.n_pairs])
    obj, feasible = _evaluate(form, x)
    return (x, obj) if feasible else None


def _fill_and_polish(
    lp: _LazyLP, form: Formulation, x: np.ndarray, obj: float, deadline: float
) -> tuple[np.ndarray, float]:
    """Switch on anything still off that now fits, then polish the amounts once more."""
    filled = greedy_fill(form, x)
    if np.any((filled > 0) & (x <= 0)):
        again = _polish(lp, form, filled > 0, deadline)
        if again is not None and again[1] < obj:
            return again
    return x, obj


def _polish(
    lp: _LazyLP, form: Formulation, on: np.ndarray, deadline: float
) -> tuple[np.ndarray, float] | None:
    """The LP with pairs in ``on`` held in [min, ub] and the others at 0; ``None`` if that fails.

    Warm-started from the LP's last basis; limit rows are still added lazily.
    """
    n_p = form.n_pairs
    idx = np.arange(n_p, dtype=np.int32)
    lower = np.where(on, form.semi_lower, 0.0)
    upper = np.where(on, form.col_upper[:n_p], 0.0)
    lp.h.changeColsBounds(n_p, idx, lower, upper)
    st, x_new = lp.run(deadline)
    if x_new is None:
        log.info("polishing LP ended %s", lp.h.modelStatusToString(st))
        return None
    x = x_new[:n_p].copy()
    x[~on] = 0.0
    return x, lp.objective
