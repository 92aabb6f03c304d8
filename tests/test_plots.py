"""Figures: they draw what they say, write files, and mark the offline optimum.

Axes come from ``matplotlib.figure.Figure``: no pyplot, no window, whatever the backend.
"""

from __future__ import annotations

import pandas as pd
import pytest

from scheduler.plots import OPTIMUM, comparison_figure, plot_comparison, plot_site_load, plot_sweep
from scheduler.policies import make_policy
from scheduler.simulator import simulate
from scheduler.sweep import nox_block


@pytest.fixture(scope="module")
def results():
    built = nox_block(4, 3, days=1, feeder_limit_a=20.0, transformer_limit_a=80.0)
    return {
        name: simulate(built.scenario, make_policy(name), start=built.start)
        for name in ("uncontrolled", "edf", OPTIMUM)
    }


def test_plot_comparison_writes_one_figure_with_a_panel_per_policy(results, tmp_path) -> None:
    fig = comparison_figure(results)
    assert len(fig.axes) == len(results) + 1
    bars = fig.axes[-1]
    assert [t.get_text() for t in bars.get_yticklabels()] == list(results)
    labels = {line.get_label() for line in bars.get_lines()}
    assert {"requested", "offline optimum"} <= labels
    path = plot_comparison(results, tmp_path / "out" / "comparison.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_site_load_draws_three_phases_and_the_limit(results) -> None:
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    plot_site_load(results["edf"], ax)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:3] == ["L1", "L2", "L3"] and "limit" in labels
    limit = next(line for line in ax.get_lines() if line.get_label() == "limit")
    assert max(limit.get_ydata()) == pytest.approx(80.0)
    ax2 = Figure().add_subplot()
    plot_site_load(results["edf"], ax2, node="cable-1")
    assert "cable-1" in ax2.get_ylabel()
    with pytest.raises(ValueError, match="unknown 'cable-9'"):
        plot_site_load(results["edf"], Figure().add_subplot(), node="cable-9")


def test_plot_sweep_averages_seeds_and_puts_the_optimum_on_top() -> None:
    from matplotlib.figure import Figure

    df = pd.DataFrame(
        {
            "limit_a": [20, 20, 40, 40, 20, 40, 20],
            "policy": [OPTIMUM, OPTIMUM, OPTIMUM, OPTIMUM, "edf", "edf", "edf"],
            "seed": [1, 2, 1, 2, 1, 1, 2],
            "energy_delivered_kwh": [10.0, 12.0, 20.0, 22.0, 9.0, 19.0, None],
            "error": [None, None, None, None, None, None, "case 6 [...]: boom"],
        }
    )
    ax = plot_sweep(df, "limit_a", "energy_delivered_kwh", "policy", Figure().add_subplot())
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["edf", OPTIMUM]  # optimum drawn last
    assert list(lines[OPTIMUM].get_ydata()) == [11.0, 21.0]
    assert lines[OPTIMUM].get_zorder() > lines["edf"].get_zorder()
    with pytest.raises(KeyError, match="n_points"):
        plot_sweep(df, "n_points", "energy_delivered_kwh", ax=Figure().add_subplot())
