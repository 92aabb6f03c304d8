"""The OCPP-J protocol of one connection, without I/O (in the manner of h11 and websockets' protocol).

Feed each websocket message to :meth:`OcppProtocol.receive` and act on the event it returns; ask
:meth:`OcppProtocol.send_call`, :meth:`~OcppProtocol.send_result` and
:meth:`~OcppProtocol.send_error` for the text to send. The protocol tracks the one CALL we may have
in flight (OCPP-J 4.1.1: a sender waits for the answer before the next CALL) and matches answers to
it; an answer with any other id is dropped, as the spec says.

Events:

* :class:`CallReceived`: a well-formed, schema-valid CALL; the owner must answer it.
* :class:`ReplyNeeded`: a bad CALL; send ``text`` (the CALLERROR) and carry on.
* :class:`AnswerReceived`: the answer to our CALL (``payload`` or ``error`` set).
* :class:`Dropped`: nothing to do (a stray or broken answer); ``reason`` says why.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from ocpp_gateway.errors import OcppError, error_for_code
from ocpp_gateway.frames import (
    BadFrame,
    Call,
    CallError,
    error_frame,
    parse,
    serialize,
    serialize_result,
    validate_call,
    validate_result,
)

__all__ = ["AnswerReceived", "CallReceived", "Dropped", "Event", "OcppProtocol", "ReplyNeeded"]


@dataclass(frozen=True, slots=True)
class CallReceived:
    call: Call


@dataclass(frozen=True, slots=True)
class ReplyNeeded:
    text: str
    error: OcppError


@dataclass(frozen=True, slots=True)
class AnswerReceived:
    unique_id: str
    action: str
    payload: dict[str, Any] | None
    error: OcppError | None


@dataclass(frozen=True, slots=True)
class Dropped:
    reason: str


Event = CallReceived | ReplyNeeded | AnswerReceived | Dropped

# Unique ids only need to be unique per connection; one process-wide counter is cheaper than uuid4.
_ids = itertools.count(1)


class OcppProtocol:
    """OCPP-J state of one connection: the CALL in flight, if any."""

    __slots__ = ("pending_action", "pending_id")

    def __init__(self) -> None:
        self.pending_id: str | None = None
        self.pending_action: str | None = None

    def receive(self, data: str | bytes) -> Event:
        """Interpret one incoming websocket message."""
        try:
            frame = parse(data)
        except BadFrame as bad:
            if bad.reply:
                return ReplyNeeded(serialize(error_frame(bad.unique_id, bad.error)), bad.error)
            return Dropped(str(bad.error))
        if isinstance(frame, Call):
            try:
                validate_call(frame.action, frame.payload)
            except OcppError as e:
                return ReplyNeeded(serialize(error_frame(frame.unique_id, e)), e)
            return CallReceived(frame)
        if frame.unique_id != self.pending_id or self.pending_action is None:
            return Dropped(f"answer to unknown unique id {frame.unique_id!r}")
        action = self.pending_action
        self.pending_id = self.pending_action = None
        if isinstance(frame, CallError):
            return AnswerReceived(
                frame.unique_id, action, None, error_for_code(frame.code, frame.description, frame.details)
            )
        try:
            validate_result(action, frame.payload)
        except OcppError as e:
            e.description = f"invalid {action} answer: {e.description}"
            return AnswerReceived(frame.unique_id, action, None, e)
        return AnswerReceived(frame.unique_id, action, frame.payload, None)

    def send_call(self, action: str, payload: dict[str, Any]) -> tuple[str, str]:
        """``(unique_id, text)`` of a new CALL. Validates our own payload against the schema.

        Raises
        ------
        RuntimeError
            If a CALL is already in flight (the driver serialises calls).
        OcppError
            If the payload breaks the schema (a bug in the caller, never sent).
        """
        if self.pending_id is not None:
            raise RuntimeError(f"a CALL is in flight ({self.pending_action} {self.pending_id})")
        validate_call(action, payload, from_charge_point=False)
        unique_id = str(next(_ids))
        self.pending_id, self.pending_action = unique_id, action
        return unique_id, serialize(Call(unique_id, action, payload))

    def cancel_call(self) -> None:
        """Forget the CALL in flight (time-out); a late answer is then dropped."""
        self.pending_id = self.pending_action = None

    @staticmethod
    def send_result(unique_id: str, payload: dict[str, Any]) -> str:
        return serialize_result(unique_id, payload)

    @staticmethod
    def send_error(unique_id: str, error: OcppError) -> str:
        return serialize(error_frame(unique_id, error))
