"""Pricing: exact agreement with genai-prices, overrides, unknown-model policies, bad input."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from decimal import Decimal

import genai_prices
import pytest
from genai_prices.data import providers as genai_providers
from genai_prices.data_snapshot import DataSnapshot, set_custom_snapshot
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from budgeteer.errors import InvalidInput, UnknownModel
from budgeteer.model import Usage
from budgeteer.pricing import (
    MAX_MODEL_NAME_LENGTH,
    LongContextPrice,
    ModelPrice,
    Price,
    Pricing,
)
from budgeteer.testing import FakeClock

AT = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
"""After every dated price change in the bundled data used below (variants start 2026-10-14)."""
BEFORE_TIERS = datetime(2026, 10, 1, tzinfo=UTC)
"""Before OpenAI's flex/priority and batch variants start in the bundled data."""
GENAI = f"genai-prices {genai_prices.__version__}"
M = Decimal(1_000_000)


def genai_cost(
    model: str,
    *,
    input_tokens: int = 0,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
    output_tokens: int = 0,
    reasoning_tokens: int = 0,
    provider: str | None = None,
    context: dict[str, str] | None = None,
    at: datetime = AT,
) -> Decimal:
    """genai-prices' own answer, in its own usage vocabulary (reasoning inside output)."""
    usage = genai_prices.Usage(
        input_tokens=input_tokens,
        cache_read_tokens=cache_read_tokens,
        cache_write_tokens=cache_write_tokens,
        cache_write_1h_tokens=cache_write_1h_tokens,
        output_tokens=output_tokens,
        output_reasoning_tokens=reasoning_tokens,
    )
    result = genai_prices.calc_price(
        usage, model, provider_id=provider, genai_request_timestamp=at, price_context=context
    )
    return result.total_price


@pytest.fixture
def pricing() -> Pricing:
    return Pricing()


# --------------------------------------------------------------------------------------------
# Real models against genai-prices and against the published prices


def test_gpt_4o_cached_reads_are_charged_once_at_the_cache_price(pricing: Pricing) -> None:
    usage = Usage(input_tokens=10_000, cache_read_tokens=4_000, output_tokens=1_000)
    price = pricing.price("gpt-4o", usage, at=AT)
    # $2.50 per Mtok uncached input, $1.25 cached, $10 output.
    expected = (6_000 * Decimal("2.5") + 4_000 * Decimal("1.25") + 1_000 * Decimal(10)) / M
    assert price.cost_usd == expected
    assert price.cost_usd == genai_cost(
        "gpt-4o", input_tokens=10_000, cache_read_tokens=4_000, output_tokens=1_000
    )
    assert (price.model, price.resolved_model, price.provider) == ("gpt-4o", "gpt-4o", "openai")
    assert price.source == GENAI
    assert price.input_usd_per_mtok == Decimal("2.5")
    assert price.cache_read_usd_per_mtok == Decimal("1.25")
    assert price.output_usd_per_mtok == Decimal(10)
    # No cache-write price for gpt-4o: writes would be billed at the input price.
    assert price.cache_write_usd_per_mtok == Decimal("2.5")
    assert price.long_context is False
    assert price.price_variants == ()


def test_claude_cache_reads_writes_and_one_hour_writes(pricing: Pricing) -> None:
    usage = Usage(
        input_tokens=50_000, cache_read_tokens=20_000, cache_write_tokens=12_000, output_tokens=800
    )
    price = pricing.price("claude-sonnet-4", usage, cache_write_1h_tokens=2_000, at=AT)
    # $3 input, $0.30 cache read, $3.75 5-minute write, $6 1-hour write, $15 output.
    expected = (
        18_000 * Decimal(3)
        + 20_000 * Decimal("0.3")
        + 10_000 * Decimal("3.75")
        + 2_000 * Decimal(6)
        + 800 * Decimal(15)
    ) / M
    assert price.cost_usd == expected
    assert price.cost_usd == genai_cost(
        "claude-sonnet-4",
        input_tokens=50_000,
        cache_read_tokens=20_000,
        cache_write_tokens=12_000,
        cache_write_1h_tokens=2_000,
        output_tokens=800,
    )
    assert price.resolved_model == "claude-sonnet-4-0"
    assert price.provider == "anthropic"
    assert price.cache_write_usd_per_mtok == Decimal("3.75")
    assert price.cache_write_1h_usd_per_mtok == Decimal(6)


