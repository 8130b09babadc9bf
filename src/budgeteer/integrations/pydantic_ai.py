"""Budgets for Pydantic AI agents: one capability, beside (not instead of) ``UsageLimits``.

Install with ``pip install 'budgeteer[pydantic-ai]'``. Example::

    budget = BudgetCapability(
        ledger=AsyncLedger("sqlite:///budgets.db"),
        path="org:acme/run:{run_id}",
        limits=[Limit("cost_usd", "0.50"), Limit("tool_calls", 20)],
        pricing=Pricing(),
    )
    agent = Agent("openai:gpt-4o", capabilities=[budget])
    agent.run_sync("...", usage_limits=UsageLimits(request_limit=30))  # both enforced
    print(budget.last_report)

Pydantic AI's capability hooks used, and what each does:

* ``wrap_run``: opens the run's ``AsyncRunGuard`` (when the capability was given a ledger
  rather than an already open guard), so ``agent.run_sync`` works too, and admits the run as
  an agent hop when it starts inside another budgeted run (a sub-agent called from a tool).
* ``before_model_request`` (once per request step): the one place where the budget shapes a
  request. It asks the guard's ``plan_call`` and applies the plan: the downgrade model, the
  clamped ``max_tokens`` in the request's model settings, no function tools once tools are
  stopped, and the end of the run once the budget is exhausted.
* ``get_wrapper_model`` (every attempt, so each fallback or retry attempt is admitted on its
  own): admits the request with the final messages and settings *before* it is sent (an
  estimate from the prompt, the tool definitions and ``max_tokens``, priced), then settles the
  ``RequestUsage`` Pydantic AI reports, priced for the model the response names. An attempt that
  fails releases its hold. A streamed response is settled when its stream closes, also when the
  consumer stops early (from the text generated if the provider had not reported usage yet).
* ``before_tool_execute``: admits each tool call (``tool_calls`` caps and ``stop_tools``).

Refusals raise ``budgeteer.BudgetExceeded``. With ``graceful_end=True`` the run instead ends
normally with a text output saying the budget ran out (text output types only). Under a
``Policy`` with ``on_exhausted="summary"`` the refused request becomes the wrap-up call: no
function tools offered, an instruction to summarise, paid from the reserve held at the start.

Pydantic AI's own ``UsageLimits`` stay in force: whichever limit is tighter ends the run, with
its own error (``UsageLimitExceeded`` or ``BudgetExceeded``). Note that ``UsageLimits`` has a
default ``request_limit`` of 50.

Not supported: durable execution (Temporal and friends rebuild capabilities in the worker, so
the per-run guard would not be the one the workflow opened) and batch requests
(``BatchModelRequests`` bypasses wrapper models).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from pydantic_ai.capabilities import AbstractCapability, WrapRunHandler
from pydantic_ai.exceptions import SkipModelRequest, SkipToolExecution
from pydantic_ai.messages import (
    BaseToolCallPart,
    BaseToolReturnPart,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    UserPromptPart,
)
from pydantic_ai.models import (
    CompletedStreamedResponse,
    Model,
    ModelRequestContext,
    ModelRequestParameters,
    StreamedResponse,
    infer_model,
)
from pydantic_ai.models.fallback import FallbackModel
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.run import AgentRunResult
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import RunContext, ToolDefinition
from pydantic_ai.usage import RequestUsage

from budgeteer.errors import BudgetExceeded, InvalidInput
from budgeteer.guard import (
    BYTES_PER_TOKEN,
    DEFAULT_MAX_TOKENS,
    TOKENS_PER_MESSAGE,
    AsyncModelCall,
    AsyncRunGuard,
    BudgetWarning,
    RunReport,
    estimate_prompt_tokens,
)
from budgeteer.integrations._usage import usage_from_pydantic_ai
from budgeteer.ledger import AsyncLedger
from budgeteer.model import Limit
from budgeteer.policy import CallPlan, Policy
from budgeteer.pricing import Pricing

__all__ = ["BudgetCapability", "budget_exhausted_message"]

logger = logging.getLogger("budgeteer.integrations.pydantic_ai")

WRAP_UP_INSTRUCTION = (
    "The budget for this run is exhausted. Do not call any tools. Reply now with a short summary "
    "of what you found so far and what is left to do."
)
"""Added to the wrap-up request that the summary reserve pays for."""

_ACTIVE: ContextVar[BudgetCapability | None] = ContextVar("budgeteer_pydantic_ai", default=None)
"""The budgeted run this code runs inside, so a sub-agent's run is admitted as a hop."""

