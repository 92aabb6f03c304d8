"""OSCP 2.0 (Open Smart Charging Protocol) endpoints of the Flexibility Provider (FP) side.

The grid operator (DSO, the Capacity Provider, CP) posts to ``/oscp/fp/2.0/``:

* ``register`` (``{token, version_url: [{version, base_url}]}``): the token the FP uses towards
  the CP and where the CP listens; kept in memory (and in the state file, see below);
* ``handshake`` (``{required_behaviour: {heartbeat_interval, ...}}``): the behaviour the CP asks
  for; kept (sending the ``HandshakeAcknowledgement`` back is not done here). Our own heartbeat
  and the site's measurements go to the CP at that interval (:class:`OscpSender`, run by the
  service's control loop);
* ``heartbeat`` (``{offline_mode_at}``): the CP is considered offline once ``now`` is after the
  last ``offline_mode_at`` received (:meth:`OscpFp.oscp_state`);
* ``update_group_capacity_forecast`` (``{group_id, type, forecasted_blocks: [{capacity, phase,
  unit, start_time, end_time}]}``).

Every request needs ``Authorization: Token <token>`` with the configured token (compared with
:func:`hmac.compare_digest`); no token configured: every request is refused (401). A bad body is
a 422 whose ``detail[].loc`` names the field; success is ``204 No Content``.

Forecast types:

* ``CONSUMPTION``: the blocks become grid-operator limit blocks of the site in the
  :class:`~noxblock.auth.LimitStore`, with the PUT semantics of :mod:`noxblock.limits` (the
  forecast replaces the stored schedule over its span; gaps between its blocks have no limit) and
  an audit entry whose token id is ``"oscp"`` (role ``grid-operator``), body as received.
* ``FALLBACK_CONSUMPTION``: kept as the fallback capacity, *not* put into the limit store (it is
  the capacity to keep to while the CP is offline, not a limit while it is online). It replaces
  the fallback blocks stored before.
* ``GENERATION``, ``FALLBACK_GENERATION``, ``OPTIMUM``: accepted (204) and ignored: the site does
  not feed in.

Capacity to a per-phase current (our limits are one per-phase current at the grid connection,
applied to every phase):

* unit ``A``: the capacity is a current per phase, taken as is for every ``phase``. For ``ONE``,
  ``TWO`` or ``THREE`` (a single phase) it is applied to all three phases, which is stricter than
  asked on the other two (safe; the scheduler has one limit for all phases).
* unit ``W``/``KW`` (``KW`` times 1000): phase ``ALL`` or ``UNKNOWN``: the power of all three
  phases, ``I = P / (3 V)``; phase ``ONE``/``TWO``/``THREE``: the power on that phase alone,
  ``I = P / V`` (and applied to all phases, as above).
* ``WH``/``KWH`` (energy, not a capacity): refused with 422.

Fallback capacity: ``fallback_a`` is the tightest fallback block covering ``now``; if none covers
it, the tightest fallback block of all (conservative); ``None`` if no fallback was received.

State (CP registration, required behaviour, last ``offline_mode_at``, fallback blocks) lives in
memory and, if ``state_path`` is given, in that JSON file (written atomically, mode 0600 as it
holds the CP's token), read back at start. Times are timezone-aware, UTC inside.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from noxblock.api_limits import MAX_BODY_BYTES, json_safe, read_body
from noxblock.auth import LimitStore, TokenRecord
from noxblock.limits import PHASES, AwareTime, LimitBlock, check_blocks

__all__ = [
    "BASE_PATH",
    "MAX_BODY_BYTES",
    "OSCP_WHO",
    "ForecastedBlock",
    "OscpFp",
    "OscpSender",
    "UpdateGroupCapacityForecast",
    "add_oscp_routes",
    "block_current_a",
    "group_measurements_payload",
]

log = logging.getLogger("noxblock.oscp")

BASE_PATH: Final = "/oscp/fp/2.0"
#: Token id of OSCP requests in the limit audit.
OSCP_WHO: Final = "oscp"

Phase = Literal["ONE", "TWO", "THREE", "ALL", "UNKNOWN"]
Unit = Literal["A", "W", "KW", "WH", "KWH"]
ForecastType = Literal["CONSUMPTION", "GENERATION", "FALLBACK_CONSUMPTION", "FALLBACK_GENERATION", "OPTIMUM"]
_SINGLE_PHASES: Final = ("ONE", "TWO", "THREE")
_PHASE_OF_INDEX: Final = ("ONE", "TWO", "THREE")
_M = TypeVar("_M", bound=BaseModel)


# -- messages -----------------------------------------------------------------------------------
class _Msg(BaseModel):
    # OSCP may add fields in later minor versions: ignore unknown ones rather than refuse.
    model_config = ConfigDict(extra="ignore")


class VersionUrl(_Msg):
    version: str = Field(min_length=1)
    base_url: str = Field(min_length=1)


class Register(_Msg):
    token: str = Field(min_length=1)
    version_url: list[VersionUrl] = Field(min_length=1)


class RequiredBehaviour(_Msg):
    heartbeat_interval: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    measurement_configuration: list[str] | None = None


class Handshake(_Msg):
    required_behaviour: RequiredBehaviour


class Heartbeat(_Msg):
    offline_mode_at: AwareTime


class ForecastedBlock(_Msg):
    capacity: float = Field(ge=0, allow_inf_nan=False)
    phase: Phase
    unit: Unit
    start_time: AwareTime
    end_time: AwareTime

    @model_validator(mode="after")
    def _check(self) -> ForecastedBlock:
        if self.unit in ("WH", "KWH"):
            raise ValueError(f"unit: {self.unit} is an energy, not a capacity: give A, W or KW")
        if self.end_time <= self.start_time:
            raise ValueError(
                f"end_time {self.end_time.isoformat()} is not after start_time {self.start_time.isoformat()}"
            )
        return self


class UpdateGroupCapacityForecast(_Msg):
    group_id: str = Field(min_length=1)
    type: ForecastType
    forecasted_blocks: list[ForecastedBlock] = Field(min_length=1, max_length=10_000)


def block_current_a(block: ForecastedBlock, voltage_v: float) -> float:
    """The per-phase current [A] of a forecasted block's capacity (module docstring)."""
    if block.unit == "A":
        return float(block.capacity)
    watts = block.capacity * (1000.0 if block.unit == "KW" else 1.0)
    if block.unit not in ("W", "KW"):
        raise ValueError(f"unit: {block.unit} is not a capacity")
    phases = 1 if block.phase in _SINGLE_PHASES else PHASES
    return watts / (phases * voltage_v)


