"""Prices of model calls in ``Decimal`` dollars, from the data bundled with ``genai-prices``.

``Pricing.price(model, usage)`` answers what a call cost and which prices were used; the
``Price`` it returns records that for the ledger (``Price.metadata()``). Prices come, in order,
from the caller's ``overrides``, from the price table shipped inside the ``genai-prices`` wheel
(never fetched: budgeteer does not use its ``UpdatePrices``), and, for models neither knows, from
the ``unknown_model`` policy: refuse, use a ``fallback`` price, or count the call with an
unknown (``None``) cost. A cost is never a silent zero.

Accounting rules (the traps are all here):

* budgeteer's ``input_tokens`` *includes* cache reads and cache writes, and genai-prices counts
  the same way (its cache units are children of the input unit and are subtracted from it), so
  each cached token is charged once, at its cache price; a model without a cache price charges
  it at the plain input price.
* ``output_tokens`` *includes* ``reasoning_tokens``: they are charged once, at the output price,
  or at a separate reasoning price for the few models whose data has one.
* Long-context tiers follow genai-prices' ``TieredPrices``: once the request's whole
  ``input_tokens`` (cached parts included) is *above* a tier's start, every token of the request,
  input and output, is billed at that tier's prices.
* Anthropic's one-hour cache writes cost more than five-minute ones: pass the one-hour part of
  ``cache_write_tokens`` as ``cache_write_1h_tokens``. A model whose data has no one-hour price
  bills them at its cache-write price (or, lacking that, its input price), as genai-prices does.
* Service tiers, batch processing and other request variants are genai-prices "price variants"
  (``service_tier=flex``, ``processing=batch``, ...). A variant the model's data lacks is not an
  error: the base price applies and ``Price.price_variants`` records that none matched.
* budgeteer's ``Usage`` has no modalities: audio, image and video tokens are priced as text.

Performance: resolving a model name is cached (``functools.lru_cache``), and so is the price
table of each (model, active price variants) pair, so a repeated ``price()`` call does a few
dictionary lookups and some ``Decimal`` arithmetic: genai-prices' own ``calc_price`` re-validates
its unit registry on every call and costs roughly ten times as much. A table without tiers
has its prices picked once, and a model whose only dated prices are variants reads no clock
when no variant is asked for. The run guard prices its estimates and the policy's probes from
bare token counts (``Pricing._token_cost``: the same tables and arithmetic, no ``Usage`` or
``Price`` built), except through a subclass that overrides ``price``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import cache, lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal, NamedTuple, TypeAlias

from budgeteer._clock import SYSTEM_CLOCK, Clock
from budgeteer.errors import InvalidInput, UnknownModel
from budgeteer.model import Usage

if TYPE_CHECKING:
    from genai_prices.data_snapshot import DataSnapshot
    from genai_prices.types import ModelInfo, PriceVariant, Provider

__all__ = [
    "MAX_MODEL_NAME_LENGTH",
    "LongContextPrice",
    "ModelPrice",
    "Price",
    "Pricing",
    "UnknownModelPolicy",
]

UnknownModelPolicy: TypeAlias = Literal["refuse", "fallback", "count_without_cost"]
"""What ``Pricing`` does for a model it has no price for (see ``Pricing``)."""

MAX_MODEL_NAME_LENGTH: Final = 256
"""The longest model (or provider) name accepted; longer ones are refused as malformed."""

_POLICIES: Final = ("refuse", "fallback", "count_without_cost")
_MTOK: Final = Decimal(1_000_000)
_KCOUNT: Final = Decimal(1_000)

# --------------------------------------------------------------------------------------------
# User-supplied prices


def _check_price(field_name: str, value: object) -> Decimal:
    """``value`` as a finite, non-negative ``Decimal`` (floats through their shortest repr)."""
    if isinstance(value, bool):
        raise InvalidInput(field_name, value, "expected a number of USD per million tokens")
    try:
        if isinstance(value, float):
            price = Decimal(repr(value))
        elif isinstance(value, Decimal | int | str):
            price = Decimal(value)
        else:
            raise InvalidInput(field_name, value, "expected a Decimal, int or numeric str")
    except InvalidOperation:
        raise InvalidInput(field_name, value, "expected a Decimal, int or numeric str") from None
    if not price.is_finite():
        raise InvalidInput(field_name, value, "expected a finite price")
    if price < 0:
        raise InvalidInput(field_name, value, "a price must not be negative")
    return price


def _check_optional_price(field_name: str, value: object) -> Decimal | None:
    return None if value is None else _check_price(field_name, value)


@dataclass(frozen=True, slots=True)
class LongContextPrice:
    """The prices of a long-context tier: used for the *whole* request past a threshold.

    Mirrors genai-prices' ``TieredPrices``: when a request's ``input_tokens`` (cached parts
    included) is strictly above ``above_input_tokens``, every token of it, input and output, is
    billed at these prices instead of the base ones. Each cache price must be set exactly when
    the base ``ModelPrice`` sets it.
    """

    above_input_tokens: int
    """The threshold: requests with more input tokens than this are billed at this tier."""
    input_usd_per_mtok: Decimal
    """USD per million uncached input tokens in this tier."""
    output_usd_per_mtok: Decimal
    """USD per million output tokens (reasoning included) in this tier."""
    cache_read_usd_per_mtok: Decimal | None = None
    """USD per million cached input tokens read in this tier."""
    cache_write_usd_per_mtok: Decimal | None = None
    """USD per million input tokens written to the cache in this tier."""
    cache_write_1h_usd_per_mtok: Decimal | None = None
    """USD per million input tokens written to a one-hour cache in this tier."""

    def __post_init__(self) -> None:
        threshold = self.above_input_tokens
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise InvalidInput(
                "long_context.above_input_tokens", threshold, "expected a whole number >= 0"
            )
        _normalise_prices(self, "long_context")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """A price for one model, in USD per million tokens: an override or the fallback price.

    Every amount is a ``Decimal`` (ints, numeric strings and floats are converted, floats through
    their shortest ``repr``); negative, NaN and infinite prices raise ``InvalidInput`` naming the
    field. A cache price left as ``None`` bills those tokens at the next more general price, as
    genai-prices does: cache reads and writes at ``input_usd_per_mtok``, one-hour cache writes at
    ``cache_write_usd_per_mtok``. Cache writes usually cost *more* than input (Anthropic: 1.25x
    for five minutes, 2x for an hour), so set every price the provider charges.
    """

    input_usd_per_mtok: Decimal
    """USD per million uncached input tokens."""
    output_usd_per_mtok: Decimal
    """USD per million output tokens; reasoning tokens are output tokens and cost the same."""
    cache_read_usd_per_mtok: Decimal | None = None
    """USD per million input tokens read from the prompt cache (``None``: the input price)."""
    cache_write_usd_per_mtok: Decimal | None = None
    """USD per million input tokens written to the cache (``None``: the input price)."""
    cache_write_1h_usd_per_mtok: Decimal | None = None
    """USD per million tokens written to a one-hour cache, e.g. Anthropic's ``ttl: "1h"``
    (``None``: the ``cache_write_usd_per_mtok`` price; setting it requires that one)."""
    long_context: LongContextPrice | None = None
    """An optional long-context tier that reprices the whole request past a threshold."""

    def __post_init__(self) -> None:
        _normalise_prices(self, "model_price")
        if self.cache_write_1h_usd_per_mtok is not None and self.cache_write_usd_per_mtok is None:
            raise InvalidInput(
                "model_price.cache_write_usd_per_mtok",
                None,
                "required when cache_write_1h_usd_per_mtok is set",
            )
        tier = self.long_context
        if tier is None:
            return
        if not isinstance(tier, LongContextPrice):
            raise InvalidInput("model_price.long_context", tier, "expected a LongContextPrice")
        for name in _OPTIONAL_PRICE_FIELDS:
            base, tiered = getattr(self, name), getattr(tier, name)
            if (base is None) != (tiered is None):
                raise InvalidInput(
                    f"long_context.{name}",
                    tiered,
                    f"set it exactly when the base price sets {name} (base: {base})",
                )

    def _rates(self) -> _Rates:
        tier = self.long_context

        def rate(name: str) -> _Rate | None:
            base: Decimal | None = getattr(self, name)
            if base is None:
                return None
            if tier is None:
                return base
            return (base, ((tier.above_input_tokens, getattr(tier, name)),))

        return _Rates(
            input=rate("input_usd_per_mtok"),
            output=rate("output_usd_per_mtok"),
            cache_read=rate("cache_read_usd_per_mtok"),
            cache_write=rate("cache_write_usd_per_mtok"),
            cache_write_1h=rate("cache_write_1h_usd_per_mtok"),
            reasoning=None,
            requests_per_k=None,
        )


_REQUIRED_PRICE_FIELDS: Final = ("input_usd_per_mtok", "output_usd_per_mtok")
_OPTIONAL_PRICE_FIELDS: Final = (
    "cache_read_usd_per_mtok",
    "cache_write_usd_per_mtok",
    "cache_write_1h_usd_per_mtok",
)


def _normalise_prices(target: ModelPrice | LongContextPrice, owner: str) -> None:
    for name in _REQUIRED_PRICE_FIELDS:
        price = _check_price(f"{owner}.{name}", getattr(target, name))
        object.__setattr__(target, name, price)
    for name in _OPTIONAL_PRICE_FIELDS:
        optional = _check_optional_price(f"{owner}.{name}", getattr(target, name))
        object.__setattr__(target, name, optional)


# --------------------------------------------------------------------------------------------
# The result


@dataclass(frozen=True, slots=True)
class Price:
    """What one call cost, and which prices said so (for the audit trail).

    The ``*_usd_per_mtok`` fields are the prices *applied* to this request, after the
    long-context tier and any service-tier variant: a token kind without its own price shows the
    price it was billed at (cache reads at the input price, reasoning at the output price, ...).
    They are all ``None`` when the cost is unknown.
    """

    cost_usd: Decimal | None
    """The cost in USD, exact; ``None`` when unknown (policy ``"count_without_cost"``)."""
    model: str
    """The model name as given to ``Pricing.price``."""
    resolved_model: str | None
    """The genai-prices model id, or the override's name; ``None`` for fallback and unpriced."""
    provider: str | None
    """The provider id genai-prices matched, else the provider as given (or ``None``)."""
    source: str
    """``"override"``, ``"genai-prices <version>"``, ``"fallback"`` or ``"unpriced"``."""
    input_usd_per_mtok: Decimal | None = None
    """Applied price of uncached input tokens."""
    output_usd_per_mtok: Decimal | None = None
    """Applied price of output tokens."""
    cache_read_usd_per_mtok: Decimal | None = None
    """Applied price of input tokens read from the cache."""
    cache_write_usd_per_mtok: Decimal | None = None
    """Applied price of input tokens written to the cache (five-minute or unspecified TTL)."""
    cache_write_1h_usd_per_mtok: Decimal | None = None
    """Applied price of input tokens written to a one-hour cache."""
    reasoning_usd_per_mtok: Decimal | None = None
    """Applied price of reasoning tokens (the output price unless the data says otherwise)."""
    request_usd: Decimal | None = None
    """A flat fee per request, for the few models that have one; else ``None``."""
    long_context: bool = False
    """True if the request was past a long-context threshold and billed at the tier prices."""
    price_variants: tuple[str, ...] = ()
    """The genai-prices variants that matched, e.g. ``("service_tier=flex",)``; empty when the
    base price was used (including for a requested tier the model has no price for)."""

    def metadata(self) -> dict[str, str]:
        """Flat string items to record with a ledger commit.

        Always ``model``, ``price_source`` and ``cost_usd`` (``"unknown"`` when ``None``); then
        ``provider``, ``resolved_model``, ``price_variants`` (comma-separated) and
        ``long_context`` (``"true"``) when they apply.
        """
        items = {
            "model": self.model,
            "price_source": self.source,
            "cost_usd": "unknown" if self.cost_usd is None else str(self.cost_usd),
        }
        if self.provider is not None:
            items["provider"] = self.provider
        if self.resolved_model is not None:
            items["resolved_model"] = self.resolved_model
        if self.price_variants:
            items["price_variants"] = ",".join(self.price_variants)
        if self.long_context:
            items["long_context"] = "true"
        return items


