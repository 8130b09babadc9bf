"""``memory://``: an in-process, thread-safe backend. Fast, and gone when the process exits."""

from __future__ import annotations

import heapq
import math
import threading
from collections.abc import Mapping
from typing import Any

from budgeteer.backends.base import (
    _NO_METADATA,
    CommitOutcome,
    Denial,
    ScopeMeters,
    path_prefixes,
)
from budgeteer.errors import ReservationSettled, UnknownReservation
from budgeteer.ledger._core import (
    CalendarMeter,
    PacingMeter,
    RollingMeter,
    deny,
    pace,
    pacing_level,
    retry_after_for,
    window_of,
)
from budgeteer.model import UNPRICED, LimitState, Window

SETTLED_MEMORY = 1_000_000
"""About how many settled reservation ids (at least half of this) the memory backend remembers
for idempotent retries; an older id is then unknown (an error, never a double count)."""


class _Scope:
    __slots__ = ("cells", "limits", "meters")

    def __init__(self) -> None:
        # dimension -> [used, held]: a mutable cell that plans and holds keep references to,
        # so the hot loops add to a list slot instead of hashing into dictionaries.
        self.cells: dict[str, list[int]] = {}
        # (dimension, window_key) -> max_units
        self.limits: dict[tuple[str, str], int] = {}
        # (dimension, window_key) -> meter, for windowed limits only
        self.meters: dict[tuple[str, str], CalendarMeter | RollingMeter | PacingMeter] = {}

    def cell(self, dimension: str) -> list[int]:
        cell = self.cells.get(dimension)
        if cell is None:
            cell = self.cells[dimension] = [0, 0]
        return cell


_Meter = CalendarMeter | RollingMeter | PacingMeter
_Check = tuple[str, str, str, int, "_Meter | None", list[int], _Scope, Window]
"""(scope name, dimension, window key, max units, windowed meter or None, the scope's
[used, held] cell for the dimension, scope, window): everything one limit check touches."""


class _Route:
    """What an operation with a given set of dimensions touches on a path, resolved once."""

    __slots__ = (
        "caps", "cells", "checks", "columns", "flagless", "lifetime", "simple", "single"
    )  # fmt: skip

    def __init__(self, cells: tuple[tuple[list[int], str], ...], checks: tuple[_Check, ...]):
        self.cells = cells
        """Every (scope, dimension) cell, top scope first."""
        self.columns = tuple(
            (dimension, tuple(cell for cell, each in cells if each == dimension))
            for dimension in dict.fromkeys(dimension for _, dimension in cells)
        )
        """The same cells by dimension: one amount is added down a column (fewer steps)."""
        self.flagless = tuple(column for column in self.columns if column[0] != UNPRICED)
        """The columns but the unknown-cost flag's, for a plan whose scopes all carry it."""
        self.checks = checks
        """The limits on those dimensions, top scope first."""
        self.simple = all(c[4] is None or c[4].__class__ is RollingMeter for c in checks)
        """Only lifetime and rolling limits: ``admit``'s tight loop handles them inline."""
        self.single = checks[0] if self.simple and len(checks) == 1 else None
        """The one limit to check, when there is exactly one (a rate limiter's usual key)."""
        self.lifetime = all(c[4] is None for c in checks)
        """Only lifetime limits: nothing to refresh or pace, so reserve and commit loop inline."""
        self.caps = tuple((c[5], c[3]) for c in checks)
        """(the [used, held] cell, max units) of each limit: a lifetime commit's overrun test."""


