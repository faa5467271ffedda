"""Resources API: workloads, the signed catalog, and the hosts of the network."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from archipelag.catalog_signing import catalog_files
from archipelag.errors import NotFound
from archipelag.ledger.karma_rules import Standing
from archipelag.placement.scoring import HostSnapshot
from archipelag.serve.api_jobs import MAX_OFFSET, Reader, Svc
from archipelag.serve.responses import data, page
from archipelag.serve.services import Services
from archipelag.serve.views import host_view, karma_event_view, workload_view

router = APIRouter(prefix="/api/v1")
RECENT_EVENTS = 20  # karma events GET /hosts/{id}/karma shows; /karma/history pages through all


@router.get("/workloads")
async def list_workloads(_: Reader, svc: Svc) -> Response:
    rows = await svc.ledger.list_workloads()
    return page([workload_view(r) for r in rows], len(rows), len(rows), 0)


@router.get("/workloads/{slug}")
async def get_workload(slug: str, _: Reader, svc: Svc) -> Response:
    row = await svc.ledger.get_workload(slug)
    return data(workload_view(row))


@router.get("/catalog")
async def signed_catalog(svc: Svc) -> Response:
    """The signed catalog hosts verify (public: it holds no secrets)."""
    return Response(catalog_files(svc.settings)[0], media_type="application/json")


@router.get("/catalog.sig")
async def catalog_signature(svc: Svc) -> Response:
    return Response(catalog_files(svc.settings)[1], media_type="application/json")


@router.get("/hosts")
async def list_hosts(_: Reader, svc: Svc) -> Response:
    snapshots = await svc.jobs.hosts()
    views = [host_view(s, await svc.ledger.karma_score(s.host_id))
             for s in snapshots]
    return page(views, len(views), len(views), 0)


@router.get("/hosts/{host_id}")
async def get_host(host_id: str, _: Reader, svc: Svc) -> Response:
    """One host; a suspended one says why (its operator's reason, else its karma's)."""
    snapshot = await _snapshot(host_id, svc)
    state = await svc.ledger.karma_state(host_id)
    operator = (await svc.ledger.get_host(host_id)).suspended_reason  # the ledger's, as placement applies it
    karma_suspension = state.reason if state.standing is Standing.SUSPENDED else None
    return data({**host_view(snapshot, state.score), "karma_standing": str(state.standing),
                 "suspended_reason": operator or karma_suspension})


@router.get("/hosts/{host_id}/karma")
async def host_karma(host_id: str, _: Reader, svc: Svc) -> Response:
    """A host's karma now: total (recovery included), score, standing, placement share, why it is cooled down or
    suspended, and its latest events (all of them: ``/karma/history``)."""
    await _snapshot(host_id, svc)
    state = await svc.ledger.karma_state(host_id)
    events = await svc.ledger.karma_events(host_id, RECENT_EVENTS, 0)
    return data({"host_id": host_id, "karma_score": state.score, "karma_total": round(state.total, 4),
                 "standing": str(state.standing), "placement_share": state.share, "reason": state.reason,
                 "events": [karma_event_view(e) for e in events]})


@router.get("/hosts/{host_id}/karma/history")
async def host_karma_history(host_id: str, _: Reader, svc: Svc,
                             limit: Annotated[int, Query(ge=1, le=200)] = 20,
                             offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> Response:
    """A host's karma events, newest first, a page at a time."""
    await _snapshot(host_id, svc)
    events = await svc.ledger.karma_events(host_id, limit, offset)
    total = await svc.ledger.karma_event_count(host_id)
    return page([karma_event_view(e) for e in events], total, limit, offset)


async def _snapshot(host_id: str, svc: Services) -> HostSnapshot:
    snapshot = next((s for s in await svc.jobs.hosts() if s.host_id == host_id), None)
    if snapshot is None:
        raise NotFound(f"no host {host_id!r}; GET /api/v1/hosts lists them")
    return snapshot
