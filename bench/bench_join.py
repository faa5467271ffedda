"""Joining: how long the join benchmark takes, and how long a machine takes from `host join` to running its first
job — a WASM job, and a container job whose image the engine already holds — beside the same job on a host that
is already warm (the baseline: what a job costs once joining is over).

A fresh host is made to take the job by being the only one online: each join follows the SIGKILL of the host
before it (as a machine that vanished), so the job can go nowhere else.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from archipelag.actors.benchmark import run as run_benchmark
from archipelag.network import EmbeddedNetwork, start_network
from archipelag.placement.measured import Claims
from archipelag.settings import BenchmarkSettings, Settings
from bench.bench_network import _free_port

Row = tuple[str, str, str]
REGION = "eu-west"
WASM = ("wasm-hash", {"text": "hello"})
CONTAINER = ("text-stats", {"text": "one two three. four five."})


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


def run() -> list[Row]:
    claims = Claims(psutil.cpu_count() or 1, psutil.virtual_memory().total >> 20, None, 0)
    durations = [run_benchmark(claims, BenchmarkSettings()).duration_s for _ in range(3)]
    with tempfile.TemporaryDirectory(prefix="archipelag-bench-join-") as state:
        settings = Settings(state_dir=Path(state), api_port=_free_port(), ray_head_port=_free_port(),
                            rate_limit_per_min=0, ray_auth="disabled", heartbeat_interval_s=0.5)
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
        finally:
            net.stop()
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
    return rows
