"""The live control loop: observe the site, re-plan, dispatch -- every control interval and at once
on events. It knows nothing of OCPP: a :class:`LiveSite` gives what is plugged in now, a
:class:`ConditionsSource` the limits, base load and signals from ``now`` on, and a
:class:`Dispatcher` carries per-connector current plans to the points (``noxblock.live`` joins
them to the OCPP gateway). The same :class:`~scheduler.rolling.RollingHorizon` the simulator
replays decides.

One re-plan (:meth:`ControlLoop.replan`):

1. the site is observed: the controllable EVs (:class:`~scheduler.snapshot.EVState`, with what
   they have been given and what they are estimated to want), the connectors without an EV, and
   the load of points that cannot be steered (non-compliant or offline) as inflexible load;
2. the conditions come on a grid that starts at ``now`` in control-interval steps; inflexible
   load is taken off every limit on its path (:func:`take_inflexible`);
3. the policy plans (in a worker thread, so the event loop keeps serving the points). If it
   fails, or does not answer within ``deadline_s``, the ``fallback`` policy (EDF) plans instead
   -- never nothing;
4. every connector gets an :class:`Order`, the next hours of its limit: its EV's pilots while the
   EV is planned, and on a connector without an EV (or after its EV's estimated departure) an
   even share of the capacity the plan leaves (:func:`idle_shares_a`), 0 where the share is
   under the point's minimum -- so a newly plugged EV may start at once and the sum of every
   limit a point has been given keeps every node's limit at every step, even if this process
   vanishes in the middle of the plan;
5. the orders go out in two rounds: first every order that lowers a connector's limit at any
   time (as the lower of old and new where it also raises one), then the raising ones -- held
   back while a lowering one was not taken -- so what the points hold keeps every limit at
   every moment, whenever this process stops (:meth:`ControlLoop._split`).

:class:`ControlLoop` runs the periodic re-plan on ``apscheduler``; :meth:`ControlLoop.request`
asks for an extra one after a short debounce (bursts of events coalesce into one).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np

from models import ROOT, Site, TimeGrid
from scheduler.conditions import Conditions
from scheduler.policies import HeuristicPolicy, Policy
from scheduler.rolling import RollingHorizon
from scheduler.snapshot import EVState, Plan, Snapshot

__all__ = [
    "ConditionsSource",
    "ControlLoop",
    "Dispatcher",
    "LiveSite",
    "Observation",
    "Order",
    "ReplanRecord",
    "guarantee_minimum",
    "idle_shares_a",
    "take_inflexible",
]

log = logging.getLogger(__name__)


# -- what the loop talks to ---------------------------------------------------------------------
@dataclass(frozen=True)
class Observation:
    """The site as seen at one moment.

    Parameters
    ----------
    evs : tuple of EVState
        Controllable EVs plugged in now (their ``session_id`` keys ``connectors``).
    connectors : mapping session id -> (charge point id, connector id)
    idle : tuple of (charge point id, connector id)
        Controllable connectors without an EV.
    inflexible_a : mapping charge point id -> (3,) array
        Per grid phase, the current a point draws or may draw that the plan cannot steer (it
        ignores its limits, or it is offline and follows its last profile) [A].
    """

    evs: tuple[EVState, ...] = ()
    connectors: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    idle: tuple[tuple[str, int], ...] = ()
    inflexible_a: Mapping[str, np.ndarray] = field(default_factory=dict)


class LiveSite(Protocol):
    """The site now: who is plugged in, what they want, which points cannot be steered."""

    def observe(self, now: datetime) -> Observation: ...

    # Optional: ``failsafe_a(charge_point_id) -> float | None``, the limit [A] a point falls
    # back to after its orders end (and holds before its first); unknown counts as 0 A.


class ConditionsSource(Protocol):
    """Limits, base load and signals from ``now`` on a grid of ``n`` steps of ``step``."""

    def conditions(self, now: datetime, step: timedelta, n: int, observation: Observation) -> Conditions: ...

    # Optional: ``guaranteed_a(grid, evs) -> (S, T) array or None``, a current each EV that
    # still wants energy must be offered at each step (a grid operator's guaranteed minimum per
    # point, section 14a EnWG); see :func:`guarantee_minimum`.


@dataclass(frozen=True)
class Order:
    """The current plan of one connector: ``(interval start, per-phase limit [A])`` up to ``end``.

    ``phases``: phases the EV draws on (None: the point's). ``session_id``: the EV it is for,
    None on a connector without an EV.
    """

    charge_point_id: str
    connector_id: int
    plan: tuple[tuple[datetime, float], ...]
    end: datetime
    phases: int | None = None
    session_id: str | None = None

    @property
    def first_a(self) -> float:
        """The limit of the first interval [A]."""
        return self.plan[0][1]

    def starts_s(self) -> np.ndarray:
        """Interval starts [epoch s]."""
        return np.fromiter((t.timestamp() for t, _ in self.plan), float, len(self.plan))

    def limits_at_a(self, times_s: np.ndarray, outside_a: float = 0.0) -> np.ndarray:
        """The limit [A] in force at each of ``times_s`` [epoch s]; ``outside_a`` before the first
        interval and from ``end`` on."""
        values = np.fromiter((a for _, a in self.plan), float, len(self.plan))
        i = np.searchsorted(self.starts_s(), times_s, side="right") - 1
        inside = (i >= 0) & (times_s < self.end.timestamp())
        return np.where(inside, values[np.maximum(i, 0)], outside_a)

    def times_with_s(self, other: Order) -> np.ndarray:
        """The interval starts of both orders from this one's start to its end [epoch s]: where
        either may change."""
        mine = self.starts_s()
        theirs = other.starts_s()
        times = np.union1d(mine, theirs[theirs > mine[0]])
        return times[times < self.end.timestamp()]


class Dispatcher(Protocol):
    """Sends orders to the points; answers how many were taken."""

    async def dispatch(self, orders: Sequence[Order], *, force: bool) -> int: ...


@dataclass(frozen=True)
class ReplanRecord:
    """What one re-plan did (for the API, the dashboard and ``/metrics``)."""

    at: datetime
    reason: str
    policy: str
    status: str
    evs: int
    idle: int
    inflexible: int
    solve_s: float
    replan_s: float
    gap: float | None
    dispatched: int
    orders: int
    limit_a: tuple[float, float, float]
    load_a: tuple[float, float, float]

    @property
    def headroom_a(self) -> tuple[float, float, float]:
        """Site limit minus planned load (pilots, base and inflexible load) per phase, first step [A]."""
        return tuple(lim - ld for lim, ld in zip(self.limit_a, self.load_a, strict=True))  # type: ignore[return-value]


# -- pure helpers -------------------------------------------------------------------------------
def _phase_index(site: Site) -> tuple[dict[str, int], list[str]]:
    nodes = [nd.id for nd in site.nodes]
    return {nid: i for i, nid in enumerate(nodes)}, nodes


def take_inflexible(conditions: Conditions, site: Site, inflexible_a: Mapping[str, np.ndarray]) -> Conditions:
    """``conditions`` with each point's inflexible load taken off every limit on its path [A].

    A node without a time-varying limit gets one (its static limit minus the load), so a feeder
    that carries a point that ignores its limits is kept too, not only the connection.
    """
    if not inflexible_a:
        return conditions
    static = {nd.id: np.asarray(nd.max_current_a, dtype=float) for nd in site.nodes}
    load = {nid: np.zeros(3) for nid in static}
    for cp_id, a in inflexible_a.items():
        cp = site.charge_point(cp_id)
        for nid in site.ancestors(cp.node_id):
            load[nid] += np.asarray(a, dtype=float)
    limits = dict(conditions.node_limits_a)
    for nid, extra in load.items():
        if not extra.any():
            continue
        base = limits.get(nid)
        if base is None:
            base = np.broadcast_to(static[nid], (conditions.n, 3))
        limits[nid] = np.maximum(np.minimum(base, static[nid]) - extra, 0.0)
    return Conditions(
        start=conditions.start,
        step=conditions.step,
        n=conditions.n,
        base_load_a=conditions.base_load_a,
        node_limits_a=limits,
        price_eur_per_mwh=conditions.price_eur_per_mwh,
        co2_g_per_kwh=conditions.co2_g_per_kwh,
    )


def _bounds(
    now: datetime, end: datetime, step: timedelta, fine_end: datetime, coarse: timedelta
) -> list[datetime]:
    """Step boundaries from ``now`` to ``end``: ``step`` until ``fine_end``, ``coarse`` after, no
    last step shorter than half a ``step``."""
    b = [now]
    while b[-1] < end:
        nxt = b[-1] + (step if b[-1] < fine_end else coarse)
        b.append(min(nxt, end))
    if len(b) > 2 and b[-1] - b[-2] < step / 2:  # no sliver of a last step
        del b[-2]
    return b


def idle_shares_a(
    snapshot: Snapshot,
    plan: Plan,
    connectors: Sequence[tuple[str, str | None]],
) -> np.ndarray:
    """Per connector and step: the limit to give a connector that has no planned EV then [A].

    ``connectors`` lists ``(charge point id, session id or None)``; a connector's row is its
    EV's pilots while the EV is present in the plan, and elsewhere an even share of what the
    plan leaves on every node on its path and phase (the headroom of the snapshot's limits minus
    base load minus every planned pilot), the smallest share on its path, capped at the point's
    maximum, rounded down to 0.1 A and 0 under its minimum. Returns a ``(len(connectors), T)``
    array.
    """
    site = snapshot.site
    grid = snapshot.grid
    t = grid.n_steps
    index, nodes = _phase_index(site)
    cps = {cp.id: cp for cp in site.charge_points}
    row = {sid: i for i, sid in enumerate(plan.session_ids)}
    evs = {ev.session_id: ev for ev in snapshot.evs}
    starts = np.array([s.timestamp() for s in grid.starts])
    ends = np.array([b.timestamp() for b in grid.boundaries[1:]])
    # room[node, phase, step]
    room = np.empty((len(nodes), 3, t))
    for nd in site.nodes:
        lim = np.broadcast_to(np.asarray(nd.max_current_a, dtype=float)[:, None], (3, t)).copy()
        extra = snapshot.node_limits_a.get(nd.id)
        if extra is not None:
            lim = np.minimum(lim, np.asarray(extra, dtype=float).T)
        room[index[nd.id]] = lim
    if snapshot.base_load_a is not None:
        room[index[ROOT]] -= np.asarray(snapshot.base_load_a, dtype=float).T
    out = np.zeros((len(connectors), t))
    occupied = np.zeros((len(connectors), t), dtype=bool)
    for c, (cp_id, sid) in enumerate(connectors):
        if sid is None or sid not in row:
            continue
        ev = evs[sid]
        present = (ends > ev.arrival.timestamp()) & (starts < ev.departure.timestamp())
        occupied[c] = present
        pilots = np.where(present, plan.pilot_a[row[sid]], 0.0)
        out[c] = pilots
        cp = cps[cp_id]
        phases = list(cp.grid_phases(ev.phases or cp.phases))
        for nid in site.ancestors(cp.node_id):
            room[index[nid]][phases] -= pilots
    count = np.zeros((len(nodes), 3, t))
    paths: list[tuple[list[int], list[int]]] = []
    for c, (cp_id, _) in enumerate(connectors):
        cp = cps[cp_id]
        phases = list(cp.grid_phases(cp.phases))
        path = [index[nid] for nid in site.ancestors(cp.node_id)]
        paths.append((path, phases))
        free = ~occupied[c]
        for n in path:
            count[n][phases] += free
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(count > 0, np.maximum(room, 0.0) / count, np.inf)
    for c, (cp_id, _) in enumerate(connectors):
        free = ~occupied[c]
        if not free.any():
            continue
        cp = cps[cp_id]
        path, phases = paths[c]
        a = share[np.ix_(path, phases)].reshape(-1, t).min(axis=0)
        a = np.minimum(a, cp.max_current_a)
        a = np.floor(a * 10.0 + 1e-9) / 10.0
        a = np.where(a >= cp.min_current_a, a, 0.0)
        out[c] = np.where(free, a, out[c])
    return out


def guarantee_minimum(snapshot: Snapshot, plan: Plan, guaranteed_a: np.ndarray) -> np.ndarray:
    """Pilots [A] (S, T) in which every EV that still wants energy is offered at least its
    guaranteed current at every step it is present, the others giving up what they have above
    their own guarantee to make room.

    ``guaranteed_a`` (S, T): the current each EV is guaranteed [A] (0: none), raised to the
    point's minimum and capped at its maximum. The EV's energy is followed along the plan, so a
    full EV is not offered current. Room comes from shrinking, in proportion, what the EVs on
    an overloaded node and phase have above their guarantee; where the guarantees alone do not
    fit a node (a cable tighter than the dimmed connection), that step keeps the plan's pilots.
    """
    site = snapshot.site
    cps = {cp.id: cp for cp in site.charge_points}
    evs = snapshot.evs
    pilot = np.array(plan.pilot_a, dtype=float)
    n_s, n_t = pilot.shape
    if n_s == 0:
        return pilot
    index, nodes = _phase_index(site)
    hours = snapshot.grid.durations_h
    starts = np.array([t.timestamp() for t in snapshot.grid.starts])
    ends = np.array([t.timestamp() for t in snapshot.grid.boundaries[1:]])
    v = site.voltage_v
    # incidence[node, phase, session]
    inc = np.zeros((len(nodes), 3, n_s))
    n_ph = np.zeros(n_s)
    lo = np.zeros(n_s)
    hi = np.zeros(n_s)
    for i, ev in enumerate(evs):
        cp = cps[ev.charge_point_id]
        n_ph[i] = min(ev.phases or cp.phases, cp.phases)
        lo[i], hi[i] = cp.min_current_a, cp.max_current_a
        if ev.max_power_kw is not None:
            hi[i] = max(min(hi[i], ev.max_power_kw * 1000.0 / (v * n_ph[i])), lo[i])
        for nid in site.ancestors(cp.node_id):
            inc[index[nid], list(cp.grid_phases(int(n_ph[i]))), i] = 1.0
    limit = np.empty((len(nodes), 3, n_t))
    for nd in site.nodes:
        lim = np.broadcast_to(np.asarray(nd.max_current_a, dtype=float)[:, None], (3, n_t)).copy()
        extra = snapshot.node_limits_a.get(nd.id)
        if extra is not None:
            lim = np.minimum(lim, np.asarray(extra, dtype=float).T)
        limit[index[nd.id]] = lim
    if snapshot.base_load_a is not None:
        limit[index[ROOT]] -= np.asarray(snapshot.base_load_a, dtype=float).T
    remaining = np.array([ev.remaining_kwh for ev in evs])
    arrival = np.array([ev.arrival.timestamp() for ev in evs])
    departure = np.array([ev.departure.timestamp() for ev in evs])
    for k in range(n_t):
        present = (arrival < ends[k]) & (departure > starts[k])
        wants = present & (remaining > 1e-6) & (guaranteed_a[:, k] > 0)
        if wants.any():
            g = np.where(wants, np.clip(guaranteed_a[:, k], lo, hi), 0.0)
            floor_load = np.einsum("nps,s->np", inc, g)
            if (floor_load <= limit[:, :, k] + 1e-9).all():
                target = np.maximum(pilot[:, k], g)
                for _ in range(len(nodes) + 1):
                    load = np.einsum("nps,s->np", inc, target)
                    over = load - limit[:, :, k]
                    if (over <= 1e-9).all():
                        break
                    excess = target - g  # what each EV has above its guarantee
                    scale = np.ones(n_s)
                    for nn, ph in zip(*np.nonzero(over > 1e-9), strict=True):
                        on = inc[nn, ph] > 0
                        room = excess[on].sum()
                        f = max(0.0, 1.0 - over[nn, ph] / room) if room > 0 else 0.0
                        scale[on] = np.minimum(scale[on], f)
                    target = g + excess * scale
                    # Between 0 and the minimum is no pilot: such an EV keeps its guarantee only.
                    target = np.where((target > 0) & (target < lo), np.where(g > 0, g, 0.0), target)
                pilot[:, k] = np.floor(target * 100.0 + 1e-6) / 100.0
        kwh = pilot[:, k] * v * n_ph * hours[k] / 1000.0
        remaining = remaining - np.where(present, kwh, 0.0)
    return pilot


def _site_load_a(snapshot: Snapshot, plan: Plan, step: int = 0) -> np.ndarray:
    """(3,) planned load at the connection in ``step``: base load plus every pilot [A]."""
    load = np.zeros(3)
    if snapshot.base_load_a is not None:
        load += np.asarray(snapshot.base_load_a, dtype=float)[step]
    cps = {cp.id: cp for cp in snapshot.site.charge_points}
    for i, ev in enumerate(snapshot.evs):
        cp = cps[ev.charge_point_id]
        load[list(cp.grid_phases(ev.phases or cp.phases))] += plan.pilot_a[i, step]
    return load


# -- the loop -----------------------------------------------------------------------------------
class ControlLoop:
    """Re-plans and dispatches; see the module docstring.

    Parameters
    ----------
    site : Site
    rolling : RollingHorizon
        Policy, control interval (``rolling.step``) and look-ahead.
    live, conditions, dispatcher
        The three sides (protocols above).
    clock : callable
        Aware-UTC ``now`` (the gateway's clock, so an accelerated demo runs on one time).
    fallback : Policy
        Plans when ``rolling.policy`` fails or misses ``deadline_s`` (default EDF).
    deadline_s : float
        Wall time the policy has before the fallback plans instead [s].
    wall_s_per_s : float
        Wall seconds per clock second (1; less in an accelerated demo): the periodic re-plan
        runs every ``rolling.step`` of clock time.
    debounce_s : float
        Wall time an event waits for others before its re-plan [s].
    max_cells : int, optional
        Most EVs x steps a plan should have: with more EVs the steps beyond the first ones get
        longer (a 1,000-point site re-plans within its control interval). None: no limit.
    """

    def __init__(
        self,
        site: Site,
        rolling: RollingHorizon,
        live: LiveSite,
        conditions: ConditionsSource,
        dispatcher: Dispatcher,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        fallback: Policy | None = None,
        deadline_s: float = 10.0,
        wall_s_per_s: float = 1.0,
        debounce_s: float = 0.2,
        max_unbalance_a: float | None = None,
        max_cells: int | None = None,
        on_replan: Callable[[ReplanRecord], None] | None = None,
    ) -> None:
        from models.baselines import edf

        if not deadline_s > 0:
            raise ValueError(f"deadline_s: must be > 0, got {deadline_s}")
        self.site = site
        self.rolling = rolling
        self.live = live
        self.source = conditions
        self.dispatcher = dispatcher
        self.clock = clock
        self.fallback = fallback or HeuristicPolicy("edf", edf)
        self.deadline_s = deadline_s
        self.wall_s_per_s = wall_s_per_s
        self.debounce_s = debounce_s
        self.on_replan = on_replan
        self.max_unbalance_a = max_unbalance_a
        self.max_cells = max_cells
        self.last: ReplanRecord | None = None
        self.snapshot: Snapshot | None = None
        self.plan: Plan | None = None
        self.orders: dict[tuple[str, int], Order] = {}
        self.replans = 0
        self.fallbacks = 0
        self._lock = asyncio.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="noxblock-plan")
        self._busy: Any = None  # the policy's future while it runs (it may outlive a deadline)
        self._scheduler: Any = None
        self._pending: list[str] = []
        self._end: datetime | None = None  # end of the last full re-plan's grid
        #: Plans end on a multiple of this (from 2000-01-01 UTC): the end moves once per quantum.
        self.end_quantum = max(timedelta(hours=1), rolling.step)
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._event_timer: asyncio.TimerHandle | None = None
        self._event_tasks: set[asyncio.Task[None]] = set()

    # -- running ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the periodic re-plan (``apscheduler``) and plan once at once."""
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        period_s = self.rolling.step.total_seconds() * self.wall_s_per_s
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._scheduler.add_job(
            self._job,
            "interval",
            seconds=period_s,
            args=("interval",),
            id="interval",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(int(period_s), 1),
            next_run_time=datetime.now(UTC),
        )
        self._scheduler.start()
        self._aloop = asyncio.get_running_loop()
        if self._pending:
            self._arm()
        log.info(
            "control loop: re-plan every %.0f s (%g s wall)", self.rolling.step.total_seconds(), period_s
        )

    async def stop(self) -> None:
        """Stop planning (a running re-plan finishes first)."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        if self._event_timer is not None:
            self._event_timer.cancel()
            self._event_timer = None
        self._aloop = None
        for task in list(self._event_tasks):
            task.cancel()
        async with self._lock:
            pass
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def idle(self) -> bool:
        """No re-plan running, waiting for the lock, or due after a debounce."""
        return not self._lock.locked() and self._event_timer is None and not self._event_tasks

    def request(self, reason: str) -> None:
        """Ask for a re-plan soon (events: plug-in, transaction start or stop, a new limit, ...).

        Requests within ``debounce_s`` of each other become one re-plan; one that comes while a
        re-plan runs gets the next one (it waits for the running one, never dropped). Before
        :meth:`start` requests are only remembered (the first re-plan takes them). Safe to call
        from another thread.
        """
        self._pending.append(reason)
        aloop = self._aloop
        if aloop is None or aloop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is aloop:
            self._arm()
        else:
            aloop.call_soon_threadsafe(self._arm)

    def _arm(self) -> None:
        if self._event_timer is None and self._aloop is not None:
            self._event_timer = self._aloop.call_later(self.debounce_s, self._fire)

    def _fire(self) -> None:
        self._event_timer = None
        task = asyncio.ensure_future(self._job("event"))
        self._event_tasks.add(task)
        task.add_done_callback(self._event_tasks.discard)

    async def _job(self, kind: str) -> None:
        try:
            await self.replan(kind)
        except Exception:  # the loop must live on; the next interval tries again
            log.exception("re-plan failed")

    # -- one re-plan ----------------------------------------------------------------------
    async def replan(self, reason: str = "manual", *, force: bool | None = None) -> ReplanRecord:
        """Observe, plan and dispatch once. ``force``: re-send unchanged orders too (default: when
        the plan's end moved, about once per :attr:`end_quantum`; a point that reconnects is sent
        everything again anyway)."""
        async with self._lock:
            if reason == "event" and self._pending:
                reason = ", ".join(sorted(set(self._pending)))
            self._pending.clear()
            return await self._replan(reason, force)

    async def _replan(self, reason: str, force: bool | None) -> ReplanRecord:
        t0 = time.perf_counter()
        now = self.clock()
        obs = self.live.observe(now)
        rolling = self.rolling
        grid, moved = self._grid(now, obs, reason == "interval" or bool(force))
        if force is None:
            force = moved  # a new end: every order changes anyway
        n = max(1, math.ceil((grid.end - now) / rolling.step))
        raw = self.source.conditions(now, rolling.step, n, obs)
        conditions = take_inflexible(raw, self.site, obs.inflexible_a)
        plan, snapshot = await self._plan(now, obs, conditions, grid)
        guaranteed = getattr(self.source, "guaranteed_a", None)
        if guaranteed is not None and snapshot.evs:
            g = guaranteed(snapshot.grid, snapshot.evs)
            if g is not None and np.any(g > 0):
                plan = Plan(
                    plan.grid, plan.session_ids, guarantee_minimum(snapshot, plan, g), plan.policy,
                    solve_s=plan.solve_s, status=plan.status, gap=plan.gap,
                )  # fmt: skip
        orders = self._orders(obs, snapshot, plan)
        # Two rounds, so that the points hold limits within every limit at every moment, even if
        # the service dies between them: first each order that lowers anywhere, as the lower of
        # old and new (an order that only lowers goes whole); then the others and the rest of
        # those, which only raise. See :meth:`_split`.
        first: list[Order] = []
        second: list[Order] = []
        whole_first = 0
        for o in orders:
            clamp, raises = self._split(o)
            if clamp is not None:
                first.append(clamp)
                whole_first += clamp is o
            if raises:
                second.append(o)
        taken = 0
        if first:
            taken = await self.dispatcher.dispatch(first, force=force)
        dispatched = min(taken, whole_first)
        held = 0
        if second and taken < len(first):
            # A point that was to give up current did not take its order: it still draws what it
            # had, so the others must not get more yet. Their old orders stay; the failed
            # points are sent theirs again at a re-plan soon.
            held = len(second)
            log.warning(
                "%d of %d lowering orders not taken: %d raising orders held back; re-plan soon",
                len(first) - taken, len(first), held,
            )  # fmt: skip
            self.request("orders not taken")
        elif second:
            dispatched += await self.dispatcher.dispatch(second, force=force)
        old = self.orders
        self.orders = {(o.charge_point_id, o.connector_id): o for o in orders}
        if held:  # which lowering ones took is not known: the next re-plan sends them first again
            self.orders = {k: old.get(k, o) for k, o in self.orders.items()}
        self.snapshot, self.plan = snapshot, plan
        limit = np.minimum(np.asarray(self.site.max_current_a, dtype=float), raw.site_limit_a(raw.index(now)))
        load = _site_load_a(snapshot, plan) + sum(obs.inflexible_a.values(), np.zeros(3))
        record = ReplanRecord(
            at=now,
            reason=reason,
            policy=plan.policy,
            status=plan.status,
            evs=len(obs.evs),
            idle=len(obs.idle),
            inflexible=len(obs.inflexible_a),
            solve_s=plan.solve_s,
            replan_s=time.perf_counter() - t0,
            gap=plan.gap,
            dispatched=dispatched,
            orders=len(orders),
            limit_a=tuple(float(x) for x in limit),  # type: ignore[arg-type]
            load_a=tuple(float(x) for x in load),  # type: ignore[arg-type]
        )
        self.last = record
        self.replans += 1
        log.info(
            "re-plan (%s): %d EVs, %d idle connectors, %d inflexible points; %s %s in %.2f s "
            "(solve %.2f s), %d of %d orders sent; headroom %s A",
            reason, record.evs, record.idle, record.inflexible, plan.policy, plan.status,
            record.replan_s, plan.solve_s, dispatched, len(orders),
            "/".join(f"{h:.1f}" for h in record.headroom_a),
        )  # fmt: skip
        if self.on_replan is not None:
            self.on_replan(record)
        return record

    def _grid(self, now: datetime, obs: Observation, full: bool) -> tuple[TimeGrid, bool]:
        """The planning grid, and whether its end moved.

        Every plan runs to one end, so every order a point keeps runs out at the same time and
        all points fall back to their failsafe together. A full (periodic) re-plan plans to the
        horizon (or the last departure) rounded up to the next :attr:`end_quantum` from the
        grid's start, so the end moves once in that while; a re-plan on an event keeps the end
        of the last full one. Between moves an order that did not change need not be sent again.
        The grid is graded like the rolling one: control-interval steps for ``fine_span``,
        coarse ones beyond, and a shorter last step to the end.
        """
        step = self.rolling.step
        end = self._end
        moved = False
        if full or end is None or end - now < step:
            last = max((ev.departure for ev in obs.evs), default=now)
            wanted = min(now + self.rolling.horizon, max(last, now + step))
            q = self.end_quantum
            origin = datetime(2000, 1, 1, tzinfo=UTC)
            new_end = origin + -((origin - wanted) // q) * q  # ceil to the quantum
            moved = new_end != end
            end = self._end = new_end
        rolling = self.rolling
        coarse = rolling.coarse_step or step
        fine_end = now + rolling.fine_span if rolling.coarse_step is not None else end
        b = _bounds(now, end, step, fine_end, coarse)
        budget = None if self.max_cells is None else max(4, self.max_cells // max(1, len(obs.evs)))
        if budget is not None and len(b) - 1 > budget:
            # Many EVs: fewer, longer steps ahead (whole multiples of the coarse step, and a
            # shorter fine span if need be), so the model stays about ``max_cells`` EV-steps.
            n_fine = min(math.ceil((fine_end - now) / step), max(1, budget // 2))
            fine_end = min(fine_end, now + n_fine * step)
            coarse = max(coarse, step)
            k = math.ceil((end - fine_end) / (coarse * max(1, budget - n_fine)))
            b = _bounds(now, end, step, fine_end, coarse * max(1, k))
        return TimeGrid(tuple(b)), moved

    def _split(self, order: Order) -> tuple[Order | None, bool]:
        """(what to send in the first round, whether ``order`` must go in the second).

        Compared with what the connector holds: its last order before that order's end, its
        failsafe after it and where it never had one (a point that was inflexible or offline;
        the other points' last orders were planned around exactly that). An order that allows
        nowhere more goes whole in the first round; one that allows nowhere less, in the second;
        one that does both, as the lower of the two in the first round and whole in the second.
        """
        failsafe = getattr(self.live, "failsafe_a", None)
        fs = (failsafe(order.charge_point_id) if failsafe is not None else None) or 0.0
        old = self.orders.get((order.charge_point_id, order.connector_id))
        times = order.starts_s() if old is None else order.times_with_s(old)
        a_new = order.limits_at_a(times)
        a_old = np.full(len(times), fs) if old is None else old.limits_at_a(times, outside_a=fs)
        raises = bool(np.any(a_new > a_old + 1e-9))
        if not raises:
            return order, False
        if not np.any(a_new < a_old - 1e-9):
            return None, True
        low = np.minimum(a_new, a_old)
        keep = np.concatenate(([True], low[1:] != low[:-1]))  # one interval per change
        when = {t.timestamp(): t for t, _ in order.plan}
        if old is not None:
            when.update((t.timestamp(), t) for t, _ in old.plan)
        plan = tuple((when[float(t)], float(a)) for t, a in zip(times[keep], low[keep], strict=True))
        return replace(order, plan=plan), True

    async def _plan(
        self, now: datetime, obs: Observation, conditions: Conditions, grid: TimeGrid
    ) -> tuple[Plan, Snapshot]:
        rolling = self.rolling
        snapshot = (
            rolling.snapshot(
                now, self.site, obs.evs, conditions, max_unbalance_a=self.max_unbalance_a, grid=grid
            )
            if obs.evs
            else None
        )
        if snapshot is None:  # idle connectors only: planned to the same end as any other order
            base, limits, signals = conditions.window(grid)
            snapshot = Snapshot(now, self.site, grid, (), base, limits, signals)
            return Plan(grid, (), np.zeros((0, grid.n_steps)), rolling.policy.name), snapshot
        loop = asyncio.get_running_loop()
        why = None
        if self._busy is not None and not self._busy.done():
            why = "previous plan still running"
        else:
            fut = loop.run_in_executor(self._pool, rolling.policy.plan, snapshot)
            self._busy = fut
            try:
                plan = await asyncio.wait_for(asyncio.shield(fut), self.deadline_s)
                return plan, snapshot
            except TimeoutError:
                why = f"no plan within {self.deadline_s:g} s"
            except Exception as e:  # a failing policy must not leave the site without a plan
                log.exception("policy %s failed", rolling.policy.name)
                why = f"{type(e).__name__}: {e}"
        self.fallbacks += 1
        log.warning("%s: %s; %s plans instead", rolling.policy.name, why, self.fallback.name)
        # The heuristics plan every step of the grid they are given (EDF tracks what each EV
        # has had), so the orders of a fallback stay within the limits of every step too.
        try:
            p = self.fallback.plan(snapshot)
        except Exception as e:  # even the fallback failed: every EV at 0 rather than no plan
            log.exception("fallback %s failed too; every EV gets 0 A", self.fallback.name)
            zeros = np.zeros((len(snapshot.evs), snapshot.grid.n_steps))
            return (
                Plan(snapshot.grid, tuple(ev.session_id for ev in snapshot.evs), zeros, "none",
                     status=f"fallback failed ({why}; {type(e).__name__}: {e})"),
                snapshot,
            )  # fmt: skip
        plan = Plan(
            p.grid, p.session_ids, p.pilot_a, p.policy, solve_s=p.solve_s,
            status=f"fallback:{self.fallback.name} ({why})",
        )  # fmt: skip
        return plan, snapshot

    def _orders(self, obs: Observation, snapshot: Snapshot, plan: Plan) -> list[Order]:
        conns: list[tuple[str, int, str | None]] = [
            (*obs.connectors[ev.session_id], ev.session_id) for ev in obs.evs
        ]
        conns += [(cp, c, None) for cp, c in obs.idle]
        if not conns:
            return []
        limits = idle_shares_a(snapshot, plan, [(cp, sid) for cp, _, sid in conns])
        starts = snapshot.grid.starts
        evs = {ev.session_id: ev for ev in snapshot.evs}
        out = []
        for (cp, c, sid), row in zip(conns, limits, strict=True):
            phases = evs[sid].phases if sid is not None else None
            out.append(
                Order(
                    cp,
                    c,
                    tuple((s, float(a)) for s, a in zip(starts, row, strict=True)),
                    snapshot.grid.end,
                    phases,
                    sid,
                )
            )
        return out
