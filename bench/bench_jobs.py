"""Jobs across processes (issue 8), each figure beside its baseline from the same run:

- time from a host's death (SIGKILL) and from its hang (SIGSTOP) to the next event on the client's stream,
  p50/p99 over ``trials`` each (the baseline: Ray's own failure detection, 15–55 s, and a lease of 3 s);
- WASM jobs/s end to end with 1 and with 2 ingress replicas, next to the no-op ``/health`` rate of the same
  ingress;
- events/s through the relay to 1 and to 10 concurrent readers of one job, and what one relay read costs as a
  call (a follower streams instead: one message per batch);
- a coordinator's jobs service restarted (its actor killed): time until a queued job runs again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from archipelag.network import EmbeddedNetwork, start_network
from archipelag.settings import KarmaSettings, Settings
from bench.bench_network import _free_port, _jobs_rps, _noop_rps, _pct

Row = tuple[str, str, str]
TICKS_WAT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "wasm" / "ticks.wat"


def _settings(state: str, **extra: Any) -> Settings:
    return Settings(state_dir=Path(state), api_port=_free_port(), ray_head_port=_free_port(), rate_limit_per_min=0,
                    ray_auth="disabled", **extra)


def _with_ticks(state: str) -> Path:
    """The real catalog plus test-ticks (a slow deterministic stream), as the failover tests use."""
    import wasmtime

    from archipelag.settings import REPO_ROOT

    workloads = Path(state) / "workloads"
    shutil.copytree(REPO_ROOT / "workloads", workloads,
                    ignore=shutil.ignore_patterns("*.zig", "wasm_sdk", "*.py", "vendor", "system-libs"))
    folder = workloads / "test-ticks"
    folder.mkdir()
    module = wasmtime.wat2wasm(TICKS_WAT.read_text())
    (folder / "module.wasm").write_bytes(module)
    (folder / "manifest.toml").write_text("\n".join([
        'slug = "test-ticks"', 'name = "ticks"', 'runtime = "wasm"', 'module = "module.wasm"',
        f'sha256 = "{hashlib.sha256(module).hexdigest()}"', "trust_level = 1", "price = 0.001",
        "required_ram_mb = 16", "[limits]", "timeout_s = 60"]) + "\n")
    return workloads


def _fault_gap(network: EmbeddedNetwork, http: httpx.Client, fault: str, moment: int) -> tuple[float, bool]:
    """Seconds from breaking a running job's host (once its stream carried ``moment`` tokens) to the next event
    on its stream, and whether the stream came out whole (every tick once, ids without a gap)."""
    created = http.post("/api/v1/jobs", json={"workload": "test-ticks", "input": {}})
    created.raise_for_status()
    job_id = created.json()["data"]["id"]
    tokens = 0
    broke_at: list[float] = []
    gap: list[float] = []
    events: list[dict[str, Any]] = []
    got_tokens = threading.Event()

    def read() -> None:
        nonlocal tokens
        with http.stream("GET", f"/api/v1/jobs/{job_id}/stream") as response:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                if broke_at and not gap:
                    gap.append(time.monotonic() - broke_at[0])
                events.append(json.loads(line[5:]))
                tokens += events[-1]["type"] == "token"
                if tokens >= moment:
                    got_tokens.set()

    reader = threading.Thread(target=read)
    reader.start()
    got_tokens.wait(60)
    host_id = http.get(f"/api/v1/jobs/{job_id}").json()["data"]["host_id"]
    broke_at.append(time.monotonic())
    if fault == "kill":
        network.kill_host(host_id)
    else:
        network.hang_host(host_id)
    reader.join(120)
    if fault == "kill":
        network.hosts = [h for h in network.hosts if h.host_id != host_id]
        replacement = f"spare-{len(network.hosts)}-{time.monotonic_ns() % 10**6}"
        network.wait_node(network.add_host("eu-west", replacement))
        network.wait_online([replacement])
    else:
        network.resume_host(host_id)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and {h["id"]: h["status"] for h in http.get(
                "/api/v1/hosts").json()["data"]}.get(host_id) != "online":
            time.sleep(0.2)
    whole = ([e["seq"] for e in events] == list(range(len(events))) and events[-1]["type"] == "done"
             and "".join(e["content"] for e in events if e["type"] == "token") == "tick " * 40)
    return (gap[0] if gap else float("nan")), whole


def failover_rows(trials: int = 20) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="archipelag-bench-") as state:
        # Heartbeats every second: a hung host that wakes comes back online quickly for the next trial. A drop
        # costs no karma here: 20 hangs on 3 hosts would suspend them all (-2 each, -10 suspends), and the trials
        # after would measure a 503 instead of a failover (karma's consequences: tests/*/test_karma*).
        network = start_network(_settings(state, workloads_dir=_with_ticks(state), host_slots=2,
                                          heartbeat_interval_s=1.0, karma=KarmaSettings(dropped_points=0.0)),
                                hosts=3)
        try:
            with httpx.Client(base_url=network.url, timeout=120,
                              headers={"Authorization": f"Bearer {network.api_key}"}) as http:
                rng = random.Random(20)
                hang_trials = [_fault_gap(network, http, "hang", rng.randint(1, 35)) for _ in range(trials)]
                kill_trials = [_fault_gap(network, http, "kill", rng.randint(1, 35)) for _ in range(trials)]
                lease = network.settings.lease_s
                hangs, kills = [g for g, _ in hang_trials], [g for g, _ in kill_trials]
                whole = sum(w for _, w in hang_trials + kill_trials)
        finally:
            network.stop()
    return [
        ("host SIGKILLed mid-stream → next event", f"{statistics.median(kills):.2f} s",
         f"p50; p99 {_pct(kills, 0.99):.2f} s over {trials}; Ray alone: 15–55 s"),
        ("host SIGSTOPped mid-stream → next event", f"{statistics.median(hangs):.2f} s",
         f"p50; p99 {_pct(hangs, 0.99):.2f} s over {trials}; the lease is {lease:g} s"),
        ("streams whole through those faults", f"{whole} of {2 * trials}",
         "every token once, ids without a gap, ending in done (random moments)"),
    ]


async def _readers(url: str, key: str, readers: int, tokens: int) -> float:
    """Events/s each of ``readers`` concurrent readers of one streamed job receives (the slowest)."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120,
                                 limits=httpx.Limits(max_connections=readers + 4)) as http:
        created = await http.post("/api/v1/jobs", json={"workload": "wasm-echo-stream",
                                                        "input": {"text": "tok", "repeat": tokens}})
        job_id = created.json()["data"]["id"]

        async def read() -> float:
            first = None
            events = 0
            async with http.stream("GET", f"/api/v1/jobs/{job_id}/stream") as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("data:"):
                        events += 1
                        first = first or time.perf_counter()
            return events / (time.perf_counter() - (first or time.perf_counter()))

        rates = await asyncio.gather(*(read() for _ in range(readers)))
        return min(rates)


