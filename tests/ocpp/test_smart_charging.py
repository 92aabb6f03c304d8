"""Failsafe at boot, re-dispatch when a transaction starts, compliance from meter values and read-back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from ocpp_helpers import iso

from ocpp_gateway import KnownChargePoint

pytestmark = pytest.mark.asyncio


def caps(unit: str):
    return lambda p: {
        "configurationKey": [
            {"key": "ChargingScheduleAllowedChargingRateUnit", "readonly": True, "value": unit}
        ],
        "unknownKey": ["ChargingScheduleMaxPeriods"],
    }


def accepted(_):
    return {"status": "Accepted"}


async def test_failsafe_profile_installed_at_boot_in_the_points_unit(make_gateway, make_cp):
    gw = await make_gateway(failsafe_current_a=6.0)
    cp = await make_cp(gw=gw)
    cp.handlers["GetConfiguration"] = caps("Power")
    cp.handlers["SetChargingProfile"] = accepted
    done = asyncio.ensure_future(gw.wait_for(lambda e: e.kind == "failsafe"))
    await cp.boot()
    assert (await done).payload == {"status": "Accepted"}
    sent = next(f for f in cp.received_calls if f[2] == "SetChargingProfile")[3]
    profile = sent["csChargingProfiles"]
    assert sent["connectorId"] == 0 and profile["chargingProfilePurpose"] == "TxDefaultProfile"
    assert profile["stackLevel"] == 0 and "duration" not in profile["chargingSchedule"]
    assert profile["chargingSchedule"]["chargingSchedulePeriod"] == [
        {"startPeriod": 0, "limit": 4140.0, "numberPhases": 3}
    ]
    assert gw.storage.profiles("CP01")[0].status == "Accepted"


async def test_failsafe_is_the_points_own_share_when_it_has_one(make_gateway, make_cp):
    # The site gives CP01 10 A (its share of the limits); the config's 32 A is only a ceiling.
    points = (KnownChargePoint("CP01", failsafe_current_a=10.0), KnownChargePoint("CP02"))
    gw = await make_gateway(failsafe_current_a=32.0, charge_points=points)
    for cp_id, limit_a in (("CP01", 10.0), ("CP02", 32.0)):
        cp = await make_cp(cp_id, gw=gw)
        cp.handlers["GetConfiguration"] = caps("Current")
        cp.handlers["SetChargingProfile"] = accepted
        done = asyncio.ensure_future(
            gw.wait_for(lambda e, i=cp_id: e.kind == "failsafe" and e.charge_point_id == i)
        )
        await cp.boot()
        await done
        sent = next(f for f in cp.received_calls if f[2] == "SetChargingProfile")[3]
        periods = sent["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"]
        assert periods[0]["limit"] == limit_a, cp_id


async def test_failsafe_rejected_or_unanswered_is_recorded(make_gateway, make_cp):
    gw = await make_gateway(failsafe_current_a=6.0, call_timeout_s=0.3)
    cp = await make_cp(gw=gw)
    cp.handlers["GetConfiguration"] = caps("Current")
    done = asyncio.ensure_future(gw.wait_for(lambda e: e.kind == "failsafe"))
    await cp.boot()  # SetChargingProfile never answered
    assert (await done).payload["status"].startswith("error")
    assert gw.storage.profiles("CP01")[0].status.startswith("NoAnswer")


async def test_plan_is_resent_as_txprofile_when_a_transaction_starts(gateway, make_cp):
    cp = await make_cp()
    cp.handlers["GetConfiguration"] = caps("Current")
    cp.handlers["GetCompositeSchedule"] = lambda p: {"status": "Rejected"}
    tx_profile: asyncio.Future[dict] = asyncio.get_running_loop().create_future()

    def set_profile(payload: dict) -> dict:
        if "transactionId" in payload["csChargingProfiles"] and not tx_profile.done():
            tx_profile.set_result(payload["csChargingProfiles"])
        return {"status": "Accepted"}

    cp.handlers["SetChargingProfile"] = set_profile
    start = datetime.now(UTC) - timedelta(minutes=1)
    plan = [(start, 12.0), (start + timedelta(minutes=15), 7.0)]
    first = await gateway.dispatch_plan("CP01", 1, plan, end=start + timedelta(minutes=30), verify=False)
    assert first.profile.purpose == "TxDefaultProfile"
    tx = (await cp.start(1, "TAG", at=datetime.now(UTC)))["transactionId"]
    profile = await asyncio.wait_for(tx_profile, 5)
    assert profile["transactionId"] == tx and profile["chargingProfilePurpose"] == "TxProfile"
    assert profile["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 12.0


async def test_point_drawing_above_its_limit_is_flagged_non_compliant(make_gateway, make_cp):
    gw = await make_gateway(compliance_grace_s=0.0, compliance_violations=2)
    cp = await make_cp(gw=gw)
    cp.handlers["GetConfiguration"] = caps("Current")
    cp.handlers["SetChargingProfile"] = accepted
    tx = (await cp.start(1, "TAG", at=datetime.now(UTC)))["transactionId"]
    start = datetime.now(UTC) - timedelta(minutes=1)
    await gw.dispatch_plan("CP01", 1, [(start, 8.0)], end=start + timedelta(hours=1), verify=False)

    async def sample(current_a: float, seconds: int) -> None:
        t = datetime.now(UTC) + timedelta(seconds=seconds)
        await cp.call(
            "MeterValues",
            {
                "connectorId": 1,
                "transactionId": tx,
                "meterValue": [
                    {
                        "timestamp": iso(t),
                        "sampledValue": [
                            {
                                "measurand": "Current.Import",
                                "phase": "L1",
                                "unit": "A",
                                "value": str(current_a),
                            }
                        ],
                    }
                ],
            },
        )

    await sample(8.5, 1)  # within tolerance
    await sample(16.0, 2)
    assert gw.is_compliant("CP01") is None  # one violation is not enough
    await sample(16.0, 3)
    assert gw.is_compliant("CP01") is False and gw.non_compliant() == ["CP01"]
    assert "16.0 A" in gw.storage.charge_point("CP01").compliance_reason


async def test_composite_schedule_above_the_plan_flags_non_compliant(gateway, make_cp):
    cp = await make_cp()
    cp.handlers["GetConfiguration"] = caps("Current")
    cp.handlers["SetChargingProfile"] = accepted
    now = datetime.now(UTC)
    cp.handlers["GetCompositeSchedule"] = lambda p: {
        "status": "Accepted",
        "connectorId": 1,
        "scheduleStart": iso(now - timedelta(minutes=5)),
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 32.0}],
        },
    }
    result = await gateway.dispatch_plan(
        "CP01", 1, [(now - timedelta(minutes=1), 6.0)], end=now + timedelta(hours=1)
    )
    assert result.verified is False and result.composite_limit_a == 32.0
    assert gateway.non_compliant() == ["CP01"]