def test_one_hour_writes_cost_more_than_five_minute_writes(pricing: Pricing) -> None:
    usage = Usage(input_tokens=10_000, cache_write_tokens=10_000)
    five_minutes = pricing.price("claude-sonnet-4", usage, at=AT).cost_usd
    one_hour = pricing.price("claude-sonnet-4", usage, cache_write_1h_tokens=10_000, at=AT).cost_usd
    assert five_minutes == 10_000 * Decimal("3.75") / M
    assert one_hour == 10_000 * Decimal(6) / M


def test_reasoning_tokens_are_inside_output_and_charged_once(pricing: Pricing) -> None:
    with_reasoning = Usage(input_tokens=1_000, output_tokens=5_000, reasoning_tokens=4_000)
    without = Usage(input_tokens=1_000, output_tokens=5_000)
    price = pricing.price("o3", with_reasoning, at=AT)
    assert price.cost_usd == pricing.price("o3", without, at=AT).cost_usd
    # o3 since 2025-06-10: $2 input, $8 output; reasoning is output.
    assert price.cost_usd == (1_000 * Decimal(2) + 5_000 * Decimal(8)) / M
    assert price.cost_usd == genai_cost(
        "o3", input_tokens=1_000, output_tokens=5_000, reasoning_tokens=4_000
    )
    assert price.reasoning_usd_per_mtok == price.output_usd_per_mtok == Decimal(8)


def test_a_separate_reasoning_price_in_the_data_is_used_once(pricing: Pricing) -> None:
    usage = Usage(input_tokens=1_000, output_tokens=5_000, reasoning_tokens=4_000)
    price = pricing.price("sonar-deep-research", usage, provider="perplexity", at=AT)
    # $2 input, $8 output, $3 reasoning: the 4,000 reasoning tokens leave the output count.
    per_request = price.request_usd or Decimal(0)
    expected = (1_000 * Decimal(2) + 1_000 * Decimal(8) + 4_000 * Decimal(3)) / M + per_request
    assert price.cost_usd == expected
    assert price.reasoning_usd_per_mtok == Decimal(3)
    assert price.cost_usd == genai_cost(
        "sonar-deep-research",
        provider="perplexity",
        input_tokens=1_000,
        output_tokens=5_000,
        reasoning_tokens=4_000,
    )


def test_long_context_tier_reprices_the_whole_request(pricing: Pricing) -> None:
    # gemini-2.5-pro: $1.25 / $10 up to 200k input tokens; above that $2.50 / $15 for ALL tokens.
    at_threshold = Usage(input_tokens=200_000, cache_read_tokens=50_000, output_tokens=1_000)
    past = Usage(input_tokens=200_001, cache_read_tokens=50_000, output_tokens=1_000)
    base = pricing.price("gemini-2.5-pro", at_threshold, at=AT)
    tier = pricing.price("gemini-2.5-pro", past, at=AT)
    assert (
        base.cost_usd
        == (150_000 * Decimal("1.25") + 50_000 * Decimal("0.125") + 1_000 * Decimal(10)) / M
    )
    assert (
        tier.cost_usd
        == (150_001 * Decimal("2.5") + 50_000 * Decimal("0.25") + 1_000 * Decimal(15)) / M
    )
    assert (base.long_context, tier.long_context) == (False, True)
    assert tier.input_usd_per_mtok == Decimal("2.5")
    assert tier.output_usd_per_mtok == Decimal(15)
    assert tier.metadata()["long_context"] == "true"
    for usage in (at_threshold, past):
        price = pricing.price("gemini-2.5-pro", usage, at=AT)
        assert price.cost_usd == genai_cost(
            "gemini-2.5-pro",
            input_tokens=usage.input_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            output_tokens=usage.output_tokens,
        )


