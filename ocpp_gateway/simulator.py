"""Simulated OCPP 1.6J charge points (the client side) over real websockets: for tests, the demo and
benchmarks. Knows nothing of the optimiser (it imports only ``ocpp_gateway`` value types).

A :class:`SimulatedChargePoint` connects to ``{server_url}{id}`` with subprotocol ``ocpp1.6``
(HTTP Basic auth when it has a password, TLS when given an ``ssl`` context), sends
BootNotification, then Heartbeats and a StatusNotification per connector, and replays sessions
given as plain data (:class:`SimSession`, e.g. rows of the sessions CSV): plug-in, Authorize,
StartTransaction, MeterValues every ``meter_interval_s`` (energy register, current per phase,
power), StopTransaction at departure or when the EV is full.

It behaves like a real point where it matters for smart charging:

* it keeps the charging profiles it is sent (:class:`ProfileStore`: per purpose the highest
  valid stack level wins; the limit is the minimum of ChargePointMaxProfile and
  TxProfile-else-TxDefaultProfile), answers GetCompositeSchedule from them, converts W and A,
  and the EV draws ``min(limit, EV limit, point limit)``, nothing below 6 A (IEC 61851);
* its configuration (:class:`PointSpec`) says which rate units and how many periods it takes;
  ``obeys_profiles=False`` makes a "liar" that accepts and reports profiles but ignores them;
* it answers every central-system command of OCPP 1.6 (Core, Smart Charging, Reservation,
  Local Auth List, Remote Trigger, Firmware Management) with something sensible;
* and those of the security extension: it keeps installed root certificates (InstallCertificate,
  GetInstalledCertificateIds, DeleteCertificate); on ExtendedTriggerMessage
  SignChargePointCertificate it makes a key and a CSR (commonName its id, organization its
  ``CpoName``) and accepts the CertificateSigned that follows only for that key and name
  (else Rejected and a SecurityEventNotification InvalidChargePointCertificate); GetLog and
  SignedUpdateFirmware are followed by their status notifications (the signing certificate must
  be issued by an installed ManufacturerRootCertificate, else InvalidCertificate; the "download"
  of a location yields ``firmware_images[location]``, by default the location's own bytes, and a
  bad signature ends in InvalidSignature; both with their security events); its
  ``SecurityProfile`` can be raised, never lowered, and from profile 2 on it connects with TLS,
  trusting its installed CentralSystemRootCertificates (profile 3: with its signed certificate);
* it survives the central system going away: it reconnects with exponential back-off and then
  replays, in order, the transaction messages it queued while offline (StartTransaction,
  MeterValues, StopTransaction; at least once, as real points do, so a message in flight when the
  connection broke is sent again). Heartbeats, status and Authorize are not queued.

Simulated time comes from a :class:`SimClock`: :class:`RealClock`, :class:`AcceleratedClock` for a
demo (``AcceleratedClock(360)`` runs one simulated hour per 10 s), or :class:`ManualClock` for
tests (time moves when the test says). Session times, meter
intervals and message timestamps are simulated; connection keep-alive (heartbeats, back-off,
call time-outs) runs on the wall clock. A clock is also callable, so the same object can be a
:class:`~ocpp_gateway.gateway.Gateway`'s clock.

Tests and scripts wait on state, not on time: :meth:`SimulatedChargePoint.wait_until` and
:meth:`Fleet.wait_until` re-check a condition after every :class:`SimEvent`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import heapq
import itertools
import json
import logging
import math
import random
import ssl as ssl_module
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from ocpp_gateway.certificates import (
    CertificateError,
    CertificateHashData,
    certificate_hash_data,
    load_certificates,
    make_csr,
    verify_firmware_signature,
)
from ocpp_gateway.dispatch import ChargingProfile
from ocpp_gateway.errors import (
    GatewayError,
    NotImplementedAction,
    NotSupportedAction,
    OcppError,
    PropertyConstraintViolation,
)
from ocpp_gateway.frames import format_datetime, parse_datetime, validate_call

__all__ = [
    "AcceleratedClock",
    "CallErrorAnswer",
    "Fleet",
    "ManualClock",
    "PointSpec",
    "ProfileStore",
    "RealClock",
    "SimClock",
    "SimEvent",
    "SimSession",
    "SimTransaction",
    "SimulatedChargePoint",
    "sessions_from_csv",
    "sessions_from_rows",
]

log = logging.getLogger(__name__)

MIN_CURRENT_A = 6.0  # IEC 61851: a pilot below this stops the EV


# --- clocks ----------------------------------------------------------------------------------------
class SimClock(Protocol):
    """Simulated time: ``now()`` (aware UTC) and ``sleep(seconds)`` in simulated seconds."""

    def now(self) -> datetime: ...
    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    """The wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class AcceleratedClock:
    """Simulated time running ``speed`` times faster than the wall clock, from ``start`` (default now).

    ``AcceleratedClock(360)``: one simulated hour per 10 s.
    """

    def __init__(self, speed: float, start: datetime | None = None) -> None:
        if not (speed > 0 and math.isfinite(speed)):
            raise ValueError(f"speed must be positive, got {speed}")
        self.speed = speed
        self.start = (start or datetime.now(UTC)).astimezone(UTC)
        self._t0 = time.monotonic()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self._t0) * self.speed)

    def __call__(self) -> datetime:
        return self.now()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


class ManualClock:
    """Simulated time that moves only when :meth:`advance` is awaited (tests, discrete-event runs).

    ``advance`` wakes the sleepers in deadline order, letting the event loop run after each, so a
    point's whole reaction to one instant (a meter sample, a departure) happens before time moves on.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = (start or datetime.now(UTC)).astimezone(UTC)
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self._now

    def __call__(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + timedelta(seconds=seconds), next(self._seq), fut))
        await fut

    @staticmethod
    async def _settle(turns: int = 50) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` [simulated s], waking every sleeper due on the way."""
        end = self._now + timedelta(seconds=seconds)
        await self._settle()
        while self._sleepers and self._sleepers[0][0] <= end:
            deadline, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self._now = max(self._now, deadline)
            fut.set_result(None)
            while self._sleepers and self._sleepers[0][0] <= self._now:
                _, _, other = heapq.heappop(self._sleepers)
                if not other.done():
                    other.set_result(None)
            await self._settle()
        self._now = end
        await self._settle()


async def _sleep_until(clock: SimClock, at: datetime) -> None:
    await clock.sleep((at - clock.now()).total_seconds())


# --- plain data ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PointSpec:
    """What a simulated charge point is and how it behaves.

    Parameters
    ----------
    id
        Charge point id (``/ocpp/{id}``).
    connectors
        Number of connectors (1..N).
    phases
        Phases wired to the point, 1 or 3.
    max_current_a
        Per-phase maximum of the point [A].
    voltage_v
        Phase-to-neutral voltage for W <-> A and energy [V].
    password
        HTTP Basic auth password (security profile 1/2); None: profile 0.
    rate_units
        ``ChargingScheduleAllowedChargingRateUnit``: ``"Current,Power"``, ``"Current"`` (A only) or
        ``"Power"`` (W only). Profiles in another unit are rejected.
    max_periods
        ``ChargingScheduleMaxPeriods``; longer schedules are rejected.
    max_stack_level, max_profiles
        ``ChargeProfileMaxStackLevel``, ``MaxChargingProfilesInstalled``.
    smart_charging
        Supports the Smart Charging profile at all (else SetChargingProfile etc. answer NotSupported).
    obeys_profiles
        False: a "liar" that accepts, stores and reports profiles but draws as if there were none.
    supports_composite
        False: GetCompositeSchedule answers CALLERROR NotSupported (many real points).
    meter_interval_s
        ``MeterValueSampleInterval`` [simulated s].
    stop_when_full
        End the transaction when the EV has its energy (else it stays, SuspendedEV, until departure).
    """

    id: str
    connectors: int = 1
    phases: int = 3
    max_current_a: float = 16.0
    voltage_v: float = 230.0
    password: str | None = None
    rate_units: str = "Current,Power"
    max_periods: int = 24
    max_stack_level: int = 10
    max_profiles: int = 20
    smart_charging: bool = True
    obeys_profiles: bool = True
    supports_composite: bool = True
    meter_interval_s: float = 60.0
    stop_when_full: bool = True
    vendor: str = "noxblock"
    model: str = "SimPoint"
    firmware_version: str = "sim-1.0"


@dataclass(frozen=True, slots=True)
class SimSession:
    """One EV visit.

    Parameters
    ----------
    arrival, departure
        Plug-in and unplug times (aware).
    energy_kwh
        Energy the EV wants [kWh].
    max_power_kw
        The EV's on-board limit [kW]; None: the point's.
    phases
        Phases the EV charges on (1 or 3); None: the point's.
    id_tag
        The tag it authorises with.
    """

    arrival: datetime
    departure: datetime
    energy_kwh: float
    max_power_kw: float | None = None
    phases: int | None = None
    id_tag: str = "SIM-TAG"
    session_id: str = ""
    connector_id: int = 1


