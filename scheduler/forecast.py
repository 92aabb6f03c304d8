"""Expected arrivals learned from a history of sessions, as EVs the rolling MILP can plan for.

A rolling policy sees only the EVs that have arrived. When capacity binds, the energy it leaves
for later competes with EVs that have not arrived yet; knowing roughly how much will arrive,
and where, lets the plan charge now what would be crowded out later. :class:`ArrivalForecast`
learns, from sessions *before* the simulated period, the mean energy that arrives per group of
charge points (the grid phases they load), day type (weekday or weekend, local time) and block
of hours, and how long those EVs stay. :meth:`ArrivalForecast.expected` turns that into
*expected EVs* (:class:`~scheduler.snapshot.EVState` with an arrival after ``now``), one per
group and block, carrying the mean energy times ``share``: the snapshot's ``evs`` may hold such
EVs after the ones plugged in, and the MILP plans for them like any other.

An expected EV stands for the sum of several real ones at one representative point of its
group; it is a reservation of capacity, not a prediction of a session, and it is never given a
pilot (only the first step of a plan is applied and it has not arrived by then).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from models import ROOT, Session, Site, TimeGrid
from scheduler.snapshot import EVState

__all__ = ["DEFAULT_RESERVE_SCALE", "MIN_DAYS", "ArrivalForecast", "LearningReserve", "LoadForecast"]

#: Session ids of expected EVs start with this.
PREFIX = "expected:"


@dataclass(frozen=True, eq=False)
class ArrivalForecast:
    """Mean energy arriving per group of points, day type and block of hours.

    Build with :meth:`fit`. Attributes: ``groups`` (grid-phase tuples, e.g. ``(0,)`` for points
    that load L1), ``points`` (a representative charge point id per group), ``energy_kwh``
    (groups, 2, blocks) mean energy arriving per day [kWh] (day type 0 = Monday to Friday,
    1 = weekend), ``stay_h`` (groups, 2, blocks) mean stay of those EVs [h], ``tz`` and
    ``block_h``.
    """

    groups: tuple[tuple[int, ...], ...]
    points: tuple[str, ...]
    energy_kwh: np.ndarray
    stay_h: np.ndarray
    tz: str
    block_h: int

    @classmethod
    def fit(
        cls,
        history: Sequence[Session],
        site: Site,
        *,
        tz: str = "UTC",
        block_h: int = 2,
        until: datetime | None = None,
    ) -> ArrivalForecast:
        """Learn from ``history`` (sessions at points of ``site``; others are ignored).

        Parameters
        ----------
        history : sequence of Session
            Past sessions. Only those that arrived before ``until`` (if given) are used: a
            simulation must learn from before its period only.
        site : Site
            Where the forecast is used: fixes each point's group (the grid phases it loads).
        tz : str
            Time zone of the day types and hours (the site's local time).
        block_h : int
            Hours per block; must divide 24.
        until : datetime or None
            Ignore sessions arriving at or after this time.
        """
        if block_h < 1 or 24 % block_h:
            raise ValueError(f"block_h: must divide 24, got {block_h}")
        zone = ZoneInfo(tz)
        cps = {cp.id: cp for cp in site.charge_points}
        group_of = {cid: tuple(sorted(cp.grid_phases(cp.phases))) for cid, cp in cps.items()}
        groups = tuple(sorted(set(group_of.values())))
        points = tuple(next(cid for cid in sorted(cps) if group_of[cid] == g) for g in groups)
        n_b = 24 // block_h
        energy = np.zeros((len(groups), 2, n_b))
        stay = np.zeros((len(groups), 2, n_b))
        used = [s for s in history if s.charge_point_id in cps and (until is None or s.arrival < until)]
        days: list[set] = [set(), set()]
        for s in used:
            local = s.arrival.astimezone(zone)
            d = int(local.weekday() >= 5)
            days[d].add(local.date())
            g = groups.index(group_of[s.charge_point_id])
            b = local.hour // block_h
            energy[g, d, b] += s.energy_kwh
            stay[g, d, b] += s.energy_kwh * (s.departure - s.arrival).total_seconds() / 3600.0
        # Days of each type in the history's span (a day with no arrival still counts).
        if used:
            first = min(s.arrival for s in used).astimezone(zone).date()
            last = max(s.arrival for s in used).astimezone(zone).date()
            span = [first + timedelta(days=i) for i in range((last - first).days + 1)]
            n_days = np.array([sum(x.weekday() < 5 for x in span), sum(x.weekday() >= 5 for x in span)])
        else:
            n_days = np.zeros(2)
        with np.errstate(divide="ignore", invalid="ignore"):
            stay = np.where(energy > 0, stay / energy, 0.0)
            energy = np.where(n_days[None, :, None] > 0, energy / n_days[None, :, None], 0.0)
        return cls(groups, points, energy, stay, tz, block_h)

    def expected(
        self,
        now: datetime,
        end: datetime,
        step: timedelta,
        *,
        share: float = 1.0,
        min_kwh: float = 0.5,
        priority: float = 1.0,
    ) -> tuple[EVState, ...]:
        """Expected EVs arriving after ``now`` and before ``end``, on the ``step`` grid from ``now``.

        One EV per group and block (the part of the first block after ``now`` counts in
        proportion), arriving at the block's start (or the next step boundary), staying the
        mean stay (cut at ``end``), with ``share`` times the mean energy; EVs below ``min_kwh``
        are left out. ``priority`` weighs their energy in the objective (below 1: a real EV
        always comes first, while the reservation still outweighs price and CO2).
        """
        zone = ZoneInfo(self.tz)
        out: list[EVState] = []
        block = timedelta(hours=self.block_h)
        local = now.astimezone(zone)
        t = local.replace(minute=0, second=0, microsecond=0, hour=local.hour - local.hour % self.block_h)
        while t < end:
            t_next = t + block
            start = max(t, now + step)
            if start < min(t_next, end):
                frac = (min(t_next, end) - start) / block
                d = int(t.weekday() >= 5)
                b = t.hour // self.block_h
                n_steps = -(-(start - now) // step)
                arrival = now + n_steps * step
                for g, point in enumerate(self.points):
                    e = float(self.energy_kwh[g, d, b]) * share * frac
                    if e < min_kwh:
                        continue
                    stay_steps = max(round(float(self.stay_h[g, d, b]) * 3600.0 / step.total_seconds()), 1)
                    departure = min(arrival + stay_steps * step, end)
                    if departure <= arrival:
                        continue
                    out.append(
                        EVState(
                            session_id=f"{PREFIX}{g}:{arrival.isoformat()}",
                            charge_point_id=point,
                            arrival=arrival.astimezone(now.tzinfo),
                            departure=departure.astimezone(now.tzinfo),
                            energy_requested_kwh=e,
                            priority=priority,
                        )
                    )
            t = t_next
        return tuple(out)


#: Default ``scale`` of the held capacity: the mean current later arrivals want (spread over
#: their stays) times this. Calibrated on two ACN Caltech weeks that are not the benchmark's
#: (from 2019-06-10 and 2019-06-17; 41 one-phase points, 30 A per phase, German 2023 signals,
#: history from 2019-05-01): of x8, x12 and x16, the smallest with at least 99.8 % of the offline
#: optimum's energy on both (x8: 99.79 % on the first). At x12 the rolling MILP keeps 99.86 % and
#: 99.97 % of that energy there and makes 68 % and 62 % of the CO2 cut the optimum makes against
#: EDF; on the benchmark week (2019-06-03) 99.84 % and 55 %, on 2019-06-24 99.78 % and 52 %.
DEFAULT_RESERVE_SCALE = 12.0

#: Fewer past days of a type than this and :meth:`LoadForecast.reserve_a` holds everything on
#: days of that type: one Monday says little about Tuesday (measured on ACN Caltech: learning
#: from one past day only cost 7 % of a day's energy against EDF).
MIN_DAYS = 5

#: What :meth:`LoadForecast.reserve_a` holds where it has no day of that type to learn from [A]:
#: more than any node has, so everything is held (capped at the headroom by the model).
UNKNOWN_A = 1.0e6


@dataclass(frozen=True, eq=False)
class LoadForecast:
    """Current that EVs not yet arrived will want, per node, phase and time, from past days.

    Learned from a history of sessions: each past session is replayed as drawing its energy
    evenly over its stay -- the least current that fills it in time (at most its maximum) --
    and that current is added, on every node of its point's path and on the phases it loads,
    to the cell of its local arrival slot and of every slot it is plugged in (up to two days
    from the start of its arrival day). That gives, for every past day, the current by arrival
    slot and time.

    :meth:`reserve_a` answers "how much current will the EVs arriving after ``now`` want at each
    step of this grid": for every past day of the same type (Monday to Friday, or weekend), the
    sum over arrival slots after ``now``; then the ``quantile`` of those days (``None``: their
    mean) times ``scale``. The rolling MILP holds that much capacity back, softly (see
    ``models.Problem.reserve_a``): it does not move energy into it for a cleaner or cheaper
    hour, but uses it rather than leave an EV short. With fewer than ``min_days`` past days of
    the type, everything is held.

    Why spread, and why ``scale``: when capacity binds, a later EV competes for capacity over
    its whole stay, not just in its first hours. Holding the uncontrolled load (full current
    from arrival) did worse on ACN Caltech weeks -- even the exact uncontrolled load of the real
    later sessions, held back, cost more energy than EDF -- and the mean of a day type
    under-states the busy days, which ``scale`` makes up for (:data:`DEFAULT_RESERVE_SCALE`).
    Only the last ``window_days`` days of history are used.

    Attributes: ``node_ids``; ``days`` (one array per day type, (days, nodes, 3 phases, slots
    per day + 1, two days of slots), cumulative over the arrival slot) [A]; ``slot``, ``tz``,
    ``quantile``, ``scale``, ``min_days``. Build with :meth:`fit`.
    """

    node_ids: tuple[str, ...]
    days: tuple[np.ndarray, np.ndarray]
    slot: timedelta
    tz: str
    quantile: float | None = None
    scale: float = 1.0
    min_days: int = MIN_DAYS

    @classmethod
    def fit(
        cls,
        history: Sequence[Session],
        site: Site,
        *,
        tz: str = "UTC",
        slot: timedelta = timedelta(minutes=15),
        until: datetime | None = None,
        quantile: float | None = None,
        scale: float = 1.0,
        window_days: int = 56,
        min_days: int = MIN_DAYS,
    ) -> LoadForecast:
        """Learn from ``history``; sessions arriving at or after ``until`` are ignored.

        Sessions at points the site does not have load only the root node, spread evenly
        over its three phases (a 1-phase EV) or on all three (3-phase). Days in the history's
        span without any arrival count, as days with nothing to hold.
        """
        per_day = timedelta(days=1) / slot
        if slot <= timedelta(0) or per_day != int(per_day):
            raise ValueError(f"slot: must divide a day, got {slot}")
        if quantile is not None and not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile: must be in [0, 1] or None, got {quantile}")
        if not scale >= 0.0:
            raise ValueError(f"scale: must be >= 0, got {scale}")
        n_slots = int(per_day)
        zone = ZoneInfo(tz)
        cps = {cp.id: cp for cp in site.charge_points}
        node_ids = tuple(nd.id for nd in site.nodes)
        index = {nid: i for i, nid in enumerate(node_ids)}
        shape = (len(node_ids), 3, n_slots, 2 * n_slots)
        slot_h = slot.total_seconds() / 3600.0
        used = [s for s in history if until is None or s.arrival < until]
        if used and window_days > 0:
            newest = until if until is not None else max(s.arrival for s in used)
            used = [s for s in used if s.arrival >= newest - timedelta(days=window_days)]
        per_date: dict = {}
        for s in used:
            cp = cps.get(s.charge_point_id)
            if cp is not None:
                n_ph = min(s.phases or cp.phases, cp.phases)
                phase_w = np.zeros(3)
                phase_w[list(cp.grid_phases(n_ph))] = 1.0
                nodes = [index[n] for n in site.ancestors(cp.node_id)]
                max_a = cp.max_current_a
            else:
                n_ph = s.phases or 1
                phase_w = np.full(3, 1.0 if n_ph == 3 else 1.0 / 3.0)
                nodes = [index[ROOT]]
                max_a = max((c.max_current_a for c in site.charge_points), default=32.0)
            if s.max_power_kw is not None:
                max_a = min(max_a, s.max_power_kw * 1000.0 / (site.voltage_v * n_ph))
            kw = max_a * site.voltage_v * n_ph / 1000.0
            if kw <= 0 or s.energy_kwh <= 0:
                continue
            local = s.arrival.astimezone(zone)
            midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
            a = min(int((local - midnight) / slot), n_slots - 1)
            start_h = (local - midnight).total_seconds() / 3600.0
            stay_h = (s.departure - s.arrival).total_seconds() / 3600.0
            # Its energy spread evenly over its stay: the least current that would fill it.
            end_h = start_h + stay_h
            level_a = min(max_a, s.energy_kwh * 1000.0 / (max(stay_h, 1e-9) * site.voltage_v * n_ph))
            first, last = int(start_h // slot_h), min(int(np.ceil(end_h / slot_h)), 2 * n_slots)
            if last <= first:
                continue
            edges = np.arange(first, last + 1) * slot_h
            frac = (np.minimum(edges[1:], end_h) - np.maximum(edges[:-1], start_h)) / slot_h
            amps = level_a * np.clip(frac, 0.0, 1.0)
            day = per_date.setdefault(local.date(), np.zeros(shape, np.float32))
            for n in nodes:
                day[n, :, a, first:last] += phase_w[:, None] * amps[None, :]
        by_type: list[list[np.ndarray]] = [[], []]
        if used:
            first_day = min(s.arrival for s in used).astimezone(zone).date()
            last_seen = max(s.arrival for s in used)
            if until is not None:  # the days up to ``until`` count, with arrivals or not
                last_seen = max(last_seen, until - timedelta(microseconds=1))
            last_day = last_seen.astimezone(zone).date()
            empty = np.zeros(shape, np.float32)
            for i in range((last_day - first_day).days + 1):
                date = first_day + timedelta(days=i)
                by_type[int(date.weekday() >= 5)].append(per_date.get(date, empty))
        days = []
        for kept in by_type:
            if kept:
                stack = np.stack(kept)
                # Cumulative over arrival slots: the sum over a in [lo, hi) is cum[hi] - cum[lo].
                cum = np.concatenate([np.zeros_like(stack[:, :, :, :1]), np.cumsum(stack, axis=3)], axis=3)
            else:
                cum = np.zeros((0, len(node_ids), 3, n_slots + 1, 2 * n_slots), np.float32)
            cum.setflags(write=False)
            days.append(cum)
        return cls(node_ids, (days[0], days[1]), slot, tz, quantile, scale, min_days)

    def reserve_a(self, now: datetime, grid: TimeGrid) -> dict[str, np.ndarray]:
        """Node id -> (steps, 3) current wanted by EVs arriving after ``now`` [A].

        An EV counts from the first step it is plugged in for throughout; its current is read
        at the middle of each step of ``grid``. Nodes with nothing to hold are left out.
        """
        zone = ZoneInfo(self.tz)
        n_nodes = len(self.node_ids)
        n_slots = self.days[0].shape[3] - 1
        n_cols = self.days[0].shape[4]
        slot_s = self.slot.total_seconds()
        edges = grid.epoch_s()
        mid_s = (edges[:-1] + edges[1:]) / 2.0
        out = np.zeros((n_nodes, 3, len(mid_s)))
        day0 = now.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
        for offset in range(3):
            day = day0 + timedelta(days=offset)  # local midnight (wall-clock arithmetic)
            day_s = day.timestamp()
            lo = max(int(np.ceil((now.timestamp() - day_s) / slot_s - 1e-9)), 0)
            if lo >= n_slots:
                continue
            # Arrival slots of that day from ``lo`` that end by each step's start.
            hi = np.clip(np.floor((edges[:-1] - day_s) / slot_s + 1e-9).astype(int), lo, n_slots)
            col = np.floor((mid_s - day_s) / slot_s).astype(int)
            k = np.nonzero((col >= 0) & (col < n_cols) & (hi > lo))[0]
            if k.size == 0:
                continue
            cum = self.days[int(day.weekday() >= 5)]
            if cum.shape[0] < self.min_days:
                out[:, :, k] += UNKNOWN_A
                continue
            upto = cum[:, :, :, hi[k], col[k]] - cum[:, :, :, lo, col[k]]  # (days, nodes, 3, K)
            if self.quantile is None:
                out[:, :, k] += upto.mean(axis=0)
            else:
                out[:, :, k] += np.quantile(upto, self.quantile, axis=0)
        out *= self.scale
        return {nid: np.ascontiguousarray(out[n].T) for n, nid in enumerate(self.node_ids) if out[n].any()}


class LearningReserve:
    """Capacity to hold for later EVs, from history and from every EV seen since (a policy's
    ``reserve``; see :class:`~scheduler.policies.MilpPolicy`).

    It remembers each EV of the snapshots it is shown (:meth:`observe`) and, once per local
    day, refits a :class:`LoadForecast` on the given ``history`` plus those EVs, using only
    sessions that arrived before that day began -- what a live service knows. Until it has
    :data:`MIN_DAYS` past days of the type (weekday or weekend) it holds everything: no energy
    is moved into a future it knows too little about.

    Parameters
    ----------
    history : sequence of Session
        Past sessions (may be empty); those arriving at or after the first snapshot are
        ignored.
    tz : str
        Local time zone of the day types and clock slots.
    scale, quantile, window_days, min_days, slot
        As for :meth:`LoadForecast.fit`.
    """

    def __init__(
        self,
        history: Sequence[Session] = (),
        *,
        tz: str = "UTC",
        scale: float = DEFAULT_RESERVE_SCALE,
        quantile: float | None = None,
        window_days: int = 56,
        min_days: int = MIN_DAYS,
        slot: timedelta = timedelta(minutes=15),
    ) -> None:
        self.tz = tz
        self.scale = scale
        self.quantile = quantile
        self.window_days = window_days
        self.min_days = min_days
        self.slot = slot
        self._sessions: dict[str, Session] = {s.id: s for s in history}
        self._site: Site | None = None
        self._day = None
        self._forecast: LoadForecast | None = None

    def observe(self, now: datetime, site: Site, evs: Sequence[EVState]) -> None:
        """Remember the EVs plugged in at ``now`` (expected ones, arriving later, are skipped).

        At the first call, history from ``now`` on is dropped: it is the future.
        """
        if self._site is None:
            self._sessions = {k: s for k, s in self._sessions.items() if s.arrival < now}
        self._site = site
        for ev in evs:
            if ev.arrival > now or ev.session_id in self._sessions or ev.session_id.startswith(PREFIX):
                continue
            self._sessions[ev.session_id] = Session(
                id=ev.session_id,
                charge_point_id=ev.charge_point_id,
                arrival=ev.arrival,
                departure=ev.departure,
                energy_kwh=ev.energy_requested_kwh,
                max_power_kw=ev.max_power_kw,
                phases=ev.phases,
            )

    def reserve_a(self, now: datetime, grid: TimeGrid) -> dict[str, np.ndarray]:
        """Node id -> (steps, 3) current to hold [A] (see :meth:`LoadForecast.reserve_a`)."""
        if self._site is None:
            raise RuntimeError("LearningReserve: observe() a snapshot before asking for a reserve")
        zone = ZoneInfo(self.tz)
        midnight = now.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
        if self._forecast is None or midnight != self._day:
            self._day = midnight
            self._forecast = LoadForecast.fit(
                list(self._sessions.values()),
                self._site,
                tz=self.tz,
                slot=self.slot,
                until=midnight,
                quantile=self.quantile,
                scale=self.scale,
                window_days=self.window_days,
                min_days=self.min_days,
            )
        return self._forecast.reserve_a(now, grid)
