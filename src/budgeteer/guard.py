"""The run guard: what an agent loop talks to.

A guard binds one run to a scope path (and its own per-run caps) and turns each step of an agent
loop into a ledger cycle: an estimate is reserved *before* each model call, reconciled with the
provider's reported usage *after* it, and every tool call, iteration and agent hop is admitted
the same way. ``RunGuard`` (sync) and ``AsyncRunGuard`` share ``_RunState`` for everything but I/O.

Deadlines: ``async`` code gets asyncio cancellation (``asyncio.timeout``). Sync code in the main
thread gets ``SIGALRM`` (the body is interrupted, like ``pytest-timeout``); in other threads a
sync deadline is checked at every admission and at the end of each step.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Literal

from budgeteer.errors import BudgetExceeded, InvalidInput, StepTimeout
from budgeteer.ledger import AsyncLedger, Ledger
from budgeteer.model import (
    MAX_UNITS,
    Amount,
    Limit,
    LimitHeadroom,
    LimitState,
    Reservation,
    Usage,
    Window,
    from_units,
    parse_path,
)
from budgeteer.policy import (
    CallPlan,
    Degrade,
    Escalation,
    Grant,
    GrantRecord,
    Policy,
    affordable_output_tokens,
    price_function,
)

if TYPE_CHECKING:
    from budgeteer.pricing import Pricing

logger = logging.getLogger("budgeteer.guard")

DEFAULT_MAX_TOKENS = 4096
"""Output tokens reserved for a model call that does not say its ``max_tokens``."""
BYTES_PER_TOKEN = 3
"""Prompt estimate: one token per 3 UTF-8 bytes, deliberately pessimistic (real text: ~4)."""
TOKENS_PER_MESSAGE = 4
"""Prompt estimate: per-message framing tokens (role markers and separators)."""


# What each tool call, iteration and hop admits (a Usage is immutable: built once, not per call).
_ONE_TOOL_CALL = Usage(tool_calls=1, cost_usd=Decimal(0))
_ONE_ITERATION = Usage(iterations=1, cost_usd=Decimal(0))
_ONE_HOP = Usage(agent_hops=1, cost_usd=Decimal(0))


def estimate_prompt_tokens(prompt: str | Sequence[object] | None) -> int:
    """An offline, pessimistic token count for a prompt: a string or a list of chat messages.

    Messages may be dicts with ``content`` as a string or a list of parts with ``text``; other
    objects are counted by their ``str``. No tokenizer files are needed.
    """
    if prompt is None:
        return 0
    if isinstance(prompt, str):
        return -(-len(prompt.encode()) // BYTES_PER_TOKEN)
    total = 0
    for message in prompt:
        total += TOKENS_PER_MESSAGE - (-len(_message_text(message).encode()) // BYTES_PER_TOKEN)
    return total


def _prompt_size(prompt: str | Sequence[object] | None, prompt_tokens: int | None) -> int:
    """The prompt estimate: ``prompt_tokens`` when the caller measured it, else ``prompt``'s."""
    if prompt_tokens is None:
        return estimate_prompt_tokens(prompt)
    if isinstance(prompt_tokens, bool) or not isinstance(prompt_tokens, int) or prompt_tokens < 0:
        raise InvalidInput("prompt_tokens", prompt_tokens, "expected a whole number >= 0")
    if prompt is not None:
        raise InvalidInput("prompt_tokens", prompt_tokens, "give prompt or prompt_tokens, not both")
    return prompt_tokens


def _message_text(message: object) -> str:
    if isinstance(message, str):
        return message
    if type(message) is dict or isinstance(message, Mapping):  # dict first: an ABC check is slow
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(
                str(part.get("text", "")) if isinstance(part, Mapping) else str(part)
                for part in content
            )
        return str(content or "")
    return str(message)


@dataclass(frozen=True, slots=True)
class BudgetWarning:
    """A limit on the run's path passed the soft threshold (once per limit per run)."""

    scope: str
    """The scope whose limit is nearly spent."""
    dimension: str
    """The dimension."""
    window: Window
    """The limit's window."""
    fraction: float
    """``(used + held) / limit`` when the warning fired."""
    limit: object
    """The cap, in API units."""


@dataclass(frozen=True, slots=True)
class RunReport:
    """What one guarded run spent, and why it stopped."""

    path: str
    """The run's scope path."""
    status: Literal["completed", "stopped", "failed"]
    """``stopped``: a budget or deadline ended it; ``failed``: another exception did."""
    usage: Usage
    """Everything this run committed (cost ``None`` if any call's cost was unknown)."""
    stopped_by: BudgetExceeded | None
    """The refusal that stopped the run, with its scope, dimension, limit and amounts."""
    duration_s: float
    """Wall-clock seconds from entering the guard to leaving it."""
    model_calls: int
    """Model calls admitted."""
    warnings: tuple[BudgetWarning, ...] = ()
    """Soft-threshold warnings, in order."""
    models: Mapping[str, int] = field(default_factory=dict)
    """Model calls settled per model name."""
    degradations: tuple[Degrade, ...] = ()
    """The policy rungs that fired, in order."""
    grants: tuple[GrantRecord, ...] = ()
    """Budget granted by escalation during the run."""
    wrapped_up: bool = False
    """True if the run's last call was the wrap-up call paid by the summary reserve."""

    @property
    def cost_usd(self) -> Decimal | None:
        """The run's cost, ``None`` if unknown."""
        return self.usage.cost_usd


