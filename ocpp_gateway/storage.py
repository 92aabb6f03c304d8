"""What the central system remembers: a small :class:`Storage` protocol and its SQLite implementation.

:class:`SqliteStorage` runs in WAL mode with ``synchronous=NORMAL``: a commit is a write into the
WAL (no fsync), so a crashed process loses nothing committed; only a power cut can lose the last
moments. Write methods do not commit; the owner calls :meth:`Storage.commit`. The gateway commits
10 ms after the first uncommitted write (group commit), so a storm of MeterValues costs one commit
per 10 ms, not one per frame, and every write is a single short statement on the
loop thread (tens of microseconds), never a long block. ``autocommit=True`` commits after every
write, for scripts and tests.

Checkpoints (copying the WAL back into the database file, with an fsync) do not run on the loop
thread: SQLite's automatic checkpoint would make every ~1000th commit take tens of milliseconds.
Instead :meth:`SqliteStorage.commit` hands a ``PASSIVE`` checkpoint to a short-lived worker thread
(its own connection; SQLite releases the GIL) at most once a second. This changes nothing about
durability: a commit is in the WAL either way, and closing the store checkpoints what is left.

What a crash can lose: a process crash (or kill) loses what was written but not yet committed,
with the gateway the last 10 ms (it answers a message before the commit, so a point may have had
an answer for it; a point that replays it after reconnecting is deduplicated as usual); a power cut
or OS crash can also lose the commits since the last checkpoint's fsync (about a second).

Schema changes are numbered migrations in :data:`MIGRATIONS`; ``schema_version`` records the last
applied one, and opening an older database applies the missing ones (each in one transaction). A
database written by newer code raises :class:`~ocpp_gateway.errors.StorageError`. Version 2 adds
the security extension's records: ``certificate_requests`` (a point's CSRs and the certificates
issued for them) and ``certificate_commands`` (InstallCertificate / DeleteCertificate sent, with
the answer). Version 3 keeps one row per OCPP meterValue in ``meter_values`` (its sampled values
as received, one JSON array), not one per sampled value: a third of the cost of the busiest write
(a MeterValues of five values); the view ``sampled_values`` still has one row per value, with the
OCPP defaults filled in. Replays are still recognised per value.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ocpp_gateway.errors import StorageError
from ocpp_gateway.frames import encode_json
from ocpp_gateway.states import TxState

__all__ = [
    "MIGRATIONS",
    "CertificateCommandRecord",
    "CertificateRequestRecord",
    "CertificateRequestStatus",
    "ChargePointRecord",
    "ConnectorRecord",
    "IdTagRecord",
    "MeterValueRecord",
    "NotificationRecord",
    "ProfileRecord",
    "SecurityEventRecord",
    "SqliteStorage",
    "Storage",
    "TransactionRecord",
]


@dataclass(frozen=True, slots=True)
class ChargePointRecord:
    """A charge point as last seen. Times are aware UTC datetimes or None."""

    id: str
    vendor: str | None
    model: str | None
    serial_number: str | None
    firmware_version: str | None
    registration_status: str | None
    last_boot: datetime | None
    last_seen: datetime | None
    compliant: bool | None  # None: not checked yet
    compliance_reason: str | None


@dataclass(frozen=True, slots=True)
class ConnectorRecord:
    """One status report of a connector (the latest, or one history entry)."""

    charge_point_id: str
    connector_id: int
    status: str
    error_code: str
    info: str | None
    vendor_error_code: str | None
    timestamp: datetime
    expected: bool = True  # False: a transition outside the spec's table


@dataclass(frozen=True, slots=True)
class IdTagRecord:
    """An id tag (RFID card, app token) and what Authorize answers for it."""

    id_tag: str
    status: str = "Accepted"  # Accepted | Blocked | Expired | Invalid
    expiry_date: datetime | None = None
    parent_id_tag: str | None = None


@dataclass(frozen=True, slots=True)
class TransactionRecord:
    """A charging transaction. Energy in Wh (meter register readings).

    ``orphan`` marks a stop received for a transaction never started here (offline replay);
    ``reported_id`` is then the id the charge point used.
    """

    id: int
    charge_point_id: str
    connector_id: int | None
    id_tag: str | None
    start_time: datetime | None
    meter_start_wh: int | None
    stop_time: datetime | None
    meter_stop_wh: int | None
    stop_reason: str | None
    stop_id_tag: str | None
    reservation_id: int | None
    orphan: bool
    reported_id: int | None


@dataclass(frozen=True, slots=True)
class MeterValueRecord:
    """One sampled value. ``value`` is the raw text; ``value_num`` it as a number when it is one."""

    charge_point_id: str
    connector_id: int
    transaction_id: int | None
    timestamp: datetime
    measurand: str
    phase: str | None
    location: str
    context: str
    unit: str
    value: str
    value_num: float | None


@dataclass(frozen=True, slots=True)
class ProfileRecord:
    """A charging profile sent to a point and the answer (``Accepted``, ``Rejected``, ``NoAnswer: ...``)."""

    id: int
    charge_point_id: str
    connector_id: int
    purpose: str
    profile: dict[str, Any]
    status: str
    sent_at: datetime


@dataclass(frozen=True, slots=True)
class SecurityEventRecord:
    """A security event, reported by a point (``source='charge_point'``) or seen by us (``'gateway'``)."""

    charge_point_id: str
    type: str
    tech_info: str | None
    timestamp: datetime
    source: str


@dataclass(frozen=True, slots=True)
class NotificationRecord:
    """DataTransfer, diagnostics and firmware notifications, kept as received."""

    charge_point_id: str
    action: str
    payload: dict[str, Any]
    timestamp: datetime


class CertificateRequestStatus(StrEnum):
    """Where a charge point's certificate signing request stands."""

    REJECTED = "Rejected"  # the central system refused the CSR (``reason`` says why)
    PENDING = "Pending"  # accepted, being signed
    ISSUED = "Issued"  # signed; CertificateSigned being sent
    ACCEPTED = "Accepted"  # the point accepted the signed certificate
    REFUSED_BY_CHARGE_POINT = "RefusedByChargePoint"  # the point answered CertificateSigned Rejected
    NOT_DELIVERED = "NotDelivered"  # CertificateSigned got no answer (``reason``)
    FAILED = "Failed"  # signing failed (``reason``)


