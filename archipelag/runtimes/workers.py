"""Warm model workers: one long-lived sandboxed container per host per model, serving jobs one after another.

Loading a model costs seconds; a workload whose manifest says ``worker = true`` (llm-chat, sd-diffusers) keeps
it loaded. The container is the same hardened sandbox as a one-shot job (``docker.container_request``: read-only
root, no network, every capability dropped, the tier's seccomp profile, memory/pids/CPU limits, uid 10001), with
the model mounted read-only, ``ARCHIPELAG_WORKER=1``, and stdin kept open. Requests go in as JSON lines
``{"id": n, "input": {...}}``; each is answered by its events, ending with exactly one ``done`` or ``error``
(``workloads/container_sdk/workload_io.py``). Per request the runtime enforces the tier's wall clock (a request
past it kills the worker: ``WorkloadTimedOut``), the output budget and line limit, and cancellation: a
``{"cancel": n}`` line asks the program to stop, and a worker that does not stop within ``CANCEL_GRACE_S`` is
killed. A worker that dies (OOM, crash, kill) is dropped and the next request starts a fresh one.

``WorkerPool`` holds a host's workers: ``serve`` takes the worker of the job's (workload, image, model), starting
one when there is none (after stopping idle ones beyond ``max_workers``, and only if the host keeps
``reserve_mb`` of memory free after it; else ``HostBusy`` and the job goes to the next host), waits while it
serves another job, and gives it back. A reaper stops workers idle past ``idle_ttl_s``. ``warm()`` names the
workloads with a live worker; heartbeats report them and placement prefers such hosts.
"""

from __future__ import annotations

import contextlib
import json
import socket
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
    WorkloadTimedOut,
)
from archipelag.protocol import Event, is_final, parse_line
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.container_io import Output, exit_failure
from archipelag.runtimes.orphans import remove_container
from archipelag.sandbox import Limits

CANCEL_GRACE_S: Final = 3.0  # a worker that ignores a cancel this long is killed
EXIT_WAIT_S: Final = 10.0  # how long to wait for a worker's exit status once its output ended

WorkerKey = tuple[str, str, str]  # (workload slug, image ID, model path)


@dataclass(frozen=True)
class Started:
    """A worker container just started: its handle and the attach socket carrying stdin and output."""

    container: Container
    sock: socket.socket
    output: Output