class _RunState:
    """The I/O-free part of a guard, shared by the sync and async drivers."""

    def __init__(
        self,
        path: str,
        limits: Iterable[Limit],
        pricing: Pricing | None,
        warn_at: float,
        on_warning: Callable[[BudgetWarning], None] | None,
        default_max_tokens: int,
        ttl_s: float | None,
        monotonic: Callable[[], float],
        policy: Policy | None,
    ) -> None:
        parse_path(path)
        if policy is not None and not isinstance(policy, Policy):
            raise InvalidInput("policy", policy, "expected a budgeteer.Policy")
        self.path = path
        self.limits = tuple(limits)
        for limit in self.limits:
            if not isinstance(limit, Limit):
                raise InvalidInput("limits", limit, "expected budgeteer.Limit objects")
        if not (isinstance(warn_at, int | float) and 0 < warn_at <= 1):
            raise InvalidInput("warn_at", warn_at, "expected a fraction in (0, 1]")
        if not isinstance(default_max_tokens, int) or default_max_tokens < 1:
            raise InvalidInput("default_max_tokens", default_max_tokens, "expected an int >= 1")
        self.pricing = pricing
        self.warn_at = float(warn_at)
        self.on_warning = on_warning
        self.default_max_tokens = default_max_tokens
        self.ttl_s = ttl_s
        self.monotonic = monotonic
        self.deadline_s = _wall_time_cap(self.limits)
        self.started = 0.0
        # The run's committed usage as a storage-unit vector (a Usage is built when read).
        self.used_units: dict[str, int] = {}
        self.cost_unknown = False
        self.model_calls = 0
        self.models: dict[str, int] = {}
        self.warned: set[tuple[str, str, Window]] = set()
        self.warnings: list[BudgetWarning] = []
        self.stopped_by: BudgetExceeded | None = None
        self.finished: RunReport | None = None
        self.open_holds: dict[str, Reservation] = {}
        self.policy = policy
        # What the last admission (or the peek on entry) saw of each limit on the path.
        self.heads: dict[tuple[str, str, str], LimitHeadroom] = {}
        self.fired: list[Degrade] = []
        self.summary_hold: Reservation | None = None
        self.wrapped_up = False
        self.grants: list[GrantRecord] = []

    @property
    def used(self) -> Usage:
        """What the run has committed so far (cost ``None`` if any commit's cost was unknown)."""
        return Usage.from_units(self.used_units, cost_known=not self.cost_unknown)

    # -- estimates and prices -------------------------------------------------------------------

    def call_estimate(
        self,
        model: str | None,
        prompt: str | Sequence[object] | None,
        max_tokens: int | None,
        estimate: Usage | None,
        provider: str | None,
        prompt_tokens: int | None = None,
    ) -> Usage:
        if estimate is not None:
            if not isinstance(estimate, Usage):
                raise InvalidInput("estimate", estimate, "expected a budgeteer.Usage")
            usage = estimate if estimate.requests else estimate.replace(requests=1)
        else:
            if max_tokens is not None and (
                isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0
            ):
                raise InvalidInput("max_tokens", max_tokens, "expected a whole number >= 0")
            input_tokens = _prompt_size(prompt, prompt_tokens)
            output_tokens = self.default_max_tokens if max_tokens is None else max_tokens
            pricing = self.pricing
            fits = input_tokens + output_tokens <= MAX_UNITS
            if model is not None and pricing is not None and fits:
                # Priced from the counts, so the Usage is built once (a valid one: both fit).
                cost = pricing._token_cost(model, input_tokens, output_tokens, provider, 1)
                return Usage(
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    requests=1,
                    cost_usd=cost,
                )
            usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens, requests=1)
        if usage.cost_usd is None and model is not None and self.pricing is not None:
            usage = usage.with_cost(self.pricing.price(model, usage, provider=provider).cost_usd)
        return usage

    def priced(
        self,
        model: str | None,
        usage: Usage,
        provider: str | None,
        service_tier: str | None,
        cache_write_1h_tokens: int = 0,
    ) -> tuple[Usage, dict[str, str]]:
        if not isinstance(usage, Usage):
            raise InvalidInput("usage", usage, "expected a budgeteer.Usage")
        if not usage.requests:
            usage = usage.replace(requests=1)
        if model is None or self.pricing is None or usage.cost_usd is not None:
            return usage, ({"model": model} if model else {})
        price = self.pricing.price(
            model,
            usage,
            provider=provider,
            service_tier=service_tier,
            cache_write_1h_tokens=cache_write_1h_tokens,
        )
        return usage.with_cost(price.cost_usd), price.metadata()

    # -- bookkeeping ----------------------------------------------------------------------------

    def committed(self, usage: Usage, model: str | None = None) -> None:
        totals = self.used_units
        for dimension, amount in usage.units.items():
            totals[dimension] = totals.get(dimension, 0) + amount
        if usage.cost_usd is None and usage.units:
            self.cost_unknown = True
        if model:
            self.models[model] = self.models.get(model, 0) + 1

    def admitted(self, reservation: Reservation) -> None:
        """Track the open hold and warn about any limit it pushed past the soft threshold."""
        self.open_holds[reservation.id] = reservation
        states = reservation.limit_states
        if self.policy is not None or any(
            s.max_units and s.used + s.held >= self.warn_at * s.max_units for s in states
        ):
            self.saw([_headroom(s) for s in states])  # API units are needed: convert

    def saw(self, heads: Sequence[LimitHeadroom]) -> None:
        """Warn about any limit an admission pushed past the soft threshold; feed the policy."""
        for head in heads:
            if not head.limit:
                continue
            fraction = head.fraction
            if fraction < self.warn_at:
                continue
            key = (head.scope, head.dimension, head.window)
            if key in self.warned:
                continue
            self.warned.add(key)
            warning = BudgetWarning(head.scope, head.dimension, head.window, fraction, head.limit)
            self.warnings.append(warning)
            logger.warning(
                "budget warning: %s %s at %.0f%% of %s",
                head.scope,
                head.dimension,
                fraction * 100,
                head.limit,
            )
            if self.on_warning is not None:
                self.on_warning(warning)
        if self.policy is not None:
            self.observe(heads)

    def reconciled(self, reservation: Reservation, actual: Usage) -> None:
        """Bring the policy's view of the path up to date with a commit (no I/O): the hold
        leaves ``held`` and the actual usage joins ``used`` on every limit it touched."""
        heads = self.heads
        if not heads:
            return
        reserved, spent = reservation.usage.units, actual.units
        # (used, held) deltas in API units, converted once per dimension; () where none.
        deltas: dict[str, tuple[Amount, Amount] | tuple[()]] = {}
        for key, head in heads.items():
            dimension = head.dimension
            delta = deltas.get(dimension)
            if delta is None:
                held, used = reserved.get(dimension, 0), spent.get(dimension, 0)
                delta = deltas[dimension] = (
                    (_amount(dimension, used), _amount(dimension, held)) if held or used else ()
                )
            if not delta:
                continue
            added, freed = delta
            heads[key] = LimitHeadroom(
                head.scope,
                dimension,
                head.window,
                head.limit,
                head.used + added,  # type: ignore[operator]
                max(head.held - freed, 0),  # type: ignore[operator,arg-type]
            )
        self.observe(())  # a commit past a threshold fires its rung before the next call

    # -- the policy ------------------------------------------------------------------------------

    def observe(self, heads: Iterable[LimitHeadroom]) -> None:
        """Remember what an admission or peek saw, and fire every rung it reaches (latching)."""
        for head in heads:
            # Keyed by the window's storage key: a Window hashes all its fields on every lookup.
            self.heads[head.scope, head.dimension, head.window.key] = head
        policy = self.policy
        if policy is None or len(self.fired) == len(policy.ladder):  # every rung has latched
            return
        for rung in policy.ladder:
            if rung in self.fired:
                continue
            reached = next((h for h in self.heads.values() if rung.reached_by(h)), None)
            if reached is None:
                continue
            self.fired.append(rung)
            logger.warning(
                "budget policy: %s%s (%s %s at %.0f%%)",
                rung.action,
                f" to {rung.to}" if rung.to else "",
                reached.scope,
                reached.dimension,
                reached.fraction * 100,
            )
            if rung.action == "warn":
                warning = BudgetWarning(
                    reached.scope,
                    reached.dimension,
                    reached.window,
                    reached.fraction,
                    reached.limit,
                )
                self.warnings.append(warning)
                if self.on_warning is not None:
                    self.on_warning(warning)

    def in_force(self, action: str) -> Degrade | None:
        """The last fired rung doing ``action``, if any."""
        return next((r for r in reversed(self.fired) if r.action == action), None)

    @property
    def wrap_up_available(self) -> bool:
        """True while the summary reserve is held and its wrap-up call has not run."""
        return self.summary_hold is not None and not self.wrapped_up

    def summary_usage(self) -> Usage | None:
        """The summary reserve to hold at the start (priced for ``policy.summary_model`` when
        it has no cost), or ``None`` when the policy keeps none."""
        policy = self.policy
        reserve = policy.summary_reserve if policy is not None else None
        if reserve is None or policy is None:
            return None
        if reserve.cost_usd is None and policy.summary_model and self.pricing is not None:
            price = self.pricing.price(policy.summary_model, reserve)
            reserve = reserve.replace(cost_usd=price.cost_usd)
        return reserve

    def check_wrapped_up(self) -> None:
        """After the wrap-up call the run is over: refuse with what stopped it."""
        if self.wrapped_up and self.stopped_by is not None:
            raise self.stopped_by

    def take_wrap_up(self) -> Reservation:
        """Hand out the summary reserve for the wrap-up call (once)."""
        hold = self.summary_hold
        if hold is None or self.wrapped_up:
            raise RuntimeError("no summary reserve left")  # callers check wrap_up_available
        self.wrapped_up = True
        return hold

    def plan(
        self,
        model: str | None,
        prompt: str | Sequence[object] | None,
        max_tokens: int | None,
        provider: str | None,
        prompt_tokens: int | None = None,
    ) -> CallPlan:
        policy = self.policy
        rungs = tuple(self.fired)
        downgrade = self.in_force("downgrade")
        planned_model = downgrade.to if downgrade is not None else model
        stopped = self.stopped_by is not None
        exhausted = stopped and not self.wrap_up_available
        # What the budget still affords, computed at most once (it estimates the whole prompt).
        room = None
        if (
            policy is not None
            and not exhausted
            and (policy.clamp_max_tokens or (self.wrap_up_available and not stopped))
        ):
            room = self._affordable(planned_model, _prompt_size(prompt, prompt_tokens), provider)
        reserve = policy.summary_reserve if policy is not None else None
        if (
            self.wrap_up_available
            and reserve is not None
            and (stopped or (room is not None and room < 1))
        ):
            return CallPlan(
                model=(policy.summary_model if policy is not None else None) or planned_model,
                max_tokens=reserve.output_tokens or max_tokens,
                tools_allowed=False,
                subagents_allowed=False,
                final=True,
                exhausted=False,
                rungs=rungs,
            )
        planned_tokens = max_tokens
        if policy is not None and policy.clamp_max_tokens and room is not None:
            wanted = self.default_max_tokens if max_tokens is None else max_tokens
            if room < wanted:
                planned_tokens = max(room, 1)
        return CallPlan(
            model=planned_model,
            max_tokens=planned_tokens,
            tools_allowed=not exhausted and self.in_force("stop_tools") is None,
            subagents_allowed=not exhausted and self.in_force("stop_subagents") is None,
            final=False,
            exhausted=exhausted,
            rungs=rungs,
        )

    def _affordable(
        self, model: str | None, prompt_tokens: int, provider: str | None
    ) -> int | None:
        return affordable_output_tokens(
            self.heads.values(),
            prompt_tokens,
            price_function(self.pricing, model, provider),
        )

    def stopped_by_policy(self, dimension: str, action: str) -> BudgetExceeded | None:
        """A refusal for a tool call or hop that a fired rung (or exhaustion) forbids."""
        if self.in_force(action) is None and not (
            self.stopped_by is not None and not self.wrap_up_available and self.policy
        ):
            return None
        done = self.used_units.get(dimension, 0)
        return BudgetExceeded(
            scope=self.path, dimension=dimension, limit=done, used=done, held=0, requested=1
        )

    def grant_record(self, error: BudgetExceeded, grant: object) -> tuple[Limit, GrantRecord]:
        """Validate an escalation's answer and build the raised limit and its record."""
        if not isinstance(grant, Grant):
            raise InvalidInput("escalate()", grant, "expected a budgeteer.Grant or None")
        window = error.window if isinstance(error.window, Window) else Window.lifetime()
        raised = Limit(error.dimension, error.limit + grant.amount, window)  # type: ignore[operator]
        record = GrantRecord(
            scope=error.scope,
            dimension=error.dimension,
            window=window,
            amount=grant.amount,
            new_limit=raised.max,
            reason=grant.reason,
            refusal=error,
        )
        self.grants.append(record)
        logger.warning(
            "budget escalation: %s %s raised by %s to %s (%s)",
            record.scope,
            record.dimension,
            record.amount,
            record.new_limit,
            record.reason,
        )
        return raised, record

    def escalation(self) -> Escalation | None:
        """The escalation callback, while the policy allows another grant."""
        policy = self.policy
        if policy is None or policy.on_exhausted != "escalate":
            return None
        return policy.escalate if len(self.grants) < policy.max_grants else None

    def settled(self, reservation: Reservation, usage: Usage, model: str | None = None) -> None:
        """The hold was committed with ``usage``."""
        self.open_holds.pop(reservation.id, None)
        self.committed(usage, model)

    def check_deadline(self) -> None:
        """Raise ``BudgetExceeded`` on ``wall_time_s`` if the run's deadline has passed."""
        error = self.deadline_error()
        if error is not None:
            raise self.stop(error)

    def deadline_error(self) -> BudgetExceeded | None:
        if self.deadline_s is None:
            return None
        elapsed = self.monotonic() - self.started
        if elapsed < self.deadline_s:
            return None
        return BudgetExceeded(
            scope=self.path,
            dimension="wall_time_s",
            limit=self.deadline_s,
            used=elapsed,
            held=0,
            requested=0,
            window=None,
            retry_after=None,
        )

    def stop(self, error: BudgetExceeded) -> BudgetExceeded:
        if self.stopped_by is None:
            self.stopped_by = error
        return error

    def wall_time_usage(self) -> Usage:
        return Usage(wall_time_s=max(0.0, self.monotonic() - self.started), cost_usd=Decimal(0))

    def report(self, error: BaseException | None) -> RunReport:
        """Finish the run: the report is frozen from here on."""
        if self.finished is None:
            if isinstance(error, BudgetExceeded):
                self.stop(error)
            self.finished = self.build_report(error)
        return self.finished

    def build_report(self, error: BaseException | None) -> RunReport:
        """The report as of now, without finishing the run."""
        status: Literal["completed", "stopped", "failed"] = (
            "stopped"
            if self.stopped_by is not None
            else "failed"
            if error is not None
            else "completed"
        )
        return RunReport(
            path=self.path,
            status=status,
            usage=self.used,
            stopped_by=self.stopped_by,
            duration_s=self.monotonic() - self.started,
            model_calls=self.model_calls,
            warnings=tuple(self.warnings),
            models=dict(self.models),
            degradations=tuple(self.fired),
            grants=tuple(self.grants),
            wrapped_up=self.wrapped_up,
        )


