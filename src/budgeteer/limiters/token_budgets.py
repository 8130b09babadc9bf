"""The post's two shapes (seed 002), on budgeteer: a session token cap and a sliding-window
token budget, each with reserve / commit / release, and a window that can wait.

    session = TokenBudget(max_tokens=50_000)                           # token-budget-py's shape
    window = AsyncSlidingWindowBudget(max_tokens=8_000, window_seconds=60)  # llm-budget-window's

    session.reserve(estimate)
    await window.acquire(estimate, timeout=30.0)        # waits for room; BudgetExceeded on timeout
    ...
    session.commit(estimate, actual); await window.commit(estimate, actual)
    # or, on failure: session.release(estimate); await window.release(estimate)

As in the post, ``commit`` and ``release`` take the *estimate* (the oldest outstanding hold of
that size is settled) or the ``Reservation`` that ``reserve``/``acquire`` returned. Refusals
raise ``budgeteer.BudgetExceeded`` (fields ``used``, ``limit``, ``retry_after``; the post's
``e.cap`` is ``e.limit`` and its ``WindowExceeded`` is the same exception). Unlike the post's
libraries these live in any ledger, so processes sharing a SQLite file or a Redis server share
the budget; and both limits can sit on *one* path (``Limiter.set_limits(path,
Limit("total_tokens", 50_000), Rate(8_000, 60, "total_tokens"))``), so one reservation checks
the cap and the window together, all or nothing.
"""

from __future__ import annotations

import secrets
import threading
from collections import deque

from budgeteer._clock import Clock
from budgeteer.errors import BudgetExceeded, InvalidInput
from budgeteer.ledger import AsyncLedger, Ledger
from budgeteer.limiters.limiter import AsyncLimiter, Limiter
from budgeteer.limiters.rates import Rate
from budgeteer.model import Amount, Charge, Limit, Reservation, parse_path, to_units

Settle = Reservation | str | int


