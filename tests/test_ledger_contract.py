"""The ledger contract: every behaviour, run unchanged over every backend (conftest.BACKENDS)."""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal

import pytest

from budgeteer import (
    AsyncLedger,
    BudgetExceeded,
    InvalidInput,
    Ledger,
    Limit,
    ReservationSettled,
    UnknownReservation,
    Usage,
    Window,
)
from budgeteer.testing import FakeClock

ORG = "org:acme"
TEAM = "org:acme/team:search"
RUN = "org:acme/team:search/engineer:e17/session:7f3c"
OTHER_RUN = "org:acme/team:search/engineer:e18/session:0001"
RUN_SCOPES = ["org:acme", TEAM, "org:acme/team:search/engineer:e17", RUN]


def snapshot(ledger: Ledger, *scopes: str) -> list[object]:
    return [(ledger.usage(s).used, ledger.usage(s).held, ledger.peek(s).limits) for s in scopes]


class TestAdmission:
    def test_reaching_the_cap_exactly_is_allowed_and_one_more_is_refused(
        self, ledger: Ledger
    ) -> None:
        ledger.set_limit(ORG, Limit("requests", 3))
        for _ in range(3):
            ledger.commit(ledger.reserve(RUN, Usage(requests=1)), Usage(requests=1))
        with pytest.raises(BudgetExceeded) as refused:
            ledger.reserve(RUN, Usage(requests=1))
        error = refused.value
        assert (error.scope, error.dimension, error.limit) == (ORG, "requests", 3)
        assert (error.used, error.held, error.requested) == (3, 0, 1)
        assert error.window == Window.lifetime()
        assert error.retry_after is None
        assert error.actual == 4

    def test_refusal_changes_nothing(self, ledger: Ledger) -> None:
        ledger.set_limit(TEAM, Limit("input_tokens", 100))
        ledger.reserve(RUN, Usage(input_tokens=60, requests=1))
        before = snapshot(ledger, ORG, TEAM, RUN)
        with pytest.raises(BudgetExceeded):
            ledger.reserve(RUN, Usage(input_tokens=41, requests=1))
        assert snapshot(ledger, ORG, TEAM, RUN) == before

    def test_holds_count_against_the_cap(self, ledger: Ledger) -> None:
        ledger.set_limit(ORG, Limit("cost_usd", "1.00"))
        ledger.reserve(RUN, Usage(cost_usd=Decimal("0.70")))
        with pytest.raises(BudgetExceeded) as refused:
            ledger.reserve(OTHER_RUN, Usage(cost_usd=Decimal("0.31")))
        assert refused.value.held == Decimal("0.7")
        assert refused.value.requested == Decimal("0.31")
        ledger.reserve(OTHER_RUN, Usage(cost_usd=Decimal("0.30")))

    def test_every_limit_of_every_scope_on_the_path_is_checked(self, ledger: Ledger) -> None:
        ledger.set_limits(ORG, Limit("requests", 100), Limit("tool_calls", 5))
        ledger.set_limit(TEAM, Limit("requests", 2))
        ledger.set_limit(RUN, Limit("tool_calls", 1))
        ledger.reserve(RUN, Usage(requests=1, tool_calls=1))
        with pytest.raises(BudgetExceeded) as by_run:
            ledger.reserve(RUN, Usage(tool_calls=1))
        assert (by_run.value.scope, by_run.value.dimension) == (RUN, "tool_calls")
        ledger.reserve(OTHER_RUN, Usage(requests=1))
        with pytest.raises(BudgetExceeded) as by_team:
            ledger.reserve(OTHER_RUN, Usage(requests=1))
        assert (by_team.value.scope, by_team.value.dimension) == (TEAM, "requests")

    def test_several_limits_on_one_dimension(self, ledger: Ledger, clock: FakeClock) -> None:
        ledger.set_limits(
            ORG,
            Limit("cost_usd", 20, Window.daily()),
            Limit("cost_usd", 30, Window.monthly()),
        )
        ledger.commit(ledger.reserve(RUN, Usage(cost_usd=19)), Usage(cost_usd=19))
        with pytest.raises(BudgetExceeded) as daily:
            ledger.reserve(RUN, Usage(cost_usd=2))
        assert daily.value.window == Window.daily()
        clock.advance(86400)
        ledger.commit(ledger.reserve(RUN, Usage(cost_usd=10)), Usage(cost_usd=10))
        with pytest.raises(BudgetExceeded) as monthly:
            ledger.reserve(RUN, Usage(cost_usd=2))
        assert monthly.value.window == Window.monthly()

    def test_dimensions_not_requested_are_not_checked(self, ledger: Ledger) -> None:
        ledger.set_limit(ORG, Limit("tool_calls", 0))
        ledger.reserve(RUN, Usage(requests=1))
        with pytest.raises(BudgetExceeded):
            ledger.reserve(RUN, Usage(tool_calls=1))

    def test_a_second_client_of_the_same_store_sees_the_same_budget(
        self, make_ledger: Callable[[], Ledger]
    ) -> None:
        first, second = make_ledger(), make_ledger()
        first.set_limit(ORG, Limit("requests", 1))
        first.reserve(RUN, Usage(requests=1))
        with pytest.raises(BudgetExceeded):
            second.reserve(OTHER_RUN, Usage(requests=1))


