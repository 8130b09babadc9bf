"""The vocabulary of budgets: dimensions, usage, windows, limits, scopes and ledger records.

Everything here is frozen, pure and free of I/O. Amounts cross the API in natural units (``int``
counts, ``float`` seconds, ``Decimal`` dollars) and are stored as integers of a fixed *storage
unit* per dimension (one token, one microsecond, one nano-dollar), so that no backend ever adds a
float. Conversion to storage units rounds *up*: a charge is never under-counted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from functools import cached_property, lru_cache
from types import MappingProxyType
from typing import Literal, NamedTuple, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from budgeteer.errors import InvalidInput

Amount: TypeAlias = int | float | Decimal

# --------------------------------------------------------------------------------------------
# Dimensions


DIMENSIONS: tuple[str, ...] = (
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
    "requests",
    "tool_calls",
    "iterations",
    "agent_hops",
    "wall_time_s",
    "cpu_time_s",
    "storage_bytes",
    "cost_usd",
)
"""Every dimension a usage record and a limit can name, in display order."""

UNPRICED = "_unpriced"
"""A pseudo-dimension counted on each scope for every commit whose cost was unknown."""

_MICRO = 1_000_000
_NANO = 1_000_000_000

UNITS_PER: Mapping[str, int] = {
    **dict.fromkeys(DIMENSIONS, 1),
    "wall_time_s": _MICRO,
    "cpu_time_s": _MICRO,
    "cost_usd": _NANO,
}
"""Storage units per API unit: seconds are kept in microseconds and dollars in nano-dollars."""

MAX_UNITS = 2**53 - 1
"""The largest amount (and limit) in storage units: about 9e15 tokens, 285 years, or $9 million.

Every backend, including Redis' Lua (whose numbers are doubles), adds such integers exactly.
"""

_TIME_DIMENSIONS = frozenset({"wall_time_s", "cpu_time_s"})

COUNTER_PREFIX = "counter:"
"""Named counters (``"counter:<name>"``) are dimensions of their own: whole counts, one unit each.

