"""Replay sessions on a site through the rolling-horizon loop, interval by interval.

Time runs on the contract's interval grid: from ``start`` (default: the earliest arrival,
floored to the step) in steps of the control interval. An EV is plugged in from the first
interval that starts at or after its arrival to the last interval that ends at or before its
departure. Every interval:

1. the loop builds a snapshot from what has happened so far (EVs plugged in, energy each has
   had, declared departure and energy; base load, limits and signals ahead) -- a rolling policy
   never sees a session before it arrives; the offline yardstick plans once, at the start,
   with every session known;
2. the policy's pilot for this interval goes to each EV; a guard re-checks every node and phase
   (pilots plus base load within the limits) and cuts the latest-departing EV where a plan
   would overload -- it never should, and the KPIs count it if it did;
3. the EV draws ``min(pilot, its own maximum, what it still wants)`` -- less near full when the
   taper is on -- and whatever it does not take is capacity for the others at the next re-plan.

The result is the contract's ``setpoints`` table and the raw arrays for :mod:`scheduler.kpis`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import numpy as np
import pandas as pd

from models import ROOT, Session, Site, TimeGrid
from scheduler.conditions import Conditions, TimeSeries
from scheduler.loaders import StepSeries, load_sessions, load_signals, load_site
from scheduler.policies import Policy
from scheduler.rolling import RollingHorizon
from scheduler.snapshot import EVState

__all__ = ["Forecast", "Scenario", "SimulationResult", "Taper", "floor_time", "simulate"]


class Forecast(Protocol):
    """Expected EVs arriving after ``now`` and before ``end`` (see :mod:`scheduler.forecast`)."""

    def expected(self, now: datetime, end: datetime, step: timedelta) -> Sequence[EVState]: ...


log = logging.getLogger(__name__)

_EPS_KWH = 1e-9


def floor_time(t: datetime, step: timedelta) -> datetime:
    """``t`` floored to a multiple of ``step`` since the Unix epoch (UTC)."""
    epoch = datetime(1970, 1, 1, tzinfo=t.tzinfo)
    return epoch + ((t - epoch) // step) * step


def _ceil_time(t: datetime, step: timedelta) -> datetime:
    f = floor_time(t, step)
    return f if f == t else f + step


@dataclass(frozen=True, eq=False)
class Scenario:
    """Everything a simulation replays.

    Parameters
    ----------
    site : Site
    sessions : sequence of Session
        What really happens: arrival, departure and energy wanted. Policies see the declared
        departure and energy of an EV once it has arrived (here: the real ones).
    base_load, site_limit_a, price, co2 : TimeSeries or None
        Inflexible load per phase [A]; the grid operator's per-phase limit at the connection
        [A]; price [EUR/MWh]; emission intensity [g/kWh] -- each anything with ``on_grid``.
    node_limits : mapping node id -> TimeSeries
        Time-varying limits of groups [A].
    max_unbalance_a : float or None
        Phase-unbalance rule at the connection [A] (VDE-AR-N 4100: 20 A), ``None`` = off.
    name : str
    """

    site: Site
    sessions: tuple[Session, ...]
    base_load: TimeSeries | None = None
    site_limit_a: TimeSeries | None = None
    price: TimeSeries | None = None
    co2: TimeSeries | None = None
    node_limits: dict[str, TimeSeries] = field(default_factory=dict)
    max_unbalance_a: float | None = None
    name: str = "scenario"

    @classmethod
    def from_series(
        cls,
        site: Site,
        sessions: Sequence[Session],
        *,
        base_load: StepSeries | None = None,
        signals: StepSeries | None = None,
        max_unbalance_a: float | None = None,
        name: str = "scenario",
    ) -> Scenario:
        """A scenario from loaded series: base load (``l1_a, l2_a, l3_a``) and a signals table
        (any of ``price_eur_per_mwh``, ``co2_g_per_kwh``, ``max_current_a``)."""
        cols = set() if signals is None else set(signals.names)

        def pick(column: str, how: str) -> TimeSeries | None:
            return _Column(signals, column, how) if signals is not None and column in cols else None

        return cls(
            site=site,
            sessions=tuple(sessions),
            base_load=None if base_load is None else _Column(base_load, None, "max"),
            site_limit_a=pick("max_current_a", "min"),
            price=pick("price_eur_per_mwh", "start"),
            co2=pick("co2_g_per_kwh", "start"),
            max_unbalance_a=max_unbalance_a,
            name=name,
        )

    @classmethod
    def from_files(
        cls,
        site: str | os.PathLike[str],
        sessions: str | os.PathLike[str],
        signals: str | os.PathLike[str] | None = None,
    ) -> Scenario:
        """Read the contract's files: site TOML (with its base load), sessions CSV, signals CSV.

        Raises :class:`~scheduler.errors.InputError` naming file, row and field on bad input.
        """
        cfg = load_site(site)
        return cls.from_series(
            cfg.site,
            load_sessions(sessions, cfg.site),
            base_load=cfg.base_load,
            signals=None if signals is None else load_signals(signals),
            max_unbalance_a=cfg.max_unbalance_a,
            name=cfg.site.id,
        )


@dataclass(frozen=True)
class _Column:
    """One column of a :class:`~scheduler.loaders.StepSeries`, reduced over each interval
    (``"min"`` for a limit, ``"max"`` for a load: the safe side when a value changes inside)."""

    series: StepSeries
    column: str | None
    how: str

    def on_grid(self, starts: Sequence[datetime]) -> np.ndarray:
        if len(starts) == 0:
            return np.zeros((0,) if self.column else (0, 3))
        step = starts[1] - starts[0] if len(starts) > 1 else timedelta(0)
        return self.series.on_grid(starts, self.column, how=self.how, end=starts[-1] + step)


@dataclass(frozen=True)
class Taper:
    """The EV draws less near full: below ``start_share`` of its energy still wanted, its
    maximum current falls linearly with the remainder, to ``floor_share`` of its maximum.

    A crude stand-in for the constant-current / constant-voltage end of a charge; the EV's
    state of charge is unknown, so the share is of the energy it asked for.
    """

    start_share: float = 0.2
    floor_share: float = 0.1

    def max_share(self, remaining_kwh: np.ndarray, requested_kwh: np.ndarray) -> np.ndarray:
        """(S,) share of its maximum current each EV can take [0..1]."""
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(requested_kwh > 0, remaining_kwh / requested_kwh, 0.0)
        share = np.clip(frac / self.start_share, self.floor_share, 1.0)
        return np.where(frac >= self.start_share, 1.0, share)


@dataclass(frozen=True, eq=False)
class SimulationResult:
    """What a simulation produced.

    Attributes
    ----------
    scenario : Scenario
    policy : str
    grid : TimeGrid
        The interval grid.
    conditions : Conditions
        Base load, limits and signals on ``grid``'s intervals.
    sessions : tuple of Session
    pilot_a, current_a : (S, T) arrays
        Per-phase pilot offered and current drawn per session and interval [A].
    present : (S, T) bool
        Plugged in.
    solve_s : (R,) array
        Wall time of every re-plan [s].
    statuses : dict
        Count of plan statuses (``"ok"`` or a fallback).
    guard_cuts : int
        Pilots the guard had to cut (a plan that would have overloaded; 0 expected).
    wall_s : float
    """

    scenario: Scenario
    policy: str
    grid: TimeGrid
    conditions: Conditions
    sessions: tuple[Session, ...]
    pilot_a: np.ndarray
    current_a: np.ndarray
    present: np.ndarray
    phases_used: np.ndarray
    phase_mask: np.ndarray
    solve_s: np.ndarray
    statuses: dict[str, int]
    guard_cuts: int
    wall_s: float

    @property
    def voltage_v(self) -> float:
        return self.scenario.site.voltage_v

    @property
    def step_h(self) -> float:
        return float(self.grid.durations_h[0])

    @property
    def power_kw(self) -> np.ndarray:
        """(S, T) power drawn [kW]."""
        return self.current_a * self.voltage_v * self.phases_used[:, None] / 1000.0

    @property
    def energy_kwh(self) -> np.ndarray:
        """(S,) energy delivered per session [kWh]."""
        return self.power_kw.sum(axis=1) * self.step_h

    def setpoints(self) -> pd.DataFrame:
        """The contract's long table: one row per session and interval it was plugged in."""
        s_idx, k_idx = np.nonzero(self.present)
        order = np.lexsort((s_idx, k_idx))
        s_idx, k_idx = s_idx[order], k_idx[order]
        starts = pd.DatetimeIndex(self.grid.starts)
        return pd.DataFrame(
            {
                "time": starts[k_idx],
                "station_id": [self.sessions[i].charge_point_id for i in s_idx],
                "session_id": [self.sessions[i].id for i in s_idx],
                "pilot_a": self.pilot_a[s_idx, k_idx],
                "current_a": self.current_a[s_idx, k_idx],
                "power_kw": self.power_kw[s_idx, k_idx],
            }
        )

    def phase_current_a(self, which: str = "current") -> np.ndarray:
        """(N, T, 3) charging current per node (root first), interval and grid phase [A].

        ``which`` is ``"current"`` (drawn) or ``"pilot"`` (offered).
        """
        x = self.current_a if which == "current" else self.pilot_a
        member = _membership(self.scenario.site, self.sessions)
        per_phase = x[:, :, None] * self.phase_mask[:, None, :]
        s, t = x.shape
        return (member.astype(float) @ per_phase.reshape(s, t * 3)).reshape(-1, t, 3)

    def limits_a(self) -> np.ndarray:
        """(N, T, 3) limit per node, interval and phase: static and time-varying, tightest [A]."""
        site = self.scenario.site
        nodes = site.nodes
        n_t = self.grid.n_steps
        out = np.empty((len(nodes), n_t, 3))
        for j, nd in enumerate(nodes):
            out[j] = np.asarray(nd.max_current_a)[None, :]
            extra = self.conditions.node_limits_a.get(nd.id)
            if extra is not None:
                out[j] = np.minimum(out[j], extra[:n_t])
        return out

    def base_load_a(self) -> np.ndarray:
        """(T, 3) inflexible load at the connection [A]."""
        n_t = self.grid.n_steps
        base = self.conditions.base_load_a
        return np.zeros((n_t, 3)) if base is None else base[:n_t]


