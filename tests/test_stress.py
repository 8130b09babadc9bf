"""Many processes racing for one budget: exactly the cap wins, never more at any moment.

Runs on every shared backend (a SQLite file, a real Redis server). Each worker is a separate
(spawned) process with its own ``Ledger`` on the same store, as real agents would be. Workers
report counts rather than raising, so a failure shows every worker's view at once.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from budgeteer import BudgetExceeded, Ledger, Limit, Usage

pytestmark = pytest.mark.stress

WORKERS = 8
ATTEMPTS = 10_000
CAP = 50_000
POLL_INTERVAL_S = 0.002
TOP = "org:o"
ONE_UNIT = Usage(requests=1)

# Spawned children start clean (no inherited locks, threads or SQLite handles); the worker
# functions below are module-level so that the children can import them.
CTX = multiprocessing.get_context("spawn")


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh shared store; Redis uses the server's clock and a key prefix of its own."""
    if request.param == "sqlite":
        # An absolute path after "sqlite:///" gives the four slashes SQLAlchemy's form expects.
        return f"sqlite:///{(tmp_path / 'stress.db').resolve()}"
    base = request.getfixturevalue("redis_url")
    return f"{base}?prefix=stress{secrets.token_hex(6)}"


@dataclass
class WorkerReport:
    """What one worker saw; plain data so that it pickles back to the parent."""

    path: str
    committed: int = 0
    denied: int = 0
    bad_denials: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    over_cap_after_hold: int = 0
    """Reservations whose own post-hold limit state had ``used + held > max``."""


@dataclass
class PollReport:
    """What the observer process saw while the workers ran."""

    polls: int = 0
    max_used_plus_held: int = 0
    errors: list[str] = field(default_factory=list)


def _worker(url: str, path: str, start: Any, results: Any) -> None:
    report = WorkerReport(path)
    try:
        ledger = Ledger(url)
        start.wait()
        for _ in range(ATTEMPTS):
            try:
                reservation = ledger.reserve(path, ONE_UNIT)
            except BudgetExceeded as denial:
                report.denied += 1
                if (denial.scope, denial.dimension, denial.limit) != (TOP, "requests", CAP):
                    report.bad_denials.append(repr(vars(denial)))
                continue
            except Exception as error:  # noqa: BLE001 - every other exception is reported back
                report.errors.append(repr(error))
                continue
            for state in reservation.limit_states:
                if state.used + state.held > state.max_units:
                    report.over_cap_after_hold += 1
            try:
                ledger.commit(reservation, ONE_UNIT)
            except Exception as error:  # noqa: BLE001 - reported back, asserted empty
                report.errors.append(repr(error))
                continue
            report.committed += 1
        ledger.close()
    except Exception as error:  # noqa: BLE001 - reported back, asserted empty
        report.errors.append(repr(error))
    results.put(report)


def _poller(url: str, start: Any, stop: Any, results: Any) -> None:
    report = PollReport()
    try:
        ledger = Ledger(url)
        start.wait()
        while not stop.is_set():
            for limit in ledger.peek(TOP).limits:
                total = int(limit.used) + int(limit.held)
                report.max_used_plus_held = max(report.max_used_plus_held, total)
            report.polls += 1
            time.sleep(POLL_INTERVAL_S)
        ledger.close()
    except Exception as error:  # noqa: BLE001 - reported back, asserted empty
        report.errors.append(repr(error))
    results.put(report)


def _collect(results: Any, workers: list[Any], timeout_s: float = 300.0) -> list[WorkerReport]:
    # Read the queue before joining (a child cannot exit while its report is unflushed), and
    # fail fast if a worker died without reporting instead of waiting out the timeout.
    reports: list[WorkerReport] = []
    deadline = time.monotonic() + timeout_s
    while len(reports) < len(workers):
        try:
            reports.append(results.get(timeout=1))
        except queue.Empty:
            dead = [w.exitcode for w in workers if not w.is_alive()]
            assert len(dead) < len(workers), f"workers exited without reporting: {dead}"
            assert time.monotonic() < deadline, "workers did not finish in time"
    return reports


