"""Docker runtime: runs one job's workload image in a hardened container on a real Docker engine.

Per job (DESIGN §5): the image is checked first (present here under the ID the catalog pins, else fetched from the
network when this host has an image source (``runtimes.image_fetch``: kept only if it comes out under that ID), else
``WorkloadRefused`` and nothing runs); then a container is created from that exact ID in the tier's sandbox
(``runtimes.container_spec``: read-only root, tmpfs ``/tmp``, no capabilities, seccomp, no network, limits, user
10001, no log driver: output travels only over the attach socket). A workload with a model gets it mounted
read-only after ``runtimes.models`` verified it; a ``worker = true`` workload is served by a warm worker
(``runtimes.workers``) instead of a container per job.

The input JSON goes to the container's stdin over the attach socket, which is then half-closed (StdinOnce makes
that EOF). The same socket carries stdout and stderr in Docker's multiplexed frames; ``run`` reads them on the
caller's thread and yields each stdout line as a protocol event when it arrives. stderr is only kept as a short
tail for error messages. Budgets: a timer kills at ``timeout_s`` (``WorkloadTimedOut``); an OOM kill becomes
``BudgetExceeded("out of memory …")``; output past ``output_bytes`` or a line past ``line_bytes`` kills
(``BudgetExceeded``); a line that is not an event kills (``ProtocolViolation``); cancel kills (``JobCancelled``).
Killing ends the attach stream, so the reader never needs a timeout of its own. The container is removed in every
case — also when the consumer closes the generator early. Docker SDK errors are translated here, once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Final

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from archipelag.catalog import Manifest
from archipelag.errors import (
    ArchipelagError,
    BudgetExceeded,
    JobCancelled,
    ProtocolViolation,
    RuntimeUnavailable,
    WorkloadRefused,
    WorkloadTimedOut,
)
from archipelag.protocol import Event, is_final, parse_line
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.container_io import Output, engine_error, exit_failure, frames
from archipelag.runtimes.container_spec import ContainerRequest, HostFacts, container_request
from archipelag.runtimes.image_cache import ImageCache
from archipelag.runtimes.image_fetch import ImageFetcher, ImageSource
from archipelag.runtimes.models import ModelStore
from archipelag.runtimes.orphans import OWNER_LABEL, owner_tag, remove_container, sweep_orphans
from archipelag.runtimes.workers import Started, StartWorker, WorkerPool
from archipelag.settings import DEFAULT_MODELS_DIR, Settings

EXIT_WAIT_S: Final = 30.0  # how long to wait for the exit status once the output has ended


class DockerRuntime:
    """Runs container workloads (DESIGN §5) on one Docker engine. Thread-safe: many jobs may run at once.

    ``DockerRuntime(docker.DockerClient(...))``, or ``DockerRuntime.connect()`` for the local engine."""

    name = "container"

    def __init__(self, client: docker.DockerClient, host: HostFacts | None = None,
                 cache: ImageCache | None = None, models: ModelStore | None = None,
                 pool: Callable[[StartWorker], WorkerPool] | None = None,
                 images_from: ImageSource | None = None) -> None:
        self._client = client
        self._fetcher = ImageFetcher(client, images_from) if images_from is not None else None
        self._host = host or HostFacts.detect()
        self._cache = cache or ImageCache()
        self._models = models or ModelStore(DEFAULT_MODELS_DIR)
        self._pool = (pool or WorkerPool)(self._start_worker)
        self._worker_slugs: set[str] = set()
        self._owner = {OWNER_LABEL: owner_tag()}
        sweep_orphans(client)

    @classmethod
    def connect(cls, base_url: str = "unix:///var/run/docker.sock", gpu: bool = False,
                cache: ImageCache | None = None, models: ModelStore | None = None,
                pool: Callable[[StartWorker], WorkerPool] | None = None,
                lent_cores: int | None = None, images_from: ImageSource | None = None) -> DockerRuntime:
        """A runtime on the engine at ``base_url``; RuntimeUnavailable when it does not answer."""
        try:
            client = docker.DockerClient(base_url=base_url)
            client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise RuntimeUnavailable(f"the Docker engine at {base_url} does not answer ({exc}); start it "
                                     "with scripts/docker-engine.sh ensure") from None
        return cls(client, HostFacts.detect(gpu=gpu, lent_cores=lent_cores), cache, models, pool, images_from)

    @classmethod
    def from_settings(cls, settings: Settings, gpu: bool = False, lent_cores: int | None = None) -> DockerRuntime:
        """The local engine's runtime with this host's image cache, model store, warm worker pool and image source."""
        pool = functools.partial(WorkerPool, idle_ttl_s=settings.model_idle_ttl_s,
                                 max_workers=settings.max_model_workers, reserve_mb=settings.model_memory_reserve_mb)
        return cls.connect(gpu=gpu, cache=ImageCache(settings.image_cache_max, settings.warm_ttl_s),
                           models=ModelStore(settings.models_dir), pool=pool, lent_cores=lent_cores,
                           images_from=ImageSource.from_settings(settings))

    def close(self) -> None:
        self._pool.close()
        self._client.close()

    @property
    def models(self) -> ModelStore:
        return self._models

    @property
    def pool(self) -> WorkerPool:
        return self._pool

    def run(self, spec: JobSpec, cancel: CancelToken) -> Iterator[Event]:
        model = self._models.verified(spec.workload.model) if spec.workload.model else None
        pinned = spec.workload.image_id or ""
        if spec.workload.worker and self._pool.serves(str(spec.workload.slug), pinned, model):
            image_id = pinned  # its live worker was started from exactly this image: no engine round trip
        else:
            image_id = self._checked_image(spec.workload, cancel)  # fetches, or refuses, before anything runs
        if spec.workload.worker:
            self._worker_slugs.add(str(spec.workload.slug))
            self._pool.check_room(spec, image_id, model)  # HostBusy now, before the job counts as started here
            self._cache.acquire(image_id, spec.workload.slug, time.time())
            return self._tracked(image_id, self._pool.serve(spec, image_id, model, cancel))
        request = container_request(spec, image_id, self._host, model, owner=self._owner)
        self._cache.acquire(image_id, spec.workload.slug, time.time())
        return self._tracked(image_id, self._stream(spec, request, cancel))

    def warm(self, now: float) -> frozenset[str]:
        """Workloads whose image this host used recently, and model workloads with a live worker (reported in
        heartbeats; placement prefers it). A model workload is warm only while its model is loaded."""
        return (self._cache.warm(now) - self._worker_slugs) | self._pool.warm()

    def _start_worker(self, spec: JobSpec, image_id: str, model: Path | None) -> Started:
        request = container_request(spec, image_id, self._host, model, worker=True, owner=self._owner)
        try:
            container = self._create(request)
            sock = _attach(container)
            container.start()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise engine_error(exc) from None
        return Started(container, sock, Output(frames(sock)))

    def _tracked(self, image_id: str, events: Generator[Event, None, None]) -> Iterator[Event]:
        try:
            yield from events
        finally:
            events.close()
            for stale in self._cache.release(image_id, time.time()):
                self._evict(stale)

    def _evict(self, image_id: str) -> None:
        """Remove an image past the cache's limit; one still in use elsewhere on the engine stays."""
        try:
            self._client.images.remove(image_id, force=False)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return
        self._cache.forget(image_id)

    def _checked_image(self, workload: Manifest, cancel: CancelToken) -> str:
        """The pinned image's ID once it is on this engine (found by that ID: a tag proves nothing), fetched when
        this host has an image source; else WorkloadRefused, saying whether it is missing or another image holds
        the workload's tag."""
        pinned = workload.image_id
        if not pinned:
            raise WorkloadRefused(f"workload {workload.slug!r} has no pinned image ID; the catalog must pin one",
                                  reason="image_unpinned")
        if self._find(pinned) == pinned:
            return pinned
        if self._fetcher is not None:
            return self._fetcher.fetch(workload, lambda: cancel.cancelled)
        reference = workload.image or pinned
        found = self._find(reference)
        if found is None:
            raise WorkloadRefused(f"image {reference} of workload {workload.slug!r} is not on this host",
                                  reason="image_missing")
        raise WorkloadRefused(f"image {reference} here is {found}, but the catalog pins {pinned} for workload "
                              f"{workload.slug!r}; refusing to run it", reason="image_mismatch")

    def _find(self, reference: str) -> str | None:
        try:
            return str(self._client.images.get(reference).id)
        except docker.errors.ImageNotFound:
            return None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise engine_error(exc) from None

    def _create(self, request: ContainerRequest) -> Container:
        api = self._client.api
        created = api.create_container(**request.create, host_config=api.create_host_config(**request.host_config))
        container: Container = self._client.containers.prepare_model({"Id": created["Id"]})
        return container

    def _stream(self, spec: JobSpec, request: ContainerRequest, cancel: CancelToken) -> Generator[Event, None, None]:
        job = _Job(spec)
        timer = threading.Timer(spec.limits.timeout_s, job.stop, [WorkloadTimedOut(
            f"timed out: the workload ran past its {spec.limits.timeout_s:g} s wall-clock budget and was killed")])
        timer.daemon = True
        sock: socket.socket | None = None
        try:
            try:
                job.container = self._create(request)
                sock = _attach(job.container)
                cancel.on_cancel(lambda: job.stop(JobCancelled(cancel.reason or "cancelled")))
                job.start()
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                raise engine_error(exc) from None
            timer.start()
            _send_input(sock, json.dumps(spec.input).encode() + b"\n")
            job.output = Output(frames(sock))
            for event in _events(job, job.output):
                yield event
                if is_final(event):
                    job.finish()
                    return
            raise job.error or job.failure()
        finally:
            timer.cancel()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            job.finish()
            job.remove()