# --------------------------------------------------------------------------------------------
# Internal price tables and the arithmetic

_Rate: TypeAlias = Decimal | tuple[Decimal, tuple[tuple[int, Decimal], ...]]
"""A flat price, or ``(base, ((start, price), ...))`` with tiers in ascending ``start``."""


class _Applied(NamedTuple):
    """The prices one request pays, per million tokens (``requests_per_k``: per thousand)."""

    input: Decimal | None
    output: Decimal | None
    cache_read: Decimal | None
    cache_write: Decimal | None
    cache_write_1h: Decimal | None
    reasoning: Decimal | None
    requests_per_k: Decimal | None


@dataclass(frozen=True, slots=True)
class _Rates:
    """One model's prices in the few units a budgeteer ``Usage`` can report."""

    input: _Rate | None
    output: _Rate | None
    cache_read: _Rate | None
    cache_write: _Rate | None
    cache_write_1h: _Rate | None
    reasoning: _Rate | None
    requests_per_k: _Rate | None
    rates: tuple[_Rate | None, ...] = field(init=False)
    """The seven rates above, in ``_Applied`` field order."""
    tiered: bool = field(init=False)
    flat: _Applied | None = field(init=False)
    """Without tiers: the prices every request pays, picked once (``_pick`` is not needed)."""

    def __post_init__(self) -> None:
        rates = (
            self.input,
            self.output,
            self.cache_read,
            self.cache_write,
            self.cache_write_1h,
            self.reasoning,
            self.requests_per_k,
        )
        tiered = any(isinstance(r, tuple) for r in rates)
        object.__setattr__(self, "rates", rates)
        object.__setattr__(self, "tiered", tiered)
        flat = None if tiered else _Applied(*(r if isinstance(r, Decimal) else None for r in rates))
        object.__setattr__(self, "flat", flat)

    def applied(self, input_tokens: int) -> tuple[_Applied, bool]:
        """The prices a request with ``input_tokens`` pays, and whether a long-context tier did."""
        if self.flat is not None:
            return self.flat, False
        long_context = False
        prices: list[Decimal | None] = []
        for rate in self.rates:
            if rate is None:
                prices.append(None)
                continue
            price, tiered = _pick(rate, input_tokens)
            long_context = long_context or tiered
            prices.append(price)
        return _Applied(*prices), long_context


