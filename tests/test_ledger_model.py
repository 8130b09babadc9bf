"""The ledger against a plain-Python reference model, driven by Hypothesis.

The model keeps every commit as an event ``(seq, path, units, at)`` and every reservation with
its state, and derives all counters from them, so it shares no arithmetic with the backends.
Windows are modelled from their documented contract rather than their implementation:

* lifetime: everything committed to the scope (also before the limit was set);
* calendar day (UTC): commits since the limit was created, in the current UTC day;
* rolling: commits since the limit was created that are *surely* inside (``now < t + seconds``)
  give a lower bound, those *possibly* inside (``now < t + seconds + granularity_s``) an upper
  bound. Where the bounds differ, either decision is allowed, but a denial must still name a limit
  that is crossed with a ``used`` inside the bounds.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from budgeteer import (
    BudgetExceeded,
    InvalidInput,
    Ledger,
    Limit,
    LimitHeadroom,
    Reservation,
    ReservationSettled,
    Usage,
    Window,
    parse_path,
)
from budgeteer.model import to_units
from budgeteer.testing import FakeClock

TREE = ("org:a", "org:a/team:b", "org:a/team:b/run:c", "org:a/team:d")
DIMENSIONS = ("requests", "input_tokens", "cost_usd")
DAY_S = 86_400
ROLLING = Window.rolling(30, granularity_s=10)
WINDOWS = (Window.lifetime(), Window.daily(), ROLLING)
NANO_PER_CENT = 10_000_000

# A limit's key in the model: (scope, dimension, window key).
LimitKey = tuple[str, str, str]
Units = dict[str, int]


def covers(scope: str, path: str) -> bool:
    """A charge to ``path`` is a charge to ``scope`` if ``scope`` is ``path`` or a prefix of it."""
    return path == scope or path.startswith(scope + "/")


def usage_of(requests: int, input_tokens: int, cost_cents: int) -> tuple[Usage, Units]:
    """A ``Usage`` and, computed independently, the storage units it should charge."""
    usage = Usage(
        requests=requests,
        input_tokens=input_tokens,
        cost_usd=Decimal(cost_cents).scaleb(-2),
    )
    units = {
        "requests": requests,
        "input_tokens": input_tokens,
        "total_tokens": input_tokens,  # derived: input + output
        "cost_usd": cost_cents * NANO_PER_CENT,
    }
    return usage, {k: v for k, v in units.items() if v}


def limit_units(dimension: str, size: int) -> int:
    return {"requests": size, "input_tokens": 40 * size, "cost_usd": 50 * size * NANO_PER_CENT}[
        dimension
    ]


def add(total: Units, units: Units) -> None:
    for name, amount in units.items():
        total[name] = total.get(name, 0) + amount


@dataclass
class CommitEvent:
    seq: int
    path: str
    units: Units
    at: float


@dataclass
class Hold:
    reservation: Reservation
    units: Units
    state: str = "held"  # held, expired, released or committed
    charged: Units = field(default_factory=dict)
    late: bool = False

    @property
    def path(self) -> str:
        return self.reservation.path


@dataclass
class ModelLimit:
    max_units: int
    since_seq: int
    """Windowed limits count commits from their creation on; lifetime limits count everything."""


amounts = st.tuples(st.integers(0, 2), st.integers(0, 80), st.integers(0, 100))
actuals = st.tuples(st.integers(0, 3), st.integers(0, 120), st.integers(0, 150))
limit_specs = st.tuples(
    st.sampled_from(TREE),
    st.sampled_from(DIMENSIONS),
    st.sampled_from(WINDOWS),
    st.integers(0, 8),
)
advances = st.one_of(
    st.integers(1, 45),
    # Into the rolling window's grey zone [t + seconds, t + seconds + granularity_s).
    st.sampled_from([30, 34, 39]),
    st.sampled_from([3_600, 40_000, DAY_S - 1, DAY_S, DAY_S + 30]),
)


class LedgerModel(RuleBasedStateMachine):
    """Drives one ledger and the reference model side by side."""

    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.tmp: str | None = None
        if self.backend == "memory":
            url = "memory://"
        else:
            self.tmp = tempfile.mkdtemp(prefix="budgeteer-model-")
            url = f"sqlite:///{Path(self.tmp, 'ledger.db').resolve()}"
        self.clock = FakeClock()
        self.ledger = Ledger(url, clock=self.clock)
        self.limits: dict[LimitKey, ModelLimit] = {}
        self.commits: list[CommitEvent] = []
        self.holds: list[Hold] = []
        self.seq = 0
        # Limits allowed to stand above their cap: a commit (or a lowered cap) put them there;
        # only a reservation may never do it.
        self.excused: set[LimitKey] = set()

    def teardown(self) -> None:
        self.ledger.close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the reference model ------------------------------------------------------------------

    def committed(self, scope: str) -> Units:
        total: Units = {}
        for event in self.commits:
            if covers(scope, event.path):
                add(total, event.units)
        return total

    def held(self, scope: str) -> Units:
        total: Units = {}
        for hold in self.holds:
            if hold.state == "held" and covers(scope, hold.path):
                add(total, hold.units)
        return total

    def window_used(self, key: LimitKey) -> tuple[int, int]:
        """Committed usage of a limit inside its window, as (surely counted, possibly counted)."""
        scope, dimension, window_key = key
        window = Window.from_key(window_key)
        since = self.limits[key].since_seq
        now = self.clock.now()
        low = high = 0
        for event in self.commits:
            amount = event.units.get(dimension, 0)
            if not amount or not covers(scope, event.path):
                continue
            if window.kind == "lifetime":
                low += amount
                high += amount
            elif event.seq < since:
                continue
            elif window.kind == "calendar":
                if event.at // DAY_S == now // DAY_S:
                    low += amount
                    high += amount
            else:
                low += amount if now < event.at + window.seconds else 0
                high += amount if now < event.at + window.seconds + window.granularity_s else 0
        return low, high

    def limits_on(self, path: str) -> list[LimitKey]:
        scopes = parse_path(path)
        return [key for key in self.limits if key[0] in scopes]

    def excuse_overfull(self) -> None:
        for key, limit in self.limits.items():
            _, high = self.window_used(key)
            if high + self.held(key[0]).get(key[1], 0) > limit.max_units:
                self.excused.add(key)

    def snapshot(self) -> list[tuple[object, ...]]:
        """Everything the ledger reports for the tree, to check that a refusal changed nothing."""
        rows: list[tuple[object, ...]] = []
        for scope in TREE:
            usage = self.ledger.usage(scope)
            rows.append((scope, dict(usage.used.units), dict(usage.held.units), usage.limits))
        return rows

    # -- rules: limits ------------------------------------------------------------------------

    @initialize(limits=st.lists(limit_specs, min_size=1, max_size=4))
    def start_with_limits(self, limits: list[tuple[str, str, Window, int]]) -> None:
        # Most interesting behaviour needs limits; starting with some makes denials common.
        for spec in limits:
            self.apply_limit(*spec)

    @rule(
        scope=st.sampled_from(TREE),
        dimension=st.sampled_from(DIMENSIONS),
        window=st.sampled_from(WINDOWS),
        size=st.integers(0, 8),
    )
    def set_limit(self, scope: str, dimension: str, window: Window, size: int) -> None:
        self.apply_limit(scope, dimension, window, size)

    def apply_limit(self, scope: str, dimension: str, window: Window, size: int) -> None:
        max_units = limit_units(dimension, size)
        limit = Limit(dimension, _api_amount(dimension, max_units), window)
        assert limit.max_units == max_units
        self.ledger.set_limit(scope, limit)
        key = (scope, dimension, window.key)
        existing = self.limits.get(key)
        # Replacing a cap keeps the window's meter; a new windowed limit starts counting now.
        since = existing.since_seq if existing is not None else self.seq + 1
        self.limits[key] = ModelLimit(max_units, since)
        self.excuse_overfull()

    @precondition(lambda self: bool(self.limits))
    @rule(data=st.data())
    def remove_limit(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.limits)))
        scope, dimension, window_key = key
        assert self.ledger.remove_limit(scope, dimension, Window.from_key(window_key)) is True
        del self.limits[key]
        self.excused.discard(key)

    @rule(scope=st.sampled_from(TREE), dimension=st.sampled_from(DIMENSIONS))
    def remove_missing_limit(self, scope: str, dimension: str) -> None:
        window = Window.daily()
        if (scope, dimension, window.key) not in self.limits:
            assert self.ledger.remove_limit(scope, dimension, window) is False

    # -- rules: the cycle ---------------------------------------------------------------------

    @rule(path=st.sampled_from(TREE), amount=amounts, ttl_s=st.sampled_from([30, 120, 300]))
    def reserve(self, path: str, amount: tuple[int, int, int], ttl_s: int) -> None:
        usage, units = usage_of(*amount)
        held_before = {scope: self.held(scope) for scope in parse_path(path)}
        must_refuse = may_refuse = False
        for key in self.limits_on(path):
            requested = units.get(key[1], 0)
            if not requested:
                continue
            low, high = self.window_used(key)
            held = held_before[key[0]].get(key[1], 0)
            max_units = self.limits[key].max_units
            must_refuse |= low + held + requested > max_units
            may_refuse |= high + held + requested > max_units
        before = self.snapshot()
        try:
            reservation = self.ledger.reserve(path, usage, ttl_s=ttl_s)
        except BudgetExceeded as refused:
            assert may_refuse, "refused although every limit had room"
            self.check_denial(refused, path, units, held_before)
            assert self.snapshot() == before
            return
        assert not must_refuse, "a reservation crossed a limit"
        assert reservation.path == path
        assert reservation.expires_at == self.clock.now() + ttl_s
        for state in reservation.limit_states:
            assert state.used + state.held <= state.max_units
        self.holds.append(Hold(reservation, units))

    def check_denial(
        self,
        refused: BudgetExceeded,
        path: str,
        units: Units,
        held_before: dict[str, Units],
    ) -> None:
        """The denial names a real limit on the path that the request would cross."""
        assert refused.window is not None
        key = (refused.scope, refused.dimension, refused.window.key)
        assert key in self.limits_on(path)
        dimension = refused.dimension
        max_units = self.limits[key].max_units
        used = to_units(dimension, refused.used)
        held = to_units(dimension, refused.held)
        requested = to_units(dimension, refused.requested)
        low, high = self.window_used(key)
        assert to_units(dimension, refused.limit) == max_units
        assert low <= used <= high
        assert held == held_before[refused.scope].get(dimension, 0)
        assert requested == units[dimension] > 0
        assert used + held + requested > max_units
        window = refused.window
        if window.kind == "lifetime":
            assert refused.retry_after is None
        elif window.kind == "calendar":
            now = self.clock.now()
            expected = (now // DAY_S + 1) * DAY_S - now if held + requested <= max_units else None
            assert refused.retry_after == expected

    def commit_and_check(self, hold: Hold, amount: tuple[int, int, int]) -> None:
        usage, units = usage_of(*amount)
        charge = self.ledger.commit(hold.reservation, usage)
        late = hold.state == "expired"
        assert (charge.replayed, charge.late, charge.path) == (False, late, hold.path)
        assert dict(charge.usage.units) == units
        hold.state, hold.charged, hold.late = "committed", units, late
        self.seq += 1
        self.commits.append(CommitEvent(self.seq, hold.path, units, self.clock.now()))
        reported = {(o.scope, o.dimension, o.window.key) for o in charge.overruns}
        for key in self.limits_on(hold.path):
            low, high = self.window_used(key)
            max_units = self.limits[key].max_units
            if key[1] in units and low > max_units:
                assert key in reported
            if key in reported:
                assert high > max_units
        self.excuse_overfull()

    @precondition(lambda self: any(h.state == "held" for h in self.holds))
    @rule(data=st.data(), amount=actuals)
    def commit(self, data: st.DataObject, amount: tuple[int, int, int]) -> None:
        hold = data.draw(st.sampled_from([h for h in self.holds if h.state == "held"]))
        self.commit_and_check(hold, amount)

    @precondition(lambda self: any(h.state == "expired" for h in self.holds))
    @rule(data=st.data(), amount=actuals)
    def commit_after_expiry(self, data: st.DataObject, amount: tuple[int, int, int]) -> None:
        # The work happened even though the hold lapsed: the spend is recorded, as late.
        hold = data.draw(st.sampled_from([h for h in self.holds if h.state == "expired"]))
        self.commit_and_check(hold, amount)

    @precondition(lambda self: any(h.state == "committed" for h in self.holds))
    @rule(data=st.data(), amount=actuals)
    def commit_again(self, data: st.DataObject, amount: tuple[int, int, int]) -> None:
        hold = data.draw(st.sampled_from([h for h in self.holds if h.state == "committed"]))
        usage, _ = usage_of(*amount)
        charge = self.ledger.commit(hold.reservation.id, usage)
        # A retry reports the first commit and counts nothing again (the invariants check that).
        assert (charge.replayed, charge.late, charge.path) == (True, hold.late, hold.path)
        assert dict(charge.usage.units) == hold.charged

    @precondition(lambda self: any(h.state == "released" for h in self.holds))
    @rule(data=st.data(), amount=actuals)
    def commit_after_release(self, data: st.DataObject, amount: tuple[int, int, int]) -> None:
        hold = data.draw(st.sampled_from([h for h in self.holds if h.state == "released"]))
        usage, _ = usage_of(*amount)
        with pytest.raises(ReservationSettled) as settled:
            self.ledger.commit(hold.reservation, usage)
        error = settled.value
        assert (error.reservation_id, error.state, error.attempted) == (
            hold.reservation.id,
            "released",
            "commit",
        )

    @precondition(lambda self: bool(self.holds))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        hold = data.draw(st.sampled_from(self.holds))
        if hold.state == "committed":
            with pytest.raises(ReservationSettled) as settled:
                self.ledger.release(hold.reservation)
            error = settled.value
            assert (error.reservation_id, error.state, error.attempted) == (
                hold.reservation.id,
                "committed",
                "release",
            )
            return
        self.ledger.release(hold.reservation)
        # Releasing twice, or a hold that already lapsed, is a no-op.
        if hold.state == "held":
            hold.state = "released"

    @rule(seconds=advances)
    def advance_clock(self, seconds: int) -> None:
        self.clock.advance(seconds)
        now = self.clock.now()
        for hold in self.holds:
            if hold.state == "held" and hold.reservation.expires_at <= now:
                hold.state = "expired"

    @rule(path=st.sampled_from(TREE))
    def peek(self, path: str) -> None:
        headroom = self.ledger.peek(path)
        assert headroom.path == path
        depths = [h.scope.count("/") for h in headroom.limits]
        assert depths == sorted(depths), "peek lists the top scope first"
        self.check_limits(headroom.limits, self.limits_on(path))

    def check_limits(self, reported: tuple[LimitHeadroom, ...], expected: list[LimitKey]) -> None:
        seen: dict[LimitKey, tuple[int, int, int]] = {}
        for headroom in reported:
            dimension = headroom.dimension
            seen[(headroom.scope, dimension, headroom.window.key)] = (
                to_units(dimension, headroom.limit),
                to_units(dimension, headroom.used),
                to_units(dimension, headroom.held),
            )
        assert sorted(seen) == sorted(expected)
        assert len(seen) == len(reported)
        for key, (max_units, used, held) in seen.items():
            low, high = self.window_used(key)
            assert max_units == self.limits[key].max_units
            assert low <= used <= high
            assert held == self.held(key[0]).get(key[1], 0)

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def meters_match_the_model(self) -> None:
        for scope in TREE:
            usage = self.ledger.usage(scope)
            assert dict(usage.used.units) == self.committed(scope)
            assert dict(usage.held.units) == self.held(scope)
            assert usage.cost_unknown is False
            own = [key for key in self.limits if key[0] == scope]
            self.check_limits(usage.limits, own)
            for headroom in usage.limits:
                key = (scope, headroom.dimension, headroom.window.key)
                dimension = headroom.dimension
                total = to_units(dimension, headroom.used) + to_units(dimension, headroom.held)
                if total > to_units(dimension, headroom.limit):
                    assert key in self.excused, f"{key} is over its cap without an overrun"
                else:
                    self.excused.discard(key)


def _api_amount(dimension: str, units: int) -> int | Decimal:
    return Decimal(units).scaleb(-9) if dimension == "cost_usd" else units


class SQLiteLedgerModel(LedgerModel):
    backend = "sqlite"


MODEL_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestMemoryLedgerModel = LedgerModel.TestCase
TestMemoryLedgerModel.settings = MODEL_SETTINGS
TestSQLiteLedgerModel = SQLiteLedgerModel.TestCase
TestSQLiteLedgerModel.settings = MODEL_SETTINGS


# --------------------------------------------------------------------------------------------
# Contract gaps found while writing the model, fixed in src/: keep them closed


def test_rolling_usage_leaves_within_seconds_plus_granularity(
    ledger: Ledger, clock: FakeClock
) -> None:
    window = Window.rolling(60, granularity_s=20)
    ledger.set_limit("org:a", Limit("requests", 1, window))
    assert clock.now() % 20 == 0  # committed at the very start of a bucket
    ledger.commit(ledger.reserve("org:a", Usage(requests=1)), Usage(requests=1))
    clock.advance(60 + 20 - 0.001)
    assert [h.used for h in ledger.peek("org:a").limits] == [1]
    clock.advance(0.001)
    assert [h.used for h in ledger.peek("org:a").limits] == [0]


def test_rolling_granularity_must_tile_the_span() -> None:
    with pytest.raises(InvalidInput) as error:
        Window.rolling(45, granularity_s=20)
    assert (error.value.field, error.value.value) == ("window.granularity_s", 20)
    assert Window.rolling(7 * 86400).granularity_s == 10080
    assert 604_800 % Window.rolling(604_801 - 1).granularity_s == 0


def _release_then_commit_expired(ledger: Ledger, clock: FakeClock, *, reclaim: bool) -> str:
    reservation = ledger.reserve("org:a", Usage(requests=1), ttl_s=30)
    clock.advance(31)
    if reclaim:
        ledger.peek("org:a")  # any operation that reclaims lapsed holds
    ledger.release(reservation)
    try:
        charge = ledger.commit(reservation, Usage(requests=1))
    except ReservationSettled as settled:
        return f"settled:{settled.state}"
    return f"late:{charge.late}"


def test_release_after_expiry_does_not_depend_on_unrelated_reclaims(
    make_ledger: Callable[[], Ledger], clock: FakeClock
) -> None:
    ledger = make_ledger()
    without_reclaim = _release_then_commit_expired(ledger, clock, reclaim=False)
    with_reclaim = _release_then_commit_expired(ledger, clock, reclaim=True)
    assert without_reclaim == with_reclaim == "late:True"
