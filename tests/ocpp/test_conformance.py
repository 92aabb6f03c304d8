"""Conformance suite modelled on the OCA compliance tool's (OCTT) OCPP 1.6 central-system cases.

One test per case, its id in the name. The tool plays the charge point and checks what the central
system sends and stores; here a raw-frame charge point plays the same script and the test checks
our answers, commands and records. Cases that only test a charge point are not here. The security
extension cases (TC_074..TC_084) run against a gateway with a throw-away certificate authority.

Case ids and titles checked against the OCA's "OCPP 1.6 Compliancy Testing Tool - Test Case
Document" (Trial 2025-06, Draft, central-system part), as published per case at
https://ocpplab.com/docs/protocols/ocpp-1-6/test-cases/tc-<id>-csms (e.g. ``tc-001-csms`` "Cold
Boot Charge Point", ``tc-032-1-csms`` "Power failure boot charging point-configured to stop
transaction(s)", ``tc-073-csms`` "Update Charge Point Password for HTTP Basic Authentication").
Verified to match: TC_001, 002, 003, 004_1, 004_2, 005_1, 007, 010, 011_1, 017_1, 017_2, 021, 024,
031, 032_1, 037_1, 039, 053, 056, 057, 059, 066, 067, 073, 085; none needed renaming. The others were
not found in that source (not contradicted either).

Security extension cases (whitepaper "Improved security for OCPP 1.6-J", edition 3), checked
against the same source, central-system pages: TC_074 "Update Charge Point Certificate by request of
Central System", TC_075_1 "Install a certificate on the Charge Point - ManufacturerRootCertificate"
(TC_075_2, the CentralSystemRootCertificate variant, is named by analogy: not found), TC_076 "Delete
a specific certificate from the Charge Point", TC_077 "Invalid ChargePointCertificate Security
Event", TC_078 "Invalid CentralSystemCertificate Security Event", TC_080 "Secure Firmware Update",
TC_081 "Secure Firmware Update - Invalid Signature", TC_083 "Upgrade Charge Point Security Profile
- Accepted" (ChangeConfiguration SecurityProfile one higher, then Reset Hard, then BootNotification
Accepted). TC_079 "Get Security Log" was found only as the charge-point page (same title and
scenario). TC_082 "Secure Firmware Update - Invalid Certificate" and TC_084 were not found; the
charge-point page of TC_084 is "Downgrade security profile - Rejected", so our TC_084 checks both an
upgrade the point rejects and a downgrade the central system refuses to ask for.

TLS: TC_086 "TLS - server-side certificate - Valid certificate" (central-system page: TLS 1.2 or
above, and the suites TLS_ECDHE_ECDSA_WITH_AES_{128,256}_GCM and TLS_RSA_WITH_AES_{128,256}_GCM;
our test certificate is RSA, so the ECDSA ones are left to an ECDSA certificate) and TC_087 "TLS -
Client-side certificate - valid certificate" (found only as the charge-point page).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from ocpp.v16.enums import (
    AvailabilityStatus,
    CancelReservationStatus,
    CertificateStatus,
    ChargingProfileStatus,
    ClearCacheStatus,
    ClearChargingProfileStatus,
    ConfigurationStatus,
    DataTransferStatus,
    DeleteCertificateStatus,
    GetCompositeScheduleStatus,
    GetInstalledCertificateStatus,
    LogStatus,
    RemoteStartStopStatus,
    ReservationStatus,
    ResetStatus,
    TriggerMessageStatus,
    UnlockStatus,
    UpdateFirmwareStatus,
    UpdateStatus,
)
from ocpp_helpers import T0, FakeChargePoint, Pki, basic_auth, gateway_config, iso, ocsp_hash_data
from websockets.exceptions import InvalidStatus

from ocpp_gateway import Gateway, IdTagRecord, KnownChargePoint, SqliteStorage, hash_password
from ocpp_gateway.certificates import (
    certificate_hash_data,
    load_certificates,
    make_ca,
    make_csr,
    sign_firmware,
)
from ocpp_gateway.dispatch import ChargingProfile, SchedulePeriod
from ocpp_gateway.errors import PropertyConstraintViolation
from ocpp_gateway.security import tls_server_context
from ocpp_gateway.storage import CertificateRequestStatus

pytestmark = pytest.mark.asyncio

TAG = "OCTT-TAG-1"


def accepted(_: dict[str, Any]) -> dict[str, Any]:
    return {"status": "Accepted"}


async def booted(make_cp, cp_id: str = "CP01", **kwargs: Any) -> FakeChargePoint:
    cp = await make_cp(cp_id, **kwargs)
    assert (await cp.boot())["status"] == "Accepted"
    await cp.status(0, "Available")
    await cp.status(1, "Available")
    return cp


async def command(cp: FakeChargePoint, coro: Any, answer: dict[str, Any]) -> tuple[list[Any], Any]:
    task = asyncio.ensure_future(coro)
    frame = await cp.next_cs_call()
    await cp.answer(frame, answer)
    return frame, await task


def statuses(gateway, connector_id: int = 1) -> list[str]:
    return [h.status for h in gateway.storage.status_history("CP01", connector_id)]


async def charge(cp: FakeChargePoint, tag: str = TAG, at: datetime = T0, *, authorize: bool = True) -> int:
    if authorize:
        assert (await cp.call("Authorize", {"idTag": tag}))["idTagInfo"]["status"] == "Accepted"
    await cp.status(1, "Preparing")
    answer = await cp.start(1, tag, 1000, at=at)
    assert answer["idTagInfo"]["status"] == "Accepted"
    await cp.status(1, "Charging")
    return answer["transactionId"]


@pytest.fixture(autouse=True)
def _known_tag(gateway):
    gateway.put_id_tag(IdTagRecord(TAG))
    gateway.put_id_tag(IdTagRecord("OCTT-INVALID", status="Invalid"))
    gateway.put_id_tag(IdTagRecord("OCTT-EXPIRED", expiry_date=T0 - timedelta(days=1)))
    gateway.put_id_tag(IdTagRecord("OCTT-BLOCKED", status="Blocked"))
    gateway.put_id_tag(IdTagRecord("OCTT-CHILD", parent_id_tag="OCTT-PARENT"))


# --- Core: boot, sessions -----------------------------------------------------------------------


async def test_tc_001_cold_boot_charge_point(gateway, make_cp):
    cp = await booted(make_cp)
    assert (await cp.call("Heartbeat", {}))["currentTime"]
    assert gateway.storage.charge_point("CP01").registration_status == "Accepted"
    assert {c.connector_id for c in gateway.storage.connectors("CP01")} == {0, 1}


async def test_tc_002_cold_boot_charge_point_pending(make_gateway, make_cp):
    gw = await make_gateway(db="pending.sqlite", unknown_policy="Pending")
    cp = await make_cp("NEWPOINT", gw=gw)
    assert (await cp.boot())["status"] == "Pending"
    # While Pending the central system may still configure the point.
    cp.handlers["GetConfiguration"] = lambda p: {"configurationKey": [], "unknownKey": p.get("key", [])}
    assert (await gw.get_configuration("NEWPOINT", ["HeartbeatInterval"])).unknown_keys == (
        "HeartbeatInterval",
    )


async def test_tc_003_regular_charging_session_plugin_first(gateway, make_cp):
    cp = await booted(make_cp)
    tx = await charge(cp)
    await cp.call(
        "MeterValues",
        {
            "connectorId": 1,
            "transactionId": tx,
            "meterValue": [
                {"timestamp": iso(T0 + timedelta(minutes=1)), "sampledValue": [{"value": "1500"}]}
            ],
        },
    )
    await cp.stop(tx, 2000, at=T0 + timedelta(minutes=2), idTag=TAG)
    await cp.status(1, "Finishing")
    await cp.status(1, "Available")
    assert statuses(gateway) == ["Available", "Preparing", "Charging", "Finishing", "Available"]
    record = gateway.storage.transaction(tx)
    assert record.meter_stop_wh == 2000 and record.stop_reason == "Local"


async def test_tc_004_1_regular_charging_session_identification_first(gateway, make_cp):
    cp = await booted(make_cp)
    assert (await cp.call("Authorize", {"idTag": TAG}))["idTagInfo"]["status"] == "Accepted"
    tx = await charge(cp, authorize=False)
    await cp.stop(tx, 3000, at=T0 + timedelta(minutes=5))
    assert gateway.storage.transaction(tx).stop_time is not None


async def test_tc_004_2_regular_charging_session_identification_first_connection_timeout(gateway, make_cp):
    cp = await booted(make_cp)
    await cp.call("Authorize", {"idTag": TAG})
    await cp.status(1, "Preparing")
    await cp.status(1, "Available")  # ConnectionTimeOut elapsed, no cable
    assert gateway.storage.transactions() == []
    assert statuses(gateway)[-2:] == ["Preparing", "Available"]


async def test_tc_005_1_ev_side_disconnected(gateway, make_cp):
    cp = await booted(make_cp)
    tx = await charge(cp)
    await cp.status(1, "SuspendedEV")
    await cp.stop(tx, 2500, at=T0 + timedelta(minutes=3), reason="EVDisconnected")
    await cp.status(1, "Finishing")
    assert gateway.storage.transaction(tx).stop_reason == "EVDisconnected"


async def test_tc_007_regular_start_charging_session_cached_id(gateway, make_cp):
    cp = await booted(make_cp)
    tx = await charge(cp, authorize=False)  # authorised from the point's cache: no Authorize
    assert gateway.storage.transaction(tx).id_tag == TAG


async def test_tc_010_remote_start_charging_session_cable_plugged_in_first(gateway, make_cp):
    cp = await booted(make_cp)
    await cp.status(1, "Preparing")
    frame, status = await command(
        cp, gateway.remote_start_transaction("CP01", TAG, connector_id=1), accepted({})
    )
    assert status == RemoteStartStopStatus.accepted and frame[3] == {"idTag": TAG, "connectorId": 1}
    answer = await cp.start(1, TAG)
    assert answer["idTagInfo"]["status"] == "Accepted"


async def test_tc_011_1_remote_start_charging_session_remote_start_first(gateway, make_cp):
    cp = await booted(make_cp)
    _, status = await command(cp, gateway.remote_start_transaction("CP01", TAG), accepted({}))
    assert status == RemoteStartStopStatus.accepted
    await cp.status(1, "Preparing")
    assert (await cp.start(1, TAG))["transactionId"] > 0


async def test_tc_011_2_remote_start_charging_session_time_out(gateway, make_cp):
    cp = await booted(make_cp)
    await command(cp, gateway.remote_start_transaction("CP01", TAG, connector_id=1), accepted({}))
    await cp.status(1, "Preparing")
    await cp.status(1, "Available")  # no cable within ConnectionTimeOut
    assert gateway.storage.transactions() == []


async def test_tc_012_remote_stop_charging_session(gateway, make_cp):
    cp = await booted(make_cp)
    tx = await charge(cp)
    frame, status = await command(cp, gateway.remote_stop_transaction("CP01", tx), accepted({}))
    assert status == RemoteStartStopStatus.accepted and frame[3] == {"transactionId": tx}
    await cp.stop(tx, 2000, reason="Remote")
    assert gateway.storage.transaction(tx).stop_reason == "Remote"


async def _reset_and_reboot(
    gateway, make_cp, cp: FakeChargePoint, kind: str, tx: int | None
) -> FakeChargePoint:
    frame, status = await command(cp, gateway.reset("CP01", kind), accepted({}))
    assert frame[3] == {"type": kind} and status == ResetStatus.accepted
    if tx is not None:
        await cp.stop(tx, 1800, reason="HardReset" if kind == "Hard" else "SoftReset")
    await cp.close()
    return await booted(make_cp)


async def test_tc_013_hard_reset_without_transaction(gateway, make_cp):
    cp = await booted(make_cp)
    await _reset_and_reboot(gateway, make_cp, cp, "Hard", None)
    assert gateway.is_connected("CP01")


async def test_tc_014_soft_reset_without_transaction(gateway, make_cp):
    cp = await booted(make_cp)
    await _reset_and_reboot(gateway, make_cp, cp, "Soft", None)
    assert gateway.is_connected("CP01")


async def test_tc_015_hard_reset_with_transaction(gateway, make_cp):
    cp = await booted(make_cp)
    tx = await charge(cp)
    await _reset_and_reboot(gateway, make_cp, cp, "Hard", tx)
    assert gateway.storage.transaction(tx).stop_reason == "HardReset"


async def test_tc_016_soft_reset_with_transaction(gateway, make_cp):
    cp = await booted(make_cp)
    tx = await charge(cp)
    await _reset_and_reboot(gateway, make_cp, cp, "Soft", tx)
    assert gateway.storage.transaction(tx).stop_reason == "SoftReset"


async def test_tc_017_1_unlock_connector_no_charging_session_running_not_fixed_cable(gateway, make_cp):
    cp = await booted(make_cp)
    _, status = await command(cp, gateway.unlock_connector("CP01", 1), {"status": "Unlocked"})
    assert status == UnlockStatus.unlocked


async def test_tc_017_2_unlock_connector_no_charging_session_running_fixed_cable(gateway, make_cp):
    cp = await booted(make_cp)
    _, status = await command(cp, gateway.unlock_connector("CP01", 1), {"status": "NotSupported"})
    assert status == UnlockStatus.not_supported


async def test_tc_018_1_unlock_connector_with_charging_session(gateway, make_cp):
    cp = await booted(make_cp)
    tx = await charge(cp)
    _, status = await command(cp, gateway.unlock_connector("CP01", 1), {"status": "Unlocked"})
    await cp.stop(tx, 1900, reason="UnlockCommand")
    assert status == UnlockStatus.unlocked and gateway.storage.transaction(tx).stop_reason == "UnlockCommand"


async def test_tc_019_1_retrieve_all_configuration_keys(gateway, make_cp):
    cp = await booted(make_cp)
    keys = [
        {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
        {"key": "NumberOfConnectors", "readonly": True, "value": "1"},
    ]
    frame, result = await command(cp, gateway.get_configuration("CP01"), {"configurationKey": keys})
    assert frame[3] == {} and [k.key for k in result.keys] == ["HeartbeatInterval", "NumberOfConnectors"]


async def test_tc_019_2_retrieve_specific_configuration_key(gateway, make_cp):
    cp = await booted(make_cp)
    answer = {"configurationKey": [{"key": "SupportedFeatureProfiles", "readonly": True, "value": "Core"}]}
    frame, result = await command(cp, gateway.get_configuration("CP01", ["SupportedFeatureProfiles"]), answer)
    assert (
        frame[3] == {"key": ["SupportedFeatureProfiles"]} and result.get("SupportedFeatureProfiles") == "Core"
    )


async def test_tc_021_change_set_configuration(gateway, make_cp):
    cp = await booted(make_cp)
    frame, status = await command(
        cp, gateway.change_configuration("CP01", "MeterValueSampleInterval", "60"), accepted({})
    )
    assert status == ConfigurationStatus.accepted and frame[3] == {
        "key": "MeterValueSampleInterval",
        "value": "60",
    }
    assert gateway.storage.config_values("CP01")["MeterValueSampleInterval"] == "60"


@pytest.mark.parametrize(
    ("case", "tag", "status"),
    [
        ("1", "OCTT-INVALID", "Invalid"),
        ("2", "OCTT-EXPIRED", "Expired"),
        ("3", "OCTT-BLOCKED", "Blocked"),
    ],
)
async def test_tc_023_start_charging_session_authorize_invalid_expired_blocked(
    gateway, make_cp, case, tag, status
):
    cp = await booted(make_cp)
    assert (await cp.call("Authorize", {"idTag": tag}))["idTagInfo"]["status"] == status
    assert (await cp.call("Authorize", {"idTag": "NEVER-SEEN"}))["idTagInfo"]["status"] == "Invalid"


async def test_tc_024_start_charging_session_lock_failure(gateway, make_cp):
    cp = await booted(make_cp)
    await cp.call("Authorize", {"idTag": TAG})
    await cp.status(1, "Preparing")
    await cp.status(1, "Faulted", error_code="ConnectorLockFailure")
    latest = {c.connector_id: c for c in gateway.storage.connectors("CP01")}
    assert latest[1].status == "Faulted" and latest[1].error_code == "ConnectorLockFailure"


async def test_tc_026_remote_start_charging_session_rejected(gateway, make_cp):
    cp = await booted(make_cp)
    _, status = await command(
        cp, gateway.remote_start_transaction("CP01", TAG, connector_id=1), {"status": "Rejected"}
    )
    assert status == RemoteStartStopStatus.rejected


async def test_tc_027_remote_start_transaction_connector_id_shall_not_be_0(gateway, make_cp):
    cp = await booted(make_cp)
    with pytest.raises(PropertyConstraintViolation):
        await gateway.remote_start_transaction("CP01", TAG, connector_id=0)
    assert cp.cs_calls.empty() and cp.received_calls == []


async def test_tc_028_remote_stop_transaction_rejected(gateway, make_cp):
    cp = await booted(make_cp)
    _, status = await command(cp, gateway.remote_stop_transaction("CP01", 999), {"status": "Rejected"})
    assert status == RemoteStartStopStatus.rejected


async def test_tc_030_unlock_connector_unlock_failure(gateway, make_cp):
    cp = await booted(make_cp)
    _, status = await command(cp, gateway.unlock_connector("CP01", 1), {"status": "UnlockFailed"})
    assert status == UnlockStatus.unlock_failed


async def test_tc_031_unlock_connector_unknown_connector(gateway, make_cp):
    cp = await booted(make_cp)
    _, status = await command(cp, gateway.unlock_connector("CP01", 7), {"status": "NotSupported"})
    assert status == UnlockStatus.not_supported


async def test_tc_032_1_power_failure_boot_charging_point_stop_transactions(gateway, make_cp):
    cp = await booted(make_cp)
    tx = await charge(cp)
    await cp.close()  # power gone
    cp = await booted(make_cp)
    await cp.stop(tx, 2100, at=T0 + timedelta(minutes=10), reason="PowerLoss")
    assert gateway.storage.transaction(tx).stop_reason == "PowerLoss"


async def test_tc_034_power_failure_with_unavailable_status(gateway, make_cp):
    cp = await booted(make_cp)
    await cp.status(1, "Unavailable")
    await cp.close()
    cp = await make_cp()
    await cp.boot()
    await cp.status(1, "Unavailable")  # the point remembers it was set Inoperative
    assert statuses(gateway)[-1] == "Unavailable"


async def test_tc_036_connection_loss_during_transaction(gateway, make_cp):
    cp = await booted(make_cp)
    tx = await charge(cp)
    await cp.close()
    cp = await make_cp()  # reconnects without a boot; queued messages follow
    await cp.call(
        "MeterValues",
        {
            "connectorId": 1,
            "transactionId": tx,
            "meterValue": [
                {"timestamp": iso(T0 + timedelta(minutes=m)), "sampledValue": [{"value": str(1000 + m)}]}
                for m in (1, 2)
            ],
        },
    )
    await cp.stop(tx, 1002, at=T0 + timedelta(minutes=3))
    assert len(gateway.storage.meter_values("CP01", transaction_id=tx)) == 2
    assert gateway.storage.transaction(tx).meter_stop_wh == 1002


async def test_tc_037_1_offline_start_transaction(gateway, make_cp):
    cp = await booted(make_cp)
    await cp.close()
    cp = await make_cp()
    offline_start = T0 - timedelta(hours=1)
    answer = await cp.start(1, TAG, 500, at=offline_start)
    assert answer["idTagInfo"]["status"] == "Accepted"
    assert gateway.storage.transaction(answer["transactionId"]).start_time == offline_start


async def test_tc_037_3_offline_start_transaction_invalid(gateway, make_cp):
    cp = await booted(make_cp)
    answer = await cp.start(1, "OCTT-BLOCKED", 0, at=T0 - timedelta(hours=1))
    assert answer["idTagInfo"]["status"] == "Blocked"  # the transaction id is still given
    await cp.stop(answer["transactionId"], 10, reason="DeAuthorized")
    assert gateway.storage.transaction(answer["transactionId"]).stop_reason == "DeAuthorized"


async def test_tc_038_offline_stop_transaction(gateway, make_cp):
    cp = await booted(make_cp)
    tx = await charge(cp)
    await cp.close()
    cp = await make_cp()
    await cp.stop(
        tx,
        4000,
        at=T0 + timedelta(minutes=30),
        reason="Local",
        transactionData=[
            {
                "timestamp": iso(T0 + timedelta(minutes=30)),
                "sampledValue": [{"value": "4000", "context": "Transaction.End"}],
            }
        ],
    )
    assert gateway.storage.transaction(tx).stop_time == T0 + timedelta(minutes=30)


async def test_tc_039_offline_transaction(gateway, make_cp):
    cp = await booted(make_cp)
    await cp.close()
    cp = await make_cp()
    tx = (await cp.start(1, TAG, 100, at=T0 - timedelta(hours=2)))["transactionId"]
    await cp.stop(tx, 900, at=T0 - timedelta(hours=1))
    # The same two messages replayed again (the point never saw our answers): nothing doubles.
    assert (await cp.start(1, TAG, 100, at=T0 - timedelta(hours=2)))["transactionId"] == tx
    await cp.stop(tx, 900, at=T0 - timedelta(hours=1))
    assert len(gateway.storage.transactions()) == 1 and gateway.storage.transaction(tx).meter_stop_wh == 900


async def test_tc_040_1_configuration_keys_not_supported(gateway, make_cp):
    cp = await booted(make_cp)
    _, status = await command(
        cp, gateway.change_configuration("CP01", "VendorMagic", "1"), {"status": "NotSupported"}
    )
    assert status == ConfigurationStatus.not_supported
    assert "VendorMagic" not in gateway.storage.config_values("CP01")


async def test_tc_040_2_configuration_key_invalid_value(gateway, make_cp):
    cp = await booted(make_cp)
    _, status = await command(
        cp, gateway.change_configuration("CP01", "HeartbeatInterval", "-5"), {"status": "Rejected"}
    )
    assert status == ConfigurationStatus.rejected


async def test_tc_042_1_get_local_list_version_not_supported(gateway, make_cp):
    cp = await booted(make_cp)
    _, version = await command(cp, gateway.get_local_list_version("CP01"), {"listVersion": -1})
    assert version == -1


async def test_tc_042_2_get_local_list_version_empty(gateway, make_cp):
    cp = await booted(make_cp)
    _, version = await command(cp, gateway.get_local_list_version("CP01"), {"listVersion": 0})
    assert version == 0


@pytest.mark.parametrize("update_type", ["Full", "Differential"])
async def test_tc_043_send_local_authorization_list(gateway, make_cp, update_type):
    cp = await booted(make_cp)
    entries = [
        IdTagRecord(TAG),
        IdTagRecord("OCTT-BLOCKED", status="Blocked"),
        IdTagRecord("X", expiry_date=T0),
    ]
    frame, status = await command(cp, gateway.send_local_list("CP01", 3, update_type, entries), accepted({}))
    assert status == UpdateStatus.accepted and frame[3]["updateType"] == update_type
    assert frame[3]["localAuthorizationList"][2]["idTagInfo"]["expiryDate"] == iso(T0).replace("Z", ".000Z")


@pytest.mark.parametrize(
    ("case", "notifications"),
    [
        ("1", ["Downloading", "Downloaded", "Installing", "Installed"]),
        ("2", ["Downloading", "DownloadFailed"]),
        ("3", ["Downloading", "Downloaded", "Installing", "InstallationFailed"]),
    ],
)
async def test_tc_044_firmware_update(gateway, make_cp, case, notifications):
    cp = await booted(make_cp)
    frame, _ = await command(cp, gateway.update_firmware("CP01", "https://fw.example.org/v2.bin", T0), {})
    assert frame[3]["location"] == "https://fw.example.org/v2.bin"
    for status in notifications:
        await cp.call("FirmwareStatusNotification", {"status": status})
    assert [n.payload["status"] for n in gateway.storage.notifications("CP01")] == notifications


@pytest.mark.parametrize(("case", "final"), [("1", "Uploaded"), ("2", "UploadFailed")])
async def test_tc_045_get_diagnostics(gateway, make_cp, case, final):
    cp = await booted(make_cp)
    _, name = await command(
        cp, gateway.get_diagnostics("CP01", "ftp://diag.example.org/"), {"fileName": "d.log"}
    )
    assert name == "d.log"
    await cp.call("DiagnosticsStatusNotification", {"status": "Uploading"})
    await cp.call("DiagnosticsStatusNotification", {"status": final})
    assert gateway.storage.notifications("CP01")[-1].payload == {"status": final}


async def test_tc_046_reservation_of_a_connector_local_start_transaction(gateway, make_cp):
    cp = await booted(make_cp)
    expiry = T0 + timedelta(minutes=30)
    frame, status = await command(cp, gateway.reserve_now("CP01", 1, expiry, TAG, 11), accepted({}))
    assert status == ReservationStatus.accepted and frame[3]["reservationId"] == 11
    await cp.status(1, "Reserved")
    await cp.status(1, "Preparing")
    answer = await cp.call(
        "StartTransaction",
        {"connectorId": 1, "idTag": TAG, "meterStart": 0, "timestamp": iso(T0), "reservationId": 11},
    )
    assert gateway.storage.transaction(answer["transactionId"]).reservation_id == 11


async def test_tc_047_reservation_of_a_connector_expire(gateway, make_cp):
    cp = await booted(make_cp)
    await command(cp, gateway.reserve_now("CP01", 1, T0, TAG, 12), accepted({}))
    await cp.status(1, "Reserved")
    await cp.status(1, "Available")  # expired
    assert statuses(gateway)[-2:] == ["Reserved", "Available"]


@pytest.mark.parametrize(
    ("case", "answer"), [("1", "Faulted"), ("2", "Occupied"), ("3", "Unavailable"), ("4", "Rejected")]
)
async def test_tc_048_reservation_of_a_connector_faulted_occupied_unavailable_rejected(
    gateway, make_cp, case, answer
):
    cp = await booted(make_cp)
    _, status = await command(cp, gateway.reserve_now("CP01", 1, T0, TAG, 13), {"status": answer})
    assert status == ReservationStatus(answer)


async def test_tc_049_reservation_of_a_charge_point_transaction(gateway, make_cp):
    cp = await booted(make_cp)
    frame, status = await command(cp, gateway.reserve_now("CP01", 0, T0, TAG, 14), accepted({}))
    assert frame[3]["connectorId"] == 0 and status == ReservationStatus.accepted
    await charge(cp)


async def test_tc_051_cancel_reservation(gateway, make_cp):
    cp = await booted(make_cp)
    await command(cp, gateway.reserve_now("CP01", 1, T0, TAG, 15), accepted({}))
    frame, status = await command(cp, gateway.cancel_reservation("CP01", 15), accepted({}))
    assert frame[3] == {"reservationId": 15} and status == CancelReservationStatus.accepted


async def test_tc_052_cancel_reservation_rejected(gateway, make_cp):
    cp = await booted(make_cp)
    _, status = await command(cp, gateway.cancel_reservation("CP01", 16), {"status": "Rejected"})
    assert status == CancelReservationStatus.rejected


async def test_tc_053_use_a_reserved_connector_with_parent_id_tag(gateway, make_cp):
    cp = await booted(make_cp)
    frame, _ = await command(
        cp, gateway.reserve_now("CP01", 1, T0, "OCTT-PARENT", 17, parent_id_tag="OCTT-PARENT"), accepted({})
    )
    assert frame[3]["parentIdTag"] == "OCTT-PARENT"
    info = (await cp.call("Authorize", {"idTag": "OCTT-CHILD"}))["idTagInfo"]
    assert info["parentIdTag"] == "OCTT-PARENT"  # the point matches it with the reservation


@pytest.mark.parametrize(
    "message",
    [
        "BootNotification",
        "Heartbeat",
        "MeterValues",
        "StatusNotification",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
    ],
)
async def test_tc_054_trigger_message(gateway, make_cp, message):
    cp = await booted(make_cp)
    frame, status = await command(cp, gateway.trigger_message("CP01", message, connector_id=1), accepted({}))
    assert status == TriggerMessageStatus.accepted and frame[3]["requestedMessage"] == message
    payloads = {
        "BootNotification": {"chargePointVendor": "Acme", "chargePointModel": "Lamp-11"},
        "Heartbeat": {},
        "MeterValues": {
            "connectorId": 1,
            "meterValue": [{"timestamp": iso(T0), "sampledValue": [{"value": "1", "context": "Trigger"}]}],
        },
        "StatusNotification": {"connectorId": 1, "errorCode": "NoError", "status": "Available"},
        "DiagnosticsStatusNotification": {"status": "Idle"},
        "FirmwareStatusNotification": {"status": "Idle"},
    }
    await cp.call(message, payloads[message])


async def test_tc_055_trigger_message_rejected(gateway, make_cp):
    cp = await booted(make_cp)
    _, status = await command(
        cp, gateway.trigger_message("CP01", "MeterValues", connector_id=2), {"status": "Rejected"}
    )
    assert status == TriggerMessageStatus.rejected


async def test_tc_061_clear_authorization_data_in_authorization_cache(gateway, make_cp):
    cp = await booted(make_cp)
    _, status = await command(cp, gateway.clear_cache("CP01"), accepted({}))
    assert status == ClearCacheStatus.accepted


async def test_tc_062_data_transfer_to_a_charge_point(gateway, make_cp):
    cp = await booted(make_cp)
    frame, result = await command(
        cp, gateway.data_transfer("CP01", "com.acme", message_id="ping"), {"status": "UnknownVendorId"}
    )
    assert frame[3] == {"vendorId": "com.acme", "messageId": "ping"} and result == (
        DataTransferStatus.unknown_vendor_id,
        None,
    )


async def test_tc_064_data_transfer_to_a_central_system(gateway, make_cp):
    cp = await booted(make_cp)
    assert (await cp.call("DataTransfer", {"vendorId": "com.acme", "messageId": "x", "data": "y"}))[
        "status"
    ] in {"Accepted", "Rejected", "UnknownMessageId", "UnknownVendorId"}


async def test_tc_068_change_availability_charge_point(gateway, make_cp):
    cp = await booted(make_cp)
    frame, status = await command(cp, gateway.change_availability("CP01", 0, "Inoperative"), accepted({}))
    assert frame[3] == {"connectorId": 0, "type": "Inoperative"} and status == AvailabilityStatus.accepted
    await cp.status(0, "Unavailable")
    await cp.status(1, "Unavailable")
    _, status = await command(cp, gateway.change_availability("CP01", 0, "Operative"), accepted({}))
    await cp.status(0, "Available")
    assert status == AvailabilityStatus.accepted


async def test_tc_070_sampled_meter_values(gateway, make_cp):
    cp = await booted(make_cp)
    tx = await charge(cp)
    sampled = [
        {
            "value": "16.0",
            "measurand": "Current.Import",
            "phase": p,
            "unit": "A",
            "context": "Sample.Periodic",
        }
        for p in ("L1", "L2", "L3")
    ]
    await cp.call(
        "MeterValues",
        {
            "connectorId": 1,
            "transactionId": tx,
            "meterValue": [{"timestamp": iso(T0), "sampledValue": sampled}],
        },
    )
    assert {v.phase for v in gateway.storage.meter_values("CP01", transaction_id=tx)} == {"L1", "L2", "L3"}


async def test_tc_071_clock_aligned_meter_values(gateway, make_cp):
    cp = await booted(make_cp)
    await cp.call(
        "MeterValues",
        {
            "connectorId": 0,
            "meterValue": [
                {
                    "timestamp": iso(T0),
                    "sampledValue": [
                        {
                            "value": "12345",
                            "context": "Sample.Clock",
                            "measurand": "Energy.Active.Import.Register",
                        }
                    ],
                }
            ],
        },
    )
    (value,) = gateway.storage.meter_values("CP01")
    assert value.context == "Sample.Clock" and value.transaction_id is None


# --- Security (1.6 security whitepaper cases of the tool) --------------------------------------


async def test_tc_073_update_charge_point_password_for_http_basic_authentication(make_gateway, make_cp):
    points = (KnownChargePoint("CP01", password_hash=hash_password("old-password-123", log2_n=10)),)
    gw = await make_gateway(db="tc073.sqlite", charge_points=points, allow_profile_0=False)
    cp = await make_cp("CP01", gw=gw, headers=basic_auth("CP01", "old-password-123"))
    await cp.boot()
    _, status = await command(
        cp, gw.change_configuration("CP01", "AuthorizationKey", "new-password-456"), accepted({})
    )
    assert status == ConfigurationStatus.accepted
    await gw.set_password("CP01", "new-password-456")
    await cp.close()
    cp = await make_cp("CP01", gw=gw, headers=basic_auth("CP01", "new-password-456"))
    assert (await cp.boot())["status"] == "Accepted"
    with pytest.raises(InvalidStatus):
        await make_cp("CP01", gw=gw, headers=basic_auth("CP01", "old-password-123"))
    # The AuthorizationKey itself is never stored in clear.
    assert "new-password-456" not in str(gw.storage.config_values("CP01"))


async def test_tc_085_basic_authentication_valid_username_password(make_gateway, make_cp):
    points = (KnownChargePoint("CP01", password_hash=hash_password("valid-pass-0001", log2_n=10)),)
    gw = await make_gateway(db="tc085.sqlite", charge_points=points, allow_profile_0=False)
    cp = await make_cp("CP01", gw=gw, headers=basic_auth("CP01", "valid-pass-0001"))
    assert (await cp.boot())["status"] == "Accepted"


def _client_tls(
    pki, *, ciphers: str | None = None, cert: bool = False, tls12_only: bool = True
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if tls12_only:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if cert:
        ctx.load_cert_chain(pki / "client.pem", pki / "client.key")
    return ctx


async def test_tc_086_tls_server_side_certificate_valid_certificate(make_gateway, make_cp, pki):
    # The OCTT checks TLS 1.2 or above and the whitepaper's suites, among them the two RSA ones
    # Python's default list leaves out (the server certificate here is RSA 2048).
    ctx = tls_server_context(pki / "server.pem", pki / "server.key")
    points = (KnownChargePoint("CP01", password_hash=hash_password("valid-pass-0001", log2_n=10)),)
    gw = await make_gateway(db="tc086.sqlite", charge_points=points, allow_profile_0=False, ssl_context=ctx)
    auth = basic_auth("CP01", "valid-pass-0001")
    for suite in ("AES128-GCM-SHA256", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-GCM-SHA256"):
        cp = await make_cp("CP01", gw=gw, headers=auth, ssl=_client_tls(pki, ciphers=suite))
        tls = cp.ws.transport.get_extra_info("ssl_object")
        assert tls.version() == "TLSv1.2" and tls.cipher()[0] == suite
        assert (await cp.boot())["status"] == "Accepted"
        await cp.close()
    old = _client_tls(pki, tls12_only=False)
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, OSError, InvalidStatus)):
        await make_cp("CP01", gw=gw, headers=auth, ssl=old, wait=False)


async def test_tc_087_tls_client_side_certificate_valid_certificate(make_gateway, make_cp, pki):
    # Profile 3: the point's certificate (CN = its id) is its credential; no password asked.
    ctx = tls_server_context(pki / "server.pem", pki / "server.key", client_ca=pki / "ca.pem")
    gw = await make_gateway(
        db="tc087.sqlite", charge_points=(KnownChargePoint("CP01"),), allow_profile_0=False, ssl_context=ctx
    )
    cp = await make_cp("CP01", gw=gw, ssl=_client_tls(pki, cert=True, tls12_only=False))
    assert (await cp.boot())["status"] == "Accepted"


async def test_tc_088_websocket_subprotocol_validation(gateway, make_cp):
    cp = await make_cp("CP01", subprotocols=["ocpp2.0.1", "ocpp1.6"])
    assert cp.ws.subprotocol == "ocpp1.6"
    with pytest.raises(InvalidStatus):
        await make_cp("CP02", subprotocols=["ocpp2.0.1"], wait=False)


# --- Smart Charging ----------------------------------------------------------------------------


def caps_handler(unit: str = "Current", max_periods: str = "24"):
    return lambda p: {
        "configurationKey": [
            {"key": "ChargingScheduleAllowedChargingRateUnit", "readonly": True, "value": unit},
            {"key": "ChargingScheduleMaxPeriods", "readonly": True, "value": max_periods},
        ]
    }


def now_plan(limits: list[float]) -> tuple[list[tuple[datetime, float]], datetime]:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    step = timedelta(minutes=15)
    return [(start + i * step, a) for i, a in enumerate(limits)], start + len(limits) * step


async def test_tc_056_central_smart_charging_txdefaultprofile(gateway, make_cp):
    cp = await booted(make_cp)
    cp.handlers["GetConfiguration"] = caps_handler()
    cp.handlers["SetChargingProfile"] = accepted
    plan, end = now_plan([10.0, 16.0])
    result = await gateway.dispatch_plan("CP01", 1, plan, end=end, verify=False)
    assert result.status == ChargingProfileStatus.accepted
    sent = [f for f in cp.received_calls if f[2] == "SetChargingProfile"][-1][3]
    profile = sent["csChargingProfiles"]
    assert sent["connectorId"] == 1 and profile["chargingProfilePurpose"] == "TxDefaultProfile"
    assert "transactionId" not in profile and profile["chargingSchedule"]["chargingRateUnit"] == "A"
    assert profile["chargingSchedule"]["chargingSchedulePeriod"][0] == {
        "startPeriod": 0,
        "limit": 10.0,
        "numberPhases": 3,
    }
    assert gateway.storage.profiles("CP01")[-1].status == "Accepted"


async def test_tc_057_central_smart_charging_txprofile(gateway, make_cp):
    cp = await booted(make_cp)
    tx = await charge(cp)
    cp.handlers["GetConfiguration"] = caps_handler(unit="Power", max_periods="1")
    cp.handlers["SetChargingProfile"] = accepted
    plan, end = now_plan([10.0, 16.0, 6.0])
    result = await gateway.dispatch_plan("CP01", 1, plan, end=end, verify=False)
    profile = result.profile.to_ocpp()
    assert profile["chargingProfilePurpose"] == "TxProfile" and profile["transactionId"] == tx
    periods = profile["chargingSchedule"]["chargingSchedulePeriod"]
    # Watts (the point takes only Power), one period (its maximum), the lowest limit of the plan.
    assert profile["chargingSchedule"]["chargingRateUnit"] == "W" and len(periods) == 1
    assert periods[0]["limit"] == 6.0 * 230 * 3


async def test_tc_059_remote_start_transaction_with_charging_profile(gateway, make_cp):
    cp = await booted(make_cp)
    profile = ChargingProfile(  # OCPP 1.6 5.11: no transaction id, the transaction does not exist yet
        profile_id=5,
        stack_level=2,
        purpose="TxProfile",
        rate_unit="A",
        periods=(SchedulePeriod(0, 10.0, 3),),
        kind="Relative",
    )
    frame, status = await command(
        cp,
        gateway.remote_start_transaction("CP01", TAG, connector_id=1, charging_profile=profile),
        accepted({}),
    )
    assert status == RemoteStartStopStatus.accepted
    sent = frame[3]["chargingProfile"]
    assert sent["chargingProfilePurpose"] == "TxProfile" and "transactionId" not in sent
    assert sent["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 10.0


async def test_tc_066_get_composite_schedule(gateway, make_cp):
    cp = await booted(make_cp)
    tx = await charge(cp)
    cp.handlers["GetConfiguration"] = caps_handler()
    cp.handlers["SetChargingProfile"] = accepted
    start = datetime.now(UTC) - timedelta(minutes=1)
    cp.handlers["GetCompositeSchedule"] = lambda p: {
        "status": "Accepted",
        "connectorId": p["connectorId"],
        "scheduleStart": iso(start),
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "duration": p["duration"],
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 8.0}],
        },
    }
    plan, end = now_plan([8.0, 8.0])
    result = await gateway.dispatch_plan("CP01", 1, plan, end=end)
    assert result.verified is True and result.composite_limit_a == 8.0
    assert gateway.is_compliant("CP01") is True
    sched = await gateway.get_composite_schedule("CP01", 1, 600)
    assert sched.status == GetCompositeScheduleStatus.accepted and sched.periods[0].limit == 8.0
    assert tx > 0


async def test_tc_067_clear_charging_profile(gateway, make_cp):
    cp = await booted(make_cp)
    frame, status = await command(
        cp,
        gateway.clear_charging_profile("CP01", connector_id=1, purpose="TxDefaultProfile", stack_level=1),
        accepted({}),
    )
    assert frame[3] == {"connectorId": 1, "chargingProfilePurpose": "TxDefaultProfile", "stackLevel": 1}
    assert status == ClearChargingProfileStatus.accepted
    _, status = await command(
        cp, gateway.clear_charging_profile("CP01", profile_id=99), {"status": "Unknown"}
    )
    assert status == ClearChargingProfileStatus.unknown


async def test_tc_066_composite_schedule_not_supported_is_not_a_failure(gateway, make_cp):
    cp = await booted(make_cp)
    cp.handlers["GetConfiguration"] = caps_handler()
    cp.handlers["SetChargingProfile"] = accepted
    plan, end = now_plan([8.0])
    task = asyncio.ensure_future(gateway.dispatch_plan("CP01", 1, plan, end=end))
    frame = await cp.next_cs_call()
    assert frame[2] == "GetCompositeSchedule"
    await cp.send_text(f'[4,"{frame[1]}","NotSupported","",{{}}]')
    result = await task
    assert result.verified is None and gateway.is_compliant("CP01") is None


# --- Security extension (whitepaper edition 3) --------------------------------------------------

PASSWORD = "octt-security-pass-1"


def password_points() -> tuple[KnownChargePoint, ...]:
    return (KnownChargePoint("CP01", password_hash=hash_password(PASSWORD, log2_n=10)),)


async def ca_gateway(make_gateway, pki: Pki, db: str, **overrides: Any):
    return await make_gateway(db=db, ca_cert_path=pki.ca_cert_path, ca_key_path=pki.ca_key_path, **overrides)


async def sign_certificate_request(gw, cp: FakeChargePoint) -> tuple[str, str]:
    """ExtendedTriggerMessage SignChargePointCertificate, then the point's SignCertificate: ``(csr, key)``."""
    frame, status = await command(
        cp, gw.extended_trigger_message("CP01", "SignChargePointCertificate"), accepted({})
    )
    assert frame[2] == "ExtendedTriggerMessage" and frame[3] == {
        "requestedMessage": "SignChargePointCertificate"
    }
    assert status == TriggerMessageStatus.accepted
    csr, key = make_csr("CP01", organization="noxblock")
    assert (await cp.call("SignCertificate", {"csr": csr}))["status"] == "Accepted"
    return csr, key


