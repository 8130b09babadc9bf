"""Budgets for the OpenAI Agents SDK: ``Runner.run(agent, input, hooks=guard)``.

``BudgetGuard`` is a set of run hooks built on ``AsyncRunGuard``: every model call is admitted
*before* it is made (its estimate reserved, priced by ``Pricing``), reconciled *after* it with the
usage the SDK reports, and every tool call and hand-off is admitted too. Example::

    guard = BudgetGuard("sqlite:///budgets.db", "org:acme/session:7f3c",
                        max_total_tokens=200_000, max_requests=50, max_cost_usd="1.50")
    result = await Runner.run(agent, "...", hooks=guard)   # or Runner.run_sync
    print(guard.report)

Where the SDK calls hooks (openai-agents 0.24, ``run_internal/run_loop.py::get_new_response``):
it resolves the model (``get_model``), *then* awaits ``on_llm_start``, *then* calls
``model.get_response``; ``on_llm_end`` follows a successful response. Hooks are awaited through
``gather_with_cancel``, so an exception raised in ``on_llm_start`` propagates out of
``Runner.run`` unchanged and the model call is never made: a hook *can* refuse a call before it
happens. It cannot change that call's model or ``max_tokens`` (already resolved), nor replace it
with an answer. Downgrades, ``max_tokens`` clamping, the policy's wrap-up call and the graceful
end therefore use the SDK's own extension point that can: a ``ModelProvider``
(``run_config=guard.run_config()``) whose models carry out the plan the hook admitted.

``on_tool_start`` runs before the tool body, but the SDK wraps any exception from it in
``UserError`` unless it is an ``AgentsException``; refusals are therefore raised as
``AgentsBudgetExceeded``, which is both a ``budgeteer.BudgetExceeded`` (same fields) and an
``agents.exceptions.AgentsException``, so they reach the caller typed.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from types import TracebackType
from typing import Any

from agents import Agent, RunConfig, RunContextWrapper, RunHooks
from agents.agent_output import AgentOutputSchemaBase
from agents.exceptions import AgentsException
from agents.handoffs import Handoff
from agents.items import (
    ModelResponse,
    TResponseInputItem,
    TResponseOutputItem,
    TResponseStreamEvent,
)
from agents.lifecycle import RunHooksBase
from agents.model_settings import ModelSettings
from agents.models import get_default_model
from agents.models.interface import Model, ModelProvider, ModelTracing
from agents.run_context import AgentHookContext
from agents.tool import Tool
from agents.usage import Usage as AgentsUsage
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseOutputMessage,
    ResponseOutputText,
)
from openai.types.responses.response_prompt_param import ResponsePromptParam

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
from budgeteer.integrations._usage import usage_from_openai
from budgeteer.ledger import AsyncLedger
from budgeteer.model import Amount, Limit, Usage
from budgeteer.policy import Degrade, Policy
from budgeteer.pricing import Pricing

__all__ = [
    "WRAP_UP_INSTRUCTIONS",
    "AgentsBudgetExceeded",
    "BudgetGuard",
    "CompositeRunHooks",
    "budget_notice",
]

logger = logging.getLogger("budgeteer.integrations.openai_agents")

WRAP_UP_INSTRUCTIONS = (
    "The budget for this run is exhausted. Do not call tools or hand off. Summarise what has "
    "been found so far and give your final answer now."
)
"""Appended to the system instructions of the policy's wrap-up call (``on_exhausted="summary"``)."""

# Prefixes the SDK's MultiProvider routes through another client: the rest names the model.
_ROUTING_PREFIXES = frozenset({"openai", "litellm", "any-llm"})


class AgentsBudgetExceeded(BudgetExceeded, AgentsException):
    """A refusal raised inside an Agents SDK run: a ``BudgetExceeded`` with the same fields.

    Also an ``AgentsException``, because the SDK re-wraps any other exception raised while a
    tool starts into ``UserError`` and the caller would lose the typed error.
    """

    @classmethod
    def from_error(cls, error: BudgetExceeded) -> AgentsBudgetExceeded:
        """The same refusal, raisable through the SDK."""
        if isinstance(error, AgentsBudgetExceeded):
            return error
        return cls(
            scope=error.scope,
            dimension=error.dimension,
            limit=error.limit,
            used=error.used,
            held=error.held,
            requested=error.requested,
            window=error.window,
            retry_after=error.retry_after,
        )

    def __reduce__(self) -> tuple[object, ...]:
        fields = {k: v for k, v in self.__dict__.items() if k != "run_data"}
        return (_rebuild_agents_budget_exceeded, (fields,))


