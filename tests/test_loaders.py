"""Loaders: contract files round-trip, every bad input names file/line/field, real data sets load."""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.problem import ChargePoint, Session, Site
from scheduler.errors import InputError
from scheduler.loaders import (
    StepSeries,
    acn_site,
    co2_from_residual_load,
    energy_charts_signals,
    load_acn,
    load_energy_charts,
    load_sessions,
    load_signals,
    load_site,
    load_trondheim,
    resolve_overlaps,
    write_sessions_csv,
    write_signals_csv,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)

SITE_TOML = """\
[site]
id = "lippestrasse"
voltage_v = 230.0
max_current_a = 100.0
{site_extra}

[[groups]]
id = "feeder-1"
max_current_a = 63.0
{group_extra}

[[charge_points]]
id = "CP01"
group = "feeder-1"
password = "change-me"

[[charge_points]]
id = "CP02"
phases = 1
phase_rotation = "L2L3L1"

[[charge_points]]
id = "CP03"
{cp_extra}
"""


def write_site(tmp_path: Path, site_extra: str = "", group_extra: str = "", cp_extra: str = "") -> Path:
    p = tmp_path / "site.toml"
    p.write_text(SITE_TOML.format(site_extra=site_extra, group_extra=group_extra, cp_extra=cp_extra))
    return p


def shared_data() -> Path:
    env = os.environ.get("NOXBLOCK_SHARED_DATA")
    d = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not d.is_dir():
        pytest.skip(f"public data sets not found at {d}")
    return d


# ---------------------------------------------------------------------------------------------
# InputError


def test_input_error_renders_file_line_field() -> None:
    e = InputError("sessions.csv", 14, "arrival", "not ISO 8601 with a UTC offset: '2024-01-01 10:00'")
    assert str(e) == "sessions.csv:14: arrival: not ISO 8601 with a UTC offset: '2024-01-01 10:00'"
    e = InputError("sites/a.toml", None, "charge_points[2].phases", "must be 1 or 3, got 2")
    assert str(e) == "sites/a.toml: charge_points[2].phases: must be 1 or 3, got 2"
    assert str(InputError("x.csv", None, None, "file not found")) == "x.csv: file not found"
    assert isinstance(e, ValueError)


# ---------------------------------------------------------------------------------------------
# Site TOML


def test_load_site_reads_defaults_groups_passwords(tmp_path: Path) -> None:
    cfg = load_site(write_site(tmp_path))
    site = cfg.site
    assert site.id == "lippestrasse" and site.voltage_v == 230.0
    assert site.max_current_a == (100.0, 100.0, 100.0)
    assert [g.id for g in site.groups] == ["feeder-1"] and site.groups[0].parent == "site"
    cp1, cp2, _cp3 = site.charge_points
    assert cp1 == ChargePoint("CP01", "feeder-1", 3, "L1L2L3", 16.0, 6.0, 1)
    assert (cp2.node_id, cp2.phases, cp2.phase_rotation) == ("site", 1, "L2L3L1")
    assert cfg.passwords == {"CP01": "change-me"}
    assert cfg.base_load is None and cfg.max_unbalance_a is None
    assert cfg.path == tmp_path / "site.toml"


def test_load_site_per_phase_limit_unbalance_and_base_load(tmp_path: Path) -> None:
    (tmp_path / "bl.csv").write_text(
        "time,l1_a,l2_a,l3_a\n2024-01-01T00:00:00+01:00,1,2,3\n2024-01-01T01:00:00+01:00,4,5,-6\n"
    )
    p = write_site(tmp_path, 'base_load = "bl.csv"\nmax_unbalance_a = 20.0')
    p.write_text(p.read_text().replace("max_current_a = 100.0", "max_current_a = [100, 90.0, 80]"))
    cfg = load_site(p)
    assert cfg.site.max_current_a == (100.0, 90.0, 80.0)
    assert cfg.max_unbalance_a == 20.0
    bl = cfg.base_load
    assert bl is not None and bl.names == ("l1_a", "l2_a", "l3_a")
    got = bl.on_grid([T0 - timedelta(hours=2), T0 - timedelta(minutes=30), T0 + timedelta(hours=5)])
    assert np.isnan(got[0]).all()
    assert got[1].tolist() == [1.0, 2.0, 3.0] and got[2].tolist() == [4.0, 5.0, -6.0]


