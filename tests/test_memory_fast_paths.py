"""The memory backend's fast paths agree with its general ones, answer for answer.

The backend remembers a single-limit ``admit`` refusal per path and answers repeats from it
(a saturated rate limiter's hot path). Here two backends run the same random operations in
lockstep, one of them never remembering, with a clock that may jump back and forth: every
answer, error and counter must be the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from budgeteer import Ledger, Limit, Usage
from budgeteer.backends.base import Denial
from budgeteer.backends.memory import MemoryBackend
from budgeteer.errors import BudgeteerError

PATHS = ("a:x", "a:x/b:y", "a:x/b:z")
WINDOWS = ("lifetime", "rolling:4:1", "rolling:6:2")
DIMENSIONS = ("requests", "total_tokens")


class _Forgetful(dict[str, Any]):
    """A refusal memory that never remembers: every admit takes the general path."""

    def __setitem__(self, key: str, value: Any) -> None:
        pass


# Few paths, amounts and limits, so that refusals, repeats and the mutations between them meet.
amounts = st.sampled_from(
    [{"requests": 1}, {"requests": 2}, {"total_tokens": 1}, {"requests": 1, "total_tokens": 2}]
)
admits = st.tuples(
    st.just("admit"), st.sampled_from(PATHS), amounts, st.sampled_from([-1, -1, 1, 2])
)
others = st.one_of(
    st.tuples(st.just("reserve"), st.sampled_from(PATHS), amounts, st.sampled_from([1.0, 4.5])),
    st.tuples(st.just("commit"), st.integers(0, 20), amounts),
    st.tuples(st.just("release"), st.integers(0, 20)),
    st.tuples(st.just("charge"), st.sampled_from(PATHS), amounts),
    st.tuples(
        st.just("set_limit"),
        st.sampled_from(PATHS),
        st.sampled_from(DIMENSIONS),
        st.sampled_from(WINDOWS),
        st.integers(0, 4),
    ),
    st.tuples(
        st.just("remove_limit"),
        st.sampled_from(PATHS),
        st.sampled_from(DIMENSIONS),
        st.sampled_from(WINDOWS),
    ),
    st.tuples(st.just("prune"), st.sampled_from(PATHS)),
    st.tuples(st.just("clock"), st.sampled_from([-2.5, -0.5, 0.25, 1.0, 2.0, 6.0])),
    st.tuples(st.just("peek"), st.sampled_from(PATHS)),
)
# Every other operation an admission: refusals are what the memory is about.
operations = st.lists(st.tuples(admits, others), min_size=5, max_size=40).map(
    lambda pairs: [operation for pair in pairs for operation in pair]
)


def _run(backend: MemoryBackend, operation: tuple[Any, ...], now: float, ids: list[str]) -> Any:
    kind = operation[0]
    if kind == "admit":
        _, path, asked, expect = operation
        return backend.admit(path, _scopes(path), dict(asked), now, expect)
    if kind == "reserve":
        _, path, asked, ttl = operation
        reservation_id = f"r{len(ids)}"
        ids.append(reservation_id)
        return backend.reserve(reservation_id, path, _scopes(path), dict(asked), now, now + ttl)
    if kind == "commit":
        outcome = backend.commit(_pick(ids, operation[1]), dict(operation[2]), now, {})
        return (outcome.status, outcome.path, outcome.overruns, outcome.late)
    if kind == "release":
        return backend.release(_pick(ids, operation[1]), now)
    if kind == "charge":
        _, path, asked = operation
        ids.append(f"c{len(ids)}")
        return backend.charge(ids[-1], path, _scopes(path), dict(asked), now, {}).overruns
    if kind == "set_limit":
        return backend.set_limit(*operation[1:])
    if kind == "remove_limit":
        return backend.remove_limit(*operation[1:])
    if kind == "prune":
        return backend.prune(operation[1], now)
    return backend.peek(_scopes(operation[1]), now)


def _scopes(path: str) -> tuple[str, ...]:
    parts = path.split("/")
    return tuple("/".join(parts[: i + 1]) for i in range(len(parts)))


def _pick(ids: list[str], index: int) -> str:
    return ids[index % len(ids)] if ids else "missing"


@settings(max_examples=300, deadline=None)
@given(operations)
def test_remembered_refusals_answer_as_the_general_path(ops: list[tuple[Any, ...]]) -> None:
    fast, general = MemoryBackend(), MemoryBackend()
    general._refused = _Forgetful()
    now = 1_767_571_200.0
    fast_ids: list[str] = []
    general_ids: list[str] = []
    refused: dict[tuple[str, str, int], tuple[Any, ...]] = {}

    def both(operation: tuple[Any, ...]) -> Any:
        answers = []
        for backend, ids in ((fast, fast_ids), (general, general_ids)):
            try:
                answers.append(_run(backend, operation, now, ids))
            except BudgeteerError as error:
                answers.append(type(error))
        assert answers[0] == answers[1], operation
        return answers[0]

    for operation in ops:
        if operation[0] == "clock":
            now += operation[1]
        elif isinstance(both(operation), Denial):
            refused[operation[1], repr(operation[2]), operation[3]] = operation
        # Ask every refused admission again: the refusal memory answers these repeats, so
        # whatever changed in between (a mutation, the clock) must show the same on both.
        for again in list(refused.values()):
            if not isinstance(both(again), Denial):
                del refused[again[1], repr(again[2]), again[3]]
    for path in PATHS:
        assert fast.peek(_scopes(path), now) == general.peek(_scopes(path), now)


def test_a_saturated_key_is_answered_from_memory_until_a_bucket_leaves() -> None:
    backend = MemoryBackend()
    backend.set_limit("k:1", "requests", "rolling:10:1", 2)
    now = 1_767_571_200.5
    for _ in range(2):
        assert not isinstance(backend.admit("k:1", ("k:1",), {"requests": 1}, now), Denial)
    first = backend.admit("k:1", ("k:1",), {"requests": 1}, now)
    assert isinstance(first, Denial)
    assert "k:1" in backend._refused
    later = backend.admit("k:1", ("k:1",), {"requests": 1}, now + 3)
    assert isinstance(later, Denial)
    assert later.state == first.state
    assert first.retry_after is not None
    assert abs(later.retry_after - (first.retry_after - 3)) < 1e-6
    # The bucket leaves 11 whole seconds after its own: room again, and the memory is dropped.
    assert not isinstance(backend.admit("k:1", ("k:1",), {"requests": 1}, now + 10.5), Denial)
    assert "k:1" not in backend._refused


def test_any_mutation_forgets_the_refusals() -> None:
    backend = MemoryBackend()
    backend.set_limit("k:1", "requests", "lifetime", 1)
    backend.reserve("r1", "k:1", ("k:1",), {"requests": 1}, 0.0, 100.0)
    assert isinstance(backend.admit("k:1", ("k:1",), {"requests": 1}, 1.0), Denial)
    assert backend._refused
    backend.release("r1", 2.0)
    assert not backend._refused
    assert not isinstance(backend.admit("k:1", ("k:1",), {"requests": 1}, 3.0), Denial)


def test_a_clock_stepped_back_after_a_bucket_left_is_not_answered_from_memory() -> None:
    backend = MemoryBackend()
    backend.set_limit("k:1", "requests", "rolling:10:1", 1)
    now = 1_767_571_200.0
    backend.admit("k:1", ("k:1",), {"requests": 1}, now)
    assert isinstance(backend.admit("k:1", ("k:1",), {"requests": 1}, now), Denial)
    backend.peek(("k:1",), now + 20)  # the bucket leaves, as a read at a later time sees
    assert not isinstance(backend.admit("k:1", ("k:1",), {"requests": 1}, now + 1), Denial)


def test_a_hold_expired_before_the_clock_stepped_back_is_not_answered_from_memory() -> None:
    backend = MemoryBackend()
    backend.set_limit("k:1", "requests", "lifetime", 1)
    backend.reserve("r1", "k:1", ("k:1",), {"requests": 1}, 0.0, 10.0)
    assert isinstance(backend.admit("k:1", ("k:1",), {"requests": 1}, 5.0), Denial)
    backend.peek(("k:1",), 20.0)  # reclaims the expired hold
    assert not isinstance(backend.admit("k:1", ("k:1",), {"requests": 1}, 5.0), Denial)


def _refused_then(change: Callable[[MemoryBackend], object], *limits: tuple[str, str, int]) -> None:
    """Refuse ``{"requests": 2}`` on ``a:x``, apply ``change``, then ask again: the answer
    must be the general path's (a backend that never remembers, put through the same)."""
    answers = []
    for remembers in (True, False):
        backend = MemoryBackend()
        if not remembers:
            backend._refused = _Forgetful()
        for scope, window_key, max_units in limits:
            backend.set_limit(scope, "requests", window_key, max_units)
        backend.admit("a:x", ("a:x",), {"requests": 1}, 10.0)
        assert isinstance(backend.admit("a:x", ("a:x",), {"requests": 2}, 10.0), Denial)
        change(backend)
        answers.append(backend.admit("a:x", ("a:x",), {"requests": 2}, 10.0))
    assert answers[0] == answers[1]


