"""Grid-operator limits: the request and response models of ``/api/v1/sites/{site}/limits`` and the
pure functions behind them.

A limit is a schedule of blocks, each ``[start, end)`` (``end`` ``None``: open-ended) with a
per-phase current at the site's grid connection [A]. A request may give a block's limit as a
power instead (``max_power_kw``); it is converted on the site's voltage and three phases,
``I = P * 1000 / (3 * V)``.

Semantics of a PUT (:func:`merge`): the request covers the span from its earliest block start to
its latest block end (to infinity if a block is open-ended). Within that span the request
replaces the stored schedule completely: stored blocks are cut at the span's edges, and times in
the span that no new block covers (gaps between the new blocks) have no limit any more. Outside
the span the stored schedule stays as it was. A request whose last block is open-ended therefore
replaces everything from its earliest start on.

``min_per_point_kw`` (optional, per request) is a guaranteed minimum power per charge point while
the site is dimmed (the German §14a EnWG rule uses 4.2 kW); it is stored with every block of the
request.

:func:`limits_series` turns a schedule into the per-step limit [A] of a scheduler's time grid.
Times are timezone-aware everywhere and UTC inside. pydantic is used for the HTTP models only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic import model_validator as _model_validator

__all__ = [
    "MAX_BLOCKS",
    "PHASES",
    "LimitBlock",
    "LimitBlockIn",
    "LimitBlockOut",
    "LimitRequest",
    "LimitSchedule",
    "LimitScheduleOut",
    "check_blocks",
    "current_from_power_a",
    "limits_series",
    "merge",
    "power_from_current_kw",
    "schedule_out",
    "to_blocks",
]

#: Phases of a site's grid connection: a power limit is spread over three phases.
PHASES = 3
#: Blocks in one request at most (a year of hours is 8,760).
MAX_BLOCKS = 10_000


def current_from_power_a(power_kw: float, voltage_v: float, phases: int = PHASES) -> float:
    """The per-phase current [A] of ``power_kw`` on ``phases`` phases at ``voltage_v`` [V] (phase-neutral)."""
    return power_kw * 1000.0 / (phases * voltage_v)


def power_from_current_kw(current_a: float, voltage_v: float, phases: int = PHASES) -> float:
    """The power [kW] of a per-phase current ``current_a`` on ``phases`` phases at ``voltage_v`` [V]."""
    return current_a * phases * voltage_v / 1000.0


# -- the schedule, as stored and used -----------------------------------------------------------
@dataclass(frozen=True)
class LimitBlock:
    """One block of a limit schedule: ``[start, end)``, UTC; ``end`` ``None`` is open-ended.

    ``max_current_a`` is the per-phase limit at the grid connection [A]; ``max_power_kw`` the power
    the request gave, if it gave one (``None`` when it gave a current). ``audit_id`` is the audit
    entry of the request that set the block.
    """

    start: datetime
    end: datetime | None
    max_current_a: float
    max_power_kw: float | None = None
    min_per_point_kw: float | None = None
    audit_id: int | None = None

    def overlaps(self, other: LimitBlock) -> bool:
        """True if the two blocks share time (touching ends do not count)."""
        return (other.end is None or self.start < other.end) and (self.end is None or other.start < self.end)


@dataclass(frozen=True)
class LimitSchedule:
    """The limit schedule of one site: blocks sorted by start, not overlapping."""

    site: str
    blocks: tuple[LimitBlock, ...]


def _aware_utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what}: naive time {value.isoformat()}: give a UTC offset")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{what}: {value.isoformat()} is out of range") from None


def check_blocks(blocks: Sequence[LimitBlock], what: str = "blocks") -> list[LimitBlock]:
    """The blocks in UTC, sorted by start, after checking them. Raises ``ValueError`` naming the block.

    Checks: times timezone-aware, ``end`` after ``start``, limits finite and >= 0, no two blocks
    overlapping (at most one open-ended, and it starts last).
    """
    blocks = [
        replace(
            b,
            start=_aware_utc(b.start, f"{what}[{i}].start"),
            end=None if b.end is None else _aware_utc(b.end, f"{what}[{i}].end"),
        )
        for i, b in enumerate(blocks)
    ]
    for i, b in enumerate(blocks):
        if b.end is not None and b.end <= b.start:
            raise ValueError(f"{what}[{i}]: end {b.end.isoformat()} is not after start {b.start.isoformat()}")
        for name in ("max_current_a", "max_power_kw", "min_per_point_kw"):
            v = getattr(b, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{what}[{i}].{name}: must be finite and >= 0, got {v!r}")
    order = sorted(range(len(blocks)), key=lambda i: blocks[i].start)
    for i, j in itertools.pairwise(order):
        if blocks[i].overlaps(blocks[j]):
            a, b = blocks[i], blocks[j]
            raise ValueError(
                f"{what}[{j}] ({_span(b)}) overlaps {what}[{i}] ({_span(a)}): blocks must not overlap"
            )
    return [blocks[i] for i in order]


def _span(b: LimitBlock) -> str:
    return f"{b.start.isoformat()} to {b.end.isoformat() if b.end is not None else 'open end'}"


def merge(existing: Sequence[LimitBlock], new: Sequence[LimitBlock]) -> list[LimitBlock]:
    """The schedule after a PUT of ``new`` onto ``existing`` (see the module docstring).

    The span ``[min start, max end)`` of ``new`` (``max end`` infinite if a block is open-ended)
    replaces ``existing`` completely; stored blocks crossing its edges are cut there. ``new`` is
    checked with :func:`check_blocks`; an empty ``new`` changes nothing.
    """
    new_sorted = check_blocks(new, "new")
    if not new_sorted:
        return sorted(existing, key=lambda b: b.start)
    span_start = new_sorted[0].start
    ends = [b.end for b in new_sorted]
    span_end = None if any(e is None for e in ends) else max(e for e in ends if e is not None)
    kept: list[LimitBlock] = []
    for b in existing:
        if b.start < span_start:  # the part before the span
            end = b.end if b.end is not None and b.end <= span_start else span_start
            kept.append(replace(b, end=end))
        if span_end is not None and (b.end is None or b.end > span_end):  # the part after it
            kept.append(replace(b, start=max(b.start, span_end)))
    return sorted([*kept, *new_sorted], key=lambda b: b.start)


def limits_series(
    schedule: LimitSchedule | Sequence[LimitBlock],
    grid_starts: Sequence[datetime] | pd.DatetimeIndex,
    *,
    step: timedelta | None = None,
) -> np.ndarray:
    """The per-step limit [A] on a time grid: the tightest block overlapping each step; inf if none.

    Step ``k`` is ``[grid_starts[k], grid_starts[k + 1])``; the last one is ``step`` long (default:
    as long as the one before it). A block counts for a step if it overlaps it by any time, so a
    limit starting or ending mid-step holds for the whole step (safe for a scheduler that keeps one
    setpoint per step). ``grid_starts`` must be timezone-aware and increasing.
    """
    blocks = schedule.blocks if isinstance(schedule, LimitSchedule) else tuple(schedule)
    idx = pd.DatetimeIndex(grid_starts)
    if idx.tz is None and len(idx):
        raise ValueError("grid_starts: naive times: give timezone-aware times")
    n = len(idx)
    out = np.full(n, np.inf)
    if n == 0:
        return out
    starts = idx.tz_convert("UTC").as_unit("ns").asi8
    if n > 1 and not (np.diff(starts) > 0).all():
        raise ValueError("grid_starts: must be strictly increasing")
    if step is not None:
        last_ns = pd.Timedelta(step).value
    elif n > 1:
        last_ns = int(starts[-1] - starts[-2])
    else:
        raise ValueError("limits_series: a grid of one step needs `step`")
    if last_ns <= 0:
        raise ValueError(f"limits_series: step must be > 0, got {step}")
    ends = np.append(starts[1:], starts[-1] + last_ns)
    for b in blocks:
        b_start = pd.Timestamp(b.start).as_unit("ns").value
        hit = ends > b_start
        if b.end is not None:
            hit &= starts < pd.Timestamp(b.end).as_unit("ns").value
        np.minimum(out, np.where(hit, b.max_current_a, np.inf), out=out)
    return out


# -- HTTP models --------------------------------------------------------------------------------
def _iso_string(value: Any) -> Any:
    if isinstance(value, datetime):  # from Python callers
        return value
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 time string with a UTC offset, e.g. 2024-01-15T17:00:00+01:00")
    return value


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"naive time {value.isoformat()}: give a UTC offset, e.g. {value.isoformat()}+01:00 or Z"
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is out of range") from None


AwareTime = Annotated[datetime, BeforeValidator(_iso_string), AfterValidator(_utc)]
NonNegative = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]


class LimitBlockIn(BaseModel):
    """One block of a limit request: exactly one of ``max_current_a`` and ``max_power_kw``."""

    model_config = ConfigDict(extra="forbid")

    start: AwareTime = Field(description="ISO 8601 with UTC offset; the block starts here (inclusive)")
    end: AwareTime | None = Field(
        description="ISO 8601 with UTC offset, after `start` (exclusive); null: open-ended"
    )
    max_current_a: NonNegative | None = Field(
        default=None, description="per-phase limit at the grid connection [A]"
    )
    max_power_kw: NonNegative | None = Field(
        default=None, description="limit as power [kW], converted on the site's voltage and 3 phases"
    )

    @_model_validator(mode="after")
    def _check(self) -> LimitBlockIn:
        if (self.max_current_a is None) == (self.max_power_kw is None):
            raise ValueError("give exactly one of max_current_a and max_power_kw")
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} is not after start {self.start.isoformat()}")
        return self


class LimitRequest(BaseModel):
    """Body of ``PUT /api/v1/sites/{site}/limits``."""

    model_config = ConfigDict(extra="forbid")

    blocks: list[LimitBlockIn] = Field(
        min_length=1,
        max_length=MAX_BLOCKS,
        description="non-overlapping blocks, any order; they replace the stored schedule over their span",
    )
    min_per_point_kw: NonNegative | None = Field(
        default=None,
        description="guaranteed minimum per charge point while dimmed [kW] (§14a EnWG: 4.2)",
    )

    @field_validator("blocks")
    @classmethod
    def _no_overlap(cls, blocks: list[LimitBlockIn]) -> list[LimitBlockIn]:
        check_blocks([LimitBlock(b.start, b.end, 0.0) for b in blocks])
        return blocks


def to_blocks(request: LimitRequest, voltage_v: float, *, audit_id: int | None = None) -> list[LimitBlock]:
    """The request's blocks, sorted, each with its limit as a current on ``voltage_v`` [V]."""
    if not (math.isfinite(voltage_v) and voltage_v > 0):
        raise ValueError(f"voltage_v: must be > 0, got {voltage_v!r}")
    out = [
        LimitBlock(
            start=b.start,
            end=b.end,
            max_current_a=b.max_current_a
            if b.max_current_a is not None
            else current_from_power_a(float(b.max_power_kw or 0.0), voltage_v),
            max_power_kw=b.max_power_kw,
            min_per_point_kw=request.min_per_point_kw,
            audit_id=audit_id,
        )
        for b in request.blocks
    ]
    return check_blocks(out)


