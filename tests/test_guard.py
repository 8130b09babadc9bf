"""The run guard over every backend: admission, reconciliation, deadlines, warnings, reports."""

from __future__ import annotations

import asyncio
import threading
import time
from decimal import Decimal

import pytest

from budgeteer import (
    AsyncLedger,
    BudgetExceeded,
    InvalidInput,
    Ledger,
    Limit,
    StepTimeout,
    UnknownModel,
    Usage,
)
from budgeteer.guard import AsyncRunGuard, BudgetWarning, RunGuard, estimate_prompt_tokens
from budgeteer.pricing import Pricing

RUN = "org:acme/team:search/session:s1"


def test_prompt_estimate_is_offline_and_pessimistic() -> None:
    assert estimate_prompt_tokens("abcdef") == 2
    assert estimate_prompt_tokens(None) == 0
    messages = [
        {"role": "user", "content": "x" * 30},
        {"role": "system", "content": [{"text": "y" * 9}]},
    ]
    assert estimate_prompt_tokens(messages) == (4 + 10) + (4 + 3)


def test_model_call_reserves_an_estimate_then_commits_the_priced_actual(ledger: Ledger) -> None:
    pricing = Pricing()
    with RunGuard(ledger, RUN, pricing=pricing) as run:
        with run.model_call("gpt-4o", prompt="p" * 300, max_tokens=1000) as call:
            assert call.estimate.input_tokens == 100
            assert call.estimate.output_tokens == 1000
            assert call.estimate.cost_usd == pricing.price("gpt-4o", call.estimate).cost_usd
            assert ledger.usage(RUN).held.requests == 1
            actual = Usage(
                input_tokens=120, cache_read_tokens=64, output_tokens=40, reasoning_tokens=10
            )
            settled = call.settle(actual)
    expected = pricing.price("gpt-4o", actual).cost_usd
    assert settled.cost_usd == expected
    assert run.report.usage.cost_usd == expected
    assert run.report.status == "completed"
    assert run.report.models == {"gpt-4o": 1}
    org = ledger.usage("org:acme")
    assert org.used.cost_usd == expected
    assert org.used.input_tokens == 120
    assert org.held == Usage()


def test_a_measured_prompt_size_stands_for_the_prompt(ledger: Ledger) -> None:
    pricing = Pricing()
    prompt = [{"role": "user", "content": "p" * 300}, {"role": "tool", "content": "q" * 30}]
    with RunGuard(ledger, RUN, pricing=pricing) as run:
        tokens = estimate_prompt_tokens(prompt)
        plan = run.plan_call("gpt-4o", prompt_tokens=tokens, max_tokens=1000)
        assert plan == run.plan_call("gpt-4o", prompt=prompt, max_tokens=1000)
        with run.model_call("gpt-4o", prompt_tokens=tokens, max_tokens=1000) as measured:
            pass
        with run.model_call("gpt-4o", prompt=prompt, max_tokens=1000) as counted:
            pass
    assert measured.estimate == counted.estimate
    assert measured.estimate.input_tokens == (4 + 100) + (4 + 10)


@pytest.mark.parametrize(
    ("prompt", "prompt_tokens"), [(None, -1), (None, True), (None, 2.5), ("both", 3)]
)
def test_a_bad_prompt_size_is_refused_and_holds_nothing(
    ledger: Ledger, prompt: str | None, prompt_tokens: object
) -> None:
    with RunGuard(ledger, RUN) as run:
        with (
            pytest.raises(InvalidInput) as caught,
            run.model_call(prompt=prompt, prompt_tokens=prompt_tokens),  # type: ignore[arg-type]
        ):
            pass
        assert caught.value.field == "prompt_tokens"
        assert ledger.usage(RUN).held == Usage()
    assert run.report.model_calls == 0


