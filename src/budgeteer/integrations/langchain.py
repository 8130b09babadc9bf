"""Budgets for LangChain: a callback handler that really stops a run, and an agent middleware.

Two ways in, both built on the run guard (``RunGuard`` / ``AsyncRunGuard``):

* ``BudgetCallbackHandler`` (sync) / ``AsyncBudgetCallbackHandler`` (async): pass it in
  ``config={"callbacks": [handler]}`` to any runnable, chain or agent. It admits every model call
  *before* it runs (``on_chat_model_start`` / ``on_llm_start``: the prompt's size and the
  invocation's ``max_tokens``, priced), settles it with the usage the provider reported
  (``on_llm_end``), releases the hold when the call fails (``on_llm_error``), and admits every
  tool call (``on_tool_start``). A callback cannot change a request, so the handler enforces
  (raise) but cannot downgrade or clamp: use the middleware for that.
* ``BudgetMiddleware``: an ``AgentMiddleware`` for ``langchain.agents.create_agent``. It does the
  same admissions from ``wrap_model_call`` / ``wrap_tool_call`` and also carries out the guard's
  ``Policy`` on each request (a cheaper model, a clamped ``max_tokens``, no tools once tools are
  stopped, the one wrap-up call of the summary reserve), and can end the run gracefully: the
  final AI message says the budget ran out (``response_metadata["budget_exhausted"]``).

LangChain swallows exceptions raised in callbacks (it logs a warning and goes on) unless the
handler sets ``raise_error = True``, which both handlers do. One more trap is in
``langchain_core.callbacks.manager``: an ``AsyncCallbackHandler`` reached through the *sync*
callback manager runs in a private event loop whose errors are always swallowed, and an async
agent runs its sync tools exactly that way. So ``AsyncBudgetCallbackHandler`` has sync methods
that LangChain calls in a worker thread; each hands its admission to the guard's event loop and
waits for it, so the refusal is raised where LangChain honours ``raise_error``.

Streams: LangChain aggregates a streamed call's chunks (the usage arrives in the last one) before
``on_llm_end``, so a streamed call is settled like any other. A stream abandoned by its consumer
or a cancelled call is charged what it reported, else the estimate it held (never released for
free: the provider bills what it generated). LangChain does not tell callbacks about an async
call cancelled mid-flight; ``charge_unfinished()`` charges those (the middleware needs no help).

Use one of the two per run, not both: each admits every call, so both together count twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar
from uuid import UUID

from langchain.agents.middleware import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
)
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command

from budgeteer.errors import BudgetExceeded, InvalidInput
from budgeteer.guard import (
    TOKENS_PER_MESSAGE,
    AsyncModelCall,
    AsyncRunGuard,
    ModelCall,
    RunGuard,
    estimate_prompt_tokens,
)
from budgeteer.integrations._usage import usage_from_langchain, usage_from_openai
from budgeteer.model import Usage
from budgeteer.policy import CallPlan

__all__ = [
    "EXHAUSTED_KEY",
    "AsyncBudgetCallbackHandler",
    "BudgetCallbackHandler",
    "BudgetMiddleware",
    "budget_exhausted_message",
]

logger = logging.getLogger("budgeteer.integrations.langchain")

T = TypeVar("T")

EXHAUSTED_KEY = "budget_exhausted"
"""``response_metadata`` key of the AI message that ends a run on an exhausted budget."""

SUMMARY_PROMPT = (
    "The budget for this task has run out. Do not call any tools. In one short paragraph, "
    "summarise what has been done so far and what is left to do."
)
"""The instruction appended to the wrap-up call the summary reserve pays for."""

# LangChain's ``ls_provider`` names -> genai-prices provider ids. Anything else is left out and
# genai-prices infers the provider from the model name (never a wrong provider: that refuses).
_PROVIDERS: Mapping[str, str] = {
    "openai": "openai",
    "azure": "azure",
    "anthropic": "anthropic",
    "google_genai": "google",
    "google_vertexai": "google",
    "bedrock": "aws",
    "bedrock_converse": "aws",
    "amazon_bedrock": "aws",
    "mistralai": "mistral",
    "groq": "groq",
    "deepseek": "deepseek",
    "xai": "x-ai",
    "fireworks": "fireworks",
    "together": "together",
    "cohere": "cohere",
    "perplexity": "perplexity",
    "openrouter": "openrouter",
}

_MAX_TOKENS_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


# -- what a model call is, read from LangChain's objects (pure) ------------------------------------


@dataclass(frozen=True, slots=True)
class _CallSpec:
    """The model name, provider, output cap and prompt size a call is admitted with."""

    model: str | None
    provider: str | None
    max_tokens: int | None
    prompt_tokens: int


def _text_tokens(text: str) -> int:
    """One chat message of ``text`` in the guard's prompt estimate (``estimate_prompt_tokens``)."""
    return TOKENS_PER_MESSAGE + estimate_prompt_tokens(text)


