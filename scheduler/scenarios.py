"""Seeded NOX-Block-like scenarios: lamppost points on low-voltage cables, residential base load.

A street in a dense district: ``n_points`` 11 kW (3 x 16 A) lamppost charge points spread over
2-4 low-voltage cables (groups with a per-phase limit) behind one transformer (the site limit);
households on the same transformer give an inflexible base load with an evening peak; residents
park overnight. Everything is drawn from ``numpy.random.default_rng(seed)``: same arguments, same
files.

Session figures are derived from the Trondheim residential data set (Sorensen et al. 2021, Data in
Brief 36, 107105, CC BY 4.0; see ``scheduler.loaders.load_trondheim``), computed once and kept
here as numbers: overnight sessions arrive at 19.0 h +- 2.2 h local time and want lognormal energy
(mu 2.43, sigma 0.80 in ln kWh: median 11 kWh); daytime sessions want lognormal (mu 2.08, sigma
0.86) and stay about 3.7 h (median). Overnight departures there average 9.7 h local; we draw
them at 9.7 h +- 2 h (the data's spread of 3.6 h includes next-afternoon plug-outs). How often a
point is used per day is a parameter (on-street points are shared, unlike Trondheim's private
chargers). The household profile is a round-number evening-peak shape in the spirit of the BDEW
H0 standard profile, not the H0 table.

Write a scenario with :meth:`Street.write`, or from the shell::

    python -m scheduler.scenarios --points 24 --seed 1 --out data/lippestrasse
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from models.problem import ROOT, ROTATIONS, ChargePoint, Node, Session, Site
from scheduler.loaders import (
    BASE_LOAD_COLUMNS,
    StepSeries,
    write_base_load_csv,
    write_sessions_csv,
    write_signals_csv,
)

__all__ = ["LOCAL_TZ", "Street", "main", "nox_block_scenario"]

log = logging.getLogger(__name__)

#: Dortmund's local time: arrivals and the household profile follow it.
LOCAL_TZ = ZoneInfo("Europe/Berlin")

# Household demand after diversity, per household [kW], by local hour (weekday). Round numbers
# shaped like the BDEW H0 profile: night trough, morning shoulder, evening peak at 18-20 h.
_HOUSEHOLD_KW = np.array(
    [0.30, 0.25, 0.22, 0.21, 0.21, 0.24, 0.35, 0.50, 0.50, 0.45, 0.45, 0.50,
     0.55, 0.50, 0.45, 0.45, 0.50, 0.65, 0.85, 0.90, 0.85, 0.70, 0.55, 0.40]
)  # fmt: skip
_WEEKEND_KW = np.roll(_HOUSEHOLD_KW, 1) * np.r_[np.ones(8), np.full(10, 1.1), np.ones(6)]


@dataclass(frozen=True)
class Street:
    """A generated street: site, base load, sessions, optional signals.

    Parameters
    ----------
    site : models.Site
    sessions : tuple of models.Session
    base_load : StepSeries
        Inflexible load per grid phase at the connection [A], columns ``l1_a, l2_a, l3_a``.
    signals : StepSeries or None
        Hourly ``price_eur_per_mwh`` [EUR/MWh] and ``co2_g_per_kwh`` [g/kWh], synthetic.
    start, end : datetime
        Period covered (UTC).
    """

    site: Site
    sessions: tuple[Session, ...]
    base_load: StepSeries
    signals: StepSeries | None
    start: datetime
    end: datetime

    def scenario(self, name: str = "nox-block") -> Any:
        """This street as a :class:`scheduler.simulator.Scenario`, ready to simulate."""
        from scheduler.simulator import Scenario  # the simulator builds on this module's loaders

        return Scenario.from_series(self.site, self.sessions, base_load=self.base_load,
                                    signals=self.signals, name=name)  # fmt: skip

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``site.toml``, ``base_load.csv``, ``sessions.csv`` (+ ``signals.csv``) in the
        contract formats; returns the paths by kind."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "site": out / "site.toml",
            "base_load": out / "base_load.csv",
            "sessions": out / "sessions.csv",
        }
        paths["site"].write_text(site_toml(self.site, base_load="base_load.csv"), encoding="utf-8")
        write_base_load_csv(self.base_load, paths["base_load"])
        write_sessions_csv(self.sessions, paths["sessions"])
        if self.signals is not None:
            paths["signals"] = out / "signals.csv"
            write_signals_csv(self.signals, paths["signals"])
        return paths


def _toml_value(v: object) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, tuple):
        if len(set(v)) == 1:
            return _toml_value(v[0])
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(round(v, 6))
    return str(v)


def site_toml(site: Site, *, base_load: str | None = None) -> str:
    """The contract's site TOML for ``site`` (no passwords)."""
    lines = [
        "[site]",
        f"id = {_toml_value(site.id)}",
        f"voltage_v = {_toml_value(site.voltage_v)}",
        f"max_current_a = {_toml_value(site.max_current_a)}",
    ]
    if base_load:
        lines.append(f"base_load = {_toml_value(base_load)}")
    for g in site.groups:
        lines += [
            "",
            "[[groups]]",
            f"id = {_toml_value(g.id)}",
            f"max_current_a = {_toml_value(g.max_current_a)}",
            f"parent = {_toml_value(g.parent)}",
        ]
    for cp in site.charge_points:
        lines += [
            "",
            "[[charge_points]]",
            f"id = {_toml_value(cp.id)}",
            f"group = {_toml_value(cp.node_id)}",
            f"connectors = {cp.connectors}",
            f"phases = {cp.phases}",
            f"phase_rotation = {_toml_value(cp.phase_rotation)}",
            f"max_current_a = {_toml_value(cp.max_current_a)}",
            f"min_current_a = {_toml_value(cp.min_current_a)}",
        ]
    return "\n".join(lines) + "\n"


