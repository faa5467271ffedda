"""The economy on the network started the way `make up` starts it, one `up` on PostgreSQL for both tests (in this
order). `up` on SQLite runs in test_up.py; the ledger's earnings and market calls run on both databases in
tests/integration/test_earnings_ledger.py and test_market_ledger.py.

- earnings: `up`'s local hosts belong to the network's own account, so what its jobs pay (less the platform fee set
  in the environment) is that account's earnings, shown by the API and the CLI; a payout waits for the karma
  threshold;
- the exchange: the owner of `up`'s host posts an ask through the API, the market rate follows it, a saved bid is
  what a job bids when it names none, the job clears at the host's ask, and /market/history (and `archipelag
  market history`) shows that price once the job has settled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from ledger_contract import network_database, postgres_url  # noqa: F401 - a fixture
from netutil import free_port
from up_process import start_up

from archipelag.sdk import Client, JobState

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
FEE_BPS = 2_000
ASK = 0.002  # credits: twice wasm-hash's catalog price of 0.001


@pytest.fixture(scope="module", params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def up(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    state = tmp_path_factory.mktemp("up")
    with network_database(request) as database_url:
        port = free_port()
        process, _ = start_up(state, port, free_port(), hosts=1, database_url=database_url,
                              platform_fee_bps=str(FEE_BPS))
        try:
            yield f"http://127.0.0.1:{port}", (state / "api_key").read_text().strip()
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=120)


def test_up_s_jobs_earn_for_the_network_account_less_the_fee_set_in_the_environment(up: tuple[str, str]) -> None:
    url, key = up
    client = Client(url, api_key=key)
    for text in ("one", "two"):
        client.get(client.submit("wasm-hash", {"text": text}))
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        usage = http.get("/api/v1/account/usage").json()["data"]
        earnings = http.get("/api/v1/account/earnings").json()["data"]
        refused = http.post("/api/v1/account/payouts", json={"amount": 0.001})
    spent = usage["by_workload"]["wasm-hash"]
    assert spent > 0 and usage["days"][0]["jobs"] == 2
    [(host, earned)] = earnings["by_host"].items()
    assert earned == pytest.approx(spent * (1 - FEE_BPS / 10_000), abs=2e-6)
    assert earnings["unpaid"] == pytest.approx(earned)
    assert refused.status_code == 403 and refused.json()["error"]["threshold"] == 10.0  # a new host's karma is low

    env = {**os.environ, "ARCHIPELAG_URL": url, "ARCHIPELAG_API_KEY": key, "COLUMNS": "200"}
    shown = subprocess.run([sys.executable, "-m", "archipelag", "account", "earnings"], capture_output=True,
                           text=True, env=env, timeout=120, check=False)
    assert shown.returncode == 0 and host in shown.stdout, shown.stderr
    payout = subprocess.run([sys.executable, "-m", "archipelag", "account", "payout", "0.001"], capture_output=True,
                            text=True, env=env, timeout=120, check=False)
    assert payout.returncode == 1 and "karma" in payout.stderr and "Traceback" not in payout.stderr


def test_an_owners_ask_and_a_saved_bid_clear_a_job_that_the_history_shows(up: tuple[str, str]) -> None:
    url, key = up  # the network's own account: it owns up's host and runs jobs
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        [host] = http.get("/api/v1/account/hosts").json()["data"]
        posted = http.post("/api/v1/market/asking-prices", json={"host_id": host["id"], "prices": {"wasm-*": ASK}})
        assert posted.status_code == 200, posted.text
        rate = http.get("/api/v1/market/rates/wasm-hash").json()["data"]
        assert (rate["rate"], rate["hosts"], rate["catalog_price"]) == (ASK, 1, 0.001)
        under = http.post("/api/v1/jobs", json={"workload": "wasm-hash", "input": {"text": "x"}, "bid_price": 0.0015})
        assert under.status_code == 503 and f"the lowest ask is {ASK:g}" in under.json()["error"]["message"]
        saved = http.put("/api/v1/account/bid-preferences", json={"prices": {"wasm-hash": 0.003}})
        assert saved.status_code == 200, saved.text

    client = Client(url, api_key=key)
    job = client.create_job("wasm-hash", {"text": "the exchange"})  # no bid: the saved one
    assert job.bid_price == 0.003
    done = client.wait_job(job.id, timeout=120)
    assert done.status is JobState.COMPLETED, done.error
    assert done.clearing_price == ASK and done.usage.credits_used == ASK  # the host's ask, not the bid

    history = client.market_history("wasm-hash")  # the earlier test's jobs cleared at the catalog price
    assert sum(b.count for b in history.buckets) == 3 and history.buckets[-1].max == ASK
    env = {**os.environ, "ARCHIPELAG_URL": url, "ARCHIPELAG_API_KEY": key, "COLUMNS": "200"}
    shown = subprocess.run([sys.executable, "-m", "archipelag", "market", "history", "wasm-hash"],
                           capture_output=True, text=True, env=env, timeout=120, check=False)
    assert shown.returncode == 0 and f"{ASK:g}" in shown.stdout, shown.stderr
