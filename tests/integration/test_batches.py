"""Batch jobs in the jobs core: the real JobService (driver, dispatcher, queue), the real ledger (SQLite) and
placement in-process, with stand-in hosts that answer each child from its input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from builders import NOW, a_host

from archipelag.catalog import Manifest
from archipelag.errors import NoCapacity, PaymentRequired, ValidationFailed
from archipelag.ids import JobId, WorkloadSlug
from archipelag.jobs.queue import QueueFull
from archipelag.jobs.service import JobService
from archipelag.ledger import Ledger
from archipelag.ledger.client import LedgerClient
from archipelag.ledger.records import JobBatch
from archipelag.lifecycle import TERMINAL_JOB_STATES, JobStatus
from archipelag.placement.client import PlacementClient
from archipelag.protocol import Event
from archipelag.runtimes.base import JobSpec
from archipelag.settings import Settings

MANIFEST = Manifest(slug=WorkloadSlug("wasm-hash"), name="hash", description="", runtime="wasm", trust_level=0,
                    price_micro=10_000)
CREDITS = 1_000_000


class EchoHost:
    """Answers a child with ``done {output: its input's value}``; ``"fail"`` fails it, ``"hold"`` keeps it
    running (keep-alives) until cancelled or ``release`` is set. Counts how many run at once."""

    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s
        self.running = 0
        self.most_at_once = 0
        self.ran: list[Any] = []
        self.cancelled: set[JobId] = set()
        self.release = asyncio.Event()

    async def run_batches(self, spec: JobSpec) -> AsyncIterator[list[Event]]:
        value = spec.input["value"]
        self.ran.append(value)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            yield [{"type": "status", "message": "started"}]
            await asyncio.sleep(self.delay_s)
            while value == "hold" and not self.release.is_set():
                if spec.job_id in self.cancelled:
                    yield [{"type": "error", "message": "cancelled by the user", "code": "cancelled"}]
                    return
                await asyncio.sleep(0.02)
                yield []
            if value == "fail":
                yield [{"type": "error", "message": "the input was bad", "code": "workload_error"}]
                return
            yield [{"type": "done", "output": value}]
        finally:
            self.running -= 1

    async def cancel(self, job_id: JobId, reason: str = "") -> bool:
        self.cancelled.add(job_id)
        return True


class Net:
    def __init__(self, tmp_path: Path, host: EchoHost, slots: int = 50, **settings: Any) -> None:
        self.settings = Settings(state_dir=tmp_path, **{"lease_s": 2.0, "queue_timeout_s": 30.0, **settings})
        self.ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
        self.ledger.migrate()
        self.ledger.sync_catalog([MANIFEST])
        self.account = self.ledger.create_account("u@example.org", CREDITS).id
        self.placement = PlacementClient.local(self.settings, clock=lambda: NOW)
        self.placement.register(a_host("a", slots=slots))
        self.host = host
        self.service = self.build()

    def build(self) -> JobService:
        return JobService(self.settings, {MANIFEST.slug: MANIFEST}, LedgerClient.local(self.ledger), self.placement,
                          lambda host_id: self.host)

    async def submit(self, values: list[Any], **options: Any) -> JobBatch:
        return await self.service.submit_batch(self.account, "wasm-hash", [{"value": v} for v in values], None,
                                               **options)

    async def ended(self, parent_id: JobId, timeout_s: float = 20) -> JobBatch:
        async with asyncio.timeout(timeout_s):
            while True:
                batch = self.ledger.get_batch(parent_id)
                if batch.parent.status in TERMINAL_JOB_STATES:
                    return batch
                await asyncio.sleep(0.05)

    def books_balance(self) -> None:
        """Every child settled or refunded (nothing left in escrow for them), and the books sum to zero."""
        assert self.ledger.total_is_zero()
        jobs, _ = self.ledger.list_jobs(self.account, limit=200)
        charged = sum(j.credits_used_micro for j in jobs)
        assert all(j.status in TERMINAL_JOB_STATES for j in jobs)
        assert self.ledger.balance_micro(self.account) == CREDITS - charged


def test_a_batch_runs_every_input_at_most_max_parallelism_at_once_and_merges_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, EchoHost(delay_s=0.3))
        batch = await net.submit([f"v{i}" for i in range(12)], max_parallelism=3)
        assert batch.parent.is_batch and [c.batch_index for c in batch.children] == list(range(12))
        assert {c.status for c in batch.children} == {JobStatus.SUBMITTED}
        done = await net.ended(batch.parent.id)
        assert done.parent.status is JobStatus.SUCCEEDED and done.parent.credits_used_micro == 0
        assert json.loads(done.parent.output or "") == [f"v{i}" for i in range(12)]
        assert 1 < net.host.most_at_once <= 3  # never more than max_parallelism
        assert all(c.status is JobStatus.SUCCEEDED for c in done.children)
        charged = sum(net.ledger.get_job(c.id).credits_used_micro for c in done.children)
        assert charged == 12 * MANIFEST.price_micro
        net.books_balance()
        await net.service.close()

    asyncio.run(scenario())


def test_flatten_splices_list_outputs_and_best_effort_keeps_partial_results(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, EchoHost())
        batch = await net.submit([[1, 2], "fail", [3], "x"], merge_strategy="flatten")
        done = await net.ended(batch.parent.id)
        assert done.parent.status is JobStatus.SUCCEEDED
        assert json.loads(done.parent.output or "") == [1, 2, None, 3, "x"]
        assert [c.status for c in done.children] == [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.SUCCEEDED,
                                                     JobStatus.SUCCEEDED]
        net.books_balance()
        await net.service.close()

    asyncio.run(scenario())


def test_a_batch_whose_every_child_fails_fails(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, EchoHost())
        done = await net.ended((await net.submit(["fail", "fail"])).parent.id)
        assert done.parent.status is JobStatus.FAILED and "all 2 children failed" in (done.parent.error or "")
        net.books_balance()
        await net.service.close()

    asyncio.run(scenario())


def test_fail_fast_cancels_the_rest_and_refunds_them(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, EchoHost())
        batch = await net.submit(["hold", "fail", *["x"] * 8], fail_mode="fail_fast", max_parallelism=2)
        done = await net.ended(batch.parent.id)
        assert done.parent.status is JobStatus.FAILED and "child 1" in (done.parent.error or "")
        states = [c.status for c in done.children]
        assert states[:2] == [JobStatus.CANCELLED, JobStatus.FAILED]
        assert states[2:] == [JobStatus.CANCELLED] * 8  # never released: refunded in one write
        assert sorted(net.host.ran) == ["fail", "hold"]
        assert all(net.ledger.get_job(c.id).credits_used_micro == 0 for c in done.children)
        assert net.ledger.balance_micro(net.account) == CREDITS
        net.books_balance()
        await net.service.close()

    asyncio.run(scenario())


def test_cancelling_the_parent_cancels_its_children(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, EchoHost())
        batch = await net.submit(["x", "hold", "hold", "hold", "x"], max_parallelism=3)
        async with asyncio.timeout(10):
            while net.host.running < 3:  # the first has ended, three hold, the last waits its turn
                await asyncio.sleep(0.02)
        await net.service.cancel(batch.parent.id)
        done = net.ledger.get_batch(batch.parent.id)
        assert done.parent.status is JobStatus.CANCELLED
        assert [c.status for c in done.children][1:] == [JobStatus.CANCELLED] * 4
        assert done.children[0].status is JobStatus.SUCCEEDED
        net.books_balance()
        await net.service.close()

    asyncio.run(scenario())


def test_a_restarted_service_carries_the_batch_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        host = EchoHost()
        net = Net(tmp_path, host)
        batch = await net.submit(["a", "hold", "c", "d", "e"], max_parallelism=2)
        async with asyncio.timeout(10):
            while "hold" not in host.ran or net.ledger.get_job(batch.children[1].id).status is not JobStatus.STARTED:
                await asyncio.sleep(0.02)
        await net.service.close()  # the coordinator dies: its driver and dispatcher with it
        host.release.set()
        net.service = net.build()
        await net.service.start()
        done = await net.ended(batch.parent.id)
        assert done.parent.status is JobStatus.SUCCEEDED
        assert json.loads(done.parent.output or "") == ["a", "hold", "c", "d", "e"]
        assert net.ledger.get_job(done.children[1].id).attempt == 2  # re-run after the restart
        assert sorted(set(host.ran)) == ["a", "c", "d", "e", "hold"]
        net.books_balance()
        await net.service.close()

    asyncio.run(scenario())


def test_a_wrong_input_names_its_index_and_nothing_is_created(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, EchoHost())
        with pytest.raises(ValidationFailed) as wrong:
            await net.service.submit_batch(net.account, "wasm-hash", [{"value": 1}, {"value": float("nan")}], None)
        assert "inputs[1]" in wrong.value.message
        with pytest.raises(ValidationFailed):
            await net.service.submit_batch(net.account, "wasm-hash", [{"value": 1}] * 1001, None)
        assert net.ledger.list_jobs(net.account)[1] == 0
        await net.service.close()

    asyncio.run(scenario())


def test_a_batch_beyond_the_balance_is_refused_whole_and_nothing_is_held(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, EchoHost())
        with pytest.raises(PaymentRequired) as short:
            await net.submit(["x"] * 101)  # 101 × 0.01 credits > 1 credit
        assert short.value.details["required"] == 1.01 and "101 jobs" in short.value.message
        assert net.ledger.list_jobs(net.account)[1] == 0 and net.ledger.balance_micro(net.account) == CREDITS
        net.ledger.total_is_zero()
        await net.service.close()

    asyncio.run(scenario())


def test_no_host_that_could_ever_run_it_is_a_503_before_anything_is_written(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, EchoHost())
        net.placement.mark_offline("a", "gone")
        with pytest.raises(NoCapacity):
            await net.submit(["x"])
        assert net.ledger.list_jobs(net.account)[1] == 0
        await net.service.close()

    asyncio.run(scenario())


def test_a_big_batch_leaves_room_in_the_queue_for_single_jobs(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, EchoHost(delay_s=0.2), slots=1, queue_max_jobs=10)
        batch = await net.submit(["x"] * 30)
        await asyncio.sleep(0.5)
        assert len(net.service._queue) <= 5  # the batch's share: half the queue
        singles = []
        for _ in range(4):
            singles.append(await net.service.submit(net.account, "wasm-hash", {"value": "single"}, None))
        with pytest.raises(QueueFull):  # single jobs still meet the queue's own limit
            for _ in range(10):
                await net.service.submit(net.account, "wasm-hash", {"value": "single"}, None)
        done = await net.ended(batch.parent.id, timeout_s=60)
        assert done.parent.status is JobStatus.SUCCEEDED
        await net.service.close()

    asyncio.run(scenario())


def test_a_batch_whose_workload_left_the_catalog_fails_and_refunds_the_rest(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, EchoHost())
        batch = await net.submit(["hold", "x", "x"], max_parallelism=1)
        async with asyncio.timeout(10):
            while net.ledger.get_job(batch.children[0].id).status is not JobStatus.STARTED:
                await asyncio.sleep(0.02)
        await net.service.close()
        net.host.release.set()
        net.service = JobService(net.settings, {}, LedgerClient.local(net.ledger), net.placement,
                                 lambda host_id: net.host)
        await net.service.start()
        done = await net.ended(batch.parent.id)
        assert done.parent.status is JobStatus.FAILED and "unknown workload" in (done.parent.error or "")
        assert [c.status for c in done.children] == [JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.CANCELLED]
        assert net.ledger.balance_micro(net.account) == CREDITS
        net.books_balance()
        await net.service.close()

    asyncio.run(scenario())
