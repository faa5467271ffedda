"""The jobs core (admission, queue, dispatcher with leases, relay, recovery) against the real ledger (SQLite)
and the real placement logic in-process, with stand-in hosts that can vanish, hang, answer late or refuse."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from builders import NOW, a_host

from archipelag.catalog import Manifest
from archipelag.errors import HostLost, NoCapacity, NotFound, PaymentRequired
from archipelag.ids import HostId, JobId, WorkloadSlug
from archipelag.jobs.queue import QueueFull
from archipelag.jobs.service import JobService
from archipelag.ledger import Ledger
from archipelag.ledger.client import LedgerClient
from archipelag.ledger.karma_rules import KarmaState
from archipelag.ledger.records import Job
from archipelag.lifecycle import JobStatus
from archipelag.placement.client import PlacementClient
from archipelag.protocol import Event
from archipelag.runtimes.base import JobSpec
from archipelag.settings import Settings

MANIFEST = Manifest(slug=WorkloadSlug("wasm-hash"), name="hash", description="", runtime="wasm", trust_level=0,
                    price_micro=10_000)
CREDITS = 1_000_000
SENTENCE = [{"type": "token", "content": t} for t in ("The", " sea", " is", " calm")]
DONE = {"type": "done", "usage": {"completion_tokens": 4}}


class StandInHost:
    """Yields scripted events, one batch each. ``lose_after``: vanish before event N (as Ray reports a dead node);
    ``hang_after``: fall silent before event N — no keep-alive — until ``wake`` is set, then say ``late``;
    ``hold``: after the events, stay quiet (keep-alives only) until cancelled or released; ``greet``: a status
    event in a batch of its own first (else the first batch is the first event: a warm model's first token)."""

    def __init__(self, events: list[Event], lose_after: int | None = None, hang_after: int | None = None,
                 hold: bool = False, late: list[Event] | None = None, greet: bool = True) -> None:
        self.events, self.lose_after, self.hang_after, self.hold = events, lose_after, hang_after, hold
        self.greet = greet
        self.late = late or []
        self.ran: list[JobId] = []
        self.cancelled: list[JobId] = []
        self.wake = asyncio.Event()
        self.release = asyncio.Event()

    async def run_batches(self, spec: JobSpec) -> AsyncIterator[list[Event]]:
        self.ran.append(spec.job_id)
        if self.greet:
            yield [{"type": "status", "message": "started", "seq": 0}]
        for index, event in enumerate(self.events):
            if index == self.lose_after:
                raise HostLost("node died", host_id="x")
            if index == self.hang_after:
                await self.wake.wait()
                for late in self.late:
                    yield [dict(late)]
            yield [dict(event)]
        while self.hold and not self.release.is_set():
            if spec.job_id in self.cancelled:
                yield [{"type": "error", "message": "cancelled by the user", "code": "cancelled"}]
                return
            await asyncio.sleep(0.05)
            yield []
        if self.hold:
            yield [dict(DONE)]

    async def cancel(self, job_id: JobId, reason: str = "") -> bool:
        self.cancelled.append(job_id)
        return True


class EarnedLedger:
    """The real ledger as placement reads it (``placement.book.Book``), with karma earned before the test: a host
    the ledger has no event of yet has its ``earned`` score, so a ranks before b before c until a fault of theirs."""

    def __init__(self, ledger: Ledger, earned: dict[str, float]) -> None:
        self.ledger = ledger
        self.earned = earned

    def karma_states(self, host_ids: Collection[str]) -> dict[HostId, KarmaState]:
        return {host_id: state if self.ledger.karma_event_count(host_id) else replace(
            state, score=self.earned.get(host_id, state.score)) for host_id, state in
            self.ledger.karma_states(host_ids).items()}

    def asking_prices(self, host_id: str | None = None) -> dict[HostId, dict[str, int]]:
        return self.ledger.asking_prices(host_id)

    def set_asking_prices(self, host_id: str, asks: Mapping[str, int]) -> dict[str, int]:
        return self.ledger.set_asking_prices(host_id, asks)


class Net:
    def __init__(self, tmp_path: Path, hosts: dict[str, StandInHost], **settings: Any) -> None:
        self.settings = Settings(state_dir=tmp_path, **{"lease_s": 0.5, "queue_timeout_s": 5.0, **settings})
        self.ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
        self.ledger.migrate()
        self.ledger.sync_catalog([MANIFEST])
        self.account = self.ledger.create_account("u@example.org", CREDITS).id
        earned = {host_id: 0.9 - rank / 10 for rank, host_id in enumerate(hosts)}  # a before b before c
        self.placement = PlacementClient.local(self.settings, clock=lambda: NOW, catalog={MANIFEST.slug: MANIFEST},
                                               book=EarnedLedger(self.ledger, earned))
        for host_id in hosts:
            self.ledger.upsert_host(host_id, host_id, "eu-west", {})  # recorded before it joins, as enrolment does
            self.placement.register(a_host(host_id, slots=settings.get("host_slots", 4)))
        self.hosts = hosts
        self.service = self.build()

    def build(self) -> JobService:
        return JobService(self.settings, {MANIFEST.slug: MANIFEST}, LedgerClient.local(self.ledger), self.placement,
                          lambda host_id: self.hosts[host_id])

    async def submit(self, priority: int = 0) -> JobId:
        job = await self.service.submit(self.account, "wasm-hash", {"text": "x"}, None, priority)
        return job.id

    async def stream(self, job_id: JobId, after: int = -1) -> list[Event]:
        events: list[Event] = []
        async with asyncio.timeout(20):
            while True:
                batch = await self.service.read(job_id, after, wait_s=5)
                events += batch.events
                after = events[-1]["seq"] if events else after
                if batch.ended:
                    return events

    def job(self, job_id: JobId) -> Any:
        return self.ledger.get_job(job_id)


def text(events: list[Event]) -> str:
    return "".join(e["content"] for e in events if e["type"] == "token")


def test_a_job_runs_on_the_best_host_numbered_once_and_charged(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, {"a": StandInHost([*SENTENCE, DONE]), "b": StandInHost([DONE])})
        events = await net.stream(await net.submit())
        assert [e["seq"] for e in events] == list(range(len(events)))
        assert text(events) == "The sea is calm" and events[-1]["type"] == "done"
        job = net.job(events and net.ledger.list_jobs(net.account)[0][0].id)
        assert job.status == JobStatus.SUCCEEDED and job.host_id == "a" and job.output == "The sea is calm"
        assert job.credits_used_micro == MANIFEST.price_micro and net.hosts["b"].ran == []
        assert net.ledger.stored_output_events(job.id) == events
        assert net.ledger.total_is_zero()

    asyncio.run(scenario())


@pytest.mark.parametrize("greet", [True, False], ids=["status-first", "token-first"])
def test_the_ledger_records_every_step_whether_output_comes_first_or_later(tmp_path: Path, greet: bool) -> None:
    """A host whose first batch already holds output is started and streaming in one write; the steps are the same."""
    async def scenario() -> None:
        net = Net(tmp_path, {"a": StandInHost([*SENTENCE, DONE], greet=greet)})
        job_id = await net.submit()
        await net.stream(job_id)
        assert [e.to_status for e in net.ledger.job_events(job_id)] == [
            JobStatus.SUBMITTED, JobStatus.QUEUED, JobStatus.ASSIGNED, JobStatus.STARTED, JobStatus.STREAMING,
            JobStatus.SUCCEEDED]
        assert net.ledger.audit() == []

    asyncio.run(scenario())


def test_a_host_lost_mid_stream_hands_the_job_on_and_the_stream_neither_repeats_nor_skips(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, {"a": StandInHost([*SENTENCE, DONE], lose_after=2), "b": StandInHost([*SENTENCE, DONE])})
        job_id = await net.submit()
        events = await net.stream(job_id)
        assert text(events) == "The sea is calm"
        assert [e["content"] for e in events if e["type"] == "token"] == ["The", " sea", " is", " calm"]
        assert any(e.get("retry") == 2 for e in events)
        job = net.job(job_id)
        assert job.status == JobStatus.SUCCEEDED and job.host_id == "b" and job.attempt == 2
        assert [e.to_status for e in net.ledger.job_events(job_id)].count(JobStatus.QUEUED) == 2
        assert [e.kind for e in net.ledger.karma_events("a")] == ["host_dropped"]
        assert net.placement.get(HostId("a")).status == "offline"
        assert net.ledger.stored_output_events(job_id) == events  # a late reader sees what the live one did

    asyncio.run(scenario())


def test_a_hung_host_loses_its_lease_and_its_late_answer_is_discarded(tmp_path: Path) -> None:
    async def scenario() -> None:
        hung = StandInHost([*SENTENCE, DONE], hang_after=1, late=[{"type": "token", "content": " LATE"}])
        net = Net(tmp_path, {"a": hung, "b": StandInHost([*SENTENCE, DONE])})
        job_id = await net.submit()
        events = await net.stream(job_id)
        hung.wake.set()  # the hung host comes back and answers: nobody listens any more
        await asyncio.sleep(0.2)
        assert text(events) == "The sea is calm" and "LATE" not in text(await net.stream(job_id))
        assert net.job(job_id).attempt == 2 and net.job(job_id).host_id == "b"
        assert job_id in hung.cancelled  # told to stop, in case it wakes
        assert "lease" in next(e for e in net.ledger.karma_events("a")).reason

    asyncio.run(scenario())


def test_a_job_whose_hosts_keep_vanishing_fails_after_the_attempt_limit_and_is_refunded(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, {h: StandInHost([*SENTENCE, DONE], lose_after=0) for h in "abc"})
        job_id = await net.submit()
        events = await net.stream(job_id)
        assert events[-1]["type"] == "error" and "gave up after 3 attempts" in events[-1]["message"]
        job = net.job(job_id)
        assert job.status == JobStatus.FAILED and job.credits_used_micro == 0
        assert net.ledger.balance_micro(net.account) == CREDITS and net.ledger.total_is_zero()

    asyncio.run(scenario())


@pytest.mark.parametrize(("error", "status"), [
    ({"type": "error", "message": "fuel budget exhausted", "code": "budget_exceeded"}, JobStatus.FAILED),
    ({"type": "error", "message": "wall-clock budget of 1 s exceeded", "code": "timed_out"}, JobStatus.TIMED_OUT),
])
def test_a_workload_error_ends_the_job_without_charge(tmp_path: Path, error: Event, status: JobStatus) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, {"a": StandInHost([error])})
        job_id = await net.submit()
        await net.stream(job_id)
        assert net.job(job_id).status == status and net.job(job_id).error == error["message"]
        assert net.ledger.balance_micro(net.account) == CREDITS

    asyncio.run(scenario())


