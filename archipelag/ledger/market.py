"""Market: what the exchange stores — hosts' asking prices, accounts' saved bids — and the market's history read
from the clearing prices of settled jobs (DESIGN §7).

Asks and bids are keyed by a pattern: a workload's slug, or an fnmatch family (``llm-*``, ``*``). Whether a price
is within the network's bounds is the pricing rules' question (``archipelag.market.pricing``), asked before
anything reaches here; this module checks only that prices are whole, non-negative micro-credits. Functions take
an open session; ``Ledger`` owns the transactions.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session
from sqlmodel import col

from archipelag.errors import NotFound, ValidationFailed
from archipelag.ids import AccountId, HostId
from archipelag.ledger import hosts, workloads
from archipelag.ledger.tables import AccountRow, AskingPriceRow, BidPreferenceRow, JobRow
from archipelag.lifecycle import JobStatus

MAX_PATTERN_CHARS = 100
MAX_PATTERNS = 64  # asks or saved bids per host or account
MAX_PRICE_MICRO = 10**15  # a billion credits: past any real price, inside a BIGINT


def checked(prices: Mapping[str, int]) -> dict[str, int]:
    """``prices`` as stored: each pattern 1–100 characters, each price a whole number of micro-credits ≥ 0;
    ValidationFailed naming the wrong ones."""
    errors: dict[str, str] = {}
    if len(prices) > MAX_PATTERNS:
        errors["prices"] = f"at most {MAX_PATTERNS} patterns"
    for pattern, price in prices.items():
        if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_PATTERN_CHARS or pattern != pattern.strip():
            errors[str(pattern)[:MAX_PATTERN_CHARS]] = f"a pattern is 1 to {MAX_PATTERN_CHARS} characters"
        elif isinstance(price, bool) or not isinstance(price, int) or not 0 <= price <= MAX_PRICE_MICRO:
            errors[pattern] = "a price is a whole number of micro-credits, 0 or more"
    if errors:
        raise ValidationFailed("invalid prices: " + "; ".join(f"{k}: {v}" for k, v in errors.items()),
                               errors=errors)
    return dict(prices)


def set_asks(session: Session, host_id: str, asks: Mapping[str, int], now: datetime) -> None:
    """Replace the host's asks with ``asks`` (empty: it asks the catalog's prices). NotFound for an unknown host."""
    asks = checked(asks)
    hosts.get_row(session, host_id)
    session.execute(delete(AskingPriceRow).where(col(AskingPriceRow.host_id) == host_id))
    if asks:
        session.execute(insert(AskingPriceRow), [
            {"host_id": host_id, "pattern": pattern, "price_micro": price, "updated_at": now}
            for pattern, price in sorted(asks.items())])


def asks(session: Session, host_id: str | None = None) -> dict[HostId, dict[str, int]]:
    """Every host's asks (or one host's), by host then pattern; hosts with none are absent."""
    query = select(col(AskingPriceRow.host_id), col(AskingPriceRow.pattern), col(AskingPriceRow.price_micro))
    if host_id is not None:
        query = query.where(col(AskingPriceRow.host_id) == host_id)
    found: dict[HostId, dict[str, int]] = {}
    for host, pattern, price in session.execute(query.order_by(col(AskingPriceRow.host_id),
                                                               col(AskingPriceRow.pattern))):
        found.setdefault(HostId(host), {})[pattern] = int(price)
    return found


def set_bid(session: Session, account_id: int, pattern: str, price_micro: int | None, now: datetime) -> None:
    """Save (or with None, forget) the account's bid for ``pattern``. NotFound for an unknown account."""
    if price_micro is not None:
        checked({pattern: price_micro})
    if session.get(AccountRow, account_id) is None:
        raise NotFound(f"account {account_id} does not exist")
    session.execute(delete(BidPreferenceRow).where(col(BidPreferenceRow.account_id) == account_id,
                                                   col(BidPreferenceRow.pattern) == pattern))
    if price_micro is not None:
        if len(bids(session, account_id).get(AccountId(account_id), {})) >= MAX_PATTERNS:
            raise ValidationFailed(f"an account saves at most {MAX_PATTERNS} bids; remove one first",
                                   errors={pattern: "too many saved bids"})
        session.add(BidPreferenceRow(account_id=account_id, pattern=pattern, price_micro=price_micro,
                                     updated_at=now))
        session.flush()


def bids(session: Session, account_id: int | None = None) -> dict[AccountId, dict[str, int]]:
    """Every account's saved bids (or one account's), by account then pattern."""
    query = select(col(BidPreferenceRow.account_id), col(BidPreferenceRow.pattern),
                   col(BidPreferenceRow.price_micro))
    if account_id is not None:
        query = query.where(col(BidPreferenceRow.account_id) == account_id)
    found: dict[AccountId, dict[str, int]] = {}
    for account, pattern, price in session.execute(query.order_by(col(BidPreferenceRow.account_id),
                                                                  col(BidPreferenceRow.pattern))):
        found.setdefault(AccountId(int(account)), {})[pattern] = int(price)
    return found


def history(session: Session, slug: str, since: datetime, bucket_s: int) -> list[dict[str, Any]]:
    """The clearing prices of ``slug``'s jobs that succeeded since ``since``, in buckets of ``bucket_s`` seconds
    (aligned to the Unix epoch), oldest first: each bucket's ``start``, ``count``, ``min_micro``,
    ``median_micro``, ``avg_micro`` and ``max_micro``. Buckets without a job are left out. NotFound for an
    unknown workload."""
    if bucket_s <= 0:
        raise ValidationFailed("a bucket is at least one second long", errors={"bucket": "must be > 0"})
    workload = workloads.get_row(session, slug)
    rows = session.execute(
        select(col(JobRow.completed_at), col(JobRow.clearing_price_micro))
        .where(col(JobRow.workload_id) == workload.id, col(JobRow.completed_at) >= since,
               col(JobRow.status) == str(JobStatus.SUCCEEDED), col(JobRow.clearing_price_micro).is_not(None))
    ).all()
    buckets: dict[int, list[int]] = {}
    for completed_at, price in rows:  # both set: the query asked for them
        assert completed_at is not None and price is not None
        start = int(completed_at.timestamp()) // bucket_s * bucket_s
        buckets.setdefault(start, []).append(int(price))
    return [{"start": datetime.fromtimestamp(start, UTC), "count": len(prices), "min_micro": min(prices),
             "median_micro": round(statistics.median(prices)), "avg_micro": round(sum(prices) / len(prices)),
             "max_micro": max(prices)}
            for start, prices in sorted(buckets.items())]