def test_a_call_that_would_cross_the_cap_is_refused_before_it_is_made(ledger: Ledger) -> None:
    ledger.set_limit("org:acme", Limit("output_tokens", 1500))
    calls_made = 0
    with pytest.raises(BudgetExceeded) as refused, RunGuard(ledger, RUN) as run:
        for _ in range(10):
            with run.model_call(max_tokens=1000) as call:
                calls_made += 1
                call.settle(Usage(output_tokens=600))
    assert calls_made == 1  # 600 used; the next call would reserve 1000 more: 1600 > 1500
    assert (refused.value.scope, refused.value.dimension) == ("org:acme", "output_tokens")
    assert run.report.status == "stopped"
    assert run.report.stopped_by is refused.value
    assert ledger.usage("org:acme").used.output_tokens == 600
    assert ledger.usage("org:acme").held == Usage()


def test_runaway_tool_loop_is_stopped_at_the_run_cap(ledger: Ledger) -> None:
    with (
        pytest.raises(BudgetExceeded) as refused,
        RunGuard(ledger, RUN, limits=[Limit("tool_calls", 25), Limit("iterations", 1000)]) as run,
    ):
        while True:
            run.iteration()
            with run.tool_call("search"):
                pass
    assert (refused.value.scope, refused.value.dimension, refused.value.used) == (
        RUN,
        "tool_calls",
        25,
    )
    assert ledger.usage(RUN).used.tool_calls == 25
    assert run.report.usage.iterations == 26


def test_two_runs_sharing_a_scope_stop_together(ledger: Ledger) -> None:
    ledger.set_limit("org:acme/team:search", Limit("requests", 5))
    stopped: list[str] = []
    for session in ("s1", "s2"):
        try:
            with RunGuard(ledger, f"org:acme/team:search/session:{session}") as run:
                for _ in range(4):
                    with run.model_call(max_tokens=10) as call:
                        call.settle(Usage(output_tokens=5))
        except BudgetExceeded as error:
            stopped.append(error.scope)
    assert stopped == ["org:acme/team:search"]
    assert ledger.usage("org:acme/team:search").used.requests == 5


def test_exceptions_release_open_holds(ledger: Ledger) -> None:
    with pytest.raises(RuntimeError), RunGuard(ledger, RUN) as run:
        with run.model_call(max_tokens=100):
            raise RuntimeError("provider error")
    assert ledger.usage(RUN).held == Usage()
    assert ledger.usage(RUN).used.requests == 0
    assert run.report.status == "failed"


def test_unsettled_successful_call_commits_its_estimate(ledger: Ledger) -> None:
    with RunGuard(ledger, RUN) as run, run.model_call(max_tokens=100, prompt="abc"):
        pass
    used = ledger.usage(RUN).used
    assert (used.requests, used.output_tokens, used.input_tokens) == (1, 100, 1)


def test_unknown_model_is_refused_before_any_hold(ledger: Ledger) -> None:
    with RunGuard(ledger, RUN, pricing=Pricing()) as run:
        with pytest.raises(UnknownModel) as error, run.model_call("no-such-model-xyz"):
            pass
        assert error.value.model == "no-such-model-xyz"
    assert ledger.usage(RUN).held == Usage()
    assert ledger.usage(RUN).used.requests == 0


def test_soft_threshold_warns_once_per_limit(ledger: Ledger) -> None:
    seen: list[BudgetWarning] = []
    with RunGuard(ledger, RUN, limits=[Limit("tool_calls", 10)], on_warning=seen.append) as run:
        for _ in range(10):
            run.tool_call()
    assert [(w.scope, w.dimension, w.fraction) for w in seen] == [(RUN, "tool_calls", 0.8)]
    assert run.report.warnings == tuple(seen)


def test_wall_time_is_charged_to_the_path(ledger: Ledger) -> None:
    with RunGuard(ledger, RUN) as run:
        run.iteration()
    assert ledger.usage("org:acme").used.wall_time_s == pytest.approx(
        run.report.duration_s, abs=1e-5
    )


def test_sync_run_deadline_interrupts_the_body_in_the_main_thread(ledger: Ledger) -> None:
    started = time.monotonic()
    with (
        pytest.raises(BudgetExceeded) as stopped,
        RunGuard(Ledger(ledger._backend), RUN, limits=[Limit("wall_time_s", 0.2)]),
    ):
        time.sleep(5)
    assert time.monotonic() - started < 2
    assert (stopped.value.dimension, stopped.value.limit) == ("wall_time_s", 0.2)


