"""Credits: the double-entry book of integer micro-credits (DESIGN §7).

Every movement is a transfer of postings that sum to zero, so the sum over all postings is always zero.
Books (``credit_accounts``): one ``user`` book per account (credits to spend), one ``earnings`` book per account
that owns hosts (what its hosts earned, less what was paid out), a ``host`` book per host that has no owner (its
earnings wait there), plus the platform's ``escrow`` (reservations of open jobs), ``platform`` (fees), ``mint``
(the source of granted credits; its balance is minus all credits ever granted) and ``payouts`` (money that left
the network; its balance is everything ever paid out). A book's balance is the sum of its postings; ``balance_micro`` on the row is a running
total kept in the same transaction (cheap reads, and the guarded update that stops overdrafts).

- ``grant``: mint → user (sign-up credits, top-ups).
- ``reserve``: user → escrow at submit; ``PaymentRequired`` (required/available, in credits) when short.
- ``settle``: escrow → the host owner's earnings (price minus the platform fee; the job names the host, so each
  posting is attributed to one), platform (fee), user (the unused rest).
- ``refund``: escrow → user, all of it (a failed, cancelled or timed-out job is never charged).
- ``payout``: earnings → payouts (see ``earnings``).
- ``total_is_zero`` / ``audit``: the books' invariants, for tests and audits.

Functions here take an open session; ``Ledger`` owns the transactions.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlmodel import col

from archipelag.catalog import MICRO
from archipelag.errors import LedgerError, PaymentRequired
from archipelag.ledger.tables import CreditAccountRow, HostRow, JobRow, PostingRow, TransferRow, utcnow

DEFAULT_PLATFORM_FEE_BPS = 1_000  # the platform keeps 10% of each job's price; hosts earn the rest (a setting)
# Books that may never go below zero: what a person holds, what escrow holds for open jobs, what an owner may claim.
NON_NEGATIVE_BOOKS = ("user", "earnings", "host", "escrow", "platform", "payouts")


def platform_fee_micro(price_micro: int, fee_bps: int = DEFAULT_PLATFORM_FEE_BPS) -> int:
    return price_micro * fee_bps // 10_000


def _find_book(session: Session, kind: str, owner: str) -> int | None:
    return session.execute(
        select(col(CreditAccountRow.id)).where(
            col(CreditAccountRow.kind) == kind, col(CreditAccountRow.owner) == owner
        )
    ).scalar_one_or_none()


_KNOWN_BOOKS: dict[tuple[str, str, str], int] = {}  # (database, kind, owner) → id; books are never removed


def book(session: Session, kind: str, owner: str = "") -> int:
    """The id of a book, created when missing (safe under concurrent creators). Ids of books that existed
    before this transaction are remembered: each job's transfers would otherwise look up the same few books."""
    key = (session.get_bind().engine.url.render_as_string(), kind, owner)
    known = _KNOWN_BOOKS.get(key)
    if known is not None:
        return known
    found = _find_book(session, kind, owner)
    if found is not None:
        _KNOWN_BOOKS[key] = found  # a transfer looks each book up once: found, it existed before this transaction
        return found
    dialect = session.get_bind().dialect.name
    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(
        insert(CreditAccountRow).values(kind=kind, owner=owner, balance_micro=0).on_conflict_do_nothing()
    )
    created = _find_book(session, kind, owner)
    if created is None:
        raise LedgerError(f"the {kind} book {owner!r} is missing; run `archipelag db migrate`")
    return created


def user_book(session: Session, account_id: int) -> int:
    return book(session, "user", str(account_id))


def _balance_of(session: Session, kind: str, owner: str) -> int:
    balance = session.execute(
        select(col(CreditAccountRow.balance_micro)).where(
            col(CreditAccountRow.kind) == kind, col(CreditAccountRow.owner) == owner
        )
    ).scalar_one_or_none()
    return int(balance) if balance is not None else 0


def balance_micro(session: Session, account_id: int) -> int:
    return _balance_of(session, "user", str(account_id))


def host_earnings_micro(session: Session, host_id: str) -> int:
    """Everything ``host_id`` has earned: its owner's settle postings for the host's jobs, plus its own book
    (earned while it had no owner)."""
    amount = col(PostingRow.amount_micro)
    owned = session.execute(
        select(func.coalesce(func.sum(amount), 0))
        .join(CreditAccountRow, col(CreditAccountRow.id) == col(PostingRow.credit_account_id))
        .join(TransferRow, col(TransferRow.id) == col(PostingRow.transfer_id))
        .join(JobRow, col(JobRow.id) == col(TransferRow.job_id))
        .where(col(CreditAccountRow.kind) == "earnings", col(TransferRow.kind) == "settle",
               col(JobRow.host_id) == host_id)
    ).scalar_one()
    return int(owned) + _balance_of(session, "host", host_id)


def unpaid_earnings_micro(session: Session, account_id: int) -> int:
    return _balance_of(session, "earnings", str(account_id))


def earnings_book(session: Session, host_id: str) -> int:
    """The book a host's earnings go to: its owner's ``earnings`` book, or the host's own while it has none."""
    owner = session.execute(
        select(col(HostRow.owner_account_id)).where(col(HostRow.id) == host_id)
    ).scalar_one_or_none()
    return book(session, "earnings", str(owner)) if owner is not None else book(session, "host", host_id)


def book_balance_micro(session: Session, kind: str) -> int:
    """The balance of one of the platform's books (escrow, platform, mint)."""
    return _balance_of(session, kind, "")


