"""A LiteLLM loop under a budget: a cost cap, a downgrade at half of it, and honest prices.

Offline by default (LiteLLM's ``mock_response``, which reports 2,000 prompt and 500 completion
tokens here); ``LIVE=1`` calls the real models with your provider keys instead.

    .venv-litellm/bin/python examples/litellm_budget.py
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download at import

from itertools import islice
from typing import Any

from litellm import ModelResponse

from budgeteer import BudgetExceeded, Degrade, Ledger, Limit, Policy, RunGuard
from budgeteer.integrations.litellm import BudgetedLiteLLM, LiteLLMPricing

LIVE = os.environ.get("LIVE") == "1"
MESSAGES = [{"role": "user", "content": "Refactor the billing module, one step at a time."}]


def offline() -> dict[str, Any]:
    """LiteLLM's own test double: a canned response with a usage block (nothing if LIVE)."""
    if LIVE:
        return {}
    return {
        "mock_response": ModelResponse(
            choices=[{"index": 0, "message": {"role": "assistant", "content": "Step done."}}],
            usage={"prompt_tokens": 2000, "completion_tokens": 500, "total_tokens": 2500},
        )
    }


def main() -> None:
    ledger = Ledger("memory://")  # or Ledger("sqlite:///budget.db") to share it across processes
    policy = Policy(ladder=[Degrade.downgrade(to="gpt-4o-mini", at=0.5)])
    calls = 0
    with RunGuard(
        ledger,
        "org:acme/run:demo",
        limits=[Limit("cost_usd", "0.05")],
        pricing=LiteLLMPricing(),
        policy=policy,
    ) as run:
        llm = BudgetedLiteLLM(run)
        try:
            while True:
                llm.completion(model="gpt-4o", messages=MESSAGES, max_tokens=500, **offline())
                calls += 1
        except BudgetExceeded as error:
            print(f"stopped by: {error.dimension}")
    print(f"calls: {calls}")
    print(f"models: {dict(run.report.models)}")
    print(f"spent: ${run.report.cost_usd}")

    # LiteLLM's own table prices this model at $0; budgeteer charges what Mistral bills.
    with RunGuard(ledger, "org:acme/run:codestral", pricing=LiteLLMPricing()) as run:
        response = BudgetedLiteLLM(run).completion(
            model="codestral/codestral-latest",
            messages=MESSAGES,
            **({} if LIVE else {"mock_response": "def refactor(): ..."}),
        )
    print(f"litellm said: ${response._hidden_params.get('response_cost')}".replace("$0.0", "$0"))
    print(f"budgeteer charged: ${run.report.cost_usd}")

    # A stream read for three chunks and then dropped is charged for what it generated.
    with RunGuard(ledger, "org:acme/run:stream", pricing=LiteLLMPricing()) as run:
        stream = BudgetedLiteLLM(run).completion(
            model="gpt-4o",
            messages=MESSAGES,
            stream=True,
            **({} if LIVE else {"mock_response": "First, split the invoice class in two."}),
        )
        with stream:
            for _chunk in islice(stream, 3):
                pass
    settled = stream.settled
    print(
        f"streamed: charged {settled.output_tokens if settled else '?'} output tokens "
        f"for 3 chunks, ${run.report.cost_usd}"
    )


if __name__ == "__main__":
    main()
