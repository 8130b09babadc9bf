"""Limiter and AsyncLimiter over every backend: try_acquire, acquire with timeouts, the reserve
cycle, concurrency caps, fairness, key policy and idle-key clean-up. Time is a FakeClock whose
sleep hook jumps it, so nothing here sleeps for real."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from budgeteer import (
    AsyncLedger,
    AsyncLimiter,
    BudgetExceeded,
    Concurrency,
    InvalidInput,
    KeyPolicy,
    Ledger,
    Limit,
    Limiter,
    Pacing,
    Rate,
    Usage,
    Window,
)
from budgeteer.testing import FakeClock

PATH = "org:acme/key:openai"


@pytest.fixture
def limiter(ledger: Ledger) -> Limiter:
    return Limiter(ledger)


def window_used(limiter: Limiter, path: str, dimension: str) -> object:
    (found,) = [
        h
        for h in limiter.ledger.peek(path).limits
        if h.dimension == dimension and h.window.kind == "rolling"
    ]
    return found.used


class TestTryAcquire:
    def test_refusal_names_the_limit_and_when_to_retry(self, limiter: Limiter) -> None:
        limiter.set_limits(PATH, Rate.per_minute(3))
        assert all(limiter.try_acquire(PATH) for _ in range(3))
        refused = limiter.try_acquire(PATH)
        assert not refused
        error = refused.error
        assert error is not None
        assert (error.scope, error.dimension, error.limit, error.used, error.requested) == (
            PATH,
            "requests",
            3,
            3,
            1,
        )
        assert error.window == Window.rolling(60)
        assert refused.retry_after == error.retry_after == pytest.approx(61.0)
        assert window_used(limiter, PATH, "requests") == 3

    def test_allowed_admission_reports_what_is_left(self, limiter: Limiter) -> None:
        limiter.set_limits(PATH, Rate.per_minute(10), Rate.per_hour(100))
        admission = limiter.try_acquire(PATH)
        assert admission.allowed
        assert admission.error is None
        assert admission.retry_after is None
        assert admission.remaining("requests") == 9
        assert admission.remaining("total_tokens") is None

    def test_weighted_acquire(self, limiter: Limiter, clock: FakeClock) -> None:
        limiter.set_limits(PATH, Rate.per_minute(10_000, "total_tokens"))
        assert limiter.try_acquire(PATH, {"total_tokens": 6_000})
        clock.advance(30)
        refused = limiter.try_acquire(PATH, Usage(total_tokens=5_000))
        assert refused.error is not None
        assert refused.error.requested == 5_000
        assert refused.retry_after == pytest.approx(31.0)
        assert limiter.try_acquire(PATH, {"total_tokens": 4_000})

    def test_several_dimensions_all_or_nothing(self, limiter: Limiter) -> None:
        limiter.set_limits(PATH, Rate.per_minute(100), Rate.per_minute(10_000, "total_tokens"))
        both = {"requests": 1, "total_tokens": 3_000}
        assert all(limiter.try_acquire(PATH, both) for _ in range(3))
        refused = limiter.try_acquire(PATH, both)
        assert refused.error is not None
        assert refused.error.dimension == "total_tokens"
        # The request count did not move for the refused acquisition.
        assert window_used(limiter, PATH, "requests") == 3
        assert window_used(limiter, PATH, "total_tokens") == 9_000

    def test_rates_and_budget_caps_in_one_step(self, limiter: Limiter) -> None:
        limiter.ledger.set_limit("org:acme", Limit("cost_usd", "1.00"))
        limiter.set_limits(PATH, Rate.per_minute(100))
        assert limiter.try_acquire(PATH, {"requests": 1, "cost_usd": "0.60"})
        refused = limiter.try_acquire(PATH, {"requests": 1, "cost_usd": "0.60"})
        assert refused.error is not None
        assert (refused.error.scope, refused.error.dimension) == ("org:acme", "cost_usd")
        assert window_used(limiter, PATH, "requests") == 1

    def test_pacing_smooths_bursts(self, limiter: Limiter, clock: FakeClock) -> None:
        limiter.set_limits(PATH, Pacing(rate=100, per_s=1, burst=5))
        assert all(limiter.try_acquire(PATH) for _ in range(5))
        refused = limiter.try_acquire(PATH)
        assert refused.retry_after == pytest.approx(0.01, abs=1e-5)
        clock.advance(0.01)
        assert limiter.try_acquire(PATH)
        assert not limiter.try_acquire(PATH)

    def test_bad_amounts_name_the_field(self, limiter: Limiter) -> None:
        with pytest.raises(InvalidInput) as caught:
            limiter.try_acquire(PATH, {"requests": -1})
        assert (caught.value.field, caught.value.value) == ("usage.requests", -1)
        with pytest.raises(InvalidInput) as caught:
            limiter.try_acquire(PATH, {"tokens": 1})
        assert caught.value.field == "usage.tokens"


class TestAcquire:
    def test_waits_exactly_until_the_window_has_room(
        self, limiter: Limiter, clock: FakeClock
    ) -> None:
        limiter.set_limits(PATH, Rate.per_minute(5))
        t0 = clock.now()
        for _ in range(5):
            limiter.acquire(PATH, timeout=0)
        limiter.acquire(PATH, timeout=120)
        assert clock.now() - t0 == pytest.approx(61.0)
        assert window_used(limiter, PATH, "requests") == 1

    def test_deadline_raises_with_the_refusing_limit(
        self, limiter: Limiter, clock: FakeClock
    ) -> None:
        limiter.set_limits(PATH, Rate.per_minute(5), Rate.per_minute(1_000, "total_tokens"))
        limiter.acquire(PATH, {"requests": 5})
        t0 = clock.monotonic()
        with pytest.raises(BudgetExceeded) as caught:
            limiter.acquire(PATH, {"requests": 1, "total_tokens": 10}, timeout=30)
        assert clock.monotonic() - t0 == pytest.approx(30.0)
        error = caught.value
        assert (error.dimension, error.limit, error.used, error.requested) == (
            "requests",
            5,
            5,
            1,
        )
        assert error.retry_after == pytest.approx(31.0)
        assert window_used(limiter, PATH, "total_tokens") == 0

    def test_a_request_that_can_never_fit_fails_at_once(
        self, limiter: Limiter, clock: FakeClock
    ) -> None:
        limiter.set_limits(PATH, Rate.per_minute(5))
        t0 = clock.monotonic()
        with pytest.raises(BudgetExceeded) as caught:
            limiter.acquire(PATH, {"requests": 6}, timeout=600)
        assert caught.value.retry_after is None
        assert clock.monotonic() == t0

    def test_waits_for_pacing(self, limiter: Limiter, clock: FakeClock) -> None:
        limiter.set_limits(PATH, Pacing(rate=10, burst=1))
        t0 = clock.now()
        for _ in range(11):
            limiter.acquire(PATH, timeout=5)
        assert clock.now() - t0 == pytest.approx(1.0, abs=1e-4)

    async def test_async_twin_waits_and_times_out(
        self, async_ledger: AsyncLedger, clock: FakeClock
    ) -> None:
        limiter = AsyncLimiter(async_ledger)
        await limiter.set_limits(PATH, Rate.per_minute(2), Rate.per_minute(50, "total_tokens"))
        t0 = clock.now()
        assert await limiter.try_acquire(PATH, {"requests": 1, "total_tokens": 40})
        await limiter.acquire(PATH, {"requests": 1, "total_tokens": 10}, timeout=1)
        await limiter.acquire(PATH, {"requests": 1, "total_tokens": 10}, timeout=120)
        assert clock.now() - t0 == pytest.approx(61.0)
        await limiter.acquire(PATH, {"requests": 1}, timeout=0)
        with pytest.raises(BudgetExceeded) as caught:
            await limiter.acquire(PATH, {"requests": 1}, timeout=10)
        assert (caught.value.dimension, caught.value.used) == ("requests", 2)
        assert clock.now() - t0 == pytest.approx(71.0)
        await limiter.close()


class TestReserveCycle:
    def test_estimate_then_actual(self, limiter: Limiter, clock: FakeClock) -> None:
        limiter.set_limits(PATH, Rate.per_minute(10_000, "total_tokens"))
        hold = limiter.reserve(PATH, {"total_tokens": 8_000})
        refused = limiter.try_acquire(PATH, {"total_tokens": 3_000})
        assert refused.error is not None
        assert refused.error.held == 8_000
        charge = limiter.commit(hold, Usage(total_tokens=2_500))
        assert charge.usage.total_tokens == 2_500
        assert window_used(limiter, PATH, "total_tokens") == 2_500
        assert limiter.try_acquire(PATH, {"total_tokens": 7_500})

    def test_release_frees_and_reserve_can_wait(self, limiter: Limiter, clock: FakeClock) -> None:
        limiter.set_limits(PATH, Rate.per_minute(10_000, "total_tokens"))
        hold = limiter.reserve(PATH, {"total_tokens": 9_000})
        limiter.release(hold)
        limiter.try_acquire(PATH, {"total_tokens": 9_000})
        t0 = clock.now()
        with pytest.raises(BudgetExceeded):
            limiter.reserve(PATH, {"total_tokens": 5_000})  # timeout=0: no wait
        assert clock.now() == t0
        late = limiter.reserve(PATH, {"total_tokens": 5_000}, timeout=100)
        assert clock.now() - t0 == pytest.approx(61.0)
        assert late.usage.total_tokens == 5_000


class TestConcurrency:
    def test_at_most_n_in_flight(self, limiter: Limiter, clock: FakeClock) -> None:
        limiter.set_limits(PATH, Concurrency(2), Rate.per_minute(100))
        with limiter.concurrent(PATH), limiter.concurrent(PATH):
            with pytest.raises(BudgetExceeded) as caught:
                with limiter.concurrent(PATH, timeout=0.5):
                    pass
            assert (caught.value.dimension, caught.value.held) == ("counter:in_flight", 2)
        with limiter.concurrent(PATH):  # both slots came back on exit
            pass
        # Three requests were recorded (the refused one was not).
        assert window_used(limiter, PATH, "requests") == 3

    def test_an_exception_releases_the_slot_without_recording(self, limiter: Limiter) -> None:
        limiter.set_limits(PATH, Concurrency(1), Rate.per_minute(100))
        with pytest.raises(RuntimeError), limiter.concurrent(PATH):
            raise RuntimeError("the call failed")
        assert window_used(limiter, PATH, "requests") == 0
        with limiter.concurrent(PATH):
            pass

    def test_a_crashed_holder_is_reclaimed_by_ttl(self, limiter: Limiter, clock: FakeClock) -> None:
        limiter.set_limits(PATH, Concurrency(1))
        # A holder that never exits (its process died): the hold lives ttl_s.
        limiter.reserve(PATH, {"counter:in_flight": 1}, ttl_s=2.0)
        t0 = clock.monotonic()
        with limiter.concurrent(PATH, timeout=10, ttl_s=5):
            waited = clock.monotonic() - t0
        assert 2.0 <= waited <= 2.0 + 0.05 + 1e-6  # reclaimed at its TTL, seen within a poll


class GatedClock(FakeClock):
    """A fake clock whose sleeps wait for the test to open a gate, then jump."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.sleeping = threading.Event()
        self.async_gate: asyncio.Event | None = None
        self.async_sleeping: asyncio.Event | None = None

    def sleep(self, seconds: float) -> None:
        self.sleeping.set()
        self.gate.wait(10)
        super().sleep(seconds)

    async def async_sleep(self, seconds: float) -> None:
        assert self.async_gate is not None
        assert self.async_sleeping is not None
        self.async_sleeping.set()
        await self.async_gate.wait()
        await super().async_sleep(seconds)


