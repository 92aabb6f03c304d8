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

from models import Session, Site
from scheduler.snapshot import EVState

__all__ = ["ArrivalForecast"]

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
