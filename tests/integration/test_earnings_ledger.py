"""Earnings, payouts and usage in the ledger, on SQLite (a temp file) and PostgreSQL (a schema per test)."""

# The fixtures are imported from ledger_contract, and test parameters of the same name look like redefinitions.
# ruff: noqa: F811

from __future__ import annotations

from datetime import timedelta

import pytest
from ledger_contract import (  # noqa: F401  (fixtures: ledger, ledger_url, postgres_*)
    MICRO,
    a_manifest,
    a_settled_job,
    an_account,
    an_owned_host,
    ledger,
    ledger_url,
    postgres_schema_url,
    postgres_url,
)
from sqlalchemy import update
from sqlmodel import col
from test_ledger_contract import race

from archipelag import errors
from archipelag.ledger import Ledger
from archipelag.ledger.credits import platform_fee_micro
from archipelag.ledger.tables import CreditAccountRow, TransferRow, utcnow

THRESHOLD = 10.0  # KarmaRules().payout_threshold


def _backdate(ledger: Ledger, job_id: str, days: int) -> None:
    """Move a job's settlement ``days`` into the past (as if it had run then)."""
    with ledger.engine.begin() as connection:
        connection.execute(update(TransferRow).where(col(TransferRow.job_id) == job_id)
                           .values(at=utcnow() - timedelta(days=days)))


def test_an_owned_hosts_earnings_reach_its_owners_account_attributed_to_the_host(ledger: Ledger) -> None:
    owner, user = an_account(ledger, credits=0.0), an_account(ledger, credits=1.0)
    an_owned_host(ledger, owner, "h-1")
    an_owned_host(ledger, owner, "h-2")
    a_settled_job(ledger, user, "h-1", 100_000)
    a_settled_job(ledger, user, "h-1", 100_000)
    a_settled_job(ledger, user, "h-2", 50_000)
    found = ledger.earnings(owner.id)

    def net(price: int) -> int:
        return price - platform_fee_micro(price)

    assert found.by_host_micro == {"h-1": 2 * net(100_000), "h-2": net(50_000)}
    assert found.period_micro == found.earned_micro == found.unpaid_micro == 2 * net(100_000) + net(50_000)
    assert [(d.key, d.jobs) for d in found.days] == [("h-1", 2), ("h-2", 1)]
    assert ledger.host_earnings_micro("h-1") == 2 * net(100_000)
    assert ledger.balance_micro(owner.id) == 0  # earnings are a book of their own, not spending credits
    only = ledger.earnings(owner.id, host_id="h-2")
    assert only.by_host_micro == {"h-2": net(50_000)} and only.earned_micro == net(50_000)
    assert ledger.earnings(user.id).earned_micro == 0  # the user owns no host
    assert ledger.audit() == []


def test_the_platform_fee_is_the_ledgers_setting(ledger_url: str) -> None:
    ledger = Ledger(ledger_url, platform_fee_bps=2_500)
    try:
        ledger.migrate()
        ledger.sync_catalog([a_manifest()])
        owner, user = an_account(ledger, credits=0.0), an_account(ledger, credits=1.0)
        an_owned_host(ledger, owner, "h-1")
        a_settled_job(ledger, user, "h-1", 100_000)
        assert ledger.earnings(owner.id).unpaid_micro == 75_000
        assert ledger.network_stats()["platform_fees_micro"] == 25_000
    finally:
        ledger.close()


def test_a_host_with_no_owner_keeps_its_earnings_in_its_own_book(ledger: Ledger) -> None:
    user = an_account(ledger, credits=1.0)
    a_settled_job(ledger, user, "stray", 100_000)
    assert ledger.host_earnings_micro("stray") == 100_000 - platform_fee_micro(100_000)
    assert ledger.audit() == []


def test_earnings_come_in_day_buckets_and_a_period_takes_only_its_days(ledger: Ledger) -> None:
    owner, user = an_account(ledger, credits=0.0), an_account(ledger, credits=1.0)
    an_owned_host(ledger, owner, "h-1")
    old = a_settled_job(ledger, user, "h-1", 100_000)
    _backdate(ledger, old.id, days=3)
    a_settled_job(ledger, user, "h-1", 20_000)
    today = utcnow().date()
    found = ledger.earnings(owner.id)
    assert [(d.day, d.amount_micro) for d in found.days] == [(today - timedelta(days=3), 90_000), (today, 18_000)]
    recent = ledger.earnings(owner.id, start=today - timedelta(days=1), end=today)
    assert recent.period_micro == 18_000 and recent.earned_micro == 108_000
    assert ledger.earnings(owner.id, start=today - timedelta(days=3), end=today - timedelta(days=3)).period_micro \
        == 90_000