@pytest.mark.parametrize(
    ("site_extra", "group_extra", "cp_extra", "field", "words"),
    [
        ("voltag_v = 1", "", "", "site.voltag_v", "did you mean 'voltage_v'"),
        ("", "", "phases = 2", "charge_points[2].phases", "must be 1 or 3, got 2"),
        ("", "", "phase_rotation = 'L1L3L2'", "charge_points[2].phase_rotation", "L1L3L2"),
        ("", "", "connectors = 0", "charge_points[2].connectors", ">= 1"),
        ("", "", "max_current_a = 'x'", "charge_points[2].max_current_a", "number"),
        ("", "", "max_current_a = true", "charge_points[2].max_current_a", "number"),
        ("", "", "min_current_a = 20.0", "charge_points[2].min_current_a", "above max_current_a"),
        ("", "", "group = 'feeder-9'", "charge_points[2].group", "unknown group 'feeder-9'"),
        ("", "", "pasword = 'x'", "charge_points[2].pasword", "did you mean 'password'"),
        ("", "", "password = ''", "charge_points[2].password", "non-empty"),
        ("", "parent = 'nowhere'", "", "groups[0].parent", "unknown group 'nowhere'"),
        ("", "max_current_a = -1.0", "", "groups[0].max_current_a", ">= 0"),
        ("base_load = 'missing.csv'", "", "", "site.base_load", "file not found"),
        ("max_unbalance_a = -3", "", "", "site.max_unbalance_a", ">= 0"),
    ],
)
def test_load_site_errors_name_the_field(
    tmp_path: Path, site_extra: str, group_extra: str, cp_extra: str, field: str, words: str
) -> None:
    p = write_site(tmp_path, site_extra, group_extra, cp_extra)
    # a later duplicate [[groups]] key would mask the case; group_extra replaces the limit line
    if group_extra.startswith("max_current_a"):
        p.write_text(p.read_text().replace("max_current_a = 63.0\n", ""))
    with pytest.raises(InputError) as ei:
        load_site(p)
    e = ei.value
    assert e.file == str(p) and e.field == field, str(e)
    assert words in e.message, str(e)
    assert str(e).startswith(f"{p}: {field}: ")


def test_load_site_whole_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        load_site(tmp_path / "nope.toml")
    p = tmp_path / "bad.toml"
    p.write_text('[site]\nid = "a"\nvoltage_v = \n')
    with pytest.raises(InputError) as ei:
        load_site(p)
    assert ei.value.row == 3 and "not valid TOML" in ei.value.message
    p.write_text('[sites]\nid = "a"\n')
    with pytest.raises(InputError, match=r"sites: unknown key \(did you mean 'site'"):
        load_site(p)
    p.write_text('[site]\nid = "a"\nvoltage_v = 230\n')
    with pytest.raises(InputError, match=r"site.max_current_a: required key missing"):
        load_site(p)
    p.write_text(
        '[site]\nid = "a"\nvoltage_v = 230\nmax_current_a = 10\n'
        '[[charge_points]]\nid = "A"\n[[charge_points]]\nid = "A"\n'
    )
    with pytest.raises(InputError, match=r"charge_points\[1\].id: duplicate charge point id 'A'"):
        load_site(p)
    p.write_text(
        '[site]\nid = "a"\nvoltage_v = 230\nmax_current_a = 10\n'
        '[[groups]]\nid = "g1"\nmax_current_a = 5\nparent = "g2"\n'
        '[[groups]]\nid = "g2"\nmax_current_a = 5\nparent = "g1"\n'
    )
    with pytest.raises(InputError, match="cycle"):
        load_site(p)


