"""SQLite connections are pooled: short-lived threads reuse them, concurrent ones get their own."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from budgeteer import BudgetExceeded, Ledger, Limit, Usage

PATH = "org:acme/session:s1"


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every connection sqlite3 opened, by database path."""
    opened: list[str] = []
    real: Callable[..., sqlite3.Connection] = sqlite3.connect

    def counting(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(str(database))
        return real(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", counting)
    return opened


def _in_thread(work: Callable[[], object]) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def test_a_thread_per_operation_reuses_one_connection(tmp_path: Path, connects: list[str]) -> None:
    # Agent frameworks admit each tool call from a fresh executor thread.
    ledger = Ledger(f"sqlite:///{tmp_path}/b.db")
    ledger.set_limit(PATH, Limit("tool_calls", 100))
    for _ in range(20):
        _in_thread(lambda: ledger.admit(PATH, Usage(tool_calls=1)))
    assert ledger.usage(PATH).used.tool_calls == 20
    assert len(connects) == 1
    ledger.close()


def test_concurrent_threads_each_get_a_connection_and_count_exactly(
    tmp_path: Path, connects: list[str]
) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path}/b.db")
    ledger.set_limit(PATH, Limit("requests", 150))
    barrier = threading.Barrier(8)
    admitted: list[int] = []

    def worker() -> None:
        barrier.wait()
        for _ in range(40):
            try:
                reservation = ledger.reserve(PATH, Usage(requests=1))
            except BudgetExceeded:
                continue
            ledger.commit(reservation, Usage(requests=1))
            admitted.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == ledger.usage(PATH).used.requests == 150
    assert 1 <= len(connects) <= 8
    ledger.close()


def test_a_failed_operation_leaves_a_usable_connection(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path}/b.db")
    ledger.set_limit(PATH, Limit("requests", 1))
    ledger.admit(PATH, Usage(requests=1))
    with pytest.raises(BudgetExceeded):
        ledger.admit(PATH, Usage(requests=1))
    ledger.set_limit(PATH, Limit("requests", 2))
    ledger.admit(PATH, Usage(requests=1))
    assert ledger.usage(PATH).used.requests == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path}/b.db")
    ledger.set_limit(PATH, Limit("requests", 10))
    ledger.admit(PATH, Usage(requests=1))  # the parent's connection is idle in the pool
    pid = os.fork()
    if pid == 0:  # the child: count one, then leave without running the parent's cleanup
        code = 1
        try:
            ledger.admit(PATH, Usage(requests=1))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ledger.admit(PATH, Usage(requests=1))  # the parent's connection still works
    assert ledger.usage(PATH).used.requests == 3
