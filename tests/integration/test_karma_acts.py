"""Karma that acts, on the jobs core (admission, queue, dispatcher, relay) with the real ledger (SQLite) and the
real placement in-process, and stand-in hosts: a host whose jobs fail by its own fault (it refuses a catalog
artifact another host ran) is cooled down (fewer jobs), then suspended (none), and says why; a workload's own
error, or an artifact no host has run, costs its host nothing."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from builders import NOW, a_host
from test_jobs_core import DONE, SENTENCE, Net, StandInHost

from archipelag.ids import HostId, JobId
from archipelag.ledger.karma_rules import KarmaKind, Standing
from archipelag.lifecycle import HostStatus, JobStatus
from archipelag.placement.actor import PlacementActor
from archipelag.placement.client import PlacementClient, _LocalCalls
from archipelag.protocol import Event

REFUSED: Event = {"type": "error", "code": "workload_refused",
                  "message": "the module's hash is not the one the catalog pins"}
CALLERS, FAR = "eu-west", "ap-southeast-1"
BAD_INPUT: Event = {"type": "error", "code": "workload_error", "message": "input.text must be a string"}


def seeded(net: Net, seed: int) -> None:
    """The placement of ``net`` again, with a seeded draw for cool-down; every host neutral, a in the callers'
    region and b far away: a ranks first by a margin its falling karma score alone does not undo before
    suspension, so what moves its jobs to b is placement acting on its standing."""
    actor = PlacementActor(net.settings, lambda: NOW, draw=random.Random(seed).random, book=net.ledger)
    net.placement = PlacementClient(_LocalCalls(actor))
    for host_id in net.hosts:
        net.ledger.upsert_host(host_id, host_id, "eu-west", {}, HostStatus.ONLINE)
        net.placement.register(a_host(host_id, region=CALLERS if host_id == "a" else FAR))
    net.service = net.build()


async def submit(net: Net, region: str = CALLERS) -> JobId:
    return (await net.service.submit(net.account, "wasm-hash", {"text": "x"}, region)).id


def test_a_host_whose_jobs_fail_is_cooled_down_then_suspended_and_gets_no_more_jobs(tmp_path: Path) -> None:
    async def scenario() -> None:
        bad, good = StandInHost([REFUSED]), StandInHost([*SENTENCE, DONE])
        net = Net(tmp_path, {"a": bad, "b": good})  # a ranks first
        seeded(net, 5)
        rules = net.ledger.karma_rules
        await net.service.start()
        proof = await submit(net, FAR)  # b runs the workload first: its artifact checks out, so a refusal is a's
        await net.stream(proof)
        assert net.job(proof).host_id == "b" and net.job(proof).status == JobStatus.SUCCEEDED
        standings: list[Standing] = []  # a's, after each job it ran
        offered_while_cooled = ran_while_cooled = 0
        try:
            for _ in range(80):
                before = net.ledger.karma_state("a").standing
                ran = len(bad.ran)
                job_id = await submit(net)
                await net.stream(job_id)
                job = net.job(job_id)
                if before is Standing.COOLDOWN:
                    offered_while_cooled += 1
                    ran_while_cooled += len(bad.ran) - ran
                if job.host_id == "a":
                    assert job.status == JobStatus.FAILED  # the user is refunded; the host pays in karma
                    standings.append(net.ledger.karma_state("a").standing)
                else:
                    assert job.status == JobStatus.SUCCEEDED and job.host_id == "b"
                if standings and standings[-1] is Standing.SUSPENDED:
                    break
            assert standings[0] is Standing.GOOD and Standing.COOLDOWN in standings
            assert standings[-1] is Standing.SUSPENDED
            assert standings.index(Standing.COOLDOWN) < standings.index(Standing.SUSPENDED)
            assert 0 < ran_while_cooled < offered_while_cooled  # cooled: a share of the jobs, not all
            assert {e.kind for e in net.ledger.karma_events("a")} <= {KarmaKind.ARTIFACT_REFUSED, KarmaKind.RECOVERY}
            assert [e.kind for e in net.ledger.karma_events("a")].count(KarmaKind.ARTIFACT_REFUSED) == len(standings)
            state = net.ledger.karma_state("a")
            assert state.total < rules.suspend_below and "suspension threshold" in (state.reason or "")
            assert net.placement.get(HostId("a")).status == HostStatus.SUSPENDED

            suspended_at = len(bad.ran)
            for _ in range(8):  # suspended: every job goes to b
                job_id = await submit(net)
                await net.stream(job_id)
                assert net.job(job_id).host_id == "b" and net.job(job_id).status == JobStatus.SUCCEEDED
            assert len(bad.ran) == suspended_at
            print(f"a ran {len(standings)} jobs: cooled after {standings.index(Standing.COOLDOWN) + 1}, suspended "
                  f"after {len(standings)}; while cooled it ran {ran_while_cooled} of {offered_while_cooled}")
        finally:
            await net.service.close()

    asyncio.run(scenario())


def test_a_workloads_own_error_costs_its_host_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net(tmp_path, {"a": StandInHost([BAD_INPUT])})
        await net.service.start()
        try:
            for _ in range(12):  # enough refusals to suspend a host, were they its fault
                job_id = await net.submit()
                await net.stream(job_id)
                assert net.job(job_id).status == JobStatus.FAILED and net.job(job_id).host_id == "a"
            assert net.ledger.karma_events("a") == []
            assert net.ledger.karma_state("a").standing is Standing.GOOD
        finally:
            await net.service.close()

    asyncio.run(scenario())


def test_refusing_an_artifact_no_host_has_run_costs_nothing(tmp_path: Path) -> None:
    """A refusal only counts against a host once the artifact checks out elsewhere: until then the artifact may
    be what is wrong (an unsigned or tampered one is refused by every honest host)."""
    async def scenario() -> None:
        net = Net(tmp_path, {"a": StandInHost([REFUSED]), "b": StandInHost([REFUSED])})
        await net.service.start()
        try:
            for _ in range(12):
                job_id = await net.submit()
                await net.stream(job_id)
                assert net.job(job_id).status == JobStatus.FAILED
            assert net.ledger.karma_events("a") == net.ledger.karma_events("b") == []
        finally:
            await net.service.close()

    asyncio.run(scenario())
