"""The Usage fast paths agree with the validated constructors they stand in for."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from budgeteer import InvalidInput, Usage


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    output = draw(st.integers(0, 10**6))
    inputs = draw(st.integers(0, 10**6))
    cached = draw(st.integers(0, inputs))
    cost = draw(st.none() | st.decimals(0, 100, places=12))
    return Usage(
        input_tokens=inputs,
        cache_read_tokens=cached,
        output_tokens=output,
        reasoning_tokens=draw(st.integers(0, output)),
        requests=draw(st.integers(0, 3)),
        wall_time_s=draw(st.floats(0, 1000, allow_nan=False)),
        cost_usd=cost,
    )


@given(usages(), st.none() | st.decimals(0, 100, places=12))
def test_with_cost_equals_replace(usage: Usage, cost: Decimal | None) -> None:
    fast, slow = usage.with_cost(cost), usage.replace(cost_usd=cost)
    assert fast == slow
    assert fast.units == slow.units
    assert fast.charged_units == slow.charged_units
    assert fast.tokens == slow.tokens


@pytest.mark.parametrize("bad", [Decimal(-1), Decimal("NaN"), "lots", 10**30])
def test_with_cost_still_validates_the_cost(bad: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        Usage(output_tokens=1).with_cost(bad)  # type: ignore[arg-type]
    assert caught.value.field == "usage.cost_usd"
