"""Budgets on the Anthropic client: ``wrap_anthropic(client, guard)`` (extra
``budgeteer[anthropic]``).

Two lines in existing code::

    guard = stack.enter_context(RunGuard(ledger, "org:acme/run:1", limits=[...], pricing=Pricing()))
    client = wrap_anthropic(Anthropic(), guard)  # or AsyncAnthropic() with an AsyncRunGuard

The wrapped client is a copy of ``client`` (an instance of a subclass of its class, so every
attribute, resource and helper is the SDK's own) whose Messages API requests (``create``,
``stream``, ``parse``, ``with_raw_response``, and the beta messages) are admitted before they are
sent and reconciled with the usage Anthropic reports. Anthropic's ``input_tokens`` *exclude* the
prompt cache: cache reads and writes are added back so input is counted once, and one-hour cache
writes (``cache_creation.ephemeral_1h_input_tokens``) are priced at their own rate. Other
endpoints (``count_tokens``, batches, models) pass through unmetered.

Streams: ``message_start`` reports the input (and cache) tokens up front, ``message_delta`` the
final output count, which settles the call the moment it arrives; the events themselves reach the
caller unchanged. See ``budgeteer.integrations._clients`` for how an abandoned stream is charged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, overload

import anthropic

from budgeteer.errors import InvalidInput
from budgeteer.guard import AsyncRunGuard, RunGuard
from budgeteer.integrations._clients import (
    WRAP_UP_PROMPT,
    Binding,
    Endpoint,
    Reported,
    StreamMeter,
    given,
    iter_items,
    text_of,
    tools_text,
    wrap_client,
)
from budgeteer.integrations._usage import usage_from_anthropic

__all__ = ["wrap_anthropic"]

_SyncClient = TypeVar("_SyncClient", bound=anthropic.Anthropic)
_AsyncClient = TypeVar("_AsyncClient", bound=anthropic.AsyncAnthropic)

_USAGE_FIELDS = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation",
    "output_tokens",
    "output_tokens_details",
    "service_tier",
)


def _reported(usage: object) -> Reported | None:
    if usage is None:
        return None
    tier = _get(usage, "service_tier")
    one_hour = _get(_get(usage, "cache_creation"), "ephemeral_1h_input_tokens")
    return Reported(
        usage_from_anthropic(usage),
        tier if isinstance(tier, str) else None,
        one_hour if isinstance(one_hour, int) and not isinstance(one_hour, bool) else 0,
    )


def _get(source: object, name: str) -> object:
    if isinstance(source, Mapping):
        return source.get(name)
    return getattr(source, name, None)


class Messages:
    """``POST /v1/messages`` (and the beta messages, which share the path)."""

    cap_keys: tuple[str, ...] = ("max_tokens",)
    choices_key: str | None = None

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def prompt(self, body: Mapping[str, Any]) -> list[object]:
        messages = [text_of(message) for message in iter_items(body.get("messages"))]
        system = body.get("system")
        if given(system):
            messages.insert(0, text_of(system))
        return messages + tools_text(body.get("tools"))

    def no_tools(self, body: dict[str, Any]) -> None:
        # Keep the definitions: a conversation with tool_use blocks must still declare its tools.
        if given(body.get("tools")):
            body["tool_choice"] = {"type": "none"}

    def wrap_up(self, body: dict[str, Any], text: str) -> None:
        body["messages"] = [*body.get("messages", ()), {"role": "user", "content": text}]

    def prepare_stream(self, body: dict[str, Any]) -> bool:
        del body  # Anthropic streams always carry usage
        return False

    def reported(self, result: object) -> Reported | None:
        return _reported(getattr(result, "usage", None))

    def observe(self, meter: StreamMeter, event: object) -> bool:
        kind = getattr(event, "type", None)
        if kind == "content_block_delta":
            delta = getattr(event, "delta", None)
            for name in ("text", "partial_json", "thinking"):
                meter.saw_text(getattr(delta, name, None))
        elif kind == "message_start":
            usage = getattr(getattr(event, "message", None), "usage", None)
            if usage is not None:
                meter.partial.update(_fields(usage))
                meter.input_reported = _reported(meter.partial)
        elif kind == "message_delta":
            usage = getattr(event, "usage", None)
            if usage is not None:
                # Cumulative counts; input and cache fields only when they changed (server tools).
                meter.partial.update(_fields(usage))
                meter.reported = _reported(meter.partial)
        return True


def _fields(usage: object) -> dict[str, Any]:
    return {
        name: value for name in _USAGE_FIELDS if (value := getattr(usage, name, None)) is not None
    }


@overload
def wrap_anthropic(
    client: _SyncClient, guard: RunGuard, *, wrap_up_prompt: str | None = ...
) -> _SyncClient: ...


@overload
def wrap_anthropic(
    client: _AsyncClient, guard: AsyncRunGuard, *, wrap_up_prompt: str | None = ...
) -> _AsyncClient: ...


def wrap_anthropic(
    client: anthropic.Anthropic | anthropic.AsyncAnthropic,
    guard: RunGuard | AsyncRunGuard,
    *,
    wrap_up_prompt: str | None = WRAP_UP_PROMPT,
) -> anthropic.Anthropic | anthropic.AsyncAnthropic:
    """An Anthropic client whose model calls are admitted and charged by ``guard``.

    Args:
        client: An ``Anthropic`` (with a ``RunGuard``) or ``AsyncAnthropic`` (with an
            ``AsyncRunGuard``). It is not changed: the wrapped client is a copy that shares its
            HTTP connection pool.
        guard: The run's guard (entered). Its ``Policy``, if any, picks the model and the
            ``max_tokens`` of every call (downgrade, clamp) and forbids tool calls
            (``tool_choice={"type": "none"}``) once ``stop_tools`` fired.
        wrap_up_prompt: In ``summary`` mode, the user message added to the one wrap-up call the
            reserve pays for (``None``: add nothing).

    Returns:
        A client of the same class as ``client``.

    Raises:
        InvalidInput: ``client`` is not an Anthropic client, or the guard is of the other kind.
    """
    if isinstance(client, anthropic.AsyncAnthropic):
        if not isinstance(guard, AsyncRunGuard):
            raise InvalidInput("guard", guard, "an AsyncAnthropic client needs an AsyncRunGuard")
        is_async = True
    elif isinstance(client, anthropic.Anthropic):
        if not isinstance(guard, RunGuard):
            raise InvalidInput("guard", guard, "an Anthropic client needs a RunGuard")
        is_async = False
    else:
        raise InvalidInput("client", client, "expected anthropic.Anthropic or AsyncAnthropic")
    endpoints: dict[str, Endpoint] = {"/v1/messages": Messages("anthropic")}
    wrapped: anthropic.Anthropic | anthropic.AsyncAnthropic = wrap_client(
        client, Binding(guard, endpoints, wrap_up_prompt), is_async=is_async
    )
    return wrapped
