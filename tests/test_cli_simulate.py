"""``noxblock simulate`` and ``noxblock compare`` as a user runs them, files in and files out."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
STREET = ROOT / "data" / "lippestrasse"
END = "2024-01-09T12:00:00+00:00"  # one and a half days of the committed week: quick


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "noxblock.cli", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def street(tmp_path: Path) -> Path:
    d = tmp_path / "street"
    shutil.copytree(STREET, d)
    return d


def test_simulate_writes_the_contract_outputs(street: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    p = run(
        "simulate", "--site", str(street / "site.toml"), "--sessions", str(street / "sessions.csv"),
        "--signals", str(street / "signals.csv"), "--policy", "milp", "--step", "15min",
        "--horizon", "12h", "--end", END, "--out", str(out),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    k = json.loads((out / "kpis.json").read_text())
    assert k["policy"] == "milp"
    assert k["limit_violation_max_a"] == 0.0
    assert 0 < k["energy_delivered_kwh"] <= k["energy_requested_kwh"]
    assert k["cost_eur"] is not None and k["co2_kg"] is not None
    assert set(k["solve_time_s"]) >= {"median", "max"}
    sp = pd.read_csv(out / "setpoints.csv")
    assert list(sp.columns) == ["time", "station_id", "session_id", "pilot_a", "current_a", "power_kw"]
    assert (sp.current_a <= sp.pilot_a + 1e-9).all()
    times = pd.to_datetime(sp.time)
    assert times.dt.tz is not None and times.max() < pd.Timestamp(END)
    # The energy in the table is the energy in the KPIs.
    assert sp.power_kw.sum() * 0.25 == pytest.approx(k["energy_delivered_kwh"], rel=1e-4)
    assert (out / "sessions.csv").exists()
    assert "milp:" in p.stdout


def test_bad_sessions_row_exits_2_naming_file_row_and_field(street: Path, tmp_path: Path) -> None:
    path = street / "sessions.csv"
    lines = path.read_text().splitlines()
    cells = lines[2].split(",")
    cells[2] = "2024-01-08 07:20"  # no offset
    lines[2] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    p = run(
        "simulate", "--site", str(street / "site.toml"), "--sessions", str(path), "--out", str(tmp_path / "o")
    )
    assert p.returncode == 2
    assert "sessions.csv:3" in p.stderr and "arrival" in p.stderr, p.stderr
    assert not (tmp_path / "o" / "kpis.json").exists()


def test_bad_site_field_exits_2(street: Path, tmp_path: Path) -> None:
    site = street / "site.toml"
    site.write_text(site.read_text().replace("phases = 3", "phases = 2", 1))
    p = run(
        "simulate", "--site", str(site), "--sessions", str(street / "sessions.csv"), "--out", str(tmp_path)
    )
    assert p.returncode == 2
    assert "site.toml" in p.stderr and "phases" in p.stderr, p.stderr


def test_unknown_station_exits_2(street: Path, tmp_path: Path) -> None:
    path = street / "sessions.csv"
    path.write_text(path.read_text().replace(",LP03,", ",NOPE,", 1))
    p = run("simulate", "--site", str(street / "site.toml"), "--sessions", str(path), "--out", str(tmp_path))
    assert p.returncode == 2
    assert "station_id" in p.stderr and "NOPE" in p.stderr, p.stderr


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--start", "2024-01-08T00:00"),
        ("--step", "soon"),
        ("--policy", "magic"),
        ("--timezone", "Mars/Olympus"),
        ("--reserve-scale", "-1"),
        ("--reserve-scale", "nan"),
    ],
)
def test_bad_options_exit_2(street: Path, tmp_path: Path, flag: str, value: str) -> None:
    p = run(
        "simulate", "--site", str(street / "site.toml"), "--sessions", str(street / "sessions.csv"),
        "--out", str(tmp_path), flag, value,
    )  # fmt: skip
    assert p.returncode == 2
    assert flag in p.stderr, p.stderr


def test_compare_writes_a_table_per_policy(street: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    p = run(
        "compare", "--site", str(street / "site.toml"), "--sessions", str(street / "sessions.csv"),
        "--policies", "edf,llf,uncontrolled", "--end", END, "--out", str(out),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    table = pd.read_csv(out / "comparison.csv", index_col="policy")
    assert list(table.index) == ["edf", "llf", "uncontrolled"]
    for name in table.index:
        assert (out / name / "kpis.json").exists()
    assert table.loc["edf", "limit_violation_max_a"] == 0.0


def test_empty_sessions_file_needs_a_period(street: Path, tmp_path: Path) -> None:
    path = street / "sessions.csv"
    path.write_text(path.read_text().splitlines()[0] + "\n")
    p = run(
        "simulate", "--site", str(street / "site.toml"), "--sessions", str(path), "--out", str(tmp_path / "a")
    )
    assert p.returncode == 2 and "sessions.csv" in p.stderr and "--start" in p.stderr, p.stderr
    period = ["--start", "2024-01-08T00:00:00+00:00", "--end", "2024-01-08T06:00:00+00:00"]
    site = str(street / "site.toml")
    p = run("simulate", "--site", site, "--sessions", str(path), "--out", str(tmp_path / "b"), *period)
    assert p.returncode == 0, p.stderr
    k = json.loads((tmp_path / "b" / "kpis.json").read_text())
    assert k["sessions"] == 0 and k["energy_delivered_kwh"] == 0.0 and k["limit_violation_max_a"] == 0.0


def test_history_is_read_and_checked(street: Path, tmp_path: Path) -> None:
    """``--history``: a sessions CSV; its bad rows exit 2 like the sessions file's."""
    history = tmp_path / "history.csv"
    text = (street / "sessions.csv").read_text()
    history.write_text(text.replace("2024-01-0", "2023-12-2"))  # the same week, two weeks before
    common = ["simulate", "--site", str(street / "site.toml"), "--sessions", str(street / "sessions.csv"),
              "--signals", str(street / "signals.csv"), "--horizon", "12h", "--end", END,
              "--timezone", "Europe/Berlin", "--history", str(history)]  # fmt: skip
    p = run(*common, "--out", str(tmp_path / "o"))
    assert p.returncode == 0, p.stderr
    k = json.loads((tmp_path / "o" / "kpis.json").read_text())
    assert k["limit_violation_max_a"] == 0.0 and k["energy_delivered_kwh"] > 0
    lines = history.read_text().splitlines()
    lines[3] = lines[3].replace(",LP", ",XX", 1)
    history.write_text("\n".join(lines) + "\n")
    p = run(*common, "--out", str(tmp_path / "bad"))
    assert p.returncode == 2
    assert "history.csv:4" in p.stderr and "station_id" in p.stderr, p.stderr
