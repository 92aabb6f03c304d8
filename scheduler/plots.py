"""Figures for analysts: site load against the limit, policies side by side, sweep curves.

* :func:`plot_site_load` -- current per phase at a node (the connection by default, base load
  included) against its limit over time, on one axes.
* :func:`comparison_figure` / :func:`plot_comparison` -- several policies on one scenario: the
  load of each (small multiples, shared axes) and energy delivered per policy, the offline
  optimum marked; ``plot_comparison`` writes the file (``noxblock compare`` uses it).
* :func:`plot_sweep` -- a sweep's KPI ``y`` over parameter ``x``, one line per ``hue``; the mean
  over the other parameters (seeds) with their range as a band; the offline optimum on top.

Figures that go to a file are built on :class:`matplotlib.figure.Figure` directly: no GUI, no
global pyplot state. Functions that create axes for a notebook use pyplot, falling back to the
``Agg`` backend when there is no display.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models import PHASES, ROOT
from scheduler.simulator import SimulationResult

__all__ = ["OPTIMUM", "comparison_figure", "plot_comparison", "plot_site_load", "plot_sweep"]

#: The yardstick's policy name: drawn on top and marked in every figure.
OPTIMUM = "offline-optimal"
_PHASE_COLOURS = ("tab:brown", "tab:gray", "tab:purple")  # L1 L2 L3, as in the IEC wire colours


def _pyplot() -> Any:
    """pyplot, on ``Agg`` when nothing could show a window (and nobody chose a backend)."""
    import matplotlib

    headless = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND") and headless:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _node_index(result: SimulationResult, node: str) -> int:
    ids = [nd.id for nd in result.scenario.site.nodes]
    if node not in ids:
        raise ValueError(f"node: unknown {node!r}; one of {', '.join(ids)}")
    return ids.index(node)


def node_load_a(result: SimulationResult, node: str = ROOT) -> tuple[np.ndarray, np.ndarray]:
    """(T, 3) current drawn per phase at ``node`` -- with the base load at the connection -- and
    (T, 3) its limit [A] (``inf``: none)."""
    j = _node_index(result, node)
    load = result.phase_current_a("current")[j]
    if node == ROOT:
        load = load + result.base_load_a()
    return load, result.limits_a()[j]


def plot_site_load(
    result: SimulationResult,
    ax: Any = None,
    *,
    node: str = ROOT,
    title: str | None = None,
    legend: bool = True,
) -> Any:
    """Current per phase at ``node`` against its limit over time [A]; returns the axes.

    At the connection (``node="site"``, default) the base load is included and drawn as a
    shaded band, so the gap between the lines and the band is charging.
    """
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(10, 3.5))
    load, limit = node_load_a(result, node)
    t = [*result.grid.starts, result.grid.end]  # aware datetimes; matplotlib draws them in UTC

    def stairs(y: np.ndarray) -> np.ndarray:  # hold the last value to the end of the grid
        return np.append(y, y[-1:])

    if node == ROOT:
        base = result.base_load_a().max(axis=1)
        if base.any():
            ax.fill_between(t, stairs(base), step="post", color="0.85", lw=0, label="base load (max phase)")
    for f, phase in enumerate(PHASES):
        ax.step(t, stairs(load[:, f]), where="post", color=_PHASE_COLOURS[f], lw=1.0, label=phase)
    finite = np.isfinite(limit)
    if finite.any():
        lim = np.where(finite, limit, np.nan)
        if np.allclose(lim, lim[:, :1], equal_nan=True):
            ax.step(t, stairs(lim[:, 0]), where="post", color="k", ls="--", lw=1.2, label="limit")
        else:
            for f, phase in enumerate(PHASES):
                ax.step(t, stairs(lim[:, f]), where="post", color=_PHASE_COLOURS[f], ls="--", lw=1.0,
                        label=f"limit {phase}")  # fmt: skip
    ax.set_ylabel(f"{node} current per phase [A]")
    ax.set_xlabel("time (UTC)")
    ax.set_ylim(bottom=0)
    ax.set_title(title if title is not None else f"{result.policy}: {result.scenario.name} / {node}")
    if legend:
        ax.legend(loc="upper right", fontsize="small", ncol=5)
    ax.figure.autofmt_xdate()
    return ax


def comparison_figure(results: Mapping[str, SimulationResult], *, node: str = ROOT) -> Any:
    """One figure: the load at ``node`` for each policy (left, one row each, shared axes) and
    energy delivered per policy (right; the offline optimum as a line, every bar's share of it)."""
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("results: nothing to compare")
    names = list(results)
    n = len(names)
    fig = Figure(figsize=(14, 1.2 + 2.2 * n), layout="constrained")
    gs = fig.add_gridspec(n, 2, width_ratios=(3, 1))
    first = None
    for i, name in enumerate(names):
        ax = fig.add_subplot(gs[i, 0], sharex=first, sharey=first)
        first = first or ax
        plot_site_load(results[name], ax, node=node, title=name, legend=i == 0)
        if i < n - 1:
            ax.tick_params(labelbottom=False)
    bar = fig.add_subplot(gs[:, 1])
    energy_kwh = np.array([float(results[k].energy_kwh.sum()) for k in names])
    requested_kwh = float(sum(s.energy_kwh for s in next(iter(results.values())).sessions))
    colours = ["k" if k == OPTIMUM else "tab:blue" for k in names]
    y = np.arange(n)
    bar.barh(y, energy_kwh, height=0.6, color=colours, alpha=0.8)
    bar.set_yticks(y, names)
    bar.invert_yaxis()
    bar.axvline(requested_kwh, color="tab:red", ls=":", lw=1.2, label="requested")
    best = energy_kwh[names.index(OPTIMUM)] if OPTIMUM in names else None
    if best is not None:
        bar.axvline(best, color="k", ls="--", lw=1.2, label="offline optimum")
    for yi, e in zip(y, energy_kwh, strict=True):
        text = f"{e:.0f} kWh" + (f"  {100 * e / best:.1f} %" if best else "")
        bar.text(e, yi, " " + text, va="center", fontsize="small")
    bar.set_xlabel("energy delivered [kWh]")
    bar.set_xlim(0, max(requested_kwh, energy_kwh.max(initial=0.0)) * 1.35 or 1.0)
    bar.legend(loc="lower right", fontsize="small")
    bar.set_title("energy delivered")
    return fig


def plot_comparison(results: Mapping[str, SimulationResult], path: str | os.PathLike[str], **kw: Any) -> Path:
    """Write :func:`comparison_figure` to ``path`` (format from the suffix, e.g. ``.png``)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    comparison_figure(results, **kw).savefig(out, dpi=110)
    return out


def plot_sweep(
    df: Any,
    x: str,
    y: str,
    hue: str | None = "policy",
    ax: Any = None,
    *,
    band: bool = True,
    optimum: str = OPTIMUM,
) -> Any:
    """A sweep's ``y`` over ``x``, one line per value of ``hue``; returns the axes.

    Rows with an ``error`` are left out. Where several rows share ``x`` and ``hue`` (seeds,
    other parameters) the line is their mean and, with ``band``, their range is shaded. The
    ``hue`` value ``optimum`` is drawn black and on top: the yardstick.
    """
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(7, 4.5))
    for col in (x, y) + ((hue,) if hue else ()):
        if col not in df.columns:
            raise KeyError(f"{col!r} is not a column of the sweep (have {', '.join(map(str, df.columns))})")
    if "error" in df.columns:
        df = df[df["error"].isna()]
    groups = [(None, df)] if hue is None else list(df.groupby(hue, sort=False))
    groups.sort(key=lambda g: g[0] == optimum)  # the yardstick last, on top
    for key, part in groups:
        stats = part.groupby(x)[y].agg(["mean", "min", "max"]).sort_index()
        top = key == optimum
        style = {"color": "k", "lw": 2.2, "marker": "s", "zorder": 5} if top else {"marker": "o", "lw": 1.4}
        (line,) = ax.plot(stats.index, stats["mean"], label=None if key is None else str(key), **style)
        if band and (stats["max"] > stats["min"]).any():
            ax.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    if hue is not None:
        ax.legend(title=hue, fontsize="small")
    return ax
