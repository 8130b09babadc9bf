"""What ``Ledger`` and ``AsyncLedger`` share: validation, request building and result shaping.

The twins differ only in how they call the backend (directly, or awaited in a worker thread);
every rule about inputs and outputs lives here once.
"""

from __future__ import annotations

import itertools
import math
import os
import secrets
import time
import weakref
from collections.abc import Mapping
from types import MappingProxyType

from budgeteer._clock import SYSTEM_CLOCK, Clock, SystemClock
from budgeteer.backends.base import (
    UNPRICED,
    Backend,
    CommitOutcome,
    Denial,
    ScopeMeters,
)
from budgeteer.errors import BackendUnavailable, BudgeteerError, BudgetExceeded, InvalidInput
from budgeteer.model import (
    LIFETIME,
    Charge,
    Headroom,
    Limit,
    LimitHeadroom,
    LimitState,
    Overrun,
    Reservation,
    ScopeUsage,
    Usage,
    Window,
    check_dimension,
    from_units,
    parse_path,
)

DEFAULT_TTL_S = 300.0
"""How long a hold lives without commit or release before it returns by itself."""
MAX_TTL_S = 30 * 86400.0
MAX_METADATA_ITEMS = 32
MAX_METADATA_CHARS = 1024

UsageLike = Usage | Mapping[str, object]
ReserveArgs = tuple[str, str, tuple[str, ...], Mapping[str, int], float, float]
"""(reservation id, path, scopes, amounts, now, expires at): ``Backend.reserve``'s arguments."""
CommitArgs = tuple[str, Mapping[str, int], float, Mapping[str, str]]
"""(reservation id, actual, now, metadata): ``Backend.commit``'s arguments."""
ChargeArgs = tuple[str, str, tuple[str, ...], Mapping[str, int], float, Mapping[str, str]]
"""(charge id, path, scopes, actual, now, metadata): ``Backend.charge``'s arguments."""
AdmitArgs = tuple[str, tuple[str, ...], Mapping[str, int], float]
"""(path, scopes, amounts, now): ``Backend.admit``'s leading arguments."""
NO_METADATA: Mapping[str, str] = MappingProxyType({})
_new = tuple.__new__  # a named tuple without its Python-level __new__ (built on every cycle)


def as_usage(value: object, field_name: str) -> Usage:
    """Accept a ``Usage`` or a mapping of dimension to amount; anything else is ``InvalidInput``."""
    if isinstance(value, Usage):
        return value
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise InvalidInput(field_name, key, "dimension names are strings")
            check_dimension(key, f"{field_name}.{key}")
        return Usage(**value)
    raise InvalidInput(field_name, value, "expected a Usage or a mapping of dimension to amount")


