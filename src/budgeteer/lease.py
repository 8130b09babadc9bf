"""Worker leases: admit locally, without a round trip, from a slice of a scope's headroom.

A lease *is* a reservation: ``ledger.lease(path, slice)`` holds ``slice`` on every scope of the
path like any other hold, so no other process can spend it. Admissions then only subtract from
the slice in memory. When the lease ends, what was admitted is committed and the rest is freed;
if the process dies, the hold expires by its TTL like any other.

Overshoot bound: the store never lets used + held pass a cap, and a lease admits at most its
slice, so leases add no overshoot while they are live. The one way past a cap is a lease whose
hold expired on the store while its process still admits; a lease stops admitting
``safety_margin_s`` before its expiry by its own clock, so with clocks within that margin of the
store's the overshoot is zero, and in any case at most the sum of the outstanding slices.

``LeasePool`` renews leases as they run out, taking smaller slices as the headroom shrinks, so a
fleet of pools ends exactly at the cap.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import TracebackType

from budgeteer.errors import BudgetExceeded, InvalidInput
from budgeteer.ledger import Ledger
from budgeteer.ledger._frontend import as_usage
from budgeteer.model import Charge, Reservation, Usage

DEFAULT_SAFETY_MARGIN_S = 1.0


class Lease:
    """A slice of headroom held on the store and spent locally. Thread-safe."""

    def __init__(self, ledger: Ledger, reservation: Reservation, safety_margin_s: float) -> None:
        self.ledger = ledger
        self.reservation = reservation
        """The hold on the store that backs this lease."""
        self._left = dict(reservation.usage.units)
        self._spent: dict[str, int] = {}
        self._margin = safety_margin_s
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def take(
        cls,
        ledger: Ledger,
        path: str,
        slice: Usage,
        *,
        ttl_s: float = 30.0,
        safety_margin_s: float = DEFAULT_SAFETY_MARGIN_S,
    ) -> Lease:
        """Hold ``slice`` on every scope of ``path`` and return it as a lease.

        Raises:
            BudgetExceeded: the slice does not fit (nothing was held).
        """
        if not 0 <= safety_margin_s < ttl_s:
            raise InvalidInput("safety_margin_s", safety_margin_s, "expected 0 <= margin < ttl_s")
        return cls(ledger, ledger.reserve(path, slice, ttl_s=ttl_s), safety_margin_s)

    @property
    def remaining(self) -> Usage:
        """What the lease can still admit."""
        with self._lock:
            return Usage.from_units({k: v for k, v in self._left.items() if v})

    @property
    def spent(self) -> Usage:
        """What the lease has admitted so far."""
        with self._lock:
            return Usage.from_units(dict(self._spent))

    def try_admit(self, usage: Usage | Mapping[str, object]) -> bool:
        """Admit ``usage`` from the slice if it fits and the lease is live; no I/O."""
        units = as_usage(usage, "usage").units
        live_until = self.reservation.expires_at - self._margin
        with self._lock:
            if self._closed or self.ledger.clock.now() >= live_until:
                return False
            left = self._left
            for dimension, amount in units.items():
                if left.get(dimension, 0) < amount:
                    return False
            spent = self._spent
            for dimension, amount in units.items():
                left[dimension] -= amount
                spent[dimension] = spent.get(dimension, 0) + amount
            return True

    def close(self) -> Charge | None:
        """Commit what was admitted (the rest of the slice is freed); idempotent."""
        with self._lock:
            if self._closed:
                return None
            self._closed = True
            spent = dict(self._spent)
        if not spent:
            self.ledger.release(self.reservation)
            return None
        # Lease admissions carry no price of their own: the slice's cost is not re-derived here.
        return self.ledger.commit(self.reservation, Usage.from_units(spent, cost_known=False))

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LeasePool:
    """Admission through successive leases on one path: local most of the time, exact at the end.

    Args:
        ledger: The shared ledger.
        path: The scope path every admission is charged to.
        slice: The lease size to ask for; halved while it does not fit, down to the admission.
        ttl_s: Each lease's TTL on the store.
        safety_margin_s: See the module docstring.
    """

    def __init__(
        self,
        ledger: Ledger,
        path: str,
        slice: Usage,
        *,
        ttl_s: float = 30.0,
        safety_margin_s: float = DEFAULT_SAFETY_MARGIN_S,
    ) -> None:
        if not isinstance(slice, Usage) or not slice.units:
            raise InvalidInput("slice", slice, "expected a non-empty budgeteer.Usage")
        if not 0 <= safety_margin_s < ttl_s:
            raise InvalidInput("safety_margin_s", safety_margin_s, "expected 0 <= margin < ttl_s")
        self.ledger = ledger
        self.path = path
        self.slice = slice
        self.ttl_s = ttl_s
        self.safety_margin_s = safety_margin_s
        self._lease: Lease | None = None
        self._lock = threading.Lock()
        self.leases_taken = 0
        """How many leases this pool has taken (each one round trip, plus one to settle)."""

    def admit(self, usage: Usage) -> None:
        """Admit ``usage``; raises ``BudgetExceeded`` when not even ``usage`` fits any more."""
        with self._lock:
            lease = self._lease
            if lease is not None and lease.try_admit(usage):
                return
            if lease is not None:
                lease.close()
                self._lease = None
            self._lease = self._take(usage)
            if not self._lease.try_admit(usage):  # pragma: no cover - the lease was sized for it
                raise RuntimeError("a fresh lease did not admit the usage it was sized for")

    def close(self) -> None:
        """Settle the current lease."""
        with self._lock:
            if self._lease is not None:
                self._lease.close()
                self._lease = None

    def _take(self, usage: Usage) -> Lease:
        wanted = {k: max(v, usage.units.get(k, 0)) for k, v in self.slice.units.items()}
        for dimension, amount in usage.units.items():
            wanted.setdefault(dimension, amount)
        while True:
            try:
                lease = Lease.take(
                    self.ledger,
                    self.path,
                    Usage.from_units(wanted, cost_known=False),
                    ttl_s=self.ttl_s,
                    safety_margin_s=self.safety_margin_s,
                )
            except BudgetExceeded:
                smaller = {k: max(usage.units.get(k, 0), v // 2) for k, v in wanted.items()}
                if smaller == wanted:
                    raise
                wanted = smaller
                continue
            self.leases_taken += 1
            return lease

    def __enter__(self) -> LeasePool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