def test_service_tiers_use_the_variant_prices(pricing: Pricing) -> None:
    usage = Usage(input_tokens=10_000, cache_read_tokens=2_000, output_tokens=3_000)
    standard = pricing.price("gpt-5", usage, at=AT)
    flex = pricing.price("gpt-5", usage, service_tier="flex", at=AT)
    priority = pricing.price("gpt-5", usage, service_tier="priority", at=AT)
    # gpt-5: $1.25 / $0.125 / $10 standard; flex $0.625 / $0.0625 / $5; priority $2.5 / $0.25 / $20.
    assert (
        standard.cost_usd
        == (8_000 * Decimal("1.25") + 2_000 * Decimal("0.125") + 3_000 * Decimal(10)) / M
    )
    assert (
        flex.cost_usd
        == (8_000 * Decimal("0.625") + 2_000 * Decimal("0.0625") + 3_000 * Decimal(5)) / M
    )
    assert (
        priority.cost_usd
        == (8_000 * Decimal("2.5") + 2_000 * Decimal("0.25") + 3_000 * Decimal(20)) / M
    )
    assert flex.price_variants == ("service_tier=flex",)
    assert flex.metadata()["price_variants"] == "service_tier=flex"
    for tier, price in (("flex", flex), ("priority", priority)):
        assert price.cost_usd == genai_cost(
            "gpt-5",
            input_tokens=10_000,
            cache_read_tokens=2_000,
            output_tokens=3_000,
            context={"service_tier": tier},
        )


def test_batch_processing_uses_the_batch_variant(pricing: Pricing) -> None:
    usage = Usage(input_tokens=10_000, output_tokens=2_000)
    batch = pricing.price("gpt-4o", usage, batch=True, at=AT)
    assert batch.cost_usd == (10_000 * Decimal("1.25") + 2_000 * Decimal(5)) / M
    assert batch.price_variants == ("processing=batch",)
    assert batch.cost_usd == genai_cost(
        "gpt-4o", input_tokens=10_000, output_tokens=2_000, context={"processing": "batch"}
    )


def test_overlapping_variants_resolve_as_genai_prices_does(pricing: Pricing) -> None:
    # Two matching variants that both set a price: the one listed first in the data wins.
    usage = Usage(input_tokens=10_000, cache_read_tokens=1_000, output_tokens=2_000)
    both = pricing.price("gpt-4o", usage, service_tier="priority", batch=True, at=AT)
    assert both.price_variants == ("processing=batch", "service_tier=priority")
    assert both.cost_usd == genai_cost(
        "gpt-4o",
        input_tokens=10_000,
        cache_read_tokens=1_000,
        output_tokens=2_000,
        context={"service_tier": "priority", "processing": "batch"},
    )


def test_a_tier_the_model_has_no_price_for_falls_back_to_the_base_price(pricing: Pricing) -> None:
    usage = Usage(input_tokens=10_000, output_tokens=2_000)
    base = pricing.price("claude-sonnet-4", usage, at=AT)
    asked = pricing.price("claude-sonnet-4", usage, service_tier="priority", at=AT)
    assert asked.cost_usd == base.cost_usd == (10_000 * Decimal(3) + 2_000 * Decimal(15)) / M
    assert asked.price_variants == ()
    assert "price_variants" not in asked.metadata()


def test_a_tier_is_only_priced_from_the_date_it_starts(pricing: Pricing) -> None:
    usage = Usage(input_tokens=10_000, output_tokens=2_000)
    before = pricing.price("gpt-5", usage, service_tier="flex", at=BEFORE_TIERS)
    assert before.price_variants == ()
    assert before.cost_usd == (10_000 * Decimal("1.25") + 2_000 * Decimal(10)) / M
    assert before.cost_usd == genai_cost(
        "gpt-5",
        input_tokens=10_000,
        output_tokens=2_000,
        context={"service_tier": "flex"},
        at=BEFORE_TIERS,
    )


def test_dated_prices_follow_the_injected_clock() -> None:
    clock = FakeClock(start=datetime(2025, 6, 1, tzinfo=UTC).timestamp())
    pricing = Pricing(clock=clock)
    usage = Usage(input_tokens=1_000, output_tokens=1_000)
    # o3 cost $10 / $40 until 2025-06-10, then $2 / $8.
    assert pricing.price("o3", usage).cost_usd == (1_000 * Decimal(10) + 1_000 * Decimal(40)) / M
    clock.set(datetime(2025, 6, 11, tzinfo=UTC).timestamp())
    assert pricing.price("o3", usage).cost_usd == (1_000 * Decimal(2) + 1_000 * Decimal(8)) / M


