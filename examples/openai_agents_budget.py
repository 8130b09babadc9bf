"""A budget on an OpenAI Agents SDK run, in two lines: ``BudgetGuard`` + ``hooks=guard``.

Runs offline by default: the agent's model is the SDK's own ``ScriptedModel``, scripted as a
runaway loop that keeps calling a tool. ``--live`` uses the real OpenAI API instead (needs
``OPENAI_API_KEY``). Needs ``pip install 'budgeteer[openai-agents]'``.

    python examples/openai_agents_budget.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from agents import Agent, ModelProvider, RunConfig, Runner, function_tool, set_tracing_disabled
from agents.models.interface import Model
from agents.testing import ModelStep, ScriptedModel, function_call
from agents.usage import Usage

from budgeteer import BudgetExceeded
from budgeteer.integrations.openai_agents import BudgetGuard

LIVE = "--live" in sys.argv


@function_tool
def search(query: str) -> str:
    """Search the web for ``query``."""
    return f"nothing new about {query}"


class Scripted(ModelProvider):
    """Offline stand-in for OpenAI: each model name answers with an endless stream of searches."""

    def get_model(self, model_name: str | None) -> Model:
        name = model_name or "gpt-4o"
        return ScriptedModel(
            ModelStep(
                output=[function_call("search", {"query": f"q{i}"}, call_id=f"{name}-{i}")],
                usage=Usage(requests=1, input_tokens=800, output_tokens=60, total_tokens=860),
            )
            for i in range(50)
        )


def config(guard: BudgetGuard) -> RunConfig:
    return guard.run_config(RunConfig() if LIVE else RunConfig(model_provider=Scripted()))


async def main(ledger_url: str) -> None:
    agent = Agent(name="researcher", model="gpt-4o", tools=[search], instructions="Research.")

    # Raise mode: the fifth request is refused before it is sent.
    guard = BudgetGuard(ledger_url, "org:demo/run:raise", max_requests=4, max_cost_usd="0.50")
    try:
        await Runner.run(agent, "Find everything.", hooks=guard, run_config=config(guard))
    except BudgetExceeded as error:
        print(
            f"raise mode: BudgetExceeded {error.dimension} limit={error.limit} "
            f"actual={error.actual}"
        )
    print(f"raise cost: ${guard.report.cost_usd}")

    # Graceful mode with a downgrade at half the budget: the run ends with a final output.
    guard = BudgetGuard(
        ledger_url,
        "org:demo/run:graceful",
        max_requests=4,
        downgrade_to="gpt-4o-mini",
        downgrade_at=0.5,
        graceful=True,
    )
    result = await Runner.run(agent, "Find everything.", hooks=guard, run_config=config(guard))
    print(f"graceful status: {guard.report.status}")
    print(f"graceful models: {dict(guard.report.models)}")
    print(f"graceful cost: ${guard.report.cost_usd}")
    print(f"graceful final output: {result.final_output}")


if __name__ == "__main__":
    set_tracing_disabled(not LIVE)
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(main(f"sqlite:///{Path(folder) / 'budgets.db'}"))
