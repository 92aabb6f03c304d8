"""The problem model: nonsense is refused at construction with the field named; time grids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from models.errors import ModelError, ProblemError
from models.problem import (
    ROOT,
    ChargePoint,
    EmissionTarget,
    Node,
    Problem,
    Session,
    Signals,
    Site,
    TimeGrid,
    Weights,
)

T0 = datetime(2024, 3, 4, 18, 0, tzinfo=UTC)
STEP = timedelta(minutes=15)
N_STEPS = 4
NAN = float("nan")
INF = float("inf")


def site(**kw) -> Site:
    args = {
        "id": "s",
        "voltage_v": 230.0,
        "max_current_a": 63.0,
        "groups": (Node("feeder", 40.0), Node("cable", (20.0, 25.0, 30.0), "feeder")),
        "charge_points": (ChargePoint("a", node_id="cable"), ChargePoint("b")),
    }
    args.update(kw)
    return Site(**args)


def session(sid: str = "e", cp: str = "a", **kw) -> Session:
    args = {"arrival": T0, "departure": T0 + 2 * STEP, "energy_kwh": 10.0}
    args.update(kw)
    return Session(sid, cp, **args)


def problem(**kw) -> Problem:
    args = {
        "site": site(),
        "grid": TimeGrid.uniform(T0, STEP, N_STEPS),
        "sessions": (session("e0", "a"), session("e1", "b")),
    }
    args.update(kw)
    return Problem(**args)


def field_of(excinfo: pytest.ExceptionInfo[ProblemError]) -> str:
    return excinfo.value.field


def test_valid_problem_builds() -> None:
    p = problem(
        base_load_a=np.zeros((N_STEPS, 3)),
        node_limits_a={"cable": [INF, 10.0, 10.0, INF]},
        signals=Signals(price_eur_per_mwh=[-20.0, 0.0, 50.0, 80.0], co2_g_per_kwh=[300.0] * N_STEPS),
        target=EmissionTarget(max_intensity_g_per_kwh=250.0),
        max_unbalance_a=20.0,
    )
    assert p.n_steps == N_STEPS
    assert p.site.nodes[0].id == ROOT
    assert p.site.ancestors("cable") == ["cable", "feeder", ROOT]
    assert p.node_limits_a["cable"].shape == (N_STEPS, 3)  # (T,) spread over the phases
    assert np.isinf(p.node_limits_a["cable"][0]).all()
    assert p.site.max_current_a == (63.0, 63.0, 63.0)  # one number applies to every phase


def test_problem_error_is_a_value_error_and_names_the_field() -> None:
    with pytest.raises(ProblemError) as e:
        session(departure=T0)
    assert isinstance(e.value, ModelError)
    assert isinstance(e.value, ValueError)
    assert str(e.value).startswith("sessions[e].departure: ")
    assert e.value.message in str(e.value)


# ---------------------------------------------------------------- negative limits


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: site(max_current_a=-1.0), "site.max_current_a"),
        (lambda: site(max_current_a=(10.0, -1.0, 10.0)), "site.max_current_a[1]"),
        (lambda: Node("g", -5.0), "nodes[g].max_current_a"),
        (lambda: Node("g", (1.0, 1.0, -0.5)), "nodes[g].max_current_a[2]"),
        (lambda: ChargePoint("a", max_current_a=-16.0), "charge_points[a].max_current_a"),
        (lambda: ChargePoint("a", max_current_a=0.0), "charge_points[a].max_current_a"),
        (lambda: ChargePoint("a", min_current_a=-6.0), "charge_points[a].min_current_a"),
        (lambda: problem(node_limits_a={"cable": [10.0, -1.0, 10.0, 10.0]}), "node_limits_a[cable]"),
        (lambda: problem(node_limits_a={ROOT: [10.0, -INF, 10.0, 10.0]}), "node_limits_a[site]"),
        (lambda: problem(max_unbalance_a=-1.0), "max_unbalance_a"),
        (lambda: session(energy_kwh=-1.0), "sessions[e].energy_kwh"),
        (lambda: session(max_power_kw=0.0), "sessions[e].max_power_kw"),
        (lambda: session(priority=-1.0), "sessions[e].priority"),
        (lambda: site(voltage_v=0.0), "site.voltage_v"),
        (lambda: Weights(co2_eur_per_kg=-0.1), "weights.co2_eur_per_kg"),
        (lambda: EmissionTarget(budget_kg=-1.0), "target.budget_kg"),
        (
            lambda: problem(signals=Signals(co2_g_per_kwh=[100.0, -1.0, 100.0, 100.0])),
            "signals.co2_g_per_kwh[1]",
        ),
    ],
)
def test_negative_values_are_refused(build, field: str) -> None:
    with pytest.raises(ProblemError) as e:
        build()
    assert field_of(e) == field


def test_negative_price_is_allowed() -> None:
    p = problem(signals=Signals(price_eur_per_mwh=[-50.0, -1.0, 0.0, 10.0]))
    assert p.signals.price_eur_per_mwh[0] == -50.0


# ---------------------------------------------------------------- NaN anywhere


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: site(max_current_a=NAN), "site.max_current_a"),
        (lambda: site(max_current_a=(10.0, 10.0, NAN)), "site.max_current_a[2]"),
        (lambda: site(max_current_a=INF), "site.max_current_a"),
        (lambda: site(voltage_v=NAN), "site.voltage_v"),
        (lambda: Node("g", NAN), "nodes[g].max_current_a"),
        (lambda: ChargePoint("a", max_current_a=NAN), "charge_points[a].max_current_a"),
        (lambda: ChargePoint("a", min_current_a=NAN), "charge_points[a].min_current_a"),
        (lambda: problem(node_limits_a={"feeder": [10.0, NAN, 10.0, 10.0]}), "node_limits_a[feeder]"),
        (lambda: session(energy_kwh=NAN), "sessions[e].energy_kwh"),
        (lambda: session(energy_kwh=INF), "sessions[e].energy_kwh"),
        (lambda: session(max_power_kw=NAN), "sessions[e].max_power_kw"),
        (lambda: session(priority=NAN), "sessions[e].priority"),
        (lambda: problem(base_load_a=[[1.0, 2.0, 3.0]] * 3 + [[1.0, NAN, 3.0]]), "base_load_a[3, 1]"),
        (lambda: problem(base_load_a=[1.0, INF, 1.0, 1.0]), "base_load_a[1, 0]"),
        (
            lambda: problem(signals=Signals(price_eur_per_mwh=[1.0, 2.0, NAN, 4.0])),
            "signals.price_eur_per_mwh[2]",
        ),
        (lambda: problem(signals=Signals(co2_g_per_kwh=[NAN, 2.0, 3.0, 4.0])), "signals.co2_g_per_kwh[0]"),
        (lambda: Weights(unmet_energy_eur_per_kwh=NAN), "weights.unmet_energy_eur_per_kwh"),
        (lambda: EmissionTarget(max_intensity_g_per_kwh=NAN), "target.max_intensity_g_per_kwh"),
        (lambda: EmissionTarget(budget_kg=10.0, penalty_eur_per_kg=NAN), "target.penalty_eur_per_kg"),
        (lambda: problem(max_unbalance_a=NAN), "max_unbalance_a"),
        (lambda: session(energy_kwh="ten"), "sessions[e].energy_kwh"),
    ],
)
def test_nan_and_non_numbers_are_refused(build, field: str) -> None:
    with pytest.raises(ProblemError) as e:
        build()
    assert field_of(e) == field


def test_infinite_time_varying_limit_means_no_extra_limit() -> None:
    p = problem(node_limits_a={ROOT: np.full(N_STEPS, np.inf)})
    assert np.isinf(p.node_limits_a[ROOT]).all()


# ---------------------------------------------------------------- sessions and ids


def test_departure_before_or_at_arrival_is_refused() -> None:
    for departure in (T0, T0 - STEP):
        with pytest.raises(ProblemError) as e:
            session(departure=departure)
        assert field_of(e) == "sessions[e].departure"


def test_unknown_charge_point_is_refused() -> None:
    with pytest.raises(ProblemError) as e:
        problem(sessions=(session("e0", "a"), session("e1", "nowhere")))
    assert field_of(e) == "sessions[e1].charge_point_id"
    assert "nowhere" in e.value.message


def test_not_a_session_is_refused() -> None:
    with pytest.raises(ProblemError) as e:
        problem(sessions=(session("e0", "a"), "e1"))
    assert field_of(e) == "sessions[1]"


def test_unknown_group_of_a_charge_point_is_refused() -> None:
    with pytest.raises(ProblemError) as e:
        site(charge_points=(ChargePoint("a", node_id="nowhere"),))
    assert field_of(e).startswith("charge_points[a].")
    assert "nowhere" in e.value.message


def test_unknown_group_names_the_node_id_field() -> None:
    with pytest.raises(ProblemError) as e:
        site(charge_points=(ChargePoint("a", node_id="nowhere"),))
    assert field_of(e) == "charge_points[a].node_id"


def test_unknown_parent_is_refused() -> None:
    with pytest.raises(ProblemError) as e:
        site(groups=(Node("feeder", 40.0), Node("cable", 20.0, "nowhere")))
    assert field_of(e) == "groups[cable].parent"


def test_parent_declared_later_is_fine() -> None:
    s = site(groups=(Node("cable", 20.0, "feeder"), Node("feeder", 40.0)))
    assert s.ancestors("cable") == ["cable", "feeder", ROOT]


@pytest.mark.parametrize(
    ("groups", "field"),
    [
        ((Node("a", 1.0, "a"),), "groups[a].parent"),
        ((Node("a", 1.0, "b"), Node("b", 1.0, "a")), "groups[a].parent"),
        ((Node("x", 1.0), Node("a", 1.0, "c"), Node("b", 1.0, "a"), Node("c", 1.0, "b")), "groups[a].parent"),
    ],
)
def test_group_cycles_are_refused(groups: tuple[Node, ...], field: str) -> None:
    with pytest.raises(ProblemError) as e:
        site(groups=groups, charge_points=())
    assert field_of(e) == field
    assert "cycle" in e.value.message


def test_only_the_root_has_no_parent() -> None:
    with pytest.raises(ProblemError) as e:
        Node("g", 10.0, None)
    assert field_of(e) == "nodes[g].parent"
    assert Node(ROOT, 10.0, "anything").parent is None


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: site(groups=(Node("g", 1.0), Node("g", 2.0))), "groups[g].id"),
        (lambda: site(groups=(Node(ROOT, 1.0),)), "groups[site].id"),
        (lambda: site(charge_points=(ChargePoint("a"), ChargePoint("a"))), "charge_points[a].id"),
        (lambda: problem(sessions=(session("e", "a"), session("e", "b"))), "sessions[e].id"),
        (lambda: Node("", 1.0), "node.id"),
        (lambda: ChargePoint(""), "charge_point.id"),
    ],
)
def test_duplicate_and_empty_ids_are_refused(build, field: str) -> None:
    with pytest.raises(ProblemError) as e:
        build()
    assert field_of(e) == field


def test_unknown_node_in_time_varying_limits_is_refused() -> None:
    with pytest.raises(ProblemError) as e:
        problem(node_limits_a={"nowhere": np.full(N_STEPS, 10.0)})
    assert field_of(e) == "node_limits_a[nowhere]"


# ---------------------------------------------------------------- datetimes


def test_naive_datetimes_are_refused() -> None:
    naive = datetime(2024, 3, 4, 18, 0)
    with pytest.raises(ProblemError) as e:
        session(arrival=naive, departure=naive + STEP)
    assert field_of(e) == "sessions[e].arrival"
    with pytest.raises(ProblemError) as e:
        session(departure=naive + STEP)
    assert field_of(e) == "sessions[e].departure"
    with pytest.raises(ProblemError) as e:
        TimeGrid((T0, naive + STEP))
    assert field_of(e) == "grid.boundaries[1]"
    with pytest.raises(ProblemError) as e:
        TimeGrid.uniform(naive, STEP, 4)
    assert field_of(e) == "grid.boundaries[0]"
    with pytest.raises(ProblemError) as e:
        TimeGrid.graded(naive, timedelta(hours=2), STEP, timedelta(hours=1), timedelta(hours=1))
    assert field_of(e) == "grid.boundaries[0]"


def test_not_a_datetime_is_refused() -> None:
    with pytest.raises(ProblemError) as e:
        session(arrival="2024-03-04T18:00Z")
    assert field_of(e) == "sessions[e].arrival"


def test_datetimes_are_converted_to_utc() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    plus2 = timezone(timedelta(hours=2))
    arrival = datetime(2024, 7, 1, 20, 0, tzinfo=plus2)  # 18:00 UTC
    departure = datetime(2024, 7, 2, 7, 30, tzinfo=berlin)  # CEST: 05:30 UTC
    s = session(arrival=arrival, departure=departure)
    assert s.arrival.tzinfo is UTC and s.departure.tzinfo is UTC
    assert s.arrival == datetime(2024, 7, 1, 18, 0, tzinfo=UTC)
    assert (s.arrival.hour, s.departure.hour, s.departure.minute) == (18, 5, 30)
    grid = TimeGrid.uniform(datetime(2024, 1, 15, 0, 0, tzinfo=berlin), STEP, 2)  # CET: UTC+1
    assert all(t.tzinfo is UTC for t in grid.boundaries)
    assert grid.start == datetime(2024, 1, 14, 23, 0, tzinfo=UTC)
    assert grid.start.hour == 23


def test_grid_across_a_dst_change_counts_real_hours() -> None:
    # 2024-03-31 02:00 CET -> 03:00 CEST: 01:00 to 04:00 local wall time is only two hours.
    berlin = ZoneInfo("Europe/Berlin")
    grid = TimeGrid((datetime(2024, 3, 31, 1, 0, tzinfo=berlin), datetime(2024, 3, 31, 4, 0, tzinfo=berlin)))
    np.testing.assert_allclose(grid.durations_h, [2.0])


# ---------------------------------------------------------------- series shapes


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"base_load_a": np.zeros((N_STEPS, 2))}, "base_load_a"),
        ({"base_load_a": np.zeros((N_STEPS + 1, 3))}, "base_load_a"),
        ({"base_load_a": np.zeros(N_STEPS - 1)}, "base_load_a"),
        ({"base_load_a": np.zeros((3, N_STEPS))}, "base_load_a"),
        ({"signals": Signals(price_eur_per_mwh=np.zeros(N_STEPS + 1))}, "signals.price_eur_per_mwh"),
        ({"signals": Signals(co2_g_per_kwh=np.zeros((N_STEPS, 1)))}, "signals.co2_g_per_kwh"),
        ({"signals": Signals(co2_g_per_kwh=5.0)}, "signals.co2_g_per_kwh"),
        ({"node_limits_a": {"cable": np.full(N_STEPS - 1, 10.0)}}, "node_limits_a[cable]"),
        ({"node_limits_a": {"cable": np.full((N_STEPS, 2), 10.0)}}, "node_limits_a[cable]"),
    ],
)
def test_wrong_series_shapes_are_refused(kw: dict, field: str) -> None:
    with pytest.raises(ProblemError) as e:
        problem(**kw)
    assert field_of(e) == field
    assert "shape" in e.value.message


def test_series_are_read_only_copies() -> None:
    base = np.ones(N_STEPS)  # one value per step: the same on every phase
    p = problem(base_load_a=base)
    assert p.base_load_a.shape == (N_STEPS, 3)
    base[0] = 99.0
    assert p.base_load_a[0, 0] == 1.0
    with pytest.raises(ValueError):
        p.base_load_a[0, 0] = 5.0


def test_wrong_per_phase_triples_are_refused() -> None:
    with pytest.raises(ProblemError) as e:
        site(max_current_a=(10.0, 10.0))
    assert field_of(e) == "site.max_current_a"
    with pytest.raises(ProblemError) as e:
        Node("g", "lots")
    assert field_of(e) == "nodes[g].max_current_a"


# ---------------------------------------------------------------- charge points and EVs


@pytest.mark.parametrize("phases", [0, 2, 4, "3"])
def test_phases_other_than_1_or_3_are_refused(phases) -> None:
    with pytest.raises(ProblemError) as e:
        ChargePoint("a", phases=phases)
    assert field_of(e) == "charge_points[a].phases"
    with pytest.raises(ProblemError) as e:
        session(phases=phases)
    assert field_of(e) == "sessions[e].phases"


@pytest.mark.parametrize("rotation", ["L1L3L2", "l1l2l3", "", "L1L2"])
def test_bad_phase_rotation_is_refused(rotation: str) -> None:
    with pytest.raises(ProblemError) as e:
        ChargePoint("a", phase_rotation=rotation)
    assert field_of(e) == "charge_points[a].phase_rotation"


def test_min_current_above_max_is_refused() -> None:
    with pytest.raises(ProblemError) as e:
        ChargePoint("a", max_current_a=6.0, min_current_a=8.0)
    assert field_of(e) == "charge_points[a].min_current_a"
    assert ChargePoint("a", max_current_a=6.0, min_current_a=6.0).min_current_a == 6.0


def test_connectors_must_be_positive() -> None:
    with pytest.raises(ProblemError) as e:
        ChargePoint("a", connectors=0)
    assert field_of(e) == "charge_points[a].connectors"


def test_grid_phases_follow_the_rotation() -> None:
    assert ChargePoint("a", phase_rotation="L2L3L1").grid_phases(1) == (1,)
    assert ChargePoint("a", phase_rotation="L3L1L2").grid_phases(3) == (2, 0, 1)
    assert ChargePoint("a", phases=1, phase_rotation="L3L1L2").grid_phases(3) == (2,)


# ---------------------------------------------------------------- targets


def test_emission_target_needs_a_co2_signal() -> None:
    target = EmissionTarget(max_intensity_g_per_kwh=200.0)
    with pytest.raises(ProblemError) as e:
        problem(target=target)
    assert field_of(e) == "target"
    with pytest.raises(ProblemError) as e:
        problem(target=target, signals=Signals(price_eur_per_mwh=np.zeros(N_STEPS)))
    assert field_of(e) == "target"
    ok = problem(target=target, signals=Signals(co2_g_per_kwh=np.full(N_STEPS, 300.0)))
    assert ok.target is target


def test_with_sessions_keeps_everything_else() -> None:
    p = problem(base_load_a=np.ones((N_STEPS, 3)), max_unbalance_a=20.0)
    q = p.with_sessions([session("x", "b")])
    assert [s.id for s in q.sessions] == ["x"]
    assert q.site is p.site and q.grid is p.grid and q.max_unbalance_a == 20.0
    with pytest.raises(ProblemError) as e:
        p.with_sessions([session("x", "nowhere")])
    assert field_of(e) == "sessions[x].charge_point_id"


# ---------------------------------------------------------------- time grids


def test_uniform_grid() -> None:
    grid = TimeGrid.uniform(T0, STEP, 96)
    assert grid.n_steps == 96
    assert grid.end - grid.start == timedelta(hours=24)
    np.testing.assert_allclose(grid.durations_h, 0.25)
    assert grid.starts == grid.boundaries[:-1]
    np.testing.assert_allclose(np.diff(grid.epoch_s()), 900.0)


@pytest.mark.parametrize(
    ("args", "field"),
    [((STEP, 0), "grid.count"), ((timedelta(0), 4), "grid.step"), ((-STEP, 4), "grid.step")],
)
def test_uniform_grid_refuses_nonsense(args, field: str) -> None:
    with pytest.raises(ProblemError) as e:
        TimeGrid.uniform(T0, *args)
    assert field_of(e) == field


def test_graded_grid_is_fine_then_coarse_and_ends_at_the_horizon() -> None:
    horizon = timedelta(hours=24)
    grid = TimeGrid.graded(T0, horizon, STEP, timedelta(hours=2), timedelta(hours=1))
    assert grid.start == T0
    assert grid.end == T0 + horizon
    # 2 h of 15-minute steps, then 22 one-hour steps.
    assert grid.n_steps == 8 + 22
    np.testing.assert_allclose(grid.durations_h[:8], 0.25)
    np.testing.assert_allclose(grid.durations_h[8:], 1.0)
    assert grid.durations_h.sum() == pytest.approx(24.0)


def test_graded_grid_cuts_the_last_step_short() -> None:
    # 2 h 50 min: four 15-minute steps (1 h), one hour, then 50 minutes instead of an hour.
    grid = TimeGrid.graded(T0, timedelta(hours=2, minutes=50), STEP, timedelta(hours=1), timedelta(hours=1))
    assert grid.end == T0 + timedelta(hours=2, minutes=50)
    np.testing.assert_allclose(grid.durations_h, [0.25, 0.25, 0.25, 0.25, 1.0, 50 / 60])
    assert len(set(np.round(grid.durations_h, 9))) == 3


@pytest.mark.parametrize(
    ("horizon_min", "fine_min", "span_min", "coarse_min"),
    [(60, 5, 20, 15), (100, 15, 40, 30), (7, 5, 60, 60), (1440, 10, 0, 60), (61, 1, 61, 7)],
)
def test_graded_grid_invariants(horizon_min: int, fine_min: int, span_min: int, coarse_min: int) -> None:
    m = timedelta(minutes=1)
    grid = TimeGrid.graded(T0, horizon_min * m, fine_min * m, span_min * m, coarse_min * m)
    d = np.diff(grid.epoch_s()) / 60.0
    assert grid.end == T0 + horizon_min * m
    assert (d > 0).all()
    assert d.sum() == pytest.approx(horizon_min)
    assert (d <= max(fine_min, coarse_min) + 1e-9).all()
    # Every step but the (possibly cut) last one is either fine or coarse.
    assert set(np.round(d[:-1], 9)) <= {fine_min, coarse_min}


@pytest.mark.parametrize(
    "args",
    [
        (timedelta(0), STEP, STEP, STEP),
        (timedelta(hours=1), timedelta(0), STEP, STEP),
        (timedelta(hours=1), STEP, STEP, -STEP),
    ],
)
def test_graded_grid_refuses_nonpositive_steps(args) -> None:
    with pytest.raises(ProblemError) as e:
        TimeGrid.graded(T0, *args)
    assert field_of(e) == "grid"


def test_grid_boundaries_must_increase() -> None:
    with pytest.raises(ProblemError) as e:
        TimeGrid((T0,))
    assert field_of(e) == "grid.boundaries"
    with pytest.raises(ProblemError) as e:
        TimeGrid((T0, T0 + STEP, T0 + STEP))
    assert field_of(e) == "grid.boundaries[2]"
    with pytest.raises(ProblemError) as e:
        TimeGrid((T0, T0 - STEP))
    assert field_of(e) == "grid.boundaries[1]"
