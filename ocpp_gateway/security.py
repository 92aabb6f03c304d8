"""Passwords and HTTP Basic auth (OCPP 1.6 security whitepaper, profiles 1 and 2).

Only a salted scrypt hash of a charge point's password (its ``AuthorizationKey``) is stored, as
``scrypt$<log2 n>$<r>$<p>$<salt hex>$<hash hex>``. One verification costs about 20 ms on a small
server (n = 2**12), so :class:`CredentialCache` keeps, per charge point, an HMAC of the last
password that verified, under a key that lives only in this process: a reconnecting point costs
microseconds and a boot storm pays scrypt once per point. Nothing here ever logs a password.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

__all__ = ["CredentialCache", "hash_password", "parse_basic_auth", "verify_password"]

_DEFAULT_LOG2_N = 12
_R = 8
_P = 1


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
