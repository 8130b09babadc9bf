"""The seed's RateLimiter (001) and the post's token budgets (002), over every backend."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from budgeteer import (
    AsyncLedger,
    AsyncSlidingWindowBudget,
    BudgetExceeded,
    InvalidInput,
    Ledger,
    RateLimitConfig,
    RateLimiter,
    RateLimitResult,
    SlidingWindowBudget,
    TokenBudget,
)
from budgeteer.testing import FakeClock


class RecordingLogger:
    def __init__(self) -> None:
        self.warnings: list[tuple[str, Mapping[str, object]]] = []

    def warning(
        self, msg: str, /, *args: object, extra: Mapping[str, object] | None = None
    ) -> None:
        self.warnings.append((msg % args, dict(extra or {})))

    def info(self, msg: str, /, *args: object, extra: Mapping[str, object] | None = None) -> None:
        del msg, args, extra


@pytest.fixture
def limiter(ledger: Ledger) -> RateLimiter:
    return RateLimiter(default_config=RateLimitConfig(5, 20, 100), ledger=ledger)


class TestSeedRateLimiter:
    def test_check_counts_down_then_refuses_with_the_seed_fields(
        self, ledger: Ledger, clock: FakeClock
    ) -> None:
        logger = RecordingLogger()
        limiter = RateLimiter(logger, RateLimitConfig(5, 20, 100), ledger=ledger)
        results = [limiter.check_rate_limit("user-1", "/api/analyze") for _ in range(5)]
        assert [r.remaining for r in results] == [4, 3, 2, 1, 0]
        assert not any(r.exceeded for r in results)
        clock.advance(10)
        refused = limiter.check_rate_limit("user-1", "/api/analyze")
        assert refused == RateLimitResult(
            exceeded=True,
            limit_type="minute",
            current=5,
            limit=5,
            retry_after=pytest.approx(51.0),  # type: ignore[arg-type]
        )
        (message, extra) = logger.warnings[0]
        assert extra["limit_type"] == "minute"
        assert extra["user_id"] == "user-1"
        assert "rate_limit_exceeded" in message
        clock.advance(51)
        assert not limiter.check_rate_limit("user-1", "/api/analyze").exceeded

    def test_the_hour_and_day_windows(self, limiter: RateLimiter, clock: FakeClock) -> None:
        for _ in range(4):
            for _ in range(5):
                assert not limiter.check_rate_limit("u").exceeded
            clock.advance(61)
        refused = limiter.check_rate_limit("u")
        assert (refused.exceeded, refused.limit_type, refused.current, refused.limit) == (
            True,
            "hour",
            20,
            20,
        )

    def test_endpoint_limits_override_user_limits(self, limiter: RateLimiter) -> None:
        limiter.set_user_limits("vip", RateLimitConfig(requests_per_minute=50))
        limiter.set_endpoint_limits("/expensive", RateLimitConfig(requests_per_minute=1))
        assert limiter.get_config("vip") == RateLimitConfig(requests_per_minute=50)
        assert limiter.get_config("vip", "/expensive").requests_per_minute == 1
        assert limiter.get_config("nobody").requests_per_minute == 5
        assert not limiter.check_rate_limit("vip", "/expensive").exceeded
        assert limiter.check_rate_limit("vip", "/expensive").exceeded
        assert sum(not limiter.check_rate_limit("vip", "/cheap").exceeded for _ in range(60)) == 50
        assert sum(not limiter.check_rate_limit("anon", "/cheap").exceeded for _ in range(9)) == 5

    def test_default_config_changes_at_run_time(self, limiter: RateLimiter) -> None:
        assert sum(not limiter.check_rate_limit("u").exceeded for _ in range(9)) == 5
        limiter.set_default_config(RateLimitConfig(requests_per_minute=7))
        assert sum(not limiter.check_rate_limit("u").exceeded for _ in range(9)) == 2

    def test_record_false_peeks(self, limiter: RateLimiter) -> None:
        for _ in range(3):
            peeked = limiter.check_rate_limit("u", record=False)
            assert (peeked.exceeded, peeked.remaining) == (False, 5)
        for _ in range(5):
            limiter.check_rate_limit("u")
        peeked = limiter.check_rate_limit("u", record=False)
        assert (peeked.exceeded, peeked.limit_type, peeked.current, peeked.limit) == (
            True,
            "minute",
            5,
            5,
        )

    def test_get_usage(self, limiter: RateLimiter) -> None:
        for _ in range(3):
            limiter.check_rate_limit("u", "search")
        usage = limiter.get_usage("u", "search")
        assert usage == {
            "minute": {"current": 3, "limit": 5, "remaining": 2, "reset_in_seconds": 60},
            "hour": {"current": 3, "limit": 20, "remaining": 17, "reset_in_seconds": 3600},
            "day": {"current": 3, "limit": 100, "remaining": 97, "reset_in_seconds": 86400},
        }

    def test_burst_allowance(self, ledger: Ledger, clock: FakeClock) -> None:
        limiter = RateLimiter(
            default_config=RateLimitConfig(60, None, None, burst_allowance=2), ledger=ledger
        )
        assert not limiter.check_rate_limit("u").exceeded
        assert not limiter.check_rate_limit("u").exceeded
        refused = limiter.check_rate_limit("u")
        assert (refused.limit_type, refused.limit) == ("burst", 2)
        assert refused.retry_after == pytest.approx(1.0, abs=1e-5)
        clock.advance(1.0)
        assert not limiter.check_rate_limit("u").exceeded

    def test_reset_user_clears_its_windows(self, limiter: RateLimiter) -> None:
        limiter.set_endpoint_limits("search", RateLimitConfig(2, None, None))
        for _ in range(5):
            limiter.check_rate_limit("u")
            limiter.check_rate_limit("u", "search")
            limiter.check_rate_limit("other")
        assert limiter.check_rate_limit("u").exceeded
        assert limiter.reset_user("u") == 4  # minute, hour, day on "default"; minute on search
        assert not limiter.check_rate_limit("u").exceeded
        assert not limiter.check_rate_limit("u", "search").exceeded
        assert limiter.check_rate_limit("other").exceeded

    def test_cleanup_expired_never_forgets_a_live_window(
        self, ledger: Ledger, clock: FakeClock
    ) -> None:
        limiter = RateLimiter(default_config=RateLimitConfig(2, None, None), ledger=ledger)
        limiter.check_rate_limit("old")
        clock.advance(61)
        limiter.check_rate_limit("new")
        limiter.check_rate_limit("new")
        assert limiter.cleanup_expired() == 2  # "old": its key and its user scope
        assert limiter.check_rate_limit("new").exceeded
        assert limiter.get_usage("old")["minute"]["current"] == 0

    def test_bad_configs_name_the_field(self) -> None:
        with pytest.raises(InvalidInput) as caught:
            RateLimitConfig(requests_per_minute=-1)
        assert caught.value.field == "requests_per_minute"
        with pytest.raises(InvalidInput) as caught:
            RateLimitConfig(requests_per_minute=None, burst_allowance=3)
        assert caught.value.field == "burst_allowance"


class TestPostShapes:
    def test_session_cap_reserve_commit_release(self, ledger: Ledger) -> None:
        session = TokenBudget(max_tokens=1_000, ledger=ledger, path="session:s1")
        session.reserve(600)
        session.reserve(300)
        with pytest.raises(BudgetExceeded) as caught:
            session.reserve(200)
        assert (caught.value.used, caught.value.held, caught.value.limit) == (0, 900, 1000)
        session.commit(600, 450)  # the estimate names the hold; the actual is recorded
        session.release(300)
        assert session.used == 450
        assert session.remaining == 550
        with pytest.raises(InvalidInput) as bad:
            session.release(300)
        assert bad.value.field == "estimated"

    def test_window_acquire_waits_and_try_acquire_does_not(
        self, ledger: Ledger, clock: FakeClock
    ) -> None:
        window = SlidingWindowBudget(3_000, 60, ledger=ledger, path="window:w1")
        hold = window.acquire(2_000, timeout=1)
        assert not window.try_acquire(1_500)
        window.commit(hold, 2_500)
        assert window.try_acquire(500)
        window.commit(500, 500)
        t0 = clock.now()
        with pytest.raises(BudgetExceeded) as caught:
            window.acquire(1_000, timeout=30.0)
        assert caught.value.retry_after == pytest.approx(31.0)
        assert clock.now() - t0 == pytest.approx(30.0)
        window.acquire(1_000, timeout=60.0)
        assert clock.now() - t0 == pytest.approx(61.0)

    async def test_the_posts_call_llm_flow(
        self, async_ledger: AsyncLedger, ledger: Ledger, clock: FakeClock
    ) -> None:
        session = TokenBudget(max_tokens=10_000, ledger=ledger, path="session:s2")
        window = AsyncSlidingWindowBudget(
            max_tokens=4_000, window_seconds=60, ledger=async_ledger, path="window:w2"
        )
        completed = skipped = 0
        t0 = clock.now()
        for i in range(12):
            estimate = 1_500
            try:
                session.reserve(estimate)
            except BudgetExceeded:
                skipped += 1
                continue
            try:
                await window.acquire(estimate, timeout=30.0)
            except BudgetExceeded:
                session.release(estimate)
                skipped += 1
                continue
            actual = 1_000 if i % 2 else 1_200
            session.commit(estimate, actual)
            await window.commit(estimate, actual)
            completed += 1
        # A minute's window holds three calls; the fourth waits 30 s and is skipped, the fifth
        # waits 30 s more and is skipped too, the sixth gets in when the window turns (61 s).
        assert (completed, skipped) == (8, 4)
        assert session.used == 8_800
        assert clock.now() - t0 == pytest.approx(122.0)
