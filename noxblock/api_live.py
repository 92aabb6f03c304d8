"""REST endpoints of the control loop: the plan, the site's state and KPIs, drivers' needs,
commands to charge points, connectors and meter values, and the loop's Prometheus metrics.

Reads are open like the contract's ``GET /api/v1/charge-points`` (bind the API to a private
address or put it behind the city's proxy); everything that changes something needs a bearer
token of the ``operator`` role (``noxblock token create --role operator``): 401 without or with
a wrong token, 403 for another role, 422 naming the field for a bad body, 404 for an unknown
charge point, transaction or site, 409 when the point is offline or refuses.
"""

# No `from __future__ import annotations`: FastAPI resolves the routes' `Depends(...)` of local
# dependencies from the annotations at runtime.
import logging
import math
from datetime import datetime, timedelta
from enum import Enum, StrEnum
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query
from pydantic import AwareDatetime, BaseModel, Field

from noxblock.api import API_PREFIX
from noxblock.api_limits import require
from noxblock.auth import TokenRecord, TokenStore
from noxblock.live import Control, Needs
from ocpp_gateway import GatewayError

__all__ = ["add_live_routes", "loop_metrics"]

log = logging.getLogger("noxblock.api")


class IntervalOut(BaseModel):
    start: datetime
    end: datetime
    limit_a: float = Field(description="per-phase current limit the point is told [A]")


class PlanEntryOut(BaseModel):
    charge_point_id: str
    connector_id: int
    transaction_id: int | None = Field(description="the EV's transaction; null on a connector without an EV")
    phases: int | None = Field(description="phases the EV draws on; null: the point's")
    intervals: list[IntervalOut]


class PlanOut(BaseModel):
    site: str
    planned_at: datetime | None = Field(description="when the plan was made (UTC); null before the first")
    reason: str | None = Field(description="what asked for the re-plan: interval, an event, a limit change")
    policy: str | None
    status: str | None = Field(description="ok, or the fallback that planned instead and why")
    step_s: float = Field(description="control interval [s]")
    charge_points: list[PlanEntryOut]


class NeedsIn(BaseModel):
    departure: AwareDatetime | None = Field(None, description="when the EV leaves, with a UTC offset")
    energy_kwh: float | None = Field(None, gt=0, le=500, description="energy for the whole session [kWh]")


class TagProfileIn(BaseModel):
    stay_h: float | None = Field(None, gt=0, le=168, description="usual stay [h]")
    energy_kwh: float | None = Field(None, gt=0, le=500, description="usual energy per session [kWh]")


class CommandIn(BaseModel):
    connector_id: int = Field(1, ge=0, description="connector (0: the whole point, where the command allows)")
    id_tag: str | None = Field(None, max_length=20, description="remote start: the id tag to start for")
    transaction_id: int | None = Field(None, description="remote stop: the transaction")
    type: Literal["Soft", "Hard"] = Field("Soft", description="reset: Soft or Hard")
    availability: Literal["Operative", "Inoperative"] = Field("Operative", description="availability")


class Command(StrEnum):
    remote_start = "remote-start"
    remote_stop = "remote-stop"
    reset = "reset"
    unlock = "unlock"
    availability = "availability"
    clear_profiles = "clear-profiles"


def _f(x: float) -> float | None:
    return round(float(x), 3) if math.isfinite(x) else None


