"""The exchange in placement: hosts' asks (bounds-checked from a registration or their owner), the price filter
with its 503, the surge from the dispatcher's queue, quotes (clearing prices) and market rates. The real
placement actor in-process, over the repository's catalog (wasm-hash: 0.001 credits, llm-chat: 0.002)."""

from __future__ import annotations

import asyncio

import pytest
from builders import NOW, LedgerWord, a_host, a_job

from archipelag.errors import HostRefused, NoCapacity
from archipelag.ids import HostId
from archipelag.lifecycle import HostStatus
from archipelag.placement.client import PlacementClient
from archipelag.settings import MarketSettings, Settings

WASM_HASH = 1_000  # its catalog price, micro-credits


@pytest.fixture
def placement() -> PlacementClient:
    settings = Settings(market=MarketSettings(tier_multipliers={"cpu": 1.0, "gpu": 2.0}))
    return PlacementClient.local(settings, lambda: NOW)


def test_a_bid_under_every_ask_is_a_503_naming_the_lowest_ask(placement: PlacementClient) -> None:
    placement.register(a_host("dear", asks={"wasm-*": 3_000}))
    placement.register(a_host("fair", asks={"wasm-hash": 1_500}))
    with pytest.raises(NoCapacity) as raised:
        placement.rank(a_job(bid_micro=1_000, catalog_price_micro=WASM_HASH))
    assert raised.value.message.startswith("no host asks ≤ your bid of 0.001 credits; the lowest ask is 0.0015")
    assert not raised.value.details["full"]  # not a wait for a free slot: the job is refused at once
    assert placement.rank(a_job(bid_micro=2_000, catalog_price_micro=WASM_HASH)) == ["fair"]


def test_a_registration_asking_outside_the_bounds_is_refused(placement: PlacementClient) -> None:
    with pytest.raises(HostRefused, match="outside 0.0001–0.01"):
        placement.register(a_host("greedy", asks={"wasm-hash": 20_000}))  # 20 × the catalog price
    with pytest.raises(HostRefused, match="matches no workload"):
        placement.register(a_host("typo", asks={"wasm-hsah": 1_000}))
    assert placement.ping() == 0
    placement.register(a_host("everything", asks={"*": 2_000}))  # one price for all: held within each one's bounds
    assert placement.get(HostId("everything")).asks == {"*": 2_000}


def test_an_owner_s_asks_reach_placement_only_through_the_ledger_and_survive_its_rejoin() -> None:
    ledger = LedgerWord()
    placement = PlacementClient.local(Settings(), lambda: NOW, book=ledger)
    placement.register(a_host("h", asks={"wasm-*": 1_000}))
    assert ledger.asks == {"h": {"wasm-*": 1_000}}  # its signed registration's, stored as its word
    ledger.asks[HostId("h")] = {"wasm-hash": 1}  # below 0.1 × the catalog price (written around the exchange)
    asyncio.run(placement.refresh_asks_async(HostId("h")))
    assert placement.get(HostId("h")).asks == {"wasm-*": 1_000}  # not applied
    ledger.asks[HostId("h")] = {"wasm-hash": 1_200}  # the owner's, as the exchange stores them
    asyncio.run(placement.refresh_asks_async(HostId("h")))
    assert placement.get(HostId("h")).asks == {"wasm-hash": 1_200}
    placement.register(a_host("h"))  # rejoins without asks of its own
    assert placement.get(HostId("h")).asks == {"wasm-hash": 1_200}
    placement.register(a_host("h", asks={"wasm-*": 900}))  # rejoins asking its own
    assert placement.get(HostId("h")).asks == {"wasm-*": 900} and ledger.asks["h"] == {"wasm-*": 900}
    asyncio.run(placement.refresh_asks_async(HostId("nobody")))  # a host it does not know: nothing to do


def test_no_caller_can_say_what_a_host_asks() -> None:
    """Any joined node can call placement: the asks it applies are the ledger's, whoever asks for a refresh."""
    ledger = LedgerWord()
    placement = PlacementClient.local(Settings(), lambda: NOW, book=ledger)
    placement.register(a_host("h", asks={"wasm-hash": 1_200}))
    actor = placement._calls.actor  # type: ignore[attr-defined]  # the calls a stranger's node can make
    assert not hasattr(actor, "set_asks")
    ledger.asks.clear()  # the owner went back to the catalog's prices
    placement.refresh_asks()
    assert placement.get(HostId("h")).asks == {}


def test_a_gpu_host_asks_its_tier_multiple_and_the_quote_is_its_clearing_price(placement: PlacementClient) -> None:
    placement.register(a_host("cpu", asks={"wasm-*": 1_000}))
    placement.register(a_host("gpu", asks={"wasm-*": 700}, gpu_model="L4"))  # 700 × 2 = 1 400
    job = a_job(bid_micro=1_200, catalog_price_micro=WASM_HASH)
    assert placement.rank(job) == ["cpu"]
    assert asyncio.run(placement.quote_async(HostId("gpu"), job)) == 1_400
    assert asyncio.run(placement.quote_async(HostId("gone"), job)) is None


def test_the_surge_raises_quotes_and_rates_but_not_the_bar_a_bid_must_clear(placement: PlacementClient) -> None:
    """A job already bidding the unsurged ask still gets a host (it is not refused, nor stranded in the queue);
    what the host earns rises with the surge, up to the bid (the dispatcher caps it there)."""
    placement.register(a_host("h", slots=4, active_jobs=3, asks={"wasm-hash": 1_000}))  # one free slot
    job = a_job(bid_micro=1_000, catalog_price_micro=WASM_HASH)
    placement.set_queued(2)  # 2 ≤ 2 × 1 free slot: no surge
    assert asyncio.run(placement.quote_async(HostId("h"), job)) == 1_000
    placement.set_queued(3)  # past it: asks × 1.25
    assert asyncio.run(placement.quote_async(HostId("h"), job)) == 1_250
    assert placement.rank(job) == ["h"]
    assert placement.market_rates({"wasm-hash": WASM_HASH})["wasm-hash"] == {
        "rate_micro": 1_250, "hosts": 1, "lowest_micro": 1_250, "highest_micro": 1_250, "surge": 1.25}
    with pytest.raises(NoCapacity, match="the lowest ask is 0.001 credits"):
        placement.rank(a_job(bid_micro=999, catalog_price_micro=WASM_HASH))
    placement.set_queued(0)
    assert placement.market_rates({"wasm-hash": WASM_HASH})["wasm-hash"]["surge"] == 1.0


def test_market_rates_are_the_median_ask_of_the_hosts_that_could_run_each_workload(
        placement: PlacementClient) -> None:
    placement.register(a_host("a", asks={"wasm-hash": 900}))
    placement.register(a_host("b", asks={"wasm-*": 1_500}))
    placement.register(a_host("c"))  # the catalog's 1 000
    placement.register(a_host("paused", status=HostStatus.PAUSED, asks={"wasm-*": 100}))  # not online: not counted
    placement.register(a_host("picky", accepts=("llm-*",), asks={"wasm-*": 100}))  # does not take wasm-hash
    rates = placement.market_rates({"wasm-hash": WASM_HASH, "llm-chat": 2_000})
    assert rates["wasm-hash"] == {"rate_micro": 1_000, "hosts": 3, "lowest_micro": 900, "highest_micro": 1_500,
                                  "surge": 1.0}
    # llm-chat runs in a container; these hosts have only wasm: no host, the catalog's price.
    assert rates["llm-chat"] == {"rate_micro": 2_000, "hosts": 0, "lowest_micro": None, "highest_micro": None,
                                 "surge": 1.0}
