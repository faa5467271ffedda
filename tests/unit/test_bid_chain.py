"""The jobs core's side of the exchange over the real ledger (SQLite) and in-process placement: the bid chain's
order, what a job reserves, and that a bid reads only memory once the caches are filled."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from builders import NOW, a_host
from model_network import CATALOG, CHAT, PLAIN

from archipelag.catalog import Manifest
from archipelag.ids import HostId, WorkloadSlug
from archipelag.jobs.exchange import Exchange, check_pattern, reserve_micro
from archipelag.ledger import Ledger
from archipelag.ledger.client import LedgerClient
from archipelag.placement.client import PlacementClient
from archipelag.settings import Settings


def an_exchange(tmp_path: Path) -> tuple[Exchange, Ledger, int, PlacementClient]:
    settings = Settings(state_dir=tmp_path)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    ledger.sync_catalog(CATALOG.values())
    account = ledger.create_account("ada@example.org", 1_000_000)
    placement = PlacementClient.local(settings, clock=lambda: NOW, catalog=CATALOG, book=ledger)
    for host, asks in (("host-a", {"llm-chat": 30_000}), ("host-b", {}), ("host-c", {"*": 50_000})):
        ledger.upsert_host(host, host, "eu-west", {})  # recorded before it joins, as enrolment records it
        placement.register(a_host(host, runtimes=frozenset({"container"}), asks=asks))
    return Exchange(CATALOG, settings.market, LedgerClient.local(ledger), placement), ledger, account.id, placement


def test_the_request_then_the_most_specific_saved_bid_then_the_rate_then_the_catalog(tmp_path: Path) -> None:
    exchange, ledger, account, _ = an_exchange(tmp_path)

    async def scenario() -> None:
        assert exchange.bid_for(account, CHAT, None) == CHAT.price_micro  # nothing read yet: the catalog's
        await exchange.refresh()
        assert exchange.bid_for(account, CHAT, None) == 30_000  # the median of 10_000, 30_000, 50_000
        await exchange.set_bid_preference(account, "*", 11_000)
        await exchange.set_bid_preference(account, "llm-*", 12_000)
        assert exchange.bid_for(account, CHAT, None) == 12_000  # the longer family wins
        await exchange.set_bid_preference(account, "llm-chat", 13_000)
        assert exchange.bid_for(account, CHAT, None) == 13_000  # the exact slug wins
        assert exchange.bid_for(account, PLAIN, None) == 11_000
        assert exchange.bid_for(account, CHAT, 7) == 7  # the request's bid over everything
        assert exchange.bid_for(account + 1, CHAT, None) == 30_000  # another account: the rate
        ledger.close()  # from here the ledger is gone: a bid still reads only memory
        assert exchange.bid_for(account, CHAT, None) == 13_000

    asyncio.run(scenario())


def test_a_job_reserves_its_bid_and_its_tokens_most() -> None:
    per_token = Manifest(slug=WorkloadSlug("llm"), name="llm", description="", runtime="container",
                         trust_level=1, price_micro=2_000, token_price_micro=20_000)
    assert reserve_micro(per_token, {"max_tokens": 100}, 5_000) == 5_000 + 2_000  # 100 tokens at 0.02 a thousand
    assert reserve_micro(PLAIN, {}, 5_000) == 5_000


def test_a_pattern_must_name_a_workload_of_the_catalog() -> None:
    assert check_pattern("llm-*", CATALOG) and check_pattern("*", CATALOG) and check_pattern("sdxl", CATALOG)
    assert not check_pattern("nothing-*", CATALOG) and not check_pattern("llm", CATALOG)


def test_stored_asks_reach_a_host_that_registers_naming_none(tmp_path: Path) -> None:
    _, ledger, _, placement = an_exchange(tmp_path)
    assert ledger.asking_prices() == {"host-a": {"llm-chat": 30_000}, "host-c": {"*": 50_000}}  # as registered
    ledger.set_asking_prices("host-b", {"text-*": 4_000})  # its owner's, while it was away
    placement.register(a_host("host-b", runtimes=frozenset({"container"})))
    assert placement.get(HostId("host-b")).asks == {"text-*": 4_000}


def test_an_owner_s_asks_reach_placement_after_the_ledger_holds_them(tmp_path: Path) -> None:
    exchange, ledger, _, placement = an_exchange(tmp_path)

    async def scenario() -> None:
        assert await exchange.set_asks(HostId("host-b"), {"llm-*": 25_000}) == {"llm-*": 25_000}
        assert ledger.asking_prices("host-b") == {"host-b": {"llm-*": 25_000}}
        assert placement.get(HostId("host-b")).asks == {"llm-*": 25_000}

    asyncio.run(scenario())


class CountingLedger:
    """The real ledger, counting the calls made of it by name."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self._ledger, name)


def test_a_submission_asks_the_ledger_only_to_create_its_job(tmp_path: Path) -> None:
    """The bid chain adds no round trip to the ledger: saved bids and rates come from the service's caches."""
    from model_network import ScriptedHost

    from archipelag.jobs.service import JobService

    settings = Settings(state_dir=tmp_path, heartbeat_interval_s=3600)  # no fleet round during the test
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    ledger.sync_catalog(CATALOG.values())
    account = ledger.create_account("ada@example.org", 1_000_000).id
    counting = CountingLedger(ledger)
    placement = PlacementClient.local(settings, clock=lambda: NOW, catalog=CATALOG)
    placement.register(a_host("host-a", runtimes=frozenset({"container"}), asks={"llm-chat": 20_000}))
    host = ScriptedHost()
    service = JobService(settings, dict(CATALOG), LedgerClient.local(counting), placement, lambda _: host)
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    async def scenario() -> None:
        await service.set_bid_preference(account, "llm-*", 25_000)
        await service.hosts()  # the fleet recorded, as the fleet round keeps it
        counting.calls.clear()
        job = await service.submit(account, "llm-chat", chat, None)
        assert job.bid_price_micro == 25_000 and job.reserved_micro == 25_000
        assert counting.calls[0] == "create_job"  # then the dispatcher's own writes (the job starting)
        assert not {"all_bid_preferences", "bid_preferences", "asking_prices", "get_account"} & set(counting.calls)
        await service.close()

    asyncio.run(scenario())
