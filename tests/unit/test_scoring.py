from __future__ import annotations

import random

import pytest
from builders import NOW, a_host, a_job

from archipelag.lifecycle import HostStatus
from archipelag.market.pricing import NO_MARKET, Market
from archipelag.placement.regions import proximity
from archipelag.placement.scoring import (
    Weights,
    eligible,
    explain_no_match,
    fit_term,
    host_ask,
    load_term,
    peak,
    rank,
    score,
)
from archipelag.settings import PlacementSettings

STALE_S = 30.0
WEIGHTS = Weights.from_settings(PlacementSettings())


def ranked(hosts, job=None, weights=WEIGHTS, limit=8):  # type: ignore[no-untyped-def]
    return rank(hosts, job or a_job(), weights, NOW, STALE_S, limit)


# --- hard filters ------------------------------------------------------------------------------------


def test_a_plain_host_takes_a_plain_job() -> None:
    assert eligible(a_host(), a_job(), NOW, STALE_S)


@pytest.mark.parametrize("status", [s for s in HostStatus if s != HostStatus.ONLINE])
def test_only_online_hosts_take_jobs(status: HostStatus) -> None:
    assert not eligible(a_host(status=status), a_job(), NOW, STALE_S)


@pytest.mark.parametrize(("host", "job"), [
    (a_host(last_heartbeat_at=NOW - STALE_S - 0.001), a_job()),
    (a_host(runtimes=frozenset({"container"})), a_job(runtime="wasm")),
    (a_host(free_ram_mb=255), a_job(required_ram_mb=256)),
    (a_host(vram_mb=8192, free_vram_mb=4000), a_job(required_vram_mb=4096)),
    (a_host(cpu_cores=2), a_job(required_cores=4)),
    (a_host(slots=2, active_jobs=2), a_job()),
    (a_host(accepts=("llm-*",)), a_job("wasm-hash")),
    (a_host(region="us-east"), a_job(allowed_regions=frozenset({"eu-west", "eu-central"}))),
    (a_host(karma=0.4), a_job(min_karma=0.5)),
], ids=["stale", "runtime", "ram", "vram", "cores", "full", "accepts", "region", "karma"])
def test_hard_filters_exclude(host, job) -> None:  # type: ignore[no-untyped-def]
    assert not eligible(host, job, NOW, STALE_S)
    assert ranked([host], job) == []


def test_a_heartbeat_exactly_at_the_limit_still_counts() -> None:
    assert eligible(a_host(last_heartbeat_at=NOW - STALE_S), a_job(), NOW, STALE_S)


def test_exact_fits_pass() -> None:
    host = a_host(free_ram_mb=256, vram_mb=4096, cpu_cores=4, slots=2, active_jobs=1, karma=0.5,
                  region="eu-central", accepts=("wasm-*",))
    job = a_job(required_ram_mb=256, required_vram_mb=4096, required_cores=4, min_karma=0.5,
                allowed_regions=frozenset({"eu-central"}))
    assert eligible(host, job, NOW, STALE_S)


# --- score terms ---------------------------------------------------------------------------------------


def test_load_is_the_free_slot_fraction() -> None:
    assert load_term(4, 0) == 1.0
    assert load_term(4, 3) == 0.25
    assert load_term(0, 0) == 0.0


def test_fit_peaks_when_the_job_takes_half_of_what_is_free() -> None:
    assert peak(0.5) == 1.0
    assert peak(0.0) == peak(1.0) == 0.0
    job = a_job(required_ram_mb=1024)
    assert fit_term(job, 2048, 0) == 1.0
    assert fit_term(job, 2048, 0) > fit_term(job, 65536, 0)  # too loose
    assert fit_term(job, 2048, 0) > fit_term(job, 1100, 0)  # too tight


def test_fit_counts_gpu_memory_for_gpu_jobs() -> None:
    job = a_job(required_ram_mb=1024, required_vram_mb=4096)
    assert fit_term(job, 2048, 8192) == 1.0
    assert fit_term(job, 2048, 81920) < 0.6