def _pick(rate: _Rate, input_tokens: int) -> tuple[Decimal, bool]:
    """The price that applies to a request with ``input_tokens``, and whether a tier did."""
    if isinstance(rate, Decimal):
        return rate, False
    base, tiers = rate
    # Same rule as genai-prices' calc_unit_price: the highest tier whose start is exceeded.
    for start, price in reversed(tiers):
        if input_tokens > start:
            return price, True
    return base, False


def _priceable(rates: _Rates, input_tokens: int, output_tokens: int) -> bool:
    """False if a token kind the request used has no price at all in ``rates``."""
    # An empty or partial price table (e.g. a subscription-only or audio-priced model) is
    # "no price", not "free": pricing it would be a silent zero.
    return not ((input_tokens and rates.input is None) or (output_tokens and rates.output is None))


def _leaf_cost(
    prices: _Applied,
    input_tokens: int,
    cache_read_tokens: int,
    cache_write_tokens: int,
    cache_write_1h_tokens: int,
    output_tokens: int,
    reasoning_tokens: int,
) -> Decimal:
    """The cost of a request's tokens at the ``prices`` it pays (from ``_Rates.applied``)."""
    (
        input_price,
        output_price,
        cache_read_price,
        cache_write_price,
        cache_write_1h_price,
        reasoning_price,
        request_price,
    ) = prices
    # Leaf counts, as genai-prices' decompose.compute_leaf_values: a more specific unit that has
    # a price is carved out of its parent, so every token is charged exactly once.
    cache_read = cache_read_tokens if cache_read_price is not None else 0
    cache_write_1h = cache_write_1h_tokens if cache_write_1h_price is not None else 0
    cache_write = cache_write_tokens - cache_write_1h if cache_write_price is not None else 0
    reasoning = reasoning_tokens if reasoning_price is not None else 0
    parts = (
        (input_price, input_tokens - cache_read - cache_write - cache_write_1h),
        (cache_read_price, cache_read),
        (cache_write_price, cache_write),
        (cache_write_1h_price, cache_write_1h),
        (output_price, output_tokens - reasoning),
        (reasoning_price, reasoning),
    )
    cost = Decimal(0)
    for price, count in parts:
        if price is not None and count:
            cost += price * count / _MTOK
    if request_price is not None:
        cost += request_price / _KCOUNT
    return cost