class TestHierarchy:
    def test_a_charge_to_a_path_is_a_charge_to_every_prefix(self, ledger: Ledger) -> None:
        charge = ledger.commit(
            ledger.reserve(RUN, Usage(input_tokens=10, output_tokens=5)),
            Usage(input_tokens=10, output_tokens=5, cost_usd=Decimal("0.25")),
        )
        assert charge.path == RUN
        prefixes = [
            ORG,
            TEAM,
            "org:acme/team:search/engineer:e17",
            RUN,
        ]
        for scope in prefixes:
            used = ledger.usage(scope).used
            assert (used.input_tokens, used.output_tokens, used.tokens) == (10, 5, 15)
            assert used.cost_usd == Decimal("0.25")
        assert ledger.usage(OTHER_RUN).used == Usage()

    def test_siblings_share_their_parent_cap(self, ledger: Ledger) -> None:
        ledger.set_limit(TEAM, Limit("requests", 2))
        ledger.commit(ledger.reserve(RUN, Usage(requests=1)), Usage(requests=1))
        ledger.commit(ledger.reserve(OTHER_RUN, Usage(requests=1)), Usage(requests=1))
        with pytest.raises(BudgetExceeded) as refused:
            ledger.reserve(RUN, Usage(requests=1))
        assert refused.value.scope == TEAM
        assert ledger.usage(ORG).used.requests == 2


