"""Queue: the jobs waiting for a host, in the order they get one. Pure.

Jobs go by ``priority`` (0–100, the API's field), then age, with aging: a job counts as if it had arrived
``priority × aging_s`` seconds before it did. So a higher priority goes first among jobs that arrived together,
and every second a job waits is worth ``1 / aging_s`` points: a priority-0 job that has waited ``100 × aging_s``
seconds goes before any job that arrives after that, however high its priority; a busy network never starves it.
(Both age at the same rate, so the order of two waiting jobs never changes while they wait: the key is fixed at
push.)

Accounts take turns: each job its account (``owner``) already has waiting costs a new one a point of priority, so
an account's burst counts as arriving ``aging_s`` apart. Alone in the queue, a burst keeps its order and runs as
fast as hosts free up; beside it, another account's job goes after the burst's jobs that came before it plus one
per ``aging_s`` seconds since, not after the whole burst (one host, a burst of 32 chats: its first token after
3.6–4.8 s instead of 14.5–16.4 s; README, Benchmarks). A job put back after its host was lost keeps its place.

A job that cannot be placed now (its hosts are full, or none is online yet) keeps its place while jobs
behind it that can run go ahead. A job past its deadline leaves the queue failed; past ``max_jobs`` waiting, a
new job is refused with a 503 and ``Retry-After`` rather than kept waiting forever.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Hashable, Iterator
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
    owner: Hashable | None = field(compare=False)


class JobQueue(Generic[T]):
    def __init__(self, max_jobs: int, retry_after_s: int = 5, aging_s: float = 1.0) -> None:
        self._max_jobs = max_jobs
        self._retry_after_s = retry_after_s
        self._aging_s = aging_s  # seconds of waiting worth one point of priority
        self._places: dict[JobId, _Place[T]] = {}
        self._arrivals = itertools.count()
        self._waiting_of: Counter[Hashable] = Counter()  # jobs waiting per owner

    def __len__(self) -> int:
        return len(self._places)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._places

    def admit(self) -> None:
        """Raise QueueFull when a new job would have to wait behind too many."""
        if len(self._places) >= self._max_jobs:
            raise QueueFull(f"{len(self._places)} jobs are already waiting for a host; retry in "
                            f"{self._retry_after_s} s", retry_after=self._retry_after_s)

    def push(self, job_id: JobId, item: T, priority: int, deadline: float, arrived: float,
             owner: Hashable | None = None) -> float:
        """Queue a job that arrived at ``arrived`` for ``owner`` (its account; None: no turns taken). Returns the
        arrival it counts as: ``put_back`` takes it to queue the job in the same place again."""
        points = min(max(priority, 0), MAX_PRIORITY) - self._waiting_of[owner]  # Counter: 0 for None
        counts_from = arrived - points * self._aging_s
        self.put_back(job_id, item, deadline, counts_from, owner)
        return counts_from

    def put_back(self, job_id: JobId, item: T, deadline: float, counts_from: float,
                 owner: Hashable | None = None) -> None:
        """Queue a job at the place ``push`` gave it (a job whose host was lost goes back where it stood)."""
        self.remove(job_id)
        self._places[job_id] = _Place((counts_from, next(self._arrivals)), job_id, item, deadline, owner)
        if owner is not None:
            self._waiting_of[owner] += 1

    def remove(self, job_id: JobId) -> T | None:
        place = self._places.pop(job_id, None)
        if place is None:
            return None
        if place.owner is not None:
            self._waiting_of[place.owner] -= 1
            if not self._waiting_of[place.owner]:
                del self._waiting_of[place.owner]
        return place.item

    def in_order(self) -> Iterator[tuple[JobId, T, float]]:
        """Waiting jobs, first in line first: (job id, item, deadline)."""
        for place in sorted(self._places.values()):
            yield place.job_id, place.item, place.deadline