class LedgerFrontend:
    """Validation and shaping shared by the sync and async ledgers."""

    def __init__(self, backend: Backend, clock: Clock | None, default_ttl_s: float) -> None:
        self.backend = backend
        self.clock = clock or SYSTEM_CLOCK
        self.default_ttl_s = self.check_ttl(default_ttl_s, "default_ttl_s")
        self._new_identity()
        _FRONTENDS.add(self)
        # The host's clock read directly: one Python call fewer on every operation.
        self._now = time.time if type(self.clock) is SystemClock else self.clock.now

    def _new_identity(self) -> None:
        # A random prefix keeps ids unique across processes; the counter keeps them cheap.
        # A forked child gets a new prefix (see _renew_after_fork): else the parent and the
        # child would hand out the same ids, and an idempotent charge would count only once.
        self._id_prefix = secrets.token_hex(6) + "-"
        self._ids = itertools.count(1)
        # path -> (its scopes, the id prefix of its hierarchy): parsed once per path.
        self._paths: dict[str, tuple[tuple[str, ...], str]] = {}

    # -- inputs -------------------------------------------------------------------------------

    def new_id(self, path: str) -> str:
        """A fresh id: ``<root scope>#<random>-<counter>``. The root routes an id to its
        hierarchy's shard (the Redis hash slot); '#' never appears in a scope path."""
        return f"{self._entry(path)[1]}{next(self._ids)}"

    def scopes(self, path: str) -> tuple[str, ...]:
        return self._entry(path)[0]

    def _entry(self, path: str) -> tuple[tuple[str, ...], str]:
        entry = self._paths.get(path)
        if entry is None:
            scopes = parse_path(path)
            entry = (scopes, f"{scopes[0]}#{self._id_prefix}")
            if len(self._paths) < 65536:
                self._paths[path] = entry
        return entry

    @staticmethod
    def check_ttl(ttl_s: object, field_name: str = "ttl_s") -> float:
        if (
            isinstance(ttl_s, bool)
            or not isinstance(ttl_s, int | float)
            or not math.isfinite(ttl_s)
            or ttl_s <= 0
            or ttl_s > MAX_TTL_S
        ):
            raise InvalidInput(field_name, ttl_s, f"expected seconds in (0, {MAX_TTL_S:.0f}]")
        return float(ttl_s)

    @staticmethod
    def check_metadata(metadata: Mapping[str, object] | None) -> Mapping[str, str]:
        if not metadata:
            return NO_METADATA
        if not isinstance(metadata, Mapping) or len(metadata) > MAX_METADATA_ITEMS:
            raise InvalidInput(
                "metadata", metadata, f"expected a mapping of at most {MAX_METADATA_ITEMS} items"
            )
        clean: dict[str, str] = {}
        for key, value in metadata.items():
            text = value if isinstance(value, str) else str(value)
            if not isinstance(key, str) or len(key) > 64 or len(text) > MAX_METADATA_CHARS:
                raise InvalidInput(
                    f"metadata[{key!r}]", value, "keys are str up to 64 chars, values 1024 chars"
                )
            clean[key] = text
        return clean

    @staticmethod
    def limit_key(scope: str, limit: object) -> tuple[str, str, str, int]:
        if not isinstance(limit, Limit):
            raise InvalidInput("limit", limit, "expected a budgeteer.Limit")
        parse_path(scope)
        return scope, limit.dimension, limit.window.key, limit.max_units

    @staticmethod
    def window_key(dimension: str, window: Window | None) -> str:
        check_dimension(dimension)
        window = window or LIFETIME
        if not isinstance(window, Window):
            raise InvalidInput("window", window, "expected a budgeteer.Window")
        return window.key

    def reserve_args(
        self, path: str, usage: object, ttl_s: float | None
    ) -> tuple[ReserveArgs, Usage]:
        """Validated arguments of ``Backend.reserve``, and the usage as a ``Usage``."""
        scopes, id_prefix = self._paths.get(path) or self._entry(path)
        checked = usage if type(usage) is Usage else as_usage(usage, "usage")
        ttl = self.default_ttl_s if ttl_s is None else self.check_ttl(ttl_s)
        now = self._now()
        reservation_id = f"{id_prefix}{next(self._ids)}"
        return (reservation_id, path, scopes, checked.units, now, now + ttl), checked

    def reserve_now(self, path: str, usage: object, ttl_s: float | None) -> Reservation:
        """``reserve`` whole, on a backend called directly (the sync driver's hot path).

        The rules of ``reserve_args`` then ``reservation``, written out without the argument
        tuples between them: a cycle is a few microseconds, and each call is a good part of it.
        """
        scopes, id_prefix = self._paths.get(path) or self._entry(path)
        checked = usage if type(usage) is Usage else as_usage(usage, "usage")
        ttl = self.default_ttl_s if ttl_s is None else self.check_ttl(ttl_s)
        now = self._now()
        reservation_id = f"{id_prefix}{next(self._ids)}"
        expires_at = now + ttl
        backend = self.backend
        try:
            # checked._units: Usage.units without the property's call
            result = backend.reserve(reservation_id, path, scopes, checked._units, now, expires_at)
        except BudgeteerError:
            raise
        except Exception as error:
            raise BackendUnavailable(backend.url, "reserve", repr(error)) from error
        if result.__class__ is Denial:
            raise exceeded(result)
        return _new(Reservation, (reservation_id, path, checked, now, expires_at, result))

    def commit_now(
        self,
        reservation: Reservation | str,
        actual: object,
        metadata: Mapping[str, object] | None,
    ) -> Charge:
        """``commit`` whole, on a backend called directly: ``commit_args`` then ``charge``."""
        reservation_id = (
            reservation[0] if type(reservation) is Reservation else self.reservation_id(reservation)
        )
        usage = actual if type(actual) is Usage else as_usage(actual, "actual")
        metadata_ = NO_METADATA if metadata is None else self.check_metadata(metadata)
        backend = self.backend
        try:
            outcome = backend.commit(reservation_id, usage._charged, self._now(), metadata_)
        except BudgeteerError:
            raise
        except Exception as error:
            raise BackendUnavailable(backend.url, "commit", repr(error)) from error
        if outcome.status == "replayed":
            return self.charge(outcome, reservation_id, None)
        overruns = outcome.overruns
        return _new(
            Charge,
            (
                reservation_id,
                outcome.path,
                usage,
                outcome.committed_at,
                tuple(_overrun(s) for s in overruns) if overruns else (),
                outcome.late,
                False,
                outcome.metadata,
            ),
        )

    def commit_args(
        self,
        reservation: Reservation | str,
        actual: object,
        metadata: Mapping[str, object] | None,
    ) -> tuple[CommitArgs, Usage]:
        """Validated arguments of ``Backend.commit``, and the actual usage as a ``Usage``."""
        reservation_id = (
            reservation[0] if type(reservation) is Reservation else self.reservation_id(reservation)
        )
        usage = actual if type(actual) is Usage else as_usage(actual, "actual")
        metadata_ = NO_METADATA if metadata is None else self.check_metadata(metadata)
        return (reservation_id, usage.charged_units, self._now(), metadata_), usage

    def charge_args(
        self, path: str, usage: object, metadata: Mapping[str, object] | None
    ) -> tuple[ChargeArgs, Usage]:
        """Validated arguments of ``Backend.charge``, and the usage as a ``Usage``."""
        scopes = self.scopes(path)
        checked = as_usage(usage, "usage")
        args = (
            self.new_id(path),
            path,
            scopes,
            checked.charged_units,
            self._now(),
            self.check_metadata(metadata),
        )
        return args, checked

    @staticmethod
    def reservation_id(reservation: Reservation | str) -> str:
        if isinstance(reservation, Reservation):
            return reservation.id
        if isinstance(reservation, str) and reservation:
            return reservation
        raise InvalidInput("reservation", reservation, "expected a Reservation or its id")

    # -- outputs ------------------------------------------------------------------------------

    def admit_args(self, path: str, usage: object) -> AdmitArgs:
        """Validated arguments of ``Backend.admit`` (without ``expect_limits``)."""
        entry = self._paths.get(path) or self._entry(path)
        checked = usage if type(usage) is Usage else as_usage(usage, "usage")
        return path, entry[0], checked.units, self._now()

    @staticmethod
    def admitted(path: str, result: tuple[LimitState, ...] | Denial | None) -> Headroom:
        if isinstance(result, Denial):
            raise exceeded(result)
        return Headroom(path, tuple(LimitHeadroom.from_state(s) for s in result or ()))

    @staticmethod
    def reservation(
        args: ReserveArgs, result: tuple[LimitState, ...] | Denial, usage: Usage
    ) -> Reservation:
        if result.__class__ is Denial:
            raise exceeded(result)
        reservation_id, path, _, _, now, expires_at = args
        return _new(Reservation, (reservation_id, path, usage, now, expires_at, result))

    @staticmethod
    def charge(outcome: CommitOutcome, reservation_id: str, usage: Usage | None) -> Charge:
        actual = usage
        if actual is None:
            units = {k: v for k, v in outcome.actual.items() if k != UNPRICED}
            actual = Usage.from_units(units, cost_known=UNPRICED not in outcome.actual)
        overruns = outcome.overruns
        return _new(
            Charge,
            (
                reservation_id,
                outcome.path,
                actual,
                outcome.committed_at,
                tuple(_overrun(s) for s in overruns) if overruns else (),
                outcome.late,
                outcome.status == "replayed",
                outcome.metadata,
            ),
        )

    @staticmethod
    def headroom(path: str, states: tuple[LimitState, ...]) -> Headroom:
        return Headroom(path, tuple(LimitHeadroom.from_state(s) for s in states))

    @staticmethod
    def scope_usage(scope: str, meters: ScopeMeters) -> ScopeUsage:
        used = {k: v for k, v in meters.used.items() if k != UNPRICED}
        held = {k: v for k, v in meters.held.items() if v and k != UNPRICED}
        cost_unknown = bool(meters.used.get(UNPRICED))
        return ScopeUsage(
            scope=scope,
            # Unknown cost stays None unless some cost is known (then it is a lower bound).
            used=Usage.from_units(used, cost_known=not cost_unknown),
            held=Usage.from_units(held),
            limits=tuple(LimitHeadroom.from_state(s) for s in meters.limits),
            cost_unknown=cost_unknown,
        )

    @staticmethod
    def limits(rows: list[tuple[str, str, int]]) -> tuple[Limit, ...]:
        return tuple(
            Limit(dimension, from_units(dimension, max_units), Window.from_key(window_key))
            for dimension, window_key, max_units in rows
        )


def exceeded(denial: Denial) -> BudgetExceeded:
    """The ``BudgetExceeded`` that a backend's ``Denial`` stands for, in API units."""
    state = denial.state
    dimension = state.dimension
    return BudgetExceeded(
        scope=state.scope,
        dimension=dimension,
        limit=from_units(dimension, state.max_units),
        used=from_units(dimension, state.used),
        held=from_units(dimension, state.held),
        requested=from_units(dimension, denial.requested),
        window=Window.from_key(state.window_key),
        retry_after=denial.retry_after,
    )


def _overrun(state: LimitState) -> Overrun:
    dimension = state.dimension
    return Overrun(
        scope=state.scope,
        dimension=dimension,
        window=Window.from_key(state.window_key),
        limit=from_units(dimension, state.max_units),
        used=from_units(dimension, state.used),
    )


_FRONTENDS: weakref.WeakSet[LedgerFrontend] = weakref.WeakSet()


def _renew_after_fork() -> None:
    for frontend in list(_FRONTENDS):
        frontend._new_identity()


os.register_at_fork(after_in_child=_renew_after_fork)
