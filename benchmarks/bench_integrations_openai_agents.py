"""Time the guard adds to each model call of an OpenAI Agents SDK run.

The same scripted run (the SDK's ``ScriptedModel``: ``--turns`` model calls that each ask for a
tool, then one answer) is timed without budgeteer and with a ``BudgetGuard`` on a SQLite file
ledger (hooks only, and with the guard's model provider), plus ``memory://`` for reference. The
cases run in interleaved rounds; the best and the median round are shown (the machine may be
shared and noisy). The added time is divided by the run's model calls; each of those turns also
admits one tool call. CPU time (``time.process_time``) is shown too: it is what the guard costs
whatever else the machine runs. A timed guard also reports the wall time spent inside its own
hooks.

Usage: python benchmarks/bench_integrations_openai_agents.py [--turns 40] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

from agents import (
    Agent,
    ModelProvider,
    RunConfig,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.models.interface import Model
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call
from agents.usage import Usage

from budgeteer import AsyncLedger
from budgeteer.integrations.openai_agents import BudgetGuard

USAGE = Usage(requests=1, input_tokens=500, output_tokens=40, total_tokens=540)


@function_tool
def search(query: str) -> str:
    """Search for ``query``."""
    return "ok"


def script(turns: int) -> ScriptedModel:
    steps = [
        ModelStep(output=[function_call("search", {"query": str(i)}, call_id=f"c{i}")], usage=USAGE)
        for i in range(turns)
    ]
    steps.append(ModelStep(output=[assistant_message("done")], usage=USAGE))
    return ScriptedModel(steps)


class Scripted(ModelProvider):
    def __init__(self, turns: int) -> None:
        self.turns = turns

    def get_model(self, model_name: str | None) -> Model:
        return script(self.turns)


Case = Callable[[int], Awaitable[None]]


class TimedGuard(BudgetGuard):
    """A ``BudgetGuard`` that adds up the wall time spent inside its hooks, per kind."""

    spent: ClassVar[dict[str, list[float]]] = {"model": [], "tool": [], "run": []}
    clock: ClassVar[Callable[[], float]] = time.perf_counter

    async def on_agent_start(self, context: Any, agent: Any) -> None:
        started = self.clock()
        await super().on_agent_start(context, agent)
        self._run_s = self.clock() - started

    async def on_llm_start(self, *args: Any) -> None:
        started = self.clock()
        await super().on_llm_start(*args)
        self._llm_s = self.clock() - started

    async def on_llm_end(self, *args: Any) -> None:
        started = self.clock()
        await super().on_llm_end(*args)
        self.spent["model"].append(self._llm_s + self.clock() - started)

    async def on_tool_start(self, *args: Any) -> None:
        started = self.clock()
        await super().on_tool_start(*args)
        self.spent["tool"].append(self.clock() - started)

    async def on_agent_end(self, *args: Any) -> None:
        started = self.clock()
        await super().on_agent_end(*args)
        self.spent["run"].append(self._run_s + self.clock() - started)


def cases(turns: int, sqlite_url: str) -> dict[str, Case]:
    shared: dict[str, AsyncLedger] = {}

    def ledger(url: str) -> AsyncLedger:
        if url not in shared:
            shared[url] = AsyncLedger(url)
        return shared[url]

    def guard(url: str, run: int, timed: bool = False) -> BudgetGuard:
        kind = TimedGuard if timed else BudgetGuard
        return kind(
            ledger(url),
            f"org:bench/team:agents/run:r{run}",
            max_requests=10_000,
            max_tool_calls=10_000,
            max_cost_usd="100",
            model="gpt-4o",
        )

    async def plain(run: int) -> None:
        agent = Agent(name="a", model=script(turns), tools=[search])
        await Runner.run(agent, "go", max_turns=turns + 5)

    async def hooks_sqlite(run: int) -> None:
        agent = Agent(name="a", model=script(turns), tools=[search])
        await Runner.run(agent, "go", max_turns=turns + 5, hooks=guard(sqlite_url, run))

    async def provider_sqlite(run: int) -> None:
        agent = Agent(name="a", model="gpt-4o", tools=[search])
        budget = guard(sqlite_url, run)
        config = budget.run_config(RunConfig(model_provider=Scripted(turns)))
        await Runner.run(agent, "go", max_turns=turns + 5, hooks=budget, run_config=config)

    async def timed_sqlite(run: int) -> None:
        agent = Agent(name="a", model=script(turns), tools=[search])
        await Runner.run(agent, "go", max_turns=turns + 5, hooks=guard(sqlite_url, run, True))

    async def hooks_memory(run: int) -> None:
        agent = Agent(name="a", model=script(turns), tools=[search])
        await Runner.run(agent, "go", max_turns=turns + 5, hooks=guard("memory://", run))

    return {
        "without budgeteer": plain,
        "BudgetGuard, SQLite file, hooks only": hooks_sqlite,
        "BudgetGuard, SQLite file, hooks + run_config": provider_sqlite,
        "BudgetGuard, memory://, hooks only": hooks_memory,
        "(timed) BudgetGuard, SQLite file, hooks only": timed_sqlite,
    }


async def measure(
    turns: int, rounds: int, folder: Path
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds of each run, per case."""
    runs = cases(turns, f"sqlite:///{folder / 'bench.db'}")
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    counter = 0
    for round_ in range(rounds + 1):
        for name, run in runs.items():
            counter += 1
            started, started_cpu = time.perf_counter(), time.process_time()
            await run(counter)
            if round_:  # round 0 warms imports, price tables and SQLite
                wall[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - started_cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    set_tracing_disabled(True)
    with tempfile.TemporaryDirectory() as folder:
        wall, cpu = asyncio.run(measure(args.turns, args.rounds, Path(folder)))
    calls = args.turns + 1
    print(
        f"{platform.machine()} CPython {platform.python_version()}; {calls} model calls and "
        f"{args.turns} tool calls per run; {args.rounds} interleaved rounds"
    )
    print(f"{'case':46} {'wall ms/run':>12} {'added wall ms/call':>19} {'added CPU ms/call':>18}")
    print(f"{'':46} {'min / median':>12} {'min / median':>19} {'median':>18}")
    for name in wall:
        if name.startswith("(timed)"):
            continue
        best, middle = min(wall[name]), statistics.median(wall[name])
        added_best = (best - min(wall["without budgeteer"])) / calls * 1000
        added_middle = (middle - statistics.median(wall["without budgeteer"])) / calls * 1000
        added_cpu = (
            (statistics.median(cpu[name]) - statistics.median(cpu["without budgeteer"]))
            / calls
            * 1000
        )
        print(
            f"{name:46} {best * 1000:5.0f} / {middle * 1000:4.0f} "
            f"{added_best:9.3f} / {added_middle:7.3f} {added_cpu:18.3f}"
        )
    print("time inside the guard's hooks (SQLite file), min / median / p90 in ms:")
    for kind, label in (
        ("model", "per model call (on_llm_start + on_llm_end)"),
        ("tool", "per tool call (on_tool_start)"),
        ("run", "per run (start + finish)"),
    ):
        values = sorted(TimedGuard.spent[kind])
        p90 = values[int(len(values) * 0.9)]
        print(
            f"  {label:48} {values[0] * 1000:8.3f} / {statistics.median(values) * 1000:.3f} / "
            f"{p90 * 1000:.3f}"
        )


if __name__ == "__main__":
    main()
