"""OCPP-J 1.6 frames: parse, validate against the official JSON schemas, serialise. No I/O.

A frame is a JSON array: ``[2, id, action, payload]`` (CALL), ``[3, id, payload]`` (CALLRESULT),
``[4, id, errorCode, errorDescription, errorDetails]`` (CALLERROR).

:func:`parse` raises :class:`BadFrame` for anything else; ``BadFrame.reply`` says whether the
sender gets a CALLERROR back (a broken CALL does; a broken CALLRESULT or CALLERROR is dropped,
because answering an answer could make two peers loop). When the unique id cannot be read the
CALLERROR carries ``"-1"`` (the convention OCPP 2.0.1 made explicit).

Schemas are the OCA's, shipped with the ``ocpp`` package. They are compiled once with
``fastjsonschema``: the ``ocpp`` package's own ``jsonschema`` validation costs about 0.6 ms for a
four-value MeterValues on this machine, the compiled validator about 0.03 ms. Two deliberate
deviations: ``multipleOf: 0.1`` is dropped (binary floats such as 21.4 fail it; we round limits
ourselves), and ``date-time`` accepts a missing UTC offset, which real firmware sends and we read
as UTC.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

import fastjsonschema
import ocpp

from ocpp_gateway.errors import (
    FormationViolation,
    NotImplementedAction,
    NotSupportedAction,
    OccurenceConstraintViolation,
    OcppError,
    PropertyConstraintViolation,
    ProtocolError,
    TypeConstraintViolation,
)

__all__ = [
    "CP_ACTIONS",
    "CS_ACTIONS",
    "MAX_UNIQUE_ID_LENGTH",
    "BadFrame",
    "Call",
    "CallError",
    "CallResult",
    "MessageType",
    "format_datetime",
    "parse",
    "parse_datetime",
    "serialize",
    "validate_call",
    "validate_result",
]

#: OCPP-J 1.6 section 4.1.4: the unique id is a string of at most 36 characters.
MAX_UNIQUE_ID_LENGTH = 36

#: Actions a charge point may send to the central system that we handle (1.6 + security extension).
CP_ACTIONS = frozenset(
    {
        "Authorize",
        "BootNotification",
        "DataTransfer",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
        "Heartbeat",
        "MeterValues",
        "StartTransaction",
        "StatusNotification",
        "StopTransaction",
        "SecurityEventNotification",
        "LogStatusNotification",
        "SignCertificate",
        "SignedFirmwareStatusNotification",
    }
)
#: Actions the central system sends (commands; the last seven from the security extension).
CS_ACTIONS = frozenset(
    {
        "CancelReservation",
        "ChangeAvailability",
        "ChangeConfiguration",
        "ClearCache",
        "ClearChargingProfile",
        "DataTransfer",
        "GetCompositeSchedule",
        "GetConfiguration",
        "GetDiagnostics",
        "GetLocalListVersion",
        "RemoteStartTransaction",
        "RemoteStopTransaction",
        "ReserveNow",
        "Reset",
        "SendLocalList",
        "SetChargingProfile",
        "TriggerMessage",
        "UnlockConnector",
        "UpdateFirmware",
        "CertificateSigned",
        "DeleteCertificate",
        "ExtendedTriggerMessage",
        "GetInstalledCertificateIds",
        "GetLog",
        "InstallCertificate",
        "SignedUpdateFirmware",
    }
)
# Known OCPP 1.6 (+ security extension) actions we do not accept from a charge point (commands a
# central system sends): NotSupported rather than NotImplemented.
_KNOWN_UNSUPPORTED = CS_ACTIONS - {"DataTransfer"}


class MessageType(IntEnum):
    """OCPP-J message type ids."""

    CALL = 2
    CALLRESULT = 3
    CALLERROR = 4


@dataclass(frozen=True, slots=True)
class Call:
    """A request: ``[2, unique_id, action, payload]``."""

    unique_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallResult:
    """A successful answer: ``[3, unique_id, payload]``."""

    unique_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallError:
    """An error answer: ``[4, unique_id, code, description, details]``."""

    unique_id: str
    code: str
    description: str
    details: dict[str, Any]


Frame = Call | CallResult | CallError


class BadFrame(Exception):  # noqa: N818 - internal signal, not part of the error tree
    """A frame that is not valid OCPP-J.

    Attributes
    ----------
    error
        The OCPP error to report.
    unique_id
        The frame's unique id, or ``"-1"`` when it could not be read.
    reply
        True if a CALLERROR should be sent back; False if the frame is dropped.
    """

    def __init__(self, error: OcppError, unique_id: str = "-1", *, reply: bool = True) -> None:
        super().__init__(str(error))
        self.error = error
        self.unique_id = unique_id
        self.reply = reply


def parse(text: str | bytes) -> Frame:
    """Parse one websocket message into a frame; raise :class:`BadFrame` if it is not one.

    Only the frame structure is checked here, not the payload (see :func:`validate_call`).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise BadFrame(FormationViolation("message is not UTF-8")) from None
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        raise BadFrame(FormationViolation("message is not valid JSON")) from None
    if not isinstance(msg, list) or not msg:
        raise BadFrame(FormationViolation("message is not a non-empty JSON array"))
    type_id = msg[0]
    unique_id = msg[1] if len(msg) > 1 and isinstance(msg[1], str) else None
    # bool is an int in Python; True must not pass for a CALLRESULT-less [1, ...]
    if not isinstance(type_id, int) or isinstance(type_id, bool) or type_id not in (2, 3, 4):
        raise BadFrame(
            PropertyConstraintViolation(f"MessageTypeId {type_id!r} is not 2, 3 or 4"),
            _reply_id(unique_id),
        )
    if type_id == MessageType.CALL:
        return _parse_call(msg, unique_id)
    if unique_id is None or len(unique_id) > MAX_UNIQUE_ID_LENGTH:
        raise BadFrame(FormationViolation("answer without a valid unique id"), reply=False)
    if type_id == MessageType.CALLRESULT:
        if len(msg) != 3 or not isinstance(msg[2], dict):
            raise BadFrame(FormationViolation("CALLRESULT is not [3, id, {payload}]"), unique_id, reply=False)
        return CallResult(unique_id, msg[2])
    # Some firmware omits errorDetails; accept four elements.
    if len(msg) not in (4, 5) or not isinstance(msg[2], str) or not isinstance(msg[3], str):
        raise BadFrame(
            FormationViolation("CALLERROR is not [4, id, code, description, {details}]"),
            unique_id,
            reply=False,
        )
    details = msg[4] if len(msg) == 5 and isinstance(msg[4], dict) else {}
    return CallError(unique_id, msg[2], msg[3], details)


