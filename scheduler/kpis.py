"""Key figures of a simulation: energy, peaks, limit violations, cost, CO2, NOx avoided, fairness.

Definitions (every one computed from the simulation's arrays, so every policy is measured alike):

* ``energy_delivered_kwh`` -- what EVs drew; ``energy_requested_kwh`` -- what they wanted.
* ``peak_kw`` -- highest total charging power over the intervals [kW];
  ``peak_site_kw`` -- the same with the base load at the connection.
* ``max_phase_current_a`` -- highest current on any phase at the connection, charging drawn plus
  base load [A]; ``peak_phase_current_a`` -- per phase.
* ``limit_violation_max_a`` -- the largest amount by which the *pilots* plus base load exceeded
  any limit (site, group or grid operator) on any phase and interval [A]; 0 is the rule. Where
  the base load alone is over a limit, every ampere of pilot on top counts as a violation.
  ``base_load_violation_max_a`` -- how far the base load alone went over (no policy can help it).
* ``cost_eur`` / ``co2_kg`` -- energy drawn times price / emission intensity; ``null`` without
  the signal.
* ``nox_avoided_kg`` -- see :class:`EmissionFactors`.
* ``fulfilment`` -- per session delivered / requested; ``jain_fairness`` -- Jain's index of those
  shares over sessions that wanted energy (1 = everyone got the same share).
* ``solve_time_s`` -- wall time of the re-plans [s].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from models import PHASES, ROOT
from scheduler.simulator import SimulationResult

__all__ = ["EmissionFactors", "kpis", "session_table"]


@dataclass(frozen=True)
class EmissionFactors:
    """Factors behind ``nox_avoided_kg``; every one documented and overridable.

    NOx avoided by the energy delivered = km it drives an EV instead of a combustion car x NOx
    per km of the car it replaces - NOx of generating the energy.

    Parameters
    ----------
    ev_consumption_kwh_per_100km : float
        EV consumption including charging losses [kWh/100 km]. Default 18: the middle of the
        ADAC Ecotest's 16-20 for compact cars.
    replaced_nox_mg_per_km : float
        Real-world NOx of the car an EV replaces [mg/km]. Default 767: the German diesel fleet
        of 2016 (UBA 2017, HBEFA 3.3); Euro 6 pre-RDE 507, Euro 5 906, Euro 4 674.
    grid_nox_g_per_kwh : float
        NOx emitted generating a kWh [g/kWh]. Default 0: the balance is of the *city's* air, and
        power-plant NOx is emitted elsewhere; for a national balance use the UBA's specific
        emission factor of the German mix (table "Spezifische Emissionsfaktoren fuer den
        deutschen Strommix").
    """

    ev_consumption_kwh_per_100km: float = 18.0
    replaced_nox_mg_per_km: float = 767.0
    grid_nox_g_per_kwh: float = 0.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
        if self.ev_consumption_kwh_per_100km <= 0:
            raise ValueError("ev_consumption_kwh_per_100km: must be > 0")

    def nox_avoided_kg(self, energy_kwh: float) -> float:
        """NOx avoided by ``energy_kwh`` delivered [kg]."""
        km = energy_kwh / self.ev_consumption_kwh_per_100km * 100.0
        return km * self.replaced_nox_mg_per_km / 1e6 - energy_kwh * self.grid_nox_g_per_kwh / 1e3


def _stats(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {"median": 0.0, "mean": 0.0, "p95": 0.0, "max": 0.0, "total": 0.0, "count": 0}
    return {
        "median": float(np.median(x)),
        "mean": float(np.mean(x)),
        "p95": float(np.percentile(x, 95)),
        "max": float(np.max(x)),
        "total": float(np.sum(x)),
        "count": int(x.size),
    }


def _r(x: float, nd: int = 6) -> float:
    return float(round(float(x), nd))


def kpis(result: SimulationResult, factors: EmissionFactors | None = None) -> dict[str, Any]:
    """The contract's ``kpis.json`` and more (see the module docstring)."""
    factors = factors or EmissionFactors()
    r = result
    step_h = r.step_h
    requested = np.array([s.energy_kwh for s in r.sessions])
    energy = r.energy_kwh
    power_t = r.power_kw.sum(axis=0)  # (T,) charging power [kW]
    base = r.base_load_a()
    v = r.voltage_v
    drawn = r.phase_current_a("current")  # (N, T, 3)
    pilots = r.phase_current_a("pilot")
    limits = r.limits_a()
    root = [nd.id for nd in r.scenario.site.nodes].index(ROOT)
    conn = drawn[root] + base  # (T, 3) at the connection
    with_base = pilots.copy()
    with_base[root] += base
    # What charging adds beyond the limit -- or beyond the base load where that alone is over.
    excess = np.minimum(with_base - limits, pilots)
    base_excess = base - limits[root]
    n_t = r.grid.n_steps
    cond = r.conditions
    price = None if cond.price_eur_per_mwh is None else cond.price_eur_per_mwh[:n_t]
    co2 = None if cond.co2_g_per_kwh is None else cond.co2_g_per_kwh[:n_t]
    step_kwh = power_t * step_h  # (T,)
    cost = None
    if price is not None and not np.isnan(price[step_kwh > 0]).any():
        cost = float(np.nansum(step_kwh * price) / 1000.0)
    co2_kg = None
    if co2 is not None and not np.isnan(co2[step_kwh > 0]).any():
        co2_kg = float(np.nansum(step_kwh * co2) / 1000.0)
    wanted = requested > 1e-9
    share = np.where(wanted, energy / np.where(wanted, requested, 1.0), 1.0)
    shares = share[wanted]
    jain = 1.0
    if shares.size and shares.any():
        jain = float(shares.sum() ** 2 / (shares.size * (shares**2).sum()))
    delivered = float(energy.sum())
    total_req = float(requested.sum())
    out: dict[str, Any] = {
        "policy": r.policy,
        "scenario": r.scenario.name,
        "start": r.grid.start.isoformat(),
        "end": r.grid.end.isoformat(),
        "step_s": round(step_h * 3600),
        "intervals": n_t,
        "sessions": len(r.sessions),
        "energy_requested_kwh": _r(total_req),
        "energy_delivered_kwh": _r(delivered),
        "energy_share": _r(delivered / total_req) if total_req > 0 else 1.0,
        "unmet_energy_kwh": _r(max(total_req - delivered, 0.0)),
        "sessions_fully_charged": int(np.sum(share >= 1.0 - 1e-3)),
        "peak_kw": _r(power_t.max(initial=0.0)),
        "peak_site_kw": _r((power_t + base.sum(axis=1) * v / 1000.0).max(initial=0.0)),
        "max_phase_current_a": _r(conn.max(initial=0.0)),
        "peak_phase_current_a": {p: _r(conn[:, i].max(initial=0.0)) for i, p in enumerate(PHASES)},
        "limit_violation_max_a": _r(max(float(excess.max(initial=0.0)), 0.0)),
        "limit_violation_intervals": int(np.sum((excess > 1e-6).any(axis=(0, 2)))),
        "base_load_violation_max_a": _r(max(float(base_excess.max(initial=0.0)), 0.0)),
        "cost_eur": None if cost is None else _r(cost),
        "co2_kg": None if co2_kg is None else _r(co2_kg),
        "co2_g_per_kwh": None if co2_kg is None or delivered <= 0 else _r(co2_kg * 1000.0 / delivered),
        "nox_avoided_kg": _r(factors.nox_avoided_kg(delivered)),
        "emission_factors": asdict(factors),
        "jain_fairness": _r(jain),
        "fulfilment": {
            "min": _r(shares.min()) if shares.size else 1.0,
            "mean": _r(shares.mean()) if shares.size else 1.0,
        },
        "solve_time_s": _stats(r.solve_s),
        "replans": int(r.solve_s.size),
        "plan_status": dict(r.statuses),
        "guard_cuts": r.guard_cuts,
        "wall_s": _r(r.wall_s, 3),
    }
    return out


def session_table(result: SimulationResult):
    """Per-session fulfilment as a DataFrame: requested, delivered, share, plugged-in hours."""
    import pandas as pd

    r = result
    requested = np.array([s.energy_kwh for s in r.sessions])
    energy = r.energy_kwh
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(requested > 0, energy / requested, 1.0)
    return pd.DataFrame(
        {
            "session_id": [s.id for s in r.sessions],
            "station_id": [s.charge_point_id for s in r.sessions],
            "arrival": [s.arrival for s in r.sessions],
            "departure": [s.departure for s in r.sessions],
            "energy_requested_kwh": requested,
            "energy_delivered_kwh": energy,
            "fulfilment": share,
            "plugged_h": r.present.sum(axis=1) * r.step_h,
        }
    )
