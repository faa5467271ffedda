"""Accounts: user accounts, their API keys, browser sessions, and single-use tokens (verify, reset, invite).

A key is ``ak_`` + 43 random url-safe characters, shown once at creation. At rest only its SHA-256 (hex) and
its first ``PREFIX_LEN`` characters (to recognise it in a list) are kept. ``find_key`` looks a key up by
hash and refuses unknown, revoked and expired keys with ``Unauthorized``, and the keys of a suspended account
with ``Forbidden``. Session cookies and tokens sent by link are random too, and stored hashed the same way.

Passwords arrive here already hashed (argon2id, ``archipelag.accounts.passwords``): hashing is slow on
purpose and runs in the API's processes, not in the ledger's one-at-a-time actor.

Functions here take an open session; ``Ledger`` owns the transactions.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col

from archipelag.errors import (
    AccountSuspended,
    Conflict,
    EmailUnverified,
    Forbidden,
    NotFound,
    Unauthorized,
    ValidationFailed,
)
from archipelag.ids import AccountId
from archipelag.ledger import credits
from archipelag.ledger.records import Account, ApiKey, Invite
from archipelag.ledger.records import Session as SessionRecord
from archipelag.ledger.tables import AccountRow, AccountTokenRow, ApiKeyRow, SessionRow, utcnow

KEY_PREFIX = "ak_"
PREFIX_LEN = 10
SCOPES = frozenset({"read", "write", "keys"})  # keys: create and revoke keys
TOKEN_PURPOSES = frozenset({"verify", "reset", "invite"})
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(full_key: str) -> str:
    return hashlib.sha256(full_key.encode()).hexdigest()


def normalized_email(email: str) -> str:
    """The address as stored: trimmed and lower-cased (one account per address, whatever its case)."""
    value = email.strip().lower()
    if not _EMAIL.match(value):
        raise ValidationFailed("invalid email address", errors={"email": "must be an email address"})
    return value


def account_record(row: AccountRow, credits_micro: int) -> Account:
    assert row.id is not None
    return Account(AccountId(row.id), row.email, credits_micro, row.home_region, row.created_at,
                   is_admin=row.is_admin, email_verified_at=row.email_verified_at,
                   suspended_at=row.suspended_at, suspended_reason=row.suspended_reason)


def key_record(row: ApiKeyRow) -> ApiKey:
    assert row.id is not None
    return ApiKey(
        id=row.id,
        account_id=AccountId(row.account_id),
        name=row.name,
        prefix=row.prefix,
        scopes=tuple(row.scopes.split()),
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


def session_record(row: SessionRow) -> SessionRecord:
    assert row.id is not None
    return SessionRecord(row.id, AccountId(row.account_id), row.csrf_token, row.created_at, row.expires_at)


# --- accounts ---------------------------------------------------------------------------------------


def create_account(
    session: Session, email: str, credits_micro: int, home_region: str | None, *,
    password_hash: str | None = None, verified: bool = False, is_admin: bool | None = None,
) -> Account:
    """A new account. ``is_admin=None``: an admin when it is the network's first account."""
    email = normalized_email(email)
    if is_admin is None:
        is_admin = session.scalar(select(func.count()).select_from(AccountRow)) == 0
    now = utcnow()
    row = AccountRow(email=email, home_region=home_region, created_at=now, password_hash=password_hash,
                     email_verified_at=now if verified else None, is_admin=is_admin)
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"an account with email {email!r} already exists") from None
    assert row.id is not None
    credits.open_book(session, credits.user_book(row.id))
    if credits_micro:
        credits.grant(session, row.id, credits_micro, memo="initial credits")
    return account_record(row, credits_micro)


def _row(session: Session, account_id: int, *, lock: bool = False) -> AccountRow:
    row = session.get(AccountRow, account_id, with_for_update=lock)
    if row is None:
        raise NotFound(f"account {account_id} does not exist")
    return row


def get_account(session: Session, account_id: int) -> Account:
    row = _row(session, account_id)
    return account_record(row, credits.balance_micro(session, account_id))


def account_for_sign_in(session: Session, email: str) -> tuple[Account, str] | None:
    """The account and its password hash, or None when no account with a password has this address."""
    try:
        email = normalized_email(email)
    except ValidationFailed:
        return None
    row = session.scalars(select(AccountRow).where(col(AccountRow.email) == email)).first()
    if row is None or row.password_hash is None:
        return None
    assert row.id is not None
    return account_record(row, credits.balance_micro(session, row.id)), row.password_hash


def set_password(session: Session, account_id: int, password_hash: str) -> None:
    _row(session, account_id, lock=True).password_hash = password_hash
    revoke_sessions(session, account_id)


def mark_verified(session: Session, account_id: int, grant_micro: int) -> Account:
    """The address is verified; the first time, the account receives ``grant_micro`` (the sign-up grant)."""
    row = _row(session, account_id, lock=True)
    if row.email_verified_at is None:
        row.email_verified_at = utcnow()
        session.flush()
        if grant_micro:
            credits.grant(session, account_id, grant_micro, memo="sign-up grant")
    return get_account(session, account_id)


