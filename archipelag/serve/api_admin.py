"""Admin API: accounts (list, search, grant credits, suspend, reinstate, make admin), hosts (suspend,
reinstate; pause, resume, drain, which a host's owner may also do — see ``may_control``), invitations, and network statistics. Every route needs an admin account (its session, or one of its keys: ``read`` to look, ``write``
to change). A suspension takes effect at once: the account's keys and sessions are refused on every replica.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from archipelag.accounts.revocations import Notice
from archipelag.actors.controls import Command, Controller
from archipelag.catalog import MICRO
from archipelag.errors import Conflict, Forbidden, HostLost, NotFound
from archipelag.ids import HostId
from archipelag.ledger.records import Host
from archipelag.lifecycle import HostStatus
from archipelag.serve.api_accounts import person_view
from archipelag.serve.api_jobs import Svc
from archipelag.serve.auth import Caller, require
from archipelag.serve.responses import data, page
from archipelag.serve.services import Services
from archipelag.serve.views import host_view, iso

router = APIRouter(prefix="/api/v1/admin")

AdminReader = Annotated[Caller, Depends(require("read", admin=True))]
AdminWriter = Annotated[Caller, Depends(require("write", admin=True))]
Writer = Annotated[Caller, Depends(require("write"))]
AccountPath = Annotated[int, Path(ge=1, le=2**62)]
HostPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
MAX_GRANT_CREDITS = 1_000_000_000  # one grant; more is a typo


class Grant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: float = Field(gt=0, le=MAX_GRANT_CREDITS, strict=True, allow_inf_nan=False, description="credits")
    memo: str | None = Field(default=None, max_length=500)


class Suspension(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500)


class HostNote(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, min_length=1, max_length=500)


class InviteCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(default=None, min_length=3, max_length=320)


class Role(BaseModel):
    model_config = ConfigDict(extra="forbid")

    is_admin: bool


@router.get("/accounts")
async def list_accounts(_: AdminReader, svc: Svc, q: Annotated[str | None, Query(max_length=320)] = None,
                        limit: Annotated[int, Query(ge=1, le=200)] = 50,
                        offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> Response:
    """Accounts, oldest first; ``q`` finds addresses containing it."""
    found, total = await svc.ledger.list_accounts(q, limit, offset)
    return page([person_view(a) for a in found], total, limit, offset)


@router.get("/accounts/{account_id}")
async def get_account(account_id: AccountPath, _: AdminReader, svc: Svc) -> Response:
    return data(person_view(await svc.ledger.get_account(account_id)))


@router.post("/accounts/{account_id}/credits")
async def grant_credits(account_id: AccountPath, body: Grant, caller: AdminWriter, svc: Svc) -> Response:
    """Grant credits: a double-entry transfer from the network's mint, with the granting admin in its memo."""
    memo = f"granted by admin account {caller.account_id}" + (f": {body.memo}" if body.memo else "")
    account = await svc.ledger.grant_credits(account_id, round(body.amount * MICRO), memo)
    return data(person_view(account))


@router.post("/accounts/{account_id}/suspend")
async def suspend(account_id: AccountPath, body: Suspension, caller: AdminWriter, svc: Svc) -> Response:
    if account_id == caller.account_id:
        raise Conflict("an admin cannot suspend their own account")
    account = await svc.ledger.set_suspended(account_id, body.reason)
    await svc.revoked(Notice("account", account_id))
    return data(person_view(account))


@router.post("/accounts/{account_id}/reinstate")
async def reinstate(account_id: AccountPath, _: AdminWriter, svc: Svc) -> Response:
    account = await svc.ledger.set_suspended(account_id, None)
    await svc.revoked(Notice("account", account_id))
    return data(person_view(account))


@router.post("/accounts/{account_id}/role")
async def set_role(account_id: AccountPath, body: Role, caller: AdminWriter, svc: Svc) -> Response:
    if account_id == caller.account_id and not body.is_admin:
        raise Conflict("an admin cannot take their own admin role; another admin can")
    account = await svc.ledger.set_admin(account_id, body.is_admin)
    await svc.revoked(Notice("account", account_id))
    return data(person_view(account))


@router.get("/hosts")
async def list_hosts(_: AdminReader, svc: Svc) -> Response:
    """The fleet, with each operator suspension and why, from the ledger; then the suspended hosts placement does
    not know now (offline, or not rejoined since its restart: they stay suspended when they join)."""
    suspended = {host.id: host for host in await svc.ledger.suspended_hosts()}
    fleet = await svc.jobs.hosts()
    views = [{**host_view(s, await svc.ledger.karma_score(s.host_id)), **_suspension(suspended.pop(s.host_id, None))}
             for s in fleet]
    views += [_absent_view(host) for host in suspended.values()]
    return page(views, len(views), len(views), 0)


@router.post("/hosts/{host_id}/suspend")
async def suspend_host(host_id: HostPath, body: Suspension, caller: AdminWriter, svc: Svc) -> Response:
    """Take a host out of placement: it gets no new jobs (its running ones finish) until reinstated, across
    its rejoins and the coordinator's restarts (the ledger holds it; placement hears of it next). 404 for a
    host the ledger does not know."""
    host = await svc.ledger.suspend_host(host_id, f"{body.reason} (admin account {caller.account_id})")
    await svc.placement.suspend_async(HostId(host_id), host.suspended_reason or body.reason)
    return data(await _host(host_id, svc))