def test_sync_step_timeout_interrupts_the_step(ledger: Ledger) -> None:
    with RunGuard(Ledger(ledger._backend), RUN) as run:
        with pytest.raises(StepTimeout) as timeout, run.step("fetch", timeout_s=0.1):
            time.sleep(5)
        assert (timeout.value.step, timeout.value.timeout_s) == ("fetch", 0.1)
        run.iteration()


def test_sync_step_timeout_off_the_main_thread_is_checked_at_the_end(ledger: Ledger) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with RunGuard(Ledger(ledger._backend), RUN) as run, run.step("slow", timeout_s=0.05):
                time.sleep(0.1)
        except BaseException as error:  # noqa: BLE001 - collected for the assertion below
            errors.append(error)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert isinstance(errors[0], StepTimeout)


def test_bad_guard_arguments(ledger: Ledger) -> None:
    with pytest.raises(InvalidInput) as bad_path:
        RunGuard(ledger, "not a path")
    assert bad_path.value.field == "path"
    with pytest.raises(InvalidInput) as bad_warn:
        RunGuard(ledger, RUN, warn_at=1.5)
    assert bad_warn.value.field == "warn_at"
    with RunGuard(ledger, RUN) as run:
        with pytest.raises(InvalidInput) as bad_tokens, run.model_call(max_tokens=-5):
            pass
        assert bad_tokens.value.field == "max_tokens"
        with pytest.raises(InvalidInput) as bad_timeout, run.step("x", timeout_s=0):
            pass
        assert bad_timeout.value.field == "timeout_s"


class TestAsync:
    async def test_async_guard_admits_and_settles(self, async_ledger: AsyncLedger) -> None:
        await async_ledger.set_limit("org:acme", Limit("requests", 2))
        with pytest.raises(BudgetExceeded) as refused:
            async with AsyncRunGuard(async_ledger, RUN, pricing=Pricing()) as run:
                for _ in range(5):
                    async with run.model_call("gpt-4o-mini", prompt="hi", max_tokens=50) as call:
                        await call.settle(Usage(input_tokens=10, output_tokens=20))
        assert (refused.value.scope, refused.value.dimension) == ("org:acme", "requests")
        assert run.report.model_calls == 2
        assert (
            run.report.usage.cost_usd
            == 2 * Pricing().price("gpt-4o-mini", Usage(input_tokens=10, output_tokens=20)).cost_usd
        )
        assert (await async_ledger.usage("org:acme")).held == Usage()

    async def test_async_deadline_cancels_the_awaiting_body_and_releases_holds(
        self, async_ledger: AsyncLedger
    ) -> None:
        started = time.monotonic()
        with pytest.raises(BudgetExceeded) as stopped:
            async with AsyncRunGuard(async_ledger, RUN, limits=[Limit("wall_time_s", 0.1)]) as run:
                async with run.model_call(max_tokens=10):
                    await asyncio.sleep(5)
        assert time.monotonic() - started < 2
        assert stopped.value.dimension == "wall_time_s"
        assert run.report.status == "stopped"
        assert (await async_ledger.usage(RUN)).held == Usage()

    async def test_async_step_timeout(self, async_ledger: AsyncLedger) -> None:
        async with AsyncRunGuard(async_ledger, RUN) as run:
            with pytest.raises(StepTimeout):
                async with run.step("tool", timeout_s=0.05):
                    await asyncio.sleep(5)
            await run.tool_call("after")
        assert (await async_ledger.usage(RUN)).used.tool_calls == 1

    async def test_cancellation_releases_holds(self, async_ledger: AsyncLedger) -> None:
        entered = asyncio.Event()

        async def agent() -> None:
            async with AsyncRunGuard(async_ledger, RUN) as run, run.model_call(max_tokens=10):
                entered.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(agent())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        usage = await async_ledger.usage(RUN)
        assert usage.held == Usage()
        assert usage.used.requests == 0


def test_cost_is_decimal_never_float(ledger: Ledger) -> None:
    with (
        RunGuard(ledger, RUN, pricing=Pricing()) as run,
        run.model_call("gpt-4o", max_tokens=1) as call,
    ):
        call.settle(Usage(input_tokens=1, output_tokens=1))
    assert isinstance(run.report.cost_usd, Decimal)