def test_base_load_errors_name_the_csv(tmp_path: Path) -> None:
    (tmp_path / "bl.csv").write_text("time,l1_a,l2_a,l3_a\n2024-01-01T00:00:00+00:00,1,,3\n")
    p = write_site(tmp_path, 'base_load = "bl.csv"')
    with pytest.raises(InputError) as ei:
        load_site(p)
    assert (ei.value.file, ei.value.row, ei.value.field) == (str(tmp_path / "bl.csv"), 2, "l2_a")


# ---------------------------------------------------------------------------------------------
# Sessions CSV

HEADER = "session_id,station_id,arrival,departure,energy_kwh,max_power_kw,phases\n"
GOOD = "s1,CP01,2024-01-01T18:00:00+01:00,2024-01-02T07:00:00+01:00,20.5,,\n"


def small_site(connectors: int = 1) -> Site:
    return Site(
        "s",
        230.0,
        100.0,
        charge_points=(ChargePoint("CP01", connectors=connectors), ChargePoint("CP02", phases=1)),
    )


def test_sessions_round_trip(tmp_path: Path) -> None:
    sessions = [
        Session("a", "CP01", T0, T0 + timedelta(hours=9), 20.5),
        Session("b", "CP02", T0 + timedelta(hours=1), T0 + timedelta(hours=3), 0.0, 3.7, 1, 2.0),
        Session("c", "CP01", T0 + timedelta(hours=9), T0 + timedelta(hours=10, seconds=1), 1 / 3),
    ]
    p = tmp_path / "sessions.csv"
    write_sessions_csv(sessions, p)
    assert load_sessions(p, small_site()) == sessions


def test_sessions_read_offsets_to_utc_and_empty_optionals(tmp_path: Path) -> None:
    p = tmp_path / "s.csv"
    p.write_text(HEADER + GOOD + "\n")
    (s,) = load_sessions(p)
    assert s.arrival == datetime(2024, 1, 1, 17, tzinfo=UTC) and s.arrival.tzinfo is UTC
    assert (s.max_power_kw, s.phases, s.energy_kwh) == (None, None, 20.5)


BAD_SESSIONS = [
    # (file text, line, field, words)
    (HEADER.replace("arrival,", "arival,"), 1, "arival", "did you mean 'arrival'"),
    (HEADER.replace(",energy_kwh", ""), 1, "energy_kwh", "required column missing"),
    ("session_id,session_id\n", 1, "session_id", "duplicate column"),
    ("", 1, None, "empty file"),
    (
        HEADER + GOOD.replace("2024-01-01T18:00:00+01:00", "2024-01-01 10:00"),
        2,
        "arrival",
        "'2024-01-01 10:00'",
    ),
    (HEADER + GOOD.replace("2024-01-01T18:00:00+01:00", "yesterday"), 2, "arrival", "not ISO 8601"),
    (
        HEADER + GOOD.replace("2024-01-02T07:00:00+01:00", "2024-01-01T17:00:00+00:00"),
        2,
        "departure",
        "not after",
    ),
    (HEADER + GOOD.replace("20.5", "-1"), 2, "energy_kwh", ">= 0"),
    (HEADER + GOOD.replace("20.5", "nan"), 2, "energy_kwh", "finite"),
    (HEADER + GOOD.replace("20.5", "1,5"), 2, None, "expected 7 cells"),
    (HEADER + GOOD.replace("20.5,,", "20.5,0,"), 2, "max_power_kw", "> 0"),
    (HEADER + GOOD.replace("20.5,,", "20.5,,2"), 2, "phases", "must be 1 or 3, got '2'"),
    (HEADER + GOOD + GOOD.replace("CP01", "CP02"), 3, "session_id", "duplicate session id 's1' (line 2)"),
    (HEADER + GOOD.replace("CP01", "CP9"), 2, "station_id", "unknown station 'CP9'"),
    (HEADER + GOOD.replace(",CP01,", ",,"), 2, "station_id", "empty"),
    (
        HEADER + GOOD + "\n" + GOOD.replace("s1", "s2").replace("T18:00", "T23:00"),
        4,
        "arrival",
        "has 1 connector(s) but session 's1' (line 2)",
    ),
]


