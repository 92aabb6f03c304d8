"""The one contract between deciding and doing: a :class:`Snapshot` in, a :class:`Plan` out.

Every policy -- the rolling MILP, the offline optimum, the heuristics -- reads the same snapshot
of the site and returns the same plan type, so the simulator and the live service drive the
very same code (the idea of acnportal's ``Interface``: one algorithm, a simulated or a real
site behind it).

A snapshot is what is known at ``now``: the EVs plugged in, each with the energy delivered so
far and its declared (or estimated) departure and energy; optionally EVs expected later (a
forecast, or every future session for the offline yardstick); and, on the planning grid that
starts at ``now``, the inflexible base load, the limits in force and the price and emission
signals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from models import Problem, Session, Signals, Site, TimeGrid, Weights
from models.problem import EmissionTarget

__all__ = ["EVState", "Plan", "Snapshot", "clean_pilots", "evs_from_sessions", "quantise_pilots"]


@dataclass(frozen=True)
class EVState:
    """One EV as the planner sees it.

    Parameters
    ----------
    session_id, charge_point_id : str
    arrival : datetime
        Plug-in time (UTC); in the future for an expected EV.
    departure : datetime
        Declared or estimated plug-out time (UTC).
    energy_requested_kwh : float
        Declared or estimated energy the EV wants over the whole session [kWh].
    energy_delivered_kwh : float
        Energy delivered so far [kWh].
    max_power_kw : float or None
        The EV's on-board limit, declared or learned from what it draws [kW]; ``None``: the
        charge point's.
    phases : int or None
        Phases the EV draws on (1 or 3); ``None``: the charge point's.
    priority : float
        Weight of its unmet energy (1 = a real EV; an *expected* EV from a forecast weighs
        less, so that no real EV's energy is ever given up for it).
    """

    session_id: str
    charge_point_id: str
    arrival: datetime
    departure: datetime
    energy_requested_kwh: float
    energy_delivered_kwh: float = 0.0
    max_power_kw: float | None = None
    phases: int | None = None
    priority: float = 1.0

    @property
    def remaining_kwh(self) -> float:
        """Energy still wanted [kWh], never negative."""
        return max(self.energy_requested_kwh - self.energy_delivered_kwh, 0.0)


@dataclass(frozen=True, eq=False)
class Snapshot:
    """What a policy knows when it plans.

    Parameters
    ----------
    now : datetime
        Decision time (UTC); ``grid.start``.
    site : Site
    grid : TimeGrid
        Planning grid from ``now``; its first step is the control interval the plan is applied
        to next.
    evs : sequence of EVState
        EVs plugged in at ``now``, then any expected ones (arrival after ``now``).
    base_load_a : (T, 3) array or None
        Inflexible load per phase at the connection [A] (the largest over each step).
    node_limits_a : mapping node id -> (T, 3) array
        Time-varying limits (grid operators) [A]; the tightest over each step.
    signals : Signals
        Price [EUR/MWh] and emission intensity [g/kWh] per step (means over each step).
    max_unbalance_a : float or None
        Largest difference between phase currents at the connection [A].
    reserve_a : mapping node id -> (T, 3) array
        Capacity held for EVs expected to arrive later [A] (a forecast; soft, see
        ``models.Problem.reserve_a``).
    """

    now: datetime
    site: Site
    grid: TimeGrid
    evs: tuple[EVState, ...]
    base_load_a: np.ndarray | None = None
    node_limits_a: Mapping[str, np.ndarray] = field(default_factory=dict)
    signals: Signals = field(default_factory=Signals)
    max_unbalance_a: float | None = None
    reserve_a: Mapping[str, np.ndarray] = field(default_factory=dict)

    def present(self) -> tuple[EVState, ...]:
        """EVs plugged in at ``now``."""
        return tuple(ev for ev in self.evs if ev.arrival <= self.now)

    def to_problem(
        self,
        weights: Weights | None = None,
        target: EmissionTarget | None = None,
        *,
        finish_remainder: bool = True,
    ) -> Problem:
        """The optimisation problem of this snapshot (sessions in ``evs`` order).

        With ``finish_remainder`` a remainder smaller than what the EV draws in one step at
        its minimum current is raised to that amount: the 0-or-6 A rule could not plan it
        otherwise, while the EV, offered 6 A, simply stops when full.
        """
        cps = {cp.id: cp for cp in self.site.charge_points}
        v = self.site.voltage_v
        step_h = float(self.grid.durations_h[0])
        sessions = []
        for ev in self.evs:
            remaining = ev.remaining_kwh
            if finish_remainder and remaining > 1e-9:
                cp = cps[ev.charge_point_id]
                n_ph = min(ev.phases or cp.phases, cp.phases)
                one_step_kwh = cp.min_current_a * v * n_ph * step_h / 1000.0
                remaining = max(remaining, one_step_kwh)
            sessions.append(
                Session(
                    id=ev.session_id,
                    charge_point_id=ev.charge_point_id,
                    arrival=ev.arrival,
                    departure=ev.departure,
                    energy_kwh=remaining,
                    max_power_kw=ev.max_power_kw,
                    phases=ev.phases,
                    priority=ev.priority,
                )
            )
        return Problem(
            site=self.site,
            grid=self.grid,
            sessions=tuple(sessions),
            base_load_a=self.base_load_a,
            node_limits_a=self.node_limits_a,
            signals=self.signals,
            weights=weights or Weights(),
            target=target,
            max_unbalance_a=self.max_unbalance_a,
            reserve_a=self.reserve_a,
        )


@dataclass(frozen=True, eq=False)
class Plan:
    """A policy's answer: the pilot current per session and step of the snapshot's grid.

    Parameters
    ----------
    grid : TimeGrid
    session_ids : tuple of str
        Row order of ``pilot_a`` (the snapshot's ``evs`` order).
    pilot_a : (S, T) array
        Per-phase current limit offered to each EV [A]: 0 or within its bounds.
    policy : str
    solve_s : float
        Wall time the policy took [s].
    status : str
        ``"ok"``, or what went wrong and what planned instead (``"fallback:edf (time limit)"``).
    gap : float or None
        Proven relative optimality gap of an optimising policy.
    """

    grid: TimeGrid
    session_ids: tuple[str, ...]
    pilot_a: np.ndarray
    policy: str
    solve_s: float = 0.0
    status: str = "ok"
    gap: float | None = None

    def __post_init__(self) -> None:
        arr = np.asarray(self.pilot_a, dtype=float)
        shape = (len(self.session_ids), self.grid.n_steps)
        if arr.shape != shape:
            raise ValueError(f"pilot_a: expected shape {shape}, got {arr.shape}")
        arr = arr.copy()
        arr.setflags(write=False)
        object.__setattr__(self, "pilot_a", arr)

    def step_index(self, when: datetime) -> int | None:
        """Index of the step that contains ``when``, or ``None`` outside the grid."""
        b = self.grid.boundaries
        if when < b[0] or when >= b[-1]:
            return None
        lo, hi = 0, len(b) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if b[mid] <= when:
                lo = mid
            else:
                hi = mid
        return lo

    def pilots_at(self, when: datetime) -> dict[str, float]:
        """Pilot [A] per session id for the step containing ``when`` (empty outside the grid)."""
        k = self.step_index(when)
        if k is None:
            return {}
        return {sid: float(self.pilot_a[i, k]) for i, sid in enumerate(self.session_ids)}

    def as_rows(self) -> list[tuple[datetime, str, float]]:
        """``(step start, session id, pilot_a)`` for every nonzero pilot."""
        starts = self.grid.starts
        s_idx, k_idx = np.nonzero(self.pilot_a)
        return [
            (starts[k], self.session_ids[s], float(self.pilot_a[s, k]))
            for s, k in zip(s_idx, k_idx, strict=True)
        ]


def clean_pilots(pilot_a: np.ndarray, min_a: np.ndarray) -> np.ndarray:
    """Pilots with solver noise removed: below 1e-9 A is 0, a hair under the minimum is it."""
    p = np.asarray(pilot_a, dtype=float)
    mn = np.broadcast_to(np.asarray(min_a, dtype=float).reshape(-1, *([1] * (p.ndim - 1))), p.shape)
    p = np.where(p <= 1e-9, 0.0, p)
    return np.where((p > 0) & (p < mn), np.where(p >= mn - 1e-6, mn, 0.0), p)


def quantise_pilots(pilot_a: np.ndarray, min_a: np.ndarray, resolution_a: float = 0.01) -> np.ndarray:
    """Round pilots down to ``resolution_a`` without ever rounding into the (0, min) gap.

    Rounding down keeps every sum of pilots within the limit the plan kept; a pilot a hair
    under its minimum (solver tolerance) becomes the minimum, anything clearly below it 0.
    """
    p = np.asarray(pilot_a, dtype=float)
    mn = np.broadcast_to(np.asarray(min_a, dtype=float).reshape(-1, *([1] * (p.ndim - 1))), p.shape)
    q = np.floor(p / resolution_a + 1e-6) * resolution_a
    q = np.where(q < mn, np.where(p >= mn - 1e-6, mn, 0.0), q)
    return np.where(p <= 1e-9, 0.0, q)


def evs_from_sessions(sessions: Sequence[Session]) -> tuple[EVState, ...]:
    """EVs with nothing delivered yet, one per session (perfect knowledge)."""
    return tuple(
        EVState(
            session_id=s.id,
            charge_point_id=s.charge_point_id,
            arrival=s.arrival,
            departure=s.departure,
            energy_requested_kwh=s.energy_kwh,
            max_power_kw=s.max_power_kw,
            phases=s.phases,
        )
        for s in sessions
    )
