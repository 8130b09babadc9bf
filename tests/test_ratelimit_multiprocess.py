"""Eight processes share "100 per second" for five simulated seconds, on SQLite and on Redis,
and never exceed it in any one-second window.

Simulated time: the parent holds the time in a shared ``multiprocessing.Value`` and moves it in
steps of 50 ms. At each step every worker makes three ``try_acquire`` calls and all meet at a
barrier before the time moves on, so every decision made "at" a step really is made at that
time (Redis runs with ``?time=client``: the ledger's clock, i.e. this shared one, instead of
the server's). The eight processes still race for the store within each step: only the store's
atomic admit keeps them at 100.

The window is a rolling second kept in one-second buckets, so after a full second the next
second's 100 wait until the first bucket has left (t + 2 s): exactly 100 per two seconds under
saturation, 300 in five seconds (the accuracy bound of ``budgeteer.limiters.rates``).
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from budgeteer import Limiter, Rate
from tests.conftest import backend_url

CTX = multiprocessing.get_context("spawn")
WORKERS = 8
STEP_S = 0.05
STEPS = 100  # five simulated seconds
ATTEMPTS = 3  # per worker and step: 24 asks per 50 ms, 480 per second against 100 allowed
T0 = 1_767_571_200.0
PATH = "org:acme/key:shared"

pytestmark = pytest.mark.stress


class SharedClock:
    """Reads the parent's simulated time."""

    def __init__(self, shared: Any) -> None:
        self._shared = shared

    def now(self) -> float:
        return float(self._shared.value)

    def monotonic(self) -> float:
        return float(self._shared.value) - T0


def _worker(url: str, shared: Any, barrier: Any, results: Any) -> None:
    clock = SharedClock(shared)
    limiter = Limiter(url, clock=clock)
    admitted: list[float] = []
    try:
        for _ in range(STEPS):
            barrier.wait(60)
            now = clock.now()
            admitted.extend(now for _ in range(ATTEMPTS) if limiter.try_acquire(PATH))
            barrier.wait(60)
    finally:
        results.put(admitted)
        limiter.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_eight_processes_share_100_per_second(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = backend_url(kind, tmp_path, request)
    shared = CTX.Value("d", T0)
    setup = Limiter(url, clock=SharedClock(shared))
    setup.set_limits(PATH, Rate.per_second(100))
    setup.close()
    barrier = CTX.Barrier(WORKERS + 1)
    results = CTX.Queue()
    workers = [
        CTX.Process(target=_worker, args=(url, shared, barrier, results)) for _ in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    try:
        for step in range(STEPS):
            shared.value = T0 + step * STEP_S
            barrier.wait(120)  # the step begins
            barrier.wait(120)  # every worker has asked
        stamps = sorted(t for _ in workers for t in results.get(timeout=60))
    finally:
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
    assert all(worker.exitcode == 0 for worker in workers)

    # Never more than 100 in any window of one second (every step is a window start).
    for step in range(STEPS):
        start = T0 + step * STEP_S
        in_window = sum(1 for t in stamps if start <= t < start + 1.0 - 1e-9)
        assert in_window <= 100, (start - T0, in_window)
    # Exact under saturation: 100 at 0 s, 2 s and 4 s (see the module doc).
    assert len(stamps) == 300
    seconds = [int(round(t - T0, 6)) for t in stamps]
    assert {s: seconds.count(s) for s in set(seconds)} == {0: 100, 2: 100, 4: 100}
