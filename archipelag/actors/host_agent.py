"""Host agent: runs jobs on one host in its sandboxed runtimes and streams their events.

``HostAgent`` holds the logic and imports no Ray; ``HostAgentActor`` (in actor.py) is the thin
Ray shell pinned to the host's node. Every event leaving the agent carries ``seq``; every job
ends with exactly one final ``done`` or ``error`` event, whatever the workload did — except a job the host
stops because it is leaving: its stream ends without one, which tells the coordinator to run it on another host.
A host with a key signs a receipt into each ``done`` event (receipts.py): the coordinator charges nothing without.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass

from archipelag import identity, receipts
from archipelag.actors.controls import (
    ONLINE,
    AgentView,
    Command,
    Controller,
    ControlState,
    ShareLimits,
    declines,
    next_state,
)
from archipelag.errors import ArchipelagError, HostBusy, JobCancelled, WorkloadError
from archipelag.ids import HostId, JobId
from archipelag.lifecycle import HostStatus
from archipelag.metrics.trace import TRACE
from archipelag.protocol import OUTPUT_TYPES, Event, error_event, is_final
from archipelag.runtimes.base import CancelToken, JobSpec, Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostLoad:
    active_jobs: int
    slots: int
    running: tuple[JobId, ...]


Admission = Callable[[JobSpec], JobSpec]


def admit_all(spec: JobSpec) -> JobSpec:
    return spec


class HostAgent:
    """``admit`` checks a job against the host's verified catalog before anything runs and returns
    the spec to run (the signed entry's); it raises WorkloadRefused to refuse. A paused or draining host, and
    one whose owner does not lend what a job needs (``share``), turns the job away before it starts (the job
    goes to the next host): placement filters the same, but a host does not rely on placement for its limits.
    With ``signer`` (the host's key, or its gate) every ``done`` event leaves with the host's signed receipt."""

    def __init__(self, host_id: HostId, runtimes: Mapping[str, Runtime], slots: int,
                 admit: Admission = admit_all, share: ShareLimits | None = None,
                 signer: identity.Signer | None = None) -> None:
        self.host_id = host_id
        self._signer = signer
        self._admit_spec = admit
        self._share = share
        self._state = ONLINE
        self._control_lock = threading.Lock()
        self._leaving = False
        self._runtimes = dict(runtimes)
        self._slots = slots
        self._tokens: dict[JobId, CancelToken] = {}
        self._lock = threading.Lock()

    @property
    def runtimes(self) -> frozenset[str]:
        return frozenset(self._runtimes)

    def warm(self, now: float) -> frozenset[str]:
        """Workloads a runtime here can start without a build or load (e.g. a cached image)."""
        return frozenset().union(*(runtime.warm(now) for runtime in self._runtimes.values()))

    @property
    def state(self) -> ControlState:
        return self._state

    def control(self, command: Command, by: Controller, reason: str, now: float,
                tell: Callable[[HostStatus], None]) -> AgentView:
        """Pause, resume or drain: new jobs are turned away while paused or draining; running ones go on.
        ``tell`` (placement) hears a change of status first: when it refuses (a suspended host), nothing changes."""
        with self._control_lock:
            new = next_state(self._state, command, by, reason, now)
            if new.status != self._state.status:
                tell(new.status)
            self._state = new
            return self.view()

    def restate(self, tell: Callable[[HostStatus], None]) -> None:
        """Tell placement this host's status again when it is not online (a host placement marked offline comes
        back paused, not online). Under the control lock: a pause or resume being told cannot be overtaken by this
        older word, which would leave placement with the old status for good."""
        with self._control_lock:
            if self._state.status != HostStatus.ONLINE:
                tell(self._state.status)

    def view(self) -> AgentView:
        return AgentView(self._state, self.load().running)

    def _turned_away(self, spec: JobSpec) -> str | None:
        state = self._state
        if state.status != HostStatus.ONLINE:
            return f"host {self.host_id} takes no new jobs: {state.reason or state.status}"
        why = declines(self._share, spec.workload) if self._share is not None else None
        return None if why is None else f"host {self.host_id} declines the job: {why}"

    def load(self) -> HostLoad:
        with self._lock:
            return HostLoad(len(self._tokens), self._slots, tuple(self._tokens))

    def run(self, spec: JobSpec) -> Generator[Event, None, None]:
        """Run one job; yield its events numbered by ``seq``. Never raises for workload faults."""
        seq = 0

        def numbered(event: Event) -> Event:
            nonlocal seq
            event["seq"] = seq
            seq += 1
            return event

        away = self._turned_away(spec)
        if away is not None:
            yield numbered(error_event(away, HostBusy.code))
            return
        token = self._admit(spec.job_id)
        if token is None:
            yield numbered(error_event(f"host {self.host_id} is full ({self._slots} jobs running)", HostBusy.code))
            return
        try:
            runtime = self._runtimes.get(spec.workload.runtime)
            if runtime is None:
                yield numbered(error_event(
                    f"host {self.host_id} has no {spec.workload.runtime} runtime", "runtime_unavailable"))
                return
            spec = self._admit_spec(spec)
            if TRACE.on:
                TRACE.stamp(spec.job_id, "sandbox_in")
            events = runtime.run(spec, token)  # refuses (or turns the job away) before it counts as started
            signed_there = getattr(runtime, "signs_receipts", False)  # the host's gate: it signed what it sent
            yield numbered({"type": "status", "message": f"started on {self.host_id}"})
            ended = False
            output = False
            produced: list[Event] = []  # what this attempt's receipt covers
            try:
                for event in events:
                    if not output and event.get("type") in OUTPUT_TYPES and TRACE.on:
                        TRACE.stamp(spec.job_id, "sandbox_out")
                        output = True
                    if self._signer is not None:
                        produced.append(event)
                        if event.get("type") == "done" and not (signed_there and "receipt" in event):
                            event["receipt"] = receipts.sign(self._signer, spec.job_id, spec.attempt, produced)
                    yield numbered(event)
                    if is_final(event):
                        ended = True
                        break
            finally:
                close = getattr(events, "close", None)
                if close is not None:
                    close()  # a consumer that walked away stops the sandbox too
            if not ended and not self._leaving:
                yield numbered(error_event("workload ended without a done or error event", "protocol_violation"))
        except JobCancelled as exc:
            if self._leaving:
                return  # no final event: the job is not over, it moves to another host
            yield numbered(error_event(token.reason or exc.message, JobCancelled.code))
        except ArchipelagError as exc:
            yield numbered(error_event(exc.message, exc.code))
        except Exception as exc:  # a runtime bug must not take the host down with it
            log.exception("runtime crashed on job %s", spec.job_id)
            yield numbered(error_event(f"the host's runtime failed: {type(exc).__name__}: {exc}",
                                       WorkloadError.code))
        finally:
            with self._lock:
                self._tokens.pop(spec.job_id, None)

    def run_batched(self, spec: JobSpec, keepalive_s: float = 1.0,
                    max_batch: int = 1024) -> Generator[list[Event], None, None]:
        """``run``'s events in lists: whatever has arrived since the last list, never waiting for more.
        One list per Ray item instead of one event per item lifts the events/s a stream can carry,
        without delaying a single event. While the job is quiet an empty list goes every ``keepalive_s``: the
        coordinator holds the job's lease on this host only while it hears from it. The job runs in its own
        thread."""
        mailbox: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        consumer_gone = threading.Event()

        def produce() -> None:
            events = self.run(spec)
            try:
                for event in events:
                    mailbox.put(event)
                    if consumer_gone.is_set():
                        break
            finally:
                events.close()
                mailbox.put(None)

        worker = threading.Thread(target=produce, name=f"job-{spec.job_id}", daemon=True)
        worker.start()
        try:
            while True:
                try:
                    first = mailbox.get(timeout=keepalive_s)
                except queue.Empty:
                    yield []
                    continue
                if first is None:
                    return
                batch = [first]
                while len(batch) < max_batch:
                    try:
                        event = mailbox.get_nowait()
                    except queue.Empty:
                        break
                    if event is None:
                        yield batch
                        return
                    batch.append(event)
                yield batch
        finally:
            consumer_gone.set()
            self.cancel(spec.job_id, "the job's consumer went away")
            worker.join(timeout=10)

    def cancel(self, job_id: JobId, reason: str = "cancelled by the user") -> bool:
        """Interrupt a running job; False when it is not running here."""
        with self._lock:
            token = self._tokens.get(job_id)
        if token is None:
            return False
        token.cancel(reason)
        return True

    def cancel_all(self, reason: str) -> None:
        with self._lock:
            tokens = list(self._tokens.values())
        for token in tokens:
            token.cancel(reason)

    def close(self, reason: str = "the host is leaving the network") -> None:
        """Stop what runs and release every runtime. The stopped jobs end without a final event, so each runs
        again on another host rather than ending cancelled for its user."""
        self._leaving = True
        self.cancel_all(reason)
        for runtime in self._runtimes.values():
            runtime.close()

    def _admit(self, job_id: JobId) -> CancelToken | None:
        with self._lock:
            if len(self._tokens) >= self._slots:
                return None
            token = CancelToken()
            self._tokens[job_id] = token
            return token
