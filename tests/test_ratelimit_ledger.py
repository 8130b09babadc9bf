"""The ledger operations rate limiting adds, on every backend: admit (a checked charge), pacing
(GCRA) windows, named counters and the pruning of idle scopes."""

from __future__ import annotations

import pytest

from budgeteer import BudgetExceeded, Ledger, Limit, Usage, Window
from budgeteer.backends.base import Denial
from budgeteer.testing import FakeClock

MINUTE = Window.rolling(60, granularity_s=1)


def used(ledger: Ledger, path: str, dimension: str, window: Window) -> object:
    for limit in ledger.peek(path).limits:
        if limit.dimension == dimension and limit.window == window and limit.scope == path:
            return limit.used
    raise AssertionError(f"no {dimension} limit over {window} on {path}")


class TestAdmit:
    def test_admit_records_usage_as_used_and_refuses_past_the_cap(self, ledger: Ledger) -> None:
        ledger.set_limit("org:a", Limit("requests", 3, MINUTE))
        for expected in (1, 2, 3):
            headroom = ledger.admit("org:a/user:u", Usage(requests=1))
            assert headroom.limits[0].used == expected
            assert headroom.limits[0].held == 0
        with pytest.raises(BudgetExceeded) as caught:
            ledger.admit("org:a/user:u", Usage(requests=1))
        error = caught.value
        assert (error.scope, error.dimension, error.limit, error.used, error.requested) == (
            "org:a",
            "requests",
            3,
            3,
            1,
        )
        assert error.window == MINUTE
        assert error.retry_after == pytest.approx(61.0)
        assert ledger.usage("org:a").used.requests == 3
        assert ledger.usage("org:a/user:u").used.requests == 3

    def test_holds_count_against_an_admission(self, ledger: Ledger) -> None:
        ledger.set_limit("org:a", Limit("requests", 2))
        ledger.reserve("org:a", Usage(requests=1))
        ledger.admit("org:a", Usage(requests=1))
        with pytest.raises(BudgetExceeded) as caught:
            ledger.admit("org:a", Usage(requests=1))
        assert (caught.value.used, caught.value.held) == (1, 1)

    def test_several_dimensions_are_all_or_nothing(self, ledger: Ledger) -> None:
        ledger.set_limits(
            "org:a", Limit("requests", 10, MINUTE), Limit("total_tokens", 5000, MINUTE)
        )
        ledger.admit("org:a", Usage(requests=1, total_tokens=3000))
        with pytest.raises(BudgetExceeded) as caught:
            ledger.admit("org:a", Usage(requests=1, total_tokens=3000))
        assert caught.value.dimension == "total_tokens"
        # The refused request counted nothing, on either dimension.
        assert used(ledger, "org:a", "requests", MINUTE) == 1
        assert used(ledger, "org:a", "total_tokens", MINUTE) == 3000

    def test_admit_and_a_budget_cap_are_checked_in_one_step(self, ledger: Ledger) -> None:
        ledger.set_limit("org:a", Limit("cost_usd", "0.10"))
        ledger.set_limit("org:a/user:u", Limit("requests", 100, MINUTE))
        ledger.admit("org:a/user:u", Usage(requests=1, cost_usd="0.06"))
        with pytest.raises(BudgetExceeded) as caught:
            ledger.admit("org:a/user:u", Usage(requests=1, cost_usd="0.06"))
        assert (caught.value.scope, caught.value.dimension) == ("org:a", "cost_usd")
        assert used(ledger, "org:a/user:u", "requests", MINUTE) == 1

    def test_a_stale_limit_count_does_nothing(self, ledger: Ledger, clock: FakeClock) -> None:
        ledger.set_limit("org:a", Limit("requests", 5, MINUTE))
        backend = ledger._backend
        scopes = ("org:a",)
        assert backend.admit("org:a", scopes, {"requests": 1}, clock.now(), 2) is None
        assert used(ledger, "org:a", "requests", MINUTE) == 0
        result = backend.admit("org:a", scopes, {"requests": 1}, clock.now(), 1)
        assert isinstance(result, tuple)
        assert used(ledger, "org:a", "requests", MINUTE) == 1


