"""Time the LiteLLM wrapper adds per model call, against the same loop calling LiteLLM bare.

Each round makes ``--calls`` real ``litellm.completion`` calls answered by LiteLLM's own
``mock_response`` (a response with a usage block, so every guarded call is planned, reserved,
normalised, priced and committed). The figure is (guarded round - bare round) / calls, the median
over ``--runs`` interleaved rounds, for a ``RunGuard`` on a memory ledger and on a SQLite file,
with and without a ``Policy`` (downgrade rung and max_tokens clamp), and for a stream read to its
end. Runs in the LiteLLM environment:

    .venv-litellm/bin/python benchmarks/bench_litellm.py [--calls 50] [--runs 15] [--cpu]

``--cpu`` times the process's CPU (all threads) rather than the wall clock: steadier when other
programs share the machine. Prints its figures; it does not write docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from litellm import ModelResponse

from budgeteer import Degrade, Ledger, Limit, Policy, RunGuard
from budgeteer.integrations.litellm import BudgetedLiteLLM, LiteLLMPricing

MESSAGES = [{"role": "user", "content": "Summarise the incident report in three bullet points."}]
ANSWER = ModelResponse(
    choices=[{"index": 0, "message": {"role": "assistant", "content": "- a\n- b\n- c"}}],
    usage={"prompt_tokens": 900, "completion_tokens": 80, "total_tokens": 980},
)
TEXT = "A streamed answer of a few dozen characters."


def bare(calls: int, stream: bool, clock: Callable[[], float] = time.perf_counter) -> float:
    started = clock()
    for _ in range(calls):
        if stream:
            for _chunk in litellm.completion(
                model="gpt-4o",
                messages=MESSAGES,
                max_tokens=256,
                mock_response=TEXT,
                stream=True,
                stream_options={"include_usage": True},
            ):
                pass
        else:
            litellm.completion(
                model="gpt-4o", messages=MESSAGES, max_tokens=256, mock_response=ANSWER
            )
    return clock() - started


def guarded(
    ledger: Ledger,
    policy: Policy | None,
    calls: int,
    stream: bool,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    limits = [Limit("cost_usd", "1000000")]
    started = clock()
    with RunGuard(
        ledger, "org:bench/run:1", limits=limits, pricing=LiteLLMPricing(), policy=policy
    ) as run:
        llm = BudgetedLiteLLM(run)
        for _ in range(calls):
            if stream:
                for _chunk in llm.completion(
                    model="gpt-4o", messages=MESSAGES, max_tokens=256, mock_response=TEXT,
                    stream=True,
                ):  # fmt: skip
                    pass
            else:
                llm.completion(
                    model="gpt-4o", messages=MESSAGES, max_tokens=256, mock_response=ANSWER
                )
    return clock() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="time process CPU (all threads) instead of wall time: steadier on a shared machine",
    )
    args = parser.parse_args()
    clock = time.process_time if args.cpu else time.perf_counter
    policy = Policy(ladder=[Degrade.downgrade(to="gpt-4o-mini", at=0.8)])
    with tempfile.TemporaryDirectory() as tmp:
        memory = Ledger("memory://")
        sqlite = Ledger(f"sqlite:///{Path(tmp) / 'bench.db'}")
        cases: dict[str, Callable[[], float]] = {
            "bare": lambda: bare(args.calls, stream=False, clock=clock),
            "memory": lambda: guarded(memory, None, args.calls, stream=False, clock=clock),
            "sqlite": lambda: guarded(sqlite, None, args.calls, stream=False, clock=clock),
            "sqlite + policy": lambda: guarded(
                sqlite, policy, args.calls, stream=False, clock=clock
            ),
            "bare stream": lambda: bare(args.calls, stream=True, clock=clock),
            "sqlite stream": lambda: guarded(sqlite, None, args.calls, stream=True, clock=clock),
        }
        for case in cases.values():
            case()  # warm-up (imports, caches, the SQLite file)
        # Interleaved rounds, so load from other processes hits every case alike.
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, case in cases.items():
                times[name].append(case())
        print(
            f"python {platform.python_version()}, litellm {version('litellm')}, "
            f"{args.calls} calls per round, {'CPU' if args.cpu else 'wall'} time"
        )
        for base, names in (
            ("bare", ("memory", "sqlite", "sqlite + policy")),
            ("bare stream", ("sqlite stream",)),
        ):
            per_call = statistics.median(times[base]) / args.calls * 1e3
            print(f"{base}: {per_call:.3f} ms per call")
            for name in names:
                added = [
                    (t - b) / args.calls * 1e3
                    for t, b in zip(times[name], times[base], strict=True)
                ]
                print(
                    f"  {name}: +{statistics.median(added):.3f} ms per call "
                    f"(median of {args.runs} rounds)"
                )
        memory.close()
        sqlite.close()


if __name__ == "__main__":
    main()
