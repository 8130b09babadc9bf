"""What a run does as its budget runs low, and when it runs out.

A ``Policy`` is a ladder of ``Degrade`` rungs (thresholds on any limit of any scope on the run's
path) plus one exhaustion mode. Rungs *latch*: once a limit passes a rung's threshold the rung
stays in force for the rest of the run, so a run never flaps between two models.

* ``warn``: a ``BudgetWarning`` (log + ``on_warning``).
* ``downgrade``: later calls use a cheaper model (``CallPlan.model``).
* ``stop_tools`` / ``stop_subagents``: tool calls / agent hops are refused from then on.
* ``clamp_max_tokens`` (on by default): ``CallPlan.max_tokens`` is cut to what the tightest
  limit still affords, so a call that would not fit at full length runs shorter instead.

At exhaustion (a reservation refused) the run does one of:

* ``raise``: hard halt, ``BudgetExceeded`` (the default).
* ``summary``: ``summary_reserve`` was held back when the run started, so one last wrap-up call
  can always run: the refused call is admitted under the reserve with ``final=True``.
* ``escalate``: ``escalate(error)`` may return a ``Grant``; the refusing limit is raised by the
  granted amount (recorded in the run report) and admission is retried.

The functions here are pure: the guard (``budgeteer.guard``) feeds them what its last
admission saw and carries out the decisions.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Literal, get_args

from budgeteer.errors import BudgetExceeded, InvalidInput
from budgeteer.model import (
    Amount,
    LimitHeadroom,
    Usage,
    Window,
    check_dimension,
    parse_path,
    to_units,
)

if TYPE_CHECKING:
    from budgeteer.pricing import Pricing

__all__ = [
    "CallPlan",
    "Degrade",
    "DegradeAction",
    "Escalation",
    "ExhaustionMode",
    "Grant",
    "GrantRecord",
    "Policy",
]

DegradeAction = Literal["warn", "downgrade", "stop_tools", "stop_subagents"]
ExhaustionMode = Literal["raise", "summary", "escalate"]

_ACTIONS: frozenset[str] = frozenset(get_args(DegradeAction))
_MODES: frozenset[str] = frozenset(get_args(ExhaustionMode))


@dataclass(frozen=True, slots=True)
class Degrade:
    """One rung of the ladder: ``action`` once a watched limit is ``at`` or more used.

    Build rungs with the class methods: ``Degrade.downgrade(to="gpt-4o-mini", at=0.8)``.
    """

    action: DegradeAction
    """What the rung does."""
    at: float
    """The threshold, as a fraction of a limit ``(used + held) / limit`` in (0, 1]."""
    to: str | None = None
    """The cheaper model (``downgrade`` only)."""
    dimension: str | None = None
    """Watch only limits on this dimension (``None``: any dimension)."""
    scope: str | None = None
    """Watch only limits of this scope on the run's path (``None``: any scope)."""

    def __post_init__(self) -> None:
        if self.action not in _ACTIONS:
            raise InvalidInput("degrade.action", self.action, f"expected one of {sorted(_ACTIONS)}")
        at: object = self.at
        if isinstance(at, bool) or not isinstance(at, int | float) or not 0 < at <= 1:
            raise InvalidInput("degrade.at", at, "expected a fraction in (0, 1]")
        if self.action == "downgrade":
            if not isinstance(self.to, str) or not self.to:
                raise InvalidInput("degrade.to", self.to, "a downgrade needs the model to use")
        elif self.to is not None:
            raise InvalidInput("degrade.to", self.to, "only a downgrade names a model")
        if self.dimension is not None:
            check_dimension(self.dimension, "degrade.dimension")
        if self.scope is not None:
            parse_path(self.scope)

    @classmethod
    def warn(
        cls, at: float = 0.8, *, dimension: str | None = None, scope: str | None = None
    ) -> Degrade:
        """Warn once a watched limit is ``at`` used."""
        return cls("warn", at, None, dimension, scope)

    @classmethod
    def downgrade(
        cls, to: str, at: float = 0.8, *, dimension: str | None = None, scope: str | None = None
    ) -> Degrade:
        """Switch later model calls to ``to`` once a watched limit is ``at`` used."""
        return cls("downgrade", at, to, dimension, scope)

    @classmethod
    def stop_tools(
        cls, at: float = 0.9, *, dimension: str | None = None, scope: str | None = None
    ) -> Degrade:
        """Refuse tool calls once a watched limit is ``at`` used."""
        return cls("stop_tools", at, None, dimension, scope)

    @classmethod
    def stop_subagents(
        cls, at: float = 0.9, *, dimension: str | None = None, scope: str | None = None
    ) -> Degrade:
        """Refuse agent hops (hand-offs, sub-agents) once a watched limit is ``at`` used."""
        return cls("stop_subagents", at, None, dimension, scope)

    def reached_by(self, head: LimitHeadroom) -> bool:
        """True if ``head`` is a limit this rung watches and it is at or past the threshold."""
        return (
            (self.dimension is None or self.dimension == head.dimension)
            and (self.scope is None or self.scope == head.scope)
            and head.fraction >= self.at
        )


