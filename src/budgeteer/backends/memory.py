"""``memory://``: an in-process, thread-safe backend. Fast, and gone when the process exits."""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict
from collections.abc import Mapping

from budgeteer.backends.base import (
    CommitOutcome,
    CommitRequest,
    LimitState,
    ReserveOutcome,
    ReserveRequest,
    ScopeMeters,
)
from budgeteer.errors import ReservationSettled, UnknownReservation
from budgeteer.ledger._core import (
    CalendarMeter,
    RollingMeter,
    deny,
    find_denial,
    overruns,
    window_of,
    with_hold,
)

SETTLED_MEMORY = 1_000_000
"""How many settled reservation ids the memory backend remembers for idempotent retries."""


class _Scope:
    __slots__ = ("held", "limits", "meters", "used")

    def __init__(self) -> None:
        self.used: dict[str, int] = {}
        self.held: dict[str, int] = {}
        # (dimension, window_key) -> max_units
        self.limits: dict[tuple[str, str], int] = {}
        # (dimension, window_key) -> meter, for windowed limits only
        self.meters: dict[tuple[str, str], CalendarMeter | RollingMeter] = {}


class _Hold:
    __slots__ = ("amounts", "expires_at", "names", "path", "scopes")

    def __init__(
        self,
        path: str,
        names: tuple[str, ...],
        scopes: tuple[_Scope, ...],
        amounts: Mapping[str, int],
        expires_at: float,
    ) -> None:
        self.path = path
        self.names = names
        self.scopes = scopes
        self.amounts = amounts
        self.expires_at = expires_at