PathSpec = str | Callable[[RunContext[Any]], str]


def budget_exhausted_message(error: BudgetExceeded) -> str:
    """The final output of a run ended gracefully by ``error``."""
    return (
        f"Budget exhausted: the {error.dimension} limit of {error.limit} on {error.scope} "
        f"is reached (used {error.used}, held {error.held}); the run stopped here."
    )


class BudgetCapability(AbstractCapability[Any]):
    """Hard budgets for a Pydantic AI agent: pass it in ``Agent(capabilities=[...])``.

    Give either an open ``guard`` (you enter it; several runs may share it) or a ``ledger`` and
    ``path`` (a guard is opened for each run, inside the run's event loop, so ``run_sync``
    works too).

    Args:
        guard: An ``AsyncRunGuard`` already entered (``async with``) by the caller.
        ledger: The ledger for per-run guards.
        path: The run's scope path, e.g. ``"org:acme/run:{run_id}"`` (``{run_id}`` is replaced
            by Pydantic AI's run id), or a callable of the ``RunContext`` returning it.
        limits: Per-run caps set on ``path`` (see ``AsyncRunGuard``).
        pricing: Prices calls (per-run guards), and one-hour cache writes in both modes.
        policy: Degradation ladder and exhaustion mode (per-run guards; an open guard has its
            own).
        warn_at: Soft threshold (per-run guards).
        on_warning: Called once per limit past ``warn_at`` (per-run guards).
        default_max_tokens: Output tokens reserved when a request sets no ``max_tokens``.
        ttl_s: Hold lifetime if the process dies mid-call (per-run guards).
        provider: genai-prices provider id for pricing (default: inferred from the model name).
        models: Pydantic AI models for the model names a ``Policy`` downgrades to. A name not
            here is resolved with ``infer_model``, under the current model's provider when the
            name has no ``provider:`` prefix.
        graceful_end: End the run with a text output saying the budget ran out instead of
            raising ``BudgetExceeded`` (only when the agent's output type accepts text).
        count_subagents: Admit a run that starts inside another budgeted run (an agent called
            from a tool) as one ``agent_hops`` of the outer run.

    Attributes:
        reports: The reports of the runs whose guard this capability opened, in order.
    """

    def __init__(
        self,
        guard: AsyncRunGuard | None = None,
        *,
        ledger: AsyncLedger | None = None,
        path: PathSpec | None = None,
        limits: Iterable[Limit] = (),
        pricing: Pricing | None = None,
        policy: Policy | None = None,
        warn_at: float = 0.8,
        on_warning: Callable[[BudgetWarning], None] | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        ttl_s: float | None = None,
        provider: str | None = None,
        models: Mapping[str, Model] | None = None,
        graceful_end: bool = False,
        count_subagents: bool = True,
    ) -> None:
        if guard is not None:
            if not isinstance(guard, AsyncRunGuard):
                raise InvalidInput("guard", guard, "expected a budgeteer.AsyncRunGuard")
            if ledger is not None or path is not None:
                raise InvalidInput("ledger", ledger, "give either guard, or ledger and path")
        else:
            if not isinstance(ledger, AsyncLedger):
                raise InvalidInput("ledger", ledger, "expected a budgeteer.AsyncLedger")
            if not (isinstance(path, str) or callable(path)):
                raise InvalidInput("path", path, "expected a scope path or a callable(ctx)")
        if models is not None and not all(isinstance(m, Model) for m in models.values()):
            raise InvalidInput("models", models, "expected a mapping of name to pydantic_ai Model")
        self._given = guard
        self._ledger = ledger
        self._path = path
        self._limits = tuple(limits)
        self._pricing = pricing
        self._policy = policy
        self._warn_at = warn_at
        self._on_warning = on_warning
        self._default_max_tokens = default_max_tokens
        self._ttl_s = ttl_s
        self.provider = provider
        self._models = dict(models or {})
        self.graceful_end = graceful_end
        self.count_subagents = count_subagents
        self.reports: list[RunReport] = []
        self._run_guard: AsyncRunGuard | None = guard
        self._refusal: BudgetExceeded | None = None
        self._prompt = _PromptMeter()

    # -- the run ---------------------------------------------------------------------------------

    @property
    def last_report(self) -> RunReport | None:
        """The report of the latest finished run whose guard this capability opened."""
        return self.reports[-1] if self.reports else None

    @property
    def guard(self) -> AsyncRunGuard:
        """The guard of the current run (inside a run), or the guard given."""
        if self._run_guard is None:
            raise RuntimeError("no budgeted run is active on this capability")
        return self._run_guard

    async def for_run(self, ctx: RunContext[Any]) -> BudgetCapability:
        """A copy per run, so concurrent runs of one agent each get their own guard."""
        del ctx
        run = copy.copy(self)  # shares ``reports``, the config and the given guard
        run._run_guard = self._given
        run._refusal = None
        run._prompt = _PromptMeter()
        return run

    async def wrap_run(
        self, ctx: RunContext[Any], *, handler: WrapRunHandler
    ) -> AgentRunResult[Any]:
        """Open the run's guard around the run (unless one was given) and mark the run active."""
        parent = _ACTIVE.get()
        if parent is not None and parent is not self and self.count_subagents:
            await parent.admit_subagent()
        token = _ACTIVE.set(self)
        try:
            if self._given is not None:
                result = await handler()
                self._check_refusal()
                return result
            guard = self._open_guard(ctx)
            self._run_guard = guard
            try:
                async with guard:
                    result = await handler()
                    self._check_refusal()
            finally:
                self.reports.append(guard.report)
            return result
        finally:
            _ACTIVE.reset(token)

    def _open_guard(self, ctx: RunContext[Any]) -> AsyncRunGuard:
        spec = self._path
        path = spec(ctx) if callable(spec) else str(spec).replace("{run_id}", ctx.run_id or "")
        ledger = self._ledger
        if ledger is None:  # pragma: no cover - __init__ requires it without a guard
            raise RuntimeError("no ledger to open a run guard on")
        return AsyncRunGuard(
            ledger,
            path,
            limits=self._limits,
            pricing=self._pricing,
            warn_at=self._warn_at,
            on_warning=self._on_warning,
            default_max_tokens=self._default_max_tokens,
            ttl_s=self._ttl_s,
            policy=self._policy,
        )

    async def admit_subagent(self) -> None:
        """Admit one sub-agent run (hand-off) on this run: the one place for agent hops."""
        await self.guard.hop()

    # -- model requests --------------------------------------------------------------------------

    async def before_model_request(
        self, ctx: RunContext[Any], request_context: ModelRequestContext
    ) -> ModelRequestContext:
        """Shape the request step by the guard's plan (model, ``max_tokens``, tools, end)."""
        del ctx
        model = request_context.model
        plan = self.guard.plan_call(
            _priced_name(model),
            prompt_tokens=self._prompt.tokens(
                request_context.messages, request_context.model_request_parameters
            ),
            max_tokens=_max_tokens(request_context.model_settings, model),
            provider=self.provider,
        )
        return self.apply_plan(plan, request_context)

    def apply_plan(
        self, plan: CallPlan, request_context: ModelRequestContext
    ) -> ModelRequestContext:
        """The one place where the budget changes a request: model, ``max_tokens``, tools, end."""
        model = request_context.model
        if plan.exhausted:
            error = self.guard.exhausted
            if error is not None:
                raise SkipModelRequest(
                    self._refused(error, request_context.model_request_parameters, model.model_name)
                )
        changes: dict[str, Any] = {}
        if plan.model is not None and plan.model != _priced_name(model):
            changes["model"] = self._model_named(plan.model, model)
            logger.info("budget: request moved from %s to %s", model.model_name, plan.model)
        wanted = _max_tokens(request_context.model_settings, model)
        if plan.max_tokens is not None and plan.max_tokens != wanted:
            changes["model_settings"] = _with_max_tokens(
                request_context.model_settings, plan.max_tokens
            )
        if not plan.tools_allowed or plan.final:
            changes["model_request_parameters"] = replace(
                request_context.model_request_parameters, function_tools=[]
            )
        # Most steps change nothing: the request goes on as it is, without a copy.
        return replace(request_context, **changes) if changes else request_context

    def _model_named(self, name: str, current: Model) -> Model:
        found = self._models.get(name)
        if found is None:
            # Built once and kept (copies per run share this dict): a model owns its client.
            found = infer_model(name if ":" in name else f"{current.system}:{name}")
            self._models[name] = found
        return found

    def get_wrapper_model(self, model: Model) -> Model | None:
        """Wrap every attempt's model so each request is admitted and settled."""
        return _BudgetedModel(model, self)

    def _refused(
        self, error: BudgetExceeded, parameters: ModelRequestParameters, model_name: str | None
    ) -> ModelResponse:
        """Raise ``error``, or with ``graceful_end`` return the response that ends the run."""
        if not self.graceful_end or not _accepts_plain_text(parameters):
            raise error
        return ModelResponse(
            parts=[TextPart(budget_exhausted_message(error))], model_name=model_name
        )

    async def _settle(
        self, call: AsyncModelCall, usage: RequestUsage, model_name: str | None
    ) -> None:
        """Commit a response's reported usage, normalised and priced once."""
        if not usage.has_values():
            # The provider reported nothing: the estimate stays committed (the guard commits it
            # when the call's block ends), never a silent zero.
            return
        await call.settle(
            usage_from_pydantic_ai(usage),
            model=model_name or call.model,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
        )

    # -- tools -----------------------------------------------------------------------------------

    async def before_tool_execute(
        self,
        ctx: RunContext[Any],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: Any,
    ) -> Any:
        """Admit one tool call before it runs: the one place for tool admissions.

        A refused call is skipped (its result says why) instead of raising here: Pydantic AI
        runs a response's tool calls in parallel and an exception would cancel the siblings
        that were admitted and charged. Once the budget is exhausted the run then ends before
        its next model request (raising, or gracefully); after a ``stop_tools`` rung it goes on
        without tools.
        """
        del ctx, tool_def
        guard = self.guard
        try:
            await guard.tool_call(call.tool_name)
        except BudgetExceeded as error:
            if guard.exhausted is not None and self._refusal is None:
                self._refusal = error
            raise SkipToolExecution(budget_exhausted_message(error)) from None
        return args

    async def on_tool_execute_error(
        self,
        ctx: RunContext[Any],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: Any,
        error: Exception,
    ) -> Any:
        """With ``graceful_end``, a ``BudgetExceeded`` raised inside a tool (a refused
        sub-agent, a nested budget) becomes the tool's result instead of failing the run."""
        del ctx, call, tool_def, args
        if not (self.graceful_end and isinstance(error, BudgetExceeded)):
            raise error
        if self.guard.exhausted is not None and self._refusal is None:
            self._refusal = error
        return budget_exhausted_message(error)

    def _check_refusal(self) -> None:
        """Raise mode: a run whose tool call was refused for exhaustion does not end quietly,
        even when its last response needed no further request (unless it wrapped up)."""
        refusal = self._refusal
        if refusal is not None and not self.graceful_end and not self.guard.report.wrapped_up:
            raise refusal


