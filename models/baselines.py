"""Baseline charging policies: what a site gets without the optimiser.

Four greedy, chronological policies, each ``policy(problem) -> Schedule``:

* :func:`uncontrolled` -- every EV at its maximum from arrival until it has its energy, limits
  ignored (it shows the overloads the others avoid);
* :func:`equal_share` -- in each step the EVs that still want energy share the capacity equally
  (progressive water-filling over every node, phase and the unbalance rule); when a share would
  fall below the minimum current, the EV leaving last is dropped for that step;
* :func:`edf` -- earliest deadline first;
* :func:`llf` -- least laxity first (laxity = time to departure minus remaining energy at full
  power).

They obey the same rules as the MILP, read from :class:`~models.compiled.Compiled`: a current is
0 or in ``[min_current_a, max_current_a]``, only in steps where the EV is present, never more
energy than requested (the last bit below the minimum current is left undelivered), and --
except for :func:`uncontrolled` -- every node and phase within its headroom and the connection
within the unbalance rule (VDE-AR-N 4100)::

    |conn_a - conn_b| <= max(max_unbalance_a, |base_a - base_b|)

Every policy assumes the EV draws the full current it is given, so energy accumulates step by
step. Ties are broken by session order, so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from models.compiled import TOL_A, Compiled, compile_problem
from models.problem import Problem
from models.schedule import Schedule

__all__ = ["edf", "equal_share", "llf", "uncontrolled"]

#: Remaining energy at or below this [kWh] counts as delivered.
_DONE_KWH = 1e-9
#: ``step_fn(compiled, rows, k, own_cap_a, remaining_kwh, departure_s) -> current_a (S,)``.
_StepFn = Callable[..., np.ndarray]
#: ``key(compiled, k, remaining_kwh, departure_s) -> (S,) priority, smallest first``.
_KeyFn = Callable[[Compiled, int, np.ndarray, np.ndarray], np.ndarray]
#: Ordered phase pairs (a, b) of the unbalance rows ``conn_a - conn_b <= allowed``.
_PAIRS = ((0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1))


class _Rows:
    """Linear rows ``g @ current_a <= cap_a`` every controlled policy keeps, for one problem.

    Rows ``3 * j + p`` are node ``j``, grid phase ``p`` (coefficient 1 for every session under
    the node that loads the phase); the last six rows (only when ``max_unbalance_a`` is set)
    are the unbalance rule per ordered phase pair ``(a, b)``: charging on ``a`` minus charging
    on ``b`` at most ``allowed - (base_a - base_b)``. Three-phase sessions load every phase
    alike and so do not appear in them.

    Attributes
    ----------
    g : (R, S) float, coefficients (0, 1 or -1)
    pos_rows, neg_rows : list of list of int
        Per session, the rows with coefficient +1 and -1 (for fast scalar updates).
    """

    def __init__(self, c: Compiled) -> None:
        n_nodes = len(c.node_ids)
        n_s = c.n_sessions
        node_rows = (c.member[:, None, :] & c.phase_mask.T[None, :, :]).reshape(n_nodes * 3, n_s)
        self.n_node_rows = n_nodes * 3
        self.unbalance_a = c.problem.max_unbalance_a
        rows = [node_rows.astype(float)]
        if self.unbalance_a is not None:
            one_phase = c.phases_used == 1
            ub = np.zeros((len(_PAIRS), n_s))
            for r, (a, b) in enumerate(_PAIRS):
                ub[r] = (one_phase & c.phase_mask[:, a]).astype(float) - (
                    one_phase & c.phase_mask[:, b]
                ).astype(float)
            rows.append(ub)
        self.g = np.vstack(rows)
        self.pos_rows = [np.nonzero(self.g[:, s] > 0)[0].tolist() for s in range(n_s)]
        self.neg_rows = [np.nonzero(self.g[:, s] < 0)[0].tolist() for s in range(n_s)]
        self._c = c

    def cap_a(self, k: int) -> np.ndarray:
        """(R,) right-hand sides of step ``k`` [A]: node headroom, then unbalance slack."""
        c = self._c
        caps = [c.headroom_a[:, k, :].reshape(-1)]
        if self.unbalance_a is not None:
            base = c.base_load_a[k]
            caps.append(
                np.array(
                    [max(self.unbalance_a, abs(base[a] - base[b])) - (base[a] - base[b]) for a, b in _PAIRS]
                )
            )
        return np.concatenate(caps)


def _own_cap_a(c: Compiled, k: int, remaining_kwh: np.ndarray) -> np.ndarray:
    """(S,) largest current each session may take in step ``k`` on its own [A].

    The EV's maximum, capped by its remaining energy; 0 where it is absent, done, or the cap
    is below its minimum current (0-or-minimum rule: the small remainder stays undelivered).
    A cap within :data:`~models.compiled.TOL_A` under the minimum is rounded up to it.
    """
    cap = np.minimum(c.max_current_a, remaining_kwh / c.kwh_per_a[:, k])
    cap = np.where(cap < c.min_current_a, np.where(cap >= c.min_current_a - TOL_A, c.min_current_a, 0.0), cap)
    ok = c.present[:, k] & (remaining_kwh > _DONE_KWH) & (cap > TOL_A)
    return np.where(ok, cap, 0.0)


def _greedy_fill(
    rows: _Rows,
    cap_a: np.ndarray,
    load_a: np.ndarray,
    current_a: np.ndarray,
    own_cap_a: np.ndarray,
    min_current_a: np.ndarray,
    order: Sequence[int],
) -> None:
    """Give each session in ``order`` the largest extra current every row allows, in place.

    ``load_a`` (R,) is ``g @ current_a`` on entry and is kept so. A session at 0 that cannot
    reach its minimum stays at 0; a session already on is raised by whatever fits.
    """
    for s in order:
        x = current_a[s]
        room = own_cap_a[s] - x
        if room <= TOL_A:
            continue
        for r in rows.pos_rows[s]:
            room = min(room, cap_a[r] - load_a[r])
        if x == 0.0:
            if room < min_current_a[s] - TOL_A or room <= TOL_A:
                continue
            room = max(room, min_current_a[s])
        elif room <= TOL_A:
            continue
        current_a[s] = x + room
        for r in rows.pos_rows[s]:
            load_a[r] += room
        for r in rows.neg_rows[s]:
            load_a[r] -= room


def _water_fill(
    g: np.ndarray, cap_a: np.ndarray, own_cap_a: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Max-min fair (progressive filling) currents for the sessions of ``g``'s columns.

    Every unfrozen session has the same current ``level``; it rises until a session reaches
    its own cap or a row ``g @ x <= cap_a`` binds, which freezes the sessions that push that
    row up. Repeats until every session is frozen.

    Parameters
    ----------
    g : (R, A) row coefficients of the active sessions
    cap_a : (R,) right-hand sides [A]
    own_cap_a : (A,) each session's own largest current [A]

    Returns
    -------
    current_a : (A,) [A]
    group : (A,) index of the freeze event of each session
    level_a : (events,) current of every session frozen in each event [A]
    """
    n_a = g.shape[1]
    current_a = np.zeros(n_a)
    group = np.full(n_a, -1)
    levels: list[float] = []
    free = np.ones(n_a, dtype=bool)
    fixed_load = np.zeros(g.shape[0])
    level = 0.0
    while free.any():
        slope = g[:, free].sum(axis=1)
        rising = slope > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            row_level = np.where(rising, (cap_a - fixed_load) / np.where(rising, slope, 1.0), np.inf)
        own_level = np.where(free, own_cap_a, np.inf)
        nxt = max(level, min(float(row_level.min()), float(own_level.min())))
        bound_rows = rising & (row_level <= nxt + TOL_A)
        freeze = free & (own_level <= nxt + TOL_A)
        if bound_rows.any():
            freeze |= free & (g[bound_rows] > 0).any(axis=0)
        if not freeze.any():  # numerical safety: always make progress
            freeze[int(np.argmin(own_level))] = True
        current_a[freeze] = np.minimum(nxt, own_cap_a[freeze])
        group[freeze] = len(levels)
        levels.append(nxt)
        fixed_load += g[:, freeze] @ current_a[freeze]
        free &= ~freeze
        level = nxt
    return current_a, group, np.asarray(levels)