def loop_metrics(control: Control) -> str:
    """The control loop's figures in the Prometheus text format."""
    loop = control.loop
    rec = loop.last
    lines: list[str] = []

    def metric(name: str, kind: str, text: str, values: list[tuple[str, float | None]]) -> None:
        lines.extend((f"# HELP {name} {text}", f"# TYPE {name} {kind}"))
        for labels, v in values:
            if v is not None and math.isfinite(v):
                lines.append(f"{name}{labels} {v:g}")

    metric("noxblock_replans_total", "counter", "Re-plans made.", [("", loop.replans)])
    metric(
        "noxblock_replan_fallbacks_total",
        "counter",
        "Re-plans the fallback policy made.",
        [("", loop.fallbacks)],
    )
    metric(
        "noxblock_replan_seconds", "gauge", "Wall time of the last re-plan and dispatch.",
        [("", rec.replan_s if rec else None)],
    )  # fmt: skip
    metric(
        "noxblock_solve_seconds",
        "gauge",
        "Solver time of the last re-plan.",
        [("", rec.solve_s if rec else None)],
    )
    metric(
        "noxblock_solver_gap",
        "gauge",
        "Relative MILP gap of the last re-plan.",
        [("", rec.gap if rec else None)],
    )
    phases = ("L1", "L2", "L3")
    metric(
        "noxblock_headroom_amperes", "gauge", "Site limit minus planned load, this interval, per phase.",
        [(f'{{phase="{p}"}}', h) for p, h in zip(phases, rec.headroom_a, strict=True)] if rec else [],
    )  # fmt: skip
    metric(
        "noxblock_limit_amperes", "gauge", "Per-phase limit at the connection in force.",
        [(f'{{phase="{p}"}}', h) for p, h in zip(phases, rec.limit_a, strict=True)] if rec else [],
    )  # fmt: skip
    measured = control.live.measured_site_a(control.gateway.clock())
    metric(
        "noxblock_measured_load_amperes", "gauge", "Current the running transactions draw, per phase.",
        [(f'{{phase="{p}"}}', float(a)) for p, a in zip(phases, measured, strict=True)],
    )  # fmt: skip
    metric("noxblock_evs_planned", "gauge", "EVs in the last plan.", [("", rec.evs if rec else 0)])
    metric(
        "noxblock_inflexible_points", "gauge", "Points planned as inflexible load.",
        [("", rec.inflexible if rec else 0)],
    )  # fmt: skip
    metric(
        "noxblock_dispatch_failures_total",
        "counter",
        "Orders not taken.",
        [("", control.dispatcher.failures)],
    )
    return "\n".join(lines) + "\n"


