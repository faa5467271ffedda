"""Docker runtime benchmark: hardened start to first event vs a plain container of the same image, events/s
through the Docker path, and a warm start (image present) vs a cold one (image built first).

    .venv/bin/python -m bench.bench_docker

Needs a Docker engine (scripts/docker-engine.sh ensure); builds the test probe image the escape suite uses.
"""

from __future__ import annotations

import json
import socket
import statistics
import time
from pathlib import Path

import docker

from archipelag.catalog import Manifest
from archipelag.ids import JobId, WorkloadSlug
from archipelag.runtimes import images
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.docker import DockerRuntime, HostFacts
from archipelag.sandbox import Limits
from archipelag.settings import REPO_ROOT

PROBE_DIR = REPO_ROOT / "tests" / "fixtures" / "docker" / "probe"
PROBE_TAG = "archipelag/test-probe:latest"
COLD_TAG = "archipelag/bench-probe-cold:latest"
LIMITS = Limits(memory_mb=256, timeout_s=120, network=False, gpu=False, fuel=0, output_bytes=64 << 20,
                line_bytes=1 << 20, pids_limit=64, cpus=1.0, tmp_mb=16)
ECHO = {"attack": "echo", "text": "hello"}
REPEAT = 7
TOKENS = 50_000


def _spec(image: str, image_id: str, job: dict[str, object]) -> JobSpec:
    workload = Manifest(slug=WorkloadSlug("bench-probe"), name="probe", description="", runtime="container",
                        trust_level=0, price_micro=0, image=image, image_id=image_id)
    return JobSpec(JobId(f"bench-{time.monotonic_ns()}"), workload, job, LIMITS)


def _hardened_first_event_s(runtime: DockerRuntime, image: str, image_id: str) -> float:
    started = time.perf_counter()
    events = runtime.run(_spec(image, image_id, ECHO), CancelToken())
    next(events)
    elapsed = time.perf_counter() - started
    events.close()
    return elapsed


def _plain_first_event_s(client: docker.DockerClient, image_id: str) -> float:
    """The same image with none of the hardening: create, attach, start, send the input, first stdout frame."""
    api = client.api
    started = time.perf_counter()
    container = api.create_container(image_id, stdin_open=True)
    try:
        response = api.attach_socket(container, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        sock: socket.socket = getattr(response, "_sock", response)
        api.start(container)
        sock.sendall(json.dumps(ECHO).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        sock.recv(65536)
        elapsed = time.perf_counter() - started
        sock.close()
    finally:
        api.remove_container(container, force=True)
    return elapsed


def rows() -> list[tuple[str, str, str]]:
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock")
    runtime = DockerRuntime(client, HostFacts.detect())
    probe_id = images.build_image(client, PROBE_DIR, PROBE_TAG)
    _hardened_first_event_s(runtime, PROBE_TAG, probe_id)  # warm the engine's caches once
    hardened, plain = [], []
    for _ in range(REPEAT):  # interleaved, so drift on a busy machine hits both alike
        hardened.append(_hardened_first_event_s(runtime, PROBE_TAG, probe_id))
        plain.append(_plain_first_event_s(client, probe_id))
    hardened_s, plain_s = statistics.median(hardened), statistics.median(plain)

    started = time.perf_counter()
    count = sum(1 for _ in runtime.run(_spec(PROBE_TAG, probe_id, {"attack": "tokens", "n": TOKENS}),
                                       CancelToken()))
    events_per_s = count / (time.perf_counter() - started)

    warm_started = time.perf_counter()
    warm_id = images.build_image(client, PROBE_DIR, PROBE_TAG)  # cache hit: the image is present
    warm_s = time.perf_counter() - warm_started + _hardened_first_event_s(runtime, PROBE_TAG, warm_id)
    try:
        client.images.remove(COLD_TAG, force=True)
    except docker.errors.ImageNotFound:
        pass
    cold_started = time.perf_counter()
    cold_id = images.build_image(client, Path(PROBE_DIR), COLD_TAG)
    cold_s = time.perf_counter() - cold_started + _hardened_first_event_s(runtime, COLD_TAG, cold_id)
    client.images.remove(COLD_TAG, force=True)
    runtime.close()
    return [
        ("docker: hardened start → first event", f"{hardened_s * 1000:.0f} ms", f"median of {REPEAT}"),
        ("docker: plain container → first event", f"{plain_s * 1000:.0f} ms", "same image, no sandbox options"),
        ("docker: hardened / plain", f"{hardened_s / plain_s:.2f}×", "aim ≤ 1.2"),
        ("docker: events/s through the runtime", f"{events_per_s:,.0f}", f"{TOKENS} token events, one job"),
        ("docker: warm start → first event", f"{warm_s * 1000:.0f} ms", "image present (build cache hit)"),
        ("docker: cold start → first event", f"{cold_s * 1000:.0f} ms",
         "image built from its Dockerfile first (engine layer cache may help)"),
    ]


if __name__ == "__main__":
    for name, value, note in rows():
        print(f"{name:42} {value:>12}  {note}")
