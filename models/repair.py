"""Turn an LP-relaxation solution into one that obeys the 0-or-minimum rule, losing little.

The LP relaxation of the charging MILP is nearly integral: at a vertex, almost every current is 0
or at least the minimum; the few in between sit on binding rows (a session's last bit of
energy, a limit's last amperes). Two ways to settle them:

:func:`round_pattern` only decides *which* pairs are on: every pair the LP has at or above its
minimum, plus each fractional pair at half its minimum or more whose minimum still fits on every
row when all pairs that are on draw just their minimum (slivers stay off: forcing the minimum
on them would crowd out the EVs sharing the row). The amounts are then left to an LP over that
on/off pattern (the "polish" in :mod:`models.highs`), which can move current between sessions
on a tight cable to make room. All-minimum is a feasible point of that LP for every one-sided
row, so it is feasible unless an unbalance row (two-sided) objects; then :func:`repair` is the
fallback.

:func:`repair` works on the amounts directly. For each fractional pair it tries, in order,

1. *round up* to the minimum, taking the extra energy from another step of the same session
   when its energy row is tight;
2. *round down* to 0 and move the energy to other steps of the same session that are on and
   have room.

Every move is checked against the hard rows (energy, limits, unbalance) with the current row
activities, so the result is always feasible. Rows on auxiliary columns (peak, fairness, held
capacity, targets) are ignored here: those columns are recomputed afterwards, and the polishing LP that
follows re-optimises every continuous amount with the on/off pattern fixed.

Also here: :func:`greedy_fill`, which switches on pairs that are off when their session still
wants energy and every row they touch has room for at least the minimum.
"""

from __future__ import annotations

import numpy as np

from models.formulation import Formulation

__all__ = ["aux_columns", "greedy_fill", "hard_row_mask", "repair", "round_pattern"]

_EPS = 1e-7
_SOFT = {"peak", "fairness", "intensity", "budget", "reserve"}


def hard_row_mask(form: Formulation) -> np.ndarray:
    """(rows,) True for rows the pair currents alone must satisfy."""
    return np.array([name not in _SOFT for name in form.row_names], dtype=bool)


def round_pattern(form: Formulation, x_pairs: np.ndarray, min_fraction: float = 0.5) -> np.ndarray:
    """(P,) bool: pairs to switch on, from an LP solution (see the module docstring).

    Fractional pairs are taken largest fraction of the minimum first, down to ``min_fraction``
    of it (smaller ones stay off: switching a pair on for a sliver of current forces the
    minimum there and takes it from the EVs that share the row); a pair is switched on when,
    with every pair on at its minimum, no one-sided hard row (energy, limits) would overflow.
    """
    n_p = form.n_pairs
    semi = form.semi_lower
    a = form.a[:, :n_p].tocsc()
    one_sided = hard_row_mask(form) & np.isneginf(form.row_lower)
    upper = np.where(one_sided, form.row_upper, np.inf)
    on = x_pairs >= semi - _EPS
    min_load = a @ np.where(on, semi, 0.0)
    frac = np.nonzero((x_pairs > _EPS) & ~on & (x_pairs >= min_fraction * semi - _EPS))[0]
    frac = frac[np.argsort(-x_pairs[frac] / np.maximum(semi[frac], _EPS), kind="stable")]
    for j in frac:
        lo, hi = a.indptr[j], a.indptr[j + 1]
        rows, vals = a.indices[lo:hi], a.data[lo:hi]
        if np.all(min_load[rows] + vals * semi[j] <= upper[rows] + 1e-9):
            min_load[rows] += vals * semi[j]
            on[j] = True
    return on