def test_cancel_reaches_the_host_and_ends_the_job_cancelled(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, {"a": StandInHost([SENTENCE[0]], hold=True)})
        job_id = await net.submit()
        await asyncio.sleep(0.2)
        await net.service.cancel(job_id)
        assert net.job(job_id).status == JobStatus.CANCELLED and job_id in net.hosts["a"].cancelled
        assert (await net.stream(job_id))[-1]["code"] == "cancelled"
        assert net.ledger.balance_micro(net.account) == CREDITS

    asyncio.run(scenario())


@pytest.mark.parametrize("code", ["host_busy", "runtime_unavailable", "ticket_refused"])
def test_a_host_that_turns_the_job_away_before_it_starts_passes_it_to_the_next_one(tmp_path: Path,
                                                                                   code: str) -> None:
    class Busy(StandInHost):
        async def run_batches(self, spec: JobSpec) -> AsyncIterator[list[Event]]:
            self.ran.append(spec.job_id)
            yield [{"type": "error", "message": "not here", "code": code}]

    async def scenario() -> None:
        net = Net(tmp_path, {"a": Busy([]), "b": StandInHost([DONE])})
        job_id = await net.submit()
        await net.stream(job_id)
        job = net.job(job_id)
        assert job.status == JobStatus.SUCCEEDED and job.host_id == "b" and job.attempt == 1

    asyncio.run(scenario())