async def test_tc_074_update_charge_point_certificate_by_request_of_central_system(
    make_gateway, make_cp, tmp_path
):
    pki = Pki.create(tmp_path / "pki")
    gw = await ca_gateway(
        make_gateway, pki, "tc074.sqlite", charge_points=password_points(), allow_profile_0=False,
        ssl_context=pki.server_context(client_certificates=True),
    )  # fmt: skip
    cp = await booted(make_cp, gw=gw, headers=basic_auth("CP01", PASSWORD), ssl=pki.client_context())
    delivered = asyncio.ensure_future(gw.wait_for(lambda e: e.kind == "certificate"))
    csr, key = await sign_certificate_request(gw, cp)
    signed = await cp.next_cs_call()
    assert signed[2] == "CertificateSigned"
    leaf, issuer = load_certificates(signed[3]["certificateChain"])
    leaf.verify_directly_issued_by(pki.ca_certificate)  # raises unless our CA signed it
    assert issuer == pki.ca_certificate
    assert leaf.subject.rfc4514_string() == "CN=CP01,O=noxblock"
    assert leaf.public_key() == x509.load_pem_x509_csr(csr.encode()).public_key()
    await cp.answer(signed, accepted({}))
    assert (await delivered).payload["status"] == "Accepted"
    (record,) = gw.storage.certificate_requests("CP01")
    assert record.csr == csr and record.status == CertificateRequestStatus.ACCEPTED
    assert record.serial == format(leaf.serial_number, "x") and record.not_after == leaf.not_valid_after_utc
    assert record.fingerprint_sha256 == leaf.fingerprint(hashes.SHA256()).hex()
    # Steps 7-8: the point reconnects with its new certificate (profile 3, no password) and is let in.
    await cp.close()
    cp = await make_cp(
        "CP01", gw=gw, ssl=pki.client_context(cert_pem=signed[3]["certificateChain"], key_pem=key)
    )
    assert (await cp.boot())["status"] == "Accepted"


