"""The demo's simulation, driven directly (no terminal): what `budgeteer demo` promises."""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import pytest

from budgeteer import Ledger, Limit, Usage, Window
from budgeteer.cli.demo import (
    DEFAULT_RUNS,
    ORG,
    DemoResult,
    RunProgress,
    check_caps,
    plan_fleet,
    run_demo,
)

DEMO_TIME_LIMIT_S = 15.0
"""The issue's functional requirement: the whole demo finishes in under 15 seconds."""


def test_the_default_fleet_is_stopped_by_the_right_scopes_and_no_cap_is_exceeded(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    snapshots: list[Sequence[RunProgress]] = []
    started = time.monotonic()
    with Ledger(url) as ledger:
        result = run_demo(ledger, on_progress=snapshots.append)
    elapsed_s = time.monotonic() - started

    assert elapsed_s < DEMO_TIME_LIMIT_S
    assert len(result.runs) == DEFAULT_RUNS == 12
    reports = [outcome.report for outcome in result.runs]
    assert [r.path for r in reports] == [p.path for p in result.plan.runs]
    assert all(r.status in ("completed", "stopped") for r in reports)
    assert any(r.status == "completed" for r in reports)

    # The runaway loops on one tool until its own session's tool_calls cap refuses it.
    (runaway,) = [o for o in result.runs if o.plan.profile.label == "runaway"]
    refusal = runaway.report.stopped_by
    assert refusal is not None
    assert (refusal.scope, refusal.dimension) == (runaway.plan.path, "tool_calls")
    assert runaway.report.usage.tool_calls == refusal.limit == 30

    # Shared caps above the sessions stop runs too (team cost, engineer tokens).
    above = [
        r.stopped_by for r in reports if r.stopped_by is not None and r.stopped_by.scope != r.path
    ]
    assert above
    for error in above:
        assert error.scope.count("/") < 3  # org, team or engineer: not a session

    # Every limit of every scope, read back through a second ledger on the same file.
    with Ledger(url) as reader:
        checked = 0
        for scope in result.plan.scopes:
            meters = reader.usage(scope)
            assert meters.held.units == {}
            for head in meters.limits:
                assert head.used <= head.limit, (scope, head)
                checked += 1
    assert checked == result.check.limits_checked > 12
    assert result.check.ok
    assert result.check.violations == ()

    # The roll-up per level adds up: the org saw every run's cost, to the nano-dollar.
    org = result.rollup[0]
    assert org.scope == ORG
    assert org.used.cost_usd == sum((r.usage.cost_usd or Decimal(0) for r in reports), Decimal(0))
    assert {m.scope.count("/") for m in result.rollup} == {0, 1, 2}

    # The live view got snapshots, the last one matching the final reports.
    assert len(snapshots) > 2
    final = {p.plan.path: p for p in snapshots[-1]}
    for report in reports:
        assert final[report.path].state == report.status
        assert final[report.path].usage.tool_calls == report.usage.tool_calls


def test_the_plan_is_a_four_level_hierarchy_with_caps_at_every_level() -> None:
    plan = plan_fleet()
    paths = [run.path for run in plan.runs]
    assert len(set(paths)) == 12
    assert all(path.count("/") == 3 and path.startswith(f"{ORG}/team:") for path in paths)
    levels = {scope.count("/") for scope in plan.scope_limits}
    assert levels == {0, 1, 2}
    assert all(run.profile.session_limits for run in plan.runs)
    assert plan.scopes[0] == ORG
    assert set(paths) <= set(plan.scopes)


def test_a_small_fleet_keeps_the_runaway_and_scales_team_caps() -> None:
    small = plan_fleet(runs=4)
    assert "runaway" in [run.profile.label for run in small.runs]
    (search_cap,) = small.scope_limits[f"{ORG}/team:search"]
    (full_cap,) = plan_fleet().scope_limits[f"{ORG}/team:search"]
    assert search_cap.max < full_cap.max


def test_a_fleet_needs_a_run() -> None:
    with pytest.raises(ValueError, match="runs"):
        plan_fleet(runs=0)


def test_the_same_seed_gives_the_same_plan_and_a_runaway_stops_the_same_way() -> None:
    first = run_demo(Ledger("memory://"), runs=2, seed=3, pace=0)
    second = run_demo(Ledger("memory://"), runs=2, seed=3, pace=0)

    # Two runs on different teams share no cap they can reach, so timing cannot change what
    # they spend (only the wall time each one took).
    def spent(result: DemoResult) -> list[Usage]:
        return [o.report.usage.replace(wall_time_s=0.0) for o in result.runs]

    assert spent(first) == spent(second)
    assert first.runs[1].report.stopped_by is not None
    assert first.runs[1].report.stopped_by.dimension == "tool_calls"


def test_the_cap_check_reports_an_exceeded_cap() -> None:
    # A direct charge is recorded without admission, so it can push a scope past its cap:
    # the check must see that, or its "no cap exceeded" would prove nothing.
    ledger = Ledger("memory://")
    ledger.set_limit(ORG, Limit("cost_usd", Decimal("1"), Window.daily()))
    ledger.charge(f"{ORG}/team:x", Usage(requests=1, cost_usd=Decimal("1.5")))
    check = check_caps(ledger, [ORG, f"{ORG}/team:x"])
    assert not check.ok
    (violation,) = check.violations
    assert (violation.scope, violation.dimension) == (ORG, "cost_usd")
    assert violation.used == Decimal("1.5")
    assert check.limits_checked == 1
