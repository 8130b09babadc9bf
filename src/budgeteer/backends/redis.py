"""``redis://host:port/db`` (and ``rediss://``): one budget shared by every process on every host.

Every operation is one run of one Lua script (shipped as package data) and one round trip: the
whole reserve — every limit of every scope on the path — is checked and held atomically on the
server. The hot operations have lean scripts of their own (``lua/reserve.lua``,
``lua/commit.lua``, and ``lua/admit.lua`` for the rate limiter), because Redis runs a script's
whole chunk on every call; ``lua/ledger.lua`` runs the others, on the same keys with the same
rules, which live once in ``lua/_shared.lua`` (put before each script's text when it is loaded).
All keys of one hierarchy share a Cluster hash tag (the path's first segment), so every script
stays atomic on Redis Cluster too.

Each backend caches the limits of the paths it reserves on, under the hierarchy's limits
version (a key every limit change bumps), and sends them with a reserve or commit; the script
uses them only if the version is still current, and otherwise reads the limits itself and
returns them with the new version. So a limit set by any process applies to the very next
operation, while the common case skips reading every scope's limits on the server.

Time: by default the script reads the server's ``TIME``, so hosts with skewed clocks agree on
windows and TTLs. ``?time=client`` uses the ledger's clock instead (tests drive it with a fake
clock). Calendar periods depend on time zones, which Lua cannot compute: the client sends the
bounds of the current period of every calendar window it knows; when the server needs a period
the client did not send (a new window, or skew across a boundary), the script answers with the
server's time and the client retries once with bounds computed for it.

Options (URL query): ``time=server|client``, ``prefix=<key prefix>`` (default ``budgeteer``),
``cluster=true`` for Redis Cluster (any node's address; the client discovers the rest).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from budgeteer.backends.base import UNPRICED, CommitOutcome, Denial, ScopeMeters, path_prefixes
from budgeteer.errors import BudgeteerError, InvalidInput, ReservationSettled, UnknownReservation
from budgeteer.ledger._core import window_of
from budgeteer.model import LimitState

_hiredis_pack: Any
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis comes with the [redis] extra
    _hiredis_pack = None

_OPTIONS = {"time", "prefix", "cluster"}
_forks = [0]  # how many forks this process descends from: a child opens its own connections
if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))
_CACHED_PATHS = 4096
"""Paths whose limits a backend caches; the cache starts again empty when it is full."""
_OPEN_RESERVATIONS = 65536
"""Reservations whose path a backend remembers for their commit (ids of this process only)."""

_Limits = tuple[tuple[int, str, str, int], ...]
"""Every limit on a path: (scope number, 1 = top), dimension, window key, max; in the scripts'
order (by scope, then by "dimension|window")."""


class _Tail(NamedTuple):
    """The last script arguments of a call, the same on every call for a path: as a list, and
    packed once as RESP bulk strings (empty without hiredis) to be appended to each command."""

    args: list[Any]
    packed: bytes


def _tail(args: list[Any]) -> _Tail:
    if _hiredis_pack is None or not args:
        return _Tail(args, b"")
    packed: bytes = _hiredis_pack(tuple(args))
    return _Tail(args, packed[packed.index(b"\r\n") + 2 :])


_NO_TAIL = _Tail([], b"")
_Plan = tuple[bytes, _Tail, tuple[tuple[str, str, str, int], ...]]
"""A limits version, the script arguments naming the limits on some dimensions, and those
limits as (scope, dimension, window key, max)."""


_SHARED_BLOCK = re.compile(r"\n\n(?=(?:--[^\n]*\n)*local function (\w+)\()")


def _script_text(name: str = "ledger") -> str:
    """Script ``name`` as Redis runs it: the shared functions it calls (``lua/_shared.lua``), then
    its own text.

    A script pays for every function it defines on every call, so a shared one is put in only if
    the script, or a shared one put in, calls it (a function calls only those defined above it).
    """
    lua = resources.files("budgeteer.backends").joinpath("lua")
    own = lua.joinpath(f"{name}.lua").read_text()
    parts = _SHARED_BLOCK.split(lua.joinpath("_shared.lua").read_text())
    # parts: the file's header, then (function name, its block) pairs in the file's order
    needed, blocks = own, list[str]()
    for i in range(len(parts) - 2, 0, -2):
        if re.search(rf"\b{parts[i]}\(", needed):
            blocks.insert(0, parts[i + 1])
            needed += parts[i + 1]
    return "\n\n".join([*blocks, own])


class _RedisCore:
    """Everything but the I/O, shared by the sync and async backends: options, keys, calendar
    bounds, and the encoding of script calls and replies."""

    remote = True
    """A network store: outages go through the store-down policy."""

    def __init__(self, url: str, *, asynchronous: bool) -> None:
        try:
            import redis
        except ImportError as error:  # pragma: no cover - depends on the installed extras
            raise InvalidInput(
                "url", url, "the Redis backend needs the extra: pip install 'budgeteer[redis]'"
            ) from error
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        ours = {k: query.pop(k) for k in list(query) if k in _OPTIONS}
        time_source = ours.get("time", "server")
        if time_source not in ("server", "client"):
            raise InvalidInput("url", url, "time must be 'server' or 'client'")
        self._server_time = time_source == "server"
        self._prefix = ours.get("prefix", "budgeteer")
        if not self._prefix or any(c in self._prefix for c in "{}"):
            raise InvalidInput("url", url, "prefix must be non-empty and free of braces")
        cluster = ours.get("cluster", "false")
        if cluster not in ("true", "false"):
            raise InvalidInput("url", url, "cluster must be 'true' or 'false'")
        client_url = urlunsplit(parts._replace(query=urlencode(query)))
        netloc = parts.netloc
        if parts.password:
            netloc = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
        self.url = urlunsplit(parts._replace(netloc=netloc))
        # Every key an operation touches shares its hierarchy's hash tag: one slot, one node.
        if asynchronous:
            import redis.asyncio
            import redis.asyncio.cluster

            self._client: Any = (
                redis.asyncio.cluster.RedisCluster.from_url(client_url)
                if cluster == "true"
                else redis.asyncio.Redis.from_url(client_url)
            )
        else:
            import redis.cluster

            self._client = (
                redis.cluster.RedisCluster.from_url(client_url)
                if cluster == "true"
                else redis.Redis.from_url(client_url)
            )
        self._script = self._client.register_script(_script_text())
        # The hot paths' lean scripts (see the module docstring).
        self._reserve_script = self._client.register_script(_script_text("reserve"))
        self._commit_script = self._client.register_script(_script_text("commit"))
        self._admit_script = self._client.register_script(_script_text("admit"))
        # Calendar windows seen so far; their period bounds go with every call (see module doc).
        self._calendar: set[str] = set()
        self._lock = threading.Lock()
        # The limits cache (see the module docstring). Plain dicts: a lost race only makes a
        # script read the limits itself once more.
        self._path_limits: dict[str, tuple[bytes, _Limits]] = {}
        self._plans: dict[tuple[str, tuple[str, ...], bool], _Plan] = {}
        self._open: dict[str, str] = {}  # reservation id -> path, until its commit or release
        # path -> the limits version under which a commit of this backend set the unknown-cost
        # flag on every scope of the path (commit.lua then need not add it again).
        self._flagged: dict[str, bytes] = {}

    def _key(self, path: str) -> str:
        return f"{self._prefix}:{{{path.split('/', 1)[0]}}}"

    def _stamp(self, now: float) -> tuple[str, str]:
        """The leading script arguments: "now" ("" for the server's TIME) and calendar bounds."""
        stamp = "" if self._server_time else repr(now)
        if not self._calendar:  # read without the lock: a key added meanwhile is asked for again
            return stamp, ""
        with self._lock:
            keys = tuple(self._calendar)
        bounds = []
        for key in keys:
            start, end = window_of(key).period_bounds(now)
            bounds.append(f"{key}={start!r}:{end!r}")
        return stamp, ";".join(bounds)

    def _plan(self, path: str, amounts: Mapping[str, int], commit: bool) -> _Plan:
        """The script arguments for the cached limits of ``path`` on the dimensions of
        ``amounts``: for a reserve, after the scopes' hash keys; for a commit, without pacing
        limits (which pace admissions only). An empty version if the path's are not known."""
        key = (path, tuple(amounts), commit)
        plan = self._plans.get(key)
        known = self._path_limits.get(path)
        if plan is not None and known is not None and plan[0] is known[0]:
            return plan
        scopes = path_prefixes(path)
        args: list[Any] = [] if commit else [f"{self._key(path)}:s:{scope}" for scope in scopes]
        if known is None:
            return b"", _tail(args), ()
        labels = []
        for number, dimension, window_key, max_units in known[1]:
            if dimension in amounts and not (commit and window_key.startswith("pacing:")):
                args += (number, dimension, window_key, max_units)
                labels.append((scopes[number - 1], dimension, window_key, max_units))
        plan = (known[0], _tail(args), tuple(labels))
        if len(self._plans) >= _CACHED_PATHS:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _learn(self, path: str, version: bytes, flat: Sequence[Any]) -> None:
        """Cache the limits a script sent back with the current version."""
        limits = tuple(
            (flat[i], flat[i + 1].decode(), flat[i + 2].decode(), flat[i + 3])
            for i in range(0, len(flat), 4)
        )
        if len(self._path_limits) >= _CACHED_PATHS:
            self._path_limits.clear()
        self._path_limits[path] = (version, limits)

    def _reserve_args(
        self,
        reservation_id: str,
        path: str,
        scopes: tuple[str, ...],
        amounts: Mapping[str, int],
        ttl_s: float,
        plan: _Plan,
    ) -> list[Any]:
        """reserve.lua's arguments after the leading two (see its header), but for the plan's
        tail: the scopes' hash keys, then the limits."""
        args: list[Any] = [
            reservation_id, path, _encode(amounts), repr(ttl_s), plan[0], len(amounts), len(scopes)
        ]  # fmt: skip
        for pair in amounts.items():
            args += pair
        return args

    def _reserve_result(
        self, reply: Any, path: str, amounts: Mapping[str, int], plan: _Plan
    ) -> tuple[LimitState, ...] | Denial:
        status = reply[0]
        if status == b"ok":
            start = 1
        elif status == b"ok+":  # the limits changed, or this backend did not know them
            start = 3 + 4 * reply[2]
            self._learn(path, reply[1], reply[3:start])
            plan = self._plan(path, amounts, False)
        else:
            return _denial(reply)
        if len(reply) - start != 2 * len(plan[2]):
            raise RuntimeError(f"reserve.lua answered {reply!r} for {len(plan[2])} limits")
        states = []
        i = start
        for scope, dimension, window_key, max_units in plan[2]:
            states.append(
                LimitState(scope, dimension, window_key, max_units, reply[i], reply[i + 1])
            )
            i += 2
        return tuple(states)

    def _remember(self, reservation_id: str, path: str) -> None:
        if len(self._open) >= _OPEN_RESERVATIONS:  # holds that were never settled
            self._open.clear()
        self._open[reservation_id] = path

    def _commit_args(
        self, reservation_id: str, actual: Mapping[str, int], metadata: Mapping[str, str]
    ) -> tuple[list[Any], _Tail, bytes]:
        """commit.lua's arguments after the leading two (see its header), the limits, and the
        limits version sent."""
        path = self._open.get(reservation_id)
        version, rows, _ = self._plan(path, actual, True) if path else (b"", _NO_TAIL, ())
        meta = json.dumps(dict(metadata)) if metadata else "{}"
        flag = ""
        if UNPRICED in actual:
            known = path is not None and version and self._flagged.get(path) == version
            flag = "known" if known else "add"
        args: list[Any] = [
            reservation_id, _encode(actual), meta, path or "", version,
            len(actual) - (flag != ""), flag,
        ]  # fmt: skip
        for pair in actual.items():
            if pair[0] != UNPRICED:
                args += pair
        return args, rows, version

    def _commit_result(
        self,
        reply: Any,
        reservation_id: str,
        actual: Mapping[str, int],
        metadata: Mapping[str, str],
        version: bytes,
    ) -> CommitOutcome:
        status = reply[0]
        if status == b"committed":  # the client has the usage and metadata it sent
            path = reply[1].decode()
            if len(reply) > 5:
                version = reply[5]
                self._learn(path, version, reply[7:])
            if UNPRICED in actual:  # the flag is on every scope of the path, as of ``version``
                if len(self._flagged) >= _CACHED_PATHS:
                    self._flagged.clear()
                self._flagged[path] = version
            self._open.pop(reservation_id, None)
            over = reply[4]
            return CommitOutcome(
                "committed",
                path,
                actual,
                float(reply[2]),
                _overruns(over) if over else (),
                metadata,
                reply[3] == b"1",
            )
        self._open.pop(reservation_id, None)
        if status == b"unknown":
            raise UnknownReservation(reservation_id)
        if status == b"released":
            raise ReservationSettled(reservation_id, "released", "commit")
        return _outcome(reply, replayed=True)

    def _admit_args(
        self,
        scopes: tuple[str, ...],
        amounts: Mapping[str, int],
        now: float,
        expect_limits: int,
    ) -> tuple[list[str], list[Any]]:
        args: list[Any] = ["" if self._server_time else repr(now), expect_limits, len(amounts)]
        for pair in amounts.items():
            args += pair
        args += scopes
        return [self._key(scopes[0])], args

    def _needs_bounds(self, reply: Any, now: float) -> float | None:
        """The time to compute bounds for, if the script asked for a calendar window's bounds."""
        if not (isinstance(reply, list) and reply and reply[0] == b"bounds"):
            return None
        with self._lock:
            self._calendar.add(reply[1].decode())
        return float(reply[2]) if self._server_time else now

    @staticmethod
    def _limits(flat: dict[bytes, bytes]) -> list[tuple[str, str, int]]:
        rows = []
        for field, value in sorted(flat.items()):
            dimension, window_key = field.decode().split("|", 1)
            rows.append((dimension, window_key, int(value)))
        return rows


class RedisBackend(_RedisCore):
    """Limits, counters and holds in Redis, one Lua script call per operation (redis-py)."""

    blocking = True
    """Operations wait on the network, so ``AsyncLedger`` uses ``AsyncRedisBackend`` instead."""

    def __init__(self, url: str) -> None:
        super().__init__(url, asynchronous=False)
        cluster = not hasattr(self._client, "connection_pool")
        self._direct = None if cluster else _DirectScript(self._client, _script_text())
        self._direct_reserve: Any = self._reserve_script
        self._direct_commit: Any = self._commit_script
        if not cluster:
            self._direct_reserve = _DirectScript(self._client, _script_text("reserve"))
            self._direct_commit = _DirectScript(self._client, _script_text("commit"))
        # A retried admit after a broken connection may count once more than it admitted: an
        # over-count, which only makes the limiter stricter, never lets more through.
        self._direct_admit = None if cluster else _DirectScript(self._client, _script_text("admit"))

    @classmethod
    def from_url(cls, url: str) -> RedisBackend:
        """Open ``redis://``, ``rediss://`` or ``unix://`` URLs (redis-py's forms)."""
        return cls(url)

    def _run(self, path: str, op: str, now: float, *args: str | int | float) -> Any:
        """Run ``op`` in ledger.lua; see ``_eval``."""
        call = self._script if self._direct is None else self._direct
        return self._eval(call, path, (op,), now, args)

    def _eval(
        self,
        call: Any,
        path: str,
        head: tuple[str, ...],
        now: float,
        args: Any,
        tail: _Tail = _NO_TAIL,
    ) -> Any:
        """Run a script on ``path``'s hierarchy with ARGV ``head``, "now", bounds, ``args``,
        ``tail``; retry with the bounds the server asked for (see module doc)."""
        keys = [self._key(path)]
        direct = type(call) is _DirectScript
        when = now
        for _ in range(3):
            argv = [*head, *self._stamp(when), *args]
            reply = call(keys, argv, tail) if direct else call(keys, [*argv, *tail.args])
            next_when = self._needs_bounds(reply, now)
            if next_when is None:
                return reply
            when = next_when
        raise RuntimeError(f"calendar bounds not accepted on {path!r}")

    def set_limit(self, scope: str, dimension: str, window_key: str, max_units: int) -> None:
        self._run(scope, "set_limit", 0.0, scope, dimension, window_key, max_units)

    def remove_limit(self, scope: str, dimension: str, window_key: str) -> bool:
        return bool(self._run(scope, "remove_limit", 0.0, scope, dimension, window_key)[0])

    def get_limits(self, scope: str) -> list[tuple[str, str, int]]:
        return self._limits(self._client.hgetall(f"{self._key(scope)}:l:{scope}"))

    def reserve(
        self,
        reservation_id: str,
        path: str,
        scopes: tuple[str, ...],
        amounts: Mapping[str, int],
        now: float,
        expires_at: float,
    ) -> tuple[LimitState, ...] | Denial:
        plan = self._plan(path, amounts, False)
        args = self._reserve_args(reservation_id, path, scopes, amounts, expires_at - now, plan)
        reply = self._eval(self._direct_reserve, path, (), now, args, plan[1])
        result = self._reserve_result(reply, path, amounts, plan)
        if not isinstance(result, Denial):
            self._remember(reservation_id, path)
        return result

    def admit(
        self,
        path: str,
        scopes: tuple[str, ...],
        amounts: Mapping[str, int],
        now: float,
        expect_limits: int = -1,
    ) -> tuple[LimitState, ...] | Denial | None:
        call = self._admit_script if self._direct_admit is None else self._direct_admit
        reply = call(*self._admit_args(scopes, amounts, now, expect_limits))
        if reply[0] == b"fallback":  # a calendar window or a due hold: the full script
            reply = self._run(path, "admit", now, path, _encode(amounts), expect_limits)
        return _admit_result(reply)

    def prune(self, scope: str, now: float) -> bool:
        return bool(self._run(scope, "prune", now, scope)[0])

    def commit(
        self,
        reservation_id: str,
        actual: Mapping[str, int],
        now: float,
        metadata: Mapping[str, str],
    ) -> CommitOutcome:
        args, tail, version = self._commit_args(reservation_id, actual, metadata)
        reply = self._eval(self._direct_commit, _root_of(reservation_id), (), now, args, tail)
        return self._commit_result(reply, reservation_id, actual, metadata, version)

    def charge(
        self,
        charge_id: str,
        path: str,
        scopes: tuple[str, ...],
        actual: Mapping[str, int],
        now: float,
        metadata: Mapping[str, str],
    ) -> CommitOutcome:
        del scopes
        meta = json.dumps(dict(metadata))
        reply = self._run(path, "charge", now, charge_id, path, _encode(actual), meta)
        return _outcome(reply, replayed=reply[0] == b"replayed")

    def release(self, reservation_id: str, now: float) -> None:
        reply = self._run(_root_of(reservation_id), "release", now, reservation_id)
        self._open.pop(reservation_id, None)
        _release_result(reply, reservation_id)

    def peek(self, scopes: tuple[str, ...], now: float) -> tuple[LimitState, ...]:
        return _states(self._run(scopes[-1], "peek", now, scopes[-1]))

    def meters(self, scope: str, now: float) -> ScopeMeters:
        return _meters_result(self._run(scope, "meters", now, scope))

    def close(self) -> None:
        """Close the connection pool (and the connections the script calls keep)."""
        for direct in (self._direct, self._direct_admit, self._direct_reserve, self._direct_commit):
            if isinstance(direct, _DirectScript):
                direct.close()
        self._client.close()


class _DirectScript:
    """``EVALSHA`` on a connection each thread keeps, bypassing the client's per-command layers.

    redis-py's ``Redis.evalsha`` spends about as long in its own machinery (pool checkout,
    retry and observability wrappers) as the round trip itself; this sends the packed command
    and reads the reply on a connection taken from the same pool once per thread (and again
    after a fork). A call that fails on a broken connection is retried once on a fresh one:
    every script operation is idempotent by its id, reserve included.
    """

    def __init__(self, client: Any, text: str) -> None:
        import redis.exceptions

        self._pool = client.connection_pool
        self._text = text
        self._sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
        self._local = threading.local()
        self._taken: list[Any] = []
        self._taken_lock = threading.Lock()
        self._no_script = redis.exceptions.NoScriptError
        self._broken = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

    def _connection(self) -> tuple[Any, Any]:
        """This thread's connection, and hiredis' packer if it encodes as the connection would."""
        held = getattr(self._local, "held", None)
        if held is not None and held[0] == _forks[0]:
            return held[1], held[2]
        connection = self._pool.get_connection()
        encoder = connection.encoder
        utf8 = encoder.encoding.lower().replace("-", "") == "utf8"
        pack = _hiredis_pack if utf8 and encoder.encoding_errors == "strict" else None
        self._local.held = (_forks[0], connection, pack)
        with self._taken_lock:
            self._taken.append(connection)
        return connection, pack

    def __call__(self, keys: Sequence[str], args: Sequence[object], tail: _Tail = _NO_TAIL) -> Any:
        for attempt in range(2):
            connection, pack = self._connection()
            try:
                command = ("EVALSHA", self._sha, len(keys), *keys, *args)
                return self._evalsha(connection, pack, command, tail)
            except self._broken:
                connection.disconnect()
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _evalsha(self, connection: Any, pack: Any, command: tuple[Any, ...], tail: _Tail) -> Any:
        try:
            if pack is not None and (tail.packed or not tail.args):
                # hiredis packs the command in C, without redis-py's per-command wrapper; the
                # tail was packed once, so only the header's argument count changes.
                packed = pack(command)
                if tail.args:
                    body = packed[packed.index(b"\r\n") + 2 :]
                    packed = b"*%d\r\n%b%b" % (len(command) + len(tail.args), body, tail.packed)
                connection.send_packed_command([packed])
            else:
                connection.send_packed_command(connection.pack_command(*command, *tail.args))
            return connection.read_response()
        except self._no_script:
            connection.send_command("SCRIPT", "LOAD", self._text)
            connection.read_response()
            connection.send_command(*command, *tail.args)
            return connection.read_response()

    def close(self) -> None:
        with self._taken_lock:
            taken, self._taken = self._taken, []
        for connection in taken:
            connection.disconnect()


class AsyncRedisBackend(_RedisCore):
    """The async twin of ``RedisBackend`` (redis-py's asyncio client); same methods, awaited."""

    blocking = False
    """Operations are coroutines; ``AsyncLedger`` awaits them on its own loop."""
    asynchronous = True
    """Marks a backend whose operations must be awaited."""

    def __init__(self, url: str) -> None:
        super().__init__(url, asynchronous=True)

    async def _run(self, path: str, op: str, now: float, *args: str | int | float) -> Any:
        """See ``RedisBackend._run``."""
        return await self._eval(self._script, path, (op,), now, args)

    async def _eval(
        self,
        call: Any,
        path: str,
        head: tuple[str, ...],
        now: float,
        args: Any,
        tail: _Tail = _NO_TAIL,
    ) -> Any:
        """See ``RedisBackend._eval``."""
        keys = [self._key(path)]
        when = now
        for _ in range(3):
            reply = await call(keys, [*head, *self._stamp(when), *args, *tail.args])
            next_when = self._needs_bounds(reply, now)
            if next_when is None:
                return reply
            when = next_when
        raise RuntimeError(f"calendar bounds not accepted on {path!r}")

    async def set_limit(self, scope: str, dimension: str, window_key: str, max_units: int) -> None:
        await self._run(scope, "set_limit", 0.0, scope, dimension, window_key, max_units)

    async def remove_limit(self, scope: str, dimension: str, window_key: str) -> bool:
        reply = await self._run(scope, "remove_limit", 0.0, scope, dimension, window_key)
        return bool(reply[0])

    async def get_limits(self, scope: str) -> list[tuple[str, str, int]]:
        return self._limits(await self._client.hgetall(f"{self._key(scope)}:l:{scope}"))

    async def reserve(
        self,
        reservation_id: str,
        path: str,
        scopes: tuple[str, ...],
        amounts: Mapping[str, int],
        now: float,
        expires_at: float,
    ) -> tuple[LimitState, ...] | Denial:
        plan = self._plan(path, amounts, False)
        args = self._reserve_args(reservation_id, path, scopes, amounts, expires_at - now, plan)
        reply = await self._eval(self._reserve_script, path, (), now, args, plan[1])
        result = self._reserve_result(reply, path, amounts, plan)
        if not isinstance(result, Denial):
            self._remember(reservation_id, path)
        return result

    async def admit(
        self,
        path: str,
        scopes: tuple[str, ...],
        amounts: Mapping[str, int],
        now: float,
        expect_limits: int = -1,
    ) -> tuple[LimitState, ...] | Denial | None:
        reply = await self._admit_script(*self._admit_args(scopes, amounts, now, expect_limits))
        if reply[0] == b"fallback":
            reply = await self._run(path, "admit", now, path, _encode(amounts), expect_limits)
        return _admit_result(reply)

    async def prune(self, scope: str, now: float) -> bool:
        return bool((await self._run(scope, "prune", now, scope))[0])

    async def commit(
        self,
        reservation_id: str,
        actual: Mapping[str, int],
        now: float,
        metadata: Mapping[str, str],
    ) -> CommitOutcome:
        args, tail, version = self._commit_args(reservation_id, actual, metadata)
        root = _root_of(reservation_id)
        # Idempotent by id, so retrying a commit whose reply was lost never counts twice.
        async for attempt in AsyncRetrying(**_COMMIT_RETRY):
            with attempt:
                reply = await self._eval(self._commit_script, root, (), now, args, tail)
        return self._commit_result(reply, reservation_id, actual, metadata, version)

    async def charge(
        self,
        charge_id: str,
        path: str,
        scopes: tuple[str, ...],
        actual: Mapping[str, int],
        now: float,
        metadata: Mapping[str, str],
    ) -> CommitOutcome:
        del scopes
        meta = json.dumps(dict(metadata))
        reply = await self._run(path, "charge", now, charge_id, path, _encode(actual), meta)
        return _outcome(reply, replayed=reply[0] == b"replayed")

    async def release(self, reservation_id: str, now: float) -> None:
        reply = await self._run(_root_of(reservation_id), "release", now, reservation_id)
        self._open.pop(reservation_id, None)
        _release_result(reply, reservation_id)

    async def peek(self, scopes: tuple[str, ...], now: float) -> tuple[LimitState, ...]:
        return _states(await self._run(scopes[-1], "peek", now, scopes[-1]))

    async def meters(self, scope: str, now: float) -> ScopeMeters:
        return _meters_result(await self._run(scope, "meters", now, scope))

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def _root_of(reservation_id: str) -> str:
    """The hierarchy's root, which every ledger id starts with (``<root>#...``)."""
    root, separator, _ = reservation_id.partition("#")
    if not separator or not root:
        raise UnknownReservation(reservation_id)
    return root


def _denial(reply: Any) -> Denial:
    """A script's {'deny', scope, dim, window, max, used, held, requested, retry_after, ...}."""
    scope, dimension, window_key = (x.decode() for x in reply[1:4])
    max_units, used, held, requested = (int(x) for x in reply[4:8])
    wait = reply[8].decode()
    state = LimitState(scope, dimension, window_key, max_units, used, held)
    return Denial(state, requested, float(wait) if wait else None)


def _admit_result(reply: Any) -> tuple[LimitState, ...] | Denial | None:
    if reply[0] == b"stale":
        return None
    if reply[0] == b"deny":
        return _denial(reply)
    return _states(reply, 3)


def _release_result(reply: Any, reservation_id: str) -> None:
    if reply[0] == b"unknown":
        raise UnknownReservation(reservation_id)
    if reply[0] == b"committed":
        raise ReservationSettled(reservation_id, "committed", "release")


def _meters_result(reply: Any) -> ScopeMeters:
    totals, rows = reply
    used: dict[str, int] = {}
    held: dict[str, int] = {}
    for i in range(0, len(totals), 2):
        kind, dimension = totals[i].decode().split(":", 1)
        value = int(totals[i + 1])
        if value:
            (used if kind == "u" else held)[dimension] = value
    return ScopeMeters(used, held, _states(rows))


def _is_outage(error: BaseException) -> bool:
    return not isinstance(error, BudgeteerError)


_COMMIT_RETRY: dict[str, Any] = {
    "stop": stop_after_attempt(3),
    "wait": wait_exponential(multiplier=0.01, max=0.5),
    "retry": retry_if_exception(_is_outage),
    "reraise": True,
}


def _encode(units: Mapping[str, int]) -> str:
    return ",".join([f"{name}={amount}" for name, amount in units.items()])


def _decode(text: bytes) -> dict[str, int]:
    if not text:
        return {}
    return {
        name: int(amount) for name, amount in (pair.split("=") for pair in text.decode().split(","))
    }


def _states(flat: Sequence[Any], start: int = 0) -> tuple[LimitState, ...]:
    """Rows of scope, dimension, window, max, used, held from ``flat[start:]``; the scripts send
    the numbers as integer replies."""
    return tuple(
        LimitState(
            flat[i].decode(),
            flat[i + 1].decode(),
            flat[i + 2].decode(),
            int(flat[i + 3]),
            int(flat[i + 4]),
            int(flat[i + 5]),
        )
        for i in range(start, len(flat), 6)
    )


def _overruns(over: bytes) -> tuple[LimitState, ...]:
    if not over:
        return ()
    lines = over.decode().split("\n")
    return tuple(
        LimitState(lines[i], lines[i + 1], lines[i + 2], *(int(x) for x in lines[i + 3 : i + 6]))
        for i in range(0, len(lines), 6)
    )


def _outcome(reply: Sequence[Any], *, replayed: bool) -> CommitOutcome:
    _, path, actual, at, late, over, metadata = reply
    return CommitOutcome(
        "replayed" if replayed else "committed",
        path.decode(),
        _decode(actual),
        float(at),
        _overruns(over),
        json.loads(metadata) if metadata else {},
        late == b"1",
    )
