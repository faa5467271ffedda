"""Dispatcher: takes queued jobs to hosts — in queue order, each attempt under a lease — and records how
each job ends.

A job's status belongs to the ledger (every move below is a guarded transition there, queued behind the job's
earlier writes and off the event path; an attempt is written once its host has begun it, assigned and started in
one write, so a host that turns the job away or never answers costs the ledger nothing); its live events belong
to the relay. What the dispatcher keeps is a
``Ticket`` per job it is working on: the attempt, the host, the hosts that failed it, a cancel request.

- **Leases.** A running attempt holds a lease on its host: the host sends a batch (an empty one while the job
  is quiet) at least every ``keepalive_s``; silence past ``lease_s`` — a killed node, a cut network, a hung
  (SIGSTOPped) process Ray still thinks alive — loses the host the job. The attempt is fenced: the relay drops
  whatever that host sends later.
- **Failover.** A lost host is taken out of placement, charged a drop in karma, and the job goes back to the
  queue (attempt + 1) to be ranked again; after ``max_attempts`` it fails and is refunded. A host that turns the
  job away before starting it (full) costs no attempt: the next ranked host takes it.
- **Cancellation** has one path, ``cancel``: a waiting job leaves the queue, a running one is stopped on its
  host, and the attempt's end records it.
- **Receipts.** What a host sends is checked by the relay against the job's ``Budget`` (its output budget, the
  ``max_tokens`` it reserved for, what its input could hold), and, where hosts have enrolled keys (``keys``), its
  ``done`` event must carry its signed receipt of the attempt's usage and output (receipts.py), checked with the
  key the ledger holds for it: a host that sends what cannot be true, or signs what it did not send, fails the
  job with ``bad_receipt`` — the user is refunded, the host loses karma for a bad receipt, nothing is
  charged on its word. The accepted receipt is kept with the job.
- **Prices.** A job's bid (``Ticket.bid_micro``) rides in every ranking, so only hosts whose effective ask is
  within it are tried; the host's effective ask when the attempt starts (the surge included, up to the bid) is the
  clearing price, charged at the end for the job's per-job part (tokens on top at the catalog's price). A job
  that fails over clears at the new host's ask. The queue's length goes to placement after each round: its
  surge weighs it against free slots.
- **Karma.** A job that ends by the host's fault (``karma_rules.fault_of``: a timeout, the host's own error, a bad
  receipt, a drop, a refused catalog artifact once another host has run that workload) costs the host karma, and
  placement reads the host's new standing from the ledger at once; a workload's own error costs it nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from archipelag.catalog import Manifest, max_tokens_of, price_micro
from archipelag.errors import ArchipelagError, BadReceipt, BridgeDown, HostLost, InvalidTransition, NoCapacity
from archipelag.gate.tickets import Signer
from archipelag.ids import HostId, JobId
from archipelag.jobs.admission import input_bytes, job_request
from archipelag.jobs.host_keys import HostKeys
from archipelag.jobs.ports import Hosts, JobLedger, Placement
from archipelag.jobs.queue import JobQueue
from archipelag.jobs.relay import Budget, JobLog, Relay, diverged_error
from archipelag.jobs.replay import Diverged
from archipelag.ledger.karma_rules import KarmaKind, fault_of
from archipelag.lifecycle import JobStatus
from archipelag.metrics.network import NetworkMetrics
from archipelag.metrics.trace import TRACE
from archipelag.placement.scoring import JobRequest
from archipelag.protocol import collect_output, error_event, holds_output
from archipelag.receipts import Expected
from archipelag.remote import Unreachable
from archipelag.runtimes.base import JobSpec
from archipelag.sandbox import Limits

log = logging.getLogger(__name__)

# A final error's code → the job's end state; anything else is `failed`.
_END_BY_CODE = {"cancelled": JobStatus.CANCELLED, "timed_out": JobStatus.TIMED_OUT}
# Before it started: next host, same attempt (a host whose gate refuses the coordinator's ticket, e.g. with its
# clock off, is turned away as one without the runtime).
_TURNED_AWAY = frozenset({"host_busy", "runtime_unavailable", "ticket_refused"})
SCHEDULE_EVERY_S = 0.5  # the queue is looked at this often even when nothing wakes it
BRIDGE_RETRY_S = 1.0  # a job whose bridge went waits this long before it goes back to the queue
HOST_EVENTS_BYTES = 4096  # beyond its workload's output budget, room for the host's own events (its errors)
HOST_EVENTS = 256  # beyond the workload's events, room for the host's own (statuses, its errors, its end)
PROMPT_TEMPLATE_TOKENS = 1024  # beyond a token per byte of input, room for a chat template's tokens
FINISH_TRIES = 10  # a job's end is written again while the ledger is unreachable (a restart resumes it after)


@dataclass(frozen=True)
class DispatchRules:
    lease_s: float = 3.0
    max_attempts: int = 3
    queue_timeout_s: float = 120.0


@dataclass
class Ticket:
    """The dispatcher's working state of one job."""

    job_id: JobId
    manifest: Manifest
    input: dict[str, Any]
    limits: Limits
    region: str | None
    priority: int
    attempt: int
    log: JobLog
    excluded: set[HostId] = field(default_factory=set)  # hosts lost while running it
    ranked: list[HostId] = field(default_factory=list)  # the rest of the last ranking, to try next
    host_id: HostId | None = None
    cancel_reason: str | None = None
    started_monotonic: float | None = None
    queued_as: float | None = None  # the arrival it counts as in the queue (queue.py), kept across requeues
    ledger_tail: asyncio.Task[None] | None = None  # its latest ledger write; they run in order
    abandoned: bool = False  # the ledger refused to create it: stop, write nothing
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    bid_micro: int | None = None  # the most it pays per job (None: no price filter, the catalog's price at most)
    clearing_micro: int | None = None  # the effective ask of the host its last attempt started on

    @property
    def request(self) -> JobRequest:
        return job_request(self.manifest, self.region, self.bid_micro)

    def charge_micro(self, usage: dict[str, Any]) -> int:
        """What a completed job costs: the clearing price for the per-job part, its tokens on top as the catalog
        prices them."""
        catalog = price_micro(self.manifest, usage)
        if self.clearing_micro is None:
            return catalog
        return catalog - self.manifest.price_micro + self.clearing_micro

    @property
    def spec(self) -> JobSpec:
        return JobSpec(self.job_id, self.manifest, self.input, self.limits, attempt=self.attempt)

    @property
    def budget(self) -> Budget:
        """What its hosts may send: the output budget its ticket gives the host (bytes and events; the host's
        sandbox stops a workload that goes past them, so only a host that ignores its ticket breaks them); for a
        chat job no more completion tokens than it reserved for, no more prompt tokens than its input has bytes
        (and a template), and no more events than a token each."""
        output_bytes = self.limits.output_bytes + HOST_EVENTS_BYTES
        events = self.limits.output_events + HOST_EVENTS
        chat = self.manifest.token_price_micro > 0 or (self.manifest.model is not None
                                                        and self.manifest.model.kind == "gguf")
        if not chat:
            return Budget(output_bytes, events)
        max_tokens = max_tokens_of(self.input)
        return Budget(output_bytes, min(events, 2 * max_tokens + HOST_EVENTS), completion_tokens=max_tokens,
                      prompt_tokens=input_bytes(self.input) + PROMPT_TEMPLATE_TOKENS)


