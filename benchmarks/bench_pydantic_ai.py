"""Time the Pydantic AI capability adds per model call, against the same loop without it.

A ``FunctionModel`` asks for a tool ``--steps - 1`` times and then answers, so each run is
``--steps`` model calls and ``--steps - 1`` tool calls through the real agent loop. The figure is
(guarded run - bare run) / model calls, the median over ``--runs`` interleaved rounds, for a
capability with the same hooks doing nothing (the framework's own cost of the hooks), and for
``BudgetCapability`` on a memory ledger and on a SQLite file (each model call: one reserve and
one commit; each tool call:
one reserve and one commit).

Usage: python benchmarks/bench_pydantic_ai.py [--steps 20] [--runs 15] [--cpu]
``--cpu`` times the process's CPU (all threads) rather than the wall clock: steadier when other
programs share the machine. Prints its figures; it does not write docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.capabilities import AbstractCapability, WrapRunHandler
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models import Model, ModelRequestContext
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.run import AgentRunResult
from pydantic_ai.tools import RunContext, ToolDefinition
from pydantic_ai.usage import RequestUsage, UsageLimits

from budgeteer import AsyncLedger, Limit, Pricing
from budgeteer.integrations.pydantic_ai import BudgetCapability


class HooksOnly(AbstractCapability[Any]):
    """The same hooks as ``BudgetCapability``, doing nothing: what the framework's hook
    machinery costs by itself."""

    async def wrap_run(
        self, ctx: RunContext[Any], *, handler: WrapRunHandler
    ) -> AgentRunResult[Any]:
        return await handler()

    async def before_model_request(
        self, ctx: RunContext[Any], request_context: ModelRequestContext
    ) -> ModelRequestContext:
        return request_context

    def get_wrapper_model(self, model: Model) -> Model | None:
        return WrapperModel(model)

    async def before_tool_execute(
        self, ctx: RunContext[Any], *, call: ToolCallPart, tool_def: ToolDefinition, args: Any
    ) -> Any:
        return args


def make_agent(steps: int, budget: AbstractCapability[Any] | None) -> Agent[None, str]:
    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls = sum(isinstance(m, ModelResponse) for m in messages)
        part = TextPart("done") if calls + 1 >= steps else ToolCallPart("search", {"q": "x"})
        return ModelResponse(parts=[part], usage=RequestUsage(input_tokens=900, output_tokens=80))

    agent = Agent(
        FunctionModel(respond, model_name="gpt-4o"),
        capabilities=[budget] if budget is not None else [],
    )

    @agent.tool_plain
    async def search(q: str) -> str:
        return q

    del search
    return agent


async def one_run(agent: Agent[None, str], clock: Callable[[], float] = time.perf_counter) -> float:
    started = clock()
    await agent.run("go", usage_limits=UsageLimits(request_limit=None))
    return clock() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="time process CPU (all threads) instead of wall time: steadier on a shared machine",
    )
    args = parser.parse_args()
    clock = time.process_time if args.cpu else time.perf_counter
    limits = [Limit("cost_usd", "1000"), Limit("tool_calls", 1_000_000)]
    with tempfile.TemporaryDirectory() as tmp:
        ledgers = {
            "memory": AsyncLedger("memory://"),
            "sqlite": AsyncLedger(f"sqlite:///{Path(tmp) / 'bench.db'}"),
        }
        agents = {
            "bare": make_agent(args.steps, None),
            "hooks only": make_agent(args.steps, HooksOnly()),
        }
        for name, ledger in ledgers.items():
            budget = BudgetCapability(
                ledger=ledger, path="org:bench/run:{run_id}", limits=limits, pricing=Pricing()
            )
            agents[name] = make_agent(args.steps, budget)
        for agent in agents.values():
            await one_run(agent, clock)  # warm-up
        # Interleaved rounds, so load from other processes hits every case alike.
        times: dict[str, list[float]] = {name: [] for name in agents}
        for _ in range(args.runs):
            for name, agent in agents.items():
                times[name].append(await one_run(agent, clock))
        bare = statistics.median(times["bare"])
        print(
            f"python {platform.python_version()}, {args.steps} model calls per run, "
            f"{'CPU' if args.cpu else 'wall'} time"
        )
        print(f"bare loop: {bare / args.steps * 1e3:.3f} ms per model call")
        for name in ("hooks only", *ledgers):
            added = [
                (t - b) / args.steps * 1e3 for t, b in zip(times[name], times["bare"], strict=True)
            ]
            print(
                f"{name}: +{statistics.median(added):.3f} ms per model call "
                f"(median of {args.runs} rounds; includes its tool call's admission)"
            )
        for ledger in ledgers.values():
            await ledger.close()


if __name__ == "__main__":
    asyncio.run(main())
