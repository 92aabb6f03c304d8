"""REST read endpoints (TestClient and a real uvicorn on port 0) and ``noxblock serve`` as a process."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from ocpp_helpers import T0, basic_auth, gateway_config
from websockets.asyncio.client import connect

from noxblock import serve
from noxblock.api import create_app
from noxblock.auth import open_stores
from noxblock.cli import main as noxblock_main
from noxblock.serve import DB_NAME, add_arguments, build_config, start_services
from ocpp_gateway import GatewayConfig, SqliteStorage
from ocpp_gateway.certificates import make_ca

SITE = """
[site]
id = "test-street"
voltage_v = 230.0
max_current_a = 63.0

[[charge_points]]
id = "LP01"
phases = 3
max_current_a = 16.0
password = "lamp-key-01-xyz"

[[charge_points]]
id = "LP02"
phases = 1
max_current_a = 16.0
"""


def test_rest_from_a_store_with_testclient(tmp_path: Path):
    storage = SqliteStorage(tmp_path / "api.sqlite", autocommit=True)
    storage.record_boot(
        "CP01",
        vendor="V",
        model="M",
        serial_number=None,
        firmware_version="1.2",
        registration_status="Accepted",
        at=T0,
    )
    tx = storage.create_transaction("CP01", 1, "TAG", T0, 100, None)
    storage.close_transaction(
        "CP01", tx, stop_time=T0 + timedelta(hours=2), meter_stop_wh=9100, reason="Local", id_tag=None
    )
    client = TestClient(create_app(storage))
    cps = client.get("/api/v1/charge-points").json()
    assert cps[0]["id"] == "CP01" and cps[0]["connected"] is False and cps[0]["firmware_version"] == "1.2"
    (t,) = client.get("/api/v1/transactions").json()
    assert (t["id"], t["charge_point_id"], t["connector_id"], t["id_tag"]) == (tx, "CP01", 1, "TAG")
    assert (t["meter_start_wh"], t["meter_stop_wh"]) == (100, 9100)
    assert t["start_time"].startswith("2024-01-15T17:00:00") and t["stop_time"].startswith(
        "2024-01-15T19:00:00"
    )
    assert client.get("/api/v1/transactions", params={"active": True}).json() == []
    spec = client.get("/api/v1/openapi.json").json()
    assert {"/api/v1/charge-points", "/api/v1/transactions"} <= set(spec["paths"])
    storage.close()


@pytest.mark.asyncio
async def test_rest_over_real_uvicorn_with_live_gateway(tmp_path: Path):
    services = await start_services(gateway_config(), tmp_path, port=0, api_port=0)
    try:
        gw = services.gateway
        connected = asyncio.ensure_future(gw.wait_for(lambda e: e.kind == "connected"))
        async with connect(gw.url + "CP01", subprotocols=["ocpp1.6"]) as ws:
            await connected
            await ws.send(
                json.dumps(
                    [
                        2,
                        "1",
                        "StatusNotification",
                        {"connectorId": 1, "errorCode": "NoError", "status": "Charging"},
                    ]
                )
            )
            await ws.recv()
            await ws.send(
                json.dumps(
                    [
                        2,
                        "2",
                        "StartTransaction",
                        {
                            "connectorId": 1,
                            "idTag": "T",
                            "meterStart": 5,
                            "timestamp": "2024-01-15T17:00:00Z",
                        },
                    ]
                )
            )
            await ws.recv()
            async with httpx.AsyncClient(base_url=services.api_url) as http:
                (cp,) = (await http.get("/charge-points")).json()
                assert cp["id"] == "CP01" and cp["connected"] is True and cp["last_seen"] is not None
                assert cp["connectors"] == [
                    {
                        "connector_id": 1,
                        "status": "Charging",
                        "error_code": "NoError",
                        "info": None,
                        "timestamp": cp["connectors"][0]["timestamp"],
                    }
                ]
                (tx,) = (await http.get("/transactions", params={"active": True})).json()
                assert tx["meter_start_wh"] == 5 and tx["stop_time"] is None
                assert (await http.get("/openapi.json")).status_code == 200
    finally:
        await services.stop()


def serve_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    site = tmp_path / "site.toml"
    site.write_text(SITE)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--site", str(site), "--data-dir", str(tmp_path / "var"), *extra])


def test_site_file_makes_known_points_with_hashed_passwords(tmp_path: Path):
    config = build_config(serve_args(tmp_path))
    lp01, lp02 = config.known("LP01"), config.known("LP02")
    assert lp01.password_hash.startswith("scrypt$") and "lamp-key" not in lp01.password_hash
    assert lp02.password_hash is None and lp02.phases == 1
    assert config.allow_profile_0  # LP02 has no password
    assert config.known("LP99") is None


def test_each_point_gets_its_share_of_the_site_limit_as_failsafe(tmp_path: Path):
    # 20 A per phase: LP01 (3-phase) and LP02 (1-phase on L1) share L1, 10 A each.
    args = serve_args(tmp_path)
    site = Path(args.site)
    site.write_text(site.read_text().replace("max_current_a = 63.0", "max_current_a = 20.0"))
    config = build_config(args)
    assert config.known("LP01").failsafe_current_a == 10.0
    assert config.known("LP02").failsafe_current_a == 10.0
    # 11 A: 5.5 A each is under the 6 A minimum, so no charging without the central system.
    site.write_text(site.read_text().replace("max_current_a = 20.0", "max_current_a = 11.0"))
    config = build_config(args)
    assert config.known("LP01").failsafe_current_a == 0.0 and config.known("LP02").failsafe_current_a == 0.0


@pytest.mark.asyncio
async def test_grid_operator_sets_a_limit_on_the_served_api(tmp_path: Path):
    tokens, limits = open_stores(tmp_path)
    _, token = tokens.create("grid-operator", "test-street")
    _, other = tokens.create("grid-operator", "elsewhere")
    tokens.close()
    limits.close()
    services = await start_services(gateway_config(), tmp_path, port=0, api_port=0, site_id="test-street")
    try:
        body = {"blocks": [{"start": "2024-01-15T16:00:00+01:00", "end": None, "max_current_a": 40.0}]}
        url = "/sites/test-street/limits"
        async with httpx.AsyncClient(base_url=services.api_url) as http:
            assert (await http.put(url, json=body)).status_code == 401
            bad = await http.put(url, json=body, headers={"Authorization": f"Bearer {other}"})
            assert bad.status_code == 403
            ok = await http.put(url, json=body, headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200, ok.text
            got = await http.get(url, headers={"Authorization": f"Bearer {token}"})
            (block,) = got.json()["blocks"]
            assert block["max_current_a"] == 40.0 and block["end"] is None
    finally:
        await services.stop()


@pytest.mark.asyncio
async def test_oscp_capacity_forecast_becomes_a_limit_on_the_served_api(tmp_path: Path):
    services = await start_services(
        gateway_config(), tmp_path, port=0, api_port=0, site_id="test-street", oscp_token="dso-secret-1"
    )
    base = f"http://{services.api_host}:{services.api_port}/oscp/fp/2.0"
    forecast = {
        "group_id": "test-street",
        "type": "CONSUMPTION",
        "forecasted_blocks": [
            {"capacity": 30.0, "phase": "ALL", "unit": "A",
             "start_time": "2024-01-15T16:00:00+00:00", "end_time": "2024-01-15T20:00:00+00:00"}
        ],
    }  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            url = "/update_group_capacity_forecast"
            assert (await http.post(url, json=forecast)).status_code == 401
            ok = await http.post(url, json=forecast, headers={"Authorization": "Token dso-secret-1"})
            assert ok.status_code == 204, ok.text
    finally:
        await services.stop()
    tokens, limits = open_stores(tmp_path)
    try:
        (block,) = limits.schedule("test-street").blocks
        assert block.max_current_a == 30.0
    finally:
        tokens.close()
        limits.close()


@pytest.mark.asyncio
async def test_prometheus_metrics_count_what_happened(tmp_path: Path):
    services = await start_services(gateway_config(), tmp_path, port=0, api_port=0)
    base = f"http://{services.api_host}:{services.api_port}"
    try:
        gw = services.gateway
        connected = asyncio.ensure_future(gw.wait_for(lambda e: e.kind == "connected"))
        async with connect(gw.url + "CP01", subprotocols=["ocpp1.6"]) as ws:
            await connected
            await ws.send(json.dumps([2, "1", "Heartbeat", {}]))
            await ws.recv()
            await ws.send("not json")
            await ws.recv()
            async with httpx.AsyncClient(base_url=base) as http:
                got = await http.get("/metrics")
        assert got.status_code == 200 and got.headers["content-type"].startswith("text/plain")
        values = {
            line.split()[0]: float(line.split()[1])
            for line in got.text.splitlines()
            if line and not line.startswith("#")
        }
        assert values["noxblock_charge_points_connected"] == 1.0
        assert values["noxblock_charge_points_known"] == 5.0
        assert values["noxblock_ocpp_messages_total"] >= 1.0
        assert values["noxblock_ocpp_bad_frames_total"] == 1.0
        assert "# TYPE noxblock_ocpp_messages_total counter" in got.text
    finally:
        await services.stop()


@pytest.mark.asyncio
async def test_noxblock_serve_process_shuts_down_cleanly_and_keeps_its_data(tmp_path: Path):
    args = serve_args(tmp_path)
    code = (
        "import argparse, sys; from noxblock.serve import add_arguments, run; "
        "p = argparse.ArgumentParser(); add_arguments(p); sys.exit(run(p.parse_args(sys.argv[1:])))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "--site",
        args.site,
        "--data-dir",
        args.data_dir,
        "--port",
        "0",
        "--api-port",
        "0",
        "--failsafe-current-a",
        "-1",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with asyncio.timeout(60):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("noxblock serve: OCPP ws://"), line
        ocpp_url = line.split()[3].removesuffix("{id}")
        api_url = line.split()[5]
        async with connect(
            ocpp_url + "LP01",
            subprotocols=["ocpp1.6"],
            additional_headers=basic_auth("LP01", "lamp-key-01-xyz"),
        ) as ws:
            await ws.send(
                json.dumps([2, "1", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}])
            )
            assert json.loads(await ws.recv())[2]["status"] == "Accepted"
            async with httpx.AsyncClient(base_url=api_url) as http:
                cps = {c["id"]: c for c in (await http.get("/charge-points")).json()}
                assert cps["LP01"]["connected"] is True and cps["LP01"]["registration_status"] == "Accepted"
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    storage = SqliteStorage(Path(args.data_dir) / DB_NAME)
    assert storage.charge_point("LP01").registration_status == "Accepted"
    assert "LP01" in storage.password_hashes()
    storage.close()


def test_serve_bad_site_file_exits_2(tmp_path: Path, capsys):
    from noxblock.serve import run

    args = serve_args(tmp_path)
    Path(args.site).write_text("[site]\nid = 3\n")
    assert run(args) == 2
    assert "site.toml" in capsys.readouterr().err


LIMITS = ("lockout_failures", "lockout_s", "ip_lockout_failures", "handshake_rate_per_s", "handshake_burst")


def test_serve_ca_and_handshake_limit_options_reach_the_config(tmp_path: Path):
    cert, key = make_ca()
    (tmp_path / "ca.pem").write_text(cert)
    (tmp_path / "ca.key").write_text(key)
    ca = ["--ca-cert", str(tmp_path / "ca.pem"), "--ca-key", str(tmp_path / "ca.key")]
    config = build_config(
        serve_args(
            tmp_path, *ca, "--certificate-lifetime-days", "30", "--lockout-failures", "3",
            "--lockout-s", "7200", "--ip-lockout-failures", "0", "--handshake-rate-per-s", "0",
            "--handshake-burst", "50",
        )
    )  # fmt: skip
    assert (config.ca_cert_path, config.ca_key_path) == (ca[1], ca[3])
    assert config.certificate_lifetime_days == 30
    assert [getattr(config, f) for f in LIMITS] == [3, 7200.0, 0, 0.0, 50]
    assert config.lockout_max_s == 7200.0  # a first lockout longer than the cap raises the cap

    defaults, plain = GatewayConfig(), build_config(serve_args(tmp_path))
    assert (plain.ca_cert_path, plain.ca_key_path) == (None, None)
    for field in (*LIMITS, "lockout_max_s", "certificate_lifetime_days"):
        assert getattr(plain, field) == getattr(defaults, field), field


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--lockout-failures", "-1"], "--lockout-failures"),
        (["--lockout-failures", "five"], "--lockout-failures"),  # argparse's own check
        (["--lockout-s", "0"], "--lockout-s"),
        (["--ip-lockout-failures", "-3"], "--ip-lockout-failures"),
        (["--handshake-rate-per-s", "-5"], "--handshake-rate-per-s"),
        (["--handshake-rate-per-s", "nan"], "--handshake-rate-per-s"),
        (["--handshake-burst", "0"], "--handshake-burst"),
        (["--certificate-lifetime-days", "0"], "--certificate-lifetime-days"),
        (["--ca-cert", "ca.pem"], "--ca-key"),  # one without the other
        (["--ca-cert", "missing.pem", "--ca-key", "missing.key"], "--ca-cert"),
    ],
)
def test_serve_bad_option_exits_2_naming_it(tmp_path: Path, capsys, monkeypatch, extra, flag):
    async def must_not_start(*_: object) -> None:
        raise AssertionError("serve started with a bad option")

    monkeypatch.setattr(serve, "_serve", must_not_start)
    args = serve_args(tmp_path)
    argv = ["serve", "--site", args.site, "--data-dir", args.data_dir, "--port", "0", "--api-port", "0"]
    try:
        code = noxblock_main([*argv, *extra])
    except SystemExit as e:  # argparse refuses what is not even a number
        code = e.code
    assert code == 2
    assert flag in capsys.readouterr().err


def test_serve_unusable_ca_key_exits_2_naming_the_ca(tmp_path: Path, capsys):
    cert, _ = make_ca()
    _, other_key = make_ca("another CA")
    (tmp_path / "ca.pem").write_text(cert)
    (tmp_path / "ca.key").write_text(other_key)
    args = serve_args(tmp_path, "--ca-cert", str(tmp_path / "ca.pem"), "--ca-key", str(tmp_path / "ca.key"))
    assert serve.run(args) == 2
    assert "--ca-cert" in capsys.readouterr().err