def _message_tokens(message: BaseMessage) -> int:
    text = str(message.text)
    calls = message.tool_calls if isinstance(message, AIMessage) else None
    if calls:
        # Tool-call arguments are prompt tokens on the next request too.
        text += json.dumps([{"name": c["name"], "args": c["args"]} for c in calls], default=str)
    return _text_tokens(text)


def _tools_tokens(tools: Sequence[object]) -> int:
    """Tool definitions count as prompt tokens: one pseudo-message with their JSON schemas."""
    if not tools:
        return 0
    schemas = []
    for tool in tools:
        try:
            schemas.append(convert_to_openai_tool(tool))  # type: ignore[arg-type]
        except (ValueError, TypeError):  # an unusual tool shape: count its text, do not fail
            schemas.append({"tool": str(tool)})
    return _text_tokens(json.dumps(schemas, default=str))


class _PromptCache:
    """Prompt estimates for one run: each message is measured once, each tool list once.

    An agent resends its whole conversation on every call, so measuring every message again
    would make the run's estimating cost quadratic. Messages are keyed by their id (LangChain's
    message reducer gives every message in an agent's state one) and size; the guard is given
    the sum (``prompt_tokens``), the same number it would count from the messages' text.
    """

    def __init__(self) -> None:
        self._messages: dict[tuple[str, str, int, int], int] = {}
        self._tools: dict[tuple[int, ...], tuple[tuple[object, ...], int]] = {}

    def messages(self, messages: Iterable[BaseMessage]) -> int:
        cache = self._messages
        total = 0
        for message in messages:
            if message.id is None:
                total += _message_tokens(message)
                continue
            # A message replaced under the same id (LangChain's reducer allows it) has, almost
            # always, another length: re-read it then. (Only AI messages have tool calls; asking
            # another message for them is a slow pydantic attribute miss.)
            calls = len(message.tool_calls) if isinstance(message, AIMessage) else 0
            key = (message.id, message.type, len(message.content), calls)
            tokens = cache.get(key)
            if tokens is None:
                tokens = cache[key] = _message_tokens(message)
            total += tokens
        return total

    def tools(self, tools: Sequence[object]) -> int:
        key = tuple(id(tool) for tool in tools)
        cached = self._tools.get(key)
        # The tuple of tools is kept so that an id cannot be reused by another object.
        if cached is not None and all(a is b for a, b in zip(cached[0], tools, strict=True)):
            return cached[1]
        tokens = _tools_tokens(tools)
        self._tools[key] = (tuple(tools), tokens)
        return tokens


def _int_setting(source: Mapping[str, Any] | None, keys: Iterable[str]) -> int | None:
    if not source:
        return None
    for key in keys:
        value = source.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _provider(ls_provider: object, override: str | None) -> str | None:
    if override is not None:
        return override
    return _PROVIDERS.get(ls_provider) if isinstance(ls_provider, str) else None


def _ls_params(chat_model: BaseChatModel, settings: Mapping[str, Any]) -> Mapping[str, Any]:
    """LangChain's own report of a chat model's name, provider and ``max_tokens``."""
    try:
        return dict(chat_model._get_ls_params(**settings))
    except (TypeError, ValueError, AttributeError):  # a broken override: read attributes
        return {}


def _chat_model_name(chat_model: BaseChatModel, params: Mapping[str, Any]) -> str | None:
    """The model's name: ``ls_model_name`` from ``_ls_params``, else a name attribute."""
    name = params.get("ls_model_name")
    if isinstance(name, str) and name:
        return name
    for attribute in ("model_name", "model", "model_id"):
        value = getattr(chat_model, attribute, None)
        if isinstance(value, str) and value:
            return value
    return None


def _result_usage(result: LLMResult) -> tuple[Usage | None, str | None]:
    """The usage and the served model name a LangChain result reports (``None`` if absent)."""
    served: str | None = None
    for generations in result.generations:
        for generation in generations:
            if not isinstance(generation, ChatGeneration):
                continue
            usage, served = _message_usage(generation.message)
            if usage is not None:
                return usage, served
    output = result.llm_output or {}
    block = output.get("token_usage") or output.get("usage")
    if isinstance(block, Mapping) and block:
        model = output.get("model_name") or output.get("model")
        return usage_from_openai(block), model if isinstance(model, str) else served
    return None, served


def _message_usage(message: BaseMessage) -> tuple[Usage | None, str | None]:
    metadata = message.response_metadata or {}
    served = metadata.get("model_name") or metadata.get("model")
    served_name = served if isinstance(served, str) and served else None
    reported = getattr(message, "usage_metadata", None)
    if not reported:
        return None, served_name
    return usage_from_langchain(reported), served_name


