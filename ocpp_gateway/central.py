"""What the central system does with each message a charge point sends. Synchronous, no I/O but
the store: :meth:`CentralSystem.handle` takes a schema-valid CALL and returns the answer payload,
or raises the :class:`~ocpp_gateway.errors.OcppError` to answer with.

Offline replays are expected, not exceptional (DOMAIN.md): a StartTransaction seen before gets
the same transaction id back, a StopTransaction for a transaction never seen is recorded as an
orphan stop, a second stop is ignored, a MeterValues sample seen before is stored once.

Security extension (whitepaper edition 3): SignCertificate is answered here, after the CSR checks
of :func:`~ocpp_gateway.certificates.check_csr`, and recorded; the signing itself and the
CertificateSigned that follows are the gateway's (asynchronous, after the answer is sent).
LogStatusNotification and SignedFirmwareStatusNotification are kept, with their ``requestId``,
in the notification history like the other status notifications; SecurityEventNotification in
the security events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ocpp_gateway.certificates import CertificateAuthority, CertificateError, check_csr, load_authority
from ocpp_gateway.config import GatewayConfig
from ocpp_gateway.dispatch import ChargingProfile, limit_at, measured_current_a
from ocpp_gateway.errors import NotImplementedAction, PropertyConstraintViolation, SecurityError
from ocpp_gateway.frames import Call, format_datetime, parse_datetime
from ocpp_gateway.states import (
    ConnectorStatus,
    TxAction,
    TxEvent,
    TxState,
    connector_transition_expected,
    transaction_step,
)
from ocpp_gateway.storage import (
    CertificateRequestStatus,
    ConnectorRecord,
    NotificationRecord,
    SecurityEventRecord,
    Storage,
)

__all__ = ["CentralSystem", "Clock", "PointState"]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

#: Status notifications that report a failure (logged as warnings; all are recorded).
_FAILURE_STATUSES = frozenset(
    {
        "DownloadFailed", "InstallationFailed", "InstallVerificationFailed", "InvalidSignature",
        "UploadFailed", "UploadFailure", "BadMessage", "PermissionDenied", "NotSupportedOperation",
    }
)  # fmt: skip


def _utcnow() -> datetime:
    return datetime.now(UTC)


class PointState:
    """What the gateway keeps in memory per charge point (small: thousands of these)."""

    __slots__ = (
        "dispatched",
        "dispatched_default",
        "id",
        "phases",
        "registration",
        "statuses",
        "violations",
    )

    def __init__(self, charge_point_id: str, phases: int) -> None:
        self.id = charge_point_id
        self.phases = phases
        self.registration: str | None = None
        self.statuses: dict[int, ConnectorStatus] | None = None  # loaded from the store on first use
        # connector id -> (profile accepted by the point, when it was accepted)
        self.dispatched: dict[int, tuple[ChargingProfile, datetime]] = {}
        #: Per connector, the last TxDefaultProfile it accepted from a plan and when (what an EV
        #: that plugs in there may draw).
        self.dispatched_default: dict[int, tuple[ChargingProfile, datetime]] = {}
        self.violations: dict[int, int] = {}


class CentralSystem:
    """The central system's answers to charge-point-initiated messages.

    Parameters
    ----------
    config
        Gateway configuration.
    storage
        Where everything is recorded.
    clock
        Returns the current aware UTC time (tests pass a fake).
    """

    def __init__(self, config: GatewayConfig, storage: Storage, *, clock: Clock = _utcnow) -> None:
        self.config = config
        self.storage = storage
        self.clock = clock
        self.points: dict[str, PointState] = {}
        self.data_transfer_handlers: dict[
            str, Callable[[str, str | None, str | None], tuple[str, str | None]]
        ] = {}
        self._handlers: dict[str, Callable[[PointState, dict[str, Any]], dict[str, Any]]] = {
            "BootNotification": self._boot_notification,
            "Heartbeat": self._heartbeat,
            "StatusNotification": self._status_notification,
            "Authorize": self._authorize,
            "StartTransaction": self._start_transaction,
            "StopTransaction": self._stop_transaction,
            "MeterValues": self._meter_values,
            "DataTransfer": self._data_transfer,
            "DiagnosticsStatusNotification": self._notification,
            "FirmwareStatusNotification": self._notification,
            "LogStatusNotification": self._notification,
            "SignedFirmwareStatusNotification": self._notification,
            "SecurityEventNotification": self._security_event,
            "SignCertificate": self._sign_certificate,
        }
        self._action = ""  # action being handled, for _notification
        #: Signs accepted CSRs; None when ``config`` names no CA files (every CSR is then refused).
        self.ca: CertificateAuthority | None = load_authority(
            config.ca_cert_path, config.ca_key_path, lifetime_days=config.certificate_lifetime_days
        )
        #: Accepted CSRs waiting to be signed by the gateway: charge point id -> request id.
        self.csr_pending: dict[str, int] = {}

    def point(self, charge_point_id: str) -> PointState:
        """The in-memory state of a point, created on first contact."""
        state = self.points.get(charge_point_id)
        if state is None:
            known = self.config.known(charge_point_id)
            state = PointState(charge_point_id, known.phases if known else 3)
            self.points[charge_point_id] = state
        return state

    def handle(self, charge_point_id: str, call: Call) -> dict[str, Any]:
        """The answer payload to a schema-valid CALL; raises :class:`OcppError` to refuse it."""
        state = self.point(charge_point_id)
        handler = self._handlers.get(call.action)
        if handler is None:
            raise NotImplementedAction(f"{call.action} is not handled")
        if state.registration == "Rejected" and call.action != "BootNotification":
            # Spec 4.2.1: a rejected point sends nothing but BootNotification.
            raise SecurityError("charge point is not accepted; send BootNotification")
        self._action = call.action
        return handler(state, call.payload)

    # --- core profile ----------------------------------------------------------------------
    def _boot_notification(self, state: PointState, p: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        known = self.config.known(state.id) is not None
        status = "Accepted" if known else self.config.unknown_policy
        state.registration = status
        self.storage.record_boot(
            state.id,
            vendor=p["chargePointVendor"],
            model=p["chargePointModel"],
            serial_number=p.get("chargePointSerialNumber") or p.get("chargeBoxSerialNumber"),
            firmware_version=p.get("firmwareVersion"),
            registration_status=status,
            at=now,
        )
        if not known:
            log.warning("[%s] BootNotification from unknown charge point: %s", state.id, status)
        return {
            "status": status,
            "currentTime": format_datetime(now),
            "interval": int(self.config.heartbeat_interval_s),
        }

    def _heartbeat(self, state: PointState, p: dict[str, Any]) -> dict[str, Any]:
        return {"currentTime": format_datetime(self.clock())}

    def _status_notification(self, state: PointState, p: dict[str, Any]) -> dict[str, Any]:
        connector_id = p["connectorId"]
        status = ConnectorStatus(p["status"])
        if state.statuses is None:
            state.statuses = {
                r.connector_id: ConnectorStatus(r.status) for r in self.storage.connectors(state.id)
            }
        old = state.statuses.get(connector_id)
        expected = connector_transition_expected(connector_id, old, status)
        if not expected:
            log.warning(
                "[%s] connector %d: %s -> %s is not a transition of the spec's table",
                state.id, connector_id, old, status,
            )  # fmt: skip
        state.statuses[connector_id] = status
        ts = parse_datetime(p["timestamp"]) if "timestamp" in p else self.clock()
        self.storage.record_status(
            ConnectorRecord(
                state.id, connector_id, status.value, p["errorCode"], p.get("info"),
                p.get("vendorErrorCode"), ts, expected,
            )
        )  # fmt: skip
        return {}

    def id_tag_info(self, id_tag: str, *, for_start: bool = False) -> dict[str, Any]:
        """The ``idTagInfo`` for a tag: store status, expiry, parent, concurrent use."""
        record = self.storage.id_tag(id_tag)
        if record is None:
            return {"status": "Accepted" if self.config.accept_unknown_id_tags else "Invalid"}
        info: dict[str, Any] = {"status": record.status}
        if record.expiry_date is not None:
            info["expiryDate"] = format_datetime(record.expiry_date)
            if record.status == "Accepted" and record.expiry_date <= self.clock():
                info["status"] = "Expired"
        if record.parent_id_tag is not None:
            info["parentIdTag"] = record.parent_id_tag
        if info["status"] == "Accepted" and not for_start and self.storage.active_transaction_for_tag(id_tag):
            info["status"] = "ConcurrentTx"
        return info

    def _authorize(self, state: PointState, p: dict[str, Any]) -> dict[str, Any]:
        return {"idTagInfo": self.id_tag_info(p["idTag"])}

    def _start_transaction(self, state: PointState, p: dict[str, Any]) -> dict[str, Any]:
        connector_id, id_tag, meter_start = p["connectorId"], p["idTag"], p["meterStart"]
        if connector_id < 1:
            raise PropertyConstraintViolation(
                "connectorId must be > 0 for a transaction", {"field": "connectorId"}
            )
        start = parse_datetime(p["timestamp"])
        replay = self.storage.find_start(state.id, connector_id, id_tag, start, meter_start)
        tx_state = TxState.UNKNOWN if replay is None else self.storage.transaction_state(state.id, replay.id)
        action, _ = transaction_step(tx_state, TxEvent.START)
        info = self.id_tag_info(id_tag, for_start=True)
        if action is TxAction.REPLAY_START:
            assert replay is not None
            log.info("[%s] StartTransaction replayed: transaction %d again", state.id, replay.id)
            return {"transactionId": replay.id, "idTagInfo": info}
        if info["status"] == "Accepted" and self.storage.active_transaction_for_tag(id_tag) is not None:
            info["status"] = "ConcurrentTx"
        tx_id = self.storage.create_transaction(
            state.id, connector_id, id_tag, start, meter_start, p.get("reservationId")
        )
        log.info(
            "[%s] transaction %d started on connector %d (%s)", state.id, tx_id, connector_id, info["status"]
        )
        return {"transactionId": tx_id, "idTagInfo": info}

    def _stop_transaction(self, state: PointState, p: dict[str, Any]) -> dict[str, Any]:
        tx_id, stop, meter_stop = p["transactionId"], parse_datetime(p["timestamp"]), p["meterStop"]
        id_tag, reason = p.get("idTag"), p.get("reason", "Local")
        action, _ = transaction_step(self.storage.transaction_state(state.id, tx_id), TxEvent.STOP)
        if action is TxAction.CLOSE:
            self.storage.close_transaction(
                state.id, tx_id, stop_time=stop, meter_stop_wh=meter_stop, reason=reason, id_tag=id_tag
            )
            tx = self.storage.transaction(tx_id)
            if tx is not None and tx.connector_id is not None:
                state.dispatched.pop(tx.connector_id, None)
                state.violations.pop(tx.connector_id, None)
            log.info("[%s] transaction %d stopped (%s)", state.id, tx_id, reason)
        elif action is TxAction.RECORD_ORPHAN_STOP:
            rec_id = self.storage.record_orphan_stop(
                state.id, tx_id, stop_time=stop, meter_stop_wh=meter_stop, reason=reason, id_tag=id_tag
            )
            log.warning(
                "[%s] StopTransaction for unknown transaction %d recorded as orphan %d",
                state.id,
                tx_id,
                rec_id,
            )
        else:
            log.info("[%s] StopTransaction for transaction %d replayed; ignored", state.id, tx_id)
        if p.get("transactionData"):
            self._store_meter_values(state, 0, tx_id, p["transactionData"], check=False)
        out: dict[str, Any] = {}
        if id_tag is not None:
            out["idTagInfo"] = self.id_tag_info(id_tag, for_start=True)
        return out

    def _meter_values(self, state: PointState, p: dict[str, Any]) -> dict[str, Any]:
        self._store_meter_values(state, p["connectorId"], p.get("transactionId"), p["meterValue"], check=True)
        return {}

    def _store_meter_values(
        self,
        state: PointState,
        connector_id: int,
        transaction_id: int | None,
        meter_values: list[dict[str, Any]],
        *,
        check: bool,
    ) -> None:
        replayed = 0
        for mv in meter_values:
            ts = parse_datetime(mv["timestamp"])
            sampled = mv["sampledValue"]
            replayed += len(sampled) - self.storage.add_meter_value(
                state.id, connector_id, transaction_id, ts, sampled
            )
            if check and state.dispatched:
                self._check_compliance(state, connector_id, ts, sampled)
        if replayed:
            log.info("[%s] %d replayed meter values ignored", state.id, replayed)

    def _check_compliance(
        self, state: PointState, connector_id: int, ts: datetime, sampled: list[dict[str, Any]]
    ) -> None:
        entry = state.dispatched.get(connector_id) or state.dispatched.get(0)
        if entry is None:
            return
        profile, accepted_at = entry
        if (ts - accepted_at).total_seconds() < self.config.compliance_grace_s:
            return
        v = self.config.voltage_v
        limit = limit_at(profile, ts, voltage_v=v, phases=state.phases)
        measured = measured_current_a(sampled, voltage_v=v, phases=state.phases)
        if limit is None or measured is None:
            return
        if measured > limit + self.config.compliance_tolerance_a:
            n = state.violations.get(connector_id, 0) + 1
            state.violations[connector_id] = n
            if n == self.config.compliance_violations:
                reason = f"connector {connector_id} draws {measured:.1f} A over a limit of {limit:.1f} A"
                log.warning("[%s] non-compliant: %s", state.id, reason)
                self.storage.set_compliance(state.id, False, reason)
        elif state.violations.get(connector_id):
            state.violations[connector_id] = 0

    def _data_transfer(self, state: PointState, p: dict[str, Any]) -> dict[str, Any]:
        self.storage.record_notification(NotificationRecord(state.id, "DataTransfer", p, self.clock()))
        handler = self.data_transfer_handlers.get(p["vendorId"])
        if handler is None:
            return {"status": "UnknownVendorId"}
        status, data = handler(state.id, p.get("messageId"), p.get("data"))
        return {"status": status} | ({"data": data} if data is not None else {})

    def _notification(self, state: PointState, p: dict[str, Any]) -> dict[str, Any]:
        self.storage.record_notification(NotificationRecord(state.id, self._action, p, self.clock()))
        if p.get("status") in _FAILURE_STATUSES:
            log.warning(
                "[%s] %s %s (request %s)", state.id, self._action, p["status"], p.get("requestId", "-")
            )
        return {}

    def _sign_certificate(self, state: PointState, p: dict[str, Any]) -> dict[str, Any]:
        csr = p["csr"]
        reason: str | None = None
        if self.ca is None:
            reason = "no certificate authority configured (ca_cert_path, ca_key_path)"
        else:
            try:
                check_csr(csr, state.id)
            except CertificateError as e:
                reason = e.reason
        status = CertificateRequestStatus.REJECTED if reason else CertificateRequestStatus.PENDING
        request_id = self.storage.record_certificate_request(state.id, csr, status, reason, self.clock())
        if reason is not None:
            log.warning("[%s] SignCertificate rejected: %s", state.id, reason)
            return {"status": "Rejected"}
        log.info("[%s] SignCertificate accepted (request %d)", state.id, request_id)
        self.csr_pending[state.id] = request_id
        return {"status": "Accepted"}

    def _security_event(self, state: PointState, p: dict[str, Any]) -> dict[str, Any]:
        self.storage.record_security_event(
            SecurityEventRecord(
                state.id, p["type"], p.get("techInfo"), parse_datetime(p["timestamp"]), "charge_point"
            )
        )
        log.warning("[%s] security event from charge point: %s", state.id, p["type"])
        return {}
