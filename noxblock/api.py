"""The REST API of ``noxblock serve`` (read-only for now), under ``/api/v1``.

``create_app(gateway)`` serves live state (``connected`` from the gateway's connections);
``create_app(storage)`` serves what a store holds (everything ``connected: false``), e.g. for a
second process reading the same SQLite file. pydantic lives here, at the HTTP boundary only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import FastAPI, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from ocpp_gateway import Gateway, Storage
from ocpp_gateway.storage import TransactionRecord

__all__ = ["API_PREFIX", "METRICS", "create_app", "prometheus_text"]

API_PREFIX = "/api/v1"


class ConnectorOut(BaseModel):
    connector_id: int = Field(description="0 is the whole charge point")
    status: str = Field(description="OCPP 1.6 ChargePointStatus")
    error_code: str
    info: str | None = None
    timestamp: datetime = Field(description="when the point reported this status (UTC)")


class ChargePointOut(BaseModel):
    id: str
    connected: bool
    last_seen: datetime | None = Field(description="last message or connection (UTC)")
    registration_status: str | None = Field(description="last BootNotification answer")
    vendor: str | None = None
    model: str | None = None
    firmware_version: str | None = None
    compliant: bool | None = Field(
        description="false once the point was caught ignoring its charging limits; null if never checked"
    )
    connectors: list[ConnectorOut]


class TransactionOut(BaseModel):
    id: int
    charge_point_id: str
    connector_id: int | None
    id_tag: str | None
    start_time: datetime | None = Field(description="UTC; null for a stop replayed without its start")
    stop_time: datetime | None = Field(description="UTC; null while the transaction runs")
    meter_start_wh: int | None = Field(description="meter register at start [Wh]")
    meter_stop_wh: int | None = Field(description="meter register at stop [Wh]")
    stop_reason: str | None = None
    orphan: bool = Field(description="a stop for a transaction never started here (offline replay)")


def _tx_out(t: TransactionRecord) -> TransactionOut:
    return TransactionOut(
        id=t.id,
        charge_point_id=t.charge_point_id,
        connector_id=t.connector_id,
        id_tag=t.id_tag if t.id_tag is not None else t.stop_id_tag,
        start_time=t.start_time,
        stop_time=t.stop_time,
        meter_start_wh=t.meter_start_wh,
        meter_stop_wh=t.meter_stop_wh,
        stop_reason=t.stop_reason,
        orphan=t.orphan,
    )


#: (name, type, help) of every metric :func:`prometheus_text` writes.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("noxblock_charge_points_connected", "gauge", "Charge points with a live OCPP connection."),
    ("noxblock_charge_points_known", "gauge", "Charge points registered in the site file."),
    ("noxblock_charge_points_non_compliant", "gauge", "Charge points caught ignoring their limits."),
    ("noxblock_ocpp_messages_total", "counter", "OCPP messages received from charge points."),
    ("noxblock_ocpp_bad_frames_total", "counter", "Frames answered with a CALLERROR or dropped."),
    ("noxblock_ocpp_throttled_total", "counter", "Messages delayed by the per-point rate limit."),
)


def prometheus_text(gateway: Gateway) -> str:
    """The gateway's figures in the Prometheus text format (version 0.0.4)."""
    values = (
        len(gateway.connected_ids()),
        len(gateway.config.charge_points),
        len(gateway.non_compliant()),
        gateway.stats["messages"],
        gateway.stats["bad_frames"],
        gateway.stats["throttled"],
    )
    lines = []
    for (name, kind, text), value in zip(METRICS, values, strict=True):
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\n".join(lines) + "\n"


def create_app(source: Gateway | Storage, *, title: str = "noxblock") -> FastAPI:
    """The FastAPI application reading from a running gateway or from a store.

    Endpoints are ``async`` on purpose: they run on the event loop thread, the only thread that
    touches the gateway's SQLite connection.
    """
    gateway = source if isinstance(source, Gateway) else None
    storage: Storage = source.storage if isinstance(source, Gateway) else source
    app = FastAPI(
        title=f"{title} API",
        version="1",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )

    if gateway is not None:
        #: More metric text (the control loop's), appended by those who mount it.
        app.state.extra_metrics = []

        @app.get("/metrics", response_class=PlainTextResponse, tags=["metrics"])
        async def metrics() -> str:
            """Prometheus text exposition of the central system's state, and of the control
            loop's when it runs (re-plan seconds, solver gap, headroom per phase)."""
            return prometheus_text(gateway) + "".join(f() for f in app.state.extra_metrics)

    @app.get(f"{API_PREFIX}/charge-points", response_model=list[ChargePointOut], tags=["charge points"])
    async def list_charge_points() -> list[ChargePointOut]:
        """Every charge point ever seen or registered, with connection state and connector status."""
        by_cp: dict[str, list[ConnectorOut]] = {}
        for c in storage.connectors():
            by_cp.setdefault(c.charge_point_id, []).append(
                ConnectorOut(
                    connector_id=c.connector_id, status=c.status, error_code=c.error_code, info=c.info,
                    timestamp=c.timestamp,
                )
            )  # fmt: skip
        records = {r.id: r for r in storage.charge_points()}
        ids = sorted(set(records) | (set(gateway.connected_ids()) if gateway else set()))
        out = []
        for cp_id in ids:
            r = records.get(cp_id)
            out.append(
                ChargePointOut(
                    id=cp_id,
                    connected=gateway.is_connected(cp_id) if gateway else False,
                    last_seen=gateway.last_seen(cp_id) if gateway else (r.last_seen if r else None),
                    registration_status=r.registration_status if r else None,
                    vendor=r.vendor if r else None,
                    model=r.model if r else None,
                    firmware_version=r.firmware_version if r else None,
                    compliant=r.compliant if r else None,
                    connectors=by_cp.get(cp_id, []),
                )
            )
        return out

    @app.get(f"{API_PREFIX}/transactions", response_model=list[TransactionOut], tags=["transactions"])
    async def list_transactions(
        charge_point_id: Annotated[str | None, Query(description="only this charge point")] = None,
        active: Annotated[bool | None, Query(description="true: running only; false: finished only")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[TransactionOut]:
        """Transactions, newest first."""
        rows = storage.transactions(
            charge_point_id=charge_point_id, active=active, limit=limit, offset=offset
        )
        return [_tx_out(t) for t in rows]

    return app
