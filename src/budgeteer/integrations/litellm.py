"""LiteLLM under a budget: every ``completion`` / ``acompletion`` admitted before it is made.

LiteLLM's callbacks run beside a call and cannot refuse it, so budgeteer wraps the call instead::

    from budgeteer.integrations.litellm import BudgetedLiteLLM, LiteLLMPricing

    with RunGuard(ledger, "org:acme/run:7", limits=[Limit("cost_usd", "1")],
                  pricing=LiteLLMPricing()) as run:
        llm = BudgetedLiteLLM(run)
        response = llm.completion(model="anthropic/claude-sonnet-4-5", messages=messages,
                                  max_tokens=512)

Each call is planned by the guard's ``Policy`` (``plan_call``: the model after any downgrade,
``max_tokens`` clamped to what the budget affords, tools switched off once ``stop_tools`` fired,
the wrap-up request on the summary reserve), then admitted: an estimate built from ``messages``
(and ``tools``) plus ``max_tokens`` is reserved, so a call that would cross a limit raises
``BudgetExceeded`` before LiteLLM is called. Afterwards the hold is settled with the usage LiteLLM
reports, normalised by ``usage_from_openai`` and priced by budgeteer's ``Pricing``; LiteLLM's own
``response_cost`` is never read (it prices some current models at $0).

Streams (``stream=True``) ask for a final usage chunk (``stream_options.include_usage``) when the
caller did not, and settle from it when the stream ends. A stream that is closed, left (``with``)
or garbage-collected before its end is charged for what it generated, estimated from the chunks
seen; so is a stream whose provider sent no usage. Close streams inside the run: a hold still
open when the guard exits is released by the guard, and a later close can then only charge the
ledger directly, with an unknown cost.

Under a ``summary`` policy the last call runs on the reserve held back at the start: no tools,
``max_tokens`` from the reserve, and ``summary_prompt`` appended as a user message, whether the
plan foresaw it or the refusal only came at admission. Its response carries
``_hidden_params["budgeteer_final"] = True`` and the wrapper's ``wrapped_up`` turns True: end
the loop there (``guard.report.status`` is ``"stopped"``); a further call raises.

LiteLLM's own price table is never needed: set ``LITELLM_LOCAL_MODEL_COST_MAP=True`` to stop
``import litellm`` from downloading it (offline, it retries for several seconds first).

``completion(ledger=..., path=..., ...)`` and ``acompletion(...)`` are the same for one call under
its own short run, for code without a guard.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from types import TracebackType
from typing import Any, Final

import litellm  # type: ignore[import-not-found, unused-ignore]

from budgeteer.errors import InvalidInput, ReservationSettled
from budgeteer.guard import (
    BYTES_PER_TOKEN,
    AsyncModelCall,
    AsyncRunGuard,
    ModelCall,
    RunGuard,
)
from budgeteer.integrations._usage import usage_from_openai
from budgeteer.ledger import AsyncLedger, Ledger
from budgeteer.model import Limit, Usage
from budgeteer.policy import Policy
from budgeteer.pricing import Price, Pricing

__all__ = [
    "DEFAULT_SUMMARY_PROMPT",
    "AsyncBudgetedLiteLLM",
    "AsyncBudgetedStream",
    "BudgetedLiteLLM",
    "BudgetedStream",
    "LiteLLMPricing",
    "acompletion",
    "completion",
    "genai_model",
]

logger = logging.getLogger("budgeteer.integrations.litellm")

DEFAULT_SUMMARY_PROMPT: Final = (
    "The budget for this task has run out. Do not call any tools. In one short paragraph, "
    "summarise what has been done so far and what is left to do."
)
"""Appended as a user message to the one wrap-up call the summary reserve pays for."""

# LiteLLM's provider names -> genai-prices' provider ids (where they differ or matter).
_GENAI_PROVIDERS: Final[Mapping[str, str]] = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "anthropic": "anthropic",
    "anthropic_text": "anthropic",
    "azure": "azure",
    "azure_text": "azure",
    "azure_ai": "azure",
    "bedrock": "aws",
    "gemini": "google",
    "vertex_ai": "google",
    "vertex_ai_beta": "google",
    "mistral": "mistral",
    "codestral": "mistral",
    "text-completion-codestral": "mistral",
    "groq": "groq",
    "deepseek": "deepseek",
    "xai": "x-ai",
    "cohere": "cohere",
    "cohere_chat": "cohere",
    "together_ai": "together",
    "fireworks_ai": "fireworks",
    "perplexity": "perplexity",
    "openrouter": "openrouter",
    "cerebras": "cerebras",
    "databricks": "databricks",
    "github_copilot": "github-copilot",
    "moonshot": "moonshotai",
    "novita": "novita",
    "zai": "zai",
    "minimax": "minimax",
    "baseten": "baseten",
    "cloudflare": "cloudflare",
}

_TOOL_KEYS: Final = ("tools", "functions")

# Settlements of async streams dropped without aclose(), kept alive until they finish.
_PENDING: set[asyncio.Task[None]] = set()


@lru_cache(maxsize=1024)
def genai_model(model: str) -> tuple[str, str | None]:
    """A LiteLLM model name as genai-prices knows it: ``(model id, provider id or None)``.

    ``"anthropic/claude-sonnet-4-5"`` -> ``("claude-sonnet-4-5", "anthropic")``;
    ``"gemini/gemini-2.5-pro"`` -> ``("gemini-2.5-pro", "google")``. A provider genai-prices
    does not list gives ``None`` (genai-prices then infers it from the model id).
    """
    try:
        name, llm_provider, _, _ = litellm.get_llm_provider(model=model)
    except Exception:  # noqa: BLE001 - LiteLLM raises its own error types for names it cannot route
        return model, None
    return str(name), _GENAI_PROVIDERS.get(str(llm_provider))


class LiteLLMPricing(Pricing):
    """A ``Pricing`` that reads LiteLLM model names (``provider/model``), same arguments.

    Give it to the guard so estimates, settlements, the policy's clamp and downgrade targets all
    price LiteLLM names: the provider prefix picks genai-prices' provider table
    (``"groq/llama-3.3-70b-versatile"`` is priced at Groq's price). An override keyed by the
    full LiteLLM name (an Azure deployment, say) is used first, as in ``Pricing``.
    """

    __slots__ = ()

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
        """See ``Pricing.price``; ``model`` may carry LiteLLM's provider prefix."""
        if isinstance(model, str) and model not in self._overrides:
            model, inferred = genai_model(model)
            provider = provider or inferred
        return super().price(
            model,
            usage,
            provider=provider,
            service_tier=service_tier,
            batch=batch,
            price_context=price_context,
            cache_write_1h_tokens=cache_write_1h_tokens,
            at=at,
        )


# -- planning: the one place each call's model, max_tokens and tools are decided ---------------


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A request after the policy's plan, ready for LiteLLM."""

    kwargs: dict[str, Any]
    """The keyword arguments LiteLLM gets."""
    model: str
    """The model called (the downgrade target once that rung fired)."""
    prompt: list[object]
    """Messages (and tool schemas) the prompt estimate is built from."""
    max_tokens: int | None
    """The output cap sent and reserved."""
    max_tokens_key: str
    """``max_tokens`` or ``max_completion_tokens``: whichever the caller used."""
    stream: bool
    final: bool
    """Planned as the run's wrap-up call."""


def _prepare(guard: RunGuard | AsyncRunGuard, kwargs: dict[str, Any], summary: str) -> _Prepared:
    """Apply the guard's plan to a ``completion`` request (no I/O, nothing reserved).

    Every model name and ``max_tokens`` goes through here, so the ``Policy`` (downgrade, clamp,
    stop_tools, the summary wrap-up) maps onto LiteLLM's arguments in exactly one place.
    """
    request = dict(kwargs)
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("model", model, "expected LiteLLM's model name, e.g. 'gpt-4o'")
    messages = request.get("messages")
    if not isinstance(messages, list):
        raise InvalidInput("messages", messages, "expected a list of chat messages")
    # LiteLLM takes either name; answer in the one the caller used.
    key = (
        "max_completion_tokens"
        if request.get("max_completion_tokens") is not None
        else "max_tokens"
    )
    max_tokens = request.get(key)
    prompt = _prompt(messages, request)
    plan = guard.plan_call(model, prompt=prompt, max_tokens=max_tokens)
    stopped = guard.exhausted
    if plan.exhausted and stopped is not None:
        raise stopped  # the run is over: refused in raise mode, or the wrap-up call is spent
    if plan.model is not None and plan.model != model:
        model = request["model"] = plan.model
    if plan.max_tokens is not None:
        request[key] = plan.max_tokens
    if not plan.tools_allowed:
        _tools_off(request)
    if plan.final:
        _wrap_up(request, None, key, summary)
        prompt = _prompt(request["messages"], request)
    stream = bool(request.get("stream"))
    if stream:
        options = request.get("stream_options") or {}
        if not isinstance(options, Mapping):
            raise InvalidInput("stream_options", options, "expected a mapping")
        if not options.get("include_usage"):
            # Without it OpenAI-style streams end with no usage at all.
            request["stream_options"] = {**options, "include_usage": True}
    return _Prepared(request, model, prompt, plan.max_tokens, key, stream, plan.final)


def _tools_off(request: dict[str, Any]) -> None:
    # Keep the schemas (a history with tool calls needs them) but let the model call none.
    if request.get("tools"):
        request["tool_choice"] = "none"
    if request.get("functions"):
        request["function_call"] = "none"


def _wrap_up(request: dict[str, Any], output_tokens: int | None, key: str, summary: str) -> None:
    """Make ``request`` the run's wrap-up call: no tools, a summary asked for, a short answer."""
    _tools_off(request)
    if output_tokens:
        request[key] = output_tokens
    request["messages"] = [*request["messages"], {"role": "user", "content": summary}]


def _admitted(
    guard: RunGuard | AsyncRunGuard,
    prepared: _Prepared,
    final: bool,
    reserved: Usage,
    summary: str,
) -> tuple[dict[str, Any], str]:
    """The request to send once admitted, and the model it names.

    A call the guard admitted on the summary reserve although the plan did not foresee it (the
    refusal came at admission) becomes the wrap-up call here, sent to the policy's summary
    model when it names one (the reserve was priced for that model).
    """
    if not final or prepared.final:
        return prepared.kwargs, prepared.model
    request = dict(prepared.kwargs)
    policy = guard.policy
    model = prepared.model
    if policy is not None and policy.summary_model:
        model = request["model"] = policy.summary_model
    _wrap_up(request, reserved.output_tokens, prepared.max_tokens_key, summary)
    return request, model


def _prompt(messages: Sequence[object], request: Mapping[str, Any]) -> list[object]:
    """What the prompt estimate counts: the messages plus any tool schemas (also input)."""
    prompt: list[object] = list(messages)
    for key in _TOOL_KEYS:
        schemas = request.get(key)
        if schemas:
            prompt.append(json.dumps(schemas, default=str))
    return prompt


def _response_usage(response: object) -> Usage | None:
    """The usage LiteLLM reported, normalised; ``None`` if it reported none (or nonsense)."""
    return _normalised(getattr(response, "usage", None))


def _one_hour_writes(reported: object) -> int:
    """Anthropic's one-hour cache writes, as LiteLLM passes them on (0 if none)."""
    details = getattr(reported, "prompt_tokens_details", None)
    split = getattr(details, "cache_creation_token_details", None)
    if isinstance(split, Mapping):
        value = split.get("ephemeral_1h_input_tokens")
    else:
        value = getattr(split, "ephemeral_1h_input_tokens", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _one_hour(usage: Usage, reported: object) -> int:
    """The part of ``usage``'s cache writes with a one-hour TTL (priced above five-minute ones)."""
    return min(_one_hour_writes(reported), usage.cache_write_tokens)


def _normalised(reported: object) -> Usage | None:
    if reported is None:
        return None
    try:
        return usage_from_openai(reported)
    except InvalidInput as error:
        # The call has happened: charge the estimate rather than fail the caller's response.
        logger.warning("unusable usage from LiteLLM (%s); the estimate is charged", error)
        return None


def _mark_final(response: object) -> None:
    hidden = getattr(response, "_hidden_params", None)
    if isinstance(hidden, dict):
        hidden["budgeteer_final"] = True


def _tool_calls(response: object) -> list[Any]:
    calls: list[Any] = []
    for choice in getattr(response, "choices", None) or ():
        message = getattr(choice, "message", None)
        calls.extend(getattr(message, "tool_calls", None) or ())
    return calls


def _tool_name(call: object) -> str:
    function = getattr(call, "function", None)
    name = getattr(function, "name", None)
    return name if isinstance(name, str) and name else "tool"


# -- streams: what was generated, and what to charge ---------------------------------------------


class _StreamTally:
    """What a stream has delivered so far (shared by the sync and async streams)."""

    __slots__ = ("bytes", "chunks", "reported")

    def __init__(self) -> None:
        self.reported: object = None
        self.chunks = 0
        self.bytes = 0

    def see(self, chunk: object) -> None:
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.reported = usage
        generated = False
        for choice in getattr(chunk, "choices", None) or ():
            delta = getattr(choice, "delta", None)
            for text in _delta_texts(delta):
                self.bytes += len(text.encode())
                generated = True
        if generated:
            self.chunks += 1

    def usage(self, *, complete: bool, estimate: Usage) -> Usage:
        """The usage to settle: the reported one at a normal end, else an estimate."""
        reported = _normalised(self.reported)
        if complete and reported is not None:
            return reported
        # Abandoned (or the provider never sent usage): the prompt was processed in full, so
        # charge the reserved prompt estimate; output is at least one token per chunk that
        # carried text and at least the pessimistic bytes-per-token count of that text.
        output = max(self.chunks, math.ceil(self.bytes / BYTES_PER_TOKEN))
        input_tokens = estimate.input_tokens
        cache_read = 0
        if reported is not None:  # a partial report (some providers send usage early)
            output = max(output, reported.output_tokens)
            if reported.input_tokens:
                input_tokens, cache_read = reported.input_tokens, reported.cache_read_tokens
        return Usage(
            input_tokens=input_tokens,
            cache_read_tokens=cache_read,
            output_tokens=output,
            requests=1,
        )


def _delta_texts(delta: object) -> Iterator[str]:
    if delta is None:
        return
    for name in ("content", "reasoning_content"):
        text = getattr(delta, name, None)
        if isinstance(text, str) and text:
            yield text
    calls: Iterable[object] = getattr(delta, "tool_calls", None) or ()
    legacy = getattr(delta, "function_call", None)
    functions = [getattr(call, "function", None) for call in calls]
    for function in [*functions, legacy]:
        for name in ("name", "arguments"):
            text = getattr(function, name, None)
            if isinstance(text, str) and text:
                yield text


class BudgetedStream:
    """A LiteLLM stream whose model call is settled when it ends, or when it is abandoned.

    Iterate it as LiteLLM's own stream (chunks are passed through untouched). ``close()``,
    leaving a ``with`` block or garbage collection before the end charge what was generated.
    """

    def __init__(
        self,
        raw: Any,
        call: ModelCall,
        stack: ExitStack,
        owner: BudgetedLiteLLM,
        model: str,
    ) -> None:
        self._model = model
        self._raw = raw
        self._iterator: Iterator[Any] = iter(raw)
        self._call = call
        self._stack = stack
        self._owner = owner
        self._tally = _StreamTally()
        self._done = False

    @property
    def final(self) -> bool:
        """True if this is the run's wrap-up call, paid for by the summary reserve."""
        return self._call.final

    @property
    def settled(self) -> Usage | None:
        """The usage charged, once the stream has ended or was closed."""
        return self._call.settled

    def __iter__(self) -> BudgetedStream:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        try:
            chunk = next(self._iterator)
        except StopIteration:
            self._finish(complete=True, error=None)
            raise
        except BaseException as error:
            self._finish(complete=False, error=error)
            raise
        self._tally.see(chunk)
        return chunk

    def close(self) -> None:
        """Stop reading: charge what was generated so far and close LiteLLM's stream."""
        if self._done:
            return
        try:
            closer = getattr(self._raw, "close", None)
            if callable(closer):
                closer()
        finally:
            self._finish(complete=False, error=None)

    def __enter__(self) -> BudgetedStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_done", True):
            return
        try:
            self.close()
        except Exception:
            logger.exception("could not settle an abandoned LiteLLM stream")

    def _finish(self, *, complete: bool, error: BaseException | None) -> None:
        self._done = True
        usage = self._tally.usage(complete=complete, estimate=self._call.estimate)
        one_hour = _one_hour(usage, self._tally.reported)
        try:
            self._call.settle(usage, model=self._model, cache_write_1h_tokens=one_hour)
        except ReservationSettled:
            # The guard exited first and released the hold: charge the ledger directly.
            self._owner._charge_late(usage)
            self._call.settled = usage
        finally:
            if self._call.final:
                self._owner.wrapped_up = True
            if error is None:
                self._stack.close()
            else:
                self._stack.__exit__(type(error), error, error.__traceback__)


class AsyncBudgetedStream:
    """The async twin of ``BudgetedStream``: ``async for``, ``aclose()``, ``async with``."""

    def __init__(
        self,
        raw: Any,
        call: AsyncModelCall,
        stack: AsyncExitStack,
        owner: AsyncBudgetedLiteLLM,
        model: str,
    ) -> None:
        self._model = model
        self._raw = raw
        self._iterator: AsyncIterator[Any] = raw.__aiter__()
        self._call = call
        self._stack = stack
        self._owner = owner
        self._tally = _StreamTally()
        self._done = False

    @property
    def final(self) -> bool:
        """True if this is the run's wrap-up call, paid for by the summary reserve."""
        return self._call.final

    @property
    def settled(self) -> Usage | None:
        """The usage charged, once the stream has ended or was closed."""
        return self._call.settled

    def __aiter__(self) -> AsyncBudgetedStream:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        try:
            chunk = await self._iterator.__anext__()
        except StopAsyncIteration:
            await self._finish(complete=True, error=None)
            raise
        except BaseException as error:
            await self._finish(complete=False, error=error)
            raise
        self._tally.see(chunk)
        return chunk

    async def aclose(self) -> None:
        """Stop reading: charge what was generated so far and close LiteLLM's stream."""
        if self._done:
            return
        try:
            closer = getattr(self._raw, "aclose", None)
            if callable(closer):
                await closer()
        finally:
            await self._finish(complete=False, error=None)

    async def __aenter__(self) -> AsyncBudgetedStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if getattr(self, "_done", True):
            return
        # Nothing can be awaited here: settle on the running loop if there is one.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            logger.warning("an async LiteLLM stream was dropped without aclose(); not charged")
            return
        task = loop.create_task(self.aclose())
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)

    async def _finish(self, *, complete: bool, error: BaseException | None) -> None:
        self._done = True
        usage = self._tally.usage(complete=complete, estimate=self._call.estimate)
        one_hour = _one_hour(usage, self._tally.reported)
        try:
            await self._call.settle(usage, model=self._model, cache_write_1h_tokens=one_hour)
        except ReservationSettled:
            await self._owner._charge_late(usage)
            self._call.settled = usage
        finally:
            if self._call.final:
                self._owner.wrapped_up = True
            if error is None:
                await self._stack.aclose()
            else:
                await self._stack.__aexit__(type(error), error, error.__traceback__)


# -- the wrappers --------------------------------------------------------------------------------


class BudgetedLiteLLM:
    """``litellm.completion`` under a ``RunGuard``: admitted before, settled after.

    Args:
        guard: The run to charge (entered). Give it ``LiteLLMPricing()`` to price
            ``provider/model`` names; a plain ``Pricing`` prices bare names only.
        summary_prompt: The user message added to the wrap-up call of a ``summary`` policy.

    Attributes:
        wrapped_up: True once the wrap-up call has run: the loop should end now (a further
            call raises the ``BudgetExceeded`` that stopped the run).
    """

    def __init__(
        self,
        guard: RunGuard,
        *,
        summary_prompt: str = DEFAULT_SUMMARY_PROMPT,
    ) -> None:
        if not isinstance(guard, RunGuard):
            raise InvalidInput("guard", guard, "expected a budgeteer.RunGuard")
        self.guard = guard
        self.summary_prompt = summary_prompt
        self.wrapped_up = False

    def completion(self, **kwargs: Any) -> Any:
        """Call ``litellm.completion(**kwargs)`` within the budget.

        Returns LiteLLM's ``ModelResponse``, or a ``BudgetedStream`` when ``stream=True``.

        Raises:
            BudgetExceeded: the call would cross a limit; LiteLLM was not called.
            UnknownModel: the model has no price under the pricing's "refuse" policy.
        """
        with ExitStack() as stack:
            return self._completion(kwargs, stack)

    def tool_call(self, name: str = "tool") -> None:
        """Admit one tool call the caller is about to run (refused once ``stop_tools`` fired).

        Every tool admission of this module goes through here.
        """
        self.guard.tool_call(name)

    def admit_tool_calls(self, response: Any) -> list[Any]:
        """Admit each tool call a response asks for, in order; returns them to run.

        Raises:
            BudgetExceeded: at the first tool call past a cap (those before it were admitted).
        """
        calls = _tool_calls(response)
        for call in calls:
            self.tool_call(_tool_name(call))
        return calls

    def hop(self) -> None:
        """Admit one hand-off or sub-agent (refused once ``stop_subagents`` fired)."""
        self.guard.hop()

    def _completion(self, kwargs: dict[str, Any], stack: ExitStack) -> Any:
        prepared = _prepare(self.guard, kwargs, self.summary_prompt)
        call = stack.enter_context(
            self.guard.model_call(
                prepared.model, prompt=prepared.prompt, max_tokens=prepared.max_tokens
            )
        )
        request, model = _admitted(
            self.guard, prepared, call.final, call.estimate, self.summary_prompt
        )
        response = litellm.completion(**request)
        if prepared.stream:
            return BudgetedStream(response, call, stack.pop_all(), self, model)
        usage = _response_usage(response)
        if usage is not None:
            call.settle(usage, model=model, cache_write_1h_tokens=_one_hour(usage, response.usage))
        # Without a usage block, leaving the block commits the (pessimistic) estimate.
        if call.final:
            self.wrapped_up = True
            _mark_final(response)
        return response

    def _charge_late(self, usage: Usage) -> None:
        logger.warning(
            "a LiteLLM stream on %s was closed after its run ended; charged without a price",
            self.guard.path,
        )
        self.guard.ledger.charge(self.guard.path, usage, metadata={"kind": "late_stream"})


class AsyncBudgetedLiteLLM:
    """``litellm.acompletion`` under an ``AsyncRunGuard``: the twin of ``BudgetedLiteLLM``."""

    def __init__(
        self,
        guard: AsyncRunGuard,
        *,
        summary_prompt: str = DEFAULT_SUMMARY_PROMPT,
    ) -> None:
        if not isinstance(guard, AsyncRunGuard):
            raise InvalidInput("guard", guard, "expected a budgeteer.AsyncRunGuard")
        self.guard = guard
        self.summary_prompt = summary_prompt
        self.wrapped_up = False

    async def acompletion(self, **kwargs: Any) -> Any:
        """Call ``litellm.acompletion(**kwargs)`` within the budget.

        Returns LiteLLM's ``ModelResponse``, or an ``AsyncBudgetedStream`` when ``stream=True``.

        Raises:
            BudgetExceeded: the call would cross a limit; LiteLLM was not called.
        """
        async with AsyncExitStack() as stack:
            return await self._acompletion(kwargs, stack)

    async def tool_call(self, name: str = "tool") -> None:
        """See ``BudgetedLiteLLM.tool_call``."""
        await self.guard.tool_call(name)

    async def admit_tool_calls(self, response: Any) -> list[Any]:
        """See ``BudgetedLiteLLM.admit_tool_calls``."""
        calls = _tool_calls(response)
        for call in calls:
            await self.tool_call(_tool_name(call))
        return calls

    async def hop(self) -> None:
        """See ``BudgetedLiteLLM.hop``."""
        await self.guard.hop()

    async def _acompletion(self, kwargs: dict[str, Any], stack: AsyncExitStack) -> Any:
        prepared = _prepare(self.guard, kwargs, self.summary_prompt)
        call = await stack.enter_async_context(
            self.guard.model_call(
                prepared.model, prompt=prepared.prompt, max_tokens=prepared.max_tokens
            )
        )
        request, model = _admitted(
            self.guard, prepared, call.final, call.estimate, self.summary_prompt
        )
        response = await litellm.acompletion(**request)
        if prepared.stream:
            return AsyncBudgetedStream(response, call, stack.pop_all(), self, model)
        usage = _response_usage(response)
        if usage is not None:
            await call.settle(
                usage, model=model, cache_write_1h_tokens=_one_hour(usage, response.usage)
            )
        if call.final:
            self.wrapped_up = True
            _mark_final(response)
        return response

    async def _charge_late(self, usage: Usage) -> None:
        logger.warning(
            "a LiteLLM stream on %s was closed after its run ended; charged without a price",
            self.guard.path,
        )
        await self.guard.ledger.charge(self.guard.path, usage, metadata={"kind": "late_stream"})


# -- one call, no guard of the caller's own ------------------------------------------------------


def completion(
    *,
    ledger: Ledger,
    path: str,
    limits: Iterable[Limit] = (),
    pricing: Pricing | None = None,
    policy: Policy | None = None,
    **kwargs: Any,
) -> Any:
    """``litellm.completion(**kwargs)`` as one guarded run on ``path`` of ``ledger``.

    ``limits`` are set on ``path`` first (as ``RunGuard`` does); ``pricing`` defaults to
    ``LiteLLMPricing()``. A stream keeps its run open until it ends or is closed.
    """
    pricing = pricing if pricing is not None else LiteLLMPricing()
    guard = RunGuard(ledger, path, limits=limits, pricing=pricing, policy=policy)
    with ExitStack() as stack:
        stack.enter_context(guard)
        return BudgetedLiteLLM(guard)._completion(kwargs, stack)


async def acompletion(
    *,
    ledger: AsyncLedger,
    path: str,
    limits: Iterable[Limit] = (),
    pricing: Pricing | None = None,
    policy: Policy | None = None,
    **kwargs: Any,
) -> Any:
    """The async twin of ``completion``, over an ``AsyncLedger``."""
    pricing = pricing if pricing is not None else LiteLLMPricing()
    guard = AsyncRunGuard(ledger, path, limits=limits, pricing=pricing, policy=policy)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(guard)
        return await AsyncBudgetedLiteLLM(guard)._acompletion(kwargs, stack)