def _reply_id(unique_id: str | None) -> str:
    if unique_id is None or len(unique_id) > MAX_UNIQUE_ID_LENGTH:
        return "-1"
    return unique_id


def _parse_call(msg: list[Any], unique_id: str | None) -> Call:
    if unique_id is None or len(unique_id) > MAX_UNIQUE_ID_LENGTH:
        raise BadFrame(
            FormationViolation(f"unique id must be a string of at most {MAX_UNIQUE_ID_LENGTH} chars")
        )
    if len(msg) < 4:
        raise BadFrame(ProtocolError("CALL is incomplete: [2, id, action, {payload}]"), unique_id)
    if len(msg) > 4:
        raise BadFrame(FormationViolation("CALL has more than 4 elements"), unique_id)
    action, payload = msg[2], msg[3]
    if not isinstance(action, str):
        raise BadFrame(FormationViolation("action is not a string"), unique_id)
    if not isinstance(payload, dict):
        raise BadFrame(FormationViolation("payload is not a JSON object"), unique_id)
    return Call(unique_id, action, payload)


# One encoder for every frame: ``json.dumps`` with options builds a new encoder per call.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def serialize(frame: Frame) -> str:
    """The compact JSON text of a frame."""
    if isinstance(frame, Call):
        msg: list[Any] = [2, frame.unique_id, frame.action, frame.payload]
    elif isinstance(frame, CallResult):
        msg = [3, frame.unique_id, frame.payload]
    else:
        msg = [4, frame.unique_id, frame.code, frame.description, frame.details]
    return _encode(msg)


def serialize_result(unique_id: str, payload: dict[str, Any]) -> str:
    """``serialize(CallResult(unique_id, payload))`` without the intermediate frame."""
    return _encode([3, unique_id, payload])


