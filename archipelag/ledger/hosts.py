"""Hosts: the recorded fleet (status, capabilities, last heartbeat) and each host's append-only karma events.

Status moves are guarded by ``lifecycle.HOST_TRANSITIONS`` with an ``UPDATE … WHERE status IN (sources)``;
moving to the state a host is already in is a no-op. Karma points come from the pure rules in
``karma_rules``; the total and score are derived from a host's events and their times, never stored.

Functions here take an open session; ``Ledger`` owns the transactions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from archipelag.errors import InvalidTransition, NotFound
from archipelag.ids import HostId, JobId
from archipelag.ledger import credits
from archipelag.ledger.karma_rules import DEFAULT_RULES, KarmaKind, KarmaRules
from archipelag.ledger.records import Host, KarmaEvent
from archipelag.ledger.tables import HostRow, KarmaEventRow, utcnow
from archipelag.lifecycle import HOST_TRANSITIONS, HostStatus, host_can_move


def record(row: HostRow, karma_score: float, active_jobs: int) -> Host:
    return Host(
        id=HostId(row.id),
        name=row.name,
        region=row.region,
        capabilities=dict(row.capabilities or {}),
        status=HostStatus(row.status),
        created_at=row.created_at,
        last_heartbeat_at=row.last_heartbeat_at,
        karma_score=karma_score,
        active_jobs=active_jobs,
        owner_account_id=row.owner_account_id,
        revoked_at=row.revoked_at,
    )


def _row(session: Session, host_id: str, *, lock: bool = False) -> HostRow:
    stmt = select(HostRow).where(col(HostRow.id) == host_id)
    row = session.scalars(stmt.with_for_update() if lock else stmt).first()
    if row is None:
        raise NotFound(f"host {host_id} does not exist")
    return row


def upsert(
    session: Session, host_id: str, name: str, region: str, capabilities: dict[str, Any], status: HostStatus
) -> None:
    """Record a host, or update a known one; a status change must be allowed by the host lifecycle."""
    row = session.scalars(select(HostRow).where(col(HostRow.id) == host_id).with_for_update()).first()
    if row is None:
        session.add(
            HostRow(
                id=host_id,
                name=name,
                region=region,
                capabilities=dict(capabilities),
                status=str(status),
                created_at=utcnow(),
            )
        )
        session.flush()
        credits.book(session, "host", host_id)
        return
    current = HostStatus(row.status)
    if current is not status and not host_can_move(current, status):
        raise InvalidTransition(
            f"host {host_id} is {current} and cannot become {status}",
            host_id=host_id,
            status=str(current),
            to=str(status),
        )
    row.name, row.region, row.capabilities, row.status = name, region, dict(capabilities), str(status)
    session.flush()


def set_status(session: Session, host_id: str, target: HostStatus) -> None:
    current = HostStatus(_row(session, host_id, lock=True).status)
    if current is target:
        return
    sources = [str(s) for s, targets in HOST_TRANSITIONS.items() if target in targets]
    result = session.execute(
        update(HostRow)
        .where(col(HostRow.id) == host_id, col(HostRow.status).in_(sources))
        .values(status=str(target))
    )
    assert isinstance(result, CursorResult)
    if result.rowcount != 1:
        raise InvalidTransition(
            f"host {host_id} is {current} and cannot become {target}",
            host_id=host_id,
            status=str(current),
            to=str(target),
        )


def record_heartbeat(session: Session, host_id: str, at: datetime) -> None:
    result = session.execute(update(HostRow).where(col(HostRow.id) == host_id).values(last_heartbeat_at=at))
    assert isinstance(result, CursorResult)
    if result.rowcount != 1:
        raise NotFound(f"host {host_id} does not exist")


def karma_totals(session: Session, rules: KarmaRules = DEFAULT_RULES, now: datetime | None = None) -> dict[str, float]:
    """Every host's total now, recovery included (one pass over the events, in the order they were written)."""
    now = now or utcnow()
    rows = session.execute(
        select(col(KarmaEventRow.host_id), col(KarmaEventRow.at), col(KarmaEventRow.points)).order_by(
            col(KarmaEventRow.host_id), col(KarmaEventRow.id)
        )
    ).all()
    by_host: dict[str, list[tuple[datetime, float]]] = {}
    for host_id, at, points in rows:
        by_host.setdefault(str(host_id), []).append((at, float(points)))
    return {host_id: rules.total_at(events, now) for host_id, events in by_host.items()}


def karma_total(session: Session, host_id: str, rules: KarmaRules = DEFAULT_RULES, now: datetime | None = None) -> float:
    """A host's total now: its events' points with a negative total's recovery over time (``KarmaRules``)."""
    now = now or utcnow()
    rows = session.execute(
        select(col(KarmaEventRow.at), col(KarmaEventRow.points)).where(
            col(KarmaEventRow.host_id) == host_id
        ).order_by(col(KarmaEventRow.id))
    ).all()
    return rules.total_at(((at, float(points)) for at, points in rows), now)


def all_rows(session: Session) -> list[HostRow]:
    return list(session.scalars(select(HostRow).order_by(col(HostRow.id))))


def get_row(session: Session, host_id: str) -> HostRow:
    return _row(session, host_id)


def add_karma(
    session: Session,
    rules: KarmaRules,
    host_id: str,
    kind: KarmaKind,
    *,
    job_id: str | None,
    compute_s: float,
    adjustment: float,
    reason: str | None,
) -> KarmaEvent:
    _row(session, host_id, lock=True)  # serialises a host's karma writes, so the boost uses the true total
    now = utcnow()
    points = rules.points_for(
        kind, total_before=karma_total(session, host_id, rules, now), compute_s=compute_s, adjustment=adjustment
    )
    row = KarmaEventRow(
        host_id=host_id, kind=str(kind), points=points, job_id=job_id, at=now, reason=reason
    )
    session.add(row)
    session.flush()
    return karma_record(row)


def karma_record(row: KarmaEventRow) -> KarmaEvent:
    assert row.id is not None
    return KarmaEvent(
        id=row.id,
        host_id=HostId(row.host_id),
        kind=row.kind,
        points=row.points,
        job_id=JobId(row.job_id) if row.job_id else None,
        at=row.at,
        reason=row.reason,
    )


def karma_events(session: Session, host_id: str, limit: int | None = None, offset: int = 0) -> list[KarmaEvent]:
    """A host's events, newest first when paged (``limit``), oldest first otherwise."""
    _row(session, host_id)
    query = select(KarmaEventRow).where(col(KarmaEventRow.host_id) == host_id)
    if limit is None:
        rows = session.scalars(query.order_by(col(KarmaEventRow.id)))
    else:
        rows = session.scalars(query.order_by(col(KarmaEventRow.id).desc()).limit(limit).offset(offset))
    return [karma_record(row) for row in rows]


def karma_event_count(session: Session, host_id: str) -> int:
    _row(session, host_id)
    count = session.execute(
        select(func.count()).select_from(KarmaEventRow).where(col(KarmaEventRow.host_id) == host_id)
    ).scalar_one()
    return int(count)
