"""Workloads: the catalog mirrored into rows with stable integer ids (the API's ``workload_id``).

``sync`` upserts by slug: a slug keeps its id across runs; a slug that left the catalog is disabled, not
deleted (old jobs still point at it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session

from archipelag.catalog import Manifest
from archipelag.errors import NotFound
from archipelag.ids import WorkloadSlug
from archipelag.ledger.records import Workload
from archipelag.ledger.tables import WorkloadRow, table, utcnow

_WORKLOADS = table(WorkloadRow)
_BY_SLUG = select(_WORKLOADS).where(_WORKLOADS.c.slug == bindparam("slug"))
_BY_ID = select(_WORKLOADS).where(_WORKLOADS.c.id == bindparam("workload_id"))


def record(row: Row[Any]) -> Workload:
    return Workload(
        id=row.id,
        slug=WorkloadSlug(row.slug),
        name=row.name,
        description=row.description,
        runtime=row.runtime,
        trust_level=row.trust_level,
        price_micro=row.price_micro,
        required_ram_mb=row.required_ram_mb,
        required_vram_mb=row.required_vram_mb,
        is_enabled=row.is_enabled,
    )


def sync(session: Session, manifests: Iterable[Manifest]) -> list[Workload]:
    """Upsert every manifest by slug and disable rows whose slug is gone; returns all rows by id."""
    existing = {row.slug: row for row in session.scalars(select(WorkloadRow))}
    now = utcnow()
    seen: set[str] = set()
    for manifest in manifests:
        seen.add(manifest.slug)
        row = existing.get(manifest.slug)
        if row is None:
            row = WorkloadRow(
                slug=manifest.slug, name=manifest.name, runtime=manifest.runtime, updated_at=now
            )
            session.add(row)
        row.name = manifest.name
        row.description = manifest.description
        row.runtime = manifest.runtime
        row.trust_level = manifest.trust_level
        row.price_micro = manifest.price_micro
        row.required_ram_mb = manifest.required_ram_mb
        row.required_vram_mb = manifest.required_vram_mb
        row.is_enabled = True
        if session.is_modified(row):
            row.updated_at = now
    for slug, row in existing.items():
        if slug not in seen and row.is_enabled:
            row.is_enabled = False
            row.updated_at = now
    session.flush()
    return list_all(session)


def list_all(session: Session) -> list[Workload]:
    return [record(row) for row in session.execute(select(_WORKLOADS).order_by(_WORKLOADS.c.id))]


def get_row(session: Session, slug_or_id: str | int) -> Row[Any]:
    """The workload's row by slug, or by id (an int, or a slug that is all digits and names none)."""
    row: Row[Any] | None = None
    if isinstance(slug_or_id, str):
        row = session.execute(_BY_SLUG, {"slug": slug_or_id}).first()
    if row is None and (isinstance(slug_or_id, int) or slug_or_id.isdigit()):
        row = session.execute(_BY_ID, {"workload_id": int(slug_or_id)}).first()
    if row is None:
        raise NotFound(f"unknown workload {slug_or_id!r}; GET /api/v1/workloads lists them")
    return row