@dataclass(frozen=True, slots=True)
class CertificateRequestRecord:
    """A SignCertificate request of a point and what became of it. Times aware UTC.

    ``serial`` is the issued certificate's serial number (hex, as in ``certificateHashData``),
    ``fingerprint_sha256`` the hex SHA-256 of its DER; both None until it is issued.
    """

    id: int
    charge_point_id: str
    csr: str
    status: CertificateRequestStatus
    reason: str | None
    requested_at: datetime
    certificate: str | None = None
    serial: str | None = None
    fingerprint_sha256: str | None = None
    issued_at: datetime | None = None
    not_after: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CertificateCommandRecord:
    """An InstallCertificate or DeleteCertificate sent to a point and its answer (or ``NoAnswer: ...``).

    ``hash_data`` is the certificate's ``certificateHashData`` (JSON object, SHA256 for installs).
    """

    charge_point_id: str
    action: str
    certificate_type: str | None
    hash_data: dict[str, Any]
    status: str
    timestamp: datetime
    certificate: str | None = None


@runtime_checkable
class Storage(Protocol):
    """What the gateway and the REST API need from a store. All datetimes aware UTC."""

    def commit(self) -> None: ...
    def close(self) -> None: ...

    # charge points
    def record_boot(
        self, charge_point_id: str, *, vendor: str, model: str, serial_number: str | None,
        firmware_version: str | None, registration_status: str, at: datetime,
    ) -> None: ...  # fmt: skip
    def touch(self, seen: dict[str, datetime]) -> None: ...
    def charge_points(self) -> list[ChargePointRecord]: ...
    def charge_point(self, charge_point_id: str) -> ChargePointRecord | None: ...
    def set_compliance(self, charge_point_id: str, compliant: bool, reason: str | None) -> None: ...
    def set_password_hash(self, charge_point_id: str, password_hash: str | None) -> None: ...
    def password_hashes(self) -> dict[str, str]: ...
    def set_config_values(self, charge_point_id: str, values: dict[str, str | None]) -> None: ...
    def config_values(self, charge_point_id: str) -> dict[str, str | None]: ...

    # connectors
    def record_status(self, record: ConnectorRecord) -> None: ...
    def connectors(self, charge_point_id: str | None = None) -> list[ConnectorRecord]: ...
    def status_history(
        self, charge_point_id: str, connector_id: int | None = None
    ) -> list[ConnectorRecord]: ...

    # id tags
    def put_id_tag(self, record: IdTagRecord) -> None: ...
    def id_tag(self, id_tag: str) -> IdTagRecord | None: ...

    # transactions
    def transaction_state(self, charge_point_id: str, transaction_id: int) -> TxState: ...
    def find_start(
        self, charge_point_id: str, connector_id: int, id_tag: str, start_time: datetime, meter_start_wh: int
    ) -> TransactionRecord | None: ...
    def create_transaction(
        self, charge_point_id: str, connector_id: int, id_tag: str, start_time: datetime,
        meter_start_wh: int, reservation_id: int | None,
    ) -> int: ...  # fmt: skip
    def close_transaction(
        self, charge_point_id: str, transaction_id: int, *, stop_time: datetime, meter_stop_wh: int,
        reason: str | None, id_tag: str | None,
    ) -> None: ...  # fmt: skip
    def record_orphan_stop(
        self, charge_point_id: str, reported_id: int, *, stop_time: datetime, meter_stop_wh: int,
        reason: str | None, id_tag: str | None,
    ) -> int: ...  # fmt: skip
    def transaction(self, transaction_id: int) -> TransactionRecord | None: ...
    def transactions(
        self,
        *,
        charge_point_id: str | None = None,
        active: bool | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TransactionRecord]: ...
    def active_transaction(self, charge_point_id: str, connector_id: int) -> TransactionRecord | None: ...
    def active_transaction_for_tag(self, id_tag: str) -> TransactionRecord | None: ...

    # meter values, profiles, events
    def add_meter_value(
        self, charge_point_id: str, connector_id: int, transaction_id: int | None, timestamp: datetime,
        sampled_values: Sequence[dict[str, Any]],
    ) -> int: ...  # fmt: skip
    def meter_values(
        self, charge_point_id: str, *, transaction_id: int | None = None, limit: int = 1000
    ) -> list[MeterValueRecord]: ...
    def latest_meter_value(
        self, charge_point_id: str, transaction_id: int
    ) -> tuple[datetime, list[dict[str, Any]]] | None: ...
    def record_profile(
        self, charge_point_id: str, connector_id: int, profile: dict[str, Any], status: str, at: datetime
    ) -> int: ...
    def profiles(self, charge_point_id: str) -> list[ProfileRecord]: ...
    def record_security_event(self, record: SecurityEventRecord) -> None: ...
    def security_events(self, charge_point_id: str | None = None) -> list[SecurityEventRecord]: ...
    def record_notification(self, record: NotificationRecord) -> None: ...
    def notifications(self, charge_point_id: str) -> list[NotificationRecord]: ...

    # security extension: certificates
    def record_certificate_request(
        self, charge_point_id: str, csr: str, status: CertificateRequestStatus, reason: str | None,
        at: datetime,
    ) -> int: ...  # fmt: skip
    def update_certificate_request(
        self, request_id: int, status: CertificateRequestStatus, at: datetime, *, reason: str | None = None,
        certificate: str | None = None, serial: str | None = None, fingerprint_sha256: str | None = None,
        issued_at: datetime | None = None, not_after: datetime | None = None,
    ) -> None: ...  # fmt: skip
    def certificate_request(self, request_id: int) -> CertificateRequestRecord | None: ...
    def certificate_requests(self, charge_point_id: str | None = None) -> list[CertificateRequestRecord]: ...
    def record_certificate_command(self, record: CertificateCommandRecord) -> None: ...
    def certificate_commands(self, charge_point_id: str) -> list[CertificateCommandRecord]: ...


