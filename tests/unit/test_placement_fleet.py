from __future__ import annotations

import random

import pytest
from builders import NOW, a_host, a_job, a_random_host, a_random_job

from archipelag.ids import HostId
from archipelag.lifecycle import HostStatus
from archipelag.placement.fleet import Fleet, Heartbeat
from archipelag.placement.scoring import HostSnapshot, Weights, explain_no_match, rank

STALE_S = 30.0
WEIGHTS = Weights(karma=0.3, proximity=0.3, load=0.25, fit=0.15, warm=0.1, speed=0.05)


def fleet_of(hosts: list[HostSnapshot], weights: Weights = WEIGHTS) -> Fleet:
    fleet = Fleet(weights, STALE_S, capacity=4)  # small, so growth is exercised
    for host in hosts:
        fleet.upsert(host)
    return fleet


@pytest.mark.parametrize("seed", range(40))
def test_vectorized_rank_equals_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    weights = Weights(*(rng.choice((0.0, 0.05, 0.1, 0.25, 0.3)) for _ in range(6)))
    hosts = [a_random_host(rng, i) for i in range(rng.choice((0, 3, 40, 400, 3000)))]
    fleet = fleet_of(hosts, weights)
    for gone in rng.sample(hosts, len(hosts) // 10):
        fleet.remove(gone.host_id)
        hosts.remove(gone)
    hosts += [a_random_host(rng, 10_000 + i) for i in range(len(hosts) // 20)]
    for host in hosts[-(len(hosts) // 20 or 1):]:
        fleet.upsert(host)
    for _ in range(15):
        job, limit = a_random_job(rng), rng.choice((1, 3, 8, 64))
        expected = rank(hosts, job, weights, NOW, STALE_S, limit)
        assert fleet.rank(job, NOW, limit) == expected
        if not expected:
            assert fleet.explain(job, NOW) == explain_no_match(hosts, job, NOW, STALE_S)


def test_vectorized_rank_breaks_a_large_tie_by_host_id() -> None:
    hosts = [a_host(f"host-{i:05d}") for i in random.Random(1).sample(range(5000), 5000)]
    fleet = fleet_of(hosts)
    assert fleet.rank(a_job(), NOW, 8) == [f"host-{i:05d}" for i in range(8)]
    assert fleet.rank(a_job(), NOW, 8) == rank(hosts, a_job(), WEIGHTS, NOW, STALE_S, 8)


def test_snapshots_round_trip_and_stale_hosts_read_offline() -> None:
    hosts = [a_host("fresh"), a_host("stale", last_heartbeat_at=NOW - STALE_S - 1)]
    fleet = fleet_of(hosts)
    assert fleet.snapshots() == hosts
    assert fleet.get(HostId("stale"), now=NOW).status == HostStatus.OFFLINE
    assert fleet.get(HostId("fresh"), now=NOW).status == HostStatus.ONLINE


def test_heartbeat_updates_live_fields_and_brings_an_offline_host_back() -> None:
    fleet = fleet_of([a_host("h", status=HostStatus.OFFLINE, last_heartbeat_at=0)])
    fleet.heartbeat(HostId("h"), NOW, Heartbeat(free_ram_mb=1000, active_jobs=2, warm=frozenset({"wasm-hash"})))
    host = fleet.get(HostId("h"), now=NOW)
    assert (host.status, host.free_ram_mb, host.active_jobs, host.warm, host.last_heartbeat_at) == (
        HostStatus.ONLINE, 1000, 2, frozenset({"wasm-hash"}), NOW)


def test_heartbeat_does_not_wake_a_paused_or_suspended_host() -> None:
    fleet = fleet_of([a_host("p", status=HostStatus.PAUSED), a_host("s", status=HostStatus.SUSPENDED)])
    for host_id in ("p", "s"):
        fleet.heartbeat(HostId(host_id), NOW, Heartbeat())
    assert [h.status for h in fleet.snapshots()] == [HostStatus.PAUSED, HostStatus.SUSPENDED]


def test_host_claims_are_clamped() -> None:
    fleet = fleet_of([a_host("h", ram_mb=4096)])
    fleet.heartbeat(HostId("h"), NOW, Heartbeat.from_metrics({"free_ram_mb": 10**9, "active_jobs": -3}))
    host = fleet.get(HostId("h"))
    assert (host.free_ram_mb, host.active_jobs) == (4096, 0)


def test_assigned_jobs_count_until_released_so_a_burst_spreads() -> None:
    fleet = fleet_of([a_host("a", karma=0.9, slots=2), a_host("b", karma=0.1, slots=2)])
    picks = []
    for _ in range(4):
        best = fleet.rank(a_job(), NOW, 1)[0]
        fleet.job_assigned(best)
        picks.append(best)
    assert sorted(picks) == ["a", "a", "b", "b"]
    assert fleet.rank(a_job(), NOW, 1) == []
    fleet.job_released(HostId("a"))
    assert fleet.rank(a_job(), NOW, 1) == ["a"]


def test_load_is_the_larger_of_reported_and_assigned() -> None:
    fleet = fleet_of([a_host("h", slots=4)])
    fleet.job_assigned(HostId("h"))
    fleet.heartbeat(HostId("h"), NOW, Heartbeat(active_jobs=0))  # the host has not started it yet
    assert fleet.get(HostId("h")).active_jobs == 1
    fleet.heartbeat(HostId("h"), NOW, Heartbeat(active_jobs=3))  # jobs placement did not count
    assert fleet.get(HostId("h")).active_jobs == 3
    fleet.job_released(HostId("h"))
    assert fleet.get(HostId("h")).active_jobs == 2


def test_remove_keeps_the_others_and_a_reused_row_starts_cold() -> None:
    fleet = fleet_of([a_host("a"), a_host("b", warm=frozenset({"wasm-hash"})), a_host("c")],
                     Weights(0, 0, 0, 0, 1, 0))
    fleet.remove(HostId("a"))
    fleet.remove(HostId("b"))
    assert [h.host_id for h in fleet.snapshots()] == ["c"]
    fleet.upsert(a_host("d"))  # takes b's old row
    assert fleet.rank(a_job(), NOW, 2) == ["c", "d"]  # d is not warm
    assert len(fleet) == 2 and "b" not in fleet


def test_karma_updates_move_a_host() -> None:
    fleet = fleet_of([a_host("a"), a_host("b")], Weights(1, 0, 0, 0, 0, 0))
    fleet.set_karma(HostId("b"), 0.9)
    assert fleet.rank(a_job(), NOW, 2) == ["b", "a"]