def _local_hour(t: datetime) -> float:
    lt = t.astimezone(LOCAL_TZ)
    return lt.hour + lt.minute / 60.0


def nox_block_scenario(
    n_points: int,
    seed: int,
    *,
    days: int = 7,
    start: datetime | None = None,
    site_id: str = "lippestrasse",
    n_cables: int | None = None,
    feeder_limit_a: float = 63.0,
    transformer_limit_a: float = 360.0,
    households: int | None = None,
    voltage_v: float = 230.0,
    point_max_current_a: float = 16.0,
    overnight_per_day: float = 0.6,
    daytime_per_day: float = 0.3,
    share_1phase_evs: float = 0.2,
    step_minutes: int = 15,
    with_signals: bool = False,
) -> Street:
    """Generate a seeded NOX-Block-like street.

    Parameters
    ----------
    n_points : int
        Lamppost charge points, 3-phase, ``point_max_current_a`` per phase (16 A: 11 kW at 230 V).
    seed : int
        Seed of every random draw.
    days : int
        Length of the period [days], from ``start``.
    start : datetime, optional
        Aware start; default Monday 2024-01-08 00:00 Europe/Berlin (winter: highest household load).
    n_cables : int, optional
        Low-voltage cables (groups); default ``clip(round(n_points / 8), 2, 4)``. Points go to
        cables in contiguous runs, as along a street.
    feeder_limit_a : float
        Per-phase limit of each cable [A] (a 63 A fuse on the branch feeding the lampposts).
    transformer_limit_a : float
        Per-phase limit at the transformer [A] (250 kVA at 230 V is about 360 A).
    households : int, optional
        Households on the transformer; default ``4 * n_points``.
    overnight_per_day, daytime_per_day : float
        Probability that a point gets an overnight / a daytime session on a day.
    share_1phase_evs : float
        Share of EVs charging on one phase (3.7 kW at 16 A).
    step_minutes : int
        Resolution of the base load [min].
    with_signals : bool
        Add synthetic hourly price and CO2 signals (daily shape, noise).
    """
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    rng = np.random.default_rng(seed)
    start = (start or datetime(2024, 1, 8, tzinfo=LOCAL_TZ)).astimezone(LOCAL_TZ)
    t0 = start.astimezone(ZoneInfo("UTC"))
    end = t0 + timedelta(days=days)
    n_cables = n_cables or int(np.clip(round(n_points / 8), 2, 4))
    n_cables = min(n_cables, n_points)
    households = households if households is not None else 4 * n_points

    # --- site: cables as groups, rotations mixed along each cable
    groups = tuple(Node(f"cable-{c + 1}", feeder_limit_a, ROOT) for c in range(n_cables))
    bounds = np.linspace(0, n_points, n_cables + 1).round().astype(int)
    rotations = tuple(ROTATIONS)
    cps: list[ChargePoint] = []
    width = max(2, len(str(n_points)))
    for c in range(n_cables):
        offset = int(rng.integers(3))
        for k, i in enumerate(range(bounds[c], bounds[c + 1])):
            cps.append(
                ChargePoint(
                    f"LP{i + 1:0{width}d}",
                    groups[c].id,
                    3,
                    rotations[(k + offset) % 3],
                    point_max_current_a,
                    6.0,
                )
            )
    site = Site(site_id, voltage_v, transformer_limit_a, groups, tuple(cps))

    # --- base load: households x profile, per-phase imbalance, slow multiplicative noise
    n_steps = days * 24 * 60 // step_minutes
    times = [t0 + timedelta(minutes=step_minutes * k) for k in range(n_steps)]
    hours = np.array([_local_hour(t) for t in times])
    weekend = np.array([t.astimezone(LOCAL_TZ).weekday() >= 5 for t in times])
    h_lo = np.floor(hours).astype(int) % 24
    frac = hours - np.floor(hours)
    prof = np.where(
        weekend,
        (1 - frac) * _WEEKEND_KW[h_lo] + frac * _WEEKEND_KW[(h_lo + 1) % 24],
        (1 - frac) * _HOUSEHOLD_KW[h_lo] + frac * _HOUSEHOLD_KW[(h_lo + 1) % 24],
    )
    noise = np.empty(n_steps)
    x = 0.0
    for k in range(n_steps):  # AR(1): weather and habits drift over hours, not steps
        x = 0.95 * x + rng.normal(0.0, 0.03)
        noise[k] = x
    total_kw = households * prof * np.exp(noise)
    share = 1.0 + rng.normal(0.0, 0.08, size=3)  # households are not spread evenly over phases
    share = share / share.sum()
    phase_a = total_kw[:, None] * 1000.0 * share[None, :] / voltage_v
    base = StepSeries(
        tuple(times),
        {c: np.round(phase_a[:, j], 2) for j, c in enumerate(BASE_LOAD_COLUMNS)},
        source="generated",
    )

    # --- sessions: per point, day by day; one connector, so never overlapping
    sessions: list[Session] = []
    for cp in cps:
        free_from = t0
        for d in range(-1, days):
            day = start + timedelta(days=d)
            weekend_day = day.weekday() >= 5
            if d >= 0 and rng.random() < daytime_per_day:
                arr_h = float(np.clip(rng.normal(11.0, 2.0), 7.0, 16.0))
                stay_h = float(np.clip(rng.lognormal(math.log(3.7), 0.5), 0.5, 8.0))
                e = float(rng.lognormal(2.08, 0.86))
                free_from = _add(sessions, cp, day, arr_h, stay_h, e, free_from, end, rng, share_1phase_evs)
            if rng.random() < overnight_per_day:
                arr_h = float(np.clip(rng.normal(19.0, 2.2), 14.0, 23.9))
                dep_h = float(np.clip(rng.normal(9.7 + (1.5 if weekend_day else 0.0), 2.0), 5.0, 14.0))
                stay_h = 24.0 - arr_h + dep_h
                e = float(rng.lognormal(2.43, 0.80))
                free_from = _add(sessions, cp, day, arr_h, stay_h, e, free_from, end, rng, share_1phase_evs)
    sessions.sort(key=lambda s: (s.arrival, s.charge_point_id))
    sessions = [
        Session(
            f"s{i + 1:05d}", s.charge_point_id, s.arrival, s.departure, s.energy_kwh, s.max_power_kw, s.phases
        )
        for i, s in enumerate(sessions)
    ]

    signals = _synthetic_signals(t0, days, rng) if with_signals else None
    log.info("scenario %s: %d points, %d cables, %d sessions", site_id, n_points, n_cables, len(sessions))
    return Street(site, tuple(sessions), base, signals, t0, end)


