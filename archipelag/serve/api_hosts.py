"""Hosts API: enrolment (a machine asks with its key and gets a pairing code; its owner approves the code),
revocation, and the hosts an account owns.

The two routes a machine calls before it belongs to anyone take no key: they are limited per client address
(``enrolments_per_min``) and their bodies are small and validated. A poll must be signed with the enrolling key,
and what an approved host receives (the Ray address and its join credential) is sealed to that key: only the
machine holding it can read it. Approving a code needs an account; wrong codes are limited per account
(``pairing_failures_per_min``), so 6 characters (25⁶ ≈ 2.4·10⁸ codes, 10 minutes each) cannot be guessed.
"""

from __future__ import annotations

import logging
import pathlib
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from archipelag import identity
from archipelag.actors.controls import Command
from archipelag.errors import HostLost, HostRefused, NotFound, ValidationFailed
from archipelag.gate import tickets
from archipelag.ids import HostId
from archipelag.ledger.records import Host, HostIdentity
from archipelag.lifecycle import HostStatus
from archipelag.placement.scoring import HostSnapshot
from archipelag.serve.api_admin import HostNote, control_host
from archipelag.serve.api_jobs import Reader, Svc, Writer
from archipelag.serve.auth import client_address
from archipelag.serve.responses import data, page
from archipelag.serve.services import Services
from archipelag.serve.views import iso
from archipelag.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1")


PublicKey = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="Ed25519 public key, hex")]
HostPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
Claim = StrictBool | StrictInt | StrictFloat | Annotated[StrictStr, Field(max_length=200)] | None


class EnrolRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    public_key: PublicKey
    name: str = Field(min_length=1, max_length=200)
    region: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")
    hardware: dict[Annotated[str, Field(max_length=64)], Claim] = Field(default_factory=dict, max_length=32)


class Poll(BaseModel):
    model_config = ConfigDict(extra="forbid")

    public_key: PublicKey
    at: float = Field(allow_inf_nan=False, description="the host's clock, Unix seconds")
    signature: str = Field(pattern=r"^[0-9a-f]{128}$")


class Approval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=6, max_length=16, pattern=r"^[A-Za-z0-9 -]+$")


Text = Annotated[StrictStr, Field(max_length=200)]
Metric = StrictInt | StrictFloat | Annotated[list[Text], Field(max_length=256)]
HOST_STATUSES = (HostStatus.ONLINE, HostStatus.PAUSED, HostStatus.DRAINING, HostStatus.OFFLINE)


class ProofForm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host_id: str = Field(min_length=1, max_length=64)
    at: float = Field(allow_inf_nan=False, description="the host's clock, Unix seconds")
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    signature: str = Field(pattern=r"^[0-9a-f]{128}$")

    def proof(self) -> identity.Proof:
        return identity.Proof(HostId(self.host_id), self.at, self.digest, bytes.fromhex(self.signature))


class Registration(BaseModel):
    """A host's snapshot as it signed it (``identity.plain`` of a ``HostSnapshot``); the hardware check is
    placement's own, never the host's."""

    model_config = ConfigDict(extra="forbid")

    host_id: str = Field(min_length=1, max_length=64)
    name: Text
    region: Annotated[StrictStr, Field(max_length=64)]
    status: HostStatus
    runtimes: Annotated[list[Text], Field(max_length=16)]
    cpu_cores: StrictInt = Field(ge=0)
    ram_mb: StrictInt = Field(ge=0)
    free_ram_mb: StrictInt = Field(ge=0)
    gpu_model: Text | None
    vram_mb: StrictInt = Field(ge=0)
    free_vram_mb: StrictInt = Field(ge=0)
    slots: StrictInt = Field(ge=0, le=10_000)
    active_jobs: StrictInt = Field(ge=0)
    karma: StrictFloat = Field(allow_inf_nan=False)
    accepts: Annotated[list[Text], Field(max_length=256)]
    warm: Annotated[list[Text], Field(max_length=256)]
    speed: StrictFloat = Field(allow_inf_nan=False)
    last_heartbeat_at: StrictFloat = Field(allow_inf_nan=False)
    node_id: Annotated[StrictStr, Field(max_length=64)]
    hardware: None = None
    asks: dict[Text, StrictInt] = Field(max_length=256)

    def snapshot(self) -> HostSnapshot:
        return HostSnapshot(
            host_id=HostId(self.host_id), name=self.name, region=self.region, status=self.status,
            runtimes=frozenset(self.runtimes), cpu_cores=self.cpu_cores, ram_mb=self.ram_mb,
            free_ram_mb=self.free_ram_mb, gpu_model=self.gpu_model, vram_mb=self.vram_mb,
            free_vram_mb=self.free_vram_mb, slots=self.slots, active_jobs=self.active_jobs, karma=self.karma,
            accepts=tuple(self.accepts), warm=frozenset(self.warm), speed=self.speed,
            last_heartbeat_at=self.last_heartbeat_at, node_id=self.node_id, asks=dict(self.asks))


class SignedReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    purpose: Literal["register", "heartbeat", "status"]
    report: dict[Annotated[str, Field(max_length=64)], Any] = Field(max_length=64)
    proof: ProofForm


class Revocation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="revoked by its owner", min_length=1, max_length=500)


def owned_view(host: Host) -> dict[str, Any]:
    return {"id": host.id, "name": host.name, "region": host.region, "status": str(host.status),
            "owner_account_id": str(host.owner_account_id) if host.owner_account_id is not None else None,
            "karma_score": host.karma_score, "active_jobs": host.active_jobs, "created_at": iso(host.created_at),
            "revoked": host.revoked_at is not None, "revoked_at": iso(host.revoked_at)}


def poll_report(public_key: str) -> dict[str, str]:
    """What a host signs to ask for its enrolment (``identity.sign(key, "poll", host_id_for(key), at, …)``)."""
    return {"public_key": public_key}


def join_credentials(settings: Settings) -> dict[str, Any]:
    """What an approved host needs to join the hosts' Ray cluster; sealed to its key before it leaves."""
    token_path = settings.ray_env().get("RAY_AUTH_TOKEN_PATH")
    return {
        "ray_address": settings.public_ray_address or f"{settings.ray_head_ip}:{settings.ray_head_port}",
        "ray_auth": settings.ray_auth,
        "ray_token": pathlib.Path(token_path).read_text().strip() if token_path else None,
        "ray_namespace": settings.ray_namespace,
        "trusted_catalog_keys": list(settings.trusted_catalog_keys),
        "ticket_keys": list(tickets.trusted_keys(settings.trusted_ticket_keys, settings.state_dir)),
    }


@router.post("/hosts/enrol", status_code=201)
async def enrol(body: EnrolRequest, request: Request, svc: Svc) -> Response:
    """A machine asks to join: it gets a pairing code for its owner to approve (no key needed)."""
    svc.enrolments.check(client_address(request))
    code, expires_at = await svc.ledger.request_pairing(body.public_key, body.name, body.region, body.hardware,
                                                        svc.settings.pairing_ttl_s)
    return data({"pairing_code": code, "host_id": identity.host_id_for(body.public_key),
                 "expires_at": iso(expires_at)}, status_code=201)


@router.post("/hosts/enrol/poll")
async def poll(body: Poll, request: Request, svc: Svc) -> Response:
    """A waiting machine asks, signed with its key, whether its owner approved it: 202 while waiting, 200 with
    its host id and its credentials sealed to its key once approved, 403 once revoked, 404 with no request."""
    svc.polls.check(client_address(request))
    host_id = identity.host_id_for(body.public_key)
    proof = identity.Proof(host_id, body.at, identity.digest(poll_report(body.public_key)),
                           bytes.fromhex(body.signature))
    identity.check(proof, "poll", body.public_key, poll_report(body.public_key), time.time(),
                   svc.settings.report_max_skew_s, None)
    status = await svc.ledger.enrolment_status(body.public_key)
    if status is None:
        raise NotFound("no enrolment for this key: ask for a pairing code (POST /api/v1/hosts/enrol)")
    if not isinstance(status, HostIdentity):
        return data({"status": "pending", "expires_at": iso(status.expires_at)}, status_code=202)
    if status.revoked:
        raise HostRefused(f"host {status.host_id} was revoked; it cannot join again with this key")
    sealed = identity.seal(body.public_key, join_credentials(svc.settings))
    return data({"status": "approved", "host_id": status.host_id, "credentials": sealed})