They can be limited, held and charged through the rate limiters and the backends like any
dimension, but a ``Usage`` (whose fields are the fixed ``DIMENSIONS``) cannot carry them.
"""
_COUNTER = re.compile(r"counter:[a-z][a-z0-9_]{0,47}")


def is_counter(dimension: str) -> bool:
    """True for a well-formed named counter such as ``"counter:in_flight"``."""
    return isinstance(dimension, str) and _COUNTER.fullmatch(dimension) is not None


def check_dimension(dimension: str, field_name: str = "dimension") -> str:
    """Return ``dimension`` if it is known (or a named counter), else raise ``InvalidInput``."""
    if dimension not in UNITS_PER and not is_counter(dimension):
        raise InvalidInput(
            field_name,
            dimension,
            f"unknown dimension; use one of {DIMENSIONS} or a 'counter:<name>'",
        )
    return dimension


def to_units(dimension: str, amount: object, field_name: str | None = None) -> int:
    """Convert an API amount of ``dimension`` to integer storage units, rounding up.

    Raises:
        InvalidInput: for unknown dimensions, negatives, NaN, infinities, non-numbers,
            fractional counts and amounts above ``MAX_UNITS`` storage units.
    """
    name = field_name or dimension
    scale = UNITS_PER.get(dimension)
    if scale is None:
        if not is_counter(dimension):
            raise InvalidInput(name, dimension, f"unknown dimension; use one of {DIMENSIONS}")
        scale = 1
    if isinstance(amount, bool):
        raise InvalidInput(name, amount, "expected a number, not a bool")
    if isinstance(amount, int):
        return _check_range(name, amount, amount * scale)
    if isinstance(amount, float):
        if not math.isfinite(amount):
            raise InvalidInput(name, amount, "expected a finite number")
        exact = Decimal(repr(amount))
    elif isinstance(amount, Decimal | str):
        try:
            exact = Decimal(amount)
        except (InvalidOperation, ValueError):
            raise InvalidInput(name, amount, "expected a number") from None
        if not exact.is_finite():
            raise InvalidInput(name, amount, "expected a finite number")
    else:
        raise InvalidInput(name, amount, "expected an int, float, Decimal or numeric str")
    if exact < 0:
        raise InvalidInput(name, amount, "must not be negative")
    if exact > MAX_UNITS:
        raise InvalidInput(name, amount, _too_large(dimension))
    scaled = exact * scale
    if scale == 1 and scaled != scaled.to_integral_value():
        raise InvalidInput(name, amount, f"expected a whole number of {dimension}")
    return _check_range(name, amount, int(scaled.to_integral_value(rounding=ROUND_CEILING)))


def _check_range(name: str, amount: object, units: int) -> int:
    if units < 0:
        raise InvalidInput(name, amount, "must not be negative")
    if units > MAX_UNITS:
        raise InvalidInput(name, amount, _too_large(name))
    return units


def _too_large(dimension: str) -> str:
    limit = from_units(dimension, MAX_UNITS) if dimension in UNITS_PER else MAX_UNITS
    return f"absurdly large; the most one amount or limit can be is {limit}"


def from_units(dimension: str, units: int) -> Amount:
    """Convert integer storage units back to API units (``Decimal`` USD, ``float`` seconds)."""
    if dimension == "cost_usd":
        if not units:
            return Decimal(0)
        dollars = Decimal(units).scaleb(-9).normalize()
        # normalize() writes 100 as 1E+2; keep whole dollars in plain notation.
        return dollars.quantize(Decimal(1)) if dollars.as_tuple().exponent > 0 else dollars  # type: ignore[operator]
    if dimension in _TIME_DIMENSIONS:
        return units / _MICRO
    return units


# --------------------------------------------------------------------------------------------
# Usage


@dataclass(frozen=True, slots=True, repr=False)
class Usage:
    """Usage in every dimension at once: what a call, a tool or a run consumed or may consume.

    Token fields follow one normalisation, whatever the provider reports: ``input_tokens``
    *includes* the cached parts (``cache_read_tokens`` and ``cache_write_tokens`` are subsets of
    it, counted once), and ``output_tokens`` *includes* ``reasoning_tokens``. Anthropic reports
    input *excluding* cache: add the cache fields back before building a ``Usage``.
    """

    input_tokens: int = 0
    """Prompt tokens, including cached reads and cache writes."""
    cache_read_tokens: int = 0
    """The part of ``input_tokens`` read from the provider's prompt cache."""
    cache_write_tokens: int = 0
    """The part of ``input_tokens`` written to the provider's prompt cache."""
    output_tokens: int = 0
    """Completion tokens, including reasoning tokens."""
    reasoning_tokens: int = 0
    """The part of ``output_tokens`` spent on hidden reasoning (never added on top)."""
    total_tokens: int | None = None
    """``input_tokens + output_tokens`` unless given (an estimate may name only a total)."""
    requests: int = 0
    """Model requests (API calls)."""
    tool_calls: int = 0
    """Tool invocations."""
    iterations: int = 0
    """Agent loop iterations."""
    agent_hops: int = 0
    """Hand-offs to another agent or sub-agent."""
    wall_time_s: float = 0.0
    """Wall-clock seconds."""
    cpu_time_s: float = 0.0
    """CPU seconds."""
    storage_bytes: int = 0
    """Bytes written to storage."""
    cost_usd: Decimal | None = None
    """Cost in US dollars; ``None`` means unknown (never read as zero by reports)."""

    def __post_init__(self) -> None:
        cost: object = self.cost_usd
        if cost is not None and not isinstance(cost, Decimal):
            object.__setattr__(self, "cost_usd", _as_decimal("usage.cost_usd", cost))
        units: dict[str, int] = {}
        for name in DIMENSIONS:
            value = getattr(self, name)
            if value is not None and value != 0:
                amount = to_units(name, value, f"usage.{name}")
                if amount:
                    units[name] = amount
        get = units.get
        if get("cache_read_tokens", 0) + get("cache_write_tokens", 0) > get("input_tokens", 0):
            raise InvalidInput(
                "usage.cache_read_tokens",
                self.cache_read_tokens,
                "cached reads plus cache writes are part of input_tokens and cannot exceed it "
                f"({self.input_tokens}); add the cached parts to input_tokens first",
            )
        if get("reasoning_tokens", 0) > get("output_tokens", 0):
            raise InvalidInput(
                "usage.reasoning_tokens",
                self.reasoning_tokens,
                "reasoning tokens are part of output_tokens and cannot exceed it "
                f"({self.output_tokens})",
            )
        derived_total = get("input_tokens", 0) + get("output_tokens", 0)
        if derived_total > MAX_UNITS:
            raise InvalidInput("usage.total_tokens", derived_total, _too_large("total_tokens"))
        if self.total_tokens is None:
            if derived_total:
                units["total_tokens"] = derived_total
        elif get("total_tokens", 0) < derived_total:
            raise InvalidInput(
                "usage.total_tokens",
                self.total_tokens,
                f"smaller than input_tokens + output_tokens ({derived_total})",
            )
        object.__setattr__(self, "_units", units)
        # Unknown cost is flagged on every scope, so reports never show it as a true $0.
        charged = {**units, UNPRICED: 1} if self.cost_usd is None and units else units
        object.__setattr__(self, "_charged", charged)

    # Per-instance caches, set once in __post_init__: the storage-unit vector, and the vector a
    # commit records (with the UNPRICED flag when the cost is unknown).
    _units: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)
    _charged: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __repr__(self) -> str:
        parts = [
            f"{name}={getattr(self, name)!r}"
            for name in DIMENSIONS
            if name not in {"total_tokens", "cost_usd"} and getattr(self, name)
        ]
        if self.total_tokens is not None:
            parts.append(f"total_tokens={self.total_tokens!r}")
        if self.cost_usd is not None:
            parts.append(f"cost_usd={self.cost_usd!r}")
        return f"Usage({', '.join(parts)})"

    @property
    def units(self) -> Mapping[str, int]:
        """The non-zero dimensions of this usage in storage units (``total_tokens`` derived)."""
        return self._units

    @property
    def charged_units(self) -> Mapping[str, int]:
        """``units`` plus the ``UNPRICED`` flag when the cost is unknown: what a commit records."""
        return self._charged

    @property
    def tokens(self) -> int:
        """``total_tokens`` as charged (derived when not given)."""
        return self._units.get("total_tokens", 0)

    def get(self, dimension: str) -> Amount:
        """The amount of ``dimension`` in API units (``total_tokens`` derived)."""
        check_dimension(dimension)
        return from_units(dimension, self._units.get(dimension, 0))

    @classmethod
    def from_units(cls, units: Mapping[str, int], *, cost_known: bool = True) -> Usage:
        """Build a ``Usage`` from a storage-unit vector (the inverse of ``units``)."""
        kwargs: dict[str, object] = {}
        for name, amount in units.items():
            check_dimension(name, "units")
            if name.startswith(COUNTER_PREFIX):
                continue  # named counters are not fields of a Usage
            kwargs[name] = from_units(name, amount)
        if "cost_usd" not in kwargs and cost_known:
            kwargs["cost_usd"] = Decimal(0) if units else None
        return cls(**kwargs)  # type: ignore[arg-type]

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        kwargs: dict[str, object] = {}
        for f in fields(self):
            if f.name.startswith("_"):
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "total_tokens":
                kwargs[f.name] = self.tokens + other.tokens or None
            elif f.name == "cost_usd":
                kwargs[f.name] = None if a is None or b is None else a + b
            else:
                kwargs[f.name] = a + b
        return Usage(**kwargs)  # type: ignore[arg-type]

    def replace(self, **changes: object) -> Usage:
        """A copy with some fields changed (validated again)."""
        kwargs = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        if "total_tokens" not in changes and self.total_tokens is None:
            kwargs["total_tokens"] = None
        kwargs.update(changes)
        return Usage(**kwargs)


