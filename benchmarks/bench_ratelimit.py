"""Rate-limit checks per second, in memory and on Redis, beside `limits` and `pyrate-limiter`.

Usage: python benchmarks/bench_ratelimit.py [--seconds 1.0] [--rounds 5] [--no-write]
Uses REDIS_URL if reachable, else starts a private redis-server (as the tests do).
Writes the "Rate limits" section of docs/benchmarks.md.

A *check* is one single-threaded call that asks whether one request may pass and records it if
so: `Limiter.try_acquire(path)` here, `hit()` for `limits`, `try_acquire(blocking=False)` for
`pyrate-limiter`. Every library limits "100 per second" on one key, so after the first 100 of
each second the checks are refusals, as in a saturated limiter. The cases run in interleaved
rounds (each case once per round, in turn); a figure is the median round, and a ratio is taken
within each round against `limits`' moving window (memory) or sliding-window counter (Redis),
then its median is kept.

The sweep: the cost of an *admitted* check while the window holds half of its limit L ("L per
minute", pre-filled with L/2 admitted checks, then L/4 more timed). `limits`' moving window keeps
one entry per hit and inserts at the front of a list (memory) or reads entry L of a list
(Redis), so its cost grows with L; a budgeteer check touches the current bucket only.
"""

from __future__ import annotations

import argparse
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import limits
import pyrate_limiter
import redis
from limits import parse
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from pyrate_limiter import Duration, InMemoryBucket, RedisBucket
from pyrate_limiter import Limiter as PyrateLimiter
from pyrate_limiter import Rate as PyrateRate

from budgeteer import Limiter, Rate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests._redis_server import session_server  # noqa: E402 - needs the repo root on sys.path

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench_ratelimit:begin -->", "<!-- bench_ratelimit:end -->"
Check = Callable[[], object]


def rate(check: Check, seconds: float) -> float:
    count, started = 0, time.perf_counter()
    while True:
        for _ in range(50):
            check()
        count += 50
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return count / elapsed


# -- the cases: each builds a fresh limiter and returns one check ------------------------------


def ours(url: str, spec: Rate) -> Check:
    limiter = Limiter(url)
    path = f"key:b{secrets.token_hex(4)}"
    limiter.set_limits(path, spec)
    return lambda: limiter.try_acquire(path)


def limits_check(strategy: type, storage: object, text: str) -> Check:
    limiter = strategy(storage)
    item, key = parse(text), secrets.token_hex(4)
    return lambda: limiter.hit(item, key)


def pyrate_check(bucket: object) -> Check:
    limiter = PyrateLimiter(bucket)
    key = secrets.token_hex(4)
    return lambda: limiter.try_acquire(key, blocking=False)


def memory_cases() -> dict[str, Callable[[], Check]]:
    storage = MemoryStorage()
    return {
        "budgeteer memory, Rate.per_second(100)": lambda: ours("memory://", Rate.per_second(100)),
        "limits moving window (MemoryStorage)": lambda: limits_check(
            MovingWindowRateLimiter, storage, "100/second"
        ),
        "limits sliding-window counter (MemoryStorage)": lambda: limits_check(
            SlidingWindowCounterRateLimiter, storage, "100/second"
        ),
        "pyrate-limiter InMemoryBucket": lambda: pyrate_check(
            InMemoryBucket([PyrateRate(100, Duration.SECOND)])
        ),
    }


def redis_cases(url: str) -> dict[str, Callable[[], Check]]:
    storage = RedisStorage(url)
    client = redis.Redis.from_url(url)
    return {
        "budgeteer redis, Rate.per_second(100)": lambda: ours(
            f"{url}?prefix=bench{secrets.token_hex(4)}", Rate.per_second(100)
        ),
        "limits moving window (RedisStorage)": lambda: limits_check(
            MovingWindowRateLimiter, storage, "100/second"
        ),
        "limits sliding-window counter (RedisStorage)": lambda: limits_check(
            SlidingWindowCounterRateLimiter, storage, "100/second"
        ),
        "pyrate-limiter RedisBucket": lambda: pyrate_check(
            RedisBucket.init(
                [PyrateRate(100, Duration.SECOND)], client, f"bench{secrets.token_hex(4)}"
            )
        ),
    }


def interleaved(
    cases: dict[str, Callable[[], Check]], baseline: str, seconds: float, rounds: int
) -> list[tuple[str, float, float]]:
    """(case, median checks/s, median ratio to the baseline within a round)."""
    checks = {name: build() for name, build in cases.items()}
    for check in checks.values():  # warm up: first hits, script loads, connections
        for _ in range(200):
            check()
    figures: dict[str, list[float]] = {name: [] for name in cases}
    ratios: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        measured = {name: rate(check, seconds) for name, check in checks.items()}
        for name, value in measured.items():
            figures[name].append(value)
            ratios[name].append(value / measured[baseline])
    return [
        (name, statistics.median(figures[name]), statistics.median(ratios[name])) for name in cases
    ]


# -- the sweep ----------------------------------------------------------------------------------


