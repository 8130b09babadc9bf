"""Shared fixtures: one list of backends, applied to every contract test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from budgeteer import AsyncLedger, Ledger
from budgeteer.testing import FakeClock

BACKENDS = ["memory", "sqlite"]


def backend_url(kind: str, tmp_path: Path) -> str:
    """A fresh URL of backend ``kind`` (SQLite files live in the test's tmp dir)."""
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    raise ValueError(kind)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_ledger(
    backend_kind: str, tmp_path: Path, clock: FakeClock
) -> Iterator[Callable[[], Ledger]]:
    """Open (another) ledger on the same store, so tests can act as a second process would."""
    opened: list[Ledger] = []
    url = backend_url(backend_kind, tmp_path)
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
def async_ledger(backend_kind: str, tmp_path: Path, clock: FakeClock) -> AsyncLedger:
    return AsyncLedger(backend_url(backend_kind, tmp_path), clock=clock)