@router.post("/hosts/{host_id}/reinstate")
async def reinstate_host(host_id: HostPath, _: AdminWriter, svc: Svc) -> Response:
    await svc.ledger.reinstate_host(host_id)
    await svc.placement.reinstate_async(HostId(host_id))
    return data(await _host(host_id, svc))


async def may_control(caller: Caller, host_id: HostId, svc: Services) -> bool:
    """Whether ``caller`` may pause, resume or drain ``host_id``: an admin, or the account that owns the host."""
    if caller.is_admin:
        return True
    identity = await svc.ledger.host_identity(host_id)
    return identity is not None and identity.owner_account_id == caller.account_id


async def control_host(host_id: str, command: Command, caller: Caller, note: HostNote | None,
                       svc: Services) -> Response:
    """Pause, resume or drain a host through its agent, for its owner or an admin (both routers use it)."""
    from archipelag.bridge.client import bridged

    hid = HostId(host_id)
    if not await may_control(caller, hid, svc):
        raise Forbidden(f"only the owner of host {host_id} or an admin may {command} it")
    who = f"admin account {caller.account_id}" if caller.is_admin else f"its owner (account {caller.account_id})"
    done = {Command.PAUSE: "paused", Command.DRAIN: "draining: leaves when its running jobs finish"}.get(command)
    reason = "" if done is None else f"{done} by {who}" + (f": {note.reason}" if note and note.reason else "")
    try:
        by = Controller.ADMIN if caller.is_admin else Controller.OWNER
        view = await bridged(svc.settings, hid).control_async(command, by, reason)
    except HostLost:
        raise NotFound(f"host {host_id} is not joined (no running agent answers)", host_id=host_id) from None
    return data({**await _host(host_id, svc), "control": view.state.as_dict(), "running_jobs": list(view.running)})


@router.post("/hosts/{host_id}/pause")
async def pause_host(host_id: HostPath, caller: Writer, svc: Svc, body: HostNote | None = None) -> Response:
    """The host takes no new jobs; its running ones continue (until resumed)."""
    return await control_host(host_id, Command.PAUSE, caller, body, svc)


@router.post("/hosts/{host_id}/resume")
async def resume_host(host_id: HostPath, caller: Writer, svc: Svc) -> Response:
    """A paused host takes jobs again (a host outside its owner's schedule is paused again by it)."""
    return await control_host(host_id, Command.RESUME, caller, None, svc)


@router.post("/hosts/{host_id}/drain")
async def drain_host(host_id: HostPath, caller: Writer, svc: Svc, body: HostNote | None = None) -> Response:
    """The host takes no new jobs, lets its running ones finish, then leaves the network."""
    return await control_host(host_id, Command.DRAIN, caller, body, svc)


async def _host(host_id: str, svc: Services) -> dict[str, object]:
    """A host as placement sees it, with the ledger's word on its operator's suspension; one placement does not
    know now as the ledger recorded it (else only its id)."""
    snapshot = next((s for s in await svc.jobs.hosts() if s.host_id == host_id), None)
    try:
        host: Host | None = await svc.ledger.get_host(host_id)
    except NotFound:
        host = None
    if snapshot is not None:
        return {**host_view(snapshot, await svc.ledger.karma_score(host_id)), **_suspension(host)}
    if host is not None:
        return _absent_view(host)
    return {"id": host_id, "status": "unknown", **_suspension(None)}


def _suspension(host: Host | None) -> dict[str, object]:
    """The operator's suspension of ``host`` as the ledger holds it (None: the host is not suspended by one)."""
    return {"suspended_reason": host.suspended_reason if host is not None else None,
            "suspended_at": iso(host.suspended_at) if host is not None else None}


def _absent_view(host: Host) -> dict[str, object]:
    """A host placement does not know now, as the ledger recorded it: suspended if an operator suspended it."""
    status = HostStatus.SUSPENDED if host.suspended_at is not None else HostStatus.OFFLINE
    return {"id": host.id, "name": host.name, "status": str(status), "region": host.region,
            "karma_score": host.karma_score, "active_jobs": host.active_jobs, **_suspension(host)}


@router.post("/invites", status_code=201)
async def create_invite(body: InviteCreate, caller: AdminWriter, svc: Svc) -> Response:
    """An invitation code (shown once) for a network whose sign-up policy is ``invite``; optionally for one
    address."""
    invite = await svc.ledger.create_invite(caller.account_id, body.email, svc.settings.invite_ttl_s)
    return data({"invite_code": invite.code, "email": invite.email, "expires_at": iso(invite.expires_at)},
                status_code=201)


@router.get("/stats")
async def stats(_: AdminReader, svc: Svc) -> Response:
    """Accounts, jobs by status, credits granted and in escrow, hosts by status, the queue."""
    numbers = await svc.ledger.network_stats()
    hosts = await svc.jobs.hosts()
    by_status: dict[str, int] = {}
    for host in hosts:
        by_status[str(host.status)] = by_status.get(str(host.status), 0) + 1
    credits = {name.removesuffix("_micro"): numbers.pop(name) / MICRO
               for name in [n for n in numbers if n.endswith("_micro")]}
    return data({**numbers, **credits, "hosts": len(hosts), "hosts_by_status": by_status,
                 "signup_policy": svc.settings.signup_policy})
