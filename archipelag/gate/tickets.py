"""Job tickets: the coordinator's signed permission for one host to start one job attempt.

Ray lets any member of a cluster run code on any node, so a host's Ray workers are not trusted with its Docker
engine (DESIGN §10, containment 1). Containers start only through the host's gate (gate/server.py), and the gate
starts nothing without a ticket the coordinator signed: which job, on which host, which workload artifact, the
digest of the job's input, the limits of the workload's signed tier, and an expiry. Each ticket starts once.

The coordinator's ticket key lives in its state directory (``coordinator_key``); hosts learn its public half
when they enrol (the sealed join credentials) or, for the hosts of an embedded network, from the same folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

from archipelag import identity
from archipelag.errors import HostRefused, TicketRefused
from archipelag.ids import HostId, JobId, WorkloadSlug
from archipelag.runtimes.base import JobSpec
from archipelag.sandbox import Limits

PURPOSE = b"archipelag/job-ticket/v1|"
DEFAULT_TTL_S = 120.0  # from dispatch to the container's start, not the job's length


@dataclass(frozen=True)
class JobTicket:
    job_id: JobId
    host_id: HostId
    workload: WorkloadSlug
    # The artifact's pin (a container's image ID, a module's SHA-256) as the coordinator's catalog has it; empty
    # where that catalog does not pin one, and the host's signed catalog alone says which artifact the slug is.
    artifact: str
    input_sha256: str
    limits: Limits
    issued_at: float
    expires_at: float
    nonce: str  # a gate starts each ticket once


@dataclass(frozen=True)
class SignedTicket:
    body: str  # the ticket's canonical JSON, exactly as signed
    signature: str  # Ed25519, hex


def input_digest(job_input: dict[str, Any]) -> str:
    # ASCII with escapes: a lone surrogate a request's JSON may carry has no UTF-8, and must not crash the signer
    canonical = json.dumps(job_input, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def artifact_of(spec: JobSpec) -> str:
    return spec.workload.image_id or spec.workload.sha256 or ""


def issue(key: SigningKey, spec: JobSpec, host_id: HostId, now: float,
          ttl_s: float = DEFAULT_TTL_S) -> SignedTicket:
    ticket = JobTicket(spec.job_id, host_id, spec.workload.slug, artifact_of(spec), input_digest(spec.input),
                       spec.limits, now, now + ttl_s, secrets.token_hex(16))
    body = json.dumps(dataclasses.asdict(ticket), sort_keys=True, separators=(",", ":"))
    return SignedTicket(body, key.sign(PURPOSE + body.encode()).signature.hex())


def verify(signed: SignedTicket | None, coordinator_keys: tuple[str, ...], host_id: HostId, spec: JobSpec,
           now: float) -> JobTicket:
    """The ticket, once it is proven to be the coordinator's for this job on this host with this input and still
    valid; TicketRefused otherwise. The gate then runs the job within ``ticket.limits`` (already the tier's)."""
    if signed is None:
        raise TicketRefused(f"job {spec.job_id}: no ticket; this host starts containers only for the coordinator")
    if not any(_signed_by(signed, key) for key in coordinator_keys):
        raise TicketRefused(f"job {spec.job_id}: the ticket is not signed by the coordinator")
    try:
        raw = json.loads(signed.body)
        ticket = JobTicket(**{**raw, "limits": Limits(**raw["limits"])})
    except (TypeError, ValueError, KeyError):
        raise TicketRefused(f"job {spec.job_id}: the ticket is malformed") from None
    wrong = [what for what, ok in (
        ("job", ticket.job_id == spec.job_id), ("host", ticket.host_id == host_id),
        ("workload", ticket.workload == spec.workload.slug),
        ("artifact", not ticket.artifact or ticket.artifact == artifact_of(spec)),
        ("input", ticket.input_sha256 == input_digest(spec.input))) if not ok]
    if wrong:
        raise TicketRefused(f"job {spec.job_id}: the ticket is for another {', '.join(wrong)}")
    if not ticket.issued_at - 60 <= now <= ticket.expires_at:
        raise TicketRefused(f"job {spec.job_id}: the ticket expired (or is not valid yet); check the host's clock")
    return ticket


def _signed_by(signed: SignedTicket, public_key_hex: str) -> bool:
    try:
        identity.verify_key(public_key_hex).verify(PURPOSE + signed.body.encode(), bytes.fromhex(signed.signature))
        return True
    except (BadSignatureError, HostRefused, ValueError):
        return False


def key_path(state_dir: Path) -> Path:
    return state_dir / "coordinator" / "ticket.key"


def coordinator_key(state_dir: Path) -> SigningKey:
    """The coordinator's ticket key, made (mode 0600) the first time."""
    return identity.load_or_create_key(key_path(state_dir))


def coordinator_public_key(state_dir: Path) -> str:
    return identity.public_hex(coordinator_key(state_dir))


Signer = Callable[[JobSpec, HostId], JobSpec]


def signer(state_dir: Path, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.time) -> Signer:
    """What the dispatcher hands a host: a container job with its ticket for that host (WASM runs in the agent
    itself and needs none)."""
    key = coordinator_key(state_dir)

    def sign(spec: JobSpec, host_id: HostId) -> JobSpec:
        if spec.workload.runtime != "container":
            return spec
        return replace(spec, ticket=issue(key, spec, host_id, clock(), ttl_s))

    return sign


def trusted_keys(configured: list[str], state_dir: Path) -> tuple[str, ...]:
    """The coordinator keys a host's gate trusts: those configured (from enrolment), else, on the coordinator's
    own machine, its key's public half."""
    if configured:
        return tuple(configured)
    return (coordinator_public_key(state_dir),) if key_path(state_dir).exists() else ()
