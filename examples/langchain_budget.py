"""A LangChain agent under a budget: downgrade at 50%, a graceful summary when it runs out.

Runs offline by default: the chat model is LangChain's own ``GenericFakeChatModel`` scripted as
a runaway agent that searches forever (with the usage a provider would report). Pass
``--model openai:gpt-4o`` to run a real model instead (needs ``langchain-openai`` and a key).

    python examples/langchain_budget.py [--ledger sqlite:///budget.db] [--cap 0.10]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

from langchain.agents import create_agent
from langchain.chat_models import init_chat_model
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import Runnable
from langchain_core.tools import tool

from budgeteer import Degrade, Ledger, Limit, Policy, Pricing, RunGuard, Usage
from budgeteer.integrations.langchain import EXHAUSTED_KEY, BudgetMiddleware


class OfflineModel(GenericFakeChatModel):
    """LangChain's fake chat model, plus the model name and ``bind_tools`` an agent needs."""

    model_name: str = "gpt-4o"
    max_tokens: int = 512

    def bind_tools(
        self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any
    ) -> Runnable[Any, Any]:
        return self.bind(tools=[getattr(t, "name", t) for t in tools], **kwargs)


def runaway_agent(model: str) -> Iterator[AIMessage]:
    """Searches forever; the conversation (and so each call's input) grows every turn."""
    turn = 0
    while True:
        turn += 1
        yield AIMessage(
            content="",
            tool_calls=[{"name": "search", "args": {"query": f"lead {turn}"}, "id": f"c{turn}"}],
            usage_metadata={
                "input_tokens": 1200 + 300 * turn,
                "output_tokens": 60,
                "total_tokens": 1260 + 300 * turn,
                "input_token_details": {"cache_read": 1024},
            },
            response_metadata={"model_name": model},
        )


def summariser(model: str) -> Iterator[AIMessage]:
    while True:
        yield AIMessage(
            "Followed several leads; none confirmed yet. Next: check the two most recent.",
            usage_metadata={"input_tokens": 2500, "output_tokens": 40, "total_tokens": 2540},
            response_metadata={"model_name": model},
        )


class ScriptedCheapModel(OfflineModel):
    """The cheaper model: searches while it is offered tools, summarises when it is not."""

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        if not kw.get("tools"):
            self.messages = summariser(self.model_name)
        return super()._generate(messages, stop, run_manager, **kw)


@tool
def search(query: str) -> str:
    """Search the web."""
    return f"nothing conclusive about {query}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ledger", help="ledger URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--cap", default="0.10", help="the session's cost cap in USD")
    parser.add_argument("--model", help="a real model, e.g. openai:gpt-4o (default: offline)")
    args = parser.parse_args(argv)

    cap = Decimal(args.cap)
    tmp = tempfile.TemporaryDirectory()
    url = args.ledger or f"sqlite:///{tmp.name}/budget.db"
    if args.model:
        strong: BaseChatModel = init_chat_model(args.model)
        models: dict[str, BaseChatModel] = {"gpt-4o-mini": init_chat_model("openai:gpt-4o-mini")}
    else:
        strong = OfflineModel(model_name="gpt-4o", messages=runaway_agent("gpt-4o"))
        cheap = ScriptedCheapModel(model_name="gpt-4o-mini", messages=runaway_agent("gpt-4o-mini"))
        models = {"gpt-4o-mini": cheap}

    policy = Policy(
        ladder=[Degrade.downgrade(to="gpt-4o-mini", at=0.5)],
        on_exhausted="summary",
        summary_reserve=Usage(input_tokens=4000, output_tokens=200, requests=1),
        summary_model="gpt-4o-mini",
    )
    with (
        Ledger(url) as ledger,
        RunGuard(
            ledger,
            "org:demo/session:1",
            limits=[Limit("cost_usd", cap)],
            pricing=Pricing(),
            policy=policy,
        ) as run,
    ):
        agent = create_agent(strong, [search], middleware=[BudgetMiddleware(run, models=models)])
        result = agent.invoke({"messages": [HumanMessage("Find who wrote the memo.")]})

    report = run.report
    final = result["messages"][-1]
    print("final:", final.text.replace("\n\n", " | "))
    print("budget_exhausted:", EXHAUSTED_KEY in final.response_metadata)
    print("model calls:", ", ".join(f"{m}={n}" for m, n in sorted(report.models.items())))
    print("tool calls:", report.usage.tool_calls)
    stopped = report.stopped_by
    reason = f" ({stopped.dimension} on {stopped.scope})" if stopped else ""
    print(f"status: {report.status}{reason}")
    print(f"wrapped up: {report.wrapped_up}")
    print(f"spent: {report.cost_usd} of {cap}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