def _equal_share_step(
    c: Compiled,
    rows: _Rows,
    cap_a: np.ndarray,
    own_cap_a: np.ndarray,
    departure_s: np.ndarray,
) -> np.ndarray:
    """(S,) currents of one step of :func:`equal_share` [A]."""
    n_s = c.n_sessions
    min_a = c.min_current_a
    current_a = np.zeros(n_s)
    cand = np.nonzero(own_cap_a > 0)[0]
    if cand.size == 0:
        return current_a
    # Sessions whose path has less room than their minimum, even alone, never switch on.
    alone = np.array([min([cap_a[r] for r in rows.pos_rows[s]], default=np.inf) for s in cand])
    cand = cand[alone >= min_a[cand] - TOL_A]
    active = cand
    while active.size:
        x, group, level_a = _water_fill(rows.g[:, active], cap_a, own_cap_a[active])
        low = x < min_a[active] - TOL_A
        if not low.any():
            current_a[active] = np.maximum(x, min_a[active])
            break
        # Per freeze event with shares below the minimum: keep the earliest departures whose
        # minimum currents fit in what the event's sessions share now; drop the rest (the
        # latest departure first, ties: the later session).
        drop = np.zeros(active.size, dtype=bool)
        for ev in np.unique(group[low]):
            members = np.nonzero(group == ev)[0]
            members = members[np.lexsort((active[members], departure_s[active[members]]))]
            budget_a = level_a[ev] * members.size + TOL_A
            used_a = np.cumsum(min_a[active[members]])
            keep = int(np.searchsorted(used_a, budget_a, side="right"))
            keep = min(keep, members.size - 1)
            drop[members[keep:]] = True
        active = active[~drop]
    # Top up: capacity the filling left (unbalance rows that loosened, dropped sessions that
    # now fit), earliest departure first.
    load_a = rows.g @ current_a
    order = cand[np.lexsort((cand, departure_s[cand]))]
    _greedy_fill(rows, cap_a, load_a, current_a, own_cap_a, min_a, order.tolist())
    return current_a