def test_provider_selects_the_table(pricing: Pricing) -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    direct = pricing.price("claude-sonnet-4", usage, provider="anthropic", at=AT)
    assert direct.provider == "anthropic"
    assert direct.cost_usd == Decimal(18)


PROVIDER_MODELS = sorted(
    {(provider.id, model.id) for provider in genai_providers for model in provider.models}
)


@st.composite
def token_counts(draw: st.DrawFn) -> dict[str, int]:
    """Consistent counts: cache parts inside input, one-hour writes inside writes, reasoning
    inside output."""
    input_tokens = draw(st.integers(0, 3_000_000))
    cache_read = draw(st.integers(0, input_tokens // 2))
    cache_write = draw(st.integers(0, input_tokens // 2))
    output_tokens = draw(st.integers(0, 200_000))
    return {
        "input_tokens": input_tokens,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "cache_write_1h_tokens": draw(st.integers(0, cache_write)),
        "output_tokens": output_tokens,
        "reasoning_tokens": draw(st.integers(0, output_tokens)),
    }


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    provider_model=st.sampled_from(PROVIDER_MODELS),
    counts=token_counts(),
    context=st.sampled_from(
        [
            None,
            {"service_tier": "flex"},
            {"service_tier": "priority"},
            {"processing": "batch"},
            {"service_tier": "priority", "processing": "batch"},
        ]
    ),
    at=st.sampled_from([BEFORE_TIERS, AT, datetime(2024, 3, 1, tzinfo=UTC)]),
)
def test_agrees_exactly_with_genai_prices_on_every_bundled_model(
    provider_model: tuple[str, str],
    counts: dict[str, int],
    context: dict[str, str] | None,
    at: datetime,
) -> None:
    provider, model = provider_model
    try:
        expected = genai_cost(model, provider=provider, context=context, at=at, **counts)
    except LookupError:
        reject()  # a few bundled ids do not match their own patterns
    input_tokens, output_tokens = counts["input_tokens"], counts["output_tokens"]
    usage = Usage(
        input_tokens=input_tokens,
        cache_read_tokens=counts["cache_read_tokens"],
        cache_write_tokens=counts["cache_write_tokens"],
        output_tokens=output_tokens,
        reasoning_tokens=counts["reasoning_tokens"],
    )
    context = context or {}
    try:
        price = Pricing().price(
            model,
            usage,
            provider=provider,
            service_tier=context.get("service_tier"),
            batch="processing" in context,
            cache_write_1h_tokens=counts["cache_write_1h_tokens"],
            at=at,
        )
    except UnknownModel:
        # Refused only when a token kind it used has no price at all (genai-prices would have
        # charged those tokens nothing).
        found = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=1),
            model,
            provider_id=provider,
            genai_request_timestamp=at,
        )
        prices = found.model_price
        missing_input = input_tokens and prices.input_mtok is None
        missing_output = output_tokens and prices.output_mtok is None
        assert missing_input or missing_output
        return
    assert price.cost_usd == expected
    assert price.source == GENAI


# --------------------------------------------------------------------------------------------
# Overrides and unknown models


def test_overrides_beat_genai_prices() -> None:
    pricing = Pricing(
        overrides={
            "gpt-4o": ModelPrice(
                input_usd_per_mtok=Decimal(1),
                output_usd_per_mtok=Decimal(2),
                cache_read_usd_per_mtok=Decimal("0.5"),
            )
        }
    )
    usage = Usage(input_tokens=3_000, cache_read_tokens=1_000, output_tokens=500)
    price = pricing.price("gpt-4o", usage, provider="openai")
    assert price.cost_usd == (2_000 * Decimal(1) + 1_000 * Decimal("0.5") + 500 * Decimal(2)) / M
    assert price.source == "override"
    assert (price.resolved_model, price.provider) == ("gpt-4o", "openai")
    # Another model still comes from genai-prices.
    assert pricing.price("gpt-5", usage, at=AT).source == GENAI


def test_override_long_context_tier_and_one_hour_writes() -> None:
    price = ModelPrice(
        input_usd_per_mtok=Decimal(2),
        output_usd_per_mtok=Decimal(10),
        cache_write_usd_per_mtok=Decimal("2.5"),
        cache_write_1h_usd_per_mtok=Decimal(4),
        long_context=LongContextPrice(
            above_input_tokens=100_000,
            input_usd_per_mtok=Decimal(4),
            output_usd_per_mtok=Decimal(20),
            cache_write_usd_per_mtok=Decimal(5),
            cache_write_1h_usd_per_mtok=Decimal(8),
        ),
    )
    pricing = Pricing(overrides={"house-model": price})
    small = Usage(input_tokens=100_000, cache_write_tokens=10_000, output_tokens=1_000)
    large = Usage(input_tokens=100_001, cache_write_tokens=10_000, output_tokens=1_000)
    low = pricing.price("house-model", small, cache_write_1h_tokens=4_000)
    high = pricing.price("house-model", large, cache_write_1h_tokens=4_000)
    assert (
        low.cost_usd
        == (90_000 * Decimal(2) + 6_000 * Decimal("2.5") + 4_000 * Decimal(4) + 1_000 * Decimal(10))
        / M
    )
    assert (
        high.cost_usd
        == (90_001 * Decimal(4) + 6_000 * Decimal(5) + 4_000 * Decimal(8) + 1_000 * Decimal(20)) / M
    )
    assert (low.long_context, high.long_context) == (False, True)


def test_override_prices_accept_ints_strings_and_floats_as_exact_decimals() -> None:
    price = ModelPrice(input_usd_per_mtok=3, output_usd_per_mtok="15", cache_read_usd_per_mtok=0.3)  # type: ignore[arg-type]
    assert price.input_usd_per_mtok == Decimal(3)
    assert price.output_usd_per_mtok == Decimal(15)
    assert price.cache_read_usd_per_mtok == Decimal("0.3")
    assert isinstance(price.cache_read_usd_per_mtok, Decimal)


def test_refuse_policy_raises_unknown_model_with_its_fields(pricing: Pricing) -> None:
    with pytest.raises(UnknownModel) as caught:
        pricing.price("no-such-model-xyz", Usage(input_tokens=10), provider="acme")
    assert caught.value.model == "no-such-model-xyz"
    assert caught.value.provider == "acme"
    assert caught.value.field == "model"
    assert caught.value.value == "no-such-model-xyz"


def test_fallback_policy_prices_unknown_models_with_the_fallback() -> None:
    fallback = ModelPrice(input_usd_per_mtok=Decimal(5), output_usd_per_mtok=Decimal(25))
    pricing = Pricing(unknown_model="fallback", fallback=fallback)
    usage = Usage(input_tokens=2_000, output_tokens=1_000)
    price = pricing.price("no-such-model-xyz", usage, provider="acme")
    assert price.cost_usd == (2_000 * Decimal(5) + 1_000 * Decimal(25)) / M
    assert (price.source, price.resolved_model, price.provider) == ("fallback", None, "acme")
    # Known models are not affected by the fallback.
    assert pricing.price("gpt-4o", usage, at=AT).source == GENAI


def test_count_without_cost_policy_returns_an_unknown_cost() -> None:
    pricing = Pricing(unknown_model="count_without_cost")
    usage = Usage(input_tokens=2_000, output_tokens=1_000, cost_usd=Decimal(1))
    price = pricing.price("no-such-model-xyz", usage)
    assert price == Price(
        cost_usd=None,
        model="no-such-model-xyz",
        resolved_model=None,
        provider=None,
        source="unpriced",
    )
    assert price.metadata() == {
        "model": "no-such-model-xyz",
        "price_source": "unpriced",
        "cost_usd": "unknown",
    }
    priced = pricing.priced("no-such-model-xyz", usage)
    assert priced.cost_usd is None
    assert priced.input_tokens == 2_000


def test_a_model_listed_without_a_token_price_is_not_free(pricing: Pricing) -> None:
    # github-copilot lists gpt-4o with an empty price table (subscription): not a $0 call.
    usage = Usage(input_tokens=1_000, output_tokens=100)
    with pytest.raises(UnknownModel) as caught:
        pricing.price("gpt-4o", usage, provider="github-copilot", at=AT)
    assert caught.value.provider == "github-copilot"
    unpriced = Pricing(unknown_model="count_without_cost")
    assert unpriced.price("gpt-4o", usage, provider="github-copilot", at=AT).cost_usd is None


def test_an_input_only_model_prices_input_but_refuses_output(pricing: Pricing) -> None:
    embedding = pricing.price(
        "text-embedding-3-small", Usage(input_tokens=1_000_000), provider="openai", at=AT
    )
    assert embedding.cost_usd == Decimal("0.02")
    with pytest.raises(UnknownModel):
        pricing.price("text-embedding-3-small", Usage(input_tokens=1_000, output_tokens=1), at=AT)


def test_zero_usage_costs_zero(pricing: Pricing) -> None:
    assert pricing.price("gpt-4o", Usage(), at=AT).cost_usd == Decimal(0)


# --------------------------------------------------------------------------------------------
# Results: metadata and priced usage


def test_metadata_is_flat_strings(pricing: Pricing) -> None:
    price = pricing.price("gpt-5", Usage(input_tokens=1_000), service_tier="flex", at=AT)
    assert price.metadata() == {
        "model": "gpt-5",
        "price_source": GENAI,
        "cost_usd": str(price.cost_usd),
        "provider": "openai",
        "resolved_model": "gpt-5",
        "price_variants": "service_tier=flex",
    }
    assert Decimal(price.metadata()["cost_usd"]) == 1_000 * Decimal("0.625") / M


def test_priced_fills_cost_usd(pricing: Pricing) -> None:
    usage = Usage(input_tokens=10_000, cache_read_tokens=4_000, output_tokens=1_000)
    priced = pricing.priced("gpt-4o", usage, at=AT)
    assert priced.cost_usd == pricing.price("gpt-4o", usage, at=AT).cost_usd
    assert priced.cost_usd is not None
    assert priced.cost_usd > 0
    assert priced.replace(cost_usd=None) == usage.replace(cost_usd=None)


# --------------------------------------------------------------------------------------------
# No network, no fetched prices


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pricing tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_pricing_never_touches_the_network(no_network: None) -> None:
    from budgeteer import pricing as module

    # Start cold, so loading the bundled table also happens with the network refused.
    module._resolve.cache_clear()
    module._snapshot.cache_clear()
    pricing = Pricing(unknown_model="count_without_cost")
    usage = Usage(input_tokens=5_000, cache_read_tokens=1_000, output_tokens=500)
    for model in ("gpt-4o", "claude-sonnet-4", "gemini-2.5-pro", "o3", "mistral-large-latest"):
        price = pricing.price(model, usage, at=AT)
        assert price.cost_usd is not None
        assert price.cost_usd > 0
    assert pricing.price("no-such-model-xyz", usage).cost_usd is None
    with pytest.raises(AssertionError):
        socket.create_connection(("example.com", 443))  # the guard itself is live


def test_a_fetched_genai_snapshot_does_not_change_budgeteer_prices(pricing: Pricing) -> None:
    usage = Usage(input_tokens=1_000_000)
    before = pricing.price("gpt-4o", usage, at=AT).cost_usd
    # What UpdatePrices does after a fetch: swap genai-prices' process-wide snapshot.
    set_custom_snapshot(DataSnapshot(providers=[], from_auto_update=True))
    try:
        with pytest.raises(LookupError):
            genai_prices.calc_price(genai_prices.Usage(input_tokens=1), "gpt-4o")
        assert Pricing().price("gpt-4o", usage, at=AT).cost_usd == before == Decimal("2.5")
    finally:
        set_custom_snapshot(None)


def test_model_resolution_is_cached() -> None:
    from budgeteer import pricing as module

    pricing = Pricing()
    pricing.price("gpt-4o-mini", Usage(input_tokens=1), at=AT)
    hits = module._resolve.cache_info().hits
    pricing.price("gpt-4o-mini", Usage(input_tokens=2), at=AT)
    assert module._resolve.cache_info().hits == hits + 1


# --------------------------------------------------------------------------------------------
# Bad input: fields, never message text


@pytest.mark.parametrize(
    "model",
    ["", "   ", "x" * (MAX_MODEL_NAME_LENGTH + 1), 42, None],
)
def test_bad_model_names_are_refused(pricing: Pricing, model: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        pricing.price(model, Usage(input_tokens=1))  # type: ignore[arg-type]
    assert caught.value.field == "model"
    assert caught.value.value == model
    assert not isinstance(caught.value, UnknownModel)


def test_bad_provider_is_refused(pricing: Pricing) -> None:
    with pytest.raises(InvalidInput) as caught:
        pricing.price("gpt-4o", Usage(input_tokens=1), provider="")
    assert (caught.value.field, caught.value.value) == ("provider", "")


def test_usage_must_be_a_budgeteer_usage(pricing: Pricing) -> None:
    raw = {"input_tokens": 1}
    with pytest.raises(InvalidInput) as caught:
        pricing.price("gpt-4o", raw)  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.value) == ("usage", raw)


@pytest.mark.parametrize("hour_tokens", [-1, 11, True, 1.5])
def test_one_hour_writes_must_be_part_of_cache_writes(
    pricing: Pricing, hour_tokens: object
) -> None:
    usage = Usage(input_tokens=100, cache_write_tokens=10)
    with pytest.raises(InvalidInput) as caught:
        pricing.price("claude-sonnet-4", usage, cache_write_1h_tokens=hour_tokens)  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.value) == ("cache_write_1h_tokens", hour_tokens)