@pytest.mark.parametrize(
    ("case", "certificate_type"),
    [("1", "ManufacturerRootCertificate"), ("2", "CentralSystemRootCertificate")],
)
async def test_tc_075_install_a_certificate_on_the_charge_point(gateway, make_cp, case, certificate_type):
    cp = await booted(make_cp)
    root, _ = make_ca(f"TC_075_{case} root")
    other, _ = make_ca("already installed root")
    frame, status = await command(
        cp, gateway.install_certificate("CP01", certificate_type, root), accepted({})
    )
    assert frame[3] == {"certificateType": certificate_type, "certificate": root}
    assert status == CertificateStatus.accepted
    answer = {"status": "Accepted", "certificateHashData": [ocsp_hash_data(other), ocsp_hash_data(root)]}
    frame, installed = await command(
        cp, gateway.get_installed_certificate_ids("CP01", certificate_type), answer
    )
    assert frame[3] == {"certificateType": certificate_type}
    assert installed.status == GetInstalledCertificateStatus.accepted
    assert installed.find(certificate_hash_data(root)) == installed.certificates[1]
    (record,) = gateway.storage.certificate_commands("CP01")
    assert (record.action, record.certificate_type, record.status) == (
        "InstallCertificate", certificate_type, "Accepted",
    )  # fmt: skip
    assert record.hash_data == certificate_hash_data(root).to_ocpp() and record.certificate == root


