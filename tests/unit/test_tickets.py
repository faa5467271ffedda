"""Job tickets (gate/tickets.py): a host's gate starts a container only for the coordinator's ticket for that very
job, host, artifact and input, while it is valid. Each way to get one wrong is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from archipelag import identity
from archipelag.catalog import Manifest
from archipelag.errors import TicketRefused
from archipelag.gate import tickets
from archipelag.ids import HostId, JobId, WorkloadSlug
from archipelag.runtimes.base import JobSpec
from archipelag.sandbox import Limits

NOW = 1_800_000_000.0
HOST = HostId("h-victim")
LIMITS = Limits(memory_mb=256, timeout_s=60, network=False, gpu=False, fuel=0, output_bytes=1 << 20,
                line_bytes=64 << 10)


def a_spec(runtime: str = "container", job_input: dict[str, object] | None = None) -> JobSpec:
    manifest = Manifest(slug=WorkloadSlug("doc-tools"), name="doc tools", description="", runtime=runtime,
                        trust_level=1, price_micro=10_000, image="archipelag/doc-tools:latest",
                        image_id="sha256:" + "ab" * 32 if runtime == "container" else None,
                        sha256="cd" * 32 if runtime == "wasm" else None)
    return JobSpec(JobId("job-1"), manifest, job_input or {"text": "hello"}, LIMITS)


@pytest.fixture
def key() -> SigningKey:
    return identity.generate_key()


def keys_of(key: SigningKey) -> tuple[str, ...]:
    return (identity.public_hex(key),)


def test_the_coordinators_ticket_for_this_job_is_accepted(key: SigningKey) -> None:
    spec = a_spec()
    ticket = tickets.verify(tickets.issue(key, spec, HOST, NOW), keys_of(key), HOST, spec, NOW + 5)
    assert (ticket.job_id, ticket.host_id, ticket.limits) == (spec.job_id, HOST, LIMITS)


@pytest.mark.parametrize(("case", "why"), [
    ("none", "no ticket"),
    ("other key", "not signed by the coordinator"),
    ("other host", "another host"),
    ("other job", "another job"),
    ("other input", "another input"),
    ("other artifact", "another artifact"),
    ("expired", "expired"),
    ("edited body", "not signed by the coordinator"),
    ("garbage signature", "not signed by the coordinator"),
])
def test_a_wrong_ticket_is_refused(key: SigningKey, case: str, why: str) -> None:
    spec = a_spec()
    signed: tickets.SignedTicket | None = tickets.issue(key, spec, HOST, NOW)
    host, at, checked = HOST, NOW + 5, spec
    if case == "none":
        signed = None
    elif case == "other key":
        signed = tickets.issue(identity.generate_key(), spec, HOST, NOW)
    elif case == "other host":
        host = HostId("h-someone-else")
    elif case == "other job":
        checked = dataclasses.replace(spec, job_id=JobId("job-2"))
    elif case == "other input":
        checked = dataclasses.replace(spec, input={"text": "rm -rf /"})
    elif case == "other artifact":
        checked = dataclasses.replace(spec, workload=dataclasses.replace(spec.workload, image_id="sha256:" + "ee" * 32))
    elif case == "expired":
        at = NOW + tickets.DEFAULT_TTL_S + 1
    elif case == "edited body":
        assert signed is not None
        signed = dataclasses.replace(signed, body=signed.body.replace('"memory_mb":256', '"memory_mb":65536'))
    elif case == "garbage signature":
        assert signed is not None
        signed = dataclasses.replace(signed, signature="zz")
    with pytest.raises(TicketRefused, match=why):
        tickets.verify(signed, keys_of(key), host, checked, at)


def test_the_signer_gives_container_jobs_a_ticket_for_their_host(tmp_path: Path) -> None:
    sign = tickets.signer(tmp_path, clock=lambda: NOW)
    container, wasm = sign(a_spec(), HOST), sign(a_spec("wasm"), HOST)
    assert wasm.ticket is None  # WASM runs in the agent itself, never through the gate
    trusted = tickets.trusted_keys([], tmp_path)
    assert tickets.verify(container.ticket, trusted, HOST, container, NOW).host_id == HOST
    assert (tmp_path / "coordinator" / "ticket.key").stat().st_mode & 0o077 == 0


def test_an_unpinned_ticket_leaves_the_artifact_to_the_hosts_signed_catalog(key: SigningKey) -> None:
    unpinned = a_spec()
    unpinned = dataclasses.replace(unpinned, workload=dataclasses.replace(unpinned.workload, image_id=None))
    signed = tickets.issue(key, unpinned, HOST, NOW)  # the coordinator's workloads folder pins no image
    assert tickets.verify(signed, keys_of(key), HOST, a_spec(), NOW).artifact == ""


def test_an_input_with_a_lone_surrogate_is_signed_and_checked(key: SigningKey) -> None:
    spec = a_spec(job_input={"text": "\ud800 half a pair"})  # valid JSON (an escape), no UTF-8
    assert tickets.verify(tickets.issue(key, spec, HOST, NOW), keys_of(key), HOST, spec, NOW).job_id == spec.job_id
