"""Warm model workers: one long-lived sandboxed container per host per model, serving jobs one after another or,
for a batched workload, several at once.

Loading a model costs seconds; a workload whose manifest says ``worker = true`` (llm-chat, sd-diffusers) keeps
it loaded. The container is the same hardened sandbox as a one-shot job (``docker.container_request``: read-only
root, no network, every capability dropped, the tier's seccomp profile, memory/pids/CPU limits, uid 10001), with
the model mounted read-only, ``ARCHIPELAG_WORKER=1``, and stdin kept open. Requests go in as JSON lines
``{"id": n, "input": {...}}``; each is answered by its events, ending with exactly one ``done`` or ``error``
(``workloads/container_sdk/workload_io.py``); a ``{"cancel": n}`` line asks the program to stop request ``n``.

A workload whose manifest says ``parallel = N`` (N > 1; llm-chat decodes that many chats in one batch) gets
``ARCHIPELAG_PARALLEL=N``, and its worker is multiplexed: up to N requests are in flight at once and every event
line carries the id of the request it answers as ``"rid"``. One reader thread per worker reads the output and
hands each event, without its ``rid``, to its request's mailbox; an event for an id not in flight, a line without
an id, or a line that is not the protocol is the worker's fault: it is killed and every request in flight fails
with that ``ProtocolViolation``. A worker without ``parallel`` serves one request at a time, untagged, as before.

Per request the runtime enforces the tier's budgets: its wall clock, its output bytes, events and line length.
A request past one of them fails at once (``WorkloadTimedOut``, ``BudgetExceeded``), and so does a cancelled
one (``JobCancelled``) or one whose consumer walked away: the worker is asked to stop that request only, its
later events are dropped, and its slot stays taken until the program ends it. A program that does not end it
within ``CANCEL_GRACE_S`` is killed, and the other requests it served fail saying so. A worker that dies (OOM,
crash, kill) fails every request in flight with why, and is dropped; the next request starts a fresh one.

``WorkerPool`` holds a host's workers: ``serve`` takes a slot of the job's (workload, image, model) worker,
starting one when there is none (after stopping idle ones beyond ``max_workers``, and only if the host keeps
``reserve_mb`` of memory free after it; else ``HostBusy`` and the job goes to the next host), waiting while all
its slots are taken. A reaper stops workers idle past ``idle_ttl_s``. ``warm()`` names the workloads with a live
worker; heartbeats report them and placement prefers such hosts.

Capacity: a host runs ``Settings.host_slots`` jobs at once, and a job waiting here for a worker's slot holds one.
The default (12) is the old four for sandboxed jobs plus one full batch of llm-chat (``parallel = 8``), so the
batch can fill on one host while other workloads still find room; a host that keeps more model workers warm, or
a workload with a larger batch, wants ``host_slots`` raised to match.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import docker.errors
import psutil
import requests.exceptions
from docker.models.containers import Container

from archipelag.errors import (
    ArchipelagError,
    BudgetExceeded,
    HostBusy,
    JobCancelled,
    ProtocolViolation,
    WorkloadError,
    WorkloadTimedOut,
)
from archipelag.metrics.trace import TRACE
from archipelag.protocol import OUTPUT_TYPES, Event, is_final, parse_line
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.container_io import Output, exit_failure
from archipelag.runtimes.orphans import remove_container
from archipelag.sandbox import Limits

CANCEL_GRACE_S: Final = 3.0  # a worker that ignores a cancel this long is killed
EXIT_WAIT_S: Final = 10.0  # how long to wait for a worker's exit status once its output ended
RID: Final = "rid"  # the field naming the request of each event line of a multiplexed worker

WorkerKey = tuple[str, str, str]  # (workload slug, image ID, model path)


@dataclass(frozen=True)
class Started:
    """A worker container just started: its handle and the attach socket carrying stdin and output."""

    container: Container
    sock: socket.socket
    output: Output


class _Request:
    """One request in flight: its budgets, what it wrote so far, and where its events go (events, then its final
    event or the error that ended it). The worker's lock guards the counters and ``stopped``."""

    def __init__(self, ident: int, limits: Limits, job_id: str = "") -> None:
        self.ident = ident
        self.limits = limits
        self.job_id = job_id  # for the trace's stamps
        self.output = False  # it wrote output (a token, progress, an image) before
        self.mailbox: queue.SimpleQueue[Event | ArchipelagError] = queue.SimpleQueue()
        self.bytes = 0
        self.events = 0
        self.stopped: ArchipelagError | None = None  # why it failed before the program ended it
        self.grace: threading.Timer | None = None

    def over_budget(self, line_bytes: int) -> BudgetExceeded | None:
        limits = self.limits
        if self.events > limits.output_events:
            return BudgetExceeded(f"output limit: the worker wrote more than {limits.output_events} events for "
                                  "one request")
        if self.bytes > limits.output_bytes:
            return BudgetExceeded(f"output limit: the workload wrote more than {limits.output_bytes} bytes")
        if line_bytes > limits.line_bytes:
            return BudgetExceeded(f"output limit: the workload wrote a line longer than {limits.line_bytes} bytes")
        return None