def _compute(
    rates: _Rates,
    usage: Usage,
    *,
    cache_write_1h_tokens: int,
    model: str,
    resolved: str | None,
    provider: str | None,
    source: str,
    variants: tuple[str, ...] = (),
) -> Price:
    """Price ``usage`` with ``rates`` (``_priceable`` for it)."""
    input_tokens = usage.input_tokens
    prices, long_context = rates.applied(input_tokens)
    cost = _leaf_cost(
        prices,
        input_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        cache_write_1h_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
    )
    input_price, output_price, request_price = prices.input, prices.output, prices.requests_per_k
    cache_read_price = prices.cache_read if prices.cache_read is not None else input_price
    cache_write_price = prices.cache_write if prices.cache_write is not None else input_price
    cache_write_1h_price = prices.cache_write_1h
    if cache_write_1h_price is None:
        cache_write_1h_price = cache_write_price
    reasoning_price = prices.reasoning
    return Price(
        cost_usd=cost,
        model=model,
        resolved_model=resolved,
        provider=provider,
        source=source,
        input_usd_per_mtok=input_price,
        output_usd_per_mtok=output_price,
        cache_read_usd_per_mtok=cache_read_price,
        cache_write_usd_per_mtok=cache_write_price,
        cache_write_1h_usd_per_mtok=cache_write_1h_price,
        reasoning_usd_per_mtok=reasoning_price if reasoning_price is not None else output_price,
        request_usd=None if request_price is None else request_price / _KCOUNT,
        long_context=long_context,
        price_variants=variants,
    )


