"""Bearer-token access and the grid-operator limit endpoints of the REST API, under ``/api/v1``.

:func:`add_access_routes` adds to an app (e.g. :func:`noxblock.api.create_app`'s):

* ``PUT /api/v1/sites/{site}/limits``: a time-varying limit (grid operator of the site, operator);
  answers 200 with the site's whole schedule after the request;
* ``GET /api/v1/sites/{site}/limits``: the schedule (viewer, grid operator of the site, operator);
  ``?from=TIME`` keeps only the blocks still in force at or after ``TIME``;
* ``GET /api/v1/sites/{site}/limits/audit``: every request received, newest first (grid operator of
  the site, operator).

Tokens come from ``noxblock token create`` (:mod:`noxblock.auth`). 401 (with
``WWW-Authenticate: Bearer``) without a token or with a wrong or revoked one; 403 for the wrong
role or another site's grid operator; 404 for a site this service does not run; 413 for a body over
:data:`MAX_BODY_BYTES`; 422 with FastAPI's usual ``detail`` (``loc`` names the field) for a bad
body. A PUT is authenticated and authorised before its body is read, and every PUT that gets that
far is audited, a rejected one with its error. The semantics of a PUT are in :mod:`noxblock.limits`.

:func:`require` makes the same access check a FastAPI dependency for other routes.
"""

# No `from __future__ import annotations`: FastAPI resolves the routes' `Depends(...)` of local
# dependencies from the annotations at runtime.
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, Field, ValidationError

from noxblock.api import API_PREFIX
from noxblock.auth import AuditRecord, LimitStore, Role, TokenRecord, TokenStore
from noxblock.limits import LimitBlockOut, LimitRequest, LimitScheduleOut, schedule_out, to_blocks

__all__ = [
    "BEARER",
    "MAX_BODY_BYTES",
    "LimitAuditOut",
    "add_access_routes",
    "json_safe",
    "read_body",
    "require",
]

log = logging.getLogger("noxblock.api")

#: Largest PUT body accepted [bytes].
MAX_BODY_BYTES = 2 << 20

BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="a token from `noxblock token create --role ROLE [--site SITE]`",
)

_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no bearer token, or a wrong or revoked one"},
    403: {"description": "the token's role or site does not allow this"},
    404: {"description": "no such site"},
}


def require(
    tokens: TokenStore, *roles: Role, site_scoped: bool = False, action: str = "do this"
) -> Callable[..., Awaitable[TokenRecord]]:
    """A FastAPI dependency: the caller's token record, if its role is one of ``roles``.

    ``operator`` is always allowed. With ``site_scoped`` the route has a ``{site}`` path parameter
    and a grid operator's token must be for that site. 401 without a valid token, 403 otherwise.
    """
    allowed = {*roles, "operator"}

    def check(credentials: HTTPAuthorizationCredentials | None, site: str | None) -> TokenRecord:
        if credentials is None or not credentials.credentials:
            raise HTTPException(
                401,
                "missing bearer token: send 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": "Bearer"},
            )
        record = tokens.verify(credentials.credentials)
        if record is None:
            log.info("refused an invalid or revoked bearer token")
            raise HTTPException(
                401, "invalid or revoked bearer token", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        if record.role not in allowed:
            raise HTTPException(403, f"a {record.role} token may not {action}")
        if site is not None and record.role == "grid-operator" and record.site != site:
            raise HTTPException(403, f"token {record.id} is for site {record.site!r}, not {site!r}")
        return record

    if site_scoped:

        async def dependency_for_site(
            site: str, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
        ) -> TokenRecord:
            return check(credentials, site)

        return dependency_for_site

    async def dependency(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> TokenRecord:
        return check(credentials, None)

    return dependency


class LimitAuditOut(BaseModel):
    """One limit request as received, and what came of it."""

    id: int
    site: str
    token_id: str = Field(description="who sent it (`noxblock token list`)")
    role: str = Field(description="the token's role")
    received_at: datetime = Field(description="UTC")
    status: Literal["accepted", "rejected"]
    error: str | None = Field(description="why a rejected request was rejected")
    body: str = Field(description="the request body as received")
    schedule: list[LimitBlockOut] | None = Field(
        description="the site's schedule after the request, from the earlier of the time received and "
        "the request's first block start on; null if rejected"
    )
    measured_response: Any = Field(default=None, description="what the site did (added later)")


def _inline_refs(node: Any, defs: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _request_body_openapi() -> dict[str, Any]:
    """The PUT body's schema for the OpenAPI document (the route reads the body itself)."""
    schema = LimitRequest.model_json_schema()
    defs = schema.pop("$defs", {})
    example = {
        "blocks": [
            {"start": "2024-01-15T16:00:00+01:00", "end": "2024-01-15T20:00:00+01:00", "max_current_a": 80.0},
            {"start": "2024-01-15T20:00:00+01:00", "end": None, "max_power_kw": 110.4},
        ],
        "min_per_point_kw": 4.2,
    }
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline_refs(schema, defs), "example": example}},
        }
    }


