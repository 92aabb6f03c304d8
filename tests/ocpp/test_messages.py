"""Every charge-point-initiated message and every central-system command, over real websockets."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from ocpp.v16.enums import (
    AvailabilityStatus,
    CancelReservationStatus,
    ChargingProfileStatus,
    ClearCacheStatus,
    ClearChargingProfileStatus,
    ConfigurationStatus,
    DataTransferStatus,
    GetCompositeScheduleStatus,
    RemoteStartStopStatus,
    ReservationStatus,
    ResetStatus,
    TriggerMessageStatus,
    UnlockStatus,
    UpdateStatus,
)
from ocpp_helpers import T0, CallErrorReply, iso

from ocpp_gateway import (
    CallTimeout,
    ConnectionLost,
    IdTagRecord,
    NotConnected,
    OcppError,
    failsafe_profile,
)
from ocpp_gateway.errors import NotSupportedAction

pytestmark = pytest.mark.asyncio


# --- charge point -> central system ---------------------------------------------------------


async def test_boot_notification_known_point_accepted(gateway, make_cp):
    cp = await make_cp("CP01")
    answer = await cp.boot()
    assert answer["status"] == "Accepted"
    assert answer["interval"] == gateway.config.heartbeat_interval_s
    record = gateway.storage.charge_point("CP01")
    assert record.vendor == "Acme" and record.model == "Lamp-11" and record.registration_status == "Accepted"


@pytest.mark.parametrize("policy", ["Pending", "Rejected", "Accepted"])
async def test_boot_notification_unknown_point_follows_policy(make_gateway, make_cp, policy):
    gw = await make_gateway(db=f"{policy}.sqlite", unknown_policy=policy)
    cp = await make_cp("STRANGER", gw=gw)
    assert (await cp.boot())["status"] == policy


async def test_rejected_point_may_only_boot(make_gateway, make_cp):
    gw = await make_gateway(unknown_policy="Rejected")
    cp = await make_cp("STRANGER", gw=gw)
    await cp.boot()
    with pytest.raises(CallErrorReply) as e:
        await cp.call("Heartbeat", {})
    assert e.value.code == "SecurityError"


async def test_heartbeat_returns_current_time(gateway, make_cp):
    cp = await make_cp()
    answer = await cp.call("Heartbeat", {})
    assert answer["currentTime"].endswith("Z")


async def test_status_notification_records_history_and_flags_unexpected_transitions(gateway, make_cp):
    cp = await make_cp()
    await cp.status(0, "Available")
    await cp.status(1, "Available")
    await cp.status(1, "Preparing")
    await cp.status(1, "Charging")
    await cp.status(1, "Reserved")  # Charging -> Reserved is not in the spec's table
    await cp.status(1, "Faulted", error_code="GroundFailure")
    history = gateway.storage.status_history("CP01", 1)
    assert [h.status for h in history] == ["Available", "Preparing", "Charging", "Reserved", "Faulted"]
    assert [h.expected for h in history] == [True, True, True, False, True]
    latest = {c.connector_id: c for c in gateway.storage.connectors("CP01")}
    assert latest[1].status == "Faulted" and latest[1].error_code == "GroundFailure"
    assert latest[0].status == "Available"


async def test_authorize_answers_from_the_id_tag_store(gateway, make_cp):
    gateway.put_id_tag(IdTagRecord("OK"))
    gateway.put_id_tag(IdTagRecord("BLOCKED", status="Blocked"))
    gateway.put_id_tag(IdTagRecord("OLD", expiry_date=T0 - timedelta(days=1)))
    gateway.put_id_tag(IdTagRecord("CHILD", parent_id_tag="FLEET"))
    cp = await make_cp()
    statuses = {}
    for tag in ("OK", "BLOCKED", "OLD", "CHILD", "NOBODY"):
        statuses[tag] = (await cp.call("Authorize", {"idTag": tag}))["idTagInfo"]
    assert statuses["OK"]["status"] == "Accepted"
    assert statuses["BLOCKED"]["status"] == "Blocked"
    assert statuses["OLD"]["status"] == "Expired"
    assert statuses["CHILD"] == {"status": "Accepted", "parentIdTag": "FLEET"}
    assert statuses["NOBODY"]["status"] == "Invalid"
    await cp.start(1, "OK")
    assert (await cp.call("Authorize", {"idTag": "OK"}))["idTagInfo"]["status"] == "ConcurrentTx"


async def test_start_and_stop_transaction_with_unique_persistent_ids(gateway, make_cp):
    gateway.put_id_tag(IdTagRecord("TAG"))
    cp = await make_cp()
    a = await cp.start(1, "TAG", 1000)
    b = await cp.start(2, "TAG", 2000, at=T0 + timedelta(minutes=1))
    assert a["idTagInfo"]["status"] == "Accepted"
    assert b["idTagInfo"]["status"] == "ConcurrentTx"
    assert a["transactionId"] != b["transactionId"]
    # A start replayed (answer lost) gets the same id back, and no second transaction.
    assert (await cp.start(1, "TAG", 1000))["transactionId"] == a["transactionId"]
    stop = await cp.stop(
        a["transactionId"], 5000, at=T0 + timedelta(hours=1), idTag="TAG", reason="EVDisconnected"
    )
    assert stop["idTagInfo"]["status"] == "Accepted"
    tx = gateway.storage.transaction(a["transactionId"])
    assert (tx.meter_start_wh, tx.meter_stop_wh, tx.stop_reason) == (1000, 5000, "EVDisconnected")
    assert tx.start_time == T0 and tx.stop_time == T0 + timedelta(hours=1)
    assert len(gateway.storage.transactions()) == 2


async def test_stop_for_unknown_transaction_is_recorded_not_refused(gateway, make_cp):
    cp = await make_cp()
    answer = await cp.stop(
        4242,
        7000,
        transactionData=[
            {"timestamp": iso(T0), "sampledValue": [{"value": "7000", "context": "Transaction.End"}]}
        ],
    )
    assert answer == {}
    again = await cp.stop(4242, 7000)  # replayed once more
    assert again == {}
    orphans = [t for t in gateway.storage.transactions() if t.orphan]
    assert len(orphans) == 1 and orphans[0].reported_id == 4242 and orphans[0].meter_stop_wh == 7000
    assert gateway.storage.meter_values("CP01", transaction_id=4242)[0].value == "7000"


async def test_second_stop_is_ignored(gateway, make_cp):
    cp = await make_cp()
    tx = (await cp.start(1, "TAG"))["transactionId"]
    await cp.stop(tx, 100, at=T0 + timedelta(minutes=5))
    await cp.stop(tx, 999, at=T0 + timedelta(minutes=9))
    assert gateway.storage.transaction(tx).meter_stop_wh == 100


async def test_meter_values_every_field_stored_once(gateway, make_cp):
    cp = await make_cp()
    payload = {
        "connectorId": 1,
        "transactionId": 7,
        "meterValue": [
            {
                "timestamp": iso(T0),
                "sampledValue": [
                    {"value": "1234", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                    {"value": "15.9", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
                    {"value": "16.1", "measurand": "Current.Import", "phase": "L2", "unit": "A"},
                    {
                        "value": "229",
                        "measurand": "Voltage",
                        "phase": "L1-N",
                        "unit": "V",
                        "context": "Sample.Clock",
                    },
                ],
            }
        ],
    }
    await cp.call("MeterValues", payload)
    await cp.call("MeterValues", payload)  # duplicate replay
    values = gateway.storage.meter_values("CP01", transaction_id=7)
    assert len(values) == 4
    by = {(v.measurand, v.phase): v for v in values}
    assert by[("Current.Import", "L2")].value_num == pytest.approx(16.1)
    assert by[("Voltage", "L1-N")].context == "Sample.Clock"
    assert by[("Energy.Active.Import.Register", None)].unit == "Wh"


async def test_data_transfer_unknown_vendor_and_registered_handler(gateway, make_cp):
    cp = await make_cp()
    assert (await cp.call("DataTransfer", {"vendorId": "acme"}))["status"] == "UnknownVendorId"
    gateway.central.data_transfer_handlers["noxblock"] = lambda cp_id, msg, data: (
        "Accepted",
        f"{cp_id}:{data}",
    )
    answer = await cp.call("DataTransfer", {"vendorId": "noxblock", "data": "x"})
    assert answer == {"status": "Accepted", "data": "CP01:x"}
    assert len(gateway.storage.notifications("CP01")) == 2


@pytest.mark.parametrize(
    ("action", "payload"),
    [
        ("DiagnosticsStatusNotification", {"status": "Uploaded"}),
        ("FirmwareStatusNotification", {"status": "Installed"}),
        ("LogStatusNotification", {"status": "Uploaded", "requestId": 1}),
        ("SignedFirmwareStatusNotification", {"status": "Installed", "requestId": 2}),
    ],
)
async def test_status_notifications_are_recorded(gateway, make_cp, action, payload):
    cp = await make_cp()
    assert await cp.call(action, payload) == {}
    (note,) = gateway.storage.notifications("CP01")
    assert note.action == action and note.payload == payload


async def test_security_event_notification_is_recorded(gateway, make_cp):
    cp = await make_cp()
    await cp.call(
        "SecurityEventNotification", {"type": "FirmwareUpdated", "timestamp": iso(T0), "techInfo": "v2"}
    )
    (event,) = gateway.storage.security_events("CP01")
    assert (event.type, event.tech_info, event.source) == ("FirmwareUpdated", "v2", "charge_point")


# --- central system -> charge point ---------------------------------------------------------


COMMANDS = [
    (
        "RemoteStartTransaction",
        {"status": "Accepted"},
        lambda g: g.remote_start_transaction("CP01", "TAG", connector_id=1),
        RemoteStartStopStatus.accepted,
    ),
    (
        "RemoteStopTransaction",
        {"status": "Rejected"},
        lambda g: g.remote_stop_transaction("CP01", 5),
        RemoteStartStopStatus.rejected,
    ),
    ("Reset", {"status": "Accepted"}, lambda g: g.reset("CP01", "Hard"), ResetStatus.accepted),
    (
        "UnlockConnector",
        {"status": "Unlocked"},
        lambda g: g.unlock_connector("CP01", 1),
        UnlockStatus.unlocked,
    ),
    (
        "ChangeAvailability",
        {"status": "Scheduled"},
        lambda g: g.change_availability("CP01", 1, "Inoperative"),
        AvailabilityStatus.scheduled,
    ),
    (
        "ChangeConfiguration",
        {"status": "RebootRequired"},
        lambda g: g.change_configuration("CP01", "HeartbeatInterval", "60"),
        ConfigurationStatus.reboot_required,
    ),
    ("ClearCache", {"status": "Accepted"}, lambda g: g.clear_cache("CP01"), ClearCacheStatus.accepted),
    (
        "TriggerMessage",
        {"status": "Accepted"},
        lambda g: g.trigger_message("CP01", "StatusNotification", connector_id=1),
        TriggerMessageStatus.accepted,
    ),
    (
        "SetChargingProfile",
        {"status": "Accepted"},
        lambda g: g.set_charging_profile("CP01", 0, failsafe_profile(6.0)),
        ChargingProfileStatus.accepted,
    ),
    (
        "ClearChargingProfile",
        {"status": "Unknown"},
        lambda g: g.clear_charging_profile("CP01", profile_id=3),
        ClearChargingProfileStatus.unknown,
    ),
    (
        "SendLocalList",
        {"status": "Accepted"},
        lambda g: g.send_local_list(
            "CP01", 2, "Full", [IdTagRecord("A"), IdTagRecord("B", status="Blocked")]
        ),
        UpdateStatus.accepted,
    ),
    ("GetLocalListVersion", {"listVersion": 2}, lambda g: g.get_local_list_version("CP01"), 2),
    (
        "ReserveNow",
        {"status": "Occupied"},
        lambda g: g.reserve_now("CP01", 1, T0, "TAG", 9),
        ReservationStatus.occupied,
    ),
    (
        "CancelReservation",
        {"status": "Accepted"},
        lambda g: g.cancel_reservation("CP01", 9),
        CancelReservationStatus.accepted,
    ),
    (
        "GetDiagnostics",
        {"fileName": "diag.zip"},
        lambda g: g.get_diagnostics("CP01", "ftp://example.org/up", retries=1),
        "diag.zip",
    ),
    ("UpdateFirmware", {}, lambda g: g.update_firmware("CP01", "https://example.org/fw.bin", T0), None),
    (
        "DataTransfer",
        {"status": "Accepted", "data": "pong"},
        lambda g: g.data_transfer("CP01", "acme", data="ping"),
        (DataTransferStatus.accepted, "pong"),
    ),
]


@pytest.mark.parametrize(("action", "answer", "command", "expected"), COMMANDS, ids=[c[0] for c in COMMANDS])
async def test_command_round_trip(gateway, make_cp, action, answer, command, expected):
    cp = await make_cp()
    task = asyncio.create_task(command(gateway))
    frame = await cp.next_cs_call()
    assert frame[0] == 2 and frame[2] == action
    await cp.answer(frame, answer)
    assert await task == expected


async def test_get_configuration_typed_and_remembered(gateway, make_cp):
    cp = await make_cp()
    cp.handlers["GetConfiguration"] = lambda p: {
        "configurationKey": [{"key": "ChargingScheduleMaxPeriods", "readonly": True, "value": "10"}],
        "unknownKey": ["Nope"],
    }
    result = await gateway.get_configuration("CP01", ["ChargingScheduleMaxPeriods", "Nope"])
    assert result.get("ChargingScheduleMaxPeriods") == "10" and result.unknown_keys == ("Nope",)
    assert gateway.storage.config_values("CP01")["ChargingScheduleMaxPeriods"] == "10"


async def test_get_composite_schedule_typed(gateway, make_cp):
    cp = await make_cp()
    cp.handlers["GetCompositeSchedule"] = lambda p: {
        "status": "Accepted",
        "connectorId": 1,
        "scheduleStart": iso(T0),
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "duration": 3600,
            "chargingSchedulePeriod": [
                {"startPeriod": 0, "limit": 10.0},
                {"startPeriod": 600, "limit": 21.4},
            ],
        },
    }
    sched = await gateway.get_composite_schedule("CP01", 1, 3600)
    assert sched.status == GetCompositeScheduleStatus.accepted
    assert sched.limit_a_at(T0 + timedelta(minutes=20), voltage_v=230, phases=3) == pytest.approx(21.4)


async def test_command_call_error_raises_matching_ocpp_error(gateway, make_cp):
    cp = await make_cp()
    task = asyncio.create_task(gateway.reset("CP01"))
    frame = await cp.next_cs_call()
    await cp.send_text(f'[4,"{frame[1]}","NotSupported","no",{{}}]')
    with pytest.raises(NotSupportedAction) as e:
        await task
    assert e.value.from_charge_point


async def test_command_invalid_answer_raises(gateway, make_cp):
    cp = await make_cp()
    task = asyncio.create_task(gateway.reset("CP01"))
    frame = await cp.next_cs_call()
    await cp.answer(frame, {"status": "Maybe"})
    with pytest.raises(OcppError) as e:
        await task
    assert e.value.code == "PropertyConstraintViolation"


async def test_command_timeout_leaves_nothing_behind(make_gateway, make_cp):
    gw = await make_gateway(call_timeout_s=0.2)
    cp = await make_cp(gw=gw)
    with pytest.raises(CallTimeout):
        await gw.reset("CP01")
    conn = gw._connections["CP01"]
    assert conn.waiter is None and conn.protocol.pending_id is None
    stale = await cp.next_cs_call()
    await cp.answer(stale, {"status": "Accepted"})  # late answer: dropped, not delivered to the next call
    task = asyncio.create_task(gw.clear_cache("CP01"))
    frame = await cp.next_cs_call()
    assert frame[2] == "ClearCache"
    await cp.answer(frame, {"status": "Rejected"})
    assert await task == ClearCacheStatus.rejected


async def test_one_call_in_flight_per_connection(gateway, make_cp):
    cp = await make_cp()
    first = asyncio.create_task(gateway.clear_cache("CP01"))
    second = asyncio.create_task(gateway.reset("CP01"))
    f1 = await cp.next_cs_call()
    assert cp.cs_calls.empty()  # the second waits for the first answer
    await cp.answer(f1, {"status": "Accepted"})
    f2 = await cp.next_cs_call()
    await cp.answer(f2, {"status": "Accepted"})
    assert {f1[2], f2[2]} == {"ClearCache", "Reset"}
    assert await first == ClearCacheStatus.accepted and await second == ResetStatus.accepted


async def test_command_to_unconnected_point(gateway):
    with pytest.raises(NotConnected):
        await gateway.reset("CP04")


async def test_command_fails_fast_when_connection_closes(gateway, make_cp):
    cp = await make_cp()
    task = asyncio.create_task(gateway.reset("CP01"))
    await cp.next_cs_call()
    disconnected = asyncio.ensure_future(gateway.wait_for(lambda e: e.kind == "disconnected"))
    await cp.close()
    await disconnected
    with pytest.raises(ConnectionLost):
        await task
