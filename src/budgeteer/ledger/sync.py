"""``Ledger``: the synchronous face of the budget store."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from budgeteer._clock import Clock
from budgeteer.backends import open_backend
from budgeteer.backends.base import Backend
from budgeteer.errors import BackendUnavailable, BudgeteerError, ReservationSettled
from budgeteer.ledger._frontend import DEFAULT_TTL_S, LedgerFrontend, UsageLike
from budgeteer.model import Charge, Headroom, Limit, Reservation, ScopeUsage, Usage, Window

if TYPE_CHECKING:
    from budgeteer.backends.resilient import StoreDownPolicy

T = TypeVar("T")


class Ledger:
    """An exact, hierarchical, two-phase budget store.

    A charge to ``org:acme/team:x/run:7`` is a charge to ``org:acme``, ``org:acme/team:x`` and
    ``org:acme/team:x/run:7``; every limit on each of them is checked before anything is held.

    Example::

        ledger = Ledger("sqlite:///budget.db")
        ledger.set_limit("org:acme", Limit("cost_usd", "20", Window.daily()))
        hold = ledger.reserve("org:acme/run:1", Usage(requests=1, cost_usd="0.05"))
        ledger.commit(hold, Usage(requests=1, cost_usd="0.031"))

    Args:
        url: ``memory://``, ``sqlite:///relative.db`` or ``sqlite:////absolute.db``
            (``?durability=power-loss`` adds an fsync per transaction), or a ``Backend``.
        clock: where time comes from; tests pass ``budgeteer.testing.FakeClock``.
        default_ttl_s: how long a hold lives unless ``reserve`` says otherwise.
        on_store_down: what to do when a network store stays unreachable after retries:
            ``"raise"`` ``BackendUnavailable`` (default), ``"deny"`` every reservation, or
            ``"allow"`` reservations against the local ``emergency`` budget. Commits that
            cannot be delivered are queued and delivered first once the store is back.
        emergency: the per-process allowance for ``on_store_down="allow"``.
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
        backend = open_backend(url, on_store_down, emergency) if isinstance(url, str) else url
        self._front = LedgerFrontend(backend, clock, default_ttl_s)
        self._backend = backend

    @property
    def url(self) -> str:
        """The backend URL, with any password removed."""
        return self._backend.url

    @property
    def clock(self) -> Clock:
        """The clock this ledger reads."""
        return self._front.clock

    # -- limits -------------------------------------------------------------------------------

    def set_limit(self, scope: str, limit: Limit) -> None:
        """Create or replace ``scope``'s limit on ``(limit.dimension, limit.window)``.

        Outstanding holds stay valid; the new cap applies to the next reservation.
        A new windowed limit counts usage committed from now on; a lifetime limit sees all history.
        """
        key = self._front.limit_key(scope, limit)
        self._call("set_limit", self._backend.set_limit, *key)

    def set_limits(self, scope: str, *limits: Limit) -> None:
        """``set_limit`` for each of ``limits``."""
        keys = [self._front.limit_key(scope, limit) for limit in limits]
        for key in keys:
            self._call("set_limit", self._backend.set_limit, *key)

    def remove_limit(self, scope: str, dimension: str, window: Window | None = None) -> bool:
        """Remove ``scope``'s limit on ``dimension`` over ``window`` (lifetime if omitted)."""
        self._front.scopes(scope)
        window_key = self._front.window_key(dimension, window)
        return self._call("remove_limit", self._backend.remove_limit, scope, dimension, window_key)

    def limits(self, scope: str) -> tuple[Limit, ...]:
        """``scope``'s own limits (not those of its parents)."""
        self._front.scopes(scope)
        return self._front.limits(self._call("get_limits", self._backend.get_limits, scope))

    # -- the cycle ----------------------------------------------------------------------------

    def reserve(self, path: str, usage: UsageLike, *, ttl_s: float | None = None) -> Reservation:
        """Hold ``usage`` on every scope of ``path`` if every limit there has room.

        Raises:
            BudgetExceeded: some limit would be crossed; nothing was held.
            InvalidInput: bad path, usage or TTL; nothing was held.
        """
        return self._front.reserve_now(path, usage, ttl_s)

    def commit(
        self,
        reservation: Reservation | str,
        actual: UsageLike,
        *,
        metadata: Mapping[str, object] | None = None,
    ) -> Charge:
        """Replace the hold by the ``actual`` usage; idempotent by reservation id.

        A larger ``actual`` than reserved is recorded in full and reported in
        ``Charge.overruns``. A commit after the hold expired is recorded as ``late``.

        Raises:
            UnknownReservation: no such reservation.
            ReservationSettled: it was released.
        """
        return self._front.commit_now(reservation, actual, metadata)

    def release(self, reservation: Reservation | str) -> None:
        """Free the hold; a second release is a no-op.

        Raises:
            UnknownReservation: no such reservation.
            ReservationSettled: it was committed.
        """
        reservation_id = self._front.reservation_id(reservation)
        self._call("release", self._backend.release, reservation_id, self._front.clock.now())

    def charge(
        self, path: str, usage: UsageLike, *, metadata: Mapping[str, object] | None = None
    ) -> Charge:
        """Record usage that already happened, without admission (it may cause an overrun)."""
        args, checked = self._front.charge_args(path, usage, metadata)
        outcome = self._call("charge", self._backend.charge, *args)
        return self._front.charge(outcome, args[0], checked)

    def admit(self, path: str, usage: UsageLike) -> Headroom:
        """Check every limit on ``path`` and, if all fit, record ``usage`` as used: one step.

        A checked charge: what ``reserve`` then ``commit`` of the same amount would do, in one
        atomic operation (one round trip on Redis), leaving no hold. For rate limits and other
        admissions whose amount is known up front. Not idempotent (no id), and not written to
        the audit log of settled reservations.

        Returns:
            The limits checked, as they are after the admission.

        Raises:
            BudgetExceeded: some limit would be crossed; nothing was recorded.
        """
        args = self._front.admit_args(path, usage)
        result = self._call("admit", self._backend.admit, *args)
        return self._front.admitted(path, result)

    def prune(self, scope: str) -> bool:
        """Forget ``scope``'s limits, windows and totals if nothing on it is live.

        Nothing is forgotten while the scope has a hold, usage inside a window's current span
        or period, a pacing bucket not yet empty, or usage under a lifetime limit. Returns
        ``True`` if the scope was forgotten.
        """
        self._front.scopes(scope)
        return self._call("prune", self._backend.prune, scope, self._front.clock.now())

    @contextmanager
    def hold(
        self, path: str, usage: UsageLike, *, ttl_s: float | None = None
    ) -> Iterator[Reservation]:
        """Reserve for the ``with`` block; released on exit unless committed inside it."""
        reservation = self.reserve(path, usage, ttl_s=ttl_s)
        try:
            yield reservation
        finally:
            try:
                self.release(reservation)
            except ReservationSettled as error:
                if error.state != "committed":  # committed inside the block: nothing to free
                    raise

    # -- reading ------------------------------------------------------------------------------

    def peek(self, path: str) -> Headroom:
        """Every limit on ``path`` with its usage and holds; consumes nothing."""
        scopes = self._front.scopes(path)
        states = self._call("peek", self._backend.peek, scopes, self._front.clock.now())
        return self._front.headroom(path, states)

    def usage(self, scope: str) -> ScopeUsage:
        """``scope``'s meters: lifetime usage, holds and its own limits."""
        self._front.scopes(scope)
        meters = self._call("usage", self._backend.meters, scope, self._front.clock.now())
        return self._front.scope_usage(scope, meters)

    def close(self) -> None:
        """Close the backend's connections."""
        self._backend.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({self.url!r})"

    def _call(self, operation: str, function: Callable[..., T], *args: object) -> T:
        try:
            return function(*args)
        except BudgeteerError:
            raise
        except Exception as error:
            raise BackendUnavailable(self._backend.url, operation, repr(error)) from error