class _Outstanding:
    """Holds not yet settled, by estimate, oldest first (for ``commit(estimate, actual)``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_size: dict[int, deque[Reservation]] = {}

    def add(self, size: int, reservation: Reservation) -> None:
        with self._lock:
            self._by_size.setdefault(size, deque()).append(reservation)

    def take(self, which: Settle) -> Reservation | str:
        with self._lock:
            if isinstance(which, Reservation | str):
                for holds in self._by_size.values():
                    for held in holds:
                        if which in (held, held.id):
                            holds.remove(held)
                            return held
                return which
            if isinstance(which, bool) or not isinstance(which, int):
                raise InvalidInput("estimated", which, "expected a token count or a Reservation")
            found = self._by_size.get(which)
            if not found:
                raise InvalidInput("estimated", which, "no outstanding hold of that size")
            return found.popleft()


def _path(path: str | None, kind: str) -> str:
    if path is None:
        return f"{kind}:{secrets.token_hex(6)}"
    parse_path(path)
    return path


class TokenBudget:
    """A session cap: at most ``max_tokens`` over the budget's life (reserve, commit, release).

    Args:
        max_tokens: the cap.
        ledger: a ``Ledger`` or URL; the cap is a lifetime ``Limit`` on ``path``.
        path: the scope path (default: a fresh ``session:<random>``).
        dimension: what is counted (``total_tokens``; ``input_tokens``, ``cost_usd`` ...).
    """

    def __init__(
        self,
        max_tokens: Amount,
        *,
        ledger: Ledger | str = "memory://",
        path: str | None = None,
        clock: Clock | None = None,
        dimension: str = "total_tokens",
    ) -> None:
        self._limiter = Limiter(ledger, clock=clock)
        self.path = _path(path, "session")
        """The scope path of the cap."""
        self.dimension = dimension
        """The dimension counted."""
        self.limit = Limit(dimension, max_tokens)
        """The cap as a ledger ``Limit``."""
        self._limiter.ledger.set_limit(self.path, self.limit)
        self._outstanding = _Outstanding()

    def reserve(self, tokens: Amount) -> Reservation:
        """Hold ``tokens`` now, or raise ``BudgetExceeded`` (never waits: a cap does not refill)."""
        size = to_units(self.dimension, tokens, "tokens")
        reservation = self._limiter.reserve(self.path, {self.dimension: tokens}, timeout=0)
        self._outstanding.add(size, reservation)
        return reservation

    def commit(self, estimated: Settle, actual_tokens: Amount) -> Charge:
        """Record ``actual_tokens`` for the hold of ``estimated`` (or that ``Reservation``)."""
        reservation = self._outstanding.take(_size(self.dimension, estimated))
        return self._limiter.commit(reservation, {self.dimension: actual_tokens})

    def release(self, estimated: Settle) -> None:
        """Free the hold of ``estimated`` (or that ``Reservation``)."""
        self._limiter.release(self._outstanding.take(_size(self.dimension, estimated)))

    @property
    def used(self) -> Amount:
        """Committed so far."""
        return self._limiter.ledger.usage(self.path).used.get(self.dimension)

    @property
    def remaining(self) -> Amount:
        """The cap minus what is committed and held."""
        remaining = self._limiter.ledger.peek(self.path).remaining(self.dimension)
        assert remaining is not None  # the cap is on this path
        return remaining


class SlidingWindowBudget:
    """At most ``max_tokens`` in any ``window_seconds``: reserve, then commit or release.

    ``acquire`` waits for room (up to ``timeout``), ``try_acquire`` never waits. Both *hold*
    the tokens until ``commit`` (the actual amount then counts in the window from that moment)
    or ``release``. Accuracy: see ``budgeteer.limiters.rates`` (``granularity_s`` buckets).
    """

    def __init__(
        self,
        max_tokens: Amount,
        window_seconds: int,
        *,
        ledger: Ledger | str = "memory://",
        path: str | None = None,
        clock: Clock | None = None,
        dimension: str = "total_tokens",
        granularity_s: int | None = None,
    ) -> None:
        self._limiter = Limiter(ledger, clock=clock)
        self.path = _path(path, "window")
        """The scope path of the window."""
        self.dimension = dimension
        """The dimension counted."""
        self.rate = Rate(max_tokens, window_seconds, dimension, granularity_s)
        """The window as a ``Rate``."""
        self._limiter.set_limits(self.path, self.rate)
        self._outstanding = _Outstanding()

    def acquire(self, tokens: Amount, timeout: float | None = None) -> Reservation:
        """Hold ``tokens``, waiting up to ``timeout`` seconds for the window to make room.

        Raises:
            BudgetExceeded: the deadline passed, or ``tokens`` exceeds the window itself.
        """
        size = to_units(self.dimension, tokens, "tokens")
        reservation = self._limiter.reserve(self.path, {self.dimension: tokens}, timeout=timeout)
        self._outstanding.add(size, reservation)
        return reservation

    def try_acquire(self, tokens: Amount) -> bool:
        """Hold ``tokens`` if the window has room now; ``False`` (nothing held) otherwise."""
        try:
            self.acquire(tokens, timeout=0)
        except BudgetExceeded:
            return False
        return True

    def commit(self, estimated: Settle, actual_tokens: Amount) -> Charge:
        """Record ``actual_tokens`` for the hold of ``estimated`` (or that ``Reservation``)."""
        reservation = self._outstanding.take(_size(self.dimension, estimated))
        return self._limiter.commit(reservation, {self.dimension: actual_tokens})

    def release(self, estimated: Settle) -> None:
        """Free the hold of ``estimated`` (or that ``Reservation``)."""
        self._limiter.release(self._outstanding.take(_size(self.dimension, estimated)))


class AsyncSlidingWindowBudget:
    """The async twin of ``SlidingWindowBudget`` (``await window.acquire(n, timeout=30)``)."""

    def __init__(
        self,
        max_tokens: Amount,
        window_seconds: int,
        *,
        ledger: AsyncLedger | str = "memory://",
        path: str | None = None,
        clock: Clock | None = None,
        dimension: str = "total_tokens",
        granularity_s: int | None = None,
    ) -> None:
        self._limiter = AsyncLimiter(ledger, clock=clock)
        self.path = _path(path, "window")
        """The scope path of the window."""
        self.dimension = dimension
        """The dimension counted."""
        self.rate = Rate(max_tokens, window_seconds, dimension, granularity_s)
        """The window as a ``Rate``."""
        self._installed = False
        self._outstanding = _Outstanding()

    async def _install(self) -> None:
        if not self._installed:
            await self._limiter.set_limits(self.path, self.rate)
            self._installed = True

    async def acquire(self, tokens: Amount, timeout: float | None = None) -> Reservation:
        """See ``SlidingWindowBudget.acquire``."""
        await self._install()
        size = to_units(self.dimension, tokens, "tokens")
        reservation = await self._limiter.reserve(
            self.path, {self.dimension: tokens}, timeout=timeout
        )
        self._outstanding.add(size, reservation)
        return reservation

    async def try_acquire(self, tokens: Amount) -> bool:
        """See ``SlidingWindowBudget.try_acquire``."""
        try:
            await self.acquire(tokens, timeout=0)
        except BudgetExceeded:
            return False
        return True

    async def commit(self, estimated: Settle, actual_tokens: Amount) -> Charge:
        """See ``SlidingWindowBudget.commit``."""
        reservation = self._outstanding.take(_size(self.dimension, estimated))
        return await self._limiter.commit(reservation, {self.dimension: actual_tokens})

    async def release(self, estimated: Settle) -> None:
        """See ``SlidingWindowBudget.release``."""
        await self._limiter.release(self._outstanding.take(_size(self.dimension, estimated)))


def _size(dimension: str, estimated: Settle) -> Settle:
    if isinstance(estimated, Reservation | str):
        return estimated
    return to_units(dimension, estimated, "estimated")


__all__ = ["AsyncSlidingWindowBudget", "SlidingWindowBudget", "TokenBudget"]
