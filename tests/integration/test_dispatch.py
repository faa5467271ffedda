"""The dispatcher against the real ledger (SQLite) and stand-in hosts: placement order, lost hosts, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from archipelag.catalog import Manifest
from archipelag.errors import HostLost, NoCapacity
from archipelag.ids import HostId, JobId, WorkloadSlug
from archipelag.ledger import Ledger
from archipelag.lifecycle import JobStatus
from archipelag.protocol import Event
from archipelag.runtimes.base import JobSpec
from archipelag.serve.dispatch import Dispatcher
from archipelag.settings import Settings

MANIFEST = Manifest(slug=WorkloadSlug("wasm-hash"), name="hash", description="", runtime="wasm", trust_level=0,
                    price_micro=10_000)


class StandInHost:
    """Yields scripted events; can vanish mid-job (HostLost) or wait to be cancelled."""

    def __init__(self, events: list[Event], lose_after: int | None = None, wait_for_cancel: bool = False) -> None:
        self.events, self.lose_after, self.wait_for_cancel = events, lose_after, wait_for_cancel
        self.cancelled = asyncio.Event()
        self.ran = 0

    async def run(self, spec: JobSpec) -> AsyncIterator[Event]:
        self.ran += 1
        yield {"type": "status", "message": "started", "seq": 0}
        for index, event in enumerate(self.events):
            if self.lose_after is not None and index == self.lose_after:
                raise HostLost("node died", host_id="x")
            yield dict(event)
        if self.wait_for_cancel:
            await self.cancelled.wait()
            yield {"type": "error", "message": "cancelled by the user", "code": "cancelled"}

    async def cancel(self, job_id: JobId, reason: str = "") -> bool:
        self.cancelled.set()
        return True


class PlacementEvents:
    def __init__(self) -> None:
        self.offline: list[HostId] = []
        self.karma: dict[HostId, float] = {}

    def job_assigned(self, host_id: HostId) -> None: ...

    def job_released(self, host_id: HostId) -> None: ...

    def mark_offline(self, host_id: HostId, reason: str) -> None:
        self.offline.append(host_id)

    def set_karma(self, host_id: HostId, karma: float) -> None:
        self.karma[host_id] = karma


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    ledger.sync_catalog([MANIFEST])
    for host in ("a", "b", "c"):
        ledger.upsert_host(host, host, "eu-west", {})
    return ledger


def submit(ledger: Ledger) -> tuple[int, str]:
    account = ledger.create_account("u@example.org", 1_000_000)
    job = ledger.create_job(account.id, "wasm-hash", {"text": "x"}, reserve_micro=MANIFEST.price_micro)
    ledger.transition(job.id, JobStatus.QUEUED)
    return account.id, job.id


async def drive(ledger: Ledger, hosts: dict[str, StandInHost], ranked: list[str], rerank: Any = None,
                cancel_after_s: float | None = None) -> tuple[list[Event], PlacementEvents]:
    placement = PlacementEvents()

    async def no_more(*_: Any) -> list[HostId]:
        raise NoCapacity("no other host")

    async def db(method: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(ledger, method), *args, **kwargs)

    dispatcher = Dispatcher(db, lambda h: hosts[h], rerank or no_more, placement, max_attempts=3)
    _, job_id = submit(ledger)
    live = dispatcher.start(JobId(job_id), MANIFEST, {"text": "x"}, Settings().limits_for(MANIFEST.tier), None,
                            [HostId(h) for h in ranked])
    if cancel_after_s is not None:
        await asyncio.sleep(cancel_after_s)
        assert await dispatcher.cancel(JobId(job_id))
    events = [e async for e in live.follow()]
    return events, placement


DONE = [{"type": "token", "content": "ab"}, {"type": "done", "usage": {"completion_tokens": 1}}]


def test_a_job_runs_on_the_first_ranked_host_and_is_charged(ledger: Ledger) -> None:
    hosts = {"a": StandInHost(DONE), "b": StandInHost(DONE)}
    events, _ = asyncio.run(drive(ledger, hosts, ["a", "b"]))
    assert [e["type"] for e in events] == ["status", "token", "done"]
    assert [e["seq"] for e in events] == [0, 1, 2]
    job = ledger.list_jobs(1)[0][0]
    assert job.status == JobStatus.SUCCEEDED and job.host_id == "a" and job.output == "ab"
    assert job.credits_used_micro == MANIFEST.price_micro
    assert hosts["b"].ran == 0
    assert ledger.total_is_zero()
    assert [e.kind for e in ledger.karma_events("a")] == ["job_succeeded"]


def test_a_host_lost_mid_job_requeues_it_to_the_next_host(ledger: Ledger) -> None:
    hosts = {"a": StandInHost(DONE, lose_after=1), "b": StandInHost(DONE)}
    events, placement = asyncio.run(drive(ledger, hosts, ["a", "b"]))
    assert placement.offline == ["a"]
    assert any("was lost" in e.get("message", "") for e in events)
    job = ledger.list_jobs(1)[0][0]
    assert job.status == JobStatus.SUCCEEDED and job.host_id == "b" and job.attempt == 2
    assert [e.to_status for e in ledger.job_events(job.id)].count(JobStatus.QUEUED) == 2
    assert [e.kind for e in ledger.karma_events("a")] == ["host_dropped"]
    assert ledger.stored_output_events(job.id) == events  # a late reader sees what the live stream carried


def test_a_job_whose_hosts_keep_vanishing_fails_and_is_refunded(ledger: Ledger) -> None:
    hosts = {h: StandInHost(DONE, lose_after=0) for h in "abc"}
    events, _ = asyncio.run(drive(ledger, hosts, ["a", "b", "c"]))
    assert events[-1]["type"] == "error" and "gave up after 3 attempts" in events[-1]["message"]
    job = ledger.list_jobs(1)[0][0]
    assert job.status == JobStatus.FAILED and job.credits_used_micro == 0
    assert ledger.balance_micro(1) == 1_000_000
    assert ledger.total_is_zero()


def test_no_host_left_to_try_fails_the_job_with_the_reason(ledger: Ledger) -> None:
    hosts = {"a": StandInHost(DONE, lose_after=0)}
    events, _ = asyncio.run(drive(ledger, hosts, ["a"]))
    assert "no host could take the job: no other host" in events[-1]["message"]


def test_a_workload_error_fails_the_job_without_charge(ledger: Ledger) -> None:
    hosts = {"a": StandInHost([{"type": "error", "message": "fuel budget exhausted", "code": "budget_exceeded"}])}
    asyncio.run(drive(ledger, hosts, ["a"]))
    job = ledger.list_jobs(1)[0][0]
    assert job.status == JobStatus.FAILED and job.error == "fuel budget exhausted"
    assert ledger.balance_micro(1) == 1_000_000


def test_a_timeout_ends_the_job_timed_out(ledger: Ledger) -> None:
    hosts = {"a": StandInHost([{"type": "error", "message": "wall-clock budget of 1 s exceeded",
                                "code": "timed_out"}])}
    asyncio.run(drive(ledger, hosts, ["a"]))
    assert ledger.list_jobs(1)[0][0].status == JobStatus.TIMED_OUT


def test_cancel_reaches_the_host_and_ends_the_job_cancelled(ledger: Ledger) -> None:
    hosts = {"a": StandInHost([{"type": "token", "content": "x"}], wait_for_cancel=True)}
    events, _ = asyncio.run(drive(ledger, hosts, ["a"], cancel_after_s=0.2))
    assert events[-1]["code"] == "cancelled"
    job = ledger.list_jobs(1)[0][0]
    assert job.status == JobStatus.CANCELLED and ledger.balance_micro(1) == 1_000_000


def test_a_busy_host_turns_the_job_away_and_the_next_one_runs_it(ledger: Ledger) -> None:
    class Busy(StandInHost):
        async def run(self, spec: JobSpec) -> AsyncIterator[Event]:
            self.ran += 1
            yield {"type": "error", "message": "full", "code": "host_busy", "seq": 0}

    hosts = {"a": Busy([]), "b": StandInHost(DONE)}
    asyncio.run(drive(ledger, hosts, ["a", "b"]))
    job = ledger.list_jobs(1)[0][0]
    assert job.status == JobStatus.SUCCEEDED and job.host_id == "b" and job.attempt == 1


def test_a_job_waits_in_the_queue_while_every_able_host_is_full(ledger: Ledger) -> None:
    hosts = {"a": StandInHost(DONE)}
    answers: list[Any] = [NoCapacity("all 1 eligible hosts are full", full=True)] * 3 + [["a"]]

    async def rerank(*_: Any) -> list[HostId]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return [HostId(h) for h in answer]

    asyncio.run(drive(ledger, hosts, [], rerank=rerank))
    job = ledger.list_jobs(1)[0][0]
    assert job.status == JobStatus.SUCCEEDED and job.host_id == "a" and not answers
