"""The sans-IO decision rules every Python backend applies inside its atomic step.

Nothing here does I/O or reads a clock: callers pass ``now`` and counters in storage units.
The memory backend inlines ``crosses`` in its reserve loop (it is the hot path); the contract
suite and the stateful model test hold every backend to the same answers.
The Redis backend's Lua script implements the same rules; the contract suite checks they agree.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping

from budgeteer.backends.base import Denial
from budgeteer.model import LimitState, Window

window_of = Window.from_key


def crosses(used: int, held: int, requested: int, max_units: int) -> bool:
    """The admission rule: a request crosses a limit when ``used + held + requested > max``.

    Reaching the cap exactly is allowed. (The memory backend inlines this test in its hot loop.)
    """
    return used + held + requested > max_units


class CalendarMeter:
    """Committed usage inside the current calendar period."""

    __slots__ = ("end", "start", "used")

    def __init__(self, start: float = 0.0, end: float = 0.0, used: int = 0) -> None:
        self.start = start
        self.end = end
        self.used = used

    def refresh(self, window: Window, now: float) -> None:
        """Move to the period holding ``now``; a new period starts empty.

        A clock that steps backwards keeps the current period rather than reopening an old one.
        """
        if now >= self.end:
            self.start, self.end = window.period_bounds(now)
            self.used = 0

    def retry_after(self, held: int, requested: int, max_units: int, now: float) -> float | None:
        """Seconds until the period ends, if a fresh period would admit the request."""
        return max(0.0, self.end - now) if held + requested <= max_units else None


class RollingMeter:
    """Committed usage in the last ``window.seconds``, kept as buckets of ``granularity_s``.

    Usage in bucket *i* counts while the current bucket is at most *i + buckets*, i.e. for at
    least ``seconds`` and at most ``seconds + granularity_s`` after it was committed.
    """

    __slots__ = ("buckets", "used")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()
        self.used = 0

    def refresh(self, window: Window, now: float) -> None:
        """Forget buckets that have left the window."""
        cutoff = int(now // window.granularity_s) - window.buckets
        buckets = self.buckets
        while buckets and buckets[0][0] < cutoff:
            self.used -= buckets.popleft()[1]

    def add(self, window: Window, now: float, amount: int) -> None:
        """Record ``amount`` in the bucket of ``now`` (or the newest, if the clock stepped back)."""
        index = int(now // window.granularity_s)
        buckets = self.buckets
        if buckets and buckets[-1][0] >= index:
            buckets[-1][1] += amount
        else:
            buckets.append([index, amount])
        self.used += amount


PACING_SLACK_S = 1e-6
"""Float slack of a pacing decision. Epoch seconds near 1.8e9 are doubles with a resolution of
about 2.4e-7 s, so a bucket can admit up to this much early (a relative error of 1e-4 at 100 per
second); never more than ``max`` at once."""


class PacingMeter:
    """A token bucket kept as GCRA's one number: the theoretical arrival time ``tat``.

    The bucket (capacity ``max``, refilled in ``refill_s``) holds ``(tat - now) / interval``
    units, where ``interval = refill_s / max``; it is empty when ``tat <= now``.
    """

    __slots__ = ("tat", "used")

    def __init__(self, tat: float = 0.0) -> None:
        self.tat = tat
        self.used = 0  # only so that code reading ``meter.used`` generically gets a number

    def refresh(self, window: Window, now: float) -> None:
        """Nothing to forget: the bucket drains by itself as ``now`` passes ``tat``."""


def pacing_level(tat: float, now: float, max_units: int, refill_s: float) -> int:
    """Units in the bucket at ``now`` (reported as the limit's ``used``), rounded up."""
    if tat <= now or max_units <= 0:
        return 0
    level = math.ceil((tat - now) * max_units / refill_s - 1e-4)
    return min(max(level, 0), max_units)


def pace(
    tat: float, now: float, requested: int, max_units: int, refill_s: float
) -> tuple[bool, float | None]:
    """GCRA's admission rule: ``(True, new_tat)`` or ``(False, retry_after)``.

    ``retry_after`` is ``None`` when the request is larger than the bucket.
    """
    if requested <= 0:
        return True, tat
    if requested > max_units:
        return False, None
    base = tat if tat > now else now
    new_tat = base + requested * refill_s / max_units
    wait = new_tat - refill_s - now
    if wait <= PACING_SLACK_S:
        return True, new_tat
    return False, wait


def rolling_retry_after(
    window: Window, buckets: Iterable[tuple[int, int]], over_units: int, now: float
) -> float | None:
    """Seconds until enough old buckets leave the window to free ``over_units``.

    ``None`` if even an empty window would not be enough (the holds and the request alone are
    over the cap).
    """
    freed = 0
    for index, amount in buckets:
        freed += amount
        if freed >= over_units:
            return max(0.0, (index + window.buckets + 1) * window.granularity_s - now)
    return None


def deny(state: LimitState, amounts: Mapping[str, int], retry_after: float | None) -> Denial:
    """Build the denial record for ``state``."""
    return Denial(state=state, requested=amounts[state.dimension], retry_after=retry_after)


def retry_after_for(
    state: LimitState,
    requested: int,
    now: float,
    *,
    calendar: CalendarMeter | None = None,
    rolling_buckets: Iterable[tuple[int, int]] = (),
) -> float | None:
    """When waiting would admit ``requested`` against ``state``; ``None`` if it never would."""
    window = window_of(state.window_key)
    over = state.used + state.held + requested - state.max_units
    if window.kind == "pacing":
        return None  # pacing denials carry their own retry_after (see ``pace``)
    if window.kind == "rolling":
        return rolling_retry_after(window, rolling_buckets, over, now)
    if window.kind == "calendar" and calendar is not None:
        return calendar.retry_after(state.held, requested, state.max_units, now)
    return None
