"""``noxblock`` console script.

Sub-commands:

* ``simulate``: replay a scenario (site TOML, sessions and signals CSV) under one policy and
  write ``kpis.json``, ``setpoints.csv`` and ``sessions.csv`` (see ``../shared/CONTRACT.md``);
* ``compare``: the same for several policies, with a table and a plot;
* ``serve``: the OCPP 1.6J central system and its REST API;
* ``token``: bearer tokens of the REST API (``create --role ROLE [--site SITE]``, ``list``,
  ``revoke ID``), kept as hashes in ``DATA_DIR/api.sqlite3``; ``create`` prints the token as the
  last line of its output, the only time it is shown;

* ``demo``: ``serve`` with 20 simulated lamppost points replaying a real day on an accelerated
  clock, a grid operator's cut halfway, and a KPI summary (:mod:`noxblock.demo`);
* ``district``: a seeded NOX-Block-like lamppost district planned by every policy (uncontrolled,
  equal share, EDF, LLF and the MILP), with a table of what each delivers, how close it runs to
  the connection limit, what it emits and costs, and how long it took.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from models import Problem, Schedule, SolverOptions, check_schedule, lamppost_district, solve
from models.baselines import edf, equal_share, llf, uncontrolled

if TYPE_CHECKING:
    from noxblock.auth import TokenStore

log = logging.getLogger("noxblock")


def _milp(problem: Problem) -> Schedule:
    result = solve(problem, SolverOptions(time_limit_s=60.0))
    if not result.ok or result.schedule is None:
        raise RuntimeError(f"MILP solve ended {result.status.value}: {result.message}")
    log.info(
        "milp: %s, gap %.2g, build %.3f s, hand-off %.3f s, solve %.3f s",
        result.status.value, result.gap, result.build_s, result.handoff_s, result.solve_s,
    )  # fmt: skip
    return result.schedule


POLICIES: dict[str, Callable[[Problem], Schedule]] = {
    "uncontrolled": uncontrolled,
    "equal-share": equal_share,
    "edf": edf,
    "llf": llf,
    "milp": _milp,
}


def _summary(schedule: Schedule, seconds: float) -> dict[str, float]:
    problem = schedule.problem
    c = schedule.compiled
    energy_kwh = schedule.energy_kwh
    step_kwh = (schedule.current_a * c.kwh_per_a).sum(axis=0)  # (T,) energy per step
    co2 = problem.signals.co2_g_per_kwh
    price = problem.signals.price_eur_per_mwh
    conn = schedule.connection_current_a()
    limit = c.limit_a[0]
    violations = [v for v in check_schedule(schedule) if v.kind in ("limit", "unbalance")]
    return {
        "delivered_kwh": float(energy_kwh.sum()),
        "share": float(energy_kwh.sum() / max(c.energy_kwh.sum(), 1e-9)),
        "peak_a": float(conn.max()),
        "limit_a": float(limit.min()),
        "overload_a": float(max(0.0, (conn - limit).max())),
        "violations": float(len(violations)),
        "co2_g_per_kwh": float((co2 * step_kwh).sum() / max(step_kwh.sum(), 1e-9))
        if co2 is not None
        else np.nan,
        "cost_eur": float((price * step_kwh).sum() / 1000.0) if price is not None else np.nan,
        "seconds": seconds,
    }


def cmd_demo(args: argparse.Namespace) -> int:
    problem = lamppost_district(args.sessions, seed=args.seed)
    site = problem.site
    print(
        f"noxblock district: {len(problem.sessions)} EV sessions on {len(site.charge_points)} lamppost "
        f"points ({len(site.groups)} cables and feeders), {problem.n_steps} steps of 15 min, "
        f"connection limit {min(site.max_current_a):.0f} A per phase incl. base load"
    )
    print(
        f"{'policy':<13} {'delivered kWh':>13} {'of request':>10} {'peak A':>7} {'limit A':>7} "
        f"{'overload A':>10} {'violations':>10} {'CO2 g/kWh':>9} {'cost EUR':>8} {'seconds':>7}"
    )
    for name, policy in POLICIES.items():
        t = time.perf_counter()
        schedule = policy(problem)
        s = _summary(schedule, time.perf_counter() - t)
        print(
            f"{name:<13} {s['delivered_kwh']:>13.1f} {s['share']:>10.1%} {s['peak_a']:>7.1f} "
            f"{s['limit_a']:>7.1f} {s['overload_a']:>10.1f} {int(s['violations']):>10d} "
            f"{s['co2_g_per_kwh']:>9.0f} {s['cost_eur']:>8.2f} {s['seconds']:>7.2f}",
            flush=True,
        )
    print(
        "uncontrolled ignores the limits (its overload is what the others avoid); every other "
        "policy keeps every cable, feeder and the connection within its limit."
    )
    return 0


def _token_store(args: argparse.Namespace, prog: str) -> TokenStore | None:
    from noxblock.auth import StoreError, TokenStore

    try:
        return TokenStore.in_dir(args.data_dir)
    except (StoreError, OSError) as e:
        print(f"{prog}: --data-dir {args.data_dir}: {e}", file=sys.stderr)
        return None


def cmd_token_create(args: argparse.Namespace) -> int:
    from noxblock.auth import check_site_id

    prog = "noxblock token create"
    if args.role == "grid-operator":
        if args.site is None:
            print(f"{prog}: --site SITE is required with --role grid-operator", file=sys.stderr)
            return 2
        try:
            check_site_id(args.site)
        except ValueError as e:
            print(f"{prog}: --{e}", file=sys.stderr)
            return 2
    elif args.site is not None:
        print(f"{prog}: --site is only for --role grid-operator, not --role {args.role}", file=sys.stderr)
        return 2
    store = _token_store(args, prog)
    if store is None:
        return 2
    try:
        record, token = store.create(args.role, args.site)
    finally:
        store.close()
    site = f", site {record.site}" if record.site else ""
    print(f"token {record.id}: role {record.role}{site}; only its hash is kept, in {store.path}")
    print("copy the token now, it is not shown again:")
    print(token)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    store = _token_store(args, "noxblock token list")
    if store is None:
        return 2
    try:
        records = store.list()
    finally:
        store.close()
    rows = [
        {
            "id": r.id,
            "role": r.role,
            "site": r.site,
            "created": r.created_at.isoformat(timespec="seconds"),
            "revoked": r.revoked_at.isoformat(timespec="seconds") if r.revoked_at else None,
        }
        for r in records
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'id':<12}  {'role':<13}  {'site':<20}  {'created':<25}  revoked")
    for row in rows:
        print(
            f"{row['id']:<12}  {row['role']:<13}  {row['site'] or '-':<20}  {row['created']:<25}  "
            f"{row['revoked'] or '-'}"
        )
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from noxblock.auth import UnknownTokenError

    prog = "noxblock token revoke"
    store = _token_store(args, prog)
    if store is None:
        return 2
    try:
        record = store.revoke(args.id)
    except UnknownTokenError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    finally:
        store.close()
    site = f", site {record.site}" if record.site else ""
    revoked = record.revoked_at.isoformat(timespec="seconds") if record.revoked_at else "?"
    print(f"token {record.id} ({record.role}{site}) revoked at {revoked}")
    return 0


def add_token_parsers(token: argparse.ArgumentParser) -> None:
    """The ``noxblock token`` sub-commands: ``create``, ``list``, ``revoke``."""
    from noxblock.auth import DB_NAME, ROLES

    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument(
        "--data-dir", default="./var", help=f"directory of {DB_NAME} (as `serve --data-dir`; default ./var)"
    )
    sub = token.add_subparsers(dest="token_command", required=True)
    p = sub.add_parser(
        "create", parents=[data_dir], help="create a token; prints it as the last line, only once"
    )
    p.add_argument("--role", required=True, choices=ROLES, help="what the token may do")
    p.add_argument("--site", help="the site a grid-operator token may set limits for (grid-operator only)")
    p.set_defaults(func=cmd_token_create)
    p = sub.add_parser("list", parents=[data_dir], help="id, role, site, created, revoked (never the token)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_token_list)
    p = sub.add_parser("revoke", parents=[data_dir], help="revoke a token by id (see `token list`)")
    p.add_argument("id", help="token id")
    p.set_defaults(func=cmd_token_revoke)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="noxblock", description="Smart charging for city grids.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = ap.add_subparsers(dest="command", required=True)
    from noxblock import demo as live_demo

    demo = sub.add_parser(
        "demo", help="the service with 20 simulated lamppost points replaying a real day, accelerated"
    )
    live_demo.add_arguments(demo)
    demo.set_defaults(func=live_demo.run)
    district = sub.add_parser(
        "district", help="plan a seeded lamppost district with every policy (no service)"
    )
    district.add_argument("--sessions", type=int, default=300, help="EV sessions in the day")
    district.add_argument("--seed", type=int, default=1)
    district.set_defaults(func=cmd_demo)

    from noxblock import simulate as sim

    p = sub.add_parser("simulate", help="replay sessions on a site under one policy")
    sim.add_simulate_arguments(p)
    p.set_defaults(func=sim.run_simulate)
    p = sub.add_parser("compare", help="replay one scenario under several policies, table and plot")
    sim.add_compare_arguments(p)
    p.set_defaults(func=sim.run_compare)
    try:
        from noxblock import serve
    except ImportError as err:  # the gateway's extras are missing
        log.debug("serve unavailable: %s", err)
    else:
        p = sub.add_parser("serve", help="OCPP 1.6J central system with REST API")
        serve.add_arguments(p)
        p.set_defaults(func=serve.run)
    add_token_parsers(sub.add_parser("token", help="bearer tokens of the REST API: create, list, revoke"))
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.command == "serve":  # a config file and NOXBLOCK_* variables, under the command line
        from noxblock import serve

        sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
        serve_parser = sub.choices["serve"]
        try:
            defaults = serve.config_defaults(serve_parser, args.config or os.environ.get("NOXBLOCK_CONFIG"))
        except serve.ConfigFileError as e:
            print(f"noxblock serve: {e}", file=sys.stderr)
            return 2
        if defaults:
            serve_parser.set_defaults(**defaults)
            args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
