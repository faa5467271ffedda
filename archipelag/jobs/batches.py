"""Batches: one request fanned out to child jobs — their admission, the driver that releases them into the queue a
few at a time, and the parent's end (its state and the children's merged output).

Each child is an ordinary job once released: placement, failover, streaming and settlement are the dispatcher's,
per child. What the driver adds is the pace — at most ``max_parallelism`` children between release and end, and
never more than the batch's share of the queue, so a big batch cannot make single jobs wait for room (503) —
and the batch's rules: ``fail_fast`` cancels the rest at the first child that does not succeed (the ones never
released are refunded in one write), ``best_effort`` lets every child run. The ledger holds everything the
driver needs, so a restarted jobs service starts a new driver for every unfinished batch and it carries on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Protocol

from archipelag.catalog import Manifest, lookup, max_price_micro
from archipelag.errors import ArchipelagError, InvalidTransition, PayloadTooLarge, ValidationFailed
from archipelag.ids import JobId, WorkloadSlug
from archipelag.jobs.admission import validate_input
from archipelag.jobs.ports import JobLedger
from archipelag.ledger.records import BatchChild, Job, JobBatch
from archipelag.lifecycle import TERMINAL_JOB_STATES, JobStatus
from archipelag.protocol import error_event

log = logging.getLogger(__name__)

_WAITING = frozenset({JobStatus.SUBMITTED, JobStatus.QUEUED})  # no host has begun it
_RUNNING = frozenset({JobStatus.ASSIGNED, JobStatus.STARTED, JobStatus.STREAMING})
IDLE_CHECK_S = 0.5  # with no child ending, the driver looks again this often (queue room, a cancel)


class MergeStrategy(StrEnum):
    CONCAT = "concat"  # the children's outputs as a JSON list, in input order
    FLATTEN = "flatten"  # the same, with every output that is a list spliced in (one level)


class FailMode(StrEnum):
    BEST_EFFORT = "best_effort"  # every child runs; a failed one's place in the output is null
    FAIL_FAST = "fail_fast"  # the first child that does not succeed cancels the rest and fails the batch


# --- admission (pure) ------------------------------------------------------------------------------------


def admit_batch(catalog: dict[WorkloadSlug, Manifest], slug: str, inputs: Sequence[dict[str, Any]],
                max_input_bytes: int, max_inputs: int) -> tuple[Manifest, list[int]]:
    """The workload and each child's reservation; every input is checked as a single job's would be, and the
    first wrong one refuses the whole batch with its index named (nothing is created)."""
    if not 1 <= len(inputs) <= max_inputs:
        raise ValidationFailed(f"a batch takes 1 to {max_inputs} inputs, not {len(inputs)}",
                               errors={"inputs": f"between 1 and {max_inputs} items"})
    manifest = lookup(catalog, slug)
    reserves: list[int] = []
    for index, job_input in enumerate(inputs):
        try:
            validate_input(manifest, job_input, max_input_bytes)
        except ValidationFailed as exc:
            errors = exc.details.get("errors") or {"input": exc.message}
            raise ValidationFailed(f"inputs[{index}]: {exc.message}", errors={
                f"inputs[{index}]{str(name).removeprefix('input')}": why for name, why in errors.items()}) from None
        except PayloadTooLarge as exc:
            raise PayloadTooLarge(f"inputs[{index}]: {exc.message}", **exc.details) from None
        reserves.append(max_price_micro(manifest, job_input))
    return manifest, reserves


# --- the parent's end (pure) ---------------------------------------------------------------------------


def _value(output: str | None) -> Any:
    """A child's output as a JSON value: what it encodes when it is JSON, else the text itself."""
    if output is None:
        return None
    try:
        return json.loads(output)
    except ValueError:
        return output


