"""What ``Limiter`` and ``AsyncLimiter`` share: amounts, admissions, the waiting rules, the
fairness queues and the installation of keyed limits. No I/O and no sleeping here: the twins
call the backend and sleep, and ask this core what to do next (the tenacity shape).

Fairness policy (per limiter object, hence per process): waiters on one path are served first
in, first out. Only the head of a path's queue asks the store; the others wait their turn, and
``try_acquire`` on a path with waiters is refused at once with the head's refusal (it never
jumps the queue), so a large request is not starved by a stream of small ones from the same
process. Across processes there is no queue: each process's head competes at the store, and a
process sending a stream of small requests can still delay a large one elsewhere.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias

from budgeteer.backends.base import Denial
from budgeteer.errors import BudgetExceeded, InvalidInput
from budgeteer.ledger._frontend import exceeded
from budgeteer.limiters.concurrency import Concurrency
from budgeteer.limiters.pacing import Pacing
from budgeteer.limiters.rates import Rate
from budgeteer.model import (
    COUNTER_PREFIX,
    Amount,
    Limit,
    LimitHeadroom,
    LimitState,
    Usage,
    check_dimension,
    to_units,
)

Spec: TypeAlias = Rate | Pacing | Concurrency | Limit
"""Anything that stands for one ledger limit."""
UsageLike: TypeAlias = Usage | Mapping[str, Amount] | None
"""What an acquisition asks for: a ``Usage``, a mapping of dimension (or ``counter:<name>``)
to amount, or ``None`` for one request."""

ONE_REQUEST: Mapping[str, int] = {"requests": 1}
MIN_WAIT_S = 0.001
"""The shortest sleep between two attempts (a ``retry_after`` of 0 still waits this long)."""
DEFAULT_POLL_S = 0.05
"""How often a waiter blocked only by others' holds (which have no known end) asks again."""


def to_limit(spec: object) -> Limit:
    """The ledger ``Limit`` a spec stands for."""
    if isinstance(spec, Limit):
        return spec
    if isinstance(spec, Rate | Pacing | Concurrency):
        return spec.to_limit()
    raise InvalidInput("spec", spec, "expected a Rate, Pacing, Concurrency or Limit")


def amounts_of(usage: object, field_name: str = "usage") -> Mapping[str, int]:
    """An acquisition's amounts in storage units (``None``: one request)."""
    if usage is None:
        return ONE_REQUEST
    if type(usage) is Usage:
        return usage.units
    if isinstance(usage, Mapping):
        units: dict[str, int] = {}
        for dimension, amount in usage.items():
            if not isinstance(dimension, str):
                raise InvalidInput(field_name, dimension, "dimension names are strings")
            check_dimension(dimension, f"{field_name}.{dimension}")
            value = to_units(dimension, amount, f"{field_name}.{dimension}")
            if value:
                units[dimension] = value
        return units
    if isinstance(usage, Usage):
        return usage.units
    raise InvalidInput(field_name, usage, "expected a Usage, a mapping of dimension to amount")


def usage_of(usage: object, amounts: Mapping[str, int]) -> Usage:
    """The ``Usage`` recorded on a reservation (named counters are not part of a ``Usage``)."""
    if isinstance(usage, Usage):
        return usage
    plain = {d: a for d, a in amounts.items() if not d.startswith(COUNTER_PREFIX)}
    return Usage.from_units(plain, cost_known="cost_usd" in plain)


class Admission(NamedTuple):
    """The answer of ``try_acquire`` (and of a successful ``acquire``): allowed or refused.

    Truthy when allowed. A refusal names the limit that refused, with ``retry_after``, through
    ``error`` (the ``BudgetExceeded`` that ``acquire`` raises when its deadline passes). (A
    named tuple: one is built on every check.)
    """

    allowed: bool
    """True if the amounts were admitted (and recorded)."""
    path: str
    """The scope path checked."""
    decision: tuple[LimitState, ...] | Denial
    """The store's answer in storage units: the limits as after, or the refusal."""

    def __bool__(self) -> bool:
        return self.allowed

    def __repr__(self) -> str:
        if self.allowed:
            return f"Admission(allowed=True, path={self.path!r})"
        return f"Admission(allowed=False, path={self.path!r}, error={self.error!r})"

    @property
    def error(self) -> BudgetExceeded | None:
        """The refusal: which scope, dimension and window refused, and ``retry_after``."""
        decision = self.decision
        return exceeded(decision) if isinstance(decision, Denial) else None

    @property
    def retry_after(self) -> float | None:
        """Seconds until a retry may succeed; ``None`` if allowed or waiting cannot help."""
        decision = self.decision
        return decision.retry_after if isinstance(decision, Denial) else None

    @property
    def limits(self) -> tuple[LimitHeadroom, ...]:
        """Allowed: every limit checked, as after the admission. Refused: the refusing one."""
        decision = self.decision
        if isinstance(decision, Denial):
            return (LimitHeadroom.from_state(decision.state),)
        return tuple(LimitHeadroom.from_state(state) for state in decision)

    def remaining(self, dimension: str) -> Amount | None:
        """The smallest room left on ``dimension`` across the limits checked (``None``: none)."""
        values = [h.remaining for h in self.limits if h.dimension == dimension]
        return min(values) if values else None


