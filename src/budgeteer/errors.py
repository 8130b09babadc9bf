"""The exceptions budgeteer raises.

Every exception carries structured fields, and its message is built from them, so callers (and
tests) read fields, never text::

    BudgeteerError
    ├── BudgetExceeded              a cap would be crossed: the spend was refused, nothing changed
    ├── InvalidInput (ValueError)   bad argument: names the field and the value, nothing changed
    │   └── UnknownModel            no price for a model under the "refuse" unknown-model policy
    ├── ReservationError            misuse of the reserve/commit/release cycle
    │   ├── UnknownReservation      no reservation with that id in this ledger
    │   └── ReservationSettled      commit after release, or release after commit
    ├── StepTimeout (TimeoutError)  a guarded step ran past its own timeout
    └── BackendUnavailable          the store could not be reached; raised ``from`` the cause,
                                    never silently turned into an allow or a deny

A denial (``BudgetExceeded``) is the ledger working as designed; misuse (``ReservationError``)
is a bug in the caller; an outage (``BackendUnavailable``) is neither.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from budgeteer.model import Window

Amount = int | float | Decimal
"""An amount in API units: ``int`` for counts, ``float`` seconds for time, ``Decimal`` USD."""


class BudgeteerError(Exception):
    """Base class of every error budgeteer raises on purpose."""


class BudgetExceeded(BudgeteerError):
    """A reservation (or admission) would cross a limit; nothing was recorded.

    ``used + held + requested > limit`` for ``dimension`` on ``scope`` within ``window``.
    """

    scope: str
    """The scope path whose limit refused, e.g. ``"org:acme/team:search"``."""
    dimension: str
    """The dimension that would overflow, e.g. ``"cost_usd"`` or ``"tool_calls"``."""
    limit: Amount
    """The configured cap, in API units."""
    used: Amount
    """Committed usage inside the window at the time of the decision."""
    held: Amount
    """Outstanding (reserved, not yet settled) usage on the scope."""
    requested: Amount
    """What this reservation asked for."""
    window: Window | None
    """The window of the limit; ``None`` for caps that are not ledger limits (run deadlines)."""
    retry_after: float | None
    """Seconds until the window frees enough room, or ``None`` if waiting will not help."""

    def __init__(
        self,
        *,
        scope: str,
        dimension: str,
        limit: Amount,
        used: Amount,
        held: Amount,
        requested: Amount,
        window: Window | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.scope = scope
        self.dimension = dimension
        self.limit = limit
        self.used = used
        self.held = held
        self.requested = requested
        self.window = window
        self.retry_after = retry_after
        window_text = f" per {window.describe()}" if window is not None else ""
        retry_text = f"; retry after {retry_after:.3f}s" if retry_after is not None else ""
        super().__init__(
            f"budget exceeded on {scope!r}: {dimension} limit {limit}{window_text}, "
            f"used {used} + held {held} + requested {requested}{retry_text}"
        )

    @property
    def actual(self) -> Amount:
        """``used + held + requested``: what the total would have been (the 004 proposal's name)."""
        return self.used + self.held + self.requested  # type: ignore[operator]

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only __init__ does not survive the default pickling used across processes.
        return (_rebuild_budget_exceeded, (self.__dict__.copy(),))


def _rebuild_budget_exceeded(fields: dict[str, object]) -> BudgetExceeded:
    return BudgetExceeded(**fields)  # type: ignore[arg-type]


class InvalidInput(BudgeteerError, ValueError):
    """An argument is out of range or malformed. Nothing was changed."""

    field: str
    """The name of the offending argument or field, e.g. ``"usage.input_tokens"``."""
    value: object
    """The value that was refused."""
    reason: str
    """What is wrong with it and what is accepted instead."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {field}={value!r}: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.field, self.value, self.reason))


class UnknownModel(InvalidInput):
    """No price is known for ``model`` and the unknown-model policy is ``"refuse"``."""

    model: str
    """The model name as given."""
    provider: str | None
    """The provider id, if one was given."""

    def __init__(self, model: str, provider: str | None = None) -> None:
        self.model = model
        self.provider = provider
        where = f" from provider {provider!r}" if provider else ""
        super().__init__(
            "model",
            model,
            f"no price known{where}; add it to the pricing overrides, set a fallback price, "
            "or choose the 'count_without_cost' unknown-model policy",
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.model, self.provider))


class ReservationError(BudgeteerError):
    """The reserve/commit/release cycle was used wrongly (a caller bug, not a denial)."""

    reservation_id: str
    """The reservation the call named."""

    def __init__(self, reservation_id: str, message: str) -> None:
        self.reservation_id = reservation_id
        super().__init__(message)


class UnknownReservation(ReservationError):
    """No reservation with this id exists in the ledger."""

    def __init__(self, reservation_id: str) -> None:
        super().__init__(reservation_id, f"unknown reservation {reservation_id!r}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.reservation_id,))


class ReservationSettled(ReservationError):
    """The reservation was already settled the other way (commit after release, or the reverse)."""

    state: str
    """Its current state: ``"committed"`` or ``"released"``."""
    attempted: str
    """The refused action: ``"commit"`` or ``"release"``."""

    def __init__(self, reservation_id: str, state: str, attempted: str) -> None:
        self.state = state
        self.attempted = attempted
        super().__init__(
            reservation_id,
            f"cannot {attempted} reservation {reservation_id!r}: it is already {state}",
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.reservation_id, self.state, self.attempted))


class StepTimeout(BudgeteerError, TimeoutError):
    """A guarded step ran longer than its timeout."""

    step: str
    """The step's label."""
    timeout_s: float
    """The timeout that passed, in seconds."""

    def __init__(self, step: str, timeout_s: float) -> None:
        self.step = step
        self.timeout_s = timeout_s
        super().__init__(f"step {step!r} ran past its timeout of {timeout_s:.3f}s")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.step, self.timeout_s))


class BackendUnavailable(BudgeteerError):
    """The ledger's store could not be reached or failed; raised ``from`` the underlying error."""

    backend: str
    """The backend URL with any password removed."""
    operation: str
    """The ledger operation that failed, e.g. ``"reserve"``."""

    detail: str
    """What went wrong, from the underlying error."""

    def __init__(self, backend: str, operation: str, detail: str) -> None:
        self.backend = backend
        self.operation = operation
        self.detail = detail
        super().__init__(f"{operation} failed on {backend}: {detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.backend, self.operation, self.detail))