def _rebuild_agents_budget_exceeded(fields: dict[str, Any]) -> AgentsBudgetExceeded:
    return AgentsBudgetExceeded(**fields)


def budget_notice(error: BudgetExceeded) -> str:
    """The default final output of a run ended gracefully: which budget ran out."""
    return (
        f"Budget exhausted: the {error.dimension} limit of {error.limit} on "
        f"{error.scope!r} was reached, so the run stopped here."
    )


@dataclasses.dataclass(slots=True)
class _Turn:
    """One model call of the run, from ``on_llm_start`` to ``on_llm_end``."""

    model: str
    """The model to call: the one the SDK resolved, or the plan's (downgrade, wrap-up)."""
    max_tokens: int | None
    """The output cap to send (``None``: the request's own)."""
    routed: bool
    """The call goes through this guard's provider, so the plan can be applied to it."""
    tools_allowed: bool = True
    subagents_allowed: bool = True
    final: bool = False
    """The policy's wrap-up call, paid by the summary reserve."""
    ending: BudgetExceeded | None = None
    """Graceful end: answer with the notice instead of calling the model."""
    estimate: Usage | None = None
    call: AsyncModelCall | None = None
    scope: AbstractAsyncContextManager[AsyncModelCall] | None = None


class BudgetGuard(RunHooks[Any]):
    """Run hooks that put a budgeteer budget on one Agents SDK run.

    Pass it as ``hooks=`` to ``Runner.run``, ``Runner.run_sync`` or ``Runner.run_streamed``.
    Downgrades, the graceful end and the policy's wrap-up call also need the guard's model
    provider: ``Runner.run(agent, input, hooks=guard, run_config=guard.run_config())``
    (agents must name their model, e.g. ``model="gpt-4o"``; a ``Model`` object bypasses
    providers). Without it, those options are refused at the first model call.

    A guard is one run. Runs share a budget by sharing a scope: give them paths under one scope
    that carries a limit (``ledger.set_limit("team:search", ...)``), or the same path.

    The run's guard starts at the run's first hook and finishes when the run's final output is
    produced or a refusal ends it. Use ``async with guard:`` around ``Runner.run`` to also
    release holds and finish the report when the run fails for another reason (a model error,
    ``MaxTurnsExceeded``), and for ``wall_time_s`` limits (the deadline needs one task for the
    whole run).

    The graceful end answers in place of a refused model call, so it needs a text output
    (``output_type`` ``None`` or ``str``); otherwise the refusal is raised. A tool call or
    hand-off refused in the middle of a turn is always raised (a hook cannot skip it); in
    graceful mode tools and hand-offs stop being offered to the model once
    their cap is used up, so a sequential loop ends with an answer instead.

    Args:
        ledger: An ``AsyncLedger``, or a URL to open one (``"sqlite:///b.db"``), closed when
            the run ends. Default: a ``memory://`` ledger of this guard's own (pass one
            ``AsyncLedger`` to several guards to share it within a process).
        path: The run's scope path; default ``run:<random id>``.
        max_total_tokens: Cap on input + output tokens of the run.
        max_requests: Cap on model requests of the run.
        max_cost_usd: Cap on the run's cost in US dollars (``Decimal``, ``str`` or ``int``).
        max_tool_calls: Cap on tool calls of the run.
        max_agent_hops: Cap on hand-offs of the run.
        limits: Further per-run caps as budgeteer ``Limit``s (set on ``path``).
        pricing: Prices model calls (default: ``Pricing()``, which refuses a model it has no
            price for rather than counting it as free).
        model: The model name to price calls under when an agent's model is a ``Model`` object
            without a ``model`` name attribute, or when the agent names none (default: the
            SDK's default model).
        provider: genai-prices provider id for pricing, if the model name is ambiguous.
        downgrade_to: Switch later model calls to this model once ``downgrade_at`` of any limit
            on the path is used (a ``Degrade.downgrade`` rung added to ``policy``).
        downgrade_at: The downgrade threshold, a fraction in (0, 1].
        graceful: When the budget runs out, end the run normally with a final output that says
            so (``notice``) instead of raising. Implied by a ``summary`` policy.
        policy: A budgeteer ``Policy`` (ladder, clamping, exhaustion mode).
        notice: Builds the final output of a gracefully ended run from the refusal.
        warn_at: Soft-warning threshold (see ``RunGuard``).
        on_warning: Called once per limit that passes ``warn_at``.
        default_max_tokens: Output tokens reserved when a call sets no ``max_tokens``.
        ttl_s: How long each hold lives if the process dies before settling it.
    """

    def __init__(
        self,
        ledger: AsyncLedger | str | None = None,
        path: str | None = None,
        *,
        max_total_tokens: int | None = None,
        max_requests: int | None = None,
        max_cost_usd: Decimal | str | int | None = None,
        max_tool_calls: int | None = None,
        max_agent_hops: int | None = None,
        limits: Iterable[Limit] = (),
        pricing: Pricing | None = None,
        model: str | None = None,
        provider: str | None = None,
        downgrade_to: str | None = None,
        downgrade_at: float = 0.8,
        graceful: bool = False,
        policy: Policy | None = None,
        notice: Callable[[BudgetExceeded], str] = budget_notice,
        warn_at: float = 0.8,
        on_warning: Callable[[BudgetWarning], None] | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        ttl_s: float | None = None,
    ) -> None:
        if ledger is None or isinstance(ledger, str):
            self._owned: AsyncLedger | None = AsyncLedger(ledger or "memory://")
            self.ledger = self._owned
        elif isinstance(ledger, AsyncLedger):
            self._owned = None
            self.ledger = ledger
        else:
            raise InvalidInput("ledger", ledger, "expected an AsyncLedger or a ledger URL")
        caps = _caps(
            limits,
            {
                "total_tokens": max_total_tokens,
                "requests": max_requests,
                "cost_usd": max_cost_usd,
                "tool_calls": max_tool_calls,
                "agent_hops": max_agent_hops,
            },
        )
        if model is not None and (not isinstance(model, str) or not model):
            raise InvalidInput("model", model, "expected a model name")
        if not isinstance(graceful, bool):
            raise InvalidInput("graceful", graceful, "expected True or False")
        if not callable(notice):
            raise InvalidInput("notice", notice, "expected a callable(BudgetExceeded) -> str")
        self._policy = _compose_policy(policy, downgrade_to, downgrade_at, graceful)
        self._graceful = graceful or (
            self._policy is not None and self._policy.on_exhausted == "summary"
        )
        # Everything that changes a call rather than refusing it needs the guard's provider.
        self._needs_routing = self._graceful or (
            self._policy is not None
            and any(rung.action == "downgrade" for rung in self._policy.ladder)
        )
        self.pricing = pricing if pricing is not None else Pricing()
        self._run = AsyncRunGuard(
            self.ledger,
            path if path is not None else f"run:{uuid.uuid4().hex}",
            limits=caps,
            pricing=self.pricing,
            warn_at=warn_at,
            on_warning=on_warning,
            default_max_tokens=default_max_tokens,
            ttl_s=ttl_s,
            policy=self._policy,
        )
        self._deadline = any(
            limit.dimension == "wall_time_s" and limit.window.kind == "lifetime" for limit in caps
        )
        self._model = model
        self._provider = provider
        self._default_max_tokens = default_max_tokens
        self._prompt = _PromptMeter()
        self._notice = notice
        self._started = False
        self._finished = False
        self._explicit = False
        self._turn: _Turn | None = None
        self._run_usage: object = None
        self._route: _BudgetedModel | None = None
        self._config_model: str | None = None
        self._config_settings: ModelSettings | None = None

    # -- what the caller reads -----------------------------------------------------------------

    @property
    def path(self) -> str:
        """The run's scope path."""
        return self._run.path

    @property
    def usage(self) -> Usage:
        """What the run has committed so far."""
        return self._run.usage

    @property
    def report(self) -> RunReport:
        """The run report (a snapshot during the run, final once it ended)."""
        return self._run.report

    @property
    def exhausted(self) -> BudgetExceeded | None:
        """The refusal that ended the run's admissions, or ``None``."""
        return self._run.exhausted

    @property
    def policy(self) -> Policy | None:
        """The policy in force (``downgrade_to`` and ``graceful`` folded in)."""
        return self._policy

    def run_config(self, base: RunConfig | None = None) -> RunConfig:
        """A copy of ``base`` whose model provider applies this guard's plan to every call.

        Needed for ``downgrade_to``, ``graceful``, a ``summary`` policy and ``max_tokens``
        clamping; harmless otherwise.

        Raises:
            InvalidInput: ``base.model`` is a ``Model`` object (it bypasses providers).
        """
        config = base if base is not None else RunConfig()
        if not isinstance(config, RunConfig):
            raise InvalidInput("base", config, "expected an agents.RunConfig")
        if isinstance(config.model, Model):
            raise InvalidInput(
                "base.model", config.model, "a Model object bypasses providers; name the model"
            )
        self._config_model = config.model
        self._config_settings = config.model_settings
        return dataclasses.replace(
            config, model_provider=_BudgetedProvider(self, config.model_provider)
        )

    # -- explicit lifetime ---------------------------------------------------------------------

    async def __aenter__(self) -> BudgetGuard:
        self._explicit = True
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._finish(exc, final=True)

    # -- the hooks -----------------------------------------------------------------------------

    async def on_agent_start(self, context: AgentHookContext[Any], agent: Agent[Any]) -> None:
        """Start the run's guard (first agent)."""
        del agent
        self._bind(context)
        await self._start()

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[TResponseInputItem],
    ) -> None:
        """Admit the model call the SDK is about to make (refusal raises before the call)."""
        self._bind(context)
        await self._start()
        await self._admit_model_call(agent, system_prompt, input_items)

    async def on_llm_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], response: ModelResponse
    ) -> None:
        """Commit the reported usage of the call, priced for the model that ran."""
        del context, agent
        turn, self._turn = self._turn, None
        if turn is None or turn.call is None or turn.scope is None:
            return
        reported = response.usage
        usage = usage_from_openai(reported, requests=max(reported.requests, 1))
        if usage.tokens:
            await turn.call.settle(usage, model=turn.model)
        else:
            # A response without token counts is not free: the reserved estimate is committed.
            logger.warning("model %s reported no usage; charging the estimate", turn.model)
        scope, turn.scope, turn.call = turn.scope, None, None
        await scope.__aexit__(None, None, None)

    async def on_tool_start(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool
    ) -> None:
        """Admit one tool call (refusal raises before the tool runs)."""
        del agent
        self._bind(context)
        await self._admit_tool(tool.name)

    async def on_handoff(
        self, context: RunContextWrapper[Any], from_agent: Agent[Any], to_agent: Agent[Any]
    ) -> None:
        """Admit one agent hop."""
        del from_agent, to_agent
        self._bind(context)
        await self._admit_hop()

    async def on_agent_end(
        self, context: AgentHookContext[Any], agent: Agent[Any], output: Any
    ) -> None:
        """The run produced its final output: finish the guard."""
        del context, agent, output
        await self._finish(None)

    # -- the one place each admission goes through -----------------------------------------------

    async def _admit_model_call(
        self, agent: Agent[Any], system_prompt: str | None, input_items: Sequence[object]
    ) -> None:
        """Plan and admit one model call: its model name and ``max_tokens`` are decided here."""
        route = self._take_route(agent)
        if route is None and self._needs_routing:
            raise InvalidInput(
                "run_config",
                None,
                "downgrade_to, graceful and a summary policy change or replace model calls: "
                "pass run_config=guard.run_config() and give agents their model by name",
            )
        requested = route.name if route is not None else self._model_name(agent)
        settings = agent.model_settings
        if self._config_settings is not None:
            settings = settings.resolve(self._config_settings)
        prompt_tokens = self._prompt.tokens(system_prompt, input_items)
        run = self._run
        policy = self._policy
        plan = run.plan_call(
            requested,
            # The plan reads the prompt only to clamp max_tokens, which needs the provider.
            prompt_tokens=prompt_tokens
            if route is not None and policy is not None and policy.clamp_max_tokens
            else None,
            max_tokens=settings.max_tokens,
            provider=self._provider,
        )
        # Without the provider the call goes out as the SDK resolved it: admit exactly that.
        turn = _Turn(
            model=(plan.model or requested) if route is not None else requested,
            max_tokens=plan.max_tokens if route is not None else settings.max_tokens,
            routed=route is not None,
            tools_allowed=plan.tools_allowed,
            subagents_allowed=plan.subagents_allowed,
        )
        turn.estimate = Usage(
            input_tokens=prompt_tokens,
            output_tokens=self._default_max_tokens if turn.max_tokens is None else turn.max_tokens,
            requests=1,
        )
        if plan.exhausted and run.exhausted is not None:
            await self._refuse(run.exhausted, turn, agent)
            return
        try:
            await self._open(turn)
        except BudgetExceeded as error:
            await self._refuse(error, turn, agent)
            return
        if turn.call is not None and turn.call.final:
            reserve = policy.summary_reserve if policy is not None else None
            turn.final = True
            turn.tools_allowed = turn.subagents_allowed = False
            turn.model = (policy.summary_model if policy is not None else None) or turn.model
            turn.max_tokens = (reserve.output_tokens if reserve else 0) or turn.max_tokens
        self._turn = turn

    async def _open(self, turn: _Turn) -> None:
        """Reserve the call's estimate, priced for the model it will run on."""
        name, provider = _pricing_name(turn.model, self._provider)
        scope = self._run.model_call(name, estimate=turn.estimate, provider=provider)
        turn.call = await scope.__aenter__()
        turn.scope = scope

    async def _admit_tool(self, name: str) -> None:
        """Admit one tool call (the policy's ``stop_tools`` and any ``tool_calls`` cap)."""
        await self._start()
        try:
            await self._run.tool_call(name)
        except BudgetExceeded as error:
            await self._finish(error)
            raise AgentsBudgetExceeded.from_error(error) from None

    async def _admit_hop(self) -> None:
        """Admit one hand-off (the policy's ``stop_subagents`` and any ``agent_hops`` cap)."""
        await self._start()
        try:
            await self._run.hop()
        except BudgetExceeded as error:
            await self._finish(error)
            raise AgentsBudgetExceeded.from_error(error) from None

    async def _refuse(self, error: BudgetExceeded, turn: _Turn, agent: Agent[Any]) -> None:
        """A model call may not run: end gracefully when that is possible, else raise."""
        if self._graceful and turn.routed and agent.output_type in (None, str):
            turn.ending = error
            self._turn = turn
            return
        await self._finish(error)
        raise AgentsBudgetExceeded.from_error(error) from None

    # -- the provider's side ---------------------------------------------------------------------

    def _routed(self, model: _BudgetedModel) -> None:
        self._route = model

    def _take_route(self, agent: Agent[Any]) -> _BudgetedModel | None:
        route, self._route = self._route, None
        # A Model object on the agent bypasses the provider (unless the run names a model), so
        # a route left from an earlier resolution does not belong to this call.
        if route is not None and isinstance(agent.model, Model) and self._config_model is None:
            return None
        return route

    async def _turn_for(self, model: _BudgetedModel) -> _Turn:
        turn = self._turn
        if turn is None or not turn.routed:
            raise InvalidInput(
                "hooks", None, f"model {model.name!r} runs without its guard: pass hooks=guard"
            )
        if turn.call is None and turn.ending is None:
            # The SDK retries a failed request through the same turn: admit the retry again.
            try:
                await self._open(turn)
            except BudgetExceeded as error:
                await self._finish(error)
                raise AgentsBudgetExceeded.from_error(error) from None
        return turn

    async def _call_failed(self, turn: _Turn, error: BaseException) -> None:
        """The request failed: release its hold (a retry is admitted again)."""
        scope, turn.scope, turn.call = turn.scope, None, None
        if scope is not None:
            await scope.__aexit__(type(error), error, error.__traceback__)

    def _ending_response(self, error: BudgetExceeded) -> ModelResponse:
        return ModelResponse(
            output=[_message(self._notice(error))], usage=AgentsUsage(), response_id=None
        )

    def _with_notice(self, response: ModelResponse) -> ModelResponse:
        """The wrap-up call's answer, prefixed with what ran out."""
        error = self._run.exhausted
        if error is None:
            return response
        notice = self._notice(error)
        output = list(response.output)
        for index in range(len(output) - 1, -1, -1):
            item = output[index]
            if isinstance(item, ResponseOutputMessage):
                text = "".join(p.text for p in item.content if isinstance(p, ResponseOutputText))
                output[index] = _message(f"{notice}\n\n{text}" if text else notice, item.id)
                break
        else:
            output.append(_message(notice))
        return dataclasses.replace(response, output=output)

    def _with_notice_event(self, event: ResponseCompletedEvent) -> ResponseCompletedEvent:
        """A streamed wrap-up's completed response, prefixed with what ran out."""
        noticed = self._with_notice(
            ModelResponse(output=event.response.output, usage=AgentsUsage(), response_id=None)
        )
        response = event.response.model_copy(update={"output": noticed.output})
        return event.model_copy(update={"response": response})

    # -- lifetime --------------------------------------------------------------------------------

    def _bind(self, context: RunContextWrapper[Any]) -> None:
        """Tie the guard to the first run that calls it: every context of a run shares its
        ``usage`` object, so a second run passing the same guard is caught."""
        if self._run_usage is None:
            self._run_usage = context.usage
        elif context.usage is not self._run_usage:
            raise InvalidInput("guard", self.path, "a BudgetGuard guards one run; make one per run")

    async def _start(self) -> None:
        if self._started:
            if self._finished:
                raise InvalidInput(
                    "guard", self.path, "a BudgetGuard guards one run; make one per run"
                )
            return
        if self._deadline and not self._explicit:
            raise InvalidInput(
                "limits", "wall_time_s", "a run deadline needs `async with guard:` around the run"
            )
        self._started = True
        await self._run.__aenter__()

    async def _finish(self, error: BaseException | None, *, final: bool = False) -> None:
        """End the run's guard (in explicit mode only when the ``async with`` block ends)."""
        if self._finished or not self._started or (self._explicit and not final):
            return
        self._finished = True
        self._turn = None
        try:
            await self._run.__aexit__(
                type(error) if error is not None else None,
                error,
                error.__traceback__ if error is not None else None,
            )
        finally:
            if self._owned is not None:
                await self._owned.close()

    def _model_name(self, agent: Agent[Any]) -> str:
        model = agent.model
        if isinstance(model, str) and model:
            return model
        if isinstance(model, Model):
            name = getattr(model, "model", None)
            if isinstance(name, str) and name:
                return name
            if self._model is not None:
                return self._model
            raise InvalidInput(
                "model", model, "cannot name this Model for pricing: pass BudgetGuard(model=...)"
            )
        return self._model or get_default_model()


