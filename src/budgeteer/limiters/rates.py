"""Rate specs: "at most N of a dimension in any rolling span", as ledger ``Limit``s.

A rate limit is an ordinary ledger limit over a rolling window, so it is checked in the same
atomic step as every budget cap on the same path, on every backend.

Accuracy: a rolling window of ``span_s`` kept in buckets of ``granularity_s`` never lets more
than ``limit`` through in *any* span of ``span_s`` (no double burst at a boundary, as a fixed
window would allow). Usage counts for at least ``span_s`` and at most
``span_s + granularity_s`` after it was recorded, so under saturation the limiter admits at
least ``limit`` per ``span_s + granularity_s``: it may refuse up to one granule early, never
late. The granularity defaults to 1/60 of the span (one second for a minute, one minute for an
hour); pass ``granularity_s`` to trade memory for accuracy. For spans of a few seconds, where
a one-second granule is coarse, pace with ``Pacing`` instead (or beside).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from budgeteer.errors import InvalidInput
from budgeteer.model import Amount, Limit, Window, check_dimension

_UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
    "w": 7 * 86400,
    "week": 7 * 86400,
}
_RATE = re.compile(
    r"\s*(?P<limit>\d+)\s*(?P<dimension>[a-z][a-z0-9_:]*)?\s*(?:/|per)\s*"
    r"(?P<count>\d+)?\s*(?P<unit>[a-z]+?)s?\s*",
)


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``limit`` of ``dimension`` in any rolling ``span_s`` seconds.

    Example::

        Rate.per_minute(60)                          # 60 requests per minute
        Rate.per_minute(90_000, "total_tokens")      # 90k tokens per minute
        Rate(500, span_s=5 * 3600)                   # 500 requests per 5 hours
        Rate.parse("8000 total_tokens/minute")
    """

    limit: Amount
    """The most that may pass in any span."""
    span_s: int
    """The span in whole seconds."""
    dimension: str = "requests"
    """The dimension counted: ``requests``, ``total_tokens``, ``cost_usd``, a ``counter:<name>``."""
    granularity_s: int | None = None
    """The bucket width (see the module doc); ``None``: 1/60 of the span."""

    def __post_init__(self) -> None:
        check_dimension(self.dimension, "rate.dimension")
        self.to_limit()  # validates limit, span and granularity

    @property
    def window(self) -> Window:
        """The rolling window of this rate."""
        return Window.rolling(self.span_s, granularity_s=self.granularity_s)

    def to_limit(self) -> Limit:
        """The ledger ``Limit`` this rate stands for."""
        return Limit(self.dimension, self.limit, self.window)

    @classmethod
    def per_second(cls, limit: Amount, dimension: str = "requests") -> Rate:
        """``limit`` per rolling second (one-second buckets: see the module doc)."""
        return cls(limit, 1, dimension)

    @classmethod
    def per_minute(cls, limit: Amount, dimension: str = "requests") -> Rate:
        """``limit`` per rolling minute (one-second buckets)."""
        return cls(limit, 60, dimension)

    @classmethod
    def per_hour(cls, limit: Amount, dimension: str = "requests") -> Rate:
        """``limit`` per rolling hour (one-minute buckets)."""
        return cls(limit, 3600, dimension)

    @classmethod
    def per_day(cls, limit: Amount, dimension: str = "requests") -> Rate:
        """``limit`` per rolling day (24-minute buckets)."""
        return cls(limit, 86400, dimension)

    @classmethod
    def per_week(cls, limit: Amount, dimension: str = "requests") -> Rate:
        """``limit`` per rolling week (168-minute buckets)."""
        return cls(limit, 7 * 86400, dimension)

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse ``"100/minute"``, ``"100 per 5 hours"`` or ``"8000 total_tokens/minute"``."""
        found = _RATE.fullmatch(text) if isinstance(text, str) else None
        unit = _UNITS.get(found.group("unit")) if found else None
        if found is None or unit is None:
            raise InvalidInput(
                "rate", text, "expected e.g. '100/minute', '100 per 5 hours', '8000 tokens/min'"
            )
        dimension = found.group("dimension") or "requests"
        if dimension == "tokens":
            dimension = "total_tokens"
        count = int(found.group("count") or 1)
        return cls(int(found.group("limit")), count * unit, dimension)


__all__ = ["Rate"]