class TestFairness:
    """FIFO per path within a limiter: a large waiter is not starved by small requests."""

    async def test_a_large_waiter_goes_before_later_small_ones(
        self, async_ledger: AsyncLedger
    ) -> None:
        clock = GatedClock()
        clock.async_gate, clock.async_sleeping = asyncio.Event(), asyncio.Event()
        limiter = AsyncLimiter(AsyncLedger(async_ledger._backend, clock=clock))
        await limiter.set_limits(PATH, Rate.per_minute(10, "total_tokens"))
        await limiter.acquire(PATH, {"total_tokens": 8})
        t0 = clock.now()
        done: list[tuple[str, float]] = []

        async def take(name: str, tokens: int) -> None:
            await limiter.acquire(PATH, {"total_tokens": tokens}, timeout=600)
            done.append((name, clock.now() - t0))

        big = asyncio.create_task(take("big", 10))
        await clock.async_sleeping.wait()  # the big one was refused and waits, first in line
        smalls = [asyncio.create_task(take(f"small{i}", 1)) for i in range(12)]
        await asyncio.sleep(0)
        # Two tokens are free, but a newcomer does not jump the queue.
        refused = await limiter.try_acquire(PATH, {"total_tokens": 1})
        assert refused.error is not None
        assert refused.error.dimension == "total_tokens"
        clock.async_gate.set()
        await asyncio.gather(big, *smalls)
        names = [name for name, _ in done]
        assert names == ["big"] + [f"small{i}" for i in range(12)]
        assert done[0][1] == pytest.approx(61.0)
        # Served in order, never more than 10 tokens in a minute: 10 smalls a minute later.
        assert [round(at) for _, at in done[1:]] == [122] * 10 + [183] * 2
        await limiter.close()

    def test_sync_waiters_queue_in_order(self, ledger: Ledger) -> None:
        clock = GatedClock()
        limiter = Limiter(Ledger(ledger._backend, clock=clock))
        limiter.set_limits(PATH, Rate.per_minute(10, "total_tokens"))
        limiter.acquire(PATH, {"total_tokens": 8})
        order: list[str] = []

        def take(name: str, tokens: int) -> Callable[[], None]:
            def run() -> None:
                limiter.acquire(PATH, {"total_tokens": tokens}, timeout=600)
                order.append(name)

            return run

        big = threading.Thread(target=take("big", 10))
        big.start()
        assert clock.sleeping.wait(10)  # the big one is the queue's head, asleep
        small = threading.Thread(target=take("small", 1))
        small.start()
        refused = limiter.try_acquire(PATH, {"total_tokens": 1})
        assert refused.error is not None  # room for 2, but waiters come first
        clock.gate.set()
        big.join(10)
        small.join(10)
        assert order == ["big", "small"]


