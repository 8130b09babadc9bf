"""Pydantic AI: the real agent loop, driven offline through ``FunctionModel``.

Every test runs on a memory ledger and on a SQLite file. Model functions return
``ModelResponse``s with real ``RequestUsage`` blocks; expected costs are computed independently
with the ``genai_prices`` package.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.capabilities import ModelFallback
from pydantic_ai.exceptions import ModelHTTPError, UsageLimitExceeded
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.fallback import FallbackModel
from pydantic_ai.models.function import AgentInfo, DeltaToolCalls, FunctionModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.usage import RequestUsage, UsageLimits

from budgeteer import (
    AsyncLedger,
    AsyncRunGuard,
    BudgetExceeded,
    Degrade,
    InvalidInput,
    Limit,
    Policy,
    Pricing,
    Usage,
)
from budgeteer.guard import estimate_prompt_tokens
from budgeteer.integrations.pydantic_ai import (
    WRAP_UP_INSTRUCTION,
    BudgetCapability,
    budget_exhausted_message,
)
from budgeteer.testing import FakeClock

ORG = "org:acme"
RUN = "org:acme/run:{run_id}"

ModelFunction = Callable[[list[ModelMessage], AgentInfo], Any]


@pytest.fixture(params=["memory", "sqlite"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/b.db"


@pytest.fixture
def ledger(ledger_url: str) -> AsyncLedger:
    return AsyncLedger(ledger_url, clock=FakeClock())


def usage(
    input_tokens: int = 1000,
    output_tokens: int = 100,
    *,
    cache_read: int = 0,
    cache_write: int = 0,
    cache_write_1h: int = 0,
    reasoning: int = 0,
) -> RequestUsage:
    return RequestUsage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=cache_write_1h,
        output_reasoning_tokens=reasoning,
    )


def genai_cost(model: str, provider: str, reported: RequestUsage) -> Decimal:
    """The price of one reported usage, straight from genai-prices (reasoning is inside output)."""
    calc = calc_price(
        GenaiUsage(
            input_tokens=reported.input_tokens,
            cache_read_tokens=reported.cache_read_tokens,
            cache_write_tokens=reported.cache_write_tokens,
            cache_write_1h_tokens=reported.cache_write_1h_tokens,
            output_tokens=reported.output_tokens,
        ),
        model_ref=model,
        provider_id=provider,
    )
    return calc.total_price


def looping_model(
    name: str, calls: list[AgentInfo], reported: RequestUsage | None = None
) -> FunctionModel:
    """A model that asks for the ``search`` tool forever (a runaway loop)."""

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append(info)
        await asyncio.sleep(0)  # let concurrent runs interleave
        return ModelResponse(
            parts=[ToolCallPart("search", {"query": f"q{len(calls)}"})],
            usage=reported or usage(),
        )

    return FunctionModel(respond, model_name=name)


def agent_with(model: FunctionModel, budget: BudgetCapability, ran: list[str]) -> Agent[None, str]:
    agent = Agent(model, capabilities=[budget])

    @agent.tool_plain
    async def search(query: str) -> str:
        ran.append(query)
        return f"results for {query}"

    del search
    return agent


async def spent(ledger: AsyncLedger, scope: str) -> Usage:
    return (await ledger.usage(scope)).used


# -- caps ------------------------------------------------------------------------------------


def test_runaway_tool_loop_stops_before_the_call_that_crosses_the_cap(ledger: AsyncLedger) -> None:
    calls: list[AgentInfo] = []
    ran: list[str] = []
    budget = BudgetCapability(
        ledger=ledger, path=RUN, limits=[Limit("tool_calls", 3)], pricing=Pricing()
    )
    agent = agent_with(looping_model("gpt-4o", calls), budget, ran)

    with pytest.raises(BudgetExceeded) as caught:
        agent.run_sync("find everything")  # run_sync: the guard opens inside its event loop

    error = caught.value
    assert (error.dimension, error.limit, error.used, error.requested) == ("tool_calls", 3, 3, 1)
    assert error.scope.startswith("org:acme/run:")
    assert ran == ["q1", "q2", "q3"]  # the fourth call never ran
    assert len(calls) == 4  # the fourth response asked for it; no fifth request was sent
    report = budget.last_report
    assert report is not None
    assert report.status == "stopped"
    assert report.stopped_by is error
    assert report.usage.tool_calls == 3
    assert report.usage.requests == 4
    used = asyncio.run(spent(ledger, ORG))
    assert (used.tool_calls, used.requests) == (3, 4)


async def test_parallel_tool_calls_admit_only_what_fits_and_let_the_admitted_finish(
    ledger: AsyncLedger,
) -> None:
    ran: list[str] = []

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(
            parts=[ToolCallPart("search", {"query": f"p{i}"}) for i in range(3)], usage=usage()
        )

    budget = BudgetCapability(
        ledger=ledger, path=RUN, limits=[Limit("tool_calls", 2)], pricing=Pricing()
    )
    agent = agent_with(FunctionModel(respond, model_name="gpt-4o"), budget, ran)

    with pytest.raises(BudgetExceeded) as caught:
        await agent.run("fan out")

    assert caught.value.dimension == "tool_calls"
    assert len(ran) == 2  # two admitted calls ran to completion; the third was never started
    assert (await spent(ledger, ORG)).tool_calls == 2


async def test_request_cap_refuses_the_request_before_it_is_sent(ledger: AsyncLedger) -> None:
    calls: list[AgentInfo] = []
    budget = BudgetCapability(
        ledger=ledger, path=RUN, limits=[Limit("requests", 2)], pricing=Pricing()
    )
    agent = agent_with(looping_model("gpt-4o", calls), budget, [])

    with pytest.raises(BudgetExceeded) as caught:
        await agent.run("loop")

    assert (caught.value.dimension, caught.value.limit) == ("requests", 2)
    assert len(calls) == 2
    used = await spent(ledger, ORG)
    assert used.requests == 2
    assert (await ledger.usage(ORG)).held.requests == 0  # no hold left behind


async def test_two_runs_sharing_one_scope_stop_together(ledger: AsyncLedger) -> None:
    await ledger.set_limit(ORG, Limit("tool_calls", 5))
    ran: list[str] = []
    calls_a: list[AgentInfo] = []
    calls_b: list[AgentInfo] = []
    budget = BudgetCapability(ledger=ledger, path=RUN, pricing=Pricing())
    agent_a = agent_with(looping_model("gpt-4o", calls_a), budget, ran)
    agent_b = agent_with(looping_model("gpt-4o", calls_b), budget, ran)

    outcomes = await asyncio.gather(agent_a.run("a"), agent_b.run("b"), return_exceptions=True)

    assert all(isinstance(outcome, BudgetExceeded) for outcome in outcomes)
    for outcome in outcomes:
        assert isinstance(outcome, BudgetExceeded)
        assert (outcome.scope, outcome.dimension, outcome.limit) == (ORG, "tool_calls", 5)
    assert len(ran) == 5
    assert calls_a  # both ran before the shared cap stopped both
    assert calls_b
    assert (await spent(ledger, ORG)).tool_calls == 5
    assert len(budget.reports) == 2
    assert {report.status for report in budget.reports} == {"stopped"}
    assert sum(report.usage.tool_calls for report in budget.reports) == 5


async def test_an_open_guard_is_shared_by_the_runs_it_covers(ledger: AsyncLedger) -> None:
    ran: list[str] = []
    calls: list[AgentInfo] = []
    async with AsyncRunGuard(
        ledger, "org:acme/session:s1", limits=[Limit("tool_calls", 3)], pricing=Pricing()
    ) as guard:
        budget = BudgetCapability(guard)
        agent = agent_with(looping_model("gpt-4o", calls), budget, ran)
        for prompt in ("first", "second"):
            with pytest.raises(BudgetExceeded):
                await agent.run(prompt)
        assert budget.reports == []  # the caller owns this guard and its report
    assert ran == ["q1", "q2", "q3"]
    assert guard.report.status == "stopped"
    assert guard.report.usage.tool_calls == 3


# -- prices ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "provider", "reports"),
    [
        pytest.param(
            "claude-sonnet-4",
            "anthropic",
            [
                usage(12_000, 400, cache_write=10_000),
                usage(12_500, 350, cache_read=10_000, cache_write=500),
            ],
            id="anthropic-cache-read-and-write",
        ),
        pytest.param(
            "claude-sonnet-4",
            "anthropic",
            [
                usage(12_000, 400, cache_write=10_000, cache_write_1h=4000),
                usage(12_500, 350, cache_read=10_000, cache_write=500, cache_write_1h=500),
            ],
            id="anthropic-one-hour-cache-writes",
        ),
        pytest.param(
            "gpt-4o",
            "openai",
            [usage(3000, 200), usage(3500, 250, cache_read=2048)],
            id="openai-cached-input",
        ),
        pytest.param(
            "o3",
            "openai",
            [usage(800, 2400, reasoning=2000), usage(1900, 1200, cache_read=1024, reasoning=900)],
            id="openai-reasoning",
        ),
    ],
)
async def test_cost_charged_is_the_genai_prices_price_of_the_reported_usage(
    ledger: AsyncLedger, model: str, provider: str, reports: list[RequestUsage]
) -> None:
    script = iter(
        [
            ModelResponse(parts=[ToolCallPart("search", {"query": "x"})], usage=reports[0]),
            ModelResponse(parts=[TextPart("done")], usage=reports[1]),
        ]
    )

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return next(script)

    budget = BudgetCapability(ledger=ledger, path=RUN, pricing=Pricing())
    agent = agent_with(FunctionModel(respond, model_name=model), budget, [])

    result = await agent.run("price me")

    assert result.output == "done"
    expected = sum((genai_cost(model, provider, r) for r in reports), Decimal(0))
    report = budget.last_report
    assert report is not None
    assert report.status == "completed"
    assert report.cost_usd == expected
    assert (await spent(ledger, ORG)).cost_usd == expected
    # Each token once: cached parts inside input, reasoning inside output, never added on top.
    assert report.usage.input_tokens == sum(r.input_tokens for r in reports)
    assert report.usage.cache_read_tokens == sum(r.cache_read_tokens for r in reports)
    assert report.usage.cache_write_tokens == sum(r.cache_write_tokens for r in reports)
    assert report.usage.output_tokens == sum(r.output_tokens for r in reports)
    assert report.usage.reasoning_tokens == sum(r.output_reasoning_tokens for r in reports)
    assert report.models == {model: 2}


def _sent_texts(messages: list[ModelMessage], info: AgentInfo) -> list[str]:
    """What a request sends, one text per chat message: tool definitions, instructions, then
    each message's parts (tool calls and returns as the provider sees them)."""
    parameters = info.model_request_parameters
    texts = [
        f"{tool.name} {tool.description or ''} {json.dumps(tool.parameters_json_schema)}"
        for tool in (*parameters.function_tools, *parameters.output_tools)
    ]
    texts += [part.content for part in parameters.instruction_parts or ()]
    for message in messages:
        parts: list[str] = []
        for part in message.parts:
            if isinstance(part, ToolCallPart):
                parts.append(f"{part.tool_name} {part.args_as_json_str()}")
            elif isinstance(part, ToolReturnPart):
                parts.append(part.model_response_str())
            else:
                assert isinstance(part, UserPromptPart | TextPart)
                assert isinstance(part.content, str)
                parts.append(part.content)
        text = " ".join(parts)
        if isinstance(message, ModelRequest) and message.instructions:
            text = f"{message.instructions} {text}"
        texts.append(text)
    return texts


