"""Rate limits on the budget engine: how fast, beside how much.

One module per idea:

* ``rates``: ``Rate`` — N of a dimension per rolling span (a ``Limit`` over a rolling window).
* ``pacing``: ``Pacing`` — a GCRA token bucket with an explicit burst (a ``Window.pacing``).
* ``concurrency``: ``Concurrency`` — at most N in flight (held slots of a named counter).
* ``limiter``: ``Limiter`` / ``AsyncLimiter`` — ``try_acquire``, ``acquire(timeout=)``,
  ``reserve``/``commit``/``release``, ``concurrent``; sharing ``_acquire``'s core.
* ``keys``: ``KeyPolicy`` — limits per user and per endpoint, a default, run-time changes.
* ``ratelimiter``: ``RateLimiter`` — the seed's API (``check_rate_limit`` and friends).
* ``token_budgets``: ``TokenBudget``, ``SlidingWindowBudget`` — the post's shapes.

Every limit here is an ordinary ledger limit, checked in the same atomic step as the budget
caps on the same path, on memory, SQLite and Redis.
"""

from budgeteer.limiters._acquire import Admission
from budgeteer.limiters.concurrency import Concurrency
from budgeteer.limiters.keys import KeyPolicy
from budgeteer.limiters.limiter import AsyncLimiter, Limiter
from budgeteer.limiters.pacing import Pacing
from budgeteer.limiters.ratelimiter import RateLimitConfig, RateLimiter, RateLimitResult
from budgeteer.limiters.rates import Rate
from budgeteer.limiters.token_budgets import (
    AsyncSlidingWindowBudget,
    SlidingWindowBudget,
    TokenBudget,
)

__all__ = [
    "Admission",
    "AsyncLimiter",
    "AsyncSlidingWindowBudget",
    "Concurrency",
    "KeyPolicy",
    "Limiter",
    "Pacing",
    "Rate",
    "RateLimitConfig",
    "RateLimitResult",
    "RateLimiter",
    "SlidingWindowBudget",
    "TokenBudget",
]
