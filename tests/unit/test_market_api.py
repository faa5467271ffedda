"""The market API on the real app, ledger, jobs service and placement with scripted hosts: owners' asks (only
theirs, within the bounds), the rates and the history, saved bids, and the bid chain a job's reservation follows.
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from ledger_contract import an_owned_host
from model_network import ModelNetwork, a_model_network

from archipelag.catalog import MICRO
from archipelag.ids import HostId
from archipelag.lifecycle import JobStatus

CHAT = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}
TOKEN_PART = 0  # the model network's chat workload has no token price: a job reserves its bid


@pytest.fixture
def net(tmp_path: Path) -> ModelNetwork:
    network = a_model_network(tmp_path, hosts=2)
    an_owned_host(network.ledger, network.ledger.get_account(network.account_id), "host-a")
    return network


def a_stranger(net: ModelNetwork, credits_micro: int = 1_000_000) -> str:
    account = net.ledger.create_account(f"s{time.monotonic_ns()}@example.org", credits_micro)
    return net.ledger.create_api_key(account.id, "stranger", ("read", "write"))[1]


def ended(client: TestClient, job_id: str, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/api/v1/jobs/{job_id}").json()["data"]
        if job["status"] in {"completed", "failed", "cancelled", "timeout"}:
            return dict(job)
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_an_owner_posts_asks_that_reach_placement_and_reads_them_back(net: ModelNetwork) -> None:
    with net.client() as client:
        answer = client.post("/api/v1/market/asking-prices",
                             json={"host_id": "host-a", "prices": {"llm-*": 0.05, "text-stats": "0.002"}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"] == {"host_id": "host-a", "prices": {"llm-*": 0.05, "text-stats": 0.002}}
        assert net.ledger.asking_prices() == {"host-a": {"llm-*": 50_000, "text-stats": 2_000}}
        assert net.placement.get(HostId("host-a")).asks == {"llm-*": 50_000, "text-stats": 2_000}
        assert client.get("/api/v1/market/asking-prices").json()["data"] == [
            {"host_id": "host-a", "prices": {"llm-*": 0.05, "text-stats": 0.002}}]
        one = client.get("/api/v1/market/asking-prices", params={"host_id": "host-a"})
        assert one.json()["data"][0]["prices"]["llm-*"] == 0.05


def test_asks_are_the_owners_alone_known_hosts_only_and_within_the_bounds(net: ModelNetwork) -> None:
    stranger = a_stranger(net)
    with net.client(stranger) as client:
        mine = client.post("/api/v1/market/asking-prices", json={"host_id": "host-a", "prices": {"*": 0.01}})
        assert mine.status_code == 403 and "not yours" in mine.json()["error"]["message"]
        assert client.get("/api/v1/market/asking-prices", params={"host_id": "host-a"}).status_code == 403
        assert client.get("/api/v1/market/asking-prices").json()["data"] == []  # owns none
    with net.client() as client:
        unknown = client.post("/api/v1/market/asking-prices", json={"host_id": "nobody", "prices": {"*": 0.01}})
        assert unknown.status_code == 404
        # the catalog prices are 0.01: the network takes 0.001 to 0.1 (ratios 0.1 and 10)
        high = client.post("/api/v1/market/asking-prices",
                           json={"host_id": "host-a", "prices": {"text-stats": 0.02, "llm-chat": 0.5}})
        assert high.status_code == 422, high.text
        assert "llm-chat" in high.json()["error"]["errors"] and "outside" in high.json()["error"]["message"]
        for wrong in ({"no-such-workload": 0.01}, {"text-stats": -1}, {"text-stats": 0.0000001}, {"a b": 0.01}):
            answer = client.post("/api/v1/market/asking-prices", json={"host_id": "host-a", "prices": wrong})
            assert answer.status_code == 422, (wrong, answer.text)
    assert net.ledger.asking_prices() == {}  # nothing stored by any refusal
    assert net.placement.get(HostId("host-a")).asks == {}


def test_rates_say_each_workloads_rate_hosts_and_spread(net: ModelNetwork) -> None:
    with net.client() as client:
        client.post("/api/v1/market/asking-prices", json={"host_id": "host-a", "prices": {"llm-chat": 0.03}})
        rates = client.get("/api/v1/market/rates").json()["data"]
        assert {r["workload"] for r in rates} == {"llm-chat", "sd-diffusers", "text-stats", "sdxl"}
        chat = client.get("/api/v1/market/rates/llm-chat").json()["data"]
        # host-a asks 0.03, host-b the catalog's 0.01: the median of two is their mean, rounded up
        assert chat == {"workload": "llm-chat", "rate": 0.02, "hosts": 2, "lowest": 0.01, "highest": 0.03,
                        "surge": 1.0, "catalog_price": 0.01}
        text = next(r for r in rates if r["workload"] == "text-stats")  # nobody asks more for it
        assert (text["rate"], text["lowest"], text["highest"]) == (0.01, 0.01, 0.01)
        assert client.get("/api/v1/market/rates/no-such").status_code == 404


def test_a_job_bids_the_request_then_the_saved_bid_then_the_market_rate(net: ModelNetwork) -> None:
    with net.client() as client:
        client.post("/api/v1/market/asking-prices", json={"host_id": "host-a", "prices": {"llm-chat": 0.03}})
        asked = client.post("/api/v1/jobs", json={"workload": "llm-chat", "input": CHAT, "bid_price": 0.04})
        assert asked.status_code == 201, asked.text
        assert asked.json()["data"]["bid_price"] == 0.04
        assert net.ledger.get_job(asked.json()["data"]["id"]).reserved_micro == 40_000 + TOKEN_PART
        saved = client.put("/api/v1/account/bid-preferences", json={"prices": {"llm-*": 0.025, "sdxl": None}})
        assert saved.status_code == 200 and saved.json()["data"] == {"prices": {"llm-*": 0.025}}
        assert client.get("/api/v1/account/bid-preferences").json()["data"] == {"prices": {"llm-*": 0.025}}
        preferred = client.post("/api/v1/jobs", json={"workload": "llm-chat", "input": CHAT}).json()["data"]
        assert preferred["bid_price"] == 0.025
        client.put("/api/v1/account/bid-preferences", json={"prices": {"llm-*": None}})
        rated = client.post("/api/v1/jobs", json={"workload": "llm-chat", "input": CHAT}).json()["data"]
        assert rated["bid_price"] == 0.02  # the market rate (host-a 0.03, host-b 0.01)
        for job in (asked.json()["data"], preferred, rated):
            done = ended(client, job["id"])
            assert done["status"] == "completed"
            assert done["clearing_price"] in {0.01, 0.03} and done["clearing_price"] <= done["bid_price"]
            assert done["usage"]["credits_used"] == done["clearing_price"] + TOKEN_PART
        wrong = client.put("/api/v1/account/bid-preferences", json={"prices": {"nothing-*": 0.1}})
        assert wrong.status_code == 422


def test_a_bid_under_every_ask_is_refused_before_anything_is_held(net: ModelNetwork) -> None:
    with net.client() as client:
        for host in ("host-a", "host-b"):
            an_owned_host(net.ledger, net.ledger.get_account(net.account_id), host) if host == "host-b" else None
            client.post("/api/v1/market/asking-prices", json={"host_id": host, "prices": {"*": 0.05}})
        before = net.ledger.balance_micro(net.account_id)
        low = client.post("/api/v1/jobs", json={"workload": "llm-chat", "input": CHAT, "bid_price": 0.01})
        assert low.status_code == 503, low.text
        assert "lowest ask is 0.05" in low.json()["error"]["message"]
        assert net.ledger.balance_micro(net.account_id) == before
        oai = client.post("/v1/chat/completions", json={"model": "smollm2-135m-instruct", "bid_price": 0.01,
                                                        "messages": [{"role": "user", "content": "hi"}]})
        assert oai.status_code == 503, oai.text


def test_a_bid_beyond_the_balance_is_402(tmp_path: Path) -> None:
    net = a_model_network(tmp_path, credits_micro=30_000)
    with net.client() as client:
        answer = client.post("/api/v1/jobs", json={"workload": "llm-chat", "input": CHAT, "bid_price": 0.05})
        assert answer.status_code == 402, answer.text
        assert answer.json()["error"]["required"] == 0.05
        assert client.post("/api/v1/jobs", json={"workload": "llm-chat", "input": CHAT,
                                                 "bid_price": 0.02}).status_code == 201


def test_the_openai_routes_and_batches_take_a_bid(net: ModelNetwork) -> None:
    with net.client() as client:
        chat = client.post("/v1/chat/completions", json={"model": "smollm2-135m-instruct", "bid_price": 0.015,
                                                         "messages": [{"role": "user", "content": "hi you"}]})
        assert chat.status_code == 200, chat.text
        job_id = chat.headers["X-Archipelag-Job-Id"]
        assert net.ledger.get_job(job_id).bid_price_micro == 15_000
        client.put("/api/v1/account/bid-preferences", json={"prices": {"llm-chat": 0.012}})
        batch = client.post("/api/v1/jobs/batch", json={"workload": "llm-chat", "inputs": [CHAT, CHAT]}).json()
        assert batch["batch"]["bid_price"] == 0.012
        assert {net.ledger.get_job(c["id"]).bid_price_micro for c in batch["children"]} == {12_000}


def test_history_buckets_the_clearing_prices_of_settled_jobs(net: ModelNetwork) -> None:
    account = net.ledger.get_account(net.account_id)
    for clearing in (10_000, 20_000, 60_000):
        job = net.ledger.create_job(account.id, "text-stats", {"text": "x"}, reserve_micro=clearing,
                                    bid_price_micro=clearing)
        for step in (JobStatus.QUEUED, JobStatus.ASSIGNED, JobStatus.STARTED):
            net.ledger.transition(job.id, step, **({"host_id": "host-a"} if step is JobStatus.ASSIGNED else {}))
        net.ledger.finish(job.id, JobStatus.SUCCEEDED, price_micro=clearing, clearing_price_micro=clearing)
    with net.client() as client:
        history = client.get("/api/v1/market/history/text-stats").json()["data"]
        assert history["workload"] == "text-stats" and history["bucket_s"] == 3600
        [bucket] = history["buckets"]
        assert {k: bucket[k] for k in ("count", "min", "median", "avg", "max")} == {
            "count": 3, "min": 0.01, "median": 0.02, "avg": 0.03, "max": 0.06}
        fine = client.get("/api/v1/market/history/text-stats", params={"bucket": 60, "since": "2026-01-01T00:00:00Z"})
        assert fine.status_code == 422  # more buckets than one answer holds
        assert client.get("/api/v1/market/history/llm-chat").json()["data"]["buckets"] == []
        assert client.get("/api/v1/market/history/nothing").status_code == 404


def test_credits_on_the_wire_are_decimals_to_the_micro_credit() -> None:
    from archipelag.jobs.admission import bid_micro

    assert bid_micro(Decimal("0.000001")) == 1 and bid_micro(None) is None
    assert bid_micro(Decimal("12.5")) == 12 * MICRO + MICRO // 2


def wait_for(check: Any, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.05)


def test_stored_asks_reach_placement_and_a_registrations_asks_are_stored(tmp_path: Path) -> None:
    """Stored asks reach a host placement knows (the fleet round has placement read them) and one that registers
    naming none (after a restart, say); one whose signed registration names asks has them stored by placement,
    its latest word."""
    from builders import a_host

    net = a_model_network(tmp_path, heartbeat_interval_s=0.05)
    owner = net.ledger.get_account(net.account_id)
    an_owned_host(net.ledger, owner, "host-a")
    net.ledger.set_asking_prices("host-a", {"llm-*": 30_000})
    with net.client() as client:
        client.get("/api/v1/account/bid-preferences")
        client.put("/api/v1/account/bid-preferences", json={"prices": {"text-stats": 0.01}})  # starts the service
        wait_for(lambda: net.placement.get(HostId("host-a")).asks == {"llm-*": 30_000})
        net.ledger.upsert_host("host-c", "host-c", "eu-west", {})  # as enrolment records it
        net.placement.register(a_host("host-c", runtimes=frozenset({"container"}), asks={"*": 20_000}))
        wait_for(lambda: net.ledger.asking_prices().get(HostId("host-c")) == {"*": 20_000})
        # placement applies them when the ledger's answer to its store comes back, a moment after the ledger holds
        # them (a fleet round's read just before the store may have shown it none meanwhile)
        wait_for(lambda: net.placement.get(HostId("host-c")).asks == {"*": 20_000})
        assert net.ledger.asking_prices()["host-a"] == {"llm-*": 30_000}
        rate = client.get("/api/v1/market/rates/text-stats").json()["data"]
        assert (rate["lowest"], rate["highest"], rate["hosts"]) == (0.01, 0.02, 2)