# --------------------------------------------------------------------------------------------
# genai-prices, imported lazily so that `import budgeteer` stays light


@cache
def _genai_source() -> str:
    import genai_prices

    return f"genai-prices {genai_prices.__version__}"


@cache
def _snapshot() -> DataSnapshot:
    """Our own snapshot of the price table bundled in the wheel.

    genai-prices' ``calc_price`` reads a process-wide snapshot that ``UpdatePrices`` may replace
    with one fetched over the network; budgeteer holds its own so its prices never move under it.
    """
    from genai_prices.data import providers
    from genai_prices.data_snapshot import DataSnapshot

    return DataSnapshot(providers=providers, from_auto_update=False)


def _genai_rate(value: object) -> _Rate | None:
    from genai_prices.types import TieredPrices

    if value is None:
        return None
    if isinstance(value, TieredPrices):
        return (value.base, tuple((tier.start, tier.price) for tier in value.tiers))
    if isinstance(value, Decimal):
        return value
    raise TypeError(f"unexpected genai-prices price {value!r}")  # pragma: no cover


class _GenaiModel:
    """One resolved genai-prices model, with its price tables cached per active variant set."""

    __slots__ = (
        "_conditionals",
        "_rates",
        "_variants",
        "model_id",
        "provider_id",
        "static",
        "static_base",
    )

    def __init__(self, provider: Provider, model: ModelInfo) -> None:
        from genai_prices.types import ModelPrice as GenaiModelPrice

        self.model_id = model.id
        self.provider_id = provider.id
        prices = model.prices
        self._conditionals = (
            ((None, prices),)
            if isinstance(prices, GenaiModelPrice)
            else tuple((c.constraint, c.prices) for c in prices)
        )
        # As in genai-prices' ModelInfo.calc_price: a model found through a fallback provider
        # (Azure serving OpenAI's table, say) ignores the request's price context.
        owned = any(candidate is model for candidate in provider.models)
        self._variants: tuple[PriceVariant, ...] = (
            tuple(model.price_variants or ()) if owned else ()
        )
        # Most models' prices never change with time: skip reading the clock for them.
        self.static = (
            len(self._conditionals) == 1
            and self._conditionals[0][0] is None
            and all(variant.constraint is None for variant in self._variants)
        )
        # Without a price context the variants do not apply: then only the conditionals matter.
        self.static_base = len(self._conditionals) == 1 and self._conditionals[0][0] is None
        self._rates: dict[tuple[int, tuple[int, ...]], _Rates] = {}

    def rates(
        self, context: Mapping[str, str], at: datetime | None
    ) -> tuple[_Rates, tuple[str, ...]]:
        """The price table for a request with ``context`` at time ``at`` (``None``: static)."""
        if at is None and not context:
            # The common case (a static price, no variant asked for) is one cached table.
            plain = self._rates.get(_PLAIN)
            if plain is not None:
                return plain, ()
        # Mirrors genai-prices' ModelInfo.get_prices: the last active conditional price wins;
        # matching variants override it key by key, the first match per key taking precedence.
        chosen = 0
        if at is not None:
            for index in range(len(self._conditionals) - 1, -1, -1):
                constraint = self._conditionals[index][0]
                if constraint is None or constraint.active(at):
                    chosen = index
                    break
        matched: tuple[int, ...] = ()
        if context:
            matched = tuple(
                index
                for index, variant in enumerate(self._variants)
                if (at is None or variant.constraint is None or variant.constraint.active(at))
                and all(context.get(key) == value for key, value in variant.when.items())
            )
        key = (chosen, matched)
        rates = self._rates.get(key)
        if rates is None:
            rates = self._build(chosen, matched)
            self._rates[key] = rates
        names = tuple(
            sorted({f"{k}={v}" for i in matched for k, v in self._variants[i].when.items()})
        )
        return rates, names

    def _build(self, chosen: int, matched: tuple[int, ...]) -> _Rates:
        values = dict(self._conditionals[chosen][1].__dict__)
        overrides: dict[str, object] = {}
        for index in matched:
            for name, value in self._variants[index].prices.__dict__.items():
                if value is not None:
                    overrides.setdefault(name, value)
        values.update(overrides)
        return _Rates(
            input=_genai_rate(values.get("input_mtok")),
            output=_genai_rate(values.get("output_mtok")),
            cache_read=_genai_rate(values.get("cache_read_mtok")),
            cache_write=_genai_rate(values.get("cache_write_mtok")),
            cache_write_1h=_genai_rate(values.get("cache_write_1h_mtok")),
            reasoning=_genai_rate(values.get("output_reasoning_mtok")),
            requests_per_k=_genai_rate(values.get("requests_kcount")),
        )