_SERVED = (GeneratorExit, asyncio.CancelledError, KeyboardInterrupt)
"""Ends of a model call that do not mean the provider served nothing: charged, not released."""


def _has_output(generation: object) -> bool:
    if isinstance(generation, ChatGeneration):
        message = generation.message
        return bool(
            message.content
            or getattr(message, "tool_calls", None)
            or getattr(message, "tool_call_chunks", None)
        )
    return bool(getattr(generation, "text", ""))


def _failed_call_charge(
    error: BaseException, partial: object
) -> tuple[Usage | None, str | None] | None:
    """What a model call that ended in ``error`` is charged: ``None`` releases its hold.

    A stream abandoned by its consumer (LangChain reports ``GeneratorExit``), a cancelled call,
    or any call that had already generated output was served and billed by the provider: it is
    charged the usage it reported, else the whole estimate it held (never under-counted). A
    call that failed before producing anything (a refused or failed request) is released.
    """
    result = partial if isinstance(partial, LLMResult) else None
    usage, served = _result_usage(result) if result is not None else (None, None)
    if usage is not None:
        return usage, served
    # LangChain appends an empty generation that carries the error's HTTP metadata: not output.
    generated = result is not None and any(
        _has_output(generation) for generations in result.generations for generation in generations
    )
    if generated or isinstance(error, _SERVED):
        return None, served
    return None


def budget_exhausted_message(
    error: BudgetExceeded | None, summary: str | None = None, *, source: AIMessage | None = None
) -> AIMessage:
    """The AI message that ends a run whose budget ran out.

    Its ``response_metadata["budget_exhausted"]`` carries the refusal's fields (``None`` values
    when the run ended on the summary plan before any refusal); its text says the budget ran out
    and carries ``summary`` when there is one.

    Args:
        error: The refusal that ended the run.
        summary: The wrap-up call's answer, if one ran.
        source: The wrap-up call's message, whose id and usage are kept.
    """
    if error is not None:
        note = (
            f"Stopped: the budget ran out ({error.dimension} limit {error.limit} "
            f"on {error.scope!r})."
        )
        fields: dict[str, object] = {
            "scope": error.scope,
            "dimension": error.dimension,
            "limit": str(error.limit),
            "used": str(error.used),
            "held": str(error.held),
            "requested": str(error.requested),
        }
    else:
        note = "Stopped: the budget ran out."
        fields = dict.fromkeys(("scope", "dimension", "limit", "used", "held", "requested"))
    fields["summary"] = summary is not None
    content = f"{note}\n\n{summary}" if summary else note
    if source is None:
        return AIMessage(content=content, response_metadata={EXHAUSTED_KEY: fields})
    return AIMessage(
        content=content,
        id=source.id,
        name=source.name,
        usage_metadata=source.usage_metadata,
        response_metadata={**source.response_metadata, EXHAUSTED_KEY: fields},
    )


# -- the callback handlers ------------------------------------------------------------------------


class _HandlerConfig:
    """What both callback handlers read from LangChain's callback arguments (no I/O)."""

    def __init__(
        self, model: str | None, provider: str | None, subagent_tools: Iterable[str]
    ) -> None:
        self.model = model
        self.provider = provider
        self.subagent_tools = frozenset(subagent_tools)

    def spec(
        self,
        prompt_tokens: int,
        metadata: Mapping[str, Any] | None,
        invocation_params: Mapping[str, Any] | None,
    ) -> _CallSpec:
        meta = metadata or {}
        params = invocation_params or {}
        name = meta.get("ls_model_name") or params.get("model_name") or params.get("model")
        model = self.model or (name if isinstance(name, str) and name else None)
        max_tokens = _int_setting(meta, ("ls_max_tokens",))
        if max_tokens is None:
            max_tokens = _int_setting(params, _MAX_TOKENS_KEYS)
        tools = params.get("tools")
        if tools:
            prompt_tokens += _text_tokens(json.dumps(tools, default=str))
        provider = _provider(meta.get("ls_provider"), self.provider)
        return _CallSpec(model, provider, max_tokens, prompt_tokens)

    def refusal(self, guard: RunGuard | AsyncRunGuard, spec: _CallSpec) -> BudgetExceeded | None:
        """The refusal that stops this call before admission, if the run is already over."""
        plan = guard.plan_call(
            spec.model,
            prompt_tokens=spec.prompt_tokens,
            max_tokens=spec.max_tokens,
            provider=spec.provider,
        )
        if plan.exhausted:
            return guard.exhausted
        if plan.model != spec.model and plan.model is not None:
            # A callback observes a request; it cannot change it. BudgetMiddleware can.
            logger.debug("policy downgrade to %s needs BudgetMiddleware", plan.model)
        return None


def _text_prompt(prompts: list[str]) -> int:
    return sum(_text_tokens(prompt) for prompt in prompts)


