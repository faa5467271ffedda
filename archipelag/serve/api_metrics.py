"""Metrics API: ``GET /metrics`` (Prometheus' text format) and ``GET /api/v1/status`` (the public status page's
numbers), both without a key and both for the whole network, whichever replica answers; and this replica's
count of the requests it answers, reported to the jobs service about once a second.

Neither route needs an account, so neither may cost the network more the more it is asked: a replica asks the
jobs service for each at most once per ``CACHE_S`` and every caller in that time shares the answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel

from archipelag.jobs.client import JobsClient
from archipelag.metrics.network import NetworkStatus
from archipelag.metrics.registry import CONTENT_TYPE
from archipelag.metrics.requests import RequestCounter, RequestTally
from archipelag.serve.responses import data

REPORT_EVERY_S = 1.0  # a replica's request counts reach the jobs service this often
CACHE_S = 1.0  # a replica asks the jobs service for metrics or status at most this often

T = TypeVar("T")
router = APIRouter()


class StatusView(BaseModel):
    hosts_online: int
    hosts_online_by_region: dict[str, int]
    jobs_per_minute: float
    median_ttft_ms: float | None
    queue_depth: int
    updated_at: str


class StatusAnswer(BaseModel):
    data: StatusView


def status_view(status: NetworkStatus) -> dict[str, object]:
    return {"hosts_online": status.hosts_online, "hosts_online_by_region": status.hosts_online_by_region,
            "jobs_per_minute": round(status.jobs_per_minute, 3),
            "median_ttft_ms": round(status.median_ttft_ms, 1) if status.median_ttft_ms is not None else None,
            "queue_depth": status.queue_depth, "updated_at": status.updated_at.isoformat()}


class _Shared(Generic[T]):
    """One fetch at a time, its answer shared for ``ttl_s`` (an error too: callers retry after it)."""

    def __init__(self, fetch: Callable[[], Awaitable[T]], ttl_s: float) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._task: asyncio.Task[T] | None = None
        self._fresh_until = 0.0

    async def get(self) -> T:
        now = time.monotonic()
        task = self._task
        if task is None or now >= self._fresh_until or task.get_loop() is not asyncio.get_running_loop():
            task = self._task = asyncio.ensure_future(self._fetch())
            self._fresh_until = now + self._ttl_s
        return await asyncio.shield(task)


class MetricsReporter:
    """This replica's side of the network's metrics: its request tally, the loop that reports it, and the
    shared answers of the two routes."""

    def __init__(self, jobs: JobsClient) -> None:
        self.tally = RequestTally()
        self._jobs = jobs
        self._reporting: asyncio.Task[None] | None = None
        self.exposition = _Shared(lambda: jobs.exposition(self.tally.take()), CACHE_S)
        self.status = _Shared(jobs.status, CACHE_S)

    def keep_reporting(self) -> None:
        """Called on each request: starts the reporting loop on this event loop if it is not running."""
        task = self._reporting
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._reporting = asyncio.get_running_loop().create_task(self._report_forever())

    async def _report_forever(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            if self.tally:
                self._jobs.record_requests(self.tally.take())


def install_metrics(app: FastAPI, jobs: JobsClient) -> None:
    """Count every request ``app`` answers and serve ``/metrics`` and ``/api/v1/status``."""
    reporter = app.state.metrics_reporter = MetricsReporter(jobs)
    app.add_middleware(RequestCounter, tally=reporter.tally, routes=app.router.routes,
                       started=reporter.keep_reporting)
    app.include_router(router)


def _reporter(request: Request) -> MetricsReporter:
    reporter: MetricsReporter = request.app.state.metrics_reporter
    return reporter


# Not in the OpenAPI schema: its body is Prometheus' text, not the API's JSON.
@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(await _reporter(request).exposition.get(), media_type=CONTENT_TYPE)


@router.get("/api/v1/status", response_model=StatusAnswer,
            summary="The network's public numbers: hosts online by region, jobs per minute, median time to "
                    "first token, queue depth (no key needed)")
async def network_status(request: Request) -> Response:
    return data(status_view(await _reporter(request).status.get()))
