"""LiteLLM under a budget, driven through the real ``litellm.completion`` / ``acompletion``.

Offline throughout: LiteLLM's own ``mock_response`` (a string, or a ``ModelResponse`` carrying a
full usage block), and for Anthropic a mocked HTTP transport that answers with a recorded
Messages API body, so LiteLLM's real request building and usage mapping run. Expected costs are
computed independently with the ``genai_prices`` package, never read back from budgeteer.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import httpx
import litellm
import pytest
from litellm import ModelResponse
from litellm.llms.custom_httpx.http_handler import HTTPHandler

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
    RunGuard,
    Usage,
    estimate_prompt_tokens,
)
from budgeteer.guard import BYTES_PER_TOKEN
from budgeteer.integrations.litellm import (
    DEFAULT_SUMMARY_PROMPT,
    AsyncBudgetedLiteLLM,
    BudgetedLiteLLM,
    LiteLLMPricing,
    acompletion,
    completion,
)
from budgeteer.testing import FakeClock

ROOT = Path(__file__).resolve().parents[2]
PATH = "org:acme/run:1"
MESSAGES = [{"role": "user", "content": "Keep going until the task is done."}]
TEXT = "The quick brown fox jumps over the lazy dog, twice over."
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]


def genai_cost(model: str, provider: str, **tokens: int) -> Decimal:
    """The genai-prices price of a usage, computed by genai-prices itself."""
    price = genai_prices.calc_price(
        genai_prices.Usage(**tokens), model_ref=model, provider_id=provider
    )
    return Decimal(price.total_price)


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'b.db'}"


@pytest.fixture
def ledger(url: str) -> Iterator[Ledger]:
    led = Ledger(url, clock=FakeClock())
    yield led
    led.close()


@pytest.fixture
async def aledger(url: str) -> AsyncIterator[AsyncLedger]:
    led = AsyncLedger(url, clock=FakeClock())
    yield led
    await led.close()


class AnthropicAPI:
    """A mocked HTTP transport answering every Messages API call with one recorded body."""

    def __init__(
        self, usage: dict[str, int], *, tool_use: bool = False, honour_max_tokens: bool = False
    ) -> None:
        self.honour_max_tokens = honour_max_tokens
        content: list[dict[str, Any]] = [
            {"type": "thinking", "thinking": "Let me think this through.", "signature": "s1"},
            {"type": "text", "text": "Working on it."},
        ]
        if tool_use:
            content.append(
                {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"q": "x"}}
            )
        self.body = {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": content,
            "stop_reason": "tool_use" if tool_use else "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        self.requests.append(sent)
        body = self.body
        if self.honour_max_tokens:  # a real model stops at max_tokens
            usage = dict(body["usage"])
            usage["output_tokens"] = min(usage["output_tokens"], sent["max_tokens"])
            body = {**body, "usage": usage}
        return httpx.Response(200, json=body)

    def client(self) -> HTTPHandler:
        return HTTPHandler(client=httpx.Client(transport=httpx.MockTransport(self)))

    def kwargs(self) -> dict[str, Any]:
        return {
            "model": "anthropic/claude-sonnet-4-5",
            "api_key": "sk-test",
            "client": self.client(),
        }


def reasoning_response(model: str = "o3-mini") -> ModelResponse:
    """An OpenAI-shaped response with cached prompt tokens and reasoning tokens."""
    return ModelResponse(
        model=model,
        choices=[
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "42"}}
        ],
        usage={
            "prompt_tokens": 1200,
            "completion_tokens": 900,
            "total_tokens": 2100,
            "prompt_tokens_details": {"cached_tokens": 1024},
            "completion_tokens_details": {"reasoning_tokens": 850},
        },
    )


# -- runaway loops ---------------------------------------------------------------------------


def test_runaway_model_loop_stops_before_the_call_that_would_cross_the_cost_cap(
    ledger: Ledger,
) -> None:
    api = AnthropicAPI({"input_tokens": 50, "output_tokens": 100})
    cap = Decimal("0.01")
    # Expected independently: each call commits its genai-prices price; the next is admitted
    # only while committed + its estimate (prompt estimate in, max_tokens out) fits the cap.
    per_call = genai_cost("claude-sonnet-4-5", "anthropic", input_tokens=50, output_tokens=100)
    estimate = genai_cost(
        "claude-sonnet-4-5",
        "anthropic",
        input_tokens=estimate_prompt_tokens(MESSAGES),
        output_tokens=200,
    )
    expected_calls = math.floor((cap - estimate) / per_call) + 1
    with pytest.raises(BudgetExceeded) as caught:
        with RunGuard(
            ledger, PATH, limits=[Limit("cost_usd", cap)], pricing=LiteLLMPricing()
        ) as run:
            llm = BudgetedLiteLLM(run)
            for _ in range(100):
                llm.completion(messages=MESSAGES, max_tokens=200, **api.kwargs())
    error = caught.value
    assert len(api.requests) == expected_calls  # the refused call never reached the API
    assert (error.scope, error.dimension, error.limit) == (PATH, "cost_usd", cap)
    assert error.used == per_call * expected_calls
    assert error.used <= cap < error.actual
    assert ledger.usage(PATH).used.cost_usd == per_call * expected_calls
    assert ledger.usage(PATH).held.requests == 0
    assert run.report.status == "stopped"
    assert run.report.stopped_by is error


def test_runaway_tool_loop_stops_at_the_tool_cap(ledger: Ledger) -> None:
    api = AnthropicAPI({"input_tokens": 40, "output_tokens": 30}, tool_use=True)
    ran: list[str] = []
    with pytest.raises(BudgetExceeded) as caught:
        with RunGuard(
            ledger, PATH, limits=[Limit("tool_calls", 3)], pricing=LiteLLMPricing()
        ) as run:
            llm = BudgetedLiteLLM(run)
            while True:
                response = llm.completion(
                    messages=MESSAGES, tools=TOOLS, max_tokens=64, **api.kwargs()
                )
                ran.extend(call.function.name for call in llm.admit_tool_calls(response))
    assert ran == ["search"] * 3  # the fourth tool call was refused before it ran
    assert len(api.requests) == 4
    assert (caught.value.dimension, caught.value.limit, caught.value.used) == ("tool_calls", 3, 3)
    assert ledger.usage(PATH).used.tool_calls == 3


async def test_two_loops_sharing_one_scope_stop_together(aledger: AsyncLedger) -> None:
    await aledger.set_limit("org:acme", Limit("requests", 7))
    calls = {"run:a": 0, "run:b": 0}

    async def loop(name: str) -> BudgetExceeded:
        async with AsyncRunGuard(aledger, f"org:acme/{name}", pricing=LiteLLMPricing()) as run:
            llm = AsyncBudgetedLiteLLM(run)
            try:
                while True:
                    await llm.acompletion(model="gpt-4o", messages=MESSAGES, mock_response="ok")
                    calls[name] += 1
                    await asyncio.sleep(0)
            except BudgetExceeded as error:
                return error

    refusals = await asyncio.gather(loop("run:a"), loop("run:b"))
    assert sum(calls.values()) == 7
    assert min(calls.values()) >= 3  # both ran, interleaved
    for error in refusals:
        # The other loop may hold its last request in flight when this one is refused.
        assert (error.scope, error.dimension, error.limit) == ("org:acme", "requests", 7)
        assert error.used + error.held == 7
    shared = await aledger.usage("org:acme")
    assert shared.used.requests == 7
    assert shared.held.requests == 0


# -- exact prices --------------------------------------------------------------------------------


def test_cached_and_reasoning_tokens_are_priced_once_by_genai_prices(ledger: Ledger) -> None:
    with RunGuard(ledger, PATH, pricing=LiteLLMPricing()) as run:
        BudgetedLiteLLM(run).completion(
            model="o3-mini", messages=MESSAGES, mock_response=reasoning_response()
        )
    expected = genai_cost(
        "o3-mini", "openai", input_tokens=1200, cache_read_tokens=1024, output_tokens=900
    )
    used = ledger.usage(PATH).used
    assert used.cost_usd == expected
    assert (used.input_tokens, used.cache_read_tokens) == (1200, 1024)
    assert (used.output_tokens, used.reasoning_tokens) == (900, 850)
    assert run.report.models == {"o3-mini": 1}


def test_anthropic_cache_reads_writes_and_thinking_through_litellm(ledger: Ledger) -> None:
    api = AnthropicAPI(
        {
            "input_tokens": 100,
            "cache_read_input_tokens": 2000,
            "cache_creation_input_tokens": 500,
            "output_tokens": 300,
        }
    )
    with RunGuard(ledger, PATH, pricing=LiteLLMPricing()) as run:
        response = BudgetedLiteLLM(run).completion(
            messages=MESSAGES, max_tokens=1000, **api.kwargs()
        )
    # Anthropic's input_tokens excludes the cache; LiteLLM adds it back into prompt_tokens.
    expected = genai_cost(
        "claude-sonnet-4-5",
        "anthropic",
        input_tokens=2600,
        cache_read_tokens=2000,
        cache_write_tokens=500,
        output_tokens=300,
    )
    used = ledger.usage(PATH).used
    assert used.cost_usd == expected
    assert (used.input_tokens, used.cache_read_tokens, used.cache_write_tokens) == (2600, 2000, 500)
    # Thinking is inside output_tokens: LiteLLM's reasoning count is kept, never added.
    reasoning = response.usage.completion_tokens_details.reasoning_tokens
    assert reasoning > 0
    assert (used.output_tokens, used.reasoning_tokens) == (300, reasoning)
    assert api.requests[0]["max_tokens"] == 1000


def test_one_hour_cache_writes_are_priced_at_their_own_rate(ledger: Ledger) -> None:
    api = AnthropicAPI(
        {
            "input_tokens": 100,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 500,
            "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 300},
            "output_tokens": 50,
        }
    )
    with RunGuard(ledger, PATH, pricing=LiteLLMPricing()) as run:
        BudgetedLiteLLM(run).completion(messages=MESSAGES, max_tokens=100, **api.kwargs())
    tokens = {"input_tokens": 600, "cache_write_tokens": 500, "output_tokens": 50}
    one_hour = genai_cost("claude-sonnet-4-5", "anthropic", **tokens, cache_write_1h_tokens=300)
    five_minutes = genai_cost("claude-sonnet-4-5", "anthropic", **tokens)
    assert one_hour > five_minutes
    assert ledger.usage(PATH).used.cost_usd == one_hour


def test_a_model_litellm_prices_at_zero_is_charged_its_real_price(ledger: Ledger) -> None:
    with RunGuard(ledger, PATH, pricing=LiteLLMPricing()) as run:
        response = BudgetedLiteLLM(run).completion(
            model="codestral/codestral-latest", messages=MESSAGES, mock_response="def f(): ..."
        )
    expected = genai_cost(
        "codestral-latest",
        "mistral",
        input_tokens=response.usage.prompt_tokens,
        output_tokens=response.usage.completion_tokens,
    )
    assert response._hidden_params["response_cost"] == 0
    assert expected > 0
    assert ledger.usage(PATH).used.cost_usd == expected


def test_unusable_usage_charges_the_estimate_and_returns_the_response(ledger: Ledger) -> None:
    broken = reasoning_response("gpt-4o")
    broken.usage.prompt_tokens_details.cached_tokens = 5000  # more than the prompt: nonsense
    with RunGuard(ledger, PATH, pricing=LiteLLMPricing()) as run:
        response = BudgetedLiteLLM(run).completion(
            model="gpt-4o", messages=MESSAGES, max_tokens=64, mock_response=broken
        )
    assert response is broken
    used = ledger.usage(PATH).used
    assert (used.input_tokens, used.output_tokens) == (estimate_prompt_tokens(MESSAGES), 64)
    assert used.cost_usd == genai_cost(
        "gpt-4o", "openai", input_tokens=estimate_prompt_tokens(MESSAGES), output_tokens=64
    )


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("gpt-4o", "openai"),
        ("anthropic/claude-sonnet-4-5", "anthropic"),
        ("claude-sonnet-4-5", "anthropic"),
        ("gemini/gemini-2.5-pro", "google"),
        ("codestral/codestral-latest", "mistral"),
        ("groq/llama-3.3-70b-versatile", "groq"),
        ("deepseek/deepseek-chat", "deepseek"),
        ("xai/grok-3", "x-ai"),
    ],
)
def test_litellm_names_pick_genai_prices_provider(model: str, provider: str) -> None:
    price = LiteLLMPricing().price(model, Usage(input_tokens=1000, output_tokens=1000))
    assert price.metadata()["provider"] == provider
    assert price.cost_usd is not None
    assert price.cost_usd > 0


# -- streams -------------------------------------------------------------------------------------


def test_streamed_call_is_settled_from_the_final_usage_chunk(ledger: Ledger) -> None:
    with RunGuard(ledger, PATH, pricing=LiteLLMPricing()) as run:
        stream = BudgetedLiteLLM(run).completion(
            model="gpt-4o", messages=MESSAGES, mock_response=TEXT, stream=True
        )
        chunks = list(stream)
    # The caller did not ask for usage; the wrapper did, and the last chunk carries it.
    reported = chunks[-1].usage
    assert reported is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT
    expected = genai_cost(
        "gpt-4o",
        "openai",
        input_tokens=reported.prompt_tokens,
        output_tokens=reported.completion_tokens,
    )
    assert stream.settled is not None
    assert stream.settled.output_tokens == reported.completion_tokens
    assert ledger.usage(PATH).used.cost_usd == expected


def anthropic_sse(usage: dict[str, int], output_tokens: int, texts: list[str]) -> bytes:
    """A recorded Messages API event stream: usage in message_start, output in message_delta."""
    start = {
        "id": "msg_02",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    events += [
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}},
        )
        for t in texts
    ]
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in events).encode()


def test_anthropic_stream_with_cache_is_settled_from_its_usage(ledger: Ledger) -> None:
    sse = anthropic_sse(
        {
            "input_tokens": 100,
            "cache_read_input_tokens": 2000,
            "cache_creation_input_tokens": 500,
            "output_tokens": 1,
        },
        300,
        ["Hello there, ", "world."],
    )
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=sse)

    client = HTTPHandler(client=httpx.Client(transport=httpx.MockTransport(handler)))
    with RunGuard(ledger, PATH, pricing=LiteLLMPricing()) as run:
        stream = BudgetedLiteLLM(run).completion(
            model="anthropic/claude-sonnet-4-5",
            messages=MESSAGES,
            max_tokens=500,
            stream=True,
            api_key="sk-test",
            client=client,
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello there, world."
    assert sent[0]["stream"] is True
    used = ledger.usage(PATH).used
    assert (used.input_tokens, used.cache_read_tokens, used.cache_write_tokens) == (2600, 2000, 500)
    assert used.output_tokens == 300
    assert used.cost_usd == genai_cost(
        "claude-sonnet-4-5",
        "anthropic",
        input_tokens=2600,
        cache_read_tokens=2000,
        cache_write_tokens=500,
        output_tokens=300,
    )


def test_a_failed_call_releases_its_hold_and_charges_nothing(ledger: Ledger) -> None:
    def overloaded(request: httpx.Request) -> httpx.Response:
        del request
        return httpx.Response(
            529, json={"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
        )

    client = HTTPHandler(client=httpx.Client(transport=httpx.MockTransport(overloaded)))
    with RunGuard(ledger, PATH, pricing=LiteLLMPricing()) as run:
        with pytest.raises(litellm.InternalServerError):
            BudgetedLiteLLM(run).completion(
                model="anthropic/claude-sonnet-4-5",
                messages=MESSAGES,
                max_tokens=100,
                api_key="sk-test",
                client=client,
                num_retries=0,
            )
        assert ledger.usage(PATH).held.requests == 0
    assert ledger.usage(PATH).used.requests == 0


def _expected_abandoned(chunks: list[Any]) -> tuple[int, int]:
    generated = "".join(c.choices[0].delta.content or "" for c in chunks)
    output = max(len(chunks), math.ceil(len(generated.encode()) / BYTES_PER_TOKEN))
    return estimate_prompt_tokens(MESSAGES), output


@pytest.mark.parametrize("how", ["close", "with", "garbage"])
def test_abandoned_stream_is_charged_for_what_it_generated(ledger: Ledger, how: str) -> None:
    seen: list[Any] = []
    with RunGuard(ledger, PATH, pricing=LiteLLMPricing()) as run:
        llm = BudgetedLiteLLM(run)
        stream = llm.completion(
            model="gpt-4o", messages=MESSAGES, mock_response=TEXT, stream=True, max_tokens=500
        )
        if how == "with":
            with stream:
                for chunk in stream:
                    seen.append(chunk)
                    if len(seen) == 2:
                        break
        else:
            seen.extend([next(stream), next(stream)])
            if how == "close":
                stream.close()
            else:
                del stream
                gc.collect()
        assert ledger.usage(PATH).held.requests == 0  # settled inside the run
    input_tokens, output_tokens = _expected_abandoned(seen)
    used = ledger.usage(PATH).used
    assert (used.input_tokens, used.output_tokens, used.requests) == (
        input_tokens,
        output_tokens,
        1,
    )
    assert used.output_tokens < len(TEXT)  # not the whole answer, not the 500 reserved
    assert used.cost_usd == genai_cost(
        "gpt-4o", "openai", input_tokens=input_tokens, output_tokens=output_tokens
    )


def test_stream_closed_after_its_run_ended_is_still_charged_without_a_price(
    ledger: Ledger,
) -> None:
    with RunGuard(ledger, PATH, pricing=LiteLLMPricing()) as run:
        stream = BudgetedLiteLLM(run).completion(
            model="gpt-4o", messages=MESSAGES, mock_response=TEXT, stream=True
        )
        seen = [next(stream)]
    stream.close()
    _, output_tokens = _expected_abandoned(seen)
    after = ledger.usage(PATH)
    assert after.used.output_tokens == output_tokens
    assert after.cost_unknown  # never shown as a true $0


async def test_async_stream_complete_and_abandoned(aledger: AsyncLedger) -> None:
    async with AsyncRunGuard(aledger, PATH, pricing=LiteLLMPricing()) as run:
        llm = AsyncBudgetedLiteLLM(run)
        stream = await llm.acompletion(
            model="gpt-4o", messages=MESSAGES, mock_response=TEXT, stream=True
        )
        chunks = [chunk async for chunk in stream]
        reported = chunks[-1].usage
        abandoned = await llm.acompletion(
            model="gpt-4o", messages=MESSAGES, mock_response=TEXT, stream=True
        )
        async with abandoned:
            seen = [await abandoned.__anext__()]
    input_tokens, output_tokens = _expected_abandoned(seen)
    expected = genai_cost(
        "gpt-4o",
        "openai",
        input_tokens=reported.prompt_tokens,
        output_tokens=reported.completion_tokens,
    ) + genai_cost("gpt-4o", "openai", input_tokens=input_tokens, output_tokens=output_tokens)
    used = (await aledger.usage(PATH)).used
    assert used.requests == 2
    assert used.output_tokens == reported.completion_tokens + output_tokens
    assert used.cost_usd == expected


async def test_async_stream_dropped_unclosed_is_charged_on_the_loop(aledger: AsyncLedger) -> None:
    async with AsyncRunGuard(aledger, PATH, pricing=LiteLLMPricing()) as run:
        stream = await AsyncBudgetedLiteLLM(run).acompletion(
            model="gpt-4o", messages=MESSAGES, mock_response=TEXT, stream=True
        )
        seen = [await stream.__anext__(), await stream.__anext__()]
        del stream
        gc.collect()
        for _ in range(5):  # the settlement runs as a task on this loop
            await asyncio.sleep(0)
        assert (await aledger.usage(PATH)).held.requests == 0
    input_tokens, output_tokens = _expected_abandoned(seen)
    used = (await aledger.usage(PATH)).used
    assert (used.input_tokens, used.output_tokens) == (input_tokens, output_tokens)
    assert used.cost_usd == genai_cost(
        "gpt-4o", "openai", input_tokens=input_tokens, output_tokens=output_tokens
    )


# -- the policy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "sent_as", "genai"),
    [
        ("gpt-4o-mini", "gpt-4o-mini", ("gpt-4o-mini", "openai")),
        # Another provider, named the LiteLLM way: routed and priced as that provider's model.
        ("anthropic/claude-haiku-4-5", "claude-haiku-4-5", ("claude-haiku-4-5", "anthropic")),
    ],
)
def test_downgrade_happens_at_the_threshold(
    ledger: Ledger, target: str, sent_as: str, genai: tuple[str, str]
) -> None:
    cap = Decimal("0.01")
    policy = Policy(ladder=[Degrade.downgrade(to=target, at=0.5)])
    # Mock responses report 10 prompt and 20 completion tokens. The rung fires at the first
    # admission whose committed + held cost reaches half the cap; the next call is downgraded.
    per_call = genai_cost("gpt-4o", "openai", input_tokens=10, output_tokens=20)
    estimate = genai_cost(
        "gpt-4o", "openai", input_tokens=estimate_prompt_tokens(MESSAGES), output_tokens=100
    )
    firing = next(i for i in range(1, 100) if ((i - 1) * per_call + estimate) / cap >= 0.5)
    models: list[str] = []
    with RunGuard(
        ledger, PATH, limits=[Limit("cost_usd", cap)], pricing=LiteLLMPricing(), policy=policy
    ) as run:
        llm = BudgetedLiteLLM(run)
        for _ in range(firing + 3):
            response = llm.completion(
                model="gpt-4o", messages=MESSAGES, max_tokens=100, mock_response="ok"
            )
            models.append(response.model)
    assert models == ["gpt-4o"] * firing + [sent_as] * 3
    assert run.report.models == {"gpt-4o": firing, target: 3}
    cheaper = genai_cost(*genai, input_tokens=10, output_tokens=20)
    assert ledger.usage(PATH).used.cost_usd == per_call * firing + cheaper * 3


def test_max_tokens_sent_is_clamped_to_what_the_budget_affords(ledger: Ledger) -> None:
    api = AnthropicAPI({"input_tokens": 20, "output_tokens": 100}, honour_max_tokens=True)
    planned: list[int | None] = []
    with pytest.raises(BudgetExceeded) as caught:
        with RunGuard(
            ledger,
            PATH,
            limits=[Limit("output_tokens", 500)],
            pricing=LiteLLMPricing(),
            policy=Policy(),
        ) as run:
            llm = BudgetedLiteLLM(run)
            for _ in range(30):
                model = "anthropic/claude-sonnet-4-5"
                planned.append(run.plan_call(model, prompt=MESSAGES, max_tokens=400).max_tokens)
                llm.completion(messages=MESSAGES, max_tokens=400, **api.kwargs())
    sent = [body["max_tokens"] for body in api.requests]
    assert sent == planned[: len(sent)]  # what LiteLLM sent is the policy's clamp
    # Each call may write at most what the 500 output tokens still leave (100 used per call).
    assert sent == [min(400, 500 - 100 * done) for done in range(5)]
    assert ledger.usage(PATH).used.output_tokens == 500
    assert caught.value.dimension == "output_tokens"


def test_stop_tools_turns_tools_off_and_refuses_tool_calls(ledger: Ledger) -> None:
    api = AnthropicAPI({"input_tokens": 20, "output_tokens": 10}, tool_use=True)
    policy = Policy(ladder=[Degrade.stop_tools(at=0.5, dimension="requests")])
    with RunGuard(
        ledger, PATH, limits=[Limit("requests", 4)], pricing=LiteLLMPricing(), policy=policy
    ) as run:
        llm = BudgetedLiteLLM(run)
        ran = llm.admit_tool_calls(
            llm.completion(messages=MESSAGES, tools=TOOLS, max_tokens=64, **api.kwargs())
        )
        # The second call's admission reaches half the requests: its tool calls are refused,
        # and the next request offers the model no tools.
        response = llm.completion(messages=MESSAGES, tools=TOOLS, max_tokens=64, **api.kwargs())
        with pytest.raises(BudgetExceeded) as caught:
            llm.admit_tool_calls(response)
        llm.completion(messages=MESSAGES, tools=TOOLS, max_tokens=64, **api.kwargs())
    assert len(ran) == 1
    assert "tool_choice" not in api.requests[1]
    assert api.requests[2]["tool_choice"] == {"type": "none"}
    assert api.requests[2]["tools"]  # schemas kept: the history may refer to them
    assert caught.value.dimension == "tool_calls"
    assert ledger.usage(PATH).used.tool_calls == 1


def test_summary_mode_ends_with_one_wrap_up_call_on_the_reserve(ledger: Ledger) -> None:
    api = AnthropicAPI({"input_tokens": 20, "output_tokens": 10}, tool_use=True)
    policy = Policy(
        on_exhausted="summary",
        summary_reserve=Usage(input_tokens=300, output_tokens=50, requests=1),
        summary_model="anthropic/claude-haiku-4-5",
    )
    responses = []
    with RunGuard(
        ledger, PATH, limits=[Limit("requests", 4)], pricing=LiteLLMPricing(), policy=policy
    ) as run:
        llm = BudgetedLiteLLM(run)
        while not llm.wrapped_up:
            responses.append(
                llm.completion(messages=MESSAGES, tools=TOOLS, max_tokens=256, **api.kwargs())
            )
        with pytest.raises(BudgetExceeded):
            llm.completion(messages=MESSAGES, max_tokens=256, **api.kwargs())
    # The reserve holds one request from the start, so 3 calls run, then the wrap-up.
    assert len(api.requests) == 4
    final = api.requests[-1]
    assert final["max_tokens"] == 50
    assert final["tool_choice"] == {"type": "none"}
    # (Anthropic merges consecutive user turns: the summary request is the last block.)
    assert final["messages"][-1]["content"][-1]["text"] == DEFAULT_SUMMARY_PROMPT
    assert DEFAULT_SUMMARY_PROMPT not in json.dumps(api.requests[-2])
    assert responses[-1]._hidden_params["budgeteer_final"] is True
    assert not responses[0]._hidden_params.get("budgeteer_final")
    assert run.report.status == "stopped"
    assert ledger.usage(PATH).used.requests == 4
    # The refusal came at admission: the wrap-up goes to the summary model, priced for it.
    assert [body["model"] for body in api.requests] == ["claude-sonnet-4-5"] * 3 + [
        "claude-haiku-4-5"
    ]
    assert run.report.models == {
        "anthropic/claude-sonnet-4-5": 3,
        "anthropic/claude-haiku-4-5": 1,
    }
    tokens = {"input_tokens": 20, "output_tokens": 10}
    assert ledger.usage(PATH).used.cost_usd == 3 * genai_cost(
        "claude-sonnet-4-5", "anthropic", **tokens
    ) + genai_cost("claude-haiku-4-5", "anthropic", **tokens)


def test_escalation_grants_more_budget_and_the_loop_goes_on(ledger: Ledger) -> None:
    asked: list[BudgetExceeded] = []

    def escalate(error: BudgetExceeded) -> Grant | None:
        asked.append(error)
        return Grant(amount=2, reason="approved") if len(asked) == 1 else None

    policy = Policy(on_exhausted="escalate", escalate=escalate)
    done = 0
    with pytest.raises(BudgetExceeded):
        with RunGuard(
            ledger, PATH, limits=[Limit("requests", 2)], pricing=LiteLLMPricing(), policy=policy
        ) as run:
            llm = BudgetedLiteLLM(run)
            for _ in range(10):
                llm.completion(model="gpt-4o", messages=MESSAGES, mock_response="ok")
                done += 1
    assert done == 4
    assert [grant.new_limit for grant in run.report.grants] == [4]
    assert len(asked) == 2


def test_stop_subagents_refuses_hops(ledger: Ledger) -> None:
    policy = Policy(ladder=[Degrade.stop_subagents(at=0.5, dimension="requests")])
    with RunGuard(
        ledger, PATH, limits=[Limit("requests", 2)], pricing=LiteLLMPricing(), policy=policy
    ) as run:
        llm = BudgetedLiteLLM(run)
        llm.hop()
        llm.completion(model="gpt-4o", messages=MESSAGES, mock_response="ok")
        with pytest.raises(BudgetExceeded) as caught:
            llm.hop()
    assert caught.value.dimension == "agent_hops"
    assert ledger.usage(PATH).used.agent_hops == 1


async def test_async_summary_mode_wraps_up_on_the_reserve(aledger: AsyncLedger) -> None:
    policy = Policy(
        on_exhausted="summary",
        summary_reserve=Usage(input_tokens=300, output_tokens=40, requests=1),
    )
    responses = []
    async with AsyncRunGuard(
        aledger, PATH, limits=[Limit("requests", 3)], pricing=LiteLLMPricing(), policy=policy
    ) as run:
        llm = AsyncBudgetedLiteLLM(run)
        while not llm.wrapped_up:
            responses.append(
                await llm.acompletion(
                    model="gpt-4o", messages=MESSAGES, max_tokens=300, mock_response="ok"
                )
            )
    assert len(responses) == 3
    assert [r._hidden_params.get("budgeteer_final", False) for r in responses] == [
        False,
        False,
        True,
    ]
    assert run.report.status == "stopped"
    assert (await aledger.usage(PATH)).used.requests == 3


# -- one call on a ledger and path ---------------------------------------------------------------


def test_completion_on_a_ledger_and_path(ledger: Ledger) -> None:
    limits = [Limit("requests", 2)]
    for _ in range(2):
        completion(
            ledger=ledger,
            path=PATH,
            limits=limits,
            model="gpt-4o",
            messages=MESSAGES,
            mock_response="ok",
        )
    stream_error = None
    try:
        completion(
            ledger=ledger, path=PATH, limits=limits, model="gpt-4o", messages=MESSAGES,
            mock_response="ok", stream=True,
        )  # fmt: skip
    except BudgetExceeded as error:
        stream_error = error
    assert stream_error is not None
    assert stream_error.dimension == "requests"
    expected = genai_cost("gpt-4o", "openai", input_tokens=10, output_tokens=20) * 2
    assert ledger.usage(PATH).used.cost_usd == expected


async def test_acompletion_stream_keeps_its_run_open_until_it_ends(aledger: AsyncLedger) -> None:
    stream = await acompletion(
        ledger=aledger, path=PATH, model="gpt-4o", messages=MESSAGES, mock_response=TEXT,
        stream=True,
    )  # fmt: skip
    assert (await aledger.usage(PATH)).held.requests == 1
    chunks = [chunk async for chunk in stream]
    reported = chunks[-1].usage
    after = await aledger.usage(PATH)
    assert after.held.requests == 0
    assert after.used.cost_usd == genai_cost(
        "gpt-4o",
        "openai",
        input_tokens=reported.prompt_tokens,
        output_tokens=reported.completion_tokens,
    )


def test_a_request_without_messages_is_refused_before_anything_is_held(ledger: Ledger) -> None:
    with RunGuard(ledger, PATH, pricing=LiteLLMPricing()) as run:
        with pytest.raises(InvalidInput) as caught:
            BudgetedLiteLLM(run).completion(model="gpt-4o", mock_response="ok")
    assert caught.value.field == "messages"
    assert ledger.usage(PATH).used.requests == 0


# -- the example ---------------------------------------------------------------------------------


def test_the_example_runs_offline() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "litellm_budget.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert lines["stopped by"] == "cost_usd"
    assert int(lines["calls"]) > 1
    assert lines["litellm said"] == "$0"
    assert Decimal(lines["budgeteer charged"].lstrip("$")) > 0
    assert lines["streamed"].startswith("charged")
