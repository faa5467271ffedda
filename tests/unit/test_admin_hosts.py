"""Admins suspend and reinstate hosts, on the real API app, jobs service, placement and ledger (scripted hosts):
a suspended host gets no new jobs, says why, and stays suspended when the jobs service starts again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from builders import a_job
from fastapi.testclient import TestClient
from model_network import CATALOG, ModelNetwork, a_model_network

from archipelag.jobs.service import JobService
from archipelag.ledger.client import LedgerClient
from archipelag.lifecycle import HostStatus
from archipelag.placement.client import PlacementClient


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
    assert "host-a" in asyncio.run(fresh.suspensions_async())


@pytest.mark.parametrize("command", ["pause", "resume", "drain"])
def test_controlling_a_host_whose_agent_is_not_running_is_404_at_once(admin: TestClient, command: str) -> None:
    """An API without a Ray cluster (here) or a host that left: a clear 404, never a Ray of its own started."""
    answer = admin.post(f"/api/v1/admin/hosts/h-gone/{command}")
    assert answer.status_code == 404 and "not joined" in answer.text, answer.text
    assert not ray.is_initialized()
