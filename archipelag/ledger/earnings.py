"""Earnings: what an owner's hosts earned, per host and per day; payouts of it; and a user's spend (usage).

An owner's ``earnings`` book receives each settled job's host share (see ``credits.settle``); the settling
transfer names the job, and the job its host, so every posting is attributed to one host. A payout is a transfer
from that book to the ``payouts`` book (the money leaves the network), allowed once one of the owner's hosts has
reached the karma payout threshold, and never for more than the book holds: the guarded update of
``credits.transfer`` refuses an overdraft even when two payouts race.

Usage is read from the jobs themselves: a settled job records what it was charged (``credits_used_micro``) when it
ends, in the settling transaction.

Days are UTC dates; a period is ``[start, end]``, both days included. Functions here take an open session;
``Ledger`` owns the transactions.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from archipelag.catalog import MICRO
from archipelag.errors import Conflict, Forbidden, PaymentRequired
from archipelag.ledger import credits, hosts
from archipelag.ledger.karma_rules import KarmaRules
from archipelag.ledger.records import DayAmount, Earnings, Payout, Usage
from archipelag.ledger.tables import CreditAccountRow, HostRow, JobRow, PostingRow, TransferRow, WorkloadRow


def _bounds(start: date, end: date) -> tuple[datetime, datetime]:
    return datetime.combine(start, time(), UTC), datetime.combine(end + timedelta(days=1), time(), UTC)


def _days(rows: list[tuple[datetime, str, int]]) -> list[DayAmount]:
    buckets: dict[tuple[date, str], list[int]] = defaultdict(lambda: [0, 0])
    for at, key, amount in rows:
        bucket = buckets[(at.astimezone(UTC).date(), key)]
        bucket[0] += amount
        bucket[1] += 1
    return [DayAmount(day, key, amount, count) for (day, key), (amount, count) in sorted(buckets.items())]


def _totals(days: list[DayAmount]) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for entry in days:
        totals[entry.key] += entry.amount_micro
    return dict(sorted(totals.items()))


def _earnings_postings(account_id: int) -> ColumnElement[bool]:
    return and_(col(CreditAccountRow.kind) == "earnings", col(CreditAccountRow.owner) == str(account_id))


def earnings(session: Session, account_id: int, start: date, end: date, host_id: str | None) -> Earnings:
    amount = col(PostingRow.amount_micro)
    base = (
        select(col(TransferRow.at), col(JobRow.host_id), amount)
        .join(CreditAccountRow, col(CreditAccountRow.id) == col(PostingRow.credit_account_id))
        .join(TransferRow, col(TransferRow.id) == col(PostingRow.transfer_id))
        .join(JobRow, col(JobRow.id) == col(TransferRow.job_id))
        .where(_earnings_postings(account_id), col(TransferRow.kind) == "settle")
    )
    if host_id is not None:
        base = base.where(col(JobRow.host_id) == host_id)
    since, until = _bounds(start, end)
    rows = session.execute(base.where(col(TransferRow.at) >= since, col(TransferRow.at) < until)).all()
    days = _days([(at, str(host), int(value)) for at, host, value in rows])
    earned = int(session.execute(select(func.coalesce(func.sum(base.subquery().c.amount_micro), 0))).scalar_one())
    paid = sum(p.amount_micro for p in payouts(session, account_id))
    by_host = _totals(days)
    return Earnings(start, end, days, by_host, sum(by_host.values()), earned, paid,
                    credits.unpaid_earnings_micro(session, account_id))


def usage(session: Session, account_id: int, start: date, end: date) -> Usage:
    since, until = _bounds(start, end)
    rows = session.execute(
        select(col(JobRow.completed_at), col(WorkloadRow.slug), col(JobRow.credits_used_micro))
        .join(WorkloadRow, col(WorkloadRow.id) == col(JobRow.workload_id))
        .where(col(JobRow.account_id) == account_id, col(JobRow.credits_used_micro) > 0,
               col(JobRow.completed_at) >= since, col(JobRow.completed_at) < until)
    ).all()
    days = _days([(at, str(slug), int(value)) for at, slug, value in rows if at is not None])
    by_workload = _totals(days)
    return Usage(start, end, days, by_workload, sum(by_workload.values()))


def best_karma(session: Session, account_id: int, rules: KarmaRules) -> float | None:
    """The highest karma total among the account's hosts now (recovery included, as ``rules`` say); None when it
    owns none."""
    owned = session.execute(
        select(col(HostRow.id)).where(col(HostRow.owner_account_id) == account_id)
    ).scalars().all()
    if not owned:
        return None
    return max(hosts.karma_total(session, host, rules) for host in owned)


def payout(session: Session, account_id: int, amount_micro: int, rules: KarmaRules) -> Payout:
    """Pay ``amount_micro`` of the account's unpaid earnings out. Forbidden under the karma threshold; Conflict for
    more than the book holds (checked by the guarded update, so racing payouts cannot overdraw it)."""
    if amount_micro <= 0:
        raise Conflict("a payout must be for more than zero credits")
    karma = best_karma(session, account_id, rules)
    if karma is None or karma < rules.payout_threshold:
        have = "owns no host" if karma is None else f"has a best host karma of {karma:.2f}"
        raise Forbidden(f"payouts open once one of your hosts reaches {rules.payout_threshold:g} karma; this account "
                        f"{have}. Karma grows with completed jobs.", karma=karma,
                        threshold=rules.payout_threshold)
    source = credits.Book("earnings", str(account_id))
    try:
        credits.transfer(session, "payout", {source: -amount_micro, credits.PAYOUTS: amount_micro},
                         memo=f"payout to account {account_id}", no_overdraft=source)
    except PaymentRequired as exc:
        unpaid = exc.details["available"]
        raise Conflict(f"a payout of {amount_micro / MICRO:g} credits is more than the {unpaid:g} unpaid; "
                       "ask for at most that", requested=amount_micro / MICRO, unpaid=unpaid) from None
    return payouts(session, account_id)[0]


def payouts(session: Session, account_id: int) -> list[Payout]:
    """The account's payouts, newest first."""
    rows = session.execute(
        select(col(TransferRow.id), col(PostingRow.amount_micro), col(TransferRow.at))
        .join(PostingRow, col(PostingRow.transfer_id) == col(TransferRow.id))
        .join(CreditAccountRow, col(CreditAccountRow.id) == col(PostingRow.credit_account_id))
        .where(_earnings_postings(account_id), col(TransferRow.kind) == "payout")
        .order_by(col(TransferRow.id).desc())
    ).all()
    return [Payout(int(transfer_id or 0), -int(amount), at) for transfer_id, amount, at in rows]
