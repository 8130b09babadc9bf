"""An OpenAI client under a hard budget: a tool loop that never ends, stopped at $0.01.

Offline by default: a mocked HTTP transport plays a model that keeps asking for one more search
(its replies carry real usage blocks, cached prompt tokens included).
Pass ``--live`` (with ``OPENAI_API_KEY`` set) to run the same budget against the real API.

    python examples/openai_client_budget.py [--ledger sqlite:///budgets.db] [--live]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import httpx2
import openai

from budgeteer import BudgetExceeded, Ledger, Limit, Pricing, RunGuard
from budgeteer.integrations.openai import wrap_openai

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]


def runaway_model(request: httpx2.Request) -> httpx2.Response:
    """An offline stand-in for a model stuck in a search loop (chat completions API)."""
    turn = len(json.loads(request.content)["messages"])
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": f"call_{turn}",
                "type": "function",
                "function": {"name": "search", "arguments": json.dumps({"query": f"try {turn}"})},
            }
        ],
    }
    return httpx2.Response(
        200,
        json={
            "id": f"chatcmpl-{turn}",
            "object": "chat.completion",
            "created": 1763891180,
            "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
            "usage": {
                "prompt_tokens": 1200 + 40 * turn,
                "completion_tokens": 18,
                "total_tokens": 1218 + 40 * turn,
                "prompt_tokens_details": {"cached_tokens": 1024},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ledger", default="memory://", help="ledger URL (default: memory://)")
    parser.add_argument("--live", action="store_true", help="call the real API")
    args = parser.parse_args()

    http = None if args.live else httpx2.Client(transport=httpx2.MockTransport(runaway_model))
    raw_client = openai.OpenAI(api_key=None if args.live else "sk-offline", http_client=http)

    limits = [Limit("cost_usd", "0.01")]
    with RunGuard(
        Ledger(args.ledger), "org:acme/run:demo", limits=limits, pricing=Pricing()
    ) as run:
        client = wrap_openai(raw_client, run)  # the one line that adds the budget
        messages: list[Any] = [{"role": "user", "content": "Find the budgeteer docs."}]
        try:
            while True:
                reply = client.chat.completions.create(
                    model="gpt-4o", messages=messages, tools=TOOLS, max_completion_tokens=200
                )
                message = reply.choices[0].message
                print(f"call {run.report.model_calls}: spent ${run.usage.cost_usd} so far")
                if not message.tool_calls:
                    break
                messages.append(message.model_dump(exclude_none=True))
                for tool_call in message.tool_calls:
                    run.tool_call("search")
                    messages.append(
                        {"role": "tool", "tool_call_id": tool_call.id, "content": "no results"}
                    )
        except BudgetExceeded as error:
            print(
                f"stopped before call {run.report.model_calls + 1}: {error.dimension} "
                f"would pass {error.limit} (used {error.used}, this call needs {error.requested})"
            )
    report = run.report
    print(f"status={report.status} calls={report.model_calls} cost=${report.cost_usd}")
    usage = report.usage
    print(f"tokens: {usage.input_tokens} in ({usage.cache_read_tokens} cached), "
          f"{usage.output_tokens} out")  # fmt: skip


if __name__ == "__main__":
    main()