class _BudgetedModel(Model):
    """A model from the guard's provider: makes the call the guard's hook admitted."""

    def __init__(self, guard: BudgetGuard, provider: ModelProvider, name: str, inner: Model):
        self.guard = guard
        self.provider = provider
        self.name = name
        self.model = name
        self.inner = inner
        self._others: dict[str, Model] = {}

    def _target(self, turn: _Turn) -> Model:
        if turn.model == self.name:
            return self.inner
        other = self._others.get(turn.model)
        if other is None:
            other = self._others[turn.model] = self.provider.get_model(turn.model)
        return other

    @staticmethod
    def _request(
        turn: _Turn,
        system_instructions: str | None,
        model_settings: ModelSettings,
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> tuple[str | None, ModelSettings, list[Tool], list[Handoff]]:
        changes: dict[str, Any] = {}
        if turn.max_tokens is not None and turn.max_tokens != model_settings.max_tokens:
            changes["max_tokens"] = turn.max_tokens
        if not turn.tools_allowed and tools:
            tools = []
            changes["tool_choice"] = None
            changes["parallel_tool_calls"] = None
        if not turn.subagents_allowed:
            handoffs = []
        if turn.final:
            system_instructions = (
                f"{system_instructions}\n\n{WRAP_UP_INSTRUCTIONS}"
                if system_instructions
                else WRAP_UP_INSTRUCTIONS
            )
        if changes:
            model_settings = dataclasses.replace(model_settings, **changes)
        return system_instructions, model_settings, tools, handoffs

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> ModelResponse:
        """Call the planned model with the planned request, or answer the graceful end."""
        guard = self.guard
        turn = await guard._turn_for(self)
        if turn.ending is not None:
            return guard._ending_response(turn.ending)
        system_instructions, model_settings, tools, handoffs = self._request(
            turn, system_instructions, model_settings, tools, handoffs
        )
        try:
            response = await self._target(turn).get_response(
                system_instructions,
                input,
                model_settings,
                tools,
                output_schema,
                handoffs,
                tracing,
                previous_response_id=previous_response_id,
                conversation_id=conversation_id,
                prompt=prompt,
            )
        except BaseException as error:
            await guard._call_failed(turn, error)
            raise
        return guard._with_notice(response) if turn.final else response

    async def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        """Stream the planned model's answer, or the graceful end as one completed response."""
        guard = self.guard
        turn = await guard._turn_for(self)
        if turn.ending is not None:
            yield _completed(guard._ending_response(turn.ending).output)
            return
        system_instructions, model_settings, tools, handoffs = self._request(
            turn, system_instructions, model_settings, tools, handoffs
        )
        try:
            async for event in self._target(turn).stream_response(
                system_instructions,
                input,
                model_settings,
                tools,
                output_schema,
                handoffs,
                tracing,
                previous_response_id=previous_response_id,
                conversation_id=conversation_id,
                prompt=prompt,
            ):
                if turn.final and isinstance(event, ResponseCompletedEvent):
                    # The final output is read from the completed response: say what ran out.
                    yield guard._with_notice_event(event)
                else:
                    yield event
        except BaseException as error:
            await guard._call_failed(turn, error)
            raise

    async def close(self) -> None:
        """Close the models this wrapper opened."""
        await self.inner.close()
        for other in self._others.values():
            await other.close()


class _BudgetedProvider(ModelProvider):
    """Wraps the run's model provider so each model it returns answers to the guard."""

    def __init__(self, guard: BudgetGuard, inner: ModelProvider) -> None:
        self.guard = guard
        self.inner = inner
        self._models: dict[str | None, _BudgetedModel] = {}

    def get_model(self, model_name: str | None) -> Model:
        """The inner provider's model, wrapped; the guard learns the name the SDK resolved."""
        model = self._models.get(model_name)
        if model is None:
            model = _BudgetedModel(
                self.guard,
                self.inner,
                model_name or get_default_model(),
                self.inner.get_model(model_name),
            )
            self._models[model_name] = model
        # The SDK resolves the model right before on_llm_start; the hook takes this route.
        self.guard._routed(model)
        return model

    async def aclose(self) -> None:
        """Close the inner provider."""
        await self.inner.aclose()


class CompositeRunHooks(RunHooks[Any]):
    """Several run hooks as one: every hook method calls each of ``hooks`` in order.

    ``Runner.run`` takes a single ``hooks`` object; ``CompositeRunHooks(my_hooks, guard)`` runs
    both. The calls are sequential, so an exception (a budget refusal) stops the fan-out and
    propagates: put the guard first to refuse before other hooks see a call.
    """

    def __init__(self, *hooks: RunHooksBase[Any, Any]) -> None:
        for hook in hooks:
            if not isinstance(hook, RunHooksBase):
                raise InvalidInput("hooks", hook, "expected agents.RunHooks instances")
        self.hooks: tuple[RunHooksBase[Any, Any], ...] = hooks

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[TResponseInputItem],
    ) -> None:
        """Fan out ``on_llm_start``."""
        for hook in self.hooks:
            await hook.on_llm_start(context, agent, system_prompt, input_items)

    async def on_llm_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], response: ModelResponse
    ) -> None:
        """Fan out ``on_llm_end``."""
        for hook in self.hooks:
            await hook.on_llm_end(context, agent, response)

    async def on_agent_start(self, context: AgentHookContext[Any], agent: Agent[Any]) -> None:
        """Fan out ``on_agent_start``."""
        for hook in self.hooks:
            await hook.on_agent_start(context, agent)

    async def on_agent_end(
        self, context: AgentHookContext[Any], agent: Agent[Any], output: Any
    ) -> None:
        """Fan out ``on_agent_end``."""
        for hook in self.hooks:
            await hook.on_agent_end(context, agent, output)

    async def on_handoff(
        self, context: RunContextWrapper[Any], from_agent: Agent[Any], to_agent: Agent[Any]
    ) -> None:
        """Fan out ``on_handoff``."""
        for hook in self.hooks:
            await hook.on_handoff(context, from_agent, to_agent)

    async def on_tool_start(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool
    ) -> None:
        """Fan out ``on_tool_start``."""
        for hook in self.hooks:
            await hook.on_tool_start(context, agent, tool)

    async def on_tool_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool, result: object
    ) -> None:
        """Fan out ``on_tool_end``."""
        for hook in self.hooks:
            await hook.on_tool_end(context, agent, tool, result)


