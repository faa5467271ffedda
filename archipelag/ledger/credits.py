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

from typing import Any, NamedTuple

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlmodel import col

from archipelag.catalog import MICRO
from archipelag.errors import LedgerError, PaymentRequired
from archipelag.ledger.tables import CreditAccountRow, HostRow, JobRow, PostingRow, TransferRow, table, utcnow

DEFAULT_PLATFORM_FEE_BPS = 1_000  # the platform keeps 10% of each job's price; hosts earn the rest (a setting)
# Books that may never go below zero: what a person holds, what escrow holds for open jobs, what an owner may claim.
NON_NEGATIVE_BOOKS = ("user", "earnings", "host", "escrow", "platform", "payouts")


class Book(NamedTuple):
    """A book by its unique key: what it is and whose (an account id, a host id, "" for the platform's)."""

    kind: str
    owner: str = ""


ESCROW, PLATFORM, MINT, PAYOUTS = Book("escrow"), Book("platform"), Book("mint"), Book("payouts")

_BOOKS = table(CreditAccountRow)
_TRANSFERS = table(TransferRow)
_POSTINGS = table(PostingRow)
# One leg of a transfer: the book found by its key moves by the amount and returns its id for the posting. By key,
# not by an id remembered from an earlier transaction, so there is no cached id that could name another book.
_MOVE = (
    update(_BOOKS)
    .where(_BOOKS.c.kind == bindparam("book_kind"), _BOOKS.c.owner == bindparam("book_owner"))
    .values(balance_micro=_BOOKS.c.balance_micro + bindparam("amount"))
    .returning(_BOOKS.c.id)
)
_MOVE_NO_OVERDRAFT = _MOVE.where(_BOOKS.c.balance_micro + bindparam("amount") >= 0)  # the guarded update
_NEW_TRANSFER = insert(_TRANSFERS).returning(_TRANSFERS.c.id)
_NEW_POSTINGS = insert(_POSTINGS)
_HOSTS = table(HostRow)
_OWNER_OF_HOST = select(_HOSTS.c.owner_account_id).where(_HOSTS.c.id == bindparam("host_id"))


def platform_fee_micro(price_micro: int, fee_bps: int = DEFAULT_PLATFORM_FEE_BPS) -> int:
    return price_micro * fee_bps // 10_000


def open_book(session: Session, book: Book) -> None:
    """Create ``book`` when it is missing (safe under concurrent creators)."""
    dialect = session.get_bind().dialect.name
    insert_or_skip: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(
        insert_or_skip(_BOOKS).values(kind=book.kind, owner=book.owner, balance_micro=0).on_conflict_do_nothing()
    )


def user_book(account_id: int) -> Book:
    return Book("user", str(account_id))


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


def earnings_book(session: Session, host_id: str) -> Book:
    """The book a host's earnings go to: its owner's ``earnings`` book, or the host's own while it has none."""
    owner = session.execute(_OWNER_OF_HOST, {"host_id": host_id}).scalar_one_or_none()
    return Book("earnings", str(owner)) if owner is not None else Book("host", host_id)


def book_balance_micro(session: Session, kind: str) -> int:
    """The balance of one of the platform's books (escrow, platform, mint)."""
    return _balance_of(session, kind, "")


def transfer(
    session: Session,
    kind: str,
    legs: dict[Book, int],
    *,
    job_id: str | None = None,
    memo: str | None = None,
    no_overdraft: Book | None = None,
) -> None:
    """Post ``legs`` ({book: amount}) as one transfer; a book missing so far is opened. ``no_overdraft`` names a
    book that may not go negative; when it would, raises PaymentRequired and the caller's transaction rolls
    back."""
    legs = {book: amount for book, amount in legs.items() if amount != 0}
    if sum(legs.values()) != 0:
        raise LedgerError(f"transfer {kind} does not balance: {legs}")
    if not legs:
        return
    # Lock books in one order (by their key) so concurrent transfers never deadlock on PostgreSQL.
    ids = {book: _move(session, book, legs[book], guarded=book == no_overdraft) for book in sorted(legs)}
    transfer_id = session.execute(
        _NEW_TRANSFER, {"kind": kind, "job_id": job_id, "at": utcnow(), "memo": memo}
    ).scalar_one()
    session.execute(_NEW_POSTINGS, [{"transfer_id": transfer_id, "credit_account_id": ids[book],
                                         "amount_micro": amount} for book, amount in legs.items()])


def _move(session: Session, book: Book, amount: int, *, guarded: bool) -> int:
    """Move ``book``'s running balance by ``amount`` and return its id; ``guarded``, refuse to take it below zero."""
    params = {"book_kind": book.kind, "book_owner": book.owner, "amount": amount}
    moved = session.execute(_MOVE_NO_OVERDRAFT if guarded else _MOVE, params).scalar_one_or_none()
    if moved is not None:
        return int(moved)
    if guarded:
        available = _balance_of(session, book.kind, book.owner)
        raise PaymentRequired(
            f"this job needs {-amount / MICRO:g} credits and the account has {available / MICRO:g}; "
            "add credits or lower the job's price",
            required=-amount / MICRO,
            available=available / MICRO,
        )
    open_book(session, book)
    moved = session.execute(_MOVE, params).scalar_one_or_none()
    if moved is None:
        raise LedgerError(f"the {book.kind} book {book.owner!r} is missing; run `archipelag db migrate`")
    return int(moved)


def grant(session: Session, account_id: int, amount_micro: int, memo: str | None = None) -> None:
    if amount_micro < 0:
        raise ValueError("a grant cannot be negative")
    transfer(session, "grant", {MINT: -amount_micro, user_book(account_id): amount_micro}, memo=memo)


def reserve(session: Session, account_id: int, job_id: str, amount_micro: int) -> None:
    user = user_book(account_id)
    transfer(session, "reserve", {user: -amount_micro, ESCROW: amount_micro}, job_id=job_id, no_overdraft=user)


def settle(
    session: Session, account_id: int, job_id: str, reserved_micro: int, price_micro: int, host_id: str | None,
    fee_bps: int = DEFAULT_PLATFORM_FEE_BPS,
) -> int:
    """Charge ``price_micro`` (capped at the reservation) and release the rest; returns the amount charged. The
    host's share goes to its owner's earnings (the job row names the host: that is the posting's attribution)."""
    charged = max(0, min(price_micro, reserved_micro))
    fee = platform_fee_micro(charged, fee_bps) if host_id else charged  # no host to pay: the platform keeps it
    legs: dict[Book, int] = {}

    def add(book: Book, amount: int) -> None:
        legs[book] = legs.get(book, 0) + amount

    add(ESCROW, -reserved_micro)
    add(user_book(account_id), reserved_micro - charged)
    add(PLATFORM, fee)
    if host_id:
        add(earnings_book(session, host_id), charged - fee)
    transfer(session, "settle", legs, job_id=job_id)
    return charged


def refund(session: Session, account_id: int, job_id: str, reserved_micro: int) -> None:
    transfer(session, "refund", {ESCROW: -reserved_micro, user_book(account_id): reserved_micro}, job_id=job_id)


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
