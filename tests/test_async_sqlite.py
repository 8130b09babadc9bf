"""AsyncLedger over SQLite: uncontended operations run on the loop, contended ones in a thread."""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from budgeteer import AsyncLedger, Limit, Usage

PATH = "org:acme/session:s1"


@pytest.fixture
def thread_hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every operation the async ledger sent to a worker thread, by function name."""
    hops: list[str] = []
    real = asyncio.to_thread

    async def counting(function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(function, "__name__", repr(function)))
        return await real(function, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counting)
    return hops


async def test_uncontended_operations_stay_on_the_loop(
    tmp_path: Path, thread_hops: list[str]
) -> None:
    ledger = AsyncLedger(f"sqlite:///{tmp_path}/b.db")
    await ledger.set_limit("org:acme", Limit("requests", 5))
    reservation = await ledger.reserve(PATH, Usage(requests=2))
    await ledger.commit(reservation, Usage(requests=1))
    await ledger.admit(PATH, Usage(requests=1))
    assert (await ledger.usage("org:acme")).used.requests == 2
    assert thread_hops == []
    await ledger.close()


async def test_a_locked_file_sends_the_operation_to_a_thread_and_the_loop_keeps_running(
    tmp_path: Path, thread_hops: list[str]
) -> None:
    ledger = AsyncLedger(f"sqlite:///{tmp_path}/b.db")
    await ledger.set_limit("org:acme", Limit("requests", 5))
    other_writer = open(f"{tmp_path}/b.db.lock", "a+b")  # noqa: SIM115 - held across awaits
    fcntl.flock(other_writer, fcntl.LOCK_EX)
    reserving = asyncio.create_task(ledger.reserve(PATH, Usage(requests=1)))
    ticks = 0
    for _ in range(5):  # the loop is not blocked while the reserve waits for the lock
        await asyncio.sleep(0.01)
        ticks += 1
    assert not reserving.done()
    fcntl.flock(other_writer, fcntl.LOCK_UN)
    other_writer.close()
    reservation = await asyncio.wait_for(reserving, 10)
    assert ticks == 5
    assert thread_hops == ["reserve"]
    assert (await ledger.usage("org:acme")).held.requests == 1
    assert reservation.usage.requests == 1
    await ledger.close()


async def test_power_loss_durability_always_uses_a_thread(
    tmp_path: Path, thread_hops: list[str]
) -> None:
    ledger = AsyncLedger(f"sqlite:///{tmp_path}/b.db?durability=power-loss")
    await ledger.set_limit("org:acme", Limit("requests", 5))
    await ledger.admit(PATH, Usage(requests=1))
    assert thread_hops == ["set_limit", "admit"]
    await ledger.close()
