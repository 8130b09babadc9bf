"""Helpers for testing code that uses budgeteer: a controllable clock and ledger factories."""

from __future__ import annotations

import asyncio
import threading

from budgeteer.ledger import AsyncLedger, Ledger


class FakeClock:
    """A clock that moves only when told to. Thread-safe.

    ``now`` starts at ``start`` (epoch seconds, default 2026-01-05 00:00 UTC, a Monday) and
    ``monotonic`` at 0; ``advance`` moves both.
    """

    def __init__(self, start: float = 1_767_571_200.0) -> None:
        self._lock = threading.Lock()
        self._now = float(start)
        self._monotonic = 0.0

    def now(self) -> float:
        """The fake epoch time."""
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        """The fake monotonic time."""
        with self._lock:
            return self._monotonic

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (must not be negative)."""
        if seconds < 0:
            raise ValueError(f"seconds={seconds!r}: a fake clock only moves forward")
        with self._lock:
            self._now += seconds
            self._monotonic += seconds

    def sleep(self, seconds: float) -> None:
        """The sleep hook: advance the fake time by ``seconds`` at once, without waiting.

        budgeteer's waiting code (``Limiter.acquire`` and friends) sleeps through its clock's
        ``sleep`` (and ``async_sleep``) when it has one, so code under test that waits for a
        window returns at once, with the fake time moved on as if it had waited.
        """
        self.advance(max(0.0, seconds))

    async def async_sleep(self, seconds: float) -> None:
        """``sleep`` for coroutines: advance the fake time, then let other tasks run once."""
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)

    def set(self, now: float) -> None:
        """Jump the epoch time to ``now`` (forward or back: simulates a stepped host clock)."""
        with self._lock:
            self._now = float(now)


def memory_ledger(clock: FakeClock | None = None) -> Ledger:
    """A fresh in-memory ledger on ``clock`` (a new ``FakeClock`` if omitted)."""
    return Ledger("memory://", clock=clock or FakeClock())


def async_memory_ledger(clock: FakeClock | None = None) -> AsyncLedger:
    """A fresh in-memory async ledger on ``clock`` (a new ``FakeClock`` if omitted)."""
    return AsyncLedger("memory://", clock=clock or FakeClock())


__all__ = ["FakeClock", "async_memory_ledger", "memory_ledger"]