class TestCommitAndRelease:
    def test_commit_smaller_than_reserved_frees_the_rest(self, ledger: Ledger) -> None:
        ledger.set_limit(ORG, Limit("output_tokens", 1000))
        hold = ledger.reserve(RUN, Usage(output_tokens=800))
        charge = ledger.commit(hold, Usage(output_tokens=300))
        assert charge.overruns == ()
        assert ledger.usage(ORG).held == Usage()
        assert ledger.peek(RUN).remaining("output_tokens") == 700

    def test_commit_larger_than_reserved_records_the_truth_and_flags_the_overrun(
        self, ledger: Ledger
    ) -> None:
        ledger.set_limit(TEAM, Limit("output_tokens", 1000))
        hold = ledger.reserve(RUN, Usage(output_tokens=900))
        charge = ledger.commit(hold, Usage(output_tokens=1200))
        assert len(charge.overruns) == 1
        overrun = charge.overruns[0]
        assert (overrun.scope, overrun.dimension, overrun.limit, overrun.used) == (
            TEAM,
            "output_tokens",
            1000,
            1200,
        )
        assert ledger.usage(ORG).used.output_tokens == 1200
        with pytest.raises(BudgetExceeded) as refused:
            ledger.reserve(OTHER_RUN, Usage(output_tokens=1))
        assert refused.value.used == 1200

    def test_commit_is_idempotent_by_reservation_id(self, ledger: Ledger) -> None:
        hold = ledger.reserve(RUN, Usage(requests=1))
        first = ledger.commit(hold, Usage(requests=1, cost_usd=Decimal("0.5")))
        again = ledger.commit(hold.id, Usage(requests=1, cost_usd=Decimal("0.5")))
        assert not first.replayed
        assert again.replayed
        assert again.usage == first.usage
        assert ledger.usage(ORG).used.requests == 1
        assert ledger.usage(ORG).used.cost_usd == Decimal("0.5")

    def test_release_frees_the_hold_and_is_idempotent(self, ledger: Ledger) -> None:
        ledger.set_limit(ORG, Limit("requests", 1))
        hold = ledger.reserve(RUN, Usage(requests=1))
        ledger.release(hold)
        ledger.release(hold)
        assert ledger.usage(RUN).held == Usage()
        ledger.reserve(RUN, Usage(requests=1))

    def test_commit_after_release_is_an_error(self, ledger: Ledger) -> None:
        hold = ledger.reserve(RUN, Usage(requests=1))
        ledger.release(hold)
        with pytest.raises(ReservationSettled) as error:
            ledger.commit(hold, Usage(requests=1))
        assert (error.value.reservation_id, error.value.state, error.value.attempted) == (
            hold.id,
            "released",
            "commit",
        )
        assert ledger.usage(ORG).used == Usage()

    def test_release_after_commit_is_an_error(self, ledger: Ledger) -> None:
        hold = ledger.reserve(RUN, Usage(requests=1))
        ledger.commit(hold, Usage(requests=1))
        with pytest.raises(ReservationSettled) as error:
            ledger.release(hold)
        assert (error.value.state, error.value.attempted) == ("committed", "release")
        assert ledger.usage(ORG).used.requests == 1

    def test_unknown_reservations_are_errors(self, ledger: Ledger) -> None:
        with pytest.raises(UnknownReservation) as on_commit:
            ledger.commit("no-such-id", Usage(requests=1))
        assert on_commit.value.reservation_id == "no-such-id"
        with pytest.raises(UnknownReservation):
            ledger.release("no-such-id")
        assert ledger.usage(ORG).used == Usage()

    def test_hold_context_manager_releases_unless_committed(self, ledger: Ledger) -> None:
        with ledger.hold(RUN, Usage(requests=1)):
            assert ledger.usage(ORG).held.requests == 1
        assert ledger.usage(ORG).held == Usage()
        with ledger.hold(RUN, Usage(requests=1)) as hold:
            ledger.commit(hold, Usage(requests=1))
        assert ledger.usage(ORG).used.requests == 1

    def test_direct_charge_records_without_admission(self, ledger: Ledger) -> None:
        ledger.set_limit(ORG, Limit("tool_calls", 1))
        charge = ledger.charge(RUN, Usage(tool_calls=3), metadata={"tool": "search"})
        assert charge.overruns[0].used == 3
        assert charge.metadata == {"tool": "search"}
        assert ledger.usage(RUN).used.tool_calls == 3

    def test_metadata_is_recorded_and_replayed(self, ledger: Ledger) -> None:
        hold = ledger.reserve(RUN, Usage(requests=1))
        meta = {"model": "gpt-4o", "price_source": "genai-prices"}
        assert ledger.commit(hold, Usage(requests=1), metadata=meta).metadata == meta
        assert ledger.commit(hold, Usage(requests=1)).metadata == meta