def test_a_burst_beyond_capacity_waits_in_the_queue_and_runs_by_priority(tmp_path: Path) -> None:
    async def scenario() -> None:
        host = StandInHost([], hold=True)
        net = Net(tmp_path, {"a": host}, host_slots=1)
        first = await net.submit()
        await asyncio.sleep(0.1)
        later = [await net.submit(priority) for priority in (0, 5, 0)]
        await asyncio.sleep(0.3)
        assert [net.job(j).status for j in later] == [JobStatus.QUEUED] * 3
        host.release.set()
        for job_id in [first, *later]:
            await net.stream(job_id)
        assert host.ran == [first, later[1], later[0], later[2]]
        assert all(net.job(j).status == JobStatus.SUCCEEDED for j in [first, *later])

    asyncio.run(scenario())


def test_another_account_s_job_does_not_wait_behind_a_whole_burst(tmp_path: Path) -> None:
    """One account fills the host and queues three more; a second account's job, sent after them, runs after the
    burst's first waiting job, not its last."""
    async def scenario() -> None:
        host = StandInHost([], hold=True)
        net = Net(tmp_path, {"a": host}, host_slots=1)
        burst = [await net.submit() for _ in range(4)]
        other = net.ledger.create_account("v@example.org", CREDITS).id
        single = (await net.service.submit(other, "wasm-hash", {"text": "y"}, None, 0)).id
        await asyncio.sleep(0.3)
        assert [net.job(j).status for j in [*burst[1:], single]] == [JobStatus.QUEUED] * 4
        host.release.set()
        for job_id in [*burst, single]:
            await net.stream(job_id)
        assert host.ran == [burst[0], burst[1], single, burst[2], burst[3]]

    asyncio.run(scenario())