def merged_output(children: Sequence[BatchChild], strategy: str) -> str:
    """The children's outputs in index order as one JSON list (a child that did not succeed gives null)."""
    values = [_value(c.output) if c.status is JobStatus.SUCCEEDED else None
              for c in sorted(children, key=lambda c: c.batch_index)]
    if strategy == MergeStrategy.FLATTEN:
        values = [item for value in values for item in (value if isinstance(value, list) else [value])]
    return json.dumps(values, separators=(",", ":"))


def outcome(children: Sequence[BatchChild], fail_mode: str, cancelled: str | None) -> tuple[JobStatus, str | None]:
    """The parent's end state and error: cancelled when someone cancelled it, failed when fail_fast met a child
    that did not succeed or no child succeeded, else succeeded (best_effort keeps partial results)."""
    if cancelled is not None:
        return JobStatus.CANCELLED, cancelled
    bad = [c for c in sorted(children, key=lambda c: c.batch_index) if c.status is not JobStatus.SUCCEEDED]
    if bad and fail_mode == FailMode.FAIL_FAST:
        first = next((c for c in bad if c.status is not JobStatus.CANCELLED), bad[0])
        return JobStatus.FAILED, (f"child {first.batch_index} ended {first.status}: {first.error or 'no reason'}; "
                                  "fail_fast cancelled the rest")
    if bad and len(bad) == len(children):
        return JobStatus.FAILED, f"all {len(children)} children failed; the first: {bad[0].error or bad[0].status}"
    return JobStatus.SUCCEEDED, None


# --- the driver ------------------------------------------------------------------------------------------


class Children(Protocol):
    """What the driver needs of the jobs service: children into the dispatcher, and room in its queue."""

    def release(self, child: Job) -> asyncio.Event:
        """Queue the child as an ordinary job; the event is set once it has ended."""
        ...

    async def resume(self, child: Job) -> asyncio.Event | None:
        """A child an earlier coordinator left running: runs again (None when it ended instead)."""
        ...

    async def cancel(self, job_id: JobId, reason: str) -> None: ...

    def room(self) -> int:
        """How many more children the queue takes now."""
        ...


