"""``AsyncLedger``: the same ledger for ``async`` code, with the same method names."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from budgeteer._clock import Clock
from budgeteer.backends import open_backend
from budgeteer.backends.base import Backend, WouldBlock
from budgeteer.errors import BackendUnavailable, BudgeteerError, ReservationSettled
from budgeteer.ledger._frontend import DEFAULT_TTL_S, LedgerFrontend, UsageLike
from budgeteer.model import Charge, Headroom, Limit, Reservation, ScopeUsage, Usage, Window

if TYPE_CHECKING:
    from budgeteer.backends.resilient import StoreDownPolicy

T = TypeVar("T")


class AsyncLedger:
    """The async twin of ``budgeteer.Ledger``; see it for semantics.

    Backends that wait on I/O (SQLite) run in a worker thread so the event loop never blocks;
    the in-memory backend is called directly.
    """

    def __init__(
        self,
        url: str | Backend = "memory://",
        *,
        clock: Clock | None = None,
        default_ttl_s: float = DEFAULT_TTL_S,
        on_store_down: StoreDownPolicy = "raise",
        emergency: Usage | None = None,
    ) -> None:
        backend = (
            open_backend(url, on_store_down, emergency, asynchronous=True)
            if isinstance(url, str)
            else url
        )
        self._front = LedgerFrontend(backend, clock, default_ttl_s)
        self._backend = backend
        # A blocking backend that can try an operation without waiting (SQLite) runs it on the
        # loop first; the others go to a worker thread.
        self._inline: Callable[..., Any] | None = getattr(backend, "call_without_waiting", None)

    @property
    def url(self) -> str:
        """The backend URL, with any password removed."""
        return self._backend.url

    @property
    def clock(self) -> Clock:
        """The clock this ledger reads."""
        return self._front.clock

    async def set_limit(self, scope: str, limit: Limit) -> None:
        """See ``Ledger.set_limit``."""
        key = self._front.limit_key(scope, limit)
        await self._call("set_limit", self._backend.set_limit, *key)

    async def set_limits(self, scope: str, *limits: Limit) -> None:
        """See ``Ledger.set_limits``."""
        keys = [self._front.limit_key(scope, limit) for limit in limits]
        for key in keys:
            await self._call("set_limit", self._backend.set_limit, *key)

    async def remove_limit(self, scope: str, dimension: str, window: Window | None = None) -> bool:
        """See ``Ledger.remove_limit``."""
        self._front.scopes(scope)
        window_key = self._front.window_key(dimension, window)
        removed: bool = await self._call(
            "remove_limit", self._backend.remove_limit, scope, dimension, window_key
        )
        return removed

    async def limits(self, scope: str) -> tuple[Limit, ...]:
        """See ``Ledger.limits``."""
        self._front.scopes(scope)
        return self._front.limits(await self._call("get_limits", self._backend.get_limits, scope))

    async def reserve(
        self, path: str, usage: UsageLike, *, ttl_s: float | None = None
    ) -> Reservation:
        """See ``Ledger.reserve``."""
        args, checked = self._front.reserve_args(path, usage, ttl_s)
        result = await self._call("reserve", self._backend.reserve, *args)
        return self._front.reservation(args, result, checked)

    async def commit(
        self,
        reservation: Reservation | str,
        actual: UsageLike,
        *,
        metadata: Mapping[str, object] | None = None,
    ) -> Charge:
        """See ``Ledger.commit``."""
        args, usage = self._front.commit_args(reservation, actual, metadata)
        outcome = await self._call("commit", self._backend.commit, *args)
        return self._front.charge(outcome, args[0], None if outcome.status == "replayed" else usage)

    async def release(self, reservation: Reservation | str) -> None:
        """See ``Ledger.release``."""
        reservation_id = self._front.reservation_id(reservation)
        await self._call("release", self._backend.release, reservation_id, self._front.clock.now())

    async def charge(
        self, path: str, usage: UsageLike, *, metadata: Mapping[str, object] | None = None
    ) -> Charge:
        """See ``Ledger.charge``."""
        args, checked = self._front.charge_args(path, usage, metadata)
        outcome = await self._call("charge", self._backend.charge, *args)
        return self._front.charge(outcome, args[0], checked)

    async def admit(self, path: str, usage: UsageLike) -> Headroom:
        """See ``Ledger.admit``."""
        args = self._front.admit_args(path, usage)
        result = await self._call("admit", self._backend.admit, *args)
        return self._front.admitted(path, result)

    async def prune(self, scope: str) -> bool:
        """See ``Ledger.prune``."""
        self._front.scopes(scope)
        pruned: bool = await self._call(
            "prune", self._backend.prune, scope, self._front.clock.now()
        )
        return pruned

    @asynccontextmanager
    async def hold(
        self, path: str, usage: UsageLike, *, ttl_s: float | None = None
    ) -> AsyncIterator[Reservation]:
        """See ``Ledger.hold``."""
        reservation = await self.reserve(path, usage, ttl_s=ttl_s)
        try:
            yield reservation
        finally:
            try:
                await asyncio.shield(self.release(reservation))
            except ReservationSettled as error:
                if error.state != "committed":  # committed inside the block: nothing to free
                    raise

    async def peek(self, path: str) -> Headroom:
        """See ``Ledger.peek``."""
        scopes = self._front.scopes(path)
        states = await self._call("peek", self._backend.peek, scopes, self._front.clock.now())
        return self._front.headroom(path, states)

    async def usage(self, scope: str) -> ScopeUsage:
        """See ``Ledger.usage``."""
        self._front.scopes(scope)
        meters = await self._call("usage", self._backend.meters, scope, self._front.clock.now())
        return self._front.scope_usage(scope, meters)

    async def close(self) -> None:
        """Close the backend's connections."""
        await self._call("close", self._backend.close)

    async def __aenter__(self) -> AsyncLedger:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncLedger({self.url!r})"

    async def _call(self, operation: str, function: Callable[..., Any], *args: object) -> Any:
        try:
            if self._backend.blocking:
                if self._inline is not None:
                    with contextlib.suppress(WouldBlock):
                        return self._inline(function, *args)
                return await asyncio.to_thread(function, *args)
            result = function(*args)
            # A native async backend (Redis' asyncio client) returns coroutines to await.
            return await result if inspect.isawaitable(result) else result
        except BudgeteerError:
            raise
        except Exception as error:
            raise BackendUnavailable(self._backend.url, operation, repr(error)) from error
