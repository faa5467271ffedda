"""Builders for the host's gate: a signed catalog guard, a coordinator key, tickets, a gate on a short socket path,
and a scripted runtime for unit tests (the real DockerRuntime runs in tests/integration/test_gate_docker.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from archipelag import identity
from archipelag.catalog import Manifest
from archipelag.catalog_signing import CatalogGuard, SignedCatalog
from archipelag.errors import JobCancelled
from archipelag.gate import tickets
from archipelag.gate.server import GateServer
from archipelag.ids import HostId, JobId, WorkloadSlug
from archipelag.protocol import Event
from archipelag.runtimes.base import CancelToken, JobSpec, Runtime
from archipelag.sandbox import Limits, Tier
from archipelag.settings import Settings

HOST = HostId("host-gate")
HOST_KEY = SigningKey(bytes(range(32)))  # the gate's host's: the gate signs the node's reports with it
IMAGE = "archipelag/fake-workload:1"
IMAGE_ID = "sha256:" + "ab" * 32
WIDE = Limits(memory_mb=1 << 20, timeout_s=10_000, network=True, gpu=True, fuel=10**12, output_bytes=1 << 40,
              line_bytes=1 << 30, pids_limit=10_000, cpus=64.0, tmp_mb=1 << 20, output_events=10**9)


def tier_limits(tier: Tier) -> Limits:
    return Settings().limits_for(tier)


def container_manifest(slug: str = "fake-workload", image: str = IMAGE, image_id: str = IMAGE_ID,
                       trust_level: int = 0) -> Manifest:
    return Manifest(slug=WorkloadSlug(slug), name=slug, description="", runtime="container",
                    trust_level=trust_level, price_micro=0, image=image, image_id=image_id)


def guard_for(*manifests: Manifest) -> CatalogGuard:
    catalog = SignedCatalog("v1", "now", "test-key", {m.slug: m for m in manifests})
    return CatalogGuard(catalog, ["archipelag/*"], limits_for=tier_limits)


@dataclass
class Coordinator:
    """The coordinator's ticket key, and tickets it signs."""

    key: SigningKey = field(default_factory=SigningKey.generate)

    @property
    def public(self) -> str:
        return identity.public_hex(self.key)

    def spec(self, manifest: Manifest, job_input: dict[str, Any], job_id: str = "job-1", limits: Limits = WIDE,
             host_id: HostId = HOST, now: float | None = None, ttl_s: float = tickets.DEFAULT_TTL_S) -> JobSpec:
        """A job as the dispatcher sends it: with its ticket for ``host_id``."""
        import time

        spec = JobSpec(JobId(job_id), manifest, job_input, limits)
        signed = tickets.issue(self.key, spec, host_id, time.time() if now is None else now, ttl_s)
        return dataclasses.replace(spec, ticket=signed)


class FakeRuntime:
    """A runtime that yields a script of events, or waits for its cancel; records what it was asked to run."""

    name = "container"

    def __init__(self, events: Iterable[Event] = ({"type": "token", "content": "hi"}, {"type": "done"}),
                 hold: bool = False) -> None:
        self.events = list(events)
        self.hold = hold  # wait for the cancel after the first event
        self.ran: list[JobSpec] = []
        self.cancelled: list[str] = []
        self.started = threading.Event()
        self.closed = False

    def run(self, spec: JobSpec, cancel: CancelToken) -> Iterator[Event]:
        self.ran.append(spec)
        return self._events(cancel)

    def _events(self, cancel: CancelToken) -> Iterator[Event]:
        self.started.set()
        if self.hold:
            yield {"type": "status", "message": "holding"}
            if not cancel.wait(30):
                raise AssertionError("the fake job was never cancelled")
            self.cancelled.append(cancel.reason)
            raise JobCancelled(cancel.reason)
        yield from (dict(e) for e in self.events)

    def warm(self, now: float) -> frozenset[str]:
        return frozenset({"fake-workload"})

    def close(self) -> None:
        self.closed = True


@contextlib.contextmanager
def a_gate(runtime: Runtime | None, guard: CatalogGuard, keys: tuple[str, ...], allowed_uids: Iterable[int] | None = None,
           host_id: HostId = HOST, slots: int = 4, max_input_bytes: int = 1 << 20, key: SigningKey | None = None,
           **options: Any) -> Iterator[GateServer]:
    """A gate serving on a thread, on a short path in a folder others may enter (a real Ray user must reach it)."""
    folder = Path(tempfile.mkdtemp(prefix="gate-", dir="/tmp"))
    os.chmod(folder, 0o755)
    uids = {os.getuid()} if allowed_uids is None else set(allowed_uids)
    try:
        server = GateServer(folder / "gate.sock", runtime, guard, host_id, keys, uids, max_input_bytes, slots,
                            key or HOST_KEY, **options)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server
        finally:
            server.close()
            thread.join(10)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
