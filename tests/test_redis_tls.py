"""``rediss://``: the Redis backend over TLS, against a private TLS-only server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal

import pytest

from budgeteer import AsyncLedger, BackendUnavailable, BudgetExceeded, Ledger, Limit, Usage
from tests._redis_server import find_binary, private_tls_server

PATH = "org:acme/repo:api/session:tls"


@pytest.fixture(scope="module")
def rediss_url() -> Iterator[str]:
    binary = find_binary()
    try:
        if binary is None:
            raise RuntimeError("no redis-server binary")
        with private_tls_server(binary) as (url, _):
            yield url
    except RuntimeError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true needs a TLS-capable redis-server: {error}")
        pytest.skip(f"no TLS-capable redis-server: {error}")


def test_the_ledger_works_over_tls(rediss_url: str) -> None:
    with Ledger(rediss_url + "&prefix=tls-sync") as ledger:
        ledger.set_limit("org:acme", Limit("cost_usd", "1"))
        spent = Usage(requests=1, cost_usd=Decimal("0.6"))
        ledger.commit(ledger.reserve(PATH, spent), spent)
        with pytest.raises(BudgetExceeded) as caught:
            ledger.reserve(PATH, spent)
        assert (caught.value.scope, caught.value.dimension) == ("org:acme", "cost_usd")
        assert ledger.usage("org:acme").used.cost_usd == Decimal("0.6")
        assert ledger.peek(PATH).remaining("cost_usd") == Decimal("0.4")


async def test_the_async_ledger_works_over_tls(rediss_url: str) -> None:
    ledger = AsyncLedger(rediss_url + "&prefix=tls-async")
    try:
        await ledger.set_limit("org:acme", Limit("requests", 2))
        for _ in range(2):
            reservation = await ledger.reserve(PATH, Usage(requests=1))
            await ledger.commit(reservation, Usage(requests=1))
        with pytest.raises(BudgetExceeded):
            await ledger.reserve(PATH, Usage(requests=1))
    finally:
        await ledger.close()


def test_a_plain_connection_to_a_tls_port_is_a_backend_error(rediss_url: str) -> None:
    plain = rediss_url.replace("rediss://", "redis://").split("?")[0]
    with Ledger(plain + "?prefix=tls-plain") as ledger, pytest.raises(BackendUnavailable):
        ledger.reserve(PATH, Usage(requests=1))


def test_an_untrusted_certificate_is_refused(rediss_url: str) -> None:
    # The system CAs do not know the self-signed certificate.
    unverified = rediss_url.split("?", maxsplit=1)[0]
    with Ledger(unverified + "?prefix=tls-untrusted") as ledger, pytest.raises(BackendUnavailable):
        ledger.reserve(PATH, Usage(requests=1))