@pytest.mark.parametrize(("text", "line", "field", "words"), BAD_SESSIONS)
def test_sessions_errors_name_file_line_field(
    tmp_path: Path, text: str, line: int, field: str | None, words: str
) -> None:
    p = tmp_path / "sessions.csv"
    p.write_text(text)
    with pytest.raises(InputError) as ei:
        load_sessions(p, small_site())
    e = ei.value
    assert (e.file, e.row, e.field) == (str(p), line, field), str(e)
    assert words in e.message, str(e)


def test_sessions_overlap_allowed_up_to_connectors_and_when_touching(tmp_path: Path) -> None:
    p = tmp_path / "s.csv"
    second = GOOD.replace("s1", "s2").replace("T18:00", "T23:00")
    p.write_text(HEADER + GOOD + second)
    assert len(load_sessions(p, small_site(connectors=2))) == 2
    third = GOOD.replace("s1", "s3").replace("T18:00", "T20:00")
    p.write_text(HEADER + GOOD + second + third)
    with pytest.raises(InputError, match="2 connector"):
        load_sessions(p, small_site(connectors=2))
    touching = "s2,CP01,2024-01-02T06:00:00Z,2024-01-02T09:00:00+01:00,5,,\n"
    p.write_text(HEADER + GOOD + touching)
    assert len(load_sessions(p, small_site())) == 2


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 10_000),  # arrival [min]
            st.integers(1, 5_000),  # duration [min]
            st.floats(0, 200, allow_nan=False),
            st.one_of(st.none(), st.floats(0.5, 50, allow_nan=False)),
            st.sampled_from([None, 1, 3]),
            st.sampled_from([0, 60, -300, 330]),  # offset of the written time [min]
        ),
        max_size=8,
    )
)
def test_sessions_round_trip_property(tmp_path_factory: pytest.TempPathFactory, rows: list) -> None:
    sessions = [
        Session(
            f's{i},"q"',  # quoting survives
            f"st {i}",
            T0 + timedelta(minutes=a),
            T0 + timedelta(minutes=a + d),
            e,
            p,
            ph,
        )
        for i, (a, d, e, p, ph, _off) in enumerate(rows)
    ]
    path = tmp_path_factory.mktemp("rt") / "s.csv"
    write_sessions_csv(sessions, path)
    assert load_sessions(path) == sessions


# ---------------------------------------------------------------------------------------------
# Signals CSV and step series


def test_signals_empty_cell_means_no_change_and_before_first_is_nan(tmp_path: Path) -> None:
    p = tmp_path / "sig.csv"
    p.write_text(
        "time,price_eur_per_mwh,max_current_a\n"
        "2024-01-01T00:00:00+00:00,50,\n"
        "2024-01-01T01:00:00+00:00,-10.5,40\n"
        "2024-01-01T02:00:00+00:00,,30\n"
    )
    sig = load_signals(p)
    starts = [T0 + timedelta(minutes=30 * k) for k in range(-1, 7)]
    price = sig.on_grid(starts, "price_eur_per_mwh")
    limit = sig.on_grid(starts, "max_current_a")
    assert np.isnan(price[0]) and price[1:].tolist() == [50, 50, -10.5, -10.5, -10.5, -10.5, -10.5]
    assert np.isnan(limit[:3]).all() and limit[3:].tolist() == [40, 40, 30, 30, 30]
    both = sig.on_grid(starts)
    assert both.shape == (8, 2)
    # min over each 1-hour interval catches the limit that starts inside it
    hourly = [T0 + timedelta(minutes=30), T0 + timedelta(minutes=90)]
    assert sig.on_grid(hourly, "max_current_a", how="min", end=T0 + timedelta(hours=3)).tolist() == [40, 30]
    assert sig.on_grid(hourly, "max_current_a", how="max", end=T0 + timedelta(hours=3)).tolist() == [40, 40]


