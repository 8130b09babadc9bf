"""LangChain: real agent loops (``create_agent``) driven offline by LangChain's own fake chat model.

``GenericFakeChatModel`` has no ``bind_tools`` (``create_agent`` needs it) and reports no model
name, so ``ScriptedChatModel`` below adds exactly those two things, plus a log of what each call
was sent (the tools offered and ``max_tokens``). Everything else — the agent graph, the tool
node, the callback manager, the middleware chain — is LangChain's own code.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool, tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from budgeteer import (
    AsyncLedger,
    AsyncRunGuard,
    BudgetExceeded,
    Degrade,
    Grant,
    InvalidInput,
    Ledger,
    Limit,
    Policy,
    Pricing,
    RunGuard,
    Usage,
)
from budgeteer.guard import estimate_prompt_tokens
from budgeteer.integrations.langchain import (
    EXHAUSTED_KEY,
    AsyncBudgetCallbackHandler,
    BudgetCallbackHandler,
    BudgetMiddleware,
)
from budgeteer.testing import FakeClock

PATH = "org:acme/session:s1"

# -- the offline model and tools ------------------------------------------------------------------


class ScriptedChatModel(GenericFakeChatModel):
    """``GenericFakeChatModel`` with a model name and ``max_tokens`` (reported to callbacks as
    ``ls_model_name`` / ``ls_max_tokens``, as real chat models do), ``bind_tools`` and a log of
    each call."""

    model_name: str = "gpt-4o"
    max_tokens: int | None = 256
    calls: list[dict[str, Any]] = Field(default_factory=list)
    peek: Callable[[], object] | None = None
    """Called during each call; what it returns is logged as ``seen``."""

    def bind_tools(
        self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any
    ) -> Runnable[Any, Any]:
        return self.bind(tools=[t.name if isinstance(t, BaseTool) else t for t in tools], **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls.append(
            {
                "tools": kwargs.get("tools", []),
                "max_tokens": kwargs.get("max_tokens", self.max_tokens),
                "seen": self.peek() if self.peek else None,
            }
        )
        return super()._generate(messages, stop, run_manager, **kwargs)


class StreamingChatModel(ScriptedChatModel):
    """Streams each scripted message in two chunks; the usage comes in the last one, as
    OpenAI's ``stream_options={"include_usage": True}`` does."""

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        self.calls.append({"tools": kwargs.get("tools", []), "max_tokens": self.max_tokens})
        message = next(self.messages)
        assert isinstance(message, AIMessage)
        text = message.text
        yield ChatGenerationChunk(message=AIMessageChunk(content=text[:4]))
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content=text[4:],
                tool_call_chunks=[
                    {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
                    for i, c in enumerate(message.tool_calls)
                ],
                usage_metadata=message.usage_metadata,
                response_metadata=message.response_metadata,
                chunk_position="last",
            )
        )


def reported(
    input_tokens: int = 1000,
    output_tokens: int = 50,
    *,
    cache_read: int = 0,
    reasoning: int = 0,
) -> UsageMetadata:
    """An ``AIMessage.usage_metadata`` as providers report it (cached inside input, reasoning
    inside output)."""
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "input_token_details": {"cache_read": cache_read},
        "output_token_details": {"reasoning": reasoning},
    }


def tool_reply(i: int, usage: UsageMetadata, model: str, name: str = "search") -> AIMessage:
    return AIMessage(
        content="",
        tool_calls=[{"name": name, "args": {"q": f"q{i}"}, "id": f"call_{i}"}],
        usage_metadata=usage,
        response_metadata={"model_name": model},
    )


def runaway(
    usage: UsageMetadata | None = None, model: str = "gpt-4o", name: str = "search"
) -> Iterator[AIMessage]:
    """A model that never stops calling a tool."""
    i = 0
    while True:
        i += 1
        yield tool_reply(i, usage or reported(), model, name)


def scripted(
    model: str = "gpt-4o", replies: Iterator[AIMessage] | None = None
) -> ScriptedChatModel:
    return ScriptedChatModel(model_name=model, messages=replies or runaway(model=model))


def tools_or_text(model: ScriptedChatModel, text: str) -> Iterator[AIMessage]:
    """Calls a tool while the last request offered tools, answers ``text`` when it did not."""
    i = 0
    while True:
        i += 1
        if model.calls[-1]["tools"]:
            yield tool_reply(i, reported(), model.model_name)
        else:
            yield AIMessage(
                text,
                usage_metadata=reported(1500, 40),
                response_metadata={"model_name": model.model_name},
            )


