"""Certificates for the OCPP 1.6 security extension ("Improved security for OCPP 1.6-J", edition 3):
a small certificate authority, CSR checks, ``certificateHashData``. Uses ``cryptography``; no I/O
but reading the CA files.

* :func:`check_csr` is what the central system checks before it answers ``SignCertificate``:
  a PEM PKCS#10 request whose signature verifies (the point holds the key), whose commonName is
  the charge point id (the name the server's mutual-TLS check compares, profile 3) and whose key
  is strong enough (RSA >= 2048 bits, elliptic curve >= 224 bits, as the OCA test tool checks).
* :class:`CertificateAuthority` signs what passed, as a client certificate (or, for the gateway's
  own TLS endpoint, a server certificate). The whitepaper recommends a central system forwards
  CSRs to a separate CA server; this embedded one is loaded from ``GatewayConfig.ca_cert_path`` /
  ``ca_key_path`` (:func:`load_authority`), and without them every CSR is refused. Validity
  periods use the wall clock, never a simulated one: TLS libraries check them against real time.
* :func:`certificate_hash_data` computes a ``CertificateHashDataType``: hash of the DER of the
  issuer's distinguished name, hash of the issuer's public key (the bits of ``subjectPublicKey``,
  as an OCSP ``CertID`` has it), the serial number in hexadecimal without leading zeros. Hashes are
  lower-case hex; :meth:`CertificateHashData.matches` compares case-insensitively.
* :func:`make_ca`, :func:`make_csr`, :func:`sign_firmware` and :func:`verify_firmware_signature`
  are for tests and the charge-point simulator.

Never logged: private keys. :class:`CertificateError` carries a reason a person can act on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ocpp_gateway.errors import ConfigError, GatewayError

__all__ = [
    "HASH_ALGORITHMS",
    "CertificateAuthority",
    "CertificateError",
    "CertificateHashData",
    "IssuedCertificate",
    "certificate_hash_data",
    "check_csr",
    "load_authority",
    "load_certificates",
    "make_ca",
    "make_csr",
    "sign_firmware",
    "verify_firmware_signature",
]

#: ``HashAlgorithmEnumType`` of the whitepaper and the hash functions behind it.
HASH_ALGORITHMS = {"SHA256": hashlib.sha256, "SHA384": hashlib.sha384, "SHA512": hashlib.sha512}
MIN_RSA_BITS = 2048
MIN_EC_BITS = 224
_BACKDATE = timedelta(minutes=5)  # tolerate a point whose clock is a little behind

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class CertificateError(GatewayError):
    """A certificate, CSR or key that cannot be used; ``reason`` says why (no secret in it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- certificateHashData -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertificateHashData:
    """A ``CertificateHashDataType``: which certificate, by its issuer and serial number.

    Parameters
    ----------
    hash_algorithm
        ``SHA256``, ``SHA384`` or ``SHA512``.
    issuer_name_hash
        Hash of the DER-encoded issuer distinguished name [hex].
    issuer_key_hash
        Hash of the issuer's public key bits [hex].
    serial_number
        Serial number [hex, no leading zeros].
    """

    hash_algorithm: str
    issuer_name_hash: str
    issuer_key_hash: str
    serial_number: str

    def to_ocpp(self) -> dict[str, str]:
        return {
            "hashAlgorithm": self.hash_algorithm,
            "issuerNameHash": self.issuer_name_hash,
            "issuerKeyHash": self.issuer_key_hash,
            "serialNumber": self.serial_number,
        }

    @classmethod
    def from_ocpp(cls, data: dict[str, Any]) -> CertificateHashData:
        return cls(data["hashAlgorithm"], data["issuerNameHash"], data["issuerKeyHash"], data["serialNumber"])

    def matches(self, other: CertificateHashData) -> bool:
        """Same certificate: equal fields, hex compared without case and leading zeros of the serial."""
        return (
            self.hash_algorithm == other.hash_algorithm
            and self.issuer_name_hash.lower() == other.issuer_name_hash.lower()
            and self.issuer_key_hash.lower() == other.issuer_key_hash.lower()
            and self.serial_number.lower().lstrip("0") == other.serial_number.lower().lstrip("0")
        )


def _der_item(data: bytes, offset: int) -> tuple[int, int, int]:
    """``(tag, value start, value end)`` of the DER item at ``offset``."""
    tag = data[offset]
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[start : start + n], "big")
        start += n
    return tag, start, start + length


