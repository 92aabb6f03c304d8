"""Read the contract's files (site TOML, sessions CSV, signals CSV) and the public data sets.

Contract formats (``../shared/CONTRACT.md``): :func:`load_site`, :func:`load_sessions`,
:func:`load_signals`, :func:`load_base_load`, and the writers :func:`write_sessions_csv`,
:func:`write_signals_csv`, :func:`write_base_load_csv`.

Public formats (``../shared/data/README.md``), read in place, never copied:
:func:`load_acn` + :func:`acn_site` (ACN-Data, Caltech/JPL), :func:`load_trondheim` (residential
garages, Trondheim), :func:`load_energy_charts` + :func:`co2_from_residual_load` +
:func:`energy_charts_signals` (Fraunhofer ISE Energy-Charts, Germany 2023).

Every problem in a file a person wrote raises :class:`~scheduler.errors.InputError` naming the
file, the line (1-based, the CSV header is line 1) and the field. Times are timezone-aware and
converted to UTC on load; a time without a UTC offset is an error, never guessed.
"""

from __future__ import annotations

import csv
import difflib
import logging
import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import ProblemError
from models.problem import ROOT, ROTATIONS, ChargePoint, Node, Session, Signals, Site
from scheduler.errors import InputError

__all__ = [
    "BASE_LOAD_COLUMNS",
    "SESSION_COLUMNS",
    "SIGNAL_COLUMNS",
    "InputError",
    "SiteConfig",
    "StepSeries",
    "acn_site",
    "co2_from_residual_load",
    "energy_charts_signals",
    "load_acn",
    "load_base_load",
    "load_energy_charts",
    "load_sessions",
    "load_signals",
    "load_site",
    "load_trondheim",
    "resolve_overlaps",
    "shared_data_dir",
    "write_base_load_csv",
    "write_sessions_csv",
    "write_signals_csv",
]

log = logging.getLogger(__name__)

#: Columns of the sessions CSV: required, then optional (``priority`` extends the contract).
SESSION_COLUMNS = ("session_id", "station_id", "arrival", "departure", "energy_kwh")
SESSION_OPTIONAL_COLUMNS = ("max_power_kw", "phases", "priority")
#: Value columns of the signals CSV (any non-empty subset), besides ``time``.
SIGNAL_COLUMNS = ("price_eur_per_mwh", "co2_g_per_kwh", "max_current_a")
#: Value columns of the base-load CSV, besides ``time``: inflexible load per grid phase [A].
BASE_LOAD_COLUMNS = ("l1_a", "l2_a", "l3_a")


def shared_data_dir() -> Path | None:
    """The public data sets: ``$NOXBLOCK_SHARED_DATA`` or ``../shared/data`` beside the repository.

    ``None`` when neither exists (tests then skip).
    """
    env = os.environ.get("NOXBLOCK_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


# --------------------------------------------------------------------------------------------
# Small parsers shared by every CSV reader


def _utc(t: Any) -> datetime:
    """Aware datetime (or pandas Timestamp) to UTC; naive is a programming error here."""
    if not isinstance(t, datetime):
        raise TypeError(f"not a datetime: {t!r}")
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"naive datetime {t!r}: give a UTC offset")
    return t.astimezone(UTC)


def _parse_time(text: str, file: str, row: int | None, field_name: str) -> datetime:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        t = None
    if t is None or t.tzinfo is None or t.utcoffset() is None:
        raise InputError(file, row, field_name, f"not ISO 8601 with a UTC offset: {text!r}")
    return t.astimezone(UTC)


def _parse_float(
    text: str,
    file: str,
    row: int | None,
    field_name: str,
    *,
    minimum: float | None = None,
    positive: bool = False,
) -> float:
    try:
        v = float(text)
    except ValueError:
        raise InputError(file, row, field_name, f"not a number: {text!r}") from None
    if not math.isfinite(v):
        raise InputError(file, row, field_name, f"must be a finite number, got {text!r}")
    if positive and v <= 0:
        raise InputError(file, row, field_name, f"must be > 0, got {text}")
    if minimum is not None and v < minimum:
        raise InputError(file, row, field_name, f"must be >= {minimum:g}, got {text}")
    return v


