"""A Pydantic AI agent under a hard budget, beside Pydantic AI's own UsageLimits.

Offline by default: a ``FunctionModel`` plays a model stuck in a search loop and reports real
token usage, priced as gpt-4o. Pass ``--model openai:gpt-4o`` (with ``OPENAI_API_KEY`` set) to
run the same budget against a real model.

    python examples/pydantic_ai_budget.py [--ledger sqlite:///budgets.db] [--model NAME]
"""

from __future__ import annotations

import argparse

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage, UsageLimits

from budgeteer import AsyncLedger, Limit, Pricing
from budgeteer.integrations.pydantic_ai import BudgetCapability


async def runaway(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """An offline stand-in for a model that keeps asking for one more search."""
    return ModelResponse(
        parts=[ToolCallPart("search", {"query": f"attempt {len(messages)}"})],
        usage=RequestUsage(input_tokens=1200, cache_read_tokens=1024, output_tokens=60),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ledger", default="memory://", help="ledger URL (default: memory://)")
    parser.add_argument("--model", help="a Pydantic AI model name; default: offline stand-in")
    args = parser.parse_args()

    budget = BudgetCapability(
        ledger=AsyncLedger(args.ledger),
        path="org:acme/run:{run_id}",
        limits=[Limit("cost_usd", "0.05"), Limit("tool_calls", 3)],
        pricing=Pricing(),
        graceful_end=True,  # end with an output that says why, instead of raising
    )
    model: Model | str = args.model or FunctionModel(runaway, model_name="gpt-4o")
    agent = Agent(model, capabilities=[budget], instructions="Research the question.")

    @agent.tool_plain
    def search(query: str) -> str:
        """Search the web (a stand-in)."""
        return f"nothing new for {query!r}"

    del search
    # Pydantic AI's own limits stay on: whichever is tighter stops the run.
    result = agent.run_sync("What changed?", usage_limits=UsageLimits(request_limit=20))

    report = budget.last_report
    assert report is not None  # the run above has finished
    print("output:", result.output)
    print("status:", report.status)
    if report.stopped_by is not None:
        print("stopped by:", report.stopped_by.dimension, "limit", report.stopped_by.limit)
    print("requests:", report.usage.requests, "tool calls:", report.usage.tool_calls)
    print("cost_usd:", report.cost_usd)


if __name__ == "__main__":
    main()