@pytest.mark.parametrize(("caller", "host", "expected"), [
    ("eu-west", "eu-west", 1.0),
    ("eu-west", "eu-central", 0.6),
    ("us-east", "us-west", 0.6),
    (None, "eu-west", 0.5),
    ("eu-west", "lab-1", 0.5),
    ("mars-1", "eu-west", 0.5),
])
def test_proximity(caller: str | None, host: str, expected: float) -> None:
    assert proximity(caller, host) == expected


def test_other_continents_are_farther_than_the_same_one() -> None:
    assert proximity("eu-west", "us-east") < proximity("eu-west", "eu-central")
    assert proximity("eu-west", "sa-east") < proximity("eu-west", "us-east")
    assert proximity("eu-west", "ap-east") == proximity("ap-east", "eu-west")


@pytest.mark.parametrize(("better", "worse", "weights"), [
    (a_host(karma=0.9), a_host(karma=0.1), Weights(1, 0, 0, 0, 0, 0)),
    (a_host(active_jobs=0), a_host(active_jobs=3), Weights(0, 0, 1, 0, 0, 0)),
    (a_host(free_ram_mb=512), a_host(free_ram_mb=8192), Weights(0, 0, 0, 1, 0, 0)),
    (a_host(warm=frozenset({"wasm-hash"})), a_host(), Weights(0, 0, 0, 0, 1, 0)),
    (a_host(speed=1.0), a_host(speed=0.2), Weights(0, 0, 0, 0, 0, 1)),
    (a_host(region="eu-west"), a_host(region="eu-central"), Weights(0, 1, 0, 0, 0, 0)),
], ids=["karma", "load", "fit", "warm", "speed", "proximity"])
def test_each_term_prefers_the_better_host(better, worse, weights) -> None:  # type: ignore[no-untyped-def]
    job = a_job(required_ram_mb=256)
    assert score(better, job, weights) > score(worse, job, weights)


def test_every_term_stays_in_unit_range_so_scores_are_bounded() -> None:
    rng = random.Random(3)
    for i in range(500):
        host = a_host(f"h{i}", karma=rng.random(), speed=rng.random(), slots=4, active_jobs=rng.randint(0, 3),
                      free_ram_mb=rng.randint(256, 65536), warm=frozenset({"wasm-hash"}) if i % 2 else frozenset())
        assert 0.0 <= score(host, a_job(required_ram_mb=256), Weights(1, 1, 1, 1, 1, 1)) <= 6.0


# --- ranking -------------------------------------------------------------------------------------------


def test_equal_hosts_rank_by_host_id_whatever_the_input_order() -> None:
    hosts = [a_host(f"host-{c}") for c in "dbeac"]
    expected = [f"host-{c}" for c in "abcde"]
    for seed in range(5):
        random.Random(seed).shuffle(hosts)
        assert ranked(hosts) == expected


def test_rank_returns_at_most_limit_hosts_best_first() -> None:
    hosts = [a_host(f"h{i}", karma=i / 10) for i in range(10)]
    assert ranked(hosts, limit=3) == ["h9", "h8", "h7"]


def test_job_lands_in_the_callers_region_unless_that_host_is_full_or_offline() -> None:
    def fleet(**eu):  # type: ignore[no-untyped-def]
        return [a_host("host-us", region="us-east"), a_host("host-eu", region="eu-west", **eu),
                a_host("host-ap", region="ap-south")]

    job = a_job(caller_region="eu-west")
    assert ranked(fleet(), job)[0] == "host-eu"
    assert ranked(fleet(), a_job(caller_region="ap-south"))[0] == "host-ap"
    assert ranked(fleet(active_jobs=4), job)[0] != "host-eu"
    assert "host-eu" not in ranked(fleet(status=HostStatus.OFFLINE), job)
    assert "host-eu" not in ranked(fleet(last_heartbeat_at=NOW - 60), job)


# --- why nothing matched -------------------------------------------------------------------------------