# -- helpers -----------------------------------------------------------------------------------


def _caps(limits: Iterable[Limit], direct: Mapping[str, Amount | str | None]) -> list[Limit]:
    caps = list(limits)
    for limit in caps:
        if not isinstance(limit, Limit):
            raise InvalidInput("limits", limit, "expected budgeteer.Limit objects")
    for dimension, value in direct.items():
        if value is None:
            continue
        amount: Amount
        if dimension == "cost_usd":
            if isinstance(value, float | bool):
                raise InvalidInput("max_cost_usd", value, "expected a Decimal, str or int")
            try:
                amount = Decimal(value)
            except ArithmeticError:
                raise InvalidInput("max_cost_usd", value, "expected a number of dollars") from None
        elif isinstance(value, str):
            raise InvalidInput(f"max_{dimension}", value, "expected a whole number")
        else:
            amount = value
        caps.append(Limit(dimension, amount))
    seen: set[tuple[str, object]] = set()
    for limit in caps:
        key = (limit.dimension, limit.window)
        if key in seen:
            raise InvalidInput("limits", limit, f"two caps on {limit.dimension} in one window")
        seen.add(key)
    return caps


def _compose_policy(
    policy: Policy | None, downgrade_to: str | None, downgrade_at: float, graceful: bool
) -> Policy | None:
    if policy is not None and not isinstance(policy, Policy):
        raise InvalidInput("policy", policy, "expected a budgeteer.Policy")
    rungs: list[Degrade] = list(policy.ladder) if policy is not None else []
    if downgrade_to is not None:
        rungs.append(Degrade.downgrade(to=downgrade_to, at=downgrade_at))
    if graceful:
        # Once a tool or hop cap is used up, stop offering tools / hand-offs to the model, so
        # it answers instead of asking for a call that could only be refused with an exception.
        rungs.append(Degrade.stop_tools(at=1.0, dimension="tool_calls"))
        rungs.append(Degrade.stop_subagents(at=1.0, dimension="agent_hops"))
    if policy is None:
        if not rungs:
            return None
        # The caller asked for no clamping: keep each call's max_tokens as the agent sets it.
        return Policy(ladder=tuple(rungs), clamp_max_tokens=False)
    return dataclasses.replace(policy, ladder=tuple(rungs))


