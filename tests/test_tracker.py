"""``ResourceTracker``: the control-tower tracker API on top of the ledger."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import fields
from pathlib import Path

import pytest

from budgeteer import BudgetExceeded, InvalidInput, Ledger, Limit, Usage
from budgeteer.testing import FakeClock
from budgeteer.tracker import (
    ResourceQuota,
    ResourceTracker,
    ResourceTrackerProtocol,
    ResourceUsage,
)

PID = "env-123"
SCOPE = f"tracker:default/process:{PID}"


class RecordingLogger:
    """A ``LoggerProtocol`` fake that keeps each call's structured ``extra``."""

    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict[str, object]]] = []
        self.infos: list[tuple[str, dict[str, object]]] = []

    def warning(
        self, msg: str, /, *args: object, extra: Mapping[str, object] | None = None
    ) -> None:
        self.warnings.append((msg.split(maxsplit=1)[0], dict(extra or {})))

    def info(self, msg: str, /, *args: object, extra: Mapping[str, object] | None = None) -> None:
        self.infos.append((msg.split(maxsplit=1)[0], dict(extra or {})))

    def events(self, name: str) -> list[dict[str, object]]:
        return [extra for event, extra in self.warnings if event == name]


@pytest.fixture
def ledger(clock: FakeClock) -> Iterator[Ledger]:
    with Ledger("memory://", clock=clock) as ledger:
        yield ledger


@pytest.fixture
def logger() -> RecordingLogger:
    return RecordingLogger()


@pytest.fixture
def tracker(ledger: Ledger, logger: RecordingLogger) -> ResourceTracker:
    return ResourceTracker(logger, ledger=ledger)


# --------------------------------------------------------------------------------------------
# ResourceQuota and ResourceUsage