def _tool_name(serialized: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> str:
    name = (serialized or {}).get("name") or kwargs.get("name")
    return name if isinstance(name, str) and name else "tool"


class BudgetCallbackHandler(BaseCallbackHandler):
    """A LangChain callback handler that enforces a ``RunGuard``'s budgets, and stops the run.

    Example::

        with RunGuard(ledger, "org:acme/session:42", limits=[Limit("cost_usd", "0.50")],
                      pricing=Pricing()) as run:
            agent.invoke(inputs, config={"callbacks": [BudgetCallbackHandler(run)]})

    Every model call is admitted before it runs and settled with its reported usage; every tool
    call is admitted before the tool body runs. A refusal raises ``BudgetExceeded`` out of
    ``invoke``; once one call is refused, every later call of the run is refused too.

    Args:
        guard: The entered run guard.
        model: Price every call as this model (default: the name the chat model reports,
            ``ls_model_name``, then the served model in the response).
        provider: A genai-prices provider id (default: mapped from LangChain's ``ls_provider``).
        subagent_tools: Names of tools that run a sub-agent: each also counts an agent hop.
    """

    raise_error = True
    """Without this, LangChain logs the ``BudgetExceeded`` and lets the run go on."""
    run_inline = True
    """In async runs, admit on the event loop's thread rather than in an executor."""

    def __init__(
        self,
        guard: RunGuard,
        *,
        model: str | None = None,
        provider: str | None = None,
        subagent_tools: Iterable[str] = (),
    ) -> None:
        if not isinstance(guard, RunGuard):
            raise InvalidInput(
                "guard",
                guard,
                "expected a budgeteer.RunGuard (AsyncBudgetCallbackHandler takes an AsyncRunGuard)",
            )
        self.guard = guard
        self._config = _HandlerConfig(model, provider, subagent_tools)
        self._prompts = _PromptCache()
        self._open: dict[UUID, tuple[ExitStack, ModelCall]] = {}
        # LangChain runs parallel tool calls (and batches) on executor threads.
        self._lock = threading.RLock()

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Admit the chat model call before it runs."""
        tokens = self._prompts.messages(m for batch in messages for m in batch)
        self._start(run_id, tokens, metadata, kwargs.get("invocation_params"))

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Admit a (non-chat) LLM call before it runs."""
        self._start(run_id, _text_prompt(prompts), metadata, kwargs.get("invocation_params"))

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Settle the call with the usage the provider reported (the estimate if none)."""
        with self._lock:
            entry = self._open.pop(run_id, None)
        if entry is not None:
            with entry[0]:
                self._settle(entry[1], *_result_usage(response))

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """The call failed: release its hold, or charge what it generated before it stopped
        (an abandoned stream, a cancelled call; see ``_failed_call_charge``)."""
        with self._lock:
            entry = self._open.pop(run_id, None)
        if entry is None:
            return
        stack, call = entry
        charge = _failed_call_charge(error, kwargs.get("response"))
        if charge is None:
            stack.__exit__(type(error), error, error.__traceback__)
            return
        with stack:
            self._settle(call, *charge)

    def charge_unfinished(self) -> int:
        """Charge the estimate of every model call LangChain started but never ended.

        LangChain reports neither the end nor an error of a call whose task was cancelled
        (``agenerate`` is cancelled before it calls ``on_llm_error``); without this the guard
        releases such holds on exit and the call costs nothing. Call it before the guard's block
        ends, e.g. in a ``finally``. Returns how many calls were charged.
        """
        with self._lock:
            entries = list(self._open.values())
            self._open.clear()
        for stack, call in entries:
            with stack:
                self._settle(call, None, None)
        return len(entries)

    def _settle(self, call: ModelCall, usage: Usage | None, served: str | None) -> None:
        with self._lock:
            if usage is None:
                logger.warning("no usage reported for %s; charging the estimate", call.model)
                call.settle(call.estimate)
            else:
                call.settle(usage, model=self._config.model or served or call.model)

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Admit the tool call (and an agent hop for a sub-agent tool) before the tool runs."""
        name = _tool_name(serialized, kwargs)
        with self._lock:
            if self.guard.exhausted is not None:
                raise self.guard.exhausted
            if name in self._config.subagent_tools:
                self.guard.hop()
            self.guard.tool_call(name)

    def _start(
        self,
        run_id: UUID,
        prompt_tokens: int,
        metadata: Mapping[str, Any] | None,
        invocation_params: Mapping[str, Any] | None,
    ) -> None:
        spec = self._config.spec(prompt_tokens, metadata, invocation_params)
        with self._lock:
            refusal = self._config.refusal(self.guard, spec)
            if refusal is not None:
                raise refusal
            stack = ExitStack()
            call = stack.enter_context(
                self.guard.model_call(
                    spec.model,
                    prompt_tokens=spec.prompt_tokens,
                    max_tokens=spec.max_tokens,
                    provider=spec.provider,
                )
            )
            self._open[run_id] = (stack, call)


class AsyncBudgetCallbackHandler(BaseCallbackHandler):
    """The twin of ``BudgetCallbackHandler`` for an ``AsyncRunGuard`` (``ainvoke``, ``astream``).

    Create it inside the event loop that runs the agent. Its methods are deliberately *sync*:
    LangChain calls them in a worker thread, from where each admission runs on the guard's loop
    and its ``BudgetExceeded`` is raised where LangChain honours ``raise_error``. An
    ``AsyncCallbackHandler`` could not do this: LangChain runs sync tools of an async agent
    through the *sync* callback manager, which drives async handlers in a private event loop
    and swallows their errors, so the tool would run past its cap.

    Args:
        guard: The entered async run guard.
        model: See ``BudgetCallbackHandler``.
        provider: See ``BudgetCallbackHandler``.
        subagent_tools: See ``BudgetCallbackHandler``.
        loop: The loop that runs the agent (default: the running loop).
    """

    raise_error = True
    """Without this, LangChain logs the ``BudgetExceeded`` and lets the run go on."""
    run_inline = False
    """Async runs call the handler in a worker thread, which may block on the guard's loop."""

    def __init__(
        self,
        guard: AsyncRunGuard,
        *,
        model: str | None = None,
        provider: str | None = None,
        subagent_tools: Iterable[str] = (),
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not isinstance(guard, AsyncRunGuard):
            raise InvalidInput(
                "guard",
                guard,
                "expected a budgeteer.AsyncRunGuard (BudgetCallbackHandler takes a RunGuard)",
            )
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise InvalidInput(
                    "loop", None, "create the handler inside the agent's event loop or pass loop="
                ) from None
        self.guard = guard
        self._loop = loop
        self._config = _HandlerConfig(model, provider, subagent_tools)
        self._prompts = _PromptCache()
        self._open: dict[UUID, tuple[AsyncExitStack, AsyncModelCall]] = {}
        self._lock = threading.Lock()

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """See ``BudgetCallbackHandler.on_chat_model_start``."""
        tokens = self._prompts.messages(m for batch in messages for m in batch)
        self._on_loop(self._start(run_id, tokens, metadata, kwargs.get("invocation_params")))

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """See ``BudgetCallbackHandler.on_llm_start``."""
        tokens = _text_prompt(prompts)
        self._on_loop(self._start(run_id, tokens, metadata, kwargs.get("invocation_params")))

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """See ``BudgetCallbackHandler.on_llm_end``."""
        with self._lock:
            entry = self._open.pop(run_id, None)
        if entry is not None:
            self._on_loop(self._settle(entry, *_result_usage(response)))

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """See ``BudgetCallbackHandler.on_llm_error``."""
        with self._lock:
            entry = self._open.pop(run_id, None)
        if entry is None:
            return
        charge = _failed_call_charge(error, kwargs.get("response"))
        if charge is None:
            self._on_loop(entry[0].__aexit__(type(error), error, error.__traceback__))
        else:
            self._on_loop(self._settle(entry, *charge))

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """See ``BudgetCallbackHandler.on_tool_start``."""
        self._on_loop(self._admit_tool(_tool_name(serialized, kwargs)))

    async def charge_unfinished(self) -> int:
        """See ``BudgetCallbackHandler.charge_unfinished`` (await it on the agent's loop)."""
        with self._lock:
            entries = list(self._open.values())
            self._open.clear()
        for entry in entries:
            await self._settle(entry, None, None)
        return len(entries)

    def _on_loop(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the guard's loop and wait for it from this worker thread."""
        try:
            on_loop_thread = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop_thread = False
        if on_loop_thread:
            work.close()
            # Blocking here would deadlock the loop; admitting nothing would overspend.
            raise InvalidInput(
                "guard",
                self.guard,
                "a sync LangChain call on the event loop's own thread cannot be admitted by an "
                "AsyncRunGuard: use the async API (ainvoke) or a RunGuard",
            )
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    async def _start(
        self,
        run_id: UUID,
        prompt_tokens: int,
        metadata: Mapping[str, Any] | None,
        invocation_params: Mapping[str, Any] | None,
    ) -> None:
        spec = self._config.spec(prompt_tokens, metadata, invocation_params)
        refusal = self._config.refusal(self.guard, spec)
        if refusal is not None:
            raise refusal
        stack = AsyncExitStack()
        call = await stack.enter_async_context(
            self.guard.model_call(
                spec.model,
                prompt_tokens=spec.prompt_tokens,
                max_tokens=spec.max_tokens,
                provider=spec.provider,
            )
        )
        with self._lock:
            self._open[run_id] = (stack, call)

    async def _settle(
        self,
        entry: tuple[AsyncExitStack, AsyncModelCall],
        usage: Usage | None,
        served: str | None,
    ) -> None:
        stack, call = entry
        async with stack:
            if usage is None:
                logger.warning("no usage reported for %s; charging the estimate", call.model)
                await call.settle(call.estimate)
            else:
                await call.settle(usage, model=self._config.model or served or call.model)

    async def _admit_tool(self, name: str) -> None:
        if self.guard.exhausted is not None:
            raise self.guard.exhausted
        if name in self._config.subagent_tools:
            await self.guard.hop()
        await self.guard.tool_call(name)


# -- the agent middleware -------------------------------------------------------------------------

ChatModels = Mapping[str, BaseChatModel] | Callable[[str], BaseChatModel]
"""How ``BudgetMiddleware`` finds the chat model for a downgrade target's name."""


@dataclass(frozen=True, slots=True)
class _Planned:
    """A request with the policy applied, and what it is admitted as."""

    request: ModelRequest[Any]
    spec: _CallSpec
    final: bool


class BudgetMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Budgets for ``langchain.agents.create_agent``, with degradation and a graceful end.

    Example::

        with RunGuard(ledger, "org:acme/session:42", limits=[Limit("cost_usd", "0.50")],
                      pricing=Pricing(), policy=Policy(
                          ladder=[Degrade.downgrade(to="gpt-4o-mini", at=0.8)])) as run:
            agent = create_agent(model, tools, middleware=[
                BudgetMiddleware(run, models={"gpt-4o-mini": mini})])
            result = agent.invoke({"messages": [("user", "...")]})
        # result["messages"][-1] says the budget ran out if it did; run.report says why.

    Before each model call it asks the guard for a plan (``RunGuard.plan_call``) and applies it
    to the request in one place: the downgrade target's chat model, ``max_tokens`` clamped to
    what the budget affords, no tools once ``stop_tools`` fired (no sub-agent tools once
    ``stop_subagents`` fired), and on the summary reserve's wrap-up call no tools and a request
    to summarise. It then admits the call, runs it and settles the usage the provider reported.
    Each tool call is admitted before the tool runs.

    With ``exit_behavior="end"`` (default) a run whose budget is out ends normally: the last AI
    message says so (``response_metadata["budget_exhausted"]``, with the summary when the
    policy's summary reserve paid for one) and ``guard.report.status`` is ``"stopped"``. With
    ``"error"`` the ``BudgetExceeded`` is raised out of ``invoke``.

    The sync hooks need a ``RunGuard`` (``invoke``/``stream``), the async ones an
    ``AsyncRunGuard`` (``ainvoke``/``astream``). The middleware belongs to one run: build the
    agent with it inside the guard's block.

    Args:
        guard: The entered run guard (its ``policy`` drives downgrade, clamping and the end).
        exit_behavior: ``"end"`` gracefully or raise (``"error"``) when the budget is out.
        models: Chat models by name for downgrade targets, or a function that builds one
            (default: ``langchain.chat_models.init_chat_model``).
        model: Price the agent's own model as this name (default: the name it reports).
        provider: A genai-prices provider id (default: mapped from LangChain's ``ls_provider``).
        max_tokens_setting: The model-settings key that carries the output cap to the provider.
        subagent_tools: Names of tools that run a sub-agent: each also counts an agent hop.
        summary_prompt: The instruction appended to the wrap-up call.
    """

    def __init__(
        self,
        guard: RunGuard | AsyncRunGuard,
        *,
        exit_behavior: Literal["end", "error"] = "end",
        models: ChatModels | None = None,
        model: str | None = None,
        provider: str | None = None,
        max_tokens_setting: str = "max_tokens",
        subagent_tools: Iterable[str] = (),
        summary_prompt: str = SUMMARY_PROMPT,
    ) -> None:
        if not isinstance(guard, RunGuard | AsyncRunGuard):
            raise InvalidInput("guard", guard, "expected a budgeteer.RunGuard or AsyncRunGuard")
        if exit_behavior not in ("end", "error"):
            raise InvalidInput("exit_behavior", exit_behavior, "expected 'end' or 'error'")
        if models is not None and not (isinstance(models, Mapping) or callable(models)):
            raise InvalidInput("models", models, "expected a mapping or a callable(name)")
        self.guard = guard
        self.exit_behavior = exit_behavior
        self._models = models
        self._built: dict[str, BaseChatModel] = {}
        self._model = model
        self._provider = provider
        self._max_tokens_setting = max_tokens_setting
        self._subagent_tools = frozenset(subagent_tools)
        self._summary_prompt = summary_prompt
        self._prompts = _PromptCache()
        self._lock = threading.RLock()

    # -- hooks ----------------------------------------------------------------------------------
    # No before_model hook: it would add a graph node to every step. When the budget is out,
    # wrap_model_call answers with the final message instead of calling the model, and an AI
    # message without tool calls ends the agent's loop just the same.

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any] | AIMessage:
        """Plan, admit, run and settle one model call."""
        guard = self._sync_guard()
        with self._lock:
            planned = self._plan(request)
        if planned is None:
            return self._refused(guard.exhausted)
        with ExitStack() as stack:
            try:
                with self._lock:
                    call = stack.enter_context(
                        guard.model_call(
                            planned.spec.model,
                            prompt_tokens=planned.spec.prompt_tokens,
                            max_tokens=planned.spec.max_tokens,
                            provider=planned.spec.provider,
                        )
                    )
            except BudgetExceeded as error:
                return self._refused(error)
            planned = self._final_if(planned, call.final, call.estimate)
            try:
                response = handler(planned.request)
            except _SERVED:
                with self._lock:  # the provider may have generated (and billed) tokens already
                    call.settle(call.estimate)
                raise
            usage, served = self._response_usage(response)
            with self._lock:
                if usage is None:
                    call.settle(call.estimate)
                else:
                    call.settle(usage, model=self._model or served or call.model)
        return self._finish(response, planned.final)

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any] | AIMessage:
        """See ``wrap_model_call``."""
        guard = self._async_guard()
        planned = self._plan(request)
        if planned is None:
            return self._refused(guard.exhausted)
        async with AsyncExitStack() as stack:
            try:
                call = await stack.enter_async_context(
                    guard.model_call(
                        planned.spec.model,
                        prompt_tokens=planned.spec.prompt_tokens,
                        max_tokens=planned.spec.max_tokens,
                        provider=planned.spec.provider,
                    )
                )
            except BudgetExceeded as error:
                return self._refused(error)
            planned = self._final_if(planned, call.final, call.estimate)
            try:
                response = await handler(planned.request)
            except _SERVED:
                await call.settle(call.estimate)  # may have generated (and billed) tokens
                raise
            usage, served = self._response_usage(response)
            if usage is None:
                await call.settle(call.estimate)
            else:
                await call.settle(usage, model=self._model or served or call.model)
        return self._finish(response, planned.final)

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        """Admit the tool call before the tool runs."""
        guard = self._sync_guard()
        name = request.tool_call["name"]
        try:
            with self._lock:
                self._check_tools_open()
                if name in self._subagent_tools:
                    guard.hop()
                guard.tool_call(name)
        except BudgetExceeded as error:
            return self._tool_refused(request, error)
        return handler(request)

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        """See ``wrap_tool_call``."""
        guard = self._async_guard()
        name = request.tool_call["name"]
        try:
            self._check_tools_open()
            if name in self._subagent_tools:
                await guard.hop()
            await guard.tool_call(name)
        except BudgetExceeded as error:
            return self._tool_refused(request, error)
        return await handler(request)

    # -- the one place the policy meets the request ---------------------------------------------

    def _plan(self, request: ModelRequest[Any]) -> _Planned | None:
        """Apply the guard's plan to ``request``: ``None`` when nothing more may run."""
        spec = self._spec(request)
        plan = self.guard.plan_call(
            spec.model,
            prompt_tokens=spec.prompt_tokens,
            max_tokens=spec.max_tokens,
            provider=spec.provider,
        )
        if plan.exhausted:
            return None
        if plan.final:
            return self._final(request, spec, plan.model or spec.model, plan.max_tokens)
        if plan.model is not None and plan.model != spec.model:
            # The cheaper model has its own settings (its max_tokens, its provider): plan again
            # for it, so the estimate and the clamp are the ones of the call actually made.
            request = request.override(model=self._chat_model(plan.model))
            spec = replace(self._spec(request), model=plan.model)
            plan = self.guard.plan_call(
                spec.model,
                prompt_tokens=spec.prompt_tokens,
                max_tokens=spec.max_tokens,
                provider=spec.provider,
            )
            if plan.exhausted:
                return None
        if plan.max_tokens is not None and plan.max_tokens != spec.max_tokens:
            settings = {**request.model_settings, self._max_tokens_setting: plan.max_tokens}
            request = request.override(model_settings=settings)
            spec = replace(spec, max_tokens=plan.max_tokens)
        tools = self._allowed_tools(request.tools, plan)
        if len(tools) != len(request.tools):
            request = request.override(tools=tools)
            spec = replace(spec, prompt_tokens=self._prompt(request))
        return _Planned(request, spec, final=False)

    def _final(
        self,
        request: ModelRequest[Any],
        spec: _CallSpec,
        model: str | None,
        max_tokens: int | None,
    ) -> _Planned:
        """The wrap-up request: no tools, an instruction to summarise, the reserve's output."""
        if model is not None and model != spec.model:
            request = request.override(model=self._chat_model(model))
        settings = dict(request.model_settings)
        if max_tokens is not None:
            settings[self._max_tokens_setting] = max_tokens
        request = request.override(
            tools=[],
            tool_choice=None,
            response_format=None,
            model_settings=settings,
            messages=[*request.messages, HumanMessage(self._summary_prompt)],
        )
        spec = replace(self._spec(request), model=model or spec.model, max_tokens=max_tokens)
        return _Planned(request, spec, final=True)

    def _final_if(self, planned: _Planned, final: bool, estimate: Usage) -> _Planned:
        """The guard admitted the call under the summary reserve though the plan did not
        foresee it (the refusal came at admission): turn it into the wrap-up request."""
        if not final or planned.final:
            return planned
        return self._final(
            planned.request, planned.spec, planned.spec.model, estimate.output_tokens or None
        )

    def _allowed_tools(self, tools: Sequence[Any], plan: CallPlan) -> list[Any]:
        if not plan.tools_allowed:
            return []
        if plan.subagents_allowed or not self._subagent_tools:
            return list(tools)
        return [tool for tool in tools if _tool_label(tool) not in self._subagent_tools]

    # -- helpers --------------------------------------------------------------------------------

    def _spec(self, request: ModelRequest[Any]) -> _CallSpec:
        settings = request.model_settings
        params = _ls_params(request.model, settings)
        model = self._model or _chat_model_name(request.model, params)
        max_tokens = _int_setting(settings, (self._max_tokens_setting, *_MAX_TOKENS_KEYS))
        if max_tokens is None:
            max_tokens = _int_setting(params, ("ls_max_tokens",))
        provider = _provider(params.get("ls_provider"), self._provider)
        return _CallSpec(model, provider, max_tokens, self._prompt(request))

    def _prompt(self, request: ModelRequest[Any]) -> int:
        tokens = self._prompts.messages(request.messages) + self._prompts.tools(request.tools)
        if request.system_message is not None:
            tokens += self._prompts.messages((request.system_message,))
        return tokens

    def _chat_model(self, name: str) -> BaseChatModel:
        """The chat model for a downgrade target (built once per name)."""
        built = self._built.get(name)
        if built is not None:
            return built
        models = self._models
        if isinstance(models, Mapping):
            if name not in models:
                raise InvalidInput("models", name, "no chat model given for this model name")
            built = models[name]
        elif models is not None:
            built = models(name)
        else:
            from langchain.chat_models import init_chat_model

            built = init_chat_model(name)
        if not isinstance(built, BaseChatModel):
            raise InvalidInput("models", built, f"expected a BaseChatModel for {name!r}")
        self._built[name] = built
        return built

    @staticmethod
    def _response_usage(response: ModelResponse[Any]) -> tuple[Usage | None, str | None]:
        for message in response.result:
            if isinstance(message, AIMessage):
                return _message_usage(message)
        return None, None

    def _finish(self, response: ModelResponse[Any], final: bool) -> ModelResponse[Any]:
        """After the wrap-up call: one AI message, no tool calls, saying the budget ran out."""
        if not final:
            return response
        source = next((m for m in response.result if isinstance(m, AIMessage)), None)
        summary = str(source.text) if source is not None else None
        message = budget_exhausted_message(self.guard.exhausted, summary or None, source=source)
        return ModelResponse(result=[message])

    def _refused(self, error: BudgetExceeded | None) -> AIMessage:
        if self.exit_behavior == "error" and error is not None:
            raise error
        return budget_exhausted_message(error)

    def _check_tools_open(self) -> None:
        if self.guard.exhausted is not None:
            raise self.guard.exhausted

    def _tool_refused(self, request: ToolCallRequest, error: BudgetExceeded) -> ToolMessage:
        if self.exit_behavior == "error":
            raise error
        return ToolMessage(
            content=(
                f"Not run: the budget refused this tool call ({error.dimension} limit "
                f"{error.limit} on {error.scope!r})."
            ),
            tool_call_id=request.tool_call["id"] or "",
            name=request.tool_call["name"],
            status="error",
            response_metadata={EXHAUSTED_KEY: {"scope": error.scope, "dimension": error.dimension}},
        )

    def _sync_guard(self) -> RunGuard:
        if not isinstance(self.guard, RunGuard):
            raise InvalidInput("guard", self.guard, "a sync run (invoke/stream) needs a RunGuard")
        return self.guard

    def _async_guard(self) -> AsyncRunGuard:
        if not isinstance(self.guard, AsyncRunGuard):
            raise InvalidInput(
                "guard", self.guard, "an async run (ainvoke/astream) needs an AsyncRunGuard"
            )
        return self.guard


def _tool_label(tool: object) -> str | None:
    if isinstance(tool, Mapping):
        function = tool.get("function")
        name = function.get("name") if isinstance(function, Mapping) else tool.get("name")
        return name if isinstance(name, str) else None
    name = getattr(tool, "name", None)
    return name if isinstance(name, str) else None