async def test_tc_076_delete_a_specific_certificate_from_the_charge_point(gateway, make_cp):
    cp = await booted(make_cp)
    first, _ = make_ca("CentralSystemRootCertificate 1")
    second, _ = make_ca("CentralSystemRootCertificate 2")
    await command(
        cp, gateway.install_certificate("CP01", "CentralSystemRootCertificate", second), accepted({})
    )
    task = asyncio.ensure_future(
        gateway.delete_installed_certificate("CP01", "CentralSystemRootCertificate", second)
    )
    ids = await cp.next_cs_call()
    assert ids[2] == "GetInstalledCertificateIds" and ids[3] == {
        "certificateType": "CentralSystemRootCertificate"
    }
    reported = ocsp_hash_data(second, "SHA384")  # the point hashes with SHA384: the deletion must too
    await cp.answer(
        ids, {"status": "Accepted", "certificateHashData": [ocsp_hash_data(first, "SHA384"), reported]}
    )
    delete = await cp.next_cs_call()
    assert delete[2] == "DeleteCertificate" and delete[3] == {"certificateHashData": reported}
    await cp.answer(delete, accepted({}))
    assert await task == DeleteCertificateStatus.accepted
    # Step 7 (optional): it is gone.
    _, installed = await command(
        cp, gateway.get_installed_certificate_ids("CP01", "CentralSystemRootCertificate"),
        {"status": "Accepted", "certificateHashData": [ocsp_hash_data(first)]},
    )  # fmt: skip
    assert installed.find(certificate_hash_data(second)) is None
    records = gateway.storage.certificate_commands("CP01")
    assert [(r.action, r.status) for r in records] == [
        ("InstallCertificate", "Accepted"),
        ("DeleteCertificate", "Accepted"),
    ]
    assert records[1].hash_data == reported


