"""How the charging MILP scales: 50, 200 and 1000 sessions over 24 h at 15 min (96 steps).

Instances: seeded lamppost districts (``models.instances.lamppost_district``): 11 kW three-phase
lamppost points on rotated phases, cables and feeders with their own limits, overnight
arrivals, a residential base load, and a connection limit that binds in the evening.

For each size, measured in the same run on the same instance and the same relative gap:

* ours: ``models.solve`` (lazy LP relaxation, on/off rounding, polishing LP; HiGHS B&B only if
  the gap is still open): build, hand-off, solve and total seconds, final gap;
* plain: the textbook binary formulation built in Pyomo and handed as is to HiGHS through
  Pyomo's interface (``models.pyomo_model.solve_plain``): total seconds, its status and gap
  (capped by ``--plain-time-limit``);
* lp: the LP relaxation handed to HiGHS whole (the floor a MILP solve can aim at), seconds.

Usage::

    .venv/bin/python bench/milp_scaling.py [--sizes 50 200 1000] [--plain-time-limit 120]

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys

from models import SolverOptions, lamppost_district, solve, solve_lp_relaxation
from models.compiled import compile_problem
from models.pyomo_model import solve_plain


def full_lp_seconds(problem, threads: int | None) -> float:
    """Seconds HiGHS needs for the whole LP relaxation handed over in one piece."""
    lp = solve_lp_relaxation(problem, SolverOptions(threads=threads), lazy_rows=False)
    if not lp.ok:
        raise RuntimeError(f"LP relaxation: {lp.status.value} {lp.message}")
    return lp.solve_s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--gap", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--plain-time-limit", type=float, default=120.0)
    ap.add_argument("--skip-plain", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    print(f"# python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores")
    print(
        f"{'sessions':>8} {'pairs':>7} {'build_s':>8} {'handoff_s':>9} {'solve_s':>8} {'total_s':>8} "
        f"{'gap':>9} {'plain_s':>8} {'plain_gap':>9} {'lp_s':>6}"
    )
    results = []
    for n in args.sizes:
        problem = lamppost_district(n, seed=args.seed)
        opts = SolverOptions(mip_rel_gap=args.gap, time_limit_s=300.0, threads=args.threads)
        ours = solve(problem, opts)
        if not ours.ok:
            print(f"our solve failed at {n} sessions: {ours.status} {ours.message}", file=sys.stderr)
            return 1
        lp_s = full_lp_seconds(problem, args.threads)
        row = {
            "sessions": n,
            "steps": problem.n_steps,
            "pairs": compile_problem(problem).n_pairs,
            "build_s": round(ours.build_s, 4),
            "handoff_s": round(ours.handoff_s, 4),
            "solve_s": round(ours.solve_s, 4),
            "total_s": round(ours.total_s, 4),
            "gap": ours.gap,
            "energy_kwh": round(ours.schedule.total_energy_kwh, 3),
            "plain_s": None,
            "plain_status": None,
            "plain_gap": None,
            "lp_s": round(lp_s, 4),
        }
        if not args.skip_plain:
            plain = solve_plain(
                problem, time_limit_s=args.plain_time_limit, mip_rel_gap=args.gap, threads=args.threads
            )
            row["plain_s"] = round(plain.total_s, 4)
            row["plain_status"] = plain.status.value
            row["plain_gap"] = plain.gap
            row["plain_build_s"] = round(plain.build_s, 4)
        results.append(row)

        def fmt(v, spec):
            return format(v, spec) if isinstance(v, (int, float)) else f"{'-':>{spec.split('.')[0]}}"

        print(
            f"{n:>8} {row['pairs']:>7} {row['build_s']:>8.3f} {row['handoff_s']:>9.3f} "
            f"{row['solve_s']:>8.3f} {row['total_s']:>8.3f} {row['gap']:>9.2e} "
            f"{fmt(row['plain_s'], '8.2f')} {fmt(row['plain_gap'], '9.2e')} {row['lp_s']:>6.3f}",
            flush=True,
        )
        if row["plain_s"]:
            print(
                f"#   {n} sessions: {row['plain_s'] / row['total_s']:.1f}x faster than plain "
                f"(plain {row['plain_status']}), build+hand-off "
                f"{(row['build_s'] + row['handoff_s']) / row['total_s']:.0%} of total",
                flush=True,
            )
    print(json.dumps({"results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