def test_an_admission_over_several_limits_forgets_the_refusals() -> None:
    _refused_then(
        lambda backend: backend.admit("a:x/b:y", _scopes("a:x/b:y"), {"requests": 1}, 10.0),
        ("a:x", "lifetime", 2),
        ("a:x/b:y", "lifetime", 5),
    )


def test_an_admission_over_a_calendar_limit_forgets_the_refusals() -> None:
    _refused_then(
        lambda backend: backend.admit("a:x/b:y", _scopes("a:x/b:y"), {"requests": 1}, 10.0),
        ("a:x", "lifetime", 2),
        ("a:x/b:y", "calendar:day:UTC:0", 5),
    )


def test_pruning_forgets_the_refusals() -> None:
    backend = MemoryBackend()
    backend.set_limit("a:x", "requests", "lifetime", 1)
    assert isinstance(backend.admit("a:x", ("a:x",), {"requests": 2}, 10.0), Denial)
    assert backend.prune("a:x", 10.0)  # nothing live: the scope and its limit go
    assert not isinstance(backend.admit("a:x", ("a:x",), {"requests": 2}, 10.0), Denial)


# -- settled ids are remembered compactly ---------------------------------------------------------


@given(
    actual=st.dictionaries(
        st.sampled_from(["requests", "input_tokens", "output_tokens", "_unpriced"]),
        st.integers(0, 2**53 - 1),
        min_size=1,
    ),
    metadata=st.sampled_from([{}, {"model": "gpt-4o"}]),
    late=st.booleans(),
    over=st.booleans(),
)
@settings(max_examples=60, deadline=None)
def test_a_replayed_commit_answers_what_the_first_one_recorded(
    actual: dict[str, int], metadata: dict[str, str], late: bool, over: bool
) -> None:
    backend = MemoryBackend()
    limit = 0 if over else 2**53 - 1
    for dimension in actual:
        backend.set_limit("a:x", dimension, "lifetime", limit)
    held = dict.fromkeys(actual, 0)
    assert not isinstance(backend.reserve("r1", "a:x/b:y", ("a:x", "a:x/b:y"), held, 0, 10), Denial)
    first = backend.commit("r1", actual, 20.0 if late else 5.0, metadata)
    again = backend.commit("r1", actual, 30.0, metadata)
    assert first.status == "committed"
    assert again.status == "replayed"
    assert (again.path, dict(again.actual), again.committed_at, again.late) == (
        first.path,
        actual,
        first.committed_at,
        late,
    )
    assert again.overruns == first.overruns
    assert dict(again.metadata) == metadata
    counted = {dimension: units for dimension, units in actual.items() if units}
    assert {k: v for k, v in backend.meters("a:x", 30.0).used.items() if v} == counted  # once


def test_the_unknown_cost_flag_returns_after_a_prune() -> None:
    """A path's commits add the unknown-cost flag once; a prune that forgets a scope's totals
    must not leave the next unpriced commit there unflagged."""
    ledger = Ledger("memory://")
    ledger.set_limit("org:a", Limit("requests", 100))
    unpriced = Usage(requests=1)
    for _ in range(2):
        ledger.commit(ledger.reserve("org:a/run:1", unpriced), unpriced)
    assert ledger.usage("org:a/run:1").cost_unknown
    assert ledger.prune("org:a/run:1")
    assert not ledger.usage("org:a/run:1").cost_unknown
    ledger.commit(ledger.reserve("org:a/run:1", unpriced), unpriced)
    assert ledger.usage("org:a/run:1").cost_unknown
    assert ledger.usage("org:a").used.requests == 3
