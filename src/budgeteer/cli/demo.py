"""The ``budgeteer demo`` simulation: a fleet of agents spending against one budget hierarchy.

No network and no API key: each agent is a thread that loops like a real one (count an
iteration, call a model, call a tool) through its own ``RunGuard`` on one shared ``Ledger``,
while the "model" sleeps a few milliseconds and reports plausible usage that ``Pricing`` prices
from the bundled genai-prices table. The hierarchy is ``org → team → engineer → session``::

    org:acme                        monthly cost cap, daily request cap
    ├── team:search                 daily cost cap (shared by its sessions: it stops some)
    │   └── engineer:eN             daily token cap
    │       └── session:sNN         per-run caps: cost, iterations, tool calls
    └── team:billing                daily cost cap
        └── engineer:eN             daily token cap (e4's two big-context agents hit it)
            └── session:sNN         one of them a runaway looping on the same tool

This module has no terminal UI: ``run_demo`` returns a ``DemoResult`` and reports progress to
an optional callback, so tests drive it directly and the CLI (``budgeteer.cli``) draws it.
Which run a *shared* cap stops depends on thread timing; everything else follows from ``seed``.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from budgeteer.errors import BudgetExceeded
from budgeteer.guard import RunGuard, RunReport
from budgeteer.ledger import Ledger
from budgeteer.model import Limit, LimitHeadroom, ScopeUsage, Usage, Window
from budgeteer.pricing import Pricing

__all__ = [
    "DEFAULT_RUNS",
    "DEFAULT_SEED",
    "AgentProfile",
    "CapCheck",
    "DemoResult",
    "FleetPlan",
    "RunOutcome",
    "RunPlan",
    "RunProgress",
    "check_caps",
    "plan_fleet",
    "run_demo",
]

DEFAULT_RUNS = 12
"""Runs in the default fleet: one of each agent profile."""
DEFAULT_SEED = 7
"""The default seed of the simulated usage."""
ORG = "org:acme"
"""The top scope of the demo hierarchy."""

RunState = Literal["waiting", "running", "completed", "stopped", "failed"]

# --------------------------------------------------------------------------------------------
# The plan: who runs where, under which caps


@dataclass(frozen=True, slots=True)
class AgentProfile:
    """How one simulated agent behaves, and the caps its session runs under."""

    label: str
    """A short role name shown in the tables, e.g. ``"researcher"``."""
    team: str
    """The team it works for (the name of a ``team:`` scope)."""
    model: str
    """The model it calls; a name genai-prices knows, so every call has a real price."""
    task_iterations: int | None
    """Iterations until its task is done; ``None``: it never finishes (the runaway)."""
    tool: str
    """The tool it calls after each model call."""
    max_tokens: int = 1024
    """``max_tokens`` of each model call: what the guard reserves for the output."""
    tools_per_iteration: int = 1
    """Tool calls per iteration (the runaway repeats the same call)."""
    context_chars: int = 4_000
    """Size of the task description that starts its conversation, in characters."""
    tool_output_chars: tuple[int, int] = (1_000, 3_000)
    """Range of the size of each tool result appended to the conversation, in characters."""
    cost_cap_usd: str | None = None
    """The session's lifetime cap on ``cost_usd``, if any."""
    iteration_cap: int | None = None
    """The session's lifetime cap on ``iterations``, if any."""
    tool_call_cap: int | None = None
    """The session's lifetime cap on ``tool_calls``, if any."""

    @property
    def session_limits(self) -> tuple[Limit, ...]:
        """Per-run caps, set on the session scope by its ``RunGuard``."""
        caps: tuple[tuple[str, Decimal | int | None], ...] = (
            ("cost_usd", None if self.cost_cap_usd is None else Decimal(self.cost_cap_usd)),
            ("iterations", self.iteration_cap),
            ("tool_calls", self.tool_call_cap),
        )
        return tuple(Limit(dimension, cap) for dimension, cap in caps if cap is not None)


