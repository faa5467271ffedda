"""Joining: how long the join benchmark takes, and how long a machine takes from `host join` to running its first
job — a WASM job, and a container job whose image the engine already holds — beside the same job on a host that
is already warm (the baseline: what a job costs once joining is over). Then the image cache warm and cold, side by
side: a fresh host's first job of a workload whose image it holds, and of the same workload once its image is
gone, so the host fetches it from the coordinator's API, loads and verifies it first (runtimes/image_fetch.py).

A fresh host is made to take the job by being the only one online: each join follows the SIGKILL of the host
before it (as a machine that vanished), so the job can go nowhere else. The image of the cold row is the bench's
own (`cold_image`: text-stats flattened into one layer with a nonce in it), so removing it takes no layer another
image holds: its load extracts the whole image, as on a machine that has none.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import psutil

from archipelag.actors.benchmark import run as run_benchmark
from archipelag.catalog import Manifest
from archipelag.network import EmbeddedNetwork, start_network
from archipelag.placement.measured import Claims
from archipelag.settings import BenchmarkSettings, Settings
from bench.bench_network import _free_port

Row = tuple[str, str, str]
REGION = "eu-west"
WASM = ("wasm-hash", {"text": "hello"})
CONTAINER = ("text-stats", {"text": "one two three. four five."})
COLD = "bench-cold-image"  # the workload whose image the cold row removes and the fresh host fetches
IMAGE_RUNS = 3


def _job(http: httpx.Client, workload: str, job_input: dict[str, Any]) -> str | None:
    """Run one job to its end; the host that ran it, or None when no host could take it yet (503)."""
    created = http.post("/api/v1/jobs", json={"workload": workload, "input": job_input, "region": REGION})
    if created.status_code == 503:
        return None
    created.raise_for_status()
    job_id = created.json()["data"]["id"]
    with http.stream("GET", f"/api/v1/jobs/{job_id}/stream") as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and json.loads(line[5:])["type"] in ("done", "error"):
                break
    job = http.get(f"/api/v1/jobs/{job_id}").json()["data"]
    if job["status"] != "completed":
        return None
    return str(job.get("host_id") or "")


def _warm_latency_s(http: httpx.Client, workload: str, job_input: dict[str, Any], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        if _job(http, workload, job_input) is None:
            raise RuntimeError(f"{workload} did not run on a warm host")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _host(http: httpx.Client, host_id: str) -> dict[str, Any] | None:
    found = http.get(f"/api/v1/hosts/{host_id}")
    return found.json()["data"] if found.status_code == 200 else None


def _until(check: Any, timeout_s: float, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = check()
        if answer:
            return answer
        time.sleep(interval_s)
    raise RuntimeError(f"not done within {timeout_s:.0f} s")


def _fresh_host(net: EmbeddedNetwork, http: httpx.Client, host_id: str, workload: str,
                job_input: dict[str, Any]) -> tuple[float, float | None, dict[str, Any] | None]:
    """(s from `host join` starting to its first job done, s to its measurement in placement, the measurement)."""
    started = time.perf_counter()
    net.add_host(REGION, host_id)
    ran_on = _until(lambda: _job(http, workload, job_input), timeout_s=180, interval_s=0.05)
    first_job_s = time.perf_counter() - started
    if ran_on and host_id not in ran_on:
        raise RuntimeError(f"the first job ran on {ran_on}, not on the fresh host {host_id}")
    measured = _until(lambda: ((_host(http, host_id) or {}).get("measured") or {}).get("benchmark"), timeout_s=60)
    return first_job_s, (time.perf_counter() - started) if measured else None, _host(http, host_id)


def _gone(net: EmbeddedNetwork, http: httpx.Client, host_id: str) -> None:
    net.kill_host(host_id)
    _until(lambda: (_host(http, host_id) or {}).get("status") != "online", timeout_s=60, interval_s=0.2)


def cold_image(client: docker.DockerClient) -> str:
    """text-stats flattened into one layer of its own (a nonce inside), tagged ``archipelag/bench-cold-<nonce>:1``;
    its tag. No other image shares its layer, so removing it leaves nothing of it on the engine."""
    nonce = uuid.uuid4().hex[:12]
    container = client.containers.create("archipelag/text-stats:1")
    try:
        note = io.BytesIO()
        with tarfile.open(fileobj=note, mode="w") as tar:
            info = tarfile.TarInfo("nonce")
            info.size = len(nonce)
            tar.addfile(info, io.BytesIO(nonce.encode()))
        container.put_archive("/app", note.getvalue())
        config = client.images.get("archipelag/text-stats:1").attrs["Config"]
        changes = [f"ENTRYPOINT {json.dumps(config['Entrypoint'])}", f"USER {config['User']}",
                   f"WORKDIR {config['WorkingDir']}", *(f"ENV {env}" for env in config["Env"])]
        tag = f"archipelag/bench-cold-{nonce}"
        client.api.import_image(src=container.export(), repository=tag, tag="1", changes=changes, stream_src=True)
    finally:
        container.remove(force=True)
    return f"{tag}:1"


def _workloads_with(folder: Path, image: str) -> Path:
    """This checkout's workloads (linked) and the cold-image workload, in ``folder``."""
    from archipelag.settings import REPO_ROOT

    folder.mkdir()
    for workload in (REPO_ROOT / "workloads").iterdir():
        if workload.is_dir():
            (folder / workload.name).symlink_to(workload)
    cold = folder / COLD
    cold.mkdir()
    (cold / "manifest.toml").write_text(
        f'slug = "{COLD}"\nname = "Cold image"\ndescription = "text-stats in an image of its own"\n'
        f'runtime = "container"\nimage = "{image}"\ntrust_level = 0\nprice = 0.001\nrequired_ram_mb = 128\n'
        '[limits]\nmemory_mb = 128\ntimeout_s = 60\n[input]\nrequired = ["text"]\n')
    return folder


