"""Earnings, payouts and usage on the real API app and ledger: an owner sees what each host earned per day,
asks for payouts (refused under the karma threshold and past the unpaid amount), and a user sees their spend."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from ledger_contract import a_settled_job, an_owned_host
from model_network import ModelNetwork, a_model_network

from archipelag.ledger.records import Account
from archipelag.ledger.tables import utcnow

SLUG = "text-stats"


@pytest.fixture
def net(tmp_path: Path) -> ModelNetwork:
    return a_model_network(tmp_path)


@pytest.fixture
def owner(net: ModelNetwork) -> Iterator[TestClient]:
    """The network's account, owning host-a (karma 10: payouts open) and host-b (no karma)."""
    account = net.ledger.get_account(net.account_id)
    an_owned_host(net.ledger, account, "host-a", karma=10.0)
    an_owned_host(net.ledger, account, "host-b")
    with net.client() as client:
        yield client


def a_user(net: ModelNetwork, email: str = "bob@example.org") -> tuple[Account, TestClient]:
    account = net.ledger.create_account(email, 1_000_000)
    _, key = net.ledger.create_api_key(account.id, "test", ("read", "write"))
    return account, net.client(key)


def test_an_owner_sees_each_hosts_earnings_per_day(net: ModelNetwork, owner: TestClient) -> None:
    user, _ = a_user(net)
    a_settled_job(net.ledger, user, "host-a", 100_000, workload=SLUG)
    a_settled_job(net.ledger, user, "host-b", 50_000, workload=SLUG)
    answer = owner.get("/api/v1/account/earnings")
    assert answer.status_code == 200, answer.text
    found = answer.json()["data"]
    today = utcnow().date().isoformat()
    assert found["days"] == [{"day": today, "host_id": "host-a", "amount": 0.09, "jobs": 1},
                             {"day": today, "host_id": "host-b", "amount": 0.045, "jobs": 1}]
    assert found["by_host"] == {"host-a": 0.09, "host-b": 0.045}
    assert (found["period_total"], found["earned_total"], found["paid_out"], found["unpaid"]) == \
        (0.135, 0.135, 0.0, 0.135)
    assert found["to"] == today
    one = owner.get("/api/v1/account/earnings", params={"host_id": "host-b"}).json()["data"]
    assert one["by_host"] == {"host-b": 0.045}
    yesterday = (utcnow().date() - timedelta(days=1)).isoformat()
    past = owner.get("/api/v1/account/earnings", params={"from": yesterday, "to": yesterday}).json()["data"]
    assert past["days"] == [] and past["unpaid"] == 0.135


def test_another_account_sees_none_of_the_owners_earnings(net: ModelNetwork, owner: TestClient) -> None:
    user, client = a_user(net)
    a_settled_job(net.ledger, user, "host-a", 100_000, workload=SLUG)
    with client:
        found = client.get("/api/v1/account/earnings", params={"host_id": "host-a"}).json()["data"]
    assert found["days"] == [] and found["earned_total"] == 0 and found["unpaid"] == 0


@pytest.mark.parametrize("params", [{"from": "2026-02-30"}, {"from": "yesterday"}, {"from": "2026-03-02", "to": "2026-03-01"},
                                    {"from": "2024-01-01", "to": "2026-01-01"}, {"host_id": ""}, {"host_id": "h" * 65}])
def test_a_bad_period_or_host_is_a_422(owner: TestClient, params: dict[str, str]) -> None:
    answer = owner.get("/api/v1/account/earnings", params=params)
    assert answer.status_code == 422, answer.text


def test_a_payout_moves_unpaid_earnings_out_and_is_listed(net: ModelNetwork, owner: TestClient) -> None:
    user, _ = a_user(net)
    a_settled_job(net.ledger, user, "host-a", 100_000, workload=SLUG)
    answer = owner.post("/api/v1/account/payouts", json={"amount": 0.05})
    assert answer.status_code == 201, answer.text
    assert answer.json()["data"]["amount"] == 0.05
    over = owner.post("/api/v1/account/payouts", json={"amount": 0.05})
    assert over.status_code == 409 and "0.04 unpaid" in over.json()["error"]["message"]
    listed = owner.get("/api/v1/account/payouts").json()
    assert [p["amount"] for p in listed["data"]] == [0.05] and listed["meta"]["total"] == 1
    assert owner.get("/api/v1/account/earnings").json()["data"]["unpaid"] == 0.04
    assert net.ledger.audit() == []


@pytest.mark.parametrize("body", [{"amount": 0}, {"amount": -1}, {"amount": "lots"}, {}, {"amount": 1, "to": "x"},
                                  {"amount": 1e13}, {"amount": 1e-9}])
def test_a_bad_payout_amount_is_a_422(owner: TestClient, body: dict[str, object]) -> None:
    answer = owner.post("/api/v1/account/payouts", json=body)
    assert answer.status_code == 422, answer.text


def test_a_payout_under_the_karma_threshold_is_refused_with_the_current_karma(net: ModelNetwork) -> None:
    user, client = a_user(net)
    an_owned_host(net.ledger, user, "host-u", karma=2.5)
    a_settled_job(net.ledger, user, "host-u", 100_000, workload=SLUG)
    with client:
        answer = client.post("/api/v1/account/payouts", json={"amount": 0.01})
    assert answer.status_code == 403
    error = answer.json()["error"]
    assert error["karma"] == 2.5 and error["threshold"] == 10.0 and "2.50" in error["message"]


def test_a_read_only_key_cannot_ask_for_a_payout(net: ModelNetwork, owner: TestClient) -> None:
    _, key = net.ledger.create_api_key(net.account_id, "reader", ("read",))
    with net.client(key) as reader:
        assert reader.post("/api/v1/account/payouts", json={"amount": 0.01}).status_code == 403
        assert reader.get("/api/v1/account/payouts").status_code == 200


def test_usage_shows_the_users_spend_per_day_and_workload(net: ModelNetwork) -> None:
    user, client = a_user(net)
    a_settled_job(net.ledger, user, "host-a", 30_000, workload=SLUG)
    a_settled_job(net.ledger, user, "host-a", 20_000, workload=SLUG)
    with client:
        found = client.get("/api/v1/account/usage").json()["data"]
    assert found["by_workload"] == {SLUG: 0.05} and found["total"] == 0.05
    assert found["days"] == [{"day": utcnow().date().isoformat(), "workload": SLUG, "amount": 0.05, "jobs": 2}]


def test_the_earnings_routes_need_a_key(net: ModelNetwork) -> None:
    with TestClient(net.app) as anon:
        for path in ("/api/v1/account/earnings", "/api/v1/account/usage", "/api/v1/account/payouts"):
            assert anon.get(path).status_code == 401
