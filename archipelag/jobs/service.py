"""JobService: the jobs core put together — admission, the queue, the dispatcher, the relay, recovery after a
restart, and the ledger's view of the fleet. One lives in the JobsActor on the head; every API replica talks
to it through ``JobsClient``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from archipelag.catalog import Manifest, lookup
from archipelag.errors import ArchipelagError, InvalidTransition, NoCapacity, NotFound
from archipelag.gate import tickets
from archipelag.ids import HostId, JobId, WorkloadSlug, new_job_id
from archipelag.jobs.admission import admit, hosts_now, job_request
from archipelag.jobs.batches import BatchDriver, admit_batch
from archipelag.jobs.dispatcher import Dispatcher, DispatchRules, Ticket
from archipelag.jobs.exchange import Exchange, reserve_micro
from archipelag.jobs.host_keys import HostKeys, Identities
from archipelag.jobs.ports import Hosts, JobLedger, MarketPlacement
from archipelag.jobs.queue import JobQueue
from archipelag.jobs.relay import Batch, Relay
from archipelag.ledger.records import Job, JobBatch
from archipelag.lifecycle import TERMINAL_JOB_STATES, JobStatus
from archipelag.metrics.network import NetworkMetrics, NetworkStatus, RequestCounts
from archipelag.metrics.placement import MeteredPlacement
from archipelag.metrics.trace import TRACE
from archipelag.placement.scoring import HostSnapshot
from archipelag.protocol import FINAL_TYPES, error_event
from archipelag.settings import Settings

log = logging.getLogger(__name__)

_RUNNING = frozenset({JobStatus.ASSIGNED, JobStatus.STARTED, JobStatus.STREAMING})
_WAITING = frozenset({JobStatus.SUBMITTED, JobStatus.QUEUED})
FIRST_WAIT_S = 1.0  # a follower's first batch waits this long for events (a stream's headers wait for it)
FOLLOW_WAIT_S = 15.0  # then an empty batch after this long without news (a stream sends a keep-alive)


class JobService:
    """``identities``: hosts' enrolled keys (the ledger's ``host_identity``; always in a network), against which
    each job's receipt is checked before it is charged; None takes hosts' ends unsigned (scripted hosts in tests,
    as placement without ``identities``)."""

    def __init__(self, settings: Settings, catalog: dict[WorkloadSlug, Manifest], ledger: JobLedger,
                 placement: MarketPlacement, hosts: Hosts, identities: Identities | None = None) -> None:
        self._settings = settings
        TRACE.configure(settings.trace_file)
        self._catalog = catalog
        self._ledger = ledger
        self._metrics = NetworkMetrics()
        self._placement = MeteredPlacement(placement, self._metrics)  # each ranking timed, each fleet counted
        self._relay = Relay()
        self._exchange = Exchange(catalog, settings.market, ledger, placement)
        self._recorded: dict[HostId, str] = {}  # host → status as last written to the ledger
        rules = DispatchRules(lease_s=settings.lease_s, max_attempts=settings.max_attempts,
                              queue_timeout_s=settings.queue_timeout_s)
        self._queue: JobQueue[Ticket] = JobQueue(settings.queue_max_jobs, aging_s=settings.priority_aging_s)
        self._dispatcher = Dispatcher(rules, ledger, self._placement, hosts, self._relay, self._queue,
                                      before_assign=self._ensure_recorded, metrics=self._metrics,
                                      sign=tickets.signer(settings.state_dir),
                                      keys=HostKeys(identities) if identities is not None else None)
        self._loops: list[asyncio.Task[None]] = []
        self._batches: dict[JobId, BatchDriver] = {}  # the batches this service drives, by parent
        self._started = False

    async def start(self) -> None:
        """Resume what an earlier coordinator left unfinished, then dispatch. Idempotent."""
        if self._started:
            return
        self._started = True
        await self._recover()
        await self._exchange.refresh()  # saved bids and the rates, before the first submission
        self._dispatcher.start()
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._checkpoint_forever()), loop.create_task(self._record_fleet_forever())]

    async def close(self) -> None:
        for task in self._loops:
            task.cancel()
        self._batches.clear()
        await self._dispatcher.close()

    # --- jobs --------------------------------------------------------------------------------------

    async def submit(self, account_id: int, slug: str, job_input: dict[str, Any], region: str | None,
                     priority: int = 0, bid_micro: int | None = None) -> Job:
        """Admit, reserve and queue a job; the job as the ledger created it. 404/422 for a wrong request, 503
        when no online host could ever run it (none asks within its bid) or the queue is full, 402 when the
        balance is short — each before anything is held. ``bid_micro``: the request's bid (else the bid chain's:
        ``Exchange.bid_for``); it reserves the bid plus its tokens' most."""
        await self.start()
        arrived = time.time()
        manifest, _ = admit(self._catalog, slug, job_input, self._settings.max_job_input_bytes)
        bid = self._exchange.bid_for(account_id, manifest, bid_micro)
        reserve = reserve_micro(manifest, job_input, bid)
        self._dispatcher.admit()
        placing = time.time()
        ranking: list[HostId] | NoCapacity
        try:
            ranking = await self._placement.rank_async(job_request(manifest, region, bid))
        except NoCapacity as exc:
            ranking = exc
        ranked = hosts_now(ranking)
        job_id = new_job_id()
        if TRACE.on:
            TRACE.stamp(job_id, "submit", arrived)
            TRACE.stamp(job_id, "placing", placing)
            TRACE.stamp(job_id, "ranked")
        ticket = Ticket(job_id, manifest, job_input, manifest.limits_under(self._settings.limits_for(manifest.tier)),
                        region, priority, attempt=1, log=self._relay.open(job_id, owner=account_id), ranked=ranked,
                        bid_micro=bid)
        self._dispatcher.enqueue(ticket)  # on a free host it starts now, before anything else runs here
        # The ledger records the job (and reserves its credits) while its host already starts; nothing it says
        # reaches anyone before this is done (``submit_and_follow``), and if it fails the job stops.
        created = asyncio.ensure_future(self._ledger.create_job(
            account_id, manifest.slug, job_input, region, priority, reserve, job_id, bid))
        self._dispatcher.creating(ticket, created)
        self._metrics.admitted(job_id, manifest.slug, created)
        job = await created
        if TRACE.on:
            TRACE.stamp(job_id, "created")
        return job

    async def submit_and_follow(self, account_id: int, slug: str, job_input: dict[str, Any], region: str | None,
                                priority: int = 0, bid_micro: int | None = None) -> AsyncIterator[Job | Batch]:
        """``submit``, then ``follow`` the job from its start: the job first (or the submission's error), then
        its batches. One call where a reader would make two, so the first output goes out as soon as both the
        ledger has the job and the host has said it."""
        job = await self.submit(account_id, slug, job_input, region, priority, bid_micro)
        yield job
        async for batch in self.follow(job.id):
            yield batch

    async def read(self, job_id: JobId, after: int = -1, wait_s: float = 0.0, account_id: int | None = None) -> Batch:
        """The job's events after ``seq`` ``after``, waiting up to ``wait_s`` for some; from the ledger once the
        relay has let an ended job go. With ``account_id``, NotFound unless the job is that account's."""
        log_ = self._relay.log(job_id)
        if log_ is not None:
            if account_id is not None and log_.owner != account_id:
                raise NotFound(f"job {job_id} does not exist")
            return await log_.wait(after, wait_s)
        job = await self._ledger.get_job(job_id, account_id)
        if job.status not in TERMINAL_JOB_STATES:  # not resumed yet (a coordinator starting): come back
            await asyncio.sleep(min(wait_s, 1.0))
            return Batch([], False)
        events = [dict(e, seq=i) for i, e in enumerate(await self._ledger.stored_output_events(job_id))]
        if not events or events[-1]["type"] not in FINAL_TYPES:
            events.append(dict(error_event(job.error or f"the job ended {job.status}", str(job.status)),
                               seq=len(events)))
        return Batch(events[max(0, after + 1):], True)

    async def follow(self, job_id: JobId, after: int = -1, account_id: int | None = None,
                     first_wait_s: float = FIRST_WAIT_S) -> AsyncIterator[Batch]:
        """The job's events after ``after``, a batch as soon as there is news (an empty one every
        ``FOLLOW_WAIT_S`` without), until the stream ends. The first batch comes within ``first_wait_s`` and
        says NotFound when ``account_id`` is given and the job is not that account's."""
        wait_s = first_wait_s
        while True:
            batch = await self.read(job_id, after, wait_s, account_id)
            account_id, wait_s = None, FOLLOW_WAIT_S
            if batch.events:
                after = batch.events[-1]["seq"]
            yield batch
            if batch.ended:
                return

    async def cancel(self, job_id: JobId, reason: str = "cancelled by the user") -> None:
        """Cancel through the one path: the dispatcher stops it wherever it is and records it; a job it does not
        hold (left over, never resumed) is ended in the ledger directly. A batch's driver cancels its children
        and ends the batch."""
        driver = self._batches.get(job_id)
        if driver is not None:
            driver.cancel(reason)
            try:
                await asyncio.wait_for(driver.done.wait(), 10)
            except TimeoutError:
                pass
            return
        if await self._dispatcher.cancel(job_id, reason):
            await self._dispatcher.wait_ended(job_id, timeout_s=10)
            return
        job = await self._ledger.get_job(job_id)
        if job.status in TERMINAL_JOB_STATES:
            return
        try:
            await self._ledger.finish(job_id, JobStatus.CANCELLED, output=None, error=reason, usage={},
                                      events=await self._ledger.stored_output_events(job_id), price_micro=0,
                                      host_id=job.host_id)
            self._metrics.ended(job.workload_slug, JobStatus.CANCELLED)
        except InvalidTransition:
            pass

    # --- batches -----------------------------------------------------------------------------------

    async def submit_batch(self, account_id: int, slug: str, inputs: list[dict[str, Any]], region: str | None,
                           priority: int = 0, *, merge_strategy: str = "concat", fail_mode: str = "best_effort",
                           max_parallelism: int | None = None, bid_price_micro: int | None = None) -> JobBatch:
        """Admit every input (the first wrong one refuses the batch, naming its index), reserve every child's
        price (its bid, from the bid chain as a job's, plus its tokens' most; 402 for the whole when short),
        create the parent and its children, and start releasing them. Nothing is created when any check fails."""
        await self.start()
        manifest, _ = admit_batch(self._catalog, slug, inputs, self._settings.max_job_input_bytes,
                                  self._settings.batch_max_inputs)
        bid = self._exchange.bid_for(account_id, manifest, bid_price_micro)
        reserves = [reserve_micro(manifest, job_input, bid) for job_input in inputs]
        try:
            hosts_now(await self._placement.rank_async(job_request(manifest, region, bid)))
        except NoCapacity as exc:
            hosts_now(exc)  # 503 when no online host could ever run it; busy hosts are fine
        batch = await self._ledger.create_batch(account_id, manifest.slug, inputs, reserves, region, priority,
                                                merge_strategy=merge_strategy, fail_mode=fail_mode,
                                                max_parallelism=max_parallelism, bid_price_micro=bid)
        self._drive(batch.parent.id)
        return batch

    async def get_batch(self, parent_id: JobId, account_id: int | None = None) -> JobBatch:
        return await self._ledger.get_batch(parent_id, account_id)

    def _drive(self, parent_id: JobId) -> None:
        driver = self._batches[parent_id] = BatchDriver(parent_id, self._ledger, self)
        task = asyncio.get_running_loop().create_task(driver.run())
        self._loops.append(task)

        def forget(_: object) -> None:
            self._batches.pop(parent_id, None)
            if task in self._loops:
                self._loops.remove(task)

        task.add_done_callback(forget)

    def release(self, child: Job) -> asyncio.Event:
        """A batch's child (queued in the ledger by its driver) into the queue as an ordinary job."""
        manifest = lookup(self._catalog, child.workload_slug)  # NotFound once its workload left the catalog
        ticket = Ticket(child.id, manifest, child.input,
                        manifest.limits_under(self._settings.limits_for(manifest.tier)), child.region,
                        child.priority, attempt=child.attempt, log=self._relay.open(child.id, owner=child.account_id),
                        bid_micro=child.bid_price_micro)
        self._dispatcher.enqueue(ticket)
        return ticket.ended

    async def resume(self, child: Job) -> asyncio.Event | None:
        ticket = await self._resume(child)
        return ticket.ended if ticket is not None else None

    def room(self) -> int:
        """Places in the queue a batch may take: its share of ``queue_max_jobs``, less what waits already."""
        share = max(1, int(self._settings.queue_max_jobs * self._settings.batch_queue_share))
        return share - len(self._queue)

    # --- the exchange ------------------------------------------------------------------------------

    async def set_asks(self, host_id: HostId, asks: dict[str, int]) -> dict[str, int]:
        """An owner's asks for a host (the API checked that it is theirs): 422 outside the network's bounds."""
        await self.start()
        return await self._exchange.set_asks(host_id, asks)

    async def set_bid_preference(self, account_id: int, pattern: str, price_micro: int | None) -> dict[str, int]:
        """Save or forget the account's bid for a workload or family; its saved bids."""
        await self.start()
        return await self._exchange.set_bid_preference(account_id, pattern, price_micro)

    # --- a restart ---------------------------------------------------------------------------------

    async def _recover(self) -> None:
        """Every job an earlier coordinator left unfinished runs again: queued ones take their place in the
        queue, running ones (their host's run died with the old cluster, or is orphaned) are re-run elsewhere,
        their stream continuing from its last checkpoint. A job past its attempts fails and is refunded. Hosts an
        operator suspended stay suspended, with the ledger's reason (placement also reads it when one registers);
        one its karma suspended is karma's (the fleet round suspends it again, and lifts it when it recovers)."""
        try:
            for host in await self._ledger.suspended_hosts():
                await self._placement.suspend_async(host.id, host.suspended_reason or "suspended by an operator")
        except ArchipelagError:
            log.exception("could not read which hosts are suspended")
        try:
            unfinished = await self._ledger.unfinished_jobs()
        except ArchipelagError:
            log.exception("could not read unfinished jobs; none resumed")
            return
        parents = {job.id for job in unfinished if job.is_batch}
        for job in unfinished:
            if job.is_batch:
                self._drive(job.id)  # its driver resumes its children
                continue
            if job.parent_id is not None and job.parent_id in parents:
                continue
            try:
                if job.parent_id is not None:  # its batch has ended: nothing waits for it
                    await self._ledger.cancel_waiting_children(job.parent_id, [job.id], "its batch has ended")
                    if job.status in _WAITING:
                        continue
                await self._resume(job)
            except ArchipelagError:
                log.exception("job %s could not be resumed", job.id)
        if unfinished:
            log.warning("resumed %d unfinished jobs", len(unfinished))

    async def _resume(self, job: Job) -> Ticket | None:
        """The job back in the queue (its ticket); None when it cannot run again (ended failed here), or when it
        ended meanwhile: the coordinator that ran it recorded its end after ``job`` was read."""
        reason = "the coordinator restarted while the job ran"
        if job.status in _RUNNING:
            try:
                job = await self._ledger.requeue(job.id, reason)
            except InvalidTransition:
                if (await self._ledger.get_job(job.id)).status in TERMINAL_JOB_STATES:
                    return None
                raise
        elif job.status is JobStatus.SUBMITTED:
            job = await self._ledger.transition(job.id, JobStatus.QUEUED, "resumed after a restart")
        manifest = self._catalog.get(job.workload_slug)
        events = await self._ledger.stored_output_events(job.id)
        if manifest is None or job.attempt > self._settings.max_attempts:
            why = (f"{reason}; gave up after {job.attempt - 1} attempts" if manifest is not None
                   else f"the workload {job.workload_slug} is no longer in the catalog")
            await self._ledger.finish(job.id, JobStatus.FAILED, output=None, error=why, usage={},
                                      events=[*events, error_event(why, "failed")], price_micro=0, host_id=None)
            self._metrics.ended(job.workload_slug, JobStatus.FAILED)
            return None
        log_ = self._relay.open(job.id, events, job.account_id)  # no notice added: the stream keeps its numbering (Replay)
        ticket = Ticket(job.id, manifest, job.input, manifest.limits_under(self._settings.limits_for(manifest.tier)),
                        job.region, job.priority, attempt=job.attempt, log=log_, bid_micro=job.bid_price_micro)
        self._dispatcher.enqueue(ticket)
        return ticket

    # --- the network's numbers ---------------------------------------------------------------------

    async def exposition(self, requests: RequestCounts | None = None) -> str:
        """Prometheus' text format of the network's metrics, after adding an API replica's request counts."""
        if requests:
            self._metrics.requests(requests)
        return self._metrics.exposition(queue_depth=len(self._queue))

    async def status(self) -> NetworkStatus:
        """The public status page's numbers."""
        return self._metrics.status(queue_depth=len(self._queue))

    async def record_requests(self, requests: RequestCounts) -> None:
        """An API replica's request counts since its last report."""
        self._metrics.requests(requests)

    # --- checkpoints of live streams ---------------------------------------------------------------

    async def _checkpoint_forever(self) -> None:
        """Every few moments, one write holds what each running stream has said since its last checkpoint."""
        while True:
            await asyncio.sleep(self._settings.relay_checkpoint_s)
            logs = self._relay.unsaved()
            if not logs:
                continue
            counts = {job_log.job_id: len(job_log.events) for job_log in logs}
            try:
                await self._ledger.save_events({job_log.job_id: job_log.events[:counts[job_log.job_id]]
                                                for job_log in logs})
            except ArchipelagError as exc:
                log.warning("%d streams not checkpointed: %s", len(logs), exc.message)
                continue
            for job_log in logs:
                job_log.saved = counts[job_log.job_id]

    # --- the ledger's view of the fleet ------------------------------------------------------------

    async def hosts(self) -> list[HostSnapshot]:
        """Placement's fleet, with new or changed hosts written to the ledger first."""
        return await self._record_fleet()

    async def _ensure_recorded(self, host_ids: list[HostId]) -> None:
        if not self._recorded.keys() >= set(host_ids):
            await self._record_fleet()

    async def _record_fleet(self) -> list[HostSnapshot]:
        snapshots = await self._placement.hosts_async()
        for snap in snapshots:
            if self._recorded.get(snap.host_id) == str(snap.status):
                continue
            capabilities = {"cpu_cores": snap.cpu_cores, "ram_mb": snap.ram_mb, "gpu_model": snap.gpu_model,
                            "gpu_vram_mb": snap.vram_mb, "runtimes": sorted(snap.runtimes)}
            try:
                await self._ledger.upsert_host(snap.host_id, snap.name, snap.region, capabilities, snap.status)
                self._recorded[snap.host_id] = str(snap.status)
            except ArchipelagError as exc:
                log.warning("host %s not recorded: %s", snap.host_id, exc.message)
        return snapshots

    async def _record_fleet_forever(self) -> None:
        """Keep the ledger's host rows current, have placement read the karma the ledger derives and the asks it
        holds, and refresh the market rates the bid chain falls back on."""
        while True:
            await asyncio.sleep(self._settings.heartbeat_interval_s)
            try:
                await self._record_fleet()
                self._placement.refresh_karma()  # karma recovers with time: a suspension may lift here
                self._placement.refresh_asks()  # the ledger's, should an owner's change have missed placement
                await self._exchange.refresh()
            except Exception:  # a missed round is retried on the next one
                log.warning("fleet not recorded this round", exc_info=True)
