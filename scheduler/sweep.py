"""Sweeps: many simulations (scenarios x limits x points x policies) in parallel on Dask.

A :class:`Case` is a small, picklable *description* of one simulation: which scenario factory to
call with which arguments, which policy, the control step and look-ahead. Workers build the
scenario themselves -- nothing big travels over the wire -- run
:func:`scheduler.simulator.simulate`, and send back one row: the case's parameters and its
KPIs (:func:`scheduler.kpis.kpis`, nested figures flattened: ``fulfilment_min``,
``peak_phase_current_a_L1``, ...; the simulated period as ``period_start``/``period_end``; the
highest load on any group below the connection as ``peak_group_current_a`` [A] and
``peak_group_utilisation`` [share of its limit]). A case that fails gives a row with ``error``
set (the message names the case); the others go on.

By default :func:`sweep` starts a local cluster (one single-threaded worker process per core);
give ``scheduler_address="tcp://host:8786"`` to use a real cluster, whose workers need
``noxblock`` installed (and, for ACN cases, the public data: ``$NOXBLOCK_SHARED_DATA``)::

    from scheduler.sweep import points_sweep, sweep
    df = sweep(points_sweep([8, 16, 24, 32], seeds=[1, 2], policies=["edf", "milp"]))

or from the shell::

    python -m scheduler.sweep points --points 8,16,24 --seeds 1,2 --policies edf,milp --out sweep.csv
    python -m scheduler.sweep acn --limits-a 20,30,40 --policies edf,llf,milp --out acn.csv

Scenario factories (``Case.scenario``) are a name of :data:`SCENARIO_FACTORIES` or any importable
(or cloudpickle-able) callable ``f(**params) -> BuiltScenario | Scenario``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from models import Session
from scheduler.kpis import EmissionFactors, kpis
from scheduler.policies import POLICY_NAMES, make_policy
from scheduler.simulator import Scenario, SimulationResult, Taper, simulate

__all__ = [
    "ACN_WEEK_END",
    "ACN_WEEK_START",
    "SCENARIO_FACTORIES",
    "BuiltScenario",
    "Case",
    "CaseError",
    "acn_limit_sweep",
    "acn_scenario",
    "is_timing_column",
    "main",
    "nox_block",
    "points_sweep",
    "run_case",
    "sweep",
]

log = logging.getLogger(__name__)

#: The ACN-Sim benchmark week used in ``../shared/DOMAIN.md`` (Caltech, local midnight PDT).
ACN_WEEK_START = "2019-06-03T00:00:00-07:00"
ACN_WEEK_END = "2019-06-10T00:00:00-07:00"
ACN_TZ = ZoneInfo("America/Los_Angeles")


def is_timing_column(name: str) -> bool:
    """Columns that measure the machine, not the schedule: they differ between identical runs."""
    return name in ("wall_s", "case_wall_s") or (
        name.startswith("solve_time_s_") and name != "solve_time_s_count"
    )


class CaseError(RuntimeError):
    """A case failed; the message names the case."""


@dataclass(frozen=True)
class BuiltScenario:
    """What a scenario factory returns: the scenario and, optionally, the simulated period.

    ``start``/``end`` ``None``: from the first arrival to the last departure. ``history``:
    sessions before the period the rolling MILP may learn arrivals from, with day types and
    hours in the time zone ``tz``.
    """

    scenario: Scenario
    start: datetime | None = None
    end: datetime | None = None
    history: tuple[Session, ...] = ()
    tz: str = "UTC"


@dataclass(frozen=True)
class Case:
    """One simulation of a sweep, described, not built.

    Parameters
    ----------
    scenario : str or callable
        A name of :data:`SCENARIO_FACTORIES` (``"nox-block"``, ``"acn"``) or a callable
        ``f(**params)`` returning a :class:`BuiltScenario` or a :class:`Scenario`.
    policy : str
        One of :data:`scheduler.policies.POLICY_NAMES`.
    params : mapping
        Keyword arguments of the factory (``n_points``, ``seed``, ``feeder_limit_a``,
        ``limit_a``, ...); small values only. They become columns of the result.
    step_s, horizon_s : int
        Control interval and look-ahead [s].
    taper : bool
        EVs draw less near full (:class:`scheduler.simulator.Taper`).
    time_limit_s : float or None
        Solver time limit per plan [s]; ``None``: the policy's default.
    co2_eur_per_kg : float or None
        Shadow price of CO2 in the MILP's objective [EUR/kg]; ``None``: the default weights.
    """

    scenario: str | Callable[..., BuiltScenario | Scenario]
    policy: str
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    step_s: int = 900
    horizon_s: int = 86400
    taper: bool = False
    time_limit_s: float | None = None
    co2_eur_per_kg: float | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICY_NAMES:
            raise ValueError(f"policy: unknown {self.policy!r}; one of {', '.join(POLICY_NAMES)}")
        if isinstance(self.scenario, str):
            if self.scenario not in SCENARIO_FACTORIES:
                raise ValueError(
                    f"scenario: unknown {self.scenario!r}; one of {', '.join(SCENARIO_FACTORIES)} "
                    "or a callable"
                )
        elif not callable(self.scenario):
            raise TypeError(f"scenario: a factory name or a callable, got {self.scenario!r}")
        if self.step_s <= 0 or self.horizon_s < self.step_s:
            raise ValueError(f"step_s {self.step_s} must be > 0 and <= horizon_s {self.horizon_s}")
        for k, v in self.params.items():
            if not isinstance(v, (str, int, float, bool, type(None), datetime, tuple)):
                raise TypeError(f"params[{k!r}]: keep case parameters small and flat, got {type(v).__name__}")
        object.__setattr__(self, "params", dict(self.params))

    @property
    def scenario_name(self) -> str:
        s = self.scenario
        return s if isinstance(s, str) else getattr(s, "__name__", repr(s))

    def describe(self) -> str:
        """``nox-block(n_points=8, seed=1) edf step=900s``: how messages name the case."""
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.scenario_name}({args}) {self.policy} step={self.step_s}s"

    def columns(self) -> dict[str, Any]:
        """The case's parameters as result columns."""
        return {
            "scenario_factory": self.scenario_name,
            "policy": self.policy,
            "step_s": self.step_s,
            "horizon_s": self.horizon_s,
            "taper": self.taper,
            **self.params,
        }


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "_"))
        else:
            out[key] = v
    return out


