"""The service side of the control loop: the live site seen through the OCPP gateway, the limits
in force, and dispatch back through the gateway (``scheduler.live`` defines the three sides;
this module joins them to ``ocpp_gateway`` and to the stores of ``noxblock``).

:class:`GatewaySite` follows the gateway's events and keeps, per connector, its status and
running transaction: the energy delivered so far (the energy register of the MeterValues minus
``meterStart``), the current it draws per phase, and what it has shown of its EV:

* **its maximum**, learned: an EV that draws clearly less than its limit for two samples in a row
  is planned at what it draws (plus 1 A, at least the point's minimum), so the current it leaves
  goes to others at the next re-plan; once it draws all it is given, the limit is forgotten
  and it is offered the point's maximum again;
* **its phases**: current on one phase only of a 3-phase point means a 1-phase EV;
* **its departure and energy**: what the driver said (:class:`NeedsStore`: ``PUT
  /api/v1/transactions/{id}/needs``, or a profile per id tag), else the median stay and energy of
  that id tag's past sessions, else of the station's (at least 3), else the defaults. An EV still
  there after its estimated departure is planned to stay another hour; one that still draws when
  it has had its estimated energy is planned for 2 kWh more.

A point that ignores its limits (the gateway's compliance check) is planned as inflexible load at
its maximum; a point that is offline as inflexible at the most its last profile allows (its
failsafe if we never sent one). Everything is rebuilt from the gateway's store at start, so a
restart loses no transaction.

:class:`GatewayDispatcher` sends each order with :meth:`ocpp_gateway.Gateway.dispatch_plan`
(concurrently, at most ``concurrency`` at once), skipping an order equal to the one last taken
unless forced, and verifying the first profile of each transaction with GetCompositeSchedule.

:class:`ServiceConditions` gives the limits: the site file's, the grid operator's blocks
(:class:`~noxblock.auth.LimitStore`) and, while the DSO's OSCP heartbeat has stopped, the
OSCP fallback capacity. A block with ``min_per_point_kw`` (section 14a) never dims the site
below that power for each EV charging.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import sqlite3
import statistics
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from models import Site
from ocpp_gateway import Gateway, GatewayError, GatewayEvent
from ocpp_gateway.dispatch import limit_at
from scheduler.conditions import Conditions
from scheduler.live import Observation, Order
from scheduler.snapshot import EVState

__all__ = [
    "Defaults",
    "GatewayDispatcher",
    "GatewaySite",
    "Needs",
    "NeedsStore",
    "ServiceConditions",
]

log = logging.getLogger("noxblock.live")

_PHASES = {"L1": 0, "L2": 1, "L3": 2, "L1-N": 0, "L2-N": 1, "L3-N": 2}
#: Connector states in which a point cannot charge: no idle share is given there.
_DOWN = {"Faulted", "Unavailable"}
#: Connector states of a transaction that is on: moves among them are no event.
_CHARGING = {"Charging", "SuspendedEV", "SuspendedEVSE"}


@dataclass(frozen=True)
class Defaults:
    """Estimates when nothing better is known."""

    stay_h: float = 8.0
    energy_kwh: float = 15.0
    #: Sessions of a station (all id tags) needed before its medians are used.
    station_min_sessions: int = 3
    #: Past sessions per id tag / station kept for the medians.
    history: int = 20
    #: An EV still plugged in after its estimated departure is planned to stay this much longer [h].
    overstay_h: float = 1.0


@dataclass(frozen=True)
class Needs:
    """What a driver declared: departure (UTC) and energy for the whole session [kWh]."""

    departure: datetime | None = None
    energy_kwh: float | None = None


# -- driver needs ---------------------------------------------------------------------------------
class NeedsStore:
    """Declared needs per transaction and per id tag, in ``DATA_DIR/live.sqlite3``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS tx_needs (
                transaction_id INTEGER PRIMARY KEY, departure TEXT, energy_kwh REAL, set_at TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS tag_profiles (
                id_tag TEXT PRIMARY KEY, stay_h REAL, energy_kwh REAL, set_at TEXT NOT NULL
            );
            """
        )

    def set_transaction(self, transaction_id: int, needs: Needs, *, at: datetime) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO tx_needs VALUES (?, ?, ?, ?)",
                (
                    transaction_id,
                    None if needs.departure is None else needs.departure.astimezone(UTC).isoformat(),
                    needs.energy_kwh,
                    at.isoformat(),
                ),
            )

    def transaction(self, transaction_id: int) -> Needs | None:
        with self._lock:
            row = self._db.execute(
                "SELECT departure, energy_kwh FROM tx_needs WHERE transaction_id = ?", (transaction_id,)
            ).fetchone()
        if row is None:
            return None
        return Needs(None if row[0] is None else datetime.fromisoformat(row[0]), row[1])

    def set_tag_profile(
        self, id_tag: str, stay_h: float | None, energy_kwh: float | None, *, at: datetime
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO tag_profiles VALUES (?, ?, ?, ?)",
                (id_tag, stay_h, energy_kwh, at.isoformat()),
            )

    def tag_profile(self, id_tag: str) -> tuple[float | None, float | None] | None:
        """``(stay [h], energy [kWh])`` declared for an id tag, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT stay_h, energy_kwh FROM tag_profiles WHERE id_tag = ?", (id_tag,)
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- the live site --------------------------------------------------------------------------------
@dataclass
class _Tx:
    id: int
    id_tag: str | None
    start: datetime
    meter_start_wh: float
    register_wh: float | None = None
    current_a: np.ndarray = field(default_factory=lambda: np.zeros(3))  # per point phase
    sampled_at: datetime | None = None
    learned_max_a: float | None = None
    under: int = 0
    phases: int | None = None

    @property
    def delivered_kwh(self) -> float:
        if self.register_wh is None:
            return 0.0
        return max(self.register_wh - self.meter_start_wh, 0.0) / 1000.0

    @property
    def draw_a(self) -> float:
        return float(self.current_a.max())


@dataclass
class _Connector:
    status: str | None = None
    tx: _Tx | None = None


def _register_wh(sampled: Iterable[Mapping[str, Any]]) -> float | None:
    """The energy register in a sampledValue list [Wh] (whole-point value, not per phase)."""
    out = None
    for sv in sampled:
        if sv.get("measurand", "Energy.Active.Import.Register") != "Energy.Active.Import.Register":
            continue
        if sv.get("phase"):
            continue
        try:
            v = float(sv["value"])
        except (KeyError, TypeError, ValueError):
            continue
        if not math.isfinite(v):
            continue
        out = v * 1000.0 if sv.get("unit") == "kWh" else v
    return out


def _currents_a(sampled: Iterable[Mapping[str, Any]], voltage_v: float, phases: int) -> np.ndarray | None:
    """Import current per point phase [A] from Current.Import (per phase, or one value for all
    phases) or else from Power.Active.Import; None when the sample has neither."""
    cur = np.full(3, np.nan)
    power_w: float | None = None
    any_current = False
    for sv in sampled:
        m = sv.get("measurand", "Energy.Active.Import.Register")
        if m not in ("Current.Import", "Power.Active.Import"):
            continue
        try:
            v = float(sv["value"])
        except (KeyError, TypeError, ValueError):
            continue
        if not math.isfinite(v):
            continue
        ph = _PHASES.get(sv.get("phase") or "")
        if m == "Current.Import":
            any_current = True
            if ph is None:
                cur[:phases] = np.fmax(cur[:phases], v)
            else:
                cur[ph] = v
        elif power_w is None or ph is None:
            w = v * (1000.0 if sv.get("unit") == "kW" else 1.0)
            power_w = w * (phases if ph is not None else 1)
    if any_current:
        out = np.nan_to_num(cur, nan=0.0)
        out[phases:] = 0.0
        return out
    if power_w is not None:
        out = np.zeros(3)
        out[:phases] = power_w / (voltage_v * phases)
        return out
    return None


class GatewaySite:
    """The live site behind the gateway; see the module docstring. Implements
    :class:`scheduler.live.LiveSite`.

    ``on_change(reason)`` is called for events that deserve a re-plan at once.
    """

    def __init__(
        self,
        gateway: Gateway,
        site: Site,
        *,
        needs: NeedsStore | None = None,
        defaults: Defaults = Defaults(),
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.gateway = gateway
        self.site = site
        self.needs = needs
        self.defaults = defaults
        self.on_change = on_change
        #: ``(cp, connector, at) -> limit [A] or None``: what the point was told for ``at``
        #: (:meth:`GatewayDispatcher.pilot_a`); None: the gateway's last accepted profile.
        self.pilot_lookup: Callable[[str, int, datetime], float | None] | None = None
        #: Points that did not take their last orders (the dispatcher's), treated as inflexible.
        self.failing: Callable[[datetime], set[str]] | None = None
        self.voltage_v = float(site.voltage_v)
        self._cps = {cp.id: cp for cp in site.charge_points}
        self._conns: dict[tuple[str, int], _Connector] = {
            (cp.id, c): _Connector() for cp in site.charge_points for c in range(1, cp.connectors + 1)
        }
        n = defaults.history
        self._tag_history: dict[str, deque[tuple[float, float]]] = defaultdict(lambda: deque(maxlen=n))
        self._station_history: dict[str, deque[tuple[float, float]]] = defaultdict(lambda: deque(maxlen=n))
        self._noncompliant: set[str] = set()
        self._restore()
        gateway.add_listener(self._on_event)

    # -- state from the store --------------------------------------------------------------
    def _restore(self) -> None:
        storage = self.gateway.storage
        for rec in storage.connectors():
            key = (rec.charge_point_id, rec.connector_id)
            if key in self._conns:
                self._conns[key].status = rec.status
        done = storage.transactions(active=False, limit=20_000)
        for tx in reversed(done):  # oldest first, so the deques keep the latest
            self._remember(
                tx.charge_point_id,
                tx.id_tag,
                tx.start_time,
                tx.stop_time,
                tx.meter_start_wh,
                tx.meter_stop_wh,
            )
        restored = 0
        for tx in storage.transactions(active=True, limit=100_000):
            key = (tx.charge_point_id, tx.connector_id or 1)
            if key not in self._conns or tx.start_time is None:
                continue
            state = _Tx(tx.id, tx.id_tag, tx.start_time, float(tx.meter_start_wh or 0))
            last = storage.latest_meter_value(tx.charge_point_id, tx.id)
            if last is not None:
                self._sample(key[0], state, last[0], last[1])
            self._conns[key].tx = state
            restored += 1
        self._noncompliant = set(self.gateway.non_compliant()) & set(self._cps)
        log.info("live state: %d running transactions, %d past sessions restored", restored, len(done))

    def _remember(
        self,
        cp_id: str,
        id_tag: str | None,
        start: datetime | None,
        stop: datetime | None,
        meter_start: float | None,
        meter_stop: float | None,
    ) -> None:
        if start is None or stop is None or stop <= start:
            return
        stay_h = (stop - start).total_seconds() / 3600.0
        kwh = max((meter_stop or 0) - (meter_start or 0), 0) / 1000.0
        if id_tag:
            self._tag_history[id_tag].append((stay_h, kwh))
        self._station_history[cp_id].append((stay_h, kwh))

    # -- events ----------------------------------------------------------------------------
    def _on_event(self, e: GatewayEvent) -> None:
        cp = e.charge_point_id
        if cp not in self._cps:
            return
        if e.kind in ("connected", "disconnected"):
            self._changed(f"{cp} {e.kind}")
            return
        if e.kind != "call" or e.payload is None:
            return
        p, r = e.payload, e.response or {}
        if e.action == "MeterValues":
            key = (cp, int(p.get("connectorId", 0)))
            conn = self._conns.get(key)
            if conn is None or conn.tx is None:
                return
            tx_id = p.get("transactionId")
            if tx_id is not None and tx_id != conn.tx.id:
                return
            for mv in p.get("meterValue", ()):
                try:
                    ts = datetime.fromisoformat(mv["timestamp"])
                except (KeyError, TypeError, ValueError):
                    continue
                self._sample(cp, conn.tx, ts, mv.get("sampledValue", ()), key[1])
            if self.gateway.is_compliant(cp) is False and cp not in self._noncompliant:
                self._noncompliant.add(cp)
                self._changed(f"{cp} non-compliant")
        elif e.action == "StartTransaction":
            if (r.get("idTagInfo") or {}).get("status") != "Accepted":
                return
            key = (cp, int(p["connectorId"]))
            if key not in self._conns:
                return
            start = _time(p.get("timestamp")) or self.gateway.clock()
            self._conns[key].tx = _Tx(
                int(r["transactionId"]), p.get("idTag"), start, float(p.get("meterStart", 0))
            )
            self._changed(f"{cp} transaction started")
        elif e.action == "StopTransaction":
            tx_id = p.get("transactionId")
            for (cid, _), conn in self._conns.items():
                if cid == cp and conn.tx is not None and conn.tx.id == tx_id:
                    tx = conn.tx
                    conn.tx = None
                    self._remember(
                        cp,
                        tx.id_tag,
                        tx.start,
                        _time(p.get("timestamp")),
                        tx.meter_start_wh,
                        p.get("meterStop"),
                    )
                    self._changed(f"{cp} transaction stopped")
                    break
        elif e.action == "StatusNotification":
            c = int(p.get("connectorId", 0))
            key = (cp, c)
            if key in self._conns:
                old = self._conns[key].status
                new = p.get("status")
                self._conns[key].status = new
                # Plug-in, plug-out, faults, availability: a re-plan. Charging <-> Suspended*
                # follows our own pilots (or a full EV): the next interval is soon enough, and
                # re-planning on it would chase its own tail.
                if old != new and (old not in _CHARGING or new not in _CHARGING):
                    self._changed(f"{cp}/{c} {new}")

    def _changed(self, reason: str) -> None:
        if self.on_change is not None:
            self.on_change(reason)

    def _sample(
        self, cp_id: str, tx: _Tx, ts: datetime, sampled: Iterable[Mapping[str, Any]], connector: int = 1
    ) -> None:
        sampled = list(sampled)
        reg = _register_wh(sampled)
        if reg is not None and (tx.sampled_at is None or ts >= tx.sampled_at):
            tx.register_wh = reg
        cp = self._cps[cp_id]
        cur = _currents_a(sampled, self.voltage_v, cp.phases)
        if cur is None or (tx.sampled_at is not None and ts < tx.sampled_at):
            return
        tx.current_a = cur
        tx.sampled_at = ts
        draw = float(cur.max())
        if cp.phases == 3 and draw > 2.0:
            tx.phases = 1 if int((cur > 1.0).sum()) == 1 else 3
        pilot = self._pilot_a(cp_id, connector, ts)
        log.debug("[%s] sample %s draw %.1f pilot %s", cp_id, ts, draw, pilot)
        if pilot is None or pilot < cp.min_current_a:
            return
        if draw < pilot - 1.5:
            tx.under += 1
            if tx.under >= 2:
                tx.learned_max_a = min(max(draw + 1.0, cp.min_current_a), cp.max_current_a)
        else:
            tx.under = 0
            if tx.learned_max_a is not None and draw >= pilot - 0.5:
                tx.learned_max_a = None  # it takes all it is given: offer it more again

    def _pilot_a(self, cp_id: str, connector: int, at: datetime) -> float | None:
        if self.pilot_lookup is not None:
            return self.pilot_lookup(cp_id, connector, at)
        try:
            state = self.gateway.central.point(cp_id)
        except KeyError:
            return None
        entry = state.dispatched.get(connector)
        if entry is None:
            return None
        return limit_at(entry[0], at, voltage_v=self.voltage_v, phases=state.phases)

    # -- estimates -------------------------------------------------------------------------
    def estimate(self, cp_id: str, tx: _Tx) -> tuple[datetime, float, str]:
        """``(departure, energy [kWh], source)`` for a running transaction."""
        d = self.defaults
        stay_h, kwh, source = None, None, "default"
        if self.needs is not None:
            declared = self.needs.transaction(tx.id)
            if declared is not None:
                if declared.departure is not None:
                    stay_h = (declared.departure - tx.start).total_seconds() / 3600.0
                kwh = declared.energy_kwh
                source = "driver"
            if tx.id_tag and (stay_h is None or kwh is None):
                prof = self.needs.tag_profile(tx.id_tag)
                if prof is not None:
                    stay_h = stay_h if stay_h is not None else prof[0]
                    kwh = kwh if kwh is not None else prof[1]
                    source = "driver" if source == "driver" else "tag profile"
        for hist, enough, name in (
            (self._tag_history.get(tx.id_tag or ""), 1, "id tag history"),
            (self._station_history.get(cp_id), d.station_min_sessions, "station history"),
        ):
            if (stay_h is None or kwh is None) and hist and len(hist) >= enough:
                stay_h = stay_h if stay_h is not None else statistics.median(h[0] for h in hist)
                kwh = kwh if kwh is not None else statistics.median(h[1] for h in hist)
                source = name if source == "default" else source
        stay_h = d.stay_h if stay_h is None else stay_h
        kwh = d.energy_kwh if kwh is None else kwh
        return tx.start + timedelta(hours=stay_h), float(kwh), source

    # -- LiveSite --------------------------------------------------------------------------
    def observe(self, now: datetime) -> Observation:
        """The site at ``now`` (see :class:`scheduler.live.Observation`)."""
        gw = self.gateway
        connected = set(gw.connected_ids())
        self._noncompliant = {cp for cp in self._cps if gw.is_compliant(cp) is False}
        # Points that do not take their orders: as if they ignored them.
        failing = set() if self.failing is None else self.failing(now) & set(self._cps)
        self._noncompliant |= failing
        evs: list[EVState] = []
        where: dict[str, tuple[str, int]] = {}
        idle: list[tuple[str, int]] = []
        inflexible: dict[str, np.ndarray] = {}
        for (cp_id, c), conn in self._conns.items():
            cp = self._cps[cp_id]
            tx = conn.tx
            if cp_id in self._noncompliant or cp_id not in connected:
                if cp_id in self._noncompliant and tx is not None:
                    a = cp.max_current_a
                elif cp_id in connected and cp_id not in failing:
                    a = 0.0  # a liar without a transaction: re-planned when one starts
                else:
                    a = self._offline_limit_a(cp_id, c, now)
                if a > 0:
                    phases = list(cp.grid_phases(cp.phases))
                    arr = inflexible.setdefault(cp_id, np.zeros(3))
                    arr[phases] += a
                continue
            if tx is None:
                if conn.status not in _DOWN:
                    idle.append((cp_id, c))
                continue
            departure, kwh, _ = self.estimate(cp_id, tx)
            if departure <= now:  # still here after its estimated departure: another while
                departure = now + timedelta(hours=self.defaults.overstay_h)
            # Planned at least to the end of a short interval, so it charges until it leaves.
            departure = max(departure, now + timedelta(minutes=5))
            delivered = tx.delivered_kwh
            if kwh <= delivered + 0.1 and tx.draw_a > 1.0:
                kwh = delivered + 2.0
            n_ph = tx.phases or cp.phases
            max_kw = None
            if tx.learned_max_a is not None:
                max_kw = tx.learned_max_a * self.voltage_v * n_ph / 1000.0
            sid = f"tx{tx.id}"
            evs.append(
                EVState(
                    session_id=sid,
                    charge_point_id=cp_id,
                    arrival=min(tx.start, now),
                    departure=departure,
                    energy_requested_kwh=kwh,
                    energy_delivered_kwh=delivered,
                    max_power_kw=max_kw,
                    phases=tx.phases,
                )
            )
            where[sid] = (cp_id, c)
        return Observation(tuple(evs), where, tuple(idle), inflexible)

    def failsafe_a(self, charge_point_id: str) -> float | None:
        """The limit [A] the point falls back to after its orders (see
        :class:`scheduler.live.LiveSite`)."""
        return self.gateway.failsafe_limit_a(charge_point_id)

    def _offline_limit_a(self, cp_id: str, connector: int, now: datetime) -> float:
        """The most an offline (or failing) connector may draw: the highest limit of the last
        profiles it accepted from this process (transaction and default) and its failsafe; its
        maximum if this process sent it nothing (or it has no failsafe)."""
        cp = self._cps[cp_id]
        fallback = self.gateway.installed_failsafe_a(cp_id)
        fallback = cp.max_current_a if fallback is None else min(fallback, cp.max_current_a)
        try:
            state = self.gateway.central.point(cp_id)
            entries = [state.dispatched.get(connector), state.dispatched_default.get(connector)]
        except KeyError:
            entries = []
        if not any(entries):
            # Nothing sent by this process: what the point holds (an earlier run's plan, or no
            # profile at all) may allow its maximum.
            return cp.max_current_a
        limits = [
            p.limit
            if profile.rate_unit == "A"
            else p.limit / (self.voltage_v * (p.number_phases or cp.phases))
            for profile, _ in filter(None, entries)
            for p in profile.periods
        ]
        return min(max([*limits, fallback]), cp.max_current_a)

    def transactions(self) -> list[dict[str, Any]]:
        """Running transactions with what the service knows and estimates (for the API)."""
        out = []
        for (cp_id, c), conn in self._conns.items():
            tx = conn.tx
            if tx is None:
                continue
            departure, kwh, source = self.estimate(cp_id, tx)
            out.append(
                {
                    "transaction_id": tx.id,
                    "charge_point_id": cp_id,
                    "connector_id": c,
                    "id_tag": tx.id_tag,
                    "start": tx.start,
                    "energy_delivered_kwh": round(tx.delivered_kwh, 3),
                    "current_a": [round(float(x), 2) for x in tx.current_a],
                    "learned_max_a": tx.learned_max_a,
                    "phases": tx.phases,
                    "estimated_departure": departure,
                    "estimated_energy_kwh": kwh,
                    "estimate_source": source,
                }
            )
        return out

    def measured_site_a(self, now: datetime | None = None) -> np.ndarray:
        """(3,) the current the running transactions draw per grid phase, from their last meter
        values [A].

        Meter values of different points are not taken at the same time; with ``now``, a point
        that follows its limits counts at most the limit it has been told for ``now`` (its last
        reading may predate a lower limit it has since followed)."""
        out = np.zeros(3)
        for (cp_id, c), conn in self._conns.items():
            if conn.tx is None:
                continue
            cp = self._cps[cp_id]
            current = conn.tx.current_a.copy()
            if now is not None and cp_id not in self._noncompliant and self.pilot_lookup is not None:
                pilot = self.pilot_lookup(cp_id, c, now)
                if pilot is not None:
                    np.minimum(current, pilot if pilot >= cp.min_current_a else 0.0, out=current)
            for i, g in enumerate(cp.grid_phases(3)):
                out[g] += current[i]
        return out

    def told_site_a(self, now: datetime) -> np.ndarray:
        """(3,) per grid phase, the sum of the limits the running transactions were told for
        ``now`` (a point's maximum where unknown; what it draws if it ignores its limits) [A]."""
        out = np.zeros(3)
        for (cp_id, c), conn in self._conns.items():
            tx = conn.tx
            if tx is None:
                continue
            cp = self._cps[cp_id]
            pilot = None if self.pilot_lookup is None else self.pilot_lookup(cp_id, c, now)
            if pilot is None:  # nothing sent yet: the point follows its failsafe, if it has one
                pilot = self.gateway.installed_failsafe_a(cp_id)
            a = cp.max_current_a if pilot is None else min(pilot, cp.max_current_a)
            if a < cp.min_current_a:
                a = 0.0
            if cp_id in self._noncompliant:
                a = max(a, tx.draw_a)
            out[list(cp.grid_phases(tx.phases or cp.phases))] += a
        return out

    def connector_status(self) -> dict[tuple[str, int], str | None]:
        return {k: c.status for k, c in self._conns.items()}

    def close(self) -> None:
        self.gateway.remove_listener(self._on_event)


def _time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


# -- dispatch -------------------------------------------------------------------------------------
#: Orders not taken in a row after which a point counts as failing (inflexible load) ...
FAILING_AFTER = 3
#: ... for this long; then it is sent orders again.
FAILING_FOR = timedelta(minutes=10)


class GatewayDispatcher:
    """Sends orders through the gateway (see the module docstring). Implements
    :class:`scheduler.live.Dispatcher`."""

    def __init__(self, gateway: Gateway, *, concurrency: int = 200) -> None:
        self.gateway = gateway
        self.concurrency = concurrency
        self.sent: dict[tuple[str, int], Order] = {}
        #: Per connector, the last orders taken and when (clock time), newest last.
        self.history: dict[tuple[str, int], deque[tuple[datetime, Order]]] = defaultdict(
            lambda: deque(maxlen=16)
        )
        self._verified: set[tuple[str, int, str | None]] = set()
        self.failures = 0
        #: Per point, orders not taken in a row, and since when it counts as failing.
        self._streak: dict[str, int] = {}
        self._failing_since: dict[str, datetime] = {}
        #: Per connector, the failsafe its last order ends on (a new failsafe: sent again).
        self._tails: dict[tuple[str, int], float | None] = {}

    def _failed(self, charge_point_id: str) -> None:
        self.failures += 1
        n = self._streak[charge_point_id] = self._streak.get(charge_point_id, 0) + 1
        if n == FAILING_AFTER:
            self._failing_since[charge_point_id] = self.gateway.clock()
            log.warning(
                "[%s] %d orders in a row not taken: treated as inflexible load for %.0f min",
                charge_point_id, n, FAILING_FOR.total_seconds() / 60,
            )  # fmt: skip

    def failing(self, now: datetime) -> set[str]:
        """Points that did not take :data:`FAILING_AFTER` orders in a row, for
        :data:`FAILING_FOR` since (then they are sent orders again)."""
        out = set()
        for cp_id, since in list(self._failing_since.items()):
            if now - since < FAILING_FOR:
                out.add(cp_id)
            else:
                del self._failing_since[cp_id]
                self._streak.pop(cp_id, None)
        return out

    def _same(self, old: Order | None, new: Order) -> bool:
        """Whether ``new`` sets the same limits as ``old`` from its start to its end (compared as
        the dispatch rounds them, down to 0.1 A), with the same end."""
        if old is None or old.phases != new.phases or old.session_id != new.session_id:
            return False
        if old.end != new.end or old.plan[0][0] > new.plan[0][0]:
            return False  # every order a point keeps must run out at the same time
        times = new.times_with_s(old)
        a_old, a_new = old.limits_at_a(times), new.limits_at_a(times)
        return bool(np.array_equal(np.floor(a_old * 10.0 + 1e-6), np.floor(a_new * 10.0 + 1e-6)))

    async def dispatch(self, orders: Sequence[Order], *, force: bool) -> int:
        sem = asyncio.Semaphore(self.concurrency)
        gw = self.gateway

        async def one(o: Order) -> bool:
            key = (o.charge_point_id, o.connector_id)
            if not gw.is_connected(o.charge_point_id):
                return False
            failsafe = gw.failsafe_limit_a(o.charge_point_id)  # the tail of the profile
            if not force and self._tails.get(key, -1.0) == failsafe and self._same(self.sent.get(key), o):
                return True
            verify_key = (o.charge_point_id, o.connector_id, o.session_id)
            async with sem:
                try:
                    result = await gw.dispatch_plan(
                        o.charge_point_id, o.connector_id, list(o.plan), end=o.end, phases=o.phases,
                        verify=o.session_id is not None and verify_key not in self._verified,
                        also_default=o.session_id is not None,
                    )  # fmt: skip
                except GatewayError as e:
                    log.warning(
                        "[%s] dispatch to connector %d failed: %s", o.charge_point_id, o.connector_id, e
                    )
                    self._failed(o.charge_point_id)
                    self.sent.pop(key, None)
                    return False
            if result.status.value != "Accepted":
                copied = result.default_status is not None and result.default_status.value == "Accepted"
                log.log(
                    logging.INFO if copied else logging.WARNING,
                    "[%s] connector %d: %s %s%s", o.charge_point_id, o.connector_id,
                    result.profile.purpose, result.status.value,
                    "; its TxDefaultProfile copy taken (the transaction is over on the point?)"
                    if copied else "",
                )  # fmt: skip
                if not copied:
                    self._failed(o.charge_point_id)
                    self.sent.pop(key, None)
                    return False
                # No TxProfile of this plan is in force: the default copy is what the connector
                # follows, for a transaction that ended there and for one still running.
            self._streak.pop(o.charge_point_id, None)
            self._failing_since.pop(o.charge_point_id, None)
            self.sent[key] = o
            self._tails[key] = failsafe
            self.history[key].append((gw.clock(), o))
            if o.session_id is not None and result.status.value == "Accepted":
                self._verified.add(verify_key)
            return True

        results = await asyncio.gather(*(one(o) for o in orders))
        return sum(results)

    def forget(self, charge_point_id: str) -> None:
        """Send this point everything again at the next re-plan (it reconnected, or its profiles
        were cleared)."""
        for key in [k for k in self.sent if k[0] == charge_point_id]:
            del self.sent[key]

    def pilot_a(self, charge_point_id: str, connector_id: int, at: datetime) -> float | None:
        """The limit [A] the connector had been told for ``at`` by the orders taken before ``at``
        (a meter sample may arrive after the next order); None if unknown."""
        for taken_at, order in reversed(self.history.get((charge_point_id, connector_id), ())):
            if taken_at <= at:
                if order.plan[0][0] <= at < order.end:
                    return _at(order, at)
                return None
        return None


def _at(order: Order, t: datetime) -> float:
    out = order.plan[0][1]
    for s, a in order.plan:
        if s <= t:
            out = a
        else:
            break
    return out


# -- conditions -----------------------------------------------------------------------------------
class ServiceConditions:
    """Limits, base load and signals for the loop (see the module docstring). Implements
    :class:`scheduler.live.ConditionsSource`."""

    def __init__(
        self,
        site: Site,
        *,
        limits: Any | None = None,
        oscp: Any | None = None,
        base_load: Any | None = None,
        signals: Any | None = None,
    ) -> None:
        self.site = site
        self.limits = limits
        self.oscp = oscp
        self.base_load = base_load
        self.signals = signals
        self.last_source = "site file"
        #: Called with ``now`` before the conditions of each re-plan are read (the service keeps
        #: the points' failsafes within the limits ahead there).
        self.before_conditions: Callable[[datetime], None] | None = None

    def lowest_ahead_a(self, now: datetime) -> np.ndarray:
        """(3,) per phase the lowest limit at the connection from ``now`` on, for as long as we
        know [A]: the site file's, every grid operator's block not yet over, and the OSCP
        fallback capacity (what holds if the grid operator loses us). A failsafe must keep it:
        it lasts as long as the service is gone."""
        limit = np.broadcast_to(np.asarray(self.site.max_current_a, dtype=float), (3,)).copy()
        if self.limits is not None:
            for b in self.limits.schedule(self.site.id, now).blocks:
                if b.end is None or b.end > now:
                    limit = np.minimum(limit, b.max_current_a)
        if self.oscp is not None:
            fallback = self.oscp.oscp_state(now)["fallback_a"]
            if fallback is not None:
                limit = np.minimum(limit, float(fallback))
        return limit

    def _floor_a(self, guaranteed_kw: np.ndarray, evs: Sequence[EVState]) -> np.ndarray:
        """(n, 3) per step and grid phase, the current the guaranteed power of every EV takes [A]
        (at least its minimum current, at most its point's maximum)."""
        from noxblock.limits import current_from_power_a

        guaranteed_kw = np.asarray(guaranteed_kw, dtype=float)
        cps = {cp.id: cp for cp in self.site.charge_points}
        per_phase = np.zeros((len(guaranteed_kw), 3))
        for ev in evs:
            cp = cps[ev.charge_point_id]
            n_ph = min(ev.phases or cp.phases, cp.phases)
            a = _ceil_tenth(current_from_power_a(1.0, self.site.voltage_v, n_ph) * guaranteed_kw)
            a = np.where(guaranteed_kw > 0, np.clip(a, cp.min_current_a, cp.max_current_a), 0.0)
            per_phase[:, list(cp.grid_phases(n_ph))] += a[:, None]
        return per_phase

    def guaranteed_a(self, grid: Any, evs: Sequence[EVState]) -> np.ndarray | None:
        """(S, T) the current each EV is guaranteed per step by a block's ``min_per_point_kw``
        (section 14a) [A]; None when no block in the grid has one."""
        if self.limits is None:
            return None
        blocks = [b for b in self.limits.schedule(self.site.id, grid.start).blocks if b.min_per_point_kw]
        if not blocks:
            return None
        from noxblock.limits import current_from_power_a, limits_series

        starts = list(grid.starts)
        kw = np.zeros(len(starts))
        for b in blocks:
            hit = np.isfinite(limits_series([b], starts, step=grid.boundaries[-1] - grid.boundaries[-2]))
            kw = np.where(hit, np.maximum(kw, float(b.min_per_point_kw)), kw)
        cps = {cp.id: cp for cp in self.site.charge_points}
        out = np.zeros((len(evs), len(starts)))
        for i, ev in enumerate(evs):
            cp = cps[ev.charge_point_id]
            n_ph = min(ev.phases or cp.phases, cp.phases)
            out[i] = _ceil_tenth(current_from_power_a(1.0, self.site.voltage_v, n_ph) * kw)
        return out

    def limit_now_a(self, now: datetime, evs: Sequence[EVState] = ()) -> np.ndarray:
        """(3,) the per-phase limit at the connection in force at ``now`` [A] (site file, grid
        operator, OSCP fallback), never below the section 14a floor of ``evs`` charging."""
        limit = np.broadcast_to(np.asarray(self.site.max_current_a, dtype=float), (3,)).copy()
        guaranteed_kw = 0.0
        if self.limits is not None:
            for b in self.limits.schedule(self.site.id, now).blocks:
                if b.start <= now and (b.end is None or b.end > now):
                    limit = np.minimum(limit, b.max_current_a)
                    guaranteed_kw = max(guaranteed_kw, b.min_per_point_kw or 0.0)
        if self.oscp is not None:
            state = self.oscp.oscp_state(now)
            if not state["online"] and state["fallback_a"] is not None:
                limit = np.minimum(limit, float(state["fallback_a"]))
        if guaranteed_kw > 0 and evs:
            limit = np.maximum(limit, self._floor_a(np.array([guaranteed_kw]), evs)[0])
        return limit

    def conditions(self, now: datetime, step: timedelta, n: int, observation: Observation) -> Conditions:
        from noxblock.limits import limits_series

        if self.before_conditions is not None:
            self.before_conditions(now)
        starts = [now + i * step for i in range(n)]
        site_limit = np.full(n, np.inf)
        guaranteed_kw = np.zeros(n)
        source = "site file"
        if self.limits is not None:
            sched = self.limits.schedule(self.site.id, now)
            if sched.blocks:
                site_limit = limits_series(sched, starts, step=step)
                for b in sched.blocks:
                    if b.min_per_point_kw:
                        one = limits_series([b], starts, step=step)
                        guaranteed_kw = np.where(
                            np.isfinite(one), np.maximum(guaranteed_kw, b.min_per_point_kw), guaranteed_kw
                        )
                if np.isfinite(site_limit[0]):
                    source = "grid operator"
        if self.oscp is not None:
            state = self.oscp.oscp_state(now)
            if not state["online"] and state["fallback_a"] is not None:
                site_limit = np.minimum(site_limit, float(state["fallback_a"]))
                source = "OSCP fallback"
        if guaranteed_kw.any() and observation.evs:
            # Section 14a: the limit never goes below the guaranteed power of each EV charging.
            site_limit3 = np.maximum(site_limit[:, None], self._floor_a(guaranteed_kw, observation.evs))
        else:
            site_limit3 = np.repeat(site_limit[:, None], 3, axis=1)
        self.last_source = source

        class _Arr:
            def __init__(self, arr: np.ndarray) -> None:
                self.arr = arr

            def on_grid(self, _starts: Sequence[datetime]) -> np.ndarray:
                return np.where(np.isfinite(self.arr), self.arr, np.nan)

        return Conditions.from_series(
            now,
            step,
            n,
            base_load=self.base_load,
            site_limit_a=_Arr(site_limit3),
            price=None if self.signals is None else _Column(self.signals, "price_eur_per_mwh"),
            co2=None if self.signals is None else _Column(self.signals, "co2_g_per_kwh"),
        )


def base_load_max_a(base_load: Any | None) -> list[float] | None:
    """(3,) the largest base load per phase of the site file [A], or None without one."""
    if base_load is None:
        return None
    cols = [np.asarray(base_load.columns[c], dtype=float) for c in ("l1_a", "l2_a", "l3_a")]
    return [float(np.nanmax(c)) if np.isfinite(c).any() else 0.0 for c in cols]


def _ceil_tenth(a: np.ndarray) -> np.ndarray:
    """Up to 0.1 A, the resolution a profile carries: a guaranteed 4.2 kW must not become 4.14."""
    return np.ceil(np.asarray(a, dtype=float) * 10.0 - 1e-6) / 10.0


class _Column:
    """One column of a ``StepSeries`` as a ``TimeSeries`` (NaN where absent)."""

    def __init__(self, series: Any, name: str) -> None:
        self.series = series
        self.name = name

    def on_grid(self, starts: Sequence[datetime]) -> np.ndarray:
        if self.name not in self.series.columns:
            return np.full(len(starts), np.nan)
        return np.asarray(self.series.on_grid(starts, self.name), dtype=float)


# -- the whole loop -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ControlSettings:
    """How the service plans: control interval, look-ahead, policy and time limits."""

    step: timedelta = timedelta(minutes=5)
    horizon: timedelta = timedelta(hours=24)
    #: Steps beyond ``fine_span`` are this long (a multiple of ``step``); None: all ``step``.
    coarse_step: timedelta | None = timedelta(minutes=30)
    fine_span: timedelta = timedelta(hours=2)
    policy: str = "milp"
    #: HiGHS time limit of one re-plan [s].
    solver_time_limit_s: float = 5.0
    #: Wall time a re-plan may take before the fallback (EDF) plans instead [s].
    deadline_s: float = 8.0
    #: Most EVs x steps in a plan (longer steps ahead with many EVs); None: no limit.
    max_plan_cells: int | None = 12_000
    #: Time zone of the site (day types of the arrival forecast).
    timezone: str = "UTC"
    #: Wall seconds per clock second (below 1 in an accelerated demo).
    wall_s_per_s: float = 1.0
    defaults: Defaults = Defaults()


class Control:
    """The control loop of a running service: :class:`GatewaySite`, :class:`ServiceConditions`,
    :class:`GatewayDispatcher` and :class:`scheduler.live.ControlLoop` on one gateway."""

    def __init__(
        self,
        gateway: Gateway,
        site_config: Any,
        data_dir: str | Path,
        *,
        settings: ControlSettings = ControlSettings(),
        limits: Any | None = None,
        oscp: Any | None = None,
        signals: Any | None = None,
    ) -> None:
        from scheduler.live import ControlLoop
        from scheduler.policies import make_policy
        from scheduler.rolling import RollingHorizon

        site: Site = site_config.site
        self.settings = settings
        self.site = site
        self.needs = NeedsStore(Path(data_dir) / "live.sqlite3")
        weights = None
        if settings.policy == "milp":
            # The simulator's rolling weights plus a small "charge early" tie-break: live
            # departures and energies are estimates, and capacity left unused now is lost.
            from scheduler.policies import ROLLING_WEIGHTS

            weights = dataclasses.replace(ROLLING_WEIGHTS, early_eur_per_kwh_h=2e-5)
        policy = make_policy(
            settings.policy, weights=weights, time_limit_s=settings.solver_time_limit_s, tz=settings.timezone
        )
        coarse = settings.coarse_step if settings.policy in ("milp", "offline-optimal") else None
        rolling = RollingHorizon(policy, settings.step, settings.horizon, coarse, settings.fine_span)
        self.conditions = ServiceConditions(
            site, limits=limits, oscp=oscp, base_load=site_config.base_load, signals=signals
        )
        self.dispatcher = GatewayDispatcher(gateway)
        self.loop: ControlLoop
        self.live = GatewaySite(
            gateway, site, needs=self.needs, defaults=settings.defaults, on_change=self._request
        )
        self.live.pilot_lookup = self.dispatcher.pilot_a
        self.live.failing = self.dispatcher.failing
        self.loop = ControlLoop(
            site,
            rolling,
            self.live,
            self.conditions,
            self.dispatcher,
            clock=gateway.clock,
            deadline_s=settings.deadline_s,
            wall_s_per_s=settings.wall_s_per_s,
            max_unbalance_a=site_config.max_unbalance_a,
            max_cells=settings.max_plan_cells,
        )
        self._limits = limits
        self.gateway = gateway
        self.site = site
        self._base_max_a = base_load_max_a(site_config.base_load)
        self._failsafe_for: np.ndarray | None = None  # the lowest limit ahead the failsafes keep
        self.conditions.before_conditions = self.update_failsafes
        self.started_at = gateway.clock()
        #: (time, measured (3,), limit (3,), planned load (3,) or None) [A], oldest first.
        self.samples: deque[tuple[datetime, np.ndarray, np.ndarray, np.ndarray | None]] = deque(maxlen=50_000)
        self.sample_every_s = 30.0
        self.tolerance_a = 1.0
        self.measure_lag_s = 600.0
        self.violations = 0
        self.max_excess_a = 0.0
        self.measured_violations = 0
        self.max_measured_excess_a = 0.0
        self.peak_a = np.zeros(3)
        self.peak_told_a = np.zeros(3)
        self._pending_audits: list[tuple[int, datetime]] = []
        if limits is not None:
            limits.listeners.append(self._limit_changed)
        gateway.add_listener(self._on_event)
        self.oscp_sender = None
        self._oscp_task: asyncio.Task[None] | None = None
        if oscp is not None:
            from noxblock.oscp import OscpSender

            self.oscp_sender = OscpSender(oscp, site.id, self.live.measured_site_a, clock=gateway.clock)
        self.loop.on_replan = lambda rec: self.sample(rec.at)

    def _request(self, reason: str) -> None:
        loop = getattr(self, "loop", None)
        if loop is not None:
            loop.request(reason)

    def update_failsafes(self, now: datetime) -> None:
        """Keep every point's failsafe within the lowest limit ahead (a grid operator's cut, the
        OSCP fallback): what a point falls back to when the service is gone must keep it too.
        Back to the site file's failsafes once no lower limit is ahead."""
        lowest = self.conditions.lowest_ahead_a(now)
        if self._failsafe_for is not None and np.array_equal(lowest, self._failsafe_for):
            return
        first = self._failsafe_for is None
        self._failsafe_for = lowest
        site_a = np.broadcast_to(np.asarray(self.site.max_current_a, dtype=float), (3,))
        caps: dict[str, float | None]
        if (lowest >= site_a).all():
            if first:
                return  # the site file's failsafes hold
            caps = dict.fromkeys((cp.id for cp in self.site.charge_points), None)
        else:
            from models.failsafe import failsafe_currents_a

            tight = dataclasses.replace(self.site, max_current_a=tuple(float(x) for x in lowest))
            caps = dict(failsafe_currents_a(tight, self._base_max_a))
        changed = self.gateway.set_failsafe_caps(caps)
        if changed:
            log.info(
                "failsafes of %d points for a limit of %s A ahead (e.g. %s %s A)",
                len(changed), "/".join(f"{x:g}" for x in lowest), changed[0],
                self.gateway.failsafe_limit_a(changed[0]),
            )  # fmt: skip

    def _limit_changed(self, site: str, audit_id: int) -> None:
        if site == self.site.id:
            self._pending_audits.append((audit_id, self.gateway.clock()))
            self._request("limit change")

    # -- what happened: samples, KPIs, the measured response to a limit --------------------
    def _on_event(self, e: GatewayEvent) -> None:
        if e.kind == "connected":
            self.dispatcher.forget(e.charge_point_id)
        elif e.kind == "call" and e.action == "MeterValues":
            now = self.gateway.clock()
            if self.samples and (now - self.samples[-1][0]).total_seconds() < self.sample_every_s:
                return
            self.sample(now)

    def sample(self, now: datetime) -> None:
        """Record, at ``now``, the limit in force, the sum of the limits the EVs charging were told
        and the load measured, per phase; settle the measured response of limit requests one
        control interval old.

        A *violation* is a sample where what the EVs were told exceeds the limit (what the
        service answers for). The measured load is compared with the highest limit of the last
        ``measure_lag_s``: meter values lag behind a new limit by up to a meter interval."""
        measured = self.live.measured_site_a(now)
        told = self.live.told_site_a(now)
        evs = self.loop.snapshot.present() if self.loop.snapshot is not None else ()
        limit = self.conditions.limit_now_a(now, evs)
        planned = None if self.loop.last is None else np.asarray(self.loop.last.load_a)
        lag = timedelta(seconds=self.measure_lag_s)
        recent = [s[2] for s in self.samples if s[0] >= now - lag]
        lagged = np.max([limit, *recent], axis=0)
        self.samples.append((now, measured, limit, planned))
        over = float(np.max(told - limit))
        if over > 1e-6:
            self.violations += 1
            self.max_excess_a = max(self.max_excess_a, over)
        m_over = float(np.max(measured - lagged))
        if m_over > self.tolerance_a:
            self.measured_violations += 1
            self.max_measured_excess_a = max(self.max_measured_excess_a, m_over)
        np.maximum(self.peak_a, measured, out=self.peak_a)
        np.maximum(self.peak_told_a, told, out=self.peak_told_a)
        due = [a for a in self._pending_audits if (now - a[1]) >= self.settings.step]
        if due and self.conditions.limits is not None:
            for audit_id, received in due:
                window = [s for s in self.samples if s[0] >= received]
                peak = np.max([s[1] for s in window], axis=0) if window else measured
                response = {
                    "measured_at": now.isoformat(),
                    "measured_a": [round(float(x), 2) for x in measured],
                    "peak_since_received_a": [round(float(x), 2) for x in peak],
                    "limit_a": [round(float(x), 2) if math.isfinite(x) else None for x in limit],
                    "within_limit": bool((measured <= limit + self.tolerance_a).all()),
                    "replans_since": sum(1 for _ in window),
                }
                try:
                    self.conditions.limits.set_measured_response(audit_id, response)
                except LookupError:
                    log.warning("limit audit %d vanished before its measured response", audit_id)
            self._pending_audits = [a for a in self._pending_audits if a not in due]

    def kpis(self) -> dict[str, Any]:
        """Energy, sessions, peak against limit and violations since the service started."""
        storage = self.gateway.storage
        finished = [
            t for t in storage.transactions(active=False, limit=1_000_000)
            if t.stop_time is not None and t.start_time is not None and t.start_time >= self.started_at
        ]  # fmt: skip
        done_kwh = sum(max((t.meter_stop_wh or 0) - (t.meter_start_wh or 0), 0) for t in finished) / 1000.0
        running = self.live.transactions()
        run_kwh = sum(t["energy_delivered_kwh"] for t in running)
        limits = [s[2] for s in self.samples]
        min_limit = np.min(limits, axis=0) if limits else np.full(3, np.inf)
        return {
            "since": self.started_at,
            "energy_delivered_kwh": round(done_kwh + run_kwh, 3),
            "sessions_finished": len(finished),
            "sessions_running": len(running),
            "peak_measured_a": [round(float(x), 2) for x in self.peak_a],
            "lowest_limit_a": [round(float(x), 2) if math.isfinite(x) else None for x in min_limit],
            "peak_told_a": [round(float(x), 2) for x in self.peak_told_a],
            "violations": self.violations,
            "max_excess_a": round(self.max_excess_a, 2),
            "measured_violations": self.measured_violations,
            "max_measured_excess_a": round(self.max_measured_excess_a, 2),
            "samples": len(self.samples),
            "replans": self.loop.replans,
            "fallbacks": self.loop.fallbacks,
            "non_compliant": self.gateway.non_compliant(),
        }

    def start(self) -> None:
        self.loop.start()
        if self.oscp_sender is not None:
            self._oscp_task = asyncio.create_task(self._oscp_loop())

    async def _oscp_loop(self) -> None:
        sender = self.oscp_sender
        assert sender is not None
        last: float | None = None  # wall time of the last tick towards a registered CP
        while True:
            period = max(sender.interval_s * self.settings.wall_s_per_s, 0.05)
            now = time.monotonic()
            if last is None or now - last >= period:
                try:
                    registered = sender.registered
                    await sender.tick()
                    if registered:  # sent, or failed: either way the next try is a period on
                        last = now
                except Exception:  # never let the DSO link take the loop down
                    log.exception("OSCP tick failed")
                    last = now
            # Short naps: a registration or a new interval from a handshake takes effect soon.
            await asyncio.sleep(min(period, 0.5))

    async def stop(self) -> None:
        if self._oscp_task is not None:
            self._oscp_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._oscp_task
        await self.loop.stop()
        self.gateway.remove_listener(self._on_event)
        if self._limits is not None and self._limit_changed in self._limits.listeners:
            self._limits.listeners.remove(self._limit_changed)
        self.live.close()
        self.needs.close()
