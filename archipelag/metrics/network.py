"""NetworkMetrics: the network's numbers as the jobs service sees them — jobs admitted and ended, how long each
waited for its first event and first token, placement's decisions, the fleet — plus the HTTP request counts
every API replica sends in. Renders Prometheus' text format and the public status numbers. Pure (no Ray).

One lives in the jobs service (the JobsActor on the head): it sees every job and host, so nothing is counted
twice and no extra actor is needed. Recording is a dict lookup and a counter increment on the service's event
loop; nothing here waits.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from archipelag.ids import JobId
from archipelag.lifecycle import HostStatus, JobStatus
from archipelag.metrics.registry import Instruments
from archipelag.placement.scoring import HostSnapshot

RequestKey = tuple[str, str, str]  # method, route template, status code
RequestCounts = Mapping[RequestKey, int]

THROUGHPUT_WINDOW_S = 300.0  # jobs per minute: jobs ended in the last five minutes, divided by five
TTFT_SAMPLES = 100  # median time to first token: the latest this many chat jobs …
TTFT_WINDOW_S = 900.0  # … that had their first token in the last fifteen minutes
MAX_TIMED_JOBS = 100_000  # jobs waiting for their first token at once; past it the oldest is no longer timed


@dataclass(frozen=True)
class NetworkStatus:
    """The public status page's numbers (``GET /api/v1/status``)."""

    hosts_online: int
    hosts_online_by_region: dict[str, int]
    jobs_per_minute: float  # jobs that ended (any outcome) in the last 5 minutes, per minute
    median_ttft_ms: float | None  # None until a chat job has had its first token in the last 15 minutes
    queue_depth: int
    updated_at: datetime


@dataclass
class _Timing:
    """One admitted job on its way to its first event and first token."""

    workload: str
    admitted_at: float
    first_event: bool = False


class _PerSecond:
    """How many things happened in each of the last ``window_s`` seconds (bounded: one bucket per second)."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._buckets: deque[list[int]] = deque()  # [second, count], oldest first

    def add(self, at: float) -> None:
        second = int(at)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += 1
        else:
            self._buckets.append([second, 1])
        self._forget(at)

    def count(self, now: float) -> int:
        self._forget(now)
        return sum(count for _, count in self._buckets)

    def _forget(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] <= now - self._window_s:
            self._buckets.popleft()


class NetworkMetrics:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 max_timed_jobs: int = MAX_TIMED_JOBS) -> None:
        self.instruments = Instruments()
        self._max_timed_jobs = max_timed_jobs
        self._clock = clock
        self._wall_clock = wall_clock
        self._timings: OrderedDict[JobId, _Timing] = OrderedDict()  # oldest first, dropped in O(1)
        self._ended = _PerSecond(THROUGHPUT_WINDOW_S)
        self._ttft: deque[tuple[float, float]] = deque(maxlen=TTFT_SAMPLES)  # (when, seconds)
        self._online_by_region: dict[str, int] = {}

    # --- jobs ------------------------------------------------------------------------------------

    def admitted(self, job_id: JobId, workload: str, created: asyncio.Future[Any]) -> None:
        """A job passed admission and is on its way to a host; ``created`` is the ledger's creation of it
        (with its credits' reservation). Its clock starts now; if the ledger refuses it (402), it is forgotten."""
        if len(self._timings) >= self._max_timed_jobs:
            self._timings.popitem(last=False)
        self._timings[job_id] = _Timing(workload, self._clock())
        created.add_done_callback(lambda done: self._created(job_id, workload, done))

    def _created(self, job_id: JobId, workload: str, created: asyncio.Future[Any]) -> None:
        if created.cancelled() or created.exception() is not None:
            self._timings.pop(job_id, None)
            return
        self.instruments.jobs_submitted.labels(workload).inc()
        self.instruments.ledger_transactions.labels("reserve").inc()

    def heard(self, job_id: JobId, events: Sequence[Any]) -> None:
        """Events the relay took from the job's host (in the event path: a lookup when the job is not timed)."""
        timing = self._timings.get(job_id)
        if timing is None or not events:
            return
        now = self._clock()
        if not timing.first_event:
            timing.first_event = True
            self.instruments.time_to_first_event.labels(timing.workload).observe(now - timing.admitted_at)
        if any(isinstance(event, dict) and event.get("type") == "token" for event in events):
            waited_s = now - timing.admitted_at
            self.instruments.time_to_first_token.labels(timing.workload).observe(waited_s)
            self._ttft.append((now, waited_s))
            del self._timings[job_id]  # nothing more to time

    def ended(self, workload: str, outcome: JobStatus, job_id: JobId | None = None) -> None:
        """The ledger recorded the job's end (and settled or refunded its credits)."""
        if job_id is not None:
            self._timings.pop(job_id, None)
        self.instruments.jobs.labels(workload, str(outcome)).inc()
        self.instruments.ledger_transactions.labels(
            "settle" if outcome is JobStatus.SUCCEEDED else "refund").inc()
        self._ended.add(self._clock())

    def placed(self, seconds: float, ranked: bool) -> None:
        """One ranking by placement took ``seconds``; ``ranked``: some host fits the job."""
        self.instruments.placement_decision.labels("ranked" if ranked else "no_capacity").observe(seconds)

    # --- the fleet and the API -------------------------------------------------------------------

    def fleet(self, snapshots: Iterable[HostSnapshot]) -> None:
        """Placement's hosts as the jobs service last fetched them."""
        counts: dict[tuple[str, str], int] = {}
        for snap in snapshots:
            key = (str(snap.status), snap.region)
            counts[key] = counts.get(key, 0) + 1
        self.instruments.hosts.clear()  # a region or status no host has any more is gone, not 0 forever
        for (status, region), count in counts.items():
            self.instruments.hosts.labels(status, region).set(count)
        self._online_by_region = {region: count for (status, region), count in sorted(counts.items())
                                  if status == HostStatus.ONLINE}

    def requests(self, counts: RequestCounts) -> None:
        """Request counts from an API replica since its last report."""
        for (method, route, status), count in counts.items():
            self.instruments.http_requests.labels(method, route, status).inc(count)

    # --- what is read ----------------------------------------------------------------------------

    def exposition(self, queue_depth: int) -> str:
        self.instruments.queue_depth.set(queue_depth)
        return self.instruments.render()

    def status(self, queue_depth: int) -> NetworkStatus:
        now = self._clock()
        recent = [seconds for at, seconds in self._ttft if at > now - TTFT_WINDOW_S]
        return NetworkStatus(
            hosts_online=sum(self._online_by_region.values()),
            hosts_online_by_region=dict(self._online_by_region),
            jobs_per_minute=self._ended.count(now) / (THROUGHPUT_WINDOW_S / 60),
            median_ttft_ms=statistics.median(recent) * 1000 if recent else None,
            queue_depth=queue_depth,
            updated_at=self._wall_clock(),
        )
