"""Smart-charging dispatch: current plans in, OCPP 1.6 charging profiles out. Pure functions, no I/O.

The gateway knows nothing of the optimiser: a plan is plain data, a list of ``(start, limit_a)``
per-phase current limits, one per interval, plus the interval end. :func:`plan_to_profile` turns it
into a TxProfile or TxDefaultProfile a point can take (spec 3.13 and DOMAIN.md):

* in the unit the point accepts (``ChargingScheduleAllowedChargingRateUnit``); W = A x V x phases;
* starting at the start of the interval that holds *now* (in the past, so the point is never
  unlimited while a future ``startSchedule`` waits);
* at most ``ChargingScheduleMaxPeriods`` periods: neighbours are merged, the pair that loses the
  least energy first, and a merged period takes the *lower* limit, so merging never loosens a
  grid limit;
* limits rounded *down* (0.1 A, 1 W), ``numberPhases`` on every period;
* after the plan's end, optionally a last open-ended period at a fallback (failsafe) limit, so a
  point that loses the central system does not run unlimited when the plan runs out.

:func:`failsafe_profile` is the conservative profile installed at boot; :func:`limit_at` and
:func:`measured_current_a` are what the compliance check compares.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from ocpp_gateway.errors import PlanError
from ocpp_gateway.frames import format_datetime, parse_datetime

__all__ = [
    "ChargingProfile",
    "SchedulePeriod",
    "failsafe_profile",
    "limit_at",
    "measured_current_a",
    "parse_rate_units",
    "plan_to_profile",
]

RateUnit = Literal["A", "W"]
Purpose = Literal["ChargePointMaxProfile", "TxDefaultProfile", "TxProfile"]


@dataclass(frozen=True, slots=True)
class SchedulePeriod:
    """One period of a charging schedule.

    Parameters
    ----------
    start_s
        Offset from the schedule start [s].
    limit
        Limit in the schedule's unit: per-phase current [A] or total power [W].
    number_phases
        Phases the limit applies to (1 or 3).
    """

    start_s: int
    limit: float
    number_phases: int | None = None


@dataclass(frozen=True, slots=True)
class ChargingProfile:
    """An OCPP 1.6 ``csChargingProfiles``; :meth:`to_ocpp` gives the JSON object.

    A TxProfile names its transaction (``transaction_id``) when it is set on a running transaction
    (SetChargingProfile, checked by :meth:`check_for_set`); the TxProfile of a
    RemoteStartTransaction has none, because its transaction does not exist yet (OCPP 1.6 5.11).
    """

    profile_id: int
    stack_level: int
    purpose: Purpose
    rate_unit: RateUnit
    periods: tuple[SchedulePeriod, ...]
    start_schedule: datetime | None = None
    duration_s: int | None = None
    transaction_id: int | None = None
    kind: Literal["Absolute", "Recurring", "Relative"] = "Absolute"
    recurrency_kind: Literal["Daily", "Weekly"] | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    min_charging_rate: float | None = None

    def __post_init__(self) -> None:
        if not self.periods or self.periods[0].start_s != 0:
            raise PlanError("periods", "a schedule needs periods and the first must start at 0 s")

    def check_for_set(self) -> None:
        """Raise :class:`PlanError` if SetChargingProfile cannot carry it: a TxProfile without transaction."""
        if self.purpose == "TxProfile" and self.transaction_id is None:
            raise PlanError("transaction_id", "a TxProfile set on a transaction needs the transaction id")

    def to_ocpp(self) -> dict[str, Any]:
        """The ``csChargingProfiles`` JSON object (camelCase)."""
        schedule: dict[str, Any] = {
            "chargingRateUnit": self.rate_unit,
            "chargingSchedulePeriod": [
                {"startPeriod": p.start_s, "limit": p.limit}
                | ({"numberPhases": p.number_phases} if p.number_phases is not None else {})
                for p in self.periods
            ],
        }
        if self.duration_s is not None:
            schedule["duration"] = self.duration_s
        if self.start_schedule is not None:
            schedule["startSchedule"] = format_datetime(self.start_schedule)
        if self.min_charging_rate is not None:
            schedule["minChargingRate"] = self.min_charging_rate
        out: dict[str, Any] = {
            "chargingProfileId": self.profile_id,
            "stackLevel": self.stack_level,
            "chargingProfilePurpose": self.purpose,
            "chargingProfileKind": self.kind,
            "chargingSchedule": schedule,
        }
        if self.transaction_id is not None:
            out["transactionId"] = self.transaction_id
        if self.recurrency_kind is not None:
            out["recurrencyKind"] = self.recurrency_kind
        if self.valid_from is not None:
            out["validFrom"] = format_datetime(self.valid_from)
        if self.valid_to is not None:
            out["validTo"] = format_datetime(self.valid_to)
        return out

    @classmethod
    def from_ocpp(cls, data: Mapping[str, Any]) -> ChargingProfile:
        """Read a ``csChargingProfiles`` JSON object (already schema-valid)."""
        s = data["chargingSchedule"]
        return cls(
            profile_id=int(data["chargingProfileId"]),
            stack_level=int(data["stackLevel"]),
            purpose=data["chargingProfilePurpose"],
            rate_unit=s["chargingRateUnit"],
            periods=tuple(
                SchedulePeriod(int(p["startPeriod"]), float(p["limit"]), p.get("numberPhases"))
                for p in s["chargingSchedulePeriod"]
            ),
            start_schedule=parse_datetime(s["startSchedule"]) if "startSchedule" in s else None,
            duration_s=s.get("duration"),
            transaction_id=data.get("transactionId"),
            kind=data["chargingProfileKind"],
            recurrency_kind=data.get("recurrencyKind"),
            valid_from=parse_datetime(data["validFrom"]) if "validFrom" in data else None,
            valid_to=parse_datetime(data["validTo"]) if "validTo" in data else None,
            min_charging_rate=s.get("minChargingRate"),
        )


def parse_rate_units(value: str | None) -> tuple[RateUnit, ...]:
    """The units in ``ChargingScheduleAllowedChargingRateUnit`` (``"Current,Power"``, ``"A"``, ...).

    Unknown or empty: both, amps first (what most AC points take).
    """
    if not value:
        return ("A", "W")
    units: list[RateUnit] = []
    for token in value.replace(";", ",").split(","):
        t = token.strip().lower()
        if t in ("current", "a") and "A" not in units:
            units.append("A")
        elif t in ("power", "w") and "W" not in units:
            units.append("W")
    return tuple(units) or ("A", "W")


def _to_unit(limit_a: float, unit: RateUnit, voltage_v: float, phases: int) -> float:
    if unit == "A":
        return math.floor(limit_a * 10.0 + 1e-9) / 10.0
    return float(math.floor(limit_a * voltage_v * phases + 1e-6))


def _merge_to(
    periods: list[tuple[int, float]], end_s: int | None, max_periods: int
) -> list[tuple[int, float]]:
    """Merge neighbouring periods, cheapest energy loss first, taking the lower limit."""
    while len(periods) > max_periods:
        best, best_cost = 0, math.inf
        for i in range(len(periods) - 1):
            (s0, l0), (s1, l1) = periods[i], periods[i + 1]
            e1 = periods[i + 2][0] if i + 2 < len(periods) else end_s
            # An open-ended last period counts as one hour, enough to rank it.
            d0, d1 = s1 - s0, (e1 - s1) if e1 is not None else 3600
            cost = (l0 - l1) * d0 if l0 > l1 else (l1 - l0) * d1
            if cost < best_cost:
                best, best_cost = i, cost
        s0, l0 = periods[best]
        periods[best : best + 2] = [(s0, min(l0, periods[best + 1][1]))]
    return periods


def plan_to_profile(
    plan: Sequence[tuple[datetime, float]],
    *,
    end: datetime,
    now: datetime,
    phases: int,
    voltage_v: float,
    rate_unit: RateUnit = "A",
    max_periods: int = 24,
    purpose: Literal["TxProfile", "TxDefaultProfile"] = "TxProfile",
    transaction_id: int | None = None,
    profile_id: int = 100,
    stack_level: int = 1,
    fallback_limit_a: float | None = None,
) -> ChargingProfile:
    """Turn a per-interval current plan into a charging profile.

    Parameters
    ----------
    plan
        ``(interval start, per-phase current limit [A])``, in time order; aware datetimes.
    end
        End of the last interval (aware).
    now
        Current time (aware); intervals that ended before it are dropped.
    phases
        Phases the EV charges on (1 or 3): ``numberPhases`` and the A -> W factor.
    voltage_v
        Phase-to-neutral voltage [V].
    rate_unit
        ``"A"`` or ``"W"``, the unit the point accepts.
    max_periods
        The point's ``ChargingScheduleMaxPeriods`` (the fallback period counts).
    purpose, transaction_id, profile_id, stack_level
        Profile identity; a TxProfile needs ``transaction_id``.
    fallback_limit_a
        If given, the limit [A] before the plan starts and, open-ended, after it ends.

    Raises
    ------
    PlanError
        Empty plan, naive or unordered datetimes, negative or non-finite limits, a plan already over.
    """
    if not plan:
        raise PlanError("plan", "empty")
    if phases not in (1, 3):
        raise PlanError("phases", f"must be 1 or 3, got {phases}")
    if not (voltage_v > 0 and math.isfinite(voltage_v)):
        raise PlanError("voltage_v", f"must be positive, got {voltage_v}")
    if max_periods < 1:
        raise PlanError("max_periods", f"must be >= 1, got {max_periods}")
    for name, t in (("end", end), ("now", now)):
        if t.tzinfo is None:
            raise PlanError(name, "datetime must be timezone-aware")
    starts: list[datetime] = []
    for i, (t, limit_a) in enumerate(plan):
        if t.tzinfo is None:
            raise PlanError(f"plan[{i}].start", "datetime must be timezone-aware")
        if not (math.isfinite(limit_a) and limit_a >= 0):
            raise PlanError(f"plan[{i}].limit_a", f"must be a finite number >= 0, got {limit_a}")
        if starts and t <= starts[-1]:
            raise PlanError(f"plan[{i}].start", "intervals must be in strictly increasing time order")
        starts.append(t)
    if end <= starts[-1]:
        raise PlanError("end", "must be after the last interval start")
    if end <= now and fallback_limit_a is None:
        raise PlanError("end", "the plan is already over")
    if purpose == "TxProfile" and transaction_id is None:
        raise PlanError("transaction_id", "a TxProfile needs the transaction id")

    # Whole seconds: startPeriod is an integer and startSchedule a second-resolution time.
    now = now.astimezone(UTC).replace(microsecond=0)
    bounds = [*starts, end]
    first = next((i for i in range(len(plan)) if bounds[i + 1] > now), len(plan))
    periods_a: list[tuple[datetime, float]] = [(plan[i][0], plan[i][1]) for i in range(first, len(plan))]
    if not periods_a or periods_a[0][0] > now:
        lead = fallback_limit_a if fallback_limit_a is not None else plan[0][1]
        periods_a.insert(0, (now, lead))
    start = periods_a[0][0].astimezone(UTC).replace(microsecond=0)
    periods: list[tuple[int, float]] = []
    for t, limit_a in periods_a:
        value = _to_unit(limit_a, rate_unit, voltage_v, phases)
        offset = max(0, int((t - start).total_seconds()))
        if periods and periods[-1][1] == value:
            continue
        if periods and periods[-1][0] == offset:
            periods[-1] = (offset, min(periods[-1][1], value))
            continue
        periods.append((offset, value))
    end_s = math.ceil((end - start).total_seconds())
    duration_s: int | None = end_s
    if fallback_limit_a is not None:
        fb = _to_unit(fallback_limit_a, rate_unit, voltage_v, phases)
        if end_s > periods[-1][0] and periods[-1][1] != fb:
            periods.append((end_s, fb))
        elif end_s <= periods[-1][0]:
            periods[-1] = (periods[-1][0], min(periods[-1][1], fb))
        duration_s = None
    periods = _merge_to(periods, None if duration_s is None else end_s, max_periods)
    return ChargingProfile(
        profile_id=profile_id,
        stack_level=stack_level,
        purpose=purpose,
        rate_unit=rate_unit,
        periods=tuple(SchedulePeriod(s, v, phases) for s, v in periods),
        start_schedule=start,
        duration_s=duration_s,
        transaction_id=transaction_id if purpose == "TxProfile" else None,
    )


def failsafe_profile(
    limit_a: float,
    *,
    purpose: Literal["TxDefaultProfile", "ChargePointMaxProfile"] = "TxDefaultProfile",
    rate_unit: RateUnit = "A",
    phases: int = 3,
    voltage_v: float = 230.0,
    profile_id: int = 1,
    stack_level: int = 0,
    now: datetime | None = None,
) -> ChargingProfile:
    """The conservative open-ended profile installed at boot (``limit_a`` per phase [A]).

    Absolute, starting a day in the past, no duration: it holds until replaced, across reboots.
    """
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    return ChargingProfile(
        profile_id=profile_id,
        stack_level=stack_level,
        purpose=purpose,
        rate_unit=rate_unit,
        periods=(SchedulePeriod(0, _to_unit(limit_a, rate_unit, voltage_v, phases), phases),),
        start_schedule=now - timedelta(days=1),
    )


def limit_at(profile: ChargingProfile, at: datetime, *, voltage_v: float, phases: int) -> float | None:
    """The per-phase current limit [A] an Absolute profile sets at ``at``, or None outside it."""
    if profile.start_schedule is None:
        return None
    offset = (at - profile.start_schedule).total_seconds()
    if offset < 0 or (profile.duration_s is not None and offset >= profile.duration_s):
        return None
    limit = None
    for p in profile.periods:
        if p.start_s <= offset:
            limit = (
                p.limit if profile.rate_unit == "A" else p.limit / (voltage_v * (p.number_phases or phases))
            )
        else:
            break
    return limit


def measured_current_a(
    sampled_values: Iterable[Mapping[str, Any]], *, voltage_v: float, phases: int
) -> float | None:
    """Largest per-phase import current [A] in one MeterValue's ``sampledValue`` list.

    ``Current.Import`` (A, any phase) wins; else ``Power.Active.Import`` (W or kW) divided by
    voltage and phases. None when the sample has neither.
    """
    current: float | None = None
    power_w: float | None = None
    for sv in sampled_values:
        measurand = sv.get("measurand", "Energy.Active.Import.Register")
        if measurand not in ("Current.Import", "Power.Active.Import"):
            continue
        try:
            value = float(sv["value"])
        except (KeyError, TypeError, ValueError):
            continue
        if not math.isfinite(value):
            continue
        if measurand == "Current.Import":
            current = value if current is None else max(current, value)
        else:
            value *= 1000.0 if sv.get("unit") == "kW" else 1.0
            if sv.get("phase") in ("L1", "L2", "L3", "L1-N", "L2-N", "L3-N"):
                value *= phases  # a per-phase power: scale to the total before dividing
            power_w = value if power_w is None else max(power_w, value)
    if current is not None:
        return current
    if power_w is not None:
        return power_w / (voltage_v * phases)
    return None
