"""The `noxblock` command as a user runs it."""

from __future__ import annotations

import subprocess
import sys

from noxblock.cli import POLICIES, main


def test_district_prints_every_policy_and_only_uncontrolled_overloads(capsys) -> None:
    assert main(["district", "--sessions", "60", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for name in POLICIES:
        assert name in rows, out
    # columns: policy, delivered, share, peak, limit, overload, violations, ...
    for name in ("equal-share", "edf", "llf", "milp"):
        assert float(rows[name][5]) == 0.0 and int(rows[name][6]) == 0, rows[name]
    assert float(rows["milp"][1]) >= max(float(rows[n][1]) for n in ("equal-share", "edf", "llf")) - 1e-6


def test_district_output_is_not_interrupted_by_the_solver_banner() -> None:
    # A fresh process: the HiGHS banner is written to fd 1 when the first solver is made.
    proc = subprocess.run(
        [sys.executable, "-m", "noxblock.cli", "district", "--sessions", "20"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "milp" in proc.stdout
    assert "HiGHS" not in proc.stdout


def test_console_script_without_command_exits_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "noxblock.cli"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "district" in proc.stderr