def test_signals_round_trip(tmp_path: Path) -> None:
    times = tuple(T0 + timedelta(hours=k) for k in range(5))
    s = StepSeries(
        times,
        {"price_eur_per_mwh": [1.5, 1.5, -2.0, 3.0, 3.0], "co2_g_per_kwh": [math.nan, 100, 100, 200, 50]},
    )
    p = tmp_path / "sig.csv"
    write_signals_csv(s, p)
    back = load_signals(p)
    assert back.times == times
    for n in s.names:
        np.testing.assert_array_equal(back.columns[n], s.columns[n])
    sig = back.to_signals(list(times[1:]))
    assert sig.co2_g_per_kwh.tolist() == [100, 100, 200, 50]
    with pytest.raises(InputError, match="co2_g_per_kwh: no value"):
        back.to_signals(list(times))


SIG_HEADER = "time,price_eur_per_mwh,co2_g_per_kwh\n"


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        ("time,price\n", 1, "price", "unknown column"),
        ("time\n", 1, None, "at least one of"),
        ("price_eur_per_mwh\n", 1, "time", "required column missing"),
        (SIG_HEADER, None, None, "no data rows"),
        (SIG_HEADER + "2024-01-01T00:00:00,1,2\n", 2, "time", "not ISO 8601 with a UTC offset"),
        (SIG_HEADER + "2024-01-01T00:00Z,1,2\n2024-01-01T00:00Z,1,2\n", 3, "time", "duplicate time"),
        (SIG_HEADER + "2024-01-01T01:00Z,1,2\n2024-01-01T00:00Z,1,2\n", 3, "time", "backwards"),
        (SIG_HEADER + "2024-01-01T00:00Z,1,-2\n", 2, "co2_g_per_kwh", ">= 0"),
        (SIG_HEADER + "2024-01-01T00:00Z,inf,2\n", 2, "price_eur_per_mwh", "finite"),
        ("time,max_current_a\n2024-01-01T00:00Z,-1\n", 2, "max_current_a", ">= 0"),
    ],
)
def test_signals_errors(tmp_path: Path, text: str, line: int | None, field: str | None, words: str) -> None:
    p = tmp_path / "signals.csv"
    p.write_text(text)
    with pytest.raises(InputError) as ei:
        load_signals(p)
    e = ei.value
    assert (e.file, e.row, e.field) == (str(p), line, field), str(e)
    assert words in e.message, str(e)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 10_000), min_size=1, max_size=20, unique=True),
    st.lists(st.integers(-20_000, 20_000), min_size=1, max_size=30),
)
def test_on_grid_is_forward_fill(row_minutes: list[int], grid_minutes: list[int]) -> None:
    row_minutes.sort()
    times = tuple(T0 + timedelta(minutes=m) for m in row_minutes)
    vals = np.arange(len(times), dtype=float)
    s = StepSeries(times, {"v": vals})
    starts = [T0 + timedelta(minutes=m) for m in sorted(grid_minutes)]
    got = s.on_grid(starts, "v")
    for t, g in zip(starts, got, strict=True):
        before = [v for tt, v in zip(times, vals, strict=True) if tt <= t]
        assert (math.isnan(g) and not before) or g == before[-1]


# ---------------------------------------------------------------------------------------------
# Public formats: small synthetic files in the published layout, then the real files


def test_resolve_overlaps_shifts_or_drops_later_session(caplog: pytest.LogCaptureFixture) -> None:
    h = timedelta(hours=1)
    a = Session("a", "X", T0, T0 + 5 * h, 10.0)
    b = Session("b", "X", T0 + h, T0 + 8 * h, 5.0)  # shifted to start at 5 h
    c = Session("c", "X", T0 + 2 * h, T0 + 4 * h, 1.0)  # nothing left: dropped
    d = Session("d", "Y", T0 + 2 * h, T0 + 4 * h, 1.0)
    with caplog.at_level("WARNING"):
        out = resolve_overlaps([c, b, a, d], source="f.csv")
    assert [s.id for s in out] == ["a", "b", "d"]
    assert out[1].arrival == T0 + 5 * h and out[1].departure == T0 + 8 * h
    assert "1 shifted" in caplog.text and "1 dropped" in caplog.text
    assert len(resolve_overlaps([a, b, c], {"X": 3})) == 3


