"""Host controls on a real network: hosts are real `archipelag host join` processes, controlled as their owners
control them (the `archipelag host …` command on the machine, Ctrl-C) and as admins do (the API).

One network for the module; the tests that make hosts leave run last, in file order: island-2 drains, island-3
leaves on a double Ctrl-C, island-4 (joined with a schedule that is closed now) is drained by an admin.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from catalog_builders import network_catalog
from netutil import api_client, eventually, network_settings

from archipelag.actors.control_socket import ask, socket_path
from archipelag.errors import RequestError
from archipelag.network import EmbeddedNetwork, LocalHost, start_network

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.ray_driver]

TICKS = 40  # test-ticks says "tick " this many times, ~0.1 s apart


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNetwork]:
    root = tmp_path_factory.mktemp("hostctl")
    settings = network_settings(root / "state", workloads_dir=network_catalog(root), host_slots=2)
    net = start_network(settings, hosts=3)
    yield net
    net.stop()


@pytest.fixture(scope="module")
def http(network: EmbeddedNetwork) -> Iterator[httpx.Client]:
    with api_client(network) as client:
        yield client


def host_command(network: EmbeddedNetwork, *args: str) -> subprocess.CompletedProcess[str]:
    """`archipelag host …` as its owner runs it on the machine (same user, same state dir)."""
    return subprocess.run([sys.executable, "-m", "archipelag", "host", *args], capture_output=True, text=True,
                          env={**os.environ, **network.settings.to_env()}, timeout=60, check=False)


def control(network: EmbeddedNetwork, host_id: str, command: str, **extra: Any) -> dict[str, Any]:
    return ask(socket_path(network.settings, host_id), {"command": command, **extra})


def submit(http: httpx.Client, workload: str, region: str, job_input: dict[str, Any] | None = None) -> str:
    created = http.post("/api/v1/jobs", json={"workload": workload, "input": job_input or {"text": region},
                                              "region": region})
    assert created.status_code == 201, created.text
    return str(created.json()["data"]["id"])


def finished(http: httpx.Client, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = http.get(f"/api/v1/jobs/{job_id}").json()["data"]
        return job if job["status"] not in ("pending", "queued", "running") else None
    job: dict[str, Any] = eventually(done, timeout_s=timeout_s, interval_s=0.2)
    return job


def running_on(http: httpx.Client, job_id: str) -> str:
    job = eventually(lambda: (j := http.get(f"/api/v1/jobs/{job_id}").json()["data"])["status"] == "running"
                     and j["host_id"] and j, timeout_s=30)
    return str(job["host_id"])


def status_in_api(http: httpx.Client, host_id: str) -> str:
    hosts = {h["id"]: h for h in http.get("/api/v1/hosts").json()["data"]}
    return str(hosts[host_id]["status"]) if host_id in hosts else "absent"


def host(network: EmbeddedNetwork, host_id: str) -> LocalHost:
    return next(h for h in network.hosts if h.host_id == host_id)


def ticks_of(http: httpx.Client, job_id: str) -> str:
    with http.stream("GET", f"/api/v1/jobs/{job_id}/stream") as response:
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    return "".join(e["content"] for e in events if e["type"] == "token")


def test_a_paused_host_gets_no_new_jobs_and_gets_them_again_once_resumed(network: EmbeddedNetwork,
                                                                         http: httpx.Client) -> None:
    paused = host_command(network, "pause", "--host-id", "island-1")
    assert paused.returncode == 0, paused.stderr
    assert "island-1: paused (paused by its owner)" in paused.stdout
    assert eventually(lambda: status_in_api(http, "island-1") == "paused")
    for _ in range(3):  # eu-west's own host would win every one of these
        assert finished(http, submit(http, "wasm-hash", "eu-west"))["host_id"] != "island-1"
    resumed = host_command(network, "resume", "--host-id", "island-1")
    assert resumed.returncode == 0 and "island-1: online" in resumed.stdout, resumed.stderr
    assert status_in_api(http, "island-1") == "online"
    assert finished(http, submit(http, "wasm-hash", "eu-west"))["host_id"] == "island-1"


def test_host_status_says_where_the_host_stands(network: EmbeddedNetwork) -> None:
    shown = host_command(network, "status", "--host-id", "island-1", "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["host_id"] == "island-1" and status["status"] == "online" and status["running_jobs"] == []
    assert status["coordinator"] == network.coordinator.address and status["region"] == "eu-west"
    assert status["limits"]["cpu_cores"] >= 1 and status["limits"]["accepts"] == ["*"]
    several = host_command(network, "status")  # three hosts joined from this state dir: which one?
    assert several.returncode == 1 and "--host-id" in several.stderr


def test_the_same_host_cannot_join_twice_from_one_machine(network: EmbeddedNetwork) -> None:
    again = host_command(network, "join", "--coordinator", network.coordinator.address, "--region", "eu-west",
                         "--host-id", "island-1")
    assert again.returncode == 1 and "island-1 is already joined from this machine" in again.stderr
    assert control(network, "island-1", "status")["status"] == "online"


def test_a_bad_control_request_is_refused_and_the_host_carries_on(network: EmbeddedNetwork) -> None:
    with pytest.raises(RequestError, match="command must be one of"):
        control(network, "island-1", "reboot")
    with pytest.raises(RequestError, match="timeout_s"):
        control(network, "island-1", "leave", timeout_s=-1)
    assert control(network, "island-1", "status")["status"] == "online"


def test_an_admin_pauses_and_resumes_a_host_through_the_api_and_nobody_else_may(network: EmbeddedNetwork,
                                                                                http: httpx.Client) -> None:
    paused = http.post("/api/v1/admin/hosts/island-1/pause", json={"reason": "maintenance"})
    assert paused.status_code == 200, paused.text
    body = paused.json()["data"]
    assert body["status"] == "paused" and body["control"]["by"] == "admin"
    assert "maintenance" in body["control"]["reason"]
    assert "maintenance" in control(network, "island-1", "status")["reason"]  # the owner sees why
    assert finished(http, submit(http, "wasm-hash", "eu-west"))["host_id"] != "island-1"
    resumed = subprocess.run([sys.executable, "-m", "archipelag", "admin", "resume-host", "island-1", "--url",
                              network.url, "--api-key", network.api_key], capture_output=True, text=True, timeout=60,
                             check=False)
    assert resumed.returncode == 0 and "host island-1: online" in resumed.stdout, resumed.stderr
    assert status_in_api(http, "island-1") == "online"
    assert http.post("/api/v1/admin/hosts/no-such-host/pause").status_code == 404

    ledger = network.coordinator.ledger
    other = ledger.create_account("someone@example.org", 0)
    _, key = ledger.create_api_key(other.id, "k", ("read", "write"))
    with httpx.Client(base_url=network.url, headers={"Authorization": f"Bearer {key}"}) as stranger:
        assert stranger.post("/api/v1/admin/hosts/island-1/pause").status_code == 403
        assert stranger.post("/api/v1/admin/hosts/island-1/drain").status_code == 403
    assert control(network, "island-1", "status")["status"] == "online"


def test_outside_its_schedule_a_host_is_paused_and_says_why(network: EmbeddedNetwork, http: httpx.Client) -> None:
    later = datetime.now() + timedelta(hours=2)  # a schedule that opens in two hours: closed now
    hours = f"{later:%H}:00-{(later + timedelta(hours=1)):%H}:00"
    joined = network.add_host("sa-east", "island-4", args=("--schedule", hours))
    network.wait_node(joined, timeout_s=180)  # a busy machine (shared CI) takes its time
    status = eventually(lambda: socket_path(network.settings, "island-4").exists()
                        and (s := control(network, "island-4", "status"))["status"] == "paused" and s, timeout_s=60)
    assert status["by"] == "schedule" and status["schedule"] == hours and status["schedule_open"] is False
    assert f"takes work again at {later:%H}:00" in status["reason"]
    assert eventually(lambda: status_in_api(http, "island-4") == "paused")
    assert finished(http, submit(http, "wasm-hash", "sa-east"))["host_id"] != "island-4"
    resume = host_command(network, "resume", "--host-id", "island-4")
    assert resume.returncode == 1 and "outside its schedule" in resume.stderr


def test_an_admin_drain_makes_an_idle_host_leave(network: EmbeddedNetwork, http: httpx.Client) -> None:
    drained = http.post("/api/v1/admin/hosts/island-4/drain")
    assert drained.status_code == 200, drained.text
    assert drained.json()["data"]["control"]["status"] == "draining"
    host(network, "island-4").process.wait(timeout=30)
    assert host(network, "island-4").process.returncode == 0
    assert not socket_path(network.settings, "island-4").exists()


def test_a_drained_host_finishes_its_running_job_with_all_its_output_then_leaves(network: EmbeddedNetwork,
                                                                                 http: httpx.Client) -> None:
    job_id = submit(http, "test-ticks", "us-east", {})
    assert running_on(http, job_id) == "island-2"
    drained = host_command(network, "drain", "--host-id", "island-2")
    assert drained.returncode == 0 and "island-2: draining" in drained.stdout, drained.stderr
    assert finished(http, submit(http, "wasm-hash", "us-east"))["host_id"] != "island-2"
    assert host(network, "island-2").process.poll() is None  # still there: its job runs
    job = finished(http, job_id)
    assert job["status"] == "completed" and job["host_id"] == "island-2"
    assert ticks_of(http, job_id) == "tick " * TICKS
    started = time.monotonic()
    host(network, "island-2").process.wait(timeout=30)
    print(f"\nisland-2 left {time.monotonic() - started:.1f} s after its last job finished")
    assert eventually(lambda: status_in_api(http, "island-2") in ("offline", "absent"))


def test_ctrl_c_drains_and_a_second_ctrl_c_leaves_at_once(network: EmbeddedNetwork, http: httpx.Client) -> None:
    job_id = submit(http, "test-ticks", "ap-south", {})
    assert running_on(http, job_id) == "island-3"
    process = host(network, "island-3").process
    process.send_signal(signal.SIGINT)
    status = eventually(lambda: (s := control(network, "island-3", "status"))["status"] == "draining" and s)
    assert "leaving" in status["reason"] and status["leaves_by"] and status["running_jobs"] == [job_id]
    assert process.poll() is None
    process.send_signal(signal.SIGINT)
    second = time.monotonic()
    process.wait(timeout=30)
    left_s = time.monotonic() - second
    print(f"\nisland-3 left {left_s:.1f} s after the second Ctrl-C")
    job = finished(http, job_id)  # it moved to another host and ran to its end there
    assert job["status"] == "completed" and job["host_id"] != "island-3"
    assert ticks_of(http, job_id) == "tick " * TICKS
    assert not Path(socket_path(network.settings, "island-3")).exists()
