"""budgeteer: hard, exact, hierarchical budgets for LLM agents."""

import logging

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
from budgeteer.guard import (
    AsyncModelCall,
    AsyncRunGuard,
    BudgetWarning,
    ModelCall,
    RunGuard,
    RunReport,
    estimate_prompt_tokens,
)
from budgeteer.lease import Lease, LeasePool
from budgeteer.ledger import AsyncLedger, Ledger
from budgeteer.limiters import (
    Admission,
    AsyncLimiter,
    AsyncSlidingWindowBudget,
    Concurrency,
    KeyPolicy,
    Limiter,
    Pacing,
    Rate,
    RateLimitConfig,
    RateLimiter,
    RateLimitResult,
    SlidingWindowBudget,
    TokenBudget,
)
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
from budgeteer.policy import CallPlan, Degrade, Grant, GrantRecord, Policy
from budgeteer.pricing import LongContextPrice, ModelPrice, Price, Pricing
from budgeteer.tracker import ResourceQuota, ResourceTracker, ResourceUsage

__version__ = "0.1.0"

# A library logs; the application decides where to. (Budget warnings go to "budgeteer.guard".)
logging.getLogger("budgeteer").addHandler(logging.NullHandler())

__all__ = [
    "DIMENSIONS",
    "Admission",
    "AsyncLedger",
    "AsyncLimiter",
    "AsyncModelCall",
    "AsyncRunGuard",
    "AsyncSlidingWindowBudget",
    "BackendUnavailable",
    "BudgetExceeded",
    "BudgetWarning",
    "BudgeteerError",
    "CallPlan",
    "Charge",
    "Clock",
    "Concurrency",
    "Degrade",
    "Grant",
    "GrantRecord",
    "Headroom",
    "InvalidInput",
    "KeyPolicy",
    "Lease",
    "LeasePool",
    "Ledger",
    "Limit",
    "LimitHeadroom",
    "Limiter",
    "LongContextPrice",
    "ModelCall",
    "ModelPrice",
    "Overrun",
    "Pacing",
    "Policy",
    "Price",
    "Pricing",
    "Rate",
    "RateLimitConfig",
    "RateLimitResult",
    "RateLimiter",
    "Reservation",
    "ReservationError",
    "ReservationSettled",
    "ResourceQuota",
    "ResourceTracker",
    "ResourceUsage",
    "RunGuard",
    "RunReport",
    "ScopeUsage",
    "SlidingWindowBudget",
    "StepTimeout",
    "SystemClock",
    "TokenBudget",
    "UnknownModel",
    "UnknownReservation",
    "Usage",
    "Window",
    "__version__",
    "estimate_prompt_tokens",
    "parse_path",
]
