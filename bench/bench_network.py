"""Whole-network benchmarks over HTTP against the embedded network (3 hosts, SQLite, the real ingress).

- WASM jobs/s and p50/p99 latency (submit → `done` received), next to the no-op requests/s of the same
  Serve ingress (`GET /health`) measured in the same run;
- time to first event and events/s of one streamed job.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from archipelag.network import start_network
from archipelag.settings import Settings

Row = tuple[str, str, str]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _noop_rps(url: str, seconds: float, concurrency: int) -> float:
    done = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                (await http.get("/health")).raise_for_status()
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


async def _job(http: httpx.AsyncClient, workload: str, job_input: dict[str, Any]) -> tuple[float, float, int]:
    """(latency to done, time to first event, events) for one job: POST, then read its stream."""
    start = time.perf_counter()
    created = await http.post("/api/v1/jobs", json={"workload": workload, "input": job_input})
    created.raise_for_status()
    job_id = created.json()["data"]["id"]
    first = 0.0
    events = 0
    async with http.stream("GET", f"/api/v1/jobs/{job_id}/stream") as stream:
        async for line in stream.aiter_lines():
            if not line.startswith("data:"):
                continue
            events += 1
            if events == 1:
                first = time.perf_counter() - start
            kind = json.loads(line[5:])["type"]
            if kind in ("done", "error"):
                if kind == "error":
                    raise RuntimeError(line)
                break
    return time.perf_counter() - start, first, events


async def _jobs_rps(url: str, key: str, seconds: float, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as http:
        async def worker() -> None:
            while time.perf_counter() < deadline:
                latency, _, _ = await _job(http, "wasm-hash", {"text": "hello"})
                latencies.append(latency)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(latencies) / (time.perf_counter() - start), latencies


async def _stream(url: str, key: str, tokens: int) -> tuple[float, float, int]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
        await _job(http, "wasm-echo-stream", {"text": "warm", "repeat": 1})
        firsts = [(await _job(http, "wasm-echo-stream", {"text": "tok", "repeat": 100}))[1] for _ in range(7)]
        total, first, events = await _job(http, "wasm-echo-stream", {"text": "tok", "repeat": tokens})
        return statistics.median(firsts), events / max(total - first, 1e-9), events


def run(seconds: float = 10.0, concurrency: int = 16, tokens: int = 20_000) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="archipelag-bench-") as state:
        settings = Settings(state_dir=Path(state), api_port=_free_port(), ray_head_port=_free_port(),
                            rate_limit_per_min=0, ray_auth="disabled")
        network = start_network(settings, hosts=3)
        try:
            asyncio.run(_jobs_rps(network.url, network.api_key, 2.0, 4))  # warm caches and workers
            noop = asyncio.run(_noop_rps(network.url, seconds, concurrency))
            jobs, latencies = asyncio.run(_jobs_rps(network.url, network.api_key, seconds, concurrency))
            _, alone = asyncio.run(_jobs_rps(network.url, network.api_key, seconds / 2, 1))
            first, events_s, events = asyncio.run(_stream(network.url, network.api_key, tokens))
        finally:
            network.stop()
    return [
        ("ingress no-op GET /health (baseline)", f"{noop:,.0f} req/s", f"concurrency {concurrency}"),
        ("WASM jobs end to end (wasm-hash)", f"{jobs:,.1f} jobs/s",
         (f"{100 * jobs / noop:.0f} % of no-op; p50 {1000 * statistics.median(latencies):.1f} ms, "
          f"p99 {1000 * _pct(latencies, 0.99):.1f} ms")),
        ("WASM job latency, one at a time", f"{1000 * statistics.median(alone):.1f} ms",
         f"p50; p99 {1000 * _pct(alone, 0.99):.1f} ms; submit → done over HTTP"),
        ("streamed job: time to first event", f"{1000 * first:.1f} ms", "submit → first SSE event, p50 of 7"),
        ("streamed job: events/s", f"{events_s:,.0f} events/s", f"{events:,} events over SSE"),
    ]