def test_usage_is_the_users_spend_per_day_and_workload(ledger: Ledger) -> None:
    ledger.sync_catalog([a_manifest(), a_manifest("upper", 5_000)])
    user = an_account(ledger, credits=1.0)
    a_settled_job(ledger, user, "h-x", 10_000)
    a_settled_job(ledger, user, "h-x", 10_000)
    a_settled_job(ledger, user, None, 5_000, workload="upper")
    a_settled_job(ledger, user, "h-x", 0)  # free: no spend to show
    found = ledger.usage(user.id)
    assert found.by_workload_micro == {"echo": 20_000, "upper": 5_000} and found.total_micro == 25_000
    assert [(d.key, d.jobs) for d in found.days] == [("echo", 2), ("upper", 1)]
    assert ledger.usage(an_account(ledger).id).total_micro == 0


def test_a_payout_waits_for_a_host_at_the_karma_threshold(ledger: Ledger) -> None:
    owner, user = an_account(ledger, credits=0.0), an_account(ledger, credits=1.0)
    with pytest.raises(errors.Forbidden, match="owns no host"):
        ledger.payout(owner.id, 1)
    an_owned_host(ledger, owner, "h-1", karma=THRESHOLD - 0.5)
    a_settled_job(ledger, user, "h-1", 100_000)
    with pytest.raises(errors.Forbidden, match="9.50") as refused:
        ledger.payout(owner.id, 1_000)
    assert refused.value.details == {"karma": THRESHOLD - 0.5, "threshold": THRESHOLD}
    an_owned_host(ledger, owner, "h-2", karma=THRESHOLD)  # another host at the threshold opens payouts
    paid = ledger.payout(owner.id, 40_000)
    assert paid.amount_micro == 40_000
    found = ledger.earnings(owner.id)
    assert (found.earned_micro, found.paid_out_micro, found.unpaid_micro) == (90_000, 40_000, 50_000)
    assert ledger.network_stats()["platform_fees_micro"] == 10_000
    assert ledger.audit() == []


def test_a_payout_is_never_more_than_the_unpaid_earnings(ledger: Ledger) -> None:
    owner, user = an_account(ledger, credits=0.0), an_account(ledger, credits=1.0)
    an_owned_host(ledger, owner, "h-1", karma=THRESHOLD)
    a_settled_job(ledger, user, "h-1", 100_000)
    with pytest.raises(errors.Conflict, match="more than the 0.09 unpaid"):
        ledger.payout(owner.id, 90_001)
    with pytest.raises(errors.Conflict):
        ledger.payout(owner.id, 0)
    ledger.payout(owner.id, 90_000)
    with pytest.raises(errors.Conflict):
        ledger.payout(owner.id, 1)
    assert [p.amount_micro for p in ledger.payouts(owner.id)] == [90_000]
    assert ledger.payouts(user.id) == []


def test_racing_payouts_never_overdraw_the_earnings(ledger: Ledger) -> None:
    owner, user = an_account(ledger, credits=0.0), an_account(ledger, credits=1.0)
    an_owned_host(ledger, owner, "h-1", karma=THRESHOLD)
    a_settled_job(ledger, user, "h-1", 100_000)  # 90_000 unpaid
    results = race(8, lambda _: ledger.payout(owner.id, 50_000))
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, errors.Conflict) for r in results if isinstance(r, Exception))
    assert ledger.earnings(owner.id).unpaid_micro == 40_000
    assert ledger.audit() == []


def test_credits_of_the_owner_and_earnings_stay_apart(ledger: Ledger) -> None:
    """An owner who is also a user spends credits and earns into another book; neither reaches the other."""
    owner = an_account(ledger, credits=1.0)
    an_owned_host(ledger, owner, "h-1", karma=THRESHOLD)
    a_settled_job(ledger, owner, "h-1", 100_000)
    assert ledger.balance_micro(owner.id) == MICRO - 100_000
    assert ledger.earnings(owner.id).unpaid_micro == 90_000
    assert ledger.usage(owner.id).total_micro == 100_000


def test_the_audit_names_a_drifted_balance_and_a_book_below_zero(ledger: Ledger) -> None:
    """What the after-every-test check (tests/conftest.py) would report; the books are put right afterwards."""
    user = an_account(ledger, credits=1.0)
    assert ledger.audit() == []
    with ledger.engine.begin() as connection:
        connection.execute(update(CreditAccountRow).where(col(CreditAccountRow.owner) == str(user.id))
                           .values(balance_micro=-5))
    problems = ledger.audit()
    assert any("drifted" in p for p in problems) and any("below zero: -5" in p for p in problems)
    with ledger.engine.begin() as connection:
        connection.execute(update(CreditAccountRow).where(col(CreditAccountRow.owner) == str(user.id))
                           .values(balance_micro=MICRO))
    assert ledger.audit() == []
