"""`archipelag market rates|history|ask|bid`, `submit --bid` and the SDK's market methods against the real API
app, ledger, jobs service and placement (served on a local port)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from ledger_contract import an_owned_host
from model_network import CATALOG, ModelNetwork, a_model_network, serve
from typer.testing import CliRunner, Result

from archipelag.cli.jobs import register as register_jobs
from archipelag.cli.market import register
from archipelag.ids import HostId
from archipelag.lifecycle import JobStatus
from archipelag.sdk import AsyncClient, Client

APP = typer.Typer()
register(APP)
register_jobs(APP)
CHAT = {"messages": [{"role": "user", "content": "hi there"}], "max_tokens": 4}


@pytest.fixture
def net(tmp_path: Path) -> ModelNetwork:
    network = a_model_network(tmp_path, hosts=2)
    an_owned_host(network.ledger, network.ledger.get_account(network.account_id), "host-a")
    return network


@pytest.fixture
def url(net: ModelNetwork, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with serve(net.app) as base:
        monkeypatch.setenv("ARCHIPELAG_URL", base)
        monkeypatch.setenv("ARCHIPELAG_API_KEY", net.key)  # the owner of host-a
        monkeypatch.setenv("COLUMNS", "200")
        yield base


def invoke(*args: str) -> Result:
    return CliRunner().invoke(APP, list(args))


def test_an_owner_sets_shows_and_clears_a_hosts_asks(net: ModelNetwork, url: str) -> None:
    result = invoke("market", "ask", "host-a", "llm-*=0.05", "text-stats=0.002")
    assert result.exit_code == 0, result.output
    assert "llm-*" in result.stdout and "0.05" in result.stdout
    assert net.ledger.asking_prices() == {"host-a": {"llm-*": 50_000, "text-stats": 2_000}}
    shown = json.loads(invoke("market", "ask", "host-a", "--json").stdout)
    assert shown == {"host_id": "host-a", "prices": {"llm-*": 0.05, "text-stats": 0.002}}
    refused = invoke("market", "ask", "host-a", "text-stats=5")  # 500 × its catalog price
    assert refused.exit_code == 1 and "outside" in refused.output
    assert invoke("market", "ask", "host-a", "llm-chat").exit_code == 2  # no =CREDITS
    assert invoke("market", "ask", "host-a", "llm-chat=lots").exit_code == 2
    assert invoke("market", "ask", "host-b", "*=0.01").exit_code == 1  # never enrolled: 404, one line
    cleared = invoke("market", "ask", "host-a", "--clear")
    assert cleared.exit_code == 0 and "catalog's prices" in cleared.stdout
    assert net.ledger.asking_prices() == {}


def test_rates_history_and_a_saved_bid_that_a_submission_uses(net: ModelNetwork, url: str) -> None:
    invoke("market", "ask", "host-a", "llm-chat=0.03")
    rates = invoke("market", "rates")
    assert rates.exit_code == 0, rates.output
    assert "llm-chat" in rates.stdout and "0.02" in rates.stdout and "sdxl" in rates.stdout
    one = json.loads(invoke("market", "rates", "llm-chat", "--json").stdout)
    assert (one["rate"], one["lowest"], one["highest"]) == (0.02, 0.01, 0.03)
    assert "no saved bids" in invoke("market", "bid").stdout
    saved = invoke("market", "bid", "llm-chat", "0.03")
    assert saved.exit_code == 0 and "0.03" in saved.stdout
    assert invoke("market", "bid", "llm-chat").exit_code == 2  # neither CREDITS nor --forget
    submitted = json.loads(invoke("submit", "llm-chat", "--input", json.dumps(CHAT), "--wait", "--json").stdout)
    assert submitted["bid_price"] == 0.03 and submitted["status"] == "completed"
    bid = json.loads(invoke("submit", "llm-chat", "--input", json.dumps(CHAT), "--bid", "0.035", "--json").stdout)
    assert bid["bid_price"] == 0.035
    assert json.loads(invoke("market", "bid", "llm-chat", "--forget", "--json").stdout) == {"prices": {}}
    job = net.ledger.get_job(submitted["id"])
    assert job.status is JobStatus.SUCCEEDED
    history = invoke("market", "history", "llm-chat", "--bucket", "3600")
    assert history.exit_code == 0, history.output
    assert "llm-chat since" in history.stdout
    assert invoke("market", "history", "nothing").exit_code == 1


def test_the_sdk_reads_rates_and_history_and_sets_asks_and_bids(net: ModelNetwork, url: str) -> None:
    with Client(url, api_key=net.key) as client:
        asks = client.set_asking_prices("host-a", {"text-stats": 0.02})
        assert asks.host_id == "host-a" and asks.prices == {"text-stats": 0.02}
        assert [a.prices for a in client.asking_prices()] == [{"text-stats": 0.02}]
        assert net.placement.get(HostId("host-a")).asks == {"text-stats": 20_000}
        rate = client.market_rate("text-stats")
        assert (rate.workload, rate.hosts, rate.highest, rate.catalog_price) == ("text-stats", 2, 0.02, 0.01)
        assert {r.workload for r in client.market_rates()} == set(CATALOG)
        assert client.set_bid_preference("llm-*", 0.04) == {"llm-*": 0.04}
        assert client.bid_preferences() == {"llm-*": 0.04}
        job = client.create_job("llm-chat", CHAT)
        assert job.bid_price == 0.04
        assert client.wait_job(job.id, timeout=20).status.is_terminal
        history = client.market_history("llm-chat", bucket_s=600)
        assert history.workload == "llm-chat" and history.bucket_s == 600

    async def aio() -> None:
        async with AsyncClient(url, api_key=net.key) as client:
            assert (await client.market_rate("llm-chat")).hosts == 2
            assert len(await client.market_rates()) == len(CATALOG)
            assert (await client.set_asking_prices("host-a", {"*": 0.01})).prices == {"*": 0.01}
            assert (await client.asking_prices("host-a"))[0].prices == {"*": 0.01}
            assert await client.set_bid_preference("llm-*", None) == {}
            assert await client.bid_preferences() == {}
            assert (await client.market_history("text-stats")).buckets == ()
            assert (await client.create_job("llm-chat", CHAT, bid_price=0.02)).bid_price == 0.02

    asyncio.run(aio())
