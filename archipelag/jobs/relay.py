"""Relay: the one owner of every running job's live events.

Events are numbered once, here (``seq`` 0, 1, 2 … is also the SSE ``id:``), de-duplicated across retried
attempts (``replay``) and fenced by attempt: a batch from an attempt that is no longer current (a host that
lost its lease and answered late) is dropped. Readers on any API replica read batches after the last ``seq``
they saw, waiting when there is nothing new — one call per burst of events, never one per event.

A job's final event is held back from readers until ``end`` — after the ledger has recorded the end — so a
client that sees ``done`` and then asks for the job finds it finished. No Ray here: the JobsActor holds one
Relay on its event loop.

Hosts are untrusted for what they send (DESIGN §10): every event is checked (``protocol.received``), a job's
events are bounded by its ``Budget`` — what a log holds, the coordinator's memory and the ledger's stored
events and output alike — and a ``done`` event's usage must be believable before anything is charged on it. In a
network whose hosts have enrolled keys the ``done`` event must also carry the host's signed receipt of that usage
and of the job's output as this log holds it (``receipts.Expected``). A breach raises ``BadReceipt`` after the
events before it, the done event withheld; the dispatcher fails the job for the host.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from archipelag.errors import BadReceipt
from archipelag.ids import JobId
from archipelag.jobs.replay import Diverged, Replay
from archipelag.protocol import (
    FINAL_TYPES,
    Event,
    checked_usage,
    collect_output,
    error_event,
    holds_output,
    received,
)
from archipelag.receipts import Expected, Receipt

MAX_BATCH = 512  # events in one read


@dataclass(frozen=True)
class Budget:
    """What one job's hosts may send: ``output_bytes`` of events in all (as ``protocol.received`` counts them),
    at most ``events`` events, and usage counts within what the request allowed (None: no bound but a whole
    number)."""

    output_bytes: int
    events: int
    completion_tokens: int | None = None
    prompt_tokens: int | None = None


@dataclass(frozen=True)
class Batch:
    """Events after the reader's last ``seq``, and whether the stream has ended (nothing will follow)."""

    events: list[Event]
    ended: bool

    @property
    def last_seq(self) -> int | None:
        return self.events[-1]["seq"] if self.events else None


