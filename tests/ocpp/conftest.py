"""Fixtures for the OCPP gateway tests: a gateway on 127.0.0.1 port 0 and raw websocket charge points."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from ocpp_helpers import FakeChargePoint, gateway_config
from websockets.asyncio.client import connect

from ocpp_gateway import Gateway, GatewayConfig, SqliteStorage

GatewayFactory = Callable[..., Awaitable[Gateway]]
ConnectFactory = Callable[..., Awaitable[FakeChargePoint]]


@pytest_asyncio.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    started: list[Gateway] = []

    async def factory(
        *, db: str = "gateway.sqlite", config: GatewayConfig | None = None, **overrides: Any
    ) -> Gateway:
        gw = Gateway(config or gateway_config(**overrides), SqliteStorage(tmp_path / db))
        await gw.start("127.0.0.1", 0)
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        await gw.stop()
        gw.storage.close()


@pytest_asyncio.fixture
async def gateway(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway()


@pytest_asyncio.fixture
async def make_cp(gateway: Gateway) -> AsyncIterator[ConnectFactory]:
    clients: list[FakeChargePoint] = []

    async def factory(
        cp_id: str = "CP01",
        *,
        gw: Gateway | None = None,
        headers: dict[str, str] | None = None,
        subprotocols: list[str] | None = None,
        wait: bool = True,
        **kwargs: Any,
    ) -> FakeChargePoint:
        g = gw or gateway
        connected = asyncio.ensure_future(
            g.wait_for(lambda e: e.kind == "connected" and e.charge_point_id == cp_id)
        )
        ws = await connect(
            g.url + cp_id,
            subprotocols=subprotocols or ["ocpp1.6"],  # type: ignore[list-item]
            additional_headers=headers,
            open_timeout=5,
            **kwargs,
        )
        if wait:
            await connected
        else:
            connected.cancel()
        client = FakeChargePoint(ws, cp_id)
        clients.append(client)
        return client

    yield factory
    for c in clients:
        await c.close()


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=noxblock test CA")  # fmt: skip
    for name, cn, ext in (("server", "localhost", "subjectAltName=IP:127.0.0.1"), ("client", "CP01", None)):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={cn}",
        )
        (d / f"{name}.ext").write_text(ext or "basicConstraints=CA:FALSE")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")  # fmt: skip
    return d