class Worker:
    """One warm container. ``serve`` runs one request; the pool makes sure only one runs at a time."""

    def __init__(self, key: WorkerKey, started: Started, memory_mb: int) -> None:
        self.key = key
        self.memory_mb = memory_mb
        self.last_used = time.monotonic()
        self.busy = threading.Lock()
        self._container = started.container
        self._sock = started.sock
        self._output = started.output
        self._next_id = 0
        self._send_lock = threading.Lock()
        self._dead: ArchipelagError | None = None  # why it was killed; set once
        self._dead_lock = threading.Lock()

    @property
    def slug(self) -> str:
        return self.key[0]

    @property
    def alive(self) -> bool:
        return self._dead is None

    def serve(self, spec: JobSpec, cancel: CancelToken) -> Generator[Event, None, None]:
        """Run one request; the caller holds ``busy``. Raises like a one-shot container would."""
        ident = self._next_id
        self._next_id += 1
        limits = spec.limits
        timer = threading.Timer(limits.timeout_s, self.kill, [WorkloadTimedOut(
            f"timed out: the workload ran past its {limits.timeout_s:g} s wall-clock budget and was killed")])
        timer.daemon = True
        grace: threading.Timer | None = None
        over = False  # the request has ended: a late cancel must not touch the worker
        guard = threading.Lock()

        def on_cancel() -> None:
            nonlocal grace
            with guard:
                if over:
                    return
                self._send({"cancel": ident})
                grace = threading.Timer(CANCEL_GRACE_S, self.kill, [JobCancelled(cancel.reason or "cancelled")])
                grace.daemon = True
                grace.start()

        finished = False
        try:
            timer.start()
            self._send({"id": ident, "input": spec.input})
            cancel.on_cancel(on_cancel)
            stdout_limit = self._output.stdout_bytes + limits.output_bytes  # this request's budget
            events = 0
            while True:
                try:
                    line = self._output.line(limits.line_bytes, stdout_limit)
                    if line is None:
                        raise self._dead or self._failure(limits)
                    if not line.strip():
                        continue
                    events += 1
                    if events > limits.output_events:
                        raise BudgetExceeded(f"output limit: the worker wrote more than {limits.output_events} "
                                             "events for one request")
                    event = parse_line(line)
                except (BudgetExceeded, ProtocolViolation) as exc:
                    self.kill(exc)
                    raise self._dead or exc from None
                if is_final(event):
                    finished = True
                    if event["type"] == "error" and cancel.cancelled:
                        raise JobCancelled(cancel.reason or "cancelled")
                    yield event
                    return
                yield event
        finally:
            timer.cancel()
            with guard:
                over = True
                if grace is not None:
                    grace.cancel()
            if not finished and self.alive:
                # The consumer walked away mid-request (or we raised): the worker is in an unknown state.
                self.kill(JobCancelled("the job's consumer went away"))
            self.last_used = time.monotonic()

    def _send(self, message: dict[str, object]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with self._send_lock, contextlib.suppress(OSError):
            self._sock.sendall(data)

    def kill(self, error: ArchipelagError) -> None:
        """Stop the worker for ``error`` (the first reason wins); its socket closes, so a reader wakes."""
        with self._dead_lock:
            if self._dead is not None:
                return
            self._dead = error
        with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
            self._container.kill()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _failure(self, limits: Limits) -> ArchipelagError:
        """Why the worker's output ended on its own: OOM, a crash."""
        error = exit_failure(self._container, limits, self._output.stderr_tail, EXIT_WAIT_S)
        self.kill(error)
        return self._dead or error

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
                 free_memory_mb: Callable[[], int] | None = None) -> None:
        self._start = start
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
            yield from worker.serve(spec, cancel)
        finally:
            worker.busy.release()
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
        """The job's worker, started if need be, held (``busy``) for this job. Waits while it serves others."""
        key = _key(spec, image_id, model)
        deadline = time.monotonic() + spec.limits.timeout_s
        while True:
            if cancel.cancelled:
                raise JobCancelled(cancel.reason or "cancelled")
            worker = self._get_or_start(key, spec, image_id, model)
            if worker.busy.acquire(timeout=0.1):
                if worker.alive:
                    return worker
                worker.busy.release()
                self._drop(worker)
                continue
            if time.monotonic() > deadline:
                raise WorkloadTimedOut(f"timed out: the {spec.workload.slug} worker on this host stayed busy for "
                                       f"{spec.limits.timeout_s:g} s")

    def _get_or_start(self, key: WorkerKey, spec: JobSpec, image_id: str, model: Path | None) -> Worker:
        with self._lock:
            worker = self._workers.get(key)
            if worker is not None and worker.alive:
                return worker
            starting = self._starting.setdefault(key, threading.Lock())
        with starting:  # one start per model at a time; the others wait and take it
            with self._lock:
                worker = self._workers.get(key)
                if worker is not None and worker.alive:
                    return worker
            self._make_room(spec.limits.memory_mb, keep=key)
            worker = Worker(key, self._start(spec, image_id, model), spec.limits.memory_mb)
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
            idle = sorted((w for w in others if not w.busy.locked()), key=lambda w: w.last_used)
            taken = next((w for w in idle if w.busy.acquire(blocking=False)), None)  # nobody gets it after this
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
                if not worker.alive or (now - worker.last_used > self._idle_ttl_s
                                        and worker.busy.acquire(blocking=False)):
                    self._drop(worker)  # a dead one, or an idle one (its `busy` stays taken: nobody gets it)


def _key(spec: JobSpec, image_id: str, model: Path | None) -> WorkerKey:
    return (str(spec.workload.slug), image_id, str(model or ""))
