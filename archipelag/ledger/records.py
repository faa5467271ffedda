"""Records: the frozen dataclasses the ledger hands to its callers (never ORM rows)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from archipelag.catalog import MICRO
from archipelag.ids import AccountId, HostId, JobId, WorkloadSlug
from archipelag.lifecycle import HostStatus, JobStatus
from archipelag.receipts import Receipt


@dataclass(frozen=True)
class Account:
    id: AccountId
    email: str
    credits_micro: int  # current balance
    home_region: str | None
    created_at: datetime
    is_admin: bool = False
    email_verified_at: datetime | None = None
    suspended_at: datetime | None = None
    suspended_reason: str | None = None

    @property
    def credits(self) -> float:
        return self.credits_micro / MICRO

    @property
    def verified(self) -> bool:
        return self.email_verified_at is not None

    @property
    def suspended(self) -> bool:
        return self.suspended_at is not None


@dataclass(frozen=True)
class Session:
    """A signed-in browser session (its token is never stored; only its hash)."""

    id: int
    account_id: AccountId
    csrf_token: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Invite:
    code: str  # shown once
    email: str | None
    expires_at: datetime


@dataclass(frozen=True)
class ApiKey:
    id: int
    account_id: AccountId
    name: str
    prefix: str  # the first characters of the key, to recognise it in a list
    scopes: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


@dataclass(frozen=True)
class Workload:
    id: int
    slug: WorkloadSlug
    name: str
    description: str
    runtime: str  # "wasm" or "container"
    trust_level: int
    price_micro: int
    required_ram_mb: int
    required_vram_mb: int
    is_enabled: bool

    @property
    def runtime_type(self) -> str:
        return self.runtime

    @property
    def price(self) -> float:
        return self.price_micro / MICRO


@dataclass(frozen=True)
class Job:
    id: JobId
    account_id: AccountId
    workload_id: int
    workload_slug: WorkloadSlug
    status: JobStatus
    input: dict[str, Any]
    output: str | None
    error: str | None
    usage: dict[str, Any] | None
    host_id: HostId | None
    attempt: int  # 1 on the first placement, +1 each time a lost host sends it back to queued
    region: str | None
    priority: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    reserved_micro: int
    credits_used_micro: int
    parent_id: JobId | None = None  # a batch's child names its parent
    batch_index: int | None = None  # and its place among the batch's inputs
    batch_size: int | None = None  # a batch's parent: how many children it has
    bid_price_micro: int | None = None  # the most it pays per job (None: a job from before the exchange)
    clearing_price_micro: int | None = None  # the ask of the host that ran it, once it succeeded
    receipt: Receipt | None = None  # its host's signed receipt, once it succeeded in a network of enrolled hosts

    @property
    def is_batch(self) -> bool:
        return self.batch_size is not None

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None or self.completed_at is None:
            return None
        return round((self.completed_at - self.started_at).total_seconds() * 1000)


@dataclass(frozen=True)
class BatchChild:
    """One child of a batch as its progress shows it."""

    id: JobId
    batch_index: int
    status: JobStatus
    error: str | None
    host_id: HostId | None
    output: str | None


@dataclass(frozen=True)
class JobBatch:
    """A batch: its parent job, its settings and its children in index order."""

    parent: Job
    merge_strategy: str
    fail_mode: str
    max_parallelism: int | None
    bid_price_micro: int | None
    children: tuple[BatchChild, ...]


@dataclass(frozen=True)
class JobEvent:
    job_id: JobId
    from_status: JobStatus | None  # None for the first event (the job was created)
    to_status: JobStatus
    at: datetime
    reason: str | None


@dataclass(frozen=True)
class Host:
    id: HostId
    name: str
    region: str
    capabilities: dict[str, Any]
    status: HostStatus
    created_at: datetime
    last_heartbeat_at: datetime | None
    karma_score: float
    active_jobs: int  # jobs assigned/started/streaming on it now
    owner_account_id: int | None = None  # the account that approved its enrolment
    revoked_at: datetime | None = None
    suspended_at: datetime | None = None  # by an operator (karma's is ``Ledger.karma_state``): no new jobs
    suspended_reason: str | None = None


@dataclass(frozen=True)
class HostIdentity:
    """What placement checks a host's reports against: its enrolled key, and whether it may take jobs."""

    host_id: HostId
    public_key: str  # Ed25519, hex
    owner_account_id: int
    revoked: bool
    suspended_reason: str | None = None  # an operator's suspension: placement applies it when the host registers


@dataclass(frozen=True)
class Pairing:
    """A host's enrolment request as its poll sees it: waiting, or approved with the host id it got."""

    public_key: str
    name: str
    region: str
    expires_at: datetime
    host_id: HostId | None  # set once approved


@dataclass(frozen=True)
class KarmaEvent:
    id: int
    host_id: HostId
    kind: str
    points: float
    job_id: JobId | None
    at: datetime
    reason: str | None


# --- earnings and usage (archipelag/ledger/earnings.py reads them from the books) ---------------------------


@dataclass(frozen=True)
class DayAmount:
    day: date
    key: str  # the host id (earnings) or workload slug (usage)
    amount_micro: int
    jobs: int


@dataclass(frozen=True)
class Earnings:
    """An owner's earnings in a period, by day and host, and the book's standing now."""

    start: date
    end: date
    days: list[DayAmount]  # by day, then host
    by_host_micro: dict[str, int]  # in the period
    period_micro: int  # in the period
    earned_micro: int  # ever (all hosts, or the one host asked for)
    paid_out_micro: int  # ever
    unpaid_micro: int  # what a payout may take now


@dataclass(frozen=True)
class Usage:
    """A user's spend in a period, by day and workload."""

    start: date
    end: date
    days: list[DayAmount]  # by day, then workload
    by_workload_micro: dict[str, int]
    total_micro: int


@dataclass(frozen=True)
class Payout:
    id: int
    amount_micro: int
    at: datetime


def period(start: date | None, end: date | None, today: date, default_days: int = 30) -> tuple[date, date]:
    """The days asked for: ``end`` defaults to today, ``start`` to ``default_days`` before it."""
    end = end or today
    return start or end - timedelta(days=default_days - 1), end