#: Numbered schema migrations; index i + 1 is the version after applying ``MIGRATIONS[i]``.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE charge_points (
        id TEXT PRIMARY KEY,
        vendor TEXT, model TEXT, serial_number TEXT, firmware_version TEXT,
        registration_status TEXT, last_boot TEXT, last_seen TEXT,
        compliant INTEGER, compliance_reason TEXT,
        password_hash TEXT
    );
    CREATE TABLE charge_point_config (
        charge_point_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT,
        PRIMARY KEY (charge_point_id, key)
    );
    CREATE TABLE connectors (
        charge_point_id TEXT NOT NULL, connector_id INTEGER NOT NULL,
        status TEXT NOT NULL, error_code TEXT NOT NULL, info TEXT, vendor_error_code TEXT,
        timestamp TEXT NOT NULL,
        PRIMARY KEY (charge_point_id, connector_id)
    );
    CREATE TABLE status_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        charge_point_id TEXT NOT NULL, connector_id INTEGER NOT NULL,
        status TEXT NOT NULL, error_code TEXT NOT NULL, info TEXT, vendor_error_code TEXT,
        timestamp TEXT NOT NULL, expected INTEGER NOT NULL
    );
    CREATE INDEX status_history_cp ON status_history (charge_point_id, connector_id);
    CREATE TABLE id_tags (
        id_tag TEXT PRIMARY KEY, status TEXT NOT NULL, expiry_date TEXT, parent_id_tag TEXT
    );
    CREATE TABLE transactions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        charge_point_id TEXT NOT NULL, connector_id INTEGER, id_tag TEXT,
        start_time TEXT, meter_start_wh INTEGER,
        stop_time TEXT, meter_stop_wh INTEGER, stop_reason TEXT, stop_id_tag TEXT,
        reservation_id INTEGER,
        orphan INTEGER NOT NULL DEFAULT 0, reported_id INTEGER
    );
    CREATE UNIQUE INDEX transactions_start ON transactions
        (charge_point_id, connector_id, id_tag, start_time, meter_start_wh) WHERE orphan = 0;
    CREATE UNIQUE INDEX transactions_orphan ON transactions
        (charge_point_id, reported_id, stop_time) WHERE orphan = 1;
    CREATE INDEX transactions_active ON transactions (charge_point_id, connector_id) WHERE stop_time IS NULL;
    CREATE TABLE meter_values (
        charge_point_id TEXT NOT NULL, connector_id INTEGER NOT NULL, transaction_id INTEGER NOT NULL,
        timestamp TEXT NOT NULL, measurand TEXT NOT NULL, phase TEXT NOT NULL, location TEXT NOT NULL,
        context TEXT NOT NULL, unit TEXT NOT NULL, value TEXT NOT NULL, value_num REAL,
        UNIQUE (charge_point_id, connector_id, transaction_id, timestamp, measurand, phase, location, context)
    );
    CREATE TABLE profiles (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        charge_point_id TEXT NOT NULL, connector_id INTEGER NOT NULL, purpose TEXT NOT NULL,
        profile TEXT NOT NULL, status TEXT NOT NULL, sent_at TEXT NOT NULL
    );
    CREATE INDEX profiles_cp ON profiles (charge_point_id);
    CREATE TABLE security_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        charge_point_id TEXT NOT NULL, type TEXT NOT NULL, tech_info TEXT,
        timestamp TEXT NOT NULL, source TEXT NOT NULL
    );
    CREATE TABLE notifications (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        charge_point_id TEXT NOT NULL, action TEXT NOT NULL, payload TEXT NOT NULL, timestamp TEXT NOT NULL
    );
    """,
    # 2: security extension (whitepaper edition 3): CSRs and issued certificates, certificate commands.
    """
    CREATE TABLE certificate_requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        charge_point_id TEXT NOT NULL, csr TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
        requested_at TEXT NOT NULL,
        certificate TEXT, serial TEXT, fingerprint_sha256 TEXT, issued_at TEXT, not_after TEXT,
        updated_at TEXT
    );
    CREATE INDEX certificate_requests_cp ON certificate_requests (charge_point_id);
    CREATE INDEX certificate_requests_serial ON certificate_requests (serial) WHERE serial IS NOT NULL;
    CREATE TABLE certificate_commands (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        charge_point_id TEXT NOT NULL, action TEXT NOT NULL, certificate_type TEXT,
        hash_data TEXT NOT NULL, status TEXT NOT NULL, timestamp TEXT NOT NULL, certificate TEXT
    );
    CREATE INDEX certificate_commands_cp ON certificate_commands (charge_point_id);
    """,
    # 3: one row per OCPP meterValue (its sampled values as one JSON array), not one per sampled
    # value: a third of the write cost (bench/ocpp_load.py); the view keeps one row per value.
    """
    CREATE TABLE meter_values_3 (
        charge_point_id TEXT NOT NULL, connector_id INTEGER NOT NULL, transaction_id INTEGER NOT NULL,
        timestamp TEXT NOT NULL, sampled_values TEXT NOT NULL,
        UNIQUE (charge_point_id, connector_id, transaction_id, timestamp)
    );
    INSERT INTO meter_values_3
        SELECT charge_point_id, connector_id, transaction_id, timestamp,
            json_group_array(json_object(
                'value', value, 'measurand', measurand, 'phase', nullif(phase, ''), 'location', location,
                'context', context, 'unit', unit
            ))
        FROM meter_values GROUP BY charge_point_id, connector_id, transaction_id, timestamp;
    DROP TABLE meter_values;
    ALTER TABLE meter_values_3 RENAME TO meter_values;
    CREATE VIEW sampled_values AS
        SELECT m.charge_point_id, m.connector_id, nullif(m.transaction_id, -1) AS transaction_id,
            m.timestamp,
            coalesce(json_extract(s.value, '$.measurand'), 'Energy.Active.Import.Register') AS measurand,
            json_extract(s.value, '$.phase') AS phase,
            coalesce(json_extract(s.value, '$.location'), 'Outlet') AS location,
            coalesce(json_extract(s.value, '$.context'), 'Sample.Periodic') AS context,
            coalesce(json_extract(s.value, '$.unit'), 'Wh') AS unit,
            json_extract(s.value, '$.value') AS value
        FROM meter_values m, json_each(m.sampled_values) s;
    """,
)

_NO_TX = -1  # meter_values.transaction_id when the sample belongs to no transaction (UNIQUE needs non-NULL)
#: OCPP 1.6 defaults of an absent ``sampledValue`` field (stored as received, applied when read).
_SAMPLE_DEFAULTS = {
    "measurand": "Energy.Active.Import.Register",
    "location": "Outlet",
    "context": "Sample.Periodic",
    "unit": "Wh",
}
_M, _L, _C = _SAMPLE_DEFAULTS["measurand"], _SAMPLE_DEFAULTS["location"], _SAMPLE_DEFAULTS["context"]


def _sample_key(sv: dict[str, Any]) -> tuple[str, str, str, str]:
    """What makes a sampled value of one meterValue unique: measurand, phase, location, context."""
    get = sv.get
    return get("measurand", _M), get("phase") or "", get("location", _L), get("context", _C)


def _first_of_each(sampled_values: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sampled values without repeats of a key (the first one counts)."""
    keys = [_sample_key(sv) for sv in sampled_values]
    if len(set(keys)) == len(keys):  # the common case
        return list(sampled_values)
    seen: set[tuple[str, str, str, str]] = set()
    out = []
    for key, sv in zip(keys, sampled_values, strict=True):
        if key not in seen:
            seen.add(key)
            out.append(sv)
    return out


