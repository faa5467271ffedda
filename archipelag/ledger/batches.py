"""Batches: a parent job and its children, created together with every child's credits reserved, read back as
one ``JobBatch``, and the children still waiting ended in one transaction.

The parent reserves nothing and costs nothing; each child reserves its own maximum price and is settled or
refunded as any job is (``Ledger.finish``), so the credit invariant needs nothing new. Functions here take an
open session; ``Ledger`` owns the transactions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session
from sqlmodel import col

from archipelag.catalog import MICRO
from archipelag.errors import NotFound, PaymentRequired, ValidationFailed
from archipelag.ids import HostId, JobId, new_job_id
from archipelag.ledger import credits, jobs
from archipelag.ledger.records import BatchChild, Job, JobBatch
from archipelag.ledger.tables import BatchRow, JobEventRow, JobRow, table, utcnow
from archipelag.lifecycle import JobStatus

_JOBS = table(JobRow)


def create(session: Session, account_id: int, workload_slug: str, inputs: Sequence[Mapping[str, Any]],
           reserves_micro: Sequence[int], region: str | None, priority: int, *, merge_strategy: str,
           fail_mode: str, max_parallelism: int | None, bid_price_micro: int | None) -> JobBatch:
    """The parent (``submitted``, nothing reserved) and one ``submitted`` child per input, each with its
    reservation. PaymentRequired naming the whole batch's price when the balance is short: nothing is written."""
    if len(inputs) != len(reserves_micro) or not inputs:
        raise ValidationFailed("a batch needs one reservation per input", errors={"inputs": "empty"})
    required = sum(reserves_micro)
    available = credits.balance_micro(session, account_id)
    if required > available:
        raise PaymentRequired(f"this batch of {len(inputs)} jobs needs {required / MICRO:g} credits and the "
                              f"account has {available / MICRO:g}; add credits or send fewer inputs",
                              required=required / MICRO, available=available / MICRO)
    parent = jobs.create(session, account_id, workload_slug, {"batch": len(inputs)}, region, priority, 0,
                         new_job_id(), batch_size=len(inputs))
    session.add(BatchRow(job_id=parent.id, merge_strategy=merge_strategy, fail_mode=fail_mode,
                         max_parallelism=max_parallelism, bid_price_micro=bid_price_micro))
    # One reservation for every child at once (a row-by-row insert of 1,000 jobs took seconds); each child
    # holds its share in ``reserved_micro`` and settles or refunds it alone, as any job does.
    credits.reserve(session, account_id, parent.id, required)
    now = utcnow()
    children = [{"id": new_job_id(), "account_id": account_id, "workload_id": parent.workload_id,
                 "status": str(JobStatus.SUBMITTED), "input": dict(job_input), "output": None, "error": None,
                 "usage": None, "events": None, "host_id": None, "attempt": 1, "region": region,
                 "priority": priority, "created_at": now, "started_at": None, "completed_at": None,
                 "reserved_micro": reserve, "credits_used_micro": 0, "parent_id": parent.id, "batch_index": index,
                 "batch_size": None, "bid_price_micro": bid_price_micro, "clearing_price_micro": None}
                for index, (job_input, reserve) in enumerate(zip(inputs, reserves_micro, strict=True))]
    session.execute(insert(JobRow), children)
    session.execute(insert(JobEventRow), [{"job_id": child["id"], "from_status": None,
                                           "to_status": str(JobStatus.SUBMITTED), "at": now,
                                           "reason": "submitted in a batch"} for child in children])
    session.flush()
    return read(session, parent.id)


def read(session: Session, parent_id: str, account_id: int | None = None) -> JobBatch:
    """The batch whose parent is ``parent_id``; NotFound when there is none, or it is another account's."""
    parent = jobs.get(session, parent_id, account_id)
    settings = session.get(BatchRow, parent_id)
    if settings is None or not parent.is_batch:
        raise NotFound(f"job {parent_id} is not a batch")
    rows = session.execute(
        select(col(JobRow.id), col(JobRow.batch_index), col(JobRow.status), col(JobRow.error),
               col(JobRow.host_id), col(JobRow.output))
        .where(col(JobRow.parent_id) == parent_id).order_by(col(JobRow.batch_index))
    ).all()
    children = tuple(BatchChild(id=JobId(r[0]), batch_index=int(r[1] or 0), status=JobStatus(r[2]), error=r[3],
                                host_id=HostId(r[4]) if r[4] else None, output=r[5]) for r in rows)
    return JobBatch(parent=parent, merge_strategy=settings.merge_strategy, fail_mode=settings.fail_mode,
                    max_parallelism=settings.max_parallelism, bid_price_micro=settings.bid_price_micro,
                    children=children)


def cancel_waiting(session: Session, parent_id: str, child_ids: Sequence[str], reason: str) -> list[JobId]:
    """End the children ``child_ids`` of the batch that no host has begun (``submitted`` or ``queued``: the
    batch's driver never handed them to the dispatcher) as cancelled and refund them; the ones it ended."""
    waiting = session.execute(
        select(col(JobRow.id), col(JobRow.account_id), col(JobRow.reserved_micro))
        .where(col(JobRow.parent_id) == parent_id, col(JobRow.id).in_(list(child_ids)),
               col(JobRow.status).in_([str(JobStatus.SUBMITTED), str(JobStatus.QUEUED)]))
        .order_by(col(JobRow.batch_index))
    ).all()
    for job_id, account_id, reserved in waiting:
        jobs.transition(session, job_id, JobStatus.CANCELLED, reason, {"error": reason})
        credits.refund(session, int(account_id), job_id, int(reserved))
    return [JobId(row[0]) for row in waiting]


def queue_children(session: Session, parent_id: str, child_ids: Sequence[str]) -> list[Job]:
    """Move those of ``child_ids`` still ``submitted`` to ``queued`` (their batch releases them); every one of
    them as it is now, in index order (one cancelled meanwhile comes back terminal: the driver skips it)."""
    rows = session.execute(
        jobs.JOB.where(_JOBS.c.parent_id == parent_id, _JOBS.c.id.in_(list(child_ids)))
        .order_by(_JOBS.c.batch_index).with_for_update()
    ).all()
    children: list[Job] = []
    for row in rows:
        child = jobs.record(row._mapping)
        if child.status is JobStatus.SUBMITTED:
            jobs.transition(session, child.id, JobStatus.QUEUED, "released by its batch", {}, source=child.status)
            child = replace(child, status=JobStatus.QUEUED)
        children.append(child)
    return children


def statuses(session: Session, job_ids: Sequence[str]) -> dict[JobId, JobStatus]:
    """The status of each of ``job_ids`` (one read for many children)."""
    rows = session.execute(select(col(JobRow.id), col(JobRow.status)).where(col(JobRow.id).in_(list(job_ids)))).all()
    return {JobId(job_id): JobStatus(status) for job_id, status in rows}
