"""Hosts: the recorded fleet (status, capabilities, last heartbeat, an operator's suspension) and each host's
append-only karma events.

Status moves are guarded by ``lifecycle.HOST_TRANSITIONS`` with an ``UPDATE … WHERE status IN (sources)``;
moving to the state a host is already in is a no-op. Karma points come from the pure rules in
``karma_rules``; the total is the sum of a host's events (the recovery of a negative total is banked as a
``recovery`` event at the next event) plus the recovery since its last one; total and score are never stored.

Functions here take an open session; ``Ledger`` owns the transactions.
"""

from __future__ import annotations

from collections.abc import Collection
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
        suspended_at=row.suspended_at,
        suspended_reason=row.suspended_reason if row.suspended_at is not None else None,
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
        credits.open_book(session, credits.Book("host", host_id))
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


def suspend(session: Session, host_id: str, reason: str, now: datetime) -> None:
    """An operator takes a host out of placement. Guarded (``WHERE suspended_at IS NULL``): a host already
    suspended keeps its first reason and time, whoever else suspends it meanwhile."""
    result = session.execute(update(HostRow).where(col(HostRow.id) == host_id, col(HostRow.suspended_at).is_(None))
                             .values(suspended_at=now, suspended_reason=reason[:500]))
    assert isinstance(result, CursorResult)
    if result.rowcount != 1:
        _row(session, host_id)  # NotFound for an unknown host; otherwise it was suspended already


def reinstate(session: Session, host_id: str) -> None:
    """Lift an operator's suspension (none: nothing to do). Karma's suspension is not this one."""
    _row(session, host_id)
    session.execute(update(HostRow).where(col(HostRow.id) == host_id)
                    .values(suspended_at=None, suspended_reason=None))


def suspended_rows(session: Session) -> list[HostRow]:
    """The hosts an operator suspended, longest suspended first."""
    return list(session.scalars(select(HostRow).where(col(HostRow.suspended_at).is_not(None))
                                .order_by(col(HostRow.suspended_at), col(HostRow.id))))


def record_heartbeat(session: Session, host_id: str, at: datetime) -> None:
    result = session.execute(update(HostRow).where(col(HostRow.id) == host_id).values(last_heartbeat_at=at))
    assert isinstance(result, CursorResult)
    if result.rowcount != 1:
        raise NotFound(f"host {host_id} does not exist")


def karma_totals(session: Session, rules: KarmaRules = DEFAULT_RULES, now: datetime | None = None,
                 host_ids: Collection[str] | None = None) -> dict[str, float]:
    """Every host's total now (or those of ``host_ids``): the sum of its events (recovery up to each one is banked
    as an event; the host's row keeps the sum) and the recovery since its last event. A host without events is
    absent."""
    now = now or utcnow()
    query = select(col(HostRow.id), col(HostRow.karma_points), col(HostRow.karma_at)).where(
        col(HostRow.karma_at).is_not(None))
    if host_ids is not None:
        query = query.where(col(HostRow.id).in_(list(host_ids)))
    return {str(host_id): _now_total(rules, total, last_at, now) for host_id, total, last_at in session.execute(query)}


def karma_total(session: Session, host_id: str, rules: KarmaRules = DEFAULT_RULES, now: datetime | None = None) -> float:
    """A host's total now: its events' points and a negative total's recovery since the last one (``KarmaRules``)."""
    found = session.execute(select(col(HostRow.karma_points), col(HostRow.karma_at)).where(
        col(HostRow.id) == host_id)).first()
    return _now_total(rules, found[0], found[1], now or utcnow()) if found is not None else 0.0


def karma_audit(session: Session) -> list[str]:
    """Hosts whose kept total or last event's time is not what their events say (empty when none)."""
    sums = {str(host_id): (float(total), last_at) for host_id, total, last_at in session.execute(
        select(col(KarmaEventRow.host_id), func.sum(col(KarmaEventRow.points)), func.max(col(KarmaEventRow.at)))
        .group_by(col(KarmaEventRow.host_id)))}
    problems = []
    for host_id, kept, kept_at in session.execute(select(col(HostRow.id), col(HostRow.karma_points),
                                                         col(HostRow.karma_at))):
        total, last_at = sums.get(host_id, (0.0, None))
        if abs(kept - total) > 1e-6 or kept_at != last_at:
            problems.append(f"host {host_id} keeps karma {kept:g} since {kept_at}; its events say {total:g} "
                            f"since {last_at}")
    return problems


def _now_total(rules: KarmaRules, total: float | None, last_at: datetime | None, now: datetime) -> float:
    if total is None or last_at is None:
        return 0.0
    return rules.recovered(float(total), (now - last_at).total_seconds())


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
    host = _row(session, host_id, lock=True)  # serialises a host's karma writes, so the boost uses the true total
    now = utcnow()
    raw = host.karma_points  # the sum of its events so far, kept on its row with each one
    total = _now_total(rules, raw, host.karma_at, now)
    if total != raw:  # bank the recovery since the last event, so a total is always a sum (and says why)
        session.add(KarmaEventRow(host_id=host_id, kind=str(KarmaKind.RECOVERY), points=total - raw, job_id=None,
                                  at=now, reason=f"recovered {rules.recovery_per_day:g} a day since the last event"))
    points = rules.points_for(kind, total_before=total, compute_s=compute_s, adjustment=adjustment)
    row = KarmaEventRow(
        host_id=host_id, kind=str(kind), points=points, job_id=job_id, at=now, reason=reason
    )
    session.add(row)
    host.karma_points, host.karma_at = total + points, now
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