_AMOUNTS: dict[tuple[str, int], Amount] = {}
"""``from_units`` memoised: a path's scopes repeat the same limits, holds and commits, and
converting nano-dollars to ``Decimal`` is the costly part of reading a reservation's limits."""
_MAX_AMOUNTS = 4096


def _amount(dimension: str, units: int) -> Amount:
    """``from_units(dimension, units)``, memoised (the result is immutable)."""
    key = (dimension, units)
    amount = _AMOUNTS.get(key)
    if amount is None:
        if len(_AMOUNTS) >= _MAX_AMOUNTS:
            _AMOUNTS.clear()  # a bound, not an LRU: a run's values recur within a few calls
        amount = _AMOUNTS[key] = from_units(dimension, units)
    return amount


def _headroom(state: LimitState) -> LimitHeadroom:
    """``LimitHeadroom.from_state(state)``, with the amounts converted through the memo."""
    dimension = state.dimension
    return LimitHeadroom(
        state.scope,
        dimension,
        Window.from_key(state.window_key),
        _amount(dimension, state.max_units),
        _amount(dimension, state.used),
        _amount(dimension, state.held),
    )


def _wall_time_cap(limits: Iterable[Limit]) -> float | None:
    caps = [
        float(limit.max)
        for limit in limits
        if limit.dimension == "wall_time_s" and limit.window.kind == "lifetime"
    ]
    return min(caps) if caps else None