def _membership(site: Site, sessions: Sequence[Session]) -> np.ndarray:
    """(N, S) bool: session hangs under node (nodes in ``site.nodes`` order, root first)."""
    node_ids = [nd.id for nd in site.nodes]
    index = {nid: i for i, nid in enumerate(node_ids)}
    cps = {cp.id: cp for cp in site.charge_points}
    member = np.zeros((len(node_ids), len(sessions)), dtype=bool)
    for i, s in enumerate(sessions):
        member[[index[n] for n in site.ancestors(cps[s.charge_point_id].node_id)], i] = True
    return member


def simulate(
    scenario: Scenario,
    policy: Policy,
    *,
    step: timedelta = timedelta(minutes=15),
    horizon: timedelta = timedelta(hours=24),
    start: datetime | None = None,
    end: datetime | None = None,
    coarse_step: timedelta | None = None,
    fine_span: timedelta = timedelta(hours=4),
    taper: Taper | None = None,
    offline: bool | None = None,
    forecast: Forecast | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SimulationResult:
    """Replay ``scenario`` under ``policy`` (see the module docstring).

    Parameters
    ----------
    scenario : Scenario
    policy : Policy
    step : timedelta
        Control interval and simulation step.
    horizon : timedelta
        Look-ahead of every re-plan.
    start, end : datetime or None
        Simulated period; default from the earliest arrival (floored to ``step``) to the
        latest departure (ceiled). Sessions wholly outside it are left out.
    coarse_step, fine_span : see :class:`~scheduler.rolling.RollingHorizon`
    taper : Taper or None
        EVs draw less near full; ``None``: they draw what they are offered.
    offline : bool or None
        Plan once over the whole period with every session known (the yardstick); default:
        ``True`` for a policy named ``offline-optimal``.
    forecast : Forecast or None
        Expected EVs (``forecast.expected(now, end, step)``) added to every rolling snapshot
        after the EVs plugged in: capacity the plan keeps for EVs not yet arrived.
    progress : callable(done, total) or None
        Called after every interval.
    """
    t_wall = time.perf_counter()
    site = scenario.site
    sessions = tuple(scenario.sessions)
    if offline is None:
        offline = policy.name == "offline-optimal"
    if start is None:
        if not sessions:
            raise ValueError("start: no sessions to take the start from; give it")
        start = floor_time(min(s.arrival for s in sessions), step)
    if end is None:
        end = _ceil_time(max((s.departure for s in sessions), default=start + step), step)
    n_t = max(int(-(-(end - start) // step)), 1)
    grid = TimeGrid.uniform(start, step, n_t)
    # Only sessions that overlap the period take part (and count in the KPIs).
    sessions = tuple(s for s in sessions if s.departure > grid.start and s.arrival < grid.end)
    ahead = int(-(-horizon // step)) + 1
    conditions = Conditions.from_series(
        start, step, n_t + ahead,
        base_load=scenario.base_load, site_limit_a=scenario.site_limit_a,
        node_limits=scenario.node_limits, price=scenario.price, co2=scenario.co2,
    )  # fmt: skip

    # Session arrays on the interval grid.
    cps = {cp.id: cp for cp in site.charge_points}
    n_s = len(sessions)
    v = site.voltage_v
    step_h = step.total_seconds() / 3600.0
    a_k = np.array([-(-(s.arrival - start) // step) for s in sessions], dtype=np.int64)
    d_k = np.array([(s.departure - start) // step for s in sessions], dtype=np.int64)
    a_k = np.clip(a_k, 0, n_t)
    d_k = np.clip(d_k, 0, n_t)
    present = np.zeros((n_s, n_t), dtype=bool)
    for i in range(n_s):
        present[i, a_k[i] : d_k[i]] = True
    phases_used = np.array([min(s.phases or cps[s.charge_point_id].phases, cps[s.charge_point_id].phases)
                            for s in sessions], dtype=np.int64)  # fmt: skip
    phase_mask = np.zeros((n_s, 3), dtype=bool)
    for i, s in enumerate(sessions):
        phase_mask[i, list(cps[s.charge_point_id].grid_phases(int(phases_used[i])))] = True
    max_a = np.array(
        [
            min(
                cps[s.charge_point_id].max_current_a,
                np.inf if s.max_power_kw is None else s.max_power_kw * 1000.0 / (v * phases_used[i]),
            )
            for i, s in enumerate(sessions)
        ]
    )
    kwh_per_a = v * phases_used * step_h / 1000.0  # (S,) energy of 1 A for one interval
    requested = np.array([s.energy_kwh for s in sessions])
    delivered = np.zeros(n_s)
    member = _membership(site, sessions)
    root = [nd.id for nd in site.nodes].index(ROOT)
    headroom_a = np.empty((len(site.nodes), n_t, 3))
    for j, nd in enumerate(site.nodes):
        headroom_a[j] = np.asarray(nd.max_current_a)[None, :]
        extra = conditions.node_limits_a.get(nd.id)
        if extra is not None:
            headroom_a[j] = np.minimum(headroom_a[j], extra[:n_t])
    if conditions.base_load_a is not None:
        headroom_a[root] -= conditions.base_load_a[:n_t]
    guarded = policy.name != "uncontrolled"

    pilot_a = np.zeros((n_s, n_t))
    current_a = np.zeros((n_s, n_t))
    solve_times: list[float] = []
    statuses: dict[str, int] = {}
    guard_cuts = 0
    loop = RollingHorizon(policy, step, horizon, coarse_step=coarse_step, fine_span=fine_span)
    index_of = {s.id: i for i, s in enumerate(sessions)}

    def ev_state(i: int) -> EVState:
        s = sessions[i]
        return EVState(
            session_id=s.id,
            charge_point_id=s.charge_point_id,
            arrival=start + int(a_k[i]) * step,
            departure=start + int(d_k[i]) * step,
            energy_requested_kwh=float(requested[i]),
            energy_delivered_kwh=float(delivered[i]),
            max_power_kw=s.max_power_kw,
            phases=s.phases,
        )

    offline_plan = None
    if offline:
        evs = [ev_state(i) for i in range(n_s) if d_k[i] > a_k[i]]
        snap = RollingHorizon(policy, step, n_t * step).snapshot(
            start, site, evs, conditions, max_unbalance_a=scenario.max_unbalance_a
        )
        snap = type(snap)(
            now=snap.now, site=site, grid=grid, evs=snap.evs,
            **dict(zip(("base_load_a", "node_limits_a", "signals"), conditions.window(grid), strict=True)),
            max_unbalance_a=scenario.max_unbalance_a,
        )  # fmt: skip
        offline_plan = policy.plan(snap)
        solve_times.append(offline_plan.solve_s)
        statuses[offline_plan.status] = statuses.get(offline_plan.status, 0) + 1
        offline_rows = np.array([index_of[sid] for sid in offline_plan.session_ids], dtype=np.int64)

    for k in range(n_t):
        now = start + k * step
        here = np.nonzero(present[:, k])[0]
        want = here[requested[here] - delivered[here] > _EPS_KWH]
        pilots = np.zeros(n_s)
        if offline_plan is not None:
            pilots[offline_rows] = offline_plan.pilot_a[:, k]
            pilots[~present[:, k]] = 0.0
        elif want.size:
            evs = [ev_state(i) for i in want]
            if forecast is not None and policy.horizon_needed:
                evs += forecast.expected(now, now + horizon, step)
            plan = loop.decide(now, site, evs, conditions, max_unbalance_a=scenario.max_unbalance_a)
            solve_times.append(plan.solve_s)
            statuses[plan.status] = statuses.get(plan.status, 0) + 1
            pilots[want] = plan.pilot_a[: len(want), 0]
        if guarded and pilots.any():
            guard_cuts += _guard(pilots, member, phase_mask, headroom_a[:, k], d_k)
        remaining = np.maximum(requested - delivered, 0.0)
        cap = np.minimum(max_a, remaining / kwh_per_a)
        if taper is not None:
            cap = np.minimum(cap, max_a * taper.max_share(remaining, requested))
        draw = np.minimum(pilots, cap)
        draw = np.where(present[:, k], np.maximum(draw, 0.0), 0.0)
        pilot_a[:, k] = np.where(present[:, k], pilots, 0.0)
        current_a[:, k] = draw
        delivered += draw * kwh_per_a
        if progress is not None:
            progress(k + 1, n_t)

    if guard_cuts:
        log.error("%s: the guard cut %d pilots that would have overloaded a limit", policy.name, guard_cuts)
    return SimulationResult(
        scenario=scenario,
        policy=policy.name,
        grid=grid,
        conditions=conditions,
        sessions=sessions,
        pilot_a=pilot_a,
        current_a=current_a,
        present=present,
        phases_used=phases_used,
        phase_mask=phase_mask,
        solve_s=np.asarray(solve_times),
        statuses=statuses,
        guard_cuts=guard_cuts,
        wall_s=time.perf_counter() - t_wall,
    )


def _guard(
    pilots: np.ndarray,
    member: np.ndarray,
    phase_mask: np.ndarray,
    headroom_a: np.ndarray,
    d_k: np.ndarray,
) -> int:
    """Cut pilots (latest departure first) until every node and phase holds; returns the count.

    ``headroom_a`` (N, 3) is what charging may use on every node and phase this interval:
    the tightest limit, minus base load at the connection [A].
    """
    cuts = 0
    while True:
        load = member.astype(float) @ (pilots[:, None] * phase_mask)  # (N, 3)
        over = load - np.maximum(headroom_a, 0.0) > 1e-6
        if not over.any():
            return cuts
        j, f = np.argwhere(over)[0]
        on = np.nonzero(member[j] & phase_mask[:, f] & (pilots > 0))[0]
        if on.size == 0:
            return cuts
        victim = on[np.argmax(d_k[on])]
        pilots[victim] = 0.0
        cuts += 1