async def test_each_request_holds_the_guards_estimate_of_the_whole_conversation(
    ledger: AsyncLedger,
) -> None:
    # The capability measures each message once per run and gives the guard the sum: at every
    # request it must be what the guard counts from everything the request sends.
    checks: list[tuple[int, int]] = []

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        held = (await ledger.usage(ORG)).held.input_tokens
        checks.append((held, estimate_prompt_tokens(_sent_texts(messages, info))))
        part = TextPart("done") if len(checks) == 4 else ToolCallPart("search", {"query": "x" * 90})
        return ModelResponse(parts=[part], usage=usage())

    budget = BudgetCapability(ledger=ledger, path=RUN, pricing=Pricing())
    agent = Agent(
        FunctionModel(respond, model_name="gpt-4o"),
        capabilities=[budget],
        instructions="Be brief.",
    )

    @agent.tool_plain
    async def search(query: str) -> str:
        """Search the web."""
        return query * 3

    del search
    await agent.run("find it " * 40)
    assert len(checks) == 4
    for held, expected in checks:
        assert held == expected


async def test_a_response_without_usage_is_charged_its_estimate_not_zero(
    ledger: AsyncLedger,
) -> None:
    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart("ok")], usage=RequestUsage(unmeasured_requests=1))

    budget = BudgetCapability(ledger=ledger, path=RUN, pricing=Pricing())
    agent = Agent(FunctionModel(respond, model_name="gpt-4o"), capabilities=[budget])

    await agent.run("hi", model_settings=ModelSettings(max_tokens=50))

    used = await spent(ledger, ORG)
    assert used.output_tokens == 50  # the reserved max_tokens, committed as the estimate
    assert used.cost_usd is not None
    assert used.cost_usd > 0


