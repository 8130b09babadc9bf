"""An Anthropic client under a hard budget, ending with a graceful, streamed summary.

Offline by default: a mocked HTTP transport plays a model that keeps asking for one more search
(its replies carry real usage blocks: cache reads on top of ``input_tokens``, as Anthropic
reports them). When the $0.01 budget runs out, the policy's summary reserve pays for one last
call, sent without tools, whose streamed answer ends the run. Pass ``--live`` (with
``ANTHROPIC_API_KEY`` set) to run the same budget against the real API.

    python examples/anthropic_client_budget.py [--ledger sqlite:///budgets.db] [--live]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import anthropic
import httpx2

from budgeteer import Ledger, Limit, Policy, Pricing, RunGuard, Usage
from budgeteer.integrations.anthropic import wrap_anthropic

MODEL = "claude-haiku-4-5"
TOOLS: list[Any] = [
    {
        "name": "search",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]
USAGE = {"input_tokens": 180, "cache_read_input_tokens": 2048, "cache_creation_input_tokens": 0}


def runaway_model(request: httpx2.Request) -> httpx2.Response:
    """An offline stand-in: a search per turn; a summary once tools are refused (streamed)."""
    body = json.loads(request.content)
    turn = len(body["messages"])
    if body.get("tool_choice") == {"type": "none"}:
        text = f"Summary: searched {(turn - 2) // 2} times, found nothing; try the docs site."
        block: dict[str, Any] = {"type": "text", "text": text}
        delta = {"type": "text_delta", "text": text}
        stop, output_tokens = "end_turn", 19
    else:
        block = {"type": "tool_use", "id": f"toolu_{turn}", "name": "search", "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps({"query": f"try {turn}"})}
        stop, output_tokens = "tool_use", 40
    start = {"id": f"msg_{turn}", "type": "message", "role": "assistant", "model": MODEL,
             "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**USAGE, "output_tokens": 1}}  # fmt: skip
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"message": start}),
        ("content_block_start", {"index": 0, "content_block": {**block, "text": ""}
                                 if block["type"] == "text" else block}),
        ("content_block_delta", {"index": 0, "delta": delta}),
        ("content_block_stop", {"index": 0}),
        ("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                           "usage": {"output_tokens": output_tokens}}),
        ("message_stop", {}),
    ]  # fmt: skip
    sse = "".join(f"event: {k}\ndata: {json.dumps({'type': k, **d})}\n\n" for k, d in events)
    return httpx2.Response(200, text=sse, headers={"content-type": "text/event-stream"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ledger", default="memory://", help="ledger URL (default: memory://)")
    parser.add_argument("--live", action="store_true", help="call the real API")
    args = parser.parse_args()

    http = None if args.live else httpx2.Client(transport=httpx2.MockTransport(runaway_model))
    raw_client = anthropic.Anthropic(api_key=None if args.live else "offline", http_client=http)

    policy = Policy(
        on_exhausted="summary",  # keep back enough for one wrap-up call instead of raising
        summary_reserve=Usage(input_tokens=3000, output_tokens=300, requests=1),
        summary_model=MODEL,
    )
    limits = [Limit("cost_usd", "0.01")]
    ledger = Ledger(args.ledger)
    with RunGuard(
        ledger, "org:acme/run:demo", limits=limits, pricing=Pricing(), policy=policy
    ) as run:
        client = wrap_anthropic(raw_client, run)  # the one line that adds the budget
        messages: list[Any] = [{"role": "user", "content": "Find the budgeteer docs."}]
        while True:
            with client.messages.stream(
                model=MODEL, max_tokens=256, messages=messages, tools=TOOLS
            ) as stream:
                reply = stream.get_final_message()
            print(f"call {run.report.model_calls}: spent ${run.usage.cost_usd} so far")
            tool_uses = [block for block in reply.content if block.type == "tool_use"]
            if not tool_uses:  # the wrap-up call: no tools were offered
                print("final answer:", " ".join(b.text for b in reply.content if b.type == "text"))
                break
            messages.append({"role": "assistant", "content": reply.content})
            results = [
                {"type": "tool_result", "tool_use_id": block.id, "content": "no results"}
                for block in tool_uses
            ]
            for _ in tool_uses:
                run.tool_call("search")
            messages.append({"role": "user", "content": results})
    report = run.report
    print(f"status={report.status} wrapped_up={report.wrapped_up} calls={report.model_calls}")
    print(f"cost=${report.cost_usd} of $0.01")


if __name__ == "__main__":
    main()