class _Plan:
    """A path's scopes and their limits, valid while no limit changes (``version``)."""

    __slots__ = (
        "flagged", "limit_count", "metered", "names", "path", "routes", "scopes", "version"
    )  # fmt: skip

    def __init__(
        self, version: int, path: str, names: tuple[str, ...], scopes: tuple[_Scope, ...]
    ) -> None:
        self.version = version
        self.path = path
        self.names = names
        self.scopes = scopes
        self.metered = tuple(scope for scope in scopes if scope.meters)
        self.limit_count = sum(len(scope.limits) for scope in scopes)
        self.routes: dict[tuple[str, ...], _Route] = {}
        self.flagged = False
        """Every scope carries the unknown-cost flag (only its being non-zero is ever read, so
        a commit need not add it again; a prune that could clear it bumps the version)."""

    def route(self, dimensions: tuple[str, ...]) -> _Route:
        route = self.routes.get(dimensions)
        if route is None:
            cells = tuple(
                (scope.cell(dimension), dimension)
                for scope in self.scopes
                for dimension in dimensions
            )
            checks = tuple(
                (name, dimension, window_key, max_units, scope.meters.get((dimension, window_key)),
                 scope.cell(dimension), scope, window_of(window_key))
                for name, scope in zip(self.names, self.scopes, strict=True)
                for (dimension, window_key), max_units in scope.limits.items()
                if dimension in dimensions
            )  # fmt: skip
            route = self.routes[dimensions] = _Route(cells, checks)
        return route


_Hold = tuple[str, _Plan, _Route, Mapping[str, int], float]
"""A live hold: (path, plan, route, amounts, expires at). A plain tuple, the cheapest object
to build and drop: one is made on every reservation."""


_new_state = _new_denial = tuple.__new__

_Compact = tuple[Any, ...]
"""A settled commit with no overrun and no metadata, remembered flat as (path, committed at,
late, *actual's dimensions, *their amounts): one exact tuple of atomic values, which the garbage
collector stops tracking at its first pass (a tuple holding a dict or a tuple stays tracked).
Remembered as ``CommitOutcome`` objects (always tracked), the last million settled ids made
every full collection walk them all: about 15% of a reserve+commit cycle in a long run."""

_Settled = CommitOutcome | str | _Compact
"""What the backend remembers of a settled id: its outcome, or "released" / "expired"."""


def _compact(outcome: CommitOutcome) -> CommitOutcome | _Compact:
    """The record to remember for ``outcome`` (read back by ``MemoryBackend._settled_state``)."""
    if outcome.overruns or outcome.metadata or outcome.status != "committed":
        return outcome
    actual = outcome.actual
    return (outcome.path, outcome.committed_at, outcome.late, *actual, *actual.values())


PLAN_CACHE_SIZE = 65536

_Refusal = tuple[Mapping[str, int], int, float, LimitState, int, "int | None", "_Meter | None", int]
"""A single-limit ``admit`` refusal remembered for its path: (the amounts asked, copied;
``expect_limits``; the time before which nothing but a mutation can change the answer; the
refusing limit's state; the amount requested; the end of the bucket whose leaving frees enough,
or None; the rolling meter, or None for a lifetime limit; that meter's ``used`` then)."""