def error_frame(unique_id: str, error: OcppError) -> CallError:
    """The CALLERROR frame reporting ``error``."""
    return CallError(unique_id, error.code, error.description, error.details)


# --- schema validation ------------------------------------------------------------------------

_SCHEMA_DIR = os.path.join(os.path.dirname(ocpp.__file__), "v16", "schemas")
# ISO 8601 with optional fraction and optional offset (Z or +hh:mm / +hhmm).
_DATETIME_RE = r"^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d(:\d\d(\.\d+)?)?([Zz]|[+-]\d\d:?\d\d)?$"
_validators: dict[str, Callable[[Any], Any]] = {}


def _strip_multiple_of(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_multiple_of(v) for k, v in node.items() if k != "multipleOf"}
    if isinstance(node, list):
        return [_strip_multiple_of(v) for v in node]
    return node


def _validator(schema_name: str) -> Callable[[Any], Any] | None:
    v = _validators.get(schema_name)
    if v is None:
        path = os.path.join(_SCHEMA_DIR, schema_name + ".json")
        try:
            with open(path, encoding="utf-8-sig") as f:
                schema = _strip_multiple_of(json.load(f))
        except OSError:
            return None
        v = fastjsonschema.compile(
            schema,
            formats={"date-time": _DATETIME_RE, "uri": r"^\S+$"},
            use_default=False,
        )
        _validators[schema_name] = v
    return v


_RULE_ERRORS: dict[str, type[OcppError]] = {
    "type": TypeConstraintViolation,
    "maxLength": TypeConstraintViolation,
    "minLength": TypeConstraintViolation,
    "format": TypeConstraintViolation,
    "required": OccurenceConstraintViolation,
    "minItems": OccurenceConstraintViolation,
    "maxItems": OccurenceConstraintViolation,
    "uniqueItems": OccurenceConstraintViolation,
    "additionalProperties": FormationViolation,
    "enum": PropertyConstraintViolation,
    "minimum": PropertyConstraintViolation,
    "maximum": PropertyConstraintViolation,
    "exclusiveMinimum": PropertyConstraintViolation,
    "exclusiveMaximum": PropertyConstraintViolation,
    "pattern": PropertyConstraintViolation,
}


def _check(schema_name: str, payload: dict[str, Any]) -> None:
    validator = _validator(schema_name)
    if validator is None:
        raise NotImplementedAction(f"no schema for {schema_name}")
    try:
        validator(payload)
    except fastjsonschema.JsonSchemaValueException as e:
        cls = _RULE_ERRORS.get(e.rule or "", FormationViolation)
        field = (e.name or "data").removeprefix("data").lstrip(".") or "payload"
        raise cls(e.message.removeprefix("data.").removeprefix("data "), {"field": field}) from None


def validate_call(action: str, payload: dict[str, Any], *, from_charge_point: bool = True) -> None:
    """Check a CALL payload against its schema; raise the :class:`OcppError` OCPP-J prescribes.

    With ``from_charge_point`` an action the central system does not accept from a charge point
    raises :class:`NotSupportedAction` (a known OCPP action) or :class:`NotImplementedAction`.
    """
    if from_charge_point and action not in CP_ACTIONS:
        if action in _KNOWN_UNSUPPORTED:
            raise NotSupportedAction(f"{action} is not accepted by a central system")
        raise NotImplementedAction(f"unknown action {action[:64]!r}")
    _check(action, payload)


def validate_result(action: str, payload: dict[str, Any]) -> None:
    """Check a CALLRESULT payload (the answer to ``action``) against its schema."""
    _check(action + "Response", payload)


# --- date-time ---------------------------------------------------------------------------------


def parse_datetime(text: str) -> datetime:
    """Parse an OCPP date-time into an aware UTC datetime (no offset is read as UTC).

    Raises :class:`TypeConstraintViolation` if it is not a date-time.
    """
    try:
        dt = datetime.fromisoformat(text.replace("z", "Z"))
    except (ValueError, TypeError, AttributeError):
        raise TypeConstraintViolation(f"not an ISO 8601 date-time: {str(text)[:40]!r}") from None
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def format_datetime(dt: datetime) -> str:
    """An aware datetime as OCPP wants it: UTC, ``Z`` suffix, milliseconds."""
    if dt.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    text = dt.astimezone(UTC).isoformat(timespec="milliseconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text