class BatchDriver:
    """Drives one batch from wherever the ledger says it is to its parent's end."""

    def __init__(self, parent_id: JobId, ledger: JobLedger, children: Children) -> None:
        self.parent_id = parent_id
        self._ledger = ledger
        self._children = children
        self._ended: asyncio.Queue[JobId | None] = asyncio.Queue()  # None: only a wake-up
        self._cancel_reason: str | None = None
        self._watches: set[asyncio.Task[None]] = set()  # held here: the loop keeps only weak references to tasks
        self.done = asyncio.Event()

    def cancel(self, reason: str) -> None:
        """Cancel the batch: no child is released any more, the running ones are stopped."""
        self._cancel_reason = self._cancel_reason or reason
        self._ended.put_nowait(None)

    async def run(self) -> None:
        try:
            await self._drive()
        except ArchipelagError as exc:  # the ledger unreachable, a workload gone from the catalog: no batch hangs
            log.exception("batch %s: its driver stopped", self.parent_id)
            await self._give_up(f"the batch could not go on: {exc.message}")
        finally:
            for task in self._watches:
                task.cancel()
            self.done.set()

    async def _drive(self) -> None:
        batch = await self._ledger.get_batch(self.parent_id)
        if batch.parent.status in TERMINAL_JOB_STATES:
            return
        await self._start_parent(batch.parent.status)
        limit = batch.max_parallelism or len(batch.children)
        waiting = deque(c.id for c in batch.children if c.status in _WAITING)
        running: set[JobId] = set()
        failed = any(c.status in TERMINAL_JOB_STATES and c.status is not JobStatus.SUCCEEDED
                     for c in batch.children)
        for child in batch.children:
            if child.status in _RUNNING:
                ended = await self._children.resume(await self._ledger.get_job(child.id))
                if ended is not None:
                    self._watch(child.id, ended)
                    running.add(child.id)
        stopping = False
        while waiting or running:
            stop = self._cancel_reason or ("fail_fast" if failed and batch.fail_mode == FailMode.FAIL_FAST else None)
            if stop is not None and not stopping:
                stopping = True
                reason = self._cancel_reason or "another child of the batch failed (fail_fast)"
                await self._ledger.cancel_waiting_children(self.parent_id, list(waiting), reason)
                waiting.clear()
                for job_id in list(running):
                    await self._children.cancel(job_id, reason)
            free = min(limit - len(running), self._children.room(), len(waiting))
            if free > 0:  # the next children, moved to queued in one write
                for job in await self._ledger.queue_children(self.parent_id,
                                                             [waiting.popleft() for _ in range(free)]):
                    if job.status in TERMINAL_JOB_STATES:  # cancelled by hand before its turn
                        failed = failed or job.status is not JobStatus.SUCCEEDED
                        continue
                    self._watch(job.id, self._children.release(job))
                    running.add(job.id)
            finished = [job_id for job_id in await self._next_ended() if job_id in running]
            if finished:
                running.difference_update(finished)
                statuses = await self._ledger.job_statuses(list(finished))
                failed = failed or any(statuses.get(job_id) is not JobStatus.SUCCEEDED for job_id in finished)
        await self._end_parent(await self._ledger.get_batch(self.parent_id))

    async def _next_ended(self) -> list[JobId]:
        """The children that ended since the last look (waiting a moment for one)."""
        try:
            first = await asyncio.wait_for(self._ended.get(), IDLE_CHECK_S)
        except TimeoutError:
            return []
        found = [first]
        while not self._ended.empty():
            found.append(self._ended.get_nowait())
        return [job_id for job_id in found if job_id is not None]

    def _watch(self, job_id: JobId, ended: asyncio.Event) -> None:
        async def watch() -> None:
            await ended.wait()
            self._ended.put_nowait(job_id)

        task = asyncio.ensure_future(watch())
        self._watches.add(task)
        task.add_done_callback(self._watches.discard)

    async def _start_parent(self, status: JobStatus) -> None:
        """The parent reads ``running`` while its children run (it has no host of its own)."""
        steps = {JobStatus.SUBMITTED: (JobStatus.QUEUED, JobStatus.ASSIGNED, JobStatus.STARTED),
                 JobStatus.QUEUED: (JobStatus.ASSIGNED, JobStatus.STARTED), JobStatus.ASSIGNED: (JobStatus.STARTED,)}
        for step in steps.get(status, ()):
            await self._ledger.transition(self.parent_id, step, "its children run")

    async def _give_up(self, reason: str) -> None:
        """Cancel what has not begun and fail the batch (children already running end on their own)."""
        try:
            batch = await self._ledger.get_batch(self.parent_id)
            waiting = [c.id for c in batch.children if c.status in _WAITING]
            await self._ledger.cancel_waiting_children(self.parent_id, list(waiting), reason)
            await self._ledger.finish(self.parent_id, JobStatus.FAILED, output=None, error=reason, usage={},
                                      events=[dict(error_event(reason, "failed"), seq=0)], price_micro=0,
                                      host_id=None)
        except ArchipelagError:
            log.exception("batch %s could not be ended; a restart resumes it", self.parent_id)

    async def _end_parent(self, batch: JobBatch) -> None:
        status, error = outcome(batch.children, batch.fail_mode, self._cancel_reason)
        output = merged_output(batch.children, batch.merge_strategy)
        events = [{"type": "done"}] if status is JobStatus.SUCCEEDED else [
            error_event(error or str(status), "cancelled" if status is JobStatus.CANCELLED else "failed")]
        try:
            await self._ledger.finish(self.parent_id, status, output=output, error=error, usage={},
                                      events=[dict(e, seq=i) for i, e in enumerate(events)], price_micro=0,
                                      host_id=None)
        except InvalidTransition:
            log.info("batch %s had already ended", self.parent_id)
        except ArchipelagError:
            log.exception("could not record the end of batch %s", self.parent_id)