@dataclass(frozen=True, slots=True)
class Grant:
    """More budget, granted by an escalation callback for the limit that refused."""

    amount: Amount
    """Added to the refusing limit's cap, in its dimension's API units (dollars, tokens...)."""
    reason: str = ""
    """Why it was granted (kept in the run report and the log)."""


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """A grant that was applied: which limit it raised, from what, to what, and why."""

    scope: str
    """The scope whose limit was raised."""
    dimension: str
    """The limit's dimension."""
    window: Window | None
    """The limit's window."""
    amount: Amount
    """What was added."""
    new_limit: Amount
    """The cap after the grant."""
    reason: str
    """The grant's reason."""
    refusal: BudgetExceeded
    """The refusal that asked for it."""


Escalation = Callable[[BudgetExceeded], "Grant | Awaitable[Grant | None] | None"]


@dataclass(frozen=True, slots=True)
class Policy:
    """Degradation rungs and the exhaustion mode of a guarded run.

    Example::

        Policy(
            ladder=[Degrade.warn(at=0.5), Degrade.downgrade(to="gpt-4o-mini", at=0.8),
                    Degrade.stop_tools(at=0.95)],
            on_exhausted="summary",
            summary_reserve=Usage(input_tokens=4000, output_tokens=400, requests=1),
            summary_model="gpt-4o-mini",
        )
    """

    ladder: tuple[Degrade, ...] = ()
    """The rungs, in any order (each fires once, when its threshold is first reached)."""
    clamp_max_tokens: bool = True
    """Cut ``CallPlan.max_tokens`` to what the tightest limit still affords."""
    on_exhausted: ExhaustionMode = "raise"
    """What happens when a model call is refused."""
    summary_reserve: Usage | None = None
    """``summary`` mode: the usage held back at the start for one wrap-up call."""
    summary_model: str | None = None
    """``summary`` mode: the model that prices ``summary_reserve`` when it has no cost."""
    escalate: Escalation | None = None
    """``escalate`` mode: called with the refusal; may return a ``Grant`` (or an awaitable
    of one, under ``AsyncRunGuard``)."""
    max_grants: int = 10
    """``escalate`` mode: at most this many grants per run."""

    def __post_init__(self) -> None:
        ladder: object = self.ladder
        if not isinstance(ladder, Iterable) or isinstance(ladder, str | Mapping):
            raise InvalidInput("policy.ladder", ladder, "expected a sequence of Degrade rungs")
        rungs = tuple(ladder)
        for rung in rungs:
            if not isinstance(rung, Degrade):
                raise InvalidInput("policy.ladder", rung, "expected Degrade rungs")
        object.__setattr__(self, "ladder", rungs)
        if self.on_exhausted not in _MODES:
            raise InvalidInput(
                "policy.on_exhausted", self.on_exhausted, f"expected one of {sorted(_MODES)}"
            )
        if self.on_exhausted == "summary":
            reserve = self.summary_reserve
            if not isinstance(reserve, Usage) or not reserve.units:
                raise InvalidInput(
                    "policy.summary_reserve",
                    reserve,
                    "summary mode needs a non-empty Usage to hold back for the wrap-up call",
                )
        elif self.summary_reserve is not None:
            raise InvalidInput(
                "policy.summary_reserve", self.summary_reserve, "only summary mode holds a reserve"
            )
        if self.on_exhausted == "escalate" and not callable(self.escalate):
            raise InvalidInput(
                "policy.escalate", self.escalate, "escalate mode needs a callable(error) -> Grant"
            )
        if isinstance(self.max_grants, bool) or not isinstance(self.max_grants, int):
            raise InvalidInput("policy.max_grants", self.max_grants, "expected a whole number")
        if self.max_grants < 0:
            raise InvalidInput("policy.max_grants", self.max_grants, "expected >= 0")


