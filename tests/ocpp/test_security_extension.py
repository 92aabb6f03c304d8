"""The OCPP 1.6 security extension beyond the OCTT cases: the certificate authority and CSR checks,
``certificateHashData`` against an independent computation (``cryptography``'s OCSP code), schema
validation of the new messages, the schema migration 1 -> 2, security-profile downgrades, the
remote-start TxProfile, and the charge-point simulator's flows end to end through the gateway.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from ocpp.v16.enums import CertificateSignedStatus, CertificateStatus, DeleteCertificateStatus
from ocpp_helpers import Pki, basic_auth, gateway_config, ocsp_hash_data
from websockets.exceptions import InvalidStatus

from ocpp_gateway import (
    CertificateHashData,
    ChargingProfile,
    ConfigError,
    Gateway,
    GatewayConfig,
    KnownChargePoint,
    PlanError,
    SqliteStorage,
    hash_password,
)
from ocpp_gateway.certificates import (
    CertificateAuthority,
    CertificateError,
    certificate_hash_data,
    check_csr,
    load_authority,
    load_certificates,
    make_ca,
    make_csr,
    sign_firmware,
)
from ocpp_gateway.dispatch import SchedulePeriod
from ocpp_gateway.errors import PropertyConstraintViolation
from ocpp_gateway.simulator import PointSpec, SimulatedChargePoint
from ocpp_gateway.storage import MIGRATIONS, CertificateRequestStatus

WAIT_S = 20.0  # generous for a slow machine; never a timing assertion
PASSWORD = "security-extension-pass"


# --- certificates.py -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def authority(tmp_path_factory) -> tuple[Pki, CertificateAuthority]:
    pki = Pki.create(tmp_path_factory.mktemp("ca"))
    return pki, pki.authority()


@pytest.mark.parametrize("algorithm", ["SHA256", "SHA384", "SHA512"])
def test_hash_data_is_the_ocsp_cert_id(authority, algorithm):
    pki, ca = authority
    leaf = ca.sign(check_csr(make_csr("CP01")[0], "CP01"))
    ours = certificate_hash_data(leaf.certificate, issuer=ca.certificate, hash_algorithm=algorithm)
    theirs = ocsp_hash_data(leaf.pem, algorithm, issuer_pem=pki.ca_pem)
    assert ours.to_ocpp() == {k: v.lower() for k, v in theirs.items()} | {"hashAlgorithm": algorithm}
    # A root is its own issuer.
    assert certificate_hash_data(pki.ca_pem, hash_algorithm=algorithm).matches(
        CertificateHashData.from_ocpp(ocsp_hash_data(pki.ca_pem, algorithm))
    )


def test_hash_data_fields_by_hand(authority):
    pki, _ = authority
    cert = pki.ca_certificate
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ec_point = cert.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert spki.endswith(ec_point)  # the key bits are the last bytes of the SubjectPublicKeyInfo
    data = certificate_hash_data(cert)
    assert data.issuer_key_hash == hashes_hex(ec_point)
    assert data.issuer_name_hash == hashes_hex(cert.issuer.public_bytes())
    assert data.serial_number == format(cert.serial_number, "x") and not data.serial_number.startswith("0")


def hashes_hex(data: bytes) -> str:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize().hex()


def test_hash_data_matching_ignores_case_and_leading_zeros():
    a = CertificateHashData("SHA256", "ab", "cd", "0f1")
    assert a.matches(CertificateHashData("SHA256", "AB", "CD", "F1"))
    assert not a.matches(CertificateHashData("SHA384", "ab", "cd", "f1"))
    assert not a.matches(CertificateHashData("SHA256", "ab", "cd", "f2"))


def test_hash_data_of_a_non_root_needs_its_issuer(authority):
    _, ca = authority
    leaf = ca.sign(check_csr(make_csr("CP01")[0], "CP01"))
    with pytest.raises(CertificateError):
        certificate_hash_data(leaf.certificate)


def test_csr_checks():
    csr, _ = make_csr("CP01", organization="noxblock")
    assert check_csr(csr, "CP01").subject.rfc4514_string() == "CN=CP01,O=noxblock"
    with pytest.raises(CertificateError, match="commonName 'CP02' is not the charge point id 'CP01'"):
        check_csr(make_csr("CP02")[0], "CP01")
    for garbage in (
        "",
        "hello",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ):
        with pytest.raises(CertificateError, match="not a PEM-encoded PKCS#10"):
            check_csr(garbage, "CP01")
    weak, _ = make_csr("CP01", key=rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(CertificateError, match="RSA key of 1024 bits"):
        check_csr(weak, "CP01")


def test_csr_with_a_broken_signature_is_refused():
    der = x509.load_pem_x509_csr(make_csr("CP01")[0].encode()).public_bytes(serialization.Encoding.DER)
    broken = der[:-1] + bytes([der[-1] ^ 0xFF])  # the last byte belongs to the signature
    body = base64.encodebytes(broken).decode()
    pem = f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(CertificateError, match="signature"):
        check_csr(pem, "CP01")


def test_signed_certificate_verifies_against_the_ca_and_is_a_client_certificate(authority):
    pki, ca = authority
    csr_pem, key_pem = make_csr("CP01", organization="noxblock")
    issued = ca.sign(check_csr(csr_pem, "CP01"))
    leaf, parent = load_certificates(issued.chain_pem)
    leaf.verify_directly_issued_by(pki.ca_certificate)
    assert parent == pki.ca_certificate and leaf == issued.certificate
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_after_utc <= pki.ca_certificate.not_valid_after_utc  # never outlives the CA
    assert issued.serial_hex == format(leaf.serial_number, "x") and len(issued.serial_hex) <= 40
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert leaf.public_key() == key.public_key()


def test_another_ca_does_not_verify(authority):
    _, ca = authority
    other = load_certificates(make_ca("another CA")[0])[0]
    leaf = ca.sign(check_csr(make_csr("CP01")[0], "CP01")).certificate
    with pytest.raises(Exception):  # noqa: B017 - InvalidSignature or ValueError, both mean "not issued by"
        leaf.verify_directly_issued_by(other)


def test_server_certificate_names(authority):
    _, ca = authority
    csr = x509.load_pem_x509_csr(make_csr("localhost")[0].encode())
    cert = ca.sign(csr, server_names=("127.0.0.1", "gw.example.org")).certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in san] == ["127.0.0.1", "gw.example.org"]


def test_ca_files_are_checked(tmp_path):
    pki = Pki.create(tmp_path / "a")
    other = Pki.create(tmp_path / "b")
    assert load_authority(None, None) is None
    assert load_authority(pki.ca_cert_path, pki.ca_key_path).certificate == pki.ca_certificate
    with pytest.raises(ConfigError, match="does not belong"):
        load_authority(pki.ca_cert_path, other.ca_key_path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_authority(tmp_path / "missing.pem", pki.ca_key_path)
    leaf_pem, leaf_key = pki.issue("not-a-ca")
    (tmp_path / "leaf.pem").write_text(leaf_pem)
    (tmp_path / "leaf.key").write_text(leaf_key)
    with pytest.raises(ConfigError, match="not a CA"):
        load_authority(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    with pytest.raises(ConfigError, match="go together"):
        GatewayConfig(ca_cert_path=pki.ca_cert_path)
    with pytest.raises(ConfigError, match="certificate_lifetime_days"):
        GatewayConfig(certificate_lifetime_days=0)


# --- the gateway with raw-frame points ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_sign_certificate_without_a_ca_is_rejected_and_recorded(gateway, make_cp):
    cp = await make_cp()
    csr, _ = make_csr("CP01")
    assert await cp.call("SignCertificate", {"csr": csr}) == {"status": "Rejected"}
    (record,) = gateway.storage.certificate_requests("CP01")
    assert record.status == CertificateRequestStatus.REJECTED and "no certificate authority" in record.reason
    assert await cp.call("Heartbeat", {})  # a round trip later: no CertificateSigned came
    assert cp.cs_calls.empty()


@pytest.mark.asyncio
async def test_sign_certificate_with_someone_elses_name_is_rejected(make_gateway, make_cp, tmp_path):
    pki = Pki.create(tmp_path / "pki")
    gw = await make_gateway(db="csr.sqlite", ca_cert_path=pki.ca_cert_path, ca_key_path=pki.ca_key_path)
    cp = await make_cp(gw=gw)
    assert await cp.call("SignCertificate", {"csr": make_csr("CP02")[0]}) == {"status": "Rejected"}
    assert "is not the charge point id" in gw.storage.certificate_requests("CP01")[-1].reason
    assert await cp.call("SignCertificate", {"csr": "not a csr"}) == {"status": "Rejected"}
    assert [r.status for r in gw.storage.certificate_requests("CP01")] == [
        CertificateRequestStatus.REJECTED
    ] * 2


@pytest.mark.asyncio
async def test_certificate_not_delivered_is_recorded(make_gateway, make_cp, tmp_path):
    pki = Pki.create(tmp_path / "pki")
    gw = await make_gateway(
        db="lost.sqlite", ca_cert_path=pki.ca_cert_path, ca_key_path=pki.ca_key_path, call_timeout_s=0.3
    )
    cp = await make_cp(gw=gw)
    done = asyncio.ensure_future(gw.wait_for(lambda e: e.kind == "certificate"))
    assert (await cp.call("SignCertificate", {"csr": make_csr("CP01")[0]}))["status"] == "Accepted"
    assert (await cp.next_cs_call())[2] == "CertificateSigned"  # never answered
    assert (await done).payload["status"] == "NotDelivered"
    record = gw.storage.certificate_requests("CP01")[-1]
    assert record.serial and record.certificate and "no answer" in record.reason


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({}, "OccurenceConstraintViolation"),
        ({"csr": 42}, "TypeConstraintViolation"),
        ({"csr": "x" * 5501}, "TypeConstraintViolation"),
        ({"csr": "x", "certificateType": "ChargingStationCertificate"}, "FormationViolation"),
    ],
)
@pytest.mark.asyncio
async def test_bad_sign_certificate_payload_gets_the_matching_callerror(gateway, make_cp, payload, code):
    cp = await make_cp()
    await cp.send_text(f'[2,"bad-1","SignCertificate",{_json(payload)}]')
    frame = await cp.reply()
    assert frame[:3] == [4, "bad-1", code]
    assert gateway.storage.certificate_requests("CP01") == []


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload)


@pytest.mark.parametrize("action", ["InstallCertificate", "CertificateSigned", "GetLog"])
@pytest.mark.asyncio
async def test_central_system_commands_from_a_point_are_not_supported(gateway, make_cp, action):
    cp = await make_cp()
    await cp.send_text(f'[2,"x1","{action}",{{}}]')
    assert (await cp.reply())[2] == "NotSupported"


@pytest.mark.asyncio
async def test_commands_refuse_what_is_not_pem_before_sending(gateway, make_cp):
    cp = await make_cp()
    with pytest.raises(CertificateError):
        await gateway.install_certificate("CP01", "CentralSystemRootCertificate", "not a certificate")
    with pytest.raises(CertificateError):
        await gateway.certificate_signed("CP01", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateError):
        await gateway.signed_update_firmware("CP01", "ftp://x/fw.bin", datetime.now(UTC), "nope", "c2ln")
    assert cp.received_calls == []


@pytest.mark.asyncio
async def test_get_log_request_ids_differ_when_not_given(gateway, make_cp):
    cp = await make_cp()
    cp.handlers["GetLog"] = lambda p: {"status": "Accepted"}
    first = await gateway.get_log("CP01", "DiagnosticsLog", "ftp://logs.example.org/")
    second = await gateway.get_log("CP01", "DiagnosticsLog", "ftp://logs.example.org/")
    assert first.request_id != second.request_id
    assert [f[3]["requestId"] for f in cp.received_calls] == [first.request_id, second.request_id]


@pytest.mark.asyncio
async def test_install_certificate_without_answer_is_recorded(make_gateway, make_cp):
    gw = await make_gateway(db="noanswer.sqlite", call_timeout_s=0.2)
    await make_cp(gw=gw)
    root, _ = make_ca("unanswered")
    with pytest.raises(Exception, match="no answer"):
        await gw.install_certificate("CP01", "ManufacturerRootCertificate", root)
    assert gw.storage.certificate_commands("CP01")[-1].status.startswith("NoAnswer")


# --- security profiles ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_profile_3_point_may_not_fall_back_to_its_password(make_gateway, make_cp, tmp_path):
    pki = Pki.create(tmp_path / "pki")
    points = (KnownChargePoint("CP01", password_hash=hash_password(PASSWORD, log2_n=10)),)
    gw = await make_gateway(
        db="p3.sqlite", charge_points=points, allow_profile_0=False,
        ssl_context=pki.server_context(client_certificates=True),
    )  # fmt: skip
    cp = await make_cp("CP01", gw=gw, headers=basic_auth("CP01", PASSWORD), ssl=pki.client_context())
    cp.handlers["ChangeConfiguration"] = lambda p: {"status": "Accepted"}
    cp.handlers["Reset"] = lambda p: {"status": "Accepted"}
    assert (await gw.upgrade_security_profile("CP01", 3)).value == "Accepted"
    assert [f[2] for f in cp.received_calls] == ["ChangeConfiguration", "Reset"]
    await cp.close()
    with pytest.raises(InvalidStatus) as e:
        await make_cp(
            "CP01", gw=gw, headers=basic_auth("CP01", PASSWORD), ssl=pki.client_context(), wait=False
        )
    assert e.value.response.status_code == 401
    assert "security profile 3 required" in gw.storage.security_events("CP01")[-1].tech_info
    chain, key = pki.issue("CP01")
    cp = await make_cp("CP01", gw=gw, ssl=pki.client_context(cert_pem=chain, key_pem=key))
    assert (await cp.boot())["status"] == "Accepted"


@pytest.mark.asyncio
async def test_profile_1_point_may_not_come_back_without_credentials(make_gateway, make_cp):
    gw = await make_gateway(db="p1.sqlite")  # profile 0 allowed, CP02 has no password yet
    cp = await make_cp("CP02", gw=gw)
    with pytest.raises(PropertyConstraintViolation, match="needs a password"):
        await gw.upgrade_security_profile("CP02", 1)
    assert cp.received_calls == []
    await gw.set_password("CP02", "cp02-new-password")
    cp.handlers["ChangeConfiguration"] = lambda p: {"status": "Accepted"}
    cp.handlers["Reset"] = lambda p: {"status": "Accepted"}
    await gw.upgrade_security_profile("CP02", 1)
    await gw.set_password("CP02", None)  # the operator loses the password: no way back to profile 0
    with pytest.raises(InvalidStatus):
        await make_cp("CP02", gw=gw, wait=False)
    assert "security profile 1 required" in gw.storage.security_events("CP02")[-1].tech_info


@pytest.mark.asyncio
async def test_security_profile_value_is_checked(gateway, make_cp):
    cp = await make_cp()
    with pytest.raises(PropertyConstraintViolation):
        await gateway.change_configuration("CP01", "SecurityProfile", "4")
    with pytest.raises(PropertyConstraintViolation, match="client certificates"):
        await gateway.upgrade_security_profile("CP01", 3)
    assert cp.received_calls == []


# --- remote start with a TxProfile (OCPP 1.6 5.11) ---------------------------------------------------


def tx_profile(**kwargs: Any) -> ChargingProfile:
    return ChargingProfile(
        profile_id=7, stack_level=1, purpose=kwargs.pop("purpose", "TxProfile"), rate_unit="A",
        periods=(SchedulePeriod(0, 16.0),), **kwargs,
    )  # fmt: skip


@pytest.mark.asyncio
async def test_remote_start_profile_has_no_transaction_id_but_set_charging_profile_needs_one(
    gateway, make_cp
):
    cp = await make_cp()
    cp.handlers["RemoteStartTransaction"] = lambda p: {"status": "Accepted"}
    await gateway.remote_start_transaction("CP01", "TAG", connector_id=1, charging_profile=tx_profile())
    await gateway.remote_start_transaction("CP01", "TAG", charging_profile=tx_profile(transaction_id=0))
    assert [("transactionId" in f[3]["chargingProfile"]) for f in cp.received_calls] == [False, False]
    with pytest.raises(PlanError, match="transaction id"):
        await gateway.set_charging_profile("CP01", 1, tx_profile())
    with pytest.raises(PropertyConstraintViolation, match="TxProfile"):
        await gateway.remote_start_transaction(
            "CP01", "TAG", charging_profile=tx_profile(purpose="TxDefaultProfile")
        )
    assert len(cp.received_calls) == 2


# --- migration ----------------------------------------------------------------------------------


def test_version_1_database_migrates_to_2_and_keeps_its_data(tmp_path: Path):
    db = tmp_path / "v1.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT)")
    con.executescript(
        "BEGIN;\n" + MIGRATIONS[0] + "\nINSERT INTO schema_version VALUES (1, '2024-01-01');\nCOMMIT;"
    )
    con.execute("INSERT INTO charge_points (id, vendor) VALUES ('CP01', 'Acme')")
    con.execute(
        "INSERT INTO transactions (charge_point_id, connector_id, id_tag, start_time, meter_start_wh)"
        " VALUES ('CP01', 1, 'TAG', '2024-01-15T17:00:00.000000+00:00', 100)"
    )
    con.commit()
    assert con.execute("SELECT name FROM sqlite_master WHERE name='certificate_requests'").fetchone() is None
    con.close()

    store = SqliteStorage(db, autocommit=True)
    try:
        assert store.schema_version == len(MIGRATIONS)
        assert store.charge_point("CP01").vendor == "Acme"
        assert store.transactions()[0].meter_start_wh == 100
        at = datetime(2024, 2, 1, tzinfo=UTC)
        rid = store.record_certificate_request("CP01", "csr", CertificateRequestStatus.PENDING, None, at)
        store.update_certificate_request(rid, CertificateRequestStatus.ISSUED, at, serial="ab", not_after=at)
        store.update_certificate_request(rid, CertificateRequestStatus.ACCEPTED, at + timedelta(seconds=1))
        record = store.certificate_request(rid)
        assert (record.status, record.serial, record.not_after) == (
            CertificateRequestStatus.ACCEPTED,
            "ab",
            at,
        )
    finally:
        store.close()
    reopened = SqliteStorage(db)
    assert reopened.schema_version == len(MIGRATIONS) and len(reopened.certificate_requests("CP01")) == 1
    reopened.close()


# --- the simulator end to end ----------------------------------------------------------------------


@pytest_asyncio.fixture
async def sims() -> AsyncIterator[list[SimulatedChargePoint]]:
    points: list[SimulatedChargePoint] = []
    yield points
    for p in points:
        await p.stop()


async def online(sims: list[SimulatedChargePoint], url: str, **spec: Any) -> SimulatedChargePoint:
    sim = SimulatedChargePoint(PointSpec("CP01", **spec), url, reconnect_max_s=0.3, call_timeout_s=10.0)
    sims.append(sim)
    sim.start()
    await sim.wait_until(lambda: sim.online, WAIT_S)
    return sim


@pytest.mark.asyncio
async def test_simulator_renews_its_certificate_and_rejects_a_foreign_one(make_gateway, sims, tmp_path):
    pki = Pki.create(tmp_path / "pki")
    gw = await make_gateway(db="sim-cert.sqlite", ca_cert_path=pki.ca_cert_path, ca_key_path=pki.ca_key_path)
    sim = await online(sims, gw.url)
    assert (await gw.extended_trigger_message("CP01", "SignChargePointCertificate")).value == "Accepted"
    event = await gw.wait_for(lambda e: e.kind == "certificate", WAIT_S)
    assert event.payload["status"] == "Accepted"
    leaf = load_certificates(sim.certificate_pem)[0]
    leaf.verify_directly_issued_by(pki.ca_certificate)
    record = gw.storage.certificate_requests("CP01")[-1]
    assert record.serial == format(leaf.serial_number, "x") and "O=noxblock" in leaf.subject.rfc4514_string()
    # A certificate for a key the point never made: Rejected, and the point reports it.
    foreign, _ = pki.issue("CP01")
    assert await gw.certificate_signed("CP01", foreign) == CertificateSignedStatus.rejected
    await sim.wait_until(
        lambda: any(e.type == "InvalidChargePointCertificate" for e in gw.storage.security_events("CP01")),
        WAIT_S,
    )
    assert sim.certificate_pem == record.certificate + pki.ca_pem  # the old one stays


@pytest.mark.asyncio
async def test_simulator_certificate_store(gateway, sims):
    sim = await online(sims, gateway.url)
    root, _ = make_ca("CentralSystemRootCertificate A")
    assert (
        await gateway.install_certificate("CP01", "CentralSystemRootCertificate", root)
        == CertificateStatus.accepted
    )
    installed = await gateway.get_installed_certificate_ids("CP01", "CentralSystemRootCertificate")
    assert installed.find(certificate_hash_data(root)) is not None
    assert (
        await gateway.get_installed_certificate_ids("CP01", "ManufacturerRootCertificate")
    ).status.value == "NotFound"
    status = await gateway.delete_installed_certificate("CP01", "CentralSystemRootCertificate", root)
    assert status == DeleteCertificateStatus.accepted and sim.installed_certificates == []
    status = await gateway.delete_installed_certificate("CP01", "CentralSystemRootCertificate", root)
    assert status == DeleteCertificateStatus.not_found


@pytest.mark.asyncio
async def test_simulator_rejects_a_leaf_as_root_and_reports_it(gateway, sims, tmp_path):
    await online(sims, gateway.url)
    leaf, _ = Pki.create(tmp_path / "pki").issue("not a root")
    status = await gateway.install_certificate("CP01", "CentralSystemRootCertificate", leaf)
    assert status == CertificateStatus.rejected
    await asyncio.wait_for(_security_event(gateway, "InvalidCentralSystemCertificate"), WAIT_S)


async def _security_event(gw: Gateway, kind: str) -> None:
    while not any(e.type == kind for e in gw.storage.security_events("CP01")):
        await gw.wait_for(lambda e: e.kind == "call" and e.action == "SecurityEventNotification")


@pytest.mark.asyncio
async def test_simulator_uploads_its_security_log(gateway, sims):
    sim = await online(sims, gateway.url)
    result = await gateway.get_log("CP01", "SecurityLog", "ftp://logs.example.org/")
    assert result.status.value == "Accepted" and result.filename == f"security-CP01-{result.request_id}.log"
    expected = [{"status": s, "requestId": result.request_id} for s in ("Uploading", "Uploaded")]
    await sim.wait_until(lambda: _notified(gateway, "LogStatusNotification") == expected, WAIT_S)


def _notified(gw: Gateway, action: str) -> list[dict[str, Any]]:
    return [n.payload for n in gw.storage.notifications("CP01") if n.action == action]


@pytest.mark.parametrize(
    ("case", "answer", "statuses", "event"),
    [
        (
            "good",
            "Accepted",
            ["Downloading", "Downloaded", "SignatureVerified", "Installing", "Installed"],
            None,
        ),
        (
            "bad signature",
            "Accepted",
            ["Downloading", "Downloaded", "InvalidSignature"],
            "InvalidFirmwareSignature",
        ),
        ("foreign signer", "InvalidCertificate", [], "InvalidFirmwareSigningCertificate"),
    ],
)
@pytest.mark.asyncio
async def test_simulator_secure_firmware_update(gateway, sims, tmp_path, case, answer, statuses, event):
    sim = await online(sims, gateway.url)
    manufacturer = Pki.create(tmp_path / "manufacturer", "manufacturer root")
    await gateway.install_certificate("CP01", "ManufacturerRootCertificate", manufacturer.ca_pem)
    issuer = Pki.create(tmp_path / "other", "someone else") if case == "foreign signer" else manufacturer
    signer_chain, signer_key = issuer.issue("firmware signer")
    signer = load_certificates(signer_chain)[0].public_bytes(serialization.Encoding.PEM).decode()
    location = "https://firmware.example.org/sim-2.0.bin"
    sim.firmware_images[location] = b"sim firmware 2.0"
    signed_bytes = b"something else" if case == "bad signature" else b"sim firmware 2.0"
    result = await gateway.signed_update_firmware(
        "CP01", location, datetime.now(UTC), signer, sign_firmware(signed_bytes, signer_key)
    )
    assert result.status.value == answer
    expected = [{"status": s, "requestId": result.request_id} for s in statuses]
    await sim.wait_until(lambda: _notified(gateway, "SignedFirmwareStatusNotification") == expected, WAIT_S)
    if event is not None:
        await asyncio.wait_for(_security_event(gateway, event), WAIT_S)
    else:
        assert gateway.storage.security_events("CP01") == []


@pytest.mark.asyncio
async def test_simulator_security_profile_upgrade_to_tls(tmp_path, sims):
    pki = Pki.create(tmp_path / "pki")
    db = tmp_path / "upgrade.sqlite"
    points = (KnownChargePoint("CP01", password_hash=hash_password(PASSWORD, log2_n=10)),)
    config = gateway_config(charge_points=points, allow_profile_0=False)
    gw = Gateway(config, SqliteStorage(db))
    await gw.start("127.0.0.1", 0)
    port = gw.port
    try:
        sim = await online(sims, gw.url, password=PASSWORD)
        assert sim.security_profile == 1
        # Profile 2 before the point trusts our server certificate: the point says no.
        assert (await gw.upgrade_security_profile("CP01", 2)).value == "Rejected"
        await gw.install_certificate("CP01", "CentralSystemRootCertificate", pki.ca_pem)
        with pytest.raises(PropertyConstraintViolation):
            await gw.upgrade_security_profile("CP01", 3)  # this gateway sees no client certificates
        # Accepted; the point uses it from its next connection. (upgrade_security_profile would reset
        # it now, and it would then knock with TLS at this plain server until its handshake timed out.)
        status = await gw.change_configuration("CP01", "SecurityProfile", "2")
        assert status.value == "Accepted" and sim.security_profile == 2
    finally:
        await gw.stop()
        gw.storage.close()
    gw = Gateway(replace(config, ssl_context=pki.server_context()), SqliteStorage(db))
    await gw.start("127.0.0.1", port)
    try:
        await sim.wait_until(lambda: sim.online, WAIT_S)
        assert sim.security_profile == 2 and gw.is_connected("CP01")
        with pytest.raises(PropertyConstraintViolation):
            await gw.upgrade_security_profile("CP01", 1)  # no way down
    finally:
        await sim.stop()
        await gw.stop()
        gw.storage.close()
