"""``noxblock demo`` as ``make demo`` runs it, shortened: a fresh process, the service, the simulated
street over real websockets, the grid operator's cut, the KPI summary at the end."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_the_loop_and_ends_with_a_kpi_summary_without_violations() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "noxblock.cli",
            "demo",
            "--duration",
            "12",
            "--speed",
            "1800",
            "--api-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/", out)
    assert "grid operator: 55 A per phase" in out
    assert "KPI summary" in out
    delivered = float(re.search(r"energy delivered:\s+([\d.]+) kWh", out).group(1))
    assert delivered > 0
    assert re.search(r"limit violations:\s+none", out)
    # Hourly progress lines show the plan at work.
    assert re.search(r"\d\d:\d\d +\d+ EVs plugged in", out)
