"""Failsafe currents keep every limit with every point charging at once."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.failsafe import failsafe_currents_a
from models.problem import ROTATIONS, ChargePoint, Node, Site


def test_even_share_by_hand() -> None:
    # Site 100 A; a 63 A cable with four 3-phase points; two 1-phase points at the root on L2.
    cps = (
        *(ChargePoint(f"c{i}", node_id="cable", max_current_a=32.0) for i in range(4)),
        ChargePoint("r0", phases=1, phase_rotation="L2L3L1", max_current_a=32.0),
        ChargePoint("r1", phases=1, phase_rotation="L2L3L1", max_current_a=32.0),
    )
    site = Site("s", 230.0, 100.0, groups=(Node("cable", 63.0),), charge_points=cps)
    got = failsafe_currents_a(site, base_load_a=[10.0, 40.0, 10.0])
    # Cable: 63 / 4 = 15.75 -> 15.7. Root L2: (100 - 40) / 6 points = 10 A; L1, L3: 90 / 4.
    assert got == {"c0": 10.0, "c1": 10.0, "c2": 10.0, "c3": 10.0, "r0": 10.0, "r1": 10.0}
    assert failsafe_currents_a(site)["c0"] == 15.7  # no base load: the cable's share binds


def test_share_below_the_minimum_is_zero() -> None:
    cps = tuple(ChargePoint(f"p{i}") for i in range(20))  # 20 x 3-phase on 100 A: 5 A each
    got = failsafe_currents_a(Site("s", 230.0, 100.0, charge_points=cps))
    assert set(got.values()) == {0.0}
    with pytest.raises(ValueError, match="base_load_a"):
        failsafe_currents_a(Site("s", 230.0, 100.0, charge_points=cps), base_load_a=[1.0, 2.0])


@settings(max_examples=60, deadline=None)
@given(
    site_a=st.floats(10.0, 400.0),
    cable_a=st.floats(0.0, 200.0),
    base=st.lists(st.floats(0.0, 150.0), min_size=3, max_size=3),
    points=st.lists(
        st.tuples(
            st.booleans(), st.sampled_from(sorted(ROTATIONS)), st.sampled_from([1, 3]), st.floats(6.0, 63.0)
        ),
        min_size=1,
        max_size=30,
    ),
)
def test_every_limit_holds_with_every_point_at_its_failsafe(site_a, cable_a, base, points) -> None:
    cps = tuple(
        ChargePoint(
            f"p{i}", node_id="cable" if on_cable else "site", phase_rotation=rot, phases=ph, max_current_a=mx
        )
        for i, (on_cable, rot, ph, mx) in enumerate(points)
    )
    site = Site("s", 230.0, site_a, groups=(Node("cable", cable_a),), charge_points=cps)
    got = failsafe_currents_a(site, base_load_a=base)
    load = {"site": np.array(base, float), "cable": np.zeros(3)}
    for cp in cps:
        a = got[cp.id]
        assert a == 0.0 or cp.min_current_a <= a <= cp.max_current_a
        for nid in site.ancestors(cp.node_id):
            load[nid][list(cp.grid_phases(cp.phases))] += a
    charging = np.zeros(3)
    for cp in cps:
        charging[list(cp.grid_phases(cp.phases))] += got[cp.id]
    # Where the base load alone breaks the site limit, nothing charges on that phase.
    assert np.all((charging == 0) | (load["site"] <= site_a + 1e-9))
    assert np.all(load["cable"] <= cable_a + 1e-9)
