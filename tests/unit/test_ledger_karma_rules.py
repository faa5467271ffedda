"""Karma rules: points per outcome, the derived score, the standing. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from archipelag.ledger.karma_rules import KarmaKind, KarmaRules, Standing, fault_of
from archipelag.settings import KarmaSettings, Settings

RULES = KarmaRules()


def test_an_hour_of_compute_earns_a_point_boosted_below_the_payout_threshold() -> None:
    assert RULES.points_for(KarmaKind.JOB_SUCCEEDED, total_before=0.0, compute_s=3600) == pytest.approx(1.5)
    assert RULES.points_for(KarmaKind.JOB_SUCCEEDED, total_before=10.0, compute_s=3600) == pytest.approx(1.0)


def test_a_short_job_still_earns_the_minimum() -> None:
    assert RULES.points_for(KarmaKind.JOB_SUCCEEDED, total_before=50.0, compute_s=0.2) == RULES.min_job_points


@pytest.mark.parametrize(
    "kind",
    [KarmaKind.JOB_FAILED, KarmaKind.JOB_TIMED_OUT, KarmaKind.HOST_DROPPED, KarmaKind.ARTIFACT_REFUSED,
     KarmaKind.BAD_RECEIPT, KarmaKind.VERIFICATION_FAILED],
)
def test_bad_outcomes_cost_points(kind: KarmaKind) -> None:
    assert RULES.points_for(kind) < 0


def test_a_failed_verification_costs_more_than_a_drop_which_costs_more_than_a_failure() -> None:
    costs = [
        RULES.points_for(k)
        for k in (KarmaKind.VERIFICATION_FAILED, KarmaKind.HOST_DROPPED, KarmaKind.JOB_FAILED)
    ]
    assert costs == sorted(costs)


def test_an_adjustment_is_worth_exactly_what_the_operator_gives() -> None:
    assert RULES.points_for(KarmaKind.ADJUSTMENT, adjustment=-2.5) == -2.5
    assert RULES.points_for(KarmaKind.RECOVERY, adjustment=0.75) == 0.75  # banked recovery, as the ledger computed


def test_a_new_host_scores_neutral_and_the_score_stays_in_the_unit_interval() -> None:
    assert RULES.score(0.0) == RULES.neutral_score
    assert RULES.score(1e9) == 1.0 and RULES.score(-1e9) == 0.0
    totals = [-20, -10, -3, -0.5, 0, 0.5, 3, 10, 20]
    scores = [RULES.score(t) for t in totals]
    assert scores == sorted(scores) and all(0.0 <= s <= 1.0 for s in scores)


def test_standing_cools_down_then_suspends_as_karma_falls() -> None:
    assert RULES.standing(0.0) is Standing.GOOD
    assert RULES.standing(RULES.cooldown_below - 0.1) is Standing.COOLDOWN
    assert RULES.standing(RULES.suspend_below - 0.1) is Standing.SUSPENDED


# --- whose fault, recovery, standing: the tables --------------------------------------------------

DAY = timedelta(days=1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("code", "kind"), [
    ("timed_out", KarmaKind.JOB_TIMED_OUT),
    ("workload_refused", KarmaKind.ARTIFACT_REFUSED),  # a signed, pinned catalog artifact the host refused
    ("bad_receipt", KarmaKind.BAD_RECEIPT),
    ("internal_error", KarmaKind.JOB_FAILED),
    ("host_lost", KarmaKind.HOST_DROPPED),
    ("workload_error", None),  # the workload's own error (bad input, its crash): not the host's fault
    ("budget_exceeded", None),
    ("protocol_violation", None),
    ("validation_error", None),
    ("cancelled", None),
    ("host_busy", None),
    ("runtime_unavailable", None),  # e.g. an image it lacks and could not fetch: it turns the job away
    (None, None),
])
def test_only_an_end_that_is_the_hosts_fault_costs_it_karma(code: str | None, kind: KarmaKind | None) -> None:
    assert fault_of(code) is kind
    if kind is not None:
        assert RULES.points_for(kind) < 0


@pytest.mark.parametrize(("events", "now", "total"), [
    ([], T0, 0.0),
    ([(T0, -4.0)], T0, -4.0),
    ([(T0, -4.0)], T0 + DAY, -3.0),  # a negative total rises by recovery_per_day
    ([(T0, -4.0)], T0 + 10 * DAY, 0.0),  # toward 0, never past it
    ([(T0, 5.0)], T0 + 10 * DAY, 5.0),  # a positive total does not decay
    ([(T0, -4.0), (T0 + 2 * DAY, -1.0)], T0 + 2 * DAY, -3.0),  # recovery between events, then the new one
    ([(T0, -1.0), (T0 + 2 * DAY, -1.0)], T0 + 2 * DAY, -1.0),  # recovered to 0 before the second
    ([(T0, -4.0)], T0 - DAY, -4.0),  # a clock behind the last event adds nothing
])
def test_a_negative_total_recovers_with_time(events: list[tuple[datetime, float]], now: datetime,
                                             total: float) -> None:
    assert RULES.total_at(events, now) == pytest.approx(total)


@pytest.mark.parametrize(("total", "standing", "share", "reason"), [
    (5.0, Standing.GOOD, 1.0, None),
    (-3.0, Standing.GOOD, 1.0, None),  # at the threshold: still good
    (-3.01, Standing.COOLDOWN, 0.25, "cool-down threshold -3"),
    (-10.0, Standing.COOLDOWN, 0.25, "25%"),
    (-10.01, Standing.SUSPENDED, 0.0, "suspension threshold -10"),
])
def test_the_state_of_a_total(total: float, standing: Standing, share: float, reason: str | None) -> None:
    state = RULES.state(total)
    assert (state.standing, state.share, state.score) == (standing, share, RULES.score(total))
    assert state.reason is None if reason is None else reason in (state.reason or "")


def test_the_rules_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIPELAG_KARMA__COOLDOWN_BELOW", "-5")
    monkeypatch.setenv("ARCHIPELAG_KARMA__RECOVERY_PER_DAY", "0")
    rules = KarmaRules.from_settings(Settings().karma)
    assert (rules.cooldown_below, rules.recovery_per_day, rules.suspend_below) == (-5.0, 0.0, -10.0)
    assert KarmaRules.from_settings(KarmaSettings()) == KarmaRules()  # the defaults agree
    assert rules.total_at([(T0, -4.0)], T0 + 10 * DAY) == -4.0
