"""Time ``wrap_openai`` adds to each call of the real OpenAI client, beside the same loop without.

Usage: python benchmarks/bench_integrations_clients.py [--calls 500] [--rounds 5]
Prints a table (docs/benchmarks.md is the lead's to update).

Both loops run the real ``openai.OpenAI`` client over an ``httpx2.MockTransport`` that answers at
once with a recorded body, so the SDK's own work (request building, JSON parsing, pydantic
models, SSE decoding) is in both and the difference is what budgeteer adds per call: the policy
plan, the prompt estimate, the priced reservation on every scope of a 4-level path, usage
normalisation, and the priced commit (two SQLite transactions), and for streams the metering of
every chunk.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import openai

from budgeteer import Ledger, Limit, Pricing, RunGuard
from budgeteer.integrations import usage_from_openai
from budgeteer.integrations.openai import wrap_openai

PATH = "org:acme/team:search/engineer:e17/session:7f3c"
CLOCK = time.perf_counter
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "integrations" / "fixtures"
COMPLETION = (FIXTURES / "openai_chat_tool_call.json").read_bytes()
STREAM = (FIXTURES / "openai_chat_stream.sse").read_bytes()
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a careful coding agent."},
    {"role": "user", "content": "Fix the failing test in tests/test_api.py " * 20},
]


def reply(request: httpx2.Request) -> httpx2.Response:
    if b'"stream":true' in request.content:
        return httpx2.Response(200, content=STREAM, headers={"content-type": "text/event-stream"})
    return httpx2.Response(200, content=COMPLETION, headers={"content-type": "application/json"})


def raw_client() -> openai.OpenAI:
    http = httpx2.Client(transport=httpx2.MockTransport(reply))
    return openai.OpenAI(api_key="sk-bench", http_client=http, max_retries=0)


def run_calls(client: openai.OpenAI, calls: int, *, stream: bool) -> float:
    started = CLOCK()
    for _ in range(calls):
        if stream:
            for _chunk in client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, max_completion_tokens=256, stream=True
            ):
                pass
        else:
            client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, max_completion_tokens=256
            )
    return (CLOCK() - started) / calls


def bare(calls: int, *, stream: bool) -> float:
    return run_calls(raw_client(), calls, stream=stream)


def wrapped(url: str, calls: int, *, stream: bool) -> float:
    with Ledger(url) as ledger:
        scopes = PATH.split("/")
        for depth in range(1, len(scopes) + 1):
            ledger.set_limit("/".join(scopes[:depth]), Limit("cost_usd", "1000000"))
        with RunGuard(ledger, PATH, pricing=Pricing()) as run:
            return run_calls(wrap_openai(raw_client(), run), calls, stream=stream)


def by_hand(url: str, calls: int) -> float:
    """The same calls under a RunGuard used by hand: model_call + settle around the raw client."""
    with Ledger(url) as ledger:
        scopes = PATH.split("/")
        for depth in range(1, len(scopes) + 1):
            ledger.set_limit("/".join(scopes[:depth]), Limit("cost_usd", "1000000"))
        with RunGuard(ledger, PATH, pricing=Pricing()) as run:
            client = raw_client()
            started = CLOCK()
            for _ in range(calls):
                with run.model_call("gpt-4o", prompt=MESSAGES, max_tokens=256) as call:
                    reply_ = client.chat.completions.create(
                        model="gpt-4o", messages=MESSAGES, max_completion_tokens=256
                    )
                    call.settle(usage_from_openai(reply_.usage))
            return (CLOCK() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500, help="calls per case per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median kept)")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="count this process's CPU time (user + system), not wall time: steadier on a "
        "shared machine, and SQLite in WAL mode with synchronous=NORMAL does no fsync per commit",
    )
    args = parser.parse_args()
    global CLOCK  # noqa: PLW0603 (a benchmark switch, set once before any timing)
    CLOCK = time.process_time if args.cpu else time.perf_counter
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/clients.db"
        groups: list[list[tuple[str, Callable[[int], float]]]] = [
            [
                ("chat.completions.create, no budgeteer", lambda n: bare(n, stream=False)),
                ("  wrap_openai, memory://", lambda n: wrapped("memory://", n, stream=False)),
                ("  wrap_openai, sqlite (4-level path)", lambda n: wrapped(db, n, stream=False)),
                ("  RunGuard by hand, sqlite (4-level path)", lambda n: by_hand(db, n)),
            ],
            [
                ("stream=True (23 chunks), no budgeteer", lambda n: bare(n, stream=True)),
                ("  wrap_openai, memory://", lambda n: wrapped("memory://", n, stream=True)),
                ("  wrap_openai, sqlite (4-level path)", lambda n: wrapped(db, n, stream=True)),
            ],
        ]
        for group in groups:
            group[0][1](20)  # warm up imports and caches
            rounds = [[case(args.calls) for _, case in group] for _ in range(args.rounds)]
            for index, (name, _) in enumerate(group):
                per_call = sorted(r[index] for r in rounds)[len(rounds) // 2]
                overhead = sorted(r[index] - r[0] for r in rounds)[len(rounds) // 2]
                extra = f"  overhead {overhead * 1e6:8.1f} µs" if index else ""
                print(f"{name:42s} {per_call * 1e6:9.1f} µs/call{extra}", flush=True)
    print(
        f"({platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"openai {openai.__version__}, {args.calls} calls x {args.rounds} interleaved rounds, "
        f"median, {'CPU' if args.cpu else 'wall'} time)"
    )


if __name__ == "__main__":
    main()