def test_quota_defaults_match_the_original() -> None:
    quota = ResourceQuota()
    assert quota.max_input_tokens == 4096
    assert quota.max_output_tokens == 2048
    assert quota.max_context_tokens == 16384
    assert quota.max_llm_calls == 10
    assert quota.max_tool_calls == 50
    assert quota.max_agent_hops == 21
    assert quota.max_iterations == 3
    assert quota.timeout_seconds == 300
    assert quota.soft_timeout_seconds == 240
    assert quota.rate_limit is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_llm_calls", -1),
        ("max_tool_calls", 1.5),
        ("max_input_tokens", True),
        ("max_context_tokens", "10"),
        ("max_output_tokens", 2**53),
        ("timeout_seconds", -0.5),
        ("soft_timeout_seconds", float("nan")),
    ],
)
def test_quota_refuses_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        ResourceQuota(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == field
    assert info.value.value is value


def test_quota_accepts_fractional_timeouts() -> None:
    assert ResourceQuota(timeout_seconds=1.5).timeout_seconds == 1.5


def test_is_within_bounds_is_false_once_a_count_reaches_its_cap() -> None:
    quota = ResourceQuota(max_llm_calls=2, max_tool_calls=2, max_agent_hops=2, max_iterations=2)
    assert quota.is_within_bounds(1, 1, 1, 1)
    assert not quota.is_within_bounds(2, 1, 1, 1)
    assert not quota.is_within_bounds(1, 2, 1, 1)
    assert not quota.is_within_bounds(1, 1, 2, 1)
    assert not quota.is_within_bounds(1, 1, 1, 2)


@pytest.mark.parametrize(
    ("usage", "reason"),
    [
        (ResourceUsage(llm_calls=9, tool_calls=49, agent_hops=20, iterations=2), None),
        (ResourceUsage(llm_calls=10), "max_llm_calls_exceeded"),
        (ResourceUsage(tool_calls=50), "max_tool_calls_exceeded"),
        (ResourceUsage(agent_hops=21), "max_agent_hops_exceeded"),
        (ResourceUsage(iterations=3), "max_iterations_exceeded"),
        (ResourceUsage(elapsed_seconds=299.999), None),
        (ResourceUsage(elapsed_seconds=300.0), "timeout_exceeded"),
        (ResourceUsage(llm_calls=11, iterations=5), "max_llm_calls_exceeded"),
        (ResourceUsage(tokens_in=10**6, tokens_out=10**6), None),
    ],
)
def test_exceeds_quota_reports_the_first_limit_reached(
    usage: ResourceUsage, reason: str | None
) -> None:
    assert usage.exceeds_quota(ResourceQuota()) == reason


# --------------------------------------------------------------------------------------------
# Construction


def test_tracker_satisfies_the_protocol(tracker: ResourceTracker) -> None:
    assert isinstance(tracker, ResourceTrackerProtocol)


def test_default_ledger_is_private_memory_on_the_given_clock(clock: FakeClock) -> None:
    tracker = ResourceTracker(clock=clock)
    assert tracker.ledger.url == "memory://"
    assert tracker.ledger.clock is clock
    assert tracker.scope_prefix == "tracker:default"
    tracker.record_usage(PID, llm_calls=1)
    clock.advance(12.5)
    assert tracker.update_elapsed_time(PID) == 12.5


def test_scope_for_places_each_pid_under_the_prefix(ledger: Ledger) -> None:
    tracker = ResourceTracker(ledger=ledger, scope_prefix="org:acme/tracker:kernel")
    assert tracker.scope_for("a.b@c+d=e-1") == "org:acme/tracker:kernel/process:a.b@c+d=e-1"


@pytest.mark.parametrize("prefix", ["", "Tracker:x", "tracker", "a:b/", "a:b/../c:d", 7])
def test_bad_scope_prefix_is_refused(ledger: Ledger, prefix: object) -> None:
    with pytest.raises(InvalidInput) as info:
        ResourceTracker(ledger=ledger, scope_prefix=prefix)  # type: ignore[arg-type]
    assert info.value.field == "scope_prefix"


def test_a_clock_other_than_the_ledgers_is_refused(ledger: Ledger) -> None:
    with pytest.raises(InvalidInput) as info:
        ResourceTracker(ledger=ledger, clock=FakeClock())
    assert info.value.field == "clock"
    assert ResourceTracker(ledger=ledger, clock=ledger.clock).ledger is ledger


def test_bad_default_quota_is_refused(ledger: Ledger) -> None:
    with pytest.raises(InvalidInput) as info:
        ResourceTracker(default_quota={"max_llm_calls": 3}, ledger=ledger)  # type: ignore[arg-type]
    assert info.value.field == "default_quota"


# --------------------------------------------------------------------------------------------
# Bad pids


BAD_PIDS: list[object] = [
    "",
    ".hidden",
    "-dash-first",
    "a/b",
    "a/process:b",
    "has space",
    "colon:inside",
    "x" * 129,
    123,
    None,
]


@pytest.mark.parametrize("pid", BAD_PIDS)
@pytest.mark.parametrize(
    "call",
    [
        "allocate",
        "release",
        "get_quota",
        "adjust_quota",
        "record_usage",
        "get_usage",
        "update_elapsed_time",
        "check_quota",
        "get_remaining_budget",
        "is_tracked",
        "scope_for",
    ],
)
def test_bad_pid_names_the_field_and_changes_nothing(
    tracker: ResourceTracker, ledger: Ledger, pid: object, call: str
) -> None:
    method = getattr(tracker, call)
    extra_args = {"allocate": (ResourceQuota(),), "record_usage": (1,)}.get(call, ())
    with pytest.raises(InvalidInput) as info:
        method(pid, *extra_args)
    assert info.value.field == "pid"
    assert info.value.value == pid
    assert tracker.get_all_usage() == {}
    assert ledger.usage("tracker:default").used == Usage.from_units({})


@pytest.mark.parametrize("pid", ["p" * 128, "under_score", "0.user@example.com", "a+b=c-d"])
def test_pids_of_scope_name_characters_are_accepted(tracker: ResourceTracker, pid: str) -> None:
    assert tracker.allocate(pid, ResourceQuota())
    assert tracker.is_tracked(pid)
    assert tracker.scope_for(pid) == f"tracker:default/process:{pid}"


# --------------------------------------------------------------------------------------------
# Allocation and quotas


def test_allocate_writes_the_quota_as_ledger_limits(
    tracker: ResourceTracker, ledger: Ledger
) -> None:
    quota = ResourceQuota(
        max_llm_calls=4,
        max_tool_calls=5,
        max_agent_hops=6,
        max_iterations=7,
        max_input_tokens=800,
        max_output_tokens=900,
    )
    assert tracker.allocate(PID, quota) is True
    assert set(ledger.limits(SCOPE)) == {
        Limit("requests", 4),
        Limit("tool_calls", 5),
        Limit("agent_hops", 6),
        Limit("iterations", 7),
        Limit("input_tokens", 800),
        Limit("output_tokens", 900),
    }
    assert tracker.is_tracked(PID)
    assert tracker.get_quota(PID) == quota


def test_tracker_limits_bind_other_ledger_clients(tracker: ResourceTracker, ledger: Ledger) -> None:
    tracker.allocate(PID, ResourceQuota(max_llm_calls=1))
    tracker.record_usage(PID, llm_calls=1)
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(SCOPE, Usage(requests=1))
    assert info.value.scope == SCOPE
    assert info.value.dimension == "requests"
    assert info.value.used == 1


def test_second_allocate_is_refused_and_logged(
    tracker: ResourceTracker, logger: RecordingLogger
) -> None:
    assert tracker.allocate(PID, ResourceQuota(max_llm_calls=5))
    assert tracker.allocate(PID, ResourceQuota(max_llm_calls=99)) is False
    quota = tracker.get_quota(PID)
    assert quota is not None
    assert quota.max_llm_calls == 5
    assert logger.events("duplicate_allocation") == [{"pid": PID}]


def test_allocate_refuses_a_non_quota(tracker: ResourceTracker) -> None:
    with pytest.raises(InvalidInput) as info:
        tracker.allocate(PID, {"max_llm_calls": 1})  # type: ignore[arg-type]
    assert info.value.field == "quota"
    assert not tracker.is_tracked(PID)


def test_allocate_and_get_quota_copy_the_quota(tracker: ResourceTracker) -> None:
    shared = ResourceQuota(max_llm_calls=5)
    tracker.allocate("a", shared)
    tracker.allocate("b", shared)
    shared.max_llm_calls = 1
    returned = tracker.get_quota("a")
    assert returned is not None
    assert returned.max_llm_calls == 5
    returned.max_llm_calls = 2
    assert tracker.check_quota("a") is None
    again = tracker.get_quota("a")
    assert again is not None
    assert again.max_llm_calls == 5


def test_get_quota_of_an_untracked_pid_is_none(tracker: ResourceTracker) -> None:
    assert tracker.get_quota(PID) is None


def test_adjust_quota_while_running(
    tracker: ResourceTracker, ledger: Ledger, logger: RecordingLogger, clock: FakeClock
) -> None:
    tracker.allocate(PID, ResourceQuota(max_llm_calls=2, timeout_seconds=60))
    tracker.record_usage(PID, llm_calls=2)
    assert tracker.check_quota(PID) == "max_llm_calls_exceeded"

    assert tracker.adjust_quota(PID, max_llm_calls=20, timeout_seconds=600) is True
    assert tracker.check_quota(PID) is None
    assert Limit("requests", 20) in ledger.limits(SCOPE)
    quota = tracker.get_quota(PID)
    assert quota is not None
    assert (quota.max_llm_calls, quota.timeout_seconds) == (20, 600)
    assert logger.infos == [
        ("quota_adjusted", {"pid": PID, "max_llm_calls": 20, "timeout_seconds": 600})
    ]
    clock.advance(120)
    assert tracker.check_quota(PID) is None
    remaining = tracker.get_remaining_budget(PID)
    assert remaining is not None
    assert remaining["llm_calls"] == 18
    assert remaining["time_seconds"] == 480


def test_adjust_quota_of_an_untracked_pid_is_false(tracker: ResourceTracker) -> None:
    assert tracker.adjust_quota(PID, max_llm_calls=20) is False
    assert not tracker.is_tracked(PID)


@pytest.mark.parametrize(
    ("adjustments", "field"),
    [
        ({"max_llm_calls": 20, "max_lm_calls": 5}, "max_lm_calls"),
        ({"max_tool_calls": 20, "max_llm_calls": -1}, "max_llm_calls"),
        ({"timeout_seconds": float("inf")}, "timeout_seconds"),
    ],
)
def test_adjust_quota_refuses_bad_input_and_changes_nothing(
    tracker: ResourceTracker, ledger: Ledger, adjustments: dict[str, int], field: str
) -> None:
    tracker.allocate(PID, ResourceQuota())
    limits_before = set(ledger.limits(SCOPE))
    with pytest.raises(InvalidInput) as info:
        tracker.adjust_quota(PID, **adjustments)
    assert info.value.field == field
    assert tracker.get_quota(PID) == ResourceQuota()
    assert set(ledger.limits(SCOPE)) == limits_before


# --------------------------------------------------------------------------------------------
# Recording usage


def test_record_usage_accumulates_in_the_ledger(tracker: ResourceTracker, ledger: Ledger) -> None:
    tracker.allocate(PID, ResourceQuota())
    tracker.record_usage(PID, llm_calls=1, tokens_in=500, tokens_out=200)
    usage = tracker.record_usage(
        PID, llm_calls=1, tool_calls=3, agent_hops=2, tokens_in=10, tokens_out=5, iterations=1
    )
    assert usage == ResourceUsage(
        llm_calls=2, tool_calls=3, agent_hops=2, iterations=1, tokens_in=510, tokens_out=205
    )
    assert tracker.get_usage(PID) == usage
    used = ledger.usage(SCOPE).used
    assert (used.requests, used.tool_calls, used.agent_hops, used.iterations) == (2, 3, 2, 1)
    assert (used.input_tokens, used.output_tokens) == (510, 205)


def test_record_usage_leaves_cost_unknown(tracker: ResourceTracker, ledger: Ledger) -> None:
    tracker.record_usage(PID, llm_calls=1)
    assert ledger.usage(SCOPE).cost_unknown is True


def test_record_usage_auto_tracks_with_the_default_quota(
    ledger: Ledger, logger: RecordingLogger
) -> None:
    default = ResourceQuota(max_llm_calls=7, max_output_tokens=100)
    tracker = ResourceTracker(logger, default, ledger=ledger)
    assert not tracker.is_tracked(PID)
    usage = tracker.record_usage(PID, tool_calls=1)
    assert usage.tool_calls == 1
    assert tracker.is_tracked(PID)
    assert tracker.get_quota(PID) == default
    assert Limit("requests", 7) in ledger.limits(SCOPE)
    assert Limit("output_tokens", 100) in ledger.limits(SCOPE)
    assert tracker.get_system_usage()["total_processes"] == 1


def test_record_usage_with_nothing_still_starts_tracking(
    tracker: ResourceTracker, ledger: Ledger
) -> None:
    assert tracker.record_usage(PID) == ResourceUsage()
    assert tracker.is_tracked(PID)
    assert ledger.usage(SCOPE).used == Usage.from_units({})


def test_record_usage_counts_past_a_limit(tracker: ResourceTracker) -> None:
    tracker.allocate(PID, ResourceQuota(max_tool_calls=2))
    usage = tracker.record_usage(PID, tool_calls=5)
    assert usage.tool_calls == 5
    remaining = tracker.get_remaining_budget(PID)
    assert remaining is not None
    assert remaining["tool_calls"] == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"llm_calls": -1}, "llm_calls"),
        ({"tool_calls": 1.0}, "tool_calls"),
        ({"agent_hops": True}, "agent_hops"),
        ({"tokens_in": "5"}, "tokens_in"),
        ({"tokens_out": 2**53}, "tokens_out"),
        ({"iterations": -3}, "iterations"),
    ],
)
def test_record_usage_refuses_bad_counts_and_records_nothing(
    tracker: ResourceTracker, ledger: Ledger, kwargs: dict[str, int], field: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        tracker.record_usage(PID, **{"llm_calls": 1, "tool_calls": 1, **kwargs})
    assert info.value.field == field
    assert not tracker.is_tracked(PID)
    assert ledger.usage(SCOPE).used == Usage.from_units({})


def test_get_usage_of_an_untracked_pid_is_none(tracker: ResourceTracker) -> None:
    assert tracker.get_usage(PID) is None
    assert tracker.update_elapsed_time(PID) is None
    assert tracker.get_remaining_budget(PID) is None


def test_get_all_usage_lists_tracked_pids(tracker: ResourceTracker, clock: FakeClock) -> None:
    tracker.allocate("a", ResourceQuota())
    tracker.record_usage("a", llm_calls=2)
    clock.advance(5)
    tracker.record_usage("b", tool_calls=3)
    clock.advance(1)
    assert tracker.get_all_usage() == {
        "a": ResourceUsage(llm_calls=2, elapsed_seconds=6.0),
        "b": ResourceUsage(tool_calls=3, elapsed_seconds=1.0),
    }


def test_record_usage_is_exact_under_threads(tracker: ResourceTracker) -> None:
    tracker.allocate(PID, ResourceQuota(max_llm_calls=10_000))

    def work() -> None:
        for _ in range(50):
            tracker.record_usage(PID, llm_calls=1, tokens_in=3)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    usage = tracker.get_usage(PID)
    assert usage is not None
    assert (usage.llm_calls, usage.tokens_in) == (400, 1200)


# --------------------------------------------------------------------------------------------
# Warnings


def test_warns_at_80_percent_of_a_limit(tracker: ResourceTracker, logger: RecordingLogger) -> None:
    tracker.allocate(PID, ResourceQuota(max_llm_calls=10))
    tracker.record_usage(PID, llm_calls=7)
    assert logger.events("approaching_limit") == []
    tracker.record_usage(PID, llm_calls=1)
    assert logger.events("approaching_limit") == [
        {"pid": PID, "resource": "llm_calls", "used": 8, "limit": 10}
    ]


@pytest.mark.parametrize(
    ("resource", "used", "limit"),
    [
        ("tool_calls", 40, 50),
        ("agent_hops", 17, 21),
        ("iterations", 3, 3),
        ("tokens_in", 3277, 4096),
        ("tokens_out", 2048, 2048),
    ],
)
def test_warns_for_every_limited_dimension(
    tracker: ResourceTracker, logger: RecordingLogger, resource: str, used: int, limit: int
) -> None:
    tracker.record_usage(PID, **{resource: used})
    assert logger.events("approaching_limit") == [
        {"pid": PID, "resource": resource, "used": used, "limit": limit}
    ]


def test_no_warning_just_below_80_percent(
    tracker: ResourceTracker, logger: RecordingLogger
) -> None:
    tracker.record_usage(PID, agent_hops=16, tokens_in=3276)  # 16/21 and 3276/4096 < 0.8
    assert logger.warnings == []


def test_warns_only_for_dimensions_charged_by_the_call(
    tracker: ResourceTracker, logger: RecordingLogger
) -> None:
    tracker.record_usage(PID, llm_calls=9)
    tracker.record_usage(PID, tool_calls=1)
    assert [e["resource"] for e in logger.events("approaching_limit")] == ["llm_calls"]


def test_warns_past_the_soft_timeout(
    tracker: ResourceTracker, logger: RecordingLogger, clock: FakeClock
) -> None:
    tracker.allocate(PID, ResourceQuota(soft_timeout_seconds=240, timeout_seconds=300))
    clock.advance(239)
    tracker.record_usage(PID, tool_calls=1)
    assert logger.events("approaching_timeout") == []
    clock.advance(1)
    tracker.record_usage(PID, tool_calls=1)
    assert logger.events("approaching_timeout") == [
        {
            "pid": PID,
            "resource": "time_seconds",
            "elapsed_seconds": 240.0,
            "soft_timeout_seconds": 240,
            "timeout_seconds": 300,
        }
    ]


def test_without_a_logger_warnings_go_to_the_budgeteer_logger(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = ResourceTracker(ledger=ledger)
    with caplog.at_level(logging.WARNING, logger="budgeteer.tracker"):
        tracker.record_usage(PID, llm_calls=8)
    [record] = caplog.records
    assert record.name == "budgeteer.tracker"
    assert record.levelno == logging.WARNING
    facts = {key: record.__dict__[key] for key in ("pid", "resource", "used", "limit")}
    assert facts == {"pid": PID, "resource": "llm_calls", "used": 8, "limit": 10}


# --------------------------------------------------------------------------------------------
# Enforcement


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"llm_calls": 10}, "max_llm_calls_exceeded"),
        ({"tool_calls": 50}, "max_tool_calls_exceeded"),
        ({"agent_hops": 21}, "max_agent_hops_exceeded"),
        ({"iterations": 3}, "max_iterations_exceeded"),
    ],
)
def test_check_quota_reports_a_limit_once_usage_reaches_it(
    tracker: ResourceTracker, kwargs: dict[str, int], reason: str
) -> None:
    tracker.allocate(PID, ResourceQuota())
    below = {name: value - 1 for name, value in kwargs.items()}
    tracker.record_usage(PID, **below)
    assert tracker.check_quota(PID) is None
    tracker.record_usage(PID, **dict.fromkeys(kwargs, 1))
    assert tracker.check_quota(PID) == reason