# -- sync deadlines via SIGALRM --------------------------------------------------------------


class _Alarms:
    """Nested deadlines for sync code on the main thread, multiplexed onto one ``SIGALRM`` timer."""

    def __init__(self) -> None:
        self._entries: list[tuple[float, Callable[[], BaseException]]] = []
        self._previous: object = None
        self._monotonic: Callable[[], float] = lambda: 0.0

    @staticmethod
    def usable() -> bool:
        return (
            hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
        )

    def push(
        self, deadline: float, error: Callable[[], BaseException], monotonic: Callable[[], float]
    ) -> tuple[float, Callable[[], BaseException]]:
        entry = (deadline, error)
        if not self._entries:
            self._previous = signal.signal(signal.SIGALRM, self._fire)
        self._monotonic = monotonic
        self._entries.append(entry)
        self._arm()
        return entry

    def pop(self, entry: tuple[float, Callable[[], BaseException]]) -> None:
        if entry in self._entries:
            self._entries.remove(entry)
        if self._entries:
            self._arm()
        else:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)  # type: ignore[arg-type]

    def _arm(self) -> None:
        soonest = min(deadline for deadline, _ in self._entries)
        signal.setitimer(signal.ITIMER_REAL, max(soonest - self._monotonic(), 1e-4))

    def _fire(self, signum: int, frame: FrameType | None) -> None:
        del signum, frame
        now = self._monotonic()
        due = [entry for entry in self._entries if entry[0] <= now + 1e-3]
        if not due:
            self._arm()
            return
        entry = min(due, key=lambda e: e[0])
        self.pop(entry)
        raise entry[1]()


