"""OCPP 1.6J central system for noxblock: every core and smart-charging message, persistence,
security profiles 0-3 and the security extension (certificates, signed firmware, security log),
and verified smart-charging dispatch.

It knows nothing of the optimiser: plans come in as plain ``(start, limit_a)`` lists.

Layers, from the wire inwards: :mod:`~ocpp_gateway.server` (the only websockets code),
:mod:`~ocpp_gateway.gateway` (connections, commands, dispatch; asyncio), :mod:`~ocpp_gateway.protocol`
and :mod:`~ocpp_gateway.frames` (OCPP-J without I/O), :mod:`~ocpp_gateway.central` (answers to
charge points), :mod:`~ocpp_gateway.states` (state tables), :mod:`~ocpp_gateway.dispatch` (plans to
profiles), :mod:`~ocpp_gateway.certificates` (CA, CSR checks, certificate hash data),
:mod:`~ocpp_gateway.storage` (SQLite).
"""

from ocpp_gateway.certificates import CertificateAuthority, CertificateError, CertificateHashData
from ocpp_gateway.config import GatewayConfig, KnownChargePoint
from ocpp_gateway.dispatch import ChargingProfile, SchedulePeriod, failsafe_profile, plan_to_profile
from ocpp_gateway.errors import (
    CallTimeout,
    CommandError,
    ConfigError,
    ConnectionLost,
    GatewayError,
    NotConnected,
    OcppError,
    PlanError,
    StorageError,
)
from ocpp_gateway.gateway import (
    CompositeSchedule,
    ConfigurationResult,
    DispatchResult,
    Gateway,
    GatewayEvent,
    GetLogResult,
    InstalledCertificates,
    SignedUpdateFirmwareResult,
)
from ocpp_gateway.security import hash_password, verify_password
from ocpp_gateway.storage import IdTagRecord, SqliteStorage, Storage

__all__ = [
    "CallTimeout",
    "CertificateAuthority",
    "CertificateError",
    "CertificateHashData",
    "ChargingProfile",
    "CommandError",
    "CompositeSchedule",
    "ConfigError",
    "ConfigurationResult",
    "ConnectionLost",
    "DispatchResult",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "GatewayEvent",
    "GetLogResult",
    "IdTagRecord",
    "InstalledCertificates",
    "KnownChargePoint",
    "NotConnected",
    "OcppError",
    "PlanError",
    "SchedulePeriod",
    "SignedUpdateFirmwareResult",
    "SqliteStorage",
    "Storage",
    "StorageError",
    "failsafe_profile",
    "hash_password",
    "plan_to_profile",
    "verify_password",
]
