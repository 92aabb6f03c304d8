"""``noxblock demo``: the whole service with a street of simulated lamppost charge points.

One process runs ``serve`` (OCPP gateway, REST API, dashboard, control loop) and a fleet of
simulated OCPP 1.6J points (:mod:`ocpp_gateway.simulator`) that connect to it over real
websockets and replay a real day of sessions, on an accelerated clock that the service and the
points share (default one simulated hour per 10 s):

* the street: 20 lamppost points of 11 kW (3 x 16 A) on two low-voltage cables of 63 A behind a
  100 A connection;
* the day: the busiest noon-to-noon of the Trondheim residential data set (Sorensen et al. 2021,
  Data in Brief 36, 107105, CC BY 4.0; ``../shared/data``), each session on the first point free
  at its arrival (real arrival, departure and energy). Without the data set, a seeded lamppost
  district of :func:`models.instances.lamppost_district` instead;
* every other driver declares departure and energy through the operator's app
  (``PUT /api/v1/transactions/{id}/needs``); the others are estimated;
* halfway through, a grid operator cuts the connection to 55 A from 30 simulated minutes later
  on (``PUT /api/v1/sites/{site}/limits`` with a ``grid-operator`` token);
* at the end (the day replayed, or ``--duration`` seconds), a KPI summary: energy delivered
  against requested, peak current measured against the limit, violations.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from models.problem import ROOT, ROTATIONS, ChargePoint, Node, Site

__all__ = ["add_arguments", "run", "street", "street_day"]

log = logging.getLogger("noxblock.demo")

SITE_ID = "demo-street"
CUT_A = 55.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration", type=float, default=None, metavar="S",
        help="stop after this many wall seconds (default: when the day is replayed)",
    )  # fmt: skip
    parser.add_argument(
        "--speed", type=float, default=360.0,
        help="simulated seconds per wall second (default 360: an hour every 10 s)",
    )  # fmt: skip
    parser.add_argument("--points", type=int, default=20, help="lamppost charge points (default 20)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="OCPP port (default: any free one)")
    parser.add_argument(
        "--api-port", type=int, default=8000, help="REST API and dashboard port (default 8000)"
    )
    parser.add_argument("--data-dir", default=None, help="data directory (default: a temporary one)")
    parser.add_argument("--policy", default="milp", choices=("milp", "edf", "llf", "equal-share"))


@dataclass(frozen=True)
class DemoSession:
    point: str
    arrival: datetime
    departure: datetime
    energy_kwh: float
    id_tag: str


def street(n_points: int = 20) -> Site:
    """``n_points`` 11 kW lamppost points on two 63 A cables behind a 100 A connection."""
    cables = (Node("cable-1", 63.0, ROOT), Node("cable-2", 63.0, ROOT))
    rot = list(ROTATIONS)
    points = tuple(
        ChargePoint(
            f"LP{i + 1:02d}",
            node_id=cables[0].id if i < (n_points + 1) // 2 else cables[1].id,
            phases=3,
            phase_rotation=rot[i % 3],
            max_current_a=16.0,
            min_current_a=6.0,
        )
        for i in range(n_points)
    )
    return Site(SITE_ID, 230.0, 100.0, cables, points)


def _assign(
    site: Site, sessions: Sequence[Any], start: datetime, end: datetime
) -> tuple[list[DemoSession], int]:
    free_at = {cp.id: start for cp in site.charge_points}
    out, skipped = [], 0
    for s in sorted(sessions, key=lambda s: s.arrival):
        if not (start <= s.arrival < end):
            continue
        cp = next((c for c, t in free_at.items() if t <= s.arrival), None)
        if cp is None:
            skipped += 1
            continue
        departure = min(s.departure, end)
        if departure - s.arrival < timedelta(minutes=10):
            continue
        free_at[cp] = departure + timedelta(minutes=1)
        out.append(DemoSession(cp, s.arrival, departure, float(s.energy_kwh), f"TAG-{s.id}"[:20]))
    return out, skipped


def street_day(site: Site) -> tuple[datetime, list[DemoSession], str, int]:
    """``(start, sessions, source, skipped)``: a real noon-to-noon day on the street's points."""
    from scheduler.loaders import load_trondheim, shared_data_dir

    data = shared_data_dir()
    path = None if data is None else data / "residential_trondheim" / "ev_charging_reports.csv"
    if path is not None and path.exists():
        logging.getLogger("scheduler.loaders").setLevel(logging.ERROR)
        _, sessions = load_trondheim(path)
        noon = {}
        for s in sessions:  # the busiest noon-to-noon window (UTC noon ~ local 13 h)
            d = (s.arrival - timedelta(hours=12)).date()
            noon[d] = noon.get(d, 0) + 1
        day = max(noon, key=lambda d: noon[d])
        start = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        chosen, skipped = _assign(site, sessions, start, start + timedelta(hours=24))
        return start, chosen, f"Trondheim residential data, {day.isoformat()} 12:00 UTC + 24 h", skipped
    from models.instances import lamppost_district

    problem = lamppost_district(40, seed=1)
    start = problem.grid.start
    chosen, skipped = _assign(site, problem.sessions, start, start + timedelta(hours=24))
    return start, chosen, "a seeded lamppost district (Trondheim data not found)", skipped


