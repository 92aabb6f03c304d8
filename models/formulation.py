"""The MILP as sparse matrices: one definition, built in whole blocks from :class:`Compiled`.

Variables (columns)
-------------------
``i[p]``       per-phase current of pair p = (session s, step k) [A]; semi-continuous:
               0 or in ``[min_current_a[s], pair_ub_a[p]]``. Only pairs that can be on exist.
``peak[f]``    highest current on phase f at the connection over the horizon, base load
               included [A] (only when ``weights.peak_eur_per_a > 0``).
``share``      smallest share of need met over sessions, in [0, 1] (only with fairness on).
``excess``     emissions above the intensity cap / above the budget [kg], >= 0 (targets only).
``over[r]``    charging into capacity held for EVs expected later, per reserve row [A], in
               [0, reserve] (only with ``problem.reserve_a`` and ``weights.reserve_eur_per_kwh``).

Constraints (rows)
------------------
energy     sum_k kwh_per_a[p] * i[p] <= energy_kwh[s]                       per session
limit      sum of i[p] on node n, phase f, step k <= headroom_a[n, k, f]    per (n, k, f)
           (headroom = limit, minus base load at the root, never below 0; rows that cannot
           bind, because every pair on them at its maximum fits, are left out)
reserve    sum of i[p] on node n, phase f, step k - over <= headroom - reserve   (soft; only
           rows where the held capacity can matter)
peak       sum of i[p] at the root on phase f, step k - peak[f] <= -base_load_a[k, f]
unbalance  |load_a - load_b + base_a - base_b| <= max(U, |base_a - base_b|)  per step and
           phase pair, where only 1-phase sessions have nonzero coefficients
fairness   share * energy_kwh[s] - sum_k kwh_per_a[p] * i[p] <= 0            per session
intensity  sum (co2[k] - cap) / 1000 * kwh_per_a[p] * i[p] - excess <= 0     [kg]
budget     sum co2[k] / 1000 * kwh_per_a[p] * i[p] - excess <= budget_kg

Objective (minimise, EUR-equivalent)
------------------------------------
sum_p kwh_per_a[p] * i[p] * ( - unmet_energy_eur_per_kwh * priority[s]
                              + energy_cost * price[k] / 1000
                              + co2_eur_per_kg * co2[k] / 1000
                              + early_eur_per_kwh_h * mid_h[k]
                              + urgency_eur_per_kwh_h * mid_h[k] / max(laxity_h[s], 0.25) )
+ peak_eur_per_a * sum_f peak[f] - fairness_eur * share + penalty_eur_per_kg * sum excess
+ reserve_eur_per_kwh * sum_r voltage * dt_h[k_r] / 1000 * over[r]

``laxity_h[s]`` is the session's slack in hours (time from the grid start, or its later arrival,
to its departure, minus the time its energy takes at its maximum current; see
:class:`~models.compiled.Compiled`), floored at ``LAXITY_FLOOR_H`` = 0.25 h: the urgency term
makes the EVs with the least time to spare charge first among plans that deliver the same.

The constant ``unmet_energy_eur_per_kwh * sum_s priority[s] * energy_kwh[s]`` is left out, so
the objective is "cost minus the value of what is delivered" and a relative gap is measured
against that, as HiGHS measures it. All currents zero is always feasible, so the model never is
infeasible by construction: a base load above a limit shows as zero headroom, not as a
contradiction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from models.compiled import LAXITY_FLOOR_H, Compiled

__all__ = ["Formulation", "build_formulation"]


@dataclass(frozen=True, eq=False)
class Formulation:
    """``min c x + offset`` s.t. ``row_lower <= A x <= row_upper``, ``col_lower <= x <= col_upper``.

    ``semicontinuous`` marks the current columns (the first ``n_pairs``): 0 or in
    ``[semi_lower, col_upper]``. ``col_lower`` of those columns is 0 (the LP relaxation).
    """

    compiled: Compiled
    c: np.ndarray
    a: sp.csc_matrix
    row_lower: np.ndarray
    row_upper: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    semi_lower: np.ndarray
    n_pairs: int
    col_peak: slice
    col_share: int | None
    col_excess: slice
    col_reserve: slice
    row_names: tuple[str, ...]
    energy_rows: slice

    @property
    def n_cols(self) -> int:
        return len(self.c)

    @property
    def n_rows(self) -> int:
        return self.a.shape[0]


class _Rows:
    """Accumulates row blocks as COO triplets."""

    def __init__(self) -> None:
        self.r: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.lo: list[np.ndarray] = []
        self.hi: list[np.ndarray] = []
        self.names: list[str] = []
        self.n = 0

    def add(self, rows, cols, vals, lo, hi, name: str) -> slice:
        lo = np.asarray(lo, float)
        hi = np.asarray(hi, float)
        count = len(lo)
        self.r.append(np.asarray(rows, np.int64) + self.n)
        self.c.append(np.asarray(cols, np.int64))
        self.v.append(np.asarray(vals, float))
        self.lo.append(lo)
        self.hi.append(hi)
        self.names.extend([name] * count)
        out = slice(self.n, self.n + count)
        self.n += count
        return out


def _dense_index(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique keys and, for every key, its row number among them."""
    uniq, inv = np.unique(keys, return_inverse=True)
    return uniq, inv