def set_suspended(session: Session, account_id: int, reason: str | None) -> Account:
    """Suspend (``reason`` given) or reinstate (None) an account; suspension also ends its sessions."""
    row = _row(session, account_id, lock=True)
    if reason is None:
        row.suspended_at, row.suspended_reason = None, None
    else:
        row.suspended_at, row.suspended_reason = utcnow(), reason
        revoke_sessions(session, account_id)
    session.flush()
    return get_account(session, account_id)


def set_admin(session: Session, account_id: int, is_admin: bool) -> Account:
    row = _row(session, account_id, lock=True)
    row.is_admin = is_admin
    session.flush()
    return get_account(session, account_id)


def find_account(session: Session, email: str) -> Account | None:
    row = session.scalars(select(AccountRow).where(col(AccountRow.email) == normalized_email(email))).first()
    if row is None:
        return None
    assert row.id is not None
    return account_record(row, credits.balance_micro(session, row.id))


def list_accounts(session: Session, query: str | None, limit: int, offset: int) -> tuple[list[Account], int]:
    """Accounts whose email contains ``query`` (case-insensitive), oldest first, and how many match."""
    where: list[Any] = []
    if query:
        pattern = "%" + query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append(col(AccountRow.email).like(pattern, escape="\\"))
    total = session.scalar(select(func.count()).select_from(AccountRow).where(*where)) or 0
    rows = session.scalars(select(AccountRow).where(*where).order_by(col(AccountRow.id)).limit(limit).offset(offset))
    found = []
    for row in rows:
        assert row.id is not None
        found.append(account_record(row, credits.balance_micro(session, row.id)))
    return found, int(total)


def account_stats(session: Session) -> dict[str, int]:
    count = select(func.count()).select_from(AccountRow)
    return {
        "accounts": int(session.scalar(count) or 0),
        "verified": int(session.scalar(count.where(col(AccountRow.email_verified_at).is_not(None))) or 0),
        "suspended": int(session.scalar(count.where(col(AccountRow.suspended_at).is_not(None))) or 0),
        "admins": int(session.scalar(count.where(col(AccountRow.is_admin).is_(True))) or 0),
    }


def _refuse_suspended(row: AccountRow) -> None:
    if row.suspended_at is not None:
        raise AccountSuspended("this account is suspended; contact the network's operator")


# --- api keys ---------------------------------------------------------------------------------------


def create_api_key(
    session: Session, account_id: int, name: str, scopes: Iterable[str], expires_at: datetime | None,
    within: Iterable[str] | None = None,
) -> tuple[ApiKey, str]:
    """A new key. ``within``: the scopes of the key that asks (a key never makes a key stronger than itself);
    None for a signed-in person or the operator."""
    row = _row(session, account_id)
    _refuse_suspended(row)
    if row.email_verified_at is None:
        raise EmailUnverified("verify your email address first: follow the link sent at sign-up")
    scope_set = set(scopes)
    if not scope_set or not scope_set <= SCOPES:
        raise ValidationFailed("invalid api key", errors={"scopes": f"choose from {sorted(SCOPES)}"})
    if within is not None and not scope_set <= set(within):
        raise Forbidden(f"a key can only create keys with scopes it holds ({' '.join(sorted(within))})")
    if expires_at is not None and expires_at <= utcnow():
        raise ValidationFailed("invalid api key", errors={"expires_at": "must be in the future"})
    full_key = new_key()
    key = ApiKeyRow(
        account_id=account_id,
        name=name,
        prefix=full_key[:PREFIX_LEN],
        key_hash=hash_key(full_key),
        scopes=" ".join(sorted(scope_set)),
        created_at=utcnow(),
        expires_at=expires_at,
    )
    session.add(key)
    session.flush()
    return key_record(key), full_key


def find_key(session: Session, full_key: str, now: datetime) -> tuple[Account, ApiKey]:
    """The account and key behind ``full_key``; Unauthorized when unknown, revoked or expired, Forbidden when
    its account is suspended."""
    refused = Unauthorized(
        "invalid API key; create one with POST /api/v1/api-keys or `archipelag keys create`"
    )
    if not full_key.startswith(KEY_PREFIX) or len(full_key) > 100:
        raise refused
    found = session.execute(
        select(ApiKeyRow, AccountRow)
        .join(AccountRow, col(AccountRow.id) == col(ApiKeyRow.account_id))
        .where(col(ApiKeyRow.key_hash) == hash_key(full_key))
    ).first()
    if found is None:
        raise refused
    key, account = found
    if key.revoked_at is not None:
        raise Unauthorized("this API key was revoked; create a new one")
    if key.expires_at is not None and key.expires_at <= now:
        raise Unauthorized("this API key has expired; create a new one")
    _refuse_suspended(account)
    assert account.id is not None
    return account_record(account, credits.balance_micro(session, account.id)), key_record(key)


def touch_key(session: Session, key_id: int, at: datetime) -> None:
    session.execute(update(ApiKeyRow).where(col(ApiKeyRow.id) == key_id).values(last_used_at=at))