_ALARMS = _Alarms()


def _check_timeout(timeout_s: object, field_name: str) -> float:
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not math.isfinite(timeout_s)
        or timeout_s <= 0
    ):
        raise InvalidInput(field_name, timeout_s, "expected seconds > 0")
    return float(timeout_s)


# -- what both drivers share -------------------------------------------------------------------


class _AdmittedCall:
    """The data of one admitted model call; the drivers add a sync or async ``settle``."""

    def __init__(self, reservation: Reservation, model: str | None, provider: str | None) -> None:
        self.reservation = reservation
        """The hold taken for the estimate."""
        self.model = model
        """The model the call was admitted for (``settle`` may name another, after a fallback)."""
        self._provider = provider
        self.settled: Usage | None = None
        """The usage committed, once settled."""
        self.final = False
        """True when the call was admitted under the summary reserve: the run's wrap-up call."""

    @property
    def estimate(self) -> Usage:
        """What was reserved."""
        return self.reservation.usage


class _GuardBase:
    """The read-only views both guards expose over their ``_RunState``."""

    _state: _RunState

    @property
    def path(self) -> str:
        """The run's scope path."""
        return self._state.path

    @property
    def usage(self) -> Usage:
        """What the run has committed so far."""
        return self._state.used

    @property
    def report(self) -> RunReport:
        """The run report (a snapshot during the run; final once the block has exited)."""
        return self._state.finished or self._state.build_report(None)

    @property
    def pricing(self) -> Pricing | None:
        """The pricing that prices this run's calls, if any."""
        return self._state.pricing

    @property
    def policy(self) -> Policy | None:
        """The run's degradation and exhaustion policy, if any."""
        return self._state.policy

    @property
    def exhausted(self) -> BudgetExceeded | None:
        """The refusal that ended admission, or ``None`` while the run may go on."""
        return self._state.stopped_by

    def check_deadline(self) -> None:
        """Raise ``BudgetExceeded`` on ``wall_time_s`` if the run's deadline has passed."""
        self._state.check_deadline()

    def plan_call(
        self,
        model: str | None = None,
        *,
        prompt: str | Sequence[object] | None = None,
        max_tokens: int | None = None,
        provider: str | None = None,
        prompt_tokens: int | None = None,
    ) -> CallPlan:
        """How to make the next model call under the run's ``Policy`` (a preview: no I/O).

        Integrations call this before building a request, then send ``plan.model`` and
        ``plan.max_tokens``, offer tools only if ``plan.tools_allowed``, and on ``plan.final``
        ask for a wrap-up. It reflects the limits as of the run's last admission, updated
        by the run's own commits since (other processes' spend shows at the next admission).
        ``prompt_tokens`` is the prompt's size when the caller has measured it (see
        ``model_call``); it replaces ``prompt``.
        """
        return self._state.plan(model, prompt, max_tokens, provider, prompt_tokens)

    def _policy_check(self, dimension: str, action: str) -> None:
        error = self._state.stopped_by_policy(dimension, action)
        if error is not None:
            raise error


# -- the sync driver -------------------------------------------------------------------------


class ModelCall(_AdmittedCall):
    """One admitted model call. Call ``settle`` with the provider's usage when it returns.

    Leaving the block without ``settle`` commits the estimate if the block succeeded (the call
    was presumably made), and releases the hold if it raised (the call presumably failed).
    """

    def __init__(
        self, guard: RunGuard, reservation: Reservation, model: str | None, provider: str | None
    ) -> None:
        super().__init__(reservation, model, provider)
        self._guard = guard

    def settle(
        self,
        usage: Usage,
        *,
        model: str | None = None,
        service_tier: str | None = None,
        cache_write_1h_tokens: int = 0,
    ) -> Usage:
        """Commit the call's actual ``usage``, priced for ``model`` (default: the admitted one).

        ``cache_write_1h_tokens`` is the part of ``usage.cache_write_tokens`` written with a
        one-hour TTL (priced higher by Anthropic).
        """
        if self.settled is not None:
            return self.settled
        self.settled = self._guard._settle_call(
            self.reservation,
            usage,
            model or self.model,
            self._provider,
            service_tier,
            cache_write_1h_tokens,
        )
        return self.settled


