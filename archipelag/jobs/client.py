"""JobsClient: the typed way to reach the jobs core (the JobsActor on the head, over its socket; or a JobService in
this process for tests without Ray); the API's replicas hold one each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

from archipelag.errors import ArchipelagError
from archipelag.ids import HostId, JobId
from archipelag.jobs.relay import Batch
from archipelag.jobs.service import JobService
from archipelag.ledger.records import Job, JobBatch
from archipelag.metrics.network import NetworkStatus, RequestCounts
from archipelag.nodes import services_dir
from archipelag.placement.scoring import HostSnapshot
from archipelag.remote import Calls, LocalCalls, RayCalls
from archipelag.settings import Settings
from archipelag.socket_calls import SocketCalls

ACTOR_NAME = "jobs"
CALLED: Final = ("submit", "submit_and_follow", "read", "follow", "submit_batch", "get_batch", "cancel", "set_asks",
                 "set_bid_preference", "hosts", "exposition", "status", "record_requests")  # over the socket


def socket_path(settings: Settings) -> Path:
    return services_dir(settings.state_dir) / "jobs.sock"


class JobsClient:
    def __init__(self, calls: Calls) -> None:
        self._calls = calls

    @classmethod
    def start(cls, settings: Settings, resources: dict[str, float] | None = None) -> JobsClient:
        """Create the named, detached jobs actor (or find the running one) and return at once; it resumes
        unfinished jobs as it starts, and calls wait for that."""
        import ray

        from archipelag.jobs.actor import JobsActor

        actor: Any = ray.remote(JobsActor)
        handle = actor.options(
            name=ACTOR_NAME, namespace=settings.ray_namespace, lifetime="detached", get_if_exists=True,
            num_cpus=0, max_restarts=-1, max_task_retries=0, resources=resources or {},
            max_concurrency=10_000,  # every reader's long wait is a pending call
        ).remote(settings)
        handle.start.remote()
        return cls(RayCalls(handle, "jobs service"))

    @classmethod
    def connect(cls, settings: Settings) -> JobsClient:
        """The running jobs service, over its socket: the caller runs on its machine (the API's replicas, on the
        coordinator's resource). A Ray call and a streamed item each took 1–2.5 ms of the first token's path there,
        a frame over the socket 0.1–0.4 ms (README, Benchmarks)."""
        import ray

        try:
            actor = RayCalls(ray.get_actor(ACTOR_NAME, namespace=settings.ray_namespace), "jobs service")
        except ValueError:
            raise ArchipelagError("the jobs service is not running; start the coordinator first") from None

        async def wake() -> None:  # a restarted actor listens again once started
            await actor.call("start")

        return cls(SocketCalls(socket_path(settings), "jobs service", wake))

    @classmethod
    def local(cls, service: JobService) -> JobsClient:
        return cls(LocalCalls(service))

    async def submit(self, account_id: int, slug: str, job_input: dict[str, Any], region: str | None,
                     priority: int = 0, bid_micro: int | None = None) -> Job:
        """The job, queued; ``bid_micro``: the most it pays per job (None: the bid chain's)."""
        job: Job = await self._calls.call("submit", account_id, slug, job_input, region, priority, bid_micro)
        return job

    async def submit_and_follow(self, account_id: int, slug: str, job_input: dict[str, Any], region: str | None,
                                priority: int = 0, bid_micro: int | None = None) -> tuple[Job, AsyncIterator[Batch]]:
        """``submit`` and ``follow`` in one call: the job as the ledger created it (or the submission's error,
        raised here), and its events as ``follow`` gives them. The stream does not ride out a restart of the
        jobs service; follow the job again from its last event then."""
        stream = self._calls.stream("submit_and_follow", account_id, slug, job_input, region, priority, bid_micro)
        job: Job = await anext(stream)
        return job, stream  # after the job, batches only

    async def read(self, job_id: JobId, after: int = -1, wait_s: float = 0.0,
                   account_id: int | None = None) -> Batch:
        """Events after ``after``; with ``account_id``, NotFound (404) unless the job is that account's."""
        batch: Batch = await self._calls.call("read", job_id, after, wait_s, account_id)
        return batch

    async def follow(self, job_id: JobId, after: int = -1, account_id: int | None = None) -> AsyncIterator[Batch]:
        """The job's events after ``after``, a batch at a time as the relay has them, until the stream ends (an
        empty batch now and then while nothing happens). With ``account_id``, the first batch raises NotFound
        (404) unless the job is that account's."""
        async for batch in self._calls.stream("follow", job_id, after, account_id):
            yield batch

    async def submit_batch(self, account_id: int, slug: str, inputs: list[dict[str, Any]], region: str | None,
                           priority: int = 0, *, merge_strategy: str = "concat", fail_mode: str = "best_effort",
                           max_parallelism: int | None = None, bid_price_micro: int | None = None) -> JobBatch:
        """A batch of child jobs, one per input, released ``max_parallelism`` at a time; 422/413 naming the first
        wrong input, 402 for the whole batch's price, 503 when no host could ever run it — nothing created."""
        batch: JobBatch = await self._calls.call(
            "submit_batch", account_id, slug, inputs, region, priority, merge_strategy=merge_strategy,
            fail_mode=fail_mode, max_parallelism=max_parallelism, bid_price_micro=bid_price_micro)
        return batch

    async def get_batch(self, parent_id: JobId, account_id: int | None = None) -> JobBatch:
        """The batch and its children; with ``account_id``, NotFound (404) unless it is that account's."""
        batch: JobBatch = await self._calls.call("get_batch", parent_id, account_id)
        return batch

    async def cancel(self, job_id: JobId, reason: str = "cancelled by the user") -> None:
        await self._calls.call("cancel", job_id, reason)

    async def set_asks(self, host_id: HostId, asks: dict[str, int]) -> dict[str, int]:
        """Replace a host's asks (micro-credits by slug or family): stored and handed to placement; 422 naming
        the ones outside the network's bounds (nothing stored then). The asks as stored."""
        return dict(await self._calls.call("set_asks", host_id, asks))

    async def set_bid_preference(self, account_id: int, pattern: str, price_micro: int | None) -> dict[str, int]:
        """Save (None: forget) the account's bid for a workload or family; its saved bids."""
        return dict(await self._calls.call("set_bid_preference", account_id, pattern, price_micro))

    async def hosts(self) -> list[HostSnapshot]:
        return list(await self._calls.call("hosts"))

    async def exposition(self, requests: RequestCounts | None = None) -> str:
        """The network's metrics in Prometheus' text format; ``requests``: the caller's unreported request
        counts, added first."""
        return str(await self._calls.call("exposition", dict(requests) if requests else None))

    async def status(self) -> NetworkStatus:
        status: NetworkStatus = await self._calls.call("status")
        return status

    def record_requests(self, requests: RequestCounts) -> None:
        """Report request counts (fire-and-forget: a lost report loses counts, never a request)."""
        self._calls.send("record_requests", dict(requests))