def list_api_keys(session: Session, account_id: int) -> list[ApiKey]:
    rows = session.scalars(
        select(ApiKeyRow)
        .where(col(ApiKeyRow.account_id) == account_id, col(ApiKeyRow.revoked_at).is_(None))
        .order_by(col(ApiKeyRow.id))
    )
    return [key_record(row) for row in rows]


def revoke_api_key(session: Session, account_id: int, key_id: int) -> ApiKey:
    row = session.get(ApiKeyRow, key_id)
    if row is None or row.account_id != account_id or row.revoked_at is not None:
        raise NotFound(f"api key {key_id} does not exist")
    row.revoked_at = utcnow()
    session.flush()
    return key_record(row)


# --- sessions ---------------------------------------------------------------------------------------


def create_session(session: Session, account_id: int, ttl: timedelta) -> tuple[SessionRecord, str]:
    """A new browser session and its cookie token (shown once)."""
    _refuse_suspended(_row(session, account_id))
    token = secrets.token_urlsafe(32)
    now = utcnow()
    row = SessionRow(account_id=account_id, token_hash=hash_key(token), csrf_token=secrets.token_urlsafe(24),
                     created_at=now, expires_at=now + ttl)
    session.add(row)
    session.flush()
    return session_record(row), token


def find_session(session: Session, token: str, now: datetime) -> tuple[Account, SessionRecord]:
    refused = Unauthorized("not signed in, or the session has ended: sign in again")
    if len(token) > 100:
        raise refused
    found = session.execute(
        select(SessionRow, AccountRow)
        .join(AccountRow, col(AccountRow.id) == col(SessionRow.account_id))
        .where(col(SessionRow.token_hash) == hash_key(token))
    ).first()
    if found is None:
        raise refused
    row, account = found
    _refuse_suspended(account)  # first: a suspended person is told why, though suspension also ended the session
    if row.revoked_at is not None or row.expires_at <= now:
        raise refused
    assert account.id is not None
    return account_record(account, credits.balance_micro(session, account.id)), session_record(row)


def end_session(session: Session, session_id: int) -> None:
    session.execute(update(SessionRow).where(col(SessionRow.id) == session_id, col(SessionRow.revoked_at).is_(None))
                    .values(revoked_at=utcnow()))


def revoke_sessions(session: Session, account_id: int) -> None:
    session.execute(update(SessionRow)
                    .where(col(SessionRow.account_id) == account_id, col(SessionRow.revoked_at).is_(None))
                    .values(revoked_at=utcnow()))


# --- single-use tokens ------------------------------------------------------------------------------


def typeable_token(nbytes: int) -> str:
    """A URL-safe token a command line takes as its argument: never one starting with "-", which reads as an option
    (`archipelag verify -x…` was a usage error for one token in 64)."""
    while (token := secrets.token_urlsafe(nbytes)).startswith("-"):
        pass
    return token


def issue_token(session: Session, account_id: int, purpose: str, ttl: timedelta,
                email: str | None = None) -> tuple[str, datetime]:
    """A new single-use token for ``purpose`` (shown once) and when it expires."""
    assert purpose in TOKEN_PURPOSES
    token = typeable_token(24)
    expires_at = utcnow() + ttl
    session.add(AccountTokenRow(account_id=account_id, purpose=purpose, token_hash=hash_key(token),
                                email=normalized_email(email) if email else None, created_at=utcnow(),
                                expires_at=expires_at))
    session.flush()
    return token, expires_at


def create_invite(session: Session, admin_id: int, email: str | None, ttl: timedelta) -> Invite:
    code, expires_at = issue_token(session, admin_id, "invite", ttl, email)
    return Invite(code, normalized_email(email) if email else None, expires_at)


def use_token(session: Session, token: str, purpose: str) -> AccountTokenRow:
    """Spend a single-use token: one guarded update, so two requests with the same token cannot both win.
    ValidationFailed when it is unknown, used, expired or for another purpose."""
    now = utcnow()
    spent = session.execute(
        update(AccountTokenRow)
        .where(col(AccountTokenRow.token_hash) == hash_key(token[:100]), col(AccountTokenRow.purpose) == purpose,
               col(AccountTokenRow.used_at).is_(None), col(AccountTokenRow.expires_at) > now)
        .values(used_at=now)
        .returning(col(AccountTokenRow.id))
    ).first()
    if spent is None:
        raise ValidationFailed(f"this {purpose} link or code is invalid, used or expired",
                               errors={"token": "invalid, used or expired"})
    row = session.get(AccountTokenRow, spent[0])
    assert row is not None
    return row


def pending_tokens(session: Session, account_id: int, purpose: str) -> int:
    """How many unexpired, unused tokens of ``purpose`` the account has (bounds how many mails it can cause)."""
    return int(session.scalar(
        select(func.count()).select_from(AccountTokenRow).where(
            col(AccountTokenRow.account_id) == account_id, col(AccountTokenRow.purpose) == purpose,
            col(AccountTokenRow.used_at).is_(None), col(AccountTokenRow.expires_at) > utcnow())) or 0)
