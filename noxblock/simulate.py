"""``noxblock simulate`` and ``noxblock compare``: replay sessions on a site under policies.

``simulate`` writes ``DIR/kpis.json``, ``DIR/setpoints.csv`` (the contract's two outputs) and
``DIR/sessions.csv`` (per-session fulfilment). ``compare`` runs several policies on one scenario
and writes one directory per policy, ``comparison.csv`` and, with matplotlib installed, a plot.
Bad input exits with status 2 and a message naming file, row and field.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from models import ProblemError, Session, Weights
from scheduler.errors import InputError
from scheduler.forecast import DEFAULT_RESERVE_SCALE
from scheduler.kpis import EmissionFactors, kpis, session_table
from scheduler.loaders import load_sessions
from scheduler.policies import POLICY_NAMES, make_policy
from scheduler.simulator import Scenario, SimulationResult, Taper, simulate

__all__ = ["add_compare_arguments", "add_simulate_arguments", "run_compare", "run_simulate"]

log = logging.getLogger(__name__)


def parse_duration(text: str) -> timedelta:
    """``15min``, ``1h``, ``24h``, ``1d``, ``900s`` or ISO 8601 ``PT15M`` as a positive duration."""
    try:
        td = pd.Timedelta(text)
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 15min, 1h, 24h)") from None
    if pd.isna(td) or td <= pd.Timedelta(0):
        raise argparse.ArgumentTypeError(f"duration must be positive: {text!r}")
    return td.to_pytimedelta()


def parse_time(text: str) -> datetime:
    """ISO 8601 with a UTC offset."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not ISO 8601: {text!r}") from None
    if t.tzinfo is None:
        raise argparse.ArgumentTypeError(f"needs a UTC offset (e.g. {text}+00:00): {text!r}")
    return t