def _build(case: Case) -> BuiltScenario:
    factory = SCENARIO_FACTORIES[case.scenario] if isinstance(case.scenario, str) else case.scenario
    built = factory(**case.params)
    if isinstance(built, Scenario):
        return BuiltScenario(built)
    if not isinstance(built, BuiltScenario):
        raise TypeError(f"factory {case.scenario_name} returned {type(built).__name__}, not a Scenario")
    return built


def _group_peaks(result: SimulationResult) -> dict[str, float]:
    """Highest current drawn on any phase of any group below the connection (a cable, a
    feeder) [A], and the highest share of its limit; NaN for a site without groups."""
    drawn = result.phase_current_a("current")[1:]  # nodes below the root
    limits = result.limits_a()[1:]
    if drawn.size == 0:
        return {"peak_group_current_a": math.nan, "peak_group_utilisation": math.nan}
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(limits > 0, drawn / limits, 0.0)
    return {
        "peak_group_current_a": round(float(drawn.max()), 6),
        "peak_group_utilisation": round(float(share.max()), 6),
    }


def run_case(case: Case, factors: EmissionFactors | None = None) -> dict[str, Any]:
    """Build and simulate ``case`` here, in this process; its row (parameters + flat KPIs).

    Raises whatever building or simulating raises.
    """
    t0 = time.perf_counter()
    built = _build(case)
    policy = make_policy(
        case.policy,
        co2_eur_per_kg=case.co2_eur_per_kg,
        time_limit_s=case.time_limit_s,
        history=built.history,
        tz=built.tz,
    )
    result = simulate(
        built.scenario,
        policy,
        step=timedelta(seconds=case.step_s),
        horizon=timedelta(seconds=case.horizon_s),
        start=built.start,
        end=built.end,
        taper=Taper() if case.taper else None,
    )
    figures = _flatten(kpis(result, factors))
    for k in ("policy", "step_s"):  # the case's columns say it
        figures.pop(k, None)
    figures["period_start"] = figures.pop("start")
    figures["period_end"] = figures.pop("end")
    figures.update(_group_peaks(result))
    row = case.columns()
    for k, v in figures.items():
        row[f"kpi_{k}" if k in row else k] = v
    row["case_wall_s"] = round(time.perf_counter() - t0, 3)
    return row