class JobLog:
    """One job's stream: the numbered events, the current attempt, and the readers waiting for more."""

    def __init__(self, job_id: JobId, events: Iterable[Event] = (), owner: int | None = None) -> None:
        self.job_id = job_id
        self.owner = owner  # the account whose job it is: the only one that may read it
        self.events: list[Event] = [dict(e, seq=i) for i, e in enumerate(events)]  # a checkpoint, renumbered
        self.saved = len(self.events)  # how many of them a checkpoint holds
        self.size = sum(_size_of_stored(e) for e in self.events)  # bytes of output counted against the budget
        self.budget: Budget | None = None
        self.attempt = 0
        self.receipt: Receipt | None = None  # the accepted receipt of the attempt that ended the job
        self._expected: Expected | None = None
        self.ended = False
        self._visible = len(self.events)
        self._replay: Replay | None = None
        self._waiters: list[asyncio.Future[None]] = []  # a reader each: one wakes in one step of the loop

    @property
    def final(self) -> Event | None:
        return self.events[-1] if self.events and self.events[-1]["type"] in FINAL_TYPES else None

    def begin(self, attempt: int, budget: Budget | None = None, receipt: Expected | None = None) -> None:
        """A new attempt takes over the stream; what it says again is swallowed (``Replay``). ``budget`` bounds
        what the job's hosts may send from now on; ``receipt``: whose signed receipt its done event must carry
        (None: receipts are not checked)."""
        self.attempt = attempt
        self.budget = budget or self.budget
        self._expected = receipt
        self.receipt = None
        self._replay = Replay(self.events) if self.events else None

    def publish(self, attempt: int, events: Sequence[Event]) -> list[Event]:
        """Take a batch from ``attempt``'s host; the events that were new, numbered. Diverged when the
        attempt contradicts what the stream already carried; BadReceipt when an event is not the protocol, its
        usage cannot be true, or the job's events pass its budget (the events before it are taken)."""
        if attempt != self.attempt or self.ended or self.final is not None:
            return []  # fenced: a late answer from an attempt that lost its host
        published = []
        for raw in events:
            event, size = received(raw)
            if self._replay is not None:
                kept = self._replay.filter(event)
                if kept is None:
                    continue  # said again by a retry: stored once, counted once
                event = kept
            if self.budget is not None:
                self._spend(event, size, self.budget)
            if event["type"] == "done" and self._expected is not None:
                self.receipt = self._expected.accept(event, collect_output([*self.events, event]))
            published.append(self._append(event))
            if event["type"] in FINAL_TYPES:
                break
        return published

    def _spend(self, event: Event, size: int, budget: Budget) -> None:
        if len(self.events) >= budget.events:
            raise BadReceipt(f"the host sent more than the {budget.events} events this job may have",
                             limit_events=budget.events)
        if self.size + size > budget.output_bytes:
            raise BadReceipt(f"the host sent more than the {budget.output_bytes} bytes of output this job may "
                             "have (its ticket's output budget)", limit_bytes=budget.output_bytes)
        if event["type"] == "done" and "usage" in event:
            event["usage"] = checked_usage(event["usage"], budget.completion_tokens, budget.prompt_tokens)
        self.size += size

    def note(self, event: Event) -> Event:
        """An event of the coordinator's own (a retry notice, the error that ends a job)."""
        if self.final is not None or self.ended:
            return self.final or event
        return self._append(dict(event))

    def end(self) -> None:
        """The job's end is recorded: release the final event and stop readers waiting."""
        self.ended = True
        self._visible = len(self.events)
        self._wake()

    def read(self, after: int) -> Batch:
        start = max(0, after + 1)
        stop = min(self._visible, start + MAX_BATCH)
        return Batch(self.events[start:stop], self.ended and stop >= self._visible)

    async def wait(self, after: int, wait_s: float) -> Batch:
        """Events after ``after``; when there are none yet, wait up to ``wait_s`` for some."""
        batch = self.read(after)
        if batch.events or batch.ended or wait_s <= 0:
            return batch
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(wait_s):
                await waiter
        except TimeoutError:
            pass
        finally:
            if waiter in self._waiters:  # not woken: it timed out, or its reader left
                self._waiters.remove(waiter)
        return self.read(after)

    def _append(self, event: Event) -> Event:
        event["seq"] = len(self.events)
        self.events.append(event)
        if event["type"] not in FINAL_TYPES:  # a final event waits for `end` (the ledger first)
            self._visible = len(self.events)
            self._wake()
        return event

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class Relay:
    """Every live job's log. An ended job's log stays ``keep_ended_s`` for late readers, then the ledger's
    stored events serve them."""

    def __init__(self, keep_ended_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._logs: dict[JobId, JobLog] = {}
        self._ended_at: dict[JobId, float] = {}
        self._keep_ended_s = keep_ended_s
        self._clock = clock

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._logs

    def open(self, job_id: JobId, events: Iterable[Event] = (), owner: int | None = None) -> JobLog:
        self._forget_old()
        log = self._logs[job_id] = JobLog(job_id, events, owner)
        return log

    def log(self, job_id: JobId) -> JobLog | None:
        return self._logs.get(job_id)

    def publish(self, job_id: JobId, attempt: int, events: Sequence[Event]) -> list[Event]:
        log = self._logs.get(job_id)
        return log.publish(attempt, events) if log is not None else []

    def end(self, job_id: JobId) -> None:
        log = self._logs.get(job_id)
        if log is not None:
            log.end()
            self._ended_at[job_id] = self._clock()

    def unsaved(self) -> list[JobLog]:
        """Running jobs whose output (tokens, progress, images) their last checkpoint lacks: what a restart
        would have to say again. Status events alone are not worth a write."""
        return [log for log in self._logs.values() if not log.ended and holds_output(log.events[log.saved:])]

    def _forget_old(self) -> None:
        cutoff = self._clock() - self._keep_ended_s
        for job_id, at in list(self._ended_at.items()):
            if at < cutoff:
                del self._ended_at[job_id]
                self._logs.pop(job_id, None)


def _size_of_stored(event: Event) -> int:
    """What a checkpointed event counts against its job's budget, as when it was received."""
    try:
        return received(event)[1]
    except BadReceipt:  # an event of the coordinator's own that the protocol does not know
        return len(str(event))


def diverged_error(exc: Diverged) -> Event:
    return error_event(f"the job's retry on another host did not repeat what was already sent ({exc}); "
                       "submit it again", "retry_diverged")