# The order matters for small fleets (`--runs 4`): the first four include the runaway and both
# teams. Engineers are numbered in order of appearance, two sessions each per team, so the
# big-context pair (auditor and reconciler) shares engineer e4 and runs into its token cap.
PROFILES: tuple[AgentProfile, ...] = (
    AgentProfile(
        "researcher", "search", "claude-sonnet-4-0", 40, "web_search",
        context_chars=6_000, tool_output_chars=(1_500, 5_000),
        cost_cap_usd="1.00", iteration_cap=60,
    ),
    AgentProfile(
        "runaway", "billing", "gpt-4o-mini", None, "lookup_invoice",
        max_tokens=512, tools_per_iteration=3, context_chars=2_000, tool_output_chars=(300, 600),
        cost_cap_usd="0.50", iteration_cap=100, tool_call_cap=30,
    ),
    AgentProfile(
        "coder", "search", "claude-sonnet-4-0", 40, "run_tests",
        max_tokens=2048, context_chars=12_000, tool_output_chars=(2_000, 6_000),
        cost_cap_usd="0.25", tool_call_cap=80,
    ),
    AgentProfile(
        "reporter", "billing", "claude-3-5-haiku-latest", 12, "query_ledger",
        context_chars=3_000, tool_output_chars=(500, 2_000), cost_cap_usd="0.30",
    ),
    AgentProfile(
        "triage", "search", "gpt-4o-mini", 10, "classify",
        max_tokens=512, context_chars=2_000, tool_output_chars=(200, 800),
        cost_cap_usd="0.10", iteration_cap=20,
    ),
    AgentProfile(
        "auditor", "billing", "gpt-4.1-mini", 40, "read_statement",
        max_tokens=2048, tools_per_iteration=2, context_chars=40_000,
        tool_output_chars=(8_000, 16_000), cost_cap_usd="1.00",
    ),
    AgentProfile(
        "summariser", "search", "gpt-4o", 30, "fetch_page",
        max_tokens=800, tool_output_chars=(2_000, 6_000), cost_cap_usd="0.60",
    ),
    AgentProfile(
        "reconciler", "billing", "gpt-4o-mini", 40, "match_payments",
        max_tokens=2048, tools_per_iteration=2, context_chars=40_000,
        tool_output_chars=(8_000, 16_000), cost_cap_usd="1.00",
    ),
    AgentProfile(
        "planner", "search", "gpt-4o", 40, "read_ticket",
        context_chars=3_000, tool_output_chars=(500, 2_000),
        cost_cap_usd="0.60", iteration_cap=15,
    ),
    AgentProfile(
        "support", "billing", "gpt-4o-mini", 15, "search_kb",
        max_tokens=512, context_chars=2_000, tool_output_chars=(300, 1_200), cost_cap_usd="0.10",
    ),
    AgentProfile(
        "analyst", "search", "gpt-4o", 30, "run_sql",
        context_chars=5_000, tool_output_chars=(1_000, 4_000), cost_cap_usd="0.60",
    ),
    AgentProfile(
        "forecaster", "billing", "claude-haiku-4-5", 20, "load_series",
        tool_output_chars=(1_000, 3_000), cost_cap_usd="0.40",
    ),
)  # fmt: skip
"""The twelve agents of the default fleet; larger fleets repeat them."""

TEAM_DAILY_USD_PER_RUN: Mapping[str, Decimal] = {
    "search": Decimal("0.25"),
    "billing": Decimal("0.40"),
}
"""Each team's daily cost cap, per run it has: tight for search, so the team cap bites."""
ENGINEER_DAILY_TOKENS = 400_000
"""Every engineer's daily token cap; only the big-context pair's engineer reaches it."""
ORG_MONTHLY_USD_FACTOR = Decimal("1.5")
"""The org's monthly cost cap, as a multiple of its teams' daily caps together."""
ORG_DAILY_REQUESTS = 5_000
"""The org's daily cap on model requests (far from reached: a cap on another dimension)."""


@dataclass(frozen=True, slots=True)
class RunPlan:
    """One run of the fleet: where it sits in the hierarchy and how it behaves."""

    index: int
    """Its position in the fleet, from 0."""
    path: str
    """Its session's scope path, e.g. ``"org:acme/team:search/engineer:e1/session:s01"``."""
    team: str
    """Its team's scope path."""
    engineer: str
    """Its engineer's scope path."""
    profile: AgentProfile
    """How it behaves."""
    seed: int
    """The seed of its own random stream (usage, sizes and latencies)."""