def _run_case_safe(index: int, case: Case, factors: EmissionFactors | None) -> dict[str, Any]:
    """On a worker: the case's row, or its parameters and ``error`` naming the case."""
    try:
        row = run_case(case, factors)
        row["error"] = None
    except Exception as err:  # a sweep reports a bad case and goes on
        row = case.columns()
        row["error"] = f"case {index} [{case.describe()}]: {type(err).__name__}: {err}"
    row["case_index"] = index
    return row


def sweep(
    cases: Iterable[Case],
    *,
    scheduler_address: str | None = None,
    n_workers: int | None = None,
    progress: bool = True,
    client: Any = None,
    factors: EmissionFactors | None = None,
) -> pd.DataFrame:
    """Run ``cases`` on Dask; one row per case, in the order given.

    Parameters
    ----------
    cases : iterable of Case
    scheduler_address : str or None
        ``tcp://host:8786`` of a running Dask scheduler; ``None``: start a local cluster of
        single-threaded worker processes for this sweep.
    n_workers : int or None
        Worker processes of the local cluster; default ``min(cores, cases)``.
    progress : bool
        Log one line per finished case (logger ``scheduler.sweep``, INFO).
    client : distributed.Client or None
        An existing client to reuse (overrides ``scheduler_address``).
    factors : EmissionFactors or None
        Factors of ``nox_avoided_kg``.

    Returns
    -------
    DataFrame
        The case parameters, the flattened KPIs, ``case_index``, ``case_wall_s`` [s] and
        ``error`` (``None`` when the case ran). Failed cases are logged as warnings.
    """
    from distributed import Client, LocalCluster, as_completed

    cases = list(cases)
    if not cases:
        return pd.DataFrame()
    cluster = None
    own_client = client is None
    t0 = time.perf_counter()
    if client is None:
        if scheduler_address is None:
            workers = n_workers or max(1, min(os.cpu_count() or 1, len(cases)))
            cluster = LocalCluster(
                n_workers=workers,
                processes=True,
                threads_per_worker=1,
                dashboard_address=":0",
                silence_logs=logging.WARNING,
            )
            client = Client(cluster)
        else:
            client = Client(scheduler_address)
    try:
        log.info("sweep: %d cases on %s", len(cases), client.scheduler.address)
        futures = {client.submit(_run_case_safe, i, c, factors, pure=False): i for i, c in enumerate(cases)}
        rows: dict[int, dict[str, Any]] = {}
        for done, fut in enumerate(as_completed(futures), start=1):
            i = futures[fut]
            try:
                row = fut.result()
            except Exception as err:  # the worker died (KilledWorker) or could not unpickle
                row = cases[i].columns()
                row.update(
                    case_index=i, error=f"case {i} [{cases[i].describe()}]: {type(err).__name__}: {err}"
                )
            rows[i] = row
            if row["error"]:
                log.warning("sweep: %s", row["error"])
            elif progress:
                log.info(
                    "sweep: %d/%d done (%.1f s): %s -> %.1f kWh",
                    done,
                    len(cases),
                    row["case_wall_s"],
                    cases[i].describe(),
                    row["energy_delivered_kwh"],
                )
    finally:
        if own_client:
            client.close()
            if cluster is not None:
                cluster.close()
    failed = sum(1 for r in rows.values() if r["error"])
    log.info("sweep: %d cases in %.1f s, %d failed", len(cases), time.perf_counter() - t0, failed)
    df = pd.DataFrame([rows[i] for i in range(len(cases))])
    first = ["case_index", *cases[0].columns(), "error"]
    return df[[c for c in first if c in df] + [c for c in df if c not in first]]


# --------------------------------------------------------------------------------------------
# Scenario factories


def nox_block(
    n_points: int,
    seed: int,
    *,
    days: int = 7,
    feeder_limit_a: float = 63.0,
    transformer_limit_a: float = 360.0,
    **kwargs: Any,
) -> BuiltScenario:
    """The seeded NOX-Block street (:func:`scheduler.scenarios.nox_block_scenario`), simulated
    from its start until the last EV has left; other keyword arguments go to the generator."""
    from scheduler.scenarios import nox_block_scenario

    street = nox_block_scenario(
        n_points,
        seed,
        days=days,
        feeder_limit_a=feeder_limit_a,
        transformer_limit_a=transformer_limit_a,
        **kwargs,
    )
    return BuiltScenario(street.scenario(), street.start, None)


