"""The narrow interface every ledger backend implements, and the records that cross it.

A backend is deliberately dumb about the API: it receives validated requests whose amounts are
already integer storage units, and it performs each operation (reserve, commit, release, charge,
peek) as *one atomic step*, so a network backend can run each as one server-side script in one
round trip. Python backends make their decisions with ``budgeteer.ledger._core``; the Redis
backend's Lua mirrors the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Protocol

from budgeteer.model import UNPRICED, LimitState

__all__ = ["UNPRICED", "Backend", "LimitState", "path_prefixes"]

_NO_METADATA: Mapping[str, str] = MappingProxyType({})


# Operations take plain arguments and return plain records: both cross on every reservation, and
# a request object (or a frozen dataclass, about six times dearer) is pure overhead there.


class WouldBlock(Exception):
    """Raised by a blocking backend asked not to wait (``call_without_waiting``) when the
    operation would have to wait for another writer; nothing was done, so the driver runs it
    again in a worker thread."""


@dataclass(slots=True)
class Denial:
    """Why a reservation was refused."""

    state: LimitState
    requested: int
    retry_after: float | None


CommitStatus = Literal["committed", "late", "replayed"]


@dataclass(slots=True)
class CommitOutcome:
    """What a commit recorded."""

    status: CommitStatus
    path: str
    actual: Mapping[str, int]
    committed_at: float
    overruns: tuple[LimitState, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=lambda: _NO_METADATA)
    late: bool = False


@dataclass(slots=True)
class ScopeMeters:
    """A scope's counters for reporting."""

    used: Mapping[str, int]
    held: Mapping[str, int]
    limits: tuple[LimitState, ...]


def path_prefixes(path: str) -> tuple[str, ...]:
    """The scopes of an already validated path, top first."""
    parts = path.split("/")
    return tuple("/".join(parts[: i + 1]) for i in range(len(parts)))


class Backend(Protocol):
    """A synchronous store of limits, counters and holds. Every method is one atomic step.

    Errors: ``UnknownReservation`` and ``ReservationSettled`` for misuse; any other exception is
    an outage that the ledger wraps in ``BackendUnavailable``.
    """

    url: str
    """The URL the backend was opened from, with any password removed."""
    blocking: bool
    """True if operations wait on I/O (the async ledger then runs them in a worker thread)."""
    remote: bool
    """True for network stores, whose outages the store-down policy handles."""

    def set_limit(self, scope: str, dimension: str, window_key: str, max_units: int) -> None:
        """Create or replace the limit on ``(scope, dimension, window_key)``."""
        ...

    def remove_limit(self, scope: str, dimension: str, window_key: str) -> bool:
        """Remove a limit; ``True`` if there was one."""
        ...

    def get_limits(self, scope: str) -> list[tuple[str, str, int]]:
        """The scope's own limits as ``(dimension, window_key, max_units)``."""
        ...

    def reserve(
        self,
        reservation_id: str,
        path: str,
        scopes: tuple[str, ...],
        amounts: Mapping[str, int],
        now: float,
        expires_at: float,
    ) -> tuple[LimitState, ...] | Denial:
        """Check every limit on ``scopes`` and, if all fit, hold ``amounts`` on each, atomically.

        Expired holds are reclaimed first. Returns the ``Denial`` (nothing changed) or the
        limits checked, as they are after the hold.
        """
        ...

    def admit(
        self,
        path: str,
        scopes: tuple[str, ...],
        amounts: Mapping[str, int],
        now: float,
        expect_limits: int = -1,
    ) -> tuple[LimitState, ...] | Denial | None:
        """A checked charge: check every limit on ``scopes`` as ``reserve`` does and, if all
        fit, record ``amounts`` as used (not held), atomically. One step where a reserve and a
        commit would take two; it leaves no hold and no settled record (not idempotent: a
        rate-limit admission, not a bill).

        ``expect_limits`` (if not negative) is how many limits the caller believes the path's
        scopes carry; if the store holds a different number, nothing is done and ``None`` is
        returned, so a caller that installs limits lazily can install them again. Returns the
        ``Denial`` (nothing changed), ``None``, or the limits checked as they are after.
        """
        ...

    def prune(self, scope: str, now: float) -> bool:
        """Forget ``scope``'s limits, windows and totals if nothing on it is live, atomically.

        Live: a hold, usage inside a windowed limit's current window (rolling span or calendar
        period), a pacing bucket not yet empty, or usage under a lifetime limit. Returns
        ``True`` if the scope was forgotten (a later operation sees a scope without limits).
        """
        ...

    def commit(
        self,
        reservation_id: str,
        actual: Mapping[str, int],
        now: float,
        metadata: Mapping[str, str],
    ) -> CommitOutcome:
        """Replace the hold by ``actual``, idempotently by id (a retry is ``"replayed"``)."""
        ...

    def charge(
        self,
        charge_id: str,
        path: str,
        scopes: tuple[str, ...],
        actual: Mapping[str, int],
        now: float,
        metadata: Mapping[str, str],
    ) -> CommitOutcome:
        """Record ``actual`` on every scope of ``path`` without a reservation or admission.

        Idempotent by ``charge_id``, like a commit: a retried charge is ``"replayed"``.
        """
        ...

    def release(self, reservation_id: str, now: float) -> None:
        """Free a hold, idempotently; releasing an expired hold is a no-op."""
        ...

    def peek(self, scopes: tuple[str, ...], now: float) -> tuple[LimitState, ...]:
        """Every limit on ``scopes`` with current counters; consumes nothing."""
        ...

    def meters(self, scope: str, now: float) -> ScopeMeters:
        """The scope's lifetime totals, holds and own limits."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...
