"""Dispatch: takes a queued job to a host, relays its events to subscribers, and records the end.

One ``LiveJob`` per job this ingress is running: its events so far (for late subscribers) and a
waiter that wakes streams when the next event arrives. A job's host is lost → the job goes back
to `queued` and the next host of the ranked list takes it, up to the attempt limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from archipelag.catalog import Manifest, price_micro
from archipelag.errors import ArchipelagError, HostLost, InvalidTransition, NoCapacity
from archipelag.ids import HostId, JobId
from archipelag.ledger.karma_rules import KarmaKind
from archipelag.lifecycle import JobStatus
from archipelag.protocol import Event, collect_output, error_event
from archipelag.runtimes.base import JobSpec
from archipelag.sandbox import Limits

log = logging.getLogger(__name__)

# Final error codes → the job's end state; anything else is `failed`.
_END_BY_CODE = {"cancelled": JobStatus.CANCELLED, "timed_out": JobStatus.TIMED_OUT}
# Events that are output (the job is `streaming` once the first arrives); status events are not.
_OUTPUT = frozenset({"token", "progress", "image"})
# A host that turns the job away before running it: try the next host, no attempt used.
_TURNED_AWAY = frozenset({"host_busy", "runtime_unavailable"})


class HostRunner(Protocol):
    """What the dispatcher needs of a host (HostAgentClient in production)."""

    def run(self, spec: JobSpec) -> AsyncIterator[Event]: ...

    async def cancel(self, job_id: JobId, reason: str = ...) -> bool: ...


@dataclass
class LiveJob:
    job_id: JobId
    events: list[Event] = field(default_factory=list)
    done: bool = False
    host_id: HostId | None = None
    cancel_requested: bool = False
    started_monotonic: float | None = None
    ledger_tail: asyncio.Task[None] | None = None  # the last queued ledger write (they run in order)
    abandoned: bool = False  # the ledger refused to create the job: stop the run, write nothing
    _waiter: asyncio.Future[None] | None = None

    def publish(self, event: Event) -> None:
        event["seq"] = len(self.events)
        self.events.append(event)
        self._wake()

    def close(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._waiter = None

    async def follow(self, start: int = 0) -> AsyncIterator[Event]:
        """Every event from ``start`` on, waiting for new ones until the job is done."""
        async for batch in self.batches(start):
            for event in batch:
                yield event

    async def batches(self, start: int = 0) -> AsyncIterator[list[Event]]:
        """Like ``follow``, but each time all events that have arrived, as one list."""
        index = start
        while True:
            if index < len(self.events):
                batch = self.events[index:]
                index += len(batch)
                yield batch
                continue
            if self.done:
                return
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)


class Dispatcher:
    def __init__(
        self,
        db: Callable[..., Awaitable[Any]],
        hosts: Callable[[HostId], HostRunner],
        rerank: Callable[[Manifest, str | None, frozenset[HostId]], Any],
        placement_events: Any,
        max_attempts: int,
        forget_host: Callable[[HostId], None] = lambda _: None,
        queue_timeout_s: float = 120.0,
    ) -> None:
        self._queue_timeout_s = queue_timeout_s
        self._forget_host = forget_host
        self._db = db  # db("method", *args): a Ledger method, run off the event loop
        self._hosts = hosts
        self._rerank = rerank  # async (manifest, region, excluded) -> list[HostId]
        self._placement = placement_events  # job_assigned / job_released / mark_offline, fire-and-forget
        self._max_attempts = max_attempts
        self._live: dict[JobId, LiveJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._capacity = asyncio.Condition()  # notified when a job here frees a slot; waiters queue FIFO

    def live(self, job_id: JobId) -> LiveJob | None:
        return self._live.get(job_id)

    def start(self, job_id: JobId, manifest: Manifest, job_input: dict[str, Any], limits: Limits,
              region: str | None, ranked: Sequence[HostId], admitted: Awaitable[Any] | None = None) -> LiveJob:
        """Run the job. ``admitted``: the ledger's creation of the job, still under way; the job's ledger writes
        wait for it, and if it fails the run stops and nothing more is written."""
        live = LiveJob(job_id)
        if admitted is not None:
            live.ledger_tail = asyncio.get_running_loop().create_task(self._admitted(live, admitted))
        self._live[job_id] = live
        task = asyncio.get_running_loop().create_task(
            self._drive(live, manifest, JobSpec(job_id, manifest, job_input, limits), region, list(ranked)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return live

    async def _admitted(self, live: LiveJob, admitted: Awaitable[Any]) -> None:
        try:
            await admitted
        except Exception:  # noqa: BLE001 - the submitter reports why to its caller
            live.abandoned = True
            await self.cancel(live.job_id)

    async def cancel(self, job_id: JobId) -> bool:
        """Ask the job's host to stop it; True when it was running here."""
        live = self._live.get(job_id)
        if live is None or live.done:
            return False
        live.cancel_requested = True
        if live.host_id is not None:
            await self._hosts(live.host_id).cancel(job_id, "cancelled by the user")
        return True

    async def wait_done(self, job_id: JobId, timeout_s: float) -> None:
        live = self._live.get(job_id)
        if live is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                async for _ in live.follow(len(live.events)):
                    pass
        except TimeoutError:
            pass

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _drive(self, live: LiveJob, manifest: Manifest, spec: JobSpec, region: str | None,
                     candidates: list[HostId]) -> None:
        try:
            await self._attempts(live, manifest, spec, region, candidates)
        except Exception as exc:  # never leave a job hanging because of a bug here
            log.exception("dispatch of job %s failed", live.job_id)
            await self._finish(live, manifest, JobStatus.FAILED, [], f"internal error: {exc}", None)
        finally:
            live.close()
            asyncio.get_running_loop().call_later(60, self._live.pop, live.job_id, None)

    async def _attempts(self, live: LiveJob, manifest: Manifest, spec: JobSpec, region: str | None,
                        candidates: list[HostId]) -> None:
        lost = 0
        excluded: set[HostId] = set()  # hosts lost while running this job
        deadline = time.monotonic() + self._queue_timeout_s
        while True:
            if live.cancel_requested:
                await self._finish(live, manifest, JobStatus.CANCELLED, [], "cancelled by the user", None)
                return
            if not candidates:
                try:
                    candidates = list(await self._rerank(manifest, region, frozenset(excluded)))
                except NoCapacity as exc:
                    if exc.details.get("full") and time.monotonic() < deadline:  # wait in the queue
                        await self._wait_for_capacity()
                        continue
                    await self._finish(live, manifest, JobStatus.FAILED, [], f"no host could take the job: "
                                       f"{exc.message}", None)
                    return
            host_id = candidates.pop(0)
            self._record(live, "transition", live.job_id, JobStatus.ASSIGNED, host_id=host_id)
            live.host_id = host_id
            self._placement.job_assigned(host_id)
            try:
                outcome = await self._run_on(live, host_id, spec)
            except HostLost as exc:
                self._placement.mark_offline(host_id, exc.message)
                self._forget_host(host_id)
                await self._karma(host_id, KarmaKind.HOST_DROPPED, live.job_id, reason=exc.message)
                excluded.add(host_id)
                lost += 1
                if lost >= self._max_attempts:
                    await self._finish(live, manifest, JobStatus.FAILED, [], f"{exc.message}; gave up after "
                                       f"{lost} attempts", None)
                    return
                await self._recorded(live)
                await self._db("requeue", live.job_id, exc.message)
                live.publish({"type": "status", "message": f"host {host_id} was lost; retrying on another host "
                              f"(attempt {lost + 1} of {self._max_attempts})", "retry": lost + 1})
                continue
            finally:
                self._placement.job_released(host_id)
                live.host_id = None
                await self._slot_freed()
            if outcome is None:  # turned away before it started (full): back to the queue, same attempt
                await self._recorded(live)
                await self._db("transition", live.job_id, JobStatus.QUEUED,
                               reason=f"host {host_id} turned the job away")
                if time.monotonic() > deadline:
                    await self._finish(live, manifest, JobStatus.FAILED, [], "no host had a free slot within "
                                       f"{self._queue_timeout_s:.0f} s", None)
                    return
                if not candidates:
                    await self._wait_for_capacity()
                continue
            status, events, error = outcome
            await self._finish(live, manifest, status, events, error, host_id)
            return

    async def _wait_for_capacity(self, longest_s: float = 0.5) -> None:
        """Wait, in arrival order, until a job here frees a slot (or a while: slots also free elsewhere)."""
        async with self._capacity:
            try:
                await asyncio.wait_for(self._capacity.wait(), longest_s)
            except TimeoutError:
                pass

    async def _slot_freed(self) -> None:
        async with self._capacity:
            self._capacity.notify(1)

    async def _run_on(self, live: LiveJob, host_id: HostId,
                      spec: JobSpec) -> tuple[JobStatus, list[Event], str | None] | None:
        events: list[Event] = []
        started = streaming = False
        async for event in self._hosts(host_id).run(spec):
            if event["type"] == "error" and event.get("code") in _TURNED_AWAY and not events:
                return None
            if not started:  # the host took it: its first event
                started = True
                live.started_monotonic = time.monotonic()
                if live.cancel_requested:  # a cancel that came while the host was still admitting it
                    await self._hosts(host_id).cancel(live.job_id, "cancelled by the user")
                self._record(live, "transition", live.job_id, JobStatus.STARTED)
            elif not streaming and event["type"] in _OUTPUT:  # output begins to flow
                streaming = True
                self._record(live, "transition", live.job_id, JobStatus.STREAMING)
            event.pop("seq", None)
            events.append(event)
            live.publish(event)
            if event["type"] == "done":
                return JobStatus.SUCCEEDED, events, None
            if event["type"] == "error":
                return _END_BY_CODE.get(event.get("code", ""), JobStatus.FAILED), events, event["message"]
        raise HostLost(f"host {host_id} closed the job's stream without a final event", host_id=host_id)

    async def _finish(self, live: LiveJob, manifest: Manifest, status: JobStatus, events: list[Event],
                      error: str | None, host_id: HostId | None) -> None:
        if status != JobStatus.SUCCEEDED and not any(e["type"] == "error" for e in events):
            event = error_event(error or status.value, "cancelled" if status == JobStatus.CANCELLED else "failed")
            events = [*events, event]
            live.publish(event)
        await self._recorded(live)
        if live.abandoned:
            return
        done = next((e for e in reversed(events) if e["type"] == "done"), None)
        usage = dict(done.get("usage") or {}) if done else {}
        succeeded = status == JobStatus.SUCCEEDED
        charge = price_micro(manifest, usage) if succeeded else 0  # per token for LLMs (DESIGN §7)
        compute_s = time.monotonic() - (live.started_monotonic or time.monotonic())
        try:
            # Stored: everything the live stream carried (earlier attempts too), so a late reader sees the same.
            await self._db("finish", live.job_id, status, output=collect_output(events), error=error,
                           usage=usage, events=list(live.events), price_micro=charge,
                           host_id=host_id, karma=KarmaKind.JOB_SUCCEEDED if succeeded and host_id else None,
                           compute_s=compute_s)
        except InvalidTransition:
            log.info("job %s already ended elsewhere", live.job_id)
        except ArchipelagError:
            log.exception("could not record the end of job %s", live.job_id)

    def _record(self, live: LiveJob, method: str, *args: Any, **kwargs: Any) -> None:
        """Queue a ledger write of the job behind its earlier ones, off the event path: the host starts and the
        first token reaches the user without waiting on SQL. A write that loses to another writer (the job was
        cancelled meanwhile) cancels the run on its host."""
        previous = live.ledger_tail

        async def write() -> None:
            if previous is not None:
                await previous
            if live.abandoned:
                return
            try:
                await self._db(method, *args, **kwargs)
            except InvalidTransition:
                log.info("job %s moved elsewhere meanwhile; stopping its run", live.job_id)
                await self.cancel(live.job_id)
            except ArchipelagError as exc:
                log.warning("job %s: ledger %s not recorded: %s", live.job_id, method, exc.message)

        live.ledger_tail = asyncio.get_running_loop().create_task(write())

    async def _recorded(self, live: LiveJob) -> None:
        """Wait for the job's queued ledger writes (before a write that must follow them)."""
        if live.ledger_tail is not None:
            await live.ledger_tail

    async def _karma(self, host_id: HostId, kind: KarmaKind, job_id: JobId, compute_s: float = 0.0,
                     reason: str | None = None) -> None:
        try:
            await self._db("record_karma", host_id, kind, job_id=job_id, compute_s=compute_s,
                           reason=reason)
            self._placement.set_karma(host_id, await self._db("karma_score", host_id))
        except ArchipelagError as exc:
            log.warning("karma for %s not recorded: %s", host_id, exc.message)