@dataclass(frozen=True)
class _Ended:
    status: JobStatus
    error: str | None
    karma: KarmaKind | None = None  # the host's, besides a success's


@dataclass(frozen=True)
class _Lost:
    reason: str
    started: bool  # the host had begun the attempt (and the ledger was told)
    ours: bool = False  # the coordinator's bridge went, not the host


_TURNED_AWAY_OUTCOME = object()


class Dispatcher:
    def __init__(self, rules: DispatchRules, ledger: JobLedger, placement: Placement, hosts: Hosts,
                 relay: Relay, queue: JobQueue[Ticket],
                 before_assign: Callable[[list[HostId]], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.monotonic, metrics: NetworkMetrics | None = None,
                 sign: Signer | None = None, keys: HostKeys | None = None) -> None:
        self._rules = rules
        self._ledger = ledger
        self._placement = placement
        self._hosts = hosts
        self._relay = relay
        self._queue = queue
        self._before_assign = before_assign
        self._clock = clock
        self._metrics = metrics or NetworkMetrics()
        self._sign = sign  # a container job leaves with the coordinator's ticket for its host (gate/tickets.py)
        # Hosts' enrolled keys: each done event's receipt is checked against its host's. None: hosts have no keys
        # (scripted hosts in tests, as placement's ``identities=None``) and receipts are not checked.
        self._keys = keys
        self._tickets: dict[JobId, Ticket] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._kick = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._queued_told = 0  # the queue's length placement last heard (its surge weighs it)
        # Workloads some host has run to success since this start: their artifact checks out, so a host that
        # refuses one is at fault. Until then a refusal costs nothing (the artifact may be what is wrong).
        self._proven: set[str] = set()

    # --- the outside -----------------------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = self._spawn(self._schedule_forever())

    async def close(self) -> None:
        for task in [*self._tasks, *([self._loop_task] if self._loop_task else [])]:
            task.cancel()

    def admit(self) -> None:
        """QueueFull (503, Retry-After) when a new job would wait behind too many."""
        self._queue.admit()

    def enqueue(self, ticket: Ticket) -> None:
        """Queue a job; one that nobody waits before, with a free host ranked, goes to that host at once."""
        self._tickets[ticket.job_id] = ticket
        if not self._queue and ticket.ranked and not ticket.excluded:
            hosts = ticket.ranked
            self._assign(ticket, hosts[0])
            ticket.ranked = hosts[1:]
            self._spawn(self._run(ticket, hosts))
            return
        self._push(ticket)

    def _push(self, ticket: Ticket) -> None:
        now = self._clock()
        deadline = now + self._rules.queue_timeout_s
        if ticket.queued_as is None:
            ticket.queued_as = self._queue.push(ticket.job_id, ticket, ticket.priority, deadline, now,
                                                ticket.log.owner)
        else:
            self._queue.put_back(ticket.job_id, ticket, deadline, ticket.queued_as, ticket.log.owner)
        self._kick.set()

    def creating(self, ticket: Ticket, created: Awaitable[Any]) -> None:
        """The ledger's creation of the job is under way: its writes wait for it, and if it fails the job is
        dropped without a trace."""
        ticket.ledger_tail = self._spawn(self._admitted(ticket, created))

    async def cancel(self, job_id: JobId, reason: str = "cancelled by the user") -> bool:
        """Stop the job wherever it is; False when the dispatcher is not working on it."""
        ticket = self._tickets.get(job_id)
        if ticket is None:
            return False
        ticket.cancel_reason = ticket.cancel_reason or reason
        if self._queue.remove(job_id) is not None:
            self._spawn(self._finish(ticket, JobStatus.CANCELLED, reason, None))
        elif ticket.host_id is not None:
            await self._hosts(ticket.host_id).cancel(job_id, reason)
        return True

    async def wait_ended(self, job_id: JobId, timeout_s: float) -> None:
        ticket = self._tickets.get(job_id)
        if ticket is not None:
            try:
                await asyncio.wait_for(ticket.ended.wait(), timeout_s)
            except TimeoutError:
                pass

    # --- the queue ---------------------------------------------------------------------------------

    async def _schedule_forever(self) -> None:
        task = asyncio.current_task()
        while True:
            try:
                await asyncio.wait_for(self._kick.wait(), SCHEDULE_EVERY_S)
            except TimeoutError:
                pass
            if task is not None and task.cancelling():
                # Python 3.11's wait_for loses a cancel that lands as the kick comes (gh-86296): stop anyway,
                # or this loop outlives its event loop's shutdown (a test's asyncio.run hung on it).
                raise asyncio.CancelledError
            self._kick.clear()
            try:
                await self._schedule_once()
            except Exception:  # keep scheduling: the next round retries
                log.exception("scheduling round failed")

    async def _schedule_once(self) -> None:
        """Every waiting job that some host can take now goes; the others keep their place."""
        now = self._clock()
        blocked: dict[tuple[str, str | None], str] = {}  # requests no host can take in this round
        for job_id, ticket, deadline in list(self._queue.in_order()):
            key = (ticket.manifest.slug, ticket.region)
            why = blocked.get(key) if not ticket.excluded else None
            ranked: list[HostId] = [] if why is not None else [  # ranked at submit, if it was
                h for h in ticket.ranked if h not in ticket.excluded]
            ticket.ranked = []
            if why is None and not ranked:
                try:
                    ranked = [h for h in await self._placement.rank_async(ticket.request)
                              if h not in ticket.excluded]
                    why = "every host able to run it has already failed this job"
                except NoCapacity as exc:
                    why = exc.message
            if job_id not in self._queue:  # cancelled meanwhile
                continue
            if not ranked:
                why = why or "no host is free"
                if not ticket.excluded:
                    blocked[key] = why
                if now > deadline:
                    self._queue.remove(job_id)
                    self._spawn(self._finish(ticket, JobStatus.FAILED, f"no host could take the job within "
                                             f"{self._rules.queue_timeout_s:.0f} s: {why}", None, "queue_timeout"))
                continue
            self._queue.remove(job_id)
            self._assign(ticket, ranked[0])
            ticket.ranked = ranked[1:]
            self._spawn(self._run(ticket, ranked))
        if len(self._queue) != self._queued_told:
            self._queued_told = len(self._queue)
            self._placement.set_queued(self._queued_told)

    def _assign(self, ticket: Ticket, host_id: HostId) -> None:
        """Count the job on its host now, before the next ranking (placement takes calls in order)."""
        ticket.host_id = host_id
        self._placement.job_assigned(host_id)

    def _requeue(self, ticket: Ticket) -> None:
        ticket.ranked = []
        self._push(ticket)

    # --- one job -----------------------------------------------------------------------------------

    async def _run(self, ticket: Ticket, hosts: list[HostId]) -> None:
        """Run the job on its assigned host (the others of ``hosts`` next); the ledger knows them all first."""
        if self._before_assign is not None:
            try:
                await self._before_assign(hosts)
            except Exception:  # the job runs anyway; its start is written once the ledger knows the host
                log.warning("hosts %s not recorded before job %s", hosts, ticket.job_id, exc_info=True)
        try:
            await self._attempts(ticket)
        except Exception as exc:  # never leave a job hanging because of a bug here
            log.exception("dispatch of job %s failed", ticket.job_id)
            await self._finish(ticket, JobStatus.FAILED, f"internal error: {exc}", ticket.host_id)

    async def _attempts(self, ticket: Ticket) -> None:
        while True:
            host_id = ticket.host_id
            assert host_id is not None
            try:
                outcome = await self._attempt(ticket, host_id)
            finally:
                self._placement.job_released(host_id)
                ticket.host_id = None
                self._kick.set()  # a slot is free
            if isinstance(outcome, _Ended):
                await self._finish(ticket, outcome.status, outcome.error, host_id, karma=self._fault(ticket, outcome))
                return
            if ticket.cancel_reason is not None:
                await self._finish(ticket, JobStatus.CANCELLED, ticket.cancel_reason, None)
                return
            if isinstance(outcome, _Lost) and outcome.ours:
                await self._bridge_down(ticket, outcome)
                return
            if isinstance(outcome, _Lost):
                if not await self._lost(ticket, host_id, outcome):
                    return
                self._requeue(ticket)
                return
            # Turned away before it started (nothing was recorded): the next ranked host, else back to the queue.
            if not ticket.ranked:
                self._requeue(ticket)
                return
            self._assign(ticket, ticket.ranked.pop(0))

    def _fault(self, ticket: Ticket, ended: _Ended) -> KarmaKind | None:
        """The host's karma event for an end: a refused artifact only once another host ran it (it checks out)."""
        if ended.status is JobStatus.SUCCEEDED:
            self._proven.add(ticket.manifest.slug)
            return None
        if ended.karma is KarmaKind.ARTIFACT_REFUSED and ticket.manifest.slug not in self._proven:
            return None
        return ended.karma

    async def _bridge_down(self, ticket: Ticket, lost: _Lost) -> None:
        """The bridge to every host went (it is starting again, or the coordinator is going down): the job runs
        again once it is back, on any host, with no karma lost and no retry said to readers. A coordinator that
        dies meanwhile resumes the stream from its checkpoint with the numbering its readers saw."""
        log.warning("job %s: %s; it runs again once the bridge is back", ticket.job_id, lost.reason)
        ticket.attempt += 1
        if lost.started:
            self._record(ticket, lambda: self._ledger.requeue(ticket.job_id, lost.reason))
        await asyncio.sleep(BRIDGE_RETRY_S)
        self._requeue(ticket)

    async def _lost(self, ticket: Ticket, host_id: HostId, lost: _Lost) -> bool:
        """The host lost the job: out of placement, a drop in karma; True when the job may run again."""
        reason = lost.reason
        log.warning("job %s lost host %s: %s", ticket.job_id, host_id, reason)
        self._placement.mark_offline(host_id, reason)
        ticket.excluded.add(host_id)
        self._record(ticket, lambda: self._karma_drop(host_id, ticket.job_id, reason))  # before the job's end
        if ticket.attempt >= self._rules.max_attempts:
            await self._finish(ticket, JobStatus.FAILED, f"{reason}; gave up after {ticket.attempt} attempts",
                               None, "host_lost")
            return False
        ticket.attempt += 1
        if lost.started:  # the ledger has it started there: back to queued; else its next start says the attempt
            self._record(ticket, lambda: self._ledger.requeue(ticket.job_id, reason))
        ticket.log.note({"type": "status", "retry": ticket.attempt,
                         "message": f"host {host_id} was lost; retrying on another host "
                                    f"(attempt {ticket.attempt} of {self._rules.max_attempts})"})
        return True

    async def _attempt(self, ticket: Ticket, host_id: HostId) -> _Ended | _Lost | object:
        job_id = ticket.job_id
        ticket.log.begin(ticket.attempt, ticket.budget, await self._expected_receipt(ticket, host_id))
        attempt = ticket.attempt
        try:
            host = self._hosts(host_id)
        except HostLost as exc:  # its agent is gone (the node died between ranking and now)
            return _Lost(exc.message, started=False)
        if TRACE.on:
            TRACE.stamp(job_id, "dispatched")
        stream = host.run_batches(ticket.spec if self._sign is None else self._sign(ticket.spec, host_id))
        started = streaming = False
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._rules.lease_s) as lease:
                async for batch in stream:
                    lease.reschedule(loop.time() + self._rules.lease_s)  # heard from: the lease runs on
                    if not batch:
                        continue  # the host is alive; the job is quiet
                    first_output = not streaming and holds_output(batch)
                    write: Callable[[], Awaitable[Any]] | None = None
                    if not started:
                        first = batch[0]
                        if _kind(first) == "error" and first.get("code") in _TURNED_AWAY:
                            return _TURNED_AWAY_OUTCOME
                        started = True
                        ticket.started_monotonic = self._clock()
                        if ticket.cancel_reason is not None:  # a cancel that came while the host admitted it
                            self._spawn(host.cancel(job_id, ticket.cancel_reason))
                        # Assigned, started and (with output already) streaming in one write, once the host has
                        # begun: until then it is queued.
                        write = functools.partial(self._started, ticket, host_id, attempt, first_output)
                    elif first_output:
                        write = functools.partial(self._ledger.transition, job_id, JobStatus.STREAMING)
                    streaming = streaming or first_output
                    try:
                        published = ticket.log.publish(attempt, batch)
                        if first_output and TRACE.on:
                            TRACE.stamp(job_id, "relayed")
                        self._metrics.heard(job_id, published)
                    except Diverged as exc:
                        ticket.log.note(diverged_error(exc))
                        self._spawn(host.cancel(job_id, "the retry diverged"))
                        return _Ended(JobStatus.FAILED, str(exc))
                    except BadReceipt as exc:
                        log.warning("job %s: host %s sent a bad receipt: %s", job_id, host_id, exc.message)
                        ticket.log.note(error_event(exc.message, exc.code))
                        self._spawn(host.cancel(job_id, "what it sent was refused"))
                        return _Ended(JobStatus.FAILED, exc.message, KarmaKind.BAD_RECEIPT)
                    finally:
                        if write is not None:  # after the batch is out: its readers' wake runs before the write
                            self._record(ticket, write)
                    final = ticket.log.final
                    if final is not None:
                        if final["type"] == "done":
                            return _Ended(JobStatus.SUCCEEDED, None)
                        code = str(final.get("code"))
                        return _Ended(_END_BY_CODE.get(code, JobStatus.FAILED), final["message"], fault_of(code))
            return _Lost(f"host {host_id} closed the job's stream without a final event", started)
        except TimeoutError:
            self._spawn(host.cancel(job_id, "the job's lease on this host expired"))
            return _Lost(f"host {host_id} was silent for {self._rules.lease_s:g} s (its lease expired)", started)
        except BridgeDown as exc:
            return _Lost(exc.message, started, ours=True)
        except HostLost as exc:
            return _Lost(exc.message, started)
        finally:
            await stream.aclose()

    async def _expected_receipt(self, ticket: Ticket, host_id: HostId) -> Expected | None:
        """Whose receipt must end the attempt; the host's key is read from the ledger once, on its first job."""
        if self._keys is None:
            return None
        return Expected(ticket.job_id, ticket.attempt, host_id, await self._keys.public_key(host_id))

    async def _started(self, ticket: Ticket, host_id: HostId, attempt: int, streaming: bool) -> None:
        """The attempt's clearing price (the host's effective ask now, never above the bid: the ranking held it
        there, and a surge since then is not the job's), then the ledger's start."""
        ceiling = ticket.bid_micro if ticket.bid_micro is not None else ticket.manifest.price_micro
        try:
            quoted = await self._placement.quote_async(host_id, ticket.request)
        except ArchipelagError as exc:
            log.warning("job %s: no quote from placement for %s: %s", ticket.job_id, host_id, exc.message)
            quoted = None
        ticket.clearing_micro = min(ceiling, ticket.manifest.price_micro if quoted is None else quoted)
        await self._ledger.start_job(ticket.job_id, host_id, attempt, streaming)

    async def _finish(self, ticket: Ticket, status: JobStatus, error: str | None, host_id: HostId | None,
                      code: str | None = None, karma: KarmaKind | None = None) -> None:
        """Record the end (credits settled in the same transaction), then release the stream's last event.
        ``karma``: the host's for an end that is its fault."""
        job_id = ticket.job_id
        try:
            if status is not JobStatus.SUCCEEDED and ticket.log.final is None:
                ticket.log.note(error_event(error or str(status), code or (
                    "cancelled" if status is JobStatus.CANCELLED else "failed")))
            if ticket.ledger_tail is not None:
                await ticket.ledger_tail
            if ticket.abandoned:
                return
            events = ticket.log.events
            done = ticket.log.final if ticket.log.final and ticket.log.final["type"] == "done" else None
            usage = dict(done.get("usage") or {}) if done else {}
            succeeded = status is JobStatus.SUCCEEDED
            started = ticket.started_monotonic
            for attempt in range(FINISH_TRIES):  # a ledger restarting answers again within seconds
                try:
                    await self._ledger.finish(
                        job_id, status, output=collect_output(events), error=error, usage=usage,
                        events=list(events), price_micro=ticket.charge_micro(usage) if succeeded else 0,
                        host_id=host_id, karma=KarmaKind.JOB_SUCCEEDED if succeeded and host_id else karma,
                        compute_s=self._clock() - started if started is not None else 0.0,
                        clearing_price_micro=ticket.clearing_micro if succeeded else None,
                        receipt=ticket.log.receipt if succeeded else None)
                    self._metrics.ended(ticket.manifest.slug, status, job_id)
                    if karma is not None and host_id is not None and not succeeded:
                        self._placement.refresh_karma([host_id])  # cooled or suspended: no more jobs now
                    break
                except InvalidTransition:
                    log.info("job %s had already ended", job_id)
                    break
                except Unreachable:
                    log.warning("job %s: the ledger is not answering (try %d)", job_id, attempt + 1)
                    await asyncio.sleep(1.0)
                except ArchipelagError:
                    log.exception("could not record the end of job %s", job_id)
                    break
        finally:
            self._relay.end(job_id)
            self._tickets.pop(job_id, None)
            ticket.ended.set()

    # --- the ledger, off the event path ----------------------------------------------------------

    async def _admitted(self, ticket: Ticket, created: Awaitable[Any]) -> None:
        try:
            await created
        except Exception:  # noqa: BLE001 - the submitter reports why to its caller
            ticket.abandoned = True
            await self.cancel(ticket.job_id, "the job was not accepted")

    def _record(self, ticket: Ticket, write: Callable[[], Awaitable[Any]]) -> None:
        """Queue a ledger write behind the job's earlier ones: the host starts and the first token reaches the
        user without waiting on SQL. A write another writer beat (the job was ended meanwhile) stops the run."""
        previous = ticket.ledger_tail

        async def run() -> None:
            if previous is not None:
                await previous
            if ticket.abandoned:
                return
            try:
                await write()
            except InvalidTransition:
                log.info("job %s moved elsewhere meanwhile; stopping its run", ticket.job_id)
                await self.cancel(ticket.job_id, "the job ended elsewhere")
            except ArchipelagError as exc:
                log.warning("job %s: a ledger write was not recorded: %s", ticket.job_id, exc.message)

        ticket.ledger_tail = self._spawn(run())

    async def _karma_drop(self, host_id: HostId, job_id: JobId, reason: str) -> None:
        try:
            await self._ledger.record_karma(host_id, KarmaKind.HOST_DROPPED, job_id=job_id, reason=reason)
        except ArchipelagError as exc:
            log.warning("karma for %s not recorded: %s", host_id, exc.message)
            return
        self._placement.refresh_karma([host_id])  # placement reads it from the ledger: nobody hands it values

    def _spawn(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _kind(event: Any) -> Any:
    """An event's type, or None for what a host sent that is no event (the relay refuses it)."""
    return event.get("type") if isinstance(event, dict) else None