def _public_key_bits(public_key: Any) -> bytes:
    """The content of ``subjectPublicKey`` (a BIT STRING) of a key's SubjectPublicKeyInfo."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _, start, _ = _der_item(spki, 0)  # SEQUENCE
    _, _, algorithm_end = _der_item(spki, start)  # AlgorithmIdentifier
    tag, bits_start, bits_end = _der_item(spki, algorithm_end)
    if tag != 0x03:
        raise CertificateError("public key is not a BIT STRING")
    return spki[bits_start + 1 : bits_end]  # the first octet counts unused bits (0 for keys)


def certificate_hash_data(
    certificate: x509.Certificate | str,
    *,
    issuer: x509.Certificate | None = None,
    hash_algorithm: str = "SHA256",
) -> CertificateHashData:
    """The ``certificateHashData`` of a certificate (PEM text or parsed).

    ``issuer`` is the certificate of its issuer; None for a self-issued one (a root), which is its
    own issuer. Raises :class:`CertificateError` for an unknown algorithm or a missing issuer.
    """
    cert = load_certificates(certificate)[0] if isinstance(certificate, str) else certificate
    digest = HASH_ALGORITHMS.get(hash_algorithm)
    if digest is None:
        raise CertificateError(f"unknown hash algorithm {hash_algorithm!r}")
    if issuer is None:
        if cert.issuer != cert.subject:
            raise CertificateError("the issuer's certificate is needed for a certificate that is not a root")
        issuer = cert
    return CertificateHashData(
        hash_algorithm,
        digest(cert.issuer.public_bytes()).hexdigest(),
        digest(_public_key_bits(issuer.public_key())).hexdigest(),
        format(cert.serial_number, "x"),
    )


# --- parsing and checking --------------------------------------------------------------------------


def load_certificates(pem: str | bytes) -> list[x509.Certificate]:
    """The certificates in a PEM text, in order; :class:`CertificateError` if there are none."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError("not a PEM-encoded X.509 certificate") from None
    if not certs:
        raise CertificateError("no certificate in the PEM text")
    return certs


def _common_name(name: x509.Name) -> str | None:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1:
        return None
    value = values[0].value
    return value if isinstance(value, str) else None


def _check_key_strength(public_key: Any) -> None:
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise CertificateError(f"RSA key of {public_key.key_size} bits; at least {MIN_RSA_BITS} needed")
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.key_size < MIN_EC_BITS:
            raise CertificateError(
                f"elliptic-curve key of {public_key.curve.key_size} bits; at least {MIN_EC_BITS} needed"
            )
    else:
        raise CertificateError(f"key type {type(public_key).__name__} is not allowed (RSA or EC only)")


def check_csr(csr_pem: str, charge_point_id: str) -> x509.CertificateSigningRequest:
    """The parsed CSR if a central system may have it signed for ``charge_point_id``.

    Raises :class:`CertificateError` when it is not a PEM PKCS#10 request, its signature does not
    verify, its commonName is not the charge point id, or its key is weak.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError("not a PEM-encoded PKCS#10 certificate signing request") from None
    try:
        public_key = csr.public_key()
        signature_ok = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError("the request's key or signature cannot be read") from None
    if not signature_ok:
        raise CertificateError("the request's signature does not verify")
    cn = _common_name(csr.subject)
    if cn != charge_point_id:
        raise CertificateError(f"commonName {cn!r} is not the charge point id {charge_point_id!r}")
    _check_key_strength(public_key)
    return csr


# --- the certificate authority ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate the CA signed. Times aware UTC; ``serial_hex`` as in ``certificateHashData``."""

    certificate: x509.Certificate
    pem: str
    chain_pem: str  # the certificate, then the CA's own certificate(s): ``certificateChain``
    serial_hex: str
    fingerprint_sha256: str  # hex of the SHA-256 of the DER
    not_before: datetime
    not_after: datetime


