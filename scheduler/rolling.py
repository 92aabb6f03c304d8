"""The rolling-horizon loop's one decision: state in, snapshot built, policy asked, pilots out.

The simulator and the live service call :meth:`RollingHorizon.decide` every control interval
(and the live service at once on events). Each call plans from ``now`` over the look-ahead
horizon -- cut short at the last departure of the EVs known, since nothing can happen after --
and the pilots of the plan's first step are applied; the rest of the plan is what a charge
point follows if the central system goes quiet.

The planning grid may be *graded*: control-interval steps for ``fine_span``, coarser steps
beyond it, so that a 24 h look-ahead does not cost 96 steps per EV. Safety lives in the first
step only, and that one is always at full resolution; coarse steps carry the tightest limit
and the largest base load over their span (:meth:`Conditions.window`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from models import Site, TimeGrid
from scheduler.conditions import Conditions
from scheduler.policies import Policy
from scheduler.snapshot import EVState, Plan, Snapshot

__all__ = ["RollingHorizon"]

log = logging.getLogger(__name__)


@dataclass
class RollingHorizon:
    """One policy, re-planned every control interval over a look-ahead horizon.

    Parameters
    ----------
    policy : Policy
    step : timedelta
        Control interval: how often pilots change and the first step of every plan.
    horizon : timedelta
        Look-ahead of a plan.
    coarse_step : timedelta or None
        Step length beyond ``fine_span`` (a multiple of ``step``); ``None``: uniform grid.
    fine_span : timedelta
        How far ahead the grid keeps control-interval steps.
    """

    policy: Policy
    step: timedelta
    horizon: timedelta
    coarse_step: timedelta | None = None
    fine_span: timedelta = timedelta(hours=4)

    def __post_init__(self) -> None:
        if self.step <= timedelta(0):
            raise ValueError(f"step: must be positive, got {self.step}")
        if self.horizon < self.step:
            raise ValueError(f"horizon: must be at least one step ({self.step}), got {self.horizon}")
        if self.coarse_step is not None and (
            self.coarse_step < self.step or self.coarse_step % self.step != timedelta(0)
        ):
            raise ValueError(f"coarse_step: must be a multiple of step {self.step}, got {self.coarse_step}")

    def grid(self, now: datetime, evs: Sequence[EVState]) -> TimeGrid:
        """Planning grid from ``now``: to the horizon or the last departure, whichever is first."""
        if not self.policy.horizon_needed:
            return TimeGrid((now, now + self.step))
        last = max((ev.departure for ev in evs), default=now + self.step)
        span = min(self.horizon, max(last - now, self.step))
        n_fine = -(-span // self.step)  # ceil: the grid covers the last departure
        span = n_fine * self.step
        if self.coarse_step is None or span <= self.fine_span:
            return TimeGrid.uniform(now, self.step, n_fine)
        fine_n = max(int(self.fine_span // self.step), 1)
        b = [now + i * self.step for i in range(fine_n + 1)]
        end = now + span
        while b[-1] < end:
            b.append(min(b[-1] + self.coarse_step, end))
        return TimeGrid(tuple(b))

    def snapshot(
        self,
        now: datetime,
        site: Site,
        evs: Sequence[EVState],
        conditions: Conditions,
        *,
        max_unbalance_a: float | None = None,
        grid: TimeGrid | None = None,
    ) -> Snapshot:
        """What the policy sees at ``now`` (on ``grid`` if given, else :meth:`grid`)."""
        grid = grid or self.grid(now, evs)
        base, limits, signals = conditions.window(grid)
        return Snapshot(
            now=now,
            site=site,
            grid=grid,
            evs=tuple(evs),
            base_load_a=base,
            node_limits_a=limits,
            signals=signals,
            max_unbalance_a=max_unbalance_a,
        )

    def decide(
        self,
        now: datetime,
        site: Site,
        evs: Sequence[EVState],
        conditions: Conditions,
        *,
        max_unbalance_a: float | None = None,
    ) -> Plan:
        """Plan from ``now``; with no EV to plan for, an empty plan of one step."""
        if not evs:
            grid = TimeGrid((now, now + self.step))
            return Plan(grid, (), np.zeros((0, 1)), self.policy.name)
        snap = self.snapshot(now, site, evs, conditions, max_unbalance_a=max_unbalance_a)
        return self.policy.plan(snap)