async def test_tc_077_invalid_charge_point_certificate_security_event(make_gateway, make_cp, tmp_path):
    pki = Pki.create(tmp_path / "pki")
    gw = await ca_gateway(make_gateway, pki, "tc077.sqlite")
    cp = await booted(make_cp, gw=gw)
    delivered = asyncio.ensure_future(gw.wait_for(lambda e: e.kind == "certificate"))
    await sign_certificate_request(gw, cp)
    signed = await cp.next_cs_call()
    assert signed[2] == "CertificateSigned"
    await cp.answer(signed, {"status": "Rejected"})
    assert (await delivered).payload["status"] == "RefusedByChargePoint"
    await cp.call(
        "SecurityEventNotification",
        {"type": "InvalidChargePointCertificate", "timestamp": iso(T0), "techInfo": "unknown issuer"},
    )
    assert (
        gw.storage.certificate_requests("CP01")[-1].status == CertificateRequestStatus.REFUSED_BY_CHARGE_POINT
    )
    event = gw.storage.security_events("CP01")[-1]
    assert (event.type, event.tech_info, event.source) == (
        "InvalidChargePointCertificate",
        "unknown issuer",
        "charge_point",
    )


async def test_tc_078_invalid_central_system_certificate_security_event(gateway, make_cp):
    cp = await booted(make_cp)
    root, _ = make_ca("a root the point refuses")
    frame, status = await command(
        cp, gateway.install_certificate("CP01", "CentralSystemRootCertificate", root), {"status": "Rejected"}
    )
    assert (
        frame[3]["certificateType"] == "CentralSystemRootCertificate" and status == CertificateStatus.rejected
    )
    await cp.call(
        "SecurityEventNotification", {"type": "InvalidCentralSystemCertificate", "timestamp": iso(T0)}
    )
    assert gateway.storage.certificate_commands("CP01")[-1].status == "Rejected"
    assert gateway.storage.security_events("CP01")[-1].type == "InvalidCentralSystemCertificate"