class CertificateAuthority:
    """Signs charge point (client) and server certificates with one CA key.

    Parameters
    ----------
    certificate
        The CA's certificate (``BasicConstraints`` CA, matching ``private_key``).
    private_key
        The CA's RSA or EC private key.
    lifetime_days
        Validity of an issued certificate [days]; never beyond the CA's own.
    chain
        Certificates above the CA's, sent along in ``certificateChain`` (may be empty).
    """

    def __init__(
        self,
        certificate: x509.Certificate,
        private_key: PrivateKey,
        *,
        lifetime_days: int = 365,
        chain: Sequence[x509.Certificate] = (),
    ) -> None:
        if not isinstance(private_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise CertificateError("the CA key must be an RSA or EC key")
        if _public_key_bits(private_key.public_key()) != _public_key_bits(certificate.public_key()):
            raise CertificateError("the CA key does not belong to the CA certificate")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CertificateError("the CA certificate is not a CA (BasicConstraints CA:TRUE missing)")
        if lifetime_days < 1:
            raise CertificateError(f"lifetime must be at least 1 day, got {lifetime_days}")
        self.certificate = certificate
        self._key = private_key
        self.lifetime_days = lifetime_days
        self.chain = tuple(chain)

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @classmethod
    def from_files(
        cls, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str], *, lifetime_days: int = 365
    ) -> CertificateAuthority:
        """Load a CA from a PEM certificate file (the CA first, then any parents) and a PEM key file.

        The key file must not be encrypted; keep it readable by the gateway's user only.
        """
        with open(cert_path, "rb") as f:
            certs = load_certificates(f.read())
        with open(key_path, "rb") as f:
            key_data = f.read()
        try:
            key = serialization.load_pem_private_key(key_data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise CertificateError(f"{key_path}: not an unencrypted PEM private key") from None
        return cls(certs[0], key, lifetime_days=lifetime_days, chain=certs[1:])  # type: ignore[arg-type]

    def sign(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        server_names: Sequence[str] = (),
        now: datetime | None = None,
    ) -> IssuedCertificate:
        """Sign a CSR (check it with :func:`check_csr` first).

        Without ``server_names`` a client certificate (``clientAuth``); with them a server
        certificate for those DNS names or IP addresses (``serverAuth``, subjectAltName).
        """
        now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        public_key = csr.public_key()
        _check_key_strength(public_key)
        not_after = min(now + timedelta(days=self.lifetime_days), self.certificate.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    key_agreement=isinstance(public_key, ec.EllipticCurvePublicKey),
                    content_commitment=False,
                    data_encipherment=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        if server_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in server_names]), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        parents = "".join(
            c.public_bytes(serialization.Encoding.PEM).decode() for c in (self.certificate, *self.chain)
        )
        return IssuedCertificate(
            cert,
            pem,
            pem + parents,
            format(cert.serial_number, "x"),
            cert.fingerprint(hashes.SHA256()).hex(),
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
        )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def load_authority(
    cert_path: str | os.PathLike[str] | None,
    key_path: str | os.PathLike[str] | None,
    *,
    lifetime_days: int = 365,
) -> CertificateAuthority | None:
    """The CA of a gateway configuration, or None when none is configured.

    Raises :class:`~ocpp_gateway.errors.ConfigError` naming the field when the files are unusable.
    """
    if cert_path is None and key_path is None:
        return None
    if cert_path is None or key_path is None:
        raise ConfigError("ca_cert_path", "ca_cert_path and ca_key_path go together")
    try:
        return CertificateAuthority.from_files(cert_path, key_path, lifetime_days=lifetime_days)
    except OSError as e:
        raise ConfigError("ca_cert_path", f"cannot read the CA files: {e.strerror or e}") from None
    except CertificateError as e:
        raise ConfigError("ca_cert_path", e.reason) from None


# --- helpers for tests and the simulator -------------------------------------------------------------


def _pem_key(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def make_ca(
    common_name: str = "noxblock test CA", *, days: int = 30, now: datetime | None = None
) -> tuple[str, str]:
    """A self-signed CA: ``(certificate PEM, unencrypted key PEM)``, EC P-256. For tests and demos."""
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)


def make_csr(
    common_name: str, *, organization: str | None = None, key: PrivateKey | None = None
) -> tuple[str, str]:
    """A CSR and its key: ``(CSR PEM, unencrypted key PEM)``; a new EC P-256 key unless given."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    csr = (
        x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes)).sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)


def sign_firmware(firmware: bytes, key_pem: str) -> str:
    """Base64 signature of a firmware image (SHA-256; ECDSA or RSA PKCS#1 v1.5), for SignedUpdateFirmware."""
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(firmware, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(firmware, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise CertificateError("firmware signing key must be RSA or EC")
    return base64.b64encode(signature).decode()


def verify_firmware_signature(
    firmware: bytes, signature_b64: str, signing_certificate: x509.Certificate
) -> bool:
    """Whether ``signature_b64`` is the signing certificate's key's signature of ``firmware``."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    public_key = signing_certificate.public_key()
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, firmware, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, firmware, padding.PKCS1v15(), hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True
