"""Services: what the API's handlers share inside one ingress replica, built once from Settings."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from archipelag.actors.client import HostAgentClient
from archipelag.catalog import Manifest, load_catalog, max_price_micro
from archipelag.errors import ArchipelagError, NoCapacity
from archipelag.ids import HostId, WorkloadSlug, new_job_id
from archipelag.ledger.client import LedgerClient
from archipelag.ledger.records import Job
from archipelag.placement.client import PlacementClient
from archipelag.placement.scoring import HostSnapshot, JobRequest
from archipelag.serve.auth import KeyCache, RateLimiter
from archipelag.serve.dispatch import Dispatcher, LiveJob
from archipelag.settings import Settings

log = logging.getLogger(__name__)


def job_request(manifest: Manifest, region: str | None) -> JobRequest:
    return JobRequest(
        workload=manifest.slug, runtime=manifest.runtime, required_ram_mb=manifest.required_ram_mb,
        required_vram_mb=manifest.required_vram_mb, caller_region=region,
    )


@dataclass
class Services:
    settings: Settings
    ledger: LedgerClient
    catalog: dict[WorkloadSlug, Manifest]
    placement: PlacementClient
    keys: KeyCache = field(default_factory=KeyCache)
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(0))
    _hosts: dict[HostId, HostAgentClient] = field(default_factory=dict)
    _dispatcher: Dispatcher | None = None
    _fleet_task: asyncio.Task[None] | None = None
    _recorded: dict[HostId, str] = field(default_factory=dict)  # host → status as last written to the ledger

    @classmethod
    def build(cls, settings: Settings) -> Services:
        return cls(
            settings=settings,
            ledger=LedgerClient.connect(settings),
            catalog=load_catalog(settings.workloads_dir),
            placement=PlacementClient.connect(settings),
            limiter=RateLimiter(settings.rate_limit_per_min),
        )

    async def db(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a ``Ledger`` method in the ledger actor (its own process: SQL never runs on this
        event loop, and one writer at a time suits SQLite)."""
        return await self.ledger.call(method, *args, **kwargs)

    def host(self, host_id: HostId) -> HostAgentClient:
        client = self._hosts.get(host_id)
        if client is None:
            client = self._hosts[host_id] = HostAgentClient.connect(self.settings, host_id)
        return client

    async def rank(self, manifest: Manifest, region: str | None,
                   excluded: frozenset[HostId] = frozenset()) -> list[HostId]:
        ranked = [h for h in await self.placement.rank_async(job_request(manifest, region)) if h not in excluded]
        if not self._recorded.keys() >= set(ranked):
            await self.record_fleet()
        if not ranked:
            raise NoCapacity(f"every host able to run {manifest.slug} has already failed this job")
        return ranked

    async def submit(self, account_id: int, manifest: Manifest, job_input: dict[str, Any], region: str | None,
                     priority: int = 0) -> tuple[Job, LiveJob]:
        """Place and start a job. 503 (NoCapacity) before anything is written or reserved when no host can
        ever run it; a job whose hosts are all busy waits in the queue. The ledger records the job (and
        reserves its credits) while its host already starts, so the first token does not wait on SQL; when
        the ledger refuses it (402 and the like) the run is stopped and the error raised here."""
        try:
            ranked = await self.rank(manifest, region)
        except NoCapacity as exc:
            if not exc.details.get("full"):
                raise
            ranked = []
        job_id = new_job_id()
        created = asyncio.ensure_future(self.db(
            "create_job", account_id, manifest.slug, job_input, region=region, priority=priority,
            reserve_micro=max_price_micro(manifest, job_input), queue=True, job_id=job_id))
        limits = manifest.limits_under(self.settings.limits_for(manifest.tier))
        live = self.dispatcher.start(job_id, manifest, job_input, limits, region, ranked, admitted=created)
        job: Job = await created
        return job, live

    @property
    def dispatcher(self) -> Dispatcher:
        """Created on first use, inside the replica's event loop (with the fleet recorder)."""
        if self._dispatcher is None:
            self._fleet_task = asyncio.get_running_loop().create_task(self._record_fleet_forever())
            self._dispatcher = Dispatcher(
                db=self.db, hosts=self.host, rerank=self.rank, placement_events=self.placement,
                max_attempts=self.settings.max_attempts, forget_host=self.forget_host,
                queue_timeout_s=self.settings.queue_timeout_s,
            )
        return self._dispatcher

    async def _record_fleet_forever(self) -> None:
        """Keep the ledger's host rows current and feed placement the karma the ledger derives."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            try:
                for snap in await self.record_fleet():
                    self.placement.set_karma(snap.host_id, await self.db("karma_score", snap.host_id))
            except Exception:  # keep recording: a missed round is retried on the next one
                log.warning("fleet not recorded this round", exc_info=True)

    def forget_host(self, host_id: HostId) -> None:
        self._hosts.pop(host_id, None)

    async def record_fleet(self) -> list[HostSnapshot]:
        """Write hosts that are new or changed status into the ledger (karma and jobs refer to them)."""
        snapshots = await self.placement.hosts_async()
        for snap in snapshots:
            if self._recorded.get(snap.host_id) == str(snap.status):
                continue
            capabilities = {"cpu_cores": snap.cpu_cores, "ram_mb": snap.ram_mb, "gpu_model": snap.gpu_model,
                            "gpu_vram_mb": snap.vram_mb, "runtimes": sorted(snap.runtimes)}
            try:
                await self.db("upsert_host", snap.host_id, snap.name, snap.region, capabilities, snap.status)
                self._recorded[snap.host_id] = str(snap.status)
            except ArchipelagError as exc:
                log.warning("host %s not recorded: %s", snap.host_id, exc.message)
        return snapshots

    async def close(self) -> None:
        if self._fleet_task is not None:
            self._fleet_task.cancel()
        if self._dispatcher is not None:
            await self._dispatcher.close()
