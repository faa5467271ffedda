"""Earnings on the network started the way `make up` starts it: `up`'s local hosts belong to the network's own
account, so what its jobs pay (less the platform fee set in the environment) is that account's earnings, shown by
the API and the CLI; a payout waits for the karma threshold."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ledger_contract import NETWORK_DATABASES, network_database, postgres_url  # noqa: F401 - a fixture
from netutil import free_port
from up_process import start_up

from archipelag.sdk import Client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
FEE_BPS = 2_000


@pytest.fixture(params=NETWORK_DATABASES)
def up(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    with network_database(request) as database_url:
        port = free_port()
        process, _ = start_up(tmp_path, port, free_port(), hosts=1, database_url=database_url,
                              platform_fee_bps=str(FEE_BPS))
        try:
            yield f"http://127.0.0.1:{port}", (tmp_path / "api_key").read_text().strip()
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