def _schedule(c: Compiled, current_a: np.ndarray, policy: str) -> Schedule:
    """The :class:`Schedule` of ``current_a``, its ``compiled`` view pre-filled with ``c``.

    ``compile_problem`` is pure, so ``c`` is what ``Schedule.compiled`` would build again; the
    cached property is seeded to spare callers (KPIs, checks) a second compilation.
    """
    schedule = Schedule(c.problem, current_a, policy=policy)
    schedule.__dict__["compiled"] = c
    return schedule


def _run(
    problem: Problem,
    policy: str,
    step_fn: _StepFn,
) -> Schedule:
    """Chronological loop shared by the controlled policies; ``step_fn`` gives step ``k``'s
    currents from ``(compiled, rows, k, own_cap_a, remaining_kwh, departure_s)``."""
    c = compile_problem(problem)
    n_s, n_t = c.n_sessions, c.n_steps
    current_a = np.zeros((n_s, n_t))
    if n_s:
        rows = _Rows(c)
        remaining_kwh = np.array(c.energy_kwh, dtype=float)
        departure_s = _departure_s(c)
        for k in range(n_t):
            own = _own_cap_a(c, k, remaining_kwh)
            if not own.any():
                continue
            x = step_fn(c, rows, k, own, remaining_kwh, departure_s)
            current_a[:, k] = x
            remaining_kwh = np.maximum(remaining_kwh - x * c.kwh_per_a[:, k], 0.0)
    return _schedule(c, current_a, policy)


def _departure_s(c: Compiled) -> np.ndarray:
    """(S,) departure of each session, seconds after the grid start [s]."""
    start = c.problem.grid.start
    return np.array([(s.departure - start).total_seconds() for s in c.problem.sessions])


def _priority_step(key: _KeyFn) -> _StepFn:
    """Step function of a priority policy: sessions sorted by ``key`` (smallest first, ties by
    session order), each given the largest current that fits."""

    def step(
        c: Compiled,
        rows: _Rows,
        k: int,
        own: np.ndarray,
        remaining_kwh: np.ndarray,
        departure_s: np.ndarray,
    ) -> np.ndarray:
        cand = np.nonzero(own > 0)[0]
        prio = key(c, k, remaining_kwh, departure_s)[cand]
        order = cand[np.lexsort((cand, prio))]
        current_a = np.zeros(c.n_sessions)
        cap = rows.cap_a(k)
        _greedy_fill(rows, cap, np.zeros_like(cap), current_a, own, c.min_current_a, order.tolist())
        return current_a

    return step


