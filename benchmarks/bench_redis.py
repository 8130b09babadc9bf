"""Reserve+commit cycles per second on Redis, beside the peer `limits` and the bare floors.

Usage: python benchmarks/bench_redis.py [--seconds 10] [--rounds 5] [--no-write]
Uses REDIS_URL if reachable, else starts a private redis-server (as the tests do).
Writes the "Redis" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import limits
import redis
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter

from budgeteer import LeasePool, Ledger, Limit, Usage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests._redis_server import session_server  # noqa: E402 - needs the repo root on sys.path

PATH_1 = "org:acme"
PATH_4 = "org:acme/team:search/engineer:e17/session:7f3c"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench_redis:begin -->", "<!-- bench_redis:end -->"


def rate(cycle: Callable[[], object], seconds: float) -> float:
    count, started = 0, time.perf_counter()
    while True:
        for _ in range(20):
            cycle()
        count += 20
        now = time.perf_counter()
        if now - started >= seconds:
            return count / (now - started)


def ledger_cycle(url: str, path: str) -> Callable[[], object]:
    ledger = Ledger(f"{url}?prefix=bench{secrets.token_hex(4)}")
    scopes = path.split("/")
    for depth in range(1, len(scopes) + 1):
        ledger.set_limit("/".join(scopes[:depth]), Limit("requests", 10**15))
    usage = Usage(requests=1)

    def cycle() -> object:
        return ledger.commit(ledger.reserve(path, usage), usage)

    return cycle


def lease_cycle(url: str, path: str) -> Callable[[], object]:
    ledger = Ledger(f"{url}?prefix=bench{secrets.token_hex(4)}")
    scopes = path.split("/")
    for depth in range(1, len(scopes) + 1):
        ledger.set_limit("/".join(scopes[:depth]), Limit("requests", 10**15))
    pool = LeasePool(ledger, path, Usage(requests=1000), ttl_s=60)
    usage = Usage(requests=1)
    return lambda: pool.admit(usage)


def limits_cycle(url: str) -> Callable[[], object]:
    limiter = FixedWindowRateLimiter(RedisStorage(url))
    item = limits.parse("1000000000/hour")
    key = secrets.token_hex(4)
    return lambda: limiter.hit(item, key)


def evalsha_cycle(url: str) -> Callable[[], object]:
    return redis.Redis.from_url(url).register_script("return 1")  # type: ignore[no-any-return]


def ping_cycle(url: str) -> Callable[[], object]:
    return redis.Redis.from_url(url).ping


def _process(url: str, path: str, seconds: float, start: Any, results: Any) -> None:
    cycle = ledger_cycle(url, path) if path else limits_cycle(url)
    start.wait()
    results.put(rate(cycle, seconds))


def parallel(url: str, path: str, seconds: float, processes: int = 8) -> float:
    """Aggregate cycles/s of ``processes`` processes on one budget (``path=""``: limits hits)."""
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(target=_process, args=(url, path, seconds, start, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    time.sleep(1.0)  # let every child import and connect
    start.set()
    total = sum(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="time per case, all rounds")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median kept)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    with session_server() as url:
        if url is None:
            raise SystemExit("no Redis server: set REDIS_URL or install redis-server")
        cases = [
            ("redis-py PING (floor: one round trip)", ping_cycle(url), "floor"),
            ("bare EVALSHA `return 1`", evalsha_cycle(url), "floor"),
            ("limits FixedWindow hit (RedisStorage)", limits_cycle(url), "peer: one hit"),
            ("budgeteer reserve+commit, 1 level", ledger_cycle(url, PATH_1), "2 round trips"),
            ("budgeteer reserve+commit, 4 levels", ledger_cycle(url, PATH_4),
             "target >= 45% of limits"),
            ("budgeteer LeasePool admission, 4 levels, slice 1000", lease_cycle(url, PATH_4),
             "target >= 10x the row above"),
        ]  # fmt: skip
        rounds = []
        for index in range(args.rounds):
            rounds.append([rate(cycle, args.seconds / args.rounds) for _, cycle, _ in cases])
            print(f"round {index + 1}/{args.rounds} done", flush=True)
        results = []
        for i, (name, _, note) in enumerate(cases):
            values = sorted(r[i] for r in rounds)
            ratios = sorted(r[i] / r[2] for r in rounds)
            results.append((name, values[len(values) // 2], note, ratios[len(ratios) // 2]))
        per_process = args.seconds / 2
        for name, path in (("8 processes: budgeteer, 1 level", PATH_1),
                           ("8 processes: budgeteer, 4 levels", PATH_4),
                           ("8 processes: limits hits", "")):  # fmt: skip
            results.append((name, parallel(url, path, per_process), "aggregate", float("nan")))
        server = str(redis.Redis.from_url(url).info("server")["redis_version"])
    for name, value, note, ratio in results:
        print(f"{name:45s} {value:>10,.0f}/s  {ratio:7.1%}  {note}")
    if not args.no_write:
        write(results, server)


def write(results: list[tuple[str, float, str, float]], server: str) -> None:
    lines = [
        BEGIN,
        "## Redis reserve+commit cycles (`benchmarks/bench_redis.py`)",
        "",
        f"Redis {server} on loopback, redis-py {redis.__version__} with hiredis, limits "
        f"{limits.__version__}, {platform.machine()} CPython {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}. One process unless said; single-process cases run in "
        "interleaved rounds (median kept; the ratio is to the `limits` hit of the same round). "
        "A budgeteer cycle is two script calls (reserve, commit) on a path with a `requests` "
        "limit on every scope, using the server's clock.",
        "",
        "| case | per second | vs one `limits` hit | note |",
        "| --- | ---: | ---: | --- |",
        *[
            f"| {name} | {value:,.0f} | {'' if math.isnan(ratio) else f'{ratio:.1%}'} | {note} |"
            for name, value, note, ratio in results
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
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
