"""The gateway: connections, the typed command API, dispatch and verification. asyncio, no sockets.

A :class:`Gateway` drives one :class:`~ocpp_gateway.protocol.OcppProtocol` per connected charge
point over any :class:`Transport` (``send`` / ``close``); :mod:`ocpp_gateway.server` is the one
module that plugs real websockets in. Start a server with::

    gateway = Gateway(GatewayConfig(...), SqliteStorage("var/noxblock.sqlite"))
    await gateway.start("127.0.0.1", 0)      # gateway.port is the bound port
    status = await gateway.reset("CP01", ResetType.soft)
    await gateway.stop()

Commands (``await gateway.<command>(charge_point_id, ...)``) keep one CALL in flight per
connection (a per-connection lock), give up after ``config.call_timeout_s`` with
:class:`~ocpp_gateway.errors.CallTimeout` and always clear what they left behind, raise
:class:`~ocpp_gateway.errors.ConnectionLost` at once when the connection closes or is replaced,
and raise the matching :class:`~ocpp_gateway.errors.OcppError` when the point answers CALLERROR.

Security extension (whitepaper edition 3): ``extended_trigger_message``, ``certificate_signed``,
``install_certificate``, ``delete_certificate`` (and ``delete_installed_certificate``, which asks
the point for its hash data first), ``get_installed_certificate_ids``, ``get_log``,
``signed_update_firmware`` and ``upgrade_security_profile``. A SignCertificate the central system
accepted is signed by the configured CA and sent back with CertificateSigned by a background task
(event ``certificate``). A point whose SecurityProfile was raised through this gateway may not
connect with less: without credentials once it is at 1 or more; with a password only once it is
at 3, if this gateway terminates TLS and asks for client certificates (otherwise it cannot see
them, and TLS may end in front of it).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from ocpp.v16.enums import (
    AvailabilityStatus,
    AvailabilityType,
    CancelReservationStatus,
    CertificateSignedStatus,
    CertificateStatus,
    CertificateUse,
    ChargingProfilePurposeType,
    ChargingProfileStatus,
    ChargingRateUnitType,
    ClearCacheStatus,
    ClearChargingProfileStatus,
    ConfigurationStatus,
    DataTransferStatus,
    DeleteCertificateStatus,
    GetCompositeScheduleStatus,
    GetInstalledCertificateStatus,
    Log,
    LogStatus,
    MessageTrigger,
    RemoteStartStopStatus,
    ReservationStatus,
    ResetStatus,
    ResetType,
    TriggerMessageStatus,
    UnlockStatus,
    UpdateFirmwareStatus,
    UpdateStatus,
    UpdateType,
)

from ocpp_gateway.central import CentralSystem, Clock, _utcnow
from ocpp_gateway.certificates import (
    CertificateError,
    CertificateHashData,
    certificate_hash_data,
    check_csr,
    load_certificates,
)
from ocpp_gateway.config import GatewayConfig
from ocpp_gateway.dispatch import (
    ChargingProfile,
    SchedulePeriod,
    failsafe_profile,
    limit_at,
    parse_rate_units,
    plan_to_profile,
)
from ocpp_gateway.errors import (
    CallTimeout,
    ConnectionLost,
    GatewayError,
    InternalError,
    NotConnected,
    NotImplementedAction,
    NotSupportedAction,
    OcppError,
    PropertyConstraintViolation,
)
from ocpp_gateway.frames import format_datetime, parse_datetime
from ocpp_gateway.protocol import AnswerReceived, CallReceived, Dropped, OcppProtocol, ReplyNeeded
from ocpp_gateway.security import CredentialCache, hash_password, parse_basic_auth, verify_password
from ocpp_gateway.storage import (
    CertificateCommandRecord,
    CertificateRequestStatus,
    IdTagRecord,
    SecurityEventRecord,
    Storage,
)

if TYPE_CHECKING:
    from ocpp_gateway.server import GatewayServer

__all__ = [
    "AuthResult",
    "CompositeSchedule",
    "ConfigurationResult",
    "DispatchResult",
    "Gateway",
    "GatewayEvent",
    "GetLogResult",
    "InstalledCertificates",
    "KeyValue",
    "SignedUpdateFirmwareResult",
    "Transport",
]

log = logging.getLogger(__name__)

#: Configuration keys read before the first profile is sent (DOMAIN.md).
SMART_CHARGING_KEYS = (
    "ChargingScheduleAllowedChargingRateUnit",
    "ChargingScheduleMaxPeriods",
    "ChargeProfileMaxStackLevel",
    "MaxChargingProfilesInstalled",
)
_DEFAULT_MAX_PERIODS = 24
_SEEN_SLICE = 200  # last_seen rows written per loop turn
#: Writes are committed this long after the first uncommitted one [s]. The answer to a message
#: is sent before its commit: a process crash can lose what was answered in the last 10 ms.
_COMMIT_DELAY_S = 0.01
_GC_FREEZE_STEP = 100  # freeze again once this many more points are connected
_GC_UNFREEZE_S = 1800.0  # let a full collection see everything this often
_FAILSAFE_PROFILE_ID = 1
#: Private config key: the SecurityProfile a point accepted through this gateway (the least it may use).
_MIN_PROFILE_KEY = "_security_profile_min"


def _tx_default_profile_id(connector_id: int) -> int:
    return 10 + connector_id


def _tx_profile_id(connector_id: int) -> int:
    return 100 + connector_id


class Transport(Protocol):
    """What the gateway needs from a connection: send a text message, close.

    ``send`` raises :class:`~ocpp_gateway.errors.ConnectionLost` when the connection is gone.
    """

    async def send(self, text: str) -> None: ...
    async def close(self, code: int = 1000, reason: str = "") -> None: ...


@dataclass(frozen=True, slots=True)
class GatewayEvent:
    """Something that happened, for listeners (the scheduler, tests).

    ``kind``: ``connected``, ``disconnected``, ``call`` (a message from a point was answered:
    ``action``, ``payload`` and ``response`` set), ``bad_frame`` (``payload`` holds the error code),
    ``failsafe`` (``payload`` holds the profile status), ``certificate`` (a certificate was issued
    for a SignCertificate and delivered, or not: ``payload`` holds ``request_id`` and ``status``, a
    :class:`~ocpp_gateway.storage.CertificateRequestStatus` value).
    """

    kind: str
    charge_point_id: str
    action: str | None = None
    payload: dict[str, Any] | None = None
    response: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class AuthResult:
    ok: bool
    reason: str
    profile: int  # security profile used: 0, 1 (Basic), 2 (Basic over our TLS), 3 (client certificate)


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    readonly: bool
    value: str | None


@dataclass(frozen=True, slots=True)
class ConfigurationResult:
    keys: tuple[KeyValue, ...]
    unknown_keys: tuple[str, ...]

    def get(self, key: str) -> str | None:
        return next((k.value for k in self.keys if k.key == key), None)


@dataclass(frozen=True, slots=True)
class CompositeSchedule:
    """A GetCompositeSchedule answer; ``periods`` are relative to ``schedule_start``."""

    status: GetCompositeScheduleStatus
    connector_id: int | None = None
    schedule_start: datetime | None = None
    rate_unit: ChargingRateUnitType | None = None
    periods: tuple[SchedulePeriod, ...] = ()
    duration_s: int | None = None

    def limit_a_at(self, at: datetime, *, voltage_v: float, phases: int) -> float | None:
        """The composite per-phase limit [A] at ``at``, or None if the schedule says nothing."""
        if (
            self.status != GetCompositeScheduleStatus.accepted
            or not self.periods
            or self.schedule_start is None
        ):
            return None
        profile = ChargingProfile(
            profile_id=0, stack_level=0, purpose="TxDefaultProfile", rate_unit=self.rate_unit or "A",  # type: ignore[arg-type]
            periods=self.periods, start_schedule=self.schedule_start, duration_s=self.duration_s,
        )  # fmt: skip
        return limit_at(profile, at, voltage_v=voltage_v, phases=phases)


@dataclass(frozen=True, slots=True)
class InstalledCertificates:
    """A GetInstalledCertificateIds answer: the hash data of each certificate of the type asked for."""

    status: GetInstalledCertificateStatus
    certificates: tuple[CertificateHashData, ...] = ()

    def find(self, wanted: CertificateHashData) -> CertificateHashData | None:
        """The entry (as the point reported it) for the same certificate, or None."""
        return next((c for c in self.certificates if c.matches(wanted)), None)


@dataclass(frozen=True, slots=True)
class GetLogResult:
    """A GetLog answer; LogStatusNotifications that follow carry ``request_id``."""

    status: LogStatus
    request_id: int
    filename: str | None = None


@dataclass(frozen=True, slots=True)
class SignedUpdateFirmwareResult:
    """A SignedUpdateFirmware answer; SignedFirmwareStatusNotifications that follow carry ``request_id``."""

    status: UpdateFirmwareStatus
    request_id: int


@dataclass(frozen=True, slots=True)
class DispatchResult:
    """Outcome of :meth:`Gateway.dispatch_plan`.

    ``verified``: True if the composite schedule read back is within the dispatched limit, False
    if it is above it (the point is flagged non-compliant), None if it could not be checked.
    """

    status: ChargingProfileStatus
    profile: ChargingProfile
    composite_limit_a: float | None = None
    verified: bool | None = None
    #: With ``also_default``: how the TxDefaultProfile copy was answered (None: not sent).
    default_status: ChargingProfileStatus | None = None


class _PointLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every line with the charge point id: ``[CP01] connected``."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['charge_point_id']}] {msg}", kwargs  # type: ignore[index]


class _Connection:
    __slots__ = (
        "closed",
        "cp_id",
        "lock",
        "log",
        "protocol",
        "refill_at",
        "throttled",
        "tokens",
        "transport",
        "waiter",
    )

    def __init__(self, cp_id: str, transport: Transport, burst: float) -> None:
        self.cp_id = cp_id
        self.transport = transport
        self.protocol = OcppProtocol()
        self.log = _PointLogger(log, {"charge_point_id": cp_id})
        self.lock: asyncio.Lock | None = None  # created on the first command
        self.waiter: asyncio.Future[AnswerReceived] | None = None
        self.tokens = burst
        self.refill_at = time.monotonic()
        self.throttled = 0
        self.closed = False


class Gateway:
    """OCPP 1.6J central system core. See the module docstring.

    Parameters
    ----------
    config
        Gateway configuration.
    storage
        The store (its writes are group-committed, at most ``_COMMIT_DELAY_S`` after they happen).
    clock
        Aware-UTC clock, injectable for tests.
    """

    def __init__(self, config: GatewayConfig, storage: Storage, *, clock: Clock = _utcnow) -> None:
        self.config = config
        self.storage = storage
        self.clock = clock
        self.central = CentralSystem(config, storage, clock=clock)
        self._connections: dict[str, _Connection] = {}
        self._listeners: list[Callable[[GatewayEvent], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._commit_pending = False
        self._seen: dict[str, datetime] = {}
        self._flushing: dict[str, datetime] = {}  # being written by _housekeep
        self._credentials = CredentialCache()
        self._password_hashes: dict[str, str] = {}
        self._plans: dict[tuple[str, int], tuple[list[tuple[datetime, float]], datetime, int | None]] = {}
        #: Per point, a cap on its failsafe below the configured one (a grid operator's lower
        #: limit), and the failsafe limit each point last accepted [A].
        self._failsafe_caps: dict[str, float] = {}
        self._failsafe_installed: dict[str, float] = {}
        self._server: GatewayServer | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._stopped = False
        self._gc_frozen_at: int | None = None  # connections when we last froze, None: not frozen
        self._gc_frozen_since = 0.0
        self.stats: dict[str, int] = {"messages": 0, "bad_frames": 0, "throttled": 0}
        self._rate, self._burst = float(config.rate_limit_per_s), float(config.rate_limit_burst)
        self._min_profiles: dict[str, int] = {}  # read from the store on a point's first handshake
        # requestId of GetLog / SignedUpdateFirmware: from the wall clock, so unique across restarts.
        self._request_ids = itertools.count(int(time.time()) % 2_000_000_000)
        self._load_passwords()

    # --- lifecycle ------------------------------------------------------------------------
    def _load_passwords(self) -> None:
        for cp in self.config.charge_points:
            if cp.password_hash is not None:
                self.storage.set_password_hash(cp.id, cp.password_hash)
        self.storage.commit()
        self._password_hashes = self.storage.password_hashes()
        if self.config.allow_profile_0:
            log.warning("security profile 0 allowed: points without a password connect unauthenticated")

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen for charge points on ``ws://host:port/ocpp/{id}`` (port 0: any free port)."""
        from ocpp_gateway.server import GatewayServer

        self._server = GatewayServer(self)
        await self._server.start(host, port)
        self._stopped = False
        self._housekeeping = asyncio.create_task(self._housekeep())

    @property
    def port(self) -> int:
        """The port the server listens on."""
        if self._server is None:
            raise GatewayError("gateway not started")
        return self._server.port

    @property
    def url(self) -> str:
        """``ws://host:port/ocpp/`` (or ``wss://``); append the charge point id."""
        if self._server is None:
            raise GatewayError("gateway not started")
        return self._server.url

    async def stop(self) -> None:
        """Close every connection, fail pending commands, flush and commit the store."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            self._housekeeping = None
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            await self._server.stop()
            self._server = None
        for conn in list(self._connections.values()):
            self.detach(conn)
        self._unfreeze_gc()
        self._flush_seen()
        self.storage.commit()
        self._stopped = True  # the owner may close the store now; late commits are skipped

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            # Thousands of points are seen in 5 s: write their last_seen in slices, one per loop
            # turn, so that no turn blocks the loop for long (p99 latency).
            self._flushing, self._seen = self._seen, {}
            items = list(self._flushing.items())
            for i in range(0, len(items), _SEEN_SLICE):
                self.storage.touch(dict(items[i : i + _SEEN_SLICE]))
                self._commit()
                await asyncio.sleep(0)
            self._flushing = {}
            self._commit()
            if self.config.freeze_gc:
                self._manage_gc()

    def _manage_gc(self) -> None:
        """See ``GatewayConfig.freeze_gc``. Called every few seconds; never collects itself."""
        n = len(self._connections)
        now = time.monotonic()
        if self._gc_frozen_at is not None and (
            now - self._gc_frozen_since > _GC_UNFREEZE_S or n < self._gc_frozen_at * 3 // 4
        ):
            gc.unfreeze()  # the next full collection (the collector's own) reclaims dead cycles
            self._gc_frozen_at = None
        if n >= (self._gc_frozen_at or 0) + _GC_FREEZE_STEP:
            if self._gc_frozen_at is None:
                self._gc_frozen_since = now
            gc.freeze()
            self._gc_frozen_at = n

    def _unfreeze_gc(self) -> None:
        if self._gc_frozen_at is not None:
            gc.unfreeze()
            self._gc_frozen_at = None

    def _flush_seen(self) -> None:
        if self._flushing:
            flushing, self._flushing = self._flushing, {}
            self.storage.touch(flushing)
        if self._seen:
            seen, self._seen = self._seen, {}
            self.storage.touch(seen)
        self._schedule_commit()

    def _schedule_commit(self) -> None:
        # Group commit: everything written within _COMMIT_DELAY_S (many loop turns under load) goes
        # in one commit; a commit's cost is mostly its dirty pages, shared by the rows it carries.
        if not self._commit_pending:
            self._commit_pending = True
            try:
                asyncio.get_running_loop().call_later(_COMMIT_DELAY_S, self._commit)
            except RuntimeError:  # no loop (sync use): commit now
                self._commit()

    def _commit(self) -> None:
        self._commit_pending = False
        if self._stopped:
            return
        try:
            self.storage.commit()
        except Exception:
            log.exception("commit failed")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- events ---------------------------------------------------------------------------
    def add_listener(self, listener: Callable[[GatewayEvent], None]) -> None:
        """Call ``listener`` with every :class:`GatewayEvent` (keep it quick: it runs inline)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[GatewayEvent], None]) -> None:
        self._listeners.remove(listener)

    def _emit(self, event: GatewayEvent) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed")

    async def wait_for(
        self, predicate: Callable[[GatewayEvent], bool], timeout_s: float = 10.0
    ) -> GatewayEvent:
        """Wait for the first event matching ``predicate`` (tests, scripts)."""
        fut: asyncio.Future[GatewayEvent] = asyncio.get_running_loop().create_future()

        def listener(event: GatewayEvent) -> None:
            if not fut.done() and predicate(event):
                fut.set_result(event)

        self.add_listener(listener)
        try:
            async with asyncio.timeout(timeout_s):
                return await fut
        finally:
            self.remove_listener(listener)

    # --- queries --------------------------------------------------------------------------
    def is_connected(self, charge_point_id: str) -> bool:
        return charge_point_id in self._connections

    def connected_ids(self) -> list[str]:
        return sorted(self._connections)

    def last_seen(self, charge_point_id: str) -> datetime | None:
        seen = self._seen.get(charge_point_id) or self._flushing.get(charge_point_id)
        if seen is not None:
            return seen
        record = self.storage.charge_point(charge_point_id)
        return record.last_seen if record else None

    def is_compliant(self, charge_point_id: str) -> bool | None:
        """False once a point was caught ignoring its limits; None if never checked."""
        record = self.storage.charge_point(charge_point_id)
        return record.compliant if record else None

    def non_compliant(self) -> list[str]:
        """Ids of points flagged as ignoring their limits (to be treated as inflexible load)."""
        return [r.id for r in self.storage.charge_points() if r.compliant is False]

    # --- authentication (called at the websocket handshake) ------------------------------
    async def authenticate(
        self,
        charge_point_id: str,
        authorization: str | None,
        *,
        client_cert_cn: str | None = None,
        remote: str = "?",
    ) -> AuthResult:
        """Decide whether a connecting point may in. Logs and records refusals; never a secret."""
        if client_cert_cn is not None and client_cert_cn == charge_point_id:
            return AuthResult(True, "client certificate", 3)
        stored = self._password_hashes.get(charge_point_id)
        creds = parse_basic_auth(authorization)
        if stored is None:
            if self.config.allow_profile_0:
                required = self.required_security_profile(charge_point_id)
                if required > 0:
                    return self._refuse(
                        charge_point_id,
                        f"security profile {required} required, connected without credentials",
                        remote,
                    )
                log.warning(
                    "[%s] connects without authentication (security profile 0) from %s",
                    charge_point_id,
                    remote,
                )
                return AuthResult(True, "profile 0", 0)
            return self._refuse(charge_point_id, "no password configured and profile 0 not allowed", remote)
        if creds is None:
            return self._refuse(charge_point_id, "missing or malformed Basic credentials", remote)
        user, password = creds
        if user != charge_point_id:
            return self._refuse(charge_point_id, "Basic auth user is not the charge point id", remote)
        if not self._credentials.check(charge_point_id, password, stored):
            ok = await asyncio.to_thread(verify_password, password, stored)
            if not ok:
                return self._refuse(charge_point_id, "wrong password", remote)
            self._credentials.remember(charge_point_id, password, stored)
        if self.required_security_profile(charge_point_id) >= 3 and self._sees_client_certificates():
            return self._refuse(
                charge_point_id, "security profile 3 required, connected with a password only", remote
            )
        return AuthResult(True, "password", 1 if self.config.ssl_context is None else 2)

    def required_security_profile(self, charge_point_id: str) -> int:
        """The SecurityProfile a point accepted through this gateway (0 if never changed here)."""
        profile = self._min_profiles.get(charge_point_id)
        if profile is None:
            value = self.storage.config_values(charge_point_id).get(_MIN_PROFILE_KEY)
            profile = int(value) if value and value.isdigit() else 0
            self._min_profiles[charge_point_id] = profile
        return profile

    def _sees_client_certificates(self) -> bool:
        ctx = self.config.ssl_context
        return ctx is not None and ctx.verify_mode != ssl.CERT_NONE and self.config.client_cert_must_match_id

    def _refuse(self, charge_point_id: str, reason: str, remote: str) -> AuthResult:
        log.warning("[%s] authentication refused from %s: %s", charge_point_id, remote, reason)
        self.record_security_event(charge_point_id, "AuthenticationFailed", reason)
        return AuthResult(False, reason, -1)

    def record_security_event(self, charge_point_id: str, kind: str, info: str | None) -> None:
        """Record a security event the gateway itself observed."""
        self.storage.record_security_event(
            SecurityEventRecord(charge_point_id, kind, info, self.clock(), "gateway")
        )
        self._schedule_commit()

    async def set_password(self, charge_point_id: str, password: str | None) -> None:
        """Set (or with None remove) a point's Basic-auth password; only its hash is stored."""
        hashed = None if password is None else await asyncio.to_thread(hash_password, password)
        self.storage.set_password_hash(charge_point_id, hashed)
        self.storage.commit()
        self._credentials.forget(charge_point_id)
        if hashed is None:
            self._password_hashes.pop(charge_point_id, None)
        else:
            self._password_hashes[charge_point_id] = hashed

    def put_id_tag(self, record: IdTagRecord) -> None:
        """Add or replace an id tag in the store."""
        self.storage.put_id_tag(record)
        self._schedule_commit()

    # --- connections (called by the server) -----------------------------------------------
    def attach(self, charge_point_id: str, transport: Transport) -> _Connection:
        """Register a new connection; an older one for the same id is replaced and closed."""
        old = self._connections.get(charge_point_id)
        conn = _Connection(charge_point_id, transport, float(self.config.rate_limit_burst))
        self._connections[charge_point_id] = conn
        if old is not None:
            old.log.warning("new connection replaces the old one")
            self._close_connection(old, "replaced by a new connection")
            self._spawn(old.transport.close(1000, "replaced by a new connection"))
        self._seen[charge_point_id] = self.clock()
        conn.log.info("connected")
        self._emit(GatewayEvent("connected", charge_point_id))
        return conn

    def detach(self, conn: _Connection) -> None:
        """Forget a closed connection (a no-op if it was already replaced)."""
        if self._connections.get(conn.cp_id) is conn:
            del self._connections[conn.cp_id]
            conn.log.info("disconnected")
            self._seen[conn.cp_id] = self.clock()
            self._emit(GatewayEvent("disconnected", conn.cp_id))
        self._close_connection(conn, "connection closed")

    @staticmethod
    def _close_connection(conn: _Connection, why: str) -> None:
        conn.closed = True
        if conn.waiter is not None and not conn.waiter.done():
            conn.waiter.set_exception(ConnectionLost(conn.cp_id, why))

    def _take_token(self, conn: _Connection) -> bool:
        """Take a token from the point's bucket if one is free (the common case: no await)."""
        now = time.monotonic()
        tokens = conn.tokens + (now - conn.refill_at) * self._rate
        conn.refill_at = now
        if tokens > self._burst:
            tokens = self._burst
        if tokens < 1.0:
            conn.tokens = tokens
            return False
        conn.tokens = tokens - 1.0
        return True

    async def _throttle(self, conn: _Connection) -> None:
        rate, burst = self.config.rate_limit_per_s, float(self.config.rate_limit_burst)
        await self._throttle_wait(conn, rate, burst)
        conn.tokens -= 1.0

    async def _throttle_wait(self, conn: _Connection, rate: float, burst: float) -> None:
        if conn.tokens < 1.0:
            conn.throttled += 1
            self.stats["throttled"] += 1
            if conn.throttled == 1 or conn.throttled % 1000 == 0:
                conn.log.warning("flooding: rate limited to %.0f messages/s", rate)
            # Not reading the socket meanwhile pushes back on the point through TCP; nothing is lost.
            await asyncio.sleep((1.0 - conn.tokens) / rate)
            now = time.monotonic()
            conn.tokens = min(burst, conn.tokens + (now - conn.refill_at) * rate)
            conn.refill_at = now

    async def receive(self, conn: _Connection, data: str | bytes) -> None:
        """Handle one websocket message from ``conn`` (the server calls this in its read loop)."""
        if not self._take_token(conn):
            await self._throttle(conn)
        self.stats["messages"] += 1
        cp_id = conn.cp_id
        self._seen[cp_id] = self.clock()
        event = conn.protocol.receive(data)
        if isinstance(event, CallReceived):
            call = event.call
            response: dict[str, Any] | None = None
            try:
                response = self.central.handle(cp_id, call)
                text = conn.protocol.send_result(call.unique_id, response)
            except OcppError as e:
                conn.log.warning("%s refused: %s", call.action, e)
                text = conn.protocol.send_error(call.unique_id, e)
            except Exception:
                conn.log.exception("%s failed", call.action)
                text = conn.protocol.send_error(call.unique_id, InternalError(f"{call.action} failed"))
            self._schedule_commit()
            await self._send(conn, text)
            if response is not None:
                self._after_call(conn, call.action, call.payload, response)
        elif isinstance(event, ReplyNeeded):
            self.stats["bad_frames"] += 1
            conn.log.warning("bad frame: %s", event.error)
            self._emit(GatewayEvent("bad_frame", cp_id, payload={"code": event.error.code}))
            await self._send(conn, event.text)
        elif isinstance(event, AnswerReceived):
            if conn.waiter is not None and not conn.waiter.done():
                conn.waiter.set_result(event)
        elif isinstance(event, Dropped):
            self.stats["bad_frames"] += 1
            conn.log.info("frame dropped: %s", event.reason)
            self._emit(GatewayEvent("bad_frame", cp_id, payload={"code": "dropped", "reason": event.reason}))

    async def _send(self, conn: _Connection, text: str) -> None:
        try:
            await conn.transport.send(text)
        except ConnectionLost:
            conn.log.info("answer not sent: connection gone")

    def _after_call(
        self, conn: _Connection, action: str, payload: dict[str, Any], response: dict[str, Any]
    ) -> None:
        cp_id = conn.cp_id
        if (
            action == "BootNotification"
            and response["status"] == "Accepted"
            and self.config.failsafe_current_a is not None
        ):
            self._spawn(self._install_failsafe_quietly(cp_id))
        elif action == "StartTransaction":
            plan = self._plans.get((cp_id, payload["connectorId"]))
            if plan is not None:
                self._spawn(self._redispatch(cp_id, payload["connectorId"]))
        elif action == "SignCertificate":
            request_id = self.central.csr_pending.pop(cp_id, None)
            if request_id is not None and response["status"] == "Accepted":
                self._spawn(self._issue_certificate(cp_id, request_id))
        if self._listeners:
            self._emit(GatewayEvent("call", cp_id, action, payload, response))

    # --- the command API ------------------------------------------------------------------
    async def call(self, charge_point_id: str, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send any CS-initiated CALL and return the schema-valid answer payload.

        Raises
        ------
        NotConnected, CallTimeout, ConnectionLost
            No connection, no answer in time, connection gone while waiting.
        OcppError
            The point answered with a CALLERROR (``from_charge_point``), or sent an invalid answer.
        """
        conn = self._connections.get(charge_point_id)
        if conn is None:
            raise NotConnected(charge_point_id, f"not connected (cannot send {action})")
        if conn.lock is None:
            conn.lock = asyncio.Lock()
        async with conn.lock:
            if conn.closed:
                raise ConnectionLost(charge_point_id, f"connection closed before {action} was sent")
            unique_id, text = conn.protocol.send_call(action, payload)
            waiter: asyncio.Future[AnswerReceived] = asyncio.get_running_loop().create_future()
            conn.waiter = waiter
            try:
                await conn.transport.send(text)
                async with asyncio.timeout(self.config.call_timeout_s):
                    answer = await waiter
            except TimeoutError:
                conn.log.warning("%s: no answer within %.1f s", action, self.config.call_timeout_s)
                raise CallTimeout(
                    charge_point_id, f"{action}: no answer within {self.config.call_timeout_s} s"
                ) from None
            finally:
                conn.waiter = None
                if conn.protocol.pending_id == unique_id:
                    conn.protocol.cancel_call()
                if not waiter.done():
                    waiter.cancel()
        if answer.error is not None:
            raise answer.error
        assert answer.payload is not None
        return answer.payload

    async def remote_start_transaction(
        self,
        charge_point_id: str,
        id_tag: str,
        *,
        connector_id: int | None = None,
        charging_profile: ChargingProfile | None = None,
    ) -> RemoteStartStopStatus:
        """Ask a point to start a transaction; ``charging_profile`` must be a TxProfile. Its
        ``transaction_id`` (best None) is never sent: the transaction does not exist yet.
        """
        if connector_id is not None and connector_id < 1:
            # OCPP 1.6 5.11: a remote start names a connector > 0 (or none).
            raise PropertyConstraintViolation("RemoteStartTransaction connectorId must be > 0")
        payload: dict[str, Any] = {"idTag": id_tag}
        if connector_id is not None:
            payload["connectorId"] = connector_id
        if charging_profile is not None:
            if charging_profile.purpose != "TxProfile":
                raise PropertyConstraintViolation(
                    "RemoteStartTransaction's chargingProfile must be a TxProfile"
                )
            body = charging_profile.to_ocpp()
            # OCPP 1.6 5.11: the transaction does not exist yet, so the profile names none.
            body.pop("transactionId", None)
            payload["chargingProfile"] = body
        answer = await self.call(charge_point_id, "RemoteStartTransaction", payload)
        return RemoteStartStopStatus(answer["status"])

    async def remote_stop_transaction(
        self, charge_point_id: str, transaction_id: int
    ) -> RemoteStartStopStatus:
        answer = await self.call(charge_point_id, "RemoteStopTransaction", {"transactionId": transaction_id})
        return RemoteStartStopStatus(answer["status"])

    async def reset(self, charge_point_id: str, reset_type: ResetType | str = ResetType.soft) -> ResetStatus:
        answer = await self.call(charge_point_id, "Reset", {"type": str(reset_type)})
        return ResetStatus(answer["status"])

    async def unlock_connector(self, charge_point_id: str, connector_id: int) -> UnlockStatus:
        answer = await self.call(charge_point_id, "UnlockConnector", {"connectorId": connector_id})
        return UnlockStatus(answer["status"])

    async def change_availability(
        self, charge_point_id: str, connector_id: int, availability: AvailabilityType | str
    ) -> AvailabilityStatus:
        answer = await self.call(
            charge_point_id, "ChangeAvailability", {"connectorId": connector_id, "type": str(availability)}
        )
        return AvailabilityStatus(answer["status"])

    async def change_configuration(self, charge_point_id: str, key: str, value: str) -> ConfigurationStatus:
        """Set a configuration key; an accepted value is remembered (AuthorizationKey only as ``[secret]``).

        An accepted ``SecurityProfile`` becomes the least profile the point may connect with.
        """
        is_profile = key == "SecurityProfile"
        if is_profile and value not in ("0", "1", "2", "3"):
            raise PropertyConstraintViolation(f"SecurityProfile must be 0, 1, 2 or 3, got {value!r}")
        answer = await self.call(charge_point_id, "ChangeConfiguration", {"key": key, "value": value})
        status = ConfigurationStatus(answer["status"])
        if status in (ConfigurationStatus.accepted, ConfigurationStatus.reboot_required):
            # AuthorizationKey is the point's Basic-auth password: never stored in clear.
            stored = "[secret]" if key.lower() == "authorizationkey" else value
            values: dict[str, str | None] = {key: stored}
            if is_profile:
                values[_MIN_PROFILE_KEY] = value
                self._min_profiles[charge_point_id] = int(value)
                log.info("[%s] security profile %s accepted", charge_point_id, value)
            self.storage.set_config_values(charge_point_id, values)
            self._schedule_commit()
        return status

    async def upgrade_security_profile(self, charge_point_id: str, profile: int) -> ConfigurationStatus:
        """Raise a point's SecurityProfile (whitepaper; OCTT TC_083): ChangeConfiguration, then, if
        Accepted, a hard Reset so that it reconnects with the new profile.

        Refused here, before anything is sent (:class:`PropertyConstraintViolation`): a downgrade
        (points reject them), and profiles the point could not log in with afterwards: 1 or 2
        without a password stored for it, 3 when this gateway does not check client certificates.
        For 2 and 3 the point also needs the CentralSystemRootCertificate (:meth:`install_certificate`).
        """
        current = self.required_security_profile(charge_point_id)
        if not 1 <= profile <= 3 or profile <= current:
            raise PropertyConstraintViolation(
                f"SecurityProfile can only be raised (now {current}, asked {profile}; at most 3)"
            )
        if profile in (1, 2) and charge_point_id not in self._password_hashes:
            raise PropertyConstraintViolation(
                f"SecurityProfile {profile} needs a password: set one first (set_password, AuthorizationKey)"
            )
        if profile == 3 and not self._sees_client_certificates():
            raise PropertyConstraintViolation(
                "SecurityProfile 3 needs this gateway to check client certificates (ssl_context)"
            )
        status = await self.change_configuration(charge_point_id, "SecurityProfile", str(profile))
        if status == ConfigurationStatus.accepted:
            await self.reset(charge_point_id, ResetType.hard)
        else:
            log.warning("[%s] SecurityProfile %d %s: unchanged", charge_point_id, profile, status.value)
        return status

    async def get_configuration(
        self, charge_point_id: str, keys: Sequence[str] | None = None
    ) -> ConfigurationResult:
        payload: dict[str, Any] = {"key": list(keys)} if keys else {}
        answer = await self.call(charge_point_id, "GetConfiguration", payload)
        values = tuple(
            KeyValue(k["key"], bool(k["readonly"]), k.get("value"))
            for k in answer.get("configurationKey", [])
        )
        if values:
            self.storage.set_config_values(
                charge_point_id,
                {k.key: "[secret]" if k.key.lower() == "authorizationkey" else k.value for k in values},
            )
            self._schedule_commit()
        return ConfigurationResult(values, tuple(answer.get("unknownKey", [])))

    async def clear_cache(self, charge_point_id: str) -> ClearCacheStatus:
        answer = await self.call(charge_point_id, "ClearCache", {})
        return ClearCacheStatus(answer["status"])

    async def trigger_message(
        self,
        charge_point_id: str,
        requested_message: MessageTrigger | str,
        *,
        connector_id: int | None = None,
    ) -> TriggerMessageStatus:
        return await self._trigger(charge_point_id, "TriggerMessage", requested_message, connector_id)

    async def _trigger(
        self, charge_point_id: str, action: str, requested_message: str, connector_id: int | None
    ) -> TriggerMessageStatus:
        """TriggerMessage or ExtendedTriggerMessage (same payload and answer)."""
        payload: dict[str, Any] = {"requestedMessage": str(requested_message)}
        if connector_id is not None:
            payload["connectorId"] = connector_id
        answer = await self.call(charge_point_id, action, payload)
        return TriggerMessageStatus(answer["status"])

    async def set_charging_profile(
        self, charge_point_id: str, connector_id: int, profile: ChargingProfile
    ) -> ChargingProfileStatus:
        """Send a profile; the profile and the answer (or why there was none) are recorded.

        Raises :class:`~ocpp_gateway.errors.PlanError` for a TxProfile without transaction id.
        """
        profile.check_for_set()
        body = profile.to_ocpp()
        try:
            answer = await self.call(
                charge_point_id,
                "SetChargingProfile",
                {"connectorId": connector_id, "csChargingProfiles": body},
            )
        except GatewayError as e:
            self.storage.record_profile(charge_point_id, connector_id, body, f"NoAnswer: {e}", self.clock())
            self._schedule_commit()
            raise
        status = ChargingProfileStatus(answer["status"])
        self.storage.record_profile(charge_point_id, connector_id, body, status.value, self.clock())
        self._schedule_commit()
        return status

    async def clear_charging_profile(
        self,
        charge_point_id: str,
        *,
        profile_id: int | None = None,
        connector_id: int | None = None,
        purpose: ChargingProfilePurposeType | str | None = None,
        stack_level: int | None = None,
    ) -> ClearChargingProfileStatus:
        payload: dict[str, Any] = {}
        if profile_id is not None:
            payload["id"] = profile_id
        if connector_id is not None:
            payload["connectorId"] = connector_id
        if purpose is not None:
            payload["chargingProfilePurpose"] = str(purpose)
        if stack_level is not None:
            payload["stackLevel"] = stack_level
        answer = await self.call(charge_point_id, "ClearChargingProfile", payload)
        return ClearChargingProfileStatus(answer["status"])

    async def get_composite_schedule(
        self,
        charge_point_id: str,
        connector_id: int,
        duration_s: int,
        *,
        rate_unit: ChargingRateUnitType | str | None = None,
    ) -> CompositeSchedule:
        payload: dict[str, Any] = {"connectorId": connector_id, "duration": duration_s}
        if rate_unit is not None:
            payload["chargingRateUnit"] = str(rate_unit)
        answer = await self.call(charge_point_id, "GetCompositeSchedule", payload)
        status = GetCompositeScheduleStatus(answer["status"])
        sched = answer.get("chargingSchedule")
        if status != GetCompositeScheduleStatus.accepted or not sched:
            return CompositeSchedule(status, answer.get("connectorId"))
        start = answer.get("scheduleStart") or sched.get("startSchedule")
        return CompositeSchedule(
            status,
            answer.get("connectorId"),
            parse_datetime(start) if start else None,
            ChargingRateUnitType(sched["chargingRateUnit"]),
            tuple(
                SchedulePeriod(int(p["startPeriod"]), float(p["limit"]), p.get("numberPhases"))
                for p in sched["chargingSchedulePeriod"]
            ),
            sched.get("duration"),
        )

    async def send_local_list(
        self,
        charge_point_id: str,
        list_version: int,
        update_type: UpdateType | str,
        entries: Sequence[IdTagRecord] = (),
    ) -> UpdateStatus:
        authorization_list = []
        for e in entries:
            info: dict[str, Any] = {"status": e.status}
            if e.expiry_date is not None:
                info["expiryDate"] = format_datetime(e.expiry_date)
            if e.parent_id_tag is not None:
                info["parentIdTag"] = e.parent_id_tag
            authorization_list.append({"idTag": e.id_tag, "idTagInfo": info})
        payload: dict[str, Any] = {"listVersion": list_version, "updateType": str(update_type)}
        if authorization_list:
            payload["localAuthorizationList"] = authorization_list
        answer = await self.call(charge_point_id, "SendLocalList", payload)
        return UpdateStatus(answer["status"])

    async def get_local_list_version(self, charge_point_id: str) -> int:
        answer = await self.call(charge_point_id, "GetLocalListVersion", {})
        return int(answer["listVersion"])

    async def reserve_now(
        self,
        charge_point_id: str,
        connector_id: int,
        expiry: datetime,
        id_tag: str,
        reservation_id: int,
        *,
        parent_id_tag: str | None = None,
    ) -> ReservationStatus:
        payload: dict[str, Any] = {
            "connectorId": connector_id,
            "expiryDate": format_datetime(expiry),
            "idTag": id_tag,
            "reservationId": reservation_id,
        }
        if parent_id_tag is not None:
            payload["parentIdTag"] = parent_id_tag
        answer = await self.call(charge_point_id, "ReserveNow", payload)
        return ReservationStatus(answer["status"])

    async def cancel_reservation(self, charge_point_id: str, reservation_id: int) -> CancelReservationStatus:
        answer = await self.call(charge_point_id, "CancelReservation", {"reservationId": reservation_id})
        return CancelReservationStatus(answer["status"])

    async def get_diagnostics(
        self,
        charge_point_id: str,
        location: str,
        *,
        retries: int | None = None,
        retry_interval_s: int | None = None,
        start_time: datetime | None = None,
        stop_time: datetime | None = None,
    ) -> str | None:
        """Ask for a diagnostics upload; returns the file name the point will upload, if any."""
        payload: dict[str, Any] = {"location": location}
        if retries is not None:
            payload["retries"] = retries
        if retry_interval_s is not None:
            payload["retryInterval"] = retry_interval_s
        if start_time is not None:
            payload["startTime"] = format_datetime(start_time)
        if stop_time is not None:
            payload["stopTime"] = format_datetime(stop_time)
        answer = await self.call(charge_point_id, "GetDiagnostics", payload)
        return answer.get("fileName")

    async def update_firmware(
        self,
        charge_point_id: str,
        location: str,
        retrieve_date: datetime,
        *,
        retries: int | None = None,
        retry_interval_s: int | None = None,
    ) -> None:
        payload: dict[str, Any] = {"location": location, "retrieveDate": format_datetime(retrieve_date)}
        if retries is not None:
            payload["retries"] = retries
        if retry_interval_s is not None:
            payload["retryInterval"] = retry_interval_s
        await self.call(charge_point_id, "UpdateFirmware", payload)

    async def data_transfer(
        self, charge_point_id: str, vendor_id: str, *, message_id: str | None = None, data: str | None = None
    ) -> tuple[DataTransferStatus, str | None]:
        payload: dict[str, Any] = {"vendorId": vendor_id}
        if message_id is not None:
            payload["messageId"] = message_id
        if data is not None:
            payload["data"] = data
        answer = await self.call(charge_point_id, "DataTransfer", payload)
        return DataTransferStatus(answer["status"]), answer.get("data")

    # --- security extension (whitepaper edition 3) ------------------------------------------
    async def extended_trigger_message(
        self,
        charge_point_id: str,
        requested_message: MessageTrigger | str,
        *,
        connector_id: int | None = None,
    ) -> TriggerMessageStatus:
        """ExtendedTriggerMessage; ``SignChargePointCertificate`` makes the point send a CSR."""
        return await self._trigger(charge_point_id, "ExtendedTriggerMessage", requested_message, connector_id)

    async def certificate_signed(
        self, charge_point_id: str, certificate_chain: str
    ) -> CertificateSignedStatus:
        """Send a signed certificate (PEM, then its CA certificates). Raises
        :class:`~ocpp_gateway.certificates.CertificateError` if it is not PEM (nothing is sent)."""
        load_certificates(certificate_chain)
        answer = await self.call(
            charge_point_id, "CertificateSigned", {"certificateChain": certificate_chain}
        )
        return CertificateSignedStatus(answer["status"])

    async def install_certificate(
        self, charge_point_id: str, certificate_type: CertificateUse | str, certificate: str
    ) -> CertificateStatus:
        """Install a root certificate (PEM) on a point; the command and its answer are recorded.

        Raises :class:`~ocpp_gateway.certificates.CertificateError` if ``certificate`` is not a PEM
        certificate (nothing is sent).
        """
        cert = load_certificates(certificate)[0]
        try:
            hash_data = certificate_hash_data(cert).to_ocpp()
        except CertificateError:
            hash_data = {"serialNumber": format(cert.serial_number, "x")}  # not a root: no issuer key here
        payload = {"certificateType": str(certificate_type), "certificate": certificate}
        record = CertificateCommandRecord(
            charge_point_id,
            "InstallCertificate",
            str(certificate_type),
            hash_data,
            "",
            self.clock(),
            certificate,
        )
        answer = await self._certificate_command(record, payload)
        return CertificateStatus(answer["status"])

    async def get_installed_certificate_ids(
        self, charge_point_id: str, certificate_type: CertificateUse | str
    ) -> InstalledCertificates:
        answer = await self.call(
            charge_point_id, "GetInstalledCertificateIds", {"certificateType": str(certificate_type)}
        )
        return InstalledCertificates(
            GetInstalledCertificateStatus(answer["status"]),
            tuple(CertificateHashData.from_ocpp(h) for h in answer.get("certificateHashData", [])),
        )

    async def delete_certificate(
        self, charge_point_id: str, hash_data: CertificateHashData
    ) -> DeleteCertificateStatus:
        """DeleteCertificate by hash data; the command and its answer are recorded."""
        record = CertificateCommandRecord(
            charge_point_id, "DeleteCertificate", None, hash_data.to_ocpp(), "", self.clock()
        )
        answer = await self._certificate_command(record, {"certificateHashData": hash_data.to_ocpp()})
        return DeleteCertificateStatus(answer["status"])

    async def delete_installed_certificate(
        self, charge_point_id: str, certificate_type: CertificateUse | str, certificate: str
    ) -> DeleteCertificateStatus:
        """Delete a certificate (PEM) we know, as OCTT TC_076 expects: GetInstalledCertificateIds
        first, to use the hash algorithm the point uses, then DeleteCertificate with that entry.

        ``NotFound`` without a DeleteCertificate when the point does not list it.
        """
        installed = await self.get_installed_certificate_ids(charge_point_id, certificate_type)
        cert = load_certificates(certificate)[0]
        for algorithm in dict.fromkeys(c.hash_algorithm for c in installed.certificates):
            entry = installed.find(certificate_hash_data(cert, hash_algorithm=algorithm))
            if entry is not None:
                return await self.delete_certificate(charge_point_id, entry)
        log.info("[%s] %s to delete is not installed", charge_point_id, certificate_type)
        return DeleteCertificateStatus.not_found

    async def _certificate_command(
        self, record: CertificateCommandRecord, payload: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            answer = await self.call(record.charge_point_id, record.action, payload)
        except GatewayError as e:
            self.storage.record_certificate_command(_with_status(record, f"NoAnswer: {e}"))
            self._schedule_commit()
            raise
        self.storage.record_certificate_command(_with_status(record, answer["status"]))
        self._schedule_commit()
        return answer

    async def get_log(
        self,
        charge_point_id: str,
        log_type: Log | str,
        remote_location: str,
        *,
        request_id: int | None = None,
        oldest: datetime | None = None,
        latest: datetime | None = None,
        retries: int | None = None,
        retry_interval_s: int | None = None,
    ) -> GetLogResult:
        """Ask for a log upload (``SecurityLog`` or ``DiagnosticsLog``) to ``remote_location``.

        The LogStatusNotifications that follow are recorded with the returned ``request_id``.
        """
        request_id = next(self._request_ids) if request_id is None else request_id
        log_parameters: dict[str, Any] = {"remoteLocation": remote_location}
        if oldest is not None:
            log_parameters["oldestTimestamp"] = format_datetime(oldest)
        if latest is not None:
            log_parameters["latestTimestamp"] = format_datetime(latest)
        payload: dict[str, Any] = {"logType": str(log_type), "requestId": request_id, "log": log_parameters}
        if retries is not None:
            payload["retries"] = retries
        if retry_interval_s is not None:
            payload["retryInterval"] = retry_interval_s
        answer = await self.call(charge_point_id, "GetLog", payload)
        return GetLogResult(LogStatus(answer["status"]), request_id, answer.get("filename"))

    async def signed_update_firmware(
        self,
        charge_point_id: str,
        location: str,
        retrieve_date_time: datetime,
        signing_certificate: str,
        signature: str,
        *,
        install_date_time: datetime | None = None,
        request_id: int | None = None,
        retries: int | None = None,
        retry_interval_s: int | None = None,
    ) -> SignedUpdateFirmwareResult:
        """Secure firmware update: the point checks ``signing_certificate`` (PEM) and the base64
        ``signature`` of the image at ``location``; SignedFirmwareStatusNotifications follow.

        Raises :class:`~ocpp_gateway.certificates.CertificateError` if the signing certificate is
        not PEM (nothing is sent).
        """
        load_certificates(signing_certificate)
        request_id = next(self._request_ids) if request_id is None else request_id
        firmware: dict[str, Any] = {
            "location": location,
            "retrieveDateTime": format_datetime(retrieve_date_time),
            "signingCertificate": signing_certificate,
            "signature": signature,
        }
        if install_date_time is not None:
            firmware["installDateTime"] = format_datetime(install_date_time)
        payload: dict[str, Any] = {"requestId": request_id, "firmware": firmware}
        if retries is not None:
            payload["retries"] = retries
        if retry_interval_s is not None:
            payload["retryInterval"] = retry_interval_s
        answer = await self.call(charge_point_id, "SignedUpdateFirmware", payload)
        status = UpdateFirmwareStatus(answer["status"])
        if status not in (UpdateFirmwareStatus.accepted, UpdateFirmwareStatus.accepted_canceled):
            log.warning("[%s] SignedUpdateFirmware %s (request %d)", charge_point_id, status, request_id)
        return SignedUpdateFirmwareResult(status, request_id)

    async def _issue_certificate(self, cp_id: str, request_id: int) -> None:
        """Sign an accepted CSR with the CA and deliver it with CertificateSigned; record each step."""
        ca = self.central.ca
        record = self.storage.certificate_request(request_id)
        if ca is None or record is None:
            return
        try:
            issued = await asyncio.to_thread(ca.sign, check_csr(record.csr, cp_id))
        except CertificateError as e:
            log.error("[%s] signing request %d failed: %s", cp_id, request_id, e.reason)
            self._certificate_step(cp_id, request_id, CertificateRequestStatus.FAILED, reason=e.reason)
            return
        log.info(
            "[%s] certificate %s issued for request %d, valid until %s",
            cp_id, issued.serial_hex, request_id, format_datetime(issued.not_after),
        )  # fmt: skip
        self.storage.update_certificate_request(
            request_id, CertificateRequestStatus.ISSUED, self.clock(), certificate=issued.pem,
            serial=issued.serial_hex, fingerprint_sha256=issued.fingerprint_sha256, issued_at=self.clock(),
            not_after=issued.not_after,
        )  # fmt: skip
        self._schedule_commit()
        try:
            answer = await self.certificate_signed(cp_id, issued.chain_pem)
        except GatewayError as e:
            log.warning("[%s] CertificateSigned for request %d not delivered: %s", cp_id, request_id, e)
            self._certificate_step(cp_id, request_id, CertificateRequestStatus.NOT_DELIVERED, reason=str(e))
            return
        if answer == CertificateSignedStatus.accepted:
            self._certificate_step(cp_id, request_id, CertificateRequestStatus.ACCEPTED)
        else:
            log.warning("[%s] point rejected certificate %s", cp_id, issued.serial_hex)
            self._certificate_step(cp_id, request_id, CertificateRequestStatus.REFUSED_BY_CHARGE_POINT)

    def _certificate_step(
        self, cp_id: str, request_id: int, status: CertificateRequestStatus, *, reason: str | None = None
    ) -> None:
        self.storage.update_certificate_request(request_id, status, self.clock(), reason=reason)
        self._schedule_commit()
        self._emit(
            GatewayEvent(
                "certificate", cp_id, "CertificateSigned", {"request_id": request_id, "status": status.value}
            )
        )

    # --- smart charging -------------------------------------------------------------------
    async def smart_charging_caps(self, charge_point_id: str) -> tuple[tuple[str, ...], int]:
        """``(accepted rate units, max periods)``, read once with GetConfiguration and remembered."""
        values = self.storage.config_values(charge_point_id)
        if (
            "ChargingScheduleMaxPeriods" not in values
            and "ChargingScheduleAllowedChargingRateUnit" not in values
        ):
            try:
                result = await self.get_configuration(charge_point_id, SMART_CHARGING_KEYS)
            except OcppError as e:
                log.warning("[%s] GetConfiguration failed (%s); assuming A and W", charge_point_id, e.code)
                result = ConfigurationResult((), ())
            values = {k.key: k.value for k in result.keys}
            # Remember absent keys too, so an old point is not asked again at every dispatch.
            missing = {k: "" for k in SMART_CHARGING_KEYS if k not in values}
            if missing:
                self.storage.set_config_values(charge_point_id, missing)
                self._schedule_commit()
        units = parse_rate_units(values.get("ChargingScheduleAllowedChargingRateUnit"))
        try:
            max_periods = max(1, int(values.get("ChargingScheduleMaxPeriods") or _DEFAULT_MAX_PERIODS))
        except ValueError:
            max_periods = _DEFAULT_MAX_PERIODS
        return units, max_periods

    def failsafe_limit_a(self, charge_point_id: str) -> float | None:
        """The point's failsafe limit [A per phase]: its own ``failsafe_current_a`` if it has one
        (never above the config's), else the config's; None if there is none."""
        limit_a = self.config.failsafe_current_a
        if limit_a is None:
            return None
        known = self.config.known(charge_point_id)
        if known is not None and known.failsafe_current_a is not None:
            limit_a = min(limit_a, known.failsafe_current_a)
        cap = self._failsafe_caps.get(charge_point_id)
        return limit_a if cap is None else min(limit_a, cap)

    def installed_failsafe_a(self, charge_point_id: str) -> float | None:
        """The failsafe limit [A] the point last accepted from us; before that (or after a
        restart of the service) the configured one, uncapped (what it may still hold)."""
        if charge_point_id in self._failsafe_installed:
            return self._failsafe_installed[charge_point_id]
        limit_a = self.config.failsafe_current_a
        known = self.config.known(charge_point_id)
        if limit_a is not None and known is not None and known.failsafe_current_a is not None:
            limit_a = min(limit_a, known.failsafe_current_a)
        return limit_a

    def set_failsafe_caps(self, caps_a: dict[str, float | None]) -> list[str]:
        """Cap points' failsafe limits [A] (None: no cap), e.g. while a grid operator's limit is
        below the site file's; a connected point whose failsafe changes gets it at once (a
        point offline gets it when it boots again). Returns the ids whose failsafe changed."""
        if self.config.failsafe_current_a is None:
            return []
        changed = []
        for cp_id, cap in caps_a.items():
            before = self.failsafe_limit_a(cp_id)
            if cap is None:
                self._failsafe_caps.pop(cp_id, None)
            else:
                self._failsafe_caps[cp_id] = float(cap)
            if self.failsafe_limit_a(cp_id) != before:
                changed.append(cp_id)
        for cp_id in changed:
            if self.is_connected(cp_id):
                self._spawn(self._install_failsafe_quietly(cp_id))
        return changed

    async def install_failsafe(self, charge_point_id: str) -> ChargingProfileStatus:
        """Install the conservative failsafe profile on connector 0: the point's own
        ``failsafe_current_a`` if it has one (never above the config's), else the config's."""
        limit_a = self.failsafe_limit_a(charge_point_id)
        if limit_a is None:
            raise GatewayError("failsafe_current_a is not configured")
        units, _ = await self.smart_charging_caps(charge_point_id)
        state = self.central.point(charge_point_id)
        profile = failsafe_profile(
            limit_a,
            purpose=self.config.failsafe_purpose,
            rate_unit="A" if "A" in units else "W",  # type: ignore[arg-type]
            phases=state.phases,
            voltage_v=self.config.voltage_v,
            profile_id=_FAILSAFE_PROFILE_ID,
            now=self.clock(),
        )
        status = await self.set_charging_profile(charge_point_id, 0, profile)
        if status != ChargingProfileStatus.accepted:
            log.warning("[%s] failsafe profile %s", charge_point_id, status.value)
        else:
            self._failsafe_installed[charge_point_id] = limit_a
        return status

    async def _install_failsafe_quietly(self, charge_point_id: str) -> None:
        try:
            status: str = (await self.install_failsafe(charge_point_id)).value
        except GatewayError as e:
            log.warning("[%s] failsafe profile not installed: %s", charge_point_id, e)
            status = f"error: {e}"
        self._emit(GatewayEvent("failsafe", charge_point_id, payload={"status": status}))

    async def dispatch_plan(
        self,
        charge_point_id: str,
        connector_id: int,
        plan: Sequence[tuple[datetime, float]],
        *,
        end: datetime,
        phases: int | None = None,
        verify: bool = True,
        also_default: bool = False,
    ) -> DispatchResult:
        """Send a per-interval current plan to a connector and check it took.

        Parameters
        ----------
        plan
            ``(interval start, per-phase limit [A])`` in time order, aware datetimes.
        end
            End of the last interval.
        phases
            Phases the EV charges on; default the point's.
        verify
            Read back GetCompositeSchedule and compare it with the plan.

        A TxProfile if a transaction runs on the connector, else a TxDefaultProfile; the plan is
        kept and re-sent as a TxProfile when a transaction starts there. ``also_default``: while a
        transaction runs, the connector's TxDefaultProfile gets the same plan too (even if the
        TxProfile is rejected), so an EV that plugs in after this one leaves inherits its
        capacity, not an older default.
        """
        self._plans[(charge_point_id, connector_id)] = (list(plan), end, phases)
        result = await self._dispatch(charge_point_id, connector_id, list(plan), end, phases, verify)
        if also_default and result.profile.purpose == "TxProfile":
            # Also when the TxProfile was rejected: a point whose transaction ended before its
            # StopTransaction reached us rejects a TxProfile for it, and then only its default
            # profile bounds what the next EV draws.
            try:
                copy = await self._dispatch(
                    charge_point_id, connector_id, list(plan), end, phases, False, default=True
                )
            except GatewayError as e:
                if result.status == ChargingProfileStatus.accepted:
                    raise
                log.warning("[%s] default copy of a rejected plan failed: %s", charge_point_id, e)
            else:
                result = replace(result, default_status=copy.status)
        return result

    async def _redispatch(self, charge_point_id: str, connector_id: int) -> None:
        plan, end, phases = self._plans[(charge_point_id, connector_id)]
        if end <= self.clock():
            del self._plans[(charge_point_id, connector_id)]
            return
        try:
            await self._dispatch(charge_point_id, connector_id, plan, end, phases, True)
        except GatewayError as e:
            log.warning("[%s] re-dispatch at transaction start failed: %s", charge_point_id, e)

    async def _dispatch(
        self,
        cp_id: str,
        connector_id: int,
        plan: list[tuple[datetime, float]],
        end: datetime,
        phases: int | None,
        verify: bool,
        *,
        default: bool = False,
    ) -> DispatchResult:
        state = self.central.point(cp_id)
        phases = phases or state.phases
        units, max_periods = await self.smart_charging_caps(cp_id)
        tx = None if default else self.storage.active_transaction(cp_id, connector_id)
        now = self.clock()
        profile = plan_to_profile(
            plan,
            end=end,
            now=now,
            phases=phases,
            voltage_v=self.config.voltage_v,
            rate_unit="A" if "A" in units else "W",
            max_periods=max_periods,
            purpose="TxProfile" if tx is not None else "TxDefaultProfile",
            transaction_id=tx.id if tx is not None else None,
            profile_id=_tx_profile_id(connector_id)
            if tx is not None
            else _tx_default_profile_id(connector_id),
            stack_level=self.config.dispatch_stack_level,
            # After the plan: the point's own failsafe, as when we are gone.
            fallback_limit_a=self.failsafe_limit_a(cp_id),
        )
        status = await self.set_charging_profile(cp_id, connector_id, profile)
        if status == ChargingProfileStatus.accepted and profile.purpose == "TxDefaultProfile":
            state.dispatched_default[connector_id] = (profile, now)
        if status != ChargingProfileStatus.accepted or default:
            return DispatchResult(status, profile)
        # The violation count is kept: a point re-sent its plan every interval must still be
        # caught ignoring it (samples within the grace period after a change are not counted).
        state.dispatched[connector_id] = (profile, now)
        if not verify or self.storage.config_values(cp_id).get("_composite_unsupported"):
            return DispatchResult(status, profile)
        return await self._verify(cp_id, connector_id, profile, phases, status)

    async def _verify(
        self,
        cp_id: str,
        connector_id: int,
        profile: ChargingProfile,
        phases: int,
        status: ChargingProfileStatus,
    ) -> DispatchResult:
        try:
            composite = await self.get_composite_schedule(cp_id, connector_id, 3600, rate_unit="A")
        except (NotSupportedAction, NotImplementedAction):
            self.storage.set_config_values(cp_id, {"_composite_unsupported": "1"})
            self._schedule_commit()
            return DispatchResult(status, profile)
        except OcppError as e:
            log.info("[%s] GetCompositeSchedule failed: %s", cp_id, e)
            return DispatchResult(status, profile)
        now = self.clock()
        v = self.config.voltage_v
        ours = limit_at(profile, now, voltage_v=v, phases=phases)
        theirs = composite.limit_a_at(now, voltage_v=v, phases=phases)
        if ours is None or theirs is None:
            return DispatchResult(status, profile, theirs, None)
        ok = theirs <= ours + self.config.compliance_tolerance_a
        if not ok:
            reason = (
                f"composite schedule {theirs:.1f} A above dispatched {ours:.1f} A on connector {connector_id}"
            )
            log.warning("[%s] non-compliant: %s", cp_id, reason)
            self.storage.set_compliance(cp_id, False, reason)
        elif self.is_compliant(cp_id) is None:
            self.storage.set_compliance(cp_id, True, None)
        self._schedule_commit()
        return DispatchResult(status, profile, theirs, ok)


def _with_status(record: CertificateCommandRecord, status: str) -> CertificateCommandRecord:
    return replace(record, status=status)
