"""The placement actor through its client's in-process stand-in (no Ray), on a fake clock."""

from __future__ import annotations

import pytest
from builders import NOW, LedgerWord, a_host, a_job

from archipelag.errors import InvalidTransition, NoCapacity, NotFound
from archipelag.ids import HostId
from archipelag.lifecycle import HostStatus
from archipelag.placement.actor import NEUTRAL_KARMA
from archipelag.placement.client import PlacementClient
from archipelag.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger() -> LedgerWord:
    return LedgerWord()


@pytest.fixture
def placement(clock: Clock, ledger: LedgerWord) -> PlacementClient:
    return PlacementClient.local(Settings(heartbeat_interval_s=10, missed_heartbeats_offline=3), clock, book=ledger)


def test_registered_hosts_are_ranked_and_listed(placement: PlacementClient) -> None:
    placement.register(a_host("a", region="eu-west"))
    placement.register(a_host("b", region="us-east"))
    assert placement.rank(a_job(caller_region="us-east")) == ["b", "a"]
    assert {h.host_id for h in placement.hosts()} == {"a", "b"}
    assert placement.ping() == 2


def test_register_stamps_the_coordinators_clock(placement: PlacementClient, clock: Clock) -> None:
    placement.register(a_host("a", last_heartbeat_at=0.0))  # a host's own clock is not trusted
    assert placement.get(HostId("a")).last_heartbeat_at == clock.now


def test_a_host_that_misses_three_heartbeats_is_offline(placement: PlacementClient, clock: Clock) -> None:
    placement.register(a_host("a"))
    clock.now += 29
    assert placement.get(HostId("a")).status == HostStatus.ONLINE
    clock.now += 2
    assert placement.get(HostId("a")).status == HostStatus.OFFLINE
    assert [h.status for h in placement.hosts()] == [HostStatus.OFFLINE]
    with pytest.raises(NoCapacity, match="none of the 1 known hosts is online"):
        placement.rank(a_job())
    placement.heartbeat(HostId("a"), {"free_ram_mb": 4000, "active_jobs": 1, "cpu_percent": 12.0})
    host = placement.get(HostId("a"))
    assert (host.status, host.free_ram_mb, host.active_jobs) == (HostStatus.ONLINE, 4000, 1)


def test_rank_with_no_match_raises_no_capacity_with_the_reason(placement: PlacementClient) -> None:
    placement.register(a_host("a"))
    with pytest.raises(NoCapacity, match="no online host supports runtime 'container'") as caught:
        placement.rank(a_job(runtime="container"))
    assert caught.value.http_status == 503


def test_mark_offline_takes_a_host_out_at_once(placement: PlacementClient, ledger: LedgerWord) -> None:
    placement.register(a_host("a"))
    ledger.says_karma("b", 0.1)
    placement.register(a_host("b"))
    placement.mark_offline(HostId("a"), "actor died")
    assert placement.rank(a_job()) == ["b"]
    placement.heartbeat(HostId("a"), {})  # it was alive after all
    assert placement.rank(a_job()) == ["a", "b"]


def test_set_status_follows_the_host_lifecycle(placement: PlacementClient) -> None:
    placement.register(a_host("a"))
    placement.set_status(HostId("a"), HostStatus.DRAINING)
    with pytest.raises(NoCapacity):
        placement.rank(a_job())
    with pytest.raises(InvalidTransition):
        placement.set_status(HostId("a"), HostStatus.ONLINE)


def test_unknown_hosts(placement: PlacementClient) -> None:
    with pytest.raises(NotFound):
        placement.get(HostId("ghost"))
    placement.heartbeat(HostId("ghost"), {"active_jobs": 1})  # ignored, not raised
    placement.job_assigned(HostId("ghost"))
    placement.mark_offline(HostId("ghost"), "gone")


def test_jobs_a_node_only_said_it_handed_a_host_stop_counting_after_its_heartbeats(
        placement: PlacementClient, clock: Clock) -> None:
    """Any joined node can say a job was handed to a host; the host's signed count is what lasts."""
    placement.register(a_host("a", slots=1))
    placement.job_assigned(HostId("a"))  # nobody handed it one
    with pytest.raises(NoCapacity, match="full"):
        placement.rank(a_job())
    placement.heartbeat(HostId("a"), {"active_jobs": 0})  # it may not have started it yet
    clock.now += 10
    placement.heartbeat(HostId("a"), {"active_jobs": 0})  # a whole interval later: it never did
    assert placement.rank(a_job()) == ["a"]


def test_a_burst_spreads_over_hosts(placement: PlacementClient) -> None:
    for host_id in ("a", "b", "c"):
        placement.register(a_host(host_id, slots=1))
    chosen = []
    for _ in range(3):
        host_id = placement.rank(a_job())[0]
        placement.job_assigned(host_id)
        chosen.append(host_id)
    assert sorted(chosen) == ["a", "b", "c"]
    with pytest.raises(NoCapacity, match="all 3 eligible hosts are full"):
        placement.rank(a_job())
    placement.job_released(HostId("b"))
    assert placement.rank(a_job()) == ["b"]


async def _rank_async(placement: PlacementClient) -> list[HostId]:
    return await placement.rank_async(a_job())


def test_async_variants(placement: PlacementClient) -> None:
    import asyncio

    placement.register(a_host("a"))
    assert asyncio.run(_rank_async(placement)) == ["a"]
    assert [h.host_id for h in asyncio.run(placement.hosts_async())] == ["a"]
    assert asyncio.run(placement.get_async(HostId("a"))).host_id == "a"


def test_an_operator_suspension_holds_across_rejoins_and_owner_changes_until_reinstated(
        placement: PlacementClient) -> None:
    import asyncio

    placement.register(a_host("a"))
    placement.register(a_host("b"))
    asyncio.run(placement.suspend_async(HostId("a"), "cheating"))
    assert placement.rank(a_job()) == ["b"]
    placement.register(a_host("a"))  # it rejoins as online: still suspended
    placement.mark_offline(HostId("a"), "lost")
    placement.heartbeat(HostId("a"), {})
    assert placement.get(HostId("a")).status == HostStatus.SUSPENDED and placement.rank(a_job()) == ["b"]
    with pytest.raises(InvalidTransition, match="suspended"):
        placement.set_status(HostId("a"), HostStatus.ONLINE)  # its owner cannot lift it
    assert asyncio.run(placement.suspensions_async()) == {"a": "cheating"}
    asyncio.run(placement.reinstate_async(HostId("a")))
    assert set(placement.rank(a_job())) == {"a", "b"}


def test_a_host_suspended_before_it_joins_joins_suspended(placement: PlacementClient) -> None:
    import asyncio

    asyncio.run(placement.suspend_async(HostId("later"), "known bad"))
    placement.register(a_host("later"))
    assert placement.get(HostId("later")).status == HostStatus.SUSPENDED


def test_a_host_cannot_register_its_own_karma(placement: PlacementClient, ledger: LedgerWord) -> None:
    """Karma is the ledger's (read by placement as it registers and each fleet round), never the host's claim."""
    placement.register(a_host("modest"))
    placement.register(a_host("boaster", karma=1.0))
    assert placement.get(HostId("boaster")).karma == placement.get(HostId("modest")).karma == NEUTRAL_KARMA
    ledger.says_karma("modest", 0.9)
    placement.refresh_karma()
    placement.register(a_host("modest", karma=0.0))  # registering again keeps what the ledger said
    assert placement.get(HostId("modest")).karma == 0.9
    assert placement.rank(a_job()) == ["modest", "boaster"]
