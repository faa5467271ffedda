"""Tables: the ledger's SQLModel rows. Only ``archipelag.ledger`` imports this module.

Callers outside the ledger never see these rows; the ledger hands out frozen dataclasses (``records.py``).
Times are stored as UTC and always read back timezone-aware (``UTCDateTime``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Table, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC; SQLite's naive strings come back as aware UTC datetimes."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the ledger stores timezone-aware datetimes only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def table(row: type[SQLModel]) -> Table:
    """The Core table behind a row class. The per-job path writes through it: a Core statement runs without the
    ORM's unit of work, which cost more CPU than the database did."""
    found: Table = row.__table__  # type: ignore[attr-defined]
    return found


def _ts(*, nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


def _json() -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=True))


def _micro(default: int = 0) -> Any:
    return Field(default=default, sa_column=Column(BigInteger, nullable=False, default=default))


class SchemaVersionRow(SQLModel, table=True):
    __tablename__ = "schema_version"
    version: int = Field(primary_key=True)
    applied_at: datetime = _ts(nullable=False)


class AccountRow(SQLModel, table=True):
    __tablename__ = "accounts"
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True, max_length=320)
    home_region: str | None = Field(default=None, max_length=64)
    created_at: datetime = _ts(nullable=False)
    # Added in schema version 2 (people sign in; admins run the network):
    password_hash: str | None = Field(default=None, max_length=255)  # argon2id; None: no password sign-in
    email_verified_at: datetime | None = _ts()
    is_admin: bool = Field(default=False)
    suspended_at: datetime | None = _ts()  # set: every key and session of the account is refused
    suspended_reason: str | None = Field(default=None, max_length=500)


class SessionRow(SQLModel, table=True):
    """A browser session: the cookie's token is stored hashed, as keys are; ``csrf_token`` is what the page
    sends back in ``X-CSRF-Token`` on every state-changing request."""

    __tablename__ = "sessions"
    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    token_hash: str = Field(unique=True, max_length=64)
    csrf_token: str = Field(max_length=64)
    created_at: datetime = _ts(nullable=False)
    expires_at: datetime = _ts(nullable=False)
    revoked_at: datetime | None = _ts()


class AccountTokenRow(SQLModel, table=True):
    """A single-use token sent by link or handed out: verify an email address, reset a password, or invite
    someone to sign up (``account_id`` is then the inviting admin). Stored hashed."""

    __tablename__ = "account_tokens"
    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    purpose: str = Field(max_length=16)  # verify | reset | invite
    token_hash: str = Field(unique=True, max_length=64)
    email: str | None = Field(default=None, max_length=320)  # an invite may be for one address
    created_at: datetime = _ts(nullable=False)
    expires_at: datetime = _ts(nullable=False)
    used_at: datetime | None = _ts()


class ApiKeyRow(SQLModel, table=True):
    __tablename__ = "api_keys"
    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    name: str = Field(max_length=200)
    prefix: str = Field(max_length=16)
    key_hash: str = Field(
        unique=True, max_length=64
    )  # SHA-256 hex of the full key; the key itself is never stored
    scopes: str = Field(max_length=200)  # space-separated
    created_at: datetime = _ts(nullable=False)
    last_used_at: datetime | None = _ts()
    expires_at: datetime | None = _ts()
    revoked_at: datetime | None = _ts()


class WorkloadRow(SQLModel, table=True):
    __tablename__ = "workloads"
    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(unique=True, max_length=100)
    name: str = Field(max_length=200)
    description: str = ""
    runtime: str = Field(max_length=32)
    trust_level: int = 0
    price_micro: int = _micro()
    required_ram_mb: int = 0
    required_vram_mb: int = 0
    is_enabled: bool = True
    updated_at: datetime = _ts(nullable=False)


class HostRow(SQLModel, table=True):
    __tablename__ = "hosts"
    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    region: str = Field(max_length=64)
    capabilities: dict[str, Any] | None = _json()
    status: str = Field(max_length=16, index=True)
    created_at: datetime = _ts(nullable=False)
    last_heartbeat_at: datetime | None = _ts()
    # Added in schema version 3 (hosts enrol with a key their owner approved; DESIGN §10):
    owner_account_id: int | None = Field(default=None, index=True)  # the approving account; earnings go there
    public_key: str | None = Field(default=None, max_length=64)  # Ed25519, hex; the id is bound to it for good
    enrolled_at: datetime | None = _ts()  # None: never enrolled, placement refuses it
    revoked_at: datetime | None = _ts()  # set: refused by placement from then on
    revoked_reason: str | None = Field(default=None, max_length=500)
    # Added in schema version 6 (an operator's suspension outlives placement's memory): set, placement refuses it
    # new jobs, at registration too, until an admin reinstates it. Karma's suspensions are its events' (karma_rules).
    suspended_at: datetime | None = _ts()
    suspended_reason: str | None = Field(default=None, max_length=500)
    # Added in schema version 8: the sum of the host's karma events' points and its last event's time, kept with
    # each event (``hosts.add_karma``), so a settlement or a fleet read never sums a host's whole history.
    karma_points: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    karma_at: datetime | None = _ts()  # None: no event yet