ACN_HEADER = (
    "arrival,departure,requested_energy (kWh),delivered_energy (kWh),station_id,session_id,"
    "estimated_departure,claimed\n"
)


def test_load_acn_energy_choice_and_window(tmp_path: Path) -> None:
    p = tmp_path / "acn.csv"
    p.write_text(
        ACN_HEADER + "2019-06-03 08:00:00-07:00,2019-06-03 17:00:00-07:00,20.0,12.5,CA-1,s1,,True\n"
        "2019-06-03 09:00:00-07:00,2019-06-03 12:00:00-07:00,,7.0,CA-2,s2,,False\n"
        "2019-06-10 09:00:00-07:00,2019-06-10 12:00:00-07:00,,7.0,CA-2,s3,,False\n"
    )
    start, end = "2019-06-03T00:00-07:00", "2019-06-10T00:00-07:00"
    got = load_acn(p, start, end)
    assert [(s.id, s.energy_kwh) for s in got] == [("s1", 12.5), ("s2", 7.0)]
    assert got[0].arrival == datetime(2019, 6, 3, 15, tzinfo=UTC)
    assert [s.energy_kwh for s in load_acn(p, start, end, energy="requested")] == [20.0, 7.0]
    assert len(load_acn(p)) == 3
    site = acn_site(got, max_current_a=30.0)
    assert [(cp.id, cp.phases, cp.phase_rotation) for cp in site.charge_points] == [
        ("CA-1", 1, "L1L2L3"),
        ("CA-2", 1, "L2L3L1"),
    ]
    assert site.max_current_a == (30.0, 30.0, 30.0) and site.voltage_v == 230.0
    with pytest.raises(InputError, match="file not found"):
        load_acn(tmp_path / "nope.csv.gz")


TRD_HEADER = (
    "session_ID;Garage_ID;User_ID;User_type;Shared_ID;Start_plugin;Start_plugin_hour;End_plugout;"
    "End_plugout_hour;El_kWh;Duration_hours;month_plugin;weekdays_plugin\n"
)


def test_load_trondheim_mapping_decimal_comma_dst_and_missing_end(tmp_path: Path) -> None:
    p = tmp_path / "trd.csv"
    p.write_text(
        TRD_HEADER + "1;G1;G1-1;Private;NA;21.12.2018 10:20;10;21.12.2018 19:46;19;29,87;9,4;Dec;Friday\n"
        "2;G1;Share-1;Shared;Shared-1;22.12.2018 16:15;16;23.12.2018 07:40;7;15,5;15;Dec;Saturday\n"
        "3;G2;G2-1;Private;NA;16.12.2019 15:18;15;NA;NA;22,73;NA;Dec;Monday\n"
        "4;G2;G2-1;Private;NA;31.03.2019 02:30;2;31.03.2019 09:00;9;5;6,5;Mar;Sunday\n"
        "5;G2;G2-1;Private;NA;27.10.2019 02:30;2;27.10.2019 09:00;9;1;6,5;Oct;Sunday\n"
    )
    site, sessions = load_trondheim(p)
    assert [g.id for g in site.groups] == ["G1", "G2"]
    assert {cp.id: cp.node_id for cp in site.charge_points} == {"G1-1": "G1", "Shared-1": "G1", "G2-1": "G2"}
    by_id = {s.id: s for s in sessions}
    assert set(by_id) == {"1", "2", "4", "5"}  # 3 has no end time
    assert by_id["1"].energy_kwh == 29.87 and by_id["1"].arrival == datetime(2018, 12, 21, 9, 20, tzinfo=UTC)
    assert by_id["2"].charge_point_id == "Shared-1"
    assert by_id["4"].arrival == datetime(2019, 3, 31, 1, 0, tzinfo=UTC)  # 02:30 does not exist: 03:00 CEST
    assert by_id["5"].arrival == datetime(2019, 10, 27, 0, 30, tzinfo=UTC)  # ambiguous: first (CEST)
    _, window = load_trondheim(p, "2019-01-01T00:00Z", "2020-01-01T00:00Z")
    assert {s.id for s in window} == {"4", "5"}