class TestExpiry:
    def test_a_hold_returns_by_itself_after_its_ttl(self, ledger: Ledger, clock: FakeClock) -> None:
        ledger.set_limit(ORG, Limit("requests", 1))
        ledger.reserve(RUN, Usage(requests=1), ttl_s=30)
        clock.advance(29.9)
        with pytest.raises(BudgetExceeded):
            ledger.reserve(RUN, Usage(requests=1))
        clock.advance(0.1)
        ledger.reserve(RUN, Usage(requests=1))

    def test_peek_and_usage_do_not_count_expired_holds(
        self, ledger: Ledger, clock: FakeClock
    ) -> None:
        ledger.set_limit(ORG, Limit("requests", 5))
        ledger.reserve(RUN, Usage(requests=2), ttl_s=10)
        assert ledger.peek(ORG).limits[0].held == 2
        clock.advance(11)
        assert ledger.peek(ORG).limits[0].held == 0
        assert ledger.usage(RUN).held == Usage()

    def test_a_commit_after_expiry_records_the_spend_as_late(
        self, ledger: Ledger, clock: FakeClock
    ) -> None:
        hold = ledger.reserve(RUN, Usage(requests=1), ttl_s=5)
        clock.advance(6)
        ledger.reserve(OTHER_RUN, Usage(requests=1))  # reclaims the expired hold
        charge = ledger.commit(hold, Usage(requests=1))
        assert charge.late
        assert ledger.usage(RUN).used.requests == 1
        assert ledger.usage(RUN).held == Usage()
        assert ledger.commit(hold, Usage(requests=1)).replayed

    def test_a_commit_after_expiry_but_before_reclaim_is_late_too(
        self, ledger: Ledger, clock: FakeClock
    ) -> None:
        hold = ledger.reserve(RUN, Usage(requests=1), ttl_s=5)
        clock.advance(6)
        charge = ledger.commit(hold, Usage(requests=1))
        assert charge.late
        assert ledger.usage(ORG).held == Usage()
        assert ledger.usage(ORG).used.requests == 1


class TestPeek:
    def test_peek_consumes_nothing_and_names_the_tightest_limit(self, ledger: Ledger) -> None:
        ledger.set_limit(ORG, Limit("requests", 10))
        ledger.set_limit(TEAM, Limit("requests", 4))
        ledger.reserve(RUN, Usage(requests=3))
        for _ in range(3):
            headroom = ledger.peek(RUN)
        assert [(h.scope, h.used, h.held) for h in headroom.limits] == [
            (ORG, 0, 3),
            (TEAM, 0, 3),
        ]
        tightest = headroom.tightest
        assert tightest is not None
        assert (tightest.scope, tightest.remaining, tightest.fraction) == (TEAM, 1, 0.75)
        assert headroom.remaining("requests") == 1
        assert headroom.remaining("cost_usd") is None

    def test_reservation_reports_headroom_after_the_hold(self, ledger: Ledger) -> None:
        ledger.set_limit(ORG, Limit("cost_usd", 10))
        hold = ledger.reserve(RUN, Usage(cost_usd=8))
        assert [(h.scope, h.held, h.fraction) for h in hold.headroom] == [(ORG, Decimal(8), 0.8)]


class TestLimitChanges:
    def test_limits_can_change_while_holds_are_outstanding(self, ledger: Ledger) -> None:
        ledger.set_limit(ORG, Limit("requests", 5))
        hold = ledger.reserve(RUN, Usage(requests=4))
        ledger.set_limit(ORG, Limit("requests", 3))
        assert ledger.limits(ORG) == (Limit("requests", 3),)
        with pytest.raises(BudgetExceeded) as refused:
            ledger.reserve(RUN, Usage(requests=1))
        assert refused.value.limit == 3
        ledger.commit(hold, Usage(requests=2))
        assert ledger.remove_limit(ORG, "requests")
        assert not ledger.remove_limit(ORG, "requests")
        ledger.reserve(RUN, Usage(requests=100))
        assert ledger.limits(ORG) == ()

    def test_a_new_lifetime_limit_sees_all_history(self, ledger: Ledger) -> None:
        ledger.charge(RUN, Usage(requests=3))
        ledger.set_limit(ORG, Limit("requests", 3))
        with pytest.raises(BudgetExceeded):
            ledger.reserve(RUN, Usage(requests=1))


