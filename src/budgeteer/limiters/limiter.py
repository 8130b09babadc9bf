"""``Limiter`` and ``AsyncLimiter``: acquire room on a path, three ways, over any ledger.

* ``try_acquire(path, usage)`` never waits: one atomic *admit* (check every limit of every
  scope on the path, budget caps and rates alike, and record the usage) — one round trip on
  Redis. It answers an ``Admission``; a refusal names the limit and ``retry_after``.
* ``acquire(path, usage, timeout=...)`` waits for room (sleeping through the clock's hooks, so
  ``budgeteer.testing.FakeClock`` makes it instant) and raises ``BudgetExceeded`` with the
  refusing limit's fields when the deadline passes.
* ``reserve(path, estimate, timeout=...)`` / ``commit(reservation, actual)`` / ``release``:
  hold an estimate, then record what was really used (or free it).

Several dimensions (say 1 request and 3,000 tokens) are acquired together, all or nothing.
Waiters on one path are served first in, first out (see ``_acquire``'s module doc).

The two twins share ``LimiterCore`` for every rule; they differ only in how they call the store
and sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

from budgeteer._clock import Clock, SystemClock, async_sleep_of, sleep_of
from budgeteer.backends.base import Denial
from budgeteer.errors import BackendUnavailable, BudgeteerError, ReservationSettled
from budgeteer.ledger import AsyncLedger, Ledger
from budgeteer.ledger._frontend import exceeded
from budgeteer.limiters._acquire import (
    DEFAULT_POLL_S,
    ONE_REQUEST,
    Admission,
    KeyState,
    LimiterCore,
    Spec,
    UsageLike,
    amounts_of,
    to_limit,
    usage_of,
)
from budgeteer.limiters.concurrency import DEFAULT_SLOT_COUNTER, Concurrency
from budgeteer.limiters.keys import KeyPolicy
from budgeteer.model import Charge, LimitState, Reservation

T = TypeVar("T")
_Result = tuple[LimitState, ...] | Denial


class Limiter:
    """Rate limits, pacing, concurrency caps and budgets on scope paths, with waiting.

    Example::

        limiter = Limiter("redis://localhost:6379/0")
        limiter.set_limits("org:acme/key:openai", Rate.per_minute(500),
                           Rate.per_minute(90_000, "total_tokens"), Pacing(rate=10, burst=20))
        limiter.acquire("org:acme/key:openai", {"requests": 1, "total_tokens": 3000}, timeout=30)

    Args:
        ledger: a ``Ledger`` or a backend URL (``memory://``, ``sqlite:///...``, ``redis://...``).
        clock: for a URL, the ledger's clock (``FakeClock`` in tests); sleeps use its hooks.
        policy: a ``KeyPolicy`` for ``key(user, endpoint)``.
        poll_s: how often a waiter blocked only by others' holds asks again.
    """

    def __init__(
        self,
        ledger: Ledger | str = "memory://",
        *,
        clock: Clock | None = None,
        policy: KeyPolicy | None = None,
        poll_s: float = DEFAULT_POLL_S,
    ) -> None:
        self.ledger = ledger if isinstance(ledger, Ledger) else Ledger(ledger, clock=clock)
        """The ledger the limits live in (budgets on the same paths are checked together)."""
        self.policy = policy
        """The key policy, if any."""
        self._front = self.ledger._front
        self._backend = self.ledger._backend
        self._now = _now_of(self._front.clock)
        self._monotonic = self._front.clock.monotonic
        self._sleep = sleep_of(self._front.clock)
        self._core = LimiterCore(poll_s)
        self._cond = threading.Condition()
        self._backend_admit = self._backend.admit
        # path -> (its scopes, its KeyState or None): resolved once per path.
        self._paths: dict[str, tuple[tuple[str, ...], KeyState | None]] = {}
        self._install_lock = threading.Lock()

    @property
    def clock(self) -> Clock:
        """The clock the ledger reads and waits sleep through."""
        return self._front.clock

    # -- limits ---------------------------------------------------------------------------------

    def set_limits(self, path: str, *specs: Spec) -> None:
        """Set ``specs`` (``Rate``, ``Pacing``, ``Concurrency``, ``Limit``) on scope ``path``."""
        self.ledger.set_limits(path, *(to_limit(spec) for spec in specs))

    def key(self, user: str, endpoint: str | None = None) -> str:
        """The path of key ``(user, endpoint)`` under the policy, its limits installed."""
        policy = self._policy()
        path = policy.path(user, endpoint)
        state = self._core.keys.get(path)
        if state is None or state.version != policy.version:
            self._install(path, user, endpoint)
        return path

    # -- acquiring ------------------------------------------------------------------------------

    def try_acquire(self, path: str, usage: UsageLike = None) -> Admission:
        """Admit ``usage`` (default: one request) on ``path`` now, or refuse; never waits.

        Every limit of every scope on the path is checked and, if all have room, the usage is
        recorded as used, in one atomic step. Refused while other callers of this limiter wait
        on the same path (they were first).
        """
        amounts = ONE_REQUEST if usage is None else amounts_of(usage)
        core = self._core
        if core.queues:
            refusal = core.queued_refusal(path, amounts)
            if refusal is not None:
                return Admission(False, path, refusal)
        entry = self._paths.get(path)
        if entry is not None and entry[1] is None:
            # The hot path (a path without a key policy): _admit, inlined.
            try:
                result = self._backend_admit(path, entry[0], amounts, self._now(), -1)
            except BudgeteerError:
                raise
            except Exception as error:
                raise BackendUnavailable(self._backend.url, "admit", repr(error)) from error
            if result is not None:
                return _new(Admission, (result.__class__ is not Denial, path, result))
        result = self._admit(path, amounts)
        return _new(Admission, (result.__class__ is not Denial, path, result))

    def acquire(
        self, path: str, usage: UsageLike = None, *, timeout: float | None = None
    ) -> Admission:
        """Admit ``usage`` on ``path``, waiting up to ``timeout`` seconds (``None``: forever).

        Raises:
            BudgetExceeded: the deadline passed (or waiting cannot help: the request is larger
                than a limit), with the fields of the last refusal; nothing was recorded.
        """
        amounts = ONE_REQUEST if usage is None else amounts_of(usage)
        result = self._wait(path, lambda: self._admit(path, amounts), timeout)
        return Admission(True, path, result)

    def reserve(
        self,
        path: str,
        estimate: UsageLike = None,
        *,
        timeout: float | None = 0.0,
        ttl_s: float | None = None,
    ) -> Reservation:
        """Hold ``estimate`` on ``path`` (waiting up to ``timeout``; 0: not at all).

        Settle the hold with ``commit(reservation, actual)`` or ``release(reservation)``; an
        unsettled hold returns by itself after ``ttl_s``. Holds count against every window of
        their dimensions until settled; pacing buckets are drained at reservation.
        """
        amounts = amounts_of(estimate, "estimate")
        ttl = self._front.default_ttl_s if ttl_s is None else self._front.check_ttl(ttl_s)
        scopes = self._front.scopes(path)
        reservation: list[Reservation] = []

        def attempt() -> _Result:
            now = self._now()
            reservation_id = self._front.new_id(path)
            result = self._call(
                "reserve", self._backend.reserve, reservation_id, path, scopes, amounts, now,
                now + ttl,
            )  # fmt: skip
            if not isinstance(result, Denial):
                usage = usage_of(estimate, amounts)
                reservation.append(Reservation(reservation_id, path, usage, now, now + ttl, result))
            return result

        self._wait(path, attempt, timeout)
        return reservation[-1]

    def commit(
        self,
        reservation: Reservation | str,
        actual: UsageLike,
        *,
        metadata: Mapping[str, object] | None = None,
    ) -> Charge:
        """Replace the hold by the ``actual`` usage (see ``Ledger.commit``)."""
        charge = self.ledger.commit(
            reservation, {} if actual is None else actual, metadata=metadata
        )
        self._wake()
        return charge

    def release(self, reservation: Reservation | str) -> None:
        """Free the hold (see ``Ledger.release``)."""
        self.ledger.release(reservation)
        self._wake()

    @contextmanager
    def concurrent(
        self,
        path: str,
        usage: UsageLike = None,
        *,
        timeout: float | None = None,
        ttl_s: float | None = None,
        counter: str = DEFAULT_SLOT_COUNTER,
    ) -> Iterator[Reservation]:
        """Hold a slot of ``Concurrency(counter=...)`` on ``path`` (with ``usage``) for a block.

        On a normal exit ``usage`` is committed (unless the block settled the reservation
        itself); on an exception the hold is released. A crash leaves the hold to its TTL.
        """
        amounts = dict(ONE_REQUEST if usage is None else amounts_of(usage))
        slot = Concurrency(1, counter).dimension
        amounts[slot] = amounts.get(slot, 0) + 1
        reservation = self.reserve(path, amounts, timeout=timeout, ttl_s=ttl_s)
        plain = {d: a for d, a in amounts.items() if d != slot}
        try:
            yield reservation
        except BaseException:
            _settle_quietly(lambda: self.release(reservation))
            raise
        _settle_quietly(lambda: self.commit(reservation, usage_of(usage, plain)))

    # -- maintenance ----------------------------------------------------------------------------

    def cleanup_idle(self) -> int:
        """Forget the keys this limiter installed whose windows are all empty on the store.

        A key with a live window (usage still inside a span, a bucket not yet empty, a hold) is
        kept, whoever used it; a forgotten key is installed again on its next use. Returns how
        many scopes were forgotten (a key, and its user's scope once that holds nothing).
        """
        forgotten = 0
        for path in list(self._core.keys):
            if self._call("prune", self._backend.prune, path, self._now()):
                forgotten += 1
                self._core.keys.pop(path, None)
                self._paths.pop(path, None)
                parent = path.rsplit("/", 1)[0]
                if self._call("prune", self._backend.prune, parent, self._now()):
                    forgotten += 1
        return forgotten

    def close(self) -> None:
        """Close the ledger."""
        self.ledger.close()

    def __enter__(self) -> Limiter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _admit(self, path: str, amounts: Mapping[str, int]) -> _Result:
        entry = self._paths.get(path)
        if entry is None:
            entry = self._entry(path)
        scopes, key = entry
        try:  # the hot path: Ledger._call inlined
            result = self._backend.admit(
                path, scopes, amounts, self._now(), -1 if key is None else key.count
            )
        except BudgeteerError:
            raise
        except Exception as error:
            raise BackendUnavailable(self._backend.url, "admit", repr(error)) from error
        if result is None and key is not None:
            # The store lost the key's limits (pruned by another process): install them again.
            self._install(path, key.user, key.endpoint)
            key = self._core.keys[path]
            result = self._call(
                "admit", self._backend.admit, path, scopes, amounts, self._now(), key.count
            )
        if result is None:
            raise BackendUnavailable(self._backend.url, "admit", "limits changed under the key")
        return result

    def _entry(self, path: str) -> tuple[tuple[str, ...], KeyState | None]:
        entry = (self._front.scopes(path), self._core.keys.get(path))
        if len(self._paths) >= 65536:
            self._paths.clear()
        self._paths[path] = entry
        return entry

    def _wait(self, path: str, attempt: Callable[[], _Result], timeout: float | None) -> Any:
        core = self._core
        deadline = core.deadline(timeout, self._monotonic())
        # Every waiter queues before it asks, so arrival order is call order (FIFO per path).
        ticket = object()
        with self._cond:
            queue = core.enqueue(path, ticket)
        try:
            while True:
                with self._cond:
                    while queue.tickets[0] is not ticket:
                        now = self._monotonic()
                        if deadline is not None and now >= deadline:
                            refusal = core.queued_refusal(path, {})
                            if refusal is None:
                                break  # the head has not asked yet: ask once ourselves
                            raise exceeded(refusal)
                        self._cond.wait(None if deadline is None else deadline - now)
                result = attempt()
                if not isinstance(result, Denial):
                    return result
                queue.refusal = result
                wait = core.next_wait(result, deadline, self._monotonic())
                if wait is None:
                    raise exceeded(result)
                self._sleep(wait)
                self._wake()  # waiters behind re-check their deadlines (fake clocks jump)
        finally:
            with self._cond:
                core.dequeue(path, ticket)
                self._cond.notify_all()

    def _wake(self) -> None:
        if self._core.queues:
            with self._cond:
                self._cond.notify_all()

    def _policy(self) -> KeyPolicy:
        if self.policy is None:
            raise BudgeteerError("this limiter has no KeyPolicy: pass policy=KeyPolicy(...)")
        return self.policy

    def _install(self, path: str, user: str, endpoint: str | None) -> None:
        policy = self._policy()
        with self._install_lock:
            version = policy.version
            desired = policy.resolve(user, endpoint)
            existing = self._call("get_limits", self._backend.get_limits, path)
            to_set, to_remove = self._core.install_plan(existing, desired)
            for dimension, window_key in to_remove:
                self._call("remove_limit", self._backend.remove_limit, path, dimension, window_key)
            for limit in to_set:
                self._call("set_limit", self._backend.set_limit, path, *_limit_row(limit))
            parents = sum(
                len(self._call("get_limits", self._backend.get_limits, scope))
                for scope in self._front.scopes(path)[:-1]
            )
            self._core.keys[path] = KeyState(version, parents + len(desired), user, endpoint)
            self._paths.pop(path, None)

    def _call(self, operation: str, function: Callable[..., T], *args: object) -> T:
        return self.ledger._call(operation, function, *args)


class AsyncLimiter:
    """The async twin of ``Limiter``: same methods, awaited; see it for semantics."""

    def __init__(
        self,
        ledger: AsyncLedger | str = "memory://",
        *,
        clock: Clock | None = None,
        policy: KeyPolicy | None = None,
        poll_s: float = DEFAULT_POLL_S,
    ) -> None:
        self.ledger = (
            ledger if isinstance(ledger, AsyncLedger) else AsyncLedger(ledger, clock=clock)
        )
        """The async ledger the limits live in."""
        self.policy = policy
        """The key policy, if any."""
        self._front = self.ledger._front
        self._backend = self.ledger._backend
        self._now = _now_of(self._front.clock)
        self._monotonic = self._front.clock.monotonic
        self._sleep = async_sleep_of(self._front.clock)
        self._core = LimiterCore(poll_s)
        self._turns: dict[object, asyncio.Event] = {}
        self._install_lock: asyncio.Lock | None = None

    @property
    def clock(self) -> Clock:
        """The clock the ledger reads and waits sleep through."""
        return self._front.clock

    async def set_limits(self, path: str, *specs: Spec) -> None:
        """See ``Limiter.set_limits``."""
        await self.ledger.set_limits(path, *(to_limit(spec) for spec in specs))

    async def key(self, user: str, endpoint: str | None = None) -> str:
        """See ``Limiter.key``."""
        policy = self._policy()
        path = policy.path(user, endpoint)
        state = self._core.keys.get(path)
        if state is None or state.version != policy.version:
            await self._install(path, user, endpoint)
        return path

    async def try_acquire(self, path: str, usage: UsageLike = None) -> Admission:
        """See ``Limiter.try_acquire``."""
        amounts = ONE_REQUEST if usage is None else amounts_of(usage)
        if self._core.queues:
            refusal = self._core.queued_refusal(path, amounts)
            if refusal is not None:
                return Admission(False, path, refusal)
        result = await self._admit(path, amounts)
        return _new(Admission, (result.__class__ is not Denial, path, result))

    async def acquire(
        self, path: str, usage: UsageLike = None, *, timeout: float | None = None
    ) -> Admission:
        """See ``Limiter.acquire``."""
        amounts = ONE_REQUEST if usage is None else amounts_of(usage)
        result = await self._wait(path, lambda: self._admit(path, amounts), timeout)
        return Admission(True, path, result)

    async def reserve(
        self,
        path: str,
        estimate: UsageLike = None,
        *,
        timeout: float | None = 0.0,
        ttl_s: float | None = None,
    ) -> Reservation:
        """See ``Limiter.reserve``."""
        amounts = amounts_of(estimate, "estimate")
        ttl = self._front.default_ttl_s if ttl_s is None else self._front.check_ttl(ttl_s)
        scopes = self._front.scopes(path)
        reservation: list[Reservation] = []

        async def attempt() -> _Result:
            now = self._now()
            reservation_id = self._front.new_id(path)
            result: _Result = await self.ledger._call(
                "reserve", self._backend.reserve, reservation_id, path, scopes, amounts, now,
                now + ttl,
            )  # fmt: skip
            if not isinstance(result, Denial):
                usage = usage_of(estimate, amounts)
                reservation.append(Reservation(reservation_id, path, usage, now, now + ttl, result))
            return result

        await self._wait(path, attempt, timeout)
        return reservation[-1]

    async def commit(
        self,
        reservation: Reservation | str,
        actual: UsageLike,
        *,
        metadata: Mapping[str, object] | None = None,
    ) -> Charge:
        """See ``Limiter.commit``."""
        return await self.ledger.commit(
            reservation, {} if actual is None else actual, metadata=metadata
        )

    async def release(self, reservation: Reservation | str) -> None:
        """See ``Limiter.release``."""
        await self.ledger.release(reservation)

    @asynccontextmanager
    async def concurrent(
        self,
        path: str,
        usage: UsageLike = None,
        *,
        timeout: float | None = None,
        ttl_s: float | None = None,
        counter: str = DEFAULT_SLOT_COUNTER,
    ) -> AsyncIterator[Reservation]:
        """See ``Limiter.concurrent``."""
        amounts = dict(ONE_REQUEST if usage is None else amounts_of(usage))
        slot = Concurrency(1, counter).dimension
        amounts[slot] = amounts.get(slot, 0) + 1
        reservation = await self.reserve(path, amounts, timeout=timeout, ttl_s=ttl_s)
        plain = {d: a for d, a in amounts.items() if d != slot}
        try:
            yield reservation
        except BaseException:
            await _asettle_quietly(asyncio.shield(self.release(reservation)))
            raise
        await _asettle_quietly(self.commit(reservation, usage_of(usage, plain)))

    async def cleanup_idle(self) -> int:
        """See ``Limiter.cleanup_idle``."""
        forgotten = 0
        for path in list(self._core.keys):
            if await self.ledger._call("prune", self._backend.prune, path, self._now()):
                forgotten += 1
                self._core.keys.pop(path, None)
                parent = path.rsplit("/", 1)[0]
                if await self.ledger._call("prune", self._backend.prune, parent, self._now()):
                    forgotten += 1
        return forgotten

    async def close(self) -> None:
        """Close the ledger."""
        await self.ledger.close()

    async def __aenter__(self) -> AsyncLimiter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- internals ------------------------------------------------------------------------------

    async def _admit(self, path: str, amounts: Mapping[str, int]) -> _Result:
        key = self._core.keys.get(path)
        scopes = self._front.scopes(path)
        expect = -1 if key is None else key.count
        call = self.ledger._call
        result = await call(
            "admit", self._backend.admit, path, scopes, amounts, self._now(), expect
        )
        if result is None and key is not None:
            await self._install(path, key.user, key.endpoint)
            key = self._core.keys[path]
            result = await call(
                "admit", self._backend.admit, path, scopes, amounts, self._now(), key.count
            )
        if result is None:
            raise BackendUnavailable(self._backend.url, "admit", "limits changed under the key")
        return result  # type: ignore[no-any-return]

    async def _wait(
        self, path: str, attempt: Callable[[], Awaitable[_Result]], timeout: float | None
    ) -> Any:
        core = self._core
        deadline = core.deadline(timeout, self._monotonic())
        ticket = object()
        queue = core.enqueue(path, ticket)
        turn = self._turns[ticket] = asyncio.Event()
        try:
            while True:
                while queue.tickets[0] is not ticket:
                    now = self._monotonic()
                    if deadline is not None and now >= deadline:
                        refusal = core.queued_refusal(path, {})
                        if refusal is None:
                            break
                        raise exceeded(refusal)
                    turn.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            turn.wait(), None if deadline is None else deadline - now
                        )
                result = await attempt()
                if not isinstance(result, Denial):
                    return result
                queue.refusal = result
                wait = core.next_wait(result, deadline, self._monotonic())
                if wait is None:
                    raise exceeded(result)
                await self._sleep(wait)
                self._wake(queue.tickets)
        finally:
            core.dequeue(path, ticket)
            del self._turns[ticket]
            self._wake(queue.tickets)

    def _wake(self, tickets: Any) -> None:
        for ticket in tickets:
            event = self._turns.get(ticket)
            if event is not None:
                event.set()

    def _policy(self) -> KeyPolicy:
        if self.policy is None:
            raise BudgeteerError("this limiter has no KeyPolicy: pass policy=KeyPolicy(...)")
        return self.policy

    async def _install(self, path: str, user: str, endpoint: str | None) -> None:
        policy = self._policy()
        if self._install_lock is None:
            self._install_lock = asyncio.Lock()
        call = self.ledger._call
        async with self._install_lock:
            version = policy.version
            desired = policy.resolve(user, endpoint)
            existing = await call("get_limits", self._backend.get_limits, path)
            to_set, to_remove = self._core.install_plan(existing, desired)
            for dimension, window_key in to_remove:
                await call("remove_limit", self._backend.remove_limit, path, dimension, window_key)
            for limit in to_set:
                await call("set_limit", self._backend.set_limit, path, *_limit_row(limit))
            parents = 0
            for scope in self._front.scopes(path)[:-1]:
                parents += len(await call("get_limits", self._backend.get_limits, scope))
            self._core.keys[path] = KeyState(version, parents + len(desired), user, endpoint)


_new = tuple.__new__


def _now_of(clock: Clock) -> Callable[[], float]:
    # The host's clock read directly: one Python call fewer on every check.
    return time.time if type(clock) is SystemClock else clock.now


def _limit_row(limit: Any) -> tuple[str, str, int]:
    return limit.dimension, limit.window.key, limit.max_units


def _settle_quietly(settle: Callable[[], object]) -> None:
    with contextlib.suppress(ReservationSettled):  # the block settled it itself
        settle()


async def _asettle_quietly(settle: Awaitable[object]) -> None:
    with contextlib.suppress(ReservationSettled):
        await settle


__all__ = ["AsyncLimiter", "Limiter"]