def explain(hosts, job=None) -> str:  # type: ignore[no-untyped-def]
    return explain_no_match(hosts, job or a_job(), NOW, STALE_S)


def test_explain_an_empty_network() -> None:
    assert "no host has joined" in explain([])


def test_explain_no_online_host() -> None:
    assert explain([a_host(status=HostStatus.PAUSED), a_host(last_heartbeat_at=0)]) == (
        "none of the 2 known hosts is online; retry when one comes back")


def test_explain_runtime() -> None:
    assert explain([a_host()], a_job(runtime="container")) == "no online host supports runtime 'container'"


def test_explain_regions() -> None:
    message = explain([a_host(region="us-east")], a_job(allowed_regions=frozenset({"eu-west", "eu-central"})))
    assert message.startswith("no host in regions eu-central, eu-west can run 'wasm-hash'")


def test_explain_memory() -> None:
    assert "4096 MB of RAM free" in explain([a_host(free_ram_mb=1024)], a_job(required_ram_mb=4096))


def test_explain_full_hosts() -> None:
    hosts = [a_host(f"h{i}", slots=1, active_jobs=1) for i in range(3)] + [a_host("x", region="eu-central")]
    job = a_job(allowed_regions=frozenset({"eu-west"}))
    assert explain(hosts, job) == "all 3 eligible hosts are full; retry shortly"


def test_explain_accepts_and_karma() -> None:
    assert "accepts workload 'wasm-hash'" in explain([a_host(accepts=("llm-*",))])
    assert "karma ≥ 0.90" in explain([a_host(karma=0.5)], a_job(min_karma=0.9))


# --- the price filter (DESIGN §6: the host's ask ≤ the job's bid) ------------------------------------------


@pytest.mark.parametrize(("asks", "gpu_model", "bid", "market", "takes"), [
    ({}, None, None, NO_MARKET, True),  # no bid: no price filter
    ({}, None, 1_000, NO_MARKET, True),  # no ask: the catalog's 1 000
    ({}, None, 999, NO_MARKET, False),
    ({"wasm-*": 900}, None, 900, NO_MARKET, True),  # equal to the bid is enough
    ({"wasm-*": 900, "wasm-hash": 1_100}, None, 1_000, NO_MARKET, False),  # the exact slug's ask applies
    ({"*": 800}, None, 1_000, Market((), 1.25), True),  # 800 × 1.25 = 1 000
    ({"*": 801}, None, 1_000, Market((), 1.25), False),  # 1 001.25 rounds up
    ({"*": 800}, "L4", 1_000, Market((("gpu", 1.5),), 1.0), False),  # a GPU host's tier multiplier
    ({"*": 800}, None, 1_000, Market((("gpu", 1.5),), 1.0), True),
])
def test_a_host_takes_a_job_only_when_its_effective_ask_is_within_the_bid(
        asks: dict[str, int], gpu_model: str | None, bid: int | None, market: Market, takes: bool) -> None:
    host = a_host(asks=asks, gpu_model=gpu_model)
    assert eligible(host, a_job(bid_micro=bid, catalog_price_micro=1_000), NOW, STALE_S, market) is takes


def test_a_host_that_asks_too_much_is_no_place_to_wait_for_but_a_full_one_is() -> None:
    """The price stage comes before the slots: a bid under every ask is a 503 at once, while hosts within the
    bid that are full keep the job waiting (the slots reason, which the API queues on)."""
    dear, full = a_host("dear", asks={"*": 2_000}), a_host("full", active_jobs=4, slots=4)
    job = a_job(bid_micro=1_000, catalog_price_micro=1_000)
    assert "all 1 eligible hosts are full" in explain_no_match([dear, full], job, NOW, STALE_S)
    assert explain_no_match([dear], job, NOW, STALE_S).startswith(
        "no host asks ≤ your bid of 0.001 credits; the lowest ask is 0.002 credits")
    assert host_ask(dear, job, Market((), 1.25)) == 2_500
