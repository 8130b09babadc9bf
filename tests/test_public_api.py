"""The public surface is curated: a change to it must be a deliberate change to this list."""

from __future__ import annotations

import subprocess
import sys

import budgeteer

PUBLIC = {
    "DIMENSIONS", "AsyncLedger", "AsyncModelCall", "AsyncRunGuard", "BackendUnavailable",
    "BudgetExceeded", "BudgetWarning", "BudgeteerError", "Charge", "Clock", "Headroom",
    "InvalidInput", "Lease", "LeasePool", "Ledger", "Limit", "LimitHeadroom",
    "LongContextPrice", "ModelCall",
    "ModelPrice", "Overrun", "Price", "Pricing", "Reservation", "ReservationError",
    "ReservationSettled", "ResourceQuota", "ResourceTracker", "ResourceUsage", "RunGuard",
    "RunReport", "ScopeUsage", "StepTimeout", "SystemClock", "UnknownModel",
    "UnknownReservation", "Usage", "Window", "__version__", "estimate_prompt_tokens",
    "parse_path",
    # rate limits (budgeteer.limiters)
    "Admission", "AsyncLimiter", "AsyncSlidingWindowBudget", "Concurrency", "KeyPolicy",
    "Limiter", "Pacing", "Rate", "RateLimitConfig", "RateLimitResult", "RateLimiter",
    "SlidingWindowBudget", "TokenBudget",
    # the degradation / exhaustion policy
    "CallPlan", "Degrade", "Grant", "GrantRecord", "Policy",
}  # fmt: skip


def test_all_matches_the_curated_list() -> None:
    # Order is ruff's RUF022 (constants, then classes, then functions), checked by `make lint`.
    assert len(set(budgeteer.__all__)) == len(budgeteer.__all__)
    assert set(budgeteer.__all__) == PUBLIC
    for name in budgeteer.__all__:
        assert hasattr(budgeteer, name), name


def test_importing_budgeteer_stays_light() -> None:
    code = (
        "import sys, budgeteer; "
        "heavy = ('genai_prices', 'typer', 'rich', 'pydantic', 'tenacity', 'redis'); "
        "heavy = [m for m in heavy if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_errors_survive_pickling_with_their_fields() -> None:
    import pickle

    error = budgeteer.BudgetExceeded(
        scope="org:a",
        dimension="requests",
        limit=3,
        used=3,
        held=0,
        requested=1,
        window=budgeteer.Window.daily(),
        retry_after=5.0,
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.scope, copy.dimension, copy.limit, copy.retry_after) == (
        "org:a",
        "requests",
        3,
        5.0,
    )
    invalid = pickle.loads(pickle.dumps(budgeteer.InvalidInput("usage.requests", -1, "negative")))
    assert (invalid.field, invalid.value) == ("usage.requests", -1)
