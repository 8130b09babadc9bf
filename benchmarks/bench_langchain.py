"""Time the LangChain integration adds per model call, against the same agent loop without it.

A ``GenericFakeChatModel`` (with ``bind_tools``) asks for a tool ``--steps - 1`` times and then
answers, so each ``create_agent`` run is ``--steps`` model calls and ``--steps - 1`` tool calls.
The figure is (guarded run - bare run) / model calls, the median over ``--runs`` interleaved
rounds, for: middleware / a callback handler with the same hooks doing nothing (LangChain's own
cost of the hooks), and ``BudgetMiddleware`` / ``BudgetCallbackHandler`` on a memory ledger and
on a SQLite file (each model call: one reserve and one commit; each tool call: one admission).
Building the agent and entering the guard are outside the timed part.

Usage: python benchmarks/bench_langchain.py [--steps 20] [--runs 15] [--cpu]
``--cpu`` times the process's CPU (all threads) rather than the wall clock: steadier when other
programs share the machine. Prints its figures; it does not write docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import Runnable
from langchain_core.tools import tool
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command

from budgeteer import Ledger, Limit, Pricing, RunGuard
from budgeteer.integrations.langchain import BudgetCallbackHandler, BudgetMiddleware


class BenchModel(GenericFakeChatModel):
    model_name: str = "gpt-4o"
    max_tokens: int = 256

    def bind_tools(
        self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any
    ) -> Runnable[Any, Any]:
        return self.bind(**kwargs)


def script(steps: int) -> Iterator[AIMessage]:
    usage: Any = {"input_tokens": 900, "output_tokens": 80, "total_tokens": 980}
    for i in range(1, steps):
        yield AIMessage(
            "",
            tool_calls=[{"name": "search", "args": {"q": "x"}, "id": f"c{i}"}],
            usage_metadata=usage,
        )
    yield AIMessage("done", usage_metadata=usage)


@tool
def search(q: str) -> str:
    """Search."""
    return q


class HooksOnly(AgentMiddleware):
    """The hooks ``BudgetMiddleware`` uses, doing nothing."""

    def wrap_model_call(
        self, request: ModelRequest[Any], handler: Callable[[ModelRequest[Any]], ModelResponse[Any]]
    ) -> ModelResponse[Any]:
        return handler(request)

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        return handler(request)


class CallbacksOnly(BaseCallbackHandler):
    """The callbacks ``BudgetCallbackHandler`` uses, doing nothing."""

    raise_error = True

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        return None

    def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
        return None

    def on_tool_start(self, *args: Any, **kwargs: Any) -> None:
        return None


def one_run(
    steps: int,
    case: str,
    ledgers: dict[str, Ledger],
    round_no: int,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    kind, _, store = case.partition(" ")
    ledger = ledgers.get(store)
    guard: AbstractContextManager[Any] = nullcontext()
    if ledger is not None:
        limits = [Limit("cost_usd", "1000"), Limit("tool_calls", 1_000_000)]
        path = f"org:bench/run:{kind}-{round_no}"
        guard = RunGuard(ledger, path, limits=limits, pricing=Pricing())
    with guard as run:
        middleware: list[AgentMiddleware] = []
        callbacks: list[BaseCallbackHandler] = []
        if kind == "hooks":
            middleware = [HooksOnly()]
        elif kind == "callbacks":
            callbacks = [CallbacksOnly()]
        elif kind == "middleware":
            middleware = [BudgetMiddleware(run)]
        elif kind == "handler":
            callbacks = [BudgetCallbackHandler(run)]
        agent = create_agent(BenchModel(messages=script(steps)), [search], middleware=middleware)
        config: Any = {"callbacks": callbacks, "recursion_limit": 10 * steps}
        started = clock()
        agent.invoke({"messages": [HumanMessage("go")]}, config=config)
        return clock() - started


def main() -> None:
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
    cases = [
        "bare",
        "hooks",
        "callbacks",
        "middleware memory",
        "middleware sqlite",
        "handler memory",
        "handler sqlite",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        ledgers = {
            "memory": Ledger("memory://"),
            "sqlite": Ledger(f"sqlite:///{Path(tmp) / 'bench.db'}"),
        }
        for case in cases:
            one_run(args.steps, case, ledgers, -1, clock)  # warm-up (imports, price table)
        # Interleaved rounds, so load from other processes hits every case alike.
        times: dict[str, list[float]] = {case: [] for case in cases}
        for round_no in range(args.runs):
            for case in cases:
                times[case].append(one_run(args.steps, case, ledgers, round_no, clock))
        bare = statistics.median(times["bare"])
        print(
            f"python {platform.python_version()}, {args.steps} model calls per run, "
            f"{'CPU' if args.cpu else 'wall'} time"
        )
        print(f"bare loop: {bare / args.steps * 1e3:.3f} ms per model call")
        for case in cases[1:]:
            added = [
                (t - b) / args.steps * 1e3 for t, b in zip(times[case], times["bare"], strict=True)
            ]
            print(
                f"{case}: +{statistics.median(added):.3f} ms per model call "
                f"(median of {args.runs} rounds; includes its tool call's admission)"
            )
        for ledger in ledgers.values():
            ledger.close()


if __name__ == "__main__":
    main()