def _as_decimal(field_name: str, value: object) -> Decimal:
    if isinstance(value, bool):
        raise InvalidInput(field_name, value, "expected a number, not a bool")
    try:
        if isinstance(value, float):
            return Decimal(repr(value))
        if isinstance(value, int | str | Decimal):
            return Decimal(value)
    except InvalidOperation:
        pass
    raise InvalidInput(field_name, value, "expected a Decimal, int or numeric str")


# --------------------------------------------------------------------------------------------
# Windows

WindowKind = Literal["lifetime", "rolling", "calendar", "pacing"]
CalendarUnit = Literal["day", "week", "month"]
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DEFAULT_ROLLING_BUCKETS = 60


@dataclass(frozen=True)
class Window:
    """The period over which a limit counts usage.

    * ``lifetime``: everything ever committed.
    * ``rolling``: the last ``seconds``, kept as buckets of ``granularity_s``. Usage committed at
      time *t* counts until at least *t + seconds* and at most *t + seconds + granularity_s*, so
      a rolling limit may refuse up to one granule early but never lets more than the limit
      through in any span of ``seconds``.
    * ``calendar``: the current day, week (starting on ``week_start``) or month in ``tz``.
    * ``pacing``: a token bucket (GCRA) holding the limit's ``max`` that refills from empty in
      ``refill_s``, i.e. at ``max / refill_s`` per second; a request of *n* is admitted when the
      bucket holds *n*. It paces *admissions* (reserve and admit): a commit, charge or release
      neither fills nor drains it, and holds do not count against it. The state is one
      timestamp per limit.

    Build windows with the class methods, e.g. ``Window.rolling(hours=5)`` or
    ``Window.calendar("month", tz="Europe/Berlin")``.
    """

    kind: WindowKind = "lifetime"
    """Which of the three window families this is."""
    seconds: int = 0
    """Rolling windows: the span in seconds."""
    granularity_s: int = 0
    """Rolling windows: the bucket width in seconds (the accuracy bound)."""
    unit: CalendarUnit | None = None
    """Calendar windows: ``"day"``, ``"week"`` or ``"month"``."""
    tz: str = "UTC"
    """Calendar windows: the IANA time zone whose midnight starts a period."""
    week_start: int = 0
    """Calendar weeks: the first day, 0 = Monday ... 6 = Sunday."""
    refill_us: int = 0
    """Pacing windows: microseconds for an empty bucket to refill to the limit's ``max``."""

    @classmethod
    def lifetime(cls) -> Window:
        """Count everything ever committed."""
        return LIFETIME

    @classmethod
    def rolling(
        cls,
        seconds: float | timedelta | None = None,
        *,
        minutes: float = 0,
        hours: float = 0,
        days: float = 0,
        granularity_s: int | None = None,
    ) -> Window:
        """A window over the last span of time, e.g. ``Window.rolling(hours=5)``.

        ``granularity_s`` defaults to 1/60 of the span (at least one second).
        """
        span = seconds.total_seconds() if isinstance(seconds, timedelta) else (seconds or 0)
        total = span + minutes * 60 + hours * 3600 + days * 86400
        if not isinstance(total, int | float) or not math.isfinite(total) or total < 1:
            raise InvalidInput("window.seconds", total, "a rolling window spans at least 1 second")
        if total != int(total):
            raise InvalidInput("window.seconds", total, "use a whole number of seconds")
        span_s = int(total)
        if granularity_s is None:
            # The largest divisor of the span up to 1/60 of it: buckets must tile the span
            # exactly, or usage would linger past ``seconds + granularity_s``.
            granularity_s = max(1, span_s // DEFAULT_ROLLING_BUCKETS)
            while span_s % granularity_s:
                granularity_s -= 1
        if (
            isinstance(granularity_s, bool)
            or not isinstance(granularity_s, int)
            or not 1 <= granularity_s <= span_s
            or span_s % granularity_s
        ):
            raise InvalidInput(
                "window.granularity_s",
                granularity_s,
                f"must be a whole number of seconds that divides the span ({span_s}s)",
            )
        return cls(kind="rolling", seconds=span_s, granularity_s=granularity_s)

    @classmethod
    def calendar(
        cls, unit: CalendarUnit, *, tz: str = "UTC", week_start: str | int = "monday"
    ) -> Window:
        """The current calendar ``"day"``, ``"week"`` or ``"month"`` in time zone ``tz``."""
        if unit not in ("day", "week", "month"):
            raise InvalidInput("window.unit", unit, "use 'day', 'week' or 'month'")
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise InvalidInput("window.tz", tz, "not an IANA time zone name") from None
        if isinstance(week_start, str):
            if week_start.lower() not in _WEEKDAYS:
                raise InvalidInput("window.week_start", week_start, f"use one of {_WEEKDAYS}")
            first = _WEEKDAYS.index(week_start.lower())
        elif (
            isinstance(week_start, int) and not isinstance(week_start, bool) and 0 <= week_start < 7
        ):
            first = week_start
        else:
            raise InvalidInput("window.week_start", week_start, "use 0 (Monday) .. 6 (Sunday)")
        return cls(kind="calendar", unit=unit, tz=tz, week_start=first if unit == "week" else 0)

    @classmethod
    def pacing(cls, refill_s: float | timedelta) -> Window:
        """A token bucket that refills from empty to the limit's ``max`` in ``refill_s``.

        ``Limit("requests", 10, Window.pacing(0.1))`` admits a burst of at most 10 and then one
        request every 10 ms (100 per second). ``refill_s`` is kept in whole microseconds.
        """
        span = refill_s.total_seconds() if isinstance(refill_s, timedelta) else refill_s
        if (
            isinstance(span, bool)
            or not isinstance(span, int | float)
            or not math.isfinite(span)
            or not 1e-6 <= span <= 366 * 86400
        ):
            raise InvalidInput(
                "window.refill_s", refill_s, "expected seconds between 1e-6 and one year"
            )
        return cls(kind="pacing", refill_us=round(span * 1_000_000))

    @property
    def refill_s(self) -> float:
        """Pacing windows: the refill time in seconds."""
        return self.refill_us / 1_000_000

    @classmethod
    def daily(cls, tz: str = "UTC") -> Window:
        """Shorthand for ``Window.calendar("day", tz=tz)``."""
        return cls.calendar("day", tz=tz)

    @classmethod
    def weekly(cls, tz: str = "UTC", week_start: str | int = "monday") -> Window:
        """Shorthand for ``Window.calendar("week", tz=tz, week_start=week_start)``."""
        return cls.calendar("week", tz=tz, week_start=week_start)

    @classmethod
    def monthly(cls, tz: str = "UTC") -> Window:
        """Shorthand for ``Window.calendar("month", tz=tz)``."""
        return cls.calendar("month", tz=tz)

    @cached_property
    def key(self) -> str:
        """A stable string naming this window in storage, e.g. ``"rolling:18000:300"``."""
        if self.kind == "lifetime":
            return "lifetime"
        if self.kind == "rolling":
            return f"rolling:{self.seconds}:{self.granularity_s}"
        if self.kind == "pacing":
            return f"pacing:{self.refill_us}"
        return f"calendar:{self.unit}:{self.tz}:{self.week_start}"

    @classmethod
    def from_key(cls, key: str) -> Window:
        """Parse a ``key`` back into a ``Window`` (cached: keys repeat on every operation)."""
        return _window_from_key(key)

    def describe(self) -> str:
        """Human text, e.g. ``"5h rolling"`` or ``"calendar month (Europe/Berlin)"``."""
        if self.kind == "lifetime":
            return "lifetime"
        if self.kind == "rolling":
            return f"{span_text(self.seconds)} rolling"
        if self.kind == "pacing":
            return f"bucket refilled in {self.refill_s:g}s"
        extra = f", from {_WEEKDAYS[self.week_start]}" if self.unit == "week" else ""
        return f"calendar {self.unit} ({self.tz}{extra})"

    # -- period arithmetic, shared by every backend (Redis' Lua gets precomputed bounds) --------

    def period_bounds(self, now: float) -> tuple[float, float]:
        """Calendar windows: the ``[start, end)`` epoch seconds of the period holding ``now``."""
        zone = ZoneInfo(self.tz)
        local = datetime.fromtimestamp(now, zone)
        day = local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0)
        if self.unit == "day":
            start, end = day, _add_days(day, 1)
        elif self.unit == "week":
            back = (local.weekday() - self.week_start) % 7
            start = _add_days(day, -back)
            end = _add_days(start, 7)
        else:
            start = day.replace(day=1)
            year, month = (
                (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
            )
            end = start.replace(year=year, month=month)
        return _epoch(start, zone), _epoch(end, zone)

    @property
    def buckets(self) -> int:
        """Rolling windows: how many buckets tile the span."""
        return self.seconds // self.granularity_s


def _add_days(day: datetime, days: int) -> datetime:
    # Wall-clock arithmetic: a "day" across a DST change is 23 or 25 hours, as users expect.
    return (day.replace(tzinfo=None) + timedelta(days=days)).replace(tzinfo=day.tzinfo)


def _epoch(local_midnight: datetime, zone: ZoneInfo) -> float:
    return local_midnight.replace(tzinfo=zone).astimezone(UTC).timestamp()


def span_text(seconds: int) -> str:
    """A span in its largest whole unit: ``"5h"``, ``"7d"``, ``"90s"``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


LIFETIME = Window()


@lru_cache(maxsize=1024)
def _window_from_key(key: str) -> Window:
    parts = key.split(":")
    try:
        if parts == ["lifetime"]:
            return LIFETIME
        if parts[0] == "rolling" and len(parts) == 3:
            return Window.rolling(int(parts[1]), granularity_s=int(parts[2]))
        if parts[0] == "pacing" and len(parts) == 2 and parts[1].isdigit():
            return Window.pacing(int(parts[1]) / 1_000_000)
        if parts[0] == "calendar" and len(parts) == 4:
            return Window.calendar(parts[1], tz=parts[2], week_start=int(parts[3]))  # type: ignore[arg-type]
    except ValueError:
        pass
    raise InvalidInput("window", key, "not a window key such as 'lifetime' or 'rolling:3600:60'")


# --------------------------------------------------------------------------------------------
# Limits


@dataclass(frozen=True, slots=True)
class Limit:
    """A cap on one dimension over one window, e.g. ``Limit("cost_usd", "20", Window.daily())``.

    A scope may carry several limits, at most one per (dimension, window) pair.
    """

    dimension: str
    """The dimension capped, one of ``DIMENSIONS``."""
    max: Amount
    """The cap, in API units (``Decimal`` dollars, seconds, or a count)."""
    window: Window = LIFETIME
    """The window the cap counts over."""

    def __post_init__(self) -> None:
        check_dimension(self.dimension, "limit.dimension")
        if not isinstance(self.window, Window):
            raise InvalidInput("limit.window", self.window, "expected a Window")
        units = to_units(self.dimension, self.max, "limit.max")
        object.__setattr__(self, "max", from_units(self.dimension, units))

    @property
    def max_units(self) -> int:
        """The cap in storage units."""
        return to_units(self.dimension, self.max)


# --------------------------------------------------------------------------------------------
# Scope paths

_SEGMENT = re.compile(r"[a-z][a-z0-9_-]{0,31}:[A-Za-z0-9][A-Za-z0-9._@+=-]{0,127}")
MAX_DEPTH = 16


def parse_path(path: str) -> tuple[str, ...]:
    """Split a scope path into its prefixes, top first.

    ``"org:acme/team:x"`` gives ``("org:acme", "org:acme/team:x")``. Each segment is
    ``kind:name``; kinds are lower-case identifiers, names are letters, digits and ``._@+=-`` (not
    starting with a dot, so ``..`` and hidden names cannot appear). Raises ``InvalidInput``.
    """
    if not isinstance(path, str):
        raise InvalidInput("path", path, "expected a str such as 'org:acme/team:search'")
    segments = path.split("/")
    if not path or len(segments) > MAX_DEPTH:
        raise InvalidInput("path", path, f"expected 1..{MAX_DEPTH} 'kind:name' segments")
    prefixes: list[str] = []
    for i, segment in enumerate(segments):
        if not _SEGMENT.fullmatch(segment):
            raise InvalidInput(
                "path",
                path,
                f"segment {i} ({segment!r}) is not 'kind:name' "
                "(kind: lower-case letters, digits, _ or -; name: letters, digits, ._@+=-)",
            )
        prefixes.append(segment if i == 0 else f"{prefixes[-1]}/{segment}")
    return tuple(prefixes)


# --------------------------------------------------------------------------------------------
# Ledger records


class LimitState(NamedTuple):
    """One limit of one scope with its counters, in storage units (what backends exchange)."""

    scope: str
    dimension: str
    window_key: str
    max_units: int
    used: int
    """Committed usage inside the window (lifetime windows: everything committed)."""
    held: int
    """Outstanding holds on the scope's dimension (holds are not windowed)."""


class Reservation(NamedTuple):
    """A hold on every scope of ``path``, to be settled by ``commit`` or ``release``.

    (An immutable named tuple rather than a frozen dataclass: one is built on every reservation,
    and a frozen dataclass costs several times as much to construct.)
    """

    id: str
    """Unique id; commit and release are idempotent by it."""
    path: str
    """The scope path charged (every prefix is charged too)."""
    usage: Usage
    """What was reserved."""
    created_at: float
    """Epoch seconds when the hold was taken (ledger clock)."""
    expires_at: float
    """Epoch seconds after which the hold returns by itself if not settled."""
    limit_states: tuple[LimitState, ...] = ()
    """Each limit the reservation was checked against, after the hold, in storage units."""

    @property
    def headroom(self) -> tuple[LimitHeadroom, ...]:
        """Each limit the reservation was checked against, *after* the hold was taken."""
        return tuple(LimitHeadroom.from_state(s) for s in self.limit_states)


@dataclass(frozen=True, slots=True)
class Overrun:
    """A limit that a commit pushed past (actual usage exceeded what was reserved)."""

    scope: str
    """The scope whose limit is now exceeded."""
    dimension: str
    """The dimension over its cap."""
    window: Window
    """The limit's window."""
    limit: Amount
    """The cap."""
    used: Amount
    """Committed usage in the window after this commit."""


class Charge(NamedTuple):
    """The settled result of a commit (or a direct ``charge``); a named tuple for speed."""

    reservation_id: str
    """The reservation settled (direct charges get an id of their own)."""
    path: str
    """The scope path charged."""
    usage: Usage
    """The actual usage recorded."""
    committed_at: float
    """Epoch seconds of the commit (ledger clock)."""
    overruns: tuple[Overrun, ...] = ()
    """Limits this commit pushed past; later reservations see the overrun."""
    late: bool = False
    """True if the hold had already expired: the usage is recorded all the same."""
    replayed: bool = False
    """True if this commit was a retry of one already recorded (nothing was counted twice)."""
    metadata: Mapping[str, str] = MappingProxyType({})
    """What the caller recorded with the charge, e.g. the model and price used."""


@dataclass(frozen=True, slots=True)
class LimitHeadroom:
    """One limit of one scope, as seen at one moment."""

    scope: str
    """The scope the limit sits on."""
    dimension: str
    """The dimension capped."""
    window: Window
    """The limit's window."""
    limit: Amount
    """The cap."""
    used: Amount
    """Committed usage inside the window."""
    held: Amount
    """Outstanding reservations."""

    @classmethod
    def from_state(cls, state: LimitState) -> LimitHeadroom:
        """Convert a backend's storage-unit record to API units."""
        dimension = state.dimension
        return cls(
            scope=state.scope,
            dimension=dimension,
            window=Window.from_key(state.window_key),
            limit=from_units(dimension, state.max_units),
            used=from_units(dimension, state.used),
            held=from_units(dimension, state.held),
        )

    @property
    def remaining(self) -> Amount:
        """``limit - used - held``, never below zero."""
        rest = self.limit - self.used - self.held  # type: ignore[operator]
        return rest if rest > 0 else type(rest)(0)

    @property
    def fraction(self) -> float:
        """``(used + held) / limit``; 1.0 or more means the limit is exhausted."""
        if not self.limit:
            return math.inf if (self.used or self.held) else 1.0
        return float((self.used + self.held) / self.limit)  # type: ignore[operator]


@dataclass(frozen=True, slots=True)
class Headroom:
    """Every limit on a path with its usage; a peek, nothing consumed."""

    path: str
    """The path peeked at."""
    limits: tuple[LimitHeadroom, ...]
    """Every limit of every scope on the path, top scope first."""

    @property
    def tightest(self) -> LimitHeadroom | None:
        """The limit with the highest ``fraction`` used, or ``None`` if the path has no limits."""
        return max(self.limits, key=lambda h: h.fraction, default=None)

    def remaining(self, dimension: str) -> Amount | None:
        """The smallest remaining amount of ``dimension`` across the path; ``None`` = no limit."""
        check_dimension(dimension)
        values = [h.remaining for h in self.limits if h.dimension == dimension]
        return min(values) if values else None


@dataclass(frozen=True, slots=True)
class ScopeUsage:
    """A scope's meters: lifetime totals, outstanding holds and each limit's window."""

    scope: str
    """The scope path."""
    used: Usage
    """Everything committed to this scope or below it, over its lifetime."""
    held: Usage
    """Outstanding reservations on this scope or below it."""
    limits: tuple[LimitHeadroom, ...]
    """The scope's own limits with their windowed usage."""
    cost_unknown: bool = False
    """True if some committed usage had no known cost (so ``used.cost_usd`` is a lower bound)."""
