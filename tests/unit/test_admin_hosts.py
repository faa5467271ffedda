"""Admins suspend and reinstate hosts, on the real API app, jobs service, placement and ledger (scripted hosts):
a suspended host gets no new jobs, says why, and stays suspended, since the ledger holds it, when the jobs service
or placement starts again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from builders import NOW, a_host, a_job
from fastapi.testclient import TestClient
from model_network import CATALOG, ModelNetwork, a_model_network

from archipelag import identity
from archipelag.errors import NoCapacity
from archipelag.ids import HostId
from archipelag.jobs.client import JobsClient
from archipelag.jobs.service import JobService
from archipelag.ledger.client import LedgerClient
from archipelag.lifecycle import HostStatus
from archipelag.placement.client import PlacementClient
from archipelag.serve.app import build_api
from archipelag.serve.services import Services


@pytest.fixture
def net(tmp_path: Path) -> ModelNetwork:
    return a_model_network(tmp_path, hosts=2)


@pytest.fixture
def admin(net: ModelNetwork) -> Iterator[TestClient]:
    with net.client() as client:
        yield client


def chat(client: TestClient) -> dict[str, object]:
    made = client.post("/api/v1/jobs", json={"workload": "llm-chat", "input": {
        "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}})
    assert made.status_code == 201, made.text
    job: dict[str, object] = made.json()["data"]
    return job


def test_a_suspended_host_gets_no_new_jobs_until_reinstated(net: ModelNetwork, admin: TestClient) -> None:
    suspended = admin.post("/api/v1/admin/hosts/host-a/suspend", json={"reason": "wrong answers"})
    assert suspended.status_code == 200, suspended.text
    assert suspended.json()["data"]["status"] == "suspended"
    assert "wrong answers" in suspended.json()["data"]["suspended_reason"]
    chat(admin)  # the jobs service starts, reading the ledger's suspended hosts: the admin's reason stays
    listed = {h["id"]: h for h in admin.get("/api/v1/admin/hosts").json()["data"]}
    assert listed["host-a"]["status"] == "suspended" and listed["host-b"]["suspended_reason"] is None
    assert "wrong answers" in listed["host-a"]["suspended_reason"]
    for _ in range(4):
        job = chat(admin)
        assert net.ledger.get_job(str(job["id"])).host_id in (None, "host-b")
    assert admin.post("/api/v1/admin/hosts/host-a/reinstate").json()["data"]["status"] == "online"
    assert "host-a" in net.placement.rank(a_job("llm-chat", runtime="container"))
    assert net.ledger.suspended_hosts() == [] and asyncio.run(net.placement.suspensions_async()) == {}


def test_the_ledger_holds_a_suspension_before_placement_hears_of_it(net: ModelNetwork, admin: TestClient) -> None:
    shown = admin.post("/api/v1/admin/hosts/host-a/suspend", json={"reason": "cheating"}).json()["data"]
    stored = net.ledger.get_host("host-a")
    assert stored.suspended_reason == shown["suspended_reason"] == "cheating (admin account 1)"
    assert shown["suspended_at"] is not None
    assert asyncio.run(net.placement.suspensions_async()) == {"host-a": stored.suspended_reason}  # placement agrees with the ledger
    again = admin.post("/api/v1/admin/hosts/host-a/suspend", json={"reason": "later"}).json()["data"]
    assert again["suspended_reason"] == "cheating (admin account 1)"  # the first reason holds, in both
    assert asyncio.run(net.placement.suspensions_async()) == {"host-a": stored.suspended_reason}


def test_the_list_shows_a_suspended_host_placement_does_not_know(net: ModelNetwork, admin: TestClient) -> None:
    net.ledger.upsert_host("host-z", "zed", "us-east", {})  # recorded, not joined now
    suspended = admin.post("/api/v1/admin/hosts/host-z/suspend", json={"reason": "stolen keys"})
    assert suspended.status_code == 200, suspended.text
    assert suspended.json()["data"]["status"] == "suspended"
    listed = {h["id"]: h for h in admin.get("/api/v1/admin/hosts").json()["data"]}
    assert (listed["host-z"]["status"], listed["host-z"]["name"], listed["host-z"]["region"]) == \
        ("suspended", "zed", "us-east")
    assert "stolen keys" in listed["host-z"]["suspended_reason"] and listed["host-a"]["suspended_reason"] is None
    assert admin.post("/api/v1/admin/hosts/host-z/reinstate").json()["data"]["status"] == "offline"
    assert "host-z" not in {h["id"] for h in admin.get("/api/v1/admin/hosts").json()["data"]}


def test_suspending_a_host_the_ledger_does_not_know_is_404(net: ModelNetwork, admin: TestClient) -> None:
    assert admin.post("/api/v1/admin/hosts/h-nobody/suspend", json={"reason": "x"}).status_code == 404
    assert admin.post("/api/v1/admin/hosts/h-nobody/reinstate").status_code == 404
    assert asyncio.run(net.placement.suspensions_async()) == {}


def test_only_admins_suspend_hosts(net: ModelNetwork) -> None:
    other = net.ledger.create_account("bo@example.org", 0)
    _, key = net.ledger.create_api_key(other.id, "k")
    with TestClient(net.app, headers={"Authorization": f"Bearer {key}"}) as client:
        assert client.post("/api/v1/admin/hosts/host-a/suspend", json={"reason": "x"}).status_code == 403
        assert client.get("/api/v1/admin/hosts").status_code == 403
    assert net.placement.get(net.placement.hosts()[0].host_id).status == HostStatus.ONLINE


def test_a_suspension_survives_a_restart_of_the_jobs_service(net: ModelNetwork, admin: TestClient) -> None:
    admin.post("/api/v1/admin/hosts/host-a/suspend", json={"reason": "cheating"})
    admin.get("/api/v1/hosts")  # the jobs service writes the fleet's statuses to the ledger
    assert {h.id: h.status for h in net.ledger.list_hosts()}["host-a"] == HostStatus.SUSPENDED

    fresh = PlacementClient.local(net.services.settings)  # the placement a restarted coordinator starts with
    service = JobService(net.services.settings, dict(CATALOG), LedgerClient.local(net.ledger), fresh,
                         lambda _: net.host)

    async def restart() -> None:
        await service.start()
        await service.close()

    asyncio.run(restart())
    assert asyncio.run(fresh.suspensions_async()) == {"host-a": net.ledger.get_host("host-a").suspended_reason}


def test_a_suspended_host_rejoining_a_restarted_placement_stays_out_until_reinstated(
        net: ModelNetwork, admin: TestClient) -> None:
    """Placement restarts alone (its actor is recreated): empty, it learns of the suspension from the ledger's
    identity of the host when the host registers again, and refuses it jobs until an admin reinstates it."""
    key = identity.generate_key()
    net.ledger.enrol_host("host-a", identity.public_hex(key), net.account_id, "host-a", "eu-west")
    admin.post("/api/v1/admin/hosts/host-a/suspend", json={"reason": "wrong answers"})

    fresh = PlacementClient.local(net.services.settings, clock=lambda: NOW, identities=net.ledger.host_identity,
                                  catalog=CATALOG)
    assert asyncio.run(fresh.suspensions_async()) == {}  # nothing yet: the host has not registered
    snapshot = a_host("host-a", runtimes=frozenset({"container"}))
    fresh.register(snapshot, identity.sign(key, "register", HostId("host-a"), NOW, snapshot))
    assert fresh.get(HostId("host-a")).status == HostStatus.SUSPENDED
    assert asyncio.run(fresh.suspensions_async()) == {"host-a": net.ledger.get_host("host-a").suspended_reason}
    with pytest.raises(NoCapacity):
        fresh.rank(a_job("llm-chat", runtime="container"))

    jobs = JobService(net.services.settings, dict(CATALOG), LedgerClient.local(net.ledger), fresh,
                      lambda _: net.host)
    services = Services(settings=net.services.settings, ledger=LedgerClient.local(net.ledger),
                        jobs=JobsClient.local(jobs), placement=fresh, catalog=dict(CATALOG))
    with TestClient(build_api(services), headers={"Authorization": f"Bearer {net.key}"}) as restarted:
        listed = {h["id"]: h for h in restarted.get("/api/v1/admin/hosts").json()["data"]}
        assert listed["host-a"]["status"] == "suspended" and "wrong answers" in listed["host-a"]["suspended_reason"]
        assert restarted.post("/api/v1/admin/hosts/host-a/reinstate").json()["data"]["status"] == "online"
    assert fresh.rank(a_job("llm-chat", runtime="container")) == ["host-a"]
    assert asyncio.run(fresh.suspensions_async()) == {} and net.ledger.suspended_hosts() == []


@pytest.mark.parametrize("command", ["pause", "resume", "drain"])
def test_controlling_a_host_whose_agent_is_not_running_is_404_at_once(admin: TestClient, command: str) -> None:
    """An API without a Ray cluster (here) or a host that left: a clear 404, never a Ray of its own started."""
    answer = admin.post(f"/api/v1/admin/hosts/h-gone/{command}")
    assert answer.status_code == 404 and "not joined" in answer.text, answer.text
    assert not ray.is_initialized()
