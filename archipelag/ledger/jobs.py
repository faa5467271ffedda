"""Jobs: job rows, their guarded state transitions, and the transition history (DESIGN §3).

Every move goes through ``transition`` (or ``start``, two moves at once): it is checked against
``lifecycle.JOB_TRANSITIONS`` from the state the job is in, then made with the guarded
``UPDATE jobs SET status=:to … WHERE id=:id AND status IN (sources_of(first state entered))``; rowcount 0 raises
``InvalidTransition``. A ``JobEvent`` (from, to, at, reason) per move is written in the same transaction. The state
the job is in is read under ``FOR UPDATE`` (SQLite: the write transaction already holds the database lock), or
comes from the caller's own locked read, or, where the table allows only one, is the guard itself.

The per-job path (create, start, the terminal move) writes Core statements and builds the records it returns from
the values it wrote: the ORM's unit of work and the reads back cost more CPU than the database did.

Functions here take an open session; ``Ledger`` owns the transactions (and settles credits in ``finish``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, Update, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from archipelag.errors import InvalidTransition, NotFound, ValidationFailed
from archipelag.ids import AccountId, HostId, JobId, WorkloadSlug, new_job_id
from archipelag.ledger import credits, workloads
from archipelag.ledger.records import Job, JobEvent
from archipelag.ledger.tables import AccountRow, JobEventRow, JobRow, WorkloadRow, table, utcnow
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

_JOBS = table(JobRow)
_EVENTS = table(JobEventRow)
_WORKLOADS = table(WorkloadRow)
_ACCOUNTS = table(AccountRow)
# A job as ``record`` reads it: its row but for its stored events (a streamed job's can be long, and no Job holds
# them: ``stored_output_events`` reads them), and its workload's slug.
JOB = (
    select(*(column for column in _JOBS.c if column.name != "events"), _WORKLOADS.c.slug)
    .join(_WORKLOADS, _WORKLOADS.c.id == _JOBS.c.workload_id)
)
_ACCOUNT_EXISTS = select(_ACCOUNTS.c.id).where(_ACCOUNTS.c.id == bindparam("account_id"))
# The per-job path's statements are built once: building one per call cost more CPU than running it.
_JOB_BY_ID = JOB.where(_JOBS.c.id == bindparam("job_id"))
_LOCKED_JOB = _JOB_BY_ID.with_for_update(of=_JOBS)  # the workload's row, joined for its slug, stays free
_STATUS = select(_JOBS.c.status).where(_JOBS.c.id == bindparam("job_id"))
_LOCKED_STATUS = _STATUS.with_for_update()
_NEW_JOB = insert(_JOBS)
_NEW_EVENTS = insert(_EVENTS)
Step = tuple[JobStatus, str | None]  # a state to enter and why


def record(row: Mapping[Any, Any]) -> Job:
    """The job from its row's columns and its workload's ``slug`` (a row of ``JOB``, or the values written)."""
    return Job(
        id=JobId(row["id"]),
        account_id=AccountId(row["account_id"]),
        workload_id=row["workload_id"],
        workload_slug=WorkloadSlug(row["slug"]),
        status=JobStatus(row["status"]),
        input=dict(row["input"] or {}),
        output=row["output"],
        error=row["error"],
        usage=dict(row["usage"]) if row["usage"] is not None else None,
        host_id=HostId(row["host_id"]) if row["host_id"] else None,
        attempt=row["attempt"],
        region=row["region"],
        priority=row["priority"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        reserved_micro=row["reserved_micro"],
        credits_used_micro=row["credits_used_micro"],
        parent_id=JobId(row["parent_id"]) if row["parent_id"] else None,
        batch_index=row["batch_index"],
        batch_size=row["batch_size"],
        bid_price_micro=row["bid_price_micro"],
        clearing_price_micro=row["clearing_price_micro"],
        receipt=_receipt(row["receipt"]),
    )


def stored_receipt(receipt: Receipt) -> dict[str, Any]:
    return dataclasses.asdict(receipt)


def _receipt(stored: dict[str, Any] | None) -> Receipt | None:
    return Receipt(**stored) if stored is not None else None


def _events(
    session: Session, job_id: str, source: JobStatus | None, steps: Sequence[Step], at: datetime
) -> None:
    """One JobEvent per step, the first from ``source``, in one statement."""
    rows = []
    for target, reason in steps:
        rows.append({"job_id": job_id, "from_status": str(source) if source is not None else None,
                     "to_status": str(target), "at": at, "reason": reason})
        source = target
    session.execute(_NEW_EVENTS, rows)


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
    queue: bool = False,
    parent_id: str | None = None,
    batch_index: int | None = None,
    batch_size: int | None = None,
    bid_price_micro: int | None = None,
) -> Job:
    """A ``submitted`` job with its reservation; with ``queue`` it is written ``queued`` at once (no other
    transaction sees it in between), with both events."""
    if reserve_micro < 0:
        raise ValidationFailed("invalid job", errors={"reserve": "cannot be negative"})
    if session.execute(_ACCOUNT_EXISTS, {"account_id": account_id}).first() is None:
        raise NotFound(f"account {account_id} does not exist")
    workload = workloads.get_row(session, workload_slug)
    if not workload.is_enabled:
        raise NotFound(
            f"workload {workload_slug!r} is disabled; GET /api/v1/workloads lists the enabled ones"
        )
    job_id = job_id or new_job_id()
    now = utcnow()
    credits.reserve(
        session, account_id, job_id, reserve_micro
    )  # first: it raises PaymentRequired before any write
    steps: list[Step] = [(JobStatus.SUBMITTED, "submitted")]
    if queue:
        steps.append((JobStatus.QUEUED, "queued"))
    row = {
        "id": job_id, "account_id": account_id, "workload_id": workload.id, "status": str(steps[-1][0]),
        "input": dict(job_input), "output": None, "error": None, "usage": None, "events": None, "host_id": None,
        "attempt": 1, "region": region, "priority": priority, "created_at": now, "started_at": None,
        "completed_at": None, "reserved_micro": reserve_micro, "credits_used_micro": 0, "parent_id": parent_id,
        "batch_index": batch_index, "batch_size": batch_size, "bid_price_micro": bid_price_micro,
        "clearing_price_micro": None, "receipt": None,
    }
    session.execute(_NEW_JOB, row)
    _events(session, job_id, None, steps, now)
    return record({**row, "slug": workload.slug})


def status_of(session: Session, job_id: str, *, lock: bool = False) -> JobStatus:
    """The job's state (NotFound for an unknown job); ``lock`` holds its row until the transaction ends."""
    status = session.execute(_LOCKED_STATUS if lock else _STATUS, {"job_id": job_id}).scalar_one_or_none()
    if status is None:
        raise NotFound(f"job {job_id} does not exist")
    return JobStatus(status)