class _Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, label: str, stream: TextIO, enabled: bool) -> None:
        self.label, self.stream, self.enabled = label, stream, enabled
        self.t0 = time.perf_counter()
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        pct = int(100 * done / max(total, 1))
        if pct == self.last and done != total:
            return
        self.last = pct
        bar = "#" * (pct // 4) + "." * (25 - pct // 4)
        secs = time.perf_counter() - self.t0
        self.stream.write(f"\r{self.label:<16} [{bar}] {pct:3d}% {done}/{total} intervals {secs:6.1f} s")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", required=True, type=Path, help="site TOML (contract format)")
    p.add_argument("--sessions", required=True, type=Path, help="sessions CSV (contract format)")
    p.add_argument("--signals", type=Path, help="signals CSV: price, CO2, grid-operator limit")
    p.add_argument("--step", type=parse_duration, default=timedelta(minutes=15), help="control interval")
    p.add_argument("--horizon", type=parse_duration, default=timedelta(hours=24), help="look-ahead")
    p.add_argument("--start", type=parse_time, help="start, ISO 8601 with offset (default: first arrival)")
    p.add_argument("--end", type=parse_time, help="end, ISO 8601 with offset (default: last departure)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--taper", action="store_true", help="EVs draw less near full")
    p.add_argument("--time-limit", type=float, default=None, help="solver time limit per plan [s]")
    p.add_argument("--co2-eur-per-kg", type=float, default=Weights().co2_eur_per_kg,
                   help="shadow price of CO2 in the MILP's objective [EUR/kg]")  # fmt: skip
    p.add_argument("--coarse-step", type=parse_duration, default=None,
                   help="rolling MILP: steps this long beyond the first 4 h ahead (faster)")  # fmt: skip
    p.add_argument("--shift-window", type=parse_duration, default=None,
                   help="rolling MILP: how far ahead price/CO2 may move energy (default: all)")  # fmt: skip
    p.add_argument("--history", type=Path, default=None,
                   help="rolling MILP: past sessions CSV (contract format), to learn from")  # fmt: skip
    p.add_argument("--timezone", type=_zone, default="UTC",
                   help="the site's time zone (IANA) for learned day types and hours")  # fmt: skip
    p.add_argument("--reserve-scale", type=_non_negative, default=DEFAULT_RESERVE_SCALE,
                   help="rolling MILP: capacity held for EVs still to come, times the learned mean "
                   f"uncontrolled load (0 = off; default {DEFAULT_RESERVE_SCALE:g})")  # fmt: skip
    p.add_argument("--ev-kwh-per-100km", type=float, default=EmissionFactors().ev_consumption_kwh_per_100km,
                   help="EV consumption for NOx avoided [kWh/100 km]")  # fmt: skip
    p.add_argument("--replaced-nox-mg-per-km", type=float, default=EmissionFactors().replaced_nox_mg_per_km,
                   help="NOx of the car an EV replaces [mg/km]")  # fmt: skip
    p.add_argument("--grid-nox-g-per-kwh", type=float, default=EmissionFactors().grid_nox_g_per_kwh,
                   help="NOx of generating a kWh [g/kWh]")  # fmt: skip
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")  # fmt: skip


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise argparse.ArgumentTypeError(
            f"unknown time zone {name!r} (an IANA name, e.g. Europe/Berlin)"
        ) from err
    return name


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from err
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def add_simulate_arguments(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("--policy", choices=POLICY_NAMES, default="milp")


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument(
        "--policies",
        default="uncontrolled,equal-share,edf,llf,milp,offline-optimal",
        help="comma-separated policies",
    )


def _factors(args: argparse.Namespace) -> EmissionFactors:
    return EmissionFactors(
        ev_consumption_kwh_per_100km=args.ev_kwh_per_100km,
        replaced_nox_mg_per_km=args.replaced_nox_mg_per_km,
        grid_nox_g_per_kwh=args.grid_nox_g_per_kwh,
    )


def _run_one(
    scenario: Scenario, name: str, args: argparse.Namespace, history: list[Session] | None = None
) -> SimulationResult:
    policy = make_policy(
        name,
        co2_eur_per_kg=args.co2_eur_per_kg,
        time_limit_s=args.time_limit,
        shift_window_h=None if args.shift_window is None else args.shift_window.total_seconds() / 3600.0,
        reserve_scale=args.reserve_scale,
        history=history or (),
        tz=args.timezone,
    )
    show = sys.stderr.isatty() if args.progress is None else args.progress
    return simulate(
        scenario,
        policy,
        step=args.step,
        horizon=args.horizon,
        start=args.start,
        end=args.end,
        taper=Taper() if args.taper else None,
        coarse_step=args.coarse_step,
        progress=_Progress(name, sys.stderr, show),
    )


def write_outputs(result: SimulationResult, out: Path, factors: EmissionFactors) -> dict[str, Any]:
    """Write ``kpis.json``, ``setpoints.csv`` and ``sessions.csv`` into ``out``; return the KPIs."""
    out.mkdir(parents=True, exist_ok=True)
    figures = kpis(result, factors)
    (out / "kpis.json").write_text(json.dumps(figures, indent=2) + "\n")
    sp = result.setpoints()
    sp["time"] = sp["time"].map(lambda t: t.isoformat())
    sp.to_csv(out / "setpoints.csv", index=False, float_format="%.4f")
    st = session_table(result)
    for col in ("arrival", "departure"):
        st[col] = st[col].map(lambda t: t.isoformat())
    st.to_csv(out / "sessions.csv", index=False, float_format="%.4f")
    return figures


def _load(args: argparse.Namespace) -> Scenario:
    scenario = Scenario.from_files(args.site, args.sessions, args.signals)
    if not scenario.sessions and (args.start is None or args.end is None):
        raise InputError(str(args.sessions), None, None, "no sessions: give --start and --end")
    return scenario


def _history(args: argparse.Namespace, scenario: Scenario) -> list[Session]:
    """The ``--history`` sessions (at the site's stations), or none."""
    return [] if args.history is None else load_sessions(args.history, scenario.site)


def _check_period(args: argparse.Namespace) -> None:
    if args.start is not None and args.end is not None and args.end <= args.start:
        raise InputError("--end", None, None, f"{args.end.isoformat()} is not after --start")
    if args.horizon < args.step:
        raise InputError("--horizon", None, None, f"{args.horizon} is shorter than --step {args.step}")


def _fail(err: Exception) -> int:
    print(f"noxblock: error: {err}", file=sys.stderr)
    return 2


def run_simulate(args: argparse.Namespace) -> int:
    try:
        _check_period(args)
        factors = _factors(args)
        scenario = _load(args)
        history = _history(args, scenario)
        result = _run_one(scenario, args.policy, args, history)
    except (InputError, ProblemError, ValueError) as err:
        return _fail(err)
    figures = write_outputs(result, args.out, factors)
    print(
        f"{figures['policy']}: {figures['sessions']} sessions, "
        f"{figures['energy_delivered_kwh']:.1f} of {figures['energy_requested_kwh']:.1f} kWh delivered, "
        f"peak {figures['max_phase_current_a']:.1f} A per phase, "
        f"limit violation {figures['limit_violation_max_a']:.2f} A, "
        f"{figures['replans']} plans in {figures['wall_s']:.1f} s -> {args.out}"
    )
    return 0


def run_compare(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    bad = [n for n in names if n not in POLICY_NAMES]
    if bad:
        return _fail(ValueError(f"--policies: unknown {', '.join(bad)}; one of {', '.join(POLICY_NAMES)}"))
    try:
        _check_period(args)
        factors = _factors(args)
        scenario = _load(args)
        history = _history(args, scenario)
        results = {name: _run_one(scenario, name, args, history) for name in names}
    except (InputError, ProblemError, ValueError) as err:
        return _fail(err)
    rows = []
    for name, result in results.items():
        figures = write_outputs(result, args.out / name, factors)
        rows.append(comparison_row(figures))
    table = pd.DataFrame(rows).set_index("policy")
    if "offline-optimal" in table.index:
        best = table.loc["offline-optimal", "energy_delivered_kwh"]
        table["of_optimum"] = table["energy_delivered_kwh"] / best
    table.to_csv(args.out / "comparison.csv", float_format="%.4f")
    print(table.to_string(float_format=lambda x: f"{x:.3f}"))
    try:
        from scheduler.plots import plot_comparison
    except ImportError:  # matplotlib is optional
        log.info("matplotlib not installed: no plot")
    else:
        path = plot_comparison(results, args.out / "comparison.png")
        print(f"plot: {path}")
    return 0


def comparison_row(figures: dict[str, Any]) -> dict[str, Any]:
    """The columns of the comparison table from one policy's KPIs."""
    return {
        "policy": figures["policy"],
        "energy_delivered_kwh": figures["energy_delivered_kwh"],
        "energy_share": figures["energy_share"],
        "max_phase_current_a": figures["max_phase_current_a"],
        "limit_violation_max_a": figures["limit_violation_max_a"],
        "cost_eur": figures["cost_eur"],
        "co2_kg": figures["co2_kg"],
        "co2_g_per_kwh": figures["co2_g_per_kwh"],
        "nox_avoided_kg": figures["nox_avoided_kg"],
        "jain_fairness": figures["jain_fairness"],
        "solve_median_s": figures["solve_time_s"]["median"],
        "wall_s": figures["wall_s"],
    }
