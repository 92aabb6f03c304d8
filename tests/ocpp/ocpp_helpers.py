"""Helpers for the OCPP gateway tests: raw websocket charge points and a test configuration.

``FakeChargePoint`` speaks OCPP-J with raw frames (so tests can also send broken ones). Commands
from the central system are answered by ``handlers`` (action -> payload -> answer); without a
handler they queue up in ``cs_calls`` for the test to answer by hand.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.client import ClientConnection

from ocpp_gateway import GatewayConfig, KnownChargePoint

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