def build_formulation(c: Compiled) -> Formulation:
    """Assemble the matrices of the MILP (see the module docstring). Pure and vectorised."""
    prob = c.problem
    w = prob.weights
    n_p = c.n_pairs
    n_t = c.n_steps
    ps, pk = c.pair_s, c.pair_k
    kwh = c.pair_kwh_per_a
    cols = np.arange(n_p)

    # --- objective on currents
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
    cost = [kwh * per_kwh]
    col_lo = [np.zeros(n_p)]
    col_hi = [c.pair_ub_a.copy()]
    next_col = n_p

    rows = _Rows()
    # --- energy per session
    energy_rows = rows.add(ps, cols, kwh, np.full(c.n_sessions, -np.inf), c.energy_kwh, "energy")

    # --- node limits: one row per (node, step, phase) that some pair loads and could overload
    pmask = c.pair_phase_mask
    for n in range(len(c.node_ids)):
        in_node = c.member[n][ps]
        for f in range(3):
            sel = np.nonzero(in_node & pmask[:, f])[0]
            if sel.size == 0:
                continue
            k = pk[sel]
            demand = np.bincount(k, weights=c.pair_ub_a[sel], minlength=n_t)
            room = c.headroom_a[n, :, f]
            binding = demand > room + 1e-9
            keep = binding[k]
            sel, k = sel[keep], k[keep]
            if sel.size == 0:
                continue
            steps, row_of = _dense_index(k)
            rows.add(row_of, sel, np.ones(sel.size), np.full(steps.size, -np.inf), room[steps], "limit")

    # --- capacity held for EVs expected later: soft, at a cost per kWh charged into it
    col_reserve = slice(next_col, next_col)
    if w.reserve_eur_per_kwh > 0 and n_p and c.reserve_a.any():
        first = next_col
        for n in range(len(c.node_ids)):
            in_node = c.member[n][ps]
            for f in range(3):
                held = c.reserve_a[n, :, f]
                if not held.any():
                    continue
                sel = np.nonzero(in_node & pmask[:, f])[0]
                k = pk[sel]
                demand = np.bincount(k, weights=c.pair_ub_a[sel], minlength=n_t)
                room = c.headroom_a[n, :, f] - held
                keep = ((demand > room + 1e-9) & (held > 1e-9))[k]
                sel, k = sel[keep], k[keep]
                if sel.size == 0:
                    continue
                steps, row_of = _dense_index(k)
                m = steps.size
                rows.add(
                    np.concatenate([row_of, np.arange(m)]),
                    np.concatenate([sel, next_col + np.arange(m)]),
                    np.concatenate([np.ones(sel.size), -np.ones(m)]),
                    np.full(m, -np.inf),
                    room[steps],
                    "reserve",
                )
                cost.append(w.reserve_eur_per_kwh * c.voltage_v * c.dt_h[steps] / 1000.0)
                col_lo.append(np.zeros(m))
                col_hi.append(held[steps].copy())
                next_col += m
        col_reserve = slice(first, next_col)

    # --- peak at the connection
    col_peak = slice(next_col, next_col)
    if w.peak_eur_per_a > 0 and n_p:
        col_peak = slice(next_col, next_col + 3)
        base = c.base_load_a
        for f in range(3):
            sel = np.nonzero(pmask[:, f])[0]
            steps, row_of = _dense_index(pk[sel])
            if steps.size == 0:
                continue
            rows.add(
                np.concatenate([row_of, np.arange(steps.size)]),
                np.concatenate([sel, np.full(steps.size, next_col + f)]),
                np.concatenate([np.ones(sel.size), -np.ones(steps.size)]),
                np.full(steps.size, -np.inf),
                -base[steps, f],
                "peak",
            )
        cost.append(np.full(3, w.peak_eur_per_a))
        col_lo.append(base.max(axis=0))
        col_hi.append(np.full(3, np.inf))
        next_col += 3

    # --- unbalance at the connection: only 1-phase sessions change the phase differences
    u = prob.max_unbalance_a
    if u is not None and n_p:
        base = c.base_load_a
        for a, b in ((0, 1), (1, 2), (2, 0)):
            coef = pmask[:, a].astype(float) - pmask[:, b].astype(float)
            sel = np.nonzero(coef)[0]
            if sel.size == 0:
                continue
            steps, row_of = _dense_index(pk[sel])
            # Rows whose 1-phase pairs cannot reach the bound need not exist.
            reach = np.bincount(row_of, weights=c.pair_ub_a[sel], minlength=steps.size)
            d = base[steps, a] - base[steps, b]
            allowed = np.maximum(u, np.abs(d))
            need = reach > allowed - np.abs(d) - 1e-9
            keep = need[row_of]
            if not keep.any():
                continue
            steps_kept = np.nonzero(need)[0]
            remap = np.full(steps.size, -1)
            remap[steps_kept] = np.arange(steps_kept.size)
            rows.add(
                remap[row_of[keep]],
                sel[keep],
                coef[sel[keep]],
                (-allowed - d)[steps_kept],
                (allowed - d)[steps_kept],
                "unbalance",
            )

    # --- fairness: the smallest share of need met
    col_share: int | None = None
    if w.fairness_eur > 0 and n_p:
        col_share = next_col
        served = np.unique(ps)
        served = served[c.energy_kwh[served] > 0]
        srow = np.full(c.n_sessions, -1)
        srow[served] = np.arange(served.size)
        sel = np.nonzero(srow[ps] >= 0)[0]
        rows.add(
            np.concatenate([srow[ps[sel]], np.arange(served.size)]),
            np.concatenate([sel, np.full(served.size, col_share)]),
            np.concatenate([-kwh[sel], c.energy_kwh[served]]),
            np.full(served.size, -np.inf),
            np.zeros(served.size),
            "fairness",
        )
        cost.append(np.array([-w.fairness_eur]))
        col_lo.append(np.zeros(1))
        col_hi.append(np.ones(1))
        next_col += 1

    # --- pollution-reduction target (soft)
    col_excess = slice(next_col, next_col)
    target = prob.target
    if target is not None and co2 is not None and n_p:
        caps: list[tuple[np.ndarray, float, str]] = []
        if target.max_intensity_g_per_kwh is not None:
            g = (co2[pk] - target.max_intensity_g_per_kwh) / 1000.0 * kwh
            caps.append((g, 0.0, "intensity"))
        if target.budget_kg is not None:
            caps.append((co2[pk] / 1000.0 * kwh, target.budget_kg, "budget"))
        col_excess = slice(next_col, next_col + len(caps))
        for j, (g, rhs, name) in enumerate(caps):
            rows.add(
                np.zeros(n_p + 1, np.int64),
                np.concatenate([cols, [next_col + j]]),
                np.concatenate([g, [-1.0]]),
                [-np.inf],
                [rhs],
                name,
            )
        cost.append(np.full(len(caps), target.penalty_eur_per_kg))
        col_lo.append(np.zeros(len(caps)))
        col_hi.append(np.full(len(caps), np.inf))
        next_col += len(caps)

    n_cols = next_col
    a = sp.csc_matrix(
        (
            np.concatenate(rows.v) if rows.v else np.zeros(0),
            (
                np.concatenate(rows.r) if rows.r else np.zeros(0, np.int64),
                np.concatenate(rows.c) if rows.c else np.zeros(0, np.int64),
            ),
        ),
        shape=(rows.n, n_cols),
    )
    return Formulation(
        compiled=c,
        c=np.concatenate(cost),
        a=a,
        row_lower=np.concatenate(rows.lo) if rows.lo else np.zeros(0),
        row_upper=np.concatenate(rows.hi) if rows.hi else np.zeros(0),
        col_lower=np.concatenate(col_lo),
        col_upper=np.concatenate(col_hi),
        semi_lower=c.min_current_a[ps],
        n_pairs=n_p,
        col_peak=col_peak,
        col_share=col_share,
        col_excess=col_excess,
        col_reserve=col_reserve,
        row_names=tuple(rows.names),
        energy_rows=energy_rows,
    )
