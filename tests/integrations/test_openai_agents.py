"""The OpenAI Agents SDK integration, driven through the SDK's real ``Runner`` loop offline.

Every run uses the SDK's own scripted model (``agents.testing.ScriptedModel``) returning real
``agents.usage.Usage`` objects; models named by string go through a tiny ``ModelProvider`` that
hands out scripted models by name, as a real provider hands out API clients.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("agents")

import genai_prices
from agents import (
    Agent,
    ModelProvider,
    RunConfig,
    RunContextWrapper,
    RunHooks,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.exceptions import AgentsException, UserError
from agents.items import ModelResponse
from agents.lifecycle import RunHooksBase
from agents.model_settings import ModelSettings
from agents.models.interface import Model
from agents.run_context import AgentHookContext
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call
from agents.tool import Tool
from agents.usage import Usage as AgentsUsage
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from budgeteer import AsyncLedger, BudgetExceeded, InvalidInput, Limit, Policy, Usage
from budgeteer.integrations import usage_from_openai
from budgeteer.integrations.openai_agents import (
    WRAP_UP_INSTRUCTIONS,
    AgentsBudgetExceeded,
    BudgetGuard,
    CompositeRunHooks,
    budget_notice,
)

set_tracing_disabled(True)

REPO = Path(__file__).resolve().parents[2]


# -- the scripted world ------------------------------------------------------------------------


def agents_usage(
    input_tokens: int = 120, output_tokens: int = 30, cached: int = 0, reasoning: int = 0
) -> AgentsUsage:
    """A real SDK usage block, as the Responses API reports it (cached/reasoning inside)."""
    return AgentsUsage(
        requests=1,
        input_tokens=input_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=cached, cache_write_tokens=0),
        output_tokens=output_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning),
        total_tokens=input_tokens + output_tokens,
    )


def tool_steps(count: int, prefix: str = "c", usage: AgentsUsage | None = None) -> list[ModelStep]:
    """A runaway loop: every response asks for one more search."""
    return [
        ModelStep(
            output=[function_call("search", {"q": f"{prefix}{i}"}, call_id=f"{prefix}{i}")],
            usage=usage or agents_usage(),
        )
        for i in range(count)
    ]


def answer(text: str = "done", usage: AgentsUsage | None = None) -> ModelStep:
    return ModelStep(output=[assistant_message(text)], usage=usage or agents_usage())


class ScriptedProvider(ModelProvider):
    """Scripted models by name, so agents name their model as real code does."""

    def __init__(self, **models: ScriptedModel) -> None:
        self.models = {name.replace("_", "-"): model for name, model in models.items()}

    def get_model(self, model_name: str | None) -> Model:
        return self.models[model_name or "gpt-4o"]


class Searches:
    """A tool that records each time it really runs."""

    def __init__(self) -> None:
        self.ran: list[str] = []

        @function_tool
        def search(q: str) -> str:
            """Search for q."""
            self.ran.append(q)
            return f"results for {q}"

        self.tool = search


@pytest.fixture
def searches() -> Searches:
    return Searches()


@pytest.fixture(params=["memory", "sqlite"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'b.db'}"


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[AsyncLedger]:
    async with AsyncLedger(ledger_url) as opened:
        yield opened


def genai_cost(model: str, usage: AgentsUsage) -> Decimal:
    """The expected price, computed straight from genai-prices, independently of budgeteer."""
    price = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage.input_tokens,
            cache_read_tokens=usage.input_tokens_details.cached_tokens,
            output_tokens=usage.output_tokens,
        ),
        model,
        provider_id="openai",
    )
    return Decimal(price.total_price)


# -- enforcement before the call -----------------------------------------------------------------


async def test_runaway_loop_is_refused_before_the_request_that_would_cross_the_cap(
    ledger: AsyncLedger, searches: Searches
) -> None:
    model = ScriptedModel(tool_steps(20))
    agent = Agent(name="looper", model=model, tools=[searches.tool])
    guard = BudgetGuard(ledger, "org:acme/run:r1", max_requests=3, model="gpt-4o")

    with pytest.raises(BudgetExceeded) as caught:
        await Runner.run(agent, "go", hooks=guard, max_turns=100)

    error = caught.value
    assert isinstance(error, AgentsBudgetExceeded)
    assert (error.scope, error.dimension, error.limit, error.actual) == (
        "org:acme/run:r1",
        "requests",
        3,
        4,
    )
    assert len(model.calls) == 3  # the fourth request was never sent
    assert model.remaining_steps == 17
    assert guard.report.status == "stopped"
    stopped_by = guard.report.stopped_by
    assert stopped_by is not None
    assert (stopped_by.dimension, stopped_by.actual) == ("requests", 4)
    scope = await ledger.usage("org:acme/run:r1")
    assert scope.used.requests == 3
    assert scope.held.requests == 0


async def test_runaway_tool_loop_stops_at_the_tool_cap_typed_not_wrapped(
    ledger: AsyncLedger, searches: Searches
) -> None:
    model = ScriptedModel(tool_steps(20))
    agent = Agent(name="looper", model=model, tools=[searches.tool])
    guard = BudgetGuard(ledger, "run:t1", max_tool_calls=4, model="gpt-4o")

    with pytest.raises(BudgetExceeded) as caught:
        await Runner.run(agent, "go", hooks=guard, max_turns=100)

    # The SDK turns other exceptions from on_tool_start into UserError; ours stays typed.
    assert not isinstance(caught.value, UserError)
    assert isinstance(caught.value, AgentsException)
    assert (caught.value.dimension, caught.value.limit, caught.value.actual) == ("tool_calls", 4, 5)
    assert searches.ran == ["c0", "c1", "c2", "c3"]  # the fifth search never ran
    assert guard.report.usage.tool_calls == 4


async def test_limits_given_as_budgeteer_limits_and_as_arguments_both_apply(
    ledger: AsyncLedger, searches: Searches
) -> None:
    # Reported input (450) stays under the offline estimate of a 1500-byte prompt (~500), as a
    # real prompt does: the estimate is pessimistic, and output is capped by max_tokens.
    model = ScriptedModel(tool_steps(20, usage=agents_usage(450, 100)))
    agent = Agent(
        name="looper",
        model=model,
        tools=[searches.tool],
        model_settings=ModelSettings(max_tokens=100),
    )
    guard = BudgetGuard(
        ledger, "run:t2", max_requests=50, limits=[Limit("total_tokens", 3000)], model="gpt-4o"
    )
    with pytest.raises(BudgetExceeded) as caught:
        await Runner.run(agent, "x" * 1500, hooks=guard, max_turns=100)
    assert (caught.value.dimension, caught.value.limit) == ("total_tokens", 3000)
    assert 2 <= len(model.calls) == guard.report.usage.requests
    assert guard.report.usage.total_tokens <= 3000
    assert guard.report.usage.total_tokens == 550 * len(model.calls)


async def test_two_runs_sharing_one_scope_stop_together(
    ledger_url: str, tmp_path: Path, searches: Searches
) -> None:
    async with AsyncLedger(ledger_url) as shared:
        await shared.set_limit("team:search", Limit("requests", 7))
        # With SQLite each run opens its own ledger on the file, as separate processes would.
        second = AsyncLedger(ledger_url) if ledger_url.startswith("sqlite") else shared
        a, b = ScriptedModel(tool_steps(20, "a")), ScriptedModel(tool_steps(20, "b"))
        guards = [
            BudgetGuard(shared, "team:search/run:a", model="gpt-4o"),
            BudgetGuard(second, "team:search/run:b", model="gpt-4o"),
        ]
        results = await asyncio.gather(
            Runner.run(
                Agent(name="a", model=a, tools=[searches.tool]),
                "go",
                hooks=guards[0],
                max_turns=100,
            ),
            Runner.run(
                Agent(name="b", model=b, tools=[searches.tool]),
                "go",
                hooks=guards[1],
                max_turns=100,
            ),
            return_exceptions=True,
        )
        for result in results:
            assert isinstance(result, BudgetExceeded)
            assert (result.scope, result.dimension, result.limit) == ("team:search", "requests", 7)
        assert len(a.calls) + len(b.calls) == 7
        assert min(len(a.calls), len(b.calls)) >= 1
        assert (await shared.usage("team:search")).used.requests == 7
        if second is not shared:
            await second.close()


# -- reconciliation ------------------------------------------------------------------------------


async def test_cost_charged_is_the_genai_prices_price_of_the_reported_usage(
    ledger: AsyncLedger, searches: Searches
) -> None:
    first = agents_usage(input_tokens=5000, output_tokens=900, cached=3072, reasoning=640)
    second = agents_usage(input_tokens=6200, output_tokens=410, cached=4096, reasoning=128)
    model = ScriptedModel(
        [
            ModelStep(
                output=[function_call("search", {"q": "x"}, call_id="x1")],
                usage=first,
            ),
            answer("found it", usage=second),
        ]
    )
    agent = Agent(name="pricer", model=model, tools=[searches.tool])
    guard = BudgetGuard(ledger, "run:cost", max_cost_usd="5", model="o4-mini")

    result = await Runner.run(agent, "go", hooks=guard)

    assert result.final_output == "found it"
    expected = genai_cost("o4-mini", first) + genai_cost("o4-mini", second)
    assert guard.report.cost_usd == expected
    assert (await ledger.usage("run:cost")).used.cost_usd == expected
    used = guard.report.usage
    # Cached tokens stay inside input and reasoning inside output: counted once each.
    assert used.input_tokens == 11200
    assert used.cache_read_tokens == 7168
    assert used.output_tokens == 1310
    assert used.reasoning_tokens == 768
    assert used.total_tokens == 12510
    assert guard.report.status == "completed"
    assert guard.report.models == {"o4-mini": 2}


async def test_an_unpriced_model_is_refused_rather_than_charged_zero(searches: Searches) -> None:
    model = ScriptedModel([answer()])
    agent = Agent(name="free", model=model, tools=[searches.tool])
    guard = BudgetGuard(max_cost_usd="1", model="no-such-model-xyz")
    with pytest.raises(InvalidInput) as caught:
        await Runner.run(agent, "go", hooks=guard)
    assert caught.value.field == "model"
    assert model.calls == ()


async def test_a_response_without_usage_is_charged_its_estimate(searches: Searches) -> None:
    model = ScriptedModel([ModelStep(output=[assistant_message("hi")], usage=AgentsUsage())])
    agent = Agent(name="silent", model=model, model_settings=ModelSettings(max_tokens=50))
    guard = BudgetGuard(max_requests=5, model="gpt-4o")
    await Runner.run(agent, "hello", hooks=guard)
    assert guard.report.usage.requests == 1
    assert guard.report.usage.output_tokens == 50  # the reserved max_tokens, not zero
    assert guard.report.cost_usd is not None
    assert guard.report.cost_usd > 0


def test_usage_from_openai_reads_the_agents_sdk_usage_with_cache_writes() -> None:
    reported = AgentsUsage(
        requests=1,
        input_tokens=900,
        input_tokens_details=InputTokensDetails(cached_tokens=500, cache_write_tokens=300),
        output_tokens=70,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=20),
        total_tokens=970,
    )
    usage = usage_from_openai(reported)
    assert (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (
        900,
        500,
        300,
    )
    assert (usage.output_tokens, usage.reasoning_tokens, usage.tokens) == (70, 20, 970)


async def test_hand_offs_are_admitted_as_agent_hops(searches: Searches) -> None:
    specialist_model = ScriptedModel([answer("specialist done")])
    specialist = Agent(name="specialist", model=specialist_model)
    triage_model = ScriptedModel(
        [ModelStep(output=[function_call("transfer_to_specialist", {}, call_id="h1")])]
    )
    triage = Agent(name="triage", model=triage_model, handoffs=[specialist])

    refused = BudgetGuard(max_agent_hops=0, model="gpt-4o")
    with pytest.raises(BudgetExceeded) as caught:
        await Runner.run(triage, "go", hooks=refused)
    assert (caught.value.dimension, caught.value.limit) == ("agent_hops", 0)
    assert specialist_model.calls == ()

    triage_model.enqueue(
        ModelStep(output=[function_call("transfer_to_specialist", {}, call_id="h2")])
    )
    specialist_model = ScriptedModel([answer("specialist done")])
    specialist.model = specialist_model
    guard = BudgetGuard(max_agent_hops=1, model="gpt-4o")
    result = await Runner.run(triage, "go", hooks=guard)
    assert result.final_output == "specialist done"
    assert guard.report.usage.agent_hops == 1
    assert guard.report.status == "completed"


# -- degradation and the graceful end ----------------------------------------------------------


async def test_downgrade_happens_at_the_threshold(ledger: AsyncLedger, searches: Searches) -> None:
    big, mini = ScriptedModel(tool_steps(20, "big")), ScriptedModel(tool_steps(20, "mini"))
    mini.enqueue(answer("cheap answer"))
    agent = Agent(name="worker", model="gpt-4o", tools=[searches.tool])
    guard = BudgetGuard(
        ledger, "run:down", max_requests=10, downgrade_to="gpt-4o-mini", downgrade_at=0.5
    )
    config = guard.run_config(
        RunConfig(model_provider=ScriptedProvider(gpt_4o=big, gpt_4o_mini=mini))
    )

    with pytest.raises(BudgetExceeded) as caught:
        await Runner.run(agent, "go", hooks=guard, run_config=config, max_turns=100)

    # Admission k sees (k-1 used + 1 held) / 10: the 5th reaches 50%, so calls 6.. downgrade.
    assert len(big.calls) == 5
    assert len(mini.calls) == 5
    assert caught.value.dimension == "requests"
    assert guard.report.models == {"gpt-4o": 5, "gpt-4o-mini": 5}
    assert [rung.action for rung in guard.report.degradations] == ["downgrade"]
    # Each call is priced as the model that ran.
    expected = 5 * genai_cost("gpt-4o", agents_usage()) + 5 * genai_cost(
        "gpt-4o-mini", agents_usage()
    )
    assert guard.report.cost_usd == expected


async def test_downgrade_without_the_guards_provider_is_refused_at_the_first_call(
    searches: Searches,
) -> None:
    model = ScriptedModel([answer()])
    agent = Agent(name="worker", model=model, tools=[searches.tool])
    guard = BudgetGuard(max_requests=5, model="gpt-4o", downgrade_to="gpt-4o-mini")
    with pytest.raises(InvalidInput) as caught:
        await Runner.run(agent, "go", hooks=guard)
    assert caught.value.field == "run_config"
    assert model.calls == ()


def test_graceful_end_run_sync_final_output_says_the_budget_ran_out(
    ledger_url: str, searches: Searches
) -> None:
    model = ScriptedModel(tool_steps(20))
    agent = Agent(name="looper", model="gpt-4o", tools=[searches.tool])
    guard = BudgetGuard(ledger_url, "run:graceful", max_requests=3, graceful=True)
    config = guard.run_config(RunConfig(model_provider=ScriptedProvider(gpt_4o=model)))

    result = Runner.run_sync(agent, "go", hooks=guard, run_config=config, max_turns=100)

    assert guard.exhausted is not None
    assert (guard.exhausted.dimension, guard.exhausted.limit) == ("requests", 3)
    assert result.final_output == budget_notice(guard.exhausted)
    assert len(model.calls) == 3
    assert guard.report.status == "stopped"
    assert guard.report.usage.requests == 3


async def test_summary_policy_runs_one_wrap_up_call_within_the_reserve(
    ledger: AsyncLedger, searches: Searches
) -> None:
    model = ScriptedModel([*tool_steps(3), answer("summary: three searches, nothing found")])
    agent = Agent(name="looper", model="gpt-4o", tools=[searches.tool], instructions="Search.")
    policy = Policy(
        on_exhausted="summary",
        summary_reserve=Usage(input_tokens=2000, output_tokens=200, requests=1),
        clamp_max_tokens=False,
    )
    guard = BudgetGuard(ledger, "run:summary", max_requests=4, policy=policy)
    config = guard.run_config(RunConfig(model_provider=ScriptedProvider(gpt_4o=model)))

    result = await Runner.run(agent, "go", hooks=guard, run_config=config, max_turns=100)

    assert guard.exhausted is not None
    assert result.final_output == (
        f"{budget_notice(guard.exhausted)}\n\nsummary: three searches, nothing found"
    )
    wrap_up = model.last_call
    assert wrap_up is not None
    assert wrap_up.tools == []
    assert wrap_up.system_instructions == f"Search.\n\n{WRAP_UP_INSTRUCTIONS}"
    assert wrap_up.model_settings.max_tokens == 200
    assert len(model.calls) == 4
    assert guard.report.wrapped_up is True
    assert guard.report.status == "stopped"
    assert (await ledger.usage("run:summary")).used.requests == 4  # within the cap of 4


async def test_graceful_mode_stops_offering_tools_once_the_tool_cap_is_spent(
    searches: Searches,
) -> None:
    model = ScriptedModel([*tool_steps(2), answer("answered without tools")])
    agent = Agent(name="looper", model="gpt-4o", tools=[searches.tool])
    guard = BudgetGuard(max_tool_calls=2, graceful=True)
    config = guard.run_config(RunConfig(model_provider=ScriptedProvider(gpt_4o=model)))

    result = await Runner.run(agent, "go", hooks=guard, run_config=config)

    assert result.final_output == "answered without tools"
    assert [len(call.tools) for call in model.calls] == [1, 1, 0]
    assert searches.ran == ["c0", "c1"]


async def test_a_failed_model_call_releases_its_hold(ledger: AsyncLedger) -> None:
    model = ScriptedModel([ModelStep.raise_error(RuntimeError("provider down"))])
    agent = Agent(name="unlucky", model="gpt-4o")
    guard = BudgetGuard(ledger, "run:fail", max_requests=5)
    config = guard.run_config(RunConfig(model_provider=ScriptedProvider(gpt_4o=model)))
    with pytest.raises(RuntimeError):
        async with guard:
            await Runner.run(agent, "go", hooks=guard, run_config=config)
    scope = await ledger.usage("run:fail")
    assert scope.held.requests == 0
    assert scope.used.requests == 0
    assert guard.report.status == "failed"


async def test_one_guard_passed_to_two_concurrent_runs_is_refused() -> None:
    first, second = ScriptedModel(tool_steps(3, "x")), ScriptedModel(tool_steps(3, "y"))
    guard = BudgetGuard(max_requests=50, model="gpt-4o")
    searches = Searches()
    results = await asyncio.gather(
        Runner.run(Agent(name="x", model=first, tools=[searches.tool]), "go", hooks=guard),
        Runner.run(Agent(name="y", model=second, tools=[searches.tool]), "go", hooks=guard),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, InvalidInput)]
    assert len(refused) == 1
    assert refused[0].field == "guard"


async def test_a_guard_guards_one_run() -> None:
    model = ScriptedModel([answer(), answer()])
    agent = Agent(name="once", model=model)
    guard = BudgetGuard(max_requests=5, model="gpt-4o")
    await Runner.run(agent, "go", hooks=guard)
    with pytest.raises(InvalidInput) as caught:
        await Runner.run(agent, "again", hooks=guard)
    assert caught.value.field == "guard"


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(InvalidInput) as caught:
        BudgetGuard(max_cost_usd=1.5)  # type: ignore[arg-type]
    assert caught.value.field == "max_cost_usd"
    with pytest.raises(InvalidInput) as caught:
        BudgetGuard(max_requests=3, limits=[Limit("requests", 5)])
    assert caught.value.field == "limits"
    with pytest.raises(InvalidInput) as caught:
        BudgetGuard(ledger=42)  # type: ignore[arg-type]
    assert caught.value.field == "ledger"


def test_the_refusal_pickles_with_its_fields() -> None:
    import pickle

    error = AgentsBudgetExceeded(
        scope="run:x", dimension="requests", limit=3, used=3, held=0, requested=1
    )
    error.run_data = None
    again = pickle.loads(pickle.dumps(error))
    assert isinstance(again, AgentsBudgetExceeded)
    assert (again.scope, again.dimension, again.limit, again.actual) == ("run:x", "requests", 3, 4)


# -- CompositeRunHooks ---------------------------------------------------------------------------


class Recorder(RunHooks[Any]):
    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name = name
        self.log = log

    async def on_agent_start(self, context: AgentHookContext[Any], agent: Agent[Any]) -> None:
        self.log.append((self.name, "agent_start"))

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[Any],
    ) -> None:
        self.log.append((self.name, "llm_start"))

    async def on_llm_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], response: ModelResponse
    ) -> None:
        self.log.append((self.name, "llm_end"))

    async def on_tool_start(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool
    ) -> None:
        self.log.append((self.name, "tool_start"))

    async def on_tool_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool, result: object
    ) -> None:
        self.log.append((self.name, "tool_end"))

    async def on_handoff(
        self, context: RunContextWrapper[Any], from_agent: Agent[Any], to_agent: Agent[Any]
    ) -> None:
        self.log.append((self.name, "handoff"))

    async def on_agent_end(
        self, context: AgentHookContext[Any], agent: Agent[Any], output: Any
    ) -> None:
        self.log.append((self.name, "agent_end"))


async def test_composite_hooks_fan_out_every_event_in_order(searches: Searches) -> None:
    log: list[tuple[str, str]] = []
    specialist = Agent(name="specialist", model=ScriptedModel([answer()]))
    model = ScriptedModel(
        [
            *tool_steps(1),
            ModelStep(output=[function_call("transfer_to_specialist", {}, call_id="h")]),
        ]
    )
    agent = Agent(name="a", model=model, tools=[searches.tool], handoffs=[specialist])
    guard = BudgetGuard(max_requests=10, model="gpt-4o")
    hooks = CompositeRunHooks(Recorder("first", log), guard, Recorder("second", log))

    await Runner.run(agent, "go", hooks=hooks)

    events = [
        "agent_start",
        "llm_start",
        "llm_end",
        "tool_start",
        "tool_end",
        "llm_start",
        "llm_end",
        "handoff",
        "agent_start",
        "llm_start",
        "llm_end",
        "agent_end",
    ]
    assert log == [(name, event) for event in events for name in ("first", "second")]
    assert guard.report.usage.requests == 3
    assert guard.report.usage.tool_calls == 1
    assert guard.report.usage.agent_hops == 1


async def test_composite_hooks_stop_the_fan_out_at_a_refusal(searches: Searches) -> None:
    log: list[tuple[str, str]] = []
    model = ScriptedModel(tool_steps(5))
    agent = Agent(name="a", model=model, tools=[searches.tool])
    guard = BudgetGuard(max_requests=1, model="gpt-4o")
    hooks = CompositeRunHooks(Recorder("before", log), guard, Recorder("after", log))
    with pytest.raises(BudgetExceeded):
        await Runner.run(agent, "go", hooks=hooks)
    assert log.count(("before", "llm_start")) == 2
    assert log.count(("after", "llm_start")) == 1  # the refused call never reached it


def test_composite_hooks_cover_every_run_hook_of_the_sdk() -> None:
    names = [
        name
        for name, member in inspect.getmembers(RunHooksBase)
        if name.startswith("on_") and inspect.iscoroutinefunction(member)
    ]
    assert names  # the SDK still defines its hooks this way
    for name in names:
        assert getattr(CompositeRunHooks, name) is not getattr(RunHooksBase, name), name


def test_composite_hooks_refuse_non_hooks() -> None:
    with pytest.raises(InvalidInput) as caught:
        CompositeRunHooks(object())  # type: ignore[arg-type]
    assert caught.value.field == "hooks"


# -- the example ---------------------------------------------------------------------------------


def test_the_example_runs_offline_and_reports_the_stop(tmp_path: Path) -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "openai_agents_budget.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert lines["raise mode"] == "BudgetExceeded requests limit=4 actual=5"
    assert lines["graceful status"] == "stopped"
    assert lines["graceful models"] == "{'gpt-4o': 2, 'gpt-4o-mini': 2}"
    assert lines["graceful final output"].startswith("Budget exhausted")


# -- streaming and the prompt estimate -----------------------------------------------------------


@pytest.mark.parametrize("routed", [False, True])
async def test_streamed_runs_are_admitted_and_settled_alike(
    ledger: AsyncLedger, searches: Searches, routed: bool
) -> None:
    model = ScriptedModel(tool_steps(10))
    agent = Agent(name="streamer", model="gpt-4o" if routed else model, tools=[searches.tool])
    guard = BudgetGuard(ledger, "run:stream", max_requests=3, model="gpt-4o")
    config = guard.run_config(RunConfig(model_provider=ScriptedProvider(gpt_4o=model)))

    result = Runner.run_streamed(
        agent, "go", hooks=guard, max_turns=100, run_config=config if routed else None
    )
    with pytest.raises(BudgetExceeded) as caught:
        async for _ in result.stream_events():
            pass

    assert (caught.value.dimension, caught.value.limit) == ("requests", 3)
    assert len(model.calls) == 3
    assert all(call.streamed for call in model.calls)
    assert guard.report.cost_usd == 3 * genai_cost("gpt-4o", agents_usage())
    assert (await ledger.usage("run:stream")).held.requests == 0


def test_the_prompt_estimate_measures_only_new_items_and_starts_over_on_a_rewrite() -> None:
    from budgeteer.integrations.openai_agents import _PromptMeter

    history: list[object] = [
        {"role": "user", "content": "find the quarterly numbers"},
        {"type": "function_call", "name": "search", "arguments": '{"q": "q3"}', "call_id": "1"},
        {"type": "function_call_output", "call_id": "1", "output": "revenue 4.2M " * 20},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Q3 was 4.2M."}]},
    ]
    meter = _PromptMeter()
    assert meter.tokens("Be brief.", history[:2]) == _PromptMeter().tokens("Be brief.", history[:2])
    # The SDK rebuilds every item each turn: equal copies count as the same prefix.
    copies = [dict(item) for item in history]  # type: ignore[call-overload]
    assert meter.tokens("Be brief.", copies) == _PromptMeter().tokens("Be brief.", history)
    # A filter that drops items (a hand-off input filter) is measured from scratch.
    assert meter.tokens("Be brief.", history[2:]) == _PromptMeter().tokens("Be brief.", history[2:])
    # Tool calls and outputs have no "content" but are sent: they count.
    assert _PromptMeter().tokens(None, history[2:3]) > 20 * len("revenue 4.2M ") // 4


async def test_escalation_grants_more_budget_and_the_report_records_it(
    ledger: AsyncLedger, searches: Searches
) -> None:
    from budgeteer import Grant

    asked: list[BudgetExceeded] = []

    def escalate(error: BudgetExceeded) -> Grant | None:
        asked.append(error)
        return Grant(amount=2, reason="on-call approved") if len(asked) == 1 else None

    model = ScriptedModel([*tool_steps(4), answer("finished with the extra budget")])
    agent = Agent(name="looper", model=model, tools=[searches.tool])
    guard = BudgetGuard(
        ledger,
        "run:escalate",
        max_requests=3,
        model="gpt-4o",
        policy=Policy(on_exhausted="escalate", escalate=escalate),
    )

    result = await Runner.run(agent, "go", hooks=guard, max_turns=100)

    assert result.final_output == "finished with the extra budget"
    assert len(model.calls) == 5
    assert [(g.dimension, g.amount, g.new_limit) for g in guard.report.grants] == [
        ("requests", 2, 5)
    ]
    assert asked[0].dimension == "requests"
    assert guard.report.status == "completed"


async def test_a_retried_request_is_admitted_again_and_charged_as_the_sdk_reports(
    ledger: AsyncLedger,
) -> None:
    from agents.retry import ModelRetryAdvice, ModelRetrySettings, RetryDecision

    model = ScriptedModel(
        [
            ModelStep.raise_error(
                ConnectionError("reset"),
                retry_advice=ModelRetryAdvice(suggested=True, replay_safety="safe"),
            ),
            answer("second attempt"),
        ]
    )
    settings = ModelSettings(
        retry=ModelRetrySettings(
            max_retries=2, policy=lambda context: RetryDecision(retry=True, delay=0)
        )
    )
    agent = Agent(name="retrier", model="gpt-4o", model_settings=settings)
    guard = BudgetGuard(ledger, "run:retry", max_requests=5)
    config = guard.run_config(RunConfig(model_provider=ScriptedProvider(gpt_4o=model)))

    result = await Runner.run(agent, "go", hooks=guard, run_config=config)

    assert result.final_output == "second attempt"
    assert len(model.calls) == 2
    scope = await ledger.usage("run:retry")
    # The failed attempt's hold was released and the retry admitted anew; the SDK reports both
    # attempts as requests on the successful response, and only its tokens.
    assert (scope.used.requests, scope.held.requests) == (2, 0)
    assert scope.used.input_tokens == agents_usage().input_tokens
    assert scope.used.cost_usd == genai_cost("gpt-4o", agents_usage())


async def test_the_policy_clamps_max_tokens_to_what_the_budget_affords() -> None:
    model = ScriptedModel([answer("short", usage=agents_usage(200, 50))])
    agent = Agent(name="clamped", model="gpt-4o", model_settings=ModelSettings(max_tokens=800))
    guard = BudgetGuard(max_total_tokens=1000, policy=Policy(clamp_max_tokens=True))
    config = guard.run_config(RunConfig(model_provider=ScriptedProvider(gpt_4o=model)))

    await Runner.run(agent, "x" * 600, hooks=guard, run_config=config)

    sent = model.calls[0].model_settings.max_tokens
    assert sent is not None
    # The prompt estimate (~200 tokens) + 800 would cross 1000: the call runs shorter instead.
    assert 700 < sent < 800
    assert guard.report.model_calls == 1
    assert guard.report.usage.total_tokens == 250


async def test_graceful_end_needs_a_text_output_otherwise_it_raises(searches: Searches) -> None:
    from pydantic import BaseModel

    class Report(BaseModel):
        findings: list[str]

    model = ScriptedModel(tool_steps(5))
    agent = Agent(name="typed", model="gpt-4o", tools=[searches.tool], output_type=Report)
    guard = BudgetGuard(max_requests=2, graceful=True)
    config = guard.run_config(RunConfig(model_provider=ScriptedProvider(gpt_4o=model)))
    with pytest.raises(BudgetExceeded) as caught:
        await Runner.run(agent, "go", hooks=guard, run_config=config)
    assert caught.value.dimension == "requests"
    assert len(model.calls) == 2


async def test_streamed_graceful_end_and_summary_say_the_budget_ran_out(
    searches: Searches,
) -> None:
    model = ScriptedModel(tool_steps(10))
    agent = Agent(name="streamer", model="gpt-4o", tools=[searches.tool])
    guard = BudgetGuard(max_requests=2, graceful=True)
    config = guard.run_config(RunConfig(model_provider=ScriptedProvider(gpt_4o=model)))
    result = Runner.run_streamed(agent, "go", hooks=guard, run_config=config, max_turns=100)
    async for _ in result.stream_events():
        pass
    assert guard.exhausted is not None
    assert result.final_output == budget_notice(guard.exhausted)
    assert len(model.calls) == 2
    assert guard.report.status == "stopped"

    model = ScriptedModel([*tool_steps(2), answer("summary so far")])
    policy = Policy(
        on_exhausted="summary",
        summary_reserve=Usage(input_tokens=2000, output_tokens=200, requests=1),
        clamp_max_tokens=False,
    )
    guard = BudgetGuard(max_requests=3, policy=policy)
    config = guard.run_config(RunConfig(model_provider=ScriptedProvider(gpt_4o=model)))
    result = Runner.run_streamed(agent, "go", hooks=guard, run_config=config, max_turns=100)
    async for _ in result.stream_events():
        pass
    assert guard.exhausted is not None
    assert result.final_output == f"{budget_notice(guard.exhausted)}\n\nsummary so far"
    assert guard.report.wrapped_up is True
    assert guard.report.usage.requests == 3