class MemoryBackend:
    """Limits, counters and holds in dictionaries behind one lock."""

    blocking = False
    """Operations never wait on I/O, so the async ledger calls them directly."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._lock = threading.Lock()
        self._scopes: dict[str, _Scope] = {}
        self._holds: dict[str, _Hold] = {}
        self._expiry: list[tuple[float, str]] = []
        # id -> CommitOutcome for committed ids, or the string "released"/"expired".
        self._settled: OrderedDict[str, CommitOutcome | str] = OrderedDict()
        # Expired holds, kept so that a late commit can still record the spend on their path.
        self._expired: dict[str, _Hold] = {}

    # -- limits -----------------------------------------------------------------------------

    def set_limit(self, scope: str, dimension: str, window_key: str, max_units: int) -> None:
        with self._lock:
            state = self._scope(scope)
            state.limits[(dimension, window_key)] = max_units
            window = window_of(window_key)
            if window.kind != "lifetime" and (dimension, window_key) not in state.meters:
                state.meters[(dimension, window_key)] = (
                    RollingMeter() if window.kind == "rolling" else CalendarMeter()
                )

    def remove_limit(self, scope: str, dimension: str, window_key: str) -> bool:
        with self._lock:
            state = self._scopes.get(scope)
            if state is None or (dimension, window_key) not in state.limits:
                return False
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

    def reserve(self, request: ReserveRequest) -> ReserveOutcome:
        now = request.now
        amounts = request.amounts
        with self._lock:
            if self._expiry and self._expiry[0][0] <= now:
                self._expire(now)
            scopes = tuple(self._scope(name) for name in request.scopes)
            states = self._states(request.scopes, scopes, now, amounts)
            if states:
                refused = find_denial(states, amounts)
                if refused is not None:
                    scope = scopes[request.scopes.index(refused.scope)]
                    return ReserveOutcome(
                        deny(refused, amounts, self._retry_after(scope, refused, amounts, now))
                    )
            for scope in scopes:
                held = scope.held
                for dimension, amount in amounts.items():
                    held[dimension] = held.get(dimension, 0) + amount
            self._holds[request.id] = _Hold(
                request.path, request.scopes, scopes, amounts, request.expires_at
            )
            heapq.heappush(self._expiry, (request.expires_at, request.id))
            if len(self._expiry) > 2 * len(self._holds) + 1024:
                self._compact_expiry()
            return ReserveOutcome(None, with_hold(states, amounts) if states else ())

    def commit(self, request: CommitRequest) -> CommitOutcome:
        now = request.now
        with self._lock:
            if request.direct_path is not None:
                names = request.direct_scopes
                scopes = tuple(self._scope(name) for name in names)
                return self._record(request, request.direct_path, names, scopes, "committed")
            hold = self._holds.pop(request.id, None)
            if hold is None:
                if self._expiry and self._expiry[0][0] <= now:
                    self._expire(now)
                return self._settle_again(request)
            if hold.expires_at <= now:
                # Expired but not yet reclaimed: reclaim it, then record the usage as late.
                self._drop_hold(hold)
                return self._record(request, hold.path, hold.names, hold.scopes, "late")
            self._drop_hold(hold)
            return self._record(request, hold.path, hold.names, hold.scopes, "committed")

    def release(self, reservation_id: str, now: float) -> None:
        del now  # a hold past its TTL that was not reclaimed yet is released all the same
        with self._lock:
            hold = self._holds.pop(reservation_id, None)
            if hold is not None:
                self._drop_hold(hold)
                self._remember(reservation_id, "released")
                return
            settled = self._settled.get(reservation_id)
            if settled is None:
                raise UnknownReservation(reservation_id)
            if isinstance(settled, CommitOutcome):
                raise ReservationSettled(reservation_id, "committed", "release")

    def peek(self, scopes: tuple[str, ...], now: float) -> tuple[LimitState, ...]:
        with self._lock:
            if self._expiry and self._expiry[0][0] <= now:
                self._expire(now)
            states = tuple(self._scopes.get(name) for name in scopes)
            if any(s is None for s in states):
                scopes, states = (
                    tuple(n for n, s in zip(scopes, states, strict=True) if s is not None),
                    tuple(s for s in states if s is not None),
                )
            return self._states(scopes, states, now, None)  # type: ignore[arg-type]

    def meters(self, scope: str, now: float) -> ScopeMeters:
        with self._lock:
            if self._expiry and self._expiry[0][0] <= now:
                self._expire(now)
            state = self._scopes.get(scope)
            if state is None:
                return ScopeMeters({}, {}, ())
            limits = self._states((scope,), (state,), now, None)
            return ScopeMeters(dict(state.used), dict(state.held), limits)

    def close(self) -> None:
        """Nothing to release; the data lives as long as this object."""

    # -- internals ----------------------------------------------------------------------------

    def _scope(self, name: str) -> _Scope:
        state = self._scopes.get(name)
        if state is None:
            state = self._scopes[name] = _Scope()
        return state

    def _states(
        self,
        names: tuple[str, ...],
        scopes: tuple[_Scope, ...],
        now: float,
        amounts: Mapping[str, int] | None,
    ) -> tuple[LimitState, ...]:
        """Current counters of each limit on ``scopes`` (only dimensions in ``amounts``, if given)."""
        states: list[LimitState] = []
        for name, scope in zip(names, scopes, strict=True):
            if not scope.limits:
                continue
            for (dimension, window_key), max_units in scope.limits.items():
                if amounts is not None and dimension not in amounts:
                    continue
                meter = scope.meters.get((dimension, window_key))
                if meter is None:
                    used = scope.used.get(dimension, 0)
                else:
                    meter.refresh(window_of(window_key), now)
                    used = meter.used
                states.append(
                    LimitState(
                        name, dimension, window_key, max_units, used, scope.held.get(dimension, 0)
                    )
                )
        return tuple(states)

    def _retry_after(
        self, scope: _Scope, state: LimitState, amounts: Mapping[str, int], now: float
    ) -> float | None:
        meter = scope.meters.get((state.dimension, state.window_key))
        requested = amounts[state.dimension]
        over = state.used + state.held + requested - state.max_units
        if isinstance(meter, RollingMeter):
            return meter.retry_after(window_of(state.window_key), over, now)
        if isinstance(meter, CalendarMeter):
            return meter.retry_after(over, state.held, requested, state.max_units, now)
        return None

    def _record(
        self,
        request: CommitRequest,
        path: str,
        names: tuple[str, ...],
        scopes: tuple[_Scope, ...],
        status: str,
    ) -> CommitOutcome:
        now = request.now
        actual = request.actual
        over: list[LimitState] = []
        for name, scope in zip(names, scopes, strict=True):
            used = scope.used
            for dimension, amount in actual.items():
                used[dimension] = used.get(dimension, 0) + amount
            if scope.meters:
                for (dimension, window_key), meter in scope.meters.items():
                    amount = actual.get(dimension, 0)
                    window = window_of(window_key)
                    meter.refresh(window, now)
                    if amount:
                        if isinstance(meter, RollingMeter):
                            meter.add(window, now, amount)
                        else:
                            meter.used += amount
            if scope.limits:
                states = self._states((name,), (scope,), now, actual)
                over.extend(overruns(states))
        outcome = CommitOutcome(
            status="committed",
            path=path,
            actual=dict(actual),
            committed_at=now,
            overruns=tuple(over),
            metadata=dict(request.metadata),
            late=status == "late",
        )
        if request.direct_path is None:
            self._remember(request.id, outcome)
        return outcome

    def _settle_again(self, request: CommitRequest) -> CommitOutcome:
        settled = self._settled.get(request.id)
        if settled is None:
            raise UnknownReservation(request.id)
        if isinstance(settled, CommitOutcome):
            return CommitOutcome(
                status="replayed",
                path=settled.path,
                actual=settled.actual,
                committed_at=settled.committed_at,
                overruns=settled.overruns,
                metadata=settled.metadata,
                late=settled.late,
            )
        if settled == "released":
            raise ReservationSettled(request.id, "released", "commit")
        # Expired and reclaimed: the spend happened, so record it late (and remember it).
        hold = self._expired.pop(request.id)
        return self._record(request, hold.path, hold.names, hold.scopes, "late")

    def _drop_hold(self, hold: _Hold) -> None:
        for scope in hold.scopes:
            held = scope.held
            for dimension, amount in hold.amounts.items():
                held[dimension] -= amount

    def _expire(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _, reservation_id = heapq.heappop(expiry)
            hold = self._holds.get(reservation_id)
            if hold is not None and hold.expires_at <= now:
                del self._holds[reservation_id]
                self._drop_hold(hold)
                self._remember(reservation_id, "expired")
                self._expired[reservation_id] = hold

    def _compact_expiry(self) -> None:
        self._expiry = [(h.expires_at, rid) for rid, h in self._holds.items()]
        heapq.heapify(self._expiry)

    def _remember(self, reservation_id: str, outcome: CommitOutcome | str) -> None:
        settled = self._settled
        settled[reservation_id] = outcome
        if len(settled) > SETTLED_MEMORY:
            old_id, _ = settled.popitem(last=False)
            self._expired.pop(old_id, None)