async def test_tc_079_get_security_log(gateway, make_cp):
    cp = await booted(make_cp)
    location = "ftp://logs.example.org/upload/"
    frame, result = await command(
        cp, gateway.get_log("CP01", "SecurityLog", location, request_id=79),
        {"status": "Accepted", "filename": "security.log"},
    )  # fmt: skip
    assert frame[2] == "GetLog" and frame[3] == {
        "logType": "SecurityLog",
        "requestId": 79,
        "log": {"remoteLocation": location},
    }
    assert (result.status, result.request_id, result.filename) == (LogStatus.accepted, 79, "security.log")
    for status in ("Uploading", "Uploaded"):
        assert await cp.call("LogStatusNotification", {"status": status, "requestId": 79}) == {}
    assert notified(gateway, "LogStatusNotification") == [
        {"status": "Uploading", "requestId": 79}, {"status": "Uploaded", "requestId": 79},
    ]  # fmt: skip


def notified(gateway, action: str) -> list[dict[str, Any]]:
    return [n.payload for n in gateway.storage.notifications("CP01") if n.action == action]


def firmware_signer() -> tuple[str, str]:
    """``(signing certificate PEM, its key PEM)``."""
    cert, key = make_ca("firmware signer")
    return cert, key


async def signed_update(gateway, cp: FakeChargePoint, answer: str, request_id: int) -> Any:
    cert, key = firmware_signer()
    location = "https://firmware.example.org/lamp-11-2.0.bin"
    signature = sign_firmware(b"firmware image", key)
    frame, result = await command(
        cp,
        gateway.signed_update_firmware("CP01", location, T0, cert, signature, request_id=request_id),
        {"status": answer},
    )
    assert frame[2] == "SignedUpdateFirmware"
    assert frame[3] == {
        "requestId": request_id,
        "firmware": {
            "location": location, "retrieveDateTime": "2024-01-15T17:00:00.000Z",
            "signingCertificate": cert, "signature": signature,
        },
    }  # fmt: skip
    assert result.request_id == request_id
    return result