async def read_body(request: Request) -> bytes:
    """The request body, or 413 once it is over :data:`MAX_BODY_BYTES`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"body of {declared} bytes is larger than {MAX_BODY_BYTES}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, f"body is larger than {MAX_BODY_BYTES} bytes")
    return bytes(body)


def _parse(raw: bytes) -> LimitRequest:
    """The request, or :class:`RequestValidationError` with FastAPI's ``detail`` entries."""
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", getattr(e, "pos", 0)),
                    "msg": f"JSON decode error: {e}",
                    "input": {},
                }
            ]
        ) from None
    try:
        return LimitRequest.model_validate(obj)
    except ValidationError as e:
        # JSON-safe: the echoed input may hold NaN or infinity, which a JSON response cannot.
        errors = [
            {**json_safe(dict(err)), "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)
        ]
        raise RequestValidationError(errors) from None


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats and exceptions as strings (for an error response)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Exception):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _error_summary(errors: Any) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in errors)


def _audit_out(a: AuditRecord, voltage_v: float) -> LimitAuditOut:
    return LimitAuditOut(
        id=a.id,
        site=a.site,
        token_id=a.token_id,
        role=a.role,
        received_at=a.received_at,
        status=a.status,
        error=a.error,
        body=a.body,
        schedule=None if a.schedule is None else schedule_out(a.site, a.schedule, voltage_v).blocks,
        measured_response=a.measured_response,
    )


def add_access_routes(
    app: FastAPI, tokens: TokenStore, limits: LimitStore, sites: Mapping[str, float]
) -> None:
    """Add the limit endpoints (module docstring) to ``app``.

    ``sites`` maps each site id this service runs to its phase-to-neutral voltage [V], which
    converts ``max_power_kw`` to a per-phase current on three phases. Endpoints are ``async`` and
    use the stores from the event loop thread (the stores lock, so threads would do too).
    """
    can_set = require(tokens, "grid-operator", site_scoped=True, action="set limits")
    can_read = require(tokens, "grid-operator", "viewer", site_scoped=True, action="read limits")
    can_audit = require(tokens, "grid-operator", site_scoped=True, action="read the limit audit")
    path = f"{API_PREFIX}/sites/{{site}}/limits"
    tags: list[str | Enum] = ["grid limits"]

    def voltage(site: str) -> float:
        if site not in sites:
            raise HTTPException(404, f"unknown site {site!r}")
        return float(sites[site])

    @app.put(
        path,
        response_model=LimitScheduleOut,
        tags=tags,
        openapi_extra=_request_body_openapi(),
        responses={
            **_RESPONSES,
            413: {"description": f"body over {MAX_BODY_BYTES} bytes"},
            422: {"description": "bad body; `detail[].loc` names the field"},
        },
    )
    async def put_limits(
        site: str, request: Request, who: Annotated[TokenRecord, Depends(can_set)]
    ) -> LimitScheduleOut:
        """Set a time-varying limit at the site's grid connection.

        Blocks are ``[start, end)`` with UTC offsets (``end`` null: open-ended), not overlapping,
        each with ``max_current_a`` (per phase [A]) or ``max_power_kw`` (on the site's voltage and
        three phases). Within the span from the earliest start to the latest end (to infinity if a
        block is open-ended) the request replaces the stored schedule; gaps between its blocks have
        no limit; outside the span nothing changes. Answers the site's whole schedule afterwards.
        """
        voltage_v = voltage(site)
        raw = await read_body(request)
        text = raw.decode("utf-8", errors="replace")
        try:
            req = _parse(raw)
        except RequestValidationError as e:
            limits.reject(site, who, body=text, error=_error_summary(e.errors()))
            raise
        schedule = limits.put(site, to_blocks(req, voltage_v), who, body=text)
        return schedule_out(site, schedule.blocks, voltage_v)

    @app.get(path, response_model=LimitScheduleOut, tags=tags, responses=_RESPONSES)
    async def get_limits(
        site: str,
        who: Annotated[TokenRecord, Depends(can_read)],
        from_: Annotated[
            AwareDatetime | None,
            Query(alias="from", description="only blocks still in force at or after this time (with offset)"),
        ] = None,
    ) -> LimitScheduleOut:
        """The site's limit schedule: blocks sorted by start; times no block covers have no limit."""
        voltage_v = voltage(site)
        return schedule_out(site, limits.schedule(site, at=from_).blocks, voltage_v)

    @app.get(f"{path}/audit", response_model=list[LimitAuditOut], tags=tags, responses=_RESPONSES)
    async def get_limit_audit(
        site: str,
        who: Annotated[TokenRecord, Depends(can_audit)],
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[LimitAuditOut]:
        """Every limit request for the site that passed authentication, newest first."""
        voltage_v = voltage(site)
        return [_audit_out(a, voltage_v) for a in limits.audit(site, limit=limit, offset=offset)]
