"""What only the Redis backend does: server time, hash-tagged keys, one script per operation."""

from __future__ import annotations

import re
import secrets
from decimal import Decimal
from importlib import resources

import pytest
import redis
from redis.crc import key_slot

from budgeteer import BudgetExceeded, InvalidInput, Ledger, Limit, Usage, Window
from budgeteer.backends.redis import _script_text
from budgeteer.testing import FakeClock

ORG = "org:acme"


@pytest.fixture
def server_url(redis_url: str) -> str:
    """A fresh key prefix on the session's server, using the server's clock."""
    return f"{redis_url}?prefix=rt{secrets.token_hex(6)}"


def test_hosts_with_skewed_clocks_share_one_rolling_window(server_url: str) -> None:
    # Two hosts 30 s apart. With the server's TIME, both see the same window and TTLs.
    ahead = FakeClock(start=2_000_000_000.0 + 30)
    behind = FakeClock(start=2_000_000_000.0)
    first, second = Ledger(server_url, clock=ahead), Ledger(server_url, clock=behind)
    window = Window.rolling(seconds=60, granularity_s=1)
    first.set_limit(ORG, Limit("requests", 3, window))
    first.charge(f"{ORG}/host:a", Usage(requests=2))
    second.charge(f"{ORG}/host:b", Usage(requests=1))
    for ledger in (first, second):
        with pytest.raises(BudgetExceeded) as refused:
            ledger.reserve(f"{ORG}/host:x", Usage(requests=1))
        assert refused.value.used == 3
        # Measured from the server's clock, not the host's fake one 30 s or 4 years away.
        assert refused.value.retry_after is not None
        assert 59 <= refused.value.retry_after <= 62
    hold = second.reserve(f"{ORG}/host:b", Usage(tool_calls=1), ttl_s=30)
    assert [h.held for h in first.peek(ORG).limits] == [0]
    assert first.usage(ORG).held.tool_calls == 1
    second.release(hold)


def test_every_key_of_a_hierarchy_shares_one_hash_tag(redis_url: str) -> None:
    prefix = f"tag{secrets.token_hex(6)}"
    ledger = Ledger(f"{redis_url}?time=client&prefix={prefix}", clock=FakeClock())
    ledger.set_limit(ORG, Limit("cost_usd", 5, Window.daily()))
    hold = ledger.reserve(f"{ORG}/team:t/run:1", Usage(cost_usd=1), ttl_s=60)
    ledger.commit(hold, Usage(cost_usd="0.5"))
    ledger.reserve(f"{ORG}/team:t/run:2", Usage(cost_usd=1), ttl_s=60)
    client = redis.Redis.from_url(redis_url)
    keys = [k.decode() for k in client.scan_iter(match=f"{prefix}:*")]
    assert len(keys) >= 6
    assert all(k.startswith(f"{prefix}:{{{ORG}}}:") for k in keys)
    slots = {key_slot(k.encode()) for k in keys}  # the slot Redis Cluster would use
    assert len(slots) == 1


def test_a_calendar_window_the_client_has_not_seen_is_resolved_in_one_retry(
    server_url: str,
) -> None:
    writer, reader = Ledger(server_url), Ledger(server_url)
    writer.set_limit(ORG, Limit("requests", 1, Window.daily("Asia/Tokyo")))
    writer.charge(ORG, Usage(requests=1))
    with pytest.raises(BudgetExceeded) as refused:
        reader.reserve(ORG, Usage(requests=1))  # this client never saw the Tokyo window
    assert refused.value.window == Window.daily("Asia/Tokyo")
    assert refused.value.retry_after is not None
    assert 0 < refused.value.retry_after <= 86400


def test_bad_redis_options(redis_url: str) -> None:
    with pytest.raises(InvalidInput) as bad_time:
        Ledger(f"{redis_url}?time=sundial")
    assert bad_time.value.field == "url"
    with pytest.raises(InvalidInput) as bad_prefix:
        Ledger(f"{redis_url}?prefix={{x}}")
    assert bad_prefix.value.field == "url"


def test_the_password_never_appears_in_the_url(redis_url: str) -> None:
    host = redis_url.removeprefix("redis://")
    ledger = Ledger(f"redis://:s3cret@{host}?prefix=x")
    assert "s3cret" not in ledger.url


