"""Security profiles, handshake refusals, robustness of the connection layer, restart persistence."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from datetime import timedelta
from pathlib import Path

import pytest
from ocpp_helpers import T0, basic_auth, gateway_config, iso
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ocpp_gateway import (
    ConnectionLost,
    Gateway,
    GatewayConfig,
    KnownChargePoint,
    SqliteStorage,
    hash_password,
)
from ocpp_gateway.storage import MIGRATIONS

pytestmark = pytest.mark.asyncio

SECRET = "s3cret-Lamppost-Key-0001"


def secured_config(**overrides) -> GatewayConfig:
    points = (
        KnownChargePoint("CP01", password_hash=hash_password(SECRET, log2_n=10)),
        KnownChargePoint("CP02"),  # no password
    )
    return gateway_config(**{"charge_points": points, "allow_profile_0": False, **overrides})


async def expect_refused(url: str, status: int, **kwargs) -> None:
    with pytest.raises(InvalidStatus) as e:
        async with connect(url, open_timeout=5, **kwargs):
            pass
    assert e.value.response.status_code == status


async def test_basic_auth_accepts_the_right_password(make_gateway, make_cp):
    gw = await make_gateway(config=secured_config())
    cp = await make_cp("CP01", gw=gw, headers=basic_auth("CP01", SECRET))
    assert (await cp.boot())["status"] == "Accepted"
    await cp.close()
    # Reconnect: verified from the in-process cache this time.
    cp = await make_cp("CP01", gw=gw, headers=basic_auth("CP01", SECRET))
    assert (await cp.call("Heartbeat", {}))["currentTime"]


@pytest.mark.parametrize(
    ("cp_id", "headers", "reason"),
    [
        ("CP01", None, "missing"),
        ("CP01", basic_auth("CP01", "wrong-password"), "wrong password"),
        ("CP01", basic_auth("CP02", SECRET), "user is not the charge point id"),
        ("CP01", {"Authorization": "Basic ###"}, "malformed"),
        ("CP02", None, "profile 0 not allowed"),
        ("UNKNOWN", basic_auth("UNKNOWN", SECRET), "profile 0 not allowed"),
    ],
)
async def test_bad_credentials_get_401_security_event_and_no_secret_in_logs(
    make_gateway, caplog, cp_id, headers, reason
):
    caplog.set_level(logging.DEBUG)  # websockets logs request headers at DEBUG: they must be redacted
    gw = await make_gateway(config=secured_config())
    await expect_refused(gw.url + cp_id, 401, subprotocols=["ocpp1.6"], additional_headers=headers)
    events = gw.storage.security_events(cp_id)
    assert events and events[-1].source == "gateway" and reason in events[-1].tech_info
    # Everything the server side logged (the test's own client logs its headers; that is not ours).
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client"))
    assert "authentication refused" in text
    assert SECRET not in text and "wrong-password" not in text
    if headers:
        assert headers["Authorization"].split(" ", 1)[1] not in text


async def test_profile_0_allowed_only_by_config_and_warned(make_gateway, make_cp, caplog):
    gw = await make_gateway(config=secured_config(allow_profile_0=True))
    caplog.set_level(logging.WARNING)
    cp = await make_cp("CP02", gw=gw)
    assert (await cp.boot())["status"] == "Accepted"
    assert "security profile 0" in caplog.text
    # A point that has a password still must use it.
    await expect_refused(gw.url + "CP01", 401, subprotocols=["ocpp1.6"])


async def test_set_password_by_command(make_gateway, make_cp):
    gw = await make_gateway(config=secured_config())
    await gw.set_password("CP02", "new-key-for-cp02")
    assert "new-key-for-cp02" not in json.dumps(gw.storage.password_hashes())
    cp = await make_cp("CP02", gw=gw, headers=basic_auth("CP02", "new-key-for-cp02"))
    assert (await cp.boot())["status"] == "Accepted"


async def test_subprotocol_is_required(gateway):
    await expect_refused(gateway.url + "CP01", 400)
    await expect_refused(gateway.url + "CP01", 400, subprotocols=["ocpp2.0.1"])
    async with connect(gateway.url + "CP01", subprotocols=["ocpp2.0.1", "ocpp1.6"]) as ws:
        assert ws.subprotocol == "ocpp1.6"


async def test_unknown_path_is_404(gateway):
    base = gateway.url.removesuffix("/ocpp/")
    await expect_refused(base + "/other/CP01", 404, subprotocols=["ocpp1.6"])
    await expect_refused(gateway.url + "bad%2Fid", 404, subprotocols=["ocpp1.6"])


async def test_oversized_frame_closes_with_1009_and_server_lives_on(make_gateway, make_cp):
    gw = await make_gateway(max_frame_bytes=1024)
    cp = await make_cp(gw=gw)
    await cp.send_text(json.dumps([2, "1", "DataTransfer", {"vendorId": "x", "data": "y" * 4096}]))
    await asyncio.wait_for(cp.closed.wait(), 5)
    assert cp.ws.close_code == 1009
    other = await make_cp("CP02", gw=gw)
    assert (await other.boot())["status"] == "Accepted"


async def test_new_connection_replaces_old_and_fails_its_pending_call(gateway, make_cp):
    old = await make_cp("CP01")
    pending = asyncio.create_task(gateway.reset("CP01"))
    await old.next_cs_call()
    new = await make_cp("CP01")
    with pytest.raises(ConnectionLost):
        await pending
    await asyncio.wait_for(old.closed.wait(), 5)
    assert (await new.boot())["status"] == "Accepted"
    assert gateway.connected_ids() == ["CP01"]
    # The old socket's close must not unregister the new connection.
    assert gateway.is_connected("CP01")


async def test_flooding_point_is_rate_limited_but_answered(make_gateway, make_cp):
    gw = await make_gateway(rate_limit_per_s=2000.0, rate_limit_burst=5)
    cp = await make_cp(gw=gw)
    for i in range(60):
        await cp.send_text(json.dumps([2, f"h{i}", "Heartbeat", {}]))
    replies = [await cp.reply() for _ in range(60)]
    assert [r[1] for r in replies] == [f"h{i}" for i in range(60)]
    assert gw.stats["throttled"] > 0


async def test_garbage_never_kills_the_connection(gateway, make_cp):
    cp = await make_cp()
    for junk in (b"\xff\xfe\x00", "[", "{}", "[]", "[2]", '[2,"x","Heartbeat",{},1]', "null", "[9,1]"):
        await cp.send_text(junk)
    codes = []
    for _ in range(8):  # even "[9,1]", without a unique id string, gets a reply (id "-1")
        codes.append((await cp.reply())[2])
    assert "FormationViolation" in codes
    assert (await cp.call("Heartbeat", {}))["currentTime"]


async def test_restart_loses_nothing(tmp_path: Path, make_cp):
    db = tmp_path / "restart.sqlite"
    config = gateway_config(failsafe_current_a=None)
    gw = Gateway(config, SqliteStorage(db))
    await gw.start()
    cp = await make_cp("CP01", gw=gw)
    await cp.boot()
    await cp.status(1, "Charging")
    tx = (await cp.start(1, "TAG", 100))["transactionId"]
    await cp.call(
        "MeterValues",
        {
            "connectorId": 1,
            "transactionId": tx,
            "meterValue": [{"timestamp": iso(T0), "sampledValue": [{"value": "5"}]}],
        },
    )
    await cp.call("SecurityEventNotification", {"type": "TamperDetectionActivated", "timestamp": iso(T0)})
    await cp.close()
    await gw.stop()
    gw.storage.close()

    reopened = SqliteStorage(db)
    assert reopened.schema_version == len(MIGRATIONS)
    assert reopened.charge_point("CP01").registration_status == "Accepted"
    assert reopened.charge_point("CP01").last_seen is not None
    assert reopened.connectors("CP01")[0].status == "Charging"
    assert reopened.transaction(tx).meter_start_wh == 100 and reopened.transaction(tx).stop_time is None
    assert reopened.meter_values("CP01", transaction_id=tx)[0].value == "5"
    assert reopened.security_events("CP01")[0].type == "TamperDetectionActivated"

    gw2 = Gateway(config, reopened)
    await gw2.start()
    cp2 = await make_cp("CP01", gw=gw2)
    await cp2.stop(
        tx, 900, at=T0 + timedelta(hours=1)
    )  # the stop after the restart closes the old transaction
    assert reopened.transaction(tx).meter_stop_wh == 900
    assert (await cp2.start(2, "TAG", 0))["transactionId"] > tx  # ids are never reused
    await cp2.close()
    await gw2.stop()
    reopened.close()


# --- TLS (profile 2) and mutual TLS (profile 3) -------------------------------------------------


def server_context(pki: Path, *, mutual: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    if mutual:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki / "ca.pem")
    return ctx


def client_context(pki: Path, *, cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert:
        ctx.load_cert_chain(pki / "client.pem", pki / "client.key")
    return ctx


async def test_tls_with_basic_auth_profile_2(make_gateway, make_cp, pki):
    gw = await make_gateway(config=secured_config(ssl_context=server_context(pki, mutual=False)))
    assert gw.url.startswith("wss://")
    cp = await make_cp("CP01", gw=gw, headers=basic_auth("CP01", SECRET), ssl=client_context(pki, cert=False))
    assert (await cp.boot())["status"] == "Accepted"
    await expect_refused(gw.url + "CP01", 401, subprotocols=["ocpp1.6"], ssl=client_context(pki, cert=False))


async def test_mutual_tls_profile_3(make_gateway, make_cp, pki):
    gw = await make_gateway(config=secured_config(ssl_context=server_context(pki, mutual=True)))
    cp = await make_cp("CP01", gw=gw, ssl=client_context(pki, cert=True))  # no password needed
    assert (await cp.boot())["status"] == "Accepted"
    # The certificate says CP01: it does not open CP02's door.
    await expect_refused(gw.url + "CP02", 401, subprotocols=["ocpp1.6"], ssl=client_context(pki, cert=True))
    with pytest.raises((ssl.SSLError, ConnectionClosed, OSError, InvalidHandshake)):
        async with connect(
            gw.url + "CP01", subprotocols=["ocpp1.6"], ssl=client_context(pki, cert=False)
        ) as ws:
            await ws.recv()
