"""Queue: the jobs waiting for a host, in the order they get one. Pure.

Jobs go by ``priority`` (0–100, the API's field), then age, with aging: a job counts as if it had arrived
``priority × aging_s`` seconds before it did. So a higher priority goes first among jobs that arrived together,
and every second a job waits is worth ``1 / aging_s`` points: a priority-0 job that has waited ``100 × aging_s``
seconds goes before any job that arrives after that, however high its priority; a busy network never starves it.
(Both age at the same rate, so the order of two waiting jobs never changes while they wait: the key is fixed at
push.) A job that cannot be placed now (its hosts are full, or none is online yet) keeps its place while jobs
behind it that can run go ahead. A job past its deadline leaves the queue failed; past ``max_jobs`` waiting, a
new job is refused with a 503 and ``Retry-After`` rather than kept waiting forever.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from archipelag.errors import NoCapacity
from archipelag.ids import JobId

T = TypeVar("T")


class QueueFull(NoCapacity):
    """Too many jobs are waiting for a host; retry later."""

    code = "queue_full"


MAX_PRIORITY = 100


@dataclass(order=True)
class _Place(Generic[T]):
    key: tuple[float, int]  # (the arrival it counts as, then the order of pushes)
    job_id: JobId = field(compare=False)
    item: T = field(compare=False)
    deadline: float = field(compare=False)


class JobQueue(Generic[T]):
    def __init__(self, max_jobs: int, retry_after_s: int = 5, aging_s: float = 1.0) -> None:
        self._max_jobs = max_jobs
        self._retry_after_s = retry_after_s
        self._aging_s = aging_s  # seconds of waiting worth one point of priority
        self._places: dict[JobId, _Place[T]] = {}
        self._arrivals = itertools.count()

    def __len__(self) -> int:
        return len(self._places)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._places

    def admit(self) -> None:
        """Raise QueueFull when a new job would have to wait behind too many."""
        if len(self._places) >= self._max_jobs:
            raise QueueFull(f"{len(self._places)} jobs are already waiting for a host; retry in "
                            f"{self._retry_after_s} s", retry_after=self._retry_after_s)

    def push(self, job_id: JobId, item: T, priority: int, deadline: float, arrived: float) -> None:
        """Queue a job that first arrived at ``arrived`` (a job queued again after its host was lost keeps
        its first arrival, and so its place)."""
        counts_from = arrived - min(max(priority, 0), MAX_PRIORITY) * self._aging_s
        self._places[job_id] = _Place((counts_from, next(self._arrivals)), job_id, item, deadline)

    def remove(self, job_id: JobId) -> T | None:
        place = self._places.pop(job_id, None)
        return place.item if place is not None else None

    def in_order(self) -> Iterator[tuple[JobId, T, float]]:
        """Waiting jobs, first in line first: (job id, item, deadline)."""
        for place in sorted(self._places.values()):
            yield place.job_id, place.item, place.deadline