def test_co2_from_residual_load_hits_mean_and_follows_renewables() -> None:
    import pandas as pd

    idx = pd.date_range("2023-01-01", periods=4, freq="h", tz="UTC")
    df = pd.DataFrame(
        {
            "load_mw": [50e3, 60e3, 40e3, 55e3],
            "wind_onshore_mw": [5e3, 40e3, 45e3, 0.0],
            "wind_offshore_mw": [1e3, 5e3, 0.0, 0.0],
            "solar_mw": [0.0, 10e3, 0.0, 0.0],
        },
        index=idx,
    )
    co2 = co2_from_residual_load(df, 300.0, floor_g_per_kwh=20.0)
    assert float((co2 * df.load_mw).sum() / df.load_mw.sum()) == pytest.approx(300.0)
    assert co2.iloc[2] == 20.0  # wind above load: the floor
    assert co2.iloc[3] > co2.iloc[0] > co2.iloc[1] > co2.iloc[2]


def test_real_acn_caltech_week() -> None:
    d = shared_data()
    sessions = load_acn(
        d / "acn" / "caltech_2019-05-01_2019-08-31.csv.gz", "2019-06-03T00:00-07:00", "2019-06-10T00:00-07:00"
    )
    stations = {s.charge_point_id for s in sessions}
    assert 150 <= len(sessions) <= 300 and 35 <= len(stations) <= 45, (len(sessions), len(stations))
    assert 1000 < sum(s.energy_kwh for s in sessions) < 3000
    site = acn_site(sessions)
    rot = [cp.phase_rotation for cp in site.charge_points]
    assert max(rot.count(r) for r in set(rot)) - min(rot.count(r) for r in set(rot)) <= 1


def test_real_acn_jpl_loads_whole_file() -> None:
    sessions = load_acn(shared_data() / "acn" / "jpl_2019-05-01_2019-08-31.csv.gz", energy="requested")
    assert 5500 < len(sessions) <= 6026


def test_real_trondheim() -> None:
    site, sessions = load_trondheim(shared_data() / "residential_trondheim" / "ev_charging_reports.csv")
    assert len(site.groups) == 24
    assert 6700 < len(sessions) < 6878  # some have no end time
    assert 60 <= len(site.charge_points) <= 110


def test_real_energy_charts_and_signals(tmp_path: Path) -> None:
    path = shared_data() / "energy_charts_de_2023_hourly.csv"
    df = load_energy_charts(path)
    assert len(df) == 8759 and str(df.index.tz) == "UTC"
    assert list(df.columns) == [
        "price_eur_per_mwh",
        "solar_mw",
        "wind_onshore_mw",
        "wind_offshore_mw",
        "load_mw",
    ]
    co2 = co2_from_residual_load(df)
    assert float((co2 * df.load_mw).sum() / df.load_mw.sum()) == pytest.approx(380.0, rel=1e-6)
    assert co2.min() > 0 and 300 < co2.mean() < 450
    start = datetime(2019, 6, 3, 7, tzinfo=UTC)
    sig = energy_charts_signals(
        path, start, start + timedelta(days=7), source_start=datetime(2023, 6, 5, 7, tzinfo=UTC)
    )
    assert len(sig.times) == 168 and sig.times[0] == start
    out = tmp_path / "signals.csv"
    write_signals_csv(sig, out)
    back = load_signals(out)
    np.testing.assert_allclose(back.columns["co2_g_per_kwh"], sig.columns["co2_g_per_kwh"])
    with pytest.raises(InputError, match="no data"):
        energy_charts_signals(path, start, start + timedelta(days=1))