class RunGuard(_GuardBase):
    """Per-run enforcement for a sync agent loop.

    Example::

        with RunGuard(ledger, "org:acme/engineer:e17/session:7f3c",
                      limits=[Limit("cost_usd", "2"), Limit("tool_calls", 50)],
                      pricing=Pricing()) as run:
            while not done:
                run.iteration()
                with run.model_call("gpt-4o", prompt=messages, max_tokens=1024) as call:
                    response = client.chat(...)
                    call.settle(Usage(input_tokens=..., output_tokens=...))
                with run.tool_call("search"):
                    search(...)
        print(run.report)

    Args:
        ledger: The ledger that holds every scope's limits.
        path: The run's scope path; every prefix is charged too.
        limits: Per-run caps, set on ``path`` itself. A lifetime ``wall_time_s`` limit is also
            the run's deadline.
        pricing: Prices model calls; without it, costs must come in the usage you settle.
        warn_at: Soft threshold, as a fraction of any limit on the path (default 0.8).
        on_warning: Called once per limit that passes ``warn_at``.
        default_max_tokens: Output tokens reserved when a call does not say its ``max_tokens``.
        ttl_s: How long each hold lives if this process dies before settling it.
        policy: Degradation rungs and what to do at exhaustion (default: raise). See
            ``budgeteer.policy``; integrations read it through ``plan_call``.
    """

    def __init__(
        self,
        ledger: Ledger,
        path: str,
        *,
        limits: Iterable[Limit] = (),
        pricing: Pricing | None = None,
        warn_at: float = 0.8,
        on_warning: Callable[[BudgetWarning], None] | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        ttl_s: float | None = None,
        policy: Policy | None = None,
    ) -> None:
        if not isinstance(ledger, Ledger):
            raise InvalidInput(
                "ledger", ledger, "expected a budgeteer.Ledger (AsyncRunGuard takes an AsyncLedger)"
            )
        self.ledger = ledger
        self._state = _RunState(
            path,
            limits,
            pricing,
            warn_at,
            on_warning,
            default_max_tokens,
            ttl_s,
            ledger.clock.monotonic,
            policy,
        )
        self._alarm: tuple[float, Callable[[], BaseException]] | None = None

    def __enter__(self) -> RunGuard:
        state = self._state
        for limit in state.limits:
            self.ledger.set_limit(state.path, limit)
        if state.policy is not None:
            state.observe(self.ledger.peek(state.path).limits)
            reserve = state.summary_usage()
            if reserve is not None:
                state.summary_hold = self._reserve(reserve, exhaustible=False)
        state.started = state.monotonic()
        if state.deadline_s is not None and _ALARMS.usable():
            self._alarm = _ALARMS.push(
                state.started + state.deadline_s,
                lambda: state.stop(state.deadline_error() or _overdue(state)),
                state.monotonic,
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._alarm is not None:
            _ALARMS.pop(self._alarm)
            self._alarm = None
        state = self._state
        for reservation in list(state.open_holds.values()):
            self._release(reservation)
        wall = state.wall_time_usage()
        if wall.wall_time_s:
            self.ledger.charge(state.path, wall, metadata={"kind": "wall_time"})
            state.committed(wall)
        state.report(exc)

    # -- admission ------------------------------------------------------------------------------

    @contextmanager
    def model_call(
        self,
        model: str | None = None,
        *,
        prompt: str | Sequence[object] | None = None,
        max_tokens: int | None = None,
        estimate: Usage | None = None,
        provider: str | None = None,
        prompt_tokens: int | None = None,
    ) -> Iterator[ModelCall]:
        """Admit one model call: reserve its estimate (prompt size + ``max_tokens``, priced).

        ``prompt_tokens`` replaces ``prompt`` with its size already measured the guard's way
        (``estimate_prompt_tokens``), e.g. kept per message by an integration so that a long
        conversation is not measured again on every call.

        Raises:
            BudgetExceeded: the call would cross a limit (nothing was spent).
            UnknownModel: no price for ``model`` under the pricing's "refuse" policy.
        """
        state = self._state
        usage = state.call_estimate(model, prompt, max_tokens, estimate, provider, prompt_tokens)
        state.check_wrapped_up()
        final = state.stopped_by is not None and state.wrap_up_available
        if final:
            reservation = state.take_wrap_up()
        else:
            try:
                reservation = self._reserve(usage)
            except BudgetExceeded as error:
                reservation, final = self._exhausted(error, usage)
        state.model_calls += 1
        call = ModelCall(self, reservation, model, provider)
        call.final = final
        try:
            yield call
        except BaseException:
            if call.settled is None:
                self._release(reservation)
            raise
        if call.settled is None:
            call.settle(reservation.usage)

    def tool_call(self, name: str = "tool") -> _NullContext:
        """Admit one tool call (``tool_calls`` += 1), as a context manager or a plain call."""
        del name
        self._policy_check("tool_calls", "stop_tools")
        self._admit(_ONE_TOOL_CALL)
        return _NULL_CONTEXT

    def iteration(self) -> None:
        """Count one loop iteration (raises ``BudgetExceeded`` at the cap)."""
        self._admit(_ONE_ITERATION)

    def hop(self) -> None:
        """Count one agent hop (hand-off or sub-agent)."""
        self._policy_check("agent_hops", "stop_subagents")
        self._admit(_ONE_HOP)

    @contextmanager
    def step(self, name: str, timeout_s: float) -> Iterator[None]:
        """Run the block with its own timeout; raises ``StepTimeout`` when it passes.

        In the main thread the block is interrupted (``SIGALRM``); elsewhere the timeout is
        checked when the block ends.
        """
        timeout = _check_timeout(timeout_s, "timeout_s")
        monotonic = self._state.monotonic
        started = monotonic()
        entry = None
        if _ALARMS.usable():
            entry = _ALARMS.push(started + timeout, lambda: StepTimeout(name, timeout), monotonic)
        try:
            yield
        finally:
            if entry is not None:
                _ALARMS.pop(entry)
        if monotonic() - started > timeout:
            raise StepTimeout(name, timeout)

    # -- internals ------------------------------------------------------------------------------

    def _reserve(self, usage: Usage, *, exhaustible: bool = True) -> Reservation:
        self._state.check_deadline()
        try:
            reservation = self.ledger.reserve(self._state.path, usage, ttl_s=self._state.ttl_s)
        except BudgetExceeded as error:
            raise (self._state.stop(error) if exhaustible else error) from None
        self._state.admitted(reservation)
        return reservation

    def _exhausted(self, error: BudgetExceeded, usage: Usage) -> tuple[Reservation, bool]:
        """A model call was refused: carry out the policy's exhaustion mode."""
        state = self._state
        while error.window is not None:
            if state.wrap_up_available:
                return state.take_wrap_up(), True
            escalate = state.escalation()
            if escalate is None:
                break
            grant = escalate(error)
            if grant is None:
                break
            raised, _ = state.grant_record(error, grant)
            self.ledger.set_limit(error.scope, raised)
            try:
                reservation = self._reserve(usage)
            except BudgetExceeded as again:
                error = again
                continue
            state.stopped_by = None
            return reservation, False
        raise error

    def _admit(self, usage: Usage) -> None:
        state = self._state
        state.check_deadline()
        try:
            heads = self.ledger.admit(state.path, usage).limits
        except BudgetExceeded as error:
            raise state.stop(error) from None
        state.saw(heads)
        state.committed(usage)

    def _settle_call(
        self,
        reservation: Reservation,
        usage: Usage,
        model: str | None,
        provider: str | None,
        service_tier: str | None,
        cache_write_1h_tokens: int = 0,
    ) -> Usage:
        priced, metadata = self._state.priced(
            model, usage, provider, service_tier, cache_write_1h_tokens
        )
        try:
            self.ledger.commit(reservation, priced, metadata=metadata)
        finally:
            self._state.open_holds.pop(reservation.id, None)
        self._state.reconciled(reservation, priced)
        self._state.committed(priced, model)
        return priced

    def _release(self, reservation: Reservation) -> None:
        self._state.open_holds.pop(reservation.id, None)
        try:
            self.ledger.release(reservation)
        except Exception:
            logger.exception("could not release hold %s; it will expire by TTL", reservation.id)


def _overdue(state: _RunState) -> BudgetExceeded:
    limit = state.deadline_s or 0.0
    return BudgetExceeded(
        scope=state.path, dimension="wall_time_s", limit=limit, used=limit, held=0, requested=0
    )


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


_NULL_CONTEXT = _NullContext()


# -- the async driver ------------------------------------------------------------------------


class AsyncModelCall(_AdmittedCall):
    """The async twin of ``ModelCall``."""

    def __init__(
        self,
        guard: AsyncRunGuard,
        reservation: Reservation,
        model: str | None,
        provider: str | None,
    ) -> None:
        super().__init__(reservation, model, provider)
        self._guard = guard

    async def settle(
        self,
        usage: Usage,
        *,
        model: str | None = None,
        service_tier: str | None = None,
        cache_write_1h_tokens: int = 0,
    ) -> Usage:
        """See ``ModelCall.settle``."""
        if self.settled is not None:
            return self.settled
        self.settled = await self._guard._settle_call(
            self.reservation,
            usage,
            model or self.model,
            self._provider,
            service_tier,
            cache_write_1h_tokens,
        )
        return self.settled


class AsyncRunGuard(_GuardBase):
    """The async twin of ``RunGuard`` (same arguments, same method names, awaited).

    The run deadline and step timeouts use asyncio cancellation, so an awaiting model call is
    cut off the moment the deadline passes; holds are still released on the way out.
    """

    def __init__(
        self,
        ledger: AsyncLedger,
        path: str,
        *,
        limits: Iterable[Limit] = (),
        pricing: Pricing | None = None,
        warn_at: float = 0.8,
        on_warning: Callable[[BudgetWarning], None] | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        ttl_s: float | None = None,
        policy: Policy | None = None,
    ) -> None:
        if not isinstance(ledger, AsyncLedger):
            raise InvalidInput(
                "ledger", ledger, "expected a budgeteer.AsyncLedger (RunGuard takes a Ledger)"
            )
        self.ledger = ledger
        self._state = _RunState(
            path,
            limits,
            pricing,
            warn_at,
            on_warning,
            default_max_tokens,
            ttl_s,
            ledger.clock.monotonic,
            policy,
        )
        self._timeout: asyncio.Timeout | None = None

    async def __aenter__(self) -> AsyncRunGuard:
        state = self._state
        for limit in state.limits:
            await self.ledger.set_limit(state.path, limit)
        if state.policy is not None:
            state.observe((await self.ledger.peek(state.path)).limits)
            reserve = state.summary_usage()
            if reserve is not None:
                state.summary_hold = await self._reserve(reserve, exhaustible=False)
        state.started = state.monotonic()
        if state.deadline_s is not None:
            # Cancellation runs on the event loop's clock; admissions check the injected one.
            self._timeout = asyncio.timeout(state.deadline_s)
            await self._timeout.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        state = self._state
        translated: BudgetExceeded | None = None
        if self._timeout is not None:
            timeout, self._timeout = self._timeout, None
            try:
                await timeout.__aexit__(exc_type, exc, tb)
            except TimeoutError:
                translated = state.stop(state.deadline_error() or _overdue(state))
        for reservation in list(state.open_holds.values()):
            await asyncio.shield(self._release(reservation))
        wall = state.wall_time_usage()
        if wall.wall_time_s:
            await asyncio.shield(
                self.ledger.charge(state.path, wall, metadata={"kind": "wall_time"})
            )
            state.committed(wall)
        state.report(translated or exc)
        if translated is not None:
            raise translated from exc
        return False

    def model_call(
        self,
        model: str | None = None,
        *,
        prompt: str | Sequence[object] | None = None,
        max_tokens: int | None = None,
        estimate: Usage | None = None,
        provider: str | None = None,
        prompt_tokens: int | None = None,
    ) -> AbstractAsyncContextManager[AsyncModelCall]:
        """See ``RunGuard.model_call``."""
        return self._model_call(model, prompt, max_tokens, estimate, provider, prompt_tokens)

    @asynccontextmanager
    async def _model_call(
        self,
        model: str | None,
        prompt: str | Sequence[object] | None,
        max_tokens: int | None,
        estimate: Usage | None,
        provider: str | None,
        prompt_tokens: int | None,
    ) -> AsyncIterator[AsyncModelCall]:
        state = self._state
        usage = state.call_estimate(model, prompt, max_tokens, estimate, provider, prompt_tokens)
        state.check_wrapped_up()
        final = state.stopped_by is not None and state.wrap_up_available
        if final:
            reservation = state.take_wrap_up()
        else:
            try:
                reservation = await self._reserve(usage)
            except BudgetExceeded as error:
                reservation, final = await self._exhausted(error, usage)
        state.model_calls += 1
        call = AsyncModelCall(self, reservation, model, provider)
        call.final = final
        try:
            yield call
        except BaseException:
            if call.settled is None:
                await asyncio.shield(self._release(reservation))
            raise
        if call.settled is None:
            await call.settle(reservation.usage)

    async def tool_call(self, name: str = "tool") -> None:
        """See ``RunGuard.tool_call``."""
        del name
        self._policy_check("tool_calls", "stop_tools")
        await self._admit(_ONE_TOOL_CALL)

    async def iteration(self) -> None:
        """See ``RunGuard.iteration``."""
        await self._admit(_ONE_ITERATION)

    async def hop(self) -> None:
        """See ``RunGuard.hop``."""
        self._policy_check("agent_hops", "stop_subagents")
        await self._admit(_ONE_HOP)

    @asynccontextmanager
    async def step(self, name: str, timeout_s: float) -> AsyncIterator[None]:
        """See ``RunGuard.step``; the block is cancelled when the timeout passes."""
        timeout = _check_timeout(timeout_s, "timeout_s")
        try:
            async with asyncio.timeout(timeout):
                yield None
        except TimeoutError:
            raise StepTimeout(name, timeout) from None

    async def _reserve(self, usage: Usage, *, exhaustible: bool = True) -> Reservation:
        self._state.check_deadline()
        try:
            reservation = await self.ledger.reserve(
                self._state.path, usage, ttl_s=self._state.ttl_s
            )
        except BudgetExceeded as error:
            raise (self._state.stop(error) if exhaustible else error) from None
        self._state.admitted(reservation)
        return reservation

    async def _exhausted(self, error: BudgetExceeded, usage: Usage) -> tuple[Reservation, bool]:
        """See ``RunGuard._exhausted``; the escalation callback may be a coroutine function."""
        state = self._state
        while error.window is not None:
            if state.wrap_up_available:
                return state.take_wrap_up(), True
            escalate = state.escalation()
            if escalate is None:
                break
            grant = escalate(error)
            if inspect.isawaitable(grant):
                grant = await grant
            if grant is None:
                break
            raised, _ = state.grant_record(error, grant)
            await self.ledger.set_limit(error.scope, raised)
            try:
                reservation = await self._reserve(usage)
            except BudgetExceeded as again:
                error = again
                continue
            state.stopped_by = None
            return reservation, False
        raise error

    async def _admit(self, usage: Usage) -> None:
        state = self._state
        state.check_deadline()
        try:
            heads = (await self.ledger.admit(state.path, usage)).limits
        except BudgetExceeded as error:
            raise state.stop(error) from None
        state.saw(heads)
        state.committed(usage)

    async def _settle_call(
        self,
        reservation: Reservation,
        usage: Usage,
        model: str | None,
        provider: str | None,
        service_tier: str | None,
        cache_write_1h_tokens: int = 0,
    ) -> Usage:
        priced, metadata = self._state.priced(
            model, usage, provider, service_tier, cache_write_1h_tokens
        )
        try:
            await asyncio.shield(self.ledger.commit(reservation, priced, metadata=metadata))
        finally:
            self._state.open_holds.pop(reservation.id, None)
        self._state.reconciled(reservation, priced)
        self._state.committed(priced, model)
        return priced

    async def _release(self, reservation: Reservation) -> None:
        self._state.open_holds.pop(reservation.id, None)
        try:
            await self.ledger.release(reservation)
        except Exception:
            logger.exception("could not release hold %s; it will expire by TTL", reservation.id)