def _first_results(net: EmbeddedNetwork, client: docker.DockerClient, image: str, image_id: str,
                   job_input: dict[str, Any]) -> tuple[float, float]:
    """Median seconds to a job's done event on a runtime whose image source is the network's API: with the image
    present, and with it removed first (fetched, loaded, verified), interleaved."""
    from archipelag.ids import JobId, WorkloadSlug
    from archipelag.runtimes.base import CancelToken, JobSpec
    from archipelag.runtimes.container_spec import HostFacts
    from archipelag.runtimes.docker import DockerRuntime
    from archipelag.runtimes.image_fetch import ImageSource
    from archipelag.sandbox import Tier

    settings = net.settings
    source = ImageSource.from_settings(settings)
    runtime = DockerRuntime(client, HostFacts.detect(), images_from=source)
    workload = Manifest(slug=WorkloadSlug(COLD), name=COLD, description="", runtime="container", trust_level=0,
                        price_micro=0, image=image, image_id=image_id)

    def first_result_s() -> float:
        started = time.perf_counter()
        spec = JobSpec(JobId(f"bench-image-{time.monotonic_ns()}"), workload, job_input,
                       settings.limits_for(Tier.RESTRICTED))
        events = list(runtime.run(spec, CancelToken()))
        if events[-1]["type"] != "done":
            raise RuntimeError(f"the {COLD} job failed: {events[-1]}")
        return time.perf_counter() - started

    warm, cold = [], []
    for _ in range(IMAGE_RUNS):
        warm.append(first_result_s())
        client.images.remove(image_id, force=True)
        cold.append(first_result_s())
    return statistics.median(warm), statistics.median(cold)


