"""Worker leases: local admission from a held slice, exact at the cap, bounded past expiry."""

from __future__ import annotations

import multiprocessing
import secrets
from typing import Any

import pytest

from budgeteer import BudgetExceeded, InvalidInput, Ledger, Limit, Usage
from budgeteer.lease import Lease, LeasePool
from budgeteer.testing import FakeClock

ORG = "org:acme"
ONE = Usage(requests=1)


def test_a_lease_is_a_hold_spent_locally(ledger: Ledger) -> None:
    ledger.set_limit(ORG, Limit("requests", 10))
    with Lease.take(ledger, f"{ORG}/w:1", Usage(requests=6), ttl_s=60) as lease:
        assert ledger.usage(ORG).held.requests == 6
        assert [lease.try_admit(ONE) for _ in range(7)] == [True] * 6 + [False]
        assert lease.remaining == Usage()
        with pytest.raises(BudgetExceeded):  # the slice is held: others cannot spend it
            ledger.reserve(f"{ORG}/w:2", Usage(requests=5))
    usage = ledger.usage(ORG)
    assert (usage.used.requests, usage.held.requests) == (6, 0)


def test_unspent_slice_is_freed_on_close(ledger: Ledger) -> None:
    ledger.set_limit(ORG, Limit("requests", 10))
    lease = Lease.take(ledger, ORG, Usage(requests=8), ttl_s=60)
    assert lease.try_admit(Usage(requests=3))
    charge = lease.close()
    assert charge is not None
    assert charge.usage.requests == 3
    assert lease.close() is None
    assert not lease.try_admit(ONE)
    assert ledger.peek(ORG).remaining("requests") == 7


def test_pool_admits_exactly_up_to_the_cap(ledger: Ledger) -> None:
    ledger.set_limit(ORG, Limit("requests", 1000))
    admitted = 0
    with LeasePool(ledger, f"{ORG}/w:1", Usage(requests=64), ttl_s=60) as pool:
        with pytest.raises(BudgetExceeded):
            while True:
                pool.admit(ONE)
                admitted += 1
    assert admitted == 1000
    assert ledger.usage(ORG).used.requests == 1000
    assert ledger.usage(ORG).held.requests == 0
    # Mostly local: far fewer round trips than admissions.
    assert pool.leases_taken < 40


def test_a_lease_stops_admitting_before_its_hold_expires(clock: FakeClock) -> None:
    ledger = Ledger("memory://", clock=clock)
    lease = Lease.take(ledger, ORG, Usage(requests=100), ttl_s=10, safety_margin_s=1)
    clock.advance(8.9)
    assert lease.try_admit(ONE)
    clock.advance(0.2)
    assert not lease.try_admit(ONE)


def test_overshoot_past_an_expired_lease_is_bounded_by_its_slice() -> None:
    # Worst case: the store's clock runs ahead of the lease holder's, past the safety margin.
    store_clock, holder_clock = FakeClock(), FakeClock()
    store = Ledger("memory://", clock=store_clock)
    store.set_limit(ORG, Limit("requests", 100))
    holder = Ledger(store._backend, clock=holder_clock)
    slice_size = 30
    lease = Lease.take(holder, f"{ORG}/w:1", Usage(requests=slice_size), ttl_s=10)
    store_clock.advance(11)  # the store reclaims the hold; the holder still thinks it is live
    others = 0
    with pytest.raises(BudgetExceeded):
        while True:
            store.commit(store.reserve(f"{ORG}/w:2", ONE), ONE)
            others += 1
    local = sum(lease.try_admit(ONE) for _ in range(slice_size + 5))
    lease.close()
    assert others == 100
    assert local == slice_size
    assert store.usage(ORG).used.requests <= 100 + slice_size  # the documented bound


def test_bad_lease_arguments(ledger: Ledger) -> None:
    with pytest.raises(InvalidInput) as bad_slice:
        LeasePool(ledger, ORG, Usage())
    assert bad_slice.value.field == "slice"
    with pytest.raises(InvalidInput) as bad_margin:
        Lease.take(ledger, ORG, ONE, ttl_s=1, safety_margin_s=2)
    assert bad_margin.value.field == "safety_margin_s"


def _pool_worker(url: str, index: int, results: Any) -> None:
    ledger = Ledger(url)
    admitted = 0
    with LeasePool(ledger, f"{ORG}/w:{index}", Usage(requests=50), ttl_s=60) as pool:
        try:
            while True:
                pool.admit(ONE)
                admitted += 1
        except BudgetExceeded:
            pass
    results.put(admitted)


def test_four_processes_with_lease_pools_end_exactly_at_the_cap(redis_url: str) -> None:
    url = f"{redis_url}?prefix=lease{secrets.token_hex(4)}"
    with Ledger(url) as ledger:
        ledger.set_limit(ORG, Limit("requests", 5000))
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    workers = [ctx.Process(target=_pool_worker, args=(url, i, results)) for i in range(4)]
    for worker in workers:
        worker.start()
    counts = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert sum(counts) == 5000
    with Ledger(url) as ledger:
        usage = ledger.usage(ORG)
        assert (usage.used.requests, usage.held.requests) == (5000, 0)