def test_check_quota_ignores_tokens(tracker: ResourceTracker) -> None:
    tracker.allocate(PID, ResourceQuota(max_input_tokens=10, max_output_tokens=10))
    tracker.record_usage(PID, tokens_in=50, tokens_out=50)
    assert tracker.check_quota(PID) is None


def test_timeout_follows_the_ledger_clock(tracker: ResourceTracker, clock: FakeClock) -> None:
    tracker.allocate(PID, ResourceQuota(timeout_seconds=300))
    clock.advance(299.5)
    assert tracker.check_quota(PID) is None
    remaining = tracker.get_remaining_budget(PID)
    assert remaining is not None
    assert remaining["time_seconds"] == 0.5
    clock.advance(0.5)
    assert tracker.check_quota(PID) == "timeout_exceeded"
    assert tracker.update_elapsed_time(PID) == 300.0
    usage = tracker.get_usage(PID)
    assert usage is not None
    assert usage.elapsed_seconds == 300.0
    clock.advance(100)
    remaining = tracker.get_remaining_budget(PID)
    assert remaining is not None
    assert remaining["time_seconds"] == 0.0


def test_check_quota_of_an_untracked_pid_is_none(tracker: ResourceTracker) -> None:
    assert tracker.check_quota(PID) is None


def test_get_remaining_budget(tracker: ResourceTracker, clock: FakeClock) -> None:
    tracker.allocate(PID, ResourceQuota())
    tracker.record_usage(PID, llm_calls=3, tool_calls=5, agent_hops=3, iterations=1)
    clock.advance(46)
    assert tracker.get_remaining_budget(PID) == {
        "llm_calls": 7,
        "tool_calls": 45,
        "agent_hops": 18,
        "iterations": 2,
        "time_seconds": 254.0,
    }


