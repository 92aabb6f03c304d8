"""The charging problem, typed and validated at construction.

A :class:`Problem` is everything the planner knows at one moment: the site (a tree of per-phase
current limits with charge points at its leaves), the EV sessions (present or expected), a time
grid whose steps may differ in length, time-varying limits set by grid operators, inflexible base
load at the connection, price and emission-intensity signals, objective weights and an optional
pollution-reduction target.

Every value is checked when it is built; nonsense raises :class:`~models.errors.ProblemError`
naming the field (``sessions[3].departure: before arrival``). Datetimes must be timezone-aware;
they are converted to UTC.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from models.errors import ProblemError

__all__ = [
    "PHASES",
    "ROOT",
    "ROTATIONS",
    "VDE_UNBALANCE_A",
    "ChargePoint",
    "EmissionTarget",
    "Node",
    "Problem",
    "Session",
    "Signals",
    "Site",
    "TimeGrid",
    "Weights",
]

PHASES = ("L1", "L2", "L3")
#: Id of the root node of every site tree: the grid connection point.
ROOT = "site"
#: VDE-AR-N 4100: at most 4.6 kVA unbalance at a customer connection, i.e. 20 A between phases.
VDE_UNBALANCE_A = 20.0
#: Grid phase index (0 = L1) of each charge-point phase, by the point's phase rotation.
ROTATIONS: dict[str, tuple[int, int, int]] = {
    "L1L2L3": (0, 1, 2),
    "L2L3L1": (1, 2, 0),
    "L3L1L2": (2, 0, 1),
}


def _finite(field_name: str, value: Any, *, minimum: float | None = 0.0) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ProblemError(field_name, f"not a number: {value!r}") from None
    if not math.isfinite(v):
        raise ProblemError(field_name, f"must be finite, got {v}")
    if minimum is not None and v < minimum:
        raise ProblemError(field_name, f"must be >= {minimum}, got {v}")
    return v


def _utc(field_name: str, value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise ProblemError(field_name, f"not a datetime: {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ProblemError(field_name, "datetime must be timezone-aware")
    return value.astimezone(UTC)


def _phase_triple(field_name: str, value: Any) -> tuple[float, float, float]:
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = _finite(field_name, value)
        return (v, v, v)
    try:
        items = list(value)
    except TypeError:
        raise ProblemError(field_name, f"expected a number or 3 per-phase numbers: {value!r}") from None
    if len(items) != 3:
        raise ProblemError(field_name, f"expected 3 per-phase values, got {len(items)}")
    a, b, c = (_finite(f"{field_name}[{i}]", x) for i, x in enumerate(items))
    return (a, b, c)


@dataclass(frozen=True)
class Node:
    """A limit in the site tree: the connection point (``id == "site"``) or a group.

    Parameters
    ----------
    id : str
        Unique node id.
    max_current_a : float or (float, float, float)
        Per-phase current limit [A]; one number applies to every phase.
    parent : str or None
        Parent node id; ``None`` only for the root.
    """

    id: str
    max_current_a: tuple[float, float, float] | float
    parent: str | None = ROOT

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ProblemError("node.id", f"must be a non-empty string: {self.id!r}")
        object.__setattr__(
            self,
            "max_current_a",
            _phase_triple(f"nodes[{self.id}].max_current_a", self.max_current_a),
        )
        if self.id == ROOT:
            object.__setattr__(self, "parent", None)
        elif self.parent is None:
            raise ProblemError(f"nodes[{self.id}].parent", "only the root may have no parent")


@dataclass(frozen=True)
class ChargePoint:
    """A charge point (one controllable outlet) hanging off a node of the site tree.

    Parameters
    ----------
    id : str
        Charge point id (the OCPP chargePointId).
    node_id : str
        Node (group) it is wired to; ``"site"`` for the connection itself.
    phases : int
        Phases wired to the point: 1 or 3.
    phase_rotation : str
        Grid phase of each point phase: ``L1L2L3``, ``L2L3L1`` or ``L3L1L2``. A 1-phase point,
        or a 1-phase EV on a 3-phase point, sits on the first.
    max_current_a, min_current_a : float
        Per-phase maximum and minimum (IEC 61851: 6 A) current [A]; a setpoint is 0 or in
        ``[min_current_a, max_current_a]``.
    """

    id: str
    node_id: str = ROOT
    phases: int = 3
    phase_rotation: str = "L1L2L3"
    max_current_a: float = 16.0
    min_current_a: float = 6.0
    connectors: int = 1

    def __post_init__(self) -> None:
        where = f"charge_points[{self.id}]"
        if not isinstance(self.id, str) or not self.id:
            raise ProblemError("charge_point.id", f"must be a non-empty string: {self.id!r}")
        if self.phases not in (1, 3):
            raise ProblemError(f"{where}.phases", f"must be 1 or 3, got {self.phases!r}")
        if self.phase_rotation not in ROTATIONS:
            raise ProblemError(
                f"{where}.phase_rotation",
                f"must be one of {', '.join(ROTATIONS)}, got {self.phase_rotation!r}",
            )
        mx = _finite(f"{where}.max_current_a", self.max_current_a)
        mn = _finite(f"{where}.min_current_a", self.min_current_a)
        if mx <= 0:
            raise ProblemError(f"{where}.max_current_a", f"must be > 0, got {mx}")
        if mn > mx:
            raise ProblemError(f"{where}.min_current_a", f"{mn} A is above max_current_a {mx} A")
        if not isinstance(self.connectors, int) or self.connectors < 1:
            raise ProblemError(f"{where}.connectors", f"must be an integer >= 1: {self.connectors!r}")
        object.__setattr__(self, "max_current_a", mx)
        object.__setattr__(self, "min_current_a", mn)

    def grid_phases(self, phases_used: int) -> tuple[int, ...]:
        """Grid phase indices (0 = L1) loaded by an EV drawing on ``phases_used`` phases."""
        return ROTATIONS[self.phase_rotation][: min(phases_used, self.phases)]


@dataclass(frozen=True)
class Site:
    """The site tree: the connection point, nested groups, and charge points.

    Parameters
    ----------
    id : str
        Site id.
    voltage_v : float
        Phase-to-neutral voltage [V].
    max_current_a : float or (float, float, float)
        Per-phase limit at the grid connection [A].
    groups : sequence of Node
        Sub-limits (feeders, cables, cabinets); nest them with ``parent``.
    charge_points : sequence of ChargePoint
    """

    id: str
    voltage_v: float
    max_current_a: tuple[float, float, float] | float
    groups: tuple[Node, ...] = ()
    charge_points: tuple[ChargePoint, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "voltage_v", _finite("site.voltage_v", self.voltage_v))
        if self.voltage_v <= 0:
            raise ProblemError("site.voltage_v", f"must be > 0, got {self.voltage_v}")
        object.__setattr__(self, "max_current_a", _phase_triple("site.max_current_a", self.max_current_a))
        groups = tuple(self.groups)
        cps = tuple(self.charge_points)
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "charge_points", cps)
        ids = {ROOT}
        for g in groups:
            if g.id in ids:
                raise ProblemError(f"groups[{g.id}].id", "duplicate node id")
            ids.add(g.id)
        for g in groups:
            if g.parent not in ids:
                raise ProblemError(f"groups[{g.id}].parent", f"unknown node {g.parent!r}")
        parent = {g.id: g.parent for g in groups}
        for g in groups:  # a cycle never reaches the root
            seen, cur = set(), g.id
            while cur != ROOT:
                if cur in seen:
                    raise ProblemError(f"groups[{g.id}].parent", "groups form a cycle")
                seen.add(cur)
                cur = parent[cur]
        cp_ids: set[str] = set()
        for cp in cps:
            if cp.id in cp_ids:
                raise ProblemError(f"charge_points[{cp.id}].id", "duplicate charge point id")
            cp_ids.add(cp.id)
            if cp.node_id not in ids:
                raise ProblemError(f"charge_points[{cp.id}].node_id", f"unknown group {cp.node_id!r}")

    @property
    def nodes(self) -> tuple[Node, ...]:
        """The root node followed by every group."""
        return (Node(ROOT, self.max_current_a, None), *self.groups)

    def charge_point(self, cp_id: str) -> ChargePoint:
        for cp in self.charge_points:
            if cp.id == cp_id:
                return cp
        raise KeyError(cp_id)

    def ancestors(self, node_id: str) -> list[str]:
        """``node_id`` and every node above it, up to and including the root."""
        parent = {g.id: g.parent for g in self.groups}
        out = [node_id]
        while out[-1] != ROOT:
            out.append(parent[out[-1]])  # type: ignore[arg-type]
        return out


@dataclass(frozen=True)
class TimeGrid:
    """Interval boundaries ``t_0 < t_1 < ... < t_T`` (UTC); steps may differ in length."""

    boundaries: tuple[datetime, ...]

    def __post_init__(self) -> None:
        b = tuple(_utc(f"grid.boundaries[{i}]", t) for i, t in enumerate(self.boundaries))
        if len(b) < 2:
            raise ProblemError("grid.boundaries", "need at least two boundaries (one interval)")
        for i in range(1, len(b)):
            if b[i] <= b[i - 1]:
                raise ProblemError(f"grid.boundaries[{i}]", "boundaries must strictly increase")
        object.__setattr__(self, "boundaries", b)

    @classmethod
    def uniform(cls, start: datetime, step: timedelta, count: int) -> TimeGrid:
        """``count`` equal steps of ``step`` from ``start``."""
        if count < 1:
            raise ProblemError("grid.count", f"must be >= 1, got {count}")
        if step <= timedelta(0):
            raise ProblemError("grid.step", f"must be positive, got {step}")
        return cls(tuple(start + i * step for i in range(count + 1)))

    @classmethod
    def graded(
        cls,
        start: datetime,
        horizon: timedelta,
        fine_step: timedelta,
        fine_span: timedelta,
        coarse_step: timedelta,
    ) -> TimeGrid:
        """Fine steps near ``start`` for ``fine_span``, coarse steps after, up to ``horizon``.

        The last step is cut short so the grid ends exactly at ``start + horizon``.
        """
        if min(fine_step, coarse_step, horizon) <= timedelta(0):
            raise ProblemError("grid", "steps and horizon must be positive")
        end = start + horizon
        b = [start]
        while b[-1] < end:
            step = fine_step if b[-1] - start < fine_span else coarse_step
            b.append(min(b[-1] + step, end))
        return cls(tuple(b))

    @property
    def n_steps(self) -> int:
        return len(self.boundaries) - 1

    @property
    def start(self) -> datetime:
        return self.boundaries[0]

    @property
    def end(self) -> datetime:
        return self.boundaries[-1]

    @property
    def starts(self) -> tuple[datetime, ...]:
        return self.boundaries[:-1]

    @property
    def durations_h(self) -> np.ndarray:
        """Length of every step [h]."""
        b = self.boundaries
        return np.array([(b[i + 1] - b[i]).total_seconds() / 3600.0 for i in range(len(b) - 1)])

    def epoch_s(self) -> np.ndarray:
        """Boundaries as POSIX seconds (float)."""
        return np.array([t.timestamp() for t in self.boundaries])


@dataclass(frozen=True)
class Session:
    """An EV known to the planner: plugged in already, or expected.

    Parameters
    ----------
    id : str
    charge_point_id : str
    arrival, departure : datetime
        Plug-in and (declared or estimated) plug-out time, timezone-aware. An EV present at the
        start of the grid has ``arrival <= grid.start``.
    energy_kwh : float
        Energy still wanted [kWh].
    max_power_kw : float or None
        EV on-board limit [kW]; ``None``: the charge point's.
    phases : int or None
        Phases the EV charges on (1 or 3); ``None``: the charge point's.
    priority : float
        Weight of this EV's unmet energy (1 = normal).
    """

    id: str
    charge_point_id: str
    arrival: datetime
    departure: datetime
    energy_kwh: float
    max_power_kw: float | None = None
    phases: int | None = None
    priority: float = 1.0

    def __post_init__(self) -> None:
        where = f"sessions[{self.id}]"
        object.__setattr__(self, "arrival", _utc(f"{where}.arrival", self.arrival))
        object.__setattr__(self, "departure", _utc(f"{where}.departure", self.departure))
        if self.departure <= self.arrival:
            raise ProblemError(f"{where}.departure", "departure is not after arrival")
        object.__setattr__(self, "energy_kwh", _finite(f"{where}.energy_kwh", self.energy_kwh))
        if self.max_power_kw is not None:
            p = _finite(f"{where}.max_power_kw", self.max_power_kw)
            if p <= 0:
                raise ProblemError(f"{where}.max_power_kw", f"must be > 0, got {p}")
            object.__setattr__(self, "max_power_kw", p)
        if self.phases is not None and self.phases not in (1, 3):
            raise ProblemError(f"{where}.phases", f"must be 1 or 3, got {self.phases!r}")
        object.__setattr__(self, "priority", _finite(f"{where}.priority", self.priority))


@dataclass(frozen=True)
class Weights:
    """Objective weights, all in EUR-equivalent so that the terms add up.

    Parameters
    ----------
    unmet_energy_eur_per_kwh : float
        Value of a kWh an EV wanted and did not get; must dominate price and CO2 terms.
    energy_cost : float
        Multiplier on the energy price signal (1 = pay the price).
    co2_eur_per_kg : float
        Shadow price of emissions [EUR/kg]; 0.1 = 100 EUR/t.
    peak_eur_per_a : float
        Cost per ampere of the highest phase current at the connection over the horizon [EUR/A].
    early_eur_per_kwh_h : float
        Small cost per kWh and hour of delay from the grid start: charge early when all else is
        equal, a hedge against EVs leaving before they said.
    fairness_eur : float
        Reward per unit (0..1) of the smallest share of need met among sessions; 0 = off.
    urgency_eur_per_kwh_h : float
        Like ``early_eur_per_kwh_h``, but divided by each session's laxity in hours (floored at
        a quarter of an hour): among plans that deliver the same, serve first the EVs that have
        the least time to spare, and keep the flexible ones' energy for later -- a hedge
        against EVs that arrive later and need the capacity then.
    reserve_eur_per_kwh : float
        Cost per kWh planned into capacity held for EVs not yet arrived (``Problem.reserve_a``).
        Set it above the largest difference in price and CO2 cost between steps and below the
        value of energy: then a plan never moves energy into held capacity for a cleaner or
        cheaper hour, but still uses it rather than leave an EV short. 0 = reservation off.
    """

    unmet_energy_eur_per_kwh: float = 2.0
    energy_cost: float = 1.0
    co2_eur_per_kg: float = 0.1
    peak_eur_per_a: float = 0.0
    early_eur_per_kwh_h: float = 1e-4
    fairness_eur: float = 0.0
    urgency_eur_per_kwh_h: float = 0.0
    reserve_eur_per_kwh: float = 0.0

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            object.__setattr__(self, name, _finite(f"weights.{name}", getattr(self, name)))


@dataclass(frozen=True)
class EmissionTarget:
    """Pollution-reduction target over the horizon, soft: missing it costs a penalty.

    Parameters
    ----------
    max_intensity_g_per_kwh : float or None
        Cap on the average emission intensity of the energy charged [g/kWh].
    budget_kg : float or None
        Cap on the emissions of the energy charged [kg].
    penalty_eur_per_kg : float
        Cost per kg of emissions above the target.
    """

    max_intensity_g_per_kwh: float | None = None
    budget_kg: float | None = None
    penalty_eur_per_kg: float = 1.0

    def __post_init__(self) -> None:
        if self.max_intensity_g_per_kwh is not None:
            object.__setattr__(
                self,
                "max_intensity_g_per_kwh",
                _finite("target.max_intensity_g_per_kwh", self.max_intensity_g_per_kwh),
            )
        if self.budget_kg is not None:
            object.__setattr__(self, "budget_kg", _finite("target.budget_kg", self.budget_kg))
        object.__setattr__(
            self,
            "penalty_eur_per_kg",
            _finite("target.penalty_eur_per_kg", self.penalty_eur_per_kg),
        )


@dataclass(frozen=True)
class Signals:
    """Per-interval signals on the grid's steps (arrays of length ``n_steps``), each optional.

    Parameters
    ----------
    price_eur_per_mwh : array or None
        Energy price [EUR/MWh]; may be negative.
    co2_g_per_kwh : array or None
        Emission intensity of grid energy [g/kWh].
    """

    price_eur_per_mwh: np.ndarray | None = None
    co2_g_per_kwh: np.ndarray | None = None


def _node_series(
    field_name: str, value: Mapping[str, Any], node_ids: set[str], n: int, *, finite: bool = False
) -> dict[str, np.ndarray]:
    """Per-node series of currents: each (n,) or (n, 3), >= 0, read-only (n, 3) arrays [A]."""
    out: dict[str, np.ndarray] = {}
    for node_id, series in dict(value).items():
        where = f"{field_name}[{node_id}]"
        if node_id not in node_ids:
            raise ProblemError(where, f"unknown node {node_id!r}")
        arr = np.asarray(series, dtype=float)
        if np.isnan(arr).any():
            raise ProblemError(where, "NaN value")
        if finite and not np.isfinite(arr).all():
            raise ProblemError(where, "infinite value")
        if arr.shape == (n,):
            arr = np.repeat(arr[:, None], 3, axis=1)
        if arr.shape != (n, 3):
            raise ProblemError(where, f"expected shape ({n},) or ({n}, 3), got {arr.shape}")
        if (arr < 0).any():
            raise ProblemError(where, "negative value" if finite else "negative limit")
        arr = np.array(arr)
        arr.setflags(write=False)
        out[node_id] = arr
    return out


def _series(field_name: str, value: Any, n: int, *, minimum: float | None, cols: int = 0) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    shape = (n,) if cols == 0 else (n, cols)
    if cols and arr.shape == (n,):
        arr = np.repeat(arr[:, None], cols, axis=1)
    if arr.shape != shape:
        raise ProblemError(field_name, f"expected shape {shape} (grid steps), got {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.argwhere(bad)[0]
        raise ProblemError(f"{field_name}[{', '.join(map(str, idx))}]", "NaN or infinite value")
    if minimum is not None and (arr < minimum).any():
        idx = np.argwhere(arr < minimum)[0]
        raise ProblemError(
            f"{field_name}[{', '.join(map(str, idx))}]",
            f"must be >= {minimum}, got {arr[tuple(idx)]}",
        )
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True)
class Problem:
    """Everything the planner needs for one decision.

    Parameters
    ----------
    site : Site
    grid : TimeGrid
    sessions : sequence of Session
    base_load_a : array (n_steps, 3) or None
        Inflexible load per phase at the connection [A].
    node_limits_a : mapping node id -> array (n_steps,) or (n_steps, 3)
        Time-varying limits per node and phase [A] (grid operators); the tighter of this and the
        node's static limit holds. Use ``inf`` for "no extra limit" in a step.
    signals : Signals
    weights : Weights
    target : EmissionTarget or None
    max_unbalance_a : float or None
        Largest difference between phase currents at the connection [A]; ``None`` (default) =
        not enforced. Use :data:`VDE_UNBALANCE_A` (20 A, VDE-AR-N 4100) where the site is one
        customer connection; for a whole district behind a transformer it does not apply. A base
        load already more unbalanced is not made worse.
    reserve_a : mapping node id -> array (n_steps,) or (n_steps, 3)
        Capacity per node and phase held for EVs expected to arrive later [A] (a forecast). It
        is soft: charging into it costs ``weights.reserve_eur_per_kwh`` per kWh, and the hard
        limit stays the node's limit. Ignored while that weight is 0.
    """

    site: Site
    grid: TimeGrid
    sessions: tuple[Session, ...] = ()
    base_load_a: np.ndarray | None = None
    node_limits_a: Mapping[str, np.ndarray] = field(default_factory=dict)
    signals: Signals = field(default_factory=Signals)
    weights: Weights = field(default_factory=Weights)
    target: EmissionTarget | None = None
    max_unbalance_a: float | None = None
    reserve_a: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.grid.n_steps
        sessions = tuple(self.sessions)
        object.__setattr__(self, "sessions", sessions)
        cp_ids = {cp.id for cp in self.site.charge_points}
        seen: set[str] = set()
        for i, s in enumerate(sessions):
            if not isinstance(s, Session):
                raise ProblemError(f"sessions[{i}]", f"not a Session: {type(s).__name__}")
            if s.id in seen:
                raise ProblemError(f"sessions[{s.id}].id", "duplicate session id")
            seen.add(s.id)
            if s.charge_point_id not in cp_ids:
                raise ProblemError(
                    f"sessions[{s.id}].charge_point_id",
                    f"unknown charge point {s.charge_point_id!r}",
                )
        if self.base_load_a is not None:
            object.__setattr__(
                self,
                "base_load_a",
                _series("base_load_a", self.base_load_a, n, minimum=None, cols=3),
            )
        node_ids = {nd.id for nd in self.site.nodes}
        limits = _node_series("node_limits_a", self.node_limits_a, node_ids, n)
        object.__setattr__(self, "node_limits_a", limits)
        reserve = _node_series("reserve_a", self.reserve_a, node_ids, n, finite=True)
        object.__setattr__(self, "reserve_a", reserve)
        sig = self.signals
        object.__setattr__(
            self,
            "signals",
            Signals(
                price_eur_per_mwh=None
                if sig.price_eur_per_mwh is None
                else _series("signals.price_eur_per_mwh", sig.price_eur_per_mwh, n, minimum=None),
                co2_g_per_kwh=None
                if sig.co2_g_per_kwh is None
                else _series("signals.co2_g_per_kwh", sig.co2_g_per_kwh, n, minimum=0.0),
            ),
        )
        if self.target is not None and self.signals.co2_g_per_kwh is None:
            raise ProblemError("target", "an emission target needs signals.co2_g_per_kwh")
        if self.max_unbalance_a is not None:
            object.__setattr__(self, "max_unbalance_a", _finite("max_unbalance_a", self.max_unbalance_a))

    @property
    def n_steps(self) -> int:
        return self.grid.n_steps

    def with_sessions(self, sessions: Sequence[Session]) -> Problem:
        """The same problem with other sessions."""
        return Problem(
            site=self.site,
            grid=self.grid,
            sessions=tuple(sessions),
            base_load_a=self.base_load_a,
            node_limits_a=self.node_limits_a,
            signals=self.signals,
            weights=self.weights,
            target=self.target,
            max_unbalance_a=self.max_unbalance_a,
            reserve_a=self.reserve_a,
        )