def transfer(
    session: Session,
    kind: str,
    legs: dict[int, int],
    *,
    job_id: str | None = None,
    memo: str | None = None,
    no_overdraft: int | None = None,
) -> None:
    """Post ``legs`` ({book id: amount}) as one transfer. ``no_overdraft`` names a book that may not go negative;
    when it would, raises PaymentRequired and the caller's transaction rolls back."""
    legs = {book_id: amount for book_id, amount in legs.items() if amount != 0}
    if sum(legs.values()) != 0:
        raise LedgerError(f"transfer {kind} does not balance: {legs}")
    if not legs:
        return
    balance = col(CreditAccountRow.balance_micro)
    # Lock books in id order so concurrent transfers never deadlock on PostgreSQL.
    for book_id in sorted(legs):
        amount = legs[book_id]
        stmt = update(CreditAccountRow).where(col(CreditAccountRow.id) == book_id)
        if book_id == no_overdraft and amount < 0:
            stmt = stmt.where(balance + amount >= 0)  # the guarded update: no overdraft, even under races
        result = session.execute(stmt.values(balance_micro=balance + amount))
        assert isinstance(result, CursorResult)
        if result.rowcount == 1:
            continue
        if book_id == no_overdraft:
            available = session.execute(
                select(balance).where(col(CreditAccountRow.id) == book_id)
            ).scalar_one()
            raise PaymentRequired(
                f"this job needs {-amount / MICRO:g} credits and the account has {available / MICRO:g}; "
                "add credits or lower the job's price",
                required=-amount / MICRO,
                available=available / MICRO,
            )
        raise LedgerError(f"book {book_id} is missing")
    row = TransferRow(kind=kind, job_id=job_id, at=utcnow(), memo=memo)
    session.add(row)
    session.flush()
    assert row.id is not None
    session.add_all(
        [PostingRow(transfer_id=row.id, credit_account_id=b, amount_micro=a) for b, a in legs.items()]
    )
    session.flush()


def grant(session: Session, account_id: int, amount_micro: int, memo: str | None = None) -> None:
    if amount_micro < 0:
        raise ValueError("a grant cannot be negative")
    transfer(
        session,
        "grant",
        {book(session, "mint"): -amount_micro, user_book(session, account_id): amount_micro},
        memo=memo,
    )


def reserve(session: Session, account_id: int, job_id: str, amount_micro: int) -> None:
    user = user_book(session, account_id)
    transfer(
        session,
        "reserve",
        {user: -amount_micro, book(session, "escrow"): amount_micro},
        job_id=job_id,
        no_overdraft=user,
    )


def settle(
    session: Session, account_id: int, job_id: str, reserved_micro: int, price_micro: int, host_id: str | None,
    fee_bps: int = DEFAULT_PLATFORM_FEE_BPS,
) -> int:
    """Charge ``price_micro`` (capped at the reservation) and release the rest; returns the amount charged. The
    host's share goes to its owner's earnings (the job row names the host: that is the posting's attribution)."""
    charged = max(0, min(price_micro, reserved_micro))
    fee = platform_fee_micro(charged, fee_bps) if host_id else charged  # no host to pay: the platform keeps it
    legs: dict[int, int] = {}

    def add(book_id: int, amount: int) -> None:
        legs[book_id] = legs.get(book_id, 0) + amount

    add(book(session, "escrow"), -reserved_micro)
    add(user_book(session, account_id), reserved_micro - charged)
    add(book(session, "platform"), fee)
    if host_id:
        add(earnings_book(session, host_id), charged - fee)
    transfer(session, "settle", legs, job_id=job_id)
    return charged


def refund(session: Session, account_id: int, job_id: str, reserved_micro: int) -> None:
    transfer(
        session,
        "refund",
        {book(session, "escrow"): -reserved_micro, user_book(session, account_id): reserved_micro},
        job_id=job_id,
    )


def total_is_zero(session: Session) -> bool:
    """True when all postings sum to zero, every transfer sums to zero, and every book's running balance equals
    the sum of its postings."""
    amount = col(PostingRow.amount_micro)
    total = session.execute(select(func.coalesce(func.sum(amount), 0))).scalar_one()
    unbalanced = session.execute(
        select(col(PostingRow.transfer_id))
        .group_by(col(PostingRow.transfer_id))
        .having(func.sum(amount) != 0)
    ).first()
    sums = (
        select(col(PostingRow.credit_account_id).label("book"), func.sum(amount).label("posted"))
        .group_by(col(PostingRow.credit_account_id))
        .subquery()
    )
    drifted = session.execute(
        select(col(CreditAccountRow.id))
        .outerjoin(sums, sums.c.book == col(CreditAccountRow.id))
        .where(col(CreditAccountRow.balance_micro) != func.coalesce(sums.c.posted, 0))
    ).first()
    return int(total) == 0 and unbalanced is None and drifted is None


def audit(session: Session) -> list[str]:
    """What is wrong with the books, in words (empty when nothing): the double-entry invariants of
    ``total_is_zero``, and no book that holds someone's money below zero. Cheap: a few aggregate queries."""
    problems = [] if total_is_zero(session) else ["the postings do not sum to zero or a running balance drifted"]
    negative = session.execute(
        select(col(CreditAccountRow.kind), col(CreditAccountRow.owner), col(CreditAccountRow.balance_micro))
        .where(col(CreditAccountRow.kind).in_(NON_NEGATIVE_BOOKS), col(CreditAccountRow.balance_micro) < 0)
    ).all()
    problems += [f"the {kind} book {owner!r} is below zero: {balance}" for kind, owner, balance in negative]
    return problems