def test_bad_price_context_is_refused(pricing: Pricing) -> None:
    with pytest.raises(InvalidInput) as caught:
        pricing.price("gpt-4o", Usage(input_tokens=1), price_context={"speed": 1})  # type: ignore[dict-item]
    assert (caught.value.field, caught.value.value) == ("price_context['speed']", 1)
    with pytest.raises(InvalidInput) as caught:
        pricing.price("gpt-4o", Usage(input_tokens=1), service_tier="")
    assert (caught.value.field, caught.value.value) == ("service_tier", "")
    with pytest.raises(InvalidInput) as caught:
        pricing.price("gpt-4o", Usage(input_tokens=1), at="2026-01-01")  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.value) == ("at", "2026-01-01")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input_usd_per_mtok", Decimal(-1)),
        ("input_usd_per_mtok", Decimal("NaN")),
        ("output_usd_per_mtok", Decimal("Infinity")),
        ("output_usd_per_mtok", float("inf")),
        ("cache_read_usd_per_mtok", float("nan")),
        ("cache_write_usd_per_mtok", "-0.5"),
        ("cache_read_usd_per_mtok", "cheap"),
        ("input_usd_per_mtok", True),
        ("output_usd_per_mtok", [1]),
    ],
)
def test_bad_model_prices_name_the_field_and_value(field: str, value: object) -> None:
    kwargs: dict[str, object] = {
        "input_usd_per_mtok": Decimal(1),
        "output_usd_per_mtok": Decimal(2),
    }
    kwargs[field] = value
    with pytest.raises(InvalidInput) as caught:
        ModelPrice(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == f"model_price.{field}"
    if isinstance(value, float | Decimal) and Decimal(value).is_nan():
        assert Decimal(caught.value.value).is_nan()  # type: ignore[arg-type]  # NaN != NaN
    else:
        assert caught.value.value == value


def test_bad_long_context_tiers_are_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        LongContextPrice(
            above_input_tokens=-5, input_usd_per_mtok=Decimal(1), output_usd_per_mtok=Decimal(1)
        )
    assert (caught.value.field, caught.value.value) == ("long_context.above_input_tokens", -5)
    with pytest.raises(InvalidInput) as caught:
        LongContextPrice(
            above_input_tokens=10, input_usd_per_mtok=Decimal(-1), output_usd_per_mtok=Decimal(1)
        )
    assert (caught.value.field, caught.value.value) == (
        "long_context.input_usd_per_mtok",
        Decimal(-1),
    )
    # The tier must price the same cache kinds as the base price.
    with pytest.raises(InvalidInput) as caught:
        ModelPrice(
            input_usd_per_mtok=Decimal(1),
            output_usd_per_mtok=Decimal(2),
            cache_read_usd_per_mtok=Decimal("0.1"),
            long_context=LongContextPrice(
                above_input_tokens=10, input_usd_per_mtok=Decimal(2), output_usd_per_mtok=Decimal(4)
            ),
        )
    assert (caught.value.field, caught.value.value) == (
        "long_context.cache_read_usd_per_mtok",
        None,
    )


def test_one_hour_write_price_needs_a_cache_write_price() -> None:
    with pytest.raises(InvalidInput) as caught:
        ModelPrice(
            input_usd_per_mtok=Decimal(1),
            output_usd_per_mtok=Decimal(2),
            cache_write_1h_usd_per_mtok=Decimal(2),
        )
    assert (caught.value.field, caught.value.value) == (
        "model_price.cache_write_usd_per_mtok",
        None,
    )


def test_bad_pricing_configuration_is_refused() -> None:
    price = ModelPrice(input_usd_per_mtok=Decimal(1), output_usd_per_mtok=Decimal(2))
    with pytest.raises(InvalidInput) as caught:
        Pricing(unknown_model="guess")  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.value) == ("unknown_model", "guess")
    with pytest.raises(InvalidInput) as caught:
        Pricing(unknown_model="fallback")
    assert (caught.value.field, caught.value.value) == ("fallback", None)
    with pytest.raises(InvalidInput) as caught:
        Pricing(fallback=price)
    assert (caught.value.field, caught.value.value) == ("fallback", price)
    with pytest.raises(InvalidInput) as caught:
        Pricing(overrides={"gpt-4o": {"input": 1}})  # type: ignore[dict-item]
    assert (caught.value.field, caught.value.value) == ("overrides['gpt-4o']", {"input": 1})
    with pytest.raises(InvalidInput) as caught:
        Pricing(overrides={"": price})
    assert (caught.value.field, caught.value.value) == ("overrides", "")


