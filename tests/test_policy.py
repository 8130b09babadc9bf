"""The degradation ladder and the exhaustion modes of a guarded run, over every backend."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from budgeteer import (
    AsyncLedger,
    BudgetExceeded,
    BudgetWarning,
    Degrade,
    Grant,
    InvalidInput,
    Ledger,
    Limit,
    Policy,
    Usage,
)
from budgeteer.guard import AsyncRunGuard, RunGuard
from budgeteer.pricing import Price, Pricing

ORG = "org:acme"
RUN = "org:acme/session:s1"


def call_of(cost: str) -> Usage:
    """A model call whose estimate and actual both cost ``cost`` dollars."""
    return Usage(input_tokens=100, output_tokens=10, requests=1, cost_usd=Decimal(cost))


def spend(run: RunGuard, cost: str, model: str = "gpt-4o") -> bool:
    """One guarded call; returns whether it was the wrap-up call."""
    with run.model_call(model, estimate=call_of(cost)) as call:
        call.settle(call_of(cost))
    return call.final


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Degrade.warn(at=0), "degrade.at"),
        (lambda: Degrade.warn(at=1.5), "degrade.at"),
        (lambda: Degrade.warn(at=float("nan")), "degrade.at"),
        (lambda: Degrade("downgrade", 0.5), "degrade.to"),
        (lambda: Degrade("shout", 0.5), "degrade.action"),  # type: ignore[arg-type]
        (lambda: Degrade.stop_tools(dimension="dollars"), "degrade.dimension"),
        (lambda: Policy(on_exhausted="summary"), "policy.summary_reserve"),
        (lambda: Policy(on_exhausted="escalate"), "policy.escalate"),
        (lambda: Policy(summary_reserve=Usage(output_tokens=5)), "policy.summary_reserve"),
        (lambda: Policy(on_exhausted="pray"), "policy.on_exhausted"),  # type: ignore[arg-type]
        (lambda: Policy(ladder=["warn"]), "policy.ladder"),  # type: ignore[list-item]
        (lambda: Policy(max_grants=-1), "policy.max_grants"),
    ],
)
def test_malformed_policies_name_the_field(build: object, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        build()  # type: ignore[operator]
    assert caught.value.field == field


def test_a_guard_refuses_something_that_is_not_a_policy(tmp_path: Path) -> None:
    with Ledger(f"sqlite:///{tmp_path}/b.db") as ledger, pytest.raises(InvalidInput) as caught:
        RunGuard(ledger, RUN, policy={"on_exhausted": "raise"})  # type: ignore[arg-type]
    assert caught.value.field == "policy"


# -- the ladder ---------------------------------------------------------------------------------


def test_rungs_fire_at_their_thresholds_and_latch(ledger: Ledger) -> None:
    ledger.set_limit(ORG, Limit("cost_usd", "1.00"))
    warnings: list[BudgetWarning] = []
    policy = Policy(
        ladder=(
            Degrade.warn(at=0.5, dimension="cost_usd"),
            Degrade.downgrade(to="gpt-4o-mini", at=0.8, scope=ORG),
            Degrade.stop_tools(at=0.85),
        )
    )
    with RunGuard(ledger, RUN, policy=policy, on_warning=warnings.append, warn_at=1.0) as run:
        assert run.plan_call("gpt-4o").model == "gpt-4o"
        spend(run, "0.30")  # seen: 0.30 used+held
        assert run.report.degradations == ()
        spend(run, "0.30")  # seen: 0.60 -> warn
        assert [r.action for r in run.report.degradations] == ["warn"]
        assert [w.fraction for w in warnings] == [pytest.approx(0.6)]
        plan = run.plan_call("gpt-4o")
        assert (plan.model, plan.tools_allowed) == ("gpt-4o", True)
        run.tool_call("search")
        spend(run, "0.30")  # seen: 0.90 -> downgrade and stop tools
        plan = run.plan_call("gpt-4o", max_tokens=50)
        assert plan.model == "gpt-4o-mini"
        assert plan.tools_allowed is False
        assert plan.subagents_allowed is True
        assert [r.action for r in plan.rungs] == ["warn", "downgrade", "stop_tools"]
        with pytest.raises(BudgetExceeded) as caught:
            run.tool_call("search")
        assert (caught.value.dimension, caught.value.requested) == ("tool_calls", 1)
        run.hop()  # sub-agents are still allowed
    assert run.report.status == "completed"
    assert run.report.usage.tool_calls == 1
    assert ledger.usage(ORG).used.tool_calls == 1  # the refused tool call spent nothing


def test_a_shared_scope_already_past_a_threshold_degrades_from_the_first_call(
    tmp_path: Path,
) -> None:
    with Ledger(f"sqlite:///{tmp_path}/b.db") as ledger:
        ledger.set_limit(ORG, Limit("cost_usd", "10"))
        ledger.charge("org:acme/session:earlier", call_of("9"))
        policy = Policy(ladder=(Degrade.downgrade(to="gpt-4o-mini", at=0.8),))
        with RunGuard(ledger, RUN, policy=policy) as run:
            assert run.plan_call("gpt-4o").model == "gpt-4o-mini"


def test_max_tokens_is_clamped_to_what_the_tightest_limit_affords(tmp_path: Path) -> None:
    pricing = Pricing()
    prompt = "p" * 300  # 100 tokens by the offline estimate
    with Ledger(f"sqlite:///{tmp_path}/b.db") as ledger:
        ledger.set_limit(ORG, Limit("total_tokens", 1000))
        with RunGuard(ledger, RUN, policy=Policy(), pricing=pricing) as run:
            assert run.plan_call("gpt-4o", prompt=prompt, max_tokens=2000).max_tokens == 900
            assert run.plan_call("gpt-4o", prompt=prompt, max_tokens=500).max_tokens == 500
            with run.model_call("gpt-4o", prompt=prompt, max_tokens=900) as call:
                call.settle(Usage(input_tokens=100, output_tokens=900))
        # A cost limit: what is left after the prompt, at the model's output price.
        ledger.set_limit("org:beta", Limit("cost_usd", "0.01"))
        with RunGuard(ledger, "org:beta/session:s2", policy=Policy(), pricing=pricing) as run:
            plan = run.plan_call("gpt-4o", prompt=prompt)
        input_cost = pricing.price("gpt-4o", Usage(input_tokens=100)).cost_usd
        per_million = pricing.price("gpt-4o", Usage(output_tokens=1_000_000)).cost_usd
        assert input_cost is not None
        assert per_million is not None
        expected = int((Decimal("0.01") - input_cost) * 1_000_000 / per_million)
        assert plan.max_tokens == expected
        # Without a policy nothing is clamped.
        with RunGuard(ledger, "org:beta/session:s3", pricing=pricing) as run:
            assert run.plan_call("gpt-4o", prompt=prompt, max_tokens=4000).max_tokens == 4000


def test_a_pricing_subclass_prices_the_estimate_and_the_clamp(ledger: Ledger) -> None:
    """The guard's shortcuts still go through an overridden ``price`` (as LiteLLMPricing's)."""

    class Prefixed(Pricing):
        __slots__ = ()

        def price(self, model: str, usage: Usage, **kwargs: object) -> Price:  # type: ignore[override]
            return super().price(model.removeprefix("acme/"), usage, **kwargs)  # type: ignore[arg-type]

    plain = Pricing()
    prompt = "p" * 300  # 100 tokens by the offline estimate
    ledger.set_limit(ORG, Limit("cost_usd", "0.01"))
    with RunGuard(ledger, RUN, policy=Policy(), pricing=Prefixed()) as run:
        plan = run.plan_call("acme/gpt-4o", prompt=prompt)
        with run.model_call("acme/gpt-4o", prompt=prompt, max_tokens=plan.max_tokens) as call:
            estimate = call.estimate
            call.settle(Usage(input_tokens=100, output_tokens=10))
    input_cost = plain.price("gpt-4o", Usage(input_tokens=100)).cost_usd
    per_million = plain.price("gpt-4o", Usage(output_tokens=1_000_000)).cost_usd
    assert input_cost is not None
    assert per_million is not None
    assert plan.max_tokens == int((Decimal("0.01") - input_cost) * 1_000_000 / per_million)
    expected = Usage(input_tokens=100, output_tokens=plan.max_tokens, requests=1)
    assert estimate == expected.with_cost(plain.price("gpt-4o", expected).cost_usd)


# -- exhaustion ---------------------------------------------------------------------------------


def test_raise_mode_is_a_hard_halt(ledger: Ledger) -> None:
    ledger.set_limit(ORG, Limit("cost_usd", "1"))
    with pytest.raises(BudgetExceeded) as caught:
        with RunGuard(ledger, RUN, policy=Policy()) as run:
            for _ in range(10):
                spend(run, "0.4")
    assert caught.value.dimension == "cost_usd"
    assert run.report.status == "stopped"
    assert run.plan_call("gpt-4o").exhausted is True
    assert ledger.usage(ORG).used.cost_usd == Decimal("0.8")


def test_summary_mode_keeps_a_reserve_for_one_wrap_up_call(ledger: Ledger) -> None:
    ledger.set_limit(ORG, Limit("cost_usd", "1"))
    reserve = Usage(input_tokens=2000, output_tokens=200, requests=1, cost_usd=Decimal("0.15"))
    policy = Policy(on_exhausted="summary", summary_reserve=reserve)
    finals: list[bool] = []
    with RunGuard(ledger, RUN, policy=policy) as run:
        # The reserve is held from the start: only 0.85 is left for the work itself.
        assert ledger.usage(ORG).held.cost_usd == Decimal("0.15")
        while not run.plan_call("gpt-4o").exhausted:
            finals.append(spend(run, "0.3"))
        assert run.plan_call("gpt-4o").exhausted
        with pytest.raises(BudgetExceeded):
            spend(run, "0.01")
    # Two calls fit in 0.85; the third was refused and ran as the wrap-up under the reserve.
    assert finals == [False, False, True]
    assert run.report.wrapped_up is True
    assert run.report.status == "stopped"
    assert run.report.stopped_by is not None
    used = ledger.usage(ORG)
    assert used.used.cost_usd == Decimal("0.9")  # 0.3 + 0.3 + the wrap-up's 0.3 actual
    assert used.held == Usage()


def test_summary_plan_predicts_the_final_call_and_sizes_it_to_the_reserve(
    tmp_path: Path,
) -> None:
    reserve = Usage(input_tokens=1000, output_tokens=150, requests=1, cost_usd=Decimal("0.1"))
    policy = Policy(on_exhausted="summary", summary_reserve=reserve, summary_model="gpt-4o-mini")
    with Ledger(f"sqlite:///{tmp_path}/b.db") as ledger:
        ledger.set_limit(ORG, Limit("output_tokens", 1000))
        with RunGuard(ledger, RUN, policy=policy) as run:
            plan = run.plan_call("gpt-4o", max_tokens=300)
            assert (plan.final, plan.max_tokens) == (False, 300)
            with run.model_call("gpt-4o", max_tokens=300) as call:
                call.settle(Usage(input_tokens=10, output_tokens=840))
            spend(run, "0.01")  # 10 output tokens, admitted: 840 + 10 + the reserve's 150
            plan = run.plan_call("gpt-4o", max_tokens=300)
            assert plan.final is True
            assert plan.model == "gpt-4o-mini"
            assert plan.max_tokens == 150
            assert plan.tools_allowed is False
            with run.model_call(plan.model, max_tokens=plan.max_tokens) as call:
                assert call.final is True
                call.settle(Usage(input_tokens=500, output_tokens=140))
        assert run.report.wrapped_up is True
        assert ledger.usage(ORG).used.output_tokens == 840 + 10 + 140


def test_a_run_that_cannot_afford_its_reserve_is_refused_at_the_start(tmp_path: Path) -> None:
    policy = Policy(on_exhausted="summary", summary_reserve=Usage(output_tokens=500))
    with Ledger(f"sqlite:///{tmp_path}/b.db") as ledger:
        ledger.set_limit(ORG, Limit("output_tokens", 100))
        with pytest.raises(BudgetExceeded) as caught, RunGuard(ledger, RUN, policy=policy):
            pass
        assert caught.value.requested == 500


def test_escalation_grants_more_budget_and_records_it(ledger: Ledger) -> None:
    ledger.set_limit(ORG, Limit("cost_usd", "1"))
    asked: list[BudgetExceeded] = []

    def escalate(error: BudgetExceeded) -> Grant | None:
        asked.append(error)
        return Grant(Decimal("0.5"), reason="approved by lead") if len(asked) == 1 else None

    policy = Policy(on_exhausted="escalate", escalate=escalate)
    with pytest.raises(BudgetExceeded), RunGuard(ledger, RUN, policy=policy) as run:
        for _ in range(10):
            spend(run, "0.4")
    assert len(asked) == 2
    (grant,) = run.report.grants
    assert (grant.scope, grant.dimension, grant.amount) == (ORG, "cost_usd", Decimal("0.5"))
    assert grant.new_limit == Decimal("1.5")
    assert grant.reason == "approved by lead"
    assert ledger.limits(ORG) == (Limit("cost_usd", "1.5"),)
    assert ledger.usage(ORG).used.cost_usd == Decimal("1.2")  # 3 calls of 0.4 within 1.5
    assert run.report.status == "stopped"


def test_an_escalation_that_answers_nonsense_is_an_input_error(tmp_path: Path) -> None:
    policy = Policy(on_exhausted="escalate", escalate=lambda error: "yes")  # type: ignore[arg-type,return-value]
    with Ledger(f"sqlite:///{tmp_path}/b.db") as ledger:
        ledger.set_limit(ORG, Limit("requests", 1))
        with pytest.raises(InvalidInput) as caught, RunGuard(ledger, RUN, policy=policy) as run:
            spend(run, "0.1")
            spend(run, "0.1")
        assert caught.value.field == "escalate()"
        assert ledger.limits(ORG) == (Limit("requests", 1),)


# -- the async twin ------------------------------------------------------------------------------


async def test_async_guard_summary_and_awaitable_escalation(async_ledger: AsyncLedger) -> None:
    await async_ledger.set_limit(ORG, Limit("cost_usd", "1"))

    async def escalate(error: BudgetExceeded) -> Grant | None:
        return Grant(Decimal("0.2"), reason="async ok") if error.dimension == "cost_usd" else None

    policy = Policy(on_exhausted="escalate", escalate=escalate, max_grants=1)
    with pytest.raises(BudgetExceeded):
        async with AsyncRunGuard(async_ledger, RUN, policy=policy) as run:
            for _ in range(10):
                async with run.model_call("gpt-4o", estimate=call_of("0.4")) as call:
                    await call.settle(call_of("0.4"))
    assert [g.new_limit for g in run.report.grants] == [Decimal("1.2")]
    assert (await async_ledger.usage(ORG)).used.cost_usd == Decimal("1.2")

    reserve = Usage(output_tokens=10, requests=1, cost_usd=Decimal("0.05"))
    summary = Policy(on_exhausted="summary", summary_reserve=reserve)
    await async_ledger.set_limit("org:beta", Limit("cost_usd", "0.5"))
    finals = []
    async with AsyncRunGuard(async_ledger, "org:beta/session:s2", policy=summary) as run:
        while not run.plan_call().exhausted:
            async with run.model_call("gpt-4o", estimate=call_of("0.2")) as call:
                await call.settle(call_of("0.2"))
            finals.append(call.final)
    assert finals == [False, False, True]
    assert run.report.wrapped_up is True
    await async_ledger.close()
