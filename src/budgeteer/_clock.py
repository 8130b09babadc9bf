"""The only place budgeteer reads the time; tests inject ``budgeteer.testing.FakeClock``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """A source of time. ``now`` is epoch seconds (windows and TTLs); ``monotonic`` measures.

    A clock may also offer ``sleep(seconds)`` and ``async def async_sleep(seconds)``: code that
    waits (``budgeteer.limiters``) sleeps through them when present (see ``sleep_of``), so a
    fake clock can turn a wait into a jump of its time.
    """

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

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds``."""
        time.sleep(max(0.0, seconds))

    async def async_sleep(self, seconds: float) -> None:
        """Suspend the calling coroutine for ``seconds``."""
        await asyncio.sleep(max(0.0, seconds))


SYSTEM_CLOCK = SystemClock()


def sleep_of(clock: Clock) -> Callable[[float], None]:
    """The clock's ``sleep`` hook, or ``time.sleep`` for a clock without one."""
    hook = getattr(clock, "sleep", None)
    return hook if callable(hook) else SYSTEM_CLOCK.sleep


def async_sleep_of(clock: Clock) -> Callable[[float], Awaitable[None]]:
    """The clock's ``async_sleep`` hook, or ``asyncio.sleep`` for a clock without one."""
    hook = getattr(clock, "async_sleep", None)
    return hook if callable(hook) else SYSTEM_CLOCK.async_sleep
