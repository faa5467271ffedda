"""JobsActor: the Ray shell around ``JobService`` — one named, detached actor on the head.

An async actor: the dispatcher, the relay and every reader's wait share one event loop, so no lock is needed.
Ray restarts it if its process dies; the new one resumes unfinished jobs from the ledger (``JobService.start``),
as a restarted coordinator does.

The API's replicas call it over its socket (``socket_calls``; ``JobsClient.connect``), which it opens as it starts:
a replica that finds nobody there asks for ``start`` through Ray, then connects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from archipelag.bridge import client as bridge
from archipelag.catalog import load_catalog
from archipelag.ids import HostId, JobId
from archipelag.jobs.client import CALLED, socket_path
from archipelag.jobs.relay import Batch
from archipelag.jobs.service import JobService
from archipelag.ledger.client import LedgerClient
from archipelag.ledger.records import Job, JobBatch
from archipelag.metrics.network import NetworkStatus, RequestCounts
from archipelag.placement.client import PlacementClient
from archipelag.placement.scoring import HostSnapshot
from archipelag.settings import Settings
from archipelag.socket_calls import CallServer

log = logging.getLogger(__name__)


class JobsActor:
    """A plain class; ``JobsClient.start`` runs it as a named Ray actor."""

    def __init__(self, settings: Settings) -> None:
        logging.basicConfig(level=logging.INFO)
        ledger = LedgerClient.nearby(settings)
        self._service = JobService(settings, load_catalog(settings.workloads_dir), ledger,
                                   PlacementClient.nearby(settings), bridge.BridgeHosts(bridge.socket_path(settings)),
                                   identities=ledger.host_identity)  # every host enrols: receipts are checked
        self._starting: asyncio.Task[None] | None = None
        self._socket = CallServer(self, CALLED, socket_path(settings), "jobs service")

    async def start(self) -> None:
        await self._socket.listen()
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._service.start())
        await asyncio.shield(self._starting)

    async def submit(self, account_id: int, slug: str, job_input: dict[str, Any], region: str | None,
                     priority: int, bid_micro: int | None = None) -> Job:
        await self.start()
        return await self._service.submit(account_id, slug, job_input, region, priority, bid_micro)

    async def read(self, job_id: JobId, after: int, wait_s: float, account_id: int | None) -> Batch:
        await self.start()
        return await self._service.read(job_id, after, wait_s, account_id)

    async def follow(self, job_id: JobId, after: int, account_id: int | None) -> AsyncIterator[Batch]:
        """A Ray streaming generator: each batch goes to the reader as it comes, without a call per batch."""
        await self.start()
        async for batch in self._service.follow(job_id, after, account_id):
            yield batch

    async def submit_and_follow(self, account_id: int, slug: str, job_input: dict[str, Any], region: str | None,
                                priority: int, bid_micro: int | None = None) -> AsyncIterator[Job | Batch]:
        """A Ray streaming generator: the job (or the submission's error), then its batches."""
        await self.start()
        async for item in self._service.submit_and_follow(account_id, slug, job_input, region, priority, bid_micro):
            yield item

    async def submit_batch(self, account_id: int, slug: str, inputs: list[dict[str, Any]], region: str | None,
                           priority: int, *, merge_strategy: str, fail_mode: str, max_parallelism: int | None,
                           bid_price_micro: int | None) -> JobBatch:
        await self.start()
        return await self._service.submit_batch(account_id, slug, inputs, region, priority,
                                                merge_strategy=merge_strategy, fail_mode=fail_mode,
                                                max_parallelism=max_parallelism, bid_price_micro=bid_price_micro)

    async def get_batch(self, parent_id: JobId, account_id: int | None) -> JobBatch:
        await self.start()
        return await self._service.get_batch(parent_id, account_id)

    async def cancel(self, job_id: JobId, reason: str) -> None:
        await self.start()
        await self._service.cancel(job_id, reason)

    async def set_asks(self, host_id: HostId, asks: dict[str, int]) -> dict[str, int]:
        await self.start()
        return await self._service.set_asks(host_id, asks)

    async def set_bid_preference(self, account_id: int, pattern: str, price_micro: int | None) -> dict[str, int]:
        await self.start()
        return await self._service.set_bid_preference(account_id, pattern, price_micro)

    async def hosts(self) -> list[HostSnapshot]:
        await self.start()
        return await self._service.hosts()

    async def exposition(self, requests: RequestCounts | None) -> str:
        return await self._service.exposition(requests)  # no wait for start: the numbers are there already

    async def status(self) -> NetworkStatus:
        return await self._service.status()

    async def record_requests(self, requests: RequestCounts) -> None:
        await self._service.record_requests(requests)