async def _read_cost(settings: Settings, job_id: str, calls: int = 300) -> float:
    from archipelag.ids import JobId
    from archipelag.jobs.client import JobsClient

    jobs = JobsClient.connect(settings)
    await jobs.read(JobId(job_id), after=10**9, wait_s=0)
    started = time.perf_counter()
    for _ in range(calls):
        await jobs.read(JobId(job_id), after=10**9, wait_s=0)
    return (time.perf_counter() - started) / calls


def _restart_rows(network: EmbeddedNetwork) -> list[Row]:
    """Kill the jobs actor (Ray restarts it; it resumes unfinished jobs first); time until a job submitted
    meanwhile has completed."""
    import ray

    from archipelag.jobs.client import ACTOR_NAME

    with httpx.Client(base_url=network.url, timeout=120,
                      headers={"Authorization": f"Bearer {network.api_key}"}) as http:
        job_id = http.post("/api/v1/jobs", json={"workload": "wasm-hash", "input": {"text": "x"}}).json()["data"]["id"]
        while http.get(f"/api/v1/jobs/{job_id}").json()["data"]["status"] != "completed":
            time.sleep(0.05)
        ray.kill(ray.get_actor(ACTOR_NAME, namespace=network.settings.ray_namespace), no_restart=False)
        killed = time.monotonic()
        # Jobs submitted while it restarts wait for it; the first to finish shows the restart's cost.
        while True:
            created = http.post("/api/v1/jobs", json={"workload": "wasm-hash", "input": {"text": "y"}})
            if created.status_code == 201:
                break
            time.sleep(0.05)
        job_id = created.json()["data"]["id"]
        while http.get(f"/api/v1/jobs/{job_id}").json()["data"]["status"] != "completed":
            time.sleep(0.05)
        back = time.monotonic() - killed
    return [("jobs service killed → a new job completes", f"{back:.2f} s",
             "Ray restarts the actor; it resumes unfinished jobs from the ledger first")]


def throughput_rows(seconds: float = 8.0, concurrency: int = 16) -> list[Row]:
    rows: list[Row] = []
    for replicas in (1, 2):
        with tempfile.TemporaryDirectory(prefix="archipelag-bench-") as state:
            network = start_network(_settings(state, ingress_replicas=replicas), hosts=3)
            try:
                asyncio.run(_jobs_rps(network.url, network.api_key, 2.0, 4))  # warm up
                noop = asyncio.run(_noop_rps(network.url, seconds, concurrency))
                jobs, latencies = asyncio.run(_jobs_rps(network.url, network.api_key, seconds, concurrency))
                rows += [
                    (f"no-op GET /health, {replicas} replica(s) (baseline)", f"{noop:,.0f} req/s",
                     f"concurrency {concurrency}"),
                    (f"WASM jobs end to end, {replicas} replica(s)", f"{jobs:,.1f} jobs/s",
                     (f"{100 * jobs / noop:.0f} % of no-op; p50 {1000 * statistics.median(latencies):.0f} ms, "
                      f"p99 {1000 * _pct(latencies, 0.99):.0f} ms")),
                ]
                if replicas == 2:
                    one = asyncio.run(_readers(network.url, network.api_key, 1, 20_000))
                    ten = asyncio.run(_readers(network.url, network.api_key, 10, 20_000))
                    with httpx.Client(base_url=network.url, headers={"Authorization": f"Bearer {network.api_key}"},
                                      timeout=60) as http:
                        job_id = http.get("/api/v1/jobs", params={"limit": 1}).json()["data"][0]["id"]
                    cost = asyncio.run(_read_cost(network.settings, job_id))
                    rows += [
                        ("relay → 1 reader of a job", f"{one:,.0f} events/s", "wasm-echo-stream, 20,000 tokens"),
                        ("relay → 10 readers of one job", f"{ten:,.0f} events/s", "each reader, the slowest"),
                        ("one relay read as a Ray call", f"{1000 * cost:.2f} ms",
                         "a follower streams instead: one message per batch, never per event"),
                    ]
                    rows += _restart_rows(network)
            finally:
                network.stop()
    return rows
