"""budgeteer: hard, exact, hierarchical budgets for LLM agents."""

from budgeteer._clock import Clock, SystemClock
from budgeteer.errors import (
    BackendUnavailable,
    BudgeteerError,
    BudgetExceeded,
    InvalidInput,
    ReservationError,
    ReservationSettled,
    StepTimeout,
    UnknownModel,
    UnknownReservation,
)
from budgeteer.ledger import AsyncLedger, Ledger
from budgeteer.model import (
    DIMENSIONS,
    Charge,
    Headroom,
    Limit,
    LimitHeadroom,
    Overrun,
    Reservation,
    ScopeUsage,
    Usage,
    Window,
    parse_path,
)

__version__ = "0.1.0"

__all__ = [
    "DIMENSIONS",
    "AsyncLedger",
    "BackendUnavailable",
    "BudgetExceeded",
    "BudgeteerError",
    "Charge",
    "Clock",
    "Headroom",
    "InvalidInput",
    "Ledger",
    "Limit",
    "LimitHeadroom",
    "Overrun",
    "Reservation",
    "ReservationError",
    "ReservationSettled",
    "ScopeUsage",
    "StepTimeout",
    "SystemClock",
    "UnknownModel",
    "UnknownReservation",
    "Usage",
    "Window",
    "__version__",
    "parse_path",
]
