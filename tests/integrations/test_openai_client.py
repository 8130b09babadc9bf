"""wrap_openai: the real OpenAI SDK client over a mocked HTTP transport with recorded bodies."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import httpx2
import openai
import pytest

from budgeteer import (
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
    estimate_prompt_tokens,
)
from budgeteer.integrations.openai import wrap_openai
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
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]


def provider_reply(path: str, body: dict[str, Any]) -> httpx2.Response:
    if path.endswith("/chat/completions"):
        if body.get("stream"):
            return sse_reply("openai_chat_stream.sse")
        if body.get("tools") and body.get("tool_choice") != "none":
            return json_reply("openai_chat_tool_call.json")
        return json_reply("openai_chat_completion.json")
    if path.endswith("/responses"):
        if body.get("stream"):
            return sse_reply("openai_response_stream.sse")
        return json_reply("openai_response.json")
    if path.endswith("/embeddings"):
        return httpx2.Response(
            200,
            json={
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            },
        )
    return httpx2.Response(500, json={"error": {"message": "boom", "type": "server_error"}})


@pytest.fixture
def provider() -> Provider:
    return Provider(provider_reply)


@pytest.fixture(params=["memory", "sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    ledger = open_ledger(request.param, tmp_path)
    yield ledger
    ledger.close()


def sync_client(provider: Provider) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test", http_client=provider.sync_http(), max_retries=0)


def genai_price(model: str, usage: dict[str, Any]) -> Decimal:
    """The price genai-prices itself computes for an OpenAI usage block (the expectation)."""
    details_in = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    details_out = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
    price = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage.get("prompt_tokens", usage.get("input_tokens")),
            cache_read_tokens=details_in.get("cached_tokens", 0),
            output_tokens=usage.get("completion_tokens", usage.get("output_tokens")),
            output_reasoning_tokens=(details_out or {}).get("reasoning_tokens", 0),
        ),
        model,
        provider_id="openai",
    )
    total: Decimal = price.total_price
    return total


CHAT_USAGE = fixture_json("openai_chat_completion.json")["usage"]
STREAM_USAGE = sse_events("openai_chat_stream.sse")[-1]["usage"]
RESPONSE_USAGE = fixture_json("openai_response.json")["usage"]


# -- admission before the request ----------------------------------------------------------------


def test_a_runaway_tool_loop_stops_before_the_request_that_would_cross_the_cap(
    ledger: Ledger, provider: Provider
) -> None:
    with pytest.raises(BudgetExceeded) as caught:
        with RunGuard(ledger, PATH, limits=[Limit("requests", 5)], pricing=Pricing()) as guard:
            client = wrap_openai(sync_client(provider), guard)
            messages: list[Any] = [{"role": "user", "content": "Find budgeteer."}]
            while True:  # the model asks for the tool forever
                reply = client.chat.completions.create(
                    model="gpt-4o", messages=messages, tools=TOOLS, max_completion_tokens=64
                )
                tool_call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
                guard.tool_call(tool_call.function.name)  # type: ignore[union-attr]
                messages.append(reply.choices[0].message.model_dump(exclude_none=True))
                messages.append(
                    {"role": "tool", "tool_call_id": tool_call.id, "content": "no results"}
                )
    error = caught.value
    assert (error.scope, error.dimension, error.limit, error.used) == (PATH, "requests", 5, 5)
    assert len(provider.model_requests("/chat/completions")) == 5  # the 6th was never sent
    assert guard.report.status == "stopped"
    assert ledger.usage(PATH).used.requests == 5
    assert ledger.usage(PATH).held.requests == 0


def test_a_cost_cap_refuses_the_call_whose_estimate_would_cross_it(
    ledger: Ledger, provider: Provider
) -> None:
    cap = Decimal("0.01")
    with pytest.raises(BudgetExceeded) as caught:
        with RunGuard(ledger, PATH, limits=[Limit("cost_usd", cap)], pricing=Pricing()) as guard:
            client = wrap_openai(sync_client(provider), guard)
            while True:
                client.chat.completions.create(
                    model="gpt-4o",
                    messages=[{"role": "user", "content": "Find budgeteer."}],
                    tools=TOOLS,
                    max_completion_tokens=256,
                )
    error = caught.value
    assert error.dimension == "cost_usd"
    assert error.used + error.held + error.requested > cap >= error.used
    sent = len(provider.model_requests("/chat/completions"))
    assert sent == guard.report.model_calls == guard.usage.requests  # the refused one: never sent
    spent = ledger.usage(PATH).used.cost_usd
    assert spent is not None
    assert spent == sent * genai_price(
        "gpt-4o", fixture_json("openai_chat_tool_call.json")["usage"]
    )
    assert spent <= cap


def test_two_runs_sharing_one_scope_stop_together(ledger: Ledger, provider: Provider) -> None:
    team = "org:acme/team:search"
    ledger.set_limit(team, Limit("requests", 6))
    with (
        RunGuard(ledger, f"{team}/run:a", pricing=Pricing()) as first,
        RunGuard(ledger, f"{team}/run:b", pricing=Pricing()) as second,
    ):
        clients = [wrap_openai(sync_client(provider), g) for g in (first, second)]
        refusals: list[BudgetExceeded] = []
        for turn in range(10):
            try:
                clients[turn % 2].chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
                )
            except BudgetExceeded as error:
                refusals.append(error)
    assert len(provider.model_requests("/chat/completions")) == 6
    assert (first.usage.requests, second.usage.requests) == (3, 3)
    assert len(refusals) == 4  # both runs refused, every later turn
    assert {(e.scope, e.dimension) for e in refusals} == {(team, "requests")}


def test_an_error_from_the_provider_releases_the_hold(ledger: Ledger) -> None:
    failing = Provider(lambda path, body: httpx2.Response(500, json={"error": {"message": "x"}}))
    with RunGuard(ledger, PATH, limits=[Limit("requests", 5)], pricing=Pricing()) as guard:
        client = wrap_openai(sync_client(failing), guard)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "x"}]
            )
        assert ledger.usage(PATH).held.requests == 0
    assert guard.usage.requests == 0
    assert len(failing.sent) == 1


# -- reconciliation with the reported usage ------------------------------------------------------


def test_cost_equals_the_genai_prices_price_of_the_reported_usage_cached_and_reasoning_included(
    ledger: Ledger, provider: Provider
) -> None:
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_openai(sync_client(provider), guard)
        client.chat.completions.create(
            model="gpt-5-mini",
            messages=[{"role": "user", "content": "Capital of France?"}],
            max_completion_tokens=2000,
        )
        chat = guard.usage
        client.responses.create(model="o4-mini", input="Capital of France?", max_output_tokens=2048)
    assert chat == Usage(
        input_tokens=1536,
        cache_read_tokens=1280,  # inside the 1536, once
        output_tokens=842,
        reasoning_tokens=768,  # inside the 842, once
        total_tokens=2378,
        requests=1,
        cost_usd=genai_price("gpt-5-mini", CHAT_USAGE),
    )
    expected = genai_price("gpt-5-mini", CHAT_USAGE) + genai_price("o4-mini", RESPONSE_USAGE)
    assert guard.usage.cost_usd == expected
    assert ledger.usage(PATH).used.cost_usd == expected
    assert (guard.usage.input_tokens, guard.usage.cache_read_tokens) == (1536 + 2210, 1280 + 2048)
    assert (guard.usage.output_tokens, guard.usage.reasoning_tokens) == (842 + 1190, 768 + 1152)


def test_the_admission_estimate_is_reserved_before_the_request(
    ledger: Ledger, provider: Provider
) -> None:
    seen_holds: list[int] = []

    def reply(path: str, body: dict[str, Any]) -> httpx2.Response:
        seen_holds.append(ledger.usage(PATH).held.output_tokens)
        return provider_reply(path, body)

    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_openai(sync_client(Provider(reply)), guard)
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=300
        )
        client.responses.create(model="gpt-4o", input="hi", max_output_tokens=200)
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=100, n=3
        )
    # The guard's default when no cap is sent; n completions of up to max_tokens each.
    assert seen_holds == [300, 200, 4096, 300]
    assert ledger.usage(PATH).held.output_tokens == 0


# -- streams ---------------------------------------------------------------------------------------


def test_a_streamed_chat_call_is_charged_and_usage_reporting_is_turned_on(
    ledger: Ledger, provider: Provider
) -> None:
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_openai(sync_client(provider), guard)
        stream = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Tell me."}], stream=True
        )
        chunks = list(stream)
    assert provider.sent[-1].body["stream_options"] == {"include_usage": True}
    # The caller did not ask for the usage chunk, so code reading choices[0] keeps working.
    assert all(chunk.choices for chunk in chunks)
    assert len(chunks) == len(sse_events("openai_chat_stream.sse")) - 1
    assert guard.usage.cost_usd == genai_price("gpt-4o", STREAM_USAGE)
    assert (guard.usage.input_tokens, guard.usage.cache_read_tokens) == (1342, 1152)
    assert guard.usage.output_tokens == 21


def test_a_caller_who_asked_for_usage_gets_the_usage_chunk(
    ledger: Ledger, provider: Provider
) -> None:
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_openai(sync_client(provider), guard)
        with client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Tell me."}],
            stream=True,
            stream_options={"include_usage": True},
        ) as stream:
            chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 1342
    assert guard.usage.cost_usd == genai_price("gpt-4o", STREAM_USAGE)


def test_usage_is_settled_the_moment_the_usage_chunk_arrives(
    ledger: Ledger, provider: Provider
) -> None:
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_openai(sync_client(provider), guard)
        stream = client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Tell me."}],
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.usage is not None:
                # Before the stream has ended: already committed, the hold already gone.
                assert ledger.usage(PATH).used.cost_usd == genai_price("gpt-4o", STREAM_USAGE)
                assert ledger.usage(PATH).held.output_tokens == 0
        stream.close()
    assert guard.usage.requests == 1


def test_an_abandoned_stream_is_charged_for_what_it_generated(
    ledger: Ledger, provider: Provider
) -> None:
    messages = [{"role": "user", "content": "Tell me a long story."}]
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_openai(sync_client(provider), guard)
        with client.chat.completions.create(model="gpt-4o", messages=messages, stream=True) as s:
            for index, _chunk in enumerate(s):
                if index == 1:
                    break  # two chunks: the role chunk and "Budgets"
        assert ledger.usage(PATH).held.requests == 0
    # No usage came: input is the admission's estimate, output from the text seen:
    # max(1 delta, ceil(len("Budgets") / 3) = 3).
    input_tokens = estimate_prompt_tokens(["Tell me a long story."])
    expected = Usage(input_tokens=input_tokens, output_tokens=3, requests=1)
    assert guard.usage.replace(cost_usd=None, total_tokens=None) == expected
    assert guard.usage.cost_usd == Pricing().price("gpt-4o", expected).cost_usd
    assert guard.usage.cost_usd is not None
    assert guard.usage.cost_usd > 0


def test_a_stream_closed_after_its_finish_reason_reads_on_to_the_usage(
    ledger: Ledger, provider: Provider
) -> None:
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_openai(sync_client(provider), guard)
        with client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}], stream=True
        ) as stream:
            for chunk in stream:
                if chunk.choices[0].finish_reason:
                    break  # the usual loop: stop at the finish, before the usage chunk
    assert guard.usage.cost_usd == genai_price("gpt-4o", STREAM_USAGE)  # exact, not estimated
    assert guard.usage.output_tokens == 21


def test_a_stream_dropped_without_close_is_charged_when_collected(
    ledger: Ledger, provider: Provider
) -> None:
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_openai(sync_client(provider), guard)
        stream = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}], stream=True
        )
        next(stream)
        next(stream)
        del stream
        gc.collect()
        assert ledger.usage(PATH).used.output_tokens == 3
        assert ledger.usage(PATH).held.requests == 0


def test_a_stream_is_cut_when_its_output_passes_what_the_hold_covers(
    ledger: Ledger, provider: Provider
) -> None:
    # No max_tokens in the request: the guard holds its default (5 here) and the stream is cut
    # when the text seen passes it.
    with RunGuard(ledger, PATH, pricing=Pricing(), default_max_tokens=5) as guard:
        client = wrap_openai(sync_client(provider), guard)
        stream = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}], stream=True
        )
        received: list[str | None] = []
        with pytest.raises(BudgetExceeded) as caught:
            received.extend(chunk.choices[0].delta.content for chunk in stream)
    error = caught.value
    assert (error.dimension, error.limit, error.held) == ("output_tokens", 5, 5)
    # "Budgets keep agents" is 19 bytes: ceil(19 / 3) = 7 > 5, so the third word was withheld.
    assert received == ["", "Budgets", " keep"]
    assert error.used == 7
    assert guard.usage.output_tokens == 7  # what was generated is charged, cut or not
    assert ledger.usage(PATH).held.requests == 0


def test_a_capped_request_is_never_cut_by_the_text_estimate(
    ledger: Ledger, provider: Provider
) -> None:
    # max_tokens=5 is enforced by the provider; the pessimistic text estimate must not cut it.
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_openai(sync_client(provider), guard)
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "x"}], stream=True,
                max_tokens=5,
            )
        )  # fmt: skip
    assert len(chunks) == len(sse_events("openai_chat_stream.sse")) - 1
    assert guard.usage.output_tokens == 21


def test_a_responses_stream_is_charged_from_its_completed_event(
    ledger: Ledger, provider: Provider
) -> None:
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_openai(sync_client(provider), guard)
        with client.responses.stream(model="gpt-4o", input="Tell me.") as stream:
            text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
            final = stream.get_final_response()
    assert text.startswith("Budgets keep agents honest")
    assert final.usage is not None
    assert final.usage.input_tokens == 1342
    completed = sse_events("openai_response_stream.sse")[-1]["response"]["usage"]
    assert guard.usage.cost_usd == genai_price("gpt-4o", completed)


def test_the_chat_stream_helper_is_metered(ledger: Ledger, provider: Provider) -> None:
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_openai(sync_client(provider), guard)
        with client.chat.completions.stream(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        ) as stream:
            final = stream.get_final_completion()
    assert final.choices[0].message.content is not None
    assert provider.sent[-1].body["stream_options"] == {"include_usage": True}
    assert guard.usage.cost_usd == genai_price("gpt-4o", STREAM_USAGE)


# -- the client keeps its interface ----------------------------------------------------------------


def test_the_wrapped_client_is_still_an_openai_client(ledger: Ledger, provider: Provider) -> None:
    original = sync_client(provider)
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_openai(original, guard)
        assert isinstance(client, openai.OpenAI)
        assert client.api_key == "sk-test"
        assert client.base_url == original.base_url
        tuned = client.with_options(timeout=5)  # a copy stays budgeted
        tuned.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        client.embeddings.create(model="text-embedding-3-small", input="x")  # not a model call
        original.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        )
    assert guard.usage.requests == 1  # the original client was left unwrapped
    assert len(provider.sent) == 3


def test_raw_responses_are_metered(ledger: Ledger, provider: Provider) -> None:
    with RunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_openai(sync_client(provider), guard)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-5-mini", messages=[{"role": "user", "content": "x"}]
        )
        assert raw.http_response.status_code == 200
        assert raw.parse().usage is not None  # still parses for the caller
    assert guard.usage.cost_usd == genai_price("gpt-5-mini", CHAT_USAGE)


def test_the_guard_must_match_the_client(ledger: Ledger, provider: Provider) -> None:
    async_ledger = open_async_ledger("memory", Path())
    with pytest.raises(InvalidInput) as caught:
        wrap_openai(sync_client(provider), AsyncRunGuard(async_ledger, PATH))  # type: ignore[call-overload]
    assert caught.value.field == "guard"
    with pytest.raises(InvalidInput) as caught:
        wrap_openai(object(), RunGuard(ledger, PATH))  # type: ignore[call-overload]
    assert caught.value.field == "client"


# -- the policy --------------------------------------------------------------------------------


def test_the_policy_downgrades_the_model_at_its_threshold(
    ledger: Ledger, provider: Provider
) -> None:
    policy = Policy(ladder=(Degrade.downgrade(to="gpt-4o-mini", at=0.5),), clamp_max_tokens=False)
    limits = [Limit("requests", 4)]
    with RunGuard(ledger, PATH, limits=limits, pricing=Pricing(), policy=policy) as guard:
        client = wrap_openai(sync_client(provider), guard)
        for _ in range(4):
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "x"}], max_tokens=100
            )
    models = [sent.body["model"] for sent in provider.model_requests("/chat/completions")]
    # The reservation of call 2 reaches 2/4 = 50%: calls 3 and 4 go to the cheaper model.
    assert models == ["gpt-4o", "gpt-4o", "gpt-4o-mini", "gpt-4o-mini"]
    assert dict(guard.report.models) == {"gpt-4o": 2, "gpt-4o-mini": 2}
    assert guard.report.degradations == policy.ladder


def test_the_policy_clamps_max_tokens_to_what_the_budget_affords(
    ledger: Ledger, provider: Provider
) -> None:
    policy = Policy(clamp_max_tokens=True)
    limits = [Limit("output_tokens", 410)]
    planned = []
    with RunGuard(ledger, PATH, limits=limits, pricing=Pricing(), policy=policy) as guard:
        client = wrap_openai(sync_client(provider), guard)
        for _ in range(2):
            planned.append(guard.plan_call("gpt-4o", max_tokens=400).max_tokens)
            client.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": "x"}],
                tools=TOOLS,
                max_completion_tokens=400,
            )
    first, second = provider.model_requests("/chat/completions")
    assert planned[0] == first.body["max_completion_tokens"] == 400
    # The first call's hold of 400 left with its commit of 18 output tokens: 392 remain.
    assert planned[1] == second.body["max_completion_tokens"] == 410 - 18
    assert "max_tokens" not in second.body
    assert ledger.usage(PATH).used.output_tokens == 2 * 18


def test_stop_tools_sends_tool_choice_none(ledger: Ledger, provider: Provider) -> None:
    policy = Policy(ladder=(Degrade.stop_tools(at=0.5),), clamp_max_tokens=False)
    with RunGuard(
        ledger, PATH, limits=[Limit("requests", 4)], pricing=Pricing(), policy=policy
    ) as guard:
        client = wrap_openai(sync_client(provider), guard)
        for _ in range(3):
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "x"}], tools=TOOLS
            )
    choices = [sent.body.get("tool_choice") for sent in provider.sent]
    assert choices == [None, None, "none"]
    assert provider.sent[2].body["tools"] == TOOLS  # definitions kept


def test_summary_mode_runs_one_wrap_up_call_within_the_reserve(
    ledger: Ledger, provider: Provider
) -> None:
    reserve = Usage(input_tokens=2000, output_tokens=300, requests=1)
    policy = Policy(
        on_exhausted="summary",
        summary_reserve=reserve,
        summary_model="gpt-4o-mini",
        clamp_max_tokens=False,
    )
    limits = [Limit("requests", 4)]  # three calls, plus the reserve's one
    with pytest.raises(BudgetExceeded) as caught:
        with RunGuard(ledger, PATH, limits=limits, pricing=Pricing(), policy=policy) as guard:
            client = wrap_openai(sync_client(provider), guard)
            messages: list[Any] = [{"role": "user", "content": "Research budgeteer."}]
            while True:
                client.chat.completions.create(
                    model="gpt-4o", messages=messages, tools=TOOLS, max_tokens=1000
                )
    sent = provider.model_requests("/chat/completions")
    assert len(sent) == 4
    wrap_up = sent[-1].body
    assert wrap_up["tool_choice"] == "none"
    assert wrap_up["max_tokens"] == 300  # within the reserve
    assert wrap_up["model"] == "gpt-4o-mini"  # the model the reserve was priced for
    assert dict(guard.report.models) == {"gpt-4o": 3, "gpt-4o-mini": 1}
    assert wrap_up["messages"][-1]["role"] == "user"
    assert "budget" in wrap_up["messages"][-1]["content"]
    assert guard.report.wrapped_up
    assert caught.value.dimension == "requests"  # the call after the wrap-up is refused


def test_escalation_grants_more_budget_and_the_call_goes_through(
    ledger: Ledger, provider: Provider
) -> None:
    asked: list[BudgetExceeded] = []

    def escalate(error: BudgetExceeded) -> Grant | None:
        asked.append(error)
        return Grant(amount=1, reason="one more call approved") if len(asked) == 1 else None

    policy = Policy(on_exhausted="escalate", escalate=escalate, clamp_max_tokens=False)
    with pytest.raises(BudgetExceeded) as caught:
        with RunGuard(
            ledger, PATH, limits=[Limit("requests", 2)], pricing=Pricing(), policy=policy
        ) as guard:
            client = wrap_openai(sync_client(provider), guard)
            while True:
                client.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "x"}]
                )
    assert len(provider.model_requests("/chat/completions")) == 3  # 2 + the granted one
    assert [(g.dimension, g.amount, g.new_limit) for g in guard.report.grants] == [
        ("requests", 1, 3)
    ]
    assert caught.value.limit == 3
    assert len(asked) == 2


# -- async --------------------------------------------------------------------------------------


def async_client(provider: Provider) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-test", http_client=provider.async_http(), max_retries=0)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_async_runaway_loop_stops_at_the_cap(
    kind: str, tmp_path: Path, provider: Provider
) -> None:
    ledger = open_async_ledger(kind, tmp_path)
    with pytest.raises(BudgetExceeded) as caught:
        async with AsyncRunGuard(
            ledger, PATH, limits=[Limit("requests", 3)], pricing=Pricing()
        ) as guard:
            client = wrap_openai(async_client(provider), guard)
            while True:
                await client.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "x"}], tools=TOOLS
                )
                await guard.tool_call("search")
    assert caught.value.dimension == "requests"
    assert len(provider.sent) == 3
    assert guard.usage.cost_usd == 3 * genai_price(
        "gpt-4o", fixture_json("openai_chat_tool_call.json")["usage"]
    )
    await ledger.close()


async def test_async_stream_is_charged_and_a_cancelled_one_too(provider: Provider) -> None:
    ledger = open_async_ledger("memory", Path())
    async with AsyncRunGuard(ledger, PATH, pricing=Pricing()) as guard:
        client = wrap_openai(async_client(provider), guard)
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
        assert all(chunk.choices for chunk in chunks)
        assert guard.usage.cost_usd == genai_price("gpt-4o", STREAM_USAGE)

        started = asyncio.Event()

        async def consume() -> None:
            async with await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "x"}], stream=True
            ) as cancelled:
                async for _ in cancelled:
                    started.set()
                    await asyncio.sleep(3600)  # cancelled here, after the first chunk

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert guard.usage.requests == 2
        assert guard.usage.output_tokens == 21  # the first stream's 21; the role chunk has none
        held = (await ledger.usage(PATH)).held
        assert held.requests == 0


async def test_async_stream_cut_and_responses(provider: Provider) -> None:
    ledger = open_async_ledger("memory", Path())
    async with AsyncRunGuard(ledger, PATH, pricing=Pricing(), default_max_tokens=5) as guard:
        client = wrap_openai(async_client(provider), guard)
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}], stream=True
        )
        with pytest.raises(BudgetExceeded) as caught:
            async for _ in stream:
                pass
        assert caught.value.dimension == "output_tokens"
        assert guard.usage.output_tokens == 7
        await client.responses.create(model="o4-mini", input="x", max_output_tokens=2048)
    assert guard.usage.cost_usd == Pricing().price(
        "gpt-4o", Usage(input_tokens=estimate_prompt_tokens(["x"]), output_tokens=7)
    ).cost_usd + genai_price("o4-mini", RESPONSE_USAGE)


# -- the example ---------------------------------------------------------------------------------


def test_the_example_runs_offline_and_stops_at_the_cap(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "examples" / "openai_client_budget.py"
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
    assert status["status"] == "stopped"
    assert int(status["calls"]) == len(calls) == 4
    assert any(line.startswith("stopped before call 5: cost_usd") for line in out)
    with Ledger(url) as ledger:
        used = ledger.usage("org:acme/run:demo").used
    assert used.cost_usd is not None
    assert Decimal(status["cost"].removeprefix("$")) == used.cost_usd
    assert used.cost_usd <= Decimal("0.01")
    assert used.requests == 4