async def test_tc_080_secure_firmware_update(gateway, make_cp):
    cp = await booted(make_cp)
    result = await signed_update(gateway, cp, "Accepted", 80)
    assert result.status == UpdateFirmwareStatus.accepted
    steps = ["Downloading", "Downloaded", "SignatureVerified", "Installing", "Installed"]
    for status in steps:
        await cp.call("SignedFirmwareStatusNotification", {"status": status, "requestId": 80})
    assert notified(gateway, "SignedFirmwareStatusNotification") == [
        {"status": s, "requestId": 80} for s in steps
    ]


async def test_tc_081_secure_firmware_update_invalid_signature(gateway, make_cp):
    cp = await booted(make_cp)
    assert (await signed_update(gateway, cp, "Accepted", 81)).status == UpdateFirmwareStatus.accepted
    steps = ["Downloading", "Downloaded", "InvalidSignature"]
    for status in steps:
        await cp.call("SignedFirmwareStatusNotification", {"status": status, "requestId": 81})
    await cp.call("SecurityEventNotification", {"type": "InvalidFirmwareSignature", "timestamp": iso(T0)})
    assert notified(gateway, "SignedFirmwareStatusNotification") == [
        {"status": s, "requestId": 81} for s in steps
    ]
    assert gateway.storage.security_events("CP01")[-1].type == "InvalidFirmwareSignature"


