"""A week of real sessions through the rolling-horizon loop: speed, energy, CO2.

One week of ACN Caltech sessions (2019-06-03 to 2019-06-10, local days; ACN-Data, Lee, Li, Low
2019) on 41 one-phase 32 A points spread round-robin over the three phases, 6 A minimum, 230 V,
a per-phase limit at the connection (default 30 A), 15-minute control. Signals: German 2023
day-ahead prices and an hourly CO2 intensity estimated from the residual load (Energy-Charts,
see ``scheduler.loaders.co2_from_residual_load``), aligned by weekday and hour (the week from
Monday 2023-06-05). In the same run:

* ``edf``, ``llf`` -- heuristics through the same loop;
* ``milp`` -- the rolling MILP, re-planned every interval over a 24 h horizon; it holds
  capacity for EVs still to come, learned from the sessions of May 2019 (before the week) and
  from each day of the week once it is over;
* ``offline-optimal`` -- one MILP over the week with every session known (the yardstick).

For each: wall seconds, re-plans and re-plans per second, energy delivered and its share of the
optimum, CO2 per kWh. The CO2 capture is how much of the cut in intensity that was possible
against EDF -- the offline optimum's, which also chooses *when* -- the rolling MILP achieved.

Usage::

    .venv/bin/python bench/sim_speed.py [--limit-a 30] [--policies edf llf milp offline-optimal]

Needs ``../shared/data`` (or ``$NOXBLOCK_SHARED_DATA``). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from scheduler.forecast import DEFAULT_RESERVE_SCALE
from scheduler.kpis import kpis
from scheduler.loaders import acn_site, energy_charts_signals, load_acn, shared_data_dir
from scheduler.policies import make_policy
from scheduler.simulator import Scenario, simulate

LA = ZoneInfo("America/Los_Angeles")
WEEK_START = datetime(2019, 6, 3, tzinfo=LA)


def history(until: datetime) -> list:
    """ACN Caltech sessions from 2019-05-01 up to ``until``: what an operator knew before."""
    path = shared_data_dir() / "acn" / "caltech_2019-05-01_2019-08-31.csv.gz"
    return load_acn(path, datetime(2019, 5, 1, tzinfo=LA), until)


def scenario(limit_a: float, with_signals: bool) -> Scenario:
    data = shared_data_dir()
    if data is None:
        sys.exit("bench/sim_speed.py: ../shared/data not found (set NOXBLOCK_SHARED_DATA)")
    start = WEEK_START
    end = start + timedelta(days=7)
    sessions = load_acn(data / "acn" / "caltech_2019-05-01_2019-08-31.csv.gz", start, end)
    site = acn_site(sessions, max_current_a=limit_a, point_max_current_a=32.0, voltage_v=230.0)
    signals = None
    if with_signals:
        last = max(s.departure for s in sessions) + timedelta(days=2)
        signals = energy_charts_signals(
            data / "energy_charts_de_2023_hourly.csv",
            start,
            last,
            source_start=datetime(2023, 6, 5, tzinfo=LA),
        )
    return Scenario.from_series(site, sessions, signals=signals, name="acn-caltech-2019-06-03")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit-a", type=float, default=30.0, help="per-phase limit at the connection [A]")
    ap.add_argument("--policies", nargs="+", default=["edf", "llf", "milp", "offline-optimal"])
    ap.add_argument("--no-signals", action="store_true", help="no price/CO2 signals")
    ap.add_argument("--horizon-h", type=float, default=24.0)
    ap.add_argument("--shift-window-h", type=float, default=None, help="rolling MILP's shift window [h]")
    ap.add_argument(
        "--reserve-scale",
        type=float,
        default=DEFAULT_RESERVE_SCALE,
        help="rolling MILP's capacity held for later EVs, times the learned mean (0 = off)",
    )
    ap.add_argument("--no-history", action="store_true", help="the rolling MILP learns from the week only")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sc = scenario(args.limit_a, not args.no_signals)
    requested = sum(s.energy_kwh for s in sc.sessions)
    print(
        f"ACN Caltech week: {len(sc.sessions)} sessions on {len(sc.site.charge_points)} points, "
        f"{requested:.1f} kWh requested, {args.limit_a:.0f} A per phase, 15-min control"
    )
    rows: dict[str, dict] = {}
    past = [] if args.no_history else history(WEEK_START)
    for name in args.policies:
        t0 = time.perf_counter()
        result = simulate(
            sc,
            make_policy(
                name,
                shift_window_h=args.shift_window_h,
                reserve_scale=args.reserve_scale,
                history=past,
                tz=str(LA),
            ),
            step=timedelta(minutes=15),
            horizon=timedelta(hours=args.horizon_h),
        )
        wall = time.perf_counter() - t0
        k = kpis(result)
        rows[name] = {
            "wall_s": round(wall, 2),
            "replans": k["replans"],
            "replans_per_s": round(k["replans"] / wall, 1) if wall > 0 else None,
            "solve_median_ms": round(k["solve_time_s"]["median"] * 1000, 2),
            "solve_max_s": round(k["solve_time_s"]["max"], 3),
            "energy_kwh": round(k["energy_delivered_kwh"], 2),
            "co2_g_per_kwh": k["co2_g_per_kwh"],
            "violation_a": k["limit_violation_max_a"],
        }
        r = rows[name]
        print(
            f"{name:<16} {r['energy_kwh']:>9.2f} kWh  {r['wall_s']:>7.2f} s  {r['replans']:>4d} plans "
            f"({r['replans_per_s']} /s, median {r['solve_median_ms']} ms)  "
            f"CO2 {r['co2_g_per_kwh']} g/kWh  violation {r['violation_a']} A",
            flush=True,
        )
    best = rows.get("offline-optimal", {}).get("energy_kwh")
    for r in rows.values():
        r["of_optimum"] = round(r["energy_kwh"] / best, 5) if best else None
    capture = None
    same_energy = None
    if {"edf", "milp", "offline-optimal"} <= rows.keys() and rows["edf"]["co2_g_per_kwh"] is not None:
        possible = rows["edf"]["co2_g_per_kwh"] - rows["offline-optimal"]["co2_g_per_kwh"]
        achieved = rows["edf"]["co2_g_per_kwh"] - rows["milp"]["co2_g_per_kwh"]
        capture = round(achieved / possible, 3) if possible > 0 else None
        # A cut bought with energy not delivered is no cut: it counts only at EDF's energy or more.
        same_energy = rows["milp"]["energy_kwh"] >= rows["edf"]["energy_kwh"] - 1e-6
    for name, r in rows.items():
        print(f"{name:<16} {r['of_optimum']} of the offline optimum")
    if capture is not None:
        print(
            f"CO2 capture: the rolling MILP achieved {capture:.0%} of the possible cut against EDF"
            + ("" if same_energy else " -- but NOT at EDF's energy (it delivered less)")
        )
    print(
        json.dumps(
            {
                "bench": "sim_speed",
                "sessions": len(sc.sessions),
                "limit_a": args.limit_a,
                "requested_kwh": round(requested, 2),
                "policies": rows,
                "milp_of_optimum": rows.get("milp", {}).get("of_optimum"),
                "milp_wall_s": rows.get("milp", {}).get("wall_s"),
                "co2_capture": capture,
                "co2_capture_at_same_energy": same_energy,
                "shift_window_h": args.shift_window_h,
                "reserve_scale": args.reserve_scale,
                "history_sessions": len(past),
                "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