class _BudgetedModel(WrapperModel):
    """The serving model of one attempt, admitted before and settled after each request."""

    def __init__(self, wrapped: Model, budget: BudgetCapability) -> None:
        super().__init__(wrapped)
        self._budget = budget

    def _admission(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        parameters: ModelRequestParameters,
    ) -> Any:
        return self._budget.guard.model_call(
            _priced_name(self.wrapped),
            prompt_tokens=self._budget._prompt.tokens(messages, parameters),
            max_tokens=_max_tokens(model_settings, self.wrapped),
            provider=self._budget.provider,
        )

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        budget = self._budget
        async with AsyncExitStack() as stack:
            try:
                call = await stack.enter_async_context(
                    self._admission(messages, model_settings, model_request_parameters)
                )
            except BudgetExceeded as error:
                return budget._refused(error, model_request_parameters, self.wrapped.model_name)
            if call.final:
                messages, model_settings, model_request_parameters = _wrap_up(
                    call, messages, model_settings, model_request_parameters
                )
            response = await self.wrapped.request(
                messages, model_settings, model_request_parameters
            )
            await budget._settle(call, response.usage, response.model_name)
            return response

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncIterator[StreamedResponse]:
        budget = self._budget
        async with AsyncExitStack() as stack:
            try:
                call = await stack.enter_async_context(
                    self._admission(messages, model_settings, model_request_parameters)
                )
            except BudgetExceeded as error:
                response = budget._refused(error, model_request_parameters, self.wrapped.model_name)
                yield CompletedStreamedResponse(
                    response, model_request_parameters=model_request_parameters, replay_events=True
                )
                return
            if call.final:
                messages, model_settings, model_request_parameters = _wrap_up(
                    call, messages, model_settings, model_request_parameters
                )
            async with self.wrapped.request_stream(
                messages, model_settings, model_request_parameters, run_context
            ) as stream:
                try:
                    yield stream
                finally:
                    # Also when the consumer stopped early: what was generated is charged.
                    await budget._settle(
                        call, _streamed_usage(stream, call), stream.model_name or None
                    )


