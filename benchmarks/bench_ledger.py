"""Reserve+commit cycles per second, budgeteer beside token-budget-py, in one run.

Usage: python benchmarks/bench_ledger.py [--seconds 2] [--no-write]
Writes the "Ledger cycles" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from token_budget import BudgetPool

from budgeteer import Ledger, Limit, Usage

PATH_1 = "org:acme"
PATH_4 = "org:acme/team:search/engineer:e17/session:7f3c"
DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench_ledger:begin -->", "<!-- bench_ledger:end -->"


def rate(cycle: Callable[[], object], seconds: float) -> float:
    """Cycles per second over one slice of ``seconds``."""
    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(100):
            cycle()
        count += 100
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


def ledger_cycle(ledger: Ledger, path: str) -> Callable[[], object]:
    scopes = path.split("/")
    for depth in range(1, len(scopes) + 1):
        ledger.set_limit("/".join(scopes[:depth]), Limit("requests", 10**15))
    usage = Usage(requests=1)

    def cycle() -> object:
        return ledger.commit(ledger.reserve(path, usage), usage)

    return cycle


def token_budget_cycle() -> Callable[[], object]:
    pool = BudgetPool(token_cap=10**15)

    def cycle() -> object:
        reservation = pool.try_reserve(tokens=1)
        reservation.commit(tokens=1)
        return reservation

    return cycle


def bare_sqlite_cycle(path: Path) -> Callable[[], object]:
    """The floor: one WAL transaction that checks and increments 4 counters."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE c (k TEXT PRIMARY KEY, used INTEGER, cap INTEGER) WITHOUT ROWID")
    keys = [(f"k{i}",) for i in range(4)]
    conn.executemany("INSERT INTO c VALUES (?, 0, 1000000000000)", keys)

    def cycle() -> object:
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute("SELECT used, cap FROM c WHERE k IN ('k0','k1','k2','k3')").fetchall()
        if all(used + 1 <= cap for used, cap in rows):
            conn.executemany("UPDATE c SET used = used + 1 WHERE k = ?", keys)
        conn.execute("COMMIT")
        return rows

    return cycle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per case per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median kept)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases: list[tuple[str, Callable[[], object], str]] = [
            ("token-budget-py (in-process, 1 level)", token_budget_cycle(), "peer"),
            ("budgeteer memory://, 1 level", ledger_cycle(Ledger(), PATH_1), ""),
            ("budgeteer memory://, 4 levels", ledger_cycle(Ledger(), PATH_4), "target >= 200,000"),
            (
                "bare SQLite WAL 4-counter check+increment (1 txn)",
                bare_sqlite_cycle(Path(tmp) / "bare.db"),
                "floor, 1 transaction",
            ),
            (
                "budgeteer sqlite, 1 level",
                ledger_cycle(Ledger(f"sqlite:///{tmp}/one.db"), PATH_1),
                "2 transactions",
            ),
            (
                "budgeteer sqlite, 4 levels",
                ledger_cycle(Ledger(f"sqlite:///{tmp}/four.db"), PATH_4),
                "target >= 10,000; 2 transactions",
            ),
            (
                "budgeteer sqlite, 4 levels, durability=power-loss",
                ledger_cycle(Ledger(f"sqlite:///{tmp}/full.db?durability=power-loss"), PATH_4),
                "fsync per transaction",
            ),
        ]
        # Rounds interleave the cases, so a noisy neighbour slows peers and budgeteer alike;
        # each case keeps its median round, and ratios are taken within a round.
        rounds: list[list[float]] = []
        for round_index in range(args.rounds):
            rounds.append([rate(cycle, args.seconds / args.rounds) for _, cycle, _ in cases])
            print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    results: list[tuple[str, float, str, float]] = []
    for index, (name, _, note) in enumerate(cases):
        values = sorted(r[index] for r in rounds)
        reference = 0 if index < 3 else 3  # in-process rows vs the peer; SQLite rows vs the floor
        ratios = sorted(r[index] / r[reference] for r in rounds)
        results.append((name, values[len(values) // 2], note, ratios[len(ratios) // 2]))
    for name, value, note, ratio in results:
        print(f"{name:55s} {value:>12,.0f} cycles/s  {ratio:6.1%}  {note}")
    if not args.no_write:
        write(results)


def write(results: list[tuple[str, float, str, float]]) -> None:
    lines = [
        BEGIN,
        "## Ledger reserve+commit cycles (`benchmarks/bench_ledger.py`)",
        "",
        f"One process, one thread, measured in one run on {platform.machine()} "
        f"({platform.python_implementation()} {platform.python_version()}), "
        f"{time.strftime('%Y-%m-%d')}. A cycle is `reserve(path, Usage(requests=1))` then "
        "`commit(...)`, with a `requests` limit on every scope of the path. The cases run in "
        "interleaved rounds; each figure is its median round, and the ratio is taken within "
        "a round against the peer (in-process rows) or the bare SQLite floor (SQLite rows).",
        "",
        "| case | cycles/s | vs peer / floor | note |",
        "| --- | ---: | ---: | --- |",
        *[
            f"| {name} | {value:,.0f} | {ratio:.1%} | {note} |"
            for name, value, note, ratio in results
        ],
        END,
    ]
    text = (
        DOC.read_text()
        if DOC.exists()
        else "# Benchmarks\n\nFigures measured by the scripts in `benchmarks/`.\n\n"
    )
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + "\n".join(lines) + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)


if __name__ == "__main__":
    main()