# -- state --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Fallback:
    start: datetime
    end: datetime
    current_a: float


class OscpFp:
    """The FP side's state: what the CP registered, asked for and last said (thread-safe)."""

    def __init__(self, *, state_path: str | Path | None = None) -> None:
        self.state_path = None if state_path is None else Path(state_path)
        self._lock = threading.Lock()
        self.registration: dict[str, Any] | None = None
        self.required_behaviour: dict[str, Any] | None = None
        self.offline_mode_at: datetime | None = None
        self.fallback: tuple[_Fallback, ...] = ()
        #: The group of the last capacity forecast: the one our measurements are reported for.
        self.group_id: str | None = None
        if self.state_path is not None and self.state_path.exists():
            self._load(self.state_path)

    def _load(self, path: Path) -> None:
        d = json.loads(path.read_text())
        self.registration = d.get("registration")
        self.group_id = d.get("group_id")
        self.required_behaviour = d.get("required_behaviour")
        at = d.get("offline_mode_at")
        self.offline_mode_at = None if at is None else datetime.fromisoformat(at)
        self.fallback = tuple(
            _Fallback(
                datetime.fromisoformat(f["start"]), datetime.fromisoformat(f["end"]), float(f["current_a"])
            )
            for f in d.get("fallback", ())
        )

    def _save(self) -> None:
        if self.state_path is None:
            return
        d = {
            "registration": self.registration,
            "group_id": self.group_id,
            "required_behaviour": self.required_behaviour,
            "offline_mode_at": None if self.offline_mode_at is None else self.offline_mode_at.isoformat(),
            "fallback": [
                {"start": f.start.isoformat(), "end": f.end.isoformat(), "current_a": f.current_a}
                for f in self.fallback
            ],
        }
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_path.parent, prefix=f".{self.state_path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(d, f, indent=1)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.state_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def register(self, msg: Register) -> None:
        with self._lock:
            self.registration = msg.model_dump()
            self._save()

    def handshake(self, msg: Handshake) -> None:
        with self._lock:
            self.required_behaviour = msg.required_behaviour.model_dump()
            self._save()

    def heartbeat(self, msg: Heartbeat) -> None:
        with self._lock:
            self.offline_mode_at = msg.offline_mode_at
            self._save()

    def set_fallback(self, blocks: Sequence[tuple[datetime, datetime, float]]) -> None:
        with self._lock:
            self.fallback = tuple(sorted((_Fallback(s, e, a) for s, e, a in blocks), key=lambda f: f.start))
            self._save()

    def fallback_a(self, now: datetime) -> float | None:
        """The fallback capacity [A per phase] at ``now`` (module docstring); ``None`` if none known."""
        with self._lock:
            blocks = self.fallback
        if not blocks:
            return None
        covering = [f.current_a for f in blocks if f.start <= now < f.end]
        return min(covering) if covering else min(f.current_a for f in blocks)

    def oscp_state(self, now: datetime) -> dict[str, Any]:
        """``{"online": bool, "fallback_a": float | None}`` at ``now`` (timezone-aware).

        ``online`` is False once ``now`` is after the last ``offline_mode_at`` of a heartbeat; with
        no heartbeat received yet it is True (no OSCP session: the stored limits govern).
        ``fallback_a`` is reported whether online or not; the scheduler uses it when offline.
        """
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError(f"now: naive time {now.isoformat()}: give a UTC offset")
        with self._lock:
            offline_at = self.offline_mode_at
        online = offline_at is None or now <= offline_at
        return {"online": online, "fallback_a": self.fallback_a(now)}