@dataclass(frozen=True, slots=True)
class CallPlan:
    """How the next model call should be made, as of the run's last admission (no I/O)."""

    model: str | None
    """The model to call: the requested one, or the downgrade target once that rung fired."""
    max_tokens: int | None
    """The output cap to send: clamped to what the budget affords, or the summary reserve's
    output on the final call; ``None`` when the caller gave none and nothing clamps it."""
    tools_allowed: bool
    """False once ``stop_tools`` fired or the run is exhausted: offer the model no tools."""
    subagents_allowed: bool
    """False once ``stop_subagents`` fired or the run is exhausted."""
    final: bool
    """True: the budget is out and this is the one wrap-up call the summary reserve pays for.
    Ask the model to summarise, offer no tools, then end the run."""
    exhausted: bool
    """True: nothing more may run (refused in raise mode, or the wrap-up call is spent)."""
    rungs: tuple[Degrade, ...] = ()
    """The rungs in force, in the order they fired."""


_BOUNDS_OUTPUT: frozenset[str] = frozenset({"output_tokens", "total_tokens", "cost_usd"})
"""The dimensions whose limits bound a call's output."""


def affordable_output_tokens(
    heads: Iterable[LimitHeadroom],
    input_tokens: int,
    price_of: Callable[[int, int], Decimal | None] | None,
) -> int | None:
    """The most output tokens the tightest limit still affords after ``input_tokens``.

    ``None`` when no limit bounds output. ``price_of(input_tokens, output_tokens)`` prices a
    call of the planned model (``None`` when the model has no price), for cost limits.
    """
    rooms: list[int] = []
    cost_room: Decimal | None = None
    for head in heads:
        dimension = head.dimension
        if dimension not in _BOUNDS_OUTPUT:
            continue
        room = Decimal(head.limit) - Decimal(head.used) - Decimal(head.held)
        if dimension == "output_tokens":
            rooms.append(int(room))
        elif dimension == "total_tokens":
            rooms.append(int(room) - input_tokens)
        else:
            cost_room = room if cost_room is None else min(cost_room, room)
    if cost_room is not None and price_of is not None:
        input_cost = price_of(input_tokens, 0) if input_tokens else Decimal(0)
        million = price_of(0, 1_000_000)
        if input_cost is not None and million:
            rooms.append(math.floor((cost_room - input_cost) * 1_000_000 / million))
    if not rooms:
        return None
    return max(0, min(rooms))


def price_function(
    pricing: Pricing | None, model: str | None, provider: str | None
) -> Callable[[int, int], Decimal | None] | None:
    """A pricer of ``(input_tokens, output_tokens)`` for ``model``, or ``None`` without pricing
    or model. It prices like ``pricing.price(model, Usage(...), provider=provider).cost_usd``."""
    if pricing is None or model is None:
        return None

    def price_of(input_tokens: int, output_tokens: int) -> Decimal | None:
        # Validated as a Usage would be (a caller's prompt_tokens may be absurd).
        to_units("input_tokens", input_tokens, "usage.input_tokens")
        return pricing._token_cost(model, input_tokens, output_tokens, provider)

    return price_of