def _deadline_key(c: Compiled, k: int, remaining_kwh: np.ndarray, departure_s: np.ndarray) -> np.ndarray:
    """EDF priority: departure, seconds after the grid start [s]."""
    return departure_s


def _laxity_key(c: Compiled, k: int, remaining_kwh: np.ndarray, departure_s: np.ndarray) -> np.ndarray:
    """LLF priority: time from step ``k``'s start to departure minus the time the remaining
    energy takes at maximum power [h]."""
    step_start_h = float(c.mid_h[k] - c.dt_h[k] / 2.0)
    max_power_kw = c.max_current_a * c.voltage_v * c.phases_used / 1000.0
    return (departure_s / 3600.0 - step_start_h) - remaining_kwh / max_power_kw


def uncontrolled(problem: Problem) -> Schedule:
    """Every EV at its maximum current from arrival until it has its energy; limits ignored.

    The last step of a session takes only the remaining energy (``remaining_kwh / kwh_per_a``),
    or nothing when that is below the minimum current. Node limits and the unbalance rule are
    not looked at: ``check_schedule(schedule, limits=False)`` is empty, the full check shows
    the overloads.

    Parameters
    ----------
    problem : Problem

    Returns
    -------
    Schedule
        ``policy="uncontrolled"``.
    """
    c = compile_problem(problem)
    current_a = np.zeros((c.n_sessions, c.n_steps))
    remaining_kwh = np.array(c.energy_kwh, dtype=float)
    for k in range(c.n_steps):
        x = _own_cap_a(c, k, remaining_kwh)
        current_a[:, k] = x
        remaining_kwh = np.maximum(remaining_kwh - x * c.kwh_per_a[:, k], 0.0)
    return _schedule(c, current_a, "uncontrolled")


def equal_share(problem: Problem) -> Schedule:
    """Capacity shared equally, step by step, among the EVs that still want energy.

    In each step, the present sessions with energy remaining are water-filled: every one gets
    ``min(own cap, level)``, the level rising until a node/phase headroom or the unbalance rule
    binds, then rising further for the sessions not under that row (max-min fairness). A
    session's own cap is its maximum current and its remaining energy. When shares fall below
    the minimum current, sessions are dropped for this step, the latest departure first (ties:
    the later session), from each group of sessions sharing a bottleneck, until everyone left
    gets at least the minimum. Capacity left over is then topped up greedily, earliest
    departure first (a dropped session switches on only if its minimum fits).

    Parameters
    ----------
    problem : Problem

    Returns
    -------
    Schedule
        ``policy="equal_share"``.
    """

    def step(
        c: Compiled,
        rows: _Rows,
        k: int,
        own: np.ndarray,
        remaining_kwh: np.ndarray,
        departure_s: np.ndarray,
    ) -> np.ndarray:
        return _equal_share_step(c, rows, rows.cap_a(k), own, departure_s)

    return _run(problem, "equal_share", step)


def edf(problem: Problem) -> Schedule:
    """Earliest deadline first: in each step, sessions by departure, each given the most it fits.

    Each session in turn gets the largest current that fits on every node on its path and
    every grid phase it loads (headroom minus what this step already gave), within the
    unbalance rule, capped by its maximum and its remaining energy; below its minimum current
    it gets 0 this step. Ties are broken by session order.

    Parameters
    ----------
    problem : Problem

    Returns
    -------
    Schedule
        ``policy="edf"``.
    """
    return _run(problem, "edf", _priority_step(_deadline_key))


def llf(problem: Problem) -> Schedule:
    """Least laxity first: like :func:`edf`, sessions ordered by laxity at each step's start.

    ``laxity_h = (departure - step start) - remaining_kwh / max_power_kw``, where the maximum
    power is the session's maximum current on all its phases; recomputed every step. Ties
    are broken by session order.

    Parameters
    ----------
    problem : Problem

    Returns
    -------
    Schedule
        ``policy="llf"``.
    """
    return _run(problem, "llf", _priority_step(_laxity_key))