# -- HTTP ---------------------------------------------------------------------------------------
def _check_token(request: Request, token: str | None) -> None:
    if not token:  # none or empty: refuse everything
        raise HTTPException(401, "OSCP is not configured: no token", headers={"WWW-Authenticate": "Token"})
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "token" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(
            401,
            "expected header Authorization: Token <token> with the OSCP token",
            headers={"WWW-Authenticate": "Token"},
        )


def _parse(model: type[_M], raw: bytes) -> _M:
    """The message, or :class:`RequestValidationError` whose ``loc`` names the field."""
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", getattr(e, "pos", 0)),
                    "msg": f"JSON decode error: {e}",
                }
            ]
        ) from None
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise RequestValidationError(
            [{**json_safe(dict(err)), "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        ) from None


def _summary(e: RequestValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())


def add_oscp_routes(
    app: FastAPI,
    limits: LimitStore,
    *,
    site_id: str,
    voltage_v: float,
    token: str | None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    group_id: str | None = None,
    state_path: str | Path | None = None,
) -> OscpFp:
    """Add the FP endpoints of OSCP 2.0 (module docstring) to ``app``; returns their state.

    Forecasts go to the limits of ``site_id``, converted on ``voltage_v`` [V] phase-to-neutral.
    ``group_id``: if given, forecasts for another group are refused (404); otherwise every group
    maps to ``site_id``. ``clock`` gives the time a request is received (audit). The state is also
    on ``app.state.oscp``.
    """
    if not (math.isfinite(voltage_v) and voltage_v > 0):
        raise ValueError(f"voltage_v: must be > 0, got {voltage_v!r}")
    state = OscpFp(state_path=state_path)
    app.state.oscp = state
    tags: list[Any] = ["OSCP 2.0"]
    responses: dict[int | str, dict[str, Any]] = {
        204: {"description": "accepted"},
        401: {"description": "no `Authorization: Token <token>` header, or a wrong token"},
        413: {"description": f"body over {MAX_BODY_BYTES} bytes"},
        422: {"description": "bad body; `detail[].loc` names the field"},
    }

    @app.post(f"{BASE_PATH}/register", status_code=204, tags=tags, responses=responses)
    async def register(request: Request) -> Response:
        """The CP's token for the FP and the URLs of its OSCP versions."""
        _check_token(request, token)
        state.register(_parse(Register, await read_body(request)))
        log.info("OSCP register from the CP")
        return Response(status_code=204)

    @app.post(f"{BASE_PATH}/handshake", status_code=204, tags=tags, responses=responses)
    async def handshake(request: Request) -> Response:
        """The behaviour the CP requires (heartbeat interval, measurements)."""
        _check_token(request, token)
        state.handshake(_parse(Handshake, await read_body(request)))
        log.info("OSCP handshake from the CP")
        return Response(status_code=204)

    @app.post(f"{BASE_PATH}/heartbeat", status_code=204, tags=tags, responses=responses)
    async def heartbeat(request: Request) -> Response:
        """The CP is alive until ``offline_mode_at``."""
        _check_token(request, token)
        state.heartbeat(_parse(Heartbeat, await read_body(request)))
        return Response(status_code=204)

    @app.post(
        f"{BASE_PATH}/update_group_capacity_forecast",
        status_code=204,
        tags=tags,
        responses={**responses, 404: {"description": "unknown group"}},
    )
    async def update_group_capacity_forecast(request: Request) -> Response:
        """Capacity blocks for the group: CONSUMPTION becomes limits, FALLBACK_CONSUMPTION the fallback."""
        _check_token(request, token)
        raw = await read_body(request)
        received = clock()
        who = TokenRecord(OSCP_WHO, "grid-operator", site_id, received)
        body = raw.decode("utf-8", errors="replace")
        try:
            msg = _parse(UpdateGroupCapacityForecast, raw)
        except RequestValidationError as e:
            limits.reject(site_id, who, body=body, error=_summary(e), received_at=received)
            raise
        if group_id is not None and msg.group_id != group_id:
            raise HTTPException(404, f"unknown group_id {msg.group_id!r}")
        state.group_id = msg.group_id
        currents = [(b.start_time, b.end_time, block_current_a(b, voltage_v)) for b in msg.forecasted_blocks]
        if msg.type == "CONSUMPTION":
            blocks = [
                LimitBlock(s, e, a, max_power_kw=_power_kw(b))
                for (s, e, a), b in zip(currents, msg.forecasted_blocks, strict=True)
            ]
            try:
                blocks = check_blocks(blocks, "forecasted_blocks")
            except ValueError as e:
                limits.reject(site_id, who, body=body, error=str(e), received_at=received)
                raise RequestValidationError(
                    [{"type": "value_error", "loc": ("body", "forecasted_blocks"), "msg": str(e)}]
                ) from None
            limits.put(site_id, blocks, who, body=body, received_at=received)
        elif msg.type == "FALLBACK_CONSUMPTION":
            state.set_fallback(currents)
            log.info("OSCP fallback capacity for site %s: %d blocks", site_id, len(currents))
        else:
            log.info("OSCP %s forecast for site %s ignored", msg.type, site_id)
        return Response(status_code=204)

    return state


def _power_kw(b: ForecastedBlock) -> float | None:
    """The power of a block as sent, for the limit store's ``max_power_kw`` (three-phase only)."""
    if b.unit == "KW" and b.phase not in _SINGLE_PHASES:
        return float(b.capacity)
    if b.unit == "W" and b.phase not in _SINGLE_PHASES:
        return b.capacity / 1000.0
    return None


# -- FP -> CP -----------------------------------------------------------------------------------
def group_measurements_payload(group_id: str, measured_a: Sequence[float], at: datetime) -> dict[str, Any]:
    """The body of an ``update_group_measurements`` (FP to CP) with the group's phase currents.

    ``measured_a`` is the current of each phase [A] (L1, L2, L3; one to three values) at ``at``
    (timezone-aware). Each becomes ``{value, phase, unit: "A", measure_time}`` with phase ``ONE``,
    ``TWO``, ``THREE`` — the instantaneous measurement shape of OSCP 2.0. (OSCP's energy
    measurements, unit WH/KWH with ``energy_type``, ``direction`` and ``initial_measure_time``,
    are not built here.) Raises ``ValueError`` for a naive ``at``, no or more than three values,
    or a negative or non-finite current.
    """
    if not group_id:
        raise ValueError("group_id: must not be empty")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"at: naive time {at.isoformat()}: give a UTC offset")
    values = [float(a) for a in measured_a]
    if not 1 <= len(values) <= PHASES:
        raise ValueError(f"measured_a: expected 1 to {PHASES} phase currents, got {len(values)}")
    for i, a in enumerate(values):
        if not (math.isfinite(a) and a >= 0):
            raise ValueError(f"measured_a[{i}]: must be finite and >= 0, got {a!r}")
    when = at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return {
        "group_id": group_id,
        "measurements": [
            {"value": a, "phase": _PHASE_OF_INDEX[i], "unit": "A", "measure_time": when}
            for i, a in enumerate(values)
        ],
    }


class OscpSender:
    """The FP's messages to the CP: ``heartbeat`` and ``update_group_measurements``.

    Once the CP has registered (its token and the ``base_url`` of version 2.0), :meth:`tick` posts
    to ``{base_url}/heartbeat`` ``{"offline_mode_at": now + 3 heartbeat intervals}`` and to
    ``{base_url}/update_group_measurements`` the site's phase currents from ``measured_a(now)``
    (:func:`group_measurements_payload`, for the group of the last forecast, else ``site_id``),
    with ``Authorization: Token <the CP's token>``. The heartbeat interval is the one the CP's
    handshake asked for, else ``default_interval_s``. A failed post is logged and counted
    (``failures``), never raised: the next tick tries again.
    """

    def __init__(
        self,
        state: OscpFp,
        site_id: str,
        measured_a: Callable[[datetime], Sequence[float]],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        default_interval_s: float = 60.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.state = state
        self.site_id = site_id
        self.measured_a = measured_a
        self.clock = clock
        self.default_interval_s = default_interval_s
        self.timeout_s = timeout_s
        self.sent = 0
        self.failures = 0

    @property
    def interval_s(self) -> float:
        """Seconds between two heartbeats (the CP's ``heartbeat_interval``, else the default)."""
        rb = self.state.required_behaviour or {}
        value = rb.get("heartbeat_interval")
        return float(value) if value else self.default_interval_s

    @property
    def registered(self) -> bool:
        """Whether the CP has registered a token and a 2.0 URL to send to."""
        return self._target() is not None

    def _target(self) -> tuple[str, str] | None:
        reg = self.state.registration
        if not reg or not reg.get("token"):
            return None
        urls = [v for v in reg.get("version_url", ()) if str(v.get("version", "")).startswith("2.0")]
        if not urls:
            return None
        return urls[0]["base_url"].rstrip("/"), reg["token"]

    async def tick(self) -> bool:
        """Send one heartbeat and one measurement; True if both were accepted (2xx)."""
        import httpx

        target = self._target()
        if target is None:
            return False
        base, token = target
        now = self.clock()
        offline_at = now + timedelta(seconds=3 * self.interval_s)
        bodies = {
            "heartbeat": {"offline_mode_at": offline_at.astimezone(UTC).isoformat().replace("+00:00", "Z")},
            "update_group_measurements": group_measurements_payload(
                self.state.group_id or self.site_id, [max(float(a), 0.0) for a in self.measured_a(now)], now
            ),
        }
        ok = True
        async with httpx.AsyncClient(timeout=self.timeout_s) as http:
            for path, body in bodies.items():
                try:
                    r = await http.post(
                        f"{base}/{path}", json=body, headers={"Authorization": f"Token {token}"}
                    )
                    r.raise_for_status()
                    self.sent += 1
                except httpx.HTTPError as e:
                    ok = False
                    self.failures += 1
                    log.warning("OSCP %s to the CP at %s failed: %s", path, base, e)
        return ok