class PairingRow(SQLModel, table=True):
    """A host's request to enrol, waiting for its owner: the code is stored hashed, valid until ``expires_at``,
    used once. ``host_id`` is set when an account approves it."""

    __tablename__ = "host_pairings"
    id: int | None = Field(default=None, primary_key=True)
    code_hash: str = Field(unique=True, max_length=64)
    public_key: str = Field(max_length=64, index=True)
    name: str = Field(max_length=200)
    region: str = Field(max_length=64)
    hardware: dict[str, Any] | None = _json()
    created_at: datetime = _ts(nullable=False)
    expires_at: datetime = _ts(nullable=False)
    approved_at: datetime | None = _ts()
    approved_by: int | None = Field(default=None)  # the approving account
    host_id: str | None = Field(default=None, max_length=64)


class JobRow(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_account_created", "account_id", "created_at"),
                      Index("ix_jobs_workload_completed", "workload_id", "completed_at"))
    id: str = Field(primary_key=True, max_length=36)
    account_id: int = Field(foreign_key="accounts.id")
    workload_id: int = Field(foreign_key="workloads.id")
    status: str = Field(max_length=16, index=True)
    input: dict[str, Any] | None = _json()
    output: str | None = None
    error: str | None = None
    usage: dict[str, Any] | None = _json()
    events: list[Any] | None = _json()
    host_id: str | None = Field(
        default=None, max_length=64, index=True
    )  # no FK: a job may name a host not yet recorded
    attempt: int = 1
    region: str | None = Field(default=None, max_length=64)
    priority: int = 0
    created_at: datetime = _ts(nullable=False)
    started_at: datetime | None = _ts()
    completed_at: datetime | None = _ts()
    reserved_micro: int = _micro()
    credits_used_micro: int = _micro()
    # A batch: its parent has ``batch_size`` children, each naming it in ``parent_id`` at its ``batch_index``.
    parent_id: str | None = Field(default=None, max_length=36, index=True)
    batch_index: int | None = None
    batch_size: int | None = None
    # Added in schema version 5 (the exchange): the most the job pays per job, and the ask of the host that ran it.
    bid_price_micro: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    clearing_price_micro: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    # Added in schema version 7: the host's signed receipt of a succeeded job (receipts.Receipt, as JSON).
    receipt: dict[str, Any] | None = _json()


class BatchRow(SQLModel, table=True):
    """A batch's settings, one row per parent job (its children are jobs rows naming the parent)."""

    __tablename__ = "batches"
    job_id: str = Field(primary_key=True, foreign_key="jobs.id", max_length=36)
    merge_strategy: str = Field(max_length=16)
    fail_mode: str = Field(max_length=16)
    max_parallelism: int | None = None
    bid_price_micro: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class AskingPriceRow(SQLModel, table=True):
    """What a host asks per job of the workloads ``pattern`` names (a slug, or an fnmatch family like ``llm-*``)."""

    __tablename__ = "asking_prices"
    __table_args__ = (UniqueConstraint("host_id", "pattern", name="uq_asking_prices_host_pattern"),)
    id: int | None = Field(default=None, primary_key=True)
    host_id: str = Field(max_length=64, index=True)  # no FK: placement may hear a host before the ledger records it
    pattern: str = Field(max_length=100)
    price_micro: int = _micro()
    updated_at: datetime = _ts(nullable=False)


class BidPreferenceRow(SQLModel, table=True):
    """The most an account pays per job of the workloads ``pattern`` names when a request says no bid."""

    __tablename__ = "bid_preferences"
    __table_args__ = (UniqueConstraint("account_id", "pattern", name="uq_bid_preferences_account_pattern"),)
    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    pattern: str = Field(max_length=100)
    price_micro: int = _micro()
    updated_at: datetime = _ts(nullable=False)


class JobEventRow(SQLModel, table=True):
    __tablename__ = "job_events"
    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", index=True, max_length=36)
    from_status: str | None = Field(default=None, max_length=16)
    to_status: str = Field(max_length=16)
    at: datetime = _ts(nullable=False)
    reason: str | None = None


class CreditAccountRow(SQLModel, table=True):
    """A book in the double-entry ledger: a user's, a host's, or one of the platform's (escrow, fees, mint).

    ``balance_micro`` is a running total kept in the same transaction as the postings; the postings are the
    truth and ``Ledger.total_is_zero`` checks that the two agree.
    """

    __tablename__ = "credit_accounts"
    __table_args__ = (UniqueConstraint("kind", "owner", name="uq_credit_accounts_kind_owner"),)
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)  # user | host | escrow | platform | mint
    owner: str = Field(max_length=64)  # account id, host id, or "" for the platform's books
    balance_micro: int = _micro()


class TransferRow(SQLModel, table=True):
    __tablename__ = "transfers"
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)  # grant | reserve | settle | refund
    job_id: str | None = Field(default=None, max_length=36, index=True)
    at: datetime = _ts(nullable=False)
    memo: str | None = None


class PostingRow(SQLModel, table=True):
    __tablename__ = "postings"
    id: int | None = Field(default=None, primary_key=True)
    transfer_id: int = Field(foreign_key="transfers.id", index=True)
    credit_account_id: int = Field(foreign_key="credit_accounts.id", index=True)
    amount_micro: int = _micro()  # positive: credited to the book; negative: debited


class KarmaEventRow(SQLModel, table=True):
    __tablename__ = "karma_events"
    id: int | None = Field(default=None, primary_key=True)
    host_id: str = Field(foreign_key="hosts.id", index=True, max_length=64)
    kind: str = Field(max_length=32)
    points: float
    job_id: str | None = Field(default=None, max_length=36)
    at: datetime = _ts(nullable=False)
    reason: str | None = None
