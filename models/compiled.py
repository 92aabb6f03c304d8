"""A :class:`~models.problem.Problem` turned into arrays, once, for every formulation and policy.

Everything index-shaped is derived here in whole-array operations: which (session, step) pairs
exist (the EV is plugged in for the whole step and could take at least the minimum current
there), which grid phases each session loads, which nodes each session hangs under, and the
headroom left on every node, phase and step once base load is subtracted. The MILP (matrix and
Pyomo forms), the baselines and the schedule checker all read the same arrays, so they agree on
what "feasible" means.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from models.problem import ROOT, Problem

__all__ = ["LAXITY_FLOOR_H", "Compiled", "compile_problem"]

#: Currents and limits closer than this [A] count as equal.
TOL_A = 1e-6

#: Laxity below this [h] counts as this much in the urgency term of the objective: a session
#: that is late already is as urgent as one with a quarter of an hour to spare.
LAXITY_FLOOR_H = 0.25


@dataclass(frozen=True, eq=False)
class Compiled:
    """Array view of a problem. ``S`` sessions, ``T`` steps, ``N`` nodes, ``P`` pairs.

    Attributes
    ----------
    voltage_v : float
    dt_h : (T,) step lengths [h]
    mid_h : (T,) step mid-points, hours after the grid start [h]
    phases_used : (S,) phases each EV draws on (1 or 3)
    phase_mask : (S, 3) bool, grid phases loaded by each session
    min_current_a, max_current_a : (S,) per-phase bounds when charging [A]
    energy_kwh : (S,) energy still wanted [kWh]
    priority : (S,)
    laxity_h : (S,) slack of each session [h]: time from the grid start (or its later arrival)
        to its departure, minus the time its energy takes at its maximum current; negative
        when it cannot finish
    present : (S, T) bool, plugged in for the whole step
    pair_s, pair_k : (P,) session and step of every pair that can be on
    pair_ub_a : (P,) largest useful current of the pair [A] (EV, point and request)
    pair_kwh_per_a : (P,) energy of 1 A per phase over the pair's step [kWh/A]
    node_ids : (N,) node ids, root first
    member : (N, S) bool, session hangs under node
    limit_a : (N, T, 3) limit per node, step and phase [A] (static and time-varying)
    base_load_a : (T, 3) inflexible load at the connection [A]
    headroom_a : (N, T, 3) what charging may use: limit minus base load at the root, >= 0 [A]
    base_violation_a : (T, 3) base load above the root limit [A] (>= 0)
    reserve_a : (N, T, 3) capacity held for EVs expected later, at most the headroom [A]
    """

    problem: Problem
    voltage_v: float
    dt_h: np.ndarray
    mid_h: np.ndarray
    phases_used: np.ndarray
    phase_mask: np.ndarray
    min_current_a: np.ndarray
    max_current_a: np.ndarray
    energy_kwh: np.ndarray
    priority: np.ndarray
    laxity_h: np.ndarray
    present: np.ndarray
    pair_s: np.ndarray
    pair_k: np.ndarray
    pair_ub_a: np.ndarray
    pair_kwh_per_a: np.ndarray
    node_ids: tuple[str, ...]
    member: np.ndarray
    limit_a: np.ndarray
    base_load_a: np.ndarray
    headroom_a: np.ndarray
    base_violation_a: np.ndarray
    reserve_a: np.ndarray

    @property
    def n_sessions(self) -> int:
        return len(self.energy_kwh)

    @property
    def n_steps(self) -> int:
        return len(self.dt_h)

    @property
    def n_pairs(self) -> int:
        return len(self.pair_s)

    @cached_property
    def kwh_per_a(self) -> np.ndarray:
        """(S, T) energy of 1 A per phase for a whole step [kWh/A]."""
        return self.voltage_v * self.phases_used[:, None] * self.dt_h[None, :] / 1000.0

    @cached_property
    def pair_phase_mask(self) -> np.ndarray:
        """(P, 3) bool, grid phases loaded by each pair."""
        return self.phase_mask[self.pair_s]

    def phase_load_a(self, current_a: np.ndarray) -> np.ndarray:
        """(N, T, 3) charging current per node, step and phase for an (S, T) per-phase current."""
        # (N,S) @ (S,T*3) -> node loads; a session adds its current on each phase it uses.
        per_phase = current_a[:, :, None] * self.phase_mask[:, None, :]
        s, t = current_a.shape
        return (self.member.astype(float) @ per_phase.reshape(s, t * 3)).reshape(-1, t, 3)


def compile_problem(problem: Problem) -> Compiled:
    """Derive every array of :class:`Compiled` from ``problem`` (pure; no solver involved)."""
    site = problem.site
    grid = problem.grid
    sessions = problem.sessions
    n_s, n_t = len(sessions), grid.n_steps
    voltage_v = site.voltage_v
    dt_h = grid.durations_h
    epoch = grid.epoch_s()
    mid_h = ((epoch[:-1] + epoch[1:]) / 2.0 - epoch[0]) / 3600.0

    cps = {cp.id: cp for cp in site.charge_points}
    nodes = site.nodes
    node_ids = tuple(nd.id for nd in nodes)
    node_index = {nid: i for i, nid in enumerate(node_ids)}
    # Node membership: for each charge point, the nodes on its path to the root.
    cp_path = {cp.id: [node_index[n] for n in site.ancestors(cp.node_id)] for cp in site.charge_points}

    phases_used = np.empty(n_s, dtype=np.int64)
    phase_mask = np.zeros((n_s, 3), dtype=bool)
    min_a = np.empty(n_s)
    max_a = np.empty(n_s)
    energy = np.empty(n_s)
    priority = np.empty(n_s)
    arrival = np.empty(n_s)
    departure = np.empty(n_s)
    member = np.zeros((len(nodes), n_s), dtype=bool)
    for i, s in enumerate(sessions):
        cp = cps[s.charge_point_id]
        n_ph = min(s.phases or cp.phases, cp.phases)
        phases_used[i] = n_ph
        phase_mask[i, list(cp.grid_phases(n_ph))] = True
        ev_max_a = np.inf if s.max_power_kw is None else s.max_power_kw * 1000.0 / (voltage_v * n_ph)
        max_a[i] = min(cp.max_current_a, ev_max_a)
        min_a[i] = cp.min_current_a
        energy[i] = s.energy_kwh
        priority[i] = s.priority
        arrival[i] = s.arrival.timestamp()
        departure[i] = s.departure.timestamp()
        member[cp_path[cp.id], i] = True

    # Plugged in for the whole step: starts at or after arrival, ends at or before departure.
    present = (epoch[None, :-1] >= arrival[:, None] - 1e-6) & (epoch[None, 1:] <= departure[:, None] + 1e-6)

    # Limits: static per node, tightened by time-varying ones.
    limit = np.empty((len(nodes), n_t, 3))
    for j, nd in enumerate(nodes):
        limit[j] = np.asarray(nd.max_current_a)[None, :]
        extra = problem.node_limits_a.get(nd.id)
        if extra is not None:
            limit[j] = np.minimum(limit[j], extra)
    base = np.zeros((n_t, 3)) if problem.base_load_a is None else np.asarray(problem.base_load_a, float)
    headroom = limit.copy()
    root = node_index[ROOT]
    headroom[root] = limit[root] - base
    base_violation = np.maximum(-headroom[root], 0.0)
    headroom = np.maximum(headroom, 0.0)
    reserve = np.zeros_like(headroom)
    for node_id, series in problem.reserve_a.items():
        j = node_index[node_id]
        reserve[j] = np.minimum(series, headroom[j])

    kwh_per_a = voltage_v * phases_used[:, None] * dt_h[None, :] / 1000.0
    with np.errstate(divide="ignore", invalid="ignore"):
        full_kw = max_a * voltage_v * phases_used / 1000.0
        laxity_h = (departure - np.maximum(arrival, epoch[0])) / 3600.0 - np.where(
            full_kw > 0, energy / full_kw, np.inf
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        energy_cap_a = np.where(kwh_per_a > 0, energy[:, None] / kwh_per_a, 0.0)
    ub = np.minimum(max_a[:, None], energy_cap_a)
    # Headroom each session could ever get in a step: the tightest node on its path (a running
    # minimum down the tree), on the tightest phase it uses.
    path_min = headroom.copy()
    for j, nd in enumerate(nodes):
        for anc in site.ancestors(nd.id)[1:]:
            path_min[j] = np.minimum(path_min[j], headroom[node_index[anc]])
    if n_s:
        cp_node = np.array([node_index[cps[s.charge_point_id].node_id] for s in sessions])
        room = np.where(phase_mask[:, None, :], path_min[cp_node], np.inf).min(axis=2)
        ub = np.minimum(ub, room)
    can_on = present & (ub >= min_a[:, None] - TOL_A) & (ub > TOL_A)
    pair_s, pair_k = np.nonzero(can_on)
    # Rounding can leave ub a hair under min; a pair is on at >= min or off.
    pair_ub = np.where(ub[pair_s, pair_k] < min_a[pair_s], min_a[pair_s], ub[pair_s, pair_k])

    frozen = (dt_h, mid_h, phases_used, phase_mask, min_a, max_a, energy, priority, laxity_h)
    for arr in (*frozen, present, reserve):
        arr.setflags(write=False)
    return Compiled(
        problem=problem,
        voltage_v=voltage_v,
        dt_h=dt_h,
        mid_h=mid_h,
        phases_used=phases_used,
        phase_mask=phase_mask,
        min_current_a=min_a,
        max_current_a=max_a,
        energy_kwh=energy,
        priority=priority,
        laxity_h=laxity_h,
        present=present,
        pair_s=pair_s.astype(np.int64),
        pair_k=pair_k.astype(np.int64),
        pair_ub_a=pair_ub,
        pair_kwh_per_a=kwh_per_a[pair_s, pair_k],
        node_ids=node_ids,
        member=member,
        limit_a=limit,
        base_load_a=base,
        headroom_a=headroom,
        base_violation_a=base_violation,
        reserve_a=reserve,
    )
