"""Burst smoothing: a GCRA token bucket, as a ledger limit over a ``Window.pacing``.

``Pacing(rate=100, per_s=1, burst=10)`` admits at most 10 at once and then one every 10 ms. The
state is one timestamp per limit (the theoretical arrival time), O(1) per check on every
backend, atomic on Redis (inside the same Lua call as the path's other limits, with the
server's clock by default).

What it guarantees: in any span of ``w`` seconds at most ``burst + rate * w / per_s`` pass (a
bucket that starts full, then refills); it never holds more than ``burst``. With ``burst=1`` it
spaces admissions evenly: at most ``rate`` in any half-open span of ``per_s``. It paces
*admissions* (``try_acquire``, ``acquire``, ``reserve``): a commit or release does not refill
it, and outstanding holds do not count against it. Decisions are exact to about a microsecond
(epoch seconds are doubles); the refill time is rounded *up* to whole microseconds, so the
effective rate is never above the one asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from budgeteer.errors import InvalidInput
from budgeteer.model import Limit, Window, check_dimension


@dataclass(frozen=True, slots=True)
class Pacing:
    """``rate`` per ``per_s`` seconds, with bursts of at most ``burst``, on ``dimension``."""

    rate: float
    """How many refill per ``per_s``."""
    per_s: float = 1.0
    """The period of ``rate`` in seconds."""
    burst: int = 1
    """The bucket's size: the most admitted at once from an idle start."""
    dimension: str = "requests"
    """The dimension paced."""

    def __post_init__(self) -> None:
        check_dimension(self.dimension, "pacing.dimension")
        for name in ("rate", "per_s"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise InvalidInput(f"pacing.{name}", value, "expected a positive number")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise InvalidInput("pacing.burst", self.burst, "expected a whole number >= 1")
        self.to_limit()

    @property
    def window(self) -> Window:
        """The pacing window: the time to refill ``burst`` at ``rate``, rounded up to 1 µs."""
        refill_us = math.ceil(self.burst * self.per_s / self.rate * 1_000_000 - 1e-6)
        return Window.pacing(max(1, refill_us) / 1_000_000)

    def to_limit(self) -> Limit:
        """The ledger ``Limit`` this pacing stands for (its ``max`` is the burst)."""
        return Limit(self.dimension, self.burst, self.window)


__all__ = ["Pacing"]
