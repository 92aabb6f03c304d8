"""Gateway configuration: one frozen dataclass, validated at construction."""

from __future__ import annotations

import math
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from ocpp_gateway.errors import ConfigError

__all__ = ["CHARGE_POINT_ID_RE", "GatewayConfig", "KnownChargePoint"]

#: What we accept as a charge point id in ``/ocpp/{id}``: printable, no slash, at most 48 chars.
CHARGE_POINT_ID_RE = re.compile(r"^[A-Za-z0-9._:\-+@#*~!$&'()=,;]{1,48}$")

RegistrationPolicy = Literal["Accepted", "Pending", "Rejected"]
FailsafePurpose = Literal["TxDefaultProfile", "ChargePointMaxProfile"]


@dataclass(frozen=True, slots=True)
class KnownChargePoint:
    """A charge point the operator registered (a site-file entry).

    Parameters
    ----------
    id
        Charge point id, as in ``/ocpp/{id}``.
    password_hash
        :func:`ocpp_gateway.security.hash_password` of its password, or None (no Basic auth).
    phases
        Phases wired to the point, 1 or 3.
    max_current_a
        Per-phase maximum of the point [A], or None if unknown.
    failsafe_current_a
        Per-phase limit of this point's failsafe profile [A], at most ``GatewayConfig``'s;
        None: ``GatewayConfig.failsafe_current_a``. The service sets it so that the site's
        limits hold with every point at its failsafe (``models.failsafe``).
    """

    id: str
    password_hash: str | None = None
    phases: int = 3
    max_current_a: float | None = None
    failsafe_current_a: float | None = None

    def __post_init__(self) -> None:
        if not CHARGE_POINT_ID_RE.match(self.id):
            raise ConfigError("charge_points.id", f"invalid charge point id {self.id!r}")
        a = self.failsafe_current_a
        if a is not None and not (isinstance(a, int | float) and 0 <= a < 1000):
            raise ConfigError(
                f"charge_points[{self.id}].failsafe_current_a", f"must be in [0, 1000) A, got {a!r}"
            )
        if self.phases not in (1, 3):
            raise ConfigError(f"charge_points[{self.id}].phases", f"must be 1 or 3, got {self.phases}")
        if self.max_current_a is not None and not (
            self.max_current_a > 0 and math.isfinite(self.max_current_a)
        ):
            raise ConfigError(f"charge_points[{self.id}].max_current_a", "must be a positive number")


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the central system is told by its operator.

    Parameters
    ----------
    charge_points
        The known charge points; any other id is unknown.
    unknown_policy
        BootNotification answer for an unknown point: ``Accepted``, ``Pending`` or ``Rejected``.
        (An unknown point only gets that far if ``allow_profile_0`` lets it connect.)
    allow_profile_0
        Let points without a stored password connect without credentials (a warning is logged).
    heartbeat_interval_s
        Interval given in the BootNotification answer [s].
    voltage_v
        Phase-to-neutral voltage used to convert A and W [V].
    failsafe_current_a
        Per-phase limit of the failsafe profile installed at boot [A]; None installs none.
    failsafe_purpose
        ``TxDefaultProfile`` (default: stack level 0, so dispatched profiles override it) or
        ``ChargePointMaxProfile`` (caps everything, dispatched profiles included).
    dispatch_stack_level
        Stack level of dispatched TxProfile / TxDefaultProfile.
    call_timeout_s
        Time to wait for a charge point's answer to a command [s].
    max_frame_bytes
        Largest websocket message accepted; bigger ones close the connection with 1009 [bytes].
    rate_limit_per_s, rate_limit_burst
        Token bucket for messages from one point [messages/s, messages]. Beyond it the gateway
        stops reading that point's socket until a token is free (TCP back-pressure, nothing lost).
    ping_interval_s, ping_timeout_s
        Websocket keep-alive [s]; None disables.
    ssl_context
        Server TLS context (security profile 2; with ``verify_mode = CERT_REQUIRED`` profile 3).
    client_cert_must_match_id
        With mutual TLS: the client certificate's common name must be the charge point id.
    accept_unknown_id_tags
        Authorize id tags that are not in the store (``Accepted``) instead of ``Invalid``.
    compliance_tolerance_a, compliance_grace_s, compliance_violations
        A point is non-compliant after ``compliance_violations`` consecutive meter samples more than
        ``compliance_tolerance_a`` above its limit, ignoring samples within ``compliance_grace_s``
        of a new profile [A, s, count].
    freeze_gc
        Move the objects of long-lived connections out of the cyclic garbage collector's reach
        (``gc.freeze()``) after the number of connections grew: with thousands of points a full
        collection otherwise stops the process for hundreds of milliseconds now and then (p99
        latency). The gateway unfreezes every half hour and when many connections went away, so
        that cyclic garbage among frozen objects is reclaimed then. Process-wide; off for
        embedders that manage the collector themselves.
    lockout_failures, lockout_window_s, lockout_s, lockout_max_s
        After ``lockout_failures`` failed authentications for one charge point id within
        ``lockout_window_s``, its handshakes are refused (401, credentials not checked) for
        ``lockout_s``; each lockout that follows within ``lockout_max_s`` of the last doubles, up
        to ``lockout_max_s``. A successful login resets the count. 0 failures disables
        [count, s, s, s]. See :class:`~ocpp_gateway.security.HandshakeGuard`.
    ip_lockout_failures, ip_lockout_window_s
        The same per remote address (IPv6: per /64), over all ids, with the same lock times
        [count, s]. 0 disables; do so where many points share one NAT address.
    handshake_rate_per_s, handshake_burst
        Token bucket of new connections per remote address [connections/s, connections]; beyond
        it the handshake gets 429 with ``Retry-After``. The default burst takes the boot storm of
        a 5,000-point fleet behind one address. A rate of 0 disables.
    handshake_max_tracked
        At most this many ids or addresses are tracked in each table of the lockouts and the
        rate limit (old and expired entries go first) [count].
    ca_cert_path, ca_key_path
        PEM files of the certificate authority that signs charge point certificates (security
        extension, SignCertificate): the CA certificate (then any parents) and its unencrypted
        key. Both or neither; without them every CSR is answered Rejected.
    certificate_lifetime_days
        Validity of a certificate the CA issues [days]; never beyond the CA's own.
    """

    charge_points: tuple[KnownChargePoint, ...] = ()
    unknown_policy: RegistrationPolicy = "Pending"
    allow_profile_0: bool = False
    heartbeat_interval_s: int = 300
    voltage_v: float = 230.0
    failsafe_current_a: float | None = 6.0
    failsafe_purpose: FailsafePurpose = "TxDefaultProfile"
    dispatch_stack_level: int = 1
    call_timeout_s: float = 30.0
    max_frame_bytes: int = 65536
    rate_limit_per_s: float = 20.0
    rate_limit_burst: int = 60
    ping_interval_s: float | None = 60.0
    ping_timeout_s: float | None = 30.0
    ssl_context: ssl.SSLContext | None = None
    client_cert_must_match_id: bool = True
    accept_unknown_id_tags: bool = False
    compliance_tolerance_a: float = 1.0
    compliance_grace_s: float = 30.0
    compliance_violations: int = 3
    freeze_gc: bool = True
    lockout_failures: int = 5
    lockout_window_s: float = 60.0
    lockout_s: float = 300.0
    lockout_max_s: float = 3600.0
    ip_lockout_failures: int = 20
    ip_lockout_window_s: float = 60.0
    handshake_rate_per_s: float = 100.0
    handshake_burst: int = 5000
    handshake_max_tracked: int = 10_000
    ca_cert_path: str | os.PathLike[str] | None = None
    ca_key_path: str | os.PathLike[str] | None = None
    certificate_lifetime_days: int = 365
    _known: Mapping[str, KnownChargePoint] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        known = {cp.id: cp for cp in self.charge_points}
        if len(known) != len(self.charge_points):
            raise ConfigError("charge_points", "duplicate charge point id")
        object.__setattr__(self, "_known", MappingProxyType(known))
        if self.unknown_policy not in ("Accepted", "Pending", "Rejected"):
            raise ConfigError(
                "unknown_policy", f"must be Accepted, Pending or Rejected, got {self.unknown_policy!r}"
            )
        if self.failsafe_purpose not in ("TxDefaultProfile", "ChargePointMaxProfile"):
            raise ConfigError("failsafe_purpose", f"invalid {self.failsafe_purpose!r}")
        positive = {
            "heartbeat_interval_s": self.heartbeat_interval_s,
            "voltage_v": self.voltage_v,
            "call_timeout_s": self.call_timeout_s,
            "max_frame_bytes": self.max_frame_bytes,
            "rate_limit_per_s": self.rate_limit_per_s,
            "rate_limit_burst": self.rate_limit_burst,
            "compliance_violations": self.compliance_violations,
        }
        for name, value in positive.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(name, f"must be a positive number, got {value!r}")
        if self.failsafe_current_a is not None and not (0 <= self.failsafe_current_a < 1000):
            raise ConfigError("failsafe_current_a", f"must be in [0, 1000) A, got {self.failsafe_current_a}")
        if self.dispatch_stack_level < 1 and self.failsafe_purpose == "TxDefaultProfile":
            raise ConfigError("dispatch_stack_level", "must be above the failsafe's stack level 0")
        self._check_handshake_limits()
        if (self.ca_cert_path is None) != (self.ca_key_path is None):
            raise ConfigError("ca_cert_path", "ca_cert_path and ca_key_path go together")
        days = self.certificate_lifetime_days
        if not isinstance(days, int) or isinstance(days, bool) or days < 1:
            raise ConfigError("certificate_lifetime_days", f"must be a whole number >= 1, got {days!r}")

    def _check_handshake_limits(self) -> None:
        least = {"lockout_failures": 0, "ip_lockout_failures": 0}
        least |= {"handshake_burst": 1, "handshake_max_tracked": 1}
        for name, low in least.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(name, f"must be a whole number >= {low}, got {value!r}")
        times = ("lockout_window_s", "lockout_s", "lockout_max_s", "ip_lockout_window_s")
        for name in (*times, "handshake_rate_per_s"):
            value = getattr(self, name)
            ok = isinstance(value, int | float) and math.isfinite(value)
            zero_ok = name == "handshake_rate_per_s"
            if not ok or value < 0 or (value == 0 and not zero_ok):
                raise ConfigError(name, f"must be a positive number{' or 0' * zero_ok}, got {value!r}")
        if self.lockout_max_s < self.lockout_s:
            raise ConfigError("lockout_max_s", f"must be at least lockout_s = {self.lockout_s}")

    def known(self, charge_point_id: str) -> KnownChargePoint | None:
        """The registered point with this id, or None."""
        return self._known.get(charge_point_id)