@dataclass(slots=True)
class SimTransaction:
    """A transaction as the point knows it; ``transaction_id`` is None until the central system answers."""

    connector_id: int
    id_tag: str
    start: datetime
    meter_start_wh: int
    session_id: str = ""
    transaction_id: int | None = None
    started_offline: bool = False
    stop: datetime | None = None
    meter_stop_wh: int | None = None
    stop_reason: str | None = None
    meter_values_queued: int = 0
    id_tag_status: str | None = None
    stop_acknowledged: bool = False


@dataclass(frozen=True, slots=True)
class SimEvent:
    """Something a simulated point did.

    ``kind``: ``connected``, ``disconnected``, ``booted``, ``answered`` (a CALL of ours got its
    answer: ``action``, ``payload``, ``answer``), ``call_error`` (it got a CALLERROR), ``queued``
    (a transaction message was queued while offline), ``command`` (a CS command was answered),
    ``transaction_started``, ``transaction_stopped``, ``rejected`` (a session not authorised).
    """

    kind: str
    charge_point_id: str
    action: str | None = None
    payload: dict[str, Any] | None = None
    answer: dict[str, Any] | None = None


class CallErrorAnswer(GatewayError):  # noqa: N818 - named after the frame
    """The central system answered one of our CALLs with a CALLERROR."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


class _Offline(Exception):  # noqa: N818 - internal signal
    pass


def sessions_from_rows(
    rows: Iterable[Mapping[str, str]], *, id_tag_prefix: str = "TAG-"
) -> dict[str, list[SimSession]]:
    """Sessions per station from rows of the contract's sessions CSV.

    Columns ``session_id, station_id, arrival, departure, energy_kwh`` and optionally
    ``max_power_kw, phases``; the id tag is ``id_tag_prefix + session_id``.
    """
    out: dict[str, list[SimSession]] = {}
    for row in rows:
        sid = str(row["session_id"])
        max_kw = row.get("max_power_kw") or None
        phases = row.get("phases") or None
        session = SimSession(
            arrival=parse_datetime(row["arrival"]),
            departure=parse_datetime(row["departure"]),
            energy_kwh=float(row["energy_kwh"]),
            max_power_kw=float(max_kw) if max_kw else None,
            phases=int(float(phases)) if phases else None,
            id_tag=(id_tag_prefix + sid)[:20],  # idTag is CiString20
            session_id=sid,
        )
        out.setdefault(str(row["station_id"]), []).append(session)
    for sessions in out.values():
        sessions.sort(key=lambda s: s.arrival)
    return out


def sessions_from_csv(path: str | Path, *, id_tag_prefix: str = "TAG-") -> dict[str, list[SimSession]]:
    """:func:`sessions_from_rows` of a sessions CSV file."""
    with open(path, newline="", encoding="utf-8") as f:
        return sessions_from_rows(csv.DictReader(f), id_tag_prefix=id_tag_prefix)


# --- charging profiles (no I/O) --------------------------------------------------------------------
@dataclass(slots=True)
class _Installed:
    connector_id: int
    profile: ChargingProfile
    installed_at: datetime
    any_transaction: bool = False  # a TxProfile without transactionId: the connector's transaction


def _parse_profile(data: Mapping[str, Any], *, any_transaction: bool = False) -> tuple[ChargingProfile, bool]:
    """A ``csChargingProfiles`` object; a TxProfile without ``transactionId`` (or from a remote
    start, whose transaction does not exist yet) applies to the connector's transaction."""
    if data.get("chargingProfilePurpose") == "TxProfile" and (any_transaction or "transactionId" not in data):
        return ChargingProfile.from_ocpp({**data, "transactionId": 0}), True
    return ChargingProfile.from_ocpp(data), False


_RECURRENCE_S = {"Daily": 86400, "Weekly": 7 * 86400}
_PURPOSES = ("ChargePointMaxProfile", "TxDefaultProfile", "TxProfile")


class ProfileStore:
    """The charging profiles a point holds, and the limits they make (OCPP 1.6 section 3.13).

    Parameters
    ----------
    voltage_v
        Phase-to-neutral voltage for W <-> A [V].
    """

    def __init__(self, voltage_v: float = 230.0) -> None:
        self.voltage_v = voltage_v
        self.installed: list[_Installed] = []

    def install(
        self, connector_id: int, profile: ChargingProfile, now: datetime, *, any_transaction: bool = False
    ) -> None:
        """Add a profile; one with the same id, or the same connector, purpose and stack level, goes."""
        self.installed = [
            i
            for i in self.installed
            if i.profile.profile_id != profile.profile_id
            and not (
                i.connector_id == connector_id
                and i.profile.purpose == profile.purpose
                and i.profile.stack_level == profile.stack_level
            )
        ]
        self.installed.append(_Installed(connector_id, profile, now, any_transaction))

    def clear(
        self,
        *,
        profile_id: int | None = None,
        connector_id: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
    ) -> int:
        """Remove by id, else by every criterion given (none: all). Returns how many went."""

        def matches(i: _Installed) -> bool:
            if profile_id is not None:
                return i.profile.profile_id == profile_id
            return (
                (connector_id is None or i.connector_id == connector_id)
                and (purpose is None or i.profile.purpose == purpose)
                and (stack_level is None or i.profile.stack_level == stack_level)
            )

        before = len(self.installed)
        self.installed = [i for i in self.installed if not matches(i)]
        return before - len(self.installed)

    def end_transaction(self, connector_id: int) -> None:
        """TxProfiles end with their transaction."""
        self.installed = [
            i
            for i in self.installed
            if not (i.profile.purpose == "TxProfile" and i.connector_id == connector_id)
        ]

    def _schedule_start(self, inst: _Installed, at: datetime, tx_start: datetime | None) -> datetime | None:
        p = inst.profile
        if p.kind == "Relative":
            return tx_start if tx_start is not None else at
        base = p.start_schedule or inst.installed_at
        if p.kind == "Recurring":
            period = _RECURRENCE_S.get(p.recurrency_kind or "Daily", 86400)
            if at < base:
                return None
            return base + timedelta(seconds=period * math.floor((at - base).total_seconds() / period))
        return base

    def _limit(self, inst: _Installed, at: datetime, tx_start: datetime | None, phases: int) -> float | None:
        p = inst.profile
        if (p.valid_from is not None and at < p.valid_from) or (p.valid_to is not None and at >= p.valid_to):
            return None
        start = self._schedule_start(inst, at, tx_start)
        if start is None:
            return None
        offset = (at - start).total_seconds()
        if offset < 0 or (p.duration_s is not None and offset >= p.duration_s):
            return None
        limit: float | None = None
        for period in p.periods:
            if period.start_s > offset:
                break
            limit = period.limit
        if limit is None:
            return None
        return limit if p.rate_unit == "A" else limit / (self.voltage_v * phases)

    def _purpose_limit(
        self, candidates: Iterable[_Installed], at: datetime, tx_start: datetime | None, phases: int
    ) -> float | None:
        for inst in sorted(candidates, key=lambda i: -i.profile.stack_level):
            limit = self._limit(inst, at, tx_start, phases)
            if limit is not None:
                return limit
        return None

    def limit_a(
        self,
        connector_id: int,
        at: datetime,
        *,
        transaction_id: int | None = None,
        tx_start: datetime | None = None,
        phases: int = 3,
    ) -> float | None:
        """The per-phase limit [A] on a connector at ``at``; None: unlimited.

        ``phases``: phases the power is spread over (a W limit becomes W / (V x phases) per phase).
        """
        by_purpose: dict[str, list[_Installed]] = {k: [] for k in _PURPOSES}
        for inst in self.installed:
            by_purpose[inst.profile.purpose].append(inst)
        cp_max = self._purpose_limit(by_purpose["ChargePointMaxProfile"], at, tx_start, phases)
        tx: float | None = None
        if tx_start is not None and connector_id > 0:  # a transaction runs (its id may be unknown yet)
            tx = self._purpose_limit(
                (
                    i
                    for i in by_purpose["TxProfile"]
                    if i.connector_id == connector_id
                    and (i.any_transaction or i.profile.transaction_id == transaction_id)
                ),
                at,
                tx_start,
                phases,
            )
        if tx is None:
            defaults = by_purpose["TxDefaultProfile"]
            tx = self._purpose_limit(
                (i for i in defaults if i.connector_id == connector_id), at, tx_start, phases
            )
            if tx is None and connector_id != 0:
                tx = self._purpose_limit((i for i in defaults if i.connector_id == 0), at, tx_start, phases)
        limits = [x for x in (cp_max, tx) if x is not None]
        return min(limits) if limits else None

    def _breakpoints(self, start: datetime, end: datetime, tx_start: datetime | None) -> set[datetime]:
        points = {start}
        for inst in self.installed:
            p = inst.profile
            for t in (p.valid_from, p.valid_to):
                if t is not None:
                    points.add(t)
            bases: list[datetime] = []
            if p.kind == "Recurring":
                period = timedelta(seconds=_RECURRENCE_S.get(p.recurrency_kind or "Daily", 86400))
                first = self._schedule_start(inst, start, tx_start)
                base = first if first is not None else (p.start_schedule or inst.installed_at)
                while base < end:
                    bases.append(base)
                    base += period
            else:
                s = self._schedule_start(inst, start, tx_start)
                if s is not None:
                    bases.append(s)
            for base in bases:
                points.update(base + timedelta(seconds=per.start_s) for per in p.periods)
                if p.duration_s is not None:
                    points.add(base + timedelta(seconds=p.duration_s))
        return {t for t in points if start <= t < end}

    def composite(
        self,
        connector_id: int,
        start: datetime,
        duration_s: int,
        *,
        unit: str = "A",
        transaction_id: int | None = None,
        tx_start: datetime | None = None,
        phases: int = 3,
        max_current_a: float,
    ) -> list[tuple[int, float]]:
        """The composite schedule from ``start`` for ``duration_s``: ``[(offset [s], limit)]`` in ``unit``.

        Where no profile limits, the point's ``max_current_a`` [A] holds.
        """
        start = start.replace(microsecond=0)
        end = start + timedelta(seconds=duration_s)
        offsets = sorted(
            {math.ceil((t - start).total_seconds()) for t in self._breakpoints(start, end, tx_start)}
        )
        periods: list[tuple[int, float]] = []
        for off in offsets:
            if off >= duration_s and periods:
                break
            at = start + timedelta(seconds=off)
            limit = self.limit_a(
                connector_id, at, transaction_id=transaction_id, tx_start=tx_start, phases=phases
            )
            limit_a = min(max_current_a, limit) if limit is not None else max_current_a
            value = (
                math.floor(limit_a * 10 + 1e-9) / 10
                if unit == "A"
                else float(math.floor(limit_a * self.voltage_v * phases + 1e-6))
            )
            if not periods or periods[-1][1] != value:
                periods.append((off, value))
        return periods