# --------------------------------------------------------------------------------------------
# Release and system usage


def test_release_forgets_the_pid_and_its_limits(tracker: ResourceTracker, ledger: Ledger) -> None:
    tracker.allocate(PID, ResourceQuota())
    tracker.record_usage(PID, llm_calls=2)
    assert tracker.release(PID) is True
    assert tracker.release(PID) is False
    assert not tracker.is_tracked(PID)
    assert tracker.get_usage(PID) is None
    assert tracker.get_quota(PID) is None
    assert tracker.check_quota(PID) is None
    assert ledger.limits(SCOPE) == ()
    # The record stays: usage is an append-only ledger entry.
    assert ledger.usage(SCOPE).used.requests == 2


def test_release_of_an_untracked_pid_is_false(tracker: ResourceTracker) -> None:
    assert tracker.release(PID) is False


def test_allocating_a_released_pid_again_resumes_its_totals(tracker: ResourceTracker) -> None:
    tracker.allocate(PID, ResourceQuota())
    tracker.record_usage(PID, llm_calls=4)
    tracker.release(PID)
    assert tracker.allocate(PID, ResourceQuota(max_llm_calls=4))
    assert tracker.check_quota(PID) == "max_llm_calls_exceeded"
    system = tracker.get_system_usage()
    assert (system["total_processes"], system["active_processes"]) == (2, 1)