class Tools:
    """Tools that record every time their body actually runs."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        ran = self.ran

        @tool
        def search(q: str) -> str:
            """Search the web."""
            ran.append(q)
            return f"results for {q}"

        @tool
        def delegate(q: str) -> str:
            """Hand the question to a sub-agent."""
            ran.append(f"delegate:{q}")
            return "sub-agent answer"

        self.search = search
        self.delegate = delegate


@pytest.fixture(params=["memory", "sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/b.db"
    with Ledger(url, clock=FakeClock()) as opened:
        yield opened


@pytest.fixture(params=["memory", "sqlite"])
async def aledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncLedger]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/b.db"
    opened = AsyncLedger(url, clock=FakeClock())
    try:
        yield opened
    finally:
        await opened.close()


def genai_cost(model: str, usage: UsageMetadata) -> Decimal:
    """The price genai-prices itself computes for one reported usage (the independent check)."""
    price = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage["input_tokens"],
            cache_read_tokens=usage["input_token_details"]["cache_read"],
            output_tokens=usage["output_tokens"],
            output_reasoning_tokens=usage["output_token_details"]["reasoning"],
        ),
        model,
        provider_id="openai",
    )
    return Decimal(str(price.total_price))


def last(result: dict[str, Any]) -> AIMessage:
    message = result["messages"][-1]
    assert isinstance(message, AIMessage)
    return message


# -- the callback handler -------------------------------------------------------------------------


def test_callback_stops_a_runaway_tool_loop_before_the_tool_call_that_would_cross_the_cap(
    ledger: Ledger,
) -> None:
    tools = Tools()
    model = scripted()
    with pytest.raises(BudgetExceeded) as caught:
        with RunGuard(ledger, PATH, limits=[Limit("tool_calls", 3)], pricing=Pricing()) as run:
            agent = create_agent(model, [tools.search])
            agent.invoke(
                {"messages": [HumanMessage("find it")]},
                config={"callbacks": [BudgetCallbackHandler(run)]},
            )
    error = caught.value
    assert (error.scope, error.dimension, error.limit, error.used, error.requested) == (
        PATH,
        "tool_calls",
        3,
        3,
        1,
    )
    assert tools.ran == ["q1", "q2", "q3"]  # the fourth tool body never ran
    assert run.report.status == "stopped"
    assert run.report.stopped_by is error
    assert ledger.usage(PATH).used.tool_calls == 3
    assert ledger.usage(PATH).held.requests == 0


def test_callback_stops_at_the_cost_cap_before_the_model_call_that_would_cross_it(
    ledger: Ledger,
) -> None:
    tools = Tools()
    model = scripted()
    cap = Decimal("0.02")
    with pytest.raises(BudgetExceeded) as caught:
        with RunGuard(ledger, PATH, limits=[Limit("cost_usd", cap)], pricing=Pricing()) as run:
            agent = create_agent(model, [tools.search])
            agent.invoke(
                {"messages": [HumanMessage("find it")]},
                config={"callbacks": [BudgetCallbackHandler(run)]},
            )
    error = caught.value
    assert (error.scope, error.dimension, error.limit) == (PATH, "cost_usd", cap)
    assert error.used + error.held + error.requested > cap
    # Every call that reached the model was admitted and settled; the refused one never ran.
    assert len(model.calls) == run.report.model_calls == run.report.usage.requests
    spent = ledger.usage(PATH).used.cost_usd
    assert spent is not None
    assert spent <= cap
    assert (
        spent
        == run.report.cost_usd
        == len(model.calls)
        * Pricing().price("gpt-4o", Usage(input_tokens=1000, output_tokens=50)).cost_usd
    )
    assert not ledger.usage(PATH).held.units


class _Swallowed(BudgetCallbackHandler):
    """The same handler without ``raise_error``: what LangChain does by default."""

    raise_error = False


def test_langchain_swallows_a_callback_error_unless_raise_error_is_set(ledger: Ledger) -> None:
    def five_then_done() -> Iterator[AIMessage]:
        yield from (tool_reply(i, reported(), "gpt-4o") for i in range(1, 6))
        yield AIMessage("done", usage_metadata=reported())

    # Without raise_error the refusal is only logged: the loop runs past the cap of 3.
    swallowed = Tools()
    with RunGuard(ledger, "org:acme/session:a", limits=[Limit("tool_calls", 3)]) as run:
        agent = create_agent(scripted(replies=five_then_done()), [swallowed.search])
        result = agent.invoke(
            {"messages": [HumanMessage("go")]}, config={"callbacks": [_Swallowed(run)]}
        )
    assert last(result).text == "done"
    assert len(swallowed.ran) == 5

    # BudgetCallbackHandler sets raise_error, so the same refusal ends the run.
    stopped = Tools()
    with pytest.raises(BudgetExceeded) as caught:
        with RunGuard(ledger, "org:acme/session:b", limits=[Limit("tool_calls", 3)]) as run:
            agent = create_agent(scripted(replies=five_then_done()), [stopped.search])
            agent.invoke(
                {"messages": [HumanMessage("go")]},
                config={"callbacks": [BudgetCallbackHandler(run)]},
            )
    assert caught.value.dimension == "tool_calls"
    assert len(stopped.ran) == 3


def test_callback_releases_the_hold_when_the_model_call_fails(ledger: Ledger) -> None:
    class Failing(ScriptedChatModel):
        def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
            raise ConnectionError("provider down")

    with RunGuard(ledger, PATH, limits=[Limit("cost_usd", "1")], pricing=Pricing()) as run:
        handler = BudgetCallbackHandler(run)
        with pytest.raises(ConnectionError):
            Failing(messages=iter([])).invoke("hi", config={"callbacks": [handler]})
        assert run.report.model_calls == 1
        assert not ledger.usage(PATH).held.units
    assert not ledger.usage(PATH).used.units  # released, not charged


def test_callback_reserves_the_invocation_max_tokens_before_the_call(ledger: Ledger) -> None:
    seen: list[Usage] = []

    class Peeking(ScriptedChatModel):
        def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
            seen.append(ledger.usage(PATH).held)
            return super()._generate(*args, **kwargs)

    with RunGuard(ledger, PATH, pricing=Pricing()) as run:
        model = Peeking(
            model_name="gpt-4o", messages=iter([AIMessage("hi", usage_metadata=reported(10, 5))])
        )
        model.bind(max_tokens=700).invoke(
            "a" * 300, config={"callbacks": [BudgetCallbackHandler(run)]}
        )
    assert seen[0].output_tokens == 700  # held while the call ran
    assert seen[0].input_tokens >= 100  # 300 bytes / 3, plus framing
    assert ledger.usage(PATH).used.output_tokens == 5  # then settled with what was reported
    assert ledger.usage(PATH).held.output_tokens == 0


@pytest.mark.parametrize("via", ["callback", "middleware"])
def test_each_call_holds_the_guards_estimate_of_the_whole_conversation(
    ledger: Ledger, via: str
) -> None:
    # The integrations measure each message once and give the guard the sum: at every call it
    # must be what the guard counts from the whole conversation sent, tool-call arguments, the
    # system prompt and the tool schemas included.
    sent: list[tuple[list[BaseMessage], int]] = []

    class Recording(ScriptedChatModel):
        def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
            sent.append((list(messages), ledger.usage(PATH).held.input_tokens))
            return super()._generate(messages, *args, **kwargs)

    def three_then_done() -> Iterator[AIMessage]:
        yield from (tool_reply(i, reported(), "gpt-4o") for i in range(1, 4))
        yield AIMessage("done", usage_metadata=reported())

    tools = Tools()
    model = Recording(model_name="gpt-4o", messages=three_then_done())
    with RunGuard(ledger, PATH, pricing=Pricing()) as run:
        callbacks = [BudgetCallbackHandler(run)] if via == "callback" else []
        middleware = [BudgetMiddleware(run)] if via == "middleware" else []
        agent = create_agent(
            model, [tools.search], system_prompt="Be brief.", middleware=middleware
        )
        agent.invoke({"messages": [HumanMessage("find it " * 50)]}, config={"callbacks": callbacks})
    # A callback sees the tools bound to the model; the middleware the agent's tool definitions.
    schemas = json.dumps(
        ["search"] if via == "callback" else [convert_to_openai_tool(tools.search)]
    )
    assert len(sent) == 4
    for messages, held in sent:
        prompt = [
            message.text
            + (json.dumps([{"name": c["name"], "args": c["args"]} for c in message.tool_calls]))
            if isinstance(message, AIMessage) and message.tool_calls
            else message.text
            for message in messages
        ]
        assert held == estimate_prompt_tokens([*prompt, schemas])


async def test_async_callback_handler_stops_an_async_run(aledger: AsyncLedger) -> None:
    tools = Tools()
    with pytest.raises(BudgetExceeded) as caught:
        async with AsyncRunGuard(aledger, PATH, limits=[Limit("tool_calls", 2)]) as run:
            agent = create_agent(scripted(), [tools.search])
            await agent.ainvoke(
                {"messages": [HumanMessage("go")]},
                config={"callbacks": [AsyncBudgetCallbackHandler(run)]},
            )
    assert (caught.value.dimension, caught.value.limit) == ("tool_calls", 2)
    assert tools.ran == ["q1", "q2"]
    assert (await aledger.usage(PATH)).used.tool_calls == 2


async def test_two_runs_sharing_one_scope_stop_together(aledger: AsyncLedger) -> None:
    cap = Decimal("0.05")
    await aledger.set_limit("org:acme", Limit("cost_usd", cap))
    tools = {name: Tools() for name in ("a", "b")}
    models = {name: scripted() for name in ("a", "b")}

    async def one_run(name: str) -> BudgetExceeded:
        try:
            async with AsyncRunGuard(aledger, f"org:acme/session:{name}", pricing=Pricing()) as run:
                agent = create_agent(models[name], [tools[name].search])
                await agent.ainvoke(
                    {"messages": [HumanMessage("go")]},
                    config={"callbacks": [AsyncBudgetCallbackHandler(run)]},
                )
        except BudgetExceeded as error:
            return error
        raise AssertionError("a runaway run was not stopped")

    errors = await asyncio.gather(one_run("a"), one_run("b"))
    assert [(e.scope, e.dimension) for e in errors] == [("org:acme", "cost_usd")] * 2
    assert all(models[name].calls for name in ("a", "b"))  # both ran, interleaved
    spent = (await aledger.usage("org:acme")).used.cost_usd
    assert spent is not None
    assert spent <= cap
    one_call = Pricing().price("gpt-4o", Usage(input_tokens=1000, output_tokens=50)).cost_usd
    assert spent == one_call * (len(models["a"].calls) + len(models["b"].calls))


@pytest.mark.parametrize("via", ["callback", "middleware"])
def test_cost_charged_equals_genai_prices_with_cached_and_reasoning_tokens(
    ledger: Ledger, via: str
) -> None:
    usages = [
        reported(3000, 500, cache_read=2048, reasoning=320),
        reported(5200, 900, cache_read=4096, reasoning=640),
        reported(7000, 120, cache_read=6912, reasoning=0),
    ]

    def replies() -> Iterator[AIMessage]:
        yield tool_reply(1, usages[0], "o4-mini")
        yield tool_reply(2, usages[1], "o4-mini")
        yield AIMessage(
            "answer", usage_metadata=usages[2], response_metadata={"model_name": "o4-mini"}
        )

    tools = Tools()
    model = scripted("o4-mini", replies())
    with RunGuard(ledger, PATH, limits=[Limit("cost_usd", "1")], pricing=Pricing()) as run:
        if via == "callback":
            agent = create_agent(model, [tools.search])
            config: Any = {"callbacks": [BudgetCallbackHandler(run)]}
        else:
            agent = create_agent(model, [tools.search], middleware=[BudgetMiddleware(run)])
            config = None
        result = agent.invoke({"messages": [HumanMessage("go")]}, config=config)
    assert last(result).text == "answer"
    expected = sum((genai_cost("o4-mini", u) for u in usages), Decimal(0))
    used = ledger.usage(PATH).used
    assert run.report.cost_usd == expected
    assert used.cost_usd == expected
    assert used.cache_read_tokens == 2048 + 4096 + 6912
    assert used.reasoning_tokens == 320 + 640
    assert used.input_tokens == 3000 + 5200 + 7000  # cached tokens counted once, inside input
    assert used.output_tokens == 500 + 900 + 120  # reasoning counted once, inside output
    assert run.report.models == {"o4-mini": 3}


def test_handlers_refuse_the_wrong_kind_of_guard(ledger: Ledger) -> None:
    async_guard = AsyncRunGuard(AsyncLedger("memory://"), PATH)
    with pytest.raises(InvalidInput) as caught:
        BudgetCallbackHandler(async_guard)  # type: ignore[arg-type]
    assert caught.value.field == "guard"
    with pytest.raises(InvalidInput) as caught:
        AsyncBudgetCallbackHandler(RunGuard(ledger, PATH))  # type: ignore[arg-type]
    assert caught.value.field == "guard"


@pytest.mark.parametrize("via", ["callback", "middleware"])
def test_a_streamed_agent_run_is_charged_the_usage_reported_in_the_last_chunk(
    ledger: Ledger, via: str
) -> None:
    def replies() -> Iterator[AIMessage]:
        for i in (1, 2):
            reply = tool_reply(i, reported(2000, 80, cache_read=1024), "gpt-4o")
            yield AIMessage(
                "searching",
                tool_calls=reply.tool_calls,
                usage_metadata=reply.usage_metadata,
                response_metadata=reply.response_metadata,
            )
        yield AIMessage("all done", usage_metadata=reported(2600, 30, cache_read=2048))

    tools = Tools()
    model = StreamingChatModel(model_name="gpt-4o", messages=replies())
    with RunGuard(ledger, PATH, limits=[Limit("cost_usd", "1")], pricing=Pricing()) as run:
        middleware = [BudgetMiddleware(run)] if via == "middleware" else []
        agent = create_agent(model, [tools.search], middleware=middleware)
        config: Any = {"callbacks": [BudgetCallbackHandler(run)]} if via == "callback" else {}
        tokens = [
            chunk.text
            for chunk, _ in agent.stream(
                {"messages": [HumanMessage("go")]}, config=config, stream_mode="messages"
            )
            if isinstance(chunk, AIMessageChunk)
        ]
    assert "".join(tokens) == "searchingsearchingall done"
    assert tools.ran == ["q1", "q2"]
    expected = 2 * genai_cost("gpt-4o", reported(2000, 80, cache_read=1024)) + genai_cost(
        "gpt-4o", reported(2600, 30, cache_read=2048)
    )
    assert ledger.usage(PATH).used.cost_usd == expected
    assert ledger.usage(PATH).used.cache_read_tokens == 1024 + 1024 + 2048


def test_a_stream_abandoned_early_is_still_charged(ledger: Ledger) -> None:
    replies = iter([AIMessage("a long answer that is never read", usage_metadata=reported())])
    model = StreamingChatModel(model_name="gpt-4o", messages=replies)
    with RunGuard(ledger, PATH, pricing=Pricing()) as run:
        handler = BudgetCallbackHandler(run)
        stream = model.stream("hi", config={"callbacks": [handler]})
        first = next(stream)
        stream.close()  # the consumer walks away: the provider has generated (and bills) tokens
        assert first.text == "a lo"
        assert not ledger.usage(PATH).held.units
    used = ledger.usage(PATH).used
    # No usage arrived (it comes in the last chunk), so the whole estimate held is charged.
    assert used.requests == 1
    assert used.output_tokens == 256
    assert used.cost_usd == run.report.cost_usd
    assert used.cost_usd is not None
    assert used.cost_usd > 0


@pytest.mark.parametrize("via", ["callback", "middleware"])
async def test_a_cancelled_model_call_is_charged_its_estimate(
    aledger: AsyncLedger, via: str
) -> None:
    started = asyncio.Event()

    class Hanging(ScriptedChatModel):
        async def _agenerate(self, *args: Any, **kwargs: Any) -> ChatResult:
            started.set()
            await asyncio.Event().wait()  # a provider that never answers
            raise AssertionError("unreachable")

    async with AsyncRunGuard(aledger, PATH, pricing=Pricing()) as run:
        model = Hanging(model_name="gpt-4o", messages=iter([]))
        middleware = [BudgetMiddleware(run)] if via == "middleware" else []
        agent = create_agent(model, [Tools().search], middleware=middleware)
        handler = AsyncBudgetCallbackHandler(run)
        config: Any = {"callbacks": [handler]} if via == "callback" else {}
        task = asyncio.create_task(agent.ainvoke({"messages": [HumanMessage("go")]}, config))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        if via == "callback":
            # LangChain never reports the end of a cancelled call to callbacks: charge it.
            assert await handler.charge_unfinished() == 1
        assert not (await aledger.usage(PATH)).held.units
    used = (await aledger.usage(PATH)).used
    assert used.requests == 1
    assert used.output_tokens == 256  # the estimate held for it
    assert used.cost_usd == run.report.cost_usd


# -- the middleware -------------------------------------------------------------------------------


def test_middleware_ends_gracefully_at_the_tool_cap(ledger: Ledger) -> None:
    tools = Tools()
    model = scripted()
    with RunGuard(ledger, PATH, limits=[Limit("tool_calls", 3)], pricing=Pricing()) as run:
        agent = create_agent(model, [tools.search], middleware=[BudgetMiddleware(run)])
        result = agent.invoke({"messages": [HumanMessage("go")]})
    final = last(result)
    assert not final.tool_calls
    # The budget was out: the next model step answered with the final message, calling nothing.
    assert len(model.calls) == run.report.usage.requests == 4
    fields = final.response_metadata[EXHAUSTED_KEY]
    assert (fields["scope"], fields["dimension"], fields["limit"]) == (PATH, "tool_calls", "3")
    assert fields["summary"] is False
    assert tools.ran == ["q1", "q2", "q3"]
    # The refused fourth call got an error ToolMessage instead of running.
    refused = [m for m in result["messages"] if m.type == "tool" and m.status == "error"]
    assert len(refused) == 1
    assert run.report.status == "stopped"
    assert run.report.stopped_by is not None
    assert run.report.stopped_by.dimension == "tool_calls"
    assert ledger.usage(PATH).used.tool_calls == 3


def test_middleware_ends_gracefully_at_the_cost_cap_before_the_call_that_would_cross_it(
    ledger: Ledger,
) -> None:
    tools = Tools()
    model = scripted()
    cap = Decimal("0.02")
    with RunGuard(ledger, PATH, limits=[Limit("cost_usd", cap)], pricing=Pricing()) as run:
        agent = create_agent(model, [tools.search], middleware=[BudgetMiddleware(run)])
        result = agent.invoke({"messages": [HumanMessage("go")]})
    fields = last(result).response_metadata[EXHAUSTED_KEY]
    assert (fields["dimension"], fields["limit"]) == ("cost_usd", str(cap))
    assert len(model.calls) == run.report.usage.requests == len(tools.ran)
    spent = ledger.usage(PATH).used.cost_usd
    assert spent is not None
    assert spent <= cap
    assert run.report.status == "stopped"


def test_middleware_raises_with_exit_behavior_error(ledger: Ledger) -> None:
    tools = Tools()
    with pytest.raises(BudgetExceeded) as caught:
        with RunGuard(ledger, PATH, limits=[Limit("tool_calls", 2)]) as run:
            middleware = BudgetMiddleware(run, exit_behavior="error")
            agent = create_agent(scripted(), [tools.search], middleware=[middleware])
            agent.invoke({"messages": [HumanMessage("go")]})
    assert (caught.value.dimension, caught.value.limit) == ("tool_calls", 2)
    assert tools.ran == ["q1", "q2"]


def test_middleware_downgrades_the_model_at_the_threshold(ledger: Ledger) -> None:
    tools = Tools()
    strong = scripted("gpt-4o")
    cheap = scripted("gpt-4o-mini")
    cheap.max_tokens = 128  # its own setting, not the strong model's 256
    cheap.peek = lambda: ledger.usage(PATH).held.output_tokens
    policy = Policy(ladder=[Degrade.downgrade(to="gpt-4o-mini", at=0.5, dimension="requests")])
    limits = [Limit("requests", 10), Limit("tool_calls", 7)]
    with RunGuard(ledger, PATH, limits=limits, pricing=Pricing(), policy=policy) as run:
        middleware = BudgetMiddleware(run, models={"gpt-4o-mini": cheap})
        agent = create_agent(strong, [tools.search], middleware=[middleware])
        result = agent.invoke({"messages": [HumanMessage("go")]})
    assert last(result).response_metadata[EXHAUSTED_KEY]["dimension"] == "tool_calls"
    # The fifth admission brought requests to 5/10: calls 1-5 ran on gpt-4o, later ones on mini.
    assert len(strong.calls) == 5
    assert len(cheap.calls) == 3
    assert run.report.models == {"gpt-4o": 5, "gpt-4o-mini": 3}
    # Each cheap call was sent, and reserved, with the cheap model's own max_tokens.
    assert [(c["max_tokens"], c["seen"]) for c in cheap.calls] == [(128, 128)] * 3
    assert [r.action for r in run.report.degradations] == ["downgrade"]
    mini = Pricing().price("gpt-4o-mini", Usage(input_tokens=1000, output_tokens=50)).cost_usd
    big = Pricing().price("gpt-4o", Usage(input_tokens=1000, output_tokens=50)).cost_usd
    assert ledger.usage(PATH).used.cost_usd == 5 * big + 3 * mini


def test_middleware_clamps_max_tokens_to_what_the_budget_affords(ledger: Ledger) -> None:
    tools = Tools()
    model = scripted()
    policy = Policy(clamp_max_tokens=True)
    limits = [Limit("output_tokens", 1000), Limit("tool_calls", 30)]
    with RunGuard(ledger, PATH, limits=limits, pricing=Pricing(), policy=policy) as run:
        model.max_tokens = 400
        agent = create_agent(
            model,
            [tools.search],
            middleware=[BudgetMiddleware(run, exit_behavior="end")],
        )
        agent.invoke({"messages": [HumanMessage("go")]})
    sent = [call["max_tokens"] for call in model.calls]
    assert sent[0] == 400
    assert sent == sorted(sent, reverse=True)
    assert min(sent) < 400  # clamped once the room left was smaller than asked for
    assert ledger.usage(PATH).used.output_tokens <= 1000


def test_middleware_runs_one_wrap_up_call_within_the_summary_reserve(ledger: Ledger) -> None:
    tools = Tools()
    model = scripted(replies=iter([]))
    model.messages = tools_or_text(model, "Searched q1..qN; nothing found yet.")
    cap = Decimal("0.05")
    policy = Policy(
        on_exhausted="summary",
        summary_reserve=Usage(input_tokens=3000, output_tokens=200, requests=1),
        summary_model="gpt-4o",
    )
    with RunGuard(
        ledger, PATH, limits=[Limit("cost_usd", cap)], pricing=Pricing(), policy=policy
    ) as run:
        agent = create_agent(model, [tools.search], middleware=[BudgetMiddleware(run)])
        result = agent.invoke({"messages": [HumanMessage("go")]})
    final = last(result)
    assert not final.tool_calls
    assert "Searched q1..qN" in final.text
    assert final.response_metadata[EXHAUSTED_KEY]["summary"] is True
    assert model.calls[-1]["tools"] == []  # the wrap-up call was offered no tools
    assert model.calls[-1]["max_tokens"] == 200  # and the reserve's output cap
    assert all(call["tools"] == ["search"] for call in model.calls[:-1])
    assert run.report.wrapped_up is True
    assert run.report.status == "stopped"
    spent = ledger.usage(PATH).used.cost_usd
    assert spent is not None
    assert spent <= cap


def test_a_refusal_at_admission_turns_the_call_into_the_wrap_up(ledger: Ledger) -> None:
    # A requests cap gives the plan no warning (it clamps only token and cost room), so the
    # refusal comes at admission; the guard admits the call under the reserve instead, and the
    # middleware rewrites it into the wrap-up request before it is sent.
    tools = Tools()
    model = scripted(replies=iter([]))
    model.messages = tools_or_text(model, "Two searches, no answer yet.")
    policy = Policy(
        on_exhausted="summary",
        summary_reserve=Usage(input_tokens=2000, output_tokens=150, requests=1),
    )
    with RunGuard(ledger, PATH, limits=[Limit("requests", 3)], policy=policy) as run:
        agent = create_agent(model, [tools.search], middleware=[BudgetMiddleware(run)])
        result = agent.invoke({"messages": [HumanMessage("go")]})
    assert [bool(call["tools"]) for call in model.calls] == [True, True, False]
    assert model.calls[-1]["max_tokens"] == 150
    final = last(result)
    assert not final.tool_calls
    assert final.response_metadata[EXHAUSTED_KEY]["dimension"] == "requests"
    assert final.response_metadata[EXHAUSTED_KEY]["summary"] is True
    assert "Two searches, no answer yet." in final.text
    assert run.report.wrapped_up is True
    assert ledger.usage(PATH).used.requests == 3


def test_middleware_stops_offering_tools_once_stop_tools_fires(ledger: Ledger) -> None:
    tools = Tools()
    model = scripted(replies=iter([]))
    model.messages = tools_or_text(model, "final answer from context")
    policy = Policy(ladder=[Degrade.stop_tools(at=0.4, dimension="requests")])
    with RunGuard(ledger, PATH, limits=[Limit("requests", 10)], policy=policy) as run:
        agent = create_agent(model, [tools.search], middleware=[BudgetMiddleware(run)])
        result = agent.invoke({"messages": [HumanMessage("go")]})
    assert last(result).text == "final answer from context"
    # The rung fired at the fourth admission (4/10 requests): that call's tool call was refused
    # (an error ToolMessage), and the fifth call was offered no tools.
    assert [bool(call["tools"]) for call in model.calls] == [True] * 4 + [False]
    assert len(tools.ran) == 3
    refused = [m for m in result["messages"] if m.type == "tool" and m.status == "error"]
    assert len(refused) == 1
    assert run.report.status == "completed"


def test_middleware_counts_sub_agent_tools_as_hops(ledger: Ledger) -> None:
    tools = Tools()
    model = scripted(replies=runaway(name="delegate"))
    with RunGuard(ledger, PATH, limits=[Limit("agent_hops", 2)]) as run:
        middleware = BudgetMiddleware(run, subagent_tools={"delegate"})
        agent = create_agent(model, [tools.delegate], middleware=[middleware])
        result = agent.invoke({"messages": [HumanMessage("go")]})
    assert last(result).response_metadata[EXHAUSTED_KEY]["dimension"] == "agent_hops"
    assert tools.ran == ["delegate:q1", "delegate:q2"]
    assert ledger.usage(PATH).used.agent_hops == 2


async def test_async_middleware_ends_gracefully(aledger: AsyncLedger) -> None:
    tools = Tools()
    async with AsyncRunGuard(aledger, PATH, limits=[Limit("tool_calls", 2)]) as run:
        agent = create_agent(scripted(), [tools.search], middleware=[BudgetMiddleware(run)])
        result = await agent.ainvoke({"messages": [HumanMessage("go")]})
    assert last(result).response_metadata[EXHAUSTED_KEY]["dimension"] == "tool_calls"
    assert tools.ran == ["q1", "q2"]
    assert run.report.status == "stopped"


async def test_middleware_refuses_a_sync_guard_in_an_async_run(ledger: Ledger) -> None:
    with RunGuard(ledger, PATH) as run:
        agent = create_agent(scripted(), [Tools().search], middleware=[BudgetMiddleware(run)])
        with pytest.raises(InvalidInput) as caught:
            await agent.ainvoke({"messages": [HumanMessage("go")]})
    assert caught.value.field == "guard"


@pytest.mark.parametrize("via", ["callback", "middleware"])
def test_parallel_tool_calls_in_one_turn_are_admitted_up_to_the_cap(
    ledger: Ledger, via: str
) -> None:
    def three_at_once() -> Iterator[AIMessage]:
        yield AIMessage(
            content="",
            tool_calls=[
                {"name": "search", "args": {"q": f"p{i}"}, "id": f"p{i}"} for i in range(3)
            ],
            usage_metadata=reported(),
        )
        yield AIMessage("done", usage_metadata=reported())

    tools = Tools()
    with RunGuard(ledger, PATH, limits=[Limit("tool_calls", 2)]) as run:
        if via == "callback":
            agent = create_agent(scripted(replies=three_at_once()), [tools.search])
            with pytest.raises(BudgetExceeded) as caught:
                agent.invoke(
                    {"messages": [HumanMessage("go")]},
                    config={"callbacks": [BudgetCallbackHandler(run)]},
                )
            assert caught.value.dimension == "tool_calls"
        else:
            middleware = [BudgetMiddleware(run)]
            agent = create_agent(
                scripted(replies=three_at_once()), [tools.search], middleware=middleware
            )
            result = agent.invoke({"messages": [HumanMessage("go")]})
            assert last(result).response_metadata[EXHAUSTED_KEY]["dimension"] == "tool_calls"
    # The three calls ran on LangChain's executor threads; exactly two were admitted.
    assert len(tools.ran) == 2
    assert ledger.usage(PATH).used.tool_calls == 2


def test_middleware_goes_on_after_an_escalation_grant(ledger: Ledger) -> None:
    tools = Tools()
    model = scripted()
    asked: list[BudgetExceeded] = []

    def escalate(error: BudgetExceeded) -> Grant | None:
        asked.append(error)
        return Grant(amount=Decimal("0.01"), reason="approved") if len(asked) == 1 else None

    policy = Policy(on_exhausted="escalate", escalate=escalate)
    cap = Decimal("0.02")
    with RunGuard(
        ledger, PATH, limits=[Limit("cost_usd", cap)], pricing=Pricing(), policy=policy
    ) as run:
        agent = create_agent(model, [tools.search], middleware=[BudgetMiddleware(run)])
        result = agent.invoke({"messages": [HumanMessage("go")]})
    assert len(asked) == 2  # granted once, refused the second time
    assert [(g.dimension, g.new_limit) for g in run.report.grants] == [
        ("cost_usd", Decimal("0.03"))
    ]
    assert last(result).response_metadata[EXHAUSTED_KEY]["limit"] == "0.03"
    spent = ledger.usage(PATH).used.cost_usd
    assert spent is not None
    assert cap < spent <= Decimal("0.03")  # the grant let the run go past the first cap
    assert run.report.status == "stopped"


# -- the example ----------------------------------------------------------------------------------


def test_the_example_runs_offline_and_ends_within_its_cap(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "examples" / "langchain_budget.py"
    url = f"sqlite:///{tmp_path}/example.db"
    done = subprocess.run(
        [sys.executable, str(example), "--ledger", url, "--cap", "0.10"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert lines["status"] == "stopped (cost_usd on org:demo/session:1)"
    assert lines["wrapped up"] == "True"
    assert lines["budget_exhausted"] == "True"
    models = dict(item.split("=") for item in lines["model calls"].split(", "))
    assert int(models["gpt-4o"]) >= 1
    assert int(models["gpt-4o-mini"]) >= 1  # downgraded at 50%
    spent = Decimal(lines["spent"].split(" of ")[0])
    assert spent <= Decimal("0.10")
    with Ledger(url) as ledger:  # what the example printed is what the ledger file holds
        assert ledger.usage("org:demo/session:1").used.cost_usd == spent
