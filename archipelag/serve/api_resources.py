"""Resources API: workloads, the signed catalog, and the hosts of the network."""

from __future__ import annotations

from fastapi import APIRouter, Response

from archipelag.catalog_signing import catalog_files
from archipelag.errors import NotFound
from archipelag.serve.api_jobs import Reader, Svc
from archipelag.serve.responses import data, page
from archipelag.serve.views import host_view, karma_event_view, workload_view

router = APIRouter(prefix="/api/v1")


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
    snapshot = next((s for s in await svc.jobs.hosts() if s.host_id == host_id), None)
    if snapshot is None:
        raise NotFound(f"no host {host_id!r}; GET /api/v1/hosts lists them")
    return data(host_view(snapshot, await svc.ledger.karma_score(host_id)))


@router.get("/hosts/{host_id}/karma")
async def host_karma(host_id: str, _: Reader, svc: Svc) -> Response:
    if not any(s.host_id == host_id for s in await svc.jobs.hosts()):
        raise NotFound(f"no host {host_id!r}; GET /api/v1/hosts lists them")
    score = await svc.ledger.karma_score(host_id)
    events = await svc.ledger.karma_events(host_id)
    return data({"host_id": host_id, "karma_score": score, "events": [karma_event_view(e) for e in events]})