# -- helpers -------------------------------------------------------------------------------------


def _priced_name(model: Model) -> str:
    """The model name a request is estimated at. A ``FallbackModel`` (wrapped as a whole) is
    estimated at its first model's price; its response names the model that served it, and
    that is what is settled."""
    if isinstance(model, FallbackModel) and model.models:
        return _priced_name(model.models[0])
    return model.model_name


def _max_tokens(settings: ModelSettings | None, model: Model) -> int | None:
    """The request's ``max_tokens``: its settings first, then the model's own defaults."""
    for source in (settings, model.settings):
        value = (source or {}).get("max_tokens")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _accepts_plain_text(parameters: ModelRequestParameters) -> bool:
    """True if a plain text response is a valid final output of this request.

    ``allow_text_output`` alone does not say so: in ``auto`` mode (before the serving model
    resolves it) it is True even for a structured output type, and in ``native`` or
    ``prompted`` mode text is parsed as JSON.
    """
    return parameters.allow_text_output and parameters.output_mode in ("text", "tool")


def _with_max_tokens(settings: ModelSettings | None, max_tokens: int) -> ModelSettings:
    """A copy of ``settings`` with ``max_tokens`` set (the request's own dict is left alone)."""
    updated = ModelSettings() if settings is None else settings.copy()
    updated["max_tokens"] = max_tokens
    return updated