def test_system_usage_aggregates_all_pids_including_released(tracker: ResourceTracker) -> None:
    assert tracker.get_system_usage() == {
        "total_processes": 0,
        "active_processes": 0,
        "system_llm_calls": 0,
        "system_tool_calls": 0,
        "system_tokens_in": 0,
        "system_tokens_out": 0,
    }
    tracker.allocate("a", ResourceQuota())
    tracker.record_usage("a", llm_calls=2, tool_calls=1, tokens_in=100, tokens_out=40)
    tracker.record_usage("b", llm_calls=1, tool_calls=4, tokens_in=50, tokens_out=10)
    tracker.record_usage("c", llm_calls=1)
    tracker.release("c")
    assert tracker.get_system_usage() == {
        "total_processes": 3,
        "active_processes": 2,
        "system_llm_calls": 4,
        "system_tool_calls": 5,
        "system_tokens_in": 150,
        "system_tokens_out": 50,
    }


def test_trackers_with_different_prefixes_do_not_mix(ledger: Ledger) -> None:
    first = ResourceTracker(ledger=ledger, scope_prefix="tracker:one")
    second = ResourceTracker(ledger=ledger, scope_prefix="tracker:two")
    first.record_usage(PID, llm_calls=3)
    second.record_usage(PID, llm_calls=1)
    assert first.get_system_usage()["system_llm_calls"] == 3
    assert second.get_system_usage()["system_llm_calls"] == 1
    usage = second.get_usage(PID)
    assert usage is not None
    assert usage.llm_calls == 1