def test_past_the_queue_limit_a_job_is_refused_with_retry_after_and_nothing_is_held(tmp_path: Path) -> None:
    async def scenario() -> None:
        host = StandInHost([], hold=True)
        net = Net(tmp_path, {"a": host}, host_slots=1, queue_max_jobs=1)
        running = await net.submit()
        await asyncio.sleep(0.1)
        waiting = await net.submit()
        with pytest.raises(QueueFull) as refused:
            await net.submit()
        assert refused.value.http_status == 503 and refused.value.details["retry_after"] > 0
        assert net.ledger.list_jobs(net.account)[1] == 2
        host.release.set()
        await net.stream(running)
        await net.stream(waiting)

    asyncio.run(scenario())


def test_a_job_no_host_frees_up_for_fails_at_the_queue_timeout_and_is_refunded(tmp_path: Path) -> None:
    async def scenario() -> None:
        host = StandInHost([], hold=True)
        net = Net(tmp_path, {"a": host}, host_slots=1, queue_timeout_s=0.5)
        await net.submit()
        await asyncio.sleep(0.1)
        waiting = await net.submit()
        events = await net.stream(waiting)
        assert events[-1]["code"] == "queue_timeout" and net.job(waiting).status == JobStatus.FAILED
        host.release.set()
        assert net.ledger.balance_micro(net.account) < CREDITS  # the first still holds its reservation
        await asyncio.sleep(0.3)
        assert net.ledger.total_is_zero()

    asyncio.run(scenario())


def test_no_online_host_that_could_run_it_is_a_503_before_anything_is_written(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, {})
        with pytest.raises(NoCapacity):
            await net.submit()
        assert net.ledger.list_jobs(net.account)[1] == 0 and net.ledger.balance_micro(net.account) == CREDITS

    asyncio.run(scenario())


def test_a_reader_resumes_after_the_last_event_it_saw(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, {"a": StandInHost([*SENTENCE, DONE])})
        job_id = await net.submit()
        whole = await net.stream(job_id)
        assert await net.stream(job_id, after=2) == whole[3:]

    asyncio.run(scenario())


def test_a_restarted_service_resumes_queued_and_running_jobs_and_their_streams(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, {"a": StandInHost([*SENTENCE, DONE])})
        ledger = net.ledger
        queued = ledger.create_job(net.account, "wasm-hash", {"text": "x"}, reserve_micro=10_000, queue=True)
        running = ledger.create_job(net.account, "wasm-hash", {"text": "x"}, reserve_micro=10_000, queue=True)
        ledger.upsert_host("a", "a", "eu-west", {})
        for status in (JobStatus.ASSIGNED, JobStatus.STARTED, JobStatus.STREAMING):
            ledger.transition(running.id, status, host_id="a")
        seen = [{"type": "status", "message": "started", "seq": 0}, {**SENTENCE[0], "seq": 1},
                {**SENTENCE[1], "seq": 2}]
        ledger.save_events({running.id: seen})  # the checkpoint the crashed coordinator left
        await net.service.start()
        rest = await net.stream(running.id, after=2)
        assert text(rest) == " is calm" and rest[-1]["type"] == "done"
        assert net.job(running.id).status == JobStatus.SUCCEEDED and net.job(running.id).attempt == 2
        await net.stream(queued.id)
        assert net.job(queued.id).status == JobStatus.SUCCEEDED
        assert all(j.reserved_micro == 0 or j.status == JobStatus.SUCCEEDED
                   for j in ledger.list_jobs(net.account)[0])
        assert ledger.balance_micro(net.account) == CREDITS - 2 * MANIFEST.price_micro
        assert ledger.total_is_zero()

    asyncio.run(scenario())


