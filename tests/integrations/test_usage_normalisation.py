"""Provider usage blocks normalised once: cached inside input, reasoning inside output."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from budgeteer import InvalidInput
from budgeteer.integrations import (
    usage_from_anthropic,
    usage_from_langchain,
    usage_from_openai,
    usage_from_pydantic_ai,
)


def test_openai_chat_usage_keeps_cached_and_reasoning_inside_the_totals() -> None:
    usage = usage_from_openai(
        {
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 1024},
            "completion_tokens_details": {"reasoning_tokens": 200},
        }
    )
    assert (usage.input_tokens, usage.cache_read_tokens) == (1200, 1024)
    assert (usage.output_tokens, usage.reasoning_tokens) == (300, 200)
    assert usage.tokens == 1500
    assert usage.requests == 1
    assert usage.cost_usd is None


def test_openai_responses_usage_objects_are_read_by_attribute() -> None:
    block = SimpleNamespace(
        input_tokens=50,
        output_tokens=20,
        input_tokens_details=SimpleNamespace(cached_tokens=10),
        output_tokens_details=SimpleNamespace(reasoning_tokens=5),
    )
    usage = usage_from_openai(block)
    assert (usage.input_tokens, usage.cache_read_tokens, usage.reasoning_tokens) == (50, 10, 5)


@pytest.mark.parametrize("write_key", ["cache_write_tokens", "cache_creation_tokens"])
def test_litellm_usage_keeps_anthropic_cache_writes_inside_the_prompt(write_key: str) -> None:
    # LiteLLM's shape for an Anthropic call: prompt_tokens already counts reads and writes.
    usage = usage_from_openai(
        {
            "prompt_tokens": 2600,
            "completion_tokens": 300,
            "prompt_tokens_details": {"cached_tokens": 2000, write_key: 500, "text_tokens": 100},
            "completion_tokens_details": {"reasoning_tokens": 10},
        }
    )
    assert (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (
        2600,
        2000,
        500,
    )
    assert (usage.output_tokens, usage.reasoning_tokens) == (300, 10)
    assert usage.tokens == 2900


def test_anthropic_input_is_made_to_include_the_cache() -> None:
    usage = usage_from_anthropic(
        {
            "input_tokens": 100,
            "cache_read_input_tokens": 2000,
            "cache_creation_input_tokens": 300,
            "output_tokens": 40,
        }
    )
    assert usage.input_tokens == 2400
    assert (usage.cache_read_tokens, usage.cache_write_tokens) == (2000, 300)
    assert usage.tokens == 2440


def test_langchain_usage_metadata() -> None:
    usage = usage_from_langchain(
        {
            "input_tokens": 900,
            "output_tokens": 100,
            "total_tokens": 1000,
            "input_token_details": {"cache_read": 512, "cache_creation": 64},
            "output_token_details": {"reasoning": 30},
        }
    )
    assert (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (900, 512, 64)
    assert usage.reasoning_tokens == 30


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True])
def test_bad_counts_name_the_field(bad: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        usage_from_openai({"prompt_tokens": bad, "completion_tokens": 1})
    assert caught.value.field == "usage.prompt_tokens"
    assert caught.value.value == bad


def test_pydantic_ai_request_usage_is_copied_not_added() -> None:
    from pydantic_ai.usage import RequestUsage

    # Pydantic AI already counts the cache inside input_tokens (Anthropic included) and the
    # reasoning inside output_tokens.
    reported = RequestUsage(
        input_tokens=12_500,
        cache_read_tokens=10_000,
        cache_write_tokens=500,
        output_tokens=900,
        output_reasoning_tokens=600,
    )
    usage = usage_from_pydantic_ai(reported)
    assert (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (
        12_500,
        10_000,
        500,
    )
    assert (usage.output_tokens, usage.reasoning_tokens) == (900, 600)
    assert usage.tokens == 13_400
    assert usage.requests == 1
    assert usage.cost_usd is None


def test_pydantic_ai_reasoning_from_details_of_older_releases() -> None:
    usage = usage_from_pydantic_ai(
        {"input_tokens": 40, "output_tokens": 30, "details": {"reasoning_tokens": 20}}
    )
    assert (usage.output_tokens, usage.reasoning_tokens) == (30, 20)


def test_pydantic_ai_bad_count_names_the_field() -> None:
    with pytest.raises(InvalidInput) as caught:
        usage_from_pydantic_ai({"input_tokens": -1})
    assert caught.value.field == "usage.input_tokens"
