"""Passwords and HTTP Basic auth (OCPP 1.6 security whitepaper, profiles 1 and 2).

Only a salted scrypt hash of a charge point's password (its ``AuthorizationKey``) is stored, as
``scrypt$<log2 n>$<r>$<p>$<salt hex>$<hash hex>``. One verification costs about 20 ms on a small
server (n = 2**12), so :class:`CredentialCache` keeps, per charge point, an HMAC of the last
password that verified, under a key that lives only in this process: a reconnecting point costs
microseconds and a boot storm pays scrypt once per point. Nothing here ever logs a password.

:class:`HandshakeGuard` (sans-I/O, injectable clock) protects the handshake against credential
guessing and floods: lockouts after repeated failed authentications per charge point id and per
remote address, and a token bucket of new connections per address. :mod:`ocpp_gateway.server`
wires it in; the limits are ``GatewayConfig`` fields.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import math
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self

if TYPE_CHECKING:
    from ocpp_gateway.config import GatewayConfig

__all__ = [
    "CredentialCache",
    "HandshakeGuard",
    "Lockout",
    "Throttled",
    "address_key",
    "hash_password",
    "parse_basic_auth",
    "verify_password",
]

_DEFAULT_LOG2_N = 12
_R = 8
_P = 1


#: TLS 1.2 cipher suites of the server: forward-secret AES-GCM and ChaCha20 first, then the two
#: the OCPP 1.6 security whitepaper (and OCA test case TC_086) require a central system to offer,
#: TLS_RSA_WITH_AES_128_GCM_SHA256 and TLS_RSA_WITH_AES_256_GCM_SHA384, which Python's default
#: list leaves out. TLS 1.3 suites are not affected.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:AES128-GCM-SHA256:AES256-GCM-SHA384"


def tls_server_context(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    client_ca: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """The server side of security profiles 2 and 3: TLS 1.2 or above, the whitepaper's cipher
    suites, and with ``client_ca`` client certificates asked for but optional (so that profile 2
    points, with a password, and profile 3 points, with a certificate, share the port)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.load_cert_chain(cert_path, key_path)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(client_ca)
    return ctx