class TestCalendarWindows:
    def test_daily_limit_resets_at_midnight_and_says_when(
        self, ledger: Ledger, clock: FakeClock
    ) -> None:
        clock.set(1_767_571_200 + 23 * 3600)  # 2026-01-05 23:00 UTC
        ledger.set_limit(ORG, Limit("requests", 2, Window.daily()))
        ledger.charge(RUN, Usage(requests=2))
        with pytest.raises(BudgetExceeded) as refused:
            ledger.reserve(RUN, Usage(requests=1))
        assert refused.value.retry_after == pytest.approx(3600)
        clock.advance(3600)
        ledger.reserve(RUN, Usage(requests=2))

    def test_retry_after_is_none_when_a_new_period_would_not_help(self, ledger: Ledger) -> None:
        ledger.set_limit(ORG, Limit("requests", 2, Window.daily()))
        with pytest.raises(BudgetExceeded) as refused:
            ledger.reserve(RUN, Usage(requests=3))
        assert refused.value.retry_after is None

    def test_day_follows_the_time_zone(self, ledger: Ledger, clock: FakeClock) -> None:
        clock.set(1_767_571_200 + 22 * 3600 + 1800)  # 22:30 UTC = 07:30 next day in Tokyo
        ledger.set_limit(ORG, Limit("requests", 1, Window.daily("Asia/Tokyo")))
        ledger.charge(RUN, Usage(requests=1))
        with pytest.raises(BudgetExceeded) as refused:
            ledger.reserve(RUN, Usage(requests=1))
        assert refused.value.retry_after == pytest.approx(16.5 * 3600)

    def test_week_starts_on_the_chosen_day(self, ledger: Ledger, clock: FakeClock) -> None:
        # 2026-01-05 is a Monday; a Sunday-start week runs Sun 2026-01-04 .. Sat 2026-01-10.
        ledger.set_limit(ORG, Limit("requests", 1, Window.weekly(week_start="sunday")))
        ledger.charge(RUN, Usage(requests=1))
        with pytest.raises(BudgetExceeded) as refused:
            ledger.reserve(RUN, Usage(requests=1))
        assert refused.value.retry_after == pytest.approx(6 * 86400)

    def test_month_boundary(self, ledger: Ledger, clock: FakeClock) -> None:
        clock.set(1_769_904_000 - 60)  # 2026-01-31 23:59 UTC
        ledger.set_limit(ORG, Limit("cost_usd", "5", Window.monthly()))
        ledger.charge(RUN, Usage(cost_usd=5))
        with pytest.raises(BudgetExceeded) as refused:
            ledger.reserve(RUN, Usage(cost_usd="0.01"))
        assert refused.value.retry_after == pytest.approx(60)
        clock.advance(60)
        ledger.reserve(RUN, Usage(cost_usd=5))


class TestRollingWindows:
    def test_usage_counts_for_the_span_then_leaves(self, ledger: Ledger, clock: FakeClock) -> None:
        window = Window.rolling(hours=5, granularity_s=60)
        ledger.set_limit(ORG, Limit("total_tokens", 1000, window))
        ledger.charge(RUN, Usage(input_tokens=600))
        clock.advance(3600)
        ledger.charge(RUN, Usage(input_tokens=400))
        with pytest.raises(BudgetExceeded) as refused:
            ledger.reserve(RUN, Usage(input_tokens=100))
        # The first 600 leave between 5h and 5h + one granule after they were committed.
        retry_after = refused.value.retry_after
        assert retry_after is not None
        assert 4 * 3600 <= retry_after <= 4 * 3600 + 60
        clock.advance(retry_after - 1)
        with pytest.raises(BudgetExceeded):
            ledger.reserve(RUN, Usage(input_tokens=100))
        clock.advance(1)
        ledger.reserve(RUN, Usage(input_tokens=600))

    def test_never_more_than_the_limit_in_any_span(self, ledger: Ledger, clock: FakeClock) -> None:
        window = Window.rolling(seconds=100, granularity_s=10)
        ledger.set_limit(ORG, Limit("requests", 10, window))
        admitted: list[float] = []
        for _ in range(400):
            try:
                ledger.commit(ledger.reserve(RUN, Usage(requests=1)), Usage(requests=1))
                admitted.append(clock.now())
            except BudgetExceeded:
                pass
            clock.advance(1.7)
        assert len(admitted) > 20
        for i, start in enumerate(admitted):
            in_span = [t for t in admitted[i:] if t < start + 100]
            assert len(in_span) <= 10