class _Job:
    """One running container's stop switch, shared by the reader, the timer and the cancel callback."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.container: Container | None = None
        self.error: ArchipelagError | None = None  # why it was stopped; None while it runs on its own
        self.output: Output | None = None
        self._started = False
        self._finished = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self.error is not None:  # cancelled before it started
                raise self.error
            assert self.container is not None
            self.container.start()
            self._started = True

    def stop(self, error: ArchipelagError, kill: bool = True) -> None:
        """Stop the job for ``error``; the first reason wins, and a finished job ignores it. The reader itself
        passes ``kill=False``: the engine's kill waits for buffered output to drain, and only the reader drains,
        so the reader closes its socket first and kills on its way out."""
        with self._lock:
            if self.error is not None or self._finished:
                return
            self.error = error
            container = self.container if self._started and kill else None
        if container is not None:
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                container.kill()

    def finish(self) -> None:
        with self._lock:
            self._finished = True

    def failure(self) -> ArchipelagError:
        """Why a container whose output ended without a final event failed: OOM, a crash, or no done event."""
        assert self.container is not None
        stderr = self.output.stderr_tail if self.output is not None else b""
        failure = exit_failure(self.container, self.spec.limits, stderr, self.spec.limits.timeout_s + EXIT_WAIT_S)
        return self.error or failure  # the timer or a cancel may have fired while we waited

    def remove(self) -> None:
        """Kill and remove the container, whatever state it is in; retried while Docker is still busy with it."""
        if self.container is not None:
            remove_container(self.container)


def _attach(container: Container) -> socket.socket:
    """The attach socket for stdin, stdout and stderr, opened before the container starts so no output is lost."""
    response = container.client.api.attach_socket(
        container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
    raw = getattr(response, "_sock", response)  # the SDK hands back a SocketIO around the real socket
    if not isinstance(raw, socket.socket):
        raise RuntimeUnavailable(f"the Docker engine's attach stream is a {type(raw).__name__}, not a socket")
    return raw


def _send_input(sock: socket.socket, payload: bytes) -> None:
    """Write the input on a helper thread (a workload that never reads stdin must not block us), then
    half-close the socket: with StdinOnce the engine closes the container's stdin."""

    def write() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=write, name="docker-stdin", daemon=True).start()


def _events(job: _Job, output: Output) -> Iterator[Event]:
    """Protocol events from the container's stdout as they arrive. A budget overrun or a bad line marks the job
    stopped and ends the iteration; the caller then closes the socket and kills the container."""
    limits = job.spec.limits
    events = 0
    while True:
        try:
            line = output.line(limits.line_bytes, limits.output_bytes)
            if line is None:
                break
            if line.strip():
                events += 1
                if events > limits.output_events:
                    raise BudgetExceeded(f"output limit: the workload wrote more than {limits.output_events} events")
                yield parse_line(line)
        except (BudgetExceeded, ProtocolViolation) as exc:
            job.stop(exc, kill=False)
            return
    if output.rest().strip() and job.error is None:
        yield parse_line(output.rest())  # a last line without its newline still counts
