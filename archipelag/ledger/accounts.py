"""Accounts: user accounts and their API keys.

A key is ``ak_`` + 43 random url-safe characters, shown once at creation. At rest only its SHA-256 (hex) and
its first ``PREFIX_LEN`` characters (to recognise it in a list) are kept. ``authenticate`` looks a key up by
hash and refuses unknown, revoked and expired keys with ``Unauthorized``.

Functions here take an open session; ``Ledger`` owns the transactions.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col

from archipelag.errors import Conflict, NotFound, Unauthorized, ValidationFailed
from archipelag.ids import AccountId
from archipelag.ledger import credits
from archipelag.ledger.records import Account, ApiKey
from archipelag.ledger.tables import AccountRow, ApiKeyRow, utcnow

KEY_PREFIX = "ak_"
PREFIX_LEN = 10
SCOPES = frozenset({"read", "write"})


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(full_key: str) -> str:
    return hashlib.sha256(full_key.encode()).hexdigest()


def account_record(row: AccountRow, credits_micro: int) -> Account:
    assert row.id is not None
    return Account(AccountId(row.id), row.email, credits_micro, row.home_region, row.created_at)


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


def create_account(session: Session, email: str, credits_micro: int, home_region: str | None) -> Account:
    if "@" not in email:
        raise ValidationFailed("invalid account", errors={"email": "must be an email address"})
    row = AccountRow(email=email, home_region=home_region, created_at=utcnow())
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"an account with email {email!r} already exists") from None
    assert row.id is not None
    credits.user_book(session, row.id)
    if credits_micro:
        credits.grant(session, row.id, credits_micro, memo="initial credits")
    return account_record(row, credits_micro)


def get_account(session: Session, account_id: int) -> Account:
    row = session.get(AccountRow, account_id)
    if row is None:
        raise NotFound(f"account {account_id} does not exist")
    return account_record(row, credits.balance_micro(session, account_id))


def create_api_key(
    session: Session, account_id: int, name: str, scopes: Iterable[str], expires_at: datetime | None
) -> tuple[ApiKey, str]:
    get_account(session, account_id)
    scope_set = set(scopes)
    if not scope_set or not scope_set <= SCOPES:
        raise ValidationFailed("invalid api key", errors={"scopes": f"choose from {sorted(SCOPES)}"})
    full_key = new_key()
    row = ApiKeyRow(
        account_id=account_id,
        name=name,
        prefix=full_key[:PREFIX_LEN],
        key_hash=hash_key(full_key),
        scopes=" ".join(sorted(scope_set)),
        created_at=utcnow(),
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return key_record(row), full_key


def find_key(session: Session, full_key: str, now: datetime) -> tuple[Account, ApiKey]:
    """The account and key behind ``full_key``; Unauthorized when unknown, revoked or expired."""
    refused = Unauthorized(
        "invalid API key; create one with POST /api/v1/api-keys or `archipelag keys create`"
    )
    if not full_key.startswith(KEY_PREFIX):
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