_PLAIN: Final = (0, ())
"""The ``_GenaiModel._rates`` key of the base price table with no variant matched."""


@lru_cache(maxsize=4096)
def _resolve(model: str, provider: str | None) -> _GenaiModel | None:
    """The genai-prices model that ``model`` (from ``provider``) names, or ``None``."""
    try:
        found_provider, found_model = _snapshot().find_provider_model(model, None, provider, None)
    except LookupError:
        return None
    return _GenaiModel(found_provider, found_model)


# --------------------------------------------------------------------------------------------
# The public entry point


def _check_name(field_name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInput(field_name, value, "expected a str")
    if not value.strip():
        raise InvalidInput(field_name, value, "must not be empty")
    if len(value) > MAX_MODEL_NAME_LENGTH:
        raise InvalidInput(field_name, value, f"longer than {MAX_MODEL_NAME_LENGTH} characters")
    return value


class Pricing:
    """Prices model calls: caller overrides first, then genai-prices' bundled table.

    A model neither knows (or that the table lists without a token price, such as
    subscription-only and "free" entries, which genai-prices cannot tell apart from "price not
    collected") is handled by ``unknown_model``:

    * ``"refuse"`` (default): raise ``UnknownModel``.
    * ``"fallback"``: price it with ``fallback`` (required with this policy).
    * ``"count_without_cost"``: return a ``Price`` whose ``cost_usd`` is ``None`` (unknown).

    Args:
        overrides: Prices by exact model name, used before genai-prices (whatever the provider).
        unknown_model: The policy above.
        fallback: The price for unknown models under ``"fallback"``; refused otherwise.
        clock: Where "now" comes from, to pick the prices in force (some change on a date).

    Raises:
        InvalidInput: for a malformed override, an unknown policy, or a ``fallback`` missing
            under ``"fallback"`` (or given under another policy).
    """

    __slots__ = ("_clock", "_fallback", "_overrides", "_policy")

    def __init__(
        self,
        overrides: Mapping[str, ModelPrice] | None = None,
        unknown_model: UnknownModelPolicy = "refuse",
        fallback: ModelPrice | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        if unknown_model not in _POLICIES:
            raise InvalidInput("unknown_model", unknown_model, f"use one of {_POLICIES}")
        if unknown_model == "fallback" and not isinstance(fallback, ModelPrice):
            raise InvalidInput(
                "fallback", fallback, "the 'fallback' policy needs a ModelPrice to fall back on"
            )
        if unknown_model != "fallback" and fallback is not None:
            raise InvalidInput(
                "fallback", fallback, f"unused under unknown_model={unknown_model!r}"
            )
        if overrides is not None and not isinstance(overrides, Mapping):
            raise InvalidInput("overrides", overrides, "expected a mapping of model name to price")
        checked: dict[str, _Rates] = {}
        for name, price in (overrides or {}).items():
            _check_name("overrides", name)
            if not isinstance(price, ModelPrice):
                raise InvalidInput(f"overrides[{name!r}]", price, "expected a ModelPrice")
            checked[name] = price._rates()
        self._overrides: Mapping[str, _Rates] = MappingProxyType(checked)
        self._policy: UnknownModelPolicy = unknown_model
        self._fallback = fallback._rates() if fallback is not None else None
        self._clock = clock if clock is not None else SYSTEM_CLOCK

    def price(
        self,
        model: str,
        usage: Usage,
        *,
        provider: str | None = None,
        service_tier: str | None = None,
        batch: bool = False,
        price_context: Mapping[str, str] | None = None,
        cache_write_1h_tokens: int = 0,
        at: datetime | None = None,
    ) -> Price:
        """The cost of one call of ``model`` that used ``usage``, with the prices behind it.

        Args:
            model: The model name as the caller or provider reports it, e.g. ``"gpt-4o"``.
            usage: The call's usage; only its token fields are priced.
            provider: A genai-prices provider id (``"openai"``, ``"aws"``, ...), if known;
                otherwise the provider is inferred from the model name.
            service_tier: The tier the provider reports it served, e.g. ``"flex"`` or
                ``"priority"``. Priced when the model's data has that variant; otherwise the
                base price applies (recorded as no ``Price.price_variants``).
            batch: The call went through a batch API (genai-prices' ``processing=batch``).
            price_context: Further genai-prices price-variant keys, e.g. ``{"speed": "fast"}``.
            cache_write_1h_tokens: The part of ``usage.cache_write_tokens`` written with a
                one-hour TTL (Anthropic's ``ephemeral_1h_input_tokens``).
            at: When the call happened (prices change on dates); default: the clock's now.

        Returns:
            The ``Price``; its ``cost_usd`` is ``None`` only under ``"count_without_cost"``.

        Raises:
            UnknownModel: no price for ``model`` under the ``"refuse"`` policy.
            InvalidInput: a malformed argument, naming it.
        """
        _check_name("model", model)
        if not isinstance(usage, Usage):
            raise InvalidInput("usage", usage, "expected a budgeteer.Usage")
        if provider is not None:
            _check_name("provider", provider)
        if (
            isinstance(cache_write_1h_tokens, bool)
            or not isinstance(cache_write_1h_tokens, int)
            or not 0 <= cache_write_1h_tokens <= usage.cache_write_tokens
        ):
            raise InvalidInput(
                "cache_write_1h_tokens",
                cache_write_1h_tokens,
                f"expected a whole number from 0 to usage.cache_write_tokens "
                f"({usage.cache_write_tokens})",
            )
        context = _price_context(service_tier, batch, price_context)
        if at is not None and not isinstance(at, datetime):
            raise InvalidInput("at", at, "expected a datetime")

        found = self._table(model, provider, context, at, usage.input_tokens, usage.output_tokens)
        if found is None:
            return self._unknown(model, provider)
        rates, resolved, provider_id, source, variants = found
        return _compute(
            rates,
            usage,
            cache_write_1h_tokens=cache_write_1h_tokens,
            model=model,
            resolved=resolved,
            provider=provider_id,
            source=source,
            variants=variants,
        )

    def _token_cost(
        self,
        model: str,
        input_tokens: int,
        output_tokens: int,
        provider: str | None,
        requests: int = 0,
    ) -> Decimal | None:
        """``price(model, Usage(input_tokens=, output_tokens=, requests=), provider=).cost_usd``
        without building the ``Usage`` or the ``Price`` (the guard prices each call's estimate
        and the policy two probes per plan). The counts must be valid ``Usage`` amounts."""
        if type(self).price is not _PRICE:
            # A subclass reprices (LiteLLMPricing reads provider prefixes): ask it.
            usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens, requests=requests)
            return self.price(model, usage, provider=provider).cost_usd
        _check_name("model", model)
        if provider is not None:
            _check_name("provider", provider)
        found = self._table(model, provider, _NO_CONTEXT, None, input_tokens, output_tokens)
        if found is None:
            return self._unknown(model, provider).cost_usd
        prices, _ = found[0].applied(input_tokens)
        return _leaf_cost(prices, input_tokens, 0, 0, 0, output_tokens, 0)

    def _table(
        self,
        model: str,
        provider: str | None,
        context: Mapping[str, str],
        at: datetime | None,
        input_tokens: int,
        output_tokens: int,
    ) -> tuple[_Rates, str | None, str | None, str, tuple[str, ...]] | None:
        """The first price table that prices the request: an override, genai-prices' table,
        the fallback. With it: the resolved model, the provider, the source and the variants."""
        rates = self._overrides.get(model)
        # An override always prices both input and output.
        if rates is not None and _priceable(rates, input_tokens, output_tokens):
            return rates, model, provider, "override", ()
        resolved = _resolve(model, provider)
        if resolved is not None:
            when = None
            # Without a price context only the conditional prices can move with time.
            if not (resolved.static or (resolved.static_base and not context)):
                when = at if at is not None else datetime.fromtimestamp(self._clock.now(), UTC)
            table, variants = resolved.rates(context, when)
            if _priceable(table, input_tokens, output_tokens):
                return table, resolved.model_id, resolved.provider_id, _genai_source(), variants
        fallback = self._fallback
        if (
            self._policy == "fallback"
            and fallback is not None
            and _priceable(fallback, input_tokens, output_tokens)
        ):
            return fallback, None, provider, "fallback", ()
        return None

    def priced(
        self,
        model: str,
        usage: Usage,
        *,
        provider: str | None = None,
        service_tier: str | None = None,
        batch: bool = False,
        price_context: Mapping[str, str] | None = None,
        cache_write_1h_tokens: int = 0,
        at: datetime | None = None,
    ) -> Usage:
        """``usage`` with ``cost_usd`` set to the call's price (replacing any given).

        Takes the same arguments as ``price``; under ``"count_without_cost"`` an unknown
        model's usage comes back with ``cost_usd=None``.
        """
        found = self.price(
            model,
            usage,
            provider=provider,
            service_tier=service_tier,
            batch=batch,
            price_context=price_context,
            cache_write_1h_tokens=cache_write_1h_tokens,
            at=at,
        )
        return usage.replace(cost_usd=found.cost_usd)

    def _unknown(self, model: str, provider: str | None) -> Price:
        """No table prices the request: an unknown cost, or ``UnknownModel``."""
        if self._policy == "count_without_cost":
            return Price(
                cost_usd=None,
                model=model,
                resolved_model=None,
                provider=provider,
                source="unpriced",
            )
        raise UnknownModel(model, provider)


_PRICE: Final = Pricing.price
"""``Pricing.price`` itself: ``_token_cost`` takes its shortcut only where it is not overridden."""


def _price_context(
    service_tier: str | None, batch: bool, extra: Mapping[str, str] | None
) -> Mapping[str, str]:
    if extra is None and service_tier is None and not batch:
        return _NO_CONTEXT
    if service_tier is not None:
        _check_name("service_tier", service_tier)
    if not isinstance(batch, bool):
        raise InvalidInput("batch", batch, "expected a bool")
    context: dict[str, str] = {}
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise InvalidInput("price_context", extra, "expected a mapping of str to str")
        for key, value in extra.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InvalidInput(f"price_context[{key!r}]", value, "expected str keys and values")
            context[key] = value
    if service_tier is not None:
        context["service_tier"] = service_tier
    if batch:
        context["processing"] = "batch"
    return context


_NO_CONTEXT: Final[Mapping[str, str]] = MappingProxyType({})