@pytest.mark.parametrize("style", ["ModelFallback capability", "FallbackModel"])
async def test_each_fallback_attempt_is_admitted_and_only_the_answer_is_charged(
    ledger: AsyncLedger, style: str
) -> None:
    tried: list[str] = []

    async def down(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        tried.append("gpt-4o")
        raise ModelHTTPError(503, "gpt-4o", "unavailable")

    reported = usage(800, 60)

    async def up(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        tried.append("gpt-4o-mini")
        return ModelResponse(parts=[TextPart("ok")], usage=reported)

    primary = FunctionModel(down, model_name="gpt-4o")
    backup = FunctionModel(up, model_name="gpt-4o-mini")
    budget = BudgetCapability(ledger=ledger, path=RUN, pricing=Pricing())
    if style == "FallbackModel":
        agent = Agent(FallbackModel(primary, backup), capabilities=[budget])
    else:
        agent = Agent(primary, capabilities=[ModelFallback(backup), budget])

    result = await agent.run("hello")

    assert result.output == "ok"
    assert tried == ["gpt-4o", "gpt-4o-mini"]
    report = budget.last_report
    assert report is not None
    assert report.models == {"gpt-4o-mini": 1}
    assert report.cost_usd == genai_cost("gpt-4o-mini", "openai", reported)
    scope = await ledger.usage(ORG)
    assert scope.used.requests == 1  # the failed attempt's hold was released
    assert scope.held.requests == 0


# -- beside UsageLimits ------------------------------------------------------------------------


async def test_tighter_usage_limits_stop_the_run_with_their_own_error(ledger: AsyncLedger) -> None:
    ran: list[str] = []
    budget = BudgetCapability(
        ledger=ledger, path=RUN, limits=[Limit("tool_calls", 10)], pricing=Pricing()
    )
    agent = agent_with(looping_model("gpt-4o", []), budget, ran)

    with pytest.raises(UsageLimitExceeded):
        await agent.run("loop", usage_limits=UsageLimits(tool_calls_limit=2))

    assert len(ran) == 2
    report = budget.last_report
    assert report is not None
    assert report.status == "failed"  # not stopped by a budget
    assert report.stopped_by is None
    scope = await ledger.usage(ORG)
    assert scope.used.tool_calls == 2
    assert scope.held.requests == 0  # holds released when Pydantic AI ended the run


async def test_tighter_budget_stops_the_run_beside_active_usage_limits(
    ledger: AsyncLedger,
) -> None:
    ran: list[str] = []
    calls: list[AgentInfo] = []
    budget = BudgetCapability(
        ledger=ledger, path=RUN, limits=[Limit("tool_calls", 2)], pricing=Pricing()
    )
    agent = agent_with(looping_model("gpt-4o", calls), budget, ran)

    with pytest.raises(BudgetExceeded) as caught:
        await agent.run("loop", usage_limits=UsageLimits(request_limit=10, tool_calls_limit=5))

    assert caught.value.dimension == "tool_calls"
    assert len(ran) == 2
    assert len(calls) == 3


async def test_request_limit_of_usage_limits_applies_while_the_budget_is_loose(
    ledger: AsyncLedger,
) -> None:
    calls: list[AgentInfo] = []
    budget = BudgetCapability(
        ledger=ledger, path=RUN, limits=[Limit("cost_usd", "5")], pricing=Pricing()
    )
    agent = agent_with(looping_model("gpt-4o", calls), budget, [])

    with pytest.raises(UsageLimitExceeded):
        await agent.run("loop", usage_limits=UsageLimits(request_limit=3))

    assert len(calls) == 3
    assert (await spent(ledger, ORG)).requests == 3


# -- degradation and exhaustion ---------------------------------------------------------------


async def test_downgrade_at_the_threshold(ledger: AsyncLedger) -> None:
    primary: list[AgentInfo] = []
    cheaper: list[AgentInfo] = []
    reported = usage(1000, 100)

    async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        cheaper.append(info)
        return ModelResponse(parts=[TextPart("cheap answer")], usage=reported)

    mini = FunctionModel(answer, model_name="gpt-4o-mini")
    budget = BudgetCapability(
        ledger=ledger,
        path=RUN,
        limits=[Limit("requests", 6)],
        pricing=Pricing(),
        policy=Policy(ladder=(Degrade.downgrade(to="gpt-4o-mini", at=0.5, dimension="requests"),)),
        models={"gpt-4o-mini": mini},
    )
    agent = agent_with(looping_model("gpt-4o", primary, reported), budget, [])

    result = await agent.run("work", model_settings=ModelSettings(max_tokens=100))

    # The third request's admission brings requests to 3 of 6 (50%): the rung fires there and
    # every later request goes to the cheaper model.
    assert len(primary) == 3
    assert len(cheaper) == 1
    assert result.output == "cheap answer"
    report = budget.last_report
    assert report is not None
    assert report.models == {"gpt-4o": 3, "gpt-4o-mini": 1}
    assert [rung.action for rung in report.degradations] == ["downgrade"]
    expected = 3 * genai_cost("gpt-4o", "openai", reported) + genai_cost(
        "gpt-4o-mini", "openai", reported
    )
    assert report.cost_usd == expected
    assert (await spent(ledger, ORG)).cost_usd == expected


async def test_downgrade_on_cost_uses_what_the_last_admission_saw(ledger: AsyncLedger) -> None:
    """The plan reflects the last admission plus the run's own commits since, so a cost rung
    fires as soon as the run's spend passes the threshold."""
    primary: list[AgentInfo] = []
    cheaper: list[AgentInfo] = []
    reported = usage(1000, 100)  # gpt-4o: $0.0025 in + $0.001 out = $0.0035 per call

    async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        cheaper.append(info)
        return ModelResponse(parts=[TextPart("cheap answer")], usage=reported)

    budget = BudgetCapability(
        ledger=ledger,
        path=RUN,
        limits=[Limit("cost_usd", "0.02")],
        pricing=Pricing(),
        policy=Policy(ladder=(Degrade.downgrade(to="gpt-4o-mini", at=0.5, dimension="cost_usd"),)),
        models={"gpt-4o-mini": FunctionModel(answer, model_name="gpt-4o-mini")},
    )
    agent = agent_with(looping_model("gpt-4o", primary, reported), budget, [])

    await agent.run("work", model_settings=ModelSettings(max_tokens=100))

    # Each commit brings the guard's view up to date: after the third call $0.0105 of $0.02 is
    # spent (52.5%), so the fourth call is planned on the cheaper model.
    assert (len(primary), len(cheaper)) == (3, 1)
    report = budget.last_report
    assert report is not None
    assert report.models == {"gpt-4o": 3, "gpt-4o-mini": 1}


async def test_max_tokens_is_clamped_to_what_the_budget_still_affords(
    ledger: AsyncLedger,
) -> None:
    calls: list[AgentInfo] = []
    budget = BudgetCapability(
        ledger=ledger,
        path=RUN,
        limits=[Limit("output_tokens", 150)],
        pricing=Pricing(),
        policy=Policy(clamp_max_tokens=True),
    )
    agent = agent_with(looping_model("gpt-4o", calls, usage(500, 100)), budget, [])

    with pytest.raises(BudgetExceeded) as caught:
        await agent.run("write", model_settings=ModelSettings(max_tokens=100))

    seen = [(info.model_settings or {}).get("max_tokens") for info in calls]
    assert seen[:2] == [100, 50]  # 150 - 100 used leaves 50
    assert caught.value.dimension == "output_tokens"


async def test_stop_tools_rung_hides_tools_and_the_run_goes_on(ledger: AsyncLedger) -> None:
    calls: list[AgentInfo] = []
    ran: list[str] = []

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append(info)
        if info.function_tools:
            return ModelResponse(parts=[ToolCallPart("search", {"query": "q"})], usage=usage())
        return ModelResponse(parts=[TextPart("answered without tools")], usage=usage())

    budget = BudgetCapability(
        ledger=ledger,
        path=RUN,
        limits=[Limit("tool_calls", 4)],
        pricing=Pricing(),
        policy=Policy(ladder=(Degrade.stop_tools(at=0.5, dimension="tool_calls"),)),
    )
    agent = agent_with(FunctionModel(respond, model_name="gpt-4o"), budget, ran)

    result = await agent.run("go")

    assert result.output == "answered without tools"
    assert len(ran) == 2  # 2 of 4 is 50%: tools stop there
    assert [bool(info.function_tools) for info in calls] == [True, True, False]
    report = budget.last_report
    assert report is not None
    assert report.status == "completed"


async def test_graceful_end_output_says_the_budget_ran_out(ledger: AsyncLedger) -> None:
    calls: list[AgentInfo] = []
    ran: list[str] = []
    budget = BudgetCapability(
        ledger=ledger,
        path=RUN,
        limits=[Limit("tool_calls", 2)],
        pricing=Pricing(),
        graceful_end=True,
    )
    agent = agent_with(looping_model("gpt-4o", calls), budget, ran)

    result = await agent.run("loop")

    report = budget.last_report
    assert report is not None
    assert report.status == "stopped"
    assert report.stopped_by is not None
    assert result.output == budget_exhausted_message(report.stopped_by)
    assert len(ran) == 2
    assert len(calls) == 3  # the step after the refusal was answered without a request
    refused = [
        part
        for message in result.all_messages()
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    ][-1]
    assert refused.content == budget_exhausted_message(report.stopped_by)


async def test_graceful_end_on_a_refused_request(ledger: AsyncLedger) -> None:
    calls: list[AgentInfo] = []
    budget = BudgetCapability(
        ledger=ledger, path=RUN, limits=[Limit("requests", 1)], graceful_end=True
    )
    agent = agent_with(looping_model("gpt-4o", calls), budget, [])

    result = await agent.run("loop", model_settings=ModelSettings(max_tokens=10))

    report = budget.last_report
    assert report is not None
    assert report.stopped_by is not None
    assert report.stopped_by.dimension == "requests"
    assert result.output == budget_exhausted_message(report.stopped_by)
    assert len(calls) == 1


async def test_graceful_end_raises_when_the_output_type_cannot_be_text(
    ledger: AsyncLedger,
) -> None:
    class Answer(BaseModel):
        text: str

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[ToolCallPart("search", {"query": "q"})], usage=usage())

    budget = BudgetCapability(
        ledger=ledger, path=RUN, limits=[Limit("tool_calls", 1)], graceful_end=True
    )
    agent = Agent(
        FunctionModel(respond, model_name="gpt-4o"), output_type=Answer, capabilities=[budget]
    )

    @agent.tool_plain
    async def search(query: str) -> str:
        return query

    del search
    with pytest.raises(BudgetExceeded) as caught:
        await agent.run("structured")
    assert caught.value.dimension == "tool_calls"


async def test_summary_policy_runs_one_wrap_up_call_within_the_reserve(
    ledger: AsyncLedger,
) -> None:
    calls: list[AgentInfo] = []
    seen: list[list[ModelMessage]] = []
    ran: list[str] = []

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append(info)
        seen.append(messages)
        if info.function_tools:
            return ModelResponse(parts=[ToolCallPart("search", {"query": "q"})], usage=usage())
        return ModelResponse(parts=[TextPart("summary: searched twice")], usage=usage(1200, 150))

    reserve = Usage(input_tokens=4000, output_tokens=200, requests=1)
    budget = BudgetCapability(
        ledger=ledger,
        path=RUN,
        limits=[Limit("requests", 3)],
        pricing=Pricing(),
        policy=Policy(on_exhausted="summary", summary_reserve=reserve),
    )
    agent = agent_with(FunctionModel(respond, model_name="gpt-4o"), budget, ran)

    result = await agent.run("research", model_settings=ModelSettings(max_tokens=1000))

    assert result.output == "summary: searched twice"
    final = calls[-1]
    assert final.function_tools == []
    assert (final.model_settings or {}).get("max_tokens") == 200  # the reserve's output
    last_request = seen[-1][-1]
    assert isinstance(last_request, ModelRequest)
    assert isinstance(last_request.parts[-1], UserPromptPart)
    assert last_request.parts[-1].content == WRAP_UP_INSTRUCTION
    # The stored history keeps the original request.
    stored = [m for m in result.all_messages() if isinstance(m, ModelRequest)][-1]
    assert all(getattr(p, "content", None) != WRAP_UP_INSTRUCTION for p in stored.parts)
    report = budget.last_report
    assert report is not None
    assert report.status == "stopped"
    assert report.wrapped_up
    assert len(calls) == 3  # two normal calls, then the wrap-up the reserve paid for
    assert (await spent(ledger, ORG)).requests == 3  # within the limit of 3


# -- streaming ---------------------------------------------------------------------------------


def streaming_model(chunks: list[str]) -> FunctionModel:
    async def stream(
        messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        for chunk in chunks:
            yield chunk

    return FunctionModel(stream_function=stream, model_name="gpt-4o")


async def test_a_streamed_run_is_charged_what_the_stream_reported(ledger: AsyncLedger) -> None:
    budget = BudgetCapability(ledger=ledger, path=RUN, pricing=Pricing())
    agent = Agent(streaming_model(["The ", "answer ", "is ", "42."]), capabilities=[budget])

    async with agent.run_stream("stream it") as run:
        text = await run.get_output()
        reported = run.usage

    assert text == "The answer is 42."
    used = await spent(ledger, ORG)
    assert (used.input_tokens, used.output_tokens) == (
        reported.input_tokens,
        reported.output_tokens,
    )
    assert used.output_tokens > 0
    assert used.cost_usd == Pricing().price("gpt-4o", used.replace(cost_usd=None)).cost_usd


async def test_an_abandoned_stream_is_still_charged(ledger: AsyncLedger) -> None:
    budget = BudgetCapability(ledger=ledger, path=RUN, pricing=Pricing())
    chunks = [f"word{i} " for i in range(50)]
    agent = Agent(streaming_model(chunks), capabilities=[budget])

    async with agent.run_stream("stream it") as run:
        async for _ in run.stream_text(delta=True):
            break  # the consumer walks away after the first chunk

    scope = await ledger.usage(ORG)
    assert scope.used.requests == 1
    assert scope.used.output_tokens > 0
    assert scope.used.cost_usd is not None
    assert scope.used.cost_usd > 0
    assert scope.held.requests == 0


@pytest.mark.parametrize("graceful_end", [False, True])
async def test_a_streamed_request_is_refused_before_it_opens(
    ledger: AsyncLedger, graceful_end: bool
) -> None:
    opened: list[int] = []

    async def stream(
        messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        opened.append(1)
        yield "streamed answer"

    model = FunctionModel(stream_function=stream, model_name="gpt-4o")
    async with AsyncRunGuard(
        ledger, "org:acme/session:s2", limits=[Limit("requests", 1)], pricing=Pricing()
    ) as guard:
        agent = Agent(model, capabilities=[BudgetCapability(guard, graceful_end=graceful_end)])
        async with agent.run_stream("first") as run:
            assert await run.get_output() == "streamed answer"
        if graceful_end:
            async with agent.run_stream("second") as run:
                output = await run.get_output()
            assert guard.exhausted is not None
            assert output == budget_exhausted_message(guard.exhausted)
        else:
            with pytest.raises(BudgetExceeded) as caught:
                async with agent.run_stream("second") as run:
                    await run.get_output()
            assert (caught.value.dimension, caught.value.limit) == ("requests", 1)
    assert opened == [1]  # the second stream was never opened
    assert guard.report.status == "stopped"


# -- sub-agents --------------------------------------------------------------------------------


def sub_agent_setup(
    ledger: AsyncLedger, *, graceful_end: bool
) -> tuple[Agent[None, str], BudgetCapability, list[str]]:
    async def child_answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart("child done")], usage=usage(100, 10))

    child = Agent(
        FunctionModel(child_answer, model_name="gpt-4o-mini"),
        capabilities=[BudgetCapability(ledger=ledger, path="org:acme/child:{run_id}")],
    )

    async def parent_loop(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[ToolCallPart("delegate", {"task": "t"})], usage=usage())

    parent_budget = BudgetCapability(
        ledger=ledger,
        path=RUN,
        limits=[Limit("agent_hops", 2)],
        pricing=Pricing(),
        graceful_end=graceful_end,
    )
    parent = Agent(FunctionModel(parent_loop, model_name="gpt-4o"), capabilities=[parent_budget])
    delegated: list[str] = []

    @parent.tool_plain
    async def delegate(task: str) -> str:
        result = await child.run(task)
        delegated.append(result.output)
        return result.output

    del delegate
    return parent, parent_budget, delegated


async def test_a_sub_agent_run_is_admitted_as_an_agent_hop(ledger: AsyncLedger) -> None:
    parent, parent_budget, delegated = sub_agent_setup(ledger, graceful_end=False)

    with pytest.raises(BudgetExceeded) as caught:
        await parent.run("delegate forever")

    assert (caught.value.dimension, caught.value.limit) == ("agent_hops", 2)
    assert delegated == ["child done", "child done"]
    report = parent_budget.last_report
    assert report is not None
    assert report.status == "stopped"
    assert report.usage.agent_hops == 2
    assert (await spent(ledger, ORG)).agent_hops == 2


async def test_a_refused_sub_agent_ends_the_run_gracefully(ledger: AsyncLedger) -> None:
    parent, parent_budget, delegated = sub_agent_setup(ledger, graceful_end=True)

    result = await parent.run("delegate forever")

    report = parent_budget.last_report
    assert report is not None
    assert report.status == "stopped"
    assert report.stopped_by is not None
    assert report.stopped_by.dimension == "agent_hops"
    assert result.output == budget_exhausted_message(report.stopped_by)
    assert delegated == ["child done", "child done"]


# -- construction ------------------------------------------------------------------------------


def test_construction_checks_its_arguments(ledger: AsyncLedger) -> None:
    with pytest.raises(InvalidInput) as caught:
        BudgetCapability()
    assert caught.value.field == "ledger"
    with pytest.raises(InvalidInput) as caught:
        BudgetCapability(ledger=ledger)
    assert caught.value.field == "path"
    with pytest.raises(InvalidInput) as caught:
        BudgetCapability(object())  # type: ignore[arg-type]
    assert caught.value.field == "guard"


# -- the example -------------------------------------------------------------------------------


def test_the_example_runs_offline_and_ends_at_the_tool_cap(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "examples" / "pydantic_ai_budget.py"
    done = subprocess.run(
        [sys.executable, str(example), "--ledger", f"sqlite:///{tmp_path}/example.db"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert lines["status"] == "stopped"
    assert lines["stopped by"] == "tool_calls limit 3"
    assert lines["requests"] == "4 tool calls: 3"
    # Four responses of 1200 input (1024 cached) and 60 output tokens, priced by genai-prices.
    one = genai_cost("gpt-4o", "openai", usage(1200, 60, cache_read=1024))
    assert Decimal(lines["cost_usd"]) == 4 * one