def _part_text(part: object) -> str:
    if isinstance(part, BaseToolCallPart):
        return f"{part.tool_name} {part.args_as_json_str()}"
    if isinstance(part, BaseToolReturnPart):
        return part.model_response_str()
    model_response = getattr(part, "model_response", None)
    if callable(model_response):  # RetryPromptPart
        return str(model_response())
    content = getattr(part, "content", None)
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return " ".join(item for item in content if isinstance(item, str))
    return ""


def _tool_text(tool: ToolDefinition) -> str:
    return f"{tool.name} {tool.description or ''} {json.dumps(tool.parameters_json_schema)}"


def _text_tokens(text: str) -> int:
    """One chat message of ``text`` in the guard's prompt estimate (``estimate_prompt_tokens``)."""
    return TOKENS_PER_MESSAGE + estimate_prompt_tokens(text)


def _message_text(message: ModelMessage, parts: Sequence[object]) -> str:
    text = " ".join(_part_text(part) for part in parts)
    if isinstance(message, ModelRequest) and isinstance(message.instructions, str):
        text = f"{message.instructions} {text}"
    return text


class _PromptMeter:
    """The prompt estimate of a request, each message and tool definition measured once per run.

    Every step re-sends the whole history, and rendering tool returns and call arguments as
    JSON is the costly part of an estimate, so each message's share (its text as one chat
    message) is kept, keyed by the message and the identity of its parts; each entry holds the
    objects, so an ``id`` cannot be reused while it lives. Tool definitions and instructions
    count too: providers bill them as input. The guard gets the sum (``prompt_tokens``), the
    number ``estimate_prompt_tokens`` counts from the same texts.
    """

    def __init__(self) -> None:
        self._tools: dict[int, tuple[ToolDefinition, int]] = {}
        self._messages: dict[int, tuple[ModelMessage, tuple[object, ...], object, int]] = {}

    def tokens(self, messages: Sequence[ModelMessage], parameters: ModelRequestParameters) -> int:
        total = 0
        tools = self._tools
        for tool in (*parameters.function_tools, *parameters.output_tools):
            known = tools.get(id(tool))
            if known is None or known[0] is not tool:
                known = tools[id(tool)] = (tool, _text_tokens(_tool_text(tool)))
            total += known[1]
        for instruction in parameters.instruction_parts or ():
            total += _text_tokens(instruction.content)
        seen = self._messages
        for message in messages:
            parts = tuple(message.parts)
            instructions = message.instructions if isinstance(message, ModelRequest) else None
            hit = seen.get(id(message))
            # Tuple equality checks identity first: the same parts (or equal ones) as last time.
            if hit is not None and hit[0] is message and hit[1] == parts and hit[2] == instructions:
                total += hit[3]
                continue
            tokens = _text_tokens(_message_text(message, parts))
            seen[id(message)] = (message, parts, instructions, tokens)
            total += tokens
        return total


