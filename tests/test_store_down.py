"""Faults on a real Redis server: stopped mid-run and restarted, under each store-down policy.

Each test runs its own redis-server (AOF on, fsync on every write) on a free port, kills it with
SIGKILL, and starts it again on the same port and data directory.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from budgeteer import BackendUnavailable, BudgetExceeded, InvalidInput, Ledger, Limit, Usage
from tests._redis_server import find_binary, free_port, reachable

ORG = "org:acme"
RUN = "org:acme/run:r1"


class Server:
    """A redis-server we can SIGKILL and restart on the same port and AOF directory."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                   "--dir", str(self.directory), "--save", "", "--appendonly", "yes",
                   "--appendfsync", "always"]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not reachable(self.url):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def server(redis_url: str) -> Iterator[Server]:
    del redis_url  # only to share its skip/fail rule: with CI=true a missing Redis fails
    binary = find_binary()
    assert binary is not None
    directory = Path(tempfile.mkdtemp(prefix="budgeteer-aof-"))
    server = Server(binary, directory)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()
    shutil.rmtree(directory, ignore_errors=True)


def open_ledger(server: Server, **options: object) -> Ledger:
    return Ledger(f"{server.url}?prefix=f{secrets.token_hex(4)}", **options)  # type: ignore[arg-type]


def test_raise_policy_surfaces_the_outage_and_a_retried_commit_counts_once(
    server: Server,
) -> None:
    ledger = open_ledger(server)
    ledger.set_limit(ORG, Limit("requests", 10))
    ledger.commit(ledger.reserve(RUN, Usage(requests=1)), Usage(requests=1))
    hold = ledger.reserve(RUN, Usage(requests=1), ttl_s=600)
    server.kill()
    with pytest.raises(BackendUnavailable) as down:
        ledger.reserve(RUN, Usage(requests=1))
    assert down.value.operation == "reserve"
    with pytest.raises(BackendUnavailable):
        ledger.commit(hold, Usage(requests=1))
    server.start()  # AOF with fsync always: nothing committed is lost across the kill
    assert ledger.usage(ORG).used.requests == 1
    assert ledger.usage(ORG).held.requests == 1
    first = ledger.commit(hold, Usage(requests=1))
    again = ledger.commit(hold, Usage(requests=1))
    assert (first.replayed, again.replayed) == (False, True)
    assert ledger.usage(ORG).used.requests == 2
    assert ledger.usage(ORG).held.requests == 0


def test_deny_policy_refuses_and_delivers_queued_commits_once_back(server: Server) -> None:
    ledger = open_ledger(server, on_store_down="deny")
    ledger.set_limit(ORG, Limit("requests", 10))
    hold = ledger.reserve(RUN, Usage(requests=2), ttl_s=600)
    server.kill()
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve(RUN, Usage(requests=1))
    assert (refused.value.scope, refused.value.limit, refused.value.requested) == (RUN, 0, 1)
    assert isinstance(refused.value.__cause__, BackendUnavailable)
    queued = ledger.commit(hold, Usage(requests=2))
    assert queued.metadata["queued"] == "1"
    server.start()
    ledger.peek(ORG)  # any operation delivers the queue first
    usage = ledger.usage(ORG)
    assert (usage.used.requests, usage.held.requests) == (2, 0)
    assert ledger.commit(hold, Usage(requests=2)).replayed  # a later retry counts nothing


def test_allow_policy_spends_only_the_emergency_budget_and_loses_nothing(
    server: Server,
) -> None:
    ledger = open_ledger(server, on_store_down="allow", emergency=Usage(requests=2))
    ledger.set_limit(ORG, Limit("requests", 100))
    ledger.commit(ledger.reserve(RUN, Usage(requests=1)), Usage(requests=1))
    server.kill()
    admitted = [ledger.reserve(RUN, Usage(requests=1)) for _ in range(2)]
    with pytest.raises(BudgetExceeded):
        ledger.reserve(RUN, Usage(requests=1))
    for hold in admitted:
        ledger.commit(hold, Usage(requests=1))
    server.start()
    assert ledger.usage(ORG).used.requests == 1 + 2
    assert ledger.usage(RUN).used.requests == 3


def test_store_down_options_are_validated() -> None:
    with pytest.raises(InvalidInput) as bad_policy:
        Ledger("memory://", on_store_down="panic")  # type: ignore[arg-type]
    assert bad_policy.value.field == "on_store_down"
    with pytest.raises(InvalidInput) as no_budget:
        Ledger("memory://", on_store_down="allow")
    assert no_budget.value.field == "emergency"