# --------------------------------------------------------------------------------------------
# Sharing one store


def test_two_trackers_on_one_sqlite_file_share_usage_and_quota(
    tmp_path: Path, clock: FakeClock
) -> None:
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    with Ledger(url, clock=clock) as ledger_a, Ledger(url, clock=clock) as ledger_b:
        a = ResourceTracker(RecordingLogger(), ledger=ledger_a)
        b = ResourceTracker(RecordingLogger(), ledger=ledger_b)

        assert a.allocate(PID, ResourceQuota(max_llm_calls=5, max_tool_calls=8))
        a.record_usage(PID, llm_calls=2, tokens_in=100)
        # b has not seen the pid: it starts tracking it with a's limits, not its own default.
        usage_b = b.record_usage(PID, llm_calls=2, tool_calls=1, tokens_out=30)
        assert usage_b == ResourceUsage(llm_calls=4, tool_calls=1, tokens_in=100, tokens_out=30)
        quota_b = b.get_quota(PID)
        assert quota_b is not None
        assert (quota_b.max_llm_calls, quota_b.max_tool_calls) == (5, 8)

        usage_a = a.get_usage(PID)
        assert usage_a is not None
        assert (usage_a.llm_calls, usage_a.tool_calls, usage_a.tokens_out) == (4, 1, 30)

        a.record_usage(PID, llm_calls=1)
        assert b.check_quota(PID) == "max_llm_calls_exceeded"

        assert a.adjust_quota(PID, max_llm_calls=50)
        assert b.check_quota(PID) is None
        remaining = b.get_remaining_budget(PID)
        assert remaining is not None
        assert remaining["llm_calls"] == 45

        system_a, system_b = a.get_system_usage(), b.get_system_usage()
        for key in ("system_llm_calls", "system_tool_calls", "system_tokens_in"):
            assert system_a[key] == system_b[key]
        assert system_a["system_llm_calls"] == 5


def test_usage_survives_reopening_the_sqlite_file(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    with Ledger(url, clock=clock) as ledger:
        ResourceTracker(ledger=ledger).record_usage(PID, llm_calls=3, tokens_in=9)
    with Ledger(url, clock=clock) as ledger:
        tracker = ResourceTracker(ledger=ledger)
        assert tracker.get_usage(PID) is None  # not tracked by this tracker yet
        assert tracker.get_system_usage()["system_llm_calls"] == 3
        assert tracker.record_usage(PID, llm_calls=1).llm_calls == 4


def test_quota_field_names_are_those_of_the_original() -> None:
    assert [f.name for f in fields(ResourceQuota)] == [
        "max_input_tokens",
        "max_output_tokens",
        "max_context_tokens",
        "max_llm_calls",
        "max_tool_calls",
        "max_agent_hops",
        "max_iterations",
        "timeout_seconds",
        "soft_timeout_seconds",
        "rate_limit",
    ]
    assert [f.name for f in fields(ResourceUsage)] == [
        "llm_calls",
        "tool_calls",
        "agent_hops",
        "iterations",
        "tokens_in",
        "tokens_out",
        "elapsed_seconds",
    ]
