"""The seeded NOX-Block-like scenario generator: valid, reproducible, readable by the loaders."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from scheduler.loaders import load_sessions, load_signals, load_site
from scheduler.scenarios import LOCAL_TZ, main, nox_block_scenario

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("n_points", "seed"), [(1, 0), (10, 3), (40, 7)])
def test_scenario_round_trips_through_the_contract_files(tmp_path: Path, n_points: int, seed: int) -> None:
    sc = nox_block_scenario(n_points, seed, days=3, with_signals=True)
    paths = sc.write(tmp_path)
    cfg = load_site(paths["site"])
    assert cfg.site == sc.site
    assert load_sessions(paths["sessions"], cfg.site) == list(sc.sessions)
    assert cfg.base_load is not None and cfg.base_load.times == sc.base_load.times
    for c in sc.base_load.names:
        np.testing.assert_allclose(cfg.base_load.columns[c], sc.base_load.columns[c], atol=0.005)
    sig = load_signals(paths["signals"])
    np.testing.assert_allclose(sig.columns["co2_g_per_kwh"], sc.signals.columns["co2_g_per_kwh"])


def test_scenario_is_seeded_and_plausible() -> None:
    a = nox_block_scenario(24, 5)
    assert a == nox_block_scenario(24, 5)
    assert a.sessions != nox_block_scenario(24, 6).sessions
    site = a.site
    assert len(site.charge_points) == 24 and 2 <= len(site.groups) <= 4
    assert {cp.phase_rotation for cp in site.charge_points} == {"L1L2L3", "L2L3L1", "L3L1L2"}
    assert all(cp.phases == 3 and cp.max_current_a == 16.0 for cp in site.charge_points)
    assert all(a.start <= s.arrival < a.end for s in a.sessions)
    assert all(0 <= s.energy_kwh <= 60 for s in a.sessions)
    # mostly evening arrivals that stay overnight
    evening = [s for s in a.sessions if s.arrival.astimezone(LOCAL_TZ).hour >= 15]
    assert len(evening) > 0.5 * len(a.sessions)
    assert np.median([(s.departure - s.arrival).total_seconds() / 3600 for s in evening]) > 8
    # base load peaks in the evening (local time)
    l1 = a.base_load.columns["l1_a"]
    peak_hour = a.base_load.times[int(np.argmax(l1))].astimezone(LOCAL_TZ).hour
    assert 16 <= peak_hour <= 22 and (l1 > 0).all()


def test_no_overlap_on_one_connector() -> None:
    sc = nox_block_scenario(12, 2, days=14, overnight_per_day=1.0, daytime_per_day=1.0)
    by_cp: dict[str, list] = {}
    for s in sc.sessions:
        by_cp.setdefault(s.charge_point_id, []).append(s)
    for ss in by_cp.values():
        ss.sort(key=lambda s: s.arrival)
        assert all(x.departure <= y.arrival for x, y in itertools.pairwise(ss))


def test_committed_example_matches_its_command(tmp_path: Path) -> None:
    example = REPO / "data" / "lippestrasse"
    assert main(["--points", "24", "--seed", "1", "--signals", "--out", str(tmp_path)]) == 0
    for name in ("site.toml", "base_load.csv", "sessions.csv", "signals.csv"):
        assert (tmp_path / name).read_text() == (example / name).read_text(), name
    assert sum(p.stat().st_size for p in example.iterdir()) < 200_000