class _PromptMeter:
    """The offline prompt estimate of each call, walking only the items added since the last.

    The SDK sends the whole history on every call, rebuilt as new objects each turn; measuring it
    all again would cost time in proportion to the run's length on every call. When the history
    still starts and ends (at the old length) with the items seen last time, only the new
    items are measured. Every item counts whole, keys and ids included: tool calls and tool
    outputs have no ``content`` but are sent, and over-counting is the safe side of an estimate.
    """

    __slots__ = ("_count", "_first", "_last", "_tokens")

    def __init__(self) -> None:
        self._count = 0
        self._tokens = 0
        self._first: object = None
        self._last: object = None

    def tokens(self, system_prompt: str | None, items: Sequence[object]) -> int:
        count = self._count
        if 0 < count <= len(items) and items[0] == self._first and items[count - 1] == self._last:
            tokens, start = self._tokens, count
        else:
            tokens, start = 0, 0
        for index in range(start, len(items)):
            tokens += TOKENS_PER_MESSAGE - (-_size(items[index]) // BYTES_PER_TOKEN)
        self._count, self._tokens = len(items), tokens
        self._first = items[0] if items else None
        self._last = items[-1] if items else None
        if system_prompt:
            tokens += TOKENS_PER_MESSAGE + estimate_prompt_tokens(system_prompt)
        return tokens


def _size(value: object) -> int:
    """UTF-8 bytes of an input item's text, keys included (about what JSON would take)."""
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode())
    if isinstance(value, Mapping):
        return sum(len(str(key)) + 4 + _size(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return sum(_size(item) + 1 for item in value)
    if value is None or isinstance(value, bool | int | float):
        return 5
    dump = getattr(value, "model_dump", None)
    if callable(dump):  # an SDK/pydantic item object
        return _size(dump())
    return len(str(value))


def _pricing_name(model: str, provider: str | None) -> tuple[str, str | None]:
    """The name to price a model under, without MultiProvider's ``openai/`` or ``litellm/<p>/``."""
    prefix, _, rest = model.partition("/")
    if not rest or prefix not in _ROUTING_PREFIXES:
        return model, provider
    if prefix == "openai":
        return rest, provider or "openai"
    inner, _, name = rest.partition("/")
    return (name, provider or inner) if name else (rest, provider)


def _completed(output: list[TResponseOutputItem]) -> ResponseCompletedEvent:
    """A stream of one event: the response completed with ``output`` (no usage: nothing ran)."""
    return ResponseCompletedEvent(
        type="response.completed",
        sequence_number=0,
        response=Response(
            id="budgeteer-exhausted",
            created_at=0,
            model="budgeteer",
            object="response",
            output=output,
            tool_choice="none",
            tools=[],
            parallel_tool_calls=False,
            status="completed",
        ),
    )


def _message(text: str, item_id: str = "budgeteer-notice") -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id=item_id,
        type="message",
        role="assistant",
        status="completed",
        content=[ResponseOutputText(text=text, type="output_text", annotations=[], logprobs=[])],
    )
