"""What only the SQLite backend does: held totals kept on limited pairs only, file versions.

Every behaviour here is also part of the contract (tests/test_ledger_contract.py) or the model
(tests/test_ledger_model.py); these tests pin the cases that the SQLite layout makes delicate.
Two ledgers on one file act as two processes (each caches a path's limits on its own).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from budgeteer import BudgetExceeded, InvalidInput, Ledger, Limit, Usage
from budgeteer.backends.sqlite import SCHEMA_VERSION


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def held_totals(tmp_path: Path) -> dict[tuple[str, str], int]:
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        rows = conn.execute("SELECT scope, dimension, held FROM totals").fetchall()
    return {(scope, dimension): held for scope, dimension, held in rows}


def test_a_limit_set_while_holds_are_out_counts_them(url: str) -> None:
    first, second = Ledger(url), Ledger(url)
    hold = first.reserve("org:a/s:1", Usage(input_tokens=10, requests=1))
    first.reserve("org:a/s:2", Usage(input_tokens=1))  # a cached path, before the limit exists

    second.set_limit("org:a", Limit("input_tokens", 15))

    assert second.peek("org:a/s:1").limits[0].held == 11
    with pytest.raises(BudgetExceeded) as refused:
        first.reserve("org:a/s:2", Usage(input_tokens=5))
    assert refused.value.used == 0
    first.commit(hold, Usage(input_tokens=4, requests=1))
    assert second.peek("org:a/s:2").limits[0].used == 4
    assert second.peek("org:a/s:2").limits[0].held == 1
    first.reserve("org:a/s:2", Usage(input_tokens=10))  # 4 used + 1 + 10 held = 15


def test_a_removed_limit_leaves_no_held_total_behind(url: str, tmp_path: Path) -> None:
    first, second = Ledger(url), Ledger(url)
    first.set_limit("org:a", Limit("requests", 10))
    hold = first.reserve("org:a/s:1", Usage(requests=3))
    expired_later = first.reserve("org:a/s:1", Usage(requests=2), ttl_s=1)

    assert second.remove_limit("org:a", "requests")
    assert held_totals(tmp_path).get(("org:a", "requests"), 0) == 0
    first.commit(hold, Usage(requests=1))
    assert held_totals(tmp_path).get(("org:a", "requests"), 0) == 0

    second.set_limit("org:a", Limit("requests", 10))
    assert first.peek("org:a").limits[0].held == 2
    first.release(expired_later)
    assert first.peek("org:a").limits[0].held == 0
    assert first.peek("org:a").limits[0].used == 1
    assert min(held_totals(tmp_path).values()) == 0


def test_usage_sums_the_live_holds_of_unlimited_dimensions(url: str) -> None:
    ledger = Ledger(url)
    ledger.set_limit("org:a", Limit("requests", 100))
    ledger.reserve("org:a/s:1", Usage(requests=2, output_tokens=7))
    ledger.reserve("org:a", Usage(output_tokens=1))
    ledger.reserve("org:ab/s:1", Usage(output_tokens=50))  # a sibling whose name starts alike

    usage = ledger.usage("org:a")
    assert (usage.held.requests, usage.held.output_tokens) == (2, 8)
    assert ledger.usage("org:a/s:1").held.output_tokens == 7
    assert ledger.usage("org:ab").held.output_tokens == 50
    assert ledger.usage("org:a/s:2").held.output_tokens == 0


def test_prune_keeps_a_scope_with_a_hold_on_an_unlimited_dimension(url: str) -> None:
    ledger = Ledger(url)
    ledger.set_limit("org:a/user:u", Limit("requests", 5))
    hold = ledger.reserve("org:a/user:u/s:1", Usage(output_tokens=3))
    assert ledger.prune("org:a/user:u") is False
    ledger.release(hold)
    assert ledger.prune("org:a/user:u") is True


def test_a_file_of_the_previous_version_opens_and_is_marked(url: str, tmp_path: Path) -> None:
    ledger = Ledger(url)
    ledger.set_limit("org:a", Limit("requests", 10))
    hold = ledger.reserve("org:a/s:1", Usage(requests=2, output_tokens=5))
    ledger.close()
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        # Version 2 kept a held total on every pair, limited or not.
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        conn.execute("INSERT INTO totals VALUES ('org:a', 'output_tokens', 0, 5)")
        conn.execute("INSERT INTO totals VALUES ('org:a/s:1', 'output_tokens', 0, 5)")

    reopened = Ledger(url)
    reopened.commit(hold, Usage(requests=1, output_tokens=4))
    usage = reopened.usage("org:a")
    assert (usage.used.requests, usage.used.output_tokens) == (1, 4)
    assert usage.held.output_tokens == 0
    reopened.set_limit("org:a", Limit("output_tokens", 100))
    assert {(h.dimension, h.held) for h in reopened.peek("org:a").limits} == {
        ("requests", 0),
        ("output_tokens", 0),
    }
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert int(version) == SCHEMA_VERSION


def test_a_file_of_a_newer_version_is_refused(url: str, tmp_path: Path) -> None:
    Ledger(url).close()
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    with pytest.raises(InvalidInput) as refused:
        Ledger(url)
    assert refused.value.field == "path"