class TestRollingBoundaries:
    """Usage at t counts until at least t + span and at most t + span + granularity."""

    def test_exact_counts_at_the_boundary(self, ledger: Ledger, clock: FakeClock) -> None:
        ledger.set_limit("org:a", Limit("requests", 10, MINUTE))
        t0 = clock.now()
        for _ in range(10):
            ledger.admit("org:a", Usage(requests=1))
        clock.advance(60.999)
        with pytest.raises(BudgetExceeded) as caught:
            ledger.admit("org:a", Usage(requests=1))
        assert caught.value.used == 10
        assert caught.value.retry_after == pytest.approx(t0 + 61 - clock.now())
        clock.advance(0.001)
        for _ in range(10):
            ledger.admit("org:a", Usage(requests=1))
        with pytest.raises(BudgetExceeded):
            ledger.admit("org:a", Usage(requests=1))

    def test_no_double_burst_across_a_boundary(self, ledger: Ledger, clock: FakeClock) -> None:
        # A fixed window would admit 10 just before its boundary and 10 more just after.
        ledger.set_limit("org:a", Limit("requests", 10, MINUTE))
        clock.advance(59.5)
        for _ in range(10):
            ledger.admit("org:a", Usage(requests=1))
        for step in (0.5, 1.0, 30.0, 28.9):  # up to 60.4 s after the burst
            clock.advance(step)
            with pytest.raises(BudgetExceeded):
                ledger.admit("org:a", Usage(requests=1))
        clock.advance(0.1)  # its bucket (59-60 s) has left the window 60.5 s after the burst
        ledger.admit("org:a", Usage(requests=10))

    def test_weighted_admissions(self, ledger: Ledger, clock: FakeClock) -> None:
        ledger.set_limit("org:a", Limit("total_tokens", 1000, MINUTE))
        ledger.admit("org:a", Usage(total_tokens=400))
        clock.advance(10)
        ledger.admit("org:a", Usage(total_tokens=500))
        with pytest.raises(BudgetExceeded) as caught:
            ledger.admit("org:a", Usage(total_tokens=200))
        # 100 tokens free now; 500 more once the first 400 leave (at 61 s).
        assert caught.value.retry_after == pytest.approx(51.0)
        clock.advance(51)
        ledger.admit("org:a", Usage(total_tokens=200))
        with pytest.raises(BudgetExceeded) as caught:
            ledger.admit("org:a", Usage(total_tokens=1001))
        assert caught.value.retry_after is None


class TestPacing:
    def test_burst_then_one_per_interval(self, ledger: Ledger, clock: FakeClock) -> None:
        # 10 per second, bursts of at most 5.
        ledger.set_limit("org:a", Limit("requests", 5, Window.pacing(0.5)))
        for _ in range(5):
            ledger.admit("org:a", Usage(requests=1))
        with pytest.raises(BudgetExceeded) as caught:
            ledger.admit("org:a", Usage(requests=1))
        assert caught.value.retry_after == pytest.approx(0.1, abs=1e-5)
        assert (caught.value.used, caught.value.limit) == (5, 5)
        clock.advance(0.1)
        ledger.admit("org:a", Usage(requests=1))
        with pytest.raises(BudgetExceeded):
            ledger.admit("org:a", Usage(requests=1))
        clock.advance(0.25)
        ledger.admit("org:a", Usage(requests=2))  # 2.5 refilled: 2 fit
        with pytest.raises(BudgetExceeded) as caught:
            ledger.admit("org:a", Usage(requests=1))
        assert caught.value.retry_after == pytest.approx(0.05, abs=1e-5)

    def test_a_request_larger_than_the_bucket_never_fits(self, ledger: Ledger) -> None:
        ledger.set_limit("org:a", Limit("requests", 5, Window.pacing(0.5)))
        with pytest.raises(BudgetExceeded) as caught:
            ledger.admit("org:a", Usage(requests=6))
        assert caught.value.retry_after is None

    def test_reserve_paces_and_commit_does_not_refill(
        self, ledger: Ledger, clock: FakeClock
    ) -> None:
        ledger.set_limit("org:a", Limit("requests", 2, Window.pacing(2)))
        first = ledger.reserve("org:a", Usage(requests=1))
        ledger.reserve("org:a", Usage(requests=1))
        ledger.commit(first, Usage(requests=1))
        with pytest.raises(BudgetExceeded) as caught:
            ledger.reserve("org:a", Usage(requests=1))
        assert caught.value.retry_after == pytest.approx(1.0, abs=1e-5)
        assert caught.value.held == 0  # holds do not count against a bucket
        clock.advance(1.0)
        ledger.reserve("org:a", Usage(requests=1))

    def test_never_more_than_rate_times_span_plus_burst(
        self, ledger: Ledger, clock: FakeClock
    ) -> None:
        ledger.set_limit("org:a", Limit("requests", 3, Window.pacing(0.3)))  # 10/s, burst 3
        admitted: list[float] = []
        for _ in range(400):  # 4 s of attempts every 10 ms
            try:
                ledger.admit("org:a", Usage(requests=1))
                admitted.append(clock.now())
            except BudgetExceeded:
                pass
            clock.advance(0.01)
        assert 40 <= len(admitted) <= 43
        for start in admitted:
            in_second = [t for t in admitted if start <= t < start + 1.0]
            assert len(in_second) <= 10 + 3

    def test_peek_reports_the_bucket_level(self, ledger: Ledger, clock: FakeClock) -> None:
        ledger.set_limit("org:a", Limit("requests", 4, Window.pacing(4)))
        ledger.admit("org:a", Usage(requests=3))
        clock.advance(1.5)
        (limit,) = ledger.peek("org:a").limits
        assert (limit.used, limit.remaining) == (2, 2)


