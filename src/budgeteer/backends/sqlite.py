"""``sqlite:///path.db``: the embedded default. Several processes on one host share one file.

Each operation is one ``BEGIN IMMEDIATE`` transaction. Writers from all processes queue on an
advisory ``flock`` on ``<file>.lock`` before taking SQLite's write lock: the kernel wakes the next
writer the moment the lock is free, where SQLite's own busy handler would poll with sleeps of up
to 100 ms and collapse throughput under contention.

Durability: the database runs in WAL mode. ``durability=process`` (default, ``synchronous=NORMAL``)
keeps every commit that has returned across a crash or SIGKILL of any process; a power loss or
kernel crash may lose the last transactions. ``durability=power-loss`` (``synchronous=FULL``) also
survives those, at the cost of an fsync on every transaction (see docs/benchmarks.md).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

from budgeteer.backends.base import (
    CommitOutcome,
    Denial,
    ScopeMeters,
    WouldBlock,
    path_prefixes,
)
from budgeteer.errors import InvalidInput, ReservationSettled, UnknownReservation
from budgeteer.ledger._core import (
    CalendarMeter,
    crosses,
    deny,
    pace,
    pacing_level,
    retry_after_for,
    window_of,
)
from budgeteer.model import LimitState

T = TypeVar("T")

SCHEMA_VERSION = 3
"""3: ``totals.held`` is kept only for (scope, dimension) pairs that have a limit. A version 2
file opens as it is (the held totals of unlimited pairs are no longer read) and is marked 3."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
-- One row. limits_version changes with every limit change, so each process can cache the
-- limits of a path and check them with one integer read per transaction.
-- next_expiry is a lower bound of the live holds' expiries (NULL: none), so an operation
-- scans the holds only once one may be due.
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 0), limits_version INTEGER NOT NULL, next_expiry REAL);
INSERT OR IGNORE INTO state (id, limits_version) VALUES (0, 0);
CREATE TABLE IF NOT EXISTS limits (
    scope TEXT NOT NULL, dimension TEXT NOT NULL, window TEXT NOT NULL,
    max_units INTEGER NOT NULL,
    PRIMARY KEY (scope, dimension, window)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals (
    scope TEXT NOT NULL, dimension TEXT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0, held INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, dimension)) WITHOUT ROWID;
