"""Batches (issue 12): a 1,000-input batch of wasm-hash end to end, beside the same 1,000 inputs submitted as
single jobs at once, on the embedded network (a head and 3 hosts, as the jobs benchmarks use).

- singles: every job POSTed concurrently (a job refused with 503 while the queue is full is sent again after its
  Retry-After, as a client would), then the account's job list read until all have ended;
- batch: one POST /api/v1/jobs/batch, then its batch-status read until the parent has ended; and how long the
  POST itself took (admission of every input, the ledger writing 1,001 jobs and 1,000 reservations at once).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from typing import Any

import httpx

from archipelag.network import start_network
from bench.bench_jobs import _settings

Row = tuple[str, str, str]
ENDED = {"completed", "failed", "cancelled", "timeout"}
POLL_S = 0.2


def _inputs(count: int, tag: str) -> list[dict[str, Any]]:
    return [{"text": f"{tag}-{i}"} for i in range(count)]


async def _singles(http: httpx.AsyncClient, count: int, concurrency: int) -> tuple[float, int, int]:
    """Seconds from the first POST until every job has ended; how many completed; how many 503s were retried."""
    started = time.perf_counter()
    gate = asyncio.Semaphore(concurrency)
    retried = 0

    async def one(job_input: dict[str, Any]) -> str:
        nonlocal retried
        async with gate:
            while True:
                created = await http.post("/api/v1/jobs", json={"workload": "wasm-hash", "input": job_input})
                if created.status_code != 503:
                    created.raise_for_status()
                    return str(created.json()["data"]["id"])
                retried += 1
                await asyncio.sleep(float(created.headers.get("Retry-After", "1")) / 5)

    ids = set(await asyncio.gather(*(one(i) for i in _inputs(count, "single"))))
    completed = 0
    while True:
        statuses: dict[str, str] = {}
        for offset in range(0, count + 200, 200):
            page = (await http.get("/api/v1/jobs", params={"limit": 200, "offset": offset})).json()["data"]
            statuses |= {job["id"]: job["status"] for job in page if job["id"] in ids}
        if len(statuses) == len(ids) and all(s in ENDED for s in statuses.values()):
            completed = sum(s == "completed" for s in statuses.values())
            return time.perf_counter() - started, completed, retried
        await asyncio.sleep(POLL_S)


async def _batch(http: httpx.AsyncClient, count: int) -> tuple[float, float, dict[str, int], str]:
    """Seconds until the batch has ended; seconds the POST took; its children per state; its state."""
    started = time.perf_counter()
    created = await http.post("/api/v1/jobs/batch", json={"workload": "wasm-hash", "inputs": _inputs(count, "batch")})
    created.raise_for_status()
    posted = time.perf_counter() - started
    batch_id = created.json()["data"]["id"]
    while True:
        progress = (await http.get(f"/api/v1/jobs/{batch_id}/batch-status")).json()["data"]
        if progress["parent_state"] in {"succeeded", "failed", "cancelled"}:
            return time.perf_counter() - started, posted, progress["child_states"], progress["parent_state"]
        await asyncio.sleep(POLL_S)


async def _compare(url: str, key: str, count: int, concurrency: int) -> tuple[tuple[float, int, int],
                                                                             tuple[float, float, dict[str, int], str]]:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300,
                                 limits=httpx.Limits(max_connections=concurrency + 4)) as http:
        for _ in range(20):  # warm: every host has compiled wasm-hash, the ingress is up
            (await http.post("/api/v1/jobs", json={"workload": "wasm-hash", "input": {"text": "warm"}})).raise_for_status()
        await asyncio.sleep(1.0)
        singles = await _singles(http, count, concurrency)
        batch = await _batch(http, count)
        return singles, batch


def run(count: int = 1000, concurrency: int = 64) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="archipelag-bench-") as state:
        network = start_network(_settings(state), hosts=3)
        try:
            (singles_s, done, retried), (batch_s, posted_s, states, state_) = asyncio.run(
                _compare(network.url, network.api_key, count, concurrency))
        finally:
            network.stop()
    return [
        (f"{count:,} single wasm-hash jobs at once (baseline)", f"{singles_s:.1f} s",
         f"{count / singles_s:,.0f} jobs/s; {done} completed; {concurrency} POSTs in flight, {retried} 503s retried"),
        (f"one batch of {count:,} wasm-hash inputs", f"{batch_s:.1f} s",
         (f"{count / batch_s:,.0f} jobs/s ({100 * singles_s / batch_s:.0f} % of the singles' rate); {state_}, "
         f"children {states}")),
        ("  its POST /api/v1/jobs/batch", f"{posted_s:.2f} s",
         f"admission, {count + 1:,} jobs and {count:,} reservations in one ledger transaction"),
    ]