def _refused(job_id: str, source: JobStatus, target: JobStatus) -> InvalidTransition:
    return InvalidTransition(
        f"job {job_id} is {source} and cannot become {target}", job_id=job_id, status=str(source), to=str(target)
    )


def _walk(job_id: str, source: JobStatus, steps: Sequence[Step]) -> JobStatus:
    """The state ``steps`` end in, each allowed by the table from the one before; InvalidTransition if not."""
    for target, _ in steps:
        if not can_move(source, target):
            raise _refused(job_id, source, target)
        source = target
    return source


def transition(
    session: Session,
    job_id: str,
    target: JobStatus,
    reason: str | None,
    values: Mapping[str, Any],
    *,
    source: JobStatus | None = None,
) -> JobStatus:
    """Move ``job_id`` to ``target`` and set ``values``; returns the state it left. ``source``: the state the
    caller read under lock in this transaction (read here when not given)."""
    return _advance(session, job_id, [(target, reason)], values, source)


def start(session: Session, job_id: str, host_id: str, attempt: int, streaming: bool = False) -> None:
    """queued → assigned → started (→ streaming, when the host's first word already holds output): the host has
    begun the job's ``attempt``. One guarded update, every step's event."""
    steps: list[Step] = [(JobStatus.ASSIGNED, f"assigned to {host_id}"), (JobStatus.STARTED, f"started on {host_id}")]
    if streaming:
        steps.append((JobStatus.STREAMING, None))
    _advance(session, job_id, steps, {"host_id": host_id, "attempt": attempt}, None)