# --- the simulated charge point --------------------------------------------------------------------
class _PointLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[sim {self.extra['charge_point_id']}] {msg}", kwargs  # type: ignore[index]


@dataclass(slots=True)
class _Outgoing:
    action: str
    payload: dict[str, Any] | Callable[[], dict[str, Any] | None]
    persistent: bool
    future: asyncio.Future[dict[str, Any] | None] | None = None
    on_answer: Callable[[dict[str, Any]], None] | None = None


@dataclass(slots=True)
class _Connector:
    id: int
    status: str = "Available"
    available: bool = True
    pending_availability: bool | None = None
    busy: bool = False
    session: SimSession | None = None
    tx: SimTransaction | None = None
    energy_wh: float = 0.0  # the meter register [Wh]
    delivered_wh: float = 0.0  # in the running session [Wh]
    draw_a: float = 0.0
    ev_phases: int = 3
    since: datetime | None = None
    stop_reason: str | None = None
    reservation: tuple[int, str, datetime] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


_BOOL_KEYS = frozenset(
    {
        "AuthorizeRemoteTxRequests",
        "LocalAuthListEnabled",
        "StopTransactionOnInvalidId",
        "LocalPreAuthorize",
        "LocalAuthorizeOffline",
        "AllowOfflineTxForUnknownId",
        "AuthorizationCacheEnabled",
        "UnlockConnectorOnEVSideDisconnect",
        "StopTransactionOnEVSideDisconnect",
    }
)
_INT_KEYS = frozenset(
    {
        "HeartbeatInterval",
        "MeterValueSampleInterval",
        "ConnectionTimeOut",
        "ClockAlignedDataInterval",
        "ResetRetries",
        "TransactionMessageAttempts",
        "TransactionMessageRetryInterval",
        "WebSocketPingInterval",
        "MinimumStatusDuration",
    }
)
_TRIGGERABLE = frozenset(
    {
        "BootNotification",
        "Heartbeat",
        "StatusNotification",
        "MeterValues",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
    }
)


# A command's answer payload and what to do once it is sent.
_SimAnswer = tuple[dict[str, Any], Callable[[], None] | None]


