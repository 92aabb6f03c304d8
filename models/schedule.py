"""The plan every policy returns, and the checks every plan must pass.

A :class:`Schedule` holds the per-phase current [A] of each session in each step of the
problem's grid. :func:`check_schedule` lists every broken rule (limits per node, phase and step
including base load; 0-or-[min, max]; energy above request; current outside presence;
unbalance), so tests and KPIs share one definition of "feasible".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from models.compiled import Compiled, compile_problem
from models.problem import PHASES, Problem

__all__ = ["Schedule", "Violation", "check_schedule"]


@dataclass(frozen=True, eq=False)
class Schedule:
    """Per-phase current [A] of every session (rows, in ``problem.sessions`` order) per step."""

    problem: Problem
    current_a: np.ndarray
    policy: str = ""

    def __post_init__(self) -> None:
        arr = np.asarray(self.current_a, dtype=float)
        shape = (len(self.problem.sessions), self.problem.n_steps)
        if arr.shape != shape:
            raise ValueError(f"current_a: expected shape {shape}, got {arr.shape}")
        arr = arr.copy()
        arr.setflags(write=False)
        object.__setattr__(self, "current_a", arr)

    @cached_property
    def compiled(self) -> Compiled:
        return compile_problem(self.problem)

    @property
    def energy_kwh(self) -> np.ndarray:
        """(S,) energy each session gets if it draws its full current [kWh]."""
        return (self.current_a * self.compiled.kwh_per_a).sum(axis=1)

    @property
    def total_energy_kwh(self) -> float:
        return float(self.energy_kwh.sum())

    @property
    def unmet_energy_kwh(self) -> np.ndarray:
        """(S,) energy wanted and not planned [kWh]."""
        return np.maximum(self.compiled.energy_kwh - self.energy_kwh, 0.0)

    @property
    def power_kw(self) -> np.ndarray:
        """(S, T) power per session [kW]."""
        c = self.compiled
        return self.current_a * c.voltage_v * c.phases_used[:, None] / 1000.0

    def connection_current_a(self) -> np.ndarray:
        """(T, 3) current at the grid connection, charging plus base load [A]."""
        c = self.compiled
        return c.phase_load_a(self.current_a)[0] + c.base_load_a

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per session and step with a nonzero current or presence."""
        c = self.compiled
        s_idx, k_idx = np.nonzero(c.present | (self.current_a > 0))
        starts = pd.DatetimeIndex(self.problem.grid.starts)
        sessions = self.problem.sessions
        return pd.DataFrame(
            {
                "time": starts[k_idx],
                "station_id": [sessions[i].charge_point_id for i in s_idx],
                "session_id": [sessions[i].id for i in s_idx],
                "current_a": self.current_a[s_idx, k_idx],
                "power_kw": self.power_kw[s_idx, k_idx],
            }
        )


@dataclass(frozen=True)
class Violation:
    """One broken rule: ``kind`` (limit, min_current, max_current, energy, presence, unbalance,
    base_load), where it is, and by how much (``excess``, in the rule's unit)."""

    kind: str
    where: str
    step: int | None
    excess: float

    def __str__(self) -> str:
        at = "" if self.step is None else f" at step {self.step}"
        return f"{self.kind} {self.where}{at}: {self.excess:.6g} over"


def check_schedule(
    schedule: Schedule,
    *,
    tol_a: float = 1e-4,
    tol_kwh: float = 1e-4,
    limits: bool = True,
) -> list[Violation]:
    """Every rule ``schedule`` breaks; empty when it is safe and sound.

    Base load alone above the connection limit is reported as ``base_load`` (not a charging
    fault); charging must then be zero on that phase, and anything above zero is a ``limit``
    violation. ``limits=False`` skips the grid checks (for the uncontrolled baseline, whose
    violations are the point).
    """
    c = schedule.compiled
    cur = schedule.current_a
    out: list[Violation] = []
    sessions = schedule.problem.sessions

    def add(kind: str, where: str, step: int | None, excess: float) -> None:
        out.append(Violation(kind, where, step, float(excess)))

    on = cur > tol_a
    for s, k in zip(*np.nonzero(on & ~c.present), strict=True):
        add("presence", f"session {sessions[s].id}", int(k), cur[s, k])
    low = on & (cur < c.min_current_a[:, None] - tol_a)
    for s, k in zip(*np.nonzero(low), strict=True):
        add("min_current", f"session {sessions[s].id}", int(k), c.min_current_a[s] - cur[s, k])
    high = cur > c.max_current_a[:, None] + tol_a
    for s, k in zip(*np.nonzero(high), strict=True):
        add("max_current", f"session {sessions[s].id}", int(k), cur[s, k] - c.max_current_a[s])
    over = schedule.energy_kwh - c.energy_kwh
    for s in np.nonzero(over > tol_kwh)[0]:
        add("energy", f"session {sessions[s].id}", None, over[s])
    for k, ph in zip(*np.nonzero(c.base_violation_a > tol_a), strict=True):
        add("base_load", f"node site {PHASES[ph]}", int(k), c.base_violation_a[k, ph])
    if not limits:
        return out
    load = c.phase_load_a(cur)
    excess = load - c.headroom_a
    for n, k, ph in zip(*np.nonzero(excess > tol_a), strict=True):
        add("limit", f"node {c.node_ids[n]} {PHASES[ph]}", int(k), excess[n, k, ph])
    u = schedule.problem.max_unbalance_a
    if u is not None:
        conn = load[0] + c.base_load_a
        for a, b in ((0, 1), (1, 2), (2, 0)):
            allowed = np.maximum(u, np.abs(c.base_load_a[:, a] - c.base_load_a[:, b]))
            diff = np.abs(conn[:, a] - conn[:, b]) - allowed
            for k in np.nonzero(diff > tol_a)[0]:
                add("unbalance", f"site {PHASES[a]}-{PHASES[b]}", int(k), diff[k])
    return out