def image_rows(net: EmbeddedNetwork, http: httpx.Client, client: docker.DockerClient, image: str,
               last_host: str) -> list[Row]:
    """A fresh host's first job with its image present, then (the image removed) fetched: `host join` → done."""
    image_id = str(client.images.get(image).id)
    started = time.perf_counter()
    saved = httpx.get(f"{net.url}/api/v1/images/{image_id}", timeout=600)  # the coordinator saves it once
    saved.raise_for_status()
    save_s, size_mb = time.perf_counter() - started, len(saved.content) / 1e6
    job = (COLD, {"text": "one two three. four five."})
    warm_run_s, cold_run_s = _first_results(net, client, image, image_id, job[1])
    _gone(net, http, last_host)
    warm_s, _, _ = _fresh_host(net, http, "island-warm-image", *job)
    _gone(net, http, "island-warm-image")
    client.images.remove(image_id, force=True)
    cold_s, _, _ = _fresh_host(net, http, "island-cold-image", *job)
    fetched = str(client.images.get(image).id) == image_id
    return [
        ("first job's result, image present", f"{1000 * warm_run_s:,.0f} ms",
         f"{COLD} on a DockerRuntime in this process (median of {IMAGE_RUNS}), image on the engine"),
        ("first job's result, image fetched", f"{1000 * cold_run_s:,.0f} ms",
         (f"the same, image removed first: {size_mb:,.0f} MB from the API → docker load → ID checked "
          f"(median of {IMAGE_RUNS})")),
        ("`host join` → first job done, image cache warm", f"{warm_s:,.1f} s",
         f"{COLD} (text-stats, one layer of its own), image present on the host's engine"),
        ("`host join` → first job done, image cache cold", f"{cold_s:,.1f} s",
         f"the same job; {size_mb:,.0f} MB fetched from the coordinator's API, loaded, ID checked against the pin"
         + ("" if fetched else " (NOT back under its pinned ID)")),
        ("coordinator: first save of that image", f"{save_s:,.1f} s",
         "docker save from its engine to its state dir, once (later hosts read the file)"),
    ]


def run() -> list[Row]:
    claims = Claims(psutil.cpu_count() or 1, psutil.virtual_memory().total >> 20, None, 0)
    durations = [run_benchmark(claims, BenchmarkSettings()).duration_s for _ in range(3)]
    client = docker.from_env()
    image = cold_image(client)
    image_table: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="archipelag-bench-join-") as state:
        api_port = _free_port()
        settings = Settings(state_dir=Path(state), api_port=api_port, ray_head_port=_free_port(),
                            rate_limit_per_min=0, ray_auth="disabled", heartbeat_interval_s=0.5,
                            workloads_dir=_workloads_with(Path(state) / "workloads", image),
                            image_source=f"http://127.0.0.1:{api_port}")  # as pairing gives a host
        net = start_network(settings, hosts=1, regions=(REGION,))
        try:
            with httpx.Client(base_url=net.url, headers={"Authorization": f"Bearer {net.api_key}"},
                              timeout=120) as http:
                containers = "container" in (_host(http, "island-1") or {}).get("capabilities", {}).get("runtimes", [])
                warm_wasm = _warm_latency_s(http, *WASM)
                warm_container = _warm_latency_s(http, *CONTAINER) if containers else None  # also: image present
                _gone(net, http, "island-1")
                wasm_s, measured_s, fresh = _fresh_host(net, http, "island-fresh-1", *WASM)
                container_s = None
                if containers:
                    _gone(net, http, "island-fresh-1")
                    container_s, _, _ = _fresh_host(net, http, "island-fresh-2", *CONTAINER)
                    image_table = image_rows(net, http, client, image, "island-fresh-2")
        finally:
            net.stop()
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(image, force=True)
            client.close()
    benchmark = ((fresh or {}).get("measured") or {}).get("benchmark") or {}
    rows: list[Row] = [
        ("join benchmark, in process", f"{1000 * statistics.median(durations):,.0f} ms",
         f"median of 3 on this machine ({claims.cpu_cores} threads); min {1000 * min(durations):,.0f} ms"),
        ("join benchmark, on a joining host", f"{1000 * float(benchmark.get('duration_s', 0)):,.0f} ms",
         (f"inside its Ray task: {benchmark.get('cpu_single_mb_s')} MB/s single, {benchmark.get('cpu_all_mb_s')} "
          f"MB/s on {benchmark.get('threads')} threads, flags {(fresh or {}).get('measured', {}).get('flags')}")),
        ("`host join` → measurement in placement", f"{measured_s or 0:,.1f} s",
         "node start, agent, registration, the pinned benchmark task (polled after the first job: at most)"),
        ("`host join` → first WASM job done", f"{wasm_s:,.1f} s",
         f"baseline: the same job on a warm host, {1000 * warm_wasm:,.0f} ms (p50 of 5)"),
    ]
    if container_s is not None and warm_container is not None:
        rows.append(("`host join` → first container job done", f"{container_s:,.1f} s",
                     f"text-stats, image present; baseline on a warm host {1000 * warm_container:,.0f} ms (p50 of 5)"))
    else:
        rows.append(("`host join` → first container job done", "skipped", "no Docker engine answered the host"))
    return rows + image_table
