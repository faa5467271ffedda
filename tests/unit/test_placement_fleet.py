from __future__ import annotations

import random
from dataclasses import replace

import pytest
from builders import NOW, a_host, a_job, a_random_host, a_random_job

from archipelag.ids import HostId
from archipelag.lifecycle import HostStatus
from archipelag.market.pricing import NO_MARKET, Market
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


def test_an_assignment_the_host_never_counts_is_gone_by_its_second_heartbeat() -> None:
    """Any joined node can say a job was handed to a host: the host's signed count is what lasts."""
    fleet = fleet_of([a_host("h", slots=2)])
    fleet.job_assigned(HostId("h"))
    fleet.job_assigned(HostId("h"))  # nobody handed it these
    assert fleet.rank(a_job(), NOW, 1) == []
    fleet.heartbeat(HostId("h"), NOW, Heartbeat(active_jobs=0))  # it may not have started them yet
    assert fleet.get(HostId("h")).active_jobs == 2
    fleet.heartbeat(HostId("h"), NOW + 10, Heartbeat(active_jobs=0))  # a whole interval later: it never did
    assert fleet.get(HostId("h")).active_jobs == 0
    assert fleet.rank(a_job(), NOW + 10, 1) == ["h"]


def test_assignments_the_host_counts_stay_counted_until_released() -> None:
    fleet = fleet_of([a_host("h", slots=3)])
    fleet.job_assigned(HostId("h"))
    fleet.heartbeat(HostId("h"), NOW, Heartbeat(active_jobs=1))
    fleet.job_assigned(HostId("h"))  # told just before the next heartbeat, which does not count it yet
    fleet.heartbeat(HostId("h"), NOW + 10, Heartbeat(active_jobs=1))
    assert fleet.get(HostId("h")).active_jobs == 2
    fleet.job_assigned(HostId("h"))
    assert fleet.rank(a_job(), NOW + 10, 1) == []  # a burst between heartbeats does not over-fill it
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


ASK_PATTERNS = ("*", "wasm-*", "llm-*", "wasm-hash", "llm-chat", "image-gen", "w*")


def _random_asks(rng: random.Random) -> dict[str, int]:
    """No ask (most hosts), or one to three of them, from a few prices so that equal asks are common."""
    if rng.random() < 0.4:
        return {}
    return {p: rng.choice((500, 800, 1_000, 1_200, 2_000)) for p in rng.sample(ASK_PATTERNS, rng.randint(1, 3))}


@pytest.mark.parametrize("seed", range(30))
def test_vectorized_rank_with_asks_and_bids_equals_the_reference(seed: int) -> None:
    """The price filter in both engines: asks by slug and family, tiers and surge, asks changed after the
    fleet built its columns, hosts removed and added; the 503's lowest ask too."""
    rng = random.Random(1_000 + seed)
    hosts = [replace(a_random_host(rng, i), asks=_random_asks(rng)) for i in range(rng.choice((0, 3, 40, 400, 2000)))]
    fleet = fleet_of(hosts, WEIGHTS)
    markets = [NO_MARKET, Market((("cpu", 1.0), ("gpu", 1.5)), 1.0), Market((("cpu", 1.1), ("gpu", 2.0)), 1.25)]
    for round_ in range(4):
        for _ in range(8):
            job = replace(a_random_job(rng), bid_micro=rng.choice((None, 400, 800, 1_000, 1_100, 1_600, 3_000)),
                          catalog_price_micro=rng.choice((1_000, 2_000)))
            market, limit = rng.choice(markets), rng.choice((1, 3, 8))
            expected = rank(hosts, job, WEIGHTS, NOW, STALE_S, limit, market)
            assert fleet.rank(job, NOW, limit, market) == expected
            if not expected:
                assert fleet.explain(job, NOW, market) == explain_no_match(hosts, job, NOW, STALE_S, market)
        if not hosts:
            break
        for index in rng.sample(range(len(hosts)), max(1, len(hosts) // 10)):  # asks change once columns exist
            hosts[index] = replace(hosts[index], asks=_random_asks(rng))
            fleet.set_asks(hosts[index].host_id, hosts[index].asks)
        gone = rng.choice(hosts)
        fleet.remove(gone.host_id)
        hosts.remove(gone)
        added = replace(a_random_host(rng, 50_000 + round_), asks=_random_asks(rng))
        fleet.upsert(added)
        hosts.append(added)


def test_a_bid_below_every_ask_says_the_lowest_ask() -> None:
    fleet = fleet_of([a_host("a", asks={"*": 1_500}), a_host("b", asks={"wasm-hash": 1_200}), a_host("c")])
    job = a_job(bid_micro=900, catalog_price_micro=1_000)
    assert fleet.rank(job, NOW, 8) == []
    assert fleet.explain(job, NOW) == ("no host asks ≤ your bid of 0.0009 credits; the lowest ask is 0.001 credits "
                                       "for 'wasm-hash' (bid at least that, or retry later)")
    assert fleet.rank(replace(job, bid_micro=1_200), NOW, 8) == ["b", "c"]
    assert fleet.rank(replace(job, bid_micro=None), NOW, 8) == ["a", "b", "c"]  # no bid: no price filter


def test_asks_follow_a_host_across_changes_and_surge() -> None:
    fleet = fleet_of([a_host("cpu", asks={"*": 1_000}), a_host("gpu", asks={"*": 1_000}, gpu_model="L4")])
    job, surging = a_job(bid_micro=1_300), Market((("cpu", 1.0), ("gpu", 1.5)), 1.25)
    assert fleet.rank(job, NOW, 8, surging) == ["cpu"]  # 1 250 ≤ 1 300 < 1 875
    fleet.set_asks(HostId("gpu"), {"wasm-*": 600})  # 600 × 1.5 × 1.25 = 1 125
    assert fleet.rank(job, NOW, 8, surging) == ["cpu", "gpu"]
    assert fleet.ask(HostId("gpu"), job, surging) == 1_125
    fleet.upsert(a_host("cpu", asks={"wasm-hash": 1_100}))  # a re-registration brings its own asks
    assert fleet.rank(job, NOW, 8, surging) == ["gpu"]
    fleet.job_assigned(HostId("gpu"))
    assert fleet.free_slots(NOW) == 3 + 4