def _number(value: str) -> float | None:
    try:
        num = float(value)
    except ValueError:
        return None  # SignedData and other non-numeric formats: only the text
    return num if math.isfinite(num) else None


def _ts(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    if dt.tzinfo is not UTC:
        dt = dt.astimezone(UTC)
    # isoformat(timespec="microseconds"), in 60 % of its time (the key of every meterValue)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06d+00:00" % (  # noqa: UP031
        dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, dt.microsecond,
    )  # fmt: skip


#: Seconds between two background checkpoints (see the module docstring).
CHECKPOINT_INTERVAL_S = 1.0
#: WAL size [bytes] beyond which a checkpoint is finished on the writer's thread: a background
#: checkpoint never reaches the end of a WAL that is written meanwhile, and only a checkpoint that
#: did lets the next write start the WAL over (otherwise it would grow without bound under load).
WAL_RESET_BYTES = 128 << 20


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


class SqliteStorage:
    """:class:`Storage` in one SQLite file (WAL). Use from one thread (the event loop's).

    Parameters
    ----------
    path
        Database file; ``":memory:"`` for a throw-away store.
    autocommit
        Commit after every write (scripts, tests); the gateway leaves it off and commits per loop turn.
    """

    def __init__(self, path: str | Path, *, autocommit: bool = False) -> None:
        self.path = str(path)
        self.autocommit = autocommit
        self._ckpt_db: sqlite3.Connection | None = None
        self._ckpt_thread: threading.Thread | None = None
        self._ckpt_at = time.monotonic()
        self._wal_frames = 0  # WAL length [pages] seen by the last background checkpoint
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            # A file in WAL mode: checkpoints in a worker thread, not on the writer's commits
            # (with autocommit, commits bypass commit(): SQLite's own checkpoints stay on).
            self._bg_checkpoint = str(mode).lower() == "wal" and not autocommit
            if self._bg_checkpoint:
                self._db.execute("PRAGMA wal_autocheckpoint=0")
                self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise StorageError(f"{self.path}: {e}") from e

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        return int(self._db.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0)

    def _migrate(self) -> None:
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT)"
        )
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise StorageError(
                f"{self.path}: schema version {current} is newer than this code ({len(MIGRATIONS)})"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            # executescript commits first; each migration is then one explicit transaction.
            self._db.executescript(
                "BEGIN;\n"
                + MIGRATIONS[version - 1]
                + f"\nINSERT INTO schema_version VALUES ({version}, '{_ts(datetime.now(UTC))}');\nCOMMIT;"
            )

    def _write(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        cur = self._db.execute(sql, params)
        if self.autocommit:
            self._db.commit()
        return cur

    def commit(self) -> None:
        if self._db.in_transaction:
            self._db.commit()
            if self._bg_checkpoint:
                self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        thread = self._ckpt_thread
        if thread is not None:
            if thread.is_alive():
                return
            self._ckpt_thread = None
            if self._wal_frames * self._page_size > WAL_RESET_BYTES:
                self._wal_frames = 0
                # The background checkpoint just copied all but what was written while it ran:
                # copy that little here, so that the next write restarts the WAL.
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            return
        if time.monotonic() - self._ckpt_at >= CHECKPOINT_INTERVAL_S:
            self._ckpt_at = time.monotonic()
            self._ckpt_thread = threading.Thread(
                target=self._checkpoint, name="sqlite-checkpoint", daemon=True
            )
            self._ckpt_thread.start()

    def _checkpoint(self) -> None:
        # Runs in the worker thread; one at a time (``_maybe_checkpoint``), so the connection is
        # never used by two threads at once.
        try:
            if self._ckpt_db is None:
                self._ckpt_db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            row = self._ckpt_db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self._wal_frames = int(row[1]) if row and row[1] and row[1] > 0 else 0
        except sqlite3.Error:
            pass  # best effort: the next one (or close) checkpoints

    def close(self) -> None:
        self.commit()
        if self._ckpt_thread is not None:
            self._ckpt_thread.join()
            self._ckpt_thread = None
        if self._ckpt_db is not None:
            self._ckpt_db.close()
            self._ckpt_db = None
        self._db.close()

    # -- charge points -----------------------------------------------------------------------
    def _ensure_cp(self, charge_point_id: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO charge_points (id) VALUES (?)", (charge_point_id,))

    def record_boot(
        self, charge_point_id: str, *, vendor: str, model: str, serial_number: str | None,
        firmware_version: str | None, registration_status: str, at: datetime,
    ) -> None:  # fmt: skip
        self._ensure_cp(charge_point_id)
        self._write(
            "UPDATE charge_points SET vendor=?, model=?, serial_number=?, firmware_version=?,"
            " registration_status=?, last_boot=?, last_seen=? WHERE id=?",
            (
                vendor,
                model,
                serial_number,
                firmware_version,
                registration_status,
                _ts(at),
                _ts(at),
                charge_point_id,
            ),
        )

    def touch(self, seen: dict[str, datetime]) -> None:
        self._db.executemany(
            "INSERT INTO charge_points (id, last_seen) VALUES (?, ?)"
            " ON CONFLICT (id) DO UPDATE SET last_seen=excluded.last_seen",
            [(cp, _ts(t)) for cp, t in seen.items()],
        )
        if self.autocommit:
            self._db.commit()

    _CP_COLS = (
        "id, vendor, model, serial_number, firmware_version, registration_status, last_boot, last_seen,"
        " compliant, compliance_reason"
    )

    @staticmethod
    def _cp(row: Sequence[Any]) -> ChargePointRecord:
        return ChargePointRecord(
            row[0], row[1], row[2], row[3], row[4], row[5], _dt(row[6]), _dt(row[7]),
            None if row[8] is None else bool(row[8]), row[9],
        )  # fmt: skip

    def charge_points(self) -> list[ChargePointRecord]:
        return [
            self._cp(r) for r in self._db.execute(f"SELECT {self._CP_COLS} FROM charge_points ORDER BY id")
        ]

    def charge_point(self, charge_point_id: str) -> ChargePointRecord | None:
        row = self._db.execute(
            f"SELECT {self._CP_COLS} FROM charge_points WHERE id=?", (charge_point_id,)
        ).fetchone()
        return None if row is None else self._cp(row)

    def set_compliance(self, charge_point_id: str, compliant: bool, reason: str | None) -> None:
        self._ensure_cp(charge_point_id)
        self._write(
            "UPDATE charge_points SET compliant=?, compliance_reason=? WHERE id=?",
            (int(compliant), reason, charge_point_id),
        )

    def set_password_hash(self, charge_point_id: str, password_hash: str | None) -> None:
        self._ensure_cp(charge_point_id)
        self._write("UPDATE charge_points SET password_hash=? WHERE id=?", (password_hash, charge_point_id))

    def password_hashes(self) -> dict[str, str]:
        rows = self._db.execute("SELECT id, password_hash FROM charge_points WHERE password_hash IS NOT NULL")
        return dict(rows.fetchall())

    def set_config_values(self, charge_point_id: str, values: dict[str, str | None]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO charge_point_config VALUES (?, ?, ?)",
            [(charge_point_id, k, v) for k, v in values.items()],
        )
        if self.autocommit:
            self._db.commit()

    def config_values(self, charge_point_id: str) -> dict[str, str | None]:
        rows = self._db.execute(
            "SELECT key, value FROM charge_point_config WHERE charge_point_id=?", (charge_point_id,)
        )
        return dict(rows.fetchall())

    # -- connectors --------------------------------------------------------------------------
    def record_status(self, record: ConnectorRecord) -> None:
        r = record
        row = (
            r.charge_point_id,
            r.connector_id,
            r.status,
            r.error_code,
            r.info,
            r.vendor_error_code,
            _ts(r.timestamp),
        )
        self._ensure_cp(r.charge_point_id)
        self._db.execute("INSERT OR REPLACE INTO connectors VALUES (?, ?, ?, ?, ?, ?, ?)", row)
        self._write(
            "INSERT INTO status_history (charge_point_id, connector_id, status, error_code, info,"
            " vendor_error_code, timestamp, expected) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (*row, int(r.expected)),
        )

    def connectors(self, charge_point_id: str | None = None) -> list[ConnectorRecord]:
        sql = "SELECT * FROM connectors"
        params: tuple[Any, ...] = ()
        if charge_point_id is not None:
            sql += " WHERE charge_point_id=?"
            params = (charge_point_id,)
        rows = self._db.execute(sql + " ORDER BY charge_point_id, connector_id", params)
        return [ConnectorRecord(r[0], r[1], r[2], r[3], r[4], r[5], _dt(r[6])) for r in rows]  # type: ignore[arg-type]

    def status_history(self, charge_point_id: str, connector_id: int | None = None) -> list[ConnectorRecord]:
        sql = (
            "SELECT charge_point_id, connector_id, status, error_code, info, vendor_error_code, timestamp,"
            " expected FROM status_history WHERE charge_point_id=?"
        )
        params: tuple[Any, ...] = (charge_point_id,)
        if connector_id is not None:
            sql += " AND connector_id=?"
            params += (connector_id,)
        rows = self._db.execute(sql + " ORDER BY id", params)
        return [ConnectorRecord(r[0], r[1], r[2], r[3], r[4], r[5], _dt(r[6]), bool(r[7])) for r in rows]  # type: ignore[arg-type]

    # -- id tags -----------------------------------------------------------------------------
    def put_id_tag(self, record: IdTagRecord) -> None:
        self._write(
            "INSERT OR REPLACE INTO id_tags VALUES (?, ?, ?, ?)",
            (record.id_tag, record.status, _ts(record.expiry_date), record.parent_id_tag),
        )

    def id_tag(self, id_tag: str) -> IdTagRecord | None:
        row = self._db.execute("SELECT * FROM id_tags WHERE id_tag=?", (id_tag,)).fetchone()
        return None if row is None else IdTagRecord(row[0], row[1], _dt(row[2]), row[3])

    # -- transactions ------------------------------------------------------------------------
    _TX_COLS = (
        "id, charge_point_id, connector_id, id_tag, start_time, meter_start_wh, stop_time, meter_stop_wh,"
        " stop_reason, stop_id_tag, reservation_id, orphan, reported_id"
    )

    @staticmethod
    def _tx(r: Sequence[Any]) -> TransactionRecord:
        return TransactionRecord(
            r[0], r[1], r[2], r[3], _dt(r[4]), r[5], _dt(r[6]), r[7], r[8], r[9], r[10], bool(r[11]), r[12]
        )

    def transaction_state(self, charge_point_id: str, transaction_id: int) -> TxState:
        row = self._db.execute(
            "SELECT stop_time FROM transactions WHERE id=? AND charge_point_id=? AND orphan=0",
            (transaction_id, charge_point_id),
        ).fetchone()
        if row is None:
            return TxState.UNKNOWN
        return TxState.ACTIVE if row[0] is None else TxState.STOPPED

    def find_start(
        self, charge_point_id: str, connector_id: int, id_tag: str, start_time: datetime, meter_start_wh: int
    ) -> TransactionRecord | None:
        row = self._db.execute(
            f"SELECT {self._TX_COLS} FROM transactions WHERE charge_point_id=? AND connector_id=?"
            " AND id_tag=? AND start_time=? AND meter_start_wh=? AND orphan=0",
            (charge_point_id, connector_id, id_tag, _ts(start_time), meter_start_wh),
        ).fetchone()
        return None if row is None else self._tx(row)

    def create_transaction(
        self, charge_point_id: str, connector_id: int, id_tag: str, start_time: datetime,
        meter_start_wh: int, reservation_id: int | None,
    ) -> int:  # fmt: skip
        cur = self._write(
            "INSERT INTO transactions (charge_point_id, connector_id, id_tag, start_time, meter_start_wh,"
            " reservation_id) VALUES (?, ?, ?, ?, ?, ?)",
            (charge_point_id, connector_id, id_tag, _ts(start_time), meter_start_wh, reservation_id),
        )
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def close_transaction(
        self, charge_point_id: str, transaction_id: int, *, stop_time: datetime, meter_stop_wh: int,
        reason: str | None, id_tag: str | None,
    ) -> None:  # fmt: skip
        self._write(
            "UPDATE transactions SET stop_time=?, meter_stop_wh=?, stop_reason=?, stop_id_tag=?"
            " WHERE id=? AND charge_point_id=? AND stop_time IS NULL",
            (_ts(stop_time), meter_stop_wh, reason, id_tag, transaction_id, charge_point_id),
        )

    def record_orphan_stop(
        self, charge_point_id: str, reported_id: int, *, stop_time: datetime, meter_stop_wh: int,
        reason: str | None, id_tag: str | None,
    ) -> int:  # fmt: skip
        cur = self._write(
            "INSERT OR IGNORE INTO transactions (charge_point_id, id_tag, stop_time, meter_stop_wh,"
            " stop_reason, stop_id_tag, orphan, reported_id) VALUES (?, ?, ?, ?, ?, ?, 1, ?)",
            (charge_point_id, id_tag, _ts(stop_time), meter_stop_wh, reason, id_tag, reported_id),
        )
        if cur.rowcount:
            return int(cur.lastrowid)  # type: ignore[arg-type]
        row = self._db.execute(
            "SELECT id FROM transactions WHERE charge_point_id=? AND reported_id=? AND stop_time=?"
            " AND orphan=1",
            (charge_point_id, reported_id, _ts(stop_time)),
        ).fetchone()
        return int(row[0])

    def transaction(self, transaction_id: int) -> TransactionRecord | None:
        row = self._db.execute(
            f"SELECT {self._TX_COLS} FROM transactions WHERE id=?", (transaction_id,)
        ).fetchone()
        return None if row is None else self._tx(row)

    def transactions(
        self,
        *,
        charge_point_id: str | None = None,
        active: bool | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TransactionRecord]:
        where, params = [], []
        if charge_point_id is not None:
            where.append("charge_point_id=?")
            params.append(charge_point_id)
        if active is not None:
            where.append("stop_time IS NULL" if active else "stop_time IS NOT NULL")
        sql = f"SELECT {self._TX_COLS} FROM transactions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
        return [self._tx(r) for r in self._db.execute(sql, (*params, limit, offset))]

    def active_transaction(self, charge_point_id: str, connector_id: int) -> TransactionRecord | None:
        row = self._db.execute(
            f"SELECT {self._TX_COLS} FROM transactions WHERE charge_point_id=? AND connector_id=?"
            " AND stop_time IS NULL AND orphan=0 ORDER BY id DESC LIMIT 1",
            (charge_point_id, connector_id),
        ).fetchone()
        return None if row is None else self._tx(row)

    def active_transaction_for_tag(self, id_tag: str) -> TransactionRecord | None:
        row = self._db.execute(
            f"SELECT {self._TX_COLS} FROM transactions WHERE id_tag=? AND stop_time IS NULL AND orphan=0"
            " ORDER BY id DESC LIMIT 1",
            (id_tag,),
        ).fetchone()
        return None if row is None else self._tx(row)

    # -- meter values ------------------------------------------------------------------------
    def add_meter_value(
        self, charge_point_id: str, connector_id: int, transaction_id: int | None, timestamp: datetime,
        sampled_values: Sequence[dict[str, Any]],
    ) -> int:  # fmt: skip
        """Store one meterValue: its (schema-valid) sampled values, as received. Returns how many
        were new: a value whose measurand, phase, location and context this connector, transaction
        and timestamp already have (a replay) is kept as first stored.
        """
        tx = _NO_TX if transaction_id is None else transaction_id
        key = (charge_point_id, connector_id, tx, _ts(timestamp))
        values = _first_of_each(sampled_values)
        cur = self._db.execute(
            "INSERT INTO meter_values VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (*key, encode_json(values)),
        )
        if cur.rowcount == 0:  # this timestamp was stored before: add what it lacks
            (stored_text,) = self._db.execute(
                "SELECT sampled_values FROM meter_values"
                " WHERE charge_point_id=? AND connector_id=? AND transaction_id=? AND timestamp=?",
                key,
            ).fetchone()
            stored = json.loads(stored_text)
            known = {_sample_key(sv) for sv in stored}
            values = [sv for sv in values if _sample_key(sv) not in known]
            if values:
                self._db.execute(
                    "UPDATE meter_values SET sampled_values=?"
                    " WHERE charge_point_id=? AND connector_id=? AND transaction_id=? AND timestamp=?",
                    (encode_json(stored + values), *key),
                )
        if self.autocommit:
            self._db.commit()
        return len(values)

    def meter_values(
        self, charge_point_id: str, *, transaction_id: int | None = None, limit: int = 1000
    ) -> list[MeterValueRecord]:
        """The first ``limit`` sampled values of a point (of one transaction), by timestamp, measurand
        and phase."""
        sql = "SELECT connector_id, transaction_id, timestamp, sampled_values FROM meter_values"
        sql += " WHERE charge_point_id=?"
        params: list[Any] = [charge_point_id]
        if transaction_id is not None:
            sql += " AND transaction_id=?"
            params.append(transaction_id)
        samples: list[tuple[str, str, str, MeterValueRecord]] = []
        for connector_id, tx, ts, text in self._db.execute(sql + " ORDER BY timestamp", params):
            if len(samples) >= limit and ts != samples[-1][0]:
                break  # the rest come later than the first ``limit``
            at = _dt(ts)
            for sv in json.loads(text):
                value, get = sv["value"], sv.get
                record = MeterValueRecord(
                    charge_point_id, connector_id, None if tx == _NO_TX else tx, at,  # type: ignore[arg-type]
                    get("measurand") or _M, get("phase") or None, get("location") or _L, get("context") or _C,
                    get("unit") or _SAMPLE_DEFAULTS["unit"], value, _number(value),
                )  # fmt: skip
                samples.append((ts, record.measurand, record.phase or "", record))
        samples.sort(key=lambda s: s[:3])
        return [s[3] for s in samples[:limit]]

    def latest_meter_value(
        self, charge_point_id: str, transaction_id: int
    ) -> tuple[datetime, list[dict[str, Any]]] | None:
        """The last meterValue of a transaction: its timestamp and sampled values as received
        (with every value of a replayed timestamp); None if it has none."""
        row = self._db.execute(
            "SELECT timestamp, sampled_values FROM meter_values WHERE charge_point_id=? AND transaction_id=?"
            " ORDER BY timestamp DESC LIMIT 1",
            (charge_point_id, transaction_id),
        ).fetchone()
        return None if row is None else (_dt(row[0]), json.loads(row[1]))

    # -- profiles, security events, notifications ---------------------------------------------
    def record_profile(
        self, charge_point_id: str, connector_id: int, profile: dict[str, Any], status: str, at: datetime
    ) -> int:
        cur = self._write(
            "INSERT INTO profiles (charge_point_id, connector_id, purpose, profile, status, sent_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                charge_point_id, connector_id, str(profile.get("chargingProfilePurpose", "")),
                json.dumps(profile, separators=(",", ":")), status, _ts(at),
            ),
        )  # fmt: skip
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def profiles(self, charge_point_id: str) -> list[ProfileRecord]:
        rows = self._db.execute(
            "SELECT * FROM profiles WHERE charge_point_id=? ORDER BY id", (charge_point_id,)
        )
        return [ProfileRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], _dt(r[6])) for r in rows]  # type: ignore[arg-type]

    def record_security_event(self, record: SecurityEventRecord) -> None:
        self._write(
            "INSERT INTO security_events (charge_point_id, type, tech_info, timestamp, source)"
            " VALUES (?, ?, ?, ?, ?)",
            (record.charge_point_id, record.type, record.tech_info, _ts(record.timestamp), record.source),
        )

    def security_events(self, charge_point_id: str | None = None) -> list[SecurityEventRecord]:
        sql = "SELECT charge_point_id, type, tech_info, timestamp, source FROM security_events"
        params: tuple[Any, ...] = ()
        if charge_point_id is not None:
            sql += " WHERE charge_point_id=?"
            params = (charge_point_id,)
        return [
            SecurityEventRecord(r[0], r[1], r[2], _dt(r[3]), r[4])
            for r in self._db.execute(sql + " ORDER BY id", params)
        ]  # type: ignore[arg-type]

    def record_notification(self, record: NotificationRecord) -> None:
        self._write(
            "INSERT INTO notifications (charge_point_id, action, payload, timestamp) VALUES (?, ?, ?, ?)",
            (record.charge_point_id, record.action, json.dumps(record.payload), _ts(record.timestamp)),
        )

    def notifications(self, charge_point_id: str) -> list[NotificationRecord]:
        rows = self._db.execute(
            "SELECT charge_point_id, action, payload, timestamp FROM notifications"
            " WHERE charge_point_id=? ORDER BY id",
            (charge_point_id,),
        )
        return [NotificationRecord(r[0], r[1], json.loads(r[2]), _dt(r[3])) for r in rows]  # type: ignore[arg-type]

    # -- security extension: certificates ------------------------------------------------------
    def record_certificate_request(
        self, charge_point_id: str, csr: str, status: CertificateRequestStatus, reason: str | None,
        at: datetime,
    ) -> int:  # fmt: skip
        cur = self._write(
            "INSERT INTO certificate_requests (charge_point_id, csr, status, reason, requested_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            (charge_point_id, csr, status.value, reason, _ts(at), _ts(at)),
        )
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def update_certificate_request(
        self, request_id: int, status: CertificateRequestStatus, at: datetime, *, reason: str | None = None,
        certificate: str | None = None, serial: str | None = None, fingerprint_sha256: str | None = None,
        issued_at: datetime | None = None, not_after: datetime | None = None,
    ) -> None:  # fmt: skip
        # COALESCE: a later step (delivery) keeps what an earlier one (signing) wrote.
        self._write(
            "UPDATE certificate_requests SET status=?, updated_at=?, reason=COALESCE(?, reason),"
            " certificate=COALESCE(?, certificate), serial=COALESCE(?, serial),"
            " fingerprint_sha256=COALESCE(?, fingerprint_sha256), issued_at=COALESCE(?, issued_at),"
            " not_after=COALESCE(?, not_after) WHERE id=?",
            (
                status.value, _ts(at), reason, certificate, serial, fingerprint_sha256, _ts(issued_at),
                _ts(not_after), request_id,
            ),
        )  # fmt: skip

    _CSR_COLS = (
        "id, charge_point_id, csr, status, reason, requested_at, certificate, serial, fingerprint_sha256,"
        " issued_at, not_after, updated_at"
    )

    @staticmethod
    def _csr(r: Sequence[Any]) -> CertificateRequestRecord:
        return CertificateRequestRecord(
            r[0], r[1], r[2], CertificateRequestStatus(r[3]), r[4], _dt(r[5]), r[6], r[7], r[8],  # type: ignore[arg-type]
            _dt(r[9]), _dt(r[10]), _dt(r[11]),
        )  # fmt: skip

    def certificate_request(self, request_id: int) -> CertificateRequestRecord | None:
        row = self._db.execute(
            f"SELECT {self._CSR_COLS} FROM certificate_requests WHERE id=?", (request_id,)
        ).fetchone()
        return None if row is None else self._csr(row)

    def certificate_requests(self, charge_point_id: str | None = None) -> list[CertificateRequestRecord]:
        sql = f"SELECT {self._CSR_COLS} FROM certificate_requests"
        params: tuple[Any, ...] = ()
        if charge_point_id is not None:
            sql += " WHERE charge_point_id=?"
            params = (charge_point_id,)
        return [self._csr(r) for r in self._db.execute(sql + " ORDER BY id", params)]

    def record_certificate_command(self, record: CertificateCommandRecord) -> None:
        r = record
        self._write(
            "INSERT INTO certificate_commands (charge_point_id, action, certificate_type, hash_data, status,"
            " timestamp, certificate) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                r.charge_point_id, r.action, r.certificate_type, json.dumps(r.hash_data), r.status,
                _ts(r.timestamp), r.certificate,
            ),
        )  # fmt: skip

    def certificate_commands(self, charge_point_id: str) -> list[CertificateCommandRecord]:
        rows = self._db.execute(
            "SELECT charge_point_id, action, certificate_type, hash_data, status, timestamp, certificate"
            " FROM certificate_commands WHERE charge_point_id=? ORDER BY id",
            (charge_point_id,),
        )
        return [
            CertificateCommandRecord(r[0], r[1], r[2], json.loads(r[3]), r[4], _dt(r[5]), r[6])  # type: ignore[arg-type]
            for r in rows
        ]
