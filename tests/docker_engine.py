"""A real Docker engine for the tests that need one, and the fixture images built on it.

``docker_env`` (session scope) runs ``scripts/docker-engine.sh ensure`` — installing and starting dockerd when
this machine has none — and stops the engine at the end only if this session started it (the script keeps a
lease per session, so parallel sessions do not pull it from under each other). Where no engine can be had the
tests skip with the reason; CI turns that skip into a failure (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from archipelag.catalog import Manifest
from archipelag.ids import JobId, WorkloadSlug
from archipelag.runtimes import images
from archipelag.runtimes.container_spec import JOB_LABEL
from archipelag.sandbox import Limits

REPO_ROOT = Path(__file__).resolve().parent.parent
ENGINE_SCRIPT = REPO_ROOT / "scripts" / "docker-engine.sh"
PROBE_DIR = REPO_ROOT / "tests" / "fixtures" / "docker" / "probe"
PROBE_TAG = "archipelag/test-probe:latest"
ENGINE_URL = "unix:///var/run/docker.sock"

# small budgets so misbehaviour ends fast; the tier's own values are tested in the unit tests
LIMITS = Limits(memory_mb=128, timeout_s=60, network=False, gpu=False, fuel=0, output_bytes=1 << 20,
                line_bytes=64 << 10, pids_limit=32, cpus=1.0, tmp_mb=16)


@dataclass(frozen=True)
class DockerEnv:
    client: docker.DockerClient
    probe_image_id: str

    def probe(self, trust_level: int = 0, image_id: str | None = None) -> Manifest:
        return Manifest(slug=WorkloadSlug("test-probe"), name="probe", description="", runtime="container",
                        trust_level=trust_level, price_micro=0, image=PROBE_TAG,
                        image_id=image_id or self.probe_image_id, directory=str(PROBE_DIR))

    def leftovers(self) -> list[str]:
        """Containers of this session's jobs still present (running or not). Other sessions may share the
        engine, so only job ids made by ``a_job_id`` here count."""
        containers = self.client.containers.list(all=True, filters={"label": JOB_LABEL}, ignore_removed=True)
        return [c.id for c in containers if c.labels.get(JOB_LABEL, "").endswith(SESSION_SUFFIX)]


def _engine(command: str, holder: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ENGINE_SCRIPT), command, str(holder)], capture_output=True, text=True,
                          timeout=300, check=False)


@contextlib.contextmanager
def engine_lease() -> Iterator[str | None]:
    """Hold a lease on a running Docker engine (starting one when missing) for the block; yields None
    when none can be had, else why not. The engine is stopped after, if this started it and no one else holds it."""
    # Each lease has a holder process of its own, so two leases in one test process stay independent.
    holder = subprocess.Popen(["sleep", "infinity"])
    try:
        ensured = _engine("ensure", holder.pid)
        if ensured.returncode != 0:
            yield f"no Docker engine can be had here: {ensured.stderr.strip()[-500:]}"
            return
        try:
            yield None
        finally:
            _engine("stop", holder.pid)  # stops only a dockerd the script started, once no one holds it
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture(scope="session")
def docker_env() -> Iterator[DockerEnv]:
    with engine_lease() as missing:
        if missing:
            pytest.skip(missing)
        client = docker.DockerClient(base_url=ENGINE_URL)
        try:
            yield DockerEnv(client, images.build_image(client, PROBE_DIR, PROBE_TAG))
        finally:
            client.close()


SESSION_SUFFIX = f"-{os.getpid()}"


def a_job_id(name: str) -> JobId:
    return JobId(f"test-{name}{SESSION_SUFFIX}")