def test_a_host_whose_agent_is_gone_before_the_job_reaches_it_is_lost_and_the_next_one_runs_it(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, {"a": StandInHost([DONE]), "b": StandInHost([DONE])})
        hosts = net.hosts

        def lookup(host_id: str) -> StandInHost:
            if host_id == "a":
                raise HostLost("host a has no running agent", host_id="a")
            return hosts[host_id]

        net.service = JobService(net.settings, {MANIFEST.slug: MANIFEST}, LedgerClient.local(net.ledger),
                                 net.placement, lookup)
        job_id = await net.submit()
        await net.stream(job_id)
        job = net.job(job_id)
        assert job.status == JobStatus.SUCCEEDED and job.host_id == "b" and job.attempt == 2

    asyncio.run(scenario())


def test_only_the_account_that_owns_a_job_may_read_its_stream(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, {"a": StandInHost([SENTENCE[0]], hold=True)})
        job_id = await net.submit()
        with pytest.raises(NotFound):
            await net.service.read(job_id, account_id=net.account + 1)
        assert (await net.service.read(job_id, wait_s=1, account_id=net.account)).events
        await net.service.cancel(job_id)
        later = net.build()  # a relay that no longer holds the ended job: the ledger answers
        with pytest.raises(NotFound):
            await later.read(job_id, account_id=net.account + 1)
        assert (await later.read(job_id, account_id=net.account)).ended

    asyncio.run(scenario())


class SlowLedger:
    """The real ledger, whose creation of a job answers only once ``until()`` holds (a busy database), or after
    ``timeout_s``; ``waited_for`` says whether it held."""

    def __init__(self, ledger: Ledger, until: Callable[[], bool], timeout_s: float = 10.0) -> None:
        self._ledger, self._until, self._timeout_s = ledger, until, timeout_s
        self.waited_for = False

    def create_job(self, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self._timeout_s
        while not self._until() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.waited_for = self._until()
        return self._ledger.create_job(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)


def test_a_free_host_starts_the_job_while_the_ledger_still_records_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, {"a": StandInHost([*SENTENCE, DONE])})
        ledger = SlowLedger(net.ledger, until=lambda: len(net.hosts["a"].ran) == 1)
        service = JobService(net.settings, {MANIFEST.slug: MANIFEST}, LedgerClient.local(ledger),
                             net.placement, lambda host_id: net.hosts[host_id])
        job = await service.submit(net.account, "wasm-hash", {"text": "x"}, None)
        assert ledger.waited_for  # the job ran before the ledger answered: nothing waited on it
        net.service = service
        assert text(await net.stream(job.id)) == "The sea is calm"
        assert net.job(job.id).status == JobStatus.SUCCEEDED and net.ledger.total_is_zero()

    asyncio.run(scenario())


def test_submit_and_follow_gives_the_job_then_its_events(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, {"a": StandInHost([*SENTENCE, DONE])})
        items = [item async for item in net.service.submit_and_follow(net.account, "wasm-hash", {"text": "x"}, None)]
        job, batches = items[0], items[1:]
        assert isinstance(job, Job) and job.workload_slug == "wasm-hash"
        events = [e for batch in batches for e in batch.events]
        assert [e["seq"] for e in events] == list(range(len(events))) and batches[-1].ended
        assert text(events) == "The sea is calm" and net.job(job.id).status == JobStatus.SUCCEEDED

    asyncio.run(scenario())


def test_a_short_balance_refuses_the_job_and_stops_it_on_the_host_that_already_began(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, {"a": StandInHost([SENTENCE[0]], hold=True)})
        poor = net.ledger.create_account("poor@example.org", 0).id
        with pytest.raises(PaymentRequired):
            await anext(net.service.submit_and_follow(poor, "wasm-hash", {"text": "x"}, None))
        host = net.hosts["a"]
        async with asyncio.timeout(5):
            while not host.cancelled:
                await asyncio.sleep(0.05)
        with contextlib.suppress(NotFound):  # the ledger never had it: NotFound once the dispatcher let it go
            await net.service.cancel(host.cancelled[0])  # returns once the dispatcher has let the job go
        # The refusal may reach the host before the run's first step does: what it began, it was told to stop.
        assert host.ran and set(host.ran) <= set(host.cancelled)
        assert net.ledger.list_jobs(poor)[1] == 0 and net.ledger.total_is_zero()

    asyncio.run(scenario())