def _advance(
    session: Session, job_id: str, steps: Sequence[Step], values: Mapping[str, Any], source: JobStatus | None
) -> JobStatus:
    """Take ``steps`` in one guarded update plus their events; returns the state the job left. Where the table
    lets the first step be entered from one state only, the guard decides and the state is read only to say why
    it refused."""
    unknown = set(values) - SETTABLE
    if unknown:
        raise TypeError(f"transition cannot set {sorted(unknown)}; allowed: {sorted(SETTABLE)}")
    sources = sources_of(steps[0][0])
    if source is None:
        source = next(iter(sources)) if len(sources) == 1 else status_of(session, job_id, lock=True)
    reached = _walk(job_id, source, steps)
    now = utcnow()
    moved = dict(values)
    if any(target is JobStatus.STARTED for target, _ in steps):
        moved.setdefault("started_at", now)
    if reached in TERMINAL_JOB_STATES:
        moved.setdefault("completed_at", now)
    params = {f"set_{column}": value for column, value in moved.items()}
    result = session.execute(_guarded_update(sources, tuple(sorted(moved))),
                             {"job_id": job_id, "set_status": str(reached), **params})
    assert isinstance(result, CursorResult)
    if result.rowcount != 1:  # not in the one source state, or another writer moved it first
        raise _refused(job_id, status_of(session, job_id), steps[0][0])
    _events(session, job_id, source, steps, now)
    return source


@functools.cache
def _guarded_update(sources: frozenset[JobStatus], columns: tuple[str, ...]) -> Update:
    """``UPDATE jobs SET status, columns … WHERE id = :job_id AND status IN (sources)``, built once per shape: building
    it per move cost more CPU than running it. The values are bound as ``set_<column>``."""
    return (
        update(_JOBS)
        .where(_JOBS.c.id == bindparam("job_id"), _JOBS.c.status.in_(sorted(str(s) for s in sources)))
        .values({column: bindparam(f"set_{column}") for column in ("status", *columns)})
    )


def requeue(session: Session, job_id: str, reason: str) -> None:
    """A lost host sends an assigned/started/streaming job back to queued, attempt + 1 (read under its lock)."""
    row = locked(session, job_id)
    transition(session, job_id, JobStatus.QUEUED, reason,
               {"attempt": row["attempt"] + 1, "host_id": None, "started_at": None},
               source=JobStatus(row["status"]))


def get(session: Session, job_id: str, account_id: int | None = None) -> Job:
    found = session.execute(_JOB_BY_ID, {"job_id": job_id}).first()
    if found is None or (account_id is not None and found.account_id != account_id):
        raise NotFound(f"job {job_id} does not exist")
    return record(found._mapping)


def locked(session: Session, job_id: str) -> dict[str, Any]:
    """The job's row and its workload's slug (what ``record`` reads), locked until the transaction ends: on
    PostgreSQL ``FOR UPDATE OF jobs``, on SQLite the write transaction's lock."""
    found = session.execute(_LOCKED_JOB, {"job_id": job_id}).first()
    if found is None:
        raise NotFound(f"job {job_id} does not exist")
    return dict(found._mapping)


def save_events(session: Session, job_id: str, events: list[dict[str, Any]]) -> bool:
    result = session.execute(
        update(_JOBS)
        .where(_JOBS.c.id == job_id, _JOBS.c.status.not_in([str(s) for s in TERMINAL_JOB_STATES]))
        .values(events=events)
    )
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def unfinished(session: Session) -> list[Job]:
    rows = session.execute(
        JOB.where(_JOBS.c.status.not_in([str(s) for s in TERMINAL_JOB_STATES]))
        .order_by(_JOBS.c.created_at, _JOBS.c.id)
    )
    return [record(row._mapping) for row in rows]


def list_for(session: Session, account_id: int, limit: int, offset: int) -> tuple[list[Job], int]:
    total = session.execute(
        select(func.count()).select_from(_JOBS).where(_JOBS.c.account_id == account_id)
    ).scalar_one()
    rows = session.execute(
        JOB.where(_JOBS.c.account_id == account_id)
        .order_by(_JOBS.c.created_at.desc(), _JOBS.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [record(row._mapping) for row in rows], int(total)


def events(session: Session, job_id: str) -> list[JobEvent]:
    rows = session.execute(select(_EVENTS).where(_EVENTS.c.job_id == job_id).order_by(_EVENTS.c.id))
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
    found = session.execute(select(_JOBS.c.events).where(_JOBS.c.id == job_id)).first()
    if found is None:
        raise NotFound(f"job {job_id} does not exist")
    return list(found[0] or [])


def active_counts(session: Session) -> dict[str, int]:
    """Jobs assigned/started/streaming per host."""
    rows = session.execute(
        select(_JOBS.c.host_id, func.count())
        .where(_JOBS.c.status.in_([str(s) for s in ACTIVE_STATES]), _JOBS.c.host_id.is_not(None))
        .group_by(_JOBS.c.host_id)
    ).all()
    return {str(host_id): int(count) for host_id, count in rows}