@dataclass
class Queue:
    """The waiters of one path, in arrival order, and the head's latest refusal."""

    tickets: deque[object] = field(default_factory=deque)
    refusal: Denial | None = None


@dataclass
class KeyState:
    """A keyed path whose limits this limiter installed."""

    version: int
    """The policy version installed."""
    count: int
    """How many limits the path's scopes carry (checked by ``admit``: a mismatch reinstalls)."""
    user: str = ""
    endpoint: str | None = None


class LimiterCore:
    """Sans-IO state and rules shared by the twins."""

    def __init__(self, poll_s: float) -> None:
        if not isinstance(poll_s, int | float) or isinstance(poll_s, bool) or not poll_s > 0:
            raise InvalidInput("poll_s", poll_s, "expected a positive number of seconds")
        self.poll_s = float(poll_s)
        self.queues: dict[str, Queue] = {}
        self.keys: dict[str, KeyState] = {}

    # -- fairness -------------------------------------------------------------------------------

    def queued_refusal(self, path: str, amounts: Mapping[str, int]) -> Denial | None:
        """If waiters are queued on ``path``, the refusal a newcomer gets (it may not barge)."""
        queue = self.queues.get(path)
        if queue is None or queue.refusal is None:
            return None
        head = queue.refusal
        return Denial(head.state, amounts.get(head.state.dimension, 0), head.retry_after)

    def enqueue(self, path: str, ticket: object) -> Queue:
        queue = self.queues.get(path)
        if queue is None:
            queue = self.queues[path] = Queue()
        queue.tickets.append(ticket)
        return queue

    def dequeue(self, path: str, ticket: object) -> None:
        queue = self.queues.get(path)
        if queue is None:
            return
        if queue.tickets and queue.tickets[0] is ticket:
            queue.refusal = None  # the next head has not asked yet
        queue.tickets.remove(ticket)
        if not queue.tickets:
            del self.queues[path]

    # -- waiting --------------------------------------------------------------------------------

    def next_wait(self, denial: Denial, deadline: float | None, now: float) -> float | None:
        """Seconds to sleep before asking again, or ``None``: give up with this refusal.

        A refusal whose ``retry_after`` is ``None`` is worth waiting for only when outstanding
        holds are in the way (they end at commit, release or expiry, at no known time): then
        the waiter asks again every ``poll_s``.
        """
        wait = denial.retry_after
        if wait is None:
            state = denial.state
            if state.held <= 0 or denial.requested > state.max_units:
                return None
            wait = self.poll_s
        wait = max(wait, MIN_WAIT_S)
        if deadline is None:
            return wait
        remaining = deadline - now
        if remaining <= 0:
            return None
        return min(wait, remaining)

    @staticmethod
    def deadline(timeout: float | None, now: float) -> float | None:
        if timeout is None:
            return None
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not timeout >= 0
            or timeout == float("inf")
        ):
            raise InvalidInput("timeout", timeout, "expected seconds >= 0, or None to wait")
        return now + timeout

    # -- keyed limits ---------------------------------------------------------------------------

    @staticmethod
    def install_plan(
        existing: Iterable[tuple[str, str, int]], desired: tuple[Limit, ...]
    ) -> tuple[list[Limit], list[tuple[str, str]]]:
        """The limits to set and the ``(dimension, window key)`` pairs to remove."""
        want = {(limit.dimension, limit.window.key): limit for limit in desired}
        have = {(d, w): m for d, w, m in existing}
        to_set = [limit for key, limit in want.items() if have.get(key) != limit.max_units]
        to_remove = [key for key in have if key not in want]
        return to_set, to_remove


__all__ = [
    "DEFAULT_POLL_S",
    "Admission",
    "LimiterCore",
    "Spec",
    "UsageLike",
    "amounts_of",
    "to_limit",
    "usage_of",
]
