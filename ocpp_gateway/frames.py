"""OCPP-J 1.6 frames: parse, validate against the official JSON schemas, serialise. No I/O.

A frame is a JSON array: ``[2, id, action, payload]`` (CALL), ``[3, id, payload]`` (CALLRESULT),
``[4, id, errorCode, errorDescription, errorDetails]`` (CALLERROR).

:func:`parse` raises :class:`BadFrame` for anything else; ``BadFrame.reply`` says whether the
sender gets a CALLERROR back (a broken CALL does; a broken CALLRESULT or CALLERROR is dropped,
because answering an answer could make two peers loop). When the unique id cannot be read the
CALLERROR carries ``"-1"`` (the convention OCPP 2.0.1 made explicit).

Schemas are the OCA's, shipped with the ``ocpp`` package. They are compiled once with
``fastjsonschema``: the ``ocpp`` package's own ``jsonschema`` validation costs about 0.6 ms for a
four-value MeterValues on this machine, the compiled validator about 0.02 ms (an enum of strings
is compiled to one set lookup, not fastjsonschema's chain of comparisons: the 22 measurands of
every sampled value made that a third of the validation). Two deliberate deviations:
``multipleOf: 0.1`` is dropped (binary floats such as 21.4 fail it; we round limits ourselves),
and ``date-time`` accepts a missing UTC offset, which real firmware sends and we read as UTC.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from functools import partial
from json.encoder import c_make_encoder, encode_basestring
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
        msg = decode_json(text)
    except (ValueError, RecursionError):
        raise BadFrame(FormationViolation("message is not valid JSON")) from None
    if type(msg) is list and len(msg) == 4:  # the common case, a well-formed CALL, in one test
        type_id, unique_id, action, payload = msg
        if (
            type(type_id) is int
            and type_id == 2
            and type(unique_id) is str
            and len(unique_id) <= MAX_UNIQUE_ID_LENGTH
            and type(action) is str
            and type(payload) is dict
        ):
            return Call(unique_id, action, payload)
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


# --- JSON ------------------------------------------------------------------------------------
# For frames this small, ``json.loads`` and ``JSONEncoder.encode`` spend as long in their Python
# wrappers as in the C code (a Heartbeat: 3 us of which 1 us parsing, on the bench machine). These
# two call the stdlib's C scanner and encoder directly; anything unusual (surrounding whitespace,
# a broken frame) is left to ``json.loads``, so that it decides and raises as always.
_scan_once = json.decoder.JSONDecoder().scan_once


def decode_json(text: str) -> Any:
    """``json.loads(text)``."""
    try:
        value, end = _scan_once(text, 0)
    except StopIteration:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def _not_serializable(o: Any) -> Any:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


if c_make_encoder is not None:
    # markers None: no check for circular references (JSON that came from json is never circular);
    # then default, string encoder, indent, separators, sort_keys, skipkeys, allow_nan.
    _c_encoder = c_make_encoder(
        None, _not_serializable, encode_basestring, None, ":", ",", False, False, False
    )

    def encode_json(obj: Any) -> str:
        """Compact JSON, non-ASCII as is, no NaN: ``JSONEncoder(separators=(",", ":"),
        ensure_ascii=False, allow_nan=False).encode(obj)``."""
        return "".join(_c_encoder(obj, 0))

else:  # pragma: no cover - a Python without the _json accelerator
    encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode

_encode = encode_json
_encode_string = encode_basestring  # what ``encode_json`` does to a string


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
    """``serialize(CallResult(unique_id, payload))``, built directly (answers are mostly ``{}``)."""
    return f"[3,{_encode_string(unique_id)},{_encode(payload) if payload else '{}'}]"


def error_frame(unique_id: str, error: OcppError) -> CallError:
    """The CALLERROR frame reporting ``error``."""
    return CallError(unique_id, error.code, error.description, error.details)


# --- schema validation ------------------------------------------------------------------------

_SCHEMA_DIR = os.path.join(os.path.dirname(ocpp.__file__), "v16", "schemas")
# ISO 8601 with optional fraction and optional offset (Z or +hh:mm / +hhmm).
_DATETIME_RE = r"^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d(:\d\d(\.\d+)?)?([Zz]|[+-]\d\d:?\d\d)?$"
_FORMATS: dict[str, str] = {"date-time": _DATETIME_RE, "uri": r"^\S+$"}
_validators: dict[str, Callable[[Any], Any]] = {}


def _prepare(node: Any) -> Any:
    """The schema as we apply it: without ``multipleOf`` (see the module docstring), and without
    ``additionalProperties`` where the type is not ``object`` (the OCA's schemas put it on every
    enum; it can never apply to a string, so it only cost a test per field)."""
    if isinstance(node, dict):
        out = {k: _prepare(v) for k, v in node.items() if k != "multipleOf"}
        if isinstance(out.get("type"), str) and out["type"] != "object":
            out.pop("additionalProperties", None)
        return out
    if isinstance(node, list):
        return [_prepare(v) for v in node]
    return node


try:
    from fastjsonschema.draft04 import CodeGeneratorDraft04
    from fastjsonschema.ref_resolver import RefResolver
except ImportError:  # pragma: no cover - a fastjsonschema without these modules: plain compile
    CodeGeneratorDraft04 = None  # type: ignore[assignment,misc]


if CodeGeneratorDraft04 is not None:

    class _Draft04(CodeGeneratorDraft04):  # type: ignore[misc,valid-type]
        """fastjsonschema's draft-04 code, but an enum of strings is one set lookup (same errors)."""

        def generate_enum(self) -> None:
            enum = self._definition["enum"]
            if not (isinstance(enum, list) and enum and all(type(v) is str for v in enum)):
                return super().generate_enum()  # type: ignore[no-any-return]
            with self.l("if not (isinstance({variable}, str) and {variable} in {}):", repr(set(enum))):
                self.exc("{name} must be one of {}", self.e(enum), rule="enum")
            return None


def _compile(schema: dict[str, Any]) -> Callable[[Any], Any]:
    if CodeGeneratorDraft04 is None or "draft-04" not in schema.get("$schema", ""):
        return fastjsonschema.compile(schema, formats=_FORMATS, use_default=False)
    # What fastjsonschema.compile does, with our generator.
    resolver = RefResolver.from_schema(schema, handlers={}, store={})
    generator = _Draft04(schema, resolver=resolver, formats=_FORMATS, use_default=False)
    state = generator.global_state
    exec(generator.func_code, state)
    return partial(state[resolver.get_scope_name()], custom_formats=_FORMATS)


def _validator(schema_name: str) -> Callable[[Any], Any] | None:
    v = _validators.get(schema_name)
    if v is None:
        path = os.path.join(_SCHEMA_DIR, schema_name + ".json")
        try:
            with open(path, encoding="utf-8-sig") as f:
                schema = _prepare(json.load(f))
        except OSError:
            return None
        v = _validators[schema_name] = _compile(schema)
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
    if dt.tzinfo is not UTC:
        dt = dt.astimezone(UTC)
    # isoformat(timespec="milliseconds") with Z, in 60 % of its time (every Heartbeat answer has
    # one); %-formatting is twice as fast as an f-string with format specs here.
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031
        dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, dt.microsecond // 1000,
    )  # fmt: skip
