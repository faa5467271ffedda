"""Resources API: workloads, the caller's account and API keys, and the hosts of the network."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from archipelag.catalog_signing import catalog_files
from archipelag.errors import NotFound
from archipelag.serve.api_jobs import Reader, Svc, Writer
from archipelag.serve.responses import data, page
from archipelag.serve.views import account_view, api_key_view, host_view, karma_event_view, workload_view

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


@router.get("/account")
async def get_account(caller: Reader, svc: Svc) -> Response:
    account = await svc.ledger.get_account(caller.account_id)
    balance = await svc.ledger.balance_micro(caller.account_id)
    return data(account_view(account, balance))


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    scopes: list[Annotated[str, Field(pattern="^(read|write)$")]] = Field(default_factory=lambda: ["read", "write"])
    expires_at: datetime | None = None


@router.get("/api-keys")
async def list_keys(caller: Reader, svc: Svc) -> Response:
    keys = await svc.ledger.list_api_keys(caller.account_id)
    return page([api_key_view(k) for k in keys], len(keys), len(keys), 0)


@router.post("/api-keys", status_code=201)
async def create_key(body: KeyCreate, caller: Writer, svc: Svc) -> Response:
    key, full = await svc.ledger.create_api_key(caller.account_id, body.name, tuple(sorted(set(body.scopes))),
                                                body.expires_at)
    return data(api_key_view(key, full), status_code=201)


@router.delete("/api-keys/{key_id}")
async def revoke_key(key_id: int, caller: Writer, svc: Svc) -> Response:
    key = await svc.ledger.revoke_api_key(caller.account_id, key_id)
    svc.keys.forget_key(key_id)
    return data(api_key_view(key))


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