@dataclass(frozen=True, slots=True)
class FleetPlan:
    """The whole simulation: the runs and the caps set above the sessions."""

    runs: tuple[RunPlan, ...]
    """Every run, in display order."""
    scope_limits: Mapping[str, tuple[Limit, ...]]
    """Caps of the org, team and engineer scopes, by scope path, top first."""

    @property
    def rollup_scopes(self) -> tuple[str, ...]:
        """The org, team and engineer scopes, each followed by those below it."""
        return tuple(sorted(self.scope_limits, key=_tree_order))

    @property
    def scopes(self) -> tuple[str, ...]:
        """Every scope of the hierarchy, sessions included, in tree order."""
        return tuple(sorted({*self.scope_limits, *(r.path for r in self.runs)}, key=_tree_order))


def _tree_order(scope: str) -> tuple[tuple[int, str], ...]:
    # Sort segment by segment; a session number sorts numerically within its engineer.
    return tuple((len(segment), segment) for segment in scope.split("/"))


def plan_fleet(runs: int = DEFAULT_RUNS, seed: int = DEFAULT_SEED) -> FleetPlan:
    """Lay out ``runs`` runs over the hierarchy, with the caps of every level.

    Raises:
        ValueError: ``runs`` is below 1.
    """
    if runs < 1:
        raise ValueError(f"runs={runs!r}: the fleet needs at least one run")
    per_team: dict[str, int] = {}
    engineers: dict[tuple[str, int], str] = {}
    plans: list[RunPlan] = []
    for index in range(runs):
        profile = PROFILES[index % len(PROFILES)]
        nth = per_team.get(profile.team, 0)
        per_team[profile.team] = nth + 1
        engineer_key = (profile.team, nth // 2)
        if engineer_key not in engineers:
            engineers[engineer_key] = f"engineer:e{len(engineers) + 1}"
        team = f"{ORG}/team:{profile.team}"
        engineer = f"{team}/{engineers[engineer_key]}"
        plans.append(
            RunPlan(
                index=index,
                path=f"{engineer}/session:s{index + 1:02d}",
                team=team,
                engineer=engineer,
                profile=profile,
                seed=seed * 1_000 + index,
            )
        )
    team_caps = {
        f"{ORG}/team:{team}": TEAM_DAILY_USD_PER_RUN[team] * count
        for team, count in per_team.items()
    }
    limits: dict[str, tuple[Limit, ...]] = {
        ORG: (
            Limit("cost_usd", sum(team_caps.values()) * ORG_MONTHLY_USD_FACTOR, Window.monthly()),
            Limit("requests", ORG_DAILY_REQUESTS, Window.daily()),
        ),
    }
    for team, cap in team_caps.items():
        limits[team] = (Limit("cost_usd", cap, Window.daily()),)
    for plan in plans:
        limits[plan.engineer] = (Limit("total_tokens", ENGINEER_DAILY_TOKENS, Window.daily()),)
    return FleetPlan(runs=tuple(plans), scope_limits=limits)


# --------------------------------------------------------------------------------------------
# Progress and results


@dataclass(frozen=True, slots=True)
class RunProgress:
    """A snapshot of one run, as the live view shows it."""

    plan: RunPlan
    """The run."""
    state: RunState = "waiting"
    """Where it is: ``waiting``, ``running``, then ``completed``, ``stopped`` or ``failed``."""
    usage: Usage = field(default_factory=lambda: Usage(cost_usd=Decimal(0)))
    """What it has committed so far."""
    model_calls: int = 0
    """Model calls admitted so far."""
    stopped_by: BudgetExceeded | None = None
    """The refusal that stopped it, once stopped."""


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How one run ended."""

    plan: RunPlan
    """The run."""
    report: RunReport
    """The guard's report: usage, status and the refusal that stopped it."""
    error: str | None = None
    """For a ``failed`` run: the unexpected exception, as ``repr``."""


@dataclass(frozen=True, slots=True)
class CapCheck:
    """The verdict on every limit of every scope, read back from the ledger after the runs."""

    scopes: tuple[ScopeUsage, ...]
    """The meters of every scope checked, in tree order."""
    violations: tuple[LimitHeadroom, ...]
    """Limits whose committed usage is above the cap (none, if budgeteer works)."""
    holds_left: tuple[str, ...]
    """Scopes with reservations still outstanding after every run has ended (none expected)."""

    @property
    def limits_checked(self) -> int:
        """How many limits were compared."""
        return sum(len(scope.limits) for scope in self.scopes)

    @property
    def ok(self) -> bool:
        """True if no cap was exceeded and no hold was left behind."""
        return not self.violations and not self.holds_left


@dataclass(frozen=True, slots=True)
class DemoResult:
    """Everything the demo did."""

    plan: FleetPlan
    """The fleet that ran."""
    runs: tuple[RunOutcome, ...]
    """Each run's outcome, in plan order."""
    rollup: tuple[ScopeUsage, ...]
    """The meters of the org, team and engineer scopes, in tree order."""
    check: CapCheck
    """The verdict on every cap."""
    duration_s: float
    """Wall-clock seconds of the whole simulation, setup and check included."""


def check_caps(ledger: Ledger, scopes: Sequence[str]) -> CapCheck:
    """Read each scope's meters and compare every limit's committed usage with its cap."""
    meters = tuple(ledger.usage(scope) for scope in scopes)
    violations = tuple(head for scope in meters for head in scope.limits if head.used > head.limit)
    holds = tuple(scope.scope for scope in meters if scope.held.units)
    return CapCheck(scopes=meters, violations=violations, holds_left=holds)


# --------------------------------------------------------------------------------------------
# The simulated agents

_VOCABULARY = (
    "invoice ledger budget token agent search query result model tool context plan step "
    "review summary table account payment report analysis draft patch test error retry "
    "customer request response cache window limit scope team session cost usage"
)
_WORDS = tuple(_VOCABULARY.split())


def _corpus(seed: int, chars: int = 65_536) -> str:
    rng = random.Random(seed)
    words: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


class _Agent:
    """One simulated agent loop: iteration, model call, tool calls, until done or refused."""

    def __init__(
        self,
        plan: RunPlan,
        ledger: Ledger,
        pricing: Pricing,
        corpus: str,
        pace: float,
        publish: Callable[[RunProgress], None],
    ) -> None:
        self.plan = plan
        self.ledger = ledger
        self.pricing = pricing
        self.corpus = corpus
        self.pace = pace
        self.publish = publish
        self.rng = random.Random(plan.seed)
        self.model_calls = 0
        self.stopped_by: BudgetExceeded | None = None

    def text(self, chars: int) -> str:
        start = self.rng.randrange(max(1, len(self.corpus) - chars))
        text = self.corpus[start : start + chars]
        while len(text) < chars:
            text += " " + self.corpus[: chars - len(text) - 1]
        return text

    def sleep(self, low_s: float, high_s: float) -> None:
        time.sleep(self.rng.uniform(low_s, high_s) * self.pace)

    def model_usage(self, history: Sequence[Mapping[str, str]], previous_input: int) -> Usage:
        # A real tokenizer gives about 4 characters per token (the guard's estimate assumes 3,
        # to stay pessimistic), plus a few tokens of framing per message: the actual input is
        # therefore always within the reservation, as with a real provider.
        input_tokens = sum(len(m["content"]) // 4 + 3 for m in history)
        max_tokens = self.plan.profile.max_tokens
        output_tokens = self.rng.randint(max_tokens // 5, max_tokens * 9 // 10)
        # OpenAI caches repeated prompt prefixes by itself: the conversation so far is the
        # prefix of this call. (Anthropic caches only on request; these agents do not ask.)
        cached = 0
        if self.plan.profile.model.startswith("gpt-"):
            cached = min(previous_input, input_tokens) // 128 * 128
        return Usage(
            input_tokens=input_tokens, cache_read_tokens=cached, output_tokens=output_tokens
        )

    def run(self) -> RunOutcome:
        plan, profile = self.plan, self.plan.profile
        guard = RunGuard(
            self.ledger, plan.path, limits=profile.session_limits, pricing=self.pricing
        )
        history: list[dict[str, str]] = [
            {"role": "system", "content": f"You are the {profile.label} agent."},
            {"role": "user", "content": self.text(profile.context_chars)},
        ]
        error: str | None = None
        previous_input = 0
        try:
            with guard as run:
                self.publish(RunProgress(plan, "running"))
                for done in itertools.count():
                    if profile.task_iterations is not None and done >= profile.task_iterations:
                        break
                    run.iteration()
                    with run.model_call(
                        profile.model, prompt=history, max_tokens=profile.max_tokens
                    ) as call:
                        self.sleep(0.15, 0.35)
                        usage = self.model_usage(history, previous_input)
                        call.settle(usage)
                    previous_input = usage.input_tokens
                    self.model_calls += 1
                    history.append(
                        {"role": "assistant", "content": self.text(usage.output_tokens * 4)}
                    )
                    self.publish(self.progress(guard, "running"))
                    low, high = profile.tool_output_chars
                    # The runaway repeats one identical call; the others vary their output.
                    result = self.text(self.rng.randint(low, high))
                    for _ in range(profile.tools_per_iteration):
                        with run.tool_call(profile.tool):
                            self.sleep(0.01, 0.03)
                        if profile.task_iterations is not None:
                            result = self.text(self.rng.randint(low, high))
                        history.append({"role": "tool", "content": result})
                    self.publish(self.progress(guard, "running"))
        except BudgetExceeded as refusal:
            # The guard recorded the refusal in its report: the run is "stopped".
            self.stopped_by = refusal
        except Exception as exc:  # noqa: BLE001 - one broken agent must not sink the fleet
            error = repr(exc)
        report = guard.report
        self.publish(self.progress(guard, report.status))
        return RunOutcome(plan=plan, report=report, error=error)

    def progress(self, guard: RunGuard, state: RunState) -> RunProgress:
        # Read the guard's live usage, not ``guard.report``: that is final only after the run.
        return RunProgress(
            plan=self.plan,
            state=state,
            usage=guard.usage,
            model_calls=self.model_calls,
            stopped_by=self.stopped_by,
        )


# --------------------------------------------------------------------------------------------
# The driver


def run_demo(
    ledger: Ledger,
    *,
    runs: int = DEFAULT_RUNS,
    seed: int = DEFAULT_SEED,
    pace: float = 1.0,
    on_progress: Callable[[Sequence[RunProgress]], None] | None = None,
    progress_interval_s: float = 0.1,
    pricing: Pricing | None = None,
) -> DemoResult:
    """Run the fleet concurrently against ``ledger`` and check every cap afterwards.

    Each run is a thread with its own ``RunGuard`` on the shared ``ledger``. The caller keeps
    ownership of ``ledger`` (this function does not close it).

    Args:
        ledger: Where every scope's limits and counters live.
        runs: How many runs (12 is one of each agent profile).
        seed: Seeds every run's simulated usage, sizes and latencies.
        pace: Multiplies every simulated latency (``0`` runs flat out).
        on_progress: Called from this thread with a snapshot of every run, about every
            ``progress_interval_s`` and once more at the end.
        progress_interval_s: Seconds between ``on_progress`` calls.
        pricing: Prices the model calls (default: ``Pricing()``, genai-prices' bundled table).

    Returns:
        The ``DemoResult``: every run's report, the roll-up per level and the cap check.
    """
    started = time.monotonic()
    plan = plan_fleet(runs, seed)
    for scope, limits in plan.scope_limits.items():
        ledger.set_limits(scope, *limits)
    pricing = pricing if pricing is not None else Pricing()
    corpus = _corpus(seed)
    lock = threading.Lock()
    progress = {p.index: RunProgress(p) for p in plan.runs}
    outcomes: dict[int, RunOutcome] = {}

    def publish(snapshot: RunProgress) -> None:
        with lock:
            progress[snapshot.plan.index] = snapshot

    def work(agent: _Agent) -> None:
        outcome = agent.run()
        with lock:
            outcomes[agent.plan.index] = outcome

    threads = [
        threading.Thread(
            target=work,
            args=(_Agent(p, ledger, pricing, corpus, pace, publish),),
            name=f"budgeteer-demo-{p.index + 1:02d}",
            daemon=True,
        )
        for p in plan.runs
    ]
    for thread in threads:
        thread.start()

    def snapshot() -> tuple[RunProgress, ...]:
        with lock:
            return tuple(progress[i] for i in sorted(progress))

    for thread in threads:
        while thread.is_alive():
            thread.join(progress_interval_s)
            if on_progress is not None:
                on_progress(snapshot())
    if on_progress is not None:
        on_progress(snapshot())

    check = check_caps(ledger, plan.scopes)
    by_scope = {meters.scope: meters for meters in check.scopes}
    return DemoResult(
        plan=plan,
        runs=tuple(outcomes.get(p.index) or _lost(p) for p in plan.runs),
        rollup=tuple(by_scope[scope] for scope in plan.rollup_scopes),
        check=check,
        duration_s=time.monotonic() - started,
    )


def _lost(plan: RunPlan) -> RunOutcome:
    # Only reachable if a worker thread died outside its own error handling.
    report = RunReport(
        path=plan.path,
        status="failed",
        usage=Usage(),
        stopped_by=None,
        duration_s=0.0,
        model_calls=0,
    )
    return RunOutcome(plan=plan, report=report, error="the run's thread ended without a report")