class TestKeyPolicy:
    def test_endpoint_overrides_user_overrides_default(self, ledger: Ledger) -> None:
        policy = KeyPolicy([Rate.per_minute(3)])
        policy.set_user("alice", Rate.per_minute(5))
        policy.set_endpoint("/v1/chat", Rate.per_minute(1))
        limiter = Limiter(ledger, policy=policy)

        def admitted(user: str, endpoint: str | None) -> int:
            path = limiter.key(user, endpoint)
            return sum(bool(limiter.try_acquire(path)) for _ in range(10))

        assert admitted("alice", "/v1/chat") == 1
        assert admitted("bob", "/v1/chat") == 1
        assert admitted("alice", "/v1/embed") == 5
        assert admitted("alice", None) == 5
        assert admitted("carol", "/v1/embed") == 3
        assert policy.source("alice", "/v1/chat") == "endpoint"
        assert policy.source("carol") == "default"
        assert limiter.key("alice", "/v1/chat") == "ratelimit:alice/endpoint:x=2f76312f63686174"

    def test_changes_at_run_time_keep_the_window(self, ledger: Ledger) -> None:
        policy = KeyPolicy([Rate.per_minute(3)])
        limiter = Limiter(ledger, policy=policy)
        path = limiter.key("u1")
        assert sum(bool(limiter.try_acquire(path)) for _ in range(5)) == 3
        policy.set_default(Rate.per_minute(4), Rate.per_minute(1_000, "total_tokens"))
        path = limiter.key("u1")
        # The minute window kept its 3: one more fits under the new cap of 4.
        assert sum(bool(limiter.try_acquire(path)) for _ in range(5)) == 1
        assert set(ledger.limits(path)) == {
            Limit("requests", 4, Window.rolling(60)),
            Limit("total_tokens", 1_000, Window.rolling(60)),
        }
        policy.set_default(Rate.per_hour(100))
        path = limiter.key("u1")
        assert ledger.limits(path) == (Limit("requests", 100, Window.rolling(3600)),)

    def test_idle_keys_are_forgotten_but_never_a_live_window(
        self, make_ledger: Callable[[], Ledger], clock: FakeClock
    ) -> None:
        policy = KeyPolicy([Rate.per_minute(2)])
        limiter = Limiter(make_ledger(), policy=policy)
        busy, idle = limiter.key("busy"), limiter.key("idle")
        limiter.try_acquire(idle)
        clock.advance(61)
        limiter.try_acquire(busy)
        limiter.try_acquire(busy)
        assert limiter.cleanup_idle() == 2  # idle's key and its user scope
        assert limiter.ledger.limits(idle) == ()
        assert limiter.ledger.limits(busy) != ()
        assert not limiter.try_acquire(busy)  # its live window was kept
        # A second process that still believes the key is installed notices and reinstalls.
        other = Limiter(make_ledger(), policy=policy)
        busy_again = other.key("busy")
        clock.advance(61)
        assert limiter.cleanup_idle() == 2
        assert [bool(other.try_acquire(busy_again)) for _ in range(3)] == [True, True, False]
        assert limiter.ledger.limits(busy) == (Limit("requests", 2, Window.rolling(60)),)

    async def test_async_key_policy(self, async_ledger: AsyncLedger, clock: FakeClock) -> None:
        policy = KeyPolicy([Rate.per_minute(2)])
        policy.set_endpoint("search", Rate.per_minute(1))
        limiter = AsyncLimiter(async_ledger, policy=policy)
        path = await limiter.key("u1", "search")
        assert [bool(await limiter.try_acquire(path)) for _ in range(2)] == [True, False]
        clock.advance(61)
        assert await limiter.cleanup_idle() == 2
        await limiter.close()