def _aware(t: str | datetime, name: str) -> datetime:
    out = datetime.fromisoformat(t) if isinstance(t, str) else t
    if out.tzinfo is None:
        raise ValueError(f"{name}={t!r}: give a UTC offset")
    return out


def same_weekday_in(year: int, t: datetime, tz: ZoneInfo) -> datetime:
    """The time in ``year`` on the same weekday, near the same date, at the same wall-clock time
    as ``t`` (in ``tz``) -- how 2019 sessions get 2023 signals; UTC."""
    local = t.astimezone(tz)
    moved = local.replace(year=year, tzinfo=None)
    moved += timedelta(days=(local.weekday() - moved.weekday()) % 7)
    return moved.replace(tzinfo=tz).astimezone(UTC)


def acn_scenario(
    limit_a: float,
    *,
    start: str | datetime = ACN_WEEK_START,
    end: str | datetime = ACN_WEEK_END,
    site: str = "caltech",
    energy: str = "delivered",
    point_max_current_a: float = 32.0,
    min_current_a: float = 6.0,
    voltage_v: float = 230.0,
    signals: bool = True,
    signals_tz: str = "Europe/Berlin",
) -> BuiltScenario:
    """ACN-Data sessions arriving in ``[start, end)`` on an ACN site with a per-phase limit.

    Parameters
    ----------
    limit_a : float
        Per-phase limit at the connection [A] (the "transformer capacity" of the ACN-Sim figure).
    start, end : ISO 8601 with offset or aware datetime
        Arrival window; the simulation runs from ``start`` until the last EV has left.
    site : ``"caltech"`` or ``"jpl"``
    energy, point_max_current_a, min_current_a, voltage_v :
        See :func:`scheduler.loaders.load_acn` and :func:`scheduler.loaders.acn_site`.
    signals : bool
        Add Energy-Charts price [EUR/MWh] and estimated CO2 [g/kWh] of 2023, taken from the same
        weekday and the same wall-clock hour in ``signals_tz`` as the site's local time -- as if
        the garage stood in Germany.

    The sessions of the same file before ``start`` (from 2019-05-01) come along as history.
    Needs the public data (:func:`scheduler.loaders.shared_data_dir`).
    """
    from scheduler.loaders import acn_site, energy_charts_signals, load_acn, shared_data_dir

    data = shared_data_dir()
    if data is None:
        raise FileNotFoundError("ACN data: no ../shared/data and no $NOXBLOCK_SHARED_DATA")
    t0, t1 = _aware(start, "start"), _aware(end, "end")
    path = data / "acn" / f"{site}_2019-05-01_2019-08-31.csv.gz"
    sessions = load_acn(path, t0, t1, energy=energy)
    history = tuple(load_acn(path, datetime(2019, 5, 1, tzinfo=ACN_TZ), t0, energy=energy))
    if not sessions:
        raise ValueError(f"no ACN {site} sessions arrive in [{t0.isoformat()}, {t1.isoformat()})")
    st = acn_site(
        sessions,
        max_current_a=limit_a,
        point_max_current_a=point_max_current_a,
        min_current_a=min_current_a,
        voltage_v=voltage_v,
        site_id=f"acn-{site}",
    )
    sig = None
    if signals:
        last = max(s.departure for s in sessions) + timedelta(days=2)  # covers every look-ahead
        sig = energy_charts_signals(
            data / "energy_charts_de_2023_hourly.csv",
            t0,
            last,
            source_start=same_weekday_in(2023, t0.astimezone(ACN_TZ), ZoneInfo(signals_tz)),
        )
    scenario = Scenario.from_series(st, sessions, signals=sig, name=f"acn-{site}")
    return BuiltScenario(scenario, t0, None, history=history, tz=str(ACN_TZ))


#: Scenario factories a :class:`Case` may name.
SCENARIO_FACTORIES: dict[str, Callable[..., BuiltScenario | Scenario]] = {
    "nox-block": nox_block,
    "acn": acn_scenario,
}


# --------------------------------------------------------------------------------------------
# Case builders for the notebooks' questions