def add_live_routes(app: FastAPI, control: Control, tokens: TokenStore) -> None:
    """Mount the endpoints of the module docstring for ``control``'s site."""
    site_id = control.site.id
    gateway = control.dispatcher.gateway
    operate = require(tokens, action="operate charge points")
    tags: list[str | Enum] = ["control"]
    if hasattr(app.state, "extra_metrics"):
        app.state.extra_metrics.append(lambda: loop_metrics(control))

    def check_site(site: str) -> None:
        if site != site_id:
            raise HTTPException(404, f"unknown site {site!r}")

    @app.get(f"{API_PREFIX}/sites/{{site}}/plan", response_model=PlanOut, tags=tags)
    async def get_plan(site: str) -> PlanOut:
        """The current schedule: per charge point and connector, the limit per interval it was
        told, from the last re-plan to the end of its horizon (after that: its failsafe)."""
        check_site(site)
        loop = control.loop
        rec = loop.last
        entries = []
        for (cp, c), order in sorted(loop.orders.items()):
            bounds = [t for t, _ in order.plan[1:]] + [order.end]
            entries.append(
                PlanEntryOut(
                    charge_point_id=cp,
                    connector_id=c,
                    transaction_id=int(order.session_id[2:]) if order.session_id else None,
                    phases=order.phases,
                    intervals=[
                        IntervalOut(start=t, end=e, limit_a=round(a, 2))
                        for (t, a), e in zip(order.plan, bounds, strict=True)
                    ],
                )
            )
        return PlanOut(
            site=site_id,
            planned_at=rec.at if rec else None,
            reason=rec.reason if rec else None,
            policy=rec.policy if rec else None,
            status=rec.status if rec else None,
            step_s=control.settings.step.total_seconds(),
            charge_points=entries,
        )

    @app.get(f"{API_PREFIX}/sites/{{site}}/status", tags=tags)
    async def get_status(site: str) -> dict[str, Any]:
        """The site now: limit in force and who set it, planned and measured load per phase,
        headroom, the last re-plan, running sessions with their estimates, points planned as
        inflexible."""
        check_site(site)
        loop = control.loop
        rec = loop.last
        now = gateway.clock()
        schedule = control.conditions.limits.schedule(site_id, now) if control.conditions.limits else None
        in_force = None
        if schedule is not None:
            for b in schedule.blocks:
                if b.start <= now and (b.end is None or b.end > now):
                    audit = None if b.audit_id is None else control.conditions.limits.audit_record(b.audit_id)
                    in_force = {
                        "start": b.start, "end": b.end, "max_current_a": b.max_current_a,
                        "min_per_point_kw": b.min_per_point_kw, "audit_id": b.audit_id,
                        "set_by": None if audit is None else {
                            "role": audit.role, "token_id": audit.token_id, "received_at": audit.received_at,
                        },
                    }  # fmt: skip
        upcoming = [
            {"start": b.start, "end": b.end, "max_current_a": b.max_current_a}
            for b in (schedule.blocks if schedule is not None else ())
            if b.start > now
        ][:10]
        return {
            "site": site_id,
            "now": now,
            "limit_source": control.conditions.last_source,
            "limit_block": in_force,
            "limit_now_a": [_f(x) for x in control.conditions.limit_now_a(now)],
            "upcoming_limits": upcoming,
            "site_max_current_a": list(
                np.broadcast_to(np.asarray(control.site.max_current_a, dtype=float), 3)
            ),
            "measured_a": [round(float(a), 2) for a in control.live.measured_site_a(now)],
            "last_replan": None
            if rec is None
            else {
                "at": rec.at,
                "reason": rec.reason,
                "policy": rec.policy,
                "status": rec.status,
                "evs": rec.evs,
                "idle": rec.idle,
                "inflexible": rec.inflexible,
                "solve_s": round(rec.solve_s, 3),
                "replan_s": round(rec.replan_s, 3),
                "gap": rec.gap,
                "limit_a": [_f(x) for x in rec.limit_a],
                "planned_load_a": [_f(x) for x in rec.load_a],
                "headroom_a": [_f(x) for x in rec.headroom_a],
                "dispatched": rec.dispatched,
                "orders": rec.orders,
            },
            "replans": loop.replans,
            "fallbacks": loop.fallbacks,
            "non_compliant": gateway.non_compliant(),
            "sessions": control.live.transactions(),
        }

    @app.get(f"{API_PREFIX}/sites/{{site}}/history", tags=tags)
    async def get_history(
        site: str, hours: Annotated[float, Query(gt=0, le=168, description="how far back [h]")] = 24.0
    ) -> dict[str, Any]:
        """Load per phase against the limit over time: one sample per re-plan and at most one per
        30 s of meter values (``measured_a``: last meter values, a compliant point counted at most
        at its limit; ``planned_a``: the last plan's first interval)."""
        check_site(site)
        since = gateway.clock() - timedelta(hours=hours)
        rows = [s for s in control.samples if s[0] >= since][-2000:]
        return {
            "site": site_id,
            "samples": [
                {
                    "time": t,
                    "measured_a": [round(float(x), 2) for x in m],
                    "limit_a": [_f(x) for x in lim],
                    "planned_a": None if p is None else [_f(x) for x in p],
                }
                for t, m, lim, p in rows
            ],
        }

    @app.get(f"{API_PREFIX}/sites/{{site}}/kpis", tags=tags)
    async def get_kpis(site: str) -> dict[str, Any]:
        """KPIs since the service started keeping them: energy delivered (finished and running
        transactions), sessions, peak measured load per phase against the limit, intervals where
        the measured load was above the limit, non-compliant points."""
        check_site(site)
        return control.kpis()

    @app.put(f"{API_PREFIX}/transactions/{{transaction_id}}/needs", status_code=204, tags=tags)
    async def put_needs(
        transaction_id: int, body: NeedsIn, who: Annotated[TokenRecord, Depends(operate)]
    ) -> None:
        """A driver's departure and energy for a running transaction (from the operator's app)."""
        if not any(t["transaction_id"] == transaction_id for t in control.live.transactions()):
            raise HTTPException(404, f"no running transaction {transaction_id}")
        control.needs.set_transaction(
            transaction_id, Needs(body.departure, body.energy_kwh), at=gateway.clock()
        )
        log.info("needs of transaction %d from token %s: %s", transaction_id, who.id, body.model_dump())
        control.loop.request("driver needs")

    @app.put(f"{API_PREFIX}/id-tags/{{id_tag}}/profile", status_code=204, tags=tags)
    async def put_tag_profile(
        id_tag: str, body: TagProfileIn, who: Annotated[TokenRecord, Depends(operate)]
    ) -> None:
        """A driver's usual stay and energy, used for every session of this id tag that has no
        needs of its own."""
        if not 0 < len(id_tag) <= 20:
            raise HTTPException(422, "id_tag: 1 to 20 characters (OCPP IdToken)")
        control.needs.set_tag_profile(id_tag, body.stay_h, body.energy_kwh, at=gateway.clock())
        log.info("profile of id tag %s from token %s", id_tag, who.id)

    @app.get(f"{API_PREFIX}/charge-points/{{cp_id}}/connectors", tags=tags)
    async def get_connectors(cp_id: str) -> list[dict[str, Any]]:
        """Each connector: status, the running transaction, what it draws, the limit it was told now."""
        known = {cp.id: cp for cp in control.site.charge_points}
        if cp_id not in known:
            raise HTTPException(404, f"unknown charge point {cp_id!r}")
        now = gateway.clock()
        status = control.live.connector_status()
        sessions = {(t["charge_point_id"], t["connector_id"]): t for t in control.live.transactions()}
        return [
            {
                "connector_id": c,
                "status": status.get((cp_id, c)),
                "transaction": sessions.get((cp_id, c)),
                "limit_a": control.dispatcher.pilot_a(cp_id, c, now),
            }
            for c in range(1, known[cp_id].connectors + 1)
        ]

    @app.get(f"{API_PREFIX}/charge-points/{{cp_id}}/meter-values", tags=tags)
    async def get_meter_values(
        cp_id: str,
        transaction_id: Annotated[int | None, Query(description="only this transaction")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> list[dict[str, Any]]:
        """Sampled values of a point, oldest first."""
        rows = gateway.storage.meter_values(cp_id, transaction_id=transaction_id, limit=limit)
        return [
            {
                "connector_id": r.connector_id,
                "transaction_id": r.transaction_id,
                "timestamp": r.timestamp,
                "measurand": r.measurand,
                "phase": r.phase,
                "unit": r.unit,
                "value": r.value,
            }
            for r in rows
        ]

    @app.post(f"{API_PREFIX}/charge-points/{{cp_id}}/commands/{{command}}", tags=tags)
    async def post_command(
        cp_id: str, command: Command, body: CommandIn, who: Annotated[TokenRecord, Depends(operate)]
    ) -> dict[str, Any]:
        """Send a command to a charge point; answers the point's status."""
        if cp_id not in {cp.id for cp in control.site.charge_points}:
            raise HTTPException(404, f"unknown charge point {cp_id!r}")
        if not gateway.is_connected(cp_id):
            raise HTTPException(409, f"charge point {cp_id!r} is not connected")
        log.info("command %s to %s from token %s", command.value, cp_id, who.id)
        try:
            if command is Command.remote_start:
                if not body.id_tag:
                    raise HTTPException(422, "id_tag: required for remote-start")
                status = await gateway.remote_start_transaction(
                    cp_id, body.id_tag, connector_id=body.connector_id or None
                )
            elif command is Command.remote_stop:
                if body.transaction_id is None:
                    raise HTTPException(422, "transaction_id: required for remote-stop")
                status = await gateway.remote_stop_transaction(cp_id, body.transaction_id)
            elif command is Command.reset:
                status = await gateway.reset(cp_id, body.type)
            elif command is Command.unlock:
                status = await gateway.unlock_connector(cp_id, body.connector_id)
            elif command is Command.availability:
                status = await gateway.change_availability(cp_id, body.connector_id, body.availability)
            else:
                # Clears our plans on the connector; the failsafe on connector 0 stays unless
                # connector 0 is named, and is then installed again at once.
                status = await gateway.clear_charging_profile(cp_id, connector_id=body.connector_id)
                if body.connector_id == 0 and gateway.failsafe_limit_a(cp_id) is not None:
                    await gateway.install_failsafe(cp_id)
                control.dispatcher.forget(cp_id)
                control.loop.request("profiles cleared")
        except GatewayError as e:
            raise HTTPException(409, f"{cp_id}: {e}") from e
        return {
            "charge_point_id": cp_id,
            "command": command.value,
            "status": getattr(status, "value", str(status)),
        }
