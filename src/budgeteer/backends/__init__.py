"""Where counters live. A backend is chosen by URL:

* ``memory://``: in-process, thread-safe (``MemoryBackend``).
* ``sqlite:///relative.db``, ``sqlite:////absolute.db``: one file shared by the processes of a
  host (``SQLiteBackend``); ``?durability=power-loss`` fsyncs every transaction.
* ``redis://host:port/db``, ``rediss://...``: one budget for every process on every host
  (``RedisBackend``, extra ``budgeteer[redis]``); one Lua script call per operation.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from budgeteer.backends.base import Backend
from budgeteer.errors import BackendUnavailable, InvalidInput
from budgeteer.model import Usage


def open_backend(
    url: str,
    on_store_down: str = "raise",
    emergency: Usage | None = None,
    *,
    asynchronous: bool = False,
) -> Backend:
    """Open the backend named by ``url``, with its store-down policy.

    Network stores (Redis) are always wrapped in ``ResilientBackend`` (commits are retried);
    other stores only when a policy other than ``"raise"`` is asked for. For an async ledger
    with the default policy, Redis is opened with redis-py's asyncio client
    (``AsyncRedisBackend``, which retries its own commits); the other policies run the sync
    wrapper in a worker thread.

    Raises:
        InvalidInput: unknown scheme, malformed URL or policy.
    """
    if (
        asynchronous
        and on_store_down == "raise"
        and emergency is None
        and isinstance(url, str)
        and urlsplit(url).scheme in _REDIS_SCHEMES
    ):
        from budgeteer.backends.redis import AsyncRedisBackend

        return AsyncRedisBackend(url)  # type: ignore[return-value]
    backend = _open(url)
    if on_store_down != "raise" or emergency is not None or backend.remote:
        from budgeteer.backends.resilient import ResilientBackend

        return ResilientBackend(backend, on_store_down, emergency)  # type: ignore[arg-type]
    return backend


_REDIS_SCHEMES = ("redis", "rediss", "unix")


def _open(url: str) -> Backend:
    if not isinstance(url, str):
        raise InvalidInput("url", url, "expected a backend URL such as 'sqlite:///budget.db'")
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from budgeteer.backends.memory import MemoryBackend

        return MemoryBackend(url)
    if scheme == "sqlite":
        import sqlite3

        from budgeteer.backends.sqlite import SQLiteBackend

        try:
            return SQLiteBackend.from_url(url)
        except (sqlite3.Error, OSError) as error:
            raise BackendUnavailable(url, "open", repr(error)) from error
    if scheme in _REDIS_SCHEMES:
        from budgeteer.backends.redis import RedisBackend

        return RedisBackend.from_url(url)
    raise InvalidInput(
        "url", url, "unknown backend; use memory://, sqlite:///path.db or redis://host:port/db"
    )


__all__ = ["Backend", "open_backend"]