def sweep_cost(make: Callable[[int], Check], size: int, budget_s: float) -> float:
    """Microseconds per admitted check with the window half full ("size per minute")."""
    timed, spent = 0, 0.0
    while spent < budget_s or timed < 200:
        check = make(size)
        for _ in range(size // 2):
            check()
        count = max(1, size // 4)
        started = time.perf_counter()
        for _ in range(count):
            check()
        spent += time.perf_counter() - started
        timed += count
    return spent / timed * 1e6


def sweep(redis_url: str | None, sizes: list[int], budget_s: float) -> list[list[str]]:
    storage = MemoryStorage()
    makers: dict[str, Callable[[int], Check]] = {
        "budgeteer memory": lambda n: ours("memory://", Rate.per_minute(n)),
        "limits moving window (memory)": lambda n: limits_check(
            MovingWindowRateLimiter, storage, f"{n}/minute"
        ),
    }
    if redis_url is not None:
        redis_storage = RedisStorage(redis_url)
        makers["budgeteer redis"] = lambda n: ours(
            f"{redis_url}?prefix=bench{secrets.token_hex(4)}", Rate.per_minute(n)
        )
        makers["limits moving window (redis)"] = lambda n: limits_check(
            MovingWindowRateLimiter, redis_storage, f"{n}/minute"
        )
    rows = []
    for name, make in makers.items():
        row = [name]
        for size in sizes:
            # Redis cases fill the window through the network: keep them to the smaller sizes.
            if "redis" in name and size > 20_000:
                row.append("")
                continue
            row.append(f"{sweep_cost(make, size, budget_s):.1f}")
        rows.append(row)
    return rows


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per case and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sweep-seconds", type=float, default=0.3, help="per case and size")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--memory-only", action="store_true", help="only the in-process cases (implies --no-write)"
    )
    args = parser.parse_args()

    if args.memory_only:
        for name, value, ratio in interleaved(
            memory_cases(), "limits moving window (MemoryStorage)", args.seconds, args.rounds
        ):
            print(f"{name:50s} {value:>12,.0f} checks/s  {ratio:5.2f}x")
        return
    with session_server() as url:
        if url is None:
            raise SystemExit("no Redis server: set REDIS_URL or install redis-server")
        server = redis.Redis.from_url(url).info("server")["redis_version"]
        memory = interleaved(
            memory_cases(), "limits moving window (MemoryStorage)", args.seconds, args.rounds
        )
        remote = interleaved(
            redis_cases(url),
            "limits sliding-window counter (RedisStorage)",
            args.seconds,
            args.rounds,
        )
        sizes = [100, 1_000, 10_000, 100_000]
        rows = sweep(url, sizes, args.sweep_seconds)
    table = render(memory, remote, sizes, rows, server, args)
    print(table)
    if not args.no_write:
        write(table)


def render(
    memory: list[tuple[str, float, float]],
    remote: list[tuple[str, float, float]],
    sizes: list[int],
    rows: list[list[str]],
    server: str,
    args: argparse.Namespace,
) -> str:
    lines = [
        "## Rate-limit checks (`benchmarks/bench_ratelimit.py`)",
        "",
        f"`python benchmarks/bench_ratelimit.py --seconds {args.seconds:g} --rounds "
        f"{args.rounds} --sweep-seconds {args.sweep_seconds:g}`, one run, "
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()} CPython "
        f"{platform.python_version()}, limits {limits.__version__}, pyrate-limiter "
        f"{pyrate_limiter.__version__ if hasattr(pyrate_limiter, '__version__') else _pyrate()}, "
        f"Redis {server} on loopback (redis-py {redis.__version__}). One thread; every limiter "
        'allows "100 per second" on one key, so most checks are refusals, as when saturated. '
        "Interleaved rounds; figure = median round; ratio = median of the per-round ratios to "
        "the baseline.",
        "",
        "| case | checks/s | vs baseline |",
        "| --- | ---: | ---: |",
    ]
    for name, value, ratio in memory:
        note = " (baseline)" if "moving window" in name else ""
        lines.append(f"| {name}{note} | {value:,.0f} | {ratio:.2f}x |")
    for name, value, ratio in remote:
        note = " (baseline)" if "sliding-window counter" in name else ""
        lines.append(f"| {name}{note} | {value:,.0f} | {ratio:.2f}x |")
    lines += [
        "",
        "Sweep: microseconds per *admitted* check with the window half full (limit L per "
        "minute, L/2 admitted first, then L/4 timed):",
        "",
        "| case | " + " | ".join(f"L={size:,}" for size in sizes) + " |",
        "| --- | " + " | ".join("---:" for _ in sizes) + " |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _pyrate() -> str:
    from importlib.metadata import version

    return version("pyrate-limiter")


def write(table: str) -> None:
    text = DOC.read_text()
    block = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in text:
        start, end = text.index(BEGIN), text.index(END) + len(END)
        text = text[:start] + block + text[end:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


if __name__ == "__main__":
    main()
