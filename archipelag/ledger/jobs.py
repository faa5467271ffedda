"""Jobs: job rows, their guarded state transitions, and the transition history (DESIGN §3).

Every move goes through ``transition``: the row is read under ``FOR UPDATE`` (SQLite: the write transaction
already holds the database lock), checked against ``lifecycle.JOB_TRANSITIONS``, then moved with the guarded
``UPDATE jobs SET status=:to … WHERE id=:id AND status IN (sources_of(to))``; rowcount 0 raises
``InvalidTransition``. A ``JobEvent`` (from, to, at, reason) is written in the same transaction.

Functions here take an open session; ``Ledger`` owns the transactions (and settles credits in ``finish``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from archipelag.errors import InvalidTransition, NotFound, ValidationFailed
from archipelag.ids import AccountId, HostId, JobId, WorkloadSlug, new_job_id
from archipelag.ledger import credits, workloads
from archipelag.ledger.records import Job, JobEvent
from archipelag.ledger.tables import AccountRow, JobEventRow, JobRow, WorkloadRow, utcnow
from archipelag.lifecycle import TERMINAL_JOB_STATES, JobStatus, can_move, sources_of
from archipelag.receipts import Receipt

# Columns a transition may set besides status.
SETTABLE = frozenset(
    {
        "host_id",
        "attempt",
        "started_at",
        "completed_at",
        "output",
        "error",
        "usage",
        "events",
        "credits_used_micro",
        "clearing_price_micro",
        "receipt",
    }
)
ACTIVE_STATES = frozenset({JobStatus.ASSIGNED, JobStatus.STARTED, JobStatus.STREAMING})


def record(row: JobRow, slug: str) -> Job:
    return Job(
        id=JobId(row.id),
        account_id=AccountId(row.account_id),
        workload_id=row.workload_id,
        workload_slug=WorkloadSlug(slug),
        status=JobStatus(row.status),
        input=dict(row.input or {}),
        output=row.output,
        error=row.error,
        usage=dict(row.usage) if row.usage is not None else None,
        host_id=HostId(row.host_id) if row.host_id else None,
        attempt=row.attempt,
        region=row.region,
        priority=row.priority,
        created_at=row.created_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        reserved_micro=row.reserved_micro,
        credits_used_micro=row.credits_used_micro,
        parent_id=JobId(row.parent_id) if row.parent_id else None,
        batch_index=row.batch_index,
        batch_size=row.batch_size,
        bid_price_micro=row.bid_price_micro,
        clearing_price_micro=row.clearing_price_micro,
        receipt=_receipt(row.receipt),
    )


def stored_receipt(receipt: Receipt) -> dict[str, Any]:
    return dataclasses.asdict(receipt)


def _receipt(stored: dict[str, Any] | None) -> Receipt | None:
    return Receipt(**stored) if stored is not None else None


def _event(
    session: Session,
    job_id: str,
    source: JobStatus | None,
    target: JobStatus,
    reason: str | None,
    at: datetime,
) -> None:
    session.add(JobEventRow(job_id=job_id, from_status=source, to_status=target, at=at, reason=reason))


def create(
    session: Session,
    account_id: int,
    workload_slug: str,
    job_input: Mapping[str, Any],
    region: str | None,
    priority: int,
    reserve_micro: int,
    job_id: JobId | None = None,
    *,
    parent_id: str | None = None,
    batch_index: int | None = None,
    batch_size: int | None = None,
    bid_price_micro: int | None = None,
) -> Job:
    if reserve_micro < 0:
        raise ValidationFailed("invalid job", errors={"reserve": "cannot be negative"})
    if session.get(AccountRow, account_id) is None:
        raise NotFound(f"account {account_id} does not exist")
    workload = workloads.get_row(session, workload_slug)
    if not workload.is_enabled:
        raise NotFound(
            f"workload {workload_slug!r} is disabled; GET /api/v1/workloads lists the enabled ones"
        )
    assert workload.id is not None
    job_id = job_id or new_job_id()
    now = utcnow()
    credits.reserve(
        session, account_id, job_id, reserve_micro
    )  # first: it raises PaymentRequired before any write
    row = JobRow(
        id=job_id,
        account_id=account_id,
        workload_id=workload.id,
        status=JobStatus.SUBMITTED,
        input=dict(job_input),
        region=region,
        priority=priority,
        created_at=now,
        reserved_micro=reserve_micro,
        parent_id=parent_id,
        batch_index=batch_index,
        batch_size=batch_size,
        bid_price_micro=bid_price_micro,
    )
    session.add(row)
    session.flush()
    _event(session, job_id, None, JobStatus.SUBMITTED, "submitted", now)
    session.flush()
    return record(row, workload.slug)


def _locked_status(session: Session, job_id: str) -> JobStatus:
    status = session.execute(
        select(col(JobRow.status)).where(col(JobRow.id) == job_id).with_for_update()
    ).scalar_one_or_none()
    if status is None:
        raise NotFound(f"job {job_id} does not exist")
    return JobStatus(status)


def transition(
    session: Session, job_id: str, target: JobStatus, reason: str | None, values: Mapping[str, Any]
) -> JobStatus:
    """Move ``job_id`` to ``target`` and set ``values``; returns the state it left."""
    unknown = set(values) - SETTABLE
    if unknown:
        raise TypeError(f"transition cannot set {sorted(unknown)}; allowed: {sorted(SETTABLE)}")
    source = _locked_status(session, job_id)
    if not can_move(source, target):
        raise InvalidTransition(
            f"job {job_id} is {source} and cannot become {target}",
            job_id=job_id,
            status=str(source),
            to=str(target),
        )
    now = utcnow()
    moved = dict(values)
    if target is JobStatus.STARTED:
        moved.setdefault("started_at", now)
    if target in TERMINAL_JOB_STATES:
        moved.setdefault("completed_at", now)
    result = session.execute(
        update(JobRow)
        .where(col(JobRow.id) == job_id, col(JobRow.status).in_([str(s) for s in sources_of(target)]))
        .values(status=str(target), **moved)
    )
    assert isinstance(result, CursorResult)
    if result.rowcount != 1:  # another writer moved it first
        raise InvalidTransition(
            f"job {job_id} changed state before it could become {target}", job_id=job_id, to=str(target)
        )
    _event(session, job_id, source, target, reason, now)
    session.flush()
    return source


def requeue(session: Session, job_id: str, reason: str) -> None:
    """A lost host sends an assigned/started/streaming job back to queued, attempt + 1."""
    transition(
        session,
        job_id,
        JobStatus.QUEUED,
        reason,
        {"attempt": col(JobRow.attempt) + 1, "host_id": None, "started_at": None},
    )


def get(session: Session, job_id: str, account_id: int | None = None) -> Job:
    found = session.execute(
        select(JobRow, col(WorkloadRow.slug))
        .join(WorkloadRow, col(WorkloadRow.id) == col(JobRow.workload_id))
        .where(col(JobRow.id) == job_id)
        .execution_options(populate_existing=True)
    ).first()
    if found is None or (account_id is not None and found[0].account_id != account_id):
        raise NotFound(f"job {job_id} does not exist")
    return record(found[0], found[1])


def reservation(session: Session, job_id: str, *, lock: bool = False) -> tuple[int, int, str | None]:
    """(account_id, reserved_micro, host_id) of a job; ``lock`` holds the row until the transaction ends."""
    stmt = select(col(JobRow.account_id), col(JobRow.reserved_micro), col(JobRow.host_id)).where(
        col(JobRow.id) == job_id
    )
    found = session.execute(stmt.with_for_update() if lock else stmt).first()
    if found is None:
        raise NotFound(f"job {job_id} does not exist")
    return int(found[0]), int(found[1]), found[2]


def save_events(session: Session, job_id: str, events: list[dict[str, Any]]) -> bool:
    result = session.execute(
        update(JobRow)
        .where(col(JobRow.id) == job_id,
               col(JobRow.status).not_in([str(s) for s in TERMINAL_JOB_STATES]))
        .values(events=events)
    )
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def unfinished(session: Session) -> list[Job]:
    rows = session.execute(
        select(JobRow, col(WorkloadRow.slug))
        .join(WorkloadRow, col(WorkloadRow.id) == col(JobRow.workload_id))
        .where(col(JobRow.status).not_in([str(s) for s in TERMINAL_JOB_STATES]))
        .order_by(col(JobRow.created_at), col(JobRow.id))
    ).all()
    return [record(row, slug) for row, slug in rows]


def list_for(session: Session, account_id: int, limit: int, offset: int) -> tuple[list[Job], int]:
    total = session.execute(
        select(func.count()).select_from(JobRow).where(col(JobRow.account_id) == account_id)
    ).scalar_one()
    rows = session.execute(
        select(JobRow, col(WorkloadRow.slug))
        .join(WorkloadRow, col(WorkloadRow.id) == col(JobRow.workload_id))
        .where(col(JobRow.account_id) == account_id)
        .order_by(col(JobRow.created_at).desc(), col(JobRow.id).desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return [record(row, slug) for row, slug in rows], int(total)


def events(session: Session, job_id: str) -> list[JobEvent]:
    rows = session.scalars(
        select(JobEventRow).where(col(JobEventRow.job_id) == job_id).order_by(col(JobEventRow.id))
    )
    return [
        JobEvent(
            job_id=JobId(row.job_id),
            from_status=JobStatus(row.from_status) if row.from_status else None,
            to_status=JobStatus(row.to_status),
            at=row.at,
            reason=row.reason,
        )
        for row in rows
    ]


def stored_output_events(session: Session, job_id: str) -> list[dict[str, Any]]:
    found = session.execute(select(col(JobRow.events)).where(col(JobRow.id) == job_id)).first()
    if found is None:
        raise NotFound(f"job {job_id} does not exist")
    return list(found[0] or [])


def active_counts(session: Session) -> dict[str, int]:
    """Jobs assigned/started/streaming per host."""
    rows = session.execute(
        select(col(JobRow.host_id), func.count())
        .where(col(JobRow.status).in_([str(s) for s in ACTIVE_STATES]), col(JobRow.host_id).is_not(None))
        .group_by(col(JobRow.host_id))
    ).all()
    return {str(host_id): int(count) for host_id, count in rows}
