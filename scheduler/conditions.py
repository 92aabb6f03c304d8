"""Conditions at the site over time: base load, limits in force, price and emission signals.

:class:`Conditions` holds them on a fine, regular base grid (the control interval), built once
from whatever the files or the grid operator gave; :meth:`Conditions.window` cuts out and
aggregates the part a planning grid needs -- which may have coarser steps further ahead. Safety
decides the aggregation: the *tightest* limit and the *largest* base load over a step, the mean
price and intensity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import numpy as np

from models import ROOT, Signals, TimeGrid

__all__ = ["Conditions", "TimeSeries"]


class TimeSeries(Protocol):
    """Anything that gives a value per interval start, ``NaN`` where it has none."""

    def on_grid(self, starts: Sequence[datetime]) -> np.ndarray: ...


@dataclass(frozen=True, eq=False)
class Conditions:
    """Site conditions on a regular grid of ``step`` from ``start`` (``n`` intervals).

    Parameters
    ----------
    start : datetime
        Start of the first interval (UTC).
    step : timedelta
        Interval length.
    base_load_a : (n, 3) array or None
        Inflexible load per phase at the connection [A].
    node_limits_a : mapping node id -> (n, 3) array
        Time-varying limits per node and phase [A]; ``inf`` = no extra limit. The site
        connection is node ``"site"``.
    price_eur_per_mwh, co2_g_per_kwh : (n,) array or None
        Signals; ``NaN`` where none is known.

    Past the last interval every series holds its last value (a signal holds until the next).
    """

    start: datetime
    step: timedelta
    n: int
    base_load_a: np.ndarray | None = None
    node_limits_a: Mapping[str, np.ndarray] = field(default_factory=dict)
    price_eur_per_mwh: np.ndarray | None = None
    co2_g_per_kwh: np.ndarray | None = None

    @classmethod
    def from_series(
        cls,
        start: datetime,
        step: timedelta,
        n: int,
        *,
        base_load: TimeSeries | None = None,
        site_limit_a: TimeSeries | None = None,
        node_limits: Mapping[str, TimeSeries] | None = None,
        price: TimeSeries | None = None,
        co2: TimeSeries | None = None,
    ) -> Conditions:
        """Sample series (anything with ``on_grid``) on the regular grid.

        Before a series' first value: base load 0, no extra limit, no signal (``NaN``).
        """
        starts = [start + i * step for i in range(n)]

        def col(series: TimeSeries | None, width: int) -> np.ndarray | None:
            if series is None:
                return None
            arr = np.asarray(series.on_grid(starts), dtype=float)
            if arr.ndim == 1:
                arr = arr[:, None]
            if arr.shape[1] == 1 and width > 1:
                arr = np.repeat(arr, width, axis=1)
            if arr.shape != (n, width):
                raise ValueError(f"series on grid: expected shape {(n, width)}, got {arr.shape}")
            return arr

        base = col(base_load, 3)
        if base is not None:
            base = np.nan_to_num(base, nan=0.0)
        limits: dict[str, np.ndarray] = {}
        site = col(site_limit_a, 3)
        if site is not None:
            limits[ROOT] = np.where(np.isnan(site), np.inf, site)
        for node_id, series in (node_limits or {}).items():
            arr = col(series, 3)
            assert arr is not None
            arr = np.where(np.isnan(arr), np.inf, arr)
            limits[node_id] = np.minimum(limits[node_id], arr) if node_id in limits else arr
        p = col(price, 1)
        c = col(co2, 1)
        return cls(
            start=start,
            step=step,
            n=n,
            base_load_a=base,
            node_limits_a=limits,
            price_eur_per_mwh=None if p is None else p[:, 0],
            co2_g_per_kwh=None if c is None else c[:, 0],
        )

    def index(self, when: datetime) -> int:
        """Index of the base interval containing ``when`` (may be outside ``[0, n)``)."""
        return int((when - self.start) // self.step)

    def _fine(self, arr: np.ndarray, i0: int, i1: int) -> np.ndarray:
        """Rows ``i0..i1-1``, holding the first/last row outside the range."""
        idx = np.clip(np.arange(i0, i1), 0, self.n - 1)
        return arr[idx]

    def window(self, grid: TimeGrid) -> tuple[np.ndarray | None, dict[str, np.ndarray], Signals]:
        """Base load, node limits and signals on ``grid``, whose boundaries lie on this grid (the
        last may end inside a base interval: that whole interval counts).

        Returns
        -------
        base_load_a : (T, 3) or None -- the largest over each step [A]
        node_limits_a : node id -> (T, 3) -- the tightest over each step [A]
        signals : Signals -- mean price and intensity over each step; a step with no value
            takes the nearest known one, and a series with no value at all is left out.
        """
        b = grid.boundaries
        edges = np.array([self.index(t) for t in b])
        if np.any([(t - self.start) % self.step for t in b[:-1]]):
            raise ValueError("grid boundaries must lie on the conditions' base grid")
        if (b[-1] - self.start) % self.step:
            edges[-1] += 1  # a last step that ends inside a base interval takes all of it
        i0, i1 = int(edges[0]), int(edges[-1])
        rel = edges - i0
        lengths = np.diff(rel)

        def reduce(arr: np.ndarray, how: str) -> np.ndarray:
            fine = self._fine(arr, i0, i1)
            if np.all(lengths == 1):
                return fine
            func = {"max": np.maximum, "min": np.minimum, "sum": np.add}[how]
            out = func.reduceat(fine, rel[:-1], axis=0)
            if how == "sum":
                out = out / (lengths if out.ndim == 1 else lengths[:, None])
            return out

        base = None if self.base_load_a is None else reduce(self.base_load_a, "max")
        limits = {nid: reduce(arr, "min") for nid, arr in self.node_limits_a.items()}
        signals = {}
        for name in ("price_eur_per_mwh", "co2_g_per_kwh"):
            arr = getattr(self, name)
            if arr is None:
                continue
            fine = self._fine(arr, i0, i1)
            if np.isnan(fine).all():
                continue
            if np.isnan(fine).any():  # nearest known value fills a gap
                known = np.nonzero(~np.isnan(fine))[0]
                pos = np.clip(np.searchsorted(known, np.arange(len(fine))), 0, len(known) - 1)
                prev = np.clip(pos - 1, 0, len(known) - 1)
                pick = np.where(
                    np.abs(known[prev] - np.arange(len(fine))) <= np.abs(known[pos] - np.arange(len(fine))),
                    known[prev],
                    known[pos],
                )
                fine = fine[pick]
            signals[name] = fine if np.all(lengths == 1) else np.add.reduceat(fine, rel[:-1]) / lengths
        return base, limits, Signals(**signals)

    def site_limit_a(self, i: int) -> np.ndarray:
        """(3,) extra limit at the connection in base interval ``i`` [A] (``inf`` if none)."""
        arr = self.node_limits_a.get(ROOT)
        if arr is None:
            return np.full(3, np.inf)
        return arr[min(max(i, 0), self.n - 1)]
