"""Exceptions of the ``ocpp_gateway`` package.

Tree::

    GatewayError
    ├── OcppError                     an OCPP-J CALLERROR; ``code`` is its wire code
    │   ├── NotImplementedAction      NotImplemented: the action is not known
    │   ├── NotSupportedAction        NotSupported: the action is known but not supported here
    │   ├── InternalError             InternalError
    │   ├── ProtocolError             ProtocolError: the frame is incomplete
    │   ├── SecurityError             SecurityError
    │   ├── FormationViolation        FormationViolation: not JSON, or not the PDU structure
    │   ├── PropertyConstraintViolation   a field holds an invalid value
    │   ├── OccurenceConstraintViolation  a field occurs too often or not at all (sic, OCPP 1.6 spelling)
    │   ├── TypeConstraintViolation   a field has the wrong data type (or is too long)
    │   └── GenericError              anything else, and every code a charge point invents
    ├── CommandError                  a command to a charge point could not complete
    │   ├── NotConnected              the charge point has no live connection
    │   ├── CallTimeout               no answer within the call time-out
    │   └── ConnectionLost            the connection closed or was replaced while waiting
    ├── ConfigError                   invalid gateway configuration (``field`` names it)
    ├── PlanError                     a current plan handed to dispatch makes no sense
    ├── CertificateError              a certificate, CSR or key that cannot be used (``reason``);
    │                                 defined in :mod:`ocpp_gateway.certificates`
    └── StorageError                  the database is unusable (wrong schema version, ...)

Class names follow the OCPP wire codes, not the ``...Error`` convention.

An :class:`OcppError` is raised in two directions: the protocol core raises it when a frame from a
charge point is bad (and turns it into the CALLERROR it sends back), and a command raises it when a
charge point answers with a CALLERROR (``from_charge_point`` is then true).
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "CallTimeout",
    "CommandError",
    "ConfigError",
    "ConnectionLost",
    "FormationViolation",
    "GatewayError",
    "GenericError",
    "InternalError",
    "NotConnected",
    "NotImplementedAction",
    "NotSupportedAction",
    "OccurenceConstraintViolation",
    "OcppError",
    "PlanError",
    "PropertyConstraintViolation",
    "ProtocolError",
    "SecurityError",
    "StorageError",
    "TypeConstraintViolation",
    "error_for_code",
]


class GatewayError(Exception):
    """Base of every error raised by :mod:`ocpp_gateway`."""


class OcppError(GatewayError):
    """An OCPP-J error; :attr:`code` is the ``errorCode`` of its CALLERROR frame.

    Parameters
    ----------
    description
        Free text for the ``errorDescription`` field.
    details
        JSON object for the ``errorDetails`` field.
    from_charge_point
        True when a charge point sent this error (answer to one of our commands).
    """

    code: ClassVar[str] = "GenericError"

    def __init__(
        self, description: str = "", details: dict[str, Any] | None = None, *, from_charge_point: bool = False
    ) -> None:
        super().__init__(f"{self.code}: {description}" if description else self.code)
        self.description = description
        self.details: dict[str, Any] = details if details is not None else {}
        self.from_charge_point = from_charge_point


class NotImplementedAction(OcppError):  # noqa: N818 - named after the wire code / the event
    """The action is not known by the receiver."""

    code = "NotImplemented"


class NotSupportedAction(OcppError):  # noqa: N818 - named after the wire code / the event
    """The action is known but not supported by the receiver."""

    code = "NotSupported"


class InternalError(OcppError):
    """The receiver failed internally while handling the action."""

    code = "InternalError"


class ProtocolError(OcppError):
    """The frame or its payload is incomplete."""

    code = "ProtocolError"


class SecurityError(OcppError):
    """A security issue prevented the action."""

    code = "SecurityError"


class FormationViolation(OcppError):  # noqa: N818 - named after the wire code / the event
    """Not JSON, or not the PDU structure of the action (OCPP 1.6 spelling of FormatViolation)."""

    code = "FormationViolation"


class PropertyConstraintViolation(OcppError):  # noqa: N818 - named after the wire code / the event
    """A field holds an invalid value (out of range, not in the enumeration, ...)."""

    code = "PropertyConstraintViolation"


class OccurenceConstraintViolation(OcppError):  # noqa: N818 - named after the wire code / the event
    """A field occurs too often or not at all. The misspelling is the OCPP 1.6 wire code."""

    code = "OccurenceConstraintViolation"


class TypeConstraintViolation(OcppError):  # noqa: N818 - named after the wire code / the event
    """A field has the wrong data type (``"somestring": 12``), or a string is too long."""

    code = "TypeConstraintViolation"


class GenericError(OcppError):
    """Any other error; also stands for error codes a charge point invents (``code`` keeps them)."""

    code = "GenericError"


_BY_CODE: dict[str, type[OcppError]] = {
    cls.code: cls
    for cls in (
        NotImplementedAction,
        NotSupportedAction,
        InternalError,
        ProtocolError,
        SecurityError,
        FormationViolation,
        PropertyConstraintViolation,
        OccurenceConstraintViolation,
        TypeConstraintViolation,
        GenericError,
    )
}
# Spellings that OCPP 2.x (and some 1.6 firmware) use for the same errors.
_BY_CODE["FormatViolation"] = FormationViolation
_BY_CODE["OccurrenceConstraintViolation"] = OccurenceConstraintViolation


def error_for_code(code: str, description: str = "", details: Any = None) -> OcppError:
    """The :class:`OcppError` for a CALLERROR received from a charge point.

    An unknown ``code`` becomes a :class:`GenericError` whose instance ``code`` keeps the wire text.
    """
    cls = _BY_CODE.get(code, GenericError)
    err = cls(description, details if isinstance(details, dict) else {}, from_charge_point=True)
    if cls is GenericError and code != GenericError.code:
        err.code = code  # type: ignore[misc]  # keep what the point sent
    return err


class CommandError(GatewayError):
    """A command to a charge point could not complete (no answer, not connected, ...)."""

    def __init__(self, charge_point_id: str, message: str) -> None:
        super().__init__(f"{charge_point_id}: {message}")
        self.charge_point_id = charge_point_id


class NotConnected(CommandError):  # noqa: N818 - named after the wire code / the event
    """The charge point has no live connection."""


class CallTimeout(CommandError):  # noqa: N818 - named after the wire code / the event
    """The charge point did not answer within the call time-out."""


class ConnectionLost(CommandError):  # noqa: N818 - named after the wire code / the event
    """The connection closed, or a new connection replaced it, while a call waited for its answer."""


class ConfigError(GatewayError, ValueError):
    """Invalid gateway configuration; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class PlanError(GatewayError, ValueError):
    """A current plan that cannot become a charging profile; ``field`` names the offending value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class StorageError(GatewayError, RuntimeError):
    """The database cannot be used (newer schema than this code knows, corrupt file, ...)."""