def _fmt_a(a: Sequence[float]) -> str:
    return "/".join(f"{x:.0f}" for x in a)


async def _demo(args: argparse.Namespace, data_dir: Path) -> int:
    import httpx

    from noxblock import serve
    from noxblock.auth import TokenStore
    from noxblock.live import ControlSettings
    from ocpp_gateway.simulator import AcceleratedClock, Fleet, PointSpec, SimSession
    from scheduler.loaders import load_site
    from scheduler.scenarios import site_toml

    site = street(args.points)
    start, sessions, source, skipped = street_day(site)
    # Each point logs in with its own password (HTTP Basic, security profile 1), as in the street.
    passwords = {cp.id: secrets.token_urlsafe(12) for cp in site.charge_points}
    text = site_toml(site)
    for cp_id, pw in passwords.items():
        text = text.replace(f'id = "{cp_id}"\n', f'id = "{cp_id}"\npassword = "{pw}"\n', 1)
    site_path = data_dir / "site.toml"
    site_path.write_text(text)
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    sargs = parser.parse_args(
        ["--site", str(site_path), "--data-dir", str(data_dir), "--failsafe-current-a", "16"]
    )
    config = serve.build_config(sargs)
    clock = AcceleratedClock(args.speed, start=start - timedelta(minutes=5))
    settings = ControlSettings(
        step=timedelta(minutes=15),
        horizon=timedelta(hours=12),
        coarse_step=timedelta(hours=1),
        fine_span=timedelta(hours=2),
        policy=args.policy,
        solver_time_limit_s=2.0,
        deadline_s=2.0,
        wall_s_per_s=1.0 / args.speed,
    )
    services = await serve.start_services(
        config, data_dir, host=args.host, port=args.port, api_port=args.api_port,
        site_config=load_site(site_path), control=settings, clock=clock,
    )  # fmt: skip
    by_point: dict[str, list[SimSession]] = {}
    for s in sessions:
        by_point.setdefault(s.point, []).append(
            SimSession(s.arrival, s.departure, s.energy_kwh, id_tag=s.id_tag, session_id=s.id_tag)
        )
    fleet = Fleet.build(
        services.gateway.url,
        [
            PointSpec(cp.id, phases=3, max_current_a=16.0, meter_interval_s=300.0, password=passwords[cp.id])
            for cp in site.charge_points
        ],
        by_point,
        clock=clock,
        reconnect_max_s=1.0,
    )
    fleet.start()
    base = services.api_url.removesuffix("/api/v1")
    requested = sum(s.energy_kwh for s in sessions)
    print(f"noxblock demo: {len(sessions)} sessions ({requested:.0f} kWh) from {source}", flush=True)
    if skipped:
        print(f"  ({skipped} more sessions found no free point)", flush=True)
    print(
        f"  {len(site.charge_points)} lamppost points of 11 kW, cables 2 x 63 A, connection 100 A per phase"
    )
    print(
        f"  one simulated hour every {3600 / args.speed:.0f} s; a grid operator cuts to {CUT_A:.0f} A halfway"
    )
    print(f"  dashboard: {base}/", flush=True)
    print(f"  REST API:  {services.api_url}  (OpenAPI {services.api_url}/openapi.json)", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    end = start + timedelta(hours=24)
    half = start + timedelta(hours=12)
    wall_end = None if args.duration is None else time.monotonic() + args.duration
    if wall_end is not None:
        half = min(half, clock.now() + timedelta(seconds=args.duration * args.speed / 2))
    cut_sent = False
    next_report = start
    ctl = services.control
    # Every other driver tells the operator's app when they leave and how much they want; the
    # others are estimated (history of their id tag or station, else the defaults).
    declared_by_tag = {s.id_tag: s for i, s in enumerate(sessions) if i % 2 == 0}
    declared: set[int] = set()
    tokens = TokenStore.in_dir(data_dir)
    try:
        _, app_token = tokens.create("operator")
    finally:
        tokens.close()
    try:
        while not stop.is_set():
            now = clock.now()
            if now >= end or (wall_end is not None and time.monotonic() >= wall_end):
                break
            if not cut_sent and now >= half:
                cut_sent = True
                tokens = TokenStore.in_dir(data_dir)
                try:
                    _, token = tokens.create("grid-operator", site=SITE_ID)
                finally:
                    tokens.close()
                at = now + timedelta(minutes=30)
                async with httpx.AsyncClient(base_url=services.api_url) as http:
                    r = await http.put(
                        f"/sites/{SITE_ID}/limits",
                        json={"blocks": [{"start": at.isoformat(), "end": None, "max_current_a": CUT_A}]},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                print(
                    f"{now:%H:%M} grid operator: {CUT_A:.0f} A per phase from {at:%H:%M} UTC "
                    f"(HTTP {r.status_code})",
                    flush=True,
                )
            for t in ctl.live.transactions():
                s = declared_by_tag.get(t["id_tag"] or "")
                if s is not None and t["transaction_id"] not in declared:
                    declared.add(t["transaction_id"])
                    async with httpx.AsyncClient(base_url=services.api_url) as http:
                        await http.put(
                            f"/transactions/{t['transaction_id']}/needs",
                            json={"departure": s.departure.isoformat(), "energy_kwh": s.energy_kwh},
                            headers={"Authorization": f"Bearer {app_token}"},
                        )
            if now >= next_report:
                rec = ctl.loop.last
                measured = ctl.live.measured_site_a(now)
                charging = sum(1 for t in ctl.live.transactions() if max(t["current_a"]) > 1.0)
                limit = ctl.conditions.limit_now_a(now)
                print(
                    f"{now:%H:%M} {len(ctl.live.transactions()):2d} EVs plugged in, {charging:2d} charging; "
                    f"load {_fmt_a(measured)} A of {_fmt_a(limit)} A"
                    + (f"; last plan {rec.policy} {rec.status} in {rec.replan_s:.2f} s" if rec else ""),
                    flush=True,
                )
                next_report = now + timedelta(hours=1)
            await asyncio.sleep(0.2)
    finally:
        ctl.sample(clock.now())
        kpis = ctl.kpis()
        await fleet.stop()
        await services.stop()
    lowest = [x for x in kpis["lowest_limit_a"] if x is not None]
    print("\nKPI summary")
    print(
        f"  sessions:          {kpis['sessions_finished']} finished, "
        f"{kpis['sessions_running']} still plugged in"
    )
    print(f"  energy delivered:  {kpis['energy_delivered_kwh']:.1f} kWh of {requested:.1f} kWh requested")
    cut = min(lowest or [100.0])
    print(
        f"  peak:              {_fmt_a(kpis['peak_told_a'])} A told, "
        f"{_fmt_a(kpis['peak_measured_a'])} A measured"
        f" per phase (limit 100 A, cut to {cut:.0f} A)"
    )
    print(f"  re-plans:          {kpis['replans']} ({kpis['fallbacks']} by the fallback)")
    verdict = (
        "none"
        if kpis["violations"] == 0
        else f"{kpis['violations']} samples, up to {kpis['max_excess_a']} A over"
    )
    print(f"  limit violations:  {verdict} (sum of the limits the EVs were told, every sample)")
    if kpis["measured_violations"]:
        print(
            f"  measured over:     {kpis['measured_violations']} samples, up to "
            f"{kpis['max_measured_excess_a']} A (meter values)"
        )
    return 0 if kpis["violations"] == 0 else 1


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 when no limit was violated."""
    if not (args.speed > 0) or (args.duration is not None and not args.duration > 0) or args.points < 1:
        print("noxblock demo: --speed, --duration and --points must be positive", file=sys.stderr)
        return 2
    if args.data_dir:
        Path(args.data_dir).mkdir(parents=True, exist_ok=True)
        return asyncio.run(_demo(args, Path(args.data_dir)))
    with tempfile.TemporaryDirectory(prefix="noxblock-demo-") as tmp:
        return asyncio.run(_demo(args, Path(tmp)))