# --------------------------------------------------------------------------------------------
# The guard's shortcut: pricing token counts without building a Usage or a Price

_SHORTCUT_PRICINGS = {
    "refuse": lambda clock: Pricing(clock=clock),
    "count_without_cost": lambda clock: Pricing(unknown_model="count_without_cost", clock=clock),
    "fallback with an override": lambda clock: Pricing(
        overrides={"gpt-4o": ModelPrice(input_usd_per_mtok="1.5", output_usd_per_mtok="6")},
        unknown_model="fallback",
        fallback=ModelPrice(input_usd_per_mtok=3, output_usd_per_mtok=15),
        clock=clock,
    ),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    provider_model=st.sampled_from([*PROVIDER_MODELS, (None, "gpt-4o"), (None, "no-such-model")]),
    input_tokens=st.integers(0, 3_000_000),
    output_tokens=st.sampled_from([0, 1, 256, 4096, 1_000_000]),
    requests=st.sampled_from([0, 1]),
    kind=st.sampled_from(sorted(_SHORTCUT_PRICINGS)),
    at=st.sampled_from([BEFORE_TIERS, AT, datetime(2024, 3, 1, tzinfo=UTC)]),
)
def test_token_cost_is_what_price_answers(
    provider_model: tuple[str | None, str],
    input_tokens: int,
    output_tokens: int,
    requests: int,
    kind: str,
    at: datetime,
) -> None:
    provider, model = provider_model
    pricing = _SHORTCUT_PRICINGS[kind](FakeClock(start=at.timestamp()))
    usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens, requests=requests)
    try:
        expected: object = pricing.price(model, usage, provider=provider).cost_usd
    except UnknownModel as error:
        expected = (type(error), error.model, error.provider)
    try:
        got: object = pricing._token_cost(model, input_tokens, output_tokens, provider, requests)
    except UnknownModel as error:
        got = (type(error), error.model, error.provider)
    assert got == expected
    if isinstance(expected, Decimal):
        assert str(got) == str(expected)  # the same arithmetic, so the same digits


def test_token_cost_checks_names_as_price_does(pricing: Pricing) -> None:
    for model, provider, field_name in (("", None, "model"), ("gpt-4o", " ", "provider")):
        with pytest.raises(InvalidInput) as caught:
            pricing._token_cost(model, 10, 10, provider)
        assert caught.value.field == field_name


def test_token_cost_goes_through_a_subclass_that_reprices() -> None:
    seen: list[tuple[str, Usage, str | None]] = []

    class Prefixed(Pricing):
        __slots__ = ()

        def price(self, model: str, usage: Usage, **kwargs: object) -> Price:  # type: ignore[override]
            seen.append((model, usage, kwargs.get("provider")))  # type: ignore[arg-type]
            return super().price(model.removeprefix("openai/"), usage, **kwargs)  # type: ignore[arg-type]

    cost = Prefixed()._token_cost("openai/gpt-4o", 100, 20, None, 1)
    assert seen == [("openai/gpt-4o", Usage(input_tokens=100, output_tokens=20, requests=1), None)]
    assert cost == Pricing().price("gpt-4o", Usage(input_tokens=100, output_tokens=20)).cost_usd
