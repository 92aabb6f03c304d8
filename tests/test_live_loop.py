"""Unit tests of the live control loop (``scheduler.live``) on small hand-built sites, with fakes for
the live site, the conditions and the dispatcher.

* :func:`idle_shares_a`: hand-computed shares on a site with a group limit, phase rotations, a
  time-varying site limit, an EV that leaves mid-grid, the 0.1 A rounding, the point's maximum and
  the minimum current; and, over random small sites and EDF plans (hypothesis), the planned pilots
  plus the idle shares never exceed any node's limit on any phase at any step;
* :func:`take_inflexible`: a non-compliant point's load comes off every node on its path, also a
  node that had no time-varying limit;
* :class:`ControlLoop`: orders that lower a connector's first-step limit go out before the ones
  that raise it; a policy that raises, and one that misses ``deadline_s``, both end in a fallback
  plan that keeps the limits; ``request()`` before ``start()``; an event re-plan between two full
  ones keeps the end of the last full re-plan's grid.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import ROOT, ChargePoint, Node, Site, TimeGrid
from models.baselines import edf
from scheduler.conditions import Conditions
from scheduler.live import ControlLoop, Observation, Order, guarantee_minimum, idle_shares_a, take_inflexible
from scheduler.policies import HeuristicPolicy
from scheduler.rolling import RollingHorizon
from scheduler.snapshot import EVState, Plan, Snapshot

T0 = datetime(2024, 3, 4, 17, 0, tzinfo=UTC)
STEP = timedelta(minutes=5)


# -- idle_shares_a --------------------------------------------------------------------------------
def share_site() -> Site:
    """Connection 60 A, feeder "g" 20 A; A (3 phases) and B (1 phase, on L2) on the feeder, C (3
    phases) and D (1 phase, on L3) on the connection."""
    return Site(
        "s",
        230.0,
        60.0,
        groups=(Node("g", 20.0),),
        charge_points=(
            ChargePoint("A", "g", 3, "L1L2L3"),
            ChargePoint("B", "g", 1, "L2L3L1"),
            ChargePoint("C", ROOT, 3, "L3L1L2"),
            ChargePoint("D", ROOT, 1, "L3L1L2"),
        ),
    )


def test_idle_shares_hand_computed() -> None:
    site = share_site()
    grid = TimeGrid.uniform(T0, STEP, 5)
    # The grid operator's limit at the connection per step; the last step has none (static 60 A).
    site_limit = np.array([40.0, 24.5, 21.0, 21.0, np.inf])
    ev = EVState("a", "A", T0 - timedelta(hours=1), T0 + 3 * STEP, 30.0)  # leaves after step 2
    snap = Snapshot(T0, site, grid, (ev,), None, {ROOT: np.repeat(site_limit[:, None], 3, axis=1)})
    # The plan's pilots past the departure must not count (the EV is gone by then).
    plan = Plan(grid, ("a",), np.full((1, 5), 10.0), "test")
    out = idle_shares_a(snap, plan, [("A", "a"), ("B", None), ("C", None), ("D", None)])
    expected = np.array(
        [
            # A: its EV's 10 A while present; then a share of the feeder and connection
            [10.0, 10.0, 10.0, 7.0, 10.0],
            # B (feeder, L2): step 0 the feeder's 20 - 10; step 1 the connection's L2
            # (24.5 - 10) / 2 = 7.25 -> 7.2; step 2 (21 - 10) / 2 = 5.5 < 6 -> 0;
            # step 3 21 / 3 (A, B, C on L2) = 7; step 4 the feeder's 20 / 2 (A, B) = 10
            [10.0, 7.2, 0.0, 7.0, 10.0],
            # C (L3, L1, L2): step 0 (40 - 10) / 2 on L2 and L3 = 15; step 4 (60 / 3 = 20) capped at 16
            [15.0, 7.2, 0.0, 7.0, 16.0],
            # D (L3): like C on L3
            [15.0, 7.2, 0.0, 7.0, 16.0],
        ]
    )
    np.testing.assert_allclose(out, expected)


def test_idle_share_goes_to_the_connector_after_its_ev_leaves_mid_step() -> None:
    site = share_site()
    grid = TimeGrid.uniform(T0, STEP, 3)
    # Leaves inside step 1: present in steps 0 and 1, gone in step 2.
    ev = EVState("a", "A", T0 - timedelta(hours=1), T0 + STEP + timedelta(minutes=2), 30.0)
    snap = Snapshot(T0, site, grid, (ev,))
    plan = Plan(grid, ("a",), np.array([[12.0, 8.0, 0.0]]), "test")
    out = idle_shares_a(snap, plan, [("A", "a")])
    # Step 2: alone on the feeder (20 A) and the connection (60 A): capped at its maximum, 16 A.
    np.testing.assert_allclose(out, [[12.0, 8.0, 16.0]])


def test_idle_shares_keep_base_load_and_a_connector_without_a_planned_ev() -> None:
    site = Site("s", 230.0, 30.0, charge_points=(ChargePoint("A"), ChargePoint("B")))
    grid = TimeGrid.uniform(T0, STEP, 2)
    ev = EVState("a", "A", T0, T0 + 2 * STEP, 10.0)
    base = np.array([[4.0, 0.0, 2.0], [4.0, 4.0, 4.0]])
    snap = Snapshot(T0, site, grid, (ev,), base)
    # The session "b" is not in the plan: its connector is treated as one without an EV.
    plan = Plan(grid, ("a",), np.array([[16.0, 6.0]]), "test")
    out = idle_shares_a(snap, plan, [("A", "a"), ("B", "b")])
    # Step 0: room 30 - base - 16 = (10, 14, 12) -> 10; step 1: 30 - 4 - 6 = 20 -> capped 16.
    np.testing.assert_allclose(out, [[16.0, 6.0], [10.0, 16.0]])


def _node_loads(
    site: Site,
    grid: TimeGrid,
    rows: Sequence[tuple[str, np.ndarray, Sequence[int]]],
) -> dict[str, np.ndarray]:
    """Per node, ``(3, T)`` the sum of ``(cp, per-step current, grid phases)`` rows below it [A]."""
    cps = {cp.id: cp for cp in site.charge_points}
    out = {nd.id: np.zeros((3, grid.n_steps)) for nd in site.nodes}
    for cp_id, a, phases in rows:
        for nid in site.ancestors(cps[cp_id].node_id):
            out[nid][list(phases)] += a
    return out


def _limits(site: Site, snapshot: Snapshot) -> dict[str, np.ndarray]:
    """Per node, ``(3, T)`` its limit [A] minus (at the connection) the base load."""
    t = snapshot.grid.n_steps
    out = {}
    for nd in site.nodes:
        lim = np.broadcast_to(np.asarray(nd.max_current_a)[:, None], (3, t)).copy()
        extra = snapshot.node_limits_a.get(nd.id)
        if extra is not None:
            lim = np.minimum(lim, np.asarray(extra).T)
        out[nd.id] = lim
    if snapshot.base_load_a is not None:
        out[ROOT] = out[ROOT] - np.asarray(snapshot.base_load_a).T
    return out


@st.composite
def small_sites(draw: st.DrawFn) -> tuple[Snapshot, list[tuple[str, str | None]]]:
    rotations = ("L1L2L3", "L2L3L1", "L3L1L2")
    site_a = draw(st.floats(10.0, 80.0))
    groups: list[Node] = []
    for i in range(draw(st.integers(0, 2))):
        parent = draw(st.sampled_from([ROOT, *(g.id for g in groups)]))
        groups.append(Node(f"g{i}", draw(st.floats(4.0, 60.0)), parent))
    nodes = [ROOT, *(g.id for g in groups)]
    cps = []
    for i in range(draw(st.integers(1, 5))):
        cps.append(
            ChargePoint(
                f"P{i}",
                draw(st.sampled_from(nodes)),
                draw(st.sampled_from([1, 3])),
                draw(st.sampled_from(rotations)),
                max_current_a=draw(st.floats(6.0, 32.0)),
            )
        )
    site = Site("s", 230.0, site_a, groups=tuple(groups), charge_points=tuple(cps))
    n = draw(st.integers(1, 5))
    grid = TimeGrid.uniform(T0, STEP, n)
    phase_triples = st.lists(st.floats(0.0, 8.0), min_size=3, max_size=3)
    base = np.array(draw(st.lists(phase_triples, min_size=n, max_size=n)))
    # A time-varying limit at the connection, above the base load (so that a plan can keep it).
    extra = np.array(draw(st.lists(st.floats(10.0, 100.0), min_size=n, max_size=n)))
    limits = {ROOT: np.repeat(extra[:, None], 3, axis=1)}
    evs, conns = [], []
    for cp in cps:
        if draw(st.booleans()):
            minutes = draw(st.integers(1, 5 * n + 10))
            ev = EVState(
                f"ev-{cp.id}",
                cp.id,
                T0 - timedelta(minutes=30),
                T0 + timedelta(minutes=minutes),
                draw(st.floats(0.5, 40.0)),
                # An EV that takes less than the point's maximum leaves room for idle shares.
                max_power_kw=draw(st.one_of(st.none(), st.floats(1.4, 11.0))),
                phases=draw(st.sampled_from([None, 1])),
            )
            evs.append(ev)
            conns.append((cp.id, ev.session_id))
        else:
            conns.append((cp.id, None))
    return Snapshot(T0, site, grid, tuple(evs), base, limits), conns


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_sites())
def test_pilots_plus_idle_shares_never_exceed_a_node_limit(case: tuple[Snapshot, list]) -> None:
    snap, conns = case
    site = snap.site
    plan = HeuristicPolicy("edf", edf).plan(snap)
    out = idle_shares_a(snap, plan, conns)
    cps = {cp.id: cp for cp in site.charge_points}
    evs = {ev.session_id: ev for ev in snap.evs}
    ends = np.array([b.timestamp() for b in snap.grid.boundaries[1:]])
    starts = np.array([b.timestamp() for b in snap.grid.starts])
    rows = []
    for (cp_id, sid), a in zip(conns, out, strict=True):
        cp = cps[cp_id]
        assert ((a == 0) | ((a >= cp.min_current_a - 1e-9) & (a <= cp.max_current_a + 1e-9))).all()
        if sid is None:
            rows.append((cp_id, a, cp.grid_phases(cp.phases)))
            continue
        ev = evs[sid]
        present = (ends > ev.arrival.timestamp()) & (starts < ev.departure.timestamp())
        # While the EV is there: on its phases; after it left: the idle share on the point's.
        rows.append((cp_id, np.where(present, a, 0.0), cp.grid_phases(ev.phases or cp.phases)))
        rows.append((cp_id, np.where(present, 0.0, a), cp.grid_phases(cp.phases)))
    loads = _node_loads(site, snap.grid, rows)
    for nid, limit in _limits(site, snap).items():
        assert (loads[nid] <= limit + 1e-6).all(), (nid, loads[nid], limit)


# -- take_inflexible ------------------------------------------------------------------------------
def test_guaranteed_minimum_takes_room_from_those_above_their_own() -> None:
    # Three 3-phase EVs on an 18.3 A connection (a dimmed site raised to 3 x 6.1 A). The plan
    # gives the first 16 A and the others 0; each is guaranteed 6.1 A. EV "c" has had all it
    # wanted after one step, so from the second step on only "a" and "b" are guaranteed.
    site = Site("s", 230.0, 18.3, (), tuple(ChargePoint(f"P{i}") for i in range(3)))
    grid = TimeGrid.uniform(T0, timedelta(minutes=15), 2)
    one_step_kwh = 6.1 * 230.0 * 3 * 0.25 / 1000.0  # 1.05 kWh
    evs = tuple(
        EVState(sid, f"P{i}", T0, T0 + timedelta(hours=4), kwh)
        for i, (sid, kwh) in enumerate((("a", 30.0), ("b", 30.0), ("c", one_step_kwh)))
    )
    snap = Snapshot(T0, site, grid, evs)
    plan = Plan(grid, ("a", "b", "c"), np.array([[16.0, 16.0], [0.0, 0.0], [0.0, 0.0]]), "test")
    g = np.full((3, 2), 6.1)
    out = guarantee_minimum(snap, plan, g)
    # Step 0: a gives up 9.9 A, all three at 6.1. Step 1: c is full; a keeps 12.2 of its 16.
    np.testing.assert_allclose(out[:, 0], [6.1, 6.1, 6.1])
    np.testing.assert_allclose(out[:, 1], [12.2, 6.1, 0.0])


def test_guarantees_that_do_not_fit_a_cable_keep_the_plan() -> None:
    # A 10 A cable cannot carry two guarantees of 6.1 A: the plan's pilots stand.
    site = Site(
        "s", 230.0, 40.0, (Node("cable", 10.0),), (ChargePoint("P0", "cable"), ChargePoint("P1", "cable"))
    )
    grid = TimeGrid.uniform(T0, timedelta(minutes=15), 1)
    evs = tuple(EVState(sid, f"P{i}", T0, T0 + timedelta(hours=2), 20.0) for i, sid in enumerate("ab"))
    plan = Plan(grid, ("a", "b"), np.array([[10.0], [0.0]]), "test")
    out = guarantee_minimum(Snapshot(T0, site, grid, evs), plan, np.full((2, 1), 6.1))
    np.testing.assert_allclose(out[:, 0], [10.0, 0.0])


def test_inflexible_load_comes_off_every_node_on_its_path() -> None:
    site = Site(
        "s",
        230.0,
        (40.0, 40.0, 36.0),
        groups=(Node("g", 20.0), Node("h", 25.0)),
        charge_points=(
            ChargePoint("X", "g", 3, "L2L3L1"),
            ChargePoint("Y", ROOT, 1, "L3L1L2"),
            ChargePoint("Z", "h", 3),
        ),
    )
    site_limit = np.array([[30.0] * 3, [50.0] * 3])
    cond = Conditions(T0, STEP, 2, node_limits_a={ROOT: site_limit})
    out = take_inflexible(cond, site, {"X": np.array([16.0, 16.0, 16.0]), "Y": np.array([0.0, 0.0, 10.0])})
    # Connection: min(time-varying, static) minus X's 16 A on every phase and Y's 10 A on L3.
    np.testing.assert_allclose(out.node_limits_a[ROOT], [[14.0, 14.0, 4.0], [24.0, 24.0, 10.0]])
    # Feeder g had no time-varying limit: its static 20 A minus X's 16 A.
    np.testing.assert_allclose(out.node_limits_a["g"], [[4.0, 4.0, 4.0], [4.0, 4.0, 4.0]])
    # Feeder h carries no inflexible load: still no time-varying limit of its own.
    assert "h" not in out.node_limits_a
    # The conditions given are left as they were.
    np.testing.assert_allclose(cond.node_limits_a[ROOT], site_limit)
    assert set(cond.node_limits_a) == {ROOT}
    assert take_inflexible(cond, site, {}) is cond


# -- ControlLoop ----------------------------------------------------------------------------------
@dataclass
class FakeLive:
    obs: Observation

    def observe(self, now: datetime) -> Observation:
        return self.obs


@dataclass
class FakeConditions:
    site_a: float
    asked: list[tuple[datetime, int]] | None = None

    def conditions(self, now: datetime, step: timedelta, n: int, observation: Observation) -> Conditions:
        if self.asked is not None:
            self.asked.append((now, n))
        return Conditions(now, step, n, node_limits_a={ROOT: np.full((n, 3), self.site_a)})


class FakeDispatcher:
    def __init__(self) -> None:
        self.calls: list[tuple[list[Order], bool]] = []

    async def dispatch(self, orders: Sequence[Order], *, force: bool) -> int:
        self.calls.append((list(orders), force))
        return len(orders)


class FixedPolicy:
    """Every EV at a fixed pilot over the whole grid."""

    name = "fixed"
    horizon_needed = True

    def __init__(self, pilots: dict[str, float]) -> None:
        self.pilots = pilots

    def plan(self, snapshot: Snapshot) -> Plan:
        ids = tuple(ev.session_id for ev in snapshot.evs)
        t = snapshot.grid.n_steps
        arr = np.array([[self.pilots[s]] * t for s in ids], dtype=float).reshape(len(ids), t)
        return Plan(snapshot.grid, ids, arr, self.name)


class FailingPolicy:
    name = "failing"
    horizon_needed = True

    def plan(self, snapshot: Snapshot) -> Plan:
        raise RuntimeError("boom")


class BlockedPolicy:
    """Plans only once ``release`` is set: it misses any deadline."""

    name = "blocked"
    horizon_needed = True

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def plan(self, snapshot: Snapshot) -> Plan:
        self.calls += 1
        self.release.wait(60.0)
        return FixedPolicy(dict.fromkeys((ev.session_id for ev in snapshot.evs), 6.0)).plan(snapshot)


def loop_site(site_a: float) -> Site:
    return Site(
        "s",
        230.0,
        site_a,
        charge_points=(ChargePoint("P1"), ChargePoint("P2", phase_rotation="L2L3L1"), ChargePoint("P3")),
    )


def two_evs(departure: datetime = T0 + timedelta(hours=2)) -> Observation:
    evs = (
        EVState("a", "P1", T0 - timedelta(minutes=10), departure, 30.0),
        EVState("b", "P2", T0 - timedelta(minutes=5), departure, 30.0),
    )
    return Observation(evs, {"a": ("P1", 1), "b": ("P2", 1)}, (("P3", 1),), {})


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_loop(
    policy: Any, site_a: float = 40.0, *, deadline_s: float = 10.0, asked: list | None = None
) -> tuple[ControlLoop, FakeDispatcher, Clock]:
    clock = Clock(T0)
    dispatcher = FakeDispatcher()
    loop = ControlLoop(
        loop_site(site_a),
        RollingHorizon(policy, STEP, timedelta(hours=4)),
        FakeLive(two_evs()),
        FakeConditions(site_a, asked),
        dispatcher,
        clock=clock,
        deadline_s=deadline_s,
    )
    return loop, dispatcher, clock


def assert_orders_keep(loop: ControlLoop, site_a: float) -> None:
    """Every step of every order: the sum of the limits on each phase within ``site_a``."""
    orders = list(loop.orders.values())
    assert orders
    n = len(orders[0].plan)
    cps = {cp.id: cp for cp in loop.site.charge_points}
    load = np.zeros((n, 3))
    for o in orders:
        assert len(o.plan) == n and o.end == orders[0].end
        cp = cps[o.charge_point_id]
        load[:, list(cp.grid_phases(o.phases or cp.phases))] += np.array([a for _, a in o.plan])[:, None]
    assert (load <= site_a + 1e-6).all(), load


@pytest.mark.asyncio
async def test_orders_that_lower_a_limit_go_out_first() -> None:
    policy = FixedPolicy({"a": 16.0, "b": 10.0})
    loop, dispatcher, clock = make_loop(policy, 32.0)
    rec = await loop.replan("interval")
    # P3 has no EV: 32 - 16 - 10 = 6 A on L1 (P1 and P3 on L1L2L3, P2 rotated).
    firsts = {k: o.first_a for k, o in loop.orders.items()}
    assert firsts == {("P1", 1): 16.0, ("P2", 1): 10.0, ("P3", 1): 6.0}
    assert rec.dispatched == 3 and rec.orders == 3 and rec.evs == 2 and rec.idle == 1
    assert len(dispatcher.calls) == 1  # nothing was told before: one batch
    policy.pilots = {"a": 6.0, "b": 16.0}
    clock.now = T0 + STEP
    await loop.replan("interval")
    downs, ups = dispatcher.calls[1:]
    assert {(o.charge_point_id, o.first_a) for o in downs[0]} == {("P1", 6.0)}
    assert {(o.charge_point_id, o.first_a) for o in ups[0]} == {("P2", 16.0), ("P3", 10.0)}
    # The plan's end did not move (it moves about once an hour): unchanged orders may be skipped.
    assert downs[1] is False and ups[1] is False
    assert_orders_keep(loop, 32.0)


class RefusingDispatcher(FakeDispatcher):
    """Takes no order to the points in ``refuse``."""

    def __init__(self, refuse: set[str]) -> None:
        super().__init__()
        self.refuse = refuse

    async def dispatch(self, orders: Sequence[Order], *, force: bool) -> int:
        self.calls.append((list(orders), force))
        return sum(o.charge_point_id not in self.refuse for o in orders)


@pytest.mark.asyncio
async def test_raising_orders_wait_while_a_lowering_one_was_not_taken() -> None:
    policy = FixedPolicy({"a": 16.0, "b": 10.0})
    loop, _, clock = make_loop(policy, 32.0)
    dispatcher = loop.dispatcher = RefusingDispatcher(set())
    await loop.replan("interval")
    before = dict(loop.orders)
    # P1 is to give 10 A to P2, but does not take its order: P2 must not get them.
    dispatcher.refuse = {"P1"}
    policy.pilots = {"a": 6.0, "b": 16.0}
    clock.now = T0 + STEP
    rec = await loop.replan("interval")
    assert len(dispatcher.calls) == 2  # the lowering batch only
    assert {o.charge_point_id for o in dispatcher.calls[1][0]} == {"P1"}
    assert rec.dispatched == 0
    assert loop.orders[("P2", 1)] == before[("P2", 1)] and loop.orders[("P3", 1)] == before[("P3", 1)]
    assert "orders not taken" in loop._pending
    # Once P1 takes it, the others get theirs.
    dispatcher.refuse = set()
    await loop.replan("event")
    assert {o.charge_point_id for o in dispatcher.calls[-1][0]} == {"P2", "P3"}
    assert loop.orders[("P2", 1)].first_a == 16.0
    assert_orders_keep(loop, 32.0)


@pytest.mark.asyncio
async def test_a_failing_policy_leads_to_a_fallback_that_keeps_the_limits() -> None:
    loop, dispatcher, _ = make_loop(FailingPolicy(), 40.0)
    rec = await loop.replan("interval")
    assert rec.status.startswith("fallback:") and "RuntimeError: boom" in rec.status
    assert rec.policy == "edf" and loop.fallbacks == 1
    assert loop.plan is not None and loop.plan.pilot_a.any()
    assert_orders_keep(loop, 40.0)
    assert sum(len(c[0]) for c in dispatcher.calls) == 3


@pytest.mark.asyncio
async def test_a_policy_past_its_deadline_leads_to_a_fallback_that_keeps_the_limits() -> None:
    policy = BlockedPolicy()
    loop, _, clock = make_loop(policy, 40.0, deadline_s=0.05)
    try:
        rec = await loop.replan("interval")
        assert rec.status.startswith("fallback:edf") and "no plan within 0.05 s" in rec.status
        assert_orders_keep(loop, 40.0)
        # The policy still runs: the next re-plan does not wait for it.
        clock.now = T0 + STEP
        rec = await loop.replan("interval")
        assert rec.status.startswith("fallback:") and "previous plan still running" in rec.status
        assert policy.calls == 1 and loop.fallbacks == 2
        assert_orders_keep(loop, 40.0)
    finally:
        policy.release.set()
        await loop.stop()


@pytest.mark.asyncio
async def test_request_before_start_does_not_crash_and_names_the_next_event_replan() -> None:
    loop, _, _ = make_loop(FixedPolicy({"a": 6.0, "b": 6.0}))
    loop.request("plug-in")
    loop.request("driver needs")
    loop.request("plug-in")
    rec = await loop.replan("event")
    assert rec.reason == "driver needs, plug-in"
    rec = await loop.replan("event")
    assert rec.reason == "event"  # nothing pending any more


@pytest.mark.asyncio
async def test_an_event_replan_keeps_the_end_of_the_last_full_one() -> None:
    asked: list[tuple[datetime, int]] = []
    loop, dispatcher, clock = make_loop(FixedPolicy({"a": 8.0, "b": 8.0}), asked=asked)
    await loop.replan("interval")
    end = T0 + timedelta(hours=2)  # the last departure (within the 4 h horizon)
    assert loop.snapshot.grid.end == end
    assert {o.end for o in loop.orders.values()} == {end}
    clock.now = T0 + timedelta(minutes=7)
    await loop.replan("event")
    grid = loop.snapshot.grid
    assert grid.start == clock.now and grid.end == end
    assert grid.boundaries[1] == T0 + timedelta(minutes=12)
    assert grid.boundaries[-1] - grid.boundaries[-2] == timedelta(minutes=3)  # cut short at the end
    assert {o.end for o in loop.orders.values()} == {end}
    assert asked[-1] == (clock.now, 23)  # ceil(113 min / 5 min)
    assert all(force is False for _, force in dispatcher.calls[1:])
    # A full re-plan keeps the end while the last departure (on the hour) stays where it is.
    n_calls = len(dispatcher.calls)
    await loop.replan("interval")
    assert loop.snapshot.grid.end == end
    assert all(force is False for _, force in dispatcher.calls[n_calls:])
    # A forced one re-sends every order.
    n_calls = len(dispatcher.calls)
    await loop.replan("interval", force=True)
    assert dispatcher.calls[n_calls:] and all(force is True for _, force in dispatcher.calls[n_calls:])


@pytest.mark.asyncio
async def test_many_evs_get_fewer_longer_steps_ahead_but_the_first_ones_stay_short() -> None:
    loop, _, _ = make_loop(FixedPolicy({"a": 8.0, "b": 8.0}))
    loop.live = FakeLive(two_evs(T0 + timedelta(hours=10)))
    await loop.replan("interval")
    assert loop.snapshot.grid.n_steps == 48  # 4 h in 5-minute steps: no limit set
    loop.max_cells = 16  # 2 EVs: at most 8 steps
    await loop.replan("interval")
    grid = loop.snapshot.grid
    steps = np.diff([b.timestamp() for b in grid.boundaries])
    assert grid.n_steps <= 8 and grid.end == T0 + timedelta(hours=4)
    assert list(steps[:4]) == [300.0] * 4  # the control interval first
    assert (steps[4:] > 300.0).all() and (steps[4:] % 300.0 == 0).all()
    assert_orders_keep(loop, 40.0)


class StepPolicy:
    """Per EV, a pilot per step (the last one repeated)."""

    name = "steps"
    horizon_needed = True

    def __init__(self, pilots: dict[str, list[float]]) -> None:
        self.pilots = pilots

    def plan(self, snapshot: Snapshot) -> Plan:
        ids = tuple(ev.session_id for ev in snapshot.evs)
        t = snapshot.grid.n_steps
        rows = [(self.pilots[s] + [self.pilots[s][-1]] * t)[:t] for s in ids]
        return Plan(snapshot.grid, ids, np.array(rows, dtype=float).reshape(len(ids), t), self.name)


@pytest.mark.asyncio
async def test_an_order_that_lowers_now_and_raises_later_goes_out_in_two_rounds() -> None:
    policy = StepPolicy({"a": [16.0, 6.0], "b": [6.0, 16.0]})
    loop, dispatcher, _ = make_loop(policy, 32.0)
    await loop.replan("interval")
    # Swapped: each lowers at one step and raises at the other.
    policy.pilots = {"a": [6.0, 16.0], "b": [16.0, 6.0]}
    await loop.replan("event")
    (first, _), (second, _) = dispatcher.calls[1:]
    clamps = {o.charge_point_id: o for o in first}
    for cp in ("P1", "P2"):  # the lower of old and new: 6 A at both steps
        assert [_at_a(clamps[cp], T0 + i * STEP) for i in range(2)] == [6.0, 6.0]
    assert {o.charge_point_id for o in second} >= {"P1", "P2"}
    # Whenever the service stops -- after the first round or the second -- what the points
    # hold keeps the limit at every step.
    held = {(o.charge_point_id, o.connector_id): o for o in dispatcher.calls[0][0]}
    for batch, _ in dispatcher.calls[1:]:
        held.update({(o.charge_point_id, o.connector_id): o for o in batch})
        step_s = np.array(
            [sum(_at_a(o, T0 + i * STEP) for o in held.values()) for i in range(4)]  # all 3-phase
        )
        assert (step_s <= 32.0 + 1e-6).all(), step_s
    assert loop.orders[("P1", 1)].plan[0][1] == 6.0 and loop.orders[("P2", 1)].plan[0][1] == 16.0


def _at_a(order: Order, t: datetime) -> float:
    out = 0.0
    for s, a in order.plan:
        if s <= t:
            out = a
    return out if t < order.end else 0.0
