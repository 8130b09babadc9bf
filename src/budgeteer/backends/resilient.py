"""What a ledger does when its store is down: an explicit choice, never a silent allow.

``ResilientBackend`` wraps any backend. Commits are retried (they are idempotent by id, so a
retry never counts twice). When the store stays unreachable, the policy decides:

* ``"raise"`` (default): every operation raises ``BackendUnavailable`` (from the cause).
* ``"deny"``: reservations are refused with ``BudgetExceeded`` (limit 0, ``retry_after``
  ``None``) raised from the ``BackendUnavailable``; commits that cannot be delivered are queued.
* ``"allow"``: reservations are admitted against a small local emergency budget (a ``Usage``
  per process, ``emergency=``); their commits are queued. Once it is spent, reservations are
  refused as under ``"deny"``.

Queued commits and charges are delivered, in order, before the next operation that reaches the
store, so spend made during an outage is never lost (as long as the process lives: the queue is
in memory).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Literal, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from budgeteer.backends.base import Backend, CommitOutcome, Denial, ScopeMeters, path_prefixes
from budgeteer.backends.memory import MemoryBackend
from budgeteer.errors import BackendUnavailable, BudgeteerError, BudgetExceeded, InvalidInput
from budgeteer.model import LimitState, Usage, from_units

logger = logging.getLogger("budgeteer.store")

StoreDownPolicy = Literal["raise", "deny", "allow"]
POLICIES: tuple[str, ...] = ("raise", "deny", "allow")
LOCAL = "local#"
"""Ids of reservations admitted from the emergency budget start with this."""
_EMERGENCY_SCOPE = "emergency:local"
T = TypeVar("T")


class StoreDown(Exception):
    """The wrapped store failed after retries; carries the last error."""


def _is_outage(error: BaseException) -> bool:
    return not isinstance(error, BudgeteerError)


class ResilientBackend:
    """A backend wrapper that applies a store-down policy and delivers queued spend later."""

    def __init__(
        self,
        inner: Backend,
        policy: StoreDownPolicy = "raise",
        emergency: Usage | None = None,
        *,
        attempts: int = 3,
        max_wait_s: float = 0.5,
    ) -> None:
        if policy not in POLICIES:
            raise InvalidInput("on_store_down", policy, f"use one of {POLICIES}")
        if policy == "allow" and (emergency is None or not emergency.units):
            raise InvalidInput(
                "emergency", emergency, "the 'allow' policy needs a non-empty emergency Usage"
            )
        if policy != "allow" and emergency is not None:
            raise InvalidInput("emergency", emergency, f"unused under on_store_down={policy!r}")
        self.inner = inner
        self.policy = policy
        self.url = inner.url
        self.blocking = inner.blocking
        self.remote = inner.remote
        self._retrying = Retrying(
            stop=stop_after_attempt(max(attempts - 1, 1)),  # after the first, direct try
            wait=wait_exponential(multiplier=0.01, max=max_wait_s),
            retry=retry_if_exception(_is_outage),
            reraise=True,
        )
        self._lock = threading.Lock()
        # ("commit", id, actual, now, metadata) or ("charge", id, path, scopes, actual, now,
        # metadata): both idempotent by id, so delivering one twice never counts twice.
        self._queue: deque[tuple[object, ...]] = deque()
        self._local = MemoryBackend("memory://emergency")
        for dimension, amount in (emergency.units if emergency is not None else {}).items():
            self._local.set_limit(_EMERGENCY_SCOPE, dimension, "lifetime", amount)

    @property
    def queued(self) -> int:
        """Commits and charges waiting for the store."""
        return len(self._queue)

    # -- plumbing -------------------------------------------------------------------------------

    def _call(self, function: Callable[..., T], *args: object, retry: bool = False) -> T:
        """Deliver the queue, then run ``function``; ``StoreDown`` if the store is unreachable."""
        try:
            self._flush()
            if not retry:
                return function(*args)
            try:  # the common case stays out of tenacity's bookkeeping
                return function(*args)
            except Exception as error:
                if not _is_outage(error):
                    raise
            return self._retrying(function, *args)
        except BudgeteerError:
            raise
        except Exception as error:
            raise StoreDown(repr(error)) from error

    def _flush(self) -> None:
        while self._queue:
            with self._lock:
                if not self._queue:
                    return
                item = self._queue[0]
            kind, *args = item
            try:
                if kind == "commit":
                    self.inner.commit(*args)  # type: ignore[arg-type]
                else:
                    self.inner.charge(*args)  # type: ignore[arg-type]
            except BudgeteerError:
                # Settled meanwhile (released, or unknown after the store lost it): an outage
                # error propagates and keeps the item; a refusal like this one never will pass.
                logger.exception("dropping undeliverable queued %s %s", kind, args[0])
            with self._lock:
                if self._queue and self._queue[0] is item:
                    self._queue.popleft()

    def _queued_outcome(
        self, path: str, actual: Mapping[str, int], now: float, metadata: Mapping[str, str]
    ) -> CommitOutcome:
        return CommitOutcome("committed", path, actual, now, (), {**metadata, "queued": "1"})

    # -- the Backend protocol -------------------------------------------------------------------

    def set_limit(self, scope: str, dimension: str, window_key: str, max_units: int) -> None:
        self._raise_down(self._call, self.inner.set_limit, scope, dimension, window_key, max_units)

    def remove_limit(self, scope: str, dimension: str, window_key: str) -> bool:
        removed: bool = self._raise_down(
            self._call, self.inner.remove_limit, scope, dimension, window_key
        )
        return removed

    def get_limits(self, scope: str) -> list[tuple[str, str, int]]:
        return self._raise_down(self._call, self.inner.get_limits, scope)

    def reserve(
        self,
        reservation_id: str,
        path: str,
        scopes: tuple[str, ...],
        amounts: Mapping[str, int],
        now: float,
        expires_at: float,
    ) -> tuple[LimitState, ...] | Denial:
        try:
            return self._call(
                self.inner.reserve, reservation_id, path, scopes, amounts, now, expires_at
            )
        except StoreDown as down:
            return self._when_down(
                down,
                "reserve",
                path,
                amounts,
                lambda: self._local.reserve(
                    LOCAL + reservation_id, path, (_EMERGENCY_SCOPE,), amounts, now, expires_at
                ),
            )

    def admit(
        self,
        path: str,
        scopes: tuple[str, ...],
        amounts: Mapping[str, int],
        now: float,
        expect_limits: int = -1,
    ) -> tuple[LimitState, ...] | Denial | None:
        try:
            return self._call(self.inner.admit, path, scopes, amounts, now, expect_limits)
        except StoreDown as down:
            # Under "allow", admitted against the emergency budget; nothing is queued (an
            # admission is a rate decision, not spend to deliver later).
            return self._when_down(
                down,
                "admit",
                path,
                amounts,
                lambda: self._local.admit(path, (_EMERGENCY_SCOPE,), amounts, now),
            )

    def _when_down(
        self,
        down: StoreDown,
        operation: str,
        path: str,
        amounts: Mapping[str, int],
        emergency: Callable[[], tuple[LimitState, ...] | Denial | None],
    ) -> tuple[LimitState, ...]:
        """An admission the store could not answer, by the policy: re-raise the outage
        (``raise``), admit against the emergency budget (``allow``), or refuse."""
        if self.policy == "raise":
            raise down.__cause__ from None  # type: ignore[misc]
        if self.policy == "allow":
            local = emergency()
            if local is not None and not isinstance(local, Denial):
                return local
        outage = BackendUnavailable(self.url, operation, str(down))
        outage.__cause__ = down.__cause__
        raise _denial(path, amounts) from outage

    def prune(self, scope: str, now: float) -> bool:
        pruned: bool = self._raise_down(self._call, self.inner.prune, scope, now)
        return pruned

    def commit(
        self,
        reservation_id: str,
        actual: Mapping[str, int],
        now: float,
        metadata: Mapping[str, str],
    ) -> CommitOutcome:
        held_locally = self._local_hold_path(reservation_id)
        if held_locally is not None:
            self._local.commit(LOCAL + reservation_id, actual, now, metadata)
            with self._lock:
                self._queue.append(
                    ("charge", reservation_id, held_locally, path_prefixes(held_locally),
                     dict(actual), now, dict(metadata))
                )  # fmt: skip
            # Still down: the queue is delivered with a later operation.
            with contextlib.suppress(Exception):
                self._flush()
            return self._queued_outcome(held_locally, actual, now, metadata)
        try:
            return self._call(self.inner.commit, reservation_id, actual, now, metadata, retry=True)
        except StoreDown as down:
            if self.policy == "raise":
                raise down.__cause__ from None  # type: ignore[misc]
            with self._lock:
                self._queue.append(("commit", reservation_id, dict(actual), now, dict(metadata)))
            root = reservation_id.partition("#")[0]
            return self._queued_outcome(root, actual, now, metadata)

    def charge(
        self,
        charge_id: str,
        path: str,
        scopes: tuple[str, ...],
        actual: Mapping[str, int],
        now: float,
        metadata: Mapping[str, str],
    ) -> CommitOutcome:
        try:
            return self._call(
                self.inner.charge, charge_id, path, scopes, actual, now, metadata, retry=True
            )
        except StoreDown as down:
            if self.policy == "raise":
                raise down.__cause__ from None  # type: ignore[misc]
            with self._lock:
                self._queue.append(
                    ("charge", charge_id, path, scopes, dict(actual), now, dict(metadata))
                )
            return self._queued_outcome(path, actual, now, metadata)

    def release(self, reservation_id: str, now: float) -> None:
        if self._local_hold_path(reservation_id) is not None:
            self._local.release(LOCAL + reservation_id, now)
            return
        try:
            self._call(self.inner.release, reservation_id, now, retry=True)
        except StoreDown as down:
            if self.policy == "raise":
                raise down.__cause__ from None  # type: ignore[misc]
            # Not reachable: the hold will expire by its TTL on the store.

    def peek(self, scopes: tuple[str, ...], now: float) -> tuple[LimitState, ...]:
        return self._raise_down(self._call, self.inner.peek, scopes, now)

    def meters(self, scope: str, now: float) -> ScopeMeters:
        meters: ScopeMeters = self._raise_down(self._call, self.inner.meters, scope, now)
        return meters

    def close(self) -> None:
        self.inner.close()

    # -- helpers --------------------------------------------------------------------------------

    def _local_hold_path(self, reservation_id: str) -> str | None:
        hold = self._local._holds.get(LOCAL + reservation_id)
        return hold[0] if hold is not None else None  # the memory backend's (path, ...)

    @staticmethod
    def _raise_down(call: Callable[..., T], *args: object) -> T:
        try:
            return call(*args)
        except StoreDown as down:
            raise down.__cause__ from None  # type: ignore[misc]


def _denial(path: str, amounts: Mapping[str, int]) -> BudgetExceeded:
    """A reservation refused because the store is down (raised ``from`` the outage)."""
    dimension = next(iter(amounts), "requests")
    return BudgetExceeded(
        scope=path,
        dimension=dimension,
        limit=from_units(dimension, 0),
        used=from_units(dimension, 0),
        held=from_units(dimension, 0),
        requested=from_units(dimension, amounts.get(dimension, 0)),
        window=None,
        retry_after=None,
    )
