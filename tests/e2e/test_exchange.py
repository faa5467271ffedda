"""The exchange on a real network: two `host join --price` hosts (real Ray nodes, wasmtime, the SQLite ledger),
jobs bidding through the HTTP API. A bid under every host's ask is a 503 that names the lowest ask, with nothing
held; a bid between the two asks runs on the host within it, which is what the job is charged (its clearing
price), not the bid nor the catalog's price."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from catalog_builders import network_catalog
from netutil import api_client, network_settings

from archipelag.network import EmbeddedNetwork, start_network

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray_driver]

# island-a would win a tie (ids break them); only its price keeps the jobs below from it.
ASKS = {"island-a": "wasm-hash=0.004", "island-b": "wasm-*=0.0007"}  # the catalog's wasm-hash: 0.001


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNetwork]:
    root = tmp_path_factory.mktemp("exchange")
    net = start_network(network_settings(root / "state", workloads_dir=network_catalog(root)), hosts=0,
                        named={host_id: ("--price", price) for host_id, price in ASKS.items()})  # in eu-west
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture(scope="module")
def http(network: EmbeddedNetwork) -> Iterator[httpx.Client]:
    with api_client(network) as client:
        yield client


def credits(http: httpx.Client) -> float:
    return float(http.get("/api/v1/account").json()["data"]["credits"])


def test_a_bid_under_every_host_s_ask_is_a_503_naming_the_lowest_ask(http: httpx.Client) -> None:
    before = credits(http)
    refused = http.post("/api/v1/jobs", json={"workload": "wasm-hash", "input": {"text": "x"}, "bid_price": 0.0005})
    assert refused.status_code == 503, refused.text
    error = refused.json()["error"]
    assert error["code"] == "no_capacity"
    assert error["message"].startswith("no host asks ≤ your bid of 0.0005 credits; the lowest ask is 0.0007 credits")
    assert credits(http) == before  # nothing held


def test_the_host_asking_less_than_the_bid_runs_the_job_and_its_ask_is_the_charge(http: httpx.Client) -> None:
    before = credits(http)
    jobs = []
    for text in ("one", "two", "three"):
        created = http.post("/api/v1/jobs", json={"workload": "wasm-hash", "input": {"text": text},
                                                  "bid_price": 0.002})
        assert created.status_code == 201, created.text
        job_id = created.json()["data"]["id"]
        with http.stream("GET", f"/api/v1/jobs/{job_id}/stream") as response:
            events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
        assert events[-1]["type"] == "done", events
        jobs.append(http.get(f"/api/v1/jobs/{job_id}").json()["data"])
    for job in jobs:
        assert job["status"] == "completed" and job["host_id"] == "island-b"
        assert job["bid_price"] == 0.002
        assert job["clearing_price"] == pytest.approx(0.0007)
        assert job["usage"]["credits_used"] == pytest.approx(0.0007)
    assert credits(http) == pytest.approx(before - 3 * 0.0007)


def test_a_host_joining_with_an_ask_outside_the_bounds_is_refused_and_told_why(network: EmbeddedNetwork) -> None:
    host = network.add_host("eu-west", "island-greedy", args=("--price", "wasm-hash=0.5"))  # 500 × the catalog's
    assert host.process.wait(timeout=180) == 1
    said = host.log_path.read_text()
    assert "asks prices the network does not take: wasm-hash: 0.5 credits for wasm-hash is outside 0.0001–0.01" in said
    assert "Traceback" not in said