def _wrap_up(
    call: AsyncModelCall,
    messages: list[ModelMessage],
    settings: ModelSettings | None,
    parameters: ModelRequestParameters,
) -> tuple[list[ModelMessage], ModelSettings | None, ModelRequestParameters]:
    """The wrap-up request paid by the summary reserve: no function tools, asked to summarise,
    and no longer than the reserve's output allows."""
    wrapped_up = list(messages)
    for index in range(len(wrapped_up) - 1, -1, -1):
        last = wrapped_up[index]
        if isinstance(last, ModelRequest):
            # A copy: the stored history keeps the original request.
            wrapped_up[index] = replace(
                last, parts=[*last.parts, UserPromptPart(WRAP_UP_INSTRUCTION)]
            )
            break
    reserve_output = call.estimate.output_tokens
    if reserve_output:
        current = (settings or {}).get("max_tokens")
        settings = _with_max_tokens(
            settings, reserve_output if current is None else min(current, reserve_output)
        )
    return wrapped_up, settings, replace(parameters, function_tools=[])


def _streamed_usage(stream: StreamedResponse, call: AsyncModelCall) -> RequestUsage:
    """A stream's usage; for one cut off before the provider reported any, an estimate of
    what was generated (its text at ``BYTES_PER_TOKEN``) on top of the prompt estimate."""
    usage = stream.usage
    if usage.has_values():
        return usage
    generated = " ".join(_part_text(part) for part in stream.get().parts)
    return RequestUsage(
        input_tokens=call.estimate.input_tokens,
        output_tokens=-(-len(generated.encode()) // BYTES_PER_TOKEN),
    )