class SimulatedChargePoint:
    """One simulated OCPP 1.6J charge point. See the module docstring.

    Parameters
    ----------
    spec
        What the point is.
    server_url
        ``ws://host:port/ocpp/`` (the id is appended), e.g. ``gateway.url``.
    sessions
        EV visits to replay, any order.
    clock
        Simulated time (default the wall clock).
    ssl
        Client TLS context for ``wss://`` (security profile 2/3).
    call_timeout_s
        Wait for an answer to our CALL [wall-clock s].
    reconnect_min_s, reconnect_max_s
        Back-off between connection attempts, doubling from min to max, with jitter [wall-clock s].
    max_offline_queue
        Most transaction messages kept while offline; beyond it the oldest MeterValues go.
    """

    _unique_ids = itertools.count(1)

    def __init__(
        self,
        spec: PointSpec,
        server_url: str,
        sessions: Sequence[SimSession] = (),
        *,
        clock: SimClock | None = None,
        ssl: ssl_module.SSLContext | None = None,
        call_timeout_s: float = 30.0,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 10.0,
        max_offline_queue: int = 10_000,
    ) -> None:
        if spec.phases not in (1, 3):
            raise ValueError(f"phases must be 1 or 3, got {spec.phases}")
        self.spec = spec
        self.id = spec.id
        self.url = server_url + quote(spec.id, safe="")
        self.clock: SimClock = clock or RealClock()
        self.ssl = ssl
        self.call_timeout_s = call_timeout_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.max_offline_queue = max_offline_queue
        self.password = spec.password
        self.sessions = sorted(sessions, key=lambda s: s.arrival)
        self.log = _PointLogger(log, {"charge_point_id": spec.id})
        self.profiles = ProfileStore(spec.voltage_v)
        self.connectors = {i: _Connector(i, ev_phases=spec.phases) for i in range(1, spec.connectors + 1)}
        self.point_status = "Available"
        self.transactions: list[SimTransaction] = []
        self.registration: str | None = None
        self.heartbeat_interval_s = 300.0
        self.local_list_version = 0
        self.local_list: dict[str, dict[str, Any]] = {}
        self.connections = 0
        self.stats: dict[str, int] = {"calls": 0, "call_errors": 0, "commands": 0, "replayed": 0}
        self.configuration: dict[str, tuple[bool, str]] = self._initial_configuration()
        self._ws: ClientConnection | None = None
        self._online = False
        self._need_boot = True
        self._outbox: deque[_Outgoing] = deque()
        self._outbox_wake = asyncio.Event()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: list[Callable[[SimEvent], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._run_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._reconnect_now = asyncio.Event()
        # As most firmwares do, no transaction before the first accepted BootNotification.
        self._booted_once = asyncio.Event()
        # Security extension. Installed root certificates: (certificateType, certificate).
        self.installed_certificates: list[tuple[str, x509.Certificate]] = []
        self.certificate_pem: str | None = None  # its signed certificate chain (profile 3)
        self._certificate_key_pem: str | None = None
        self._csr_key_pem: str | None = None  # the key of the CSR waiting for CertificateSigned
        self.firmware_images: dict[str, bytes] = {}  # location -> image; default the location's bytes

    # --- configuration -------------------------------------------------------------------------
    def _initial_configuration(self) -> dict[str, tuple[bool, str]]:
        s = self.spec
        features = ["Core", "FirmwareManagement", "LocalAuthListManagement", "Reservation", "RemoteTrigger"]
        cfg: dict[str, tuple[bool, str]] = {
            "HeartbeatInterval": (False, "300"),
            "MeterValueSampleInterval": (False, str(int(s.meter_interval_s))),
            "ConnectionTimeOut": (False, "60"),
            "ClockAlignedDataInterval": (False, "0"),
            "NumberOfConnectors": (True, str(s.connectors)),
            "AuthorizeRemoteTxRequests": (False, "false"),
            "LocalAuthListEnabled": (False, "true"),
            "LocalAuthListMaxLength": (True, "1000"),
            "SendLocalListMaxLength": (True, "100"),
            "LocalPreAuthorize": (False, "false"),
            "LocalAuthorizeOffline": (False, "true"),
            "AllowOfflineTxForUnknownId": (False, "true"),
            "AuthorizationCacheEnabled": (False, "true"),
            "StopTransactionOnInvalidId": (False, "true"),
            "StopTransactionOnEVSideDisconnect": (True, "true"),
            "UnlockConnectorOnEVSideDisconnect": (False, "true"),
            "MeterValuesSampledData": (
                False,
                "Energy.Active.Import.Register,Current.Import,Power.Active.Import",
            ),
            "MeterValuesAlignedData": (False, "Energy.Active.Import.Register"),
            "StopTxnSampledData": (False, "Energy.Active.Import.Register"),
            "StopTxnAlignedData": (False, ""),
            "ResetRetries": (False, "1"),
            "TransactionMessageAttempts": (False, "3"),
            "TransactionMessageRetryInterval": (False, "10"),
            "WebSocketPingInterval": (False, "0"),
            "MinimumStatusDuration": (False, "0"),
            "GetConfigurationMaxKeys": (True, "50"),
            "SupportedFeatureProfiles": (True, ""),
            # Security extension.
            "SecurityProfile": (False, str(self._initial_security_profile())),
            "CpoName": (False, "noxblock"),
            "CertificateStoreMaxLength": (True, "10"),
            "AdditionalRootCertificateCheck": (True, "false"),
            "SupportedFileTransferProtocols": (True, "FTP,FTPS,HTTP,HTTPS"),
        }
        if s.smart_charging:
            features.append("SmartCharging")
            cfg |= {
                "ChargeProfileMaxStackLevel": (True, str(s.max_stack_level)),
                "ChargingScheduleAllowedChargingRateUnit": (True, s.rate_units),
                "ChargingScheduleMaxPeriods": (True, str(s.max_periods)),
                "MaxChargingProfilesInstalled": (True, str(s.max_profiles)),
                "ConnectorSwitch3to1PhaseSupported": (True, "false"),
            }
        cfg["SupportedFeatureProfiles"] = (True, ",".join(features))
        return cfg

    def _initial_security_profile(self) -> int:
        if self.ssl is not None:
            return 2 if self.spec.password is not None else 3
        return 1 if self.spec.password is not None else 0

    @property
    def security_profile(self) -> int:
        """The ``SecurityProfile`` it connects with (0..3)."""
        return int(self.configuration["SecurityProfile"][1])

    @property
    def meter_interval_s(self) -> float:
        return float(self.configuration["MeterValueSampleInterval"][1]) or self.spec.meter_interval_s

    def _allowed_units(self) -> set[str]:
        units = set()
        for token in self.spec.rate_units.replace(";", ",").split(","):
            t = token.strip().lower()
            if t in ("current", "a"):
                units.add("A")
            elif t in ("power", "w"):
                units.add("W")
        return units or {"A", "W"}

    # --- events ----------------------------------------------------------------------------------
    def add_listener(self, listener: Callable[[SimEvent], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[SimEvent], None]) -> None:
        self._listeners.remove(listener)

    def _emit(self, kind: str, action: str | None = None, payload: Any = None, answer: Any = None) -> None:
        if not self._listeners:
            return
        event = SimEvent(kind, self.id, action, payload, answer)
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                self.log.exception("event listener failed")

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Wait until ``condition()`` holds; it is checked now and after each event of this point."""
        await _wait_until(self._listeners, condition, timeout_s)

    # --- state queries ---------------------------------------------------------------------------
    @property
    def online(self) -> bool:
        """Connected and accepted (booted)."""
        return self._online

    @property
    def queued(self) -> int:
        """Messages waiting to be sent (transaction messages are kept while offline)."""
        return len(self._outbox)

    def draw_a(self, connector_id: int = 1) -> float:
        """Current per phase the EV on a connector draws now [A]."""
        return self.connectors[connector_id].draw_a

    def allowed_a(self, connector_id: int, at: datetime) -> float | None:
        """The per-phase limit [A] this point's profiles set at ``at`` for its connector: for the
        transaction running there, else for one that would start; None: unlimited."""
        conn = self.connectors[connector_id]
        tx = conn.tx
        return self.profiles.limit_a(
            connector_id,
            at,
            transaction_id=None if tx is None else tx.transaction_id,
            tx_start=None if tx is None else tx.start,
            phases=conn.ev_phases,
        )

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start connecting and replaying sessions (returns at once; see :meth:`wait_until`)."""
        if self._run_task is not None:
            return
        self._stopping = False
        self._run_task = asyncio.create_task(self._run(), name=f"sim-{self.id}")
        by_connector: dict[int, list[SimSession]] = {}
        for s in self.sessions:
            by_connector.setdefault(s.connector_id, []).append(s)
        for connector_id, sessions in by_connector.items():
            if connector_id not in self.connectors:
                self.log.warning("sessions for unknown connector %d ignored", connector_id)
                continue
            self._spawn(self._connector_loop(self.connectors[connector_id], sessions))

    async def stop(self) -> None:
        """Stop everything and close the connection (queued messages are dropped)."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        if self._run_task is not None:
            self._run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._run_task
            self._run_task = None
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()

    async def disconnect(self) -> None:
        """Drop the connection as a network failure would; the point reconnects by itself."""
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.transport.abort()  # no close handshake: as a cut cable

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("task failed", exc_info=task.exception())

    # --- connection ------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        if self.password is None or self.security_profile == 3:
            return {}
        token = base64.b64encode(f"{self.id}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def _run(self) -> None:
        backoff = self.reconnect_min_s
        while not self._stopping:
            try:
                url, ssl_context = self._endpoint()
                ws = await connect(
                    url,
                    subprotocols=[Subprotocol("ocpp1.6")],
                    additional_headers=self._headers(),
                    ssl=ssl_context,
                    open_timeout=10,
                    ping_interval=None,
                    compression=None,
                    max_size=2**20,
                )
            except (OSError, InvalidHandshake, TimeoutError, ssl_module.SSLError) as e:
                self.log.info("connection failed (%s); retry in %.1f s", e, backoff)
                self._reconnect_now.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff * random.uniform(0.75, 1.25)):
                        await self._reconnect_now.wait()
                backoff = min(self.reconnect_max_s, backoff * 2)
                continue
            backoff = self.reconnect_min_s
            try:
                await self._connected(ws)
            finally:
                with contextlib.suppress(Exception):
                    await ws.close()

    def _endpoint(self) -> tuple[str, ssl_module.SSLContext | None]:
        """URL and TLS context for the next connection: an explicit ``ssl`` wins; else from
        SecurityProfile 2 on, TLS trusting the installed CentralSystemRootCertificates."""
        if self.ssl is not None or self.security_profile < 2:
            return self.url, self.ssl
        roots = "".join(
            c.public_bytes(serialization.Encoding.PEM).decode()
            for t, c in self.installed_certificates
            if t == "CentralSystemRootCertificate"
        )
        context = ssl_module.create_default_context(cadata=roots or None)
        if self.security_profile == 3 and self.certificate_pem and self._certificate_key_pem:
            # ssl loads a client certificate only from files: a private directory, gone at once.
            with tempfile.TemporaryDirectory() as d:
                cert_file, key_file = Path(d, "cert.pem"), Path(d, "key.pem")
                cert_file.write_text(self.certificate_pem)
                key_file.write_text(self._certificate_key_pem)
                context.load_cert_chain(cert_file, key_file)
        url = "wss://" + self.url.removeprefix("ws://") if self.url.startswith("ws://") else self.url
        return url, context

    async def _connected(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.connections += 1
        self.log.info("connected")
        self._emit("connected")
        reader = asyncio.create_task(self._read(ws))
        helpers: list[asyncio.Task[Any]] = []
        try:
            if self._need_boot and not await self._boot(ws, reader):
                return
            replay = len(self._outbox)
            if replay:
                self.log.info("replaying %d queued messages", replay)
                self.stats["replayed"] += replay
            self._online = True
            self._enqueue_statuses()
            self._booted_once.set()
            helpers = [asyncio.create_task(self._send_loop(ws)), asyncio.create_task(self._heartbeats())]
            await asyncio.wait([reader, *helpers], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._online = False
            self._ws = None
            for t in (reader, *helpers):
                t.cancel()
            for t in (reader, *helpers):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(_Offline())
            self._pending.clear()
            # Non-transaction messages die with the connection; the rest wait for the next one.
            kept: deque[_Outgoing] = deque()
            for item in self._outbox:
                if item.persistent:
                    kept.append(item)
                elif item.future is not None and not item.future.done():
                    item.future.set_result(None)
            self._outbox = kept
            self.log.info("disconnected")
            self._emit("disconnected")

    async def _boot(self, ws: ClientConnection, reader: asyncio.Task[None]) -> bool:
        s = self.spec
        payload = {
            "chargePointVendor": s.vendor,
            "chargePointModel": s.model,
            "chargePointSerialNumber": f"SIM-{s.id}"[:25],
            "firmwareVersion": s.firmware_version,
        }
        while not reader.done():
            try:
                answer = await self._call(ws, "BootNotification", payload)
            except CallErrorAnswer as e:
                self.log.warning("BootNotification refused: %s", e)
                answer = {"status": "Rejected", "interval": 10}
            except (_Offline, TimeoutError):
                return False
            self.registration = answer["status"]
            interval = float(answer.get("interval") or 0)
            if answer["status"] == "Accepted":
                if interval > 0:
                    self.heartbeat_interval_s = interval
                    self.configuration["HeartbeatInterval"] = (False, str(int(interval)))
                self._need_boot = False
                self.log.info("boot accepted; heartbeat every %.0f s", self.heartbeat_interval_s)
                self._emit("booted", payload=payload, answer=answer)
                return True
            # Pending or Rejected: ask again after the interval the central system gave (OCPP 4.2).
            self.log.info("boot %s; retry in %.0f s", answer["status"], interval or 10)
            self._emit("booted", payload=payload, answer=answer)
            await asyncio.sleep(interval if interval > 0 else 10)
        return False

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for text in ws:
                try:
                    frame = json.loads(text)
                    kind = frame[0]
                except (ValueError, TypeError, IndexError, KeyError):
                    self.log.warning("unreadable frame ignored: %.80r", text)
                    continue
                if kind == 2:
                    await self._serve_command(ws, frame)
                elif kind in (3, 4):
                    fut = self._pending.get(str(frame[1]))
                    if fut is None or fut.done():
                        continue
                    if kind == 3:
                        fut.set_result(frame[2])
                    else:
                        fut.set_exception(CallErrorAnswer(str(frame[2]), str(frame[3])))
        except ConnectionClosed:
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(_Offline())

    async def _call(self, ws: ClientConnection, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        unique_id = f"{self.id}-{next(self._unique_ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[unique_id] = fut
        self.stats["calls"] += 1
        try:
            try:
                await ws.send(json.dumps([2, unique_id, action, payload], separators=(",", ":")))
            except ConnectionClosed:
                raise _Offline() from None
            async with asyncio.timeout(self.call_timeout_s):
                answer = await fut
        except CallErrorAnswer as e:
            self.stats["call_errors"] += 1
            self.log.warning("%s answered with CALLERROR %s", action, e)
            self._emit("call_error", action, payload, {"code": e.code, "description": e.description})
            raise
        finally:
            self._pending.pop(unique_id, None)
        self._emit("answered", action, payload, answer)
        return answer

    # --- the outbox: one CALL in flight, transaction messages kept while offline ---------------------
    def _enqueue(
        self,
        action: str,
        payload: dict[str, Any] | Callable[[], dict[str, Any] | None],
        *,
        persistent: bool,
        on_answer: Callable[[dict[str, Any]], None] | None = None,
        want_answer: bool = False,
    ) -> asyncio.Future[dict[str, Any] | None] | None:
        fut: asyncio.Future[dict[str, Any] | None] | None = None
        if not self._online and not persistent:
            if want_answer:
                fut = asyncio.get_running_loop().create_future()
                fut.set_result(None)
            return fut
        if want_answer:
            fut = asyncio.get_running_loop().create_future()
        self._outbox.append(_Outgoing(action, payload, persistent, fut, on_answer))
        if not self._online:
            self._emit("queued", action)
            if len(self._outbox) > self.max_offline_queue:
                oldest = next((i for i in self._outbox if i.action == "MeterValues"), None)
                if oldest is not None:
                    self._outbox.remove(oldest)
        self._outbox_wake.set()
        return fut

    async def _send_loop(self, ws: ClientConnection) -> None:
        while True:
            while not self._outbox:
                self._outbox_wake.clear()
                await self._outbox_wake.wait()
            item = self._outbox[0]
            payload = item.payload() if callable(item.payload) else item.payload
            if payload is None:  # e.g. a MeterValues for a transaction the server refused
                self._outbox.popleft()
                continue
            try:
                answer: dict[str, Any] | None = await self._call(ws, item.action, payload)
            except _Offline:
                return  # the item stays first in the queue if it is a transaction message
            except TimeoutError:
                if item.persistent:
                    continue  # send it again: the central system must cope with duplicates
                answer = None
            except CallErrorAnswer:
                answer = None
            if self._outbox and self._outbox[0] is item:
                self._outbox.popleft()
            if answer is not None and item.on_answer is not None:
                item.on_answer(answer)
            if item.future is not None and not item.future.done():
                item.future.set_result(answer)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            self._enqueue("Heartbeat", {}, persistent=False)

    def _enqueue_statuses(self) -> None:
        self._send_status(0, self.point_status)
        for c in self.connectors.values():
            self._send_status(c.id, c.status)

    def _send_status(self, connector_id: int, status: str) -> None:
        self._enqueue(
            "StatusNotification",
            {
                "connectorId": connector_id,
                "errorCode": "NoError",
                "status": status,
                "timestamp": format_datetime(self.clock.now()),
            },
            persistent=False,
        )

    def _set_status(self, conn: _Connector, status: str) -> None:
        if conn.status != status:
            conn.status = status
            self._send_status(conn.id, status)

    # --- sessions ---------------------------------------------------------------------------------
    async def _connector_loop(self, conn: _Connector, sessions: Sequence[SimSession]) -> None:
        await self._booted_once.wait()
        for s in sessions:
            if s.departure <= self.clock.now():
                continue
            await _sleep_until(self.clock, s.arrival)
            if conn.busy or not conn.available:
                self.log.info("session %s skipped: connector %d busy or unavailable", s.session_id, conn.id)
                continue
            await self._run_session(conn, s)

    def _ev_limit_a(self, conn: _Connector) -> float:
        s = conn.session
        limit = self.spec.max_current_a
        if s is not None and s.max_power_kw is not None:
            limit = min(limit, s.max_power_kw * 1000.0 / (self.spec.voltage_v * conn.ev_phases))
        return limit

    def _compute_draw(self, conn: _Connector, now: datetime) -> float:
        s, tx = conn.session, conn.tx
        if s is None or tx is None or conn.stop_reason is not None:
            return 0.0
        if conn.delivered_wh >= s.energy_kwh * 1000.0:
            return 0.0
        limit = self._ev_limit_a(conn)
        if self.spec.obeys_profiles and self.spec.smart_charging:
            profile_limit = self.profiles.limit_a(
                conn.id, now, transaction_id=tx.transaction_id, tx_start=tx.start, phases=conn.ev_phases
            )
            if profile_limit is not None:
                limit = min(limit, profile_limit)
        return limit if limit >= MIN_CURRENT_A else 0.0

    def _integrate(self, conn: _Connector, now: datetime) -> None:
        """Add the energy drawn since the last update, then set the draw from now on."""
        if conn.since is not None and conn.draw_a > 0:
            hours = max(0.0, (now - conn.since).total_seconds()) / 3600.0
            energy = conn.draw_a * self.spec.voltage_v * conn.ev_phases * hours
            if conn.session is not None:
                energy = min(energy, max(0.0, conn.session.energy_kwh * 1000.0 - conn.delivered_wh))
            conn.energy_wh += energy
            conn.delivered_wh += energy
        conn.since = now
        conn.draw_a = self._compute_draw(conn, now)

    def _wake_all(self) -> None:
        for conn in self.connectors.values():
            conn.wake.set()

    async def _pause(self, conn: _Connector, seconds: float) -> None:
        if seconds <= 0 or conn.wake.is_set():
            return
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        waker = asyncio.ensure_future(conn.wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def _authorize(self, id_tag: str) -> str:
        """Accepted, or the central system's refusal; offline: accepted locally (LocalAuthorizeOffline)."""
        if id_tag in self.local_list:
            return str(self.local_list[id_tag].get("status", "Accepted"))
        fut = self._enqueue("Authorize", {"idTag": id_tag}, persistent=False, want_answer=True)
        answer = await fut if fut is not None else None
        if answer is None:
            return "Accepted"
        return str(answer["idTagInfo"]["status"])

    async def _run_session(self, conn: _Connector, s: SimSession, *, authorized: bool = False) -> None:
        conn.busy = True
        try:
            await self._session(conn, s, authorized)
        finally:
            conn.busy = False
            conn.session = None
            conn.tx = None
            conn.stop_reason = None
            conn.draw_a = 0.0
            if conn.pending_availability is not None:
                conn.available, conn.pending_availability = conn.pending_availability, None
            self._set_status(conn, "Available" if conn.available else "Unavailable")

    async def _session(self, conn: _Connector, s: SimSession, authorized: bool) -> None:
        conn.session = s
        conn.ev_phases = min(s.phases or self.spec.phases, self.spec.phases)
        conn.delivered_wh = 0.0
        conn.stop_reason = None
        conn.reservation = None
        self._set_status(conn, "Preparing")
        if not authorized:
            status = await self._authorize(s.id_tag)
            if status != "Accepted":
                self.log.info("session %s: id tag %s %s", s.session_id, s.id_tag, status)
                self._emit("rejected", payload={"session_id": s.session_id, "status": status})
                return
        now = self.clock.now()
        tx = SimTransaction(
            conn.id, s.id_tag, now, int(conn.energy_wh), s.session_id, started_offline=not self._online
        )
        conn.tx = tx
        self.transactions.append(tx)

        def started(answer: dict[str, Any]) -> None:
            tx.transaction_id = int(answer["transactionId"])
            tx.id_tag_status = answer["idTagInfo"]["status"]
            invalid = tx.id_tag_status != "Accepted"
            if invalid and self.configuration["StopTransactionOnInvalidId"][1] == "true" and conn.tx is tx:
                conn.stop_reason = conn.stop_reason or "DeAuthorized"
            conn.wake.set()  # a TxProfile may now apply
            self._emit("transaction_started", "StartTransaction", answer={"transactionId": tx.transaction_id})

        self._enqueue(
            "StartTransaction",
            {
                "connectorId": conn.id,
                "idTag": s.id_tag,
                "meterStart": tx.meter_start_wh,
                "timestamp": format_datetime(now),
            },
            persistent=True,
            on_answer=started,
        )
        conn.since = now
        conn.draw_a = self._compute_draw(conn, now)
        self._set_status(conn, "Charging" if conn.draw_a > 0 else "SuspendedEVSE")
        interval = timedelta(seconds=self.meter_interval_s)
        next_sample = now + interval
        reason = "Local"
        while True:
            target = min(next_sample, s.departure)
            await self._pause(conn, (target - self.clock.now()).total_seconds())
            conn.wake.clear()
            now = self.clock.now()
            self._integrate(conn, now)
            if conn.stop_reason is not None:
                reason = conn.stop_reason
                break
            if now >= s.departure:
                reason = "EVDisconnected"
                break
            full = conn.delivered_wh >= s.energy_kwh * 1000.0 - 1e-6
            if full and self.spec.stop_when_full:
                reason = "Local"
                break
            self._set_status(
                conn, "SuspendedEV" if full else ("Charging" if conn.draw_a > 0 else "SuspendedEVSE")
            )
            if now >= next_sample:
                self._enqueue_meter_values(conn, tx, now, "Sample.Periodic")
                while next_sample <= now:
                    next_sample += interval
        self._stop_transaction(conn, tx, self.clock.now(), reason)

    def _sampled_values(self, conn: _Connector, context: str) -> list[dict[str, Any]]:
        def sv(value: str, measurand: str, unit: str, phase: str | None = None) -> dict[str, Any]:
            out = {
                "value": value,
                "context": context,
                "measurand": measurand,
                "location": "Outlet",
                "unit": unit,
            }
            if phase is not None:
                out["phase"] = phase
            return out

        draw = conn.draw_a
        values = [sv(f"{conn.energy_wh:.0f}", "Energy.Active.Import.Register", "Wh")]
        for n, phase in enumerate(("L1", "L2", "L3")[: self.spec.phases]):
            values.append(sv(f"{draw if n < conn.ev_phases else 0.0:.1f}", "Current.Import", "A", phase))
        values.append(sv(f"{draw * self.spec.voltage_v * conn.ev_phases:.0f}", "Power.Active.Import", "W"))
        return values

    def _enqueue_meter_values(
        self, conn: _Connector, tx: SimTransaction | None, at: datetime, context: str
    ) -> None:
        meter_value = [
            {"timestamp": format_datetime(at), "sampledValue": self._sampled_values(conn, context)}
        ]

        def build() -> dict[str, Any] | None:
            payload: dict[str, Any] = {"connectorId": conn.id, "meterValue": meter_value}
            if tx is not None:
                if tx.transaction_id is None:
                    return None  # the central system never gave it an id
                payload["transactionId"] = tx.transaction_id
            return payload

        if tx is not None:
            tx.meter_values_queued += 1
        self._enqueue("MeterValues", build, persistent=tx is not None)

    def _stop_transaction(self, conn: _Connector, tx: SimTransaction, at: datetime, reason: str) -> None:
        self._integrate(conn, at)
        tx.stop, tx.meter_stop_wh, tx.stop_reason = at, int(conn.energy_wh), reason
        conn.draw_a = 0.0
        self._set_status(conn, "Finishing")
        stop_data = [
            {
                "timestamp": format_datetime(at),
                "sampledValue": self._sampled_values(conn, "Transaction.End")[:1],
            }
        ]

        def build() -> dict[str, Any] | None:
            if tx.transaction_id is None:
                return None
            return {
                "transactionId": tx.transaction_id,
                "idTag": tx.id_tag,
                "meterStop": tx.meter_stop_wh,
                "timestamp": format_datetime(at),
                "reason": reason,
                "transactionData": stop_data,
            }

        def stopped(answer: dict[str, Any]) -> None:
            tx.stop_acknowledged = True
            self._emit("transaction_stopped", "StopTransaction", answer={"transactionId": tx.transaction_id})

        self._enqueue("StopTransaction", build, persistent=True, on_answer=stopped)
        self.profiles.end_transaction(conn.id)
        self.log.info("transaction on connector %d stopped (%s), %.0f Wh", conn.id, reason, conn.delivered_wh)

    # --- central-system commands ------------------------------------------------------------------
    async def _serve_command(self, ws: ClientConnection, frame: list[Any]) -> None:
        after: Callable[[], None] | None = None
        try:
            if len(frame) != 4 or not isinstance(frame[2], str) or not isinstance(frame[3], dict):
                raise PropertyConstraintViolation("not a CALL")
            unique_id, action, payload = str(frame[1]), frame[2], frame[3]
            validate_call(action, payload, from_charge_point=False)
            handler = getattr(self, f"_cmd_{action}", None)
            if handler is None:
                raise NotImplementedAction(f"{action} is not a command a charge point takes")
            answer, after = handler(payload)
            reply: list[Any] = [3, unique_id, answer]
        except OcppError as e:
            unique_id = str(frame[1]) if len(frame) > 1 else "-1"
            reply = [4, unique_id, e.code, e.description, e.details]
            answer = None
            self.log.info("command %s refused: %s", frame[2] if len(frame) > 2 else "?", e)
        self.stats["commands"] += 1
        try:
            await ws.send(json.dumps(reply, separators=(",", ":")))
        except ConnectionClosed:
            return
        self._emit(
            "command", frame[2] if len(frame) > 2 else None, frame[3] if len(frame) > 3 else None, answer
        )
        if after is not None:
            after()

    def _connector(self, connector_id: int) -> _Connector | None:
        return self.connectors.get(connector_id)

    def _cmd_GetConfiguration(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802 - named after the action
        keys = p.get("key")
        known, unknown = [], []
        for key in keys if keys else [k for k in self.configuration if k != "AuthorizationKey"]:
            entry = self.configuration.get(key)
            if entry is None or key == "AuthorizationKey":  # write-only (security whitepaper)
                unknown.append(key)
            else:
                known.append({"key": key, "readonly": entry[0], "value": entry[1]})
        out: dict[str, Any] = {"configurationKey": known}
        if unknown:
            out["unknownKey"] = unknown
        return out, None

    def _cmd_ChangeConfiguration(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        key, value = p["key"], p["value"]
        if key == "AuthorizationKey":
            # The new password is used from the next connection on (security whitepaper).
            self.password = value
            return {"status": "Accepted"}, None
        if key == "SecurityProfile":
            return {"status": self._change_security_profile(value)}, None
        entry = self.configuration.get(key)
        if entry is None:
            return {"status": "NotSupported"}, None
        if entry[0]:
            return {"status": "Rejected"}, None
        if key in _INT_KEYS and not (value.isdigit()):
            return {"status": "Rejected"}, None
        if key in _BOOL_KEYS and value.lower() not in ("true", "false"):
            return {"status": "Rejected"}, None
        self.configuration[key] = (False, value.lower() if key in _BOOL_KEYS else value)
        if key == "HeartbeatInterval" and int(value) > 0:
            self.heartbeat_interval_s = float(value)
        return {"status": "Accepted"}, None

    def _cmd_SetChargingProfile(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        if not self.spec.smart_charging:
            raise NotSupportedAction("Smart Charging is not supported")
        connector_id = p["connectorId"]
        rejected: _SimAnswer = ({"status": "Rejected"}, None)
        try:
            profile, any_tx = _parse_profile(p["csChargingProfiles"])
        except GatewayError:
            return rejected
        conn = self._connector(connector_id)
        if connector_id != 0 and conn is None:
            return rejected
        if profile.purpose == "ChargePointMaxProfile" and connector_id != 0:
            return rejected
        if profile.purpose == "TxProfile":
            if conn is None or conn.tx is None:
                return rejected  # no transaction (OCTT TC_058)
            if not any_tx and profile.transaction_id != conn.tx.transaction_id:
                return rejected
        if (
            profile.stack_level > self.spec.max_stack_level
            or profile.rate_unit not in self._allowed_units()
            or len(profile.periods) > self.spec.max_periods
        ):
            return rejected
        replaces = any(
            i.profile.profile_id == profile.profile_id
            or (
                i.connector_id == connector_id
                and i.profile.purpose == profile.purpose
                and i.profile.stack_level == profile.stack_level
            )
            for i in self.profiles.installed
        )
        if not replaces and len(self.profiles.installed) >= self.spec.max_profiles:
            return rejected
        self.profiles.install(connector_id, profile, self.clock.now(), any_transaction=any_tx)
        return {"status": "Accepted"}, self._wake_all

    def _cmd_ClearChargingProfile(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        if not self.spec.smart_charging:
            raise NotSupportedAction("Smart Charging is not supported")
        removed = self.profiles.clear(
            profile_id=p.get("id"),
            connector_id=p.get("connectorId"),
            purpose=p.get("chargingProfilePurpose"),
            stack_level=p.get("stackLevel"),
        )
        return {"status": "Accepted" if removed else "Unknown"}, self._wake_all

    def _cmd_GetCompositeSchedule(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        if not self.spec.smart_charging or not self.spec.supports_composite:
            raise NotSupportedAction("GetCompositeSchedule is not supported")
        connector_id = p["connectorId"]
        conn = self._connector(connector_id)
        if connector_id != 0 and conn is None:
            return {"status": "Rejected"}, None
        allowed = self._allowed_units()
        unit = p.get("chargingRateUnit") or ("A" if "A" in allowed else "W")
        now = self.clock.now().replace(microsecond=0)
        tx = conn.tx if conn is not None else None
        phases = conn.ev_phases if conn is not None and conn.session is not None else self.spec.phases
        periods = self.profiles.composite(
            connector_id, now, p["duration"], unit=unit,
            transaction_id=tx.transaction_id if tx else None, tx_start=tx.start if tx else None,
            phases=phases, max_current_a=self.spec.max_current_a,
        )  # fmt: skip
        return {
            "status": "Accepted",
            "connectorId": connector_id,
            "scheduleStart": format_datetime(now),
            "chargingSchedule": {
                "duration": p["duration"],
                "startSchedule": format_datetime(now),
                "chargingRateUnit": unit,
                "chargingSchedulePeriod": [
                    {"startPeriod": off, "limit": value, "numberPhases": phases} for off, value in periods
                ],
            },
        }, None

    def _cmd_RemoteStartTransaction(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        connector_id = p.get("connectorId")
        if connector_id is None:
            conn = next((c for c in self.connectors.values() if not c.busy and c.available), None)
        else:
            conn = self._connector(connector_id)
        rejected: _SimAnswer = ({"status": "Rejected"}, None)
        if conn is None or conn.busy or not conn.available:
            return rejected
        profile = None
        if "chargingProfile" in p:
            try:
                profile, _ = _parse_profile(p["chargingProfile"], any_transaction=True)
            except GatewayError:
                return rejected
            if profile.purpose != "TxProfile" or not self.spec.smart_charging:
                return rejected  # OCPP 1.6 5.11: only a TxProfile
        now = self.clock.now()
        session = SimSession(
            arrival=now,
            departure=now + timedelta(hours=8),
            energy_kwh=20.0,
            id_tag=p["idTag"],
            session_id=f"remote-{now:%H%M%S}",
            connector_id=conn.id,
        )
        conn.busy = True  # claimed now, before the session task runs

        def begin() -> None:
            if profile is not None:
                self.profiles.install(conn.id, profile, now, any_transaction=True)
            authorized = self.configuration["AuthorizeRemoteTxRequests"][1] != "true"
            self._spawn(self._run_session(conn, session, authorized=authorized))

        return {"status": "Accepted"}, begin

    def _cmd_RemoteStopTransaction(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        for conn in self.connectors.values():
            if conn.tx is not None and conn.tx.transaction_id == p["transactionId"]:
                conn.stop_reason = "Remote"
                return {"status": "Accepted"}, conn.wake.set
        return {"status": "Rejected"}, None

    def _cmd_Reset(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        reason = "HardReset" if p["type"] == "Hard" else "SoftReset"

        def reboot() -> None:
            self._spawn(self._reboot(reason))

        return {"status": "Accepted"}, reboot

    async def _reboot(self, reason: str) -> None:
        sessions = []
        for conn in self.connectors.values():
            if conn.tx is not None and conn.stop_reason is None:
                conn.stop_reason = reason
                conn.wake.set()
                sessions.append(conn)
        for conn in sessions:  # the stops are queued before the connection goes
            while conn.tx is not None:
                await asyncio.sleep(0.001)
        self.log.info("rebooting (%s)", reason)
        self._need_boot = True
        self.profiles.installed = [i for i in self.profiles.installed if i.profile.purpose != "TxProfile"]
        ws = self._ws
        if ws is not None:
            await ws.close(1000, "reboot")
        self._reconnect_now.set()

    def _cmd_UnlockConnector(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        conn = self._connector(p["connectorId"])
        if conn is None:
            return {"status": "NotSupported"}, None
        if conn.tx is not None and conn.stop_reason is None:
            conn.stop_reason = "UnlockCommand"
            return {"status": "Unlocked"}, conn.wake.set
        return {"status": "Unlocked"}, None

    def _cmd_ChangeAvailability(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        connector_id, available = p["connectorId"], p["type"] == "Operative"
        if connector_id == 0:
            targets = list(self.connectors.values())
        else:
            conn = self._connector(connector_id)
            if conn is None:
                return {"status": "Rejected"}, None
            targets = [conn]
        scheduled = False
        for conn in targets:
            if conn.busy:
                conn.pending_availability = available
                scheduled = True
            else:
                conn.available = available

        def report() -> None:
            if connector_id == 0:
                self.point_status = "Available" if available else "Unavailable"
                self._send_status(0, self.point_status)
            for conn in targets:
                if not conn.busy:
                    self._set_status(conn, "Available" if conn.available else "Unavailable")

        return {"status": "Scheduled" if scheduled else "Accepted"}, report

    def _cmd_ClearCache(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        return {"status": "Accepted"}, None

    def _cmd_DataTransfer(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        return {"status": "UnknownVendorId"}, None

    def _cmd_TriggerMessage(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        message, connector_id = p["requestedMessage"], p.get("connectorId")
        if message not in _TRIGGERABLE:
            return {"status": "NotImplemented"}, None
        if connector_id is not None and connector_id != 0 and connector_id not in self.connectors:
            return {"status": "Rejected"}, None

        def send() -> None:
            if message == "BootNotification":
                s = self.spec
                self._enqueue(
                    "BootNotification",
                    {
                        "chargePointVendor": s.vendor,
                        "chargePointModel": s.model,
                        "firmwareVersion": s.firmware_version,
                    },
                    persistent=False,
                )
            elif message == "Heartbeat":
                self._enqueue("Heartbeat", {}, persistent=False)
            elif message == "StatusNotification":
                if connector_id is None:
                    self._enqueue_statuses()
                elif connector_id == 0:
                    self._send_status(0, self.point_status)
                else:
                    self._send_status(connector_id, self.connectors[connector_id].status)
            elif message == "MeterValues":
                for conn in self.connectors.values():
                    if connector_id in (None, 0, conn.id):
                        self._integrate(conn, self.clock.now())
                        self._enqueue_meter_values(conn, conn.tx, self.clock.now(), "Trigger")
            elif message == "DiagnosticsStatusNotification":
                self._enqueue("DiagnosticsStatusNotification", {"status": "Idle"}, persistent=False)
            else:
                self._enqueue("FirmwareStatusNotification", {"status": "Idle"}, persistent=False)

        return {"status": "Accepted"}, send

    def _cmd_SendLocalList(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        version, update = p["listVersion"], p["updateType"]
        entries = p.get("localAuthorizationList", [])
        if update == "Differential" and version <= self.local_list_version:
            return {"status": "VersionMismatch"}, None
        if update == "Full":
            self.local_list = {}
        for e in entries:
            if "idTagInfo" in e:
                self.local_list[e["idTag"]] = e["idTagInfo"]
            else:
                self.local_list.pop(e["idTag"], None)
        self.local_list_version = version
        return {"status": "Accepted"}, None

    def _cmd_GetLocalListVersion(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        return {"listVersion": self.local_list_version}, None

    def _cmd_ReserveNow(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        connector_id = p["connectorId"]
        conn = self._connector(connector_id) if connector_id else next(iter(self.connectors.values()))
        if conn is None:
            return {"status": "Rejected"}, None
        if not conn.available:
            return {"status": "Unavailable"}, None
        if conn.busy or (conn.reservation is not None and conn.reservation[0] != p["reservationId"]):
            return {"status": "Occupied"}, None
        conn.reservation = (p["reservationId"], p["idTag"], parse_datetime(p["expiryDate"]))
        return {"status": "Accepted"}, lambda: self._set_status(conn, "Reserved")

    def _cmd_CancelReservation(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        for conn in self.connectors.values():
            if conn.reservation is not None and conn.reservation[0] == p["reservationId"]:
                conn.reservation = None
                return {"status": "Accepted"}, lambda c=conn: self._set_status(c, "Available")
        return {"status": "Rejected"}, None

    def _cmd_GetDiagnostics(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        name = f"diagnostics-{self.id}.log"

        def upload() -> None:
            for status in ("Uploading", "Uploaded"):
                self._enqueue("DiagnosticsStatusNotification", {"status": status}, persistent=False)

        return {"fileName": name}, upload

    def _cmd_UpdateFirmware(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        def install() -> None:
            for status in ("Downloading", "Downloaded", "Installing", "Installed"):
                self._enqueue("FirmwareStatusNotification", {"status": status}, persistent=False)

        return {}, install

    # --- security extension --------------------------------------------------------------------------
    def _change_security_profile(self, value: str) -> str:
        """Accepted only for a profile it can connect with; never a downgrade (whitepaper)."""
        if value not in ("0", "1", "2", "3"):
            return "Rejected"
        new, current = int(value), self.security_profile
        if new == current:
            return "Accepted"
        has_root = any(t == "CentralSystemRootCertificate" for t, _ in self.installed_certificates)
        if (
            new < current
            or (new in (1, 2) and self.password is None)
            or (new >= 2 and self.ssl is None and not has_root)
            or (new == 3 and self.ssl is None and self.certificate_pem is None)
        ):
            self.log.info("SecurityProfile %d -> %d rejected", current, new)
            return "Rejected"
        self.configuration["SecurityProfile"] = (False, value)  # used from the next connection on
        return "Accepted"

    def _security_event(self, kind: str, tech_info: str) -> None:
        self.log.warning("security event %s: %s", kind, tech_info)
        self._enqueue(
            "SecurityEventNotification",
            {"type": kind, "timestamp": format_datetime(self.clock.now()), "techInfo": tech_info[:255]},
            persistent=True,  # security events are kept while offline, as transaction messages are
        )

    def _cmd_ExtendedTriggerMessage(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        message = p["requestedMessage"]
        if message == "SignChargePointCertificate":
            return {"status": "Accepted"}, self._request_certificate
        if message == "LogStatusNotification":
            return {"status": "Accepted"}, lambda: self._enqueue(
                "LogStatusNotification", {"status": "Idle"}, persistent=False
            )
        if message == "FirmwareStatusNotification":
            return {"status": "Accepted"}, lambda: self._enqueue(
                "SignedFirmwareStatusNotification", {"status": "Idle"}, persistent=False
            )
        return self._cmd_TriggerMessage(p)

    def _request_certificate(self) -> None:
        """A new key and a CSR for it; the key stays here (whitepaper: it never leaves the point)."""
        cpo = self.configuration["CpoName"][1]
        csr_pem, self._csr_key_pem = make_csr(self.id, organization=cpo or None)

        def answered(answer: dict[str, Any]) -> None:
            if answer.get("status") != "Accepted":
                self.log.warning("SignCertificate %s", answer.get("status"))
                self._csr_key_pem = None

        self._enqueue("SignCertificate", {"csr": csr_pem}, persistent=False, on_answer=answered)

    def _signed_certificate_problem(self, chain_pem: str) -> str | None:
        try:
            certs = load_certificates(chain_pem)
        except CertificateError as e:
            return e.reason
        leaf = certs[0]
        if self._csr_key_pem is None:
            return "no certificate signing request is waiting"
        key = serialization.load_pem_private_key(self._csr_key_pem.encode(), password=None)
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            return "the certificate is not for the key of the last CSR"
        cns = leaf.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
        if [a.value for a in cns] != [self.id]:
            return f"the certificate's commonName is not {self.id}"
        now = datetime.now(UTC)  # certificates live in real time, whatever the simulated clock says
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            return "the certificate is not valid now"
        if len(certs) > 1:
            try:
                leaf.verify_directly_issued_by(certs[1])
            except (ValueError, TypeError, InvalidSignature):
                return "the certificate is not signed by the next one of the chain"
        return None

    def _cmd_CertificateSigned(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        chain = p["certificateChain"]
        problem = self._signed_certificate_problem(chain)
        if problem is not None:
            return {"status": "Rejected"}, lambda: self._security_event(
                "InvalidChargePointCertificate", problem
            )
        self.certificate_pem, self._certificate_key_pem, self._csr_key_pem = chain, self._csr_key_pem, None
        self.log.info("new charge point certificate installed")
        return {"status": "Accepted"}, None

    def _cmd_InstallCertificate(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        kind = p["certificateType"]
        try:
            cert = load_certificates(p["certificate"])[0]
            problem = _root_problem(cert)
        except CertificateError as e:
            problem = e.reason
        if problem is not None:
            after = None
            if kind == "CentralSystemRootCertificate":
                after = lambda: self._security_event("InvalidCentralSystemCertificate", problem)  # noqa: E731
            return {"status": "Rejected"}, after
        if any(t == kind and c == cert for t, c in self.installed_certificates):
            return {"status": "Accepted"}, None
        if len(self.installed_certificates) >= int(self.configuration["CertificateStoreMaxLength"][1]):
            return {"status": "Rejected"}, None  # whitepaper: Rejected when the store is full
        self.installed_certificates.append((kind, cert))
        return {"status": "Accepted"}, None

    def _hash_data(self, cert: x509.Certificate, algorithm: str = "SHA256") -> CertificateHashData | None:
        issuer = None
        if cert.issuer != cert.subject:
            issuer = next((c for _, c in self.installed_certificates if c.subject == cert.issuer), None)
            if issuer is None:
                return None
        return certificate_hash_data(cert, issuer=issuer, hash_algorithm=algorithm)

    def _cmd_GetInstalledCertificateIds(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        hashes = [self._hash_data(c) for t, c in self.installed_certificates if t == p["certificateType"]]
        found = [h.to_ocpp() for h in hashes if h is not None]
        if not found:
            return {"status": "NotFound"}, None
        return {"status": "Accepted", "certificateHashData": found}, None

    def _cmd_DeleteCertificate(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        wanted = CertificateHashData.from_ocpp(p["certificateHashData"])
        for i, (kind, cert) in enumerate(self.installed_certificates):
            found = self._hash_data(cert, wanted.hash_algorithm)
            if found is None or not found.matches(wanted):
                continue
            roots = sum(t == "CentralSystemRootCertificate" for t, _ in self.installed_certificates)
            if kind == "CentralSystemRootCertificate" and roots == 1 and self.security_profile >= 2:
                return {"status": "Failed"}, None  # it validates the connection in use (whitepaper)
            del self.installed_certificates[i]
            return {"status": "Accepted"}, None
        return {"status": "NotFound"}, None

    def _cmd_GetLog(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        request_id = p["requestId"]
        kind = "security" if p["logType"] == "SecurityLog" else "diagnostics"

        def upload() -> None:
            for status in ("Uploading", "Uploaded"):
                self._enqueue(
                    "LogStatusNotification", {"status": status, "requestId": request_id}, persistent=False
                )

        return {"status": "Accepted", "filename": f"{kind}-{self.id}-{request_id}.log"}, upload

    def _signing_certificate_problem(self, pem: str) -> tuple[x509.Certificate | None, str | None]:
        try:
            cert = load_certificates(pem)[0]
        except CertificateError as e:
            return None, e.reason
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return cert, "the signing certificate is not valid now"
        roots = [c for t, c in self.installed_certificates if t == "ManufacturerRootCertificate"]
        for root in roots:
            try:
                cert.verify_directly_issued_by(root)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return cert, None
        return cert, "the signing certificate is not issued by an installed ManufacturerRootCertificate"

    def _cmd_SignedUpdateFirmware(self, p: dict[str, Any]) -> _SimAnswer:  # noqa: N802
        firmware, request_id = p["firmware"], p["requestId"]
        cert, problem = self._signing_certificate_problem(firmware["signingCertificate"])
        if cert is None or problem is not None:
            reason = problem or "unreadable signing certificate"
            return {"status": "InvalidCertificate"}, lambda: self._security_event(
                "InvalidFirmwareSigningCertificate", reason
            )
        location = firmware["location"]
        image = self.firmware_images.get(location, location.encode())

        def report(status: str) -> None:
            self._enqueue(
                "SignedFirmwareStatusNotification",
                {"status": status, "requestId": request_id},
                persistent=False,
            )

        def install() -> None:
            report("Downloading")
            report("Downloaded")
            if not verify_firmware_signature(image, firmware["signature"], cert):
                report("InvalidSignature")
                self._security_event("InvalidFirmwareSignature", f"firmware from {location[:200]}")
                return
            for status in ("SignatureVerified", "Installing", "Installed"):
                report(status)

        return {"status": "Accepted"}, install


def _root_problem(cert: x509.Certificate) -> str | None:
    """Why a certificate cannot be a trusted root here, or None."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "not a CA certificate"
    if not constraints.ca:
        return "not a CA certificate"
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return "the certificate is not valid now"
    return None


async def _wait_until(
    listeners: list[Callable[[SimEvent], None]], condition: Callable[[], bool], timeout_s: float
) -> None:
    if condition():
        return
    changed = asyncio.Event()

    def listener(_: SimEvent) -> None:
        changed.set()

    listeners.append(listener)
    try:
        async with asyncio.timeout(timeout_s):
            while not condition():
                changed.clear()
                await changed.wait()
    finally:
        listeners.remove(listener)


# --- a fleet -------------------------------------------------------------------------------------------
class Fleet:
    """N simulated charge points with shared settings.

    Example::

        fleet = Fleet.build(gateway.url, [PointSpec(f"CP{i:02d}") for i in range(1, 11)], sessions)
        fleet.start()
        await fleet.wait_until(lambda: fleet.online_count() == 10)
        ...
        await fleet.stop()
    """

    def __init__(self, points: Iterable[SimulatedChargePoint]) -> None:
        self.points: dict[str, SimulatedChargePoint] = {p.id: p for p in points}
        self._listeners: list[Callable[[SimEvent], None]] = []
        for p in self.points.values():
            p.add_listener(self._forward)

    @classmethod
    def build(
        cls,
        server_url: str,
        specs: Iterable[PointSpec],
        sessions: Mapping[str, Sequence[SimSession]] | None = None,
        **kwargs: Any,
    ) -> Fleet:
        """One point per spec; ``sessions`` by charge point id; ``kwargs`` go to every point."""
        sessions = sessions or {}
        return cls(SimulatedChargePoint(s, server_url, sessions.get(s.id, ()), **kwargs) for s in specs)

    def __getitem__(self, charge_point_id: str) -> SimulatedChargePoint:
        return self.points[charge_point_id]

    def __len__(self) -> int:
        return len(self.points)

    def _forward(self, event: SimEvent) -> None:
        for listener in tuple(self._listeners):
            listener(event)

    def add_listener(self, listener: Callable[[SimEvent], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[SimEvent], None]) -> None:
        self._listeners.remove(listener)

    def start(self) -> None:
        for p in self.points.values():
            p.start()

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.points.values()))

    async def __aenter__(self) -> Fleet:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def online_count(self) -> int:
        return sum(p.online for p in self.points.values())

    def transactions(self) -> list[SimTransaction]:
        return [t for p in self.points.values() for t in p.transactions]

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
        """Wait until ``condition()`` holds; checked now and after every event of any point."""
        await _wait_until(self._listeners, condition, timeout_s)
