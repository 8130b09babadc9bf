"""Provider usage reports, normalised to one ``Usage`` shape.

Every provider counts tokens a little differently, and these are the accounting traps:

* OpenAI (chat completions and responses) reports cached prompt tokens *inside* the prompt total
  (``prompt_tokens_details.cached_tokens``), and reasoning tokens *inside* the completion total
  (``completion_tokens_details.reasoning_tokens``). Budgeteer's ``Usage`` uses the same nesting, so
  they are copied, never added. LiteLLM reports every provider in this shape (its
  ``prompt_tokens`` already includes Anthropic's cache reads and writes) and adds the cache
  writes as ``prompt_tokens_details.cache_write_tokens`` (or ``cache_creation_tokens``): a part
  of the prompt total too, so also copied.
* Anthropic reports ``input_tokens`` *excluding* the cache: ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens`` come on top. They are added back, so input is counted once.
  Its ``output_tokens_details.thinking_tokens`` are *inside* ``output_tokens`` (copied, never
  added).
* LangChain's ``usage_metadata`` already follows the OpenAI nesting
  (``input_token_details.cache_read`` / ``cache_creation``, ``output_token_details.reasoning``).
* Pydantic AI's ``RequestUsage`` normalises every provider to the same nesting before we see it
  (its ``input_tokens`` includes ``cache_read_tokens`` and ``cache_write_tokens`` even for
  Anthropic and Bedrock; ``output_reasoning_tokens`` is inside ``output_tokens``), so the fields
  are copied, never added. Releases before ``output_reasoning_tokens`` existed kept the reasoning
  count in ``details["reasoning_tokens"]``.

The functions accept SDK objects (attributes) or plain dicts (keys) and never price: cost stays
``None`` so the guard prices the usage with budgeteer's own table.
"""

from __future__ import annotations

from collections.abc import Mapping

from budgeteer.errors import InvalidInput
from budgeteer.model import Usage

__all__ = [
    "usage_from_anthropic",
    "usage_from_langchain",
    "usage_from_openai",
    "usage_from_pydantic_ai",
]


def _field(source: object, name: str) -> object:
    if source is None:
        return None
    if isinstance(source, Mapping):
        return source.get(name)
    return getattr(source, name, None)


def _count(source: object, *names: str, where: str) -> int:
    """The first of ``names`` present on ``source`` as a whole number >= 0 (``None`` is 0)."""
    for name in names:
        value = _field(source, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInput(f"{where}.{name}", value, "expected a whole number >= 0")
        return value
    return 0


def usage_from_openai(usage: object, *, requests: int = 1) -> Usage:
    """Normalise an OpenAI usage block: chat completions' or the responses API's.

    Args:
        usage: ``CompletionUsage`` / ``ResponseUsage`` or the equivalent dict.
        requests: Model requests this usage covers (one API call by default).
    """
    details_in = _field(usage, "prompt_tokens_details") or _field(usage, "input_tokens_details")
    details_out = _field(usage, "completion_tokens_details") or _field(
        usage, "output_tokens_details"
    )
    input_tokens = _count(usage, "prompt_tokens", "input_tokens", where="usage")
    output_tokens = _count(usage, "completion_tokens", "output_tokens", where="usage")
    return Usage(
        input_tokens=input_tokens,
        cache_read_tokens=_count(details_in, "cached_tokens", where="usage.input_details"),
        # Newer OpenAI SDKs (and the Agents SDK's Usage) also report cache writes, likewise
        # inside the prompt total; LiteLLM mirrors them as ``cache_creation_tokens`` too.
        cache_write_tokens=_count(
            details_in, "cache_write_tokens", "cache_creation_tokens", where="usage.input_details"
        ),
        output_tokens=output_tokens,
        reasoning_tokens=_count(details_out, "reasoning_tokens", where="usage.output_details"),
        requests=requests,
    )


def usage_from_anthropic(usage: object, *, requests: int = 1) -> Usage:
    """Normalise an Anthropic ``Usage`` (messages API), whose input excludes the cache."""
    cache_read = _count(usage, "cache_read_input_tokens", where="usage")
    cache_write = _count(usage, "cache_creation_input_tokens", where="usage")
    uncached = _count(usage, "input_tokens", where="usage")
    return Usage(
        input_tokens=uncached + cache_read + cache_write,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        output_tokens=_count(usage, "output_tokens", where="usage"),
        reasoning_tokens=_count(
            _field(usage, "output_tokens_details"), "thinking_tokens", where="usage.output_details"
        ),
        requests=requests,
    )


def usage_from_langchain(usage_metadata: object, *, requests: int = 1) -> Usage:
    """Normalise LangChain's ``UsageMetadata`` (``AIMessage.usage_metadata``)."""
    details_in = _field(usage_metadata, "input_token_details")
    details_out = _field(usage_metadata, "output_token_details")
    return Usage(
        input_tokens=_count(usage_metadata, "input_tokens", where="usage_metadata"),
        cache_read_tokens=_count(details_in, "cache_read", where="usage_metadata.input_details"),
        cache_write_tokens=_count(
            details_in, "cache_creation", where="usage_metadata.input_details"
        ),
        output_tokens=_count(usage_metadata, "output_tokens", where="usage_metadata"),
        reasoning_tokens=_count(details_out, "reasoning", where="usage_metadata.output_details"),
        requests=requests,
    )


def usage_from_pydantic_ai(usage: object, *, requests: int = 1) -> Usage:
    """Normalise a Pydantic AI ``RequestUsage`` (``ModelResponse.usage``).

    Args:
        usage: ``pydantic_ai.usage.RequestUsage`` or the equivalent dict.
        requests: Model requests this usage covers (one response by default).
    """
    reasoning = _count(usage, "output_reasoning_tokens", where="usage")
    if not reasoning:
        reasoning = _count(_field(usage, "details"), "reasoning_tokens", where="usage.details")
    return Usage(
        input_tokens=_count(usage, "input_tokens", where="usage"),
        cache_read_tokens=_count(usage, "cache_read_tokens", where="usage"),
        cache_write_tokens=_count(usage, "cache_write_tokens", where="usage"),
        output_tokens=_count(usage, "output_tokens", where="usage"),
        reasoning_tokens=reasoning,
        requests=requests,
    )
