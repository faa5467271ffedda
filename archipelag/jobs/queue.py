"""Queue: the jobs waiting for a host, in the order they get one. Pure.

Higher ``priority`` first (0–10, the API's field), then arrival. A job that cannot be placed now (its hosts are
full, or none is online yet) keeps its place while jobs behind it that can run go ahead. A job past its
deadline leaves the queue failed; past ``max_jobs`` waiting, a new job is refused with a 503 and
``Retry-After`` rather than kept waiting forever.
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


@dataclass(order=True)
class _Place(Generic[T]):
    key: tuple[int, int]
    job_id: JobId = field(compare=False)
    item: T = field(compare=False)
    deadline: float = field(compare=False)


class JobQueue(Generic[T]):
    def __init__(self, max_jobs: int, retry_after_s: int = 5) -> None:
        self._max_jobs = max_jobs
        self._retry_after_s = retry_after_s
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

    def push(self, job_id: JobId, item: T, priority: int, deadline: float) -> None:
        self._places[job_id] = _Place((-priority, next(self._arrivals)), job_id, item, deadline)

    def remove(self, job_id: JobId) -> T | None:
        place = self._places.pop(job_id, None)
        return place.item if place is not None else None

    def in_order(self) -> Iterator[tuple[JobId, T, float]]:
        """Waiting jobs, first in line first: (job id, item, deadline)."""
        for place in sorted(self._places.values()):
            yield place.job_id, place.item, place.deadline