def _add(
    out: list[Session],
    cp: ChargePoint,
    day: datetime,
    arr_h: float,
    stay_h: float,
    energy_kwh: float,
    free_from: datetime,
    end: datetime,
    rng: np.random.Generator,
    share_1phase: float,
) -> datetime:
    """Append a session if the point is free; return when the point is free again."""
    midnight = day.replace(hour=0, minute=0, second=0, microsecond=0)
    arrival = (midnight + timedelta(hours=arr_h)).astimezone(ZoneInfo("UTC")).replace(second=0, microsecond=0)
    departure = arrival + timedelta(minutes=round(stay_h * 60))
    if arrival < free_from or departure <= free_from or arrival >= end:
        return free_from
    phases = 1 if rng.random() < share_1phase else 3
    power_kw = cp.max_current_a * 230.0 * phases / 1000.0
    # an EV does not ask for more than the stay could give at full power (90 %)
    energy_kwh = round(min(energy_kwh, 60.0, 0.9 * power_kw * stay_h), 2)
    out.append(Session("tmp", cp.id, arrival, departure, energy_kwh, None, phases))
    return departure


def _synthetic_signals(t0: datetime, days: int, rng: np.random.Generator) -> StepSeries:
    """Hourly price [EUR/MWh] and CO2 [g/kWh] with a daily shape; illustrative, not data."""
    times = [t0 + timedelta(hours=h) for h in range(days * 24)]
    hours = np.array([_local_hour(t) for t in times])
    daily = np.cos(2 * np.pi * (hours - 19.0) / 24.0)  # high in the evening, low at night/noon
    wind = np.cumsum(rng.normal(0.0, 0.08, len(times)))
    wind = (wind - wind.mean()) / (wind.std() + 1e-9)
    price = 95.0 + 35.0 * daily - 25.0 * wind + rng.normal(0, 5, len(times))
    co2 = np.clip(380.0 + 90.0 * daily - 80.0 * wind + rng.normal(0, 10, len(times)), 50.0, None)
    return StepSeries(
        tuple(times),
        {"price_eur_per_mwh": np.round(price, 2), "co2_g_per_kwh": np.round(co2, 1)},
        source="generated",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scheduler.scenarios --points 24 --seed 1 --out data/lippestrasse``."""
    ap = argparse.ArgumentParser(prog="python -m scheduler.scenarios", description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, required=True, help="lamppost charge points")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--cables", type=int, default=None, help="low-voltage cables (groups)")
    ap.add_argument("--feeder-limit-a", type=float, default=63.0, help="per-phase limit per cable [A]")
    ap.add_argument("--transformer-limit-a", type=float, default=360.0, help="per-phase site limit [A]")
    ap.add_argument("--site-id", default="lippestrasse")
    ap.add_argument("--signals", action="store_true", help="also write synthetic signals.csv")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sc = nox_block_scenario(
        args.points,
        args.seed,
        days=args.days,
        n_cables=args.cables,
        feeder_limit_a=args.feeder_limit_a,
        transformer_limit_a=args.transformer_limit_a,
        site_id=args.site_id,
        with_signals=args.signals,
    )
    for kind, path in sc.write(args.out).items():
        log.info("wrote %s: %s", kind, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
