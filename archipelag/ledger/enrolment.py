"""Enrolment: pairing requests, the enrolled key and owner of each host, and revocation.

A host asks to enrol with its public key and gets a short code (stored hashed, valid ``ttl_s``, used once). The
owner approves the code while signed in: the host is then recorded under the id bound to its key
(``identity.host_id_for``), owned by the approving account. ``enrol`` is that one step, also used directly for the
local hosts of ``archipelag up``. An id is bound to one key for good; a revoked host stays revoked.

Functions here take an open session; ``Ledger`` owns the transactions.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from sqlmodel import col

from archipelag.errors import Conflict, HostRefused, NotFound
from archipelag.identity import code_hash, host_id_for, new_pairing_code
from archipelag.ids import HostId
from archipelag.ledger import hosts
from archipelag.ledger.records import HostIdentity, Pairing
from archipelag.ledger.tables import HostRow, PairingRow
from archipelag.lifecycle import HostStatus


def _by_key(session: Session, public_key: str) -> HostRow | None:
    return session.scalars(select(HostRow).where(col(HostRow.public_key) == public_key)).first()


def request_pairing(session: Session, public_key: str, name: str, region: str, hardware: dict[str, Any],
                    ttl_s: float, now: datetime) -> tuple[str, datetime]:
    """A new code for this key (replacing one it was given before), and when it expires."""
    enrolled = _by_key(session, public_key)
    if enrolled is not None:
        raise Conflict(f"this key is already enrolled as host {enrolled.id}; the host polls for its credentials")
    session.execute(delete(PairingRow).where(col(PairingRow.public_key) == public_key,
                                             col(PairingRow.approved_at).is_(None)))
    session.execute(delete(PairingRow).where(col(PairingRow.expires_at) < now))  # keep the table small
    while True:
        code = new_pairing_code()
        if session.scalars(select(PairingRow).where(col(PairingRow.code_hash) == code_hash(code))).first() is None:
            break
    expires_at = now + timedelta(seconds=ttl_s)
    session.add(PairingRow(code_hash=code_hash(code), public_key=public_key, name=name, region=region,
                           hardware=dict(hardware), created_at=now, expires_at=expires_at))
    session.flush()
    return code, expires_at


def approve_pairing(session: Session, account_id: int, code: str, now: datetime) -> HostId:
    """Enrol the host that was given ``code``, owned by ``account_id``; NotFound for a wrong, used or expired code."""
    row = session.scalars(
        select(PairingRow).where(col(PairingRow.code_hash) == code_hash(code), col(PairingRow.approved_at).is_(None),
                                 col(PairingRow.expires_at) > now).with_for_update()).first()
    if row is None:
        raise NotFound("no host is waiting with that pairing code (it is wrong, used, or older than its 10 minutes); "
                       "start `archipelag host join` again for a new one")
    host_id = host_id_for(row.public_key)
    enrol(session, host_id, row.public_key, account_id, row.name, row.region, dict(row.hardware or {}), now)
    row.approved_at, row.approved_by, row.host_id = now, account_id, host_id
    session.flush()
    return host_id


def enrol(session: Session, host_id: str, public_key: str, owner_account_id: int, name: str, region: str,
          capabilities: dict[str, Any], now: datetime) -> None:
    """Record ``host_id`` with its key and owner. Its id stays bound to the first key it enrolled with; a revoked
    host is not enrolled again; another owner's host is not taken over."""
    holder = _by_key(session, public_key)
    if holder is not None and holder.id != host_id:
        raise Conflict(f"this key is already enrolled as host {holder.id}")
    row = session.scalars(select(HostRow).where(col(HostRow.id) == host_id).with_for_update()).first()
    if row is None:
        hosts.upsert(session, host_id, name, region, capabilities, HostStatus.JOINING)
        row = hosts.get_row(session, host_id)
    if row.public_key is not None and row.public_key != public_key:
        raise Conflict(f"host {host_id} is enrolled with another key")
    if row.revoked_at is not None:
        raise HostRefused(f"host {host_id} was revoked; a machine enrols again with a new key")
    if row.owner_account_id is not None and row.owner_account_id != owner_account_id:
        raise Conflict(f"host {host_id} belongs to another account")
    row.public_key, row.owner_account_id = public_key, owner_account_id
    row.enrolled_at = row.enrolled_at or now
    session.flush()


def identity(row: HostRow) -> HostIdentity | None:
    if row.enrolled_at is None or row.public_key is None or row.owner_account_id is None:
        return None
    return HostIdentity(HostId(row.id), row.public_key, row.owner_account_id, row.revoked_at is not None,
                        row.suspended_reason if row.suspended_at is not None else None)


def identity_of(session: Session, host_id: str) -> HostIdentity | None:
    """The enrolled key of ``host_id``; None for a host that never enrolled (placement refuses it)."""
    row = session.scalars(select(HostRow).where(col(HostRow.id) == host_id)).first()
    return identity(row) if row is not None else None


def status_of_key(session: Session, public_key: str, now: datetime) -> HostIdentity | Pairing | None:
    """What a host polling with this key should hear: enrolled (maybe revoked), waiting, or nothing."""
    enrolled = _by_key(session, public_key)
    if enrolled is not None:
        return identity(enrolled)
    row = session.scalars(select(PairingRow).where(col(PairingRow.public_key) == public_key,
                                                   col(PairingRow.expires_at) > now)
                          .order_by(col(PairingRow.id).desc())).first()
    if row is None:
        return None
    return Pairing(row.public_key, row.name, row.region, row.expires_at,
                   HostId(row.host_id) if row.host_id else None)


def revoke(session: Session, host_id: str, account_id: int, is_admin: bool, reason: str, now: datetime) -> None:
    """The owner or an admin cuts a host off for good. Another account's host reads as absent."""
    row = session.scalars(select(HostRow).where(col(HostRow.id) == host_id).with_for_update()).first()
    if row is None or (not is_admin and row.owner_account_id != account_id):
        raise NotFound(f"you have no host {host_id}")
    if row.revoked_at is None:
        row.revoked_at, row.revoked_reason = now, reason[:500]
        session.flush()


def owned_by(session: Session, account_id: int) -> list[HostRow]:
    return list(session.scalars(select(HostRow).where(col(HostRow.owner_account_id) == account_id)
                                .order_by(col(HostRow.id))))