class MemoryBackend:
    """Limits, counters and holds in dictionaries behind one lock."""

    blocking = False
    """Operations never wait on I/O, so the async ledger calls them directly."""
    remote = False
    """In-process or on the local disk: no store-down policy is needed."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._lock = threading.Lock()
        self._scopes: dict[str, _Scope] = {}
        self._holds: dict[str, _Hold] = {}
        self._expiry: list[tuple[float, str]] = []
        self._compact_at = 1024  # the heap's length that makes a reservation look at compacting
        # id -> CommitOutcome for committed ids, or the string "released"/"expired"; two
        # generations of plain dicts bound the memory at SETTLED_MEMORY ids (O(1) per settle).
        self._settled: dict[str, _Settled] = {}
        self._settled_before: dict[str, _Settled] = {}
        # Expired holds, kept so that a late commit can still record the spend on their path.
        self._expired: dict[str, _Hold] = {}
        self._plans: dict[str, _Plan] = {}
        self._version = 0  # bumped by every limit change; invalidates cached plans
        # path -> the last refusal of a single-limit admit there (see admit). Every mutation
        # clears it before it changes anything; time moves only within an entry's bounds.
        self._refused: dict[str, _Refusal] = {}

    # -- limits -----------------------------------------------------------------------------

    def set_limit(self, scope: str, dimension: str, window_key: str, max_units: int) -> None:
        with self._lock:
            self._refused.clear()
            state = self._scope(scope)
            self._version += 1
            state.limits[(dimension, window_key)] = max_units
            window = window_of(window_key)
            if window.kind != "lifetime" and (dimension, window_key) not in state.meters:
                state.meters[(dimension, window_key)] = (
                    RollingMeter()
                    if window.kind == "rolling"
                    else PacingMeter()
                    if window.kind == "pacing"
                    else CalendarMeter()
                )

    def remove_limit(self, scope: str, dimension: str, window_key: str) -> bool:
        with self._lock:
            state = self._scopes.get(scope)
            if state is None or (dimension, window_key) not in state.limits:
                return False
            self._refused.clear()
            self._version += 1
            del state.limits[(dimension, window_key)]
            state.meters.pop((dimension, window_key), None)
            return True

    def get_limits(self, scope: str) -> list[tuple[str, str, int]]:
        with self._lock:
            state = self._scopes.get(scope)
            if state is None:
                return []
            return [(d, w, m) for (d, w), m in state.limits.items()]

    # -- the cycle --------------------------------------------------------------------------

    def reserve(
        self,
        reservation_id: str,
        path: str,
        scopes: tuple[str, ...],
        amounts: Mapping[str, int],
        now: float,
        expires_at: float,
    ) -> tuple[LimitState, ...] | Denial:
        # The hot path: written out flat, since every reservation runs it under the lock.
        lock = self._lock
        lock.acquire()  # not `with`: half the cost, on every reservation
        try:
            expiry = self._expiry
            if expiry and expiry[0][0] <= now:
                self._expire(now)
            plan = self._plans.get(path)
            if plan is None or plan.version != self._version:
                plan = self._plan(path, scopes)
            route = plan.routes.get(tuple(amounts)) or plan.route(tuple(amounts))
            if route.lifetime:
                # Lifetime limits only (the usual budget caps): _check's loop, without meters.
                states = []
                for name, dimension, window_key, max_units, _, cell, _, _ in route.checks:
                    requested = amounts[dimension]
                    used, held = cell
                    if used + held + requested > max_units:  # _core.crosses, inlined
                        return self._check(route, amounts, now, hold=True)  # the denial
                    states.append(
                        _new_state(
                            LimitState,
                            (name, dimension, window_key, max_units, used, held + requested),
                        )
                    )
                checked: tuple[LimitState, ...] | Denial = tuple(states)
            else:
                checked = self._check(route, amounts, now, hold=True)
                if checked.__class__ is Denial:
                    return checked
            if self._refused:  # usually empty: the test is cheaper than the call
                self._refused.clear()
            for dimension, column in route.columns:
                amount = amounts[dimension]
                for cell in column:
                    cell[1] += amount
            self._holds[reservation_id] = (path, plan, route, amounts, expires_at)
            heapq.heappush(expiry, (expires_at, reservation_id))
            if len(expiry) > self._compact_at:
                self._compact_expiry()
            return checked
        finally:
            lock.release()

    def admit(  # noqa: PLR0915 - the rate limiter's hot path, unrolled on purpose
        self,
        path: str,
        scopes: tuple[str, ...],
        amounts: Mapping[str, int],
        now: float,
        expect_limits: int = -1,
    ) -> tuple[LimitState, ...] | Denial | None:
        refused = self._refused.get(path)
        if refused is not None:
            # A saturated limiter refuses again and again: answer from the refusal remembered
            # below while nothing it depends on can have changed. No lock is needed: entries
            # are immutable, every mutation clears them (under the lock) before it changes
            # anything, and a time-driven change (a hold's expiry, a bucket leaving) happens
            # only past ``until``, or shows in ``meter.used`` if the clock stepped back.
            asked, expect, until, state, requested, retry_at, rolling, rolling_used = refused
            if (
                now < until
                and expect == expect_limits
                and (rolling is None or rolling.used == rolling_used)
                and amounts == asked
            ):
                if retry_at is None:
                    return _new_denial(Denial, (state, requested, None))
                end = retry_at - now
                return _new_denial(Denial, (state, requested, end if end > 0.0 else 0.0))
        lock = self._lock
        lock.acquire()  # not `with`: half the cost, on every admission
        try:
            expiry = self._expiry
            if expiry and expiry[0][0] <= now:
                self._expire(now)
            plan = self._plans.get(path)
            if plan is None or plan.version != self._version:
                plan = self._plan(path, scopes)
            if expect_limits >= 0 and plan.limit_count != expect_limits:
                return None
            dimensions = tuple(amounts)
            route = plan.routes.get(dimensions) or plan.route(dimensions)
            single = route.single
            if single is not None:
                # One lifetime or rolling limit (a rate limiter's usual key): loops unrolled.
                name, dimension, window_key, max_units, meter, cell, _, window = single
                requested = amounts[dimension]
                index = 0
                if meter is None:
                    used = cell[0]
                else:
                    buckets = meter.buckets  # type: ignore[union-attr]
                    index = int(now // window.granularity_s)
                    if buckets and buckets[0][0] < index - window.buckets:
                        meter.refresh(window, now)
                    used = meter.used
                held = cell[1]
                if used + held + requested > max_units:  # _core.crosses, inlined
                    retry_after = retry_at = None
                    # Nothing changes this answer before the next hold expires ...
                    until = expiry[0][0] if expiry else math.inf
                    if meter is not None:
                        # _core.rolling_retry_after: the first bucket whose leaving frees enough.
                        over = used + held + requested - max_units
                        freed = 0
                        for bucket, amount in meter.buckets:  # type: ignore[union-attr]
                            freed += amount
                            if freed >= over:
                                retry_at = (bucket + window.buckets + 1) * window.granularity_s
                                end = retry_at - now
                                retry_after = end if end > 0.0 else 0.0
                                break
                        buckets = meter.buckets  # type: ignore[union-attr]
                        if buckets:
                            # ... or the oldest bucket leaves (the refresh test above, solved
                            # for now: exact, as the granularity is a whole number of seconds).
                            leaves = (buckets[0][0] + window.buckets + 1) * window.granularity_s
                            until = leaves if leaves < until else until
                    state = _new_state(
                        LimitState, (name, dimension, window_key, max_units, used, held)
                    )
                    refusals = self._refused
                    if len(refusals) >= PLAN_CACHE_SIZE:
                        refusals.clear()
                    refusals[path] = (
                        dict(amounts), expect_limits, until, state, requested, retry_at, meter, used
                    )  # fmt: skip
                    return _new_denial(Denial, (state, requested, retry_after))
                self._refused.clear()
                for each, each_dimension in route.cells:
                    each[0] += amounts[each_dimension]
                if meter is not None:
                    buckets = meter.buckets  # type: ignore[union-attr]
                    if buckets and buckets[-1][0] >= index:
                        buckets[-1][1] += requested
                    else:
                        buckets.append([index, requested])
                    meter.used += requested
                return (
                    _new_state(
                        LimitState,
                        (name, dimension, window_key, max_units, used + requested, held),
                    ),
                )
            if not route.simple:
                return self._admit_general(route, amounts, now)
            # The hot path of try_acquire: lifetime and rolling limits, written out flat.
            checked = []
            for name, dimension, window_key, max_units, meter, cell, _, window in route.checks:
                requested = amounts[dimension]
                if meter is None:
                    used = cell[0]
                else:
                    buckets = meter.buckets  # type: ignore[union-attr]
                    if (
                        buckets
                        and buckets[0][0] < int(now // window.granularity_s) - window.buckets
                    ):
                        meter.refresh(window, now)
                    used = meter.used
                held = cell[1]
                if used + held + requested > max_units:  # _core.crosses, inlined
                    retry_after = None
                    if meter is not None:
                        # _core.rolling_retry_after: the first bucket whose leaving frees enough.
                        over = used + held + requested - max_units
                        freed = 0
                        for index, amount in meter.buckets:  # type: ignore[union-attr]
                            freed += amount
                            if freed >= over:
                                end = (index + window.buckets + 1) * window.granularity_s - now
                                retry_after = end if end > 0.0 else 0.0
                                break
                    state = _new_state(
                        LimitState, (name, dimension, window_key, max_units, used, held)
                    )
                    return _new_denial(Denial, (state, requested, retry_after))
                checked.append(
                    _new_state(
                        LimitState, (name, dimension, window_key, max_units, used + requested, held)
                    )
                )
            self._refused.clear()
            for cell, dimension in route.cells:
                cell[0] += amounts[dimension]
            for _, dimension, _, _, meter, _, _, window in route.checks:
                if meter is not None:
                    amount = amounts[dimension]
                    index = int(now // window.granularity_s)
                    buckets = meter.buckets  # type: ignore[union-attr]
                    if buckets and buckets[-1][0] >= index:
                        buckets[-1][1] += amount
                    else:
                        buckets.append([index, amount])
                    meter.used += amount
            return tuple(checked)
        finally:
            lock.release()

    def _admit_general(
        self, route: _Route, amounts: Mapping[str, int], now: float
    ) -> tuple[LimitState, ...] | Denial:
        checked = self._check(route, amounts, now, hold=False)
        if checked.__class__ is Denial:
            return checked
        self._refused.clear()
        for cell, dimension in route.cells:
            cell[0] += amounts[dimension]
        for _, dimension, _, _, meter, _, _, window in route.checks:
            if meter is not None:
                if meter.__class__ is RollingMeter:
                    meter.add(window, now, amounts[dimension])
                elif meter.__class__ is CalendarMeter:
                    meter.used += amounts[dimension]
        return checked

    def _check(
        self, route: _Route, amounts: Mapping[str, int], now: float, *, hold: bool
    ) -> tuple[LimitState, ...] | Denial:
        """Check every limit of ``route``; advance pacing buckets only if all admit.

        The states returned are as after the operation: ``held`` grows by the request for a
        hold, ``used`` for an admission.
        """
        checked: list[LimitState] = []
        paced: list[tuple[PacingMeter, float]] = []
        for name, dimension, window_key, max_units, meter, cell, scope, window in route.checks:
            requested = amounts[dimension]
            held = cell[1]
            if meter is None:
                used = cell[0]
            elif meter.__class__ is PacingMeter:
                refill_s = window.refill_s
                tat = meter.tat
                admitted, value = pace(tat, now, requested, max_units, refill_s)
                level = pacing_level(tat, now, max_units, refill_s)
                if not admitted or value is None:
                    state = LimitState(name, dimension, window_key, max_units, level, 0)
                    return deny(state, amounts, value)
                paced.append((meter, value))
                checked.append(
                    _new_state(
                        LimitState,
                        (name, dimension, window_key, max_units, level + requested, 0),
                    )
                )
                continue
            else:
                meter.refresh(window, now)
                used = meter.used
            if used + held + requested > max_units:  # _core.crosses, inlined
                state = LimitState(name, dimension, window_key, max_units, used, held)
                retry_after = self._retry_after(scope, state, amounts, now)
                return deny(state, amounts, retry_after)
            checked.append(
                _new_state(
                    LimitState,
                    (name, dimension, window_key, max_units, used, held + requested)
                    if hold
                    else (name, dimension, window_key, max_units, used + requested, held),
                )
            )
        for meter, tat in paced:
            meter.tat = tat
        return tuple(checked)

    def prune(self, scope: str, now: float) -> bool:
        """Forget ``scope`` (its limits, meters and totals) if nothing on it is live.

        Live means: a hold on it, usage inside a windowed limit's current window, a pacing
        bucket not yet empty, or lifetime usage under a lifetime limit.
        """
        with self._lock:
            if self._expiry and self._expiry[0][0] <= now:
                self._expire(now)
            state = self._scopes.get(scope)
            if state is None:
                return False
            if any(cell[1] for cell in state.cells.values()):
                return False
            for dimension, window_key in state.limits:
                meter = state.meters.get((dimension, window_key))
                if meter is None:
                    if state.cells.get(dimension, (0, 0))[0]:
                        return False
                elif isinstance(meter, PacingMeter):
                    if meter.tat > now:
                        return False
                else:
                    meter.refresh(window_of(window_key), now)
                    if meter.used:
                        return False
            self._refused.clear()
            del self._scopes[scope]
            self._version += 1
            return True

    def commit(
        self,
        reservation_id: str,
        actual: Mapping[str, int],
        now: float,
        metadata: Mapping[str, str],
    ) -> CommitOutcome:
        lock = self._lock
        lock.acquire()  # not `with`: half the cost, on every commit
        try:
            if self._refused:
                self._refused.clear()
            hold = self._holds.pop(reservation_id, None)
            if hold is None:
                if self._expiry and self._expiry[0][0] <= now:
                    self._expire(now)
                return self._settle_again(reservation_id, actual, now, metadata)
            _, plan, route, amounts, expires_at = hold
            for dimension, column in route.columns:  # _drop_hold, inlined
                amount = amounts[dimension]
                for cell in column:
                    cell[1] -= amount
            if plan.version != self._version:
                plan = self._current(plan)
            late = expires_at <= now  # past its TTL but not yet reclaimed: recorded all the same
            recorded = plan.routes.get(tuple(actual))
            if recorded is not None and recorded.lifetime and not plan.metered:
                # _record's lifetime-only case, inlined: add, then the overrun test alone.
                if plan.flagged:
                    columns = recorded.flagless
                else:
                    columns = recorded.columns
                    plan.flagged = UNPRICED in actual
                for dimension, column in columns:
                    amount = actual[dimension]
                    for cell in column:
                        cell[0] += amount
                for cell, max_units in recorded.caps:
                    if cell[0] > max_units:
                        outcome = self._outcome(plan, recorded, actual, now, metadata, late)
                        record = _compact(outcome)
                        break
                else:
                    outcome = CommitOutcome("committed", plan.path, actual, now, (), metadata, late)
                    record = (
                        outcome if metadata else (plan.path, now, late, *actual, *actual.values())
                    )
            else:
                outcome = self._record(plan, actual, now, metadata, late=late)
                record = _compact(outcome)
            settled = self._settled  # _remember, inlined
            settled[reservation_id] = record
            if len(settled) >= SETTLED_MEMORY // 2:
                self._remember(reservation_id, record)
            return outcome
        finally:
            lock.release()

    def charge(
        self,
        charge_id: str,
        path: str,
        scopes: tuple[str, ...],
        actual: Mapping[str, int],
        now: float,
        metadata: Mapping[str, str],
    ) -> CommitOutcome:
        with self._lock:
            self._refused.clear()
            settled = self._settled_state(charge_id)
            if isinstance(settled, CommitOutcome):
                return _replayed(settled)
            plan = self._plans.get(path)
            if plan is None or plan.version != self._version:
                plan = self._plan(path, scopes)
            outcome = self._record(plan, actual, now, metadata, late=False)
            self._remember(charge_id, _compact(outcome))
            return outcome

    def release(self, reservation_id: str, now: float) -> None:
        with self._lock:
            self._refused.clear()
            hold = self._holds.pop(reservation_id, None)
            if hold is not None:
                self._drop_hold(hold)
                if hold[4] <= now:  # expires_at
                    # Lapsed: the same as if expiry had reclaimed it first, so a later commit
                    # is recorded late whichever happened first.
                    self._remember(reservation_id, "expired")
                    self._expired[reservation_id] = hold
                else:
                    self._remember(reservation_id, "released")
                return
            settled = self._settled_state(reservation_id)
            if settled is None:
                raise UnknownReservation(reservation_id)
            if isinstance(settled, CommitOutcome):
                raise ReservationSettled(reservation_id, "committed", "release")

    def peek(self, scopes: tuple[str, ...], now: float) -> tuple[LimitState, ...]:
        with self._lock:
            if self._expiry and self._expiry[0][0] <= now:
                self._expire(now)
            found = [(name, self._scopes.get(name)) for name in scopes]
            return self._states([(name, scope) for name, scope in found if scope is not None], now)

    def meters(self, scope: str, now: float) -> ScopeMeters:
        with self._lock:
            if self._expiry and self._expiry[0][0] <= now:
                self._expire(now)
            state = self._scopes.get(scope)
            if state is None:
                return ScopeMeters({}, {}, ())
            limits = self._states([(scope, state)], now)
            cells = state.cells.items()
            return ScopeMeters(
                {d: c[0] for d, c in cells if c[0]}, {d: c[1] for d, c in cells if c[1]}, limits
            )

    def close(self) -> None:
        """Nothing to release; the data lives as long as this object."""

    # -- internals ----------------------------------------------------------------------------

    def _scope(self, name: str) -> _Scope:
        state = self._scopes.get(name)
        if state is None:
            state = self._scopes[name] = _Scope()
        return state

    def _states(self, scopes: list[tuple[str, _Scope]], now: float) -> tuple[LimitState, ...]:
        """Current counters of each limit on ``scopes`` (for peeks and reports)."""
        states: list[LimitState] = []
        for name, scope in scopes:
            for (dimension, window_key), max_units in scope.limits.items():
                meter = scope.meters.get((dimension, window_key))
                cell = scope.cells.get(dimension, (0, 0))
                if isinstance(meter, PacingMeter):
                    level = pacing_level(meter.tat, now, max_units, window_of(window_key).refill_s)
                    states.append(LimitState(name, dimension, window_key, max_units, level, 0))
                    continue
                if meter is None:
                    used = cell[0]
                else:
                    meter.refresh(window_of(window_key), now)
                    used = meter.used
                states.append(LimitState(name, dimension, window_key, max_units, used, cell[1]))
        return tuple(states)

    def _retry_after(
        self, scope: _Scope, state: LimitState, amounts: Mapping[str, int], now: float
    ) -> float | None:
        meter = scope.meters.get((state.dimension, state.window_key))
        requested = amounts[state.dimension]
        if isinstance(meter, RollingMeter):
            buckets = ((index, amount) for index, amount in meter.buckets)
            return retry_after_for(state, requested, now, rolling_buckets=buckets)
        return retry_after_for(
            state, requested, now, calendar=meter if isinstance(meter, CalendarMeter) else None
        )

    def _record(
        self,
        plan: _Plan,
        actual: Mapping[str, int],
        now: float,
        metadata: Mapping[str, str],
        *,
        late: bool,
    ) -> CommitOutcome:
        route = plan.routes.get(tuple(actual)) or plan.route(tuple(actual))
        for cell, dimension in route.cells:
            cell[0] += actual[dimension]
        for scope in plan.metered:
            for (dimension, window_key), meter in scope.meters.items():
                if meter.__class__ is PacingMeter:
                    continue  # a bucket paces admissions; commits do not fill it
                window = window_of(window_key)
                meter.refresh(window, now)
                amount = actual.get(dimension, 0)
                if amount:
                    if isinstance(meter, RollingMeter):
                        meter.add(window, now, amount)
                    else:
                        meter.used += amount
        return self._outcome(plan, route, actual, now, metadata, late)

    def _outcome(
        self,
        plan: _Plan,
        route: _Route,
        actual: Mapping[str, int],
        now: float,
        metadata: Mapping[str, str],
        late: bool,
    ) -> CommitOutcome:
        """The record of a commit just added: with the limits it left over their cap."""
        over: list[LimitState] = []
        for name, dimension, window_key, max_units, limit_meter, cell, _, _ in route.checks:
            if limit_meter.__class__ is PacingMeter:
                continue
            total = cell[0] if limit_meter is None else limit_meter.used
            if total > max_units:
                over.append(LimitState(name, dimension, window_key, max_units, total, cell[1]))
        return CommitOutcome("committed", plan.path, actual, now, tuple(over), metadata, late)

    def _plan(self, path: str, names: tuple[str, ...]) -> _Plan:
        """The scopes of ``path`` and their limits, cached until a limit changes."""
        if len(self._plans) >= PLAN_CACHE_SIZE:
            self._plans.clear()
        scopes = tuple(self._scope(name) for name in names)
        plan = self._plans[path] = _Plan(self._version, path, names, scopes)
        return plan

    def _settle_again(
        self,
        reservation_id: str,
        actual: Mapping[str, int],
        now: float,
        metadata: Mapping[str, str],
    ) -> CommitOutcome:
        settled = self._settled_state(reservation_id)
        if settled is None:
            raise UnknownReservation(reservation_id)
        if isinstance(settled, CommitOutcome):
            return _replayed(settled)
        if settled == "released":
            raise ReservationSettled(reservation_id, "released", "commit")
        # Expired and reclaimed: the spend happened, so record it late (and remember it).
        hold = self._expired.pop(reservation_id)
        outcome = self._record(self._current(hold[1]), actual, now, metadata, late=True)
        self._remember(reservation_id, _compact(outcome))
        return outcome

    def _current(self, plan: _Plan) -> _Plan:
        if plan.version == self._version:
            return plan
        return self._plan(plan.path, path_prefixes(plan.path))

    def _drop_hold(self, hold: _Hold) -> None:
        # Cells never move, so a hold's route stays valid across limit changes.
        _, _, route, amounts, _ = hold
        for cell, dimension in route.cells:
            cell[1] -= amounts[dimension]

    def _expire(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _, reservation_id = heapq.heappop(expiry)
            hold = self._holds.get(reservation_id)
            if hold is not None and hold[4] <= now:  # expires_at
                self._refused.clear()
                del self._holds[reservation_id]
                self._drop_hold(hold)
                self._remember(reservation_id, "expired")
                self._expired[reservation_id] = hold

    def _compact_expiry(self) -> None:
        # Rebuilt once stale entries (settled holds) outnumber the live ones: amortised O(1).
        if len(self._expiry) > 2 * len(self._holds) + 1024:
            self._expiry = [(hold[4], rid) for rid, hold in self._holds.items()]
            heapq.heapify(self._expiry)
        self._compact_at = max(len(self._expiry), 2 * len(self._holds) + 1024)

    def _remember(self, reservation_id: str, record: _Settled) -> None:
        settled = self._settled
        settled[reservation_id] = record
        if len(settled) >= SETTLED_MEMORY // 2:
            for old_id in self._settled_before:
                self._expired.pop(old_id, None)
            self._settled_before = settled
            self._settled = {}

    def _settled_state(self, reservation_id: str) -> CommitOutcome | str | None:
        found = self._settled.get(reservation_id)
        if found is None:
            found = self._settled_before.get(reservation_id)
        if isinstance(found, tuple):  # a _Compact record (CommitOutcome is no tuple)
            path, committed_at, late = found[:3]
            half = (len(found) - 3) // 2
            actual = dict(zip(found[3 : 3 + half], found[3 + half :], strict=True))
            return CommitOutcome("committed", path, actual, committed_at, (), _NO_METADATA, late)
        return found


def _replayed(settled: CommitOutcome) -> CommitOutcome:
    """A retry of a settled commit or charge: the same record, counted nothing."""
    return CommitOutcome(
        "replayed",
        settled.path,
        settled.actual,
        settled.committed_at,
        settled.overruns,
        settled.metadata,
        settled.late,
    )