def _race(url: str, path_of: Callable[[int], str]) -> tuple[list[WorkerReport], PollReport]:
    with Ledger(url) as ledger:
        ledger.set_limit(TOP, Limit("requests", CAP))
    start = CTX.Event()
    stop = CTX.Event()
    results = CTX.Queue()
    polls = CTX.Queue()
    workers = [
        CTX.Process(target=_worker, args=(url, path_of(i), start, results)) for i in range(WORKERS)
    ]
    poller = CTX.Process(target=_poller, args=(url, start, stop, polls))
    for process in [*workers, poller]:
        process.start()
    start.set()
    reports = _collect(results, workers)
    stop.set()
    poll_report = polls.get(timeout=60)
    for process in [*workers, poller]:
        process.join(timeout=60)
        assert process.exitcode == 0
    return reports, poll_report


def _check_race(
    url: str, reports: list[WorkerReport], poll_report: PollReport, leaf_scopes: bool
) -> None:
    assert [r.errors for r in reports] == [[]] * WORKERS
    assert [r.bad_denials for r in reports] == [[]] * WORKERS
    assert [r.over_cap_after_hold for r in reports] == [0] * WORKERS
    assert sum(r.committed for r in reports) == CAP
    assert sum(r.denied for r in reports) == WORKERS * ATTEMPTS - CAP
    assert poll_report.errors == []
    assert poll_report.polls > 0
    assert poll_report.max_used_plus_held <= CAP
    with Ledger(url) as ledger:
        top = ledger.usage(TOP)
        assert top.used.requests == CAP
        assert top.held.requests == 0
        assert [(h.used, h.held) for h in ledger.peek(TOP).limits] == [(CAP, 0)]
        if leaf_scopes:
            for report in reports:
                assert ledger.usage(report.path).used.requests == report.committed


def test_eight_processes_one_level_path_commit_exactly_the_cap(url: str) -> None:
    reports, poll_report = _race(url, lambda _: TOP)
    _check_race(url, reports, poll_report, leaf_scopes=False)


def test_eight_processes_four_level_paths_commit_exactly_the_top_cap(url: str) -> None:
    reports, poll_report = _race(url, lambda i: f"{TOP}/team:t/eng:e/session:{i}")
    _check_race(url, reports, poll_report, leaf_scopes=True)
    with Ledger(url) as ledger:
        for scope in (f"{TOP}/team:t", f"{TOP}/team:t/eng:e"):
            assert ledger.usage(scope).used.requests == CAP


# --------------------------------------------------------------------------------------------
# A process killed with SIGKILL while it holds reservations

KILL_CAP = 10
KILL_COMMITTED = 3
KILL_TTL_S = 2.0


def _commit_then_hold_forever(url: str, ready: Any) -> None:
    ledger = Ledger(url)
    for _ in range(KILL_COMMITTED):
        ledger.commit(ledger.reserve(TOP, ONE_UNIT), ONE_UNIT)
    holds = [
        ledger.reserve(f"{TOP}/run:doomed", ONE_UNIT, ttl_s=KILL_TTL_S)
        for _ in range(KILL_CAP - KILL_COMMITTED)
    ]
    ready.put(max(h.expires_at for h in holds))
    time.sleep(600)  # until SIGKILL


def test_sigkilled_process_keeps_commits_and_its_holds_return_after_ttl(url: str) -> None:
    with Ledger(url) as ledger:
        ledger.set_limit(TOP, Limit("requests", KILL_CAP))
        ready = CTX.Queue()
        child = CTX.Process(target=_commit_then_hold_forever, args=(url, ready))
        child.start()
        expires_at = ready.get(timeout=60)
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=10)
        assert child.exitcode == -signal.SIGKILL

        usage = ledger.usage(TOP)
        assert (usage.used.requests, usage.held.requests) == (KILL_COMMITTED, 7)
        with pytest.raises(BudgetExceeded) as refused:
            ledger.reserve(TOP, ONE_UNIT)
        assert (refused.value.scope, refused.value.used, refused.value.held) == (TOP, 3, 7)

        time.sleep(max(0.0, expires_at - time.time()) + 0.05)
        hold = ledger.reserve(TOP, Usage(requests=KILL_CAP - KILL_COMMITTED))
        usage = ledger.usage(TOP)
        assert (usage.used.requests, usage.held.requests) == (KILL_COMMITTED, 7)
        assert ledger.usage(f"{TOP}/run:doomed").held.requests == 0
        ledger.release(hold)
        assert ledger.usage(TOP).used.requests == KILL_COMMITTED
