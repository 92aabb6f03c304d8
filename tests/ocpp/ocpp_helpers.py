"""Helpers for the OCPP gateway tests: raw websocket charge points and a test configuration.

``FakeChargePoint`` speaks OCPP-J with raw frames (so tests can also send broken ones). Commands
from the central system are answered by ``handlers`` (action -> payload -> answer); without a
handler they queue up in ``cs_calls`` for the test to answer by hand.

``Pki`` is a throw-away certificate authority (made with ``ocpp_gateway.certificates``) with TLS
contexts for a gateway on 127.0.0.1; ``ocsp_hash_data`` computes ``certificateHashData`` the way
an OCSP ``CertID`` does, with ``cryptography``'s own OCSP code, independently of ours.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp
from websockets.asyncio.client import ClientConnection

from ocpp_gateway import CertificateAuthority, GatewayConfig, KnownChargePoint
from ocpp_gateway.certificates import load_certificates, make_ca, make_csr

T0 = datetime(2024, 1, 15, 17, 0, tzinfo=UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


class CallErrorReply(Exception):  # noqa: N818 - mirrors the frame name
    def __init__(self, frame: list[Any]) -> None:
        super().__init__(f"{frame[2]}: {frame[3]}")
        self.frame = frame
        self.code = frame[2]


class FakeChargePoint:
    """A charge point built from raw websocket frames."""

    _ids = itertools.count(1)

    def __init__(self, ws: ClientConnection, cp_id: str) -> None:
        self.ws = ws
        self.id = cp_id
        self.handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        self.cs_calls: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.replies: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.received_calls: list[list[Any]] = []
        self.closed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for text in self.ws:
                frame = json.loads(text)
                if frame[0] == 2:
                    self.received_calls.append(frame)
                    handler = self.handlers.get(frame[2])
                    if handler is None:
                        await self.cs_calls.put(frame)
                    else:
                        await self.ws.send(json.dumps([3, frame[1], handler(frame[3])]))
                else:
                    await self.replies.put(frame)
        except Exception:
            pass
        finally:
            self.closed.set()

    async def send_text(self, text: str | bytes) -> None:
        await self.ws.send(text)

    async def reply(self, timeout_s: float = 5.0) -> list[Any]:
        async with asyncio.timeout(timeout_s):
            return await self.replies.get()

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send a CALL and return the CALLRESULT payload; raise CallErrorReply on a CALLERROR."""
        unique_id = f"t{next(self._ids)}"
        await self.ws.send(json.dumps([2, unique_id, action, payload]))
        frame = await self.reply()
        assert frame[1] == unique_id, frame
        if frame[0] == 4:
            raise CallErrorReply(frame)
        return frame[2]

    async def next_cs_call(self, timeout_s: float = 5.0) -> list[Any]:
        async with asyncio.timeout(timeout_s):
            return await self.cs_calls.get()

    async def answer(self, frame: list[Any], payload: dict[str, Any]) -> None:
        await self.ws.send(json.dumps([3, frame[1], payload]))

    async def boot(self) -> dict[str, Any]:
        return await self.call(
            "BootNotification", {"chargePointVendor": "Acme", "chargePointModel": "Lamp-11"}
        )

    async def status(self, connector_id: int, status: str, error_code: str = "NoError") -> dict[str, Any]:
        return await self.call(
            "StatusNotification", {"connectorId": connector_id, "errorCode": error_code, "status": status}
        )

    async def start(
        self, connector_id: int, id_tag: str, meter_start_wh: int = 0, at: datetime = T0
    ) -> dict[str, Any]:
        return await self.call(
            "StartTransaction",
            {
                "connectorId": connector_id,
                "idTag": id_tag,
                "meterStart": meter_start_wh,
                "timestamp": iso(at),
            },
        )

    async def stop(
        self, transaction_id: int, meter_stop_wh: int, at: datetime = T0, **extra: Any
    ) -> dict[str, Any]:
        return await self.call(
            "StopTransaction",
            {"transactionId": transaction_id, "meterStop": meter_stop_wh, "timestamp": iso(at), **extra},
        )

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


def basic_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def gateway_config(**overrides: Any) -> GatewayConfig:
    base: dict[str, Any] = {
        "charge_points": tuple(KnownChargePoint(f"CP{i:02d}") for i in range(1, 6)),
        "allow_profile_0": True,
        "failsafe_current_a": None,
        "call_timeout_s": 5.0,
        "ping_interval_s": None,
    }
    base.update(overrides)
    return GatewayConfig(**base)


_OCSP_HASHES = {"SHA256": hashes.SHA256(), "SHA384": hashes.SHA384(), "SHA512": hashes.SHA512()}


def ocsp_hash_data(
    certificate_pem: str, algorithm: str = "SHA256", *, issuer_pem: str | None = None
) -> dict[str, str]:
    """``certificateHashData`` from an OCSP request (upper-case hex, as some points send it)."""
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    issuer = x509.load_pem_x509_certificate((issuer_pem or certificate_pem).encode())
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, _OCSP_HASHES[algorithm]).build()
    return {
        "hashAlgorithm": algorithm,
        "issuerNameHash": request.issuer_name_hash.hex().upper(),
        "issuerKeyHash": request.issuer_key_hash.hex().upper(),
        "serialNumber": format(request.serial_number, "X"),
    }


@dataclass(frozen=True)
class Pki:
    """A CA in ``directory`` (``ca.pem``, ``ca.key``) and TLS material signed by it."""

    directory: Path
    ca_pem: str
    ca_key_pem: str

    @classmethod
    def create(cls, directory: Path, common_name: str = "noxblock test CA") -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        ca_pem, ca_key_pem = make_ca(common_name)
        (directory / "ca.pem").write_text(ca_pem)
        (directory / "ca.key").write_text(ca_key_pem)
        return cls(directory, ca_pem, ca_key_pem)

    @property
    def ca_cert_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key_path(self) -> Path:
        return self.directory / "ca.key"

    @property
    def ca_certificate(self) -> x509.Certificate:
        return load_certificates(self.ca_pem)[0]

    def authority(self) -> CertificateAuthority:
        return CertificateAuthority.from_files(self.ca_cert_path, self.ca_key_path)

    def issue(self, common_name: str, *, server_names: tuple[str, ...] = ()) -> tuple[str, str]:
        """``(certificate chain PEM, key PEM)`` for a new key, signed by this CA."""
        csr_pem, key_pem = make_csr(common_name)
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        return self.authority().sign(csr, server_names=server_names).chain_pem, key_pem

    def _files(self, name: str, cert_pem: str, key_pem: str) -> tuple[Path, Path]:
        cert, key = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        cert.write_text(cert_pem)
        key.write_text(key_pem)
        return cert, key

    def server_context(self, *, client_certificates: bool = False) -> ssl.SSLContext:
        """Server TLS for 127.0.0.1; with ``client_certificates`` it asks for (optional) client ones."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*self._files("server", *self.issue("localhost", server_names=("127.0.0.1",))))
        if client_certificates:
            ctx.verify_mode = ssl.CERT_OPTIONAL
            ctx.load_verify_locations(cadata=self.ca_pem)
        return ctx

    def client_context(
        self, *, cert_pem: str | None = None, key_pem: str | None = None, cadata: str | None = None
    ) -> ssl.SSLContext:
        """Client TLS trusting ``cadata`` (default this CA), with a client certificate if given."""
        ctx = ssl.create_default_context(cadata=cadata or self.ca_pem)
        if cert_pem is not None and key_pem is not None:
            ctx.load_cert_chain(*self._files("client", cert_pem, key_pem))
        return ctx