async def test_async_ledger_uses_the_asyncio_client_and_stays_exact(server_url: str) -> None:
    import asyncio

    from budgeteer import AsyncLedger
    from budgeteer.backends.redis import AsyncRedisBackend

    ledger = AsyncLedger(server_url)
    assert isinstance(ledger._backend, AsyncRedisBackend)
    await ledger.set_limit(ORG, Limit("requests", 25))

    async def agent(index: int) -> int:
        admitted = 0
        for _ in range(10):
            try:
                hold = await ledger.reserve(f"{ORG}/agent:{index}", Usage(requests=1))
            except BudgetExceeded:
                continue
            await ledger.commit(hold, Usage(requests=1))
            admitted += 1
        return admitted

    counts = await asyncio.gather(*(agent(i) for i in range(10)))
    assert sum(counts) == 25
    assert (await ledger.usage(ORG)).used.requests == 25
    await ledger.close()


def test_a_killed_connection_is_replaced_without_losing_or_doubling_a_hold(
    server_url: str, redis_url: str
) -> None:
    ledger = Ledger(server_url)
    ledger.set_limit(ORG, Limit("requests", 10))
    first = ledger.reserve(f"{ORG}/run:a", Usage(requests=1))
    admin = redis.Redis.from_url(redis_url)
    # Drop every normal client connection, ours included: the next call gets a broken socket.
    admin.client_kill_filter(_type="normal", skipme=True)
    second = ledger.reserve(f"{ORG}/run:a", Usage(requests=2))
    ledger.commit(first, Usage(requests=1))
    ledger.commit(second, Usage(requests=2))
    assert ledger.usage(ORG).used.requests == 3
    assert ledger.usage(ORG).held == Usage()
    admin.close()
    ledger.close()


def test_a_retried_reserve_counts_its_hold_once(server_url: str) -> None:
    # The script is idempotent by id: a reserve whose reply was lost and is sent again (as the
    # backend does once on a broken connection) finds its hold and adds nothing.
    ledger = Ledger(server_url)
    ledger.set_limit(ORG, Limit("requests", 10))
    backend = ledger._backend.inner  # type: ignore[attr-defined]
    args = ("org:acme#retry-1", f"{ORG}/run:a", (ORG, f"{ORG}/run:a"), {"requests": 4})
    first = backend.reserve(*args, 1.0, 301.0)
    again = backend.reserve(*args, 1.0, 301.0)
    assert [s.held for s in first] == [s.held for s in again] == [4]
    assert ledger.usage(ORG).held.requests == 4
    ledger.close()