def points_sweep(
    n_points_list: Sequence[int],
    seeds: Sequence[int],
    policies: Sequence[str],
    *,
    feeder_limit_a: float | Sequence[float] = 63.0,
    days: int = 7,
    step_s: int = 900,
    horizon_s: int = 86400,
    time_limit_s: float | None = None,
    **scenario_kwargs: Any,
) -> list[Case]:
    """ "How many lamppost points fit on this feeder?": every number of points x seed x feeder
    limit [A] x policy on the NOX-Block generator."""
    limits = [feeder_limit_a] if isinstance(feeder_limit_a, (int, float)) else list(feeder_limit_a)
    return [
        Case(
            "nox-block",
            policy,
            {
                "n_points": int(n),
                "seed": int(seed),
                "feeder_limit_a": float(lim),
                "days": days,
                **scenario_kwargs,
            },
            step_s=step_s,
            horizon_s=horizon_s,
            time_limit_s=time_limit_s,
        )
        for n in n_points_list
        for seed in seeds
        for lim in limits
        for policy in policies
    ]


def acn_limit_sweep(
    limits_a: Sequence[float],
    policies: Sequence[str],
    start: str | datetime = ACN_WEEK_START,
    end: str | datetime = ACN_WEEK_END,
    *,
    step_s: int = 900,
    horizon_s: int = 86400,
    time_limit_s: float | None = None,
    **scenario_kwargs: Any,
) -> list[Case]:
    """Energy delivered vs capacity (the ACN-Sim figure): every per-phase limit [A] x policy on
    ACN sessions arriving in ``[start, end)``. Needs the public data on every worker."""
    s = start if isinstance(start, str) else start.isoformat()
    e = end if isinstance(end, str) else end.isoformat()
    return [
        Case(
            "acn",
            policy,
            {"limit_a": float(lim), "start": s, "end": e, **scenario_kwargs},
            step_s=step_s,
            horizon_s=horizon_s,
            time_limit_s=time_limit_s,
        )
        for lim in limits_a
        for policy in policies
    ]


# --------------------------------------------------------------------------------------------
# Command line


def _list(kind: type) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a comma-separated list of {kind.__name__}: {text!r}"
            ) from None

    return parse


def _policies(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in POLICY_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown policies {bad}; one of {', '.join(POLICY_NAMES)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scheduler.sweep {points,acn} ... --out FILE.csv``."""
    ap = argparse.ArgumentParser(prog="python -m scheduler.sweep", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="result CSV, one row per case")
    ap.add_argument("--scheduler", default=None, help="tcp://host:8786 of a Dask scheduler (default: local)")
    ap.add_argument("--workers", type=int, default=None, help="worker processes of the local cluster")
    ap.add_argument("--step-s", type=int, default=900, help="control interval [s]")
    ap.add_argument("--horizon-s", type=int, default=86400, help="look-ahead [s]")
    ap.add_argument("--time-limit-s", type=float, default=None, help="solver time limit per plan [s]")
    sub = ap.add_subparsers(dest="kind", required=True)
    pp = sub.add_parser("points", help="NOX-Block street: number of points x seeds x feeder limits")
    pp.add_argument("--points", type=_list(int), required=True, help="e.g. 8,16,24")
    pp.add_argument("--seeds", type=_list(int), default=[1])
    pp.add_argument("--feeder-limit-a", type=_list(float), default=[63.0], help="per-phase cable limits [A]")
    pp.add_argument("--days", type=int, default=7)
    pp.add_argument("--policies", type=_policies, default=["edf", "milp"])
    pa = sub.add_parser("acn", help="ACN Caltech sessions: per-phase limits x policies")
    pa.add_argument(
        "--limits-a", type=_list(float), required=True, help="per-phase limits [A], e.g. 20,30,40"
    )
    pa.add_argument("--start", default=ACN_WEEK_START, help="ISO 8601 with offset")
    pa.add_argument("--end", default=ACN_WEEK_END, help="ISO 8601 with offset")
    pa.add_argument("--site", choices=("caltech", "jpl"), default="caltech")
    pa.add_argument("--policies", type=_policies, default=["edf", "llf", "milp", "offline-optimal"])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    common = {"step_s": args.step_s, "horizon_s": args.horizon_s, "time_limit_s": args.time_limit_s}
    if args.kind == "points":
        cases = points_sweep(
            args.points,
            args.seeds,
            args.policies,
            feeder_limit_a=args.feeder_limit_a,
            days=args.days,
            **common,
        )
    else:
        cases = acn_limit_sweep(args.limits_a, args.policies, args.start, args.end, site=args.site, **common)
    df = sweep(cases, scheduler_address=args.scheduler, n_workers=args.workers)
    df.to_csv(args.out, index=False)
    failed = int(df["error"].notna().sum())
    log.info("wrote %d rows to %s (%d failed)", len(df), args.out, failed)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
