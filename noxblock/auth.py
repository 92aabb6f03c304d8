"""Bearer tokens of the REST API and the grid-operator limits they send, in ``DATA_DIR/api.sqlite3``.

Roles:

* ``grid-operator``: reads and sets the limits of its one site (a token per site), reads their audit;
* ``operator``: everything;
* ``viewer``: reads, changes nothing.

A token is ``nbx_<id>_<secret>``: ``id`` (12 hex digits) names the token in lists, logs and the
audit; ``secret`` is ``secrets.token_urlsafe(32)`` (256 bits). Only the SHA-256 of the whole token
is stored: a token is random and long, so a fast hash is right (a password hash like scrypt guards
guessable secrets), and it is compared with :func:`hmac.compare_digest`. Tokens are never logged.

The database runs in WAL mode, so ``noxblock token create`` or ``revoke`` may run while
``noxblock serve`` reads the same file: a new token works, and a revoked one stops working, with
the next request. Schema changes are numbered migrations; ``schema_version`` records the last
applied.

:class:`LimitStore` keeps each site's limit schedule (see :mod:`noxblock.limits` for what a PUT
does to it) and an audit entry per request received: who (token id and role), when, the body as
received, and the resulting schedule (or why it was rejected). Times are timezone-aware, UTC
inside. Both stores are safe to share between threads (one connection behind a lock).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, get_args

from noxblock.limits import LimitBlock, LimitSchedule, check_blocks, merge

__all__ = [
    "DB_NAME",
    "ROLES",
    "AuditRecord",
    "LimitStore",
    "Role",
    "StoreError",
    "TokenRecord",
    "TokenStore",
    "UnknownTokenError",
    "check_site_id",
    "open_stores",
]

log = logging.getLogger("noxblock.auth")

DB_NAME: Final = "api.sqlite3"
Role = Literal["grid-operator", "operator", "viewer"]
ROLES: Final[tuple[str, ...]] = get_args(Role)
TOKEN_PREFIX: Final = "nbx_"
_TOKEN_RE = re.compile(r"nbx_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('grid-operator', 'operator', 'viewer')),
            site TEXT CHECK ((role = 'grid-operator') = (site IS NOT NULL)),
            token_sha256 TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            revoked_at TEXT
        )""",
        """CREATE TABLE limit_audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            site TEXT NOT NULL,
            token_id TEXT NOT NULL,
            role TEXT NOT NULL,
            received_at TEXT NOT NULL,
            body TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('accepted', 'rejected')),
            error TEXT,
            schedule TEXT,
            measured_response TEXT
        )""",
        "CREATE INDEX limit_audit_site ON limit_audit (site, id)",
        """CREATE TABLE limit_blocks (
            site TEXT NOT NULL,
            start_at TEXT NOT NULL,
            end_at TEXT,
            max_current_a REAL NOT NULL,
            max_power_kw REAL,
            min_per_point_kw REAL,
            audit_id INTEGER REFERENCES limit_audit (id),
            PRIMARY KEY (site, start_at)
        )""",
    ),
)


class StoreError(Exception):
    """The database file cannot be used (not SQLite, newer schema, ...); names the file."""


class UnknownTokenError(LookupError):
    """No token with that id."""


def _ts(t: datetime) -> str:
    """A UTC time as fixed-width ISO text, so that text order is time order."""
    if t.tzinfo is None:
        raise ValueError(f"naive time {t.isoformat()}: give a UTC offset")
    return t.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(s: str | None) -> datetime | None:
    return None if s is None else datetime.fromisoformat(s).astimezone(UTC)


