"""wrap_anthropic: the real Anthropic SDK client over a mocked transport with recorded bodies."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import genai_prices
import httpx2
import pytest

from budgeteer import (
    AsyncRunGuard,
    BudgetExceeded,
    Degrade,
    Ledger,
    Limit,
    Policy,
    Pricing,
    RunGuard,
    Usage,
)
from budgeteer.integrations.anthropic import wrap_anthropic
from tests.integrations._http import (
    Provider,
    fixture_json,
    json_reply,
    open_async_ledger,
    open_ledger,
    sse_events,
    sse_reply,
)

PATH = "org:acme/team:search/run:1"
MODEL = "claude-haiku-4-5"
TOOLS = [
    {
        "name": "search",
        "description": "Search the web.",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]


def provider_reply(path: str, body: dict[str, Any]) -> httpx2.Response:
    if path == "/v1/messages":
        if body.get("stream"):
            return sse_reply("anthropic_message_stream.sse")
        if body.get("tools") and body.get("tool_choice") != {"type": "none"}:
            return json_reply("anthropic_tool_use.json")
        return json_reply("anthropic_message.json")
    if path == "/v1/messages/count_tokens":
        return httpx2.Response(200, json={"input_tokens": 12})
    return httpx2.Response(500, json={"type": "error", "error": {"type": "api_error"}})


@pytest.fixture
def provider() -> Provider:
    return Provider(provider_reply)


@pytest.fixture(params=["memory", "sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    ledger = open_ledger(request.param, tmp_path)
    yield ledger
    ledger.close()


def sync_client(provider: Provider) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="sk-ant-test", http_client=provider.sync_http(), max_retries=0
    )


def genai_price(model: str, usage: dict[str, Any]) -> Decimal:
    """What genai-prices itself charges for an Anthropic usage block (input excludes cache)."""
    cache_read = usage.get("cache_read_input_tokens") or 0
    cache_write = usage.get("cache_creation_input_tokens") or 0
    one_hour = (usage.get("cache_creation") or {}).get("ephemeral_1h_input_tokens", 0)
    price = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage["input_tokens"] + cache_read + cache_write,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            cache_write_1h_tokens=one_hour,
            output_tokens=usage["output_tokens"],
        ),
        model,
        provider_id="anthropic",
    )
    total: Decimal = price.total_price
    return total


MESSAGE_USAGE = fixture_json("anthropic_message.json")["usage"]
TOOL_USAGE = fixture_json("anthropic_tool_use.json")["usage"]
STREAM_EVENTS = sse_events("anthropic_message_stream.sse")
STREAM_USAGE = {**STREAM_EVENTS[0]["message"]["usage"], **STREAM_EVENTS[-2]["usage"]}


def test_a_runaway_tool_loop_stops_before_the_request_that_would_cross_the_cap(
    ledger: Ledger, provider: Provider
) -> None:
    with pytest.raises(BudgetExceeded) as caught:
        with RunGuard(ledger, PATH, limits=[Limit("requests", 4)], pricing=Pricing()) as guard:
            client = wrap_anthropic(sync_client(provider), guard)
            messages: list[Any] = [{"role": "user", "content": "Find budgeteer."}]
            while True:  # the model asks for the tool forever
                reply = client.messages.create(
                    model=MODEL, max_tokens=256, messages=messages, tools=TOOLS
                )
                tool_use = reply.content[0]
                assert tool_use.type == "tool_use"
                guard.tool_call(tool_use.name)
                messages.append({"role": "assistant", "content": reply.content})
                messages.append(
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": tool_use.id, "content": "none"}
                        ],
                    }
                )
    error = caught.value
    assert (error.scope, error.dimension, error.limit, error.used) == (PATH, "requests", 4, 4)
    assert len(provider.model_requests("/v1/messages")) == 4  # the 5th was never sent
    assert guard.usage.cost_usd == 4 * genai_price(MODEL, TOOL_USAGE)
    assert ledger.usage(PATH).held.requests == 0


def test_two_runs_sharing_one_scope_stop_together(ledger: Ledger, provider: Provider) -> None:
    team = "org:acme/team:search"
    cap = 2 * genai_price(MODEL, TOOL_USAGE) + Decimal("0.001")
    ledger.set_limit(team, Limit("cost_usd", cap))
    refusals: list[BudgetExceeded] = []
    with (
        RunGuard(ledger, f"{team}/run:a", pricing=Pricing()) as first,
        RunGuard(ledger, f"{team}/run:b", pricing=Pricing()) as second,
    ):
        clients = [wrap_anthropic(sync_client(provider), g) for g in (first, second)]
        for turn in range(6):
            try:
                clients[turn % 2].messages.create(
                    model=MODEL,
                    max_tokens=64,
                    messages=[{"role": "user", "content": "Find budgeteer."}],
                    tools=TOOLS,
                )
            except BudgetExceeded as error:
                refusals.append(error)
    spent = ledger.usage(team).used.cost_usd
    assert spent is not None
    assert spent <= cap
    sent = len(provider.model_requests("/v1/messages"))
    assert spent == sent * genai_price(MODEL, TOOL_USAGE)
    assert first.usage.requests >= 1
    assert second.usage.requests >= 1
    assert len(refusals) == 6 - sent
    assert {e.scope for e in refusals} == {team}
    assert {e.dimension for e in refusals} == {"cost_usd"}
    assert first.report.status == second.report.status == "stopped"


def test_cost_equals_the_genai_prices_price_cache_reads_writes_and_thinking_included(
    ledger: Ledger, provider: Provider
) -> None:
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_anthropic(sync_client(provider), guard)
        message = client.messages.create(
            model=MODEL,
            max_tokens=1024,
            system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            messages=[{"role": "user", "content": "Capital of France?"}],
        )
    assert message.usage.input_tokens == 48
    # Anthropic's input excludes the cache: 48 + 10240 read + 3072 written, counted once.
    assert guard.usage.replace(cost_usd=None) == Usage(
        input_tokens=48 + 10240 + 3072,
        cache_read_tokens=10240,
        cache_write_tokens=3072,
        output_tokens=356,
        reasoning_tokens=320,  # thinking, inside the 356
        total_tokens=48 + 10240 + 3072 + 356,
        requests=1,
    )
    # One-hour cache writes cost more than five-minute ones; both priced as genai-prices does.
    assert guard.usage.cost_usd == genai_price(MODEL, MESSAGE_USAGE)
    assert ledger.usage(PATH).used.cost_usd == genai_price(MODEL, MESSAGE_USAGE)


def test_a_streamed_message_is_settled_at_message_delta(ledger: Ledger, provider: Provider) -> None:
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_anthropic(sync_client(provider), guard)
        stream = client.messages.create(
            model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "x"}], stream=True
        )
        kinds = []
        for event in stream:
            kinds.append(event.type)
            if event.type == "message_delta":
                # Committed as the usage arrived, before the stream ended.
                assert ledger.usage(PATH).used.cost_usd == genai_price(MODEL, STREAM_USAGE)
                assert ledger.usage(PATH).held.requests == 0
    # Every event reached the caller (the SDK itself drops pings).
    assert kinds == [event["type"] for event in STREAM_EVENTS if event["type"] != "ping"]
    assert (guard.usage.input_tokens, guard.usage.cache_read_tokens) == (36 + 2048, 2048)
    assert guard.usage.output_tokens == 24
    assert guard.usage.cost_usd == genai_price(MODEL, STREAM_USAGE)


def test_the_stream_helper_is_metered(ledger: Ledger, provider: Provider) -> None:
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_anthropic(sync_client(provider), guard)
        with client.messages.stream(
            model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "x"}]
        ) as stream:
            text = stream.get_final_text()
    assert text.startswith("Budgets keep agents honest")
    assert guard.usage.cost_usd == genai_price(MODEL, STREAM_USAGE)


def test_an_abandoned_stream_is_charged_for_what_it_generated(
    ledger: Ledger, provider: Provider
) -> None:
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_anthropic(sync_client(provider), guard)
        with client.messages.create(
            model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "x"}], stream=True
        ) as stream:
            for index, event in enumerate(stream):
                if index == 2:
                    assert event.type == "content_block_delta"  # "Budgets"
                    break
        assert ledger.usage(PATH).held.requests == 0
    # Input from message_start (36 + 2048 cached); output estimated from "Budgets": 3 tokens.
    expected = Usage(input_tokens=36 + 2048, cache_read_tokens=2048, output_tokens=3, requests=1)
    assert guard.usage.replace(cost_usd=None, total_tokens=None) == expected
    assert guard.usage.cost_usd == Pricing().price(MODEL, expected).cost_usd


def test_a_stream_dropped_without_close_is_charged_when_collected(
    ledger: Ledger, provider: Provider
) -> None:
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_anthropic(sync_client(provider), guard)
        stream = client.messages.create(
            model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "x"}], stream=True
        )
        for _ in range(2):
            next(iter(stream))
        del stream
        gc.collect()
        assert ledger.usage(PATH).used.input_tokens == 36 + 2048
        assert ledger.usage(PATH).held.requests == 0


def test_stop_tools_and_downgrade_reach_the_request(ledger: Ledger, provider: Provider) -> None:
    policy = Policy(
        ladder=(
            Degrade.downgrade(to="claude-3-haiku", at=0.5),
            Degrade.stop_tools(at=0.75),
        ),
        clamp_max_tokens=False,
    )
    with RunGuard(
        ledger, PATH, limits=[Limit("requests", 4)], pricing=Pricing(), policy=policy
    ) as guard:
        client = wrap_anthropic(sync_client(provider), guard)
        for _ in range(4):
            client.messages.create(
                model=MODEL,
                max_tokens=64,
                messages=[{"role": "user", "content": "x"}],
                tools=TOOLS,
            )
    sent = provider.model_requests("/v1/messages")
    assert [s.body["model"] for s in sent] == [MODEL, MODEL, "claude-3-haiku", "claude-3-haiku"]
    assert [s.body.get("tool_choice") for s in sent] == [None, None, None, {"type": "none"}]
    assert all(s.body["tools"] == TOOLS for s in sent)  # a tool_use history needs them declared
    assert guard.report.degradations == policy.ladder


def test_summary_mode_wraps_up_within_the_reserve(ledger: Ledger, provider: Provider) -> None:
    reserve = Usage(input_tokens=3000, output_tokens=200, requests=1)
    policy = Policy(on_exhausted="summary", summary_reserve=reserve, clamp_max_tokens=False)
    with pytest.raises(BudgetExceeded):
        with RunGuard(
            ledger, PATH, limits=[Limit("requests", 3)], pricing=Pricing(), policy=policy
        ) as guard:
            client = wrap_anthropic(sync_client(provider), guard)
            while True:
                client.messages.create(
                    model=MODEL,
                    max_tokens=1024,
                    messages=[{"role": "user", "content": "Research budgeteer."}],
                    tools=TOOLS,
                )
    sent = provider.model_requests("/v1/messages")
    assert len(sent) == 3
    wrap_up = sent[-1].body
    assert wrap_up["max_tokens"] == 200
    assert wrap_up["tool_choice"] == {"type": "none"}
    assert wrap_up["messages"][-1]["role"] == "user"
    assert guard.report.wrapped_up
    assert guard.report.status == "stopped"


def test_messages_given_as_an_iterator_are_estimated_and_still_sent(
    ledger: Ledger, provider: Provider
) -> None:
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_anthropic(sync_client(provider), guard)
        turns = ({"role": "user", "content": text} for text in ("one", "two"))
        client.messages.create(model=MODEL, max_tokens=64, messages=turns)
    assert provider.sent[0].body["messages"] == [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ]
    assert "system" not in provider.sent[0].body  # the SDK's omitted values stay omitted


def test_other_endpoints_pass_through(ledger: Ledger, provider: Provider) -> None:
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_anthropic(sync_client(provider), guard)
        assert isinstance(client, anthropic.Anthropic)
        counted = client.messages.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": "x"}]
        )
    assert counted.input_tokens == 12
    assert guard.usage.requests == 0


# -- async --------------------------------------------------------------------------------------


def async_client(provider: Provider) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key="sk-ant-test", http_client=provider.async_http(), max_retries=0
    )


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_async_messages_streams_and_cancellation(
    kind: str, tmp_path: Path, provider: Provider
) -> None:
    ledger = open_async_ledger(kind, tmp_path)
    async with AsyncRunGuard(ledger, PATH, limits=[Limit("requests", 4)], pricing=Pricing()) as g:
        client = wrap_anthropic(async_client(provider), g)
        await client.messages.create(
            model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "x"}]
        )
        async with client.messages.stream(
            model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "x"}]
        ) as stream:
            assert (await stream.get_final_text()).startswith("Budgets")
        assert g.usage.cost_usd == genai_price(MODEL, MESSAGE_USAGE) + genai_price(
            MODEL, STREAM_USAGE
        )

        started = asyncio.Event()

        async def consume() -> None:
            cancelled = await client.messages.create(
                model=MODEL,
                max_tokens=1024,
                messages=[{"role": "user", "content": "x"}],
                stream=True,
            )
            async with cancelled:
                async for event in cancelled:
                    if event.type == "content_block_delta":
                        started.set()
                        await asyncio.sleep(3600)  # cancelled here

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        used = (await ledger.usage(PATH)).used
        assert used.requests == 3
        assert used.input_tokens == (48 + 10240 + 3072) + (36 + 2048) * 2
        assert (await ledger.usage(PATH)).held.requests == 0

        await client.messages.create(
            model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "x"}]
        )
        with pytest.raises(BudgetExceeded) as caught:
            await client.messages.create(
                model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "x"}]
            )
        assert caught.value.dimension == "requests"
    assert len(provider.model_requests("/v1/messages")) == 4
    await ledger.close()


async def test_an_async_stream_dropped_without_close_is_charged(provider: Provider) -> None:
    ledger = open_async_ledger("memory", Path())
    async with AsyncRunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_anthropic(async_client(provider), guard)
        stream = await client.messages.create(
            model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "x"}], stream=True
        )
        await stream.__anext__()
        del stream
        gc.collect()
        # The charge is scheduled on the running loop; give it a few turns to reach the ledger.
        for _ in range(200):
            if (await ledger.usage(PATH)).used.requests:
                break
            await asyncio.sleep(0.005)
        used = (await ledger.usage(PATH)).used
        assert (used.requests, used.input_tokens, used.output_tokens) == (1, 36 + 2048, 1)
    await ledger.close()


# -- the example ---------------------------------------------------------------------------------


def test_the_example_runs_offline_and_ends_with_a_summary(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "examples" / "anthropic_client_budget.py"
    url = f"sqlite:///{tmp_path / 'budgets.db'}"
    out = subprocess.run(
        [sys.executable, str(example), "--ledger", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    calls = [line for line in out if line.startswith("call ")]
    status = dict(field.split("=") for field in out[-2].split())
    assert status == {"status": "stopped", "wrapped_up": "True", "calls": str(len(calls))}
    assert out[-3].startswith("final answer: Summary:")
    with Ledger(url) as ledger:
        used = ledger.usage("org:acme/run:demo").used
    assert used.cost_usd is not None
    assert Decimal(out[-1].split()[0].removeprefix("cost=$")) == used.cost_usd
    assert used.requests == len(calls)
    assert used.cost_usd <= Decimal("0.01")
