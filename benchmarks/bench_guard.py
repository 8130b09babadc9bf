"""Time the run guard adds to each model call, beside the same loop without budgeteer.

Usage: python benchmarks/bench_guard.py [--calls 2000] [--rounds 5] [--no-write]
Writes the "Guard overhead" section of docs/benchmarks.md.

The "model" answers at once with an OpenAI-shaped usage block, so the difference between the
two loops is exactly what budgeteer adds: the plan, the priced reservation, the usage
normalisation, the priced commit (two ledger transactions on SQLite), per call.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from budgeteer import Degrade, Ledger, Limit, Policy, Pricing
from budgeteer.guard import RunGuard
from budgeteer.integrations import usage_from_openai

PATH = "org:acme/team:search/engineer:e17/session:7f3c"
DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench_guard:begin -->", "<!-- bench_guard:end -->"
MESSAGES = [
    {"role": "system", "content": "You are a careful coding agent."},
    {"role": "user", "content": "Fix the failing test in tests/test_api.py " * 20},
]


def fake_model(model: str, messages: object, max_tokens: int | None) -> dict[str, object]:
    """Stands in for the provider: returns a response with a usage block, at once."""
    return {
        "model": model,
        "choices": [{"message": {"role": "assistant", "content": "done"}}],
        "usage": {
            "prompt_tokens": 230,
            "completion_tokens": 40,
            "prompt_tokens_details": {"cached_tokens": 128},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }


def bare_loop(calls: int) -> float:
    """Seconds per call of the loop without budgeteer."""
    started = time.perf_counter()
    for _ in range(calls):
        fake_model("gpt-4o", MESSAGES, 256)
    return (time.perf_counter() - started) / calls


def guarded_loop(url: str, calls: int, policy: Policy | None) -> float:
    """Seconds per call of the same loop under a RunGuard on ``url``."""
    with Ledger(url) as ledger:
        scopes = PATH.split("/")
        for depth in range(1, len(scopes) + 1):
            ledger.set_limit("/".join(scopes[:depth]), Limit("cost_usd", "1000000"))
        with RunGuard(ledger, PATH, pricing=Pricing(), policy=policy) as run:
            started = time.perf_counter()
            for _ in range(calls):
                plan = run.plan_call("gpt-4o", prompt=MESSAGES, max_tokens=256)
                model = plan.model or "gpt-4o"
                with run.model_call(model, prompt=MESSAGES, max_tokens=plan.max_tokens) as call:
                    response = fake_model(model, MESSAGES, plan.max_tokens)
                    call.settle(usage_from_openai(response["usage"]))
            elapsed = time.perf_counter() - started
    return elapsed / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000, help="model calls per case per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median kept)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    policy = Policy(ladder=(Degrade.downgrade(to="gpt-4o-mini", at=0.9),))
    with tempfile.TemporaryDirectory() as tmp:
        cases: list[tuple[str, Callable[[int], float]]] = [
            ("no budgeteer (the same loop)", bare_loop),
            ("RunGuard on memory://", lambda n: guarded_loop("memory://", n, None)),
            (
                "RunGuard on sqlite (4-level path)",
                lambda n: guarded_loop(f"sqlite:///{tmp}/a.db", n, None),
            ),
            (
                "RunGuard on sqlite + Policy (plan_call, ladder, clamp)",
                lambda n: guarded_loop(f"sqlite:///{tmp}/b.db", n, policy),
            ),
        ]
        rounds: list[list[float]] = []
        for index in range(args.rounds):
            rounds.append([run(args.calls) for _, run in cases])
            print(f"round {index + 1}/{args.rounds} done", flush=True)
    results: list[tuple[str, float, float]] = []
    for index, (name, _) in enumerate(cases):
        per_call = sorted(r[index] for r in rounds)[len(rounds) // 2]
        overhead = sorted(r[index] - r[0] for r in rounds)[len(rounds) // 2]
        results.append((name, per_call, overhead))
    for name, per_call, overhead in results:
        print(f"{name:58s} {per_call * 1e6:9.1f} µs/call  overhead {overhead * 1e6:9.1f} µs")
    if not args.no_write:
        write(results, args.calls)


def write(results: list[tuple[str, float, float]], calls: int) -> None:
    lines = [
        BEGIN,
        "## Guard overhead per model call (`benchmarks/bench_guard.py`)",
        "",
        f"One process on {platform.machine()} ({platform.python_implementation()} "
        f"{platform.python_version()}), {time.strftime('%Y-%m-%d')}, {calls} calls per case per "
        "round, interleaved rounds, median kept. The model answers at once with an OpenAI-shaped "
        "usage block, so the overhead column is everything budgeteer adds per call: "
        "`plan_call`, the priced estimate and its reservation on all 4 scopes of the path, "
        "usage normalisation, and the priced commit. Target: under 1 ms per call on SQLite.",
        "",
        "| loop | µs per call | overhead vs no budgeteer |",
        "| --- | ---: | ---: |",
        *[
            f"| {name} | {per_call * 1e6:,.1f} | {overhead * 1e6:,.1f} µs |"
            for name, per_call, overhead in results
        ],
        END,
    ]
    text = DOC.read_text()
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + "\n".join(lines) + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    DOC.write_text(text)


if __name__ == "__main__":
    main()
