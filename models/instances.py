"""Seeded, realistic instances of the charging problem: a NOX-Block-like lamppost district.

A grid connection (share of a local transformer) feeds low-voltage feeders, each feeding cables
with a dozen 11 kW lamppost points on rotated phases. Most EVs arrive in the evening and leave
in the morning (residential on-street parking); some come by day. A residential base load with
an evening peak sits on the connection, and the connection limit binds in the evening.

Figures behind the defaults (documented so they can be argued with):

* points: 11 kW, 3-phase, 16 A, min 6 A (IEC 61851), phase rotation cycling along the cable so
  1-phase EVs spread over L1, L2, L3 (DOMAIN.md: NOX-Block lamppost points);
* energy per session: lognormal, median about 12 kWh, clipped to 2-45 kWh, in line with the
  Trondheim residential data set (overnight garage charging, ../shared/data);
* 20 % of EVs charge on one phase (older or small EVs, 3.7 kW on a 16 A point);
* CO2 intensity: a day shape between about 250 and 500 g/kWh, mean near the UBA 2023 German
  average of about 380 g/kWh, lowest at midday (solar) and at night (wind, low load);
* price: a day-ahead shape between about 60 and 180 EUR/MWh, high in the evening peak.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from models.problem import (
    ChargePoint,
    Node,
    Problem,
    Session,
    Signals,
    Site,
    TimeGrid,
)

__all__ = ["day_signals", "lamppost_district"]

_ROTATIONS = ("L1L2L3", "L2L3L1", "L3L1L2")


def day_signals(grid: TimeGrid, seed: int = 0) -> Signals:
    """Price [EUR/MWh] and CO2 intensity [g/kWh] with a realistic daily shape on ``grid``."""
    rng = np.random.default_rng(seed)
    hours = np.array([(t.hour + t.minute / 60.0) for t in grid.starts])
    solar = np.clip(np.cos((hours - 13.0) / 24.0 * 2 * np.pi) * 1.6 - 0.6, 0, None)
    evening = np.exp(-0.5 * ((hours - 19.0) / 2.0) ** 2)
    night = np.exp(-0.5 * ((hours - 3.0) / 2.5) ** 2)
    co2 = 400 + 110 * evening - 140 * solar - 70 * night + rng.normal(0, 8, len(hours))
    price = 110 + 60 * evening - 45 * solar - 35 * night + rng.normal(0, 5, len(hours))
    return Signals(price_eur_per_mwh=price, co2_g_per_kwh=np.clip(co2, 50, None))


def lamppost_district(
    n_sessions: int,
    *,
    seed: int = 0,
    start: datetime = datetime(2023, 6, 5, 12, 0, tzinfo=UTC),
    horizon: timedelta = timedelta(hours=24),
    step: timedelta = timedelta(minutes=15),
    grid: TimeGrid | None = None,
    sessions_per_point: float = 1.4,
    points_per_cable: int = 12,
    cables_per_feeder: int = 4,
    cable_limit_a: float = 63.0,
    feeder_limit_a: float = 160.0,
    site_share: float = 0.2,
    one_phase_share: float = 0.2,
    with_signals: bool = True,
) -> Problem:
    """A seeded lamppost district with ``n_sessions`` EV sessions.

    Parameters
    ----------
    n_sessions : int
        EV sessions in the horizon.
    seed : int
        Everything random is drawn from this seed.
    start, horizon, step : datetime, timedelta, timedelta
        Uniform time grid (``grid`` overrides it).
    sessions_per_point : float
        Sessions per charge point in the horizon (sets the number of points).
    cable_limit_a, feeder_limit_a : float
        Per-phase limits of a cable and a feeder [A].
    site_share : float
        Connection limit as a share of all points at 16 A (plus the base-load peak) [-].
    """
    rng = np.random.default_rng(seed)
    grid = grid or TimeGrid.uniform(start, step, int(horizon / step))
    t0 = grid.start
    hours = np.array([(t - t0).total_seconds() / 3600.0 for t in grid.starts])
    clock = np.array([t.hour + t.minute / 60.0 for t in grid.starts])
    horizon_h = float(hours[-1] + grid.durations_h[-1])

    evening = rng.random(n_sessions) < 0.7
    t_start_clock = t0.hour + t0.minute / 60.0
    arr_clock = np.where(evening, rng.normal(18.5, 1.5, n_sessions), rng.normal(11.0, 2.5, n_sessions))
    arr_h = (arr_clock - t_start_clock) % 24.0
    dwell = np.where(
        evening,
        (rng.normal(7.5, 1.0, n_sessions) - arr_clock) % 24.0,
        np.clip(rng.normal(3.0, 1.5, n_sessions), 0.5, None),
    )
    dwell = np.clip(dwell, 0.5, None)
    dep_h = np.minimum(arr_h + dwell, horizon_h)
    arr_h = np.minimum(arr_h, dep_h - 0.25)
    energy = np.clip(rng.lognormal(np.log(12.0), 0.5, n_sessions), 2.0, 45.0)
    one_phase = rng.random(n_sessions) < one_phase_share

    # One EV at a time per point: each session, by arrival, takes a random free point; when none
    # is free a new point is built (there are about n_sessions / sessions_per_point of them).
    n_points = max(1, round(n_sessions / sessions_per_point))
    free_at = np.full(n_points, -np.inf)
    station = np.empty(n_sessions, dtype=np.int64)
    for i in np.argsort(arr_h, kind="stable"):
        free = np.nonzero(free_at <= arr_h[i])[0]
        if free.size:
            p = int(rng.choice(free))
        else:
            free_at = np.append(free_at, -np.inf)
            p = len(free_at) - 1
        station[i] = p
        free_at[p] = dep_h[i]
    n_points = len(free_at)

    n_cables = -(-n_points // points_per_cable)
    n_feeders = -(-n_cables // cables_per_feeder)
    groups = [Node(f"feeder-{f + 1}", feeder_limit_a, "site") for f in range(n_feeders)]
    groups += [
        Node(f"cable-{c + 1}", cable_limit_a, f"feeder-{c // cables_per_feeder + 1}") for c in range(n_cables)
    ]
    points = tuple(
        ChargePoint(
            id=f"LP{p + 1:04d}",
            node_id=f"cable-{p // points_per_cable + 1}",
            phases=3,
            phase_rotation=_ROTATIONS[p % 3],
            max_current_a=16.0,
            min_current_a=6.0,
        )
        for p in range(n_points)
    )
    # Residential base load at the connection: about 0.6 A per point, evening peak.
    shape = (
        0.35
        + 0.5 * np.exp(-0.5 * ((clock - 19.5) / 2.5) ** 2)
        + 0.15 * np.exp(-0.5 * ((clock - 8.0) / 1.5) ** 2)
    )
    per_phase = np.array([1.0, 0.92, 1.08])
    base = (1.2 * n_points * shape)[:, None] * per_phase[None, :]
    base = base * (1 + rng.normal(0, 0.03, base.shape))
    site_limit = site_share * n_points * 16.0 + float(base.max())

    sessions = tuple(
        Session(
            id=f"S{i + 1:05d}",
            charge_point_id=points[station[i]].id,
            arrival=t0 + timedelta(hours=float(arr_h[i])),
            departure=t0 + timedelta(hours=float(dep_h[i])),
            energy_kwh=float(energy[i]),
            max_power_kw=3.7 if one_phase[i] else 11.0,
            phases=1 if one_phase[i] else 3,
        )
        for i in range(n_sessions)
    )
    site = Site(
        id="nox-district",
        voltage_v=230.0,
        max_current_a=site_limit,
        groups=tuple(groups),
        charge_points=points,
    )
    return Problem(
        site=site,
        grid=grid,
        sessions=sessions,
        base_load_a=base,
        signals=day_signals(grid, seed) if with_signals else Signals(),
    )
