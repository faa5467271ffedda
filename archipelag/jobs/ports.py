"""Ports: what the jobs core needs of its collaborators, as Protocols (the ledger, placement, hosts).

In a network they are ``LedgerClient``, ``PlacementClient`` and ``HostAgentClient``; tests pass the same
clients over in-process stand-ins, or scripted hosts.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any, Protocol

from archipelag.ids import HostId, JobId
from archipelag.ledger.karma_rules import KarmaKind
from archipelag.ledger.records import Host, Job, JobBatch
from archipelag.lifecycle import HostStatus, JobStatus
from archipelag.placement.scoring import HostSnapshot, JobRequest
from archipelag.protocol import Event
from archipelag.runtimes.base import JobSpec


class HostRunner(Protocol):
    """One host: runs a job and yields its events in batches (an empty batch: the host is alive, the job quiet)."""

    def run_batches(self, spec: JobSpec) -> AsyncGenerator[list[Event], None]: ...

    async def cancel(self, job_id: JobId, reason: str = ...) -> bool: ...


class Hosts(Protocol):
    def __call__(self, host_id: HostId) -> HostRunner: ...


class Placement(Protocol):
    async def rank_async(self, request: JobRequest) -> list[HostId]: ...

    async def hosts_async(self) -> list[HostSnapshot]: ...

    def job_assigned(self, host_id: HostId) -> None: ...

    def job_released(self, host_id: HostId) -> None: ...

    def mark_offline(self, host_id: HostId, reason: str) -> None: ...

    def set_karma(self, host_id: HostId, karma: float) -> None: ...

    async def suspend_async(self, host_id: HostId, reason: str) -> None: ...


class JobLedger(Protocol):
    async def create_job(self, account_id: int, workload_slug: str, job_input: Mapping[str, Any],
                         region: str | None, priority: int, reserve_micro: int, job_id: JobId) -> Job: ...

    async def transition(self, job_id: JobId, to: JobStatus, reason: str | None = None, **fields: Any) -> Job: ...

    async def start_job(self, job_id: JobId, host_id: str, attempt: int) -> None: ...

    async def requeue(self, job_id: JobId, reason: str) -> Job: ...

    async def finish(self, job_id: JobId, to: JobStatus, *, output: str | None, error: str | None,
                     usage: Mapping[str, Any], events: list[dict[str, Any]], price_micro: int,
                     host_id: str | None, karma: KarmaKind | None = None, compute_s: float = 0.0) -> Job: ...

    async def save_events(self, checkpoints: Mapping[JobId, list[dict[str, Any]]]) -> None: ...

    async def get_job(self, job_id: str, account_id: int | None = None) -> Job: ...

    async def unfinished_jobs(self) -> list[Job]: ...

    async def create_batch(self, account_id: int, workload_slug: str, inputs: list[dict[str, Any]],
                           reserves_micro: list[int], region: str | None, priority: int, *, merge_strategy: str,
                           fail_mode: str, max_parallelism: int | None, bid_price_micro: int | None) -> JobBatch: ...

    async def get_batch(self, parent_id: str, account_id: int | None = None) -> JobBatch: ...

    async def cancel_waiting_children(self, parent_id: str, child_ids: list[str], reason: str) -> list[JobId]: ...

    async def stored_output_events(self, job_id: str) -> list[dict[str, Any]]: ...

    async def upsert_host(self, host_id: str, name: str, region: str, capabilities: Mapping[str, Any],
                          status: HostStatus) -> None: ...

    async def record_karma(self, host_id: str, kind: KarmaKind, job_id: str | None = None,
                           reason: str | None = None) -> None: ...

    async def karma_score(self, host_id: str) -> float: ...

    async def list_hosts(self) -> list[Host]: ...
