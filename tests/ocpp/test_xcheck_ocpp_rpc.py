"""Cross-implementation tests: the npm package ``ocpp-rpc`` in strict mode plays the charge point.

Strict mode validates every frame, both directions, against the official OCPP 1.6 JSON schemas
bundled with ocpp-rpc, so our answers and our commands are checked by code we did not write.
``xcheck/cp.js`` runs a scripted session and answers central-system calls, printing one JSON line
per event; any ``strict_failure`` or ``bad_message`` line fails the test.

``npm ci`` runs once per session into ``xcheck/node_modules`` (kept between runs). The tests skip
only when node/npm are missing or the npm registry cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from ocpp.v16.enums import (
    AvailabilityStatus,
    CancelReservationStatus,
    ChargingProfileStatus,
    ClearCacheStatus,
    ClearChargingProfileStatus,
    ConfigurationStatus,
    DataTransferStatus,
    GetCompositeScheduleStatus,
    MessageTrigger,
    RemoteStartStopStatus,
    ReservationStatus,
    ResetStatus,
    TriggerMessageStatus,
    UnlockStatus,
    UpdateStatus,
)

from ocpp_gateway import Gateway, IdTagRecord
from ocpp_gateway.dispatch import ChargingProfile, SchedulePeriod

XCHECK = Path(__file__).parent / "xcheck"
_NETWORK_ERRORS = (
    "ENOTFOUND",
    "EAI_AGAIN",
    "ETIMEDOUT",
    "ECONNREFUSED",
    "ECONNRESET",
    "network",
    "ENETUNREACH",
)


def _installed_version() -> str | None:
    try:
        return json.loads((XCHECK / "node_modules" / "ocpp-rpc" / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="session")
def ocpp_rpc() -> Path:
    """``xcheck/`` with ocpp-rpc installed (``npm ci`` once; cached in node_modules)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm not installed: cross-implementation tests with ocpp-rpc skipped")
    pinned = json.loads((XCHECK / "package.json").read_text())["dependencies"]["ocpp-rpc"]
    if _installed_version() != pinned:
        cmd = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            done = subprocess.run(cmd, cwd=XCHECK, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            pytest.skip("npm ci timed out: npm registry unreachable?")
        if done.returncode != 0:
            output = done.stdout + done.stderr
            if any(e in output for e in _NETWORK_ERRORS):
                pytest.skip(f"npm registry unreachable: {output.strip().splitlines()[-1]}")
            pytest.fail(f"npm ci failed:\n{output}")
        assert _installed_version() == pinned
    return XCHECK


class NodeChargePoint:
    """``node cp.js`` as a subprocess; its JSON lines collected in ``events``."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.stderr = ""
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.events.append({"event": "unparsed", "line": line.decode(errors="replace")})
            self._changed.set()
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 15.0
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout_s):
            while True:
                for e in self.events:
                    if predicate(e):
                        return e
                if self._reader.done():
                    err = (await self.proc.stderr.read()).decode() if self.proc.stderr else ""
                    raise AssertionError(f"cp.js ended: {self.events[-3:]} {err}")
                self._changed.clear()
                await self._changed.wait()

    def of(self, kind: str, method: str | None = None) -> list[dict[str, Any]]:
        return [
            e for e in self.events if e["event"] == kind and (method is None or e.get("method") == method)
        ]

    def assert_strict_ok(self, *, allowed_message_ids: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        failures = [e for e in self.of("strict_failure") if e.get("messageId") not in allowed_message_ids]
        assert not failures, f"ocpp-rpc strict validation failed: {failures}"
        assert not self.of("bad_message"), self.of("bad_message")
        assert not self.of("call_error"), self.of("call_error")
        assert not self.of("script_failed"), self.of("script_failed")

    async def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
        try:
            async with asyncio.timeout(5):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()


@pytest_asyncio.fixture
async def node_cp(ocpp_rpc: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[NodeChargePoint] = []

    async def start(gw: Gateway, cp_id: str = "CP01") -> NodeChargePoint:
        endpoint = gw.url.rstrip("/")
        proc = await asyncio.create_subprocess_exec(
            "node", "cp.js", endpoint, cp_id, cwd=ocpp_rpc,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        cp = NodeChargePoint(proc)
        started.append(cp)
        return cp

    yield start
    for cp in started:
        await cp.close()


async def _scripted(
    make_gateway: Any, node_cp: Any, **overrides: Any
) -> tuple[Gateway, NodeChargePoint, int]:
    gw = await make_gateway(**overrides)
    gw.put_id_tag(IdTagRecord("XCHECK-TAG", "Accepted"))
    cp = await node_cp(gw)
    done = await cp.wait_for(lambda e: e["event"] in ("script_done", "script_failed"))
    assert done["event"] == "script_done", cp.events
    return gw, cp, done["transactionId"]


@pytest.mark.asyncio
async def test_ocpp_rpc_charge_point_script(make_gateway, node_cp) -> None:
    """Every CP-initiated message of the script: our answers pass ocpp-rpc's strict validation."""
    gw, cp, tx_id = await _scripted(make_gateway, node_cp, failsafe_current_a=6.0)
    assert cp.of("open")[0]["protocol"] == "ocpp1.6"
    results = {e["method"]: e["result"] for e in cp.of("result")}
    assert results["BootNotification"]["status"] == "Accepted"
    assert results["BootNotification"]["interval"] == gw.config.heartbeat_interval_s
    assert "currentTime" in results["Heartbeat"]
    assert results["Authorize"]["idTagInfo"]["status"] == "Accepted"
    assert results["StartTransaction"]["idTagInfo"]["status"] == "Accepted"
    assert results["DataTransfer"]["status"] == "UnknownVendorId"
    assert isinstance(tx_id, int) and tx_id > 0
    (tx,) = gw.storage.transactions(charge_point_id="CP01")
    assert tx.id == tx_id and tx.stop_time is None and tx.id_tag == "XCHECK-TAG"
    assert len(gw.storage.meter_values("CP01", transaction_id=tx_id)) == 5
    # The failsafe installed after the boot (GetConfiguration + SetChargingProfile) passed too.
    await cp.wait_for(lambda e: e["event"] == "cs_call" and e["method"] == "SetChargingProfile")
    failsafe = cp.of("cs_call", "SetChargingProfile")[0]["params"]["csChargingProfiles"]
    assert failsafe["chargingProfilePurpose"] == "TxDefaultProfile" and failsafe["stackLevel"] == 0
    assert failsafe["chargingSchedule"]["chargingRateUnit"] == "A"  # the point said: Current only
    cp.assert_strict_ok()


@pytest.mark.asyncio
async def test_ocpp_rpc_accepts_every_command(make_gateway, node_cp) -> None:
    """Every CS-initiated command through the typed API: ocpp-rpc accepts our CALL frames."""
    gw, cp, tx_id = await _scripted(make_gateway, node_cp)
    now = datetime.now(UTC).replace(microsecond=0)

    profile = ChargingProfile(
        profile_id=7, stack_level=2, purpose="TxDefaultProfile", rate_unit="A",
        periods=(SchedulePeriod(0, 16.0, 3), SchedulePeriod(900, 7.3, 3)),
        start_schedule=now - timedelta(minutes=1), duration_s=3600,
        valid_from=now - timedelta(minutes=1), valid_to=now + timedelta(hours=2), min_charging_rate=6.0,
    )  # fmt: skip
    assert await gw.set_charging_profile("CP01", 1, profile) == ChargingProfileStatus.accepted
    cpmax = ChargingProfile(
        profile_id=8, stack_level=1, purpose="ChargePointMaxProfile", rate_unit="W",
        periods=(SchedulePeriod(0, 22000.0),), kind="Recurring", recurrency_kind="Daily", start_schedule=now,
    )  # fmt: skip
    assert await gw.set_charging_profile("CP01", 0, cpmax) == ChargingProfileStatus.accepted
    composite = await gw.get_composite_schedule("CP01", 1, 3600, rate_unit="A")
    assert composite.status == GetCompositeScheduleStatus.accepted
    assert await gw.clear_charging_profile("CP01", profile_id=8) == ClearChargingProfileStatus.accepted
    assert (
        await gw.clear_charging_profile("CP01", connector_id=1, purpose="TxDefaultProfile", stack_level=2)
        == ClearChargingProfileStatus.accepted
    )

    # Dispatch: GetConfiguration, a TxProfile for the running transaction, GetCompositeSchedule read-back.
    plan = [(now - timedelta(minutes=5), 11.0), (now + timedelta(minutes=10), 8.5)]
    result = await gw.dispatch_plan("CP01", 1, plan, end=now + timedelta(minutes=40))
    assert result.status == ChargingProfileStatus.accepted
    assert result.profile.purpose == "TxProfile" and result.profile.transaction_id == tx_id
    assert result.verified is True

    config = await gw.get_configuration("CP01")
    assert config.get("ChargingScheduleMaxPeriods") == "10"
    some = await gw.get_configuration("CP01", ["HeartbeatInterval", "NoSuchKey"])
    assert some.unknown_keys == ("NoSuchKey",)
    assert await gw.change_configuration("CP01", "HeartbeatInterval", "120") == ConfigurationStatus.accepted
    assert await gw.trigger_message("CP01", MessageTrigger.meter_values, connector_id=1) == (
        TriggerMessageStatus.accepted
    )
    assert await gw.trigger_message("CP01", MessageTrigger.heartbeat) == TriggerMessageStatus.accepted
    assert await gw.trigger_message("CP01", MessageTrigger.status_notification, connector_id=1) == (
        TriggerMessageStatus.accepted
    )
    assert await gw.unlock_connector("CP01", 1) == UnlockStatus.unlocked
    assert await gw.change_availability("CP01", 0, "Inoperative") == AvailabilityStatus.scheduled
    assert await gw.clear_cache("CP01") == ClearCacheStatus.accepted
    status, _ = await gw.data_transfer("CP01", "org.noxblock", message_id="ping", data="x")
    assert status == DataTransferStatus.unknown_vendor_id
    entries = [
        IdTagRecord("TAG-A", "Accepted", expiry_date=now + timedelta(days=30), parent_id_tag="FLEET-1"),
        IdTagRecord("TAG-B", "Blocked"),
    ]
    assert await gw.send_local_list("CP01", 3, "Full", entries) == UpdateStatus.accepted
    assert await gw.get_local_list_version("CP01") == 3
    assert await gw.reserve_now(
        "CP01", 1, now + timedelta(hours=1), "TAG-A", 42, parent_id_tag="FLEET-1"
    ) == (ReservationStatus.accepted)
    assert await gw.cancel_reservation("CP01", 42) == CancelReservationStatus.accepted
    name = await gw.get_diagnostics(
        "CP01", "ftp://diag.example/upload", retries=2, retry_interval_s=30,
        start_time=now - timedelta(days=1), stop_time=now,
    )  # fmt: skip
    assert name == "diagnostics.log"
    await gw.update_firmware("CP01", "https://fw.example/fw.bin", now + timedelta(hours=1), retries=1)

    # Remote stop, then a remote start with a TxProfile; the point's follow-up messages validate too.
    assert await gw.remote_stop_transaction("CP01", tx_id) == RemoteStartStopStatus.accepted
    await cp.wait_for(lambda e: e["event"] == "result" and e["method"] == "StopTransaction")
    # No transaction id: the transaction does not exist yet (OCPP 1.6 5.11), and none is sent.
    start_profile = ChargingProfile(
        profile_id=9, stack_level=1, purpose="TxProfile", rate_unit="A",
        periods=(SchedulePeriod(0, 10.0),), kind="Relative", duration_s=7200,
    )  # fmt: skip
    status = await gw.remote_start_transaction(
        "CP01", "XCHECK-TAG", connector_id=1, charging_profile=start_profile
    )
    assert status == RemoteStartStopStatus.accepted
    started = await cp.wait_for(
        lambda e: (
            e["event"] == "result"
            and e["method"] == "StartTransaction"
            and e["result"]["transactionId"] != tx_id
        )
    )
    assert await gw.reset("CP01", "Soft") == ResetStatus.accepted

    txs = gw.storage.transactions(charge_point_id="CP01")
    assert {t.id for t in txs} == {tx_id, started["result"]["transactionId"]}
    assert gw.storage.transaction(tx_id).stop_reason == "Remote"
    handled = {e["method"] for e in cp.of("cs_call")}
    assert handled >= {
        "SetChargingProfile", "GetCompositeSchedule", "ClearChargingProfile", "GetConfiguration",
        "ChangeConfiguration", "TriggerMessage", "UnlockConnector", "ChangeAvailability", "ClearCache",
        "DataTransfer", "SendLocalList", "GetLocalListVersion", "ReserveNow", "CancelReservation",
        "GetDiagnostics", "UpdateFirmware", "RemoteStopTransaction", "RemoteStartTransaction", "Reset",
    }  # fmt: skip
    cp.assert_strict_ok()


@pytest.mark.asyncio
async def test_ocpp_rpc_strict_mode_is_really_on(make_gateway, node_cp) -> None:
    """Canary: a schema-breaking CALL (sent raw, past our own validation) is caught by ocpp-rpc,
    so a broken frame of ours would have failed the tests above."""
    gw, cp, _ = await _scripted(make_gateway, node_cp)
    conn = gw._connections["CP01"]
    await conn.transport.send(json.dumps([2, "canary-1", "Reset", {"type": "Sideways"}]))
    failure = await cp.wait_for(lambda e: e["event"] == "strict_failure")
    assert failure["messageId"] == "canary-1" and failure["method"] == "Reset" and failure["isCall"]
    with pytest.raises(AssertionError, match="strict validation failed"):
        cp.assert_strict_ok()
    cp.assert_strict_ok(allowed_message_ids={"canary-1"})