class TestBadInput:
    @pytest.mark.parametrize(
        ("usage", "field"),
        [
            ({"input_tokens": -1}, "usage.input_tokens"),
            ({"cost_usd": math.nan}, "usage.cost_usd"),
            ({"cost_usd": Decimal("NaN")}, "usage.cost_usd"),
            ({"wall_time_s": math.inf}, "usage.wall_time_s"),
            ({"output_tokens": 10**30}, "usage.output_tokens"),
            ({"cost_usd": Decimal("1e20")}, "usage.cost_usd"),
            ({"requests": 1.5}, "usage.requests"),
            ({"requests": True}, "usage.requests"),
            ({"gpu_hours": 1}, "usage.gpu_hours"),
            ({"cache_read_tokens": 10, "input_tokens": 5}, "usage.cache_read_tokens"),
            ({"reasoning_tokens": 10, "output_tokens": 5}, "usage.reasoning_tokens"),
        ],
    )
    def test_bad_usage_names_field_and_value_and_changes_nothing(
        self, ledger: Ledger, usage: dict[str, object], field: str
    ) -> None:
        ledger.set_limit(ORG, Limit("requests", 10))
        before = snapshot(ledger, ORG)
        with pytest.raises(InvalidInput) as error:
            ledger.reserve(RUN, usage)
        assert error.value.field == field
        assert snapshot(ledger, ORG) == before

    @pytest.mark.parametrize(
        "path",
        [
            "",
            "org",
            "org:",
            ":acme",
            "org:acme/",
            "org:acme//team:x",
            "org:../etc",
            "org:acme/team:..",
            "ORG:acme",
            "org:ac me",
            "org:acme\n",
            "/".join(f"l{i}:x" for i in range(17)),
            123,
        ],
    )
    def test_malformed_paths(self, ledger: Ledger, path: object) -> None:
        with pytest.raises(InvalidInput) as error:
            ledger.reserve(path, Usage(requests=1))  # type: ignore[arg-type]
        assert error.value.field == "path"
        assert error.value.value == path

    @pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf, 10**9, "5"])
    def test_bad_ttl(self, ledger: Ledger, ttl: object) -> None:
        with pytest.raises(InvalidInput) as error:
            ledger.reserve(RUN, Usage(requests=1), ttl_s=ttl)  # type: ignore[arg-type]
        assert (error.value.field, error.value.value) == ("ttl_s", ttl)
        assert ledger.usage(ORG).held == Usage()

    @pytest.mark.parametrize(
        ("build", "field"),
        [
            (lambda: Limit("requests", -1), "limit.max"),
            (lambda: Limit("bananas", 1), "limit.dimension"),
            (lambda: Limit("cost_usd", math.nan), "limit.max"),
            (lambda: Limit("cost_usd", 10**12), "limit.max"),
            (lambda: Window.rolling(0), "window.seconds"),
            (lambda: Window.rolling(hours=1, granularity_s=7200), "window.granularity_s"),
            (lambda: Window.calendar("fortnight"), "window.unit"),  # type: ignore[arg-type]
            (lambda: Window.daily("Mars/Olympus"), "window.tz"),
            (lambda: Window.weekly(week_start="someday"), "window.week_start"),
        ],
    )
    def test_bad_limits(self, build: Callable[[], object], field: str) -> None:
        with pytest.raises(InvalidInput) as error:
            build()
        assert error.value.field == field

    def test_bad_commit_input_changes_nothing(self, ledger: Ledger) -> None:
        hold = ledger.reserve(RUN, Usage(requests=1))
        with pytest.raises(InvalidInput) as error:
            ledger.commit(hold, {"requests": -2})
        assert error.value.field == "usage.requests"
        assert ledger.usage(ORG).held.requests == 1
        assert ledger.commit(hold, Usage(requests=1)).usage.requests == 1

    def test_bad_backend_url(self) -> None:
        with pytest.raises(InvalidInput) as error:
            Ledger("postgres://nowhere")
        assert error.value.field == "url"