def _now(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else now.astimezone(UTC)


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class _Db:
    """One SQLite connection (WAL, migrated) behind a lock; transactions are explicit."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        created = not self.path.exists()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {e}") from e
        try:
            if created:
                with contextlib.suppress(OSError):
                    os.chmod(self.path, 0o600)
            self._db.execute("PRAGMA busy_timeout=5000")  # a CLI and `serve` may write at once
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StoreError(f"{self.path}: {e}") from e
        except StoreError:
            self._db.close()
            raise

    def _migrate(self) -> None:
        with self.transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT)"
            )
            current = int(db.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0)
            if current > len(MIGRATIONS):
                raise StoreError(
                    f"{self.path}: schema version {current} is newer than this code ({len(MIGRATIONS)})"
                )
            for version in range(current + 1, len(MIGRATIONS) + 1):
                for statement in MIGRATIONS[version - 1]:
                    db.execute(statement)
                db.execute("INSERT INTO schema_version VALUES (?, ?)", (version, _ts(datetime.now(UTC))))
                log.info("%s: schema version %d", self.path, version)

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception), under the lock."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextlib.contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock (for reads that take several statements)."""
        with self._lock:
            yield self._db

    def read(self, sql: str, params: Sequence[Any] = ()) -> builtins.list[sqlite3.Row]:
        with self._lock:
            cur = self._db.execute(sql, params)
            return cur.fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- tokens -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenRecord:
    """A token as stored, without the token: ``site`` is set for (and only for) a grid operator."""

    id: str
    role: Role
    site: str | None
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def check_site_id(site: str) -> str:
    """``site`` if it is a plausible site id; ``ValueError`` naming ``site`` otherwise."""
    if not isinstance(site, str) or not site or site != site.strip():
        raise ValueError(f"site: expected a site id without surrounding blanks, got {site!r}")
    if len(site) > 200 or any(ord(c) < 32 or c == "/" for c in site):
        raise ValueError(f"site: {site!r} is not a site id (control characters, '/' or too long)")
    return site


class TokenStore:
    """Bearer tokens with roles in an SQLite file (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self._db = _Db(path)
        self.path = self._db.path

    @classmethod
    def in_dir(cls, data_dir: str | Path) -> TokenStore:
        """The store in ``data_dir/api.sqlite3`` (directory created if missing)."""
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        return cls(Path(data_dir) / DB_NAME)

    @property
    def schema_version(self) -> int:
        return self._db.schema_version

    def create(
        self, role: str, site: str | None = None, *, now: datetime | None = None
    ) -> tuple[TokenRecord, str]:
        """A new token: its record and the token itself (shown once, never stored).

        Raises ``ValueError`` for an unknown ``role``, a grid operator without ``site`` or another
        role with one.
        """
        if role not in ROLES:
            raise ValueError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")
        if role == "grid-operator":
            if site is None:
                raise ValueError("site: a grid-operator token needs the site it may set limits for")
            check_site_id(site)
        elif site is not None:
            raise ValueError(f"site: only a grid-operator token is bound to a site, not a {role} token")
        created_at = _now(now)
        for _ in range(5):  # an id collision (48 bits) is unlikely; retry anyway
            token_id = secrets.token_hex(6)
            token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
            try:
                with self._db.transaction() as db:
                    db.execute(
                        "INSERT INTO tokens (id, role, site, token_sha256, created_at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (token_id, role, site, _sha256(token), _ts(created_at)),
                    )
            except sqlite3.IntegrityError:
                continue
            log.info("created token %s (%s%s)", token_id, role, f", site {site}" if site else "")
            return TokenRecord(token_id, role, site, created_at), token  # type: ignore[arg-type]
        raise StoreError(f"{self.path}: could not find a free token id")

    def verify(self, token: str) -> TokenRecord | None:
        """The record of an active token; ``None`` for a malformed, unknown or revoked one."""
        m = _TOKEN_RE.fullmatch(token) if isinstance(token, str) else None
        if m is None:
            return None
        rows = self._db.read(
            "SELECT id, role, site, token_sha256, created_at, revoked_at FROM tokens WHERE id = ?",
            (m.group(1),),
        )
        if not rows:
            return None
        token_id, role, site, digest, created_at, revoked_at = rows[0]
        if not hmac.compare_digest(digest, _sha256(token)) or revoked_at is not None:
            return None
        return TokenRecord(token_id, role, site, _dt(created_at))  # type: ignore[arg-type]

    def get(self, token_id: str) -> TokenRecord | None:
        """The record of a token by id, revoked or not."""
        rows = self._db.read(
            "SELECT id, role, site, created_at, revoked_at FROM tokens WHERE id = ?", (token_id,)
        )
        return self._record(rows[0]) if rows else None

    def list(self) -> builtins.list[TokenRecord]:
        """Every token, revoked ones included, oldest first."""
        rows = self._db.read(
            "SELECT id, role, site, created_at, revoked_at FROM tokens ORDER BY created_at, id"
        )
        return [self._record(r) for r in rows]

    def revoke(self, token_id: str, *, now: datetime | None = None) -> TokenRecord:
        """Revoke a token (a revoked one stays revoked as it was). Raises :class:`UnknownTokenError`."""
        with self._db.transaction() as db:
            db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (_ts(_now(now)), token_id),
            )
        record = self.get(token_id)
        if record is None:
            raise UnknownTokenError(f"no token with id {token_id!r} in {self.path}")
        log.info("revoked token %s", token_id)
        return record

    @staticmethod
    def _record(row: Sequence[Any]) -> TokenRecord:
        token_id, role, site, created_at, revoked_at = row
        return TokenRecord(token_id, role, site, _dt(created_at), _dt(revoked_at))  # type: ignore[arg-type]

    def close(self) -> None:
        self._db.close()


# -- limits and their audit ---------------------------------------------------------------------
@dataclass(frozen=True)
class AuditRecord:
    """One limit request received: who sent it, when, what, and what came of it.

    ``schedule`` is the site's schedule after the request, from the earlier of ``received_at`` and
    the request's first block start on (``None`` for a rejected request, whose ``error`` says why).
    ``measured_response`` is free-form JSON added later (what the site did).
    """

    id: int
    site: str
    token_id: str
    role: str
    received_at: datetime
    body: str
    status: Literal["accepted", "rejected"]
    error: str | None
    schedule: tuple[LimitBlock, ...] | None
    measured_response: Any = None


def _block_json(b: LimitBlock) -> dict[str, Any]:
    return {
        "start": _ts(b.start),
        "end": None if b.end is None else _ts(b.end),
        "max_current_a": b.max_current_a,
        "max_power_kw": b.max_power_kw,
        "min_per_point_kw": b.min_per_point_kw,
        "audit_id": b.audit_id,
    }


def _block_from_json(d: dict[str, Any]) -> LimitBlock:
    return LimitBlock(
        start=_dt(d["start"]),  # type: ignore[arg-type]
        end=_dt(d["end"]),
        max_current_a=float(d["max_current_a"]),
        max_power_kw=d["max_power_kw"],
        min_per_point_kw=d["min_per_point_kw"],
        audit_id=d["audit_id"],
    )


class LimitStore:
    """Each site's grid-operator limit schedule and the audit of every request, in an SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self._db = _Db(path)
        self.path = self._db.path
        #: Called with the site id and the audit id after each accepted request (the control
        #: loop re-plans, and later records the site's measured response).
        self.listeners: builtins.list[Callable[[str, int], None]] = []

    @classmethod
    def in_dir(cls, data_dir: str | Path) -> LimitStore:
        """The store in ``data_dir/api.sqlite3`` (directory created if missing)."""
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        return cls(Path(data_dir) / DB_NAME)

    def _blocks(self, db: sqlite3.Connection, site: str, at: datetime | None = None) -> list[LimitBlock]:
        sql = (
            "SELECT start_at, end_at, max_current_a, max_power_kw, min_per_point_kw, audit_id "
            "FROM limit_blocks WHERE site = ?"
        )
        params: list[Any] = [site]
        if at is not None:
            sql += " AND (end_at IS NULL OR end_at > ?)"
            params.append(_ts(at))
        rows = db.execute(sql + " ORDER BY start_at", params).fetchall()
        return [
            LimitBlock(_dt(s), _dt(e), a, p, m, audit_id)  # type: ignore[arg-type]
            for s, e, a, p, m, audit_id in rows
        ]

    def put(
        self,
        site: str,
        blocks: Sequence[LimitBlock],
        by: TokenRecord,
        *,
        body: str,
        received_at: datetime | None = None,
    ) -> LimitSchedule:
        """Merge ``blocks`` into the site's schedule (:func:`noxblock.limits.merge`) and audit it.

        ``body`` is the request as received. Returns the whole schedule after the request; its new
        blocks carry the audit entry's id. Raises ``ValueError`` for blocks that
        :func:`noxblock.limits.check_blocks` refuses.
        """
        new = check_blocks(blocks)
        if not new:
            raise ValueError("blocks: at least one block expected")
        received = _now(received_at)
        with self._db.transaction() as db:
            audit_id = db.execute(
                "INSERT INTO limit_audit (site, token_id, role, received_at, body, status) "
                "VALUES (?, ?, ?, ?, ?, 'accepted')",
                (site, by.id, by.role, _ts(received), body),
            ).lastrowid
            merged = merge(self._blocks(db, site), [replace(b, audit_id=audit_id) for b in new])
            db.execute("DELETE FROM limit_blocks WHERE site = ?", (site,))
            db.executemany(
                "INSERT INTO limit_blocks (site, start_at, end_at, max_current_a, max_power_kw, "
                "min_per_point_kw, audit_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        site,
                        _ts(b.start),
                        None if b.end is None else _ts(b.end),
                        b.max_current_a,
                        b.max_power_kw,
                        b.min_per_point_kw,
                        b.audit_id,
                    )
                    for b in merged
                ],
            )
            since = min(received, new[0].start)
            resulting = [_block_json(b) for b in merged if b.end is None or b.end > since]
            db.execute("UPDATE limit_audit SET schedule = ? WHERE id = ?", (json.dumps(resulting), audit_id))
        log.info(
            "limits for site %s from token %s (%s): %d blocks, audit %d",
            site, by.id, by.role, len(new), audit_id,
        )  # fmt: skip
        for listener in self.listeners:
            try:
                listener(site, int(audit_id or 0))
            except Exception:  # a listener must not undo an accepted limit
                log.exception("limit listener failed")
        return LimitSchedule(site, tuple(merged))

    def reject(
        self, site: str, by: TokenRecord, *, body: str, error: str, received_at: datetime | None = None
    ) -> int:
        """Audit a request that was refused (bad body); returns the audit id. The schedule is unchanged."""
        with self._db.transaction() as db:
            audit_id = db.execute(
                "INSERT INTO limit_audit (site, token_id, role, received_at, body, status, error) "
                "VALUES (?, ?, ?, ?, ?, 'rejected', ?)",
                (site, by.id, by.role, _ts(_now(received_at)), body, error),
            ).lastrowid
        log.info("rejected limits for site %s from token %s (%s): %s", site, by.id, by.role, error)
        return int(audit_id or 0)

    def schedule(self, site: str, at: datetime | None = None) -> LimitSchedule:
        """The site's schedule: every stored block, or with ``at`` those still in force at or after it."""
        with self._db.locked() as db:
            return LimitSchedule(site, tuple(self._blocks(db, site, at)))

    def audit(self, site: str, *, limit: int = 100, offset: int = 0) -> builtins.list[AuditRecord]:
        """The site's audit entries, newest first."""
        rows = self._db.read(
            "SELECT id, site, token_id, role, received_at, body, status, error, schedule, measured_response "
            "FROM limit_audit WHERE site = ? ORDER BY id DESC LIMIT ? OFFSET ?",
            (site, limit, offset),
        )
        return [
            AuditRecord(
                id=i,
                site=s,
                token_id=t,
                role=r,
                received_at=_dt(at),  # type: ignore[arg-type]
                body=body,
                status=st,
                error=err,
                schedule=None if sched is None else tuple(_block_from_json(d) for d in json.loads(sched)),
                measured_response=None if resp is None else json.loads(resp),
            )
            for i, s, t, r, at, body, st, err, sched, resp in rows
        ]

    def audit_record(self, audit_id: int) -> AuditRecord | None:
        """One audit entry by id (any site), or None."""
        rows = self._db.read("SELECT site FROM limit_audit WHERE id = ?", (audit_id,))
        if not rows:
            return None
        site = rows[0][0]
        n = self._db.read("SELECT COUNT(*) FROM limit_audit WHERE site = ? AND id > ?", (site, audit_id))[0][
            0
        ]
        found = self.audit(site, limit=1, offset=int(n))
        return found[0] if found and found[0].id == audit_id else None

    def set_measured_response(self, audit_id: int, response: Any) -> None:
        """Attach what the site did after a request (any JSON value) to its audit entry."""
        with self._db.transaction() as db:
            n = db.execute(
                "UPDATE limit_audit SET measured_response = ? WHERE id = ?",
                (json.dumps(response, allow_nan=False), audit_id),
            ).rowcount
        if n == 0:
            raise LookupError(f"no limit audit entry {audit_id} in {self.path}")

    def close(self) -> None:
        self._db.close()


def open_stores(data_dir: str | Path) -> tuple[TokenStore, LimitStore]:
    """The token and limit stores of ``data_dir/api.sqlite3`` (directory created if missing)."""
    return TokenStore.in_dir(data_dir), LimitStore.in_dir(data_dir)
