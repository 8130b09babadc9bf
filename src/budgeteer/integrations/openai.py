"""Budgets on the OpenAI client: ``wrap_openai(client, guard)`` (extra ``budgeteer[openai]``).

Two lines in existing code::

    guard = stack.enter_context(RunGuard(ledger, "org:acme/run:1", limits=[...], pricing=Pricing()))
    client = wrap_openai(OpenAI(), guard)        # or AsyncOpenAI() with an AsyncRunGuard

The wrapped client is a copy of ``client`` (an instance of a subclass of its class, so every
attribute, resource and helper is the SDK's own) whose chat completions and responses requests
(``create``, ``parse``, ``stream``, ``with_raw_response``) are admitted before they are sent and
reconciled with the usage OpenAI reports: cached prompt tokens inside the input, reasoning tokens
inside the output, each counted once and priced by budgeteer's ``Pricing``. Other endpoints
(embeddings, images, audio, the legacy completions) pass through unmetered.

Streams: chat completion streams get ``stream_options={"include_usage": True}`` when the caller
did not ask for it, so OpenAI reports the stream's usage in one extra final chunk (``choices``
empty). That chunk is kept from a caller who did not ask for it, because code written for
streams without it reads ``chunk.choices[0]`` on every chunk; a caller who asked for it gets it.
The responses API reports usage in its ``response.completed`` (or ``.incomplete``/``.failed``)
event, which is passed on unchanged. See ``budgeteer.integrations._clients`` for how a stream is
cut and how an abandoned one is charged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, overload

import openai

from budgeteer.errors import InvalidInput
from budgeteer.guard import AsyncRunGuard, RunGuard
from budgeteer.integrations._clients import (
    WRAP_UP_PROMPT,
    AsyncMeteredStream,
    Binding,
    Endpoint,
    MeteredStream,
    Reported,
    StreamMeter,
    given,
    iter_items,
    text_of,
    tools_text,
    wrap_client,
)
from budgeteer.integrations._usage import usage_from_openai

__all__ = ["AsyncMeteredStream", "MeteredStream", "wrap_openai"]

_SyncClient = TypeVar("_SyncClient", bound=openai.OpenAI)
_AsyncClient = TypeVar("_AsyncClient", bound=openai.AsyncOpenAI)


def _reported(result: object) -> Reported | None:
    usage = getattr(result, "usage", None)
    if usage is None:
        return None
    tier = getattr(result, "service_tier", None)
    return Reported(usage_from_openai(usage), tier if isinstance(tier, str) else None)


class _ToolChoiceNone:
    def no_tools(self, body: dict[str, Any]) -> None:
        if given(body.get("tools")):
            body["tool_choice"] = "none"


class ChatCompletions(_ToolChoiceNone):
    """``POST /chat/completions``."""

    cap_keys: tuple[str, ...] = ("max_completion_tokens", "max_tokens")
    choices_key: str | None = "n"

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def prompt(self, body: Mapping[str, Any]) -> list[object]:
        messages = [text_of(message) for message in iter_items(body.get("messages"))]
        return messages + tools_text(body.get("tools")) + tools_text(body.get("functions"))

    def wrap_up(self, body: dict[str, Any], text: str) -> None:
        body["messages"] = [*body.get("messages", ()), {"role": "user", "content": text}]

    def prepare_stream(self, body: dict[str, Any]) -> bool:
        options = body.get("stream_options")
        options = dict(options) if isinstance(options, Mapping) else {}
        if options.get("include_usage"):
            return False
        options["include_usage"] = True
        body["stream_options"] = options
        return True

    def reported(self, result: object) -> Reported | None:
        return _reported(result)

    def observe(self, meter: StreamMeter, event: object) -> bool:
        for choice in getattr(event, "choices", None) or ():
            if getattr(choice, "finish_reason", None):
                meter.generation_done = True
            delta = getattr(choice, "delta", None)
            if delta is None:
                continue
            meter.saw_text(getattr(delta, "content", None))
            meter.saw_text(getattr(delta, "refusal", None))
            call = getattr(delta, "function_call", None)
            meter.saw_text(getattr(call, "arguments", None))
            for tool_call in getattr(delta, "tool_calls", None) or ():
                meter.saw_text(getattr(getattr(tool_call, "function", None), "arguments", None))
        if getattr(event, "usage", None) is not None:
            meter.reported = _reported(event)
        return True


class Responses(_ToolChoiceNone):
    """``POST /responses``."""

    cap_keys: tuple[str, ...] = ("max_output_tokens",)
    choices_key: str | None = None

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def prompt(self, body: Mapping[str, Any]) -> list[object]:
        items = [text_of(item) for item in iter_items(body.get("input"))]
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            items.insert(0, instructions)
        return items + tools_text(body.get("tools"))

    def wrap_up(self, body: dict[str, Any], text: str) -> None:
        previous = body.get("input")
        items: list[object] = (
            [{"role": "user", "content": previous}]
            if isinstance(previous, str)
            else list(iter_items(previous))
        )
        body["input"] = [*items, {"role": "user", "content": text}]

    def prepare_stream(self, body: dict[str, Any]) -> bool:
        del body  # the responses API always reports usage in its final event
        return False

    def reported(self, result: object) -> Reported | None:
        return _reported(result)

    def observe(self, meter: StreamMeter, event: object) -> bool:
        kind = getattr(event, "type", "")
        if kind.endswith(".delta") and "audio" not in kind:  # audio deltas are base64
            meter.saw_text(getattr(event, "delta", None))
        elif kind in {"response.completed", "response.incomplete", "response.failed"}:
            reported = _reported(getattr(event, "response", None))
            if reported is not None:
                meter.reported = reported
        return True


@overload
def wrap_openai(
    client: _SyncClient, guard: RunGuard, *, wrap_up_prompt: str | None = ...
) -> _SyncClient: ...


@overload
def wrap_openai(
    client: _AsyncClient, guard: AsyncRunGuard, *, wrap_up_prompt: str | None = ...
) -> _AsyncClient: ...


def wrap_openai(
    client: openai.OpenAI | openai.AsyncOpenAI,
    guard: RunGuard | AsyncRunGuard,
    *,
    wrap_up_prompt: str | None = WRAP_UP_PROMPT,
) -> openai.OpenAI | openai.AsyncOpenAI:
    """An OpenAI client whose model calls are admitted and charged by ``guard``.

    Args:
        client: An ``OpenAI`` (with a ``RunGuard``) or ``AsyncOpenAI`` (with an
            ``AsyncRunGuard``), or a subclass such as ``AzureOpenAI``. It is not changed: the
            wrapped client is a copy that shares its HTTP connection pool.
        guard: The run's guard (entered). Its ``Policy``, if any, picks the model and the
            ``max_tokens`` of every call (downgrade, clamp) and forbids tool calls
            (``tool_choice="none"``) once ``stop_tools`` fired.
        wrap_up_prompt: In ``summary`` mode, the user message added to the one wrap-up call the
            reserve pays for (``None``: add nothing).

    Returns:
        A client of the same class as ``client``.

    Raises:
        InvalidInput: ``client`` is not an OpenAI client, or the guard is of the other kind.
    """
    if isinstance(client, openai.AsyncOpenAI):
        if not isinstance(guard, AsyncRunGuard):
            raise InvalidInput("guard", guard, "an AsyncOpenAI client needs an AsyncRunGuard")
        is_async = True
    elif isinstance(client, openai.OpenAI):
        if not isinstance(guard, RunGuard):
            raise InvalidInput("guard", guard, "an OpenAI client needs a RunGuard")
        is_async = False
    else:
        raise InvalidInput("client", client, "expected openai.OpenAI or openai.AsyncOpenAI")
    # Azure deployments bill at Azure's prices; genai-prices knows them as provider "azure".
    provider = (
        "azure" if isinstance(client, openai.AzureOpenAI | openai.AsyncAzureOpenAI) else "openai"
    )
    endpoints: dict[str, Endpoint] = {
        "/chat/completions": ChatCompletions(provider),
        "/responses": Responses(provider),
    }
    wrapped: openai.OpenAI | openai.AsyncOpenAI = wrap_client(
        client, Binding(guard, endpoints, wrap_up_prompt), is_async=is_async
    )
    return wrapped