class TestMoney:
    def test_cost_is_exact_decimal_end_to_end(self, ledger: Ledger) -> None:
        ledger.set_limit(ORG, Limit("cost_usd", "0.000003"))
        for _ in range(3):
            ledger.commit(
                ledger.reserve(RUN, Usage(cost_usd=Decimal("0.000001"))),
                Usage(cost_usd=Decimal("0.000001")),
            )
        assert ledger.usage(ORG).used.cost_usd == Decimal("0.000003")
        with pytest.raises(BudgetExceeded) as refused:
            ledger.reserve(RUN, Usage(cost_usd=Decimal("0.000000001")))
        assert refused.value.limit == Decimal("0.000003")

    def test_sub_nanodollar_costs_round_up_never_down(self, ledger: Ledger) -> None:
        ledger.charge(RUN, Usage(cost_usd=Decimal("0.0000000001")))
        assert ledger.usage(ORG).used.cost_usd == Decimal("0.000000001")

    def test_unknown_cost_is_flagged_not_zero(self, ledger: Ledger) -> None:
        ledger.charge(RUN, Usage(requests=1))
        assert ledger.usage(ORG).cost_unknown
        ledger.charge(OTHER_RUN, Usage(requests=1, cost_usd=0))
        assert not ledger.usage(OTHER_RUN).cost_unknown


class TestAsyncTwin:
    async def test_async_ledger_has_the_same_contract(
        self, async_ledger: AsyncLedger, clock: FakeClock
    ) -> None:
        await async_ledger.set_limit(ORG, Limit("requests", 2))
        hold = await async_ledger.reserve(RUN, Usage(requests=2), ttl_s=10)
        with pytest.raises(BudgetExceeded) as refused:
            await async_ledger.reserve(OTHER_RUN, Usage(requests=1))
        assert (refused.value.scope, refused.value.held) == (ORG, 2)
        charge = await async_ledger.commit(hold, Usage(requests=1))
        assert (await async_ledger.commit(hold.id, Usage(requests=1))).replayed
        assert charge.usage.requests == 1
        async with async_ledger.hold(OTHER_RUN, Usage(requests=1)) as second:
            assert (await async_ledger.peek(OTHER_RUN)).limits[0].held == 1
        with pytest.raises(ReservationSettled):
            await async_ledger.commit(second, Usage(requests=1))
        assert (await async_ledger.usage(ORG)).used.requests == 1
        assert await async_ledger.limits(ORG) == (Limit("requests", 2),)
        await async_ledger.charge(RUN, Usage(requests=1))
        assert await async_ledger.remove_limit(ORG, "requests")
        await async_ledger.close()


class TestChargeIdempotency:
    def test_a_retried_charge_counts_once(self, ledger: Ledger, clock: FakeClock) -> None:
        # What a store-down queue does when it delivers a charge whose first reply was lost.
        backend = ledger._backend
        args = ("org:acme#retry-1", RUN, tuple(RUN_SCOPES), {"requests": 2}, clock.now(), {})
        first = backend.charge(*args)
        again = backend.charge(*args)
        assert (first.status, again.status) == ("committed", "replayed")
        assert ledger.usage(ORG).used.requests == 2