def hash_password(password: str, *, log2_n: int = _DEFAULT_LOG2_N) -> str:
    """A salted scrypt hash of ``password`` in a self-describing string."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**log2_n, r=_R, p=_P, dklen=32)
    return f"scrypt${log2_n}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a hash made by :func:`hash_password` (constant-time compare)."""
    try:
        scheme, log2_n, r, p, salt_hex, digest_hex = stored.split("$")
        if scheme != "scrypt":
            return False
        salt, expected = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex)
        digest = hashlib.scrypt(
            password.encode(), salt=salt, n=2 ** int(log2_n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)


def parse_basic_auth(header: str | None) -> tuple[str, str] | None:
    """``(user, password)`` from an ``Authorization: Basic ...`` header, or None if absent or broken."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


class CredentialCache:
    """Remembers, per charge point, the password that last verified against its stored hash."""

    __slots__ = ("_key", "_macs")

    def __init__(self) -> None:
        self._key = os.urandom(32)
        self._macs: dict[str, tuple[str, bytes]] = {}

    def _mac(self, password: str) -> bytes:
        return hmac.new(self._key, password.encode(), hashlib.sha256).digest()

    def check(self, charge_point_id: str, password: str, stored_hash: str) -> bool:
        """True if this password verified before against this same stored hash."""
        entry = self._macs.get(charge_point_id)
        return (
            entry is not None
            and entry[0] == stored_hash
            and hmac.compare_digest(entry[1], self._mac(password))
        )

    def remember(self, charge_point_id: str, password: str, stored_hash: str) -> None:
        self._macs[charge_point_id] = (stored_hash, self._mac(password))

    def forget(self, charge_point_id: str) -> None:
        self._macs.pop(charge_point_id, None)


# --- handshake limits: failed-authentication lockouts and a per-address rate limit ---------------

#: How often a throttled address is logged again while it stays throttled [s].
_THROTTLE_REPORT_S = 60.0


def address_key(remote: str) -> str:
    """The key one remote address is counted under.

    IPv4 addresses (also IPv4-mapped IPv6 ones) count alone; an IPv6 address counts with its /64
    network, since one host commonly holds a whole /64 and could otherwise spread its attempts
    over 2**64 addresses. Anything unparsable counts under its own text.
    """
    try:
        ip = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(frozen=True, slots=True)
class Lockout:
    """A lockout of a charge point id or of a remote address.

    Attributes
    ----------
    scope
        ``"charge_point"`` (``key`` is the id) or ``"address"`` (``key`` from :func:`address_key`).
    failures, window_s
        It began after ``failures`` failed authentications within ``window_s`` [count, s].
    lock_s
        Its length [s]; doubles with each lockout that follows within ``lock_max_s`` of the last.
    level
        1 for a first lockout, 2 for the one after, ...
    until
        Guard clock time at which it ends [s].
    """

    scope: Literal["charge_point", "address"]
    key: str
    failures: int
    window_s: float
    lock_s: float
    level: int
    until: float


@dataclass(frozen=True, slots=True)
class Throttled:
    """A refused handshake: retry after ``retry_after_s``; ``report``: log this one (rate-limited)."""

    retry_after_s: float
    report: bool
    refused: int  # refusals of this address since it was last reported, this one included


@dataclass(slots=True)
class _Lock:
    until: float
    level: int
    forget_at: float  # after this the level is forgotten (the next lockout is a first one again)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float
    reported_at: float = -math.inf
    refused: int = 0


def _evict(table: dict[str, Any], max_entries: int, expired: Callable[[Any], bool]) -> int:
    """Drop expired entries from the old end of ``table``, then the oldest until one more fits.

    Tables are kept in the order of last update (an updated key is re-inserted at the end), so the
    expired entries gather at the front and the sweep stops at the first live one: amortised
    O(1) per insertion, never a scan of the whole table in a flood.
    """
    dropped = 0
    while table:
        key = next(iter(table))
        if not expired(table[key]) and len(table) < max_entries:
            break
        del table[key]
        dropped += 1
    return dropped


class _FailureTracker:
    """Failed authentications and lockouts for one kind of key (charge point ids or addresses)."""

    __slots__ = ("_failures", "_locks", "lock_max_s", "lock_s", "max_entries", "max_failures", "scope",
                 "window_s")  # fmt: skip

    def __init__(
        self,
        scope: Literal["charge_point", "address"],
        *,
        max_failures: int,
        window_s: float,
        lock_s: float,
        lock_max_s: float,
        max_entries: int,
    ) -> None:
        self.scope: Literal["charge_point", "address"] = scope
        self.max_failures = max_failures
        self.window_s = window_s
        self.lock_s = lock_s
        self.lock_max_s = lock_max_s
        self.max_entries = max_entries
        self._failures: dict[str, list[float]] = {}  # key -> failure times within the window
        self._locks: dict[str, _Lock] = {}

    def __len__(self) -> int:
        return len(self._failures) + len(self._locks)

    def locked(self, key: str, now: float) -> Lockout | None:
        lock = self._locks.get(key)
        if lock is None or now >= lock.until:
            return None
        return Lockout(
            self.scope, key, self.max_failures, self.window_s, self._length(lock.level), lock.level,
            lock.until,
        )  # fmt: skip

    def _length(self, level: int) -> float:
        return min(self.lock_s * 2.0 ** (level - 1), self.lock_max_s)

    def failed(self, key: str, now: float) -> Lockout | None:
        """Count a failure; the lockout it begins, if any (None too while one is in force)."""
        if self.max_failures <= 0 or self.locked(key, now) is not None:
            return None
        horizon = now - self.window_s
        times = [t for t in self._failures.pop(key, ()) if t > horizon]
        times.append(now)
        if len(times) < self.max_failures:
            _evict(self._failures, self.max_entries, lambda ts: ts[-1] <= horizon)
            self._failures[key] = times
            return None
        previous = self._locks.pop(key, None)
        level = previous.level + 1 if previous is not None and now < previous.forget_at else 1
        lock_s = self._length(level)
        until = now + lock_s
        _evict(self._locks, self.max_entries, lambda lk: lk.forget_at <= now)
        self._locks[key] = _Lock(until, level, until + self.lock_max_s)
        return Lockout(self.scope, key, len(times), self.window_s, lock_s, level, until)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
        self._locks.pop(key, None)


class HandshakeGuard:
    """Protection of the websocket handshake against credential guessing and floods. Sans-I/O.

    The server asks, for each new connection and in this order:

    1. :meth:`admit` (remote address): a token bucket of ``rate_per_s`` new connections per
       second and ``burst`` at once per address (0 disables). A refused connection is answered
       ``429 Too Many Requests`` with ``Retry-After`` (RFC 6585: it is this client that sends too
       many, not the server that is unavailable, which a 503 would say to monitoring and load
       balancers). The default burst takes a whole boot storm of thousands of points from one
       address (a site behind one NAT or mobile-network gateway, ``bench/ocpp_load.py``).
    2. :meth:`locked` (charge point id and address): while a lockout is in force the handshake
       is refused *without checking the credentials*, so a guess made during a lockout cannot
       succeed and costs no scrypt verification.
    3. After the gateway checked the credentials, :meth:`failed` or :meth:`succeeded`.
       ``max_failures`` failures for one id within ``window_s`` lock that id for ``lock_s``;
       ``ip_max_failures`` failures from one address (any ids) within ``ip_window_s`` lock that
       address for as long. A lockout that follows another within ``lock_max_s`` of its end lasts
       twice as long, up to ``lock_max_s``. A success clears the id's failures and lockout level;
       it does not clear the address's, or one valid credential would shield a guesser.

    A refusal during a lockout is the same ``401`` (with the same ``WWW-Authenticate``) as a
    wrong password, without ``Retry-After``. The OCPP 1.6 security whitepaper defines no lockout;
    its profiles 1 and 2 authenticate with HTTP Basic (RFC 7617), whose refusal is 401, and that
    is the refusal charge points are built to retry with their own back-off, so a point with the
    right password gets in after the lockout. A distinct answer (429, a retry time) would tell a
    guesser that the id is being locked and when to resume; common practice (OWASP's
    authentication guidance) answers a locked account exactly like a failed login. The
    whitepaper's ``AuthorizationKey`` of 16 to 20 random bytes cannot be guessed anyway: the
    lockouts matter for weaker operator-chosen passwords, and they cap the scrypt work (about
    20 ms per wrong password) that guessing costs the server.

    Trade-offs: anyone who knows an id can keep it locked out with ``max_failures`` guesses per
    lockout (the price of any per-account lockout; a point with a client certificate, security
    profile 3, is let through regardless). And points that share one address share its failure
    count: set ``ip_max_failures`` to 0 where many points sit behind one NAT.

    Memory is bounded: each table (failures and lockouts, per id and per address; buckets) holds at
    most ``max_entries`` keys, kept in the order of last update; expired entries are dropped from
    the old end as new ones come, and when a table is full the oldest entry goes. Single failures
    and lockouts live in separate tables, so a flood of one-off random ids cannot push a lockout
    out. The state is in memory only: a restart forgets it. ``clock`` is a monotonic clock in
    seconds, injectable for tests.
    """

    def __init__(
        self,
        *,
        max_failures: int = 5,
        window_s: float = 60.0,
        lock_s: float = 300.0,
        lock_max_s: float = 3600.0,
        ip_max_failures: int = 20,
        ip_window_s: float = 60.0,
        rate_per_s: float = 100.0,
        burst: int = 5000,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_entries = max_entries
        self._ids = _FailureTracker(
            "charge_point", max_failures=max_failures, window_s=window_s, lock_s=lock_s,
            lock_max_s=lock_max_s, max_entries=max_entries,
        )  # fmt: skip
        self._addresses = _FailureTracker(
            "address", max_failures=ip_max_failures, window_s=ip_window_s, lock_s=lock_s,
            lock_max_s=lock_max_s, max_entries=max_entries,
        )  # fmt: skip
        self._buckets: dict[str, _Bucket] = {}
        #: Counters for monitoring: refused by the rate limit, refused during a lockout, lockouts.
        self.stats: dict[str, int] = {"throttled": 0, "locked_out": 0, "lockouts": 0}

    @classmethod
    def from_config(cls, config: GatewayConfig, *, clock: Callable[[], float] = time.monotonic) -> Self:
        """The guard with the limits of a :class:`~ocpp_gateway.config.GatewayConfig`."""
        return cls(
            max_failures=config.lockout_failures,
            window_s=config.lockout_window_s,
            lock_s=config.lockout_s,
            lock_max_s=config.lockout_max_s,
            ip_max_failures=config.ip_lockout_failures,
            ip_window_s=config.ip_lockout_window_s,
            rate_per_s=config.handshake_rate_per_s,
            burst=config.handshake_burst,
            max_entries=config.handshake_max_tracked,
            clock=clock,
        )

    def tracked(self) -> int:
        """Entries held in all tables (bounded by about 5 x ``max_entries``)."""
        return len(self._ids) + len(self._addresses) + len(self._buckets)

    def admit(self, remote: str) -> Throttled | None:
        """Take a token for a new connection from ``remote``: None if admitted, else the refusal."""
        if self.rate_per_s <= 0:
            return None
        now = self.clock()
        key = address_key(remote)
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            _evict(self._buckets, self.max_entries, self._bucket_full_at(now))
            bucket = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate_per_s)
            bucket.at = now
        self._buckets[key] = bucket
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        self.stats["throttled"] += 1
        bucket.refused += 1
        report = now - bucket.reported_at >= _THROTTLE_REPORT_S
        refused = bucket.refused
        if report:
            bucket.reported_at, bucket.refused = now, 0
        return Throttled((1.0 - bucket.tokens) / self.rate_per_s, report, refused)

    def _bucket_full_at(self, now: float) -> Callable[[_Bucket], bool]:
        def full(b: _Bucket) -> bool:
            return b.tokens + (now - b.at) * self.rate_per_s >= self.burst

        return full

    def locked(self, charge_point_id: str, remote: str) -> Lockout | None:
        """The lockout in force for this id or this address, or None. Counts a refusal if locked."""
        now = self.clock()
        lock = self._ids.locked(charge_point_id, now) or self._addresses.locked(address_key(remote), now)
        if lock is not None:
            self.stats["locked_out"] += 1
        return lock

    def failed(self, charge_point_id: str, remote: str) -> list[Lockout]:
        """Count a failed authentication; the lockouts it began (each to be reported once)."""
        now = self.clock()
        began = [
            lock
            for lock in (
                self._ids.failed(charge_point_id, now),
                self._addresses.failed(address_key(remote), now),
            )
            if lock is not None
        ]
        self.stats["lockouts"] += len(began)
        return began

    def succeeded(self, charge_point_id: str) -> None:
        """A successful authentication: forget the id's failures and lockout level."""
        self._ids.succeeded(charge_point_id)