@router.post("/hosts/{host_id}/reports")
async def report(host_id: HostPath, body: SignedReport, request: Request, svc: Svc) -> Response:
    """A host's registration, heartbeat or status change, signed with its key: placement believes only what the
    host's enrolled key signed, lately, once (403 otherwise). No account key: the signature is the credential.
    ``known`` is False when placement does not know the host (it registers again)."""
    svc.host_reports.check((client_address(request), host_id))
    proof = body.proof.proof()
    if proof.host_id != host_id:
        raise HostRefused(f"a report for host {host_id} must be signed as that host")
    hid = HostId(host_id)
    report = _read(body)
    if isinstance(report, HostSnapshot):
        if report.host_id != hid:
            raise HostRefused(f"a registration for host {host_id} must name that host")
        await svc.placement.register_async(report, proof)
        return data({"known": True})
    if isinstance(report, HostStatus):
        await svc.placement.set_status_async(hid, report, proof)
        return data({"known": True})
    return data({"known": await svc.placement.beat_async(hid, report, proof)})


def _read(body: SignedReport) -> HostSnapshot | HostStatus | dict[str, Any]:
    """The report of its purpose, every field of its type (422 otherwise): a registration's snapshot, a status,
    or a heartbeat's metrics (numbers, and lists of workload slugs)."""
    try:
        if body.purpose == "register":
            return Registration.model_validate(body.report).snapshot()
        if body.purpose == "heartbeat":
            return dict(_METRICS.validate_python(body.report))
        status = HostStatus(str(body.report.get("status")))
    except (ValidationError, ValueError) as exc:
        raise ValidationFailed(f"not a {body.purpose} report: {exc}"[:500]) from None
    if set(body.report) != {"status"} or status not in HOST_STATUSES:
        raise ValidationFailed(f"a host reports its status as one of {', '.join(HOST_STATUSES)}")
    return status


_METRICS: TypeAdapter[dict[str, Metric]] = TypeAdapter(dict[Annotated[str, Field(max_length=64)], Metric])


@router.post("/hosts/approve")
async def approve(body: Approval, caller: Writer, svc: Svc) -> Response:
    """The owner approves the code their machine shows: the host is theirs, and may join."""
    try:
        host = await svc.ledger.approve_pairing(caller.account_id, body.code)
    except NotFound:
        svc.pairing_failures.check(caller.account_id)
        raise
    log.info("host %s enrolled by account %s", host.id, caller.account_id)
    return data(owned_view(host))


@router.post("/hosts/{host_id}/revoke")
async def revoke(host_id: HostPath, caller: Writer, svc: Svc, body: Revocation | None = None) -> Response:
    """Cut a host off (its owner, or an admin): out of placement at once, refused from then on; its running jobs
    move to other hosts."""
    reason = (body or Revocation()).reason
    host = await svc.ledger.revoke_host(host_id, caller.account_id, caller.is_admin,
                                        f"{reason} (account {caller.account_id})")
    await svc.placement.forget_async(HostId(host_id))
    await _stop_agent(svc, HostId(host_id))
    return data(owned_view(host))


async def _stop_agent(svc: Services, host_id: HostId) -> None:
    """Its agent goes: the dispatcher sees the host lost and runs its jobs elsewhere (the failover path)."""
    from archipelag.bridge.client import bridged

    try:
        await bridged(svc.settings, host_id).kill()
    except HostLost:
        pass  # not running now, or an API without a network (no bridge)
    except Exception:  # placement already refuses it; a kill that fails leaves its jobs to their leases
        log.warning("the agent of revoked host %s was not stopped", host_id, exc_info=True)


@router.post("/hosts/{host_id}/pause")
async def pause(host_id: HostPath, caller: Writer, svc: Svc, body: HostNote | None = None) -> Response:
    """The owner (or an admin) pauses a host: no new jobs; its running ones continue."""
    return await control_host(host_id, Command.PAUSE, caller, body, svc)


@router.post("/hosts/{host_id}/resume")
async def resume(host_id: HostPath, caller: Writer, svc: Svc) -> Response:
    """A paused host takes jobs again (one outside its owner's schedule is paused again by it)."""
    return await control_host(host_id, Command.RESUME, caller, None, svc)


@router.post("/hosts/{host_id}/drain")
async def drain(host_id: HostPath, caller: Writer, svc: Svc, body: HostNote | None = None) -> Response:
    """The host takes no new jobs, lets its running ones finish, then leaves the network."""
    return await control_host(host_id, Command.DRAIN, caller, body, svc)


@router.get("/account/hosts")
async def my_hosts(caller: Reader, svc: Svc) -> Response:
    """The hosts the caller's account owns (revoked ones too)."""
    hosts = [owned_view(h) for h in await svc.ledger.owned_hosts(caller.account_id)]
    return page(hosts, len(hosts), len(hosts), 0)

