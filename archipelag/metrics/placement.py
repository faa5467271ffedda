"""MeteredPlacement: the jobs core's placement port, measured — each ranking timed, each fleet it fetches
counted — so neither the service nor the dispatcher carries a stopwatch. Pure (no Ray)."""

from __future__ import annotations

import time
from collections.abc import Callable

from archipelag.errors import NoCapacity
from archipelag.ids import HostId
from archipelag.jobs.ports import Placement
from archipelag.metrics.network import NetworkMetrics
from archipelag.placement.scoring import HostSnapshot, JobRequest


class MeteredPlacement:
    def __init__(self, placement: Placement, metrics: NetworkMetrics,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._placement = placement
        self._metrics = metrics
        self._clock = clock

    async def rank_async(self, request: JobRequest) -> list[HostId]:
        started = self._clock()
        try:
            ranked = await self._placement.rank_async(request)
        except NoCapacity:
            self._metrics.placed(self._clock() - started, ranked=False)
            raise
        self._metrics.placed(self._clock() - started, ranked=bool(ranked))
        return ranked

    async def hosts_async(self) -> list[HostSnapshot]:
        snapshots = await self._placement.hosts_async()
        self._metrics.fleet(snapshots)
        return snapshots

    def job_assigned(self, host_id: HostId) -> None:
        self._placement.job_assigned(host_id)

    def job_released(self, host_id: HostId) -> None:
        self._placement.job_released(host_id)

    def mark_offline(self, host_id: HostId, reason: str) -> None:
        self._placement.mark_offline(host_id, reason)

    def refresh_karma(self, host_ids: list[HostId] | None = None) -> None:
        self._placement.refresh_karma(host_ids)

    def refresh_asks(self) -> None:
        self._placement.refresh_asks()

    async def suspend_async(self, host_id: HostId, reason: str) -> None:
        await self._placement.suspend_async(host_id, reason)

    def set_queued(self, queued: int) -> None:
        self._placement.set_queued(queued)

    async def quote_async(self, host_id: HostId, request: JobRequest) -> int | None:
        return await self._placement.quote_async(host_id, request)
