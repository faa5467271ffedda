"""Karma rules: points per outcome, the derived score, the standing. Pure."""

from __future__ import annotations

import pytest

from archipelag.ledger.karma_rules import KarmaKind, KarmaRules, Standing

RULES = KarmaRules()


def test_an_hour_of_compute_earns_a_point_boosted_below_the_payout_threshold() -> None:
    assert RULES.points_for(KarmaKind.JOB_SUCCEEDED, total_before=0.0, compute_s=3600) == pytest.approx(1.5)
    assert RULES.points_for(KarmaKind.JOB_SUCCEEDED, total_before=10.0, compute_s=3600) == pytest.approx(1.0)


def test_a_short_job_still_earns_the_minimum() -> None:
    assert RULES.points_for(KarmaKind.JOB_SUCCEEDED, total_before=50.0, compute_s=0.2) == RULES.min_job_points


@pytest.mark.parametrize(
    "kind",
    [KarmaKind.JOB_FAILED, KarmaKind.JOB_TIMED_OUT, KarmaKind.HOST_DROPPED, KarmaKind.VERIFICATION_FAILED],
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
