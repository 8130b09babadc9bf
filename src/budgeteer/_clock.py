"""The only place budgeteer reads the time; tests inject ``budgeteer.testing.FakeClock``."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """A source of time. ``now`` is epoch seconds (windows and TTLs); ``monotonic`` measures."""

    def now(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards (durations, deadlines)."""
        ...


class SystemClock:
    """The host's clocks: ``time.time`` and ``time.monotonic``."""

    __slots__ = ()

    def now(self) -> float:
        """Seconds since the Unix epoch, from the host."""
        return time.time()

    def monotonic(self) -> float:
        """The host's monotonic clock."""
        return time.monotonic()


SYSTEM_CLOCK = SystemClock()
