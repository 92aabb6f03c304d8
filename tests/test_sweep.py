"""Sweeps on a real Dask cluster: same rows as in-process, bad cases reported, the CLI."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from collections.abc import Iterator

import pandas as pd
import pytest

from scheduler.loaders import shared_data_dir
from scheduler.sweep import (
    ACN_WEEK_START,
    Case,
    acn_limit_sweep,
    acn_scenario,
    is_timing_column,
    main,
    points_sweep,
    run_case,
    sweep,
)

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    """Two single-threaded worker processes, shared by the tests of this module."""
    with distributed.LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        dashboard_address=":0",
        silence_logs=logging.WARNING,
    ) as c:
        yield c


def _same(a: object, b: object) -> bool:
    def missing(x: object) -> bool:
        return x is None or (isinstance(x, float) and math.isnan(x))

    if missing(a) or missing(b):
        return missing(a) and missing(b)
    return a == b


def _tiny_cases() -> list[Case]:
    return points_sweep([3, 5], seeds=[2], policies=["edf", "milp"], feeder_limit_a=20.0, days=1)


def test_sweep_rows_equal_in_process_runs_and_a_bad_case_does_not_stop_it(cluster, caplog) -> None:
    bad = Case("nox-block", "edf", {"n_points": 0, "seed": 1, "days": 1})
    cases = [*_tiny_cases(), bad]
    with caplog.at_level(logging.WARNING, logger="scheduler.sweep"):
        df = sweep(cases, scheduler_address=cluster.scheduler_address, progress=False)

    assert list(df["case_index"]) == list(range(len(cases)))
    assert df["error"].iloc[:-1].isna().all()
    err = df["error"].iloc[-1]
    assert "case 4" in err and "n_points=0" in err and "ValueError" in err
    assert any("n_points=0" in r.getMessage() for r in caplog.records)

    for i, case in enumerate(cases[:-1]):
        here = run_case(case)
        got = df.iloc[i]
        for col, want in here.items():
            if is_timing_column(col):
                continue
            assert _same(got[col], want), (case.describe(), col, got[col], want)
    # The feeder binds: a case that would charge nothing is no test.
    assert (df["energy_delivered_kwh"].iloc[:-1] > 0).all()
    assert (df["limit_violation_max_a"].iloc[:-1] == 0).all()


def test_sweep_starts_and_stops_its_own_local_cluster() -> None:
    cases = points_sweep([2], seeds=[1, 2], policies=["equal-share"], days=1)
    df = sweep(cases, n_workers=2, progress=True)
    assert len(df) == 2 and df["error"].isna().all()
    assert list(df["seed"]) == [1, 2]
    assert df.loc[0, "energy_delivered_kwh"] != df.loc[1, "energy_delivered_kwh"]


def test_cli_writes_a_csv_through_a_scheduler_address(cluster, tmp_path) -> None:
    out = tmp_path / "sweep.csv"
    code = main(
        ["--out", str(out), "--scheduler", cluster.scheduler_address,
         "points", "--points", "2,3", "--seeds", "1", "--days", "1", "--policies", "edf"]
    )  # fmt: skip
    assert code == 0
    df = pd.read_csv(out)
    assert list(df["n_points"]) == [2, 3]
    assert {"energy_delivered_kwh", "nox_avoided_kg", "peak_phase_current_a_L1"} <= set(df.columns)


def test_module_help_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scheduler.sweep", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "points" in done.stdout and "acn" in done.stdout


def test_cases_are_validated_and_builders_cover_the_grid() -> None:
    with pytest.raises(ValueError, match="policy"):
        Case("nox-block", "fastest", {"n_points": 1, "seed": 1})
    with pytest.raises(ValueError, match="scenario"):
        Case("atlantis", "edf")
    with pytest.raises(TypeError, match="small and flat"):
        Case("nox-block", "edf", {"sessions": [1, 2, 3]})
    cases = points_sweep([4, 8, 12], seeds=[1, 2], policies=["edf", "milp"], feeder_limit_a=[32.0, 63.0])
    assert len(cases) == 3 * 2 * 2 * 2
    assert cases[0].describe() == "nox-block(n_points=4, seed=1, feeder_limit_a=32.0, days=7) edf step=900s"
    acn = acn_limit_sweep([20, 40], ["edf", "offline-optimal"])
    assert [(c.params["limit_a"], c.policy) for c in acn][:2] == [(20.0, "edf"), (20.0, "offline-optimal")]
    assert acn[0].params["start"] == ACN_WEEK_START


@pytest.mark.skipif(shared_data_dir() is None, reason="../shared/data not present")
def test_acn_case_builds_from_the_public_data() -> None:
    (case,) = acn_limit_sweep([25], ["llf"], "2019-06-04T00:00:00-07:00", "2019-06-04T12:00:00-07:00")
    row = run_case(case)
    assert row["scenario"] == "acn-caltech" and row["limit_a"] == 25.0
    assert row["sessions"] > 5
    assert row["max_phase_current_a"] <= 25.0 + 1e-6
    assert row["co2_g_per_kwh"] is not None and 20 < row["co2_g_per_kwh"] < 1000


@pytest.mark.skipif(shared_data_dir() is None, reason="../shared/data not present")
def test_acn_scenario_brings_the_sessions_before_it_as_history() -> None:
    built = acn_scenario(25.0, start="2019-06-04T00:00:00-07:00", end="2019-06-04T12:00:00-07:00")
    assert built.tz == "America/Los_Angeles"
    assert len(built.history) > 500  # May 2019 and June 1-3
    assert (
        max(s.arrival for s in built.history) < built.start <= min(s.arrival for s in built.scenario.sessions)
    )
