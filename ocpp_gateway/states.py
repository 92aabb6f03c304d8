"""Connector and transaction state machines as tables (OCPP 1.6 section 4.9 and 6.47).

Every transition lives here. A charge point is the authority on its own connectors, so a status
report outside :data:`CONNECTOR_TRANSITIONS` is still recorded, but flagged ``expected=False``
(and logged); the table never silently decides. Transactions are different: the central system
decides what a StartTransaction or StopTransaction *does* to its records, and
:func:`transaction_step` is the one place that decides it, including the offline-replay cases.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "CONNECTOR_0_STATUSES",
    "CONNECTOR_TRANSITIONS",
    "ConnectorStatus",
    "TxAction",
    "TxEvent",
    "TxState",
    "connector_transition_expected",
    "transaction_step",
]


class ConnectorStatus(StrEnum):
    """ChargePointStatus of OCPP 1.6."""

    AVAILABLE = "Available"
    PREPARING = "Preparing"
    CHARGING = "Charging"
    SUSPENDED_EV = "SuspendedEV"
    SUSPENDED_EVSE = "SuspendedEVSE"
    FINISHING = "Finishing"
    RESERVED = "Reserved"
    UNAVAILABLE = "Unavailable"
    FAULTED = "Faulted"


_S = ConnectorStatus
#: Allowed status changes of a connector > 0 (spec table 4.9, A2..I8). Staying in a state is allowed.
CONNECTOR_TRANSITIONS: dict[ConnectorStatus, frozenset[ConnectorStatus]] = {
    _S.AVAILABLE: frozenset(
        {
            _S.PREPARING,
            _S.CHARGING,
            _S.SUSPENDED_EV,
            _S.SUSPENDED_EVSE,
            _S.RESERVED,
            _S.UNAVAILABLE,
            _S.FAULTED,
        }
    ),
    _S.PREPARING: frozenset(
        {_S.AVAILABLE, _S.CHARGING, _S.SUSPENDED_EV, _S.SUSPENDED_EVSE, _S.FINISHING, _S.FAULTED}
    ),
    _S.CHARGING: frozenset(
        {_S.AVAILABLE, _S.SUSPENDED_EV, _S.SUSPENDED_EVSE, _S.FINISHING, _S.UNAVAILABLE, _S.FAULTED}
    ),
    _S.SUSPENDED_EV: frozenset(
        {_S.AVAILABLE, _S.CHARGING, _S.SUSPENDED_EVSE, _S.FINISHING, _S.UNAVAILABLE, _S.FAULTED}
    ),
    _S.SUSPENDED_EVSE: frozenset(
        {_S.AVAILABLE, _S.CHARGING, _S.SUSPENDED_EV, _S.FINISHING, _S.UNAVAILABLE, _S.FAULTED}
    ),
    _S.FINISHING: frozenset({_S.AVAILABLE, _S.PREPARING, _S.UNAVAILABLE, _S.FAULTED}),
    _S.RESERVED: frozenset({_S.AVAILABLE, _S.PREPARING, _S.UNAVAILABLE, _S.FAULTED}),
    _S.UNAVAILABLE: frozenset(
        {_S.AVAILABLE, _S.PREPARING, _S.CHARGING, _S.SUSPENDED_EV, _S.SUSPENDED_EVSE, _S.FAULTED}
    ),
    _S.FAULTED: frozenset(
        {
            _S.AVAILABLE,
            _S.PREPARING,
            _S.CHARGING,
            _S.SUSPENDED_EV,
            _S.SUSPENDED_EVSE,
            _S.FINISHING,
            _S.RESERVED,
            _S.UNAVAILABLE,
        }
    ),
}
#: Connector 0 (the whole charge point) only reports these.
CONNECTOR_0_STATUSES = frozenset({_S.AVAILABLE, _S.UNAVAILABLE, _S.FAULTED})


def connector_transition_expected(
    connector_id: int, old: ConnectorStatus | None, new: ConnectorStatus
) -> bool:
    """Whether a status report follows the spec's table (the first report after boot always does)."""
    if connector_id == 0:
        return new in CONNECTOR_0_STATUSES
    if old is None or old == new:
        return True
    return new in CONNECTOR_TRANSITIONS[old]


class TxState(StrEnum):
    """What the central system knows of a transaction id reported by a charge point."""

    UNKNOWN = "unknown"  # never seen (offline, or started under another central system)
    ACTIVE = "active"
    STOPPED = "stopped"


class TxEvent(StrEnum):
    START = "start"
    STOP = "stop"


class TxAction(StrEnum):
    """What the store does with a transaction message."""

    CREATE = "create"  # new transaction, new unique id
    REPLAY_START = "replay_start"  # the same start again (answer lost): give back the same id
    CLOSE = "close"  # stop a running transaction
    RECORD_ORPHAN_STOP = "record_orphan_stop"  # stop of a transaction never seen: record, do not refuse
    IGNORE_REPLAYED_STOP = "ignore_replayed_stop"  # second stop of a stopped transaction


#: (state, event) -> (action, next state). Anything else is a bug, not a fall-through.
TRANSACTION_TABLE: dict[tuple[TxState, TxEvent], tuple[TxAction, TxState]] = {
    (TxState.UNKNOWN, TxEvent.START): (TxAction.CREATE, TxState.ACTIVE),
    (TxState.ACTIVE, TxEvent.START): (TxAction.REPLAY_START, TxState.ACTIVE),
    (TxState.STOPPED, TxEvent.START): (TxAction.REPLAY_START, TxState.STOPPED),
    (TxState.UNKNOWN, TxEvent.STOP): (TxAction.RECORD_ORPHAN_STOP, TxState.STOPPED),
    (TxState.ACTIVE, TxEvent.STOP): (TxAction.CLOSE, TxState.STOPPED),
    (TxState.STOPPED, TxEvent.STOP): (TxAction.IGNORE_REPLAYED_STOP, TxState.STOPPED),
}


def transaction_step(state: TxState, event: TxEvent) -> tuple[TxAction, TxState]:
    """Look up what a start or stop does to a transaction in ``state``."""
    return TRANSACTION_TABLE[(state, event)]
