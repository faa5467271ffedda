"""The red team's receipt attack, at the dispatcher: a dishonest host ends a job with a receipt it forged, and the
coordinator refuses it — the job fails for the host (``bad_receipt``, karma), the user pays nothing.

Each host here is a real ``HostAgent`` holding a real key file, as a host's agent does, behind the real jobs core
(JobService: dispatcher, relay) and ledger (SQLite), with the host's key enrolled in the ledger. Why not from the
red team's joined node (tests/security/test_red_team.py): a receipt reaches the coordinator only in the stream of
the host agent the dispatcher itself called, so a node that is not the job's host has no way to hand one in; the
attacker that matters is the job's own host, which runs its agent as it likes — here, an agent patched to inflate
its usage after signing, and one that signs with a key of its own rather than the one it enrolled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from builders import NOW, a_host
from nacl.signing import SigningKey

from archipelag import identity
from archipelag.actors.host_agent import HostAgent
from archipelag.catalog import Manifest
from archipelag.ids import HostId, JobId, WorkloadSlug
from archipelag.jobs.service import JobService
from archipelag.ledger import Ledger
from archipelag.ledger.client import LedgerClient
from archipelag.ledger.karma_rules import KarmaKind
from archipelag.lifecycle import JobStatus
from archipelag.placement.client import PlacementClient
from archipelag.protocol import Event
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.settings import Settings

CHAT = Manifest(slug=WorkloadSlug("llm-chat"), name="chat", description="", runtime="wasm", trust_level=0,
                price_micro=10_000, token_price_micro=100)
CREDITS = 1_000_000
HOST = HostId("island-1")
SAID = [{"type": "token", "content": t} for t in ("The", " sea", " is", " calm")]
DONE = {"type": "done", "usage": {"prompt_tokens": 5, "completion_tokens": 4}}
Tamper = Callable[[list[Event]], list[Event]]


class ScriptedModel:
    """The runtime: a model that says SAID."""

    name = "wasm"

    def run(self, spec: JobSpec, cancel: CancelToken) -> Iterator[Event]:
        yield from (dict(e) for e in [*SAID, DONE])

    def warm(self, now: float) -> frozenset[str]:
        return frozenset()

    def close(self) -> None:
        pass


class AgentHost:
    """The dispatcher's port over a real HostAgent; ``tamper`` rewrites each batch after the agent made it."""

    def __init__(self, agent: HostAgent, tamper: Tamper) -> None:
        self.agent, self.tamper = agent, tamper

    async def run_batches(self, spec: JobSpec) -> AsyncIterator[list[Event]]:
        batches = self.agent.run_batched(spec, keepalive_s=0.2)
        try:
            while (batch := await asyncio.to_thread(next, batches, None)) is not None:
                yield self.tamper(batch)
        finally:
            batches.close()

    async def cancel(self, job_id: JobId, reason: str = "") -> bool:
        return self.agent.cancel(job_id, reason)


def run_one_job(tmp_path: Path, key: SigningKey, tamper: Tamper = lambda batch: batch) -> tuple[Ledger, Any, int]:
    """A chat job on HOST, whose agent signs with ``key`` (its enrolled key is the one in its key file)."""
    settings = Settings(state_dir=tmp_path, lease_s=2.0, queue_timeout_s=5.0)
    enrolled = identity.host_key(tmp_path, HOST)  # the host's key file
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    ledger.sync_catalog([CHAT])
    account = ledger.create_account("u@example.org", CREDITS).id
    ledger.enrol_host(HOST, identity.public_hex(enrolled), account, HOST, "eu-west")
    placement = PlacementClient.local(settings, clock=lambda: NOW, catalog={CHAT.slug: CHAT})
    placement.register(a_host(HOST, runtimes=frozenset({"wasm"})))
    host = AgentHost(HostAgent(HOST, {"wasm": ScriptedModel()}, 2, signer=identity.key_signer(key, HOST)), tamper)
    service = JobService(settings, {CHAT.slug: CHAT}, LedgerClient.local(ledger), placement, lambda _: host,
                         identities=LedgerClient.local(ledger).host_identity)

    async def scenario() -> Any:
        job = await service.submit(account, "llm-chat", {"messages": [{"role": "user", "content": "hi"}],
                                                         "max_tokens": 16}, None)
        async for _ in service.follow(job.id):
            pass
        await service.close()
        return ledger.get_job(job.id)

    return ledger, asyncio.run(scenario()), account


def a_key_file(tmp_path: Path) -> SigningKey:
    return identity.load_or_create_key(identity.named_key_path(tmp_path, HOST))


def refused(ledger: Ledger, job: Any, account: int) -> None:
    assert job.status is JobStatus.FAILED and job.receipt is None, job.error
    assert "receipt was refused" in (job.error or "")  # not the usage bounds: 16 tokens is within max_tokens
    assert ledger.stored_output_events(job.id)[-1]["code"] == "bad_receipt"
    assert job.credits_used_micro == 0 and ledger.balance_micro(account) == CREDITS
    assert [e.kind for e in ledger.karma_events(HOST)] == [KarmaKind.BAD_RECEIPT]


def test_an_honest_agents_receipt_is_accepted_and_the_job_charged(tmp_path: Path) -> None:
    ledger, job, account = run_one_job(tmp_path, a_key_file(tmp_path))
    assert job.status is JobStatus.SUCCEEDED and job.output == "The sea is calm", job.error
    assert job.receipt is not None and job.receipt.usage == DONE["usage"]
    assert ledger.balance_micro(account) == CREDITS - job.credits_used_micro > 0


def test_an_agent_that_reports_more_tokens_than_it_signed_is_refused_and_the_user_pays_nothing(
        tmp_path: Path) -> None:
    def inflate(batch: list[Event]) -> list[Event]:
        return [{**e, "usage": {"prompt_tokens": 5, "completion_tokens": 16}} if e["type"] == "done" else e
                for e in batch]

    refused(*run_one_job(tmp_path, a_key_file(tmp_path), inflate))


def test_an_agent_that_signs_with_a_key_that_is_not_its_enrolled_one_is_refused(tmp_path: Path) -> None:
    a_key_file(tmp_path)  # the key it enrolled
    refused(*run_one_job(tmp_path, identity.generate_key()))