-- Windowed meters. Calendar: [period_start, period_end) and used in it.
-- Rolling: period_start is the oldest bucket index that may still be stored.
CREATE TABLE IF NOT EXISTS meters (
    scope TEXT NOT NULL, dimension TEXT NOT NULL, window TEXT NOT NULL,
    period_start REAL NOT NULL, period_end REAL NOT NULL, used INTEGER NOT NULL,
    PRIMARY KEY (scope, dimension, window)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS buckets (
    scope TEXT NOT NULL, dimension TEXT NOT NULL, window TEXT NOT NULL,
    bucket INTEGER NOT NULL, amount INTEGER NOT NULL,
    PRIMARY KEY (scope, dimension, window, bucket)) WITHOUT ROWID;
-- Live holds only: small and hot, so a hold costs one page and no index.
CREATE TABLE IF NOT EXISTS holds (
    id TEXT PRIMARY KEY, path TEXT NOT NULL, requested TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID;
-- Every settled reservation and direct charge, written once when it settles: the audit log,
-- and the idempotency record (state: committed, released or expired).
CREATE TABLE IF NOT EXISTS settled (
    id TEXT PRIMARY KEY, path TEXT NOT NULL, state TEXT NOT NULL,
    requested TEXT NOT NULL, actual TEXT, created_at REAL NOT NULL, expires_at REAL NOT NULL,
    settled_at REAL NOT NULL, late INTEGER NOT NULL DEFAULT 0, overruns TEXT, metadata TEXT
) WITHOUT ROWID;
"""

_LIMIT_ROWS = """
SELECT l.scope, l.dimension, l.window, l.max_units,
       coalesce(t.used, 0), coalesce(t.held, 0), m.period_start, m.period_end, m.used
FROM limits AS l
LEFT JOIN totals AS t ON t.scope = l.scope AND t.dimension = l.dimension
LEFT JOIN meters AS m ON m.scope = l.scope AND m.dimension = l.dimension AND m.window = l.window
WHERE l.scope IN ({marks})
"""

_ADD_TOTALS = """
INSERT INTO totals (scope, dimension, used, held) VALUES {values}
ON CONFLICT (scope, dimension)
DO UPDATE SET used = used + excluded.used, held = held + excluded.held
"""
_STATE = "SELECT limits_version, next_expiry FROM state"
# The live holds on scope ?1 or below it.
_HOLDS_UNDER = "SELECT requested FROM holds WHERE path = ?1 OR substr(path, 1, ?2) = ?1 || '/'"
_BUMP_LIMITS_VERSION = "UPDATE state SET limits_version = limits_version + 1"
LIMIT_CACHE_SIZE = 4096

LimitKey = tuple[str, str, str, int]
"""(scope, dimension, window key, max units)."""


@lru_cache(maxsize=256)
def _add_totals_sql(rows: int) -> str:
    return _ADD_TOTALS.format(values=",".join(["(?, ?, ?, ?)"] * rows))


@lru_cache(maxsize=256)
def _read_sql(pairs: int, state: bool) -> str:
    """Read ``(index, used, held)`` of ``pairs`` (scope, dimension) pairs, after the
    ``(-1, limits_version, next_expiry)`` row of ``state`` if asked, in one statement.

    Point lookups joined by ``UNION ALL``: ``scope IN (...) AND dimension IN (...)`` builds
    ephemeral tables and costs 2-10 times as much on SQLite 3.40. A missing pair has no row.
    """
    parts = ["SELECT -1, limits_version, next_expiry FROM state"] if state else []
    parts += [
        f"SELECT {i}, used, held FROM totals WHERE scope = ? AND dimension = ?"
        for i in range(pairs)
    ]
    return " UNION ALL ".join(parts)


class _Read:
    """The limits of a path on one set of dimensions, and how to read their totals."""

    __slots__ = ("args", "limits", "pairs")

    def __init__(self, limits: tuple[LimitKey, ...], dimensions: tuple[str, ...]) -> None:
        self.limits = tuple(key for key in limits if key[1] in dimensions)
        self.pairs = tuple(dict.fromkeys((key[0], key[1]) for key in self.limits))
        """Each limited (scope, dimension) pair once, in path order."""
        self.args = tuple(value for pair in self.pairs for value in pair)


class _Plan:
    """What one process knows of a path's limits while ``limits_version`` stays ``version``."""

    __slots__ = ("limited", "limits", "reads", "scopes", "version")

    def __init__(self, version: int, scopes: tuple[str, ...], limits: tuple[LimitKey, ...]) -> None:
        self.version = version
        self.scopes = scopes
        self.limits = limits
        self.limited = frozenset((key[0], key[1]) for key in limits)
        """The (scope, dimension) pairs with a limit: only these keep ``held`` in totals."""
        self.reads: dict[tuple[str, ...], _Read] = {}

    def read(self, dimensions: tuple[str, ...]) -> _Read:
        found = self.reads.get(dimensions)
        if found is None:
            if len(self.reads) >= 64:  # dimension sets are few; bound them all the same
                self.reads.clear()
            found = self.reads[dimensions] = _Read(self.limits, dimensions)
        return found


def _limit_rows_sql(count: int) -> str:
    return _LIMIT_ROWS.format(marks=",".join("?" * count))


class _Row:
    """A limit row read inside a transaction, with its window meter brought up to ``now``."""

    __slots__ = (
        "dimension",
        "dirty",
        "held",
        "max_units",
        "meter_end",
        "meter_start",
        "meter_used",
        "scope",
        "total_used",
        "window_key",
    )

    def __init__(self, row: tuple[object, ...]) -> None:
        (
            self.scope,
            self.dimension,
            self.window_key,
            self.max_units,
            self.total_used,
            self.held,
            self.meter_start,
            self.meter_end,
            self.meter_used,
        ) = row  # type: ignore[assignment]
        self.dirty = False

    scope: str
    dimension: str
    window_key: str
    max_units: int
    total_used: int
    held: int
    meter_start: float | None
    meter_end: float | None
    meter_used: int | None
    dirty: bool

    @property
    def used(self) -> int:
        return self.total_used if self.meter_used is None else self.meter_used

    def state(self) -> LimitState:
        held = 0 if self.window_key.startswith("pacing:") else self.held  # buckets ignore holds
        return LimitState(
            self.scope, self.dimension, self.window_key, self.max_units, self.used, held
        )


class _PooledConnection:
    """A connection and its lock-file descriptor, closed when the holder is collected.

    ``with holder as conn:`` runs one write transaction; leaving it (or failing to enter it)
    hands the connection back to its backend's pool of idle ones.
    """

    def __init__(
        self,
        path: Path,
        lock_path: str,
        busy_timeout_ms: int,
        synchronous: str,
        idle: list[_PooledConnection],
    ) -> None:
        self.pid = os.getpid()
        self._idle = idle
        self.lock_fd = -1
        self.lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self.conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, cached_statements=256
            )
            self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute(f"PRAGMA synchronous = {synchronous}")
        except BaseException:
            os.close(self.lock_fd)
            self.lock_fd = -1
            raise

        self.nonblocking = False
        """Set for ``call_without_waiting``: take the write lock only if it is free."""

    def release(self) -> None:
        """Back to the pool, unless closed or left inside a transaction (a failed ROLLBACK)."""
        if self.lock_fd >= 0 and not self.conn.in_transaction:
            self._idle.append(self)
        else:
            self.close()

    # The transaction as a context manager of its own: a generator-based one costs about
    # two microseconds more per operation, a few percent of a whole cycle.
    def __enter__(self) -> sqlite3.Connection:
        """Queue on the lock file, then ``BEGIN IMMEDIATE``."""
        try:
            if self.nonblocking:
                try:
                    fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise WouldBlock from None
            else:
                fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except BaseException:
                fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
                raise
        except BaseException:
            self.release()  # no __exit__ follows a failed __enter__
            raise
        return self.conn

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        """``COMMIT``, or ``ROLLBACK`` on an exception; then free the lock file."""
        try:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
            self.release()

    def close(self) -> None:
        if self.lock_fd >= 0:
            self.conn.close()
            os.close(self.lock_fd)
            self.lock_fd = -1

    def __del__(self) -> None:
        # Only in the process that opened them: a forked child must not close its parent's.
        if self.pid == os.getpid():
            self.close()


class SQLiteBackend:
    """Limits, counters and holds in one SQLite file (WAL), shared by processes on one host."""

    blocking = True
    """Operations wait on file locks and disk, so the async ledger runs them in a thread."""
    remote = False
    """In-process or on the local disk: no store-down policy is needed."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "process",
        busy_timeout_ms: int = 30_000,
    ) -> None:
        if durability not in ("process", "power-loss"):
            raise InvalidInput("durability", durability, "use 'process' or 'power-loss'")
        self.path = Path(path)
        self.durability = durability
        self.url = f"sqlite:///{self.path}" + (
            "?durability=power-loss" if durability == "power-loss" else ""
        )
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        # Connections no thread is using; the most recently used is last, and taken first.
        self._idle: list[_PooledConnection] = []
        self._plans: dict[str, _Plan] = {}
        self._lock_path = str(self.path) + ".lock"
        holder = self._take()
        conn, lock_fd = holder.conn, holder.lock_fd
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            conn.executescript(_SCHEMA)  # runs in a transaction of its own
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            (stored,) = conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
            if int(stored) > SCHEMA_VERSION:
                raise InvalidInput(
                    "path",
                    str(self.path),
                    f"written by a newer budgeteer (schema {stored}; this one reads"
                    f" up to {SCHEMA_VERSION})",
                )
            if int(stored) < SCHEMA_VERSION:
                conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'",
                    (str(SCHEMA_VERSION),),
                )
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            holder.release()

    @classmethod
    def from_url(cls, url: str) -> SQLiteBackend:
        """Open ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` (SQLAlchemy's form)."""
        parts = urlsplit(url)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc or not path:
            raise InvalidInput(
                "url", url, "expected sqlite:///relative/file.db or sqlite:////absolute/file.db"
            )
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"durability", "busy_timeout_ms"}
        if unknown:
            raise InvalidInput("url", url, f"unknown option(s) {sorted(unknown)}")
        try:
            busy = int(query.get("busy_timeout_ms", "30000"))
        except ValueError:
            raise InvalidInput("url", url, "busy_timeout_ms must be an integer") from None
        return cls(path, durability=query.get("durability", "process"), busy_timeout_ms=busy)

    # -- connections --------------------------------------------------------------------------

    def _take(self) -> _PooledConnection:
        # Connections are pooled rather than kept per thread: agent frameworks run each tool call
        # on a fresh thread, which would open a connection per call (costlier than the call),
        # and the one used last is taken first, so its page cache (which SQLite drops whenever
        # another connection has written) stays warm. A connection serves one thread at a time.
        try:
            holder = self._idle.pop()
        except IndexError:
            holder = None
        if holder is None or holder.pid != os.getpid():
            if holder is not None:
                self._idle.clear()  # a forked child never touches its parent's connections
            synchronous = "FULL" if self.durability == "power-loss" else "NORMAL"
            holder = _PooledConnection(
                self.path, self._lock_path, self._busy_timeout_ms, synchronous, self._idle
            )
        return holder

    def call_without_waiting(self, function: Callable[..., T], *args: object) -> T:
        """Run one operation here and now, or raise ``WouldBlock`` before doing anything if
        another writer holds the file.

        ``AsyncLedger`` tries this on the event loop first: an uncontended transaction takes
        tens of microseconds, while a hop to a worker thread costs more than that. Only with
        ``durability=process`` (a power-loss commit waits for fsync, too long for a loop).
        """
        if self.durability != "process":
            raise WouldBlock
        self._local.nonblocking = True
        try:
            return function(*args)
        finally:
            self._local.nonblocking = False

    def _transaction(self) -> _PooledConnection:
        """``with self._transaction() as conn:`` runs one write transaction."""
        holder = self._take()
        holder.nonblocking = getattr(self._local, "nonblocking", False)
        return holder

    def close(self) -> None:
        """Close the idle connections (one in use by another thread closes when collected)."""
        while self._idle:
            try:
                holder = self._idle.pop()
            except IndexError:
                break
            if holder.pid == os.getpid():
                holder.close()

    # -- limits -------------------------------------------------------------------------------

    def set_limit(self, scope: str, dimension: str, window_key: str, max_units: int) -> None:
        with self._transaction() as conn:
            limited = conn.execute(
                "SELECT 1 FROM limits WHERE scope = ? AND dimension = ?", (scope, dimension)
            ).fetchone()
            if limited is None:
                # The pair starts to keep a held total: the live holds on it so far.
                held = sum(
                    json.loads(requested).get(dimension, 0)
                    for (requested,) in conn.execute(_HOLDS_UNDER, (scope, len(scope) + 1))
                )
                conn.execute(
                    "INSERT INTO totals (scope, dimension, held) VALUES (?, ?, ?)"
                    " ON CONFLICT (scope, dimension) DO UPDATE SET held = excluded.held",
                    (scope, dimension, held),
                )
            conn.execute(
                "INSERT INTO limits (scope, dimension, window, max_units) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (scope, dimension, window)"
                " DO UPDATE SET max_units = excluded.max_units",
                (scope, dimension, window_key, max_units),
            )
            conn.execute(_BUMP_LIMITS_VERSION)
            if window_key != "lifetime":
                conn.execute(
                    "INSERT OR IGNORE INTO meters VALUES (?, ?, ?, 0, 0, 0)",
                    (scope, dimension, window_key),
                )

    def remove_limit(self, scope: str, dimension: str, window_key: str) -> bool:
        key = (scope, dimension, window_key)
        with self._transaction() as conn:
            removed = conn.execute(
                "DELETE FROM limits WHERE scope = ? AND dimension = ? AND window = ?", key
            ).rowcount
            conn.execute("DELETE FROM meters WHERE scope = ? AND dimension = ? AND window = ?", key)
            conn.execute(
                "DELETE FROM buckets WHERE scope = ? AND dimension = ? AND window = ?", key
            )
            # The pair's last limit gone: it stops keeping a held total.
            conn.execute(
                "UPDATE totals SET held = 0 WHERE scope = ?1 AND dimension = ?2 AND NOT EXISTS"
                " (SELECT 1 FROM limits WHERE scope = ?1 AND dimension = ?2)",
                key[:2],
            )
            conn.execute(_BUMP_LIMITS_VERSION)
        return bool(removed)

    def get_limits(self, scope: str) -> list[tuple[str, str, int]]:
        holder = self._take()
        try:
            rows = holder.conn.execute(
                "SELECT dimension, window, max_units FROM limits WHERE scope = ?", (scope,)
            ).fetchall()
        finally:
            holder.release()
        return [(d, w, m) for d, w, m in rows]

    # -- the cycle ----------------------------------------------------------------------------

    def reserve(
        self,
        reservation_id: str,
        path: str,
        scopes: tuple[str, ...],
        amounts: Mapping[str, int],
        now: float,
        expires_at: float,
    ) -> tuple[LimitState, ...] | Denial:
        with self._transaction() as conn:
            _, read, totals, next_expiry = self._begin(conn, path, scopes, tuple(amounts), now)
            checked = self._check(conn, read, totals, amounts, now, hold=True)
            if isinstance(checked, Denial):
                return checked
            states, meters = checked
            self._write_meters(conn, meters)
            # Only limited pairs keep a held total; reports sum the live holds for the rest.
            self._add_totals(
                conn, [v for s, d in read.pairs if amounts[d] for v in (s, d, 0, amounts[d])]
            )
            conn.execute(
                "INSERT INTO holds VALUES (?, ?, ?, ?, ?)",
                (reservation_id, path, _dump(amounts), now, expires_at),
            )
            if next_expiry is None or expires_at < next_expiry:
                conn.execute("UPDATE state SET next_expiry = ?", (expires_at,))
        return tuple(states)

    def admit(
        self,
        path: str,
        scopes: tuple[str, ...],
        amounts: Mapping[str, int],
        now: float,
        expect_limits: int = -1,
    ) -> tuple[LimitState, ...] | Denial | None:
        with self._transaction() as conn:
            plan, read, totals, _ = self._begin(conn, path, scopes, tuple(amounts), now)
            if expect_limits >= 0 and len(plan.limits) != expect_limits:
                return None
            checked = self._check(conn, read, totals, amounts, now, hold=False)
            if isinstance(checked, Denial):
                return checked
            states, meters = checked
            for row in meters:
                window = window_of(row.window_key)
                if window.kind == "pacing":
                    continue
                amount = amounts[row.dimension]
                row.meter_used = (row.meter_used or 0) + amount
                row.dirty = True
                if window.kind == "rolling" and amount:
                    conn.execute(
                        "INSERT INTO buckets VALUES (?, ?, ?, ?, ?) ON CONFLICT"
                        " (scope, dimension, window, bucket) DO UPDATE SET amount = amount + ?",
                        (
                            row.scope,
                            row.dimension,
                            row.window_key,
                            int(now // window.granularity_s),
                            amount,
                            amount,
                        ),
                    )
            self._write_meters(conn, meters)
            self._add_totals(
                conn, [v for s in scopes for d, a in amounts.items() for v in (s, d, a, 0)]
            )
        return tuple(states)

    def _begin(
        self,
        conn: sqlite3.Connection,
        path: str,
        scopes: tuple[str, ...],
        dimensions: tuple[str, ...],
        now: float,
    ) -> tuple[_Plan, _Read, dict[tuple[str, str], tuple[int, int]], float | None]:
        """Start a reserve or admit: reclaim due holds, and read the path's limits on
        ``dimensions`` with their totals. Returns the plan, those and ``next_expiry``.

        With the path's limits cached, the state row and the totals come in one statement;
        the totals are read again only if the limits moved or expiry changed them.
        """
        plan = self._plans.get(path)
        totals: dict[tuple[str, str], tuple[int, int]] | None = None
        if plan is None:
            version, next_expiry = conn.execute(_STATE).fetchone()
        else:
            read = plan.read(dimensions)
            found = conn.execute(_read_sql(len(read.pairs), True), read.args).fetchall()
            totals = {}
            for index, used, held in found:
                if index < 0:
                    version, next_expiry = used, held
                else:
                    totals[read.pairs[index]] = (used, held)
        if next_expiry is not None and next_expiry <= now:
            next_expiry = self._expire(conn, now)
            totals = None
        if plan is None or plan.version != version:
            plan = self._plan(conn, path, scopes, version)
            totals = None
        read = plan.read(dimensions)
        if totals is None:
            totals = self._totals(conn, read)
        return plan, read, totals, next_expiry

    def _check(
        self,
        conn: sqlite3.Connection,
        read: _Read,
        totals: dict[tuple[str, str], tuple[int, int]],
        amounts: Mapping[str, int],
        now: float,
        *,
        hold: bool,
    ) -> tuple[list[LimitState], list[_Row]] | Denial:
        """Check the limits on ``amounts``' dimensions; pacing buckets advance only if all fit.

        Returns the states as after the operation and the windowed meters read (to be written
        back by the caller), or the ``Denial`` (meters refreshed and written, nothing else).
        """
        states: list[LimitState] = []
        meters: list[_Row] = []
        paced: list[tuple[_Row, float]] = []
        for key in read.limits:
            scope, dimension, window_key, max_units = key
            requested = amounts[dimension]
            used, held = totals.get((scope, dimension), (0, 0))
            row = None
            if window_key != "lifetime":
                row = self._meter(conn, key, now)
                meters.append(row)
                if window_key.startswith("pacing:"):
                    tat = row.meter_start or 0.0
                    refill_s = window_of(window_key).refill_s
                    admitted, value = pace(tat, now, requested, max_units, refill_s)
                    level = row.used
                    if not admitted or value is None:
                        self._write_meters(conn, meters)
                        state = LimitState(scope, dimension, window_key, max_units, level, 0)
                        return deny(state, amounts, value)
                    paced.append((row, value))
                    states.append(
                        LimitState(scope, dimension, window_key, max_units, level + requested, 0)
                    )
                    continue
                used = row.used
            if crosses(used, held, requested, max_units):
                state = LimitState(scope, dimension, window_key, max_units, used, held)
                retry_after = self._retry_after(conn, row, state, amounts, now) if row else None
                self._write_meters(conn, meters)
                return deny(state, amounts, retry_after)
            states.append(
                LimitState(scope, dimension, window_key, max_units, used, held + requested)
                if hold
                else LimitState(scope, dimension, window_key, max_units, used + requested, held)
            )
        for row, tat in paced:
            row.meter_start, row.dirty = tat, True
        return states, meters

    def prune(self, scope: str, now: float) -> bool:
        with self._transaction() as conn:
            self._expire_due(conn, now)
            if any(self._held_under(conn, scope).values()):
                return False
            rows = self._rows(conn, (scope,), now)
            for row in rows:
                if row.window_key.startswith("pacing:"):
                    if (row.meter_start or 0.0) > now:
                        return False
                elif row.used:
                    return False
            found = conn.execute("DELETE FROM totals WHERE scope = ?", (scope,)).rowcount
            for table in ("limits", "meters", "buckets"):
                found += conn.execute(f"DELETE FROM {table} WHERE scope = ?", (scope,)).rowcount
            if rows:
                conn.execute(_BUMP_LIMITS_VERSION)
        return bool(found)

    def commit(
        self,
        reservation_id: str,
        actual: Mapping[str, int],
        now: float,
        metadata: Mapping[str, str],
    ) -> CommitOutcome:
        with self._transaction() as conn:
            hold = conn.execute(
                "SELECT path, requested, created_at, expires_at, (SELECT limits_version FROM"
                " state) FROM holds WHERE id = ?",
                (reservation_id,),
            ).fetchone()
            if hold is not None:
                path, requested, created_at, expires_at, version = hold
                conn.execute("DELETE FROM holds WHERE id = ?", (reservation_id,))
                # Past its TTL but not reclaimed yet: dropped all the same, recorded as late.
                return self._record(
                    conn,
                    reservation_id,
                    path,
                    actual,
                    now,
                    metadata,
                    json.loads(requested),
                    version,
                    (requested, created_at, expires_at),
                    late=expires_at <= now,
                )
            found = conn.execute(
                "SELECT path, state, actual, settled_at, late, overruns, metadata,"
                " (SELECT limits_version FROM state) FROM settled WHERE id = ?",
                (reservation_id,),
            ).fetchone()
            if found is None:
                raise UnknownReservation(reservation_id)
            path, state, *_, version = found
            if state == "committed":
                return _replayed(found)
            if state == "released":
                raise ReservationSettled(reservation_id, "released", "commit")
            # Expired and reclaimed: the hold is gone, but the spend happened; record it late.
            return self._record(
                conn, reservation_id, path, actual, now, metadata, {}, version, None, late=True
            )

    def charge(
        self,
        charge_id: str,
        path: str,
        scopes: tuple[str, ...],
        actual: Mapping[str, int],
        now: float,
        metadata: Mapping[str, str],
    ) -> CommitOutcome:
        del scopes  # recomputed from the path inside the transaction
        with self._transaction() as conn:
            found = conn.execute(
                "SELECT path, state, actual, settled_at, late, overruns, metadata,"
                " (SELECT limits_version FROM state) FROM settled WHERE id = ?",
                (charge_id,),
            ).fetchone()
            if found is not None:  # a retried charge: recorded once already
                return _replayed(found)
            (version,) = conn.execute("SELECT limits_version FROM state").fetchone()
            return self._record(
                conn,
                charge_id,
                path,
                actual,
                now,
                metadata,
                {},
                version,
                ("{}", now, now),
                late=False,
            )

    def release(self, reservation_id: str, now: float) -> None:
        with self._transaction() as conn:
            hold = conn.execute(
                "SELECT path, requested, created_at, expires_at FROM holds WHERE id = ?",
                (reservation_id,),
            ).fetchone()
            if hold is not None:
                # A lapsed hold ends as "expired", as if expiry had reclaimed it first.
                state = "expired" if hold[3] <= now else "released"
                self._settle_hold(conn, reservation_id, hold, state, now)
                return
            found = conn.execute(
                "SELECT state FROM settled WHERE id = ?", (reservation_id,)
            ).fetchone()
            if found is None:
                raise UnknownReservation(reservation_id)
            if found[0] == "committed":
                raise ReservationSettled(reservation_id, "committed", "release")

    def peek(self, scopes: tuple[str, ...], now: float) -> tuple[LimitState, ...]:
        with self._transaction() as conn:
            self._expire_due(conn, now)
            rows = self._rows(conn, scopes, now)
            self._write_meters(conn, rows)
        order = {scope: i for i, scope in enumerate(scopes)}
        return tuple(r.state() for r in sorted(rows, key=lambda r: order[r.scope]))

    def meters(self, scope: str, now: float) -> ScopeMeters:
        with self._transaction() as conn:
            self._expire_due(conn, now)
            rows = self._rows(conn, (scope,), now)
            self._write_meters(conn, rows)
            used = conn.execute(
                "SELECT dimension, used FROM totals WHERE scope = ? AND used != 0", (scope,)
            ).fetchall()
            held = self._held_under(conn, scope)
        return ScopeMeters(
            used=dict(used),
            held={d: h for d, h in held.items() if h},
            limits=tuple(r.state() for r in rows),
        )

    # -- internals ----------------------------------------------------------------------------

    def _rows(self, conn: sqlite3.Connection, scopes: tuple[str, ...], now: float) -> list[_Row]:
        rows = [_Row(r) for r in conn.execute(_limit_rows_sql(len(scopes)), scopes)]
        for row in rows:
            if row.window_key != "lifetime":
                self._refresh(conn, row, now)
        return rows

    def _refresh(self, conn: sqlite3.Connection, row: _Row, now: float) -> None:
        window = window_of(row.window_key)
        if row.meter_used is None:  # limit set by an older writer without a meter row
            row.meter_start, row.meter_end, row.meter_used, row.dirty = 0.0, 0.0, 0, True
        if window.kind == "pacing":
            # meter_start is the bucket's tat; meter_used only reports its level (not stored).
            row.meter_used = pacing_level(
                row.meter_start or 0.0, now, row.max_units, window.refill_s
            )
            return
        if window.kind == "calendar":
            if now >= (row.meter_end or 0.0):
                row.meter_start, row.meter_end = window.period_bounds(now)
                row.meter_used, row.dirty = 0, True
            return
        cutoff = int(now // window.granularity_s) - window.buckets
        if (row.meter_start or 0) < cutoff:
            key = (row.scope, row.dimension, row.window_key, cutoff)
            expired = conn.execute(
                "SELECT coalesce(sum(amount), 0) FROM buckets"
                " WHERE scope = ? AND dimension = ? AND window = ? AND bucket < ?",
                key,
            ).fetchone()[0]
            if expired:
                conn.execute(
                    "DELETE FROM buckets WHERE scope = ? AND dimension = ? AND window = ?"
                    " AND bucket < ?",
                    key,
                )
            row.meter_used = (row.meter_used or 0) - expired
            row.meter_start, row.dirty = float(cutoff), True

    def _write_meters(self, conn: sqlite3.Connection, rows: list[_Row]) -> None:
        dirty = [r for r in rows if r.dirty]
        if dirty:
            conn.executemany(
                "INSERT OR REPLACE INTO meters VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (r.scope, r.dimension, r.window_key, r.meter_start, r.meter_end, r.meter_used)
                    for r in dirty
                ],
            )
            for row in dirty:
                row.dirty = False

    def _retry_after(
        self,
        conn: sqlite3.Connection,
        row: _Row,
        state: LimitState,
        amounts: Mapping[str, int],
        now: float,
    ) -> float | None:
        window = window_of(state.window_key)
        requested = amounts[state.dimension]
        if window.kind == "calendar":
            meter = CalendarMeter(row.meter_start or 0.0, row.meter_end or 0.0, row.used)
            return retry_after_for(state, requested, now, calendar=meter)
        if window.kind == "rolling":
            buckets = conn.execute(
                "SELECT bucket, amount FROM buckets WHERE scope = ? AND dimension = ?"
                " AND window = ? ORDER BY bucket",
                (state.scope, state.dimension, state.window_key),
            ).fetchall()
            return retry_after_for(state, requested, now, rolling_buckets=buckets)
        return None

    def _record(
        self,
        conn: sqlite3.Connection,
        reservation_id: str,
        path: str,
        actual: Mapping[str, int],
        now: float,
        metadata: Mapping[str, str],
        held: Mapping[str, int],
        version: int,
        origin: tuple[str, float, float] | None,
        *,
        late: bool,
    ) -> CommitOutcome:
        """Drop the hold (``held``), record ``actual`` on every scope, and write the settled row.

        ``origin`` is the hold's ``(requested, created_at, expires_at)`` for a new settled row;
        ``None`` when the row exists already (an expired hold committed late).
        """
        plan = self._plan(conn, path, None, version)
        scopes, limited = plan.scopes, plan.limited
        values: list[object] = []  # flat (scope, dimension, used, held) deltas
        for s in scopes:
            for d, a in actual.items():
                values += (s, d, a, -held.get(d, 0) if (s, d) in limited else 0)
            for d, a in held.items():
                if d not in actual and a and (s, d) in limited:
                    values += (s, d, 0, -a)
        self._add_totals(conn, values)
        read = plan.read(tuple(actual))
        # Read after the update: the used and held totals as this commit leaves them.
        totals = self._totals(conn, read) if read.pairs else {}
        over: list[LimitState] = []
        meters: list[_Row] = []
        for key in read.limits:
            scope, dimension, window_key, max_units = key
            if window_key.startswith("pacing:"):
                continue  # a bucket paces admissions; commits do not fill it
            used, held_now = totals.get((scope, dimension), (0, 0))
            if window_key != "lifetime":
                row = self._meter(conn, key, now)
                amount = actual[dimension]
                row.meter_used = (row.meter_used or 0) + amount
                row.dirty = True
                meters.append(row)
                used = row.meter_used
                window = window_of(window_key)
                if window.kind == "rolling":
                    conn.execute(
                        "INSERT INTO buckets VALUES (?, ?, ?, ?, ?) ON CONFLICT"
                        " (scope, dimension, window, bucket) DO UPDATE SET amount = amount + ?",
                        (
                            scope,
                            dimension,
                            window_key,
                            int(now // window.granularity_s),
                            amount,
                            amount,
                        ),
                    )
            if used > max_units:
                over.append(LimitState(scope, dimension, window_key, max_units, used, held_now))
        self._write_meters(conn, meters)
        metadata = dict(metadata)
        over_json = json.dumps([list(s) for s in over]) if over else "[]"
        meta_json = json.dumps(metadata) if metadata else "{}"
        if origin is None:
            conn.execute(
                "UPDATE settled SET state = 'committed', actual = ?, settled_at = ?, late = 1,"
                " overruns = ?, metadata = ? WHERE id = ?",
                (_dump(actual), now, over_json, meta_json, reservation_id),
            )
        else:
            requested, created_at, expires_at = origin
            conn.execute(
                "INSERT INTO settled VALUES (?, ?, 'committed', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    reservation_id,
                    path,
                    requested,
                    _dump(actual),
                    created_at,
                    expires_at,
                    now,
                    int(late),
                    over_json,
                    meta_json,
                ),
            )
        return CommitOutcome("committed", path, actual, now, tuple(over), metadata, late)

    def _plan(
        self, conn: sqlite3.Connection, path: str, scopes: tuple[str, ...] | None, version: int
    ) -> _Plan:
        """The limits of every scope on ``path``, top first; cached until ``version`` moves."""
        cached = self._plans.get(path)
        if cached is not None and cached.version == version:
            return cached
        if scopes is None:
            scopes = path_prefixes(path)
        marks = ",".join("?" * len(scopes))
        found = conn.execute(
            f"SELECT scope, dimension, window, max_units FROM limits WHERE scope IN ({marks})",
            scopes,
        ).fetchall()
        order = {scope: i for i, scope in enumerate(scopes)}
        keys: tuple[LimitKey, ...] = tuple(sorted(found, key=lambda key: order[key[0]]))
        if len(self._plans) >= LIMIT_CACHE_SIZE:
            self._plans.clear()
        plan = self._plans[path] = _Plan(version, scopes, keys)
        return plan

    @staticmethod
    def _totals(conn: sqlite3.Connection, read: _Read) -> dict[tuple[str, str], tuple[int, int]]:
        """``(used, held)`` of each of ``read``'s limited pairs that has a totals row."""
        if not read.pairs:
            return {}
        pairs = read.pairs
        found = conn.execute(_read_sql(len(pairs), False), read.args)
        return {pairs[index]: (used, held) for index, used, held in found}

    @staticmethod
    def _add_totals(conn: sqlite3.Connection, values: list[object]) -> None:
        """Add flat ``(scope, dimension, used, held)`` deltas in one statement.

        (One multi-row upsert, not ``executemany`` and not ``RETURNING``: on SQLite 3.40 the
        former costs half as much again and the latter about nine times as much.)
        """
        if values:  # an empty usage (a zero-amount reservation) touches no counter
            conn.execute(_add_totals_sql(len(values) // 4), values)

    def _meter(self, conn: sqlite3.Connection, key: LimitKey, now: float) -> _Row:
        """A windowed limit's meter, brought up to ``now`` (not yet written back)."""
        scope, dimension, window_key, max_units = key
        found = conn.execute(
            "SELECT period_start, period_end, used FROM meters"
            " WHERE scope = ? AND dimension = ? AND window = ?",
            (scope, dimension, window_key),
        ).fetchone()
        row = _Row((scope, dimension, window_key, max_units, 0, 0, *(found or (None,) * 3)))
        self._refresh(conn, row, now)
        return row

    def _drop_hold(self, conn: sqlite3.Connection, path: str, held: Mapping[str, int]) -> None:
        # Only limited pairs carry held totals (the limits table decides, not a cached plan).
        conn.executemany(
            "UPDATE totals SET held = held - ?1 WHERE scope = ?2 AND dimension = ?3 AND EXISTS"
            " (SELECT 1 FROM limits WHERE scope = ?2 AND dimension = ?3)",
            [(a, s, d) for s in path_prefixes(path) for d, a in held.items() if a],
        )

    @staticmethod
    def _held_under(conn: sqlite3.Connection, scope: str) -> dict[str, int]:
        """What the live holds on ``scope`` and below hold, by dimension (a scan of the
        small live-holds table: unlimited pairs keep no held total)."""
        held: dict[str, int] = {}
        for (requested,) in conn.execute(_HOLDS_UNDER, (scope, len(scope) + 1)):
            for dimension, amount in json.loads(requested).items():
                held[dimension] = held.get(dimension, 0) + amount
        return held

    def _expire(self, conn: sqlite3.Connection, now: float) -> float | None:
        """Reclaim every hold past its TTL; return the new ``next_expiry`` (``None``: no holds).

        A scan of the live holds, run only once ``next_expiry`` has passed.
        """
        expired = conn.execute(
            "SELECT id, path, requested, created_at, expires_at FROM holds WHERE expires_at <= ?",
            (now,),
        ).fetchall()
        for reservation_id, *hold in expired:
            self._settle_hold(conn, reservation_id, tuple(hold), "expired", now)
        (next_expiry,) = conn.execute("SELECT min(expires_at) FROM holds").fetchone()
        conn.execute("UPDATE state SET next_expiry = ?", (next_expiry,))
        return next_expiry  # type: ignore[no-any-return]

    def _expire_due(self, conn: sqlite3.Connection, now: float) -> None:
        (next_expiry,) = conn.execute("SELECT next_expiry FROM state").fetchone()
        if next_expiry is not None and next_expiry <= now:
            self._expire(conn, now)

    def _settle_hold(
        self,
        conn: sqlite3.Connection,
        reservation_id: str,
        hold: tuple[object, ...],
        state: str,
        now: float,
    ) -> None:
        """End a live hold without spend: free its amounts and log it as ``state``."""
        path, requested, created_at, expires_at = hold
        self._drop_hold(conn, str(path), json.loads(str(requested)))
        conn.execute("DELETE FROM holds WHERE id = ?", (reservation_id,))
        conn.execute(
            "INSERT INTO settled (id, path, state, requested, created_at, expires_at, settled_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (reservation_id, path, state, requested, created_at, expires_at, now),
        )


def _replayed(found: tuple[object, ...]) -> CommitOutcome:
    """A retry of a settled commit or charge, from its ``settled`` row: counted nothing."""
    path, _, recorded, settled_at, late, over, meta, *_ = found
    return CommitOutcome(
        "replayed",
        str(path),
        json.loads(str(recorded)),
        float(settled_at),  # type: ignore[arg-type]
        tuple(LimitState(*s) for s in json.loads(str(over))),
        json.loads(str(meta)),
        bool(late),
    )


def _dump(units: Mapping[str, int]) -> str:
    # Valid JSON without json.dumps: keys are dimension names and values are ints.
    return "{" + ",".join(f'"{name}":{amount}' for name, amount in units.items()) + "}"