class LimitBlockOut(BaseModel):
    """One block of the schedule in force."""

    start: datetime = Field(description="UTC, inclusive")
    end: datetime | None = Field(description="UTC, exclusive; null: open-ended")
    max_current_a: float = Field(description="per-phase limit at the grid connection [A]")
    max_power_kw: float = Field(
        description="the same limit as power on the site's voltage and 3 phases [kW] (as sent, if sent)"
    )
    min_per_point_kw: float | None = Field(description="guaranteed minimum per charge point [kW]")
    audit_id: int | None = Field(description="audit entry of the request that set this block")


class LimitScheduleOut(BaseModel):
    """A site's limit schedule: blocks sorted by start, not overlapping; no block: no limit."""

    site: str
    voltage_v: float = Field(description="phase-to-neutral voltage used for kW <-> A [V]")
    blocks: list[LimitBlockOut]


def schedule_out(site: str, blocks: Iterable[LimitBlock], voltage_v: float) -> LimitScheduleOut:
    """The response model of a schedule."""
    return LimitScheduleOut(
        site=site,
        voltage_v=voltage_v,
        blocks=[
            LimitBlockOut(
                start=b.start,
                end=b.end,
                max_current_a=b.max_current_a,
                max_power_kw=b.max_power_kw
                if b.max_power_kw is not None
                else power_from_current_kw(b.max_current_a, voltage_v),
                min_per_point_kw=b.min_per_point_kw,
                audit_id=b.audit_id,
            )
            for b in blocks
        ],
    )