async def test_tc_082_secure_firmware_update_invalid_certificate(gateway, make_cp):
    cp = await booted(make_cp)
    result = await signed_update(gateway, cp, "InvalidCertificate", 82)
    assert result.status == UpdateFirmwareStatus.invalid_certificate
    await cp.call(
        "SecurityEventNotification", {"type": "InvalidFirmwareSigningCertificate", "timestamp": iso(T0)}
    )
    assert gateway.storage.security_events("CP01")[-1].type == "InvalidFirmwareSigningCertificate"
    assert notified(gateway, "SignedFirmwareStatusNotification") == []


async def test_tc_083_upgrade_charge_point_security_profile_accepted(make_cp, tmp_path):
    pki = Pki.create(tmp_path / "pki")
    db = tmp_path / "tc083.sqlite"
    config = gateway_config(charge_points=password_points(), allow_profile_0=False)
    gw = Gateway(config, SqliteStorage(db))
    await gw.start()
    try:
        cp = await booted(make_cp, gw=gw, headers=basic_auth("CP01", PASSWORD))  # profile 1
        install, status = await command(
            cp, gw.install_certificate("CP01", "CentralSystemRootCertificate", pki.ca_pem), accepted({})
        )
        assert status == CertificateStatus.accepted
        upgrade = asyncio.ensure_future(gw.upgrade_security_profile("CP01", 2))
        change = await cp.next_cs_call()
        assert change[2] == "ChangeConfiguration" and change[3] == {"key": "SecurityProfile", "value": "2"}
        await cp.answer(change, accepted({}))
        reset = await cp.next_cs_call()
        assert reset[2] == "Reset" and reset[3] == {"type": "Hard"}
        await cp.answer(reset, accepted({}))
        assert await upgrade == ConfigurationStatus.accepted
        await cp.close()
    finally:
        await gw.stop()
        gw.storage.close()
    # The central system's endpoint now speaks TLS (security profile 2); same store.
    gw = Gateway(replace(config, ssl_context=pki.server_context()), SqliteStorage(db))
    await gw.start()
    try:
        # The point trusts the root it was given in step 1 and logs in with its password over TLS.
        tls = pki.client_context(cadata=install[3]["certificate"])
        cp = await booted(make_cp, gw=gw, headers=basic_auth("CP01", PASSWORD), ssl=tls)
        assert gw.url.startswith("wss://") and gw.required_security_profile("CP01") == 2
        assert gw.storage.config_values("CP01")["SecurityProfile"] == "2"
        await cp.close()
    finally:
        await gw.stop()
        gw.storage.close()


async def test_tc_084_upgrade_charge_point_security_profile_rejected(make_gateway, make_cp):
    gw = await make_gateway(db="tc084.sqlite", charge_points=password_points(), allow_profile_0=False)
    cp = await booted(make_cp, gw=gw, headers=basic_auth("CP01", PASSWORD))
    frame, status = await command(cp, gw.upgrade_security_profile("CP01", 2), {"status": "Rejected"})
    assert frame[3] == {"key": "SecurityProfile", "value": "2"} and status == ConfigurationStatus.rejected
    # Nothing changes: no Reset follows, nothing is stored, the point goes on as before.
    assert [f[2] for f in cp.received_calls] == ["ChangeConfiguration"] and cp.cs_calls.empty()
    assert (
        "SecurityProfile" not in gw.storage.config_values("CP01")
        and gw.required_security_profile("CP01") == 0
    )
    # A downgrade is never asked for (the point would reject it, TC_084_CS).
    with pytest.raises(PropertyConstraintViolation):
        await gw.upgrade_security_profile("CP01", 0)
    assert len(cp.received_calls) == 1
    await cp.close()
    cp = await make_cp("CP01", gw=gw, headers=basic_auth("CP01", PASSWORD))
    assert (await cp.boot())["status"] == "Accepted"
