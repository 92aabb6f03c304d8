"""Failsafe currents: what each charge point may draw when the central system is gone.

A failsafe profile (OCPP 1.6 ChargePointMaxProfile or a TxDefaultProfile at stack level 0) is
what a point obeys once no newer profile comes -- the central system crashed, the network
broke. The grid must hold then too, for every point charging at once: on every node of the site
tree and every phase, the failsafe currents of the points below it, plus the largest base load
at the connection, must fit the node's limit.

:func:`failsafe_currents_a` shares each node's headroom evenly among the points that load each
phase there; a point gets the smallest share on its path and phases, capped at its maximum. A
share below the point's minimum current (6 A, IEC 61851) cannot be offered -- the EV would stop
-- so that point's failsafe is 0: no charging without the central system, rather than an
overloaded cable. Rounded down to 0.1 A, the resolution charge points accept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from models.problem import ROOT, Site

__all__ = ["failsafe_currents_a"]


def failsafe_currents_a(site: Site, base_load_a: Sequence[float] | None = None) -> dict[str, float]:
    """Charge point id -> per-phase failsafe current [A] that keeps every limit of ``site``.

    Parameters
    ----------
    site : Site
    base_load_a : (3,) or None
        Largest inflexible load per phase at the connection over the time the failsafe may
        last [A]; ``None``: none.
    """
    base = np.zeros(3) if base_load_a is None else np.asarray(base_load_a, dtype=float)
    if base.shape != (3,) or not np.isfinite(base).all():
        raise ValueError(f"base_load_a: expected 3 finite values [A], got {base_load_a!r}")
    nodes = {nd.id: nd for nd in site.nodes}
    # Points loading each phase of each node (a 1-phase point loads the first of its rotation).
    count = {nid: np.zeros(3) for nid in nodes}
    for cp in site.charge_points:
        phases = list(cp.grid_phases(cp.phases))
        for nid in site.ancestors(cp.node_id):
            count[nid][phases] += 1
    share: dict[str, np.ndarray] = {}
    for nid, nd in nodes.items():
        room = np.asarray(nd.max_current_a, dtype=float) - (base if nid == ROOT else 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            share[nid] = np.where(count[nid] > 0, np.maximum(room, 0.0) / count[nid], np.inf)
    out: dict[str, float] = {}
    for cp in site.charge_points:
        phases = list(cp.grid_phases(cp.phases))
        a = min(float(share[nid][phases].min()) for nid in site.ancestors(cp.node_id))
        a = min(a, cp.max_current_a)
        a = math.floor(a * 10.0 + 1e-9) / 10.0
        out[cp.id] = a if a >= cp.min_current_a else 0.0
    return out