class _State:
    def __init__(self, form: Formulation, x_pairs: np.ndarray) -> None:
        self.form = form
        n_p = form.n_pairs
        a = form.a[:, :n_p].tocsc()
        self.indptr, self.indices, self.data = a.indptr, a.indices, a.data
        self.hard = hard_row_mask(form)
        self.lo = np.where(self.hard, form.row_lower, -np.inf)
        self.hi = np.where(self.hard, form.row_upper, np.inf)
        self.x = x_pairs.copy()
        self.act = a @ self.x
        self.semi = form.semi_lower
        self.ub = form.col_upper[:n_p]
        self.kwh = form.compiled.pair_kwh_per_a
        self.energy_row = form.energy_rows.start + form.compiled.pair_s

    def col(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.indptr[j], self.indptr[j + 1]
        return self.indices[lo:hi], self.data[lo:hi]

    def room(self, j: int, ignore_row: int = -1) -> float:
        """Largest increase of x[j] every hard row allows (ignoring one row if asked)."""
        rows, vals = self.col(j)
        best = np.inf
        for r, v in zip(rows, vals, strict=True):
            if r == ignore_row or not self.hard[r]:
                continue
            best = min(best, (self.hi[r] - self.act[r]) / v if v > 0 else (self.lo[r] - self.act[r]) / v)
        return max(best, 0.0)

    def fits(self, moves: list[tuple[int, float]]) -> bool:
        """Would applying every (column, delta) keep all hard rows within bounds?"""
        touched: dict[int, float] = {}
        for j, d in moves:
            rows, vals = self.col(j)
            for r, v in zip(rows, vals, strict=True):
                touched[r] = touched.get(r, 0.0) + v * d
        for r, d in touched.items():
            new = self.act[r] + d
            if new > self.hi[r] + 1e-9 or new < self.lo[r] - 1e-9:
                return False
        return True

    def apply(self, moves: list[tuple[int, float]]) -> None:
        for j, d in moves:
            rows, vals = self.col(j)
            self.act[rows] += vals * d
            self.x[j] += d


def _session_pairs(form: Formulation) -> tuple[np.ndarray, np.ndarray]:
    """Pairs sorted by session, and the start offset of each session in that order."""
    ps = form.compiled.pair_s
    order = np.argsort(ps, kind="stable")
    starts = np.searchsorted(ps[order], np.arange(form.compiled.n_sessions + 1))
    return order, starts


def repair(form: Formulation, x_pairs: np.ndarray) -> np.ndarray:
    """A pair-current vector with every current 0 or >= its minimum, feasible on hard rows.

    ``x_pairs`` must satisfy the hard rows (an LP optimum does, up to tolerances).
    """
    st = _State(form, np.clip(x_pairs, 0.0, form.col_upper[: form.n_pairs]))
    order, starts = _session_pairs(form)
    ps = form.compiled.pair_s
    frac = np.nonzero((st.x > _EPS) & (st.x < st.semi - _EPS))[0]
    # Largest fractions first: they are the cheapest to round up.
    frac = frac[np.argsort(-st.x[frac] / st.semi[frac], kind="stable")]
    for j in frac:
        xj = st.x[j]
        if xj <= _EPS or xj >= st.semi[j] - _EPS:
            continue
        s = ps[j]
        siblings = order[starts[s] : starts[s + 1]]
        up = st.semi[j] - xj
        if st.fits([(j, up)]):
            st.apply([(j, up)])
            continue
        # Energy row tight: take the extra energy from a sibling that stays >= its minimum.
        e_row = st.energy_row[j]
        if st.room(j, ignore_row=e_row) >= up - 1e-9:
            need_kwh = up * st.kwh[j] - max(st.hi[e_row] - st.act[e_row], 0.0)
            done = False
            for d in siblings[np.argsort(-st.x[siblings], kind="stable")]:
                if d == j or st.x[d] <= _EPS:
                    continue
                give = need_kwh / st.kwh[d]
                if st.x[d] - give >= st.semi[d] - 1e-9 and st.fits([(j, up), (d, -give)]):
                    st.apply([(j, up), (d, -give)])
                    done = True
                    break
            if done:
                continue
        # Round down and re-place the energy on siblings that are on and have room.
        lost_kwh = xj * st.kwh[j]
        st.apply([(j, -xj)])
        for d in siblings[np.argsort(-st.x[siblings], kind="stable")]:
            if lost_kwh <= 1e-9:
                break
            if d == j or st.x[d] < st.semi[d] - _EPS:
                continue
            inc = min(st.ub[d] - st.x[d], st.room(d), lost_kwh / st.kwh[d])
            if inc > 1e-9:
                st.apply([(d, inc)])
                lost_kwh -= inc * st.kwh[d]
    x = st.x
    x[x < _EPS] = 0.0
    return x


def greedy_fill(form: Formulation, x_pairs: np.ndarray) -> np.ndarray:
    """Switch on off pairs of sessions that still want energy where every hard row has room.

    Pairs are tried cheapest first (by objective coefficient per kWh), each at the most its rows,
    its bound and its session's remaining energy allow, if that is at least the minimum.
    """
    st = _State(form, x_pairs)
    n_p = form.n_pairs
    per_kwh = form.c[:n_p] / np.maximum(st.kwh, 1e-12)
    off = np.nonzero(st.x <= _EPS)[0]
    # Only sessions with energy left at least one minimum-current step's worth are worth a look.
    e_rows = st.energy_row[off]
    slack = st.hi[e_rows] - st.act[e_rows]
    off = off[slack >= st.semi[off] * st.kwh[off] - 1e-9]
    for j in off[np.argsort(per_kwh[off], kind="stable")]:
        if per_kwh[j] >= 0:
            break  # switching it on would not pay
        inc = min(st.ub[j], st.room(j))
        if inc >= st.semi[j] - 1e-9:
            st.apply([(j, inc)])
    return st.x


def aux_columns(form: Formulation, x_pairs: np.ndarray) -> np.ndarray:
    """Full column vector: pair currents plus the best values of peak, share, excess and over."""
    x = np.zeros(form.n_cols)
    n_p = form.n_pairs
    x[:n_p] = x_pairs
    act = form.a @ x  # auxiliary columns are 0 here
    names = np.array(form.row_names)
    a = form.a.tocsc()
    for sl in (form.col_peak, form.col_excess, form.col_reserve):
        for col in range(sl.start, sl.stop):
            rows = a.indices[a.indptr[col] : a.indptr[col + 1]]
            # row: pairs - aux <= hi  =>  aux >= pairs - hi
            need = act[rows] - form.row_upper[rows]
            x[col] = max(form.col_lower[col], need.max() if need.size else 0.0)
    if form.col_share is not None:
        rows = np.nonzero(names == "fairness")[0]
        col = form.col_share
        coef = a[rows, col].toarray().ravel()  # energy wanted per row
        delivered = -act[rows]
        share = np.where(coef > 0, delivered / np.maximum(coef, 1e-12), 1.0)
        x[col] = float(np.clip(share.min() if share.size else 1.0, 0.0, 1.0))
    return x