# --- the exchange: bids, asks, clearing prices ---------------------------------------------------------------


def test_a_job_runs_on_a_host_within_its_bid_and_is_charged_that_host_s_ask(tmp_path: Path) -> None:
    """The best-ranked host asks more than the bid: the one within it runs the job, which is charged that host's
    ask (the clearing price, kept with the job), not the bid nor the catalog's price."""
    async def scenario() -> None:
        net = Net(tmp_path, {"a": StandInHost([DONE]), "b": StandInHost([DONE])})
        await net.service.set_asks(HostId("a"), {"wasm-hash": 15_000})
        await net.service.set_asks(HostId("b"), {"wasm-*": 7_000})
        job = await net.service.submit(net.account, "wasm-hash", {"text": "x"}, None, bid_micro=12_000)
        await net.stream(job.id)
        done = net.job(job.id)
        assert done.status == JobStatus.SUCCEEDED and done.host_id == "b" and net.hosts["a"].ran == []
        assert done.credits_used_micro == 7_000 and done.clearing_price_micro == 7_000
        assert net.ledger.total_is_zero()

    asyncio.run(scenario())


def test_a_job_failing_over_clears_at_the_new_host_s_ask(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, {"a": StandInHost([*SENTENCE, DONE], lose_after=1), "b": StandInHost([*SENTENCE, DONE])})
        await net.service.set_asks(HostId("a"), {"wasm-hash": 6_000})
        await net.service.set_asks(HostId("b"), {"wasm-hash": 9_000})
        job = await net.service.submit(net.account, "wasm-hash", {"text": "x"}, None, bid_micro=10_000)
        await net.stream(job.id)
        done = net.job(job.id)
        assert (done.status, done.host_id, done.attempt) == (JobStatus.SUCCEEDED, "b", 2)
        assert done.credits_used_micro == done.clearing_price_micro == 9_000

    asyncio.run(scenario())


def test_a_bid_under_every_ask_is_a_503_naming_the_lowest_ask_before_anything_is_held(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, {"a": StandInHost([DONE]), "b": StandInHost([DONE])})
        await net.service.set_asks(HostId("a"), {"wasm-hash": 15_000})
        with pytest.raises(NoCapacity, match=r"no host asks ≤ your bid of 0\.009 credits; the lowest ask is 0\.01 "):
            await net.service.submit(net.account, "wasm-hash", {"text": "x"}, None, bid_micro=9_000)
        assert net.ledger.list_jobs(net.account)[0] == [] and net.ledger.get_account(net.account).credits_micro == CREDITS

    asyncio.run(scenario())


def test_a_queue_outgrowing_the_free_slots_surges_what_hosts_earn_up_to_each_bid(tmp_path: Path) -> None:
    """The dispatcher tells placement its queue's length; while it outgrows the free slots hosts' quotes rise by
    the surge, yet every queued job still runs, and none pays more than its bid."""
    async def scenario() -> None:
        host = StandInHost([], hold=True)
        net = Net(tmp_path, {"a": host}, host_slots=1)
        first = await net.submit()
        await asyncio.sleep(0.1)
        later = [(await net.service.submit(net.account, "wasm-hash", {"text": "x"}, None, bid_micro=bid)).id
                 for bid in (10_000, 12_000, 20_000)]
        await asyncio.sleep(0.8)  # a scheduling round: the queue's length reaches placement
        rate = net.placement.market_rates({"wasm-hash": MANIFEST.price_micro})["wasm-hash"]
        assert rate["surge"] == 1.25 and rate["rate_micro"] == 12_500
        host.release.set()
        for job_id in [first, *later]:
            await net.stream(job_id)
        charged = [net.job(j).credits_used_micro for j in later]
        assert all(net.job(j).status == JobStatus.SUCCEEDED for j in later)
        assert charged[0] == 10_000 and charged[1] <= 12_000 and charged[2] <= 12_500  # capped by the bid
        await asyncio.sleep(0.8)
        assert net.placement.market_rates({"wasm-hash": MANIFEST.price_micro})["wasm-hash"]["surge"] == 1.0

    asyncio.run(scenario())