class Worker:
    """One warm container with ``parallel`` request slots. The pool takes a slot (``take``) before ``submit``;
    the slot is free again once the program ended that request, or the worker died."""

    def __init__(self, key: WorkerKey, started: Started, memory_mb: int, limits: Limits, parallel: int = 1,
                 cancel_grace_s: float = CANCEL_GRACE_S) -> None:
        self.key = key
        self.memory_mb = memory_mb
        self.parallel = max(1, parallel)
        self.last_used = time.monotonic()
        self._limits = limits  # the starting job's: the line cap while reading, the exit report
        self._grace_s = cancel_grace_s
        self._container = started.container
        self._sock = started.sock
        self._output = started.output
        self._next_id = 0
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._requests: dict[int, _Request] = {}  # in flight in the program, by id
        self._taken = 0  # slots taken: requests in flight, and takers about to submit
        self._retired = False  # the pool is dropping it: no more slots
        self._dead: ArchipelagError | None = None  # why it was killed; set once
        self._reader = threading.Thread(target=self._read, name=f"worker-{key[0]}", daemon=True)
        self._reader.start()

    @property
    def slug(self) -> str:
        return self.key[0]

    @property
    def alive(self) -> bool:
        return self._dead is None

    @property
    def usable(self) -> bool:
        return self._dead is None and not self._retired

    @property
    def idle(self) -> bool:
        return self._taken == 0

    def take(self, timeout_s: float) -> bool:
        """Take a request slot, waiting up to ``timeout_s`` for one; False when none came free or the worker is
        dead or retired."""
        with self._room:
            self._room.wait_for(lambda: not self.usable or self._taken < self.parallel, timeout_s)
            if not self.usable or self._taken >= self.parallel:
                return False
            self._taken += 1
            return True

    def retire(self) -> bool:
        """Mark an idle worker as going (no slot is handed out after this); False when it is busy or gone."""
        with self._lock:
            if self._taken or not self.usable:
                return False
            self._retired = True
            return True

    def submit(self, spec: JobSpec) -> _Request:
        """Send a request on a slot taken with ``take``; the slot now belongs to it."""
        with self._lock:
            if self._dead is not None:
                self._taken = max(0, self._taken - 1)
                raise self._dead
            request = _Request(self._next_id, spec.limits, spec.job_id)
            self._next_id += 1
            self._requests[request.ident] = request
        sent_at = time.time()  # before the write: a quick worker may answer before this thread goes on
        self._send({"id": request.ident, "input": spec.input})
        if TRACE.on:
            TRACE.stamp(spec.job_id, "worker_in", sent_at)
        return request

    def stream(self, request: _Request, cancel: CancelToken) -> Generator[Event, None, None]:
        """The request's events, raising like a one-shot container would. Closing it early cancels the request."""
        timeout_s = request.limits.timeout_s
        timer = threading.Timer(timeout_s, self._stop, [request, WorkloadTimedOut(
            f"timed out: the workload ran past its {timeout_s:g} s wall-clock budget and was stopped")])
        timer.daemon = True
        finished = False
        try:
            timer.start()
            cancel.on_cancel(lambda: self._stop(request, JobCancelled(cancel.reason or "cancelled")))
            while True:
                item = request.mailbox.get()
                if isinstance(item, ArchipelagError):
                    finished = True
                    raise item
                if is_final(item):
                    finished = True
                    if item["type"] == "error" and cancel.cancelled:
                        raise JobCancelled(cancel.reason or "cancelled")
                    yield item
                    return
                yield item
        finally:
            timer.cancel()
            if not finished:  # the consumer walked away: only this request stops
                self._stop(request, JobCancelled("the job's consumer went away"))

    def _stop(self, request: _Request, error: ArchipelagError) -> None:
        """Fail ``request`` with ``error`` now and ask the program to end it; kill the worker if it does not
        within the grace. A request that already ended, or already failed, is left alone."""
        with self._lock:
            if request.ident not in self._requests or request.stopped is not None or self._dead is not None:
                return
            request.stopped = error
            request.grace = threading.Timer(self._grace_s, self._overdue, [request])
            request.grace.daemon = True
            request.grace.start()  # before the send: a program that stopped reading blocks it until the kill
        request.mailbox.put(error)
        self._send({"cancel": request.ident})

    def _overdue(self, request: _Request) -> None:
        with self._lock:
            if request.ident not in self._requests:
                return
        why = request.stopped.message if request.stopped is not None else "it was stopped"
        self.kill(WorkloadError(f"the {self.slug} worker was killed: request {request.ident} did not stop within "
                                f"{self._grace_s:g} s of being asked ({why}); every request it was serving failed"))

    def _read(self) -> None:
        """The reader thread: every output line to its request, until the output ends."""
        try:
            while True:
                line = self._output.line(self._limits.line_bytes, sys.maxsize)
                if line is None:
                    break
                self._route(line)
        except (BudgetExceeded, ProtocolViolation) as exc:
            self.kill(exc)
            return
        if self._dead is None:
            self.kill(exit_failure(self._container, self._limits, self._output.stderr_tail, EXIT_WAIT_S))

    def _route(self, line: bytes) -> None:
        multiplexed = self.parallel > 1
        if not line.strip():
            if multiplexed:
                raise ProtocolViolation("a multiplexed worker wrote an empty line")
            event: Event | None = None
        else:
            event = parse_line(line)
        ident = event.pop(RID, None) if multiplexed and event is not None else None
        if multiplexed and (not isinstance(ident, int) or isinstance(ident, bool)):
            raise ProtocolViolation(f"a multiplexed worker wrote an event without the id of its request "
                                    f"({RID!r} is {ident!r})")
        with self._lock:
            if multiplexed:
                request = self._requests.get(ident)  # type: ignore[arg-type]
            else:
                request = next(iter(self._requests.values()), None)
            if request is None:
                if event is None:
                    return
                raise ProtocolViolation(f"the worker wrote a {event['type']} event for request {ident}, which is "
                                        "not in flight" if multiplexed else
                                        f"the worker wrote a {event['type']} event while no request was in flight")
            request.bytes += len(line) + 1
            request.events += event is not None
            over = request.over_budget(len(line))
            final = event is not None and is_final(event)
            if final:
                self._end(request)
            failed = request.stopped is not None
            if final and over is not None and not failed:
                request.stopped = over
        if failed or event is None:
            return  # a stopped request's events go nowhere: its consumer already has its error
        if not request.output and event["type"] in OUTPUT_TYPES:
            request.output = True
            if TRACE.on:
                TRACE.stamp(request.job_id, "worker_out")
        if over is None:
            request.mailbox.put(event)
        elif final:
            request.mailbox.put(over)
        else:
            self._stop(request, over)

    def _end(self, request: _Request) -> None:
        """The program ended ``request``: its slot is free. Under the lock."""
        del self._requests[request.ident]
        if request.grace is not None:
            request.grace.cancel()
        self._taken = max(0, self._taken - 1)
        self.last_used = time.monotonic()
        self._room.notify()

    def _send(self, message: dict[str, object]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with self._send_lock, contextlib.suppress(OSError):
            self._sock.sendall(data)

    def kill(self, error: ArchipelagError) -> None:
        """Stop the worker for ``error`` (the first reason wins): every request in flight that has not failed
        yet fails with it; its socket closes, so the reader wakes."""
        with self._lock:
            if self._dead is not None:
                return
            self._dead = error
            lost = [r for r in self._requests.values() if r.stopped is None]
            for request in self._requests.values():
                if request.grace is not None:
                    request.grace.cancel()
                request.stopped = request.stopped or error
            self._requests.clear()
            self._taken = 0
            self._room.notify_all()
        for request in lost:
            request.mailbox.put(error)
        with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
            self._container.kill()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def remove(self) -> None:
        """Stop and remove the container; retried while Docker is busy with it."""
        self.kill(JobCancelled("the model worker was stopped"))
        with contextlib.suppress(OSError):
            self._sock.close()
        remove_container(self._container)


StartWorker = Callable[[JobSpec, str, Path | None], Started]


class WorkerPool:
    """A host's warm workers (see the module docstring). Thread-safe."""

    def __init__(self, start: StartWorker, idle_ttl_s: float = 300.0, max_workers: int = 2,
                 reserve_mb: int = 1024, reap_every_s: float = 5.0,
                 free_memory_mb: Callable[[], int] | None = None, cancel_grace_s: float = CANCEL_GRACE_S) -> None:
        self._start = start
        self._grace_s = cancel_grace_s
        self._idle_ttl_s = idle_ttl_s
        self._max_workers = max_workers
        self._reserve_mb = reserve_mb
        self._free_mb = free_memory_mb or (lambda: psutil.virtual_memory().available // (1024 * 1024))
        self._workers: dict[WorkerKey, Worker] = {}
        self._starting: dict[WorkerKey, threading.Lock] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, args=(reap_every_s,), name="worker-reaper",
                                        daemon=True)
        self._reaper.start()

    def warm(self) -> frozenset[str]:
        with self._lock:
            return frozenset(w.slug for w in self._workers.values() if w.alive)

    def workers(self) -> list[Worker]:
        with self._lock:
            return list(self._workers.values())

    def serves(self, slug: str, image_id: str, model: Path | None) -> bool:
        """Whether a live worker of exactly this workload, image and model is here."""
        with self._lock:
            worker = self._workers.get((slug, image_id, str(model or "")))
            return worker is not None and worker.alive

    def check_room(self, spec: JobSpec, image_id: str, model: Path | None) -> None:
        """Before the job is taken: HostBusy when no worker of its model lives here and none can start."""
        key = _key(spec, image_id, model)
        with self._lock:
            if key in self._workers and self._workers[key].alive:
                return
        self._make_room(spec.limits.memory_mb, keep=key)

    def serve(self, spec: JobSpec, image_id: str, model: Path | None,
              cancel: CancelToken) -> Generator[Event, None, None]:
        worker = self._acquire(spec, image_id, model, cancel)
        try:
            request = worker.submit(spec)  # the slot goes with the request
        except ArchipelagError:
            self._drop(worker)
            raise
        try:
            yield from worker.stream(request, cancel)
        finally:
            if not worker.alive:
                self._drop(worker)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:
            worker.remove()

    def _acquire(self, spec: JobSpec, image_id: str, model: Path | None, cancel: CancelToken) -> Worker:
        """The job's worker, started if need be, with a slot taken for this job. Waits while every slot is."""
        key = _key(spec, image_id, model)
        deadline = time.monotonic() + spec.limits.timeout_s
        while True:
            if cancel.cancelled:
                raise JobCancelled(cancel.reason or "cancelled")
            worker = self._get_or_start(key, spec, image_id, model)
            if worker.take(timeout_s=0.1):
                return worker
            if not worker.alive:
                self._drop(worker)
            if time.monotonic() > deadline:
                raise WorkloadTimedOut(f"timed out: the {spec.workload.slug} worker on this host stayed busy for "
                                       f"{spec.limits.timeout_s:g} s")

    def _get_or_start(self, key: WorkerKey, spec: JobSpec, image_id: str, model: Path | None) -> Worker:
        with self._lock:
            worker = self._workers.get(key)
            if worker is not None and worker.usable:
                return worker
            starting = self._starting.setdefault(key, threading.Lock())
        with starting:  # one start per model at a time; the others wait and take it
            with self._lock:
                worker = self._workers.get(key)
                if worker is not None and worker.usable:
                    return worker
            self._make_room(spec.limits.memory_mb, keep=key)
            worker = Worker(key, self._start(spec, image_id, model), spec.limits.memory_mb, spec.limits,
                            spec.workload.parallel, self._grace_s)
            with self._lock:
                self._workers[key] = worker
            return worker

    def _make_room(self, memory_mb: int, keep: WorkerKey) -> None:
        """Stop idle workers, least recently used first, until a new one of ``memory_mb`` fits."""
        while True:
            with self._lock:
                others = [w for w in self._workers.values() if w.key != keep]
            fits = len(others) < self._max_workers and self._free_mb() - memory_mb >= self._reserve_mb
            if fits:
                return
            idle = sorted((w for w in others if w.idle), key=lambda w: w.last_used)
            taken = next((w for w in idle if w.retire()), None)  # nobody gets a slot of it after this
            if taken is None:
                raise HostBusy(f"no room for another model worker on this host ({len(others)} busy, "
                               f"{self._free_mb()} MB free, {memory_mb} MB needed + {self._reserve_mb} MB kept free)")
            self._drop(taken)

    def _drop(self, worker: Worker) -> None:
        with self._lock:
            if self._workers.get(worker.key) is worker:
                del self._workers[worker.key]
        worker.remove()

    def _reap_loop(self, every_s: float) -> None:
        while not self._closed.wait(every_s):
            now = time.monotonic()
            for worker in self.workers():
                if not worker.alive or (now - worker.last_used > self._idle_ttl_s and worker.retire()):
                    self._drop(worker)  # a dead one, or an idle one (retired: nobody gets a slot of it)


def _key(spec: JobSpec, image_id: str, model: Path | None) -> WorkerKey:
    return (str(spec.workload.slug), image_id, str(model or ""))