def test_a_forked_child_uses_its_own_connection(server_url: str) -> None:
    import multiprocessing

    ledger = Ledger(server_url)
    ledger.set_limit(ORG, Limit("requests", 100))
    ledger.charge(f"{ORG}/run:parent", Usage(requests=1))  # the parent's connection is open
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_charge_five, args=(ledger,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    ledger.charge(f"{ORG}/run:parent", Usage(requests=1))
    assert ledger.usage(ORG).used.requests == 7
    ledger.close()


def _charge_five(ledger: Ledger) -> None:
    for _ in range(5):
        ledger.charge(f"{ORG}/run:child", Usage(requests=1))


def test_a_limit_changed_by_another_process_applies_to_the_next_reserve_and_commit(
    server_url: str,
) -> None:
    # Each backend caches a path's limits under the hierarchy's limits version; a change made
    # elsewhere bumps it, so the cached copy is never used once stale.
    cached, other = Ledger(server_url), Ledger(server_url)
    run = f"{ORG}/team:t/run:1"
    other.set_limit(ORG, Limit("requests", 10))
    hold = cached.reserve(run, Usage(requests=2))  # learns the limits
    cached.commit(cached.reserve(run, Usage(requests=1)), Usage(requests=1))  # uses the cache
    other.set_limit(f"{ORG}/team:t", Limit("requests", 3))
    with pytest.raises(BudgetExceeded) as refused:
        cached.reserve(run, Usage(requests=1))
    assert (refused.value.scope, refused.value.used, refused.value.held) == (f"{ORG}/team:t", 1, 2)
    # The commit checks overruns against the new limit too.
    charge = cached.commit(hold, Usage(requests=3))
    assert [(o.scope, o.used) for o in charge.overruns] == [(f"{ORG}/team:t", 4)]
    assert other.remove_limit(f"{ORG}/team:t", "requests")
    assert [s.max_units for s in cached.reserve(run, Usage(requests=1)).limit_states] == [10]


def test_a_commit_from_another_process_and_after_a_prune_uses_the_current_limits(
    server_url: str, redis_url: str
) -> None:
    first, second = Ledger(server_url), Ledger(server_url)
    run = f"{ORG}/run:1"
    first.set_limit(ORG, Limit("requests", 5))
    hold = first.reserve(run, Usage(requests=1))
    assert second.commit(hold.id, Usage(requests=6)).overruns[0].used == 6  # path unknown there
    # Every key gone, then a different limit: the version starts afresh, never reused.
    client = redis.Redis.from_url(redis_url)
    prefix = server_url.split("prefix=")[1]
    client.delete(*client.scan_iter(match=f"{prefix}:*"))
    second.set_limit(ORG, Limit("requests", 1))
    first.reserve(run, Usage(requests=1))
    with pytest.raises(BudgetExceeded):
        first.reserve(run, Usage(requests=1))
    client.close()


def test_the_unknown_cost_flag_is_set_again_after_a_prune(redis_url: str) -> None:
    # A backend stops adding the flag once it has set it under the current limits version; a
    # prune deletes the scope's counters and bumps the version, so the next commit adds it again,
    # even one sent with the version from before the prune (a late commit of an expired hold).
    clock = FakeClock()
    url = f"{redis_url}?time=client&prefix=uf{secrets.token_hex(6)}"
    ledger, other = Ledger(url, clock=clock), Ledger(url, clock=clock)
    run = f"{ORG}/run:1"
    ledger.commit(ledger.reserve(run, Usage(requests=1)), Usage(requests=1))
    assert ledger.usage(run).cost_unknown
    assert ledger.usage(ORG).cost_unknown
    late = ledger.reserve(run, Usage(requests=1), ttl_s=10)
    clock.advance(20)
    assert other.prune(run)  # the expired hold is reclaimed first
    assert not ledger.usage(run).cost_unknown
    assert ledger.commit(late, Usage(requests=1)).late
    assert ledger.usage(run).cost_unknown
    assert ledger.usage(run).used.requests == 1
    # A priced commit on a fresh path leaves its cost known.
    priced = f"{ORG}/run:2"
    usage = Usage(requests=1, cost_usd=Decimal("0.01"))
    ledger.commit(ledger.reserve(priced, usage), usage)
    assert not ledger.usage(priced).cost_unknown
    ledger.close()
    other.close()


def test_a_shorter_hold_lowers_the_expiry_bound_and_is_reclaimed_on_time(
    redis_url: str,
) -> None:
    # reserve.lua scans the expiry set only once the bound of the soonest expiry has passed.
    clock = FakeClock()
    ledger = Ledger(f"{redis_url}?time=client&prefix=ne{secrets.token_hex(6)}", clock=clock)
    ledger.set_limit(ORG, Limit("requests", 3))
    ledger.reserve(f"{ORG}/run:long", Usage(requests=1), ttl_s=100)
    ledger.reserve(f"{ORG}/run:short", Usage(requests=1), ttl_s=10)
    ledger.reserve(f"{ORG}/run:x", Usage(requests=1), ttl_s=100)
    clock.advance(10)
    ledger.reserve(f"{ORG}/run:y", Usage(requests=1), ttl_s=100)  # the short hold is reclaimed
    with pytest.raises(BudgetExceeded):
        ledger.reserve(f"{ORG}/run:z", Usage(requests=1), ttl_s=100)
    clock.advance(90)
    ledger.reserve(f"{ORG}/run:z", Usage(requests=2), ttl_s=100)  # the two first are reclaimed
    ledger.close()


def test_overruns_of_fifteen_digits_and_more_are_exact(server_url: str) -> None:
    # Lua writes a number into a string with %.14g; the scripts format these counters themselves.
    ledger = Ledger(server_url)
    ledger.set_limit(ORG, Limit("cost_usd", 100_000))  # 1e14 nano-dollars
    charged = ledger.charge(f"{ORG}/run:1", Usage(cost_usd="100000.000000001"))
    assert charged.overruns[0].used == Decimal("100000.000000001")
    hold = ledger.reserve(f"{ORG}/run:2", Usage(requests=1))
    committed = ledger.commit(hold, Usage(cost_usd="0.000000002"))
    assert committed.overruns[0].used == Decimal("100000.000000003")
    ledger.close()


def test_each_script_is_given_exactly_the_shared_functions_it_calls() -> None:
    lua = resources.files("budgeteer.backends").joinpath("lua")
    shared = re.findall(r"^local function (\w+)\(", lua.joinpath("_shared.lua").read_text(), re.M)
    used: set[str] = set()
    for name in ("ledger", "reserve", "commit", "admit"):
        text = _script_text(name)
        defined = re.findall(r"^local function (\w+)\(", text, re.M)
        assert len(defined) == len(set(defined)), name  # no shared function twice
        for function in shared:
            calls = text.replace(f"local function {function}(", "")
            called = re.search(rf"\b{function}\(", calls) is not None
            assert (function in defined) == called, (name, function)
            if called:
                used.add(function)
        assert text.endswith(lua.joinpath(f"{name}.lua").read_text())
    assert used == set(shared)  # nothing in _shared.lua is dead