def _suggest(word: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _csv_rows(
    path: str | os.PathLike[str],
    *,
    required: Sequence[str],
    optional: Sequence[str] = (),
    need_one_of: Sequence[str] = (),
) -> tuple[str, list[str], Iterator[tuple[int, dict[str, str]]]]:
    """Open a contract CSV; check its header; yield ``(line, {column: stripped cell})``.

    Unknown columns are errors (a typo must not pass silently); blank lines are skipped.
    """
    file = str(path)
    try:
        fh = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed by the generator
    except FileNotFoundError:
        raise InputError(file, None, None, "file not found") from None
    except IsADirectoryError:
        raise InputError(file, None, None, "is a directory, expected a CSV file") from None
    reader = csv.reader(fh)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        fh.close()
        raise InputError(file, 1, None, f"empty file; expected a header: {', '.join(required)}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        fh.close()
        raise InputError(file, 1, None, f"unreadable header: {e}") from None
    allowed = (*required, *optional)
    try:
        seen: set[str] = set()
        for h in header:
            if h in seen:
                raise InputError(file, 1, h, "duplicate column")
            seen.add(h)
            if h not in allowed:
                raise InputError(
                    file, 1, h, f"unknown column{_suggest(h, allowed)}; allowed: {', '.join(allowed)}"
                )
        missing = [c for c in required if c not in seen]
        if missing:
            raise InputError(file, 1, missing[0], f"required column missing (header: {', '.join(header)})")
        if need_one_of and not seen.intersection(need_one_of):
            raise InputError(file, 1, None, f"need at least one of the columns {', '.join(need_one_of)}")
    except InputError:
        fh.close()
        raise

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        with fh:
            try:
                for cells in reader:
                    line = reader.line_num
                    if not cells or (len(cells) == 1 and not cells[0].strip()):
                        continue
                    if len(cells) != len(header):
                        raise InputError(
                            file, line, None, f"expected {len(header)} cells (header), got {len(cells)}"
                        )
                    yield line, {h: c.strip() for h, c in zip(header, cells, strict=True)}
            except (UnicodeDecodeError, csv.Error) as e:
                raise InputError(file, reader.line_num + 1, None, f"unreadable line: {e}") from None

    return file, header, rows()


# --------------------------------------------------------------------------------------------
# Step series: base load and signals


@dataclass(frozen=True, eq=False)
class StepSeries:
    """Values that change at given times and hold until the next row (a step function).

    Parameters
    ----------
    times : tuple of datetime
        Row times, UTC, strictly increasing.
    columns : mapping str -> array
        One float array of ``len(times)`` per column, units in the column name (``l1_a`` [A],
        ``price_eur_per_mwh`` [EUR/MWh], ...). NaN = "not given yet" (a column's cells before its
        first value); after that a column always holds a value.
    source : str
        File it came from, for messages.
    """

    times: tuple[datetime, ...]
    columns: Mapping[str, np.ndarray]
    source: str = ""
    _epoch_s: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        times = tuple(_utc(t) for t in self.times)
        epoch = np.array([t.timestamp() for t in times], dtype=float)
        if len(epoch) > 1 and not (np.diff(epoch) > 0).all():
            raise ValueError(f"{self.source or 'StepSeries'}: times must strictly increase")
        cols: dict[str, np.ndarray] = {}
        for name, values in self.columns.items():
            arr = np.array(values, dtype=float)
            if arr.shape != (len(times),):
                raise ValueError(f"column {name!r}: expected {len(times)} values, got shape {arr.shape}")
            arr.setflags(write=False)
            cols[name] = arr
        epoch.setflags(write=False)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "columns", cols)
        object.__setattr__(self, "_epoch_s", epoch)

    def __eq__(self, other: object) -> bool:  # arrays compare by value, NaN equal to NaN
        if not isinstance(other, StepSeries):
            return NotImplemented
        return (
            self.times == other.times
            and self.names == other.names
            and all(np.array_equal(self.columns[n], other.columns[n], equal_nan=True) for n in self.names)
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.columns)

    @property
    def start(self) -> datetime | None:
        """Time of the first row (UTC); before it no value is given."""
        return self.times[0] if self.times else None

    def on_grid(
        self,
        starts: Sequence[datetime],
        column: str | None = None,
        *,
        how: str = "start",
        end: datetime | None = None,
    ) -> np.ndarray:
        """Values on intervals beginning at ``starts`` (aware datetimes, increasing).

        ``how="start"``: the value in force at each interval start (forward fill).
        ``how="min"``/``"max"``: the smallest/largest value in force at any time during the
        interval (the safe choice for a limit that changes inside a step); the last interval
        ends at ``end`` (default: a point interval).

        Returns an array ``(len(starts), len(columns))``, or ``(len(starts),)`` for one
        ``column``. NaN where no value is given (before a column's first value): check with
        ``np.isnan`` — the caller decides what "not given" means.
        """
        names = self.names if column is None else (column,)
        for n in names:
            if n not in self.columns:
                raise KeyError(f"{self.source}: no column {n!r} (have {', '.join(self.columns)})")
        s = np.array([_utc(t).timestamp() for t in starts], dtype=float)
        mat = (
            np.column_stack([self.columns[n] for n in names])
            if self.times
            else np.empty((0, len(names)), dtype=float)
        )
        out = np.full((len(s), len(names)), np.nan)
        idx = np.searchsorted(self._epoch_s, s, side="right") - 1
        ok = idx >= 0
        out[ok] = mat[idx[ok]]
        if how in ("min", "max") and len(s):
            e = np.append(s[1:], _utc(end).timestamp() if end is not None else s[-1])
            last = np.searchsorted(self._epoch_s, e, side="left") - 1  # last row starting before end
            reduce = np.fmin if how == "min" else np.fmax
            for i in np.nonzero(last > idx)[0]:
                block = mat[max(idx[i], 0) : last[i] + 1]
                out[i] = reduce.reduce(np.vstack([out[i : i + 1], block]), axis=0)
        elif how != "start":
            raise ValueError(f"how must be 'start', 'min' or 'max', got {how!r}")
        return out[:, 0] if column is not None else out

    def to_signals(self, starts: Sequence[datetime]) -> Signals:
        """Price and CO2 columns on the grid as :class:`models.Signals` (others ignored).

        Raises :class:`InputError` when a grid step has no value (the grid begins before the
        column's first value).
        """
        got: dict[str, np.ndarray] = {}
        for name in ("price_eur_per_mwh", "co2_g_per_kwh"):
            if name in self.columns:
                v = self.on_grid(starts, name)
                if np.isnan(v).any():
                    i = int(np.argmax(np.isnan(v)))
                    raise InputError(
                        self.source, None, name, f"no value at {starts[i].isoformat()} (before its first row)"
                    )
                got[name] = v
        return Signals(**got)


def _read_step_csv(
    path: str | os.PathLike[str],
    *,
    value_columns: Sequence[str],
    need_all: bool,
    minimum: Mapping[str, float] | None = None,
) -> StepSeries:
    file, header, rows = _csv_rows(
        path,
        required=("time", *value_columns) if need_all else ("time",),
        optional=() if need_all else value_columns,
        need_one_of=() if need_all else value_columns,
    )
    names = [h for h in header if h != "time"]
    minimum = minimum or {}
    times: list[datetime] = []
    values: dict[str, list[float]] = {n: [] for n in names}
    last: dict[str, float] = dict.fromkeys(names, math.nan)
    prev_line = 0
    for line, rec in rows:
        t = _parse_time(rec["time"], file, line, "time")
        if times and t <= times[-1]:
            what = "duplicate time" if t == times[-1] else "time goes backwards"
            raise InputError(
                file,
                line,
                "time",
                f"{what}: {t.isoformat()} after {times[-1].isoformat()} (line {prev_line})",
            )
        times.append(t)
        prev_line = line
        for n in names:
            text = rec[n]
            if text == "":
                if need_all:
                    raise InputError(file, line, n, "empty cell")
            else:
                last[n] = _parse_float(text, file, line, n, minimum=minimum.get(n))
            values[n].append(last[n])
    if not times:
        raise InputError(file, None, None, "no data rows")
    return StepSeries(tuple(times), {n: np.array(v) for n, v in values.items()}, source=file)


def load_signals(path: str | os.PathLike[str]) -> StepSeries:
    """Read a signals CSV: ``time`` and any of :data:`SIGNAL_COLUMNS`.

    ``time`` is the start of the interval (ISO 8601 with offset; rows strictly increasing); a
    value holds until the next row. An **empty cell means "no change"**: the column keeps its
    previous value (so one file can carry an hourly price and a limit that changes twice a day).
    Before a column's first value it is not given (NaN from :meth:`StepSeries.on_grid`).
    ``co2_g_per_kwh`` [g/kWh] and ``max_current_a`` [A per phase] must be >= 0;
    ``price_eur_per_mwh`` [EUR/MWh] may be negative. Every number must be finite (to lift a
    grid-operator limit, write the connection's own limit).
    """
    return _read_step_csv(
        path,
        value_columns=SIGNAL_COLUMNS,
        need_all=False,
        minimum={"co2_g_per_kwh": 0.0, "max_current_a": 0.0},
    )


def load_base_load(path: str | os.PathLike[str]) -> StepSeries:
    """Read a base-load CSV: ``time, l1_a, l2_a, l3_a``, inflexible load per grid phase [A].

    Every cell is required; values may be negative (local generation feeding in).
    """
    return _read_step_csv(path, value_columns=BASE_LOAD_COLUMNS, need_all=True)


#: Base load is a step series with columns :data:`BASE_LOAD_COLUMNS`.
BaseLoad = StepSeries


def _write_step_csv(series: StepSeries, path: str | os.PathLike[str], names: Sequence[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["time", *names])
        cols = [series.columns[n] for n in names]
        prev: list[float] = [math.nan] * len(names)
        for i, t in enumerate(series.times):
            cells: list[str] = [t.isoformat()]
            for j, c in enumerate(cols):
                v = float(c[i])
                same = v == prev[j] or (math.isnan(v) and math.isnan(prev[j]))
                cells.append("" if math.isnan(v) or (same and i > 0) else repr(v))
                prev[j] = v
            w.writerow(cells)


def write_signals_csv(series: StepSeries, path: str | os.PathLike[str]) -> None:
    """Write the contract signals CSV; a value equal to the row before is left empty ("no change")."""
    names = [n for n in SIGNAL_COLUMNS if n in series.columns]
    if not names:
        raise ValueError(f"no signal columns in {series.names}; expected any of {SIGNAL_COLUMNS}")
    _write_step_csv(series, path, names)


def write_base_load_csv(series: StepSeries, path: str | os.PathLike[str]) -> None:
    """Write a base-load CSV (``time, l1_a, l2_a, l3_a`` [A]), every cell filled."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["time", *BASE_LOAD_COLUMNS])
        cols = [series.columns[n] for n in BASE_LOAD_COLUMNS]
        for i, t in enumerate(series.times):
            w.writerow([t.isoformat(), *(repr(round(float(c[i]), 3)) for c in cols)])


# --------------------------------------------------------------------------------------------
# Site TOML


@dataclass(frozen=True)
class SiteConfig:
    """A site file, loaded.

    Parameters
    ----------
    site : models.Site
    passwords : dict str -> str
        Charge point id -> plaintext password, for points that set one (hash it before storing).
    base_load : StepSeries or None
        Inflexible load per grid phase [A] (columns ``l1_a, l2_a, l3_a``), if the file names one.
    path : Path
        The site file.
    max_unbalance_a : float or None
        Largest allowed difference between phase currents at the connection [A], if set.
    """

    site: Site
    passwords: dict[str, str]
    base_load: StepSeries | None
    path: Path
    max_unbalance_a: float | None = None


_SITE_KEYS = ("id", "voltage_v", "max_current_a", "base_load", "max_unbalance_a")
_GROUP_KEYS = ("id", "max_current_a", "parent")
_CP_KEYS = (
    "id",
    "group",
    "connectors",
    "phases",
    "phase_rotation",
    "max_current_a",
    "min_current_a",
    "password",
)


class _Toml:
    """Typed access to one TOML table with errors naming ``file: table.key``."""

    def __init__(self, file: str, where: str, table: Any, allowed: Sequence[str]) -> None:
        self.file, self.where = file, where
        if not isinstance(table, dict):
            raise InputError(file, None, where, f"expected a table, got {type(table).__name__}")
        for key in table:
            if key not in allowed:
                raise InputError(
                    file,
                    None,
                    self.f(key),
                    f"unknown key{_suggest(key, allowed)}; allowed: {', '.join(allowed)}",
                )
        self.table = table

    def f(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def err(self, key: str, message: str) -> InputError:
        return InputError(self.file, None, self.f(key), message)

    def has(self, key: str) -> bool:
        return key in self.table

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        if key not in self.table:
            if required:
                raise self.err(key, "required key missing")
            return default
        v = self.table[key]
        if not isinstance(v, str) or not v.strip():
            raise self.err(key, f"must be a non-empty string, got {v!r}")
        return v

    def number(self, key: str, default: float | None = None, *, required: bool = False) -> float | None:
        if key not in self.table:
            if required:
                raise self.err(key, "required key missing")
            return default
        return self._num(key, self.table[key])

    def _num(self, key: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.err(key, f"must be a number, got {v!r}")
        if not math.isfinite(v):
            raise self.err(key, f"must be finite, got {v!r}")
        return float(v)

    def integer(self, key: str, default: int) -> int:
        v = self.table.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.err(key, f"must be an integer, got {v!r}")
        return v

    def per_phase(self, key: str) -> float | tuple[float, float, float]:
        if key not in self.table:
            raise self.err(key, "required key missing")
        v = self.table[key]
        if isinstance(v, list):
            if len(v) != 3:
                raise self.err(key, f"expected one number or 3 per-phase numbers, got {len(v)}")
            a, b, c = (self._num(f"{key}[{i}]", x) for i, x in enumerate(v))
            return (a, b, c)
        return self._num(key, v)


def _toml_line(err: tomllib.TOMLDecodeError) -> int | None:
    m = re.search(r"at line (\d+)", str(err))
    return int(m.group(1)) if m else None


def load_site(path: str | os.PathLike[str]) -> SiteConfig:
    """Read a site TOML (contract format) into a :class:`SiteConfig`.

    Unknown keys are errors (with a suggestion for a near miss). Array entries are named by
    0-based index: ``charge_points[2].phases`` is the third ``[[charge_points]]`` table. The
    optional ``base_load`` CSV is read relative to the TOML file.
    """
    p = Path(path)
    file = str(path)
    try:
        with open(p, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise InputError(file, None, None, "file not found") from None
    except IsADirectoryError:
        raise InputError(file, None, None, "is a directory, expected a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(file, _toml_line(e), None, f"not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise InputError(file, None, None, f"not UTF-8 text: {e}") from None

    top = _Toml(file, "", raw, ("site", "groups", "charge_points"))
    if "site" not in raw:
        raise InputError(file, None, "site", "required table [site] missing")
    st = _Toml(file, "site", raw["site"], _SITE_KEYS)
    site_id = st.string("id", required=True)
    voltage_v = st.number("voltage_v", required=True)
    assert voltage_v is not None  # required
    if voltage_v <= 0:
        raise st.err("voltage_v", f"must be > 0, got {voltage_v:g}")
    site_max = st.per_phase("max_current_a")
    for i, v in enumerate(site_max if isinstance(site_max, tuple) else (site_max,)):
        if v < 0:
            raise st.err(
                "max_current_a" + (f"[{i}]" if isinstance(site_max, tuple) else ""),
                f"must be >= 0, got {v:g}",
            )
    max_unbalance_a = st.number("max_unbalance_a")
    if max_unbalance_a is not None and max_unbalance_a < 0:
        raise st.err("max_unbalance_a", f"must be >= 0, got {max_unbalance_a:g}")

    groups: list[Node] = []
    group_index: dict[str, int] = {}
    raw_groups = raw.get("groups", [])
    if not isinstance(raw_groups, list):
        raise top.err("groups", "expected an array of tables [[groups]]")
    for i, tbl in enumerate(raw_groups):
        g = _Toml(file, f"groups[{i}]", tbl, _GROUP_KEYS)
        gid = g.string("id", required=True)
        assert gid is not None
        if gid == ROOT:
            raise g.err("id", f"{ROOT!r} is the connection point itself; choose another id")
        if gid in group_index:
            raise g.err("id", f"duplicate group id {gid!r} (also groups[{group_index[gid]}])")
        group_index[gid] = i
        limit = g.per_phase("max_current_a")
        try:
            groups.append(Node(gid, limit, g.string("parent", ROOT)))
        except ProblemError as e:
            raise InputError(file, None, g.f(e.field.rsplit(".", 1)[-1]), e.message) from None
    for i, node in enumerate(groups):
        if node.parent != ROOT and node.parent not in group_index:
            known = ", ".join([ROOT, *group_index])
            raise InputError(
                file, None, f"groups[{i}].parent", f"unknown group {node.parent!r} (known: {known})"
            )

    cps: list[ChargePoint] = []
    passwords: dict[str, str] = {}
    cp_index: dict[str, int] = {}
    raw_cps = raw.get("charge_points", [])
    if not isinstance(raw_cps, list):
        raise top.err("charge_points", "expected an array of tables [[charge_points]]")
    for i, tbl in enumerate(raw_cps):
        c = _Toml(file, f"charge_points[{i}]", tbl, _CP_KEYS)
        cid = c.string("id", required=True)
        assert cid is not None
        if cid in cp_index:
            raise c.err("id", f"duplicate charge point id {cid!r} (also charge_points[{cp_index[cid]}])")
        cp_index[cid] = i
        node_id = c.string("group", ROOT)
        if node_id != ROOT and node_id not in group_index:
            known = ", ".join([ROOT, *group_index])
            raise c.err("group", f"unknown group {node_id!r} (known: {known})")
        phases = c.integer("phases", 3)
        if phases not in (1, 3):
            raise c.err("phases", f"must be 1 or 3, got {phases}")
        connectors = c.integer("connectors", 1)
        if connectors < 1:
            raise c.err("connectors", f"must be >= 1, got {connectors}")
        rotation = c.string("phase_rotation", "L1L2L3")
        if rotation not in ROTATIONS:
            raise c.err("phase_rotation", f"must be one of {', '.join(ROTATIONS)}, got {rotation!r}")
        try:
            cps.append(
                ChargePoint(
                    id=cid,
                    node_id=node_id or ROOT,
                    phases=phases,
                    phase_rotation=rotation or "L1L2L3",
                    max_current_a=c.number("max_current_a", 16.0),
                    min_current_a=c.number("min_current_a", 6.0),
                    connectors=connectors,
                )
            )
        except ProblemError as e:
            raise InputError(file, None, c.f(e.field.rsplit(".", 1)[-1]), e.message) from None
        if c.has("password"):
            pw = c.string("password")
            assert pw is not None
            passwords[cid] = pw

    try:
        site = Site(
            id=site_id or "",
            voltage_v=voltage_v,
            max_current_a=site_max,
            groups=tuple(groups),
            charge_points=tuple(cps),
        )
    except ProblemError as e:
        raise InputError.from_problem(file, e) from None

    base_load = None
    rel = st.string("base_load")
    if rel is not None:
        bl_path = p.parent / rel
        if not bl_path.is_file():
            raise st.err("base_load", f"file not found: {str(bl_path)!r}")
        base_load = load_base_load(bl_path)
    return SiteConfig(
        site=site, passwords=passwords, base_load=base_load, path=p, max_unbalance_a=max_unbalance_a
    )


# --------------------------------------------------------------------------------------------
# Sessions CSV


def _check_overlaps(
    file: str, sessions: Sequence[Session], lines: Sequence[int], connectors: Mapping[str, int]
) -> None:
    """Reject more EVs plugged in at once at a station than it has connectors."""
    by_station: dict[str, list[int]] = {}
    for i, s in enumerate(sessions):
        by_station.setdefault(s.charge_point_id, []).append(i)
    for station, idx in by_station.items():
        n_conn = connectors.get(station, 1)
        idx.sort(key=lambda i: (sessions[i].arrival, lines[i]))
        present: list[int] = []  # sessions still plugged in
        for i in idx:
            s = sessions[i]
            present = [j for j in present if sessions[j].departure > s.arrival]  # touching is fine
            if len(present) >= n_conn:
                j = max(present, key=lambda j: sessions[j].departure)
                other = sessions[j]
                raise InputError(
                    file,
                    lines[i],
                    "arrival",
                    f"station {station!r} has {n_conn} connector(s) but session {other.id!r} "
                    f"(line {lines[j]}) is plugged in until {other.departure.isoformat()}, "
                    f"after this arrival {s.arrival.isoformat()}",
                )
            present.append(i)


def load_sessions(path: str | os.PathLike[str], site: Site | None = None) -> list[Session]:
    """Read a sessions CSV (contract format) into :class:`models.Session` objects, file order.

    Columns ``session_id, station_id, arrival, departure, energy_kwh`` (required) and
    ``max_power_kw, phases`` (optional; an empty cell = the charge point's), plus ``priority``
    (optional, default 1: weight of the session's unmet energy). Checked, each naming file, line
    and column: ISO 8601 times with UTC offset, departure after arrival, ``energy_kwh`` >= 0
    [kWh], ``max_power_kw`` > 0 [kW], ``phases`` 1 or 3, unique session ids; and with ``site``:
    known stations, and never more EVs plugged in at a station at once than its ``connectors``
    (without ``site`` every station is taken to have one connector).
    """
    file, _header, rows = _csv_rows(path, required=SESSION_COLUMNS, optional=SESSION_OPTIONAL_COLUMNS)
    cps = {cp.id: cp for cp in site.charge_points} if site is not None else None
    sessions: list[Session] = []
    lines: list[int] = []
    first_line: dict[str, int] = {}
    for line, rec in rows:
        sid = rec["session_id"]
        if not sid:
            raise InputError(file, line, "session_id", "empty")
        if sid in first_line:
            raise InputError(
                file, line, "session_id", f"duplicate session id {sid!r} (line {first_line[sid]})"
            )
        station = rec["station_id"]
        if not station:
            raise InputError(file, line, "station_id", "empty")
        if cps is not None and station not in cps:
            known = ", ".join(sorted(cps)[:10]) + (", ..." if len(cps) > 10 else "")
            raise InputError(
                file,
                line,
                "station_id",
                f"unknown station {station!r}{_suggest(station, list(cps))}; known: {known}",
            )
        arrival = _parse_time(rec["arrival"], file, line, "arrival")
        departure = _parse_time(rec["departure"], file, line, "departure")
        if departure <= arrival:
            raise InputError(
                file,
                line,
                "departure",
                f"not after arrival: {departure.isoformat()} <= {arrival.isoformat()}",
            )
        energy = _parse_float(rec["energy_kwh"], file, line, "energy_kwh", minimum=0.0)
        text = rec.get("max_power_kw", "")
        max_power = _parse_float(text, file, line, "max_power_kw", positive=True) if text else None
        text = rec.get("phases", "")
        phases = None
        if text:
            if text not in ("1", "3"):
                raise InputError(file, line, "phases", f"must be 1 or 3, got {text!r}")
            phases = int(text)
        text = rec.get("priority", "")
        priority = _parse_float(text, file, line, "priority", minimum=0.0) if text else 1.0
        try:
            s = Session(sid, station, arrival, departure, energy, max_power, phases, priority)
        except ProblemError as e:  # should not happen after the checks above; keep the where
            raise InputError(file, line, e.field.rsplit(".", 1)[-1], e.message) from None
        first_line[sid] = line
        sessions.append(s)
        lines.append(line)
    connectors = {cid: cp.connectors for cid, cp in cps.items()} if cps is not None else {}
    _check_overlaps(file, sessions, lines, connectors)
    return sessions


def write_sessions_csv(sessions: Sequence[Session], path: str | os.PathLike[str]) -> None:
    """Write sessions in the contract CSV format (UTC times); :func:`load_sessions` reads it back.

    ``max_power_kw`` and ``phases`` columns are written when any session sets them (empty cell
    = the charge point's); ``priority`` only when any session has one other than 1.
    """
    optional = [
        c
        for c, used in (
            ("max_power_kw", any(s.max_power_kw is not None for s in sessions)),
            ("phases", any(s.phases is not None for s in sessions)),
            ("priority", any(s.priority != 1.0 for s in sessions)),
        )
        if used
    ]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow([*SESSION_COLUMNS, *optional])
        for s in sessions:
            row = [
                s.id,
                s.charge_point_id,
                s.arrival.isoformat(),
                s.departure.isoformat(),
                repr(float(s.energy_kwh)),
            ]
            for c in optional:
                v = getattr(s, c)
                row.append("" if v is None else (str(v) if c == "phases" else repr(float(v))))
            w.writerow(row)


# --------------------------------------------------------------------------------------------
# Public data sets


def resolve_overlaps(
    sessions: Sequence[Session], connectors: Mapping[str, int] | None = None, *, source: str = ""
) -> list[Session]:
    """Make sessions fit their stations' connectors (default 1), for public data sets.

    A session that arrives while every connector of its station is taken has its arrival moved
    to the earliest departure among them (the EV waits for the connector); if nothing of its
    stay is left it is dropped. Counts are logged as a warning. Order: by arrival.
    """
    connectors = connectors or {}
    out: list[Session] = []
    shifted = dropped = 0
    present: dict[str, list[datetime]] = {}  # departures of sessions plugged in, per station
    for s in sorted(sessions, key=lambda s: (s.arrival, s.id)):
        n = connectors.get(s.charge_point_id, 1)
        deps = [d for d in present.get(s.charge_point_id, []) if d > s.arrival]
        if len(deps) >= n:
            free_at = sorted(deps)[len(deps) - n]
            if free_at >= s.departure:
                dropped += 1
                continue
            shifted += 1
            deps = [d for d in deps if d > free_at]
            s = Session(
                s.id,
                s.charge_point_id,
                free_at,
                s.departure,
                s.energy_kwh,
                s.max_power_kw,
                s.phases,
                s.priority,
            )
        present[s.charge_point_id] = [*deps, s.departure]
        out.append(s)
    if shifted or dropped:
        log.warning(
            "%s: %d session(s) overlapped an earlier one on a full station: %d shifted to start "
            "when a connector freed, %d dropped",
            source or "sessions",
            shifted + dropped,
            shifted,
            dropped,
        )
    return out


def _aware_bound(t: datetime | str | None, name: str) -> Any:
    import pandas as pd

    if t is None:
        return None
    ts = pd.Timestamp(t)
    if ts.tzinfo is None:
        raise ValueError(f"{name}={t!r}: give a timezone-aware time")
    return ts.tz_convert("UTC")


def load_acn(
    path: str | os.PathLike[str],
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    *,
    energy: str = "delivered",
    drop_zero_energy: bool = False,
) -> list[Session]:
    """Sessions of an ACN-Data export (``acn/*.csv.gz``; Lee, Li, Low 2019, e-Energy '19).

    Parameters
    ----------
    path : path
        Columns ``arrival, departure, requested_energy (kWh), delivered_energy (kWh),
        station_id, session_id, estimated_departure, claimed``; times carry a UTC offset.
    start, end : datetime or ISO string with offset, optional
        Keep sessions whose arrival is in ``[start, end)``.
    energy : ``"delivered"`` or ``"requested"``
        ``delivered`` (default; what ACN-Sim uses as the demand, the only figure known for every
        session) or the driver's ``requested`` figure, which unclaimed sessions lack: they fall
        back to delivered.
    drop_zero_energy : bool
        Drop sessions with no energy. Off by default: such an EV still occupies its station.

    Session ids are the ACN ``session_id``. Sessions overlapping on a station are resolved by
    :func:`resolve_overlaps` (none occur in the Caltech and JPL May-August 2019 files).
    """
    import pandas as pd

    if energy not in ("delivered", "requested"):
        raise ValueError(f"energy must be 'delivered' or 'requested', got {energy!r}")
    file = str(path)
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise InputError(file, None, None, "file not found") from None
    need = ["arrival", "departure", "delivered_energy (kWh)", "station_id", "session_id"]
    if energy == "requested":
        need.append("requested_energy (kWh)")
    for c in need:
        if c not in df.columns:
            raise InputError(file, 1, c, f"required column missing (header: {', '.join(df.columns)})")
    for c in ("arrival", "departure"):
        try:
            df[c] = pd.to_datetime(df[c], utc=True, format="ISO8601")
        except (ValueError, TypeError) as e:
            raise InputError(file, None, c, f"unparseable time: {e}") from None
    lo, hi = _aware_bound(start, "start"), _aware_bound(end, "end")
    if lo is not None:
        df = df[df["arrival"] >= lo]
    if hi is not None:
        df = df[df["arrival"] < hi]
    e = df["delivered_energy (kWh)"].astype(float)
    if energy == "requested":
        e = df["requested_energy (kWh)"].astype(float).fillna(e)
    df = df.assign(_e=e)
    bad = df[~np.isfinite(df["_e"]) | (df["_e"] < 0) | (df["departure"] <= df["arrival"])]
    if len(bad):
        log.warning("%s: %d session(s) with no energy figure or no stay skipped", file, len(bad))
        df = df.drop(bad.index)
    if drop_zero_energy:
        df = df[df["_e"] > 0]
    sessions = [
        Session(str(sid), str(st), a.to_pydatetime(), d.to_pydatetime(), float(en))
        for sid, st, a, d, en in zip(
            df["session_id"], df["station_id"], df["arrival"], df["departure"], df["_e"], strict=True
        )
    ]
    return resolve_overlaps(sessions, source=file)


def acn_site(
    sessions: Sequence[Session],
    *,
    max_current_a: float | tuple[float, float, float] = 30.0,
    point_max_current_a: float = 32.0,
    min_current_a: float = 6.0,
    voltage_v: float = 230.0,
    phases: int = 1,
    site_id: str = "acn",
) -> Site:
    """A site for ACN sessions: one point per station id, all at the connection.

    Points get ``phases`` (default 1) and rotations round-robin over the sorted station ids
    (L1L2L3, L2L3L1, L3L1L2) so 1-phase points spread over the three grid phases.
    ``max_current_a`` is the per-phase connection limit [A]; ``point_max_current_a`` and
    ``min_current_a`` the point's pilot range [A] (32 A: the Caltech EVSEs; 6 A: IEC 61851).
    ``voltage_v`` [V] is phase-to-neutral: we model the points as 1-phase on 230 V; ACN-Sim
    uses 208 V line-to-line (120 V for some Caltech points), so energies per ampere differ by
    208/230 from ACN-Sim's — pass ``voltage_v=208.0`` to match it.
    """
    rotations = tuple(ROTATIONS)
    stations = sorted({s.charge_point_id for s in sessions})
    cps = tuple(
        ChargePoint(
            sid,
            ROOT,
            phases,
            rotations[i % 3],
            point_max_current_a,
            min_current_a,
        )
        for i, sid in enumerate(stations)
    )
    return Site(site_id, voltage_v, max_current_a, (), cps)


#: Trondheim garages: local time of the data set.
TRONDHEIM_TZ = "Europe/Oslo"


def _oslo_to_utc(series: Any, file: str, column: str) -> tuple[Any, int, int]:
    """Local ``dd.mm.yyyy HH:MM`` (Europe/Oslo) to UTC.

    Clock change: a time in the hour that repeats in October is taken as the first (summer
    time) occurrence; a time in the hour skipped in March is moved forward to the first valid
    minute. Returns the converted series and counts of ambiguous and non-existent times.
    """
    import pandas as pd

    naive = pd.to_datetime(series, format="%d.%m.%Y %H:%M", errors="coerce")
    bad = series[naive.isna() & series.notna()]
    if len(bad):
        raise InputError(file, int(bad.index[0]) + 2, column, f"not dd.mm.yyyy HH:MM: {bad.iloc[0]!r}")
    nat = pd.Series(pd.NaT, index=series.index, dtype="datetime64[ns, Europe/Oslo]")
    strict = naive.dt.tz_localize(TRONDHEIM_TZ, ambiguous="NaT", nonexistent="NaT")
    loose = naive.dt.tz_localize(TRONDHEIM_TZ, ambiguous=True, nonexistent="shift_forward")
    problem = strict.isna() & naive.notna()
    n_nonexistent = int((problem & (loose.dt.tz_localize(None) != naive)).sum())
    n_ambiguous = int(problem.sum()) - n_nonexistent
    out = loose.where(naive.notna(), nat)
    return out.dt.tz_convert("UTC"), n_ambiguous, n_nonexistent


def load_trondheim(
    path: str | os.PathLike[str],
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    *,
    point_phases: int = 1,
    point_max_current_a: float = 32.0,
    min_current_a: float = 6.0,
    voltage_v: float = 230.0,
    garage_max_current_a: float | None = None,
    site_max_current_a: float | None = None,
    site_id: str = "trondheim",
) -> tuple[Site, list[Session]]:
    """Residential garage charging in Trondheim (Sorensen et al. 2021, Data in Brief 36, 107105).

    Mapping: one site; one group per garage (``Garage_ID``); one charge point per private user
    (``User_ID``: their own charger) and per shared charger (``Shared_ID``), in its garage.
    ``El_kWh`` (energy *delivered*; the data set records no request) is the session's energy
    [kWh]. Times are local Europe/Oslo, converted to UTC (see :func:`_oslo_to_utc` for the clock
    changes). Sessions without an end time, or whose end is not after the start, are skipped
    and counted in a log line; overlaps on one charger go through :func:`resolve_overlaps`.
    ``start``/``end`` (aware) keep sessions arriving in ``[start, end)``.

    The data set has no grid data: points are ``point_phases`` (default 1; most Norwegian
    garage chargers) x ``point_max_current_a`` [A] on ``voltage_v`` [V], rotations round-robin
    per garage; a garage limit ``garage_max_current_a`` and a connection limit
    ``site_max_current_a`` [A per phase] default to the sum of the point maxima on the
    busiest phase (i.e. not binding) — set them to study a constraint.
    """
    import pandas as pd

    file = str(path)
    try:
        df = pd.read_csv(path, sep=";", dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise InputError(file, None, None, "file not found") from None
    need = [
        "session_ID",
        "Garage_ID",
        "User_ID",
        "User_type",
        "Shared_ID",
        "Start_plugin",
        "End_plugout",
        "El_kWh",
    ]
    for c in need:
        if c not in df.columns:
            raise InputError(file, 1, c, f"required column missing (header: {', '.join(df.columns)})")
    df = df.replace({"NA": None, "": None})
    missing_end = df["End_plugout"].isna()
    arrival, amb_a, non_a = _oslo_to_utc(df["Start_plugin"], file, "Start_plugin")
    departure, amb_d, non_d = _oslo_to_utc(df["End_plugout"], file, "End_plugout")
    energy = pd.to_numeric(df["El_kWh"].str.replace(",", ".", regex=False), errors="coerce")
    bad_e = energy.isna() | (energy < 0)
    if bad_e.any():
        i = int(np.argmax(bad_e.to_numpy()))
        raise InputError(file, i + 2, "El_kWh", f"not a number >= 0: {df['El_kWh'].iloc[i]!r}")
    shared = df["User_type"] == "Shared"
    point = df["User_ID"].where(~shared, df["Shared_ID"])
    if point.isna().any():
        i = int(np.argmax(point.isna().to_numpy()))
        raise InputError(file, i + 2, "Shared_ID" if shared.iloc[i] else "User_ID", "empty")
    df = df.assign(_arr=arrival, _dep=departure, _e=energy, _cp=point)
    no_stay = ~missing_end & (df["_dep"] <= df["_arr"])
    keep = ~missing_end & ~no_stay
    lo, hi = _aware_bound(start, "start"), _aware_bound(end, "end")
    if lo is not None:
        keep &= df["_arr"] >= lo
    if hi is not None:
        keep &= df["_arr"] < hi
    log.info(
        "%s: %d sessions; skipped %d without end time, %d ending at or before their start; "
        "clock change: %d ambiguous, %d non-existent local times",
        file,
        len(df),
        int(missing_end.sum()),
        int(no_stay.sum()),
        amb_a + amb_d,
        non_a + non_d,
    )
    # every charger of the data set becomes a point, even if no session of [start, end) uses it
    garage_of: dict[str, str] = {}
    for cp, garage in zip(df["_cp"], df["Garage_ID"], strict=True):
        garage_of.setdefault(cp, garage)
    rotations = tuple(ROTATIONS)
    by_garage: dict[str, list[str]] = {}
    for cp in sorted(garage_of):
        by_garage.setdefault(garage_of[cp], []).append(cp)
    cps: list[ChargePoint] = []
    groups: list[Node] = []
    per_phase_total = 0.0
    for garage in sorted(by_garage):
        members = by_garage[garage]
        load = np.zeros(3)
        for i, cp in enumerate(members):
            rot = rotations[i % 3]
            cps.append(ChargePoint(cp, garage, point_phases, rot, point_max_current_a, min_current_a))
            for ph in ROTATIONS[rot][:point_phases]:
                load[ph] += point_max_current_a
        groups.append(Node(garage, garage_max_current_a if garage_max_current_a is not None else load.max()))
        per_phase_total += load.max()
    site = Site(
        site_id,
        voltage_v,
        site_max_current_a if site_max_current_a is not None else per_phase_total,
        tuple(groups),
        tuple(cps),
    )
    d = df[keep]
    sessions = [
        Session(str(sid), str(cp), a.to_pydatetime(), b.to_pydatetime(), float(e))
        for sid, cp, a, b, e in zip(d["session_ID"], d["_cp"], d["_arr"], d["_dep"], d["_e"], strict=True)
    ]
    return site, resolve_overlaps(sessions, source=file)


_ENERGY_CHARTS_COLUMNS = {
    "price": "price_eur_per_mwh",
    "solar": "solar_mw",
    "wind_onshore": "wind_onshore_mw",
    "wind_offshore": "wind_offshore_mw",
    "load": "load_mw",
}


def load_energy_charts(path: str | os.PathLike[str]) -> Any:
    """Hourly German data from Fraunhofer ISE Energy-Charts (CC BY 4.0), as a pandas DataFrame.

    Index: hour start, UTC (the file's ``time`` has no offset but runs evenly through both clock
    changes, so it is read as UTC). Columns: ``price_eur_per_mwh`` (day-ahead DE-LU [EUR/MWh],
    may be negative), ``solar_mw``, ``wind_onshore_mw``, ``wind_offshore_mw``, ``load_mw`` [MW].
    """
    import pandas as pd

    file = str(path)
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise InputError(file, None, None, "file not found") from None
    for c in ("time", *_ENERGY_CHARTS_COLUMNS):
        if c not in df.columns:
            raise InputError(file, 1, c, f"required column missing (header: {', '.join(df.columns)})")
    idx = pd.to_datetime(df["time"], format="%Y-%m-%d %H:%M:%S", errors="coerce")
    if idx.isna().any():
        i = int(np.argmax(idx.isna().to_numpy()))
        raise InputError(file, i + 2, "time", f"not 'YYYY-MM-DD HH:MM:SS': {df['time'].iloc[i]!r}")
    out = df[list(_ENERGY_CHARTS_COLUMNS)].rename(columns=_ENERGY_CHARTS_COLUMNS).astype(float)
    out.index = pd.DatetimeIndex(idx.dt.tz_localize("UTC"), name="time")
    if not out.index.is_monotonic_increasing or out.index.has_duplicates:
        raise InputError(file, None, "time", "hours not strictly increasing")
    return out


#: UBA (Umweltbundesamt), "Entwicklung der spezifischen Treibhausgas-Emissionen des deutschen
#: Strommix", Climate Change series: about 380 g CO2/kWh for 2023 (433 in 2022).
UBA_2023_G_PER_KWH = 380.0


def co2_from_residual_load(
    df: Any, mean_g_per_kwh: float = UBA_2023_G_PER_KWH, *, floor_g_per_kwh: float = 20.0
) -> Any:
    """Hourly CO2 intensity of German grid electricity [g/kWh], **estimated** from residual load.

    Method: the hour's emissions are taken proportional to the residual load
    ``r = load - wind_onshore - wind_offshore - solar`` [MW] (the part thermal plants and
    imports must cover), so intensity ``= k * max(r, 0) / load``, and never below
    ``floor_g_per_kwh`` (biomass, life-cycle emissions of renewables). ``k`` is chosen so that
    the **load-weighted mean over the data equals** ``mean_g_per_kwh``: the UBA figure for
    German electricity in 2023, about 380 g/kWh (Umweltbundesamt, Climate Change series on the
    emission factor of the German power mix; 433 g/kWh in 2022).

    This is an estimate, not a measurement: it ignores the fuel mix of the thermal residual
    (lignite vs gas), hydro, nuclear (until April 2023) and cross-border flows, and gives
    average, not marginal, intensity. It gets the timing right — low when wind and sun are
    high — which is what a scheduler needs to shift charging.

    Parameters
    ----------
    df : DataFrame
        From :func:`load_energy_charts` (``load_mw``, ``wind_onshore_mw``, ``wind_offshore_mw``,
        ``solar_mw`` [MW]).
    mean_g_per_kwh : float
        Target load-weighted mean [g/kWh].
    floor_g_per_kwh : float
        Smallest hourly intensity [g/kWh].

    Returns
    -------
    Series ``co2_g_per_kwh`` on ``df``'s index.
    """
    import pandas as pd

    load = df["load_mw"].to_numpy(dtype=float)
    resid = (
        load
        - df["wind_onshore_mw"].to_numpy()
        - df["wind_offshore_mw"].to_numpy()
        - df["solar_mw"].to_numpy()
    )
    share = np.clip(resid, 0.0, None) / np.where(load > 0, load, np.nan)
    share = np.nan_to_num(share, nan=0.0)
    if not floor_g_per_kwh < mean_g_per_kwh:
        raise ValueError(f"floor_g_per_kwh {floor_g_per_kwh} must be below mean_g_per_kwh {mean_g_per_kwh}")
    w = load / load.sum()

    def weighted_mean(k: float) -> float:
        return float(np.sum(w * np.maximum(k * share, floor_g_per_kwh)))

    lo, hi = 0.0, mean_g_per_kwh / max(float(np.sum(w * share)), 1e-9)  # weighted_mean(hi) >= target
    for _ in range(60):  # monotone in k: bisection
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if weighted_mean(mid) < mean_g_per_kwh else (lo, mid)
    k = 0.5 * (lo + hi)
    return pd.Series(np.maximum(k * share, floor_g_per_kwh), index=df.index, name="co2_g_per_kwh")


def energy_charts_signals(
    path: str | os.PathLike[str],
    start: datetime,
    end: datetime,
    *,
    source_start: datetime | None = None,
    mean_co2_g_per_kwh: float = UBA_2023_G_PER_KWH,
) -> StepSeries:
    """Hourly price [EUR/MWh] and estimated CO2 [g/kWh] signals for ``[start, end)`` (aware).

    Taken from the Energy-Charts hours beginning at ``source_start`` (default ``start``) and
    re-timed to ``start``: e.g. the ACN week of June 2019 with ``source_start`` =
    ``2023-06-05T07:00Z`` (a Monday, the same local hour) gets German 2023 signals aligned by
    weekday and hour. CO2 is :func:`co2_from_residual_load` over the whole file. Write it with
    :func:`write_signals_csv`.
    """
    import pandas as pd

    df = load_energy_charts(path)
    df = df.assign(co2_g_per_kwh=co2_from_residual_load(df, mean_co2_g_per_kwh))
    start, end = _utc(start), _utc(end)
    src = _utc(source_start) if source_start is not None else start
    lo = pd.Timestamp(src).floor("h")
    hi = lo + pd.Timedelta(end - start)
    part = df[(df.index >= lo) & (df.index < hi)]
    if part.empty or part.index[0] > lo:
        raise InputError(
            str(path),
            None,
            "time",
            f"no data at {lo.isoformat()} (file covers {df.index[0]} .. {df.index[-1]})",
        )
    shift = pd.Timestamp(start) - lo
    times = tuple((t + shift).to_pydatetime() for t in part.index)
    return StepSeries(
        times,
        {c: part[c].to_numpy() for c in ("price_eur_per_mwh", "co2_g_per_kwh")},
        source=str(path),
    )