class TestCounters:
    def test_a_named_counter_is_a_dimension(self, ledger: Ledger, clock: FakeClock) -> None:
        ledger.set_limit("org:a", Limit("counter:in_flight", 2))
        backend = ledger._backend
        now = clock.now()

        def hold(i: int) -> object:
            return backend.reserve(
                f"org:a#{i}", "org:a", ("org:a",), {"counter:in_flight": 1}, now, now + 30
            )

        assert isinstance(hold(0), tuple)
        assert isinstance(hold(1), tuple)
        denied = hold(2)
        assert isinstance(denied, Denial)
        assert (denied.state.dimension, denied.state.held, denied.requested) == (
            "counter:in_flight",
            2,
            1,
        )
        backend.release("org:a#0", now)
        assert isinstance(hold(3), tuple)
        assert ledger.limits("org:a") == (Limit("counter:in_flight", 2),)


class TestPrune:
    def test_a_live_window_is_never_forgotten(self, ledger: Ledger, clock: FakeClock) -> None:
        ledger.set_limit("org:a/user:u", Limit("requests", 5, MINUTE))
        ledger.admit("org:a/user:u", Usage(requests=5))
        clock.advance(60)
        assert ledger.prune("org:a/user:u") is False
        with pytest.raises(BudgetExceeded):
            ledger.admit("org:a/user:u", Usage(requests=1))
        clock.advance(1)
        assert ledger.prune("org:a/user:u") is True
        assert ledger.limits("org:a/user:u") == ()
        assert ledger.prune("org:a/user:u") is False

    def test_holds_pacing_and_lifetime_usage_keep_a_scope(
        self, ledger: Ledger, clock: FakeClock
    ) -> None:
        ledger.set_limit("org:a/user:h", Limit("requests", 5))
        hold = ledger.reserve("org:a/user:h", Usage(requests=1))
        assert ledger.prune("org:a/user:h") is False
        ledger.release(hold)
        assert ledger.prune("org:a/user:h") is True

        ledger.set_limit("org:a/user:p", Limit("requests", 2, Window.pacing(1)))
        ledger.admit("org:a/user:p", Usage(requests=1))
        assert ledger.prune("org:a/user:p") is False
        clock.advance(0.5)
        assert ledger.prune("org:a/user:p") is True

        ledger.set_limit("org:a/user:l", Limit("requests", 5))
        ledger.admit("org:a/user:l", Usage(requests=1))
        clock.advance(86400)
        assert ledger.prune("org:a/user:l") is False
