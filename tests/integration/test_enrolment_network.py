"""A stranger's machine joins a real network through the pairing flow, and only as itself.

A real `archipelag host join --coordinator http://…` process, with its own state dir and none of the network's
settings (no Ray namespace, no trusted catalog key: the approval delivers them), enrols against a real network
(coordinator, one local host, the API); the owner approves its code through the API; the host joins Ray and runs a
job. A wrong code is refused; forged reports to placement (another key, another host's id, unsigned) are refused;
a revoked host is cut off at once: its running job moves to the other host and it gets no more.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from builders import a_host
from catalog_builders import network_catalog
from netutil import api_client, eventually, network_settings

from archipelag import identity
from archipelag.errors import HostRefused
from archipelag.ids import HostId
from archipelag.network import EmbeddedNetwork, start_network
from archipelag.placement.client import PlacementClient

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.ray_driver]

LENDER_REGION = "ap-south"  # the local host is in eu-west: a job asking for ap-south goes to the lender


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNetwork]:
    root = tmp_path_factory.mktemp("enrolment")
    settings = network_settings(root / "state", workloads_dir=network_catalog(root), host_slots=2)
    net = start_network(settings, hosts=1, regions=("eu-west",))
    yield net
    net.stop()


@pytest.fixture(scope="module")
def http(network: EmbeddedNetwork) -> Iterator[httpx.Client]:
    with api_client(network) as client:
        yield client


@pytest.fixture(scope="module")
def lender(network: EmbeddedNetwork, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The `host join --coordinator http://…` process, started; its pairing code read from what it prints."""
    state = tmp_path_factory.mktemp("lender")
    env = {k: v for k, v in {**os.environ, **network.settings.to_env()}.items()
           if k not in ("ARCHIPELAG_RAY_NAMESPACE", "ARCHIPELAG_TRUSTED_CATALOG_KEYS", "ARCHIPELAG_DATABASE_URL")}
    env["ARCHIPELAG_STATE_DIR"] = str(state)
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "archipelag", "host", "join", "--coordinator", network.url, "--region", LENDER_REGION,
         "--name", "attic", "--node-ip", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, text=True,
        start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()  # type: ignore[union-attr]
    code = eventually(lambda: next((line.split(":", 1)[1].strip() for line in lines
                                    if line.startswith("pairing code:")), None), timeout_s=60)
    try:
        yield {"process": process, "code": code, "lines": lines, "state": state, "started": started}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def lender_id(lender: dict[str, Any]) -> HostId:
    key = identity.load_or_create_key(identity.machine_key_path(lender["state"]))
    return identity.host_id_for(identity.public_hex(key))


def job_on(http: httpx.Client, workload: str, job_input: dict[str, Any], region: str) -> dict[str, Any]:
    created = http.post("/api/v1/jobs", json={"workload": workload, "input": job_input, "region": region})
    assert created.status_code == 201, created.text
    job_id = created.json()["data"]["id"]
    return dict(eventually(lambda: (j := http.get(f"/api/v1/jobs/{job_id}").json()["data"])["status"]
                           in ("completed", "failed", "cancelled", "timeout") and j, timeout_s=60))


def test_a_wrong_code_is_refused(http: httpx.Client, lender: dict[str, Any]) -> None:
    wrong = "ACDEFG" if lender["code"] != "ACDEFG" else "ACDEFH"
    refused = http.post("/api/v1/hosts/approve", json={"code": wrong})
    assert refused.status_code == 404 and "pairing code" in refused.text


def test_the_approved_host_joins_and_runs_a_job(network: EmbeddedNetwork, http: httpx.Client,
                                                lender: dict[str, Any]) -> None:
    assert lender["process"].poll() is None, "".join(lender["lines"])
    approved = http.post("/api/v1/hosts/approve", json={"code": lender["code"]})
    assert approved.status_code == 200, approved.text
    host_id = approved.json()["data"]["id"]
    assert host_id == lender_id(lender)
    online = eventually(lambda: any(h["id"] == host_id and h["status"] == "online"
                                    for h in http.get("/api/v1/hosts").json()["data"]), timeout_s=120)
    assert online, "".join(lender["lines"])
    job = job_on(http, "wasm-hash", {"text": "hello"}, LENDER_REGION)
    assert job["status"] == "completed" and job["host_id"] == host_id, job
    lender["first_job_s"] = time.monotonic() - lender["started"]
    mine = http.get("/api/v1/account/hosts").json()["data"]
    assert host_id in {h["id"] for h in mine}
    assert (lender["state"] / "host.key").stat().st_mode & 0o777 == 0o600
    print(f"\nhost join → approved → first job: {lender['first_job_s']:.1f} s (includes the approval)")


def test_forged_reports_are_refused_by_placement(network: EmbeddedNetwork, lender: dict[str, Any]) -> None:
    placement = PlacementClient.connect(network.settings)
    victim = lender_id(lender)
    stranger = identity.generate_key()
    metrics = {"active_jobs": 0, "free_ram_mb": 10**6}
    with pytest.raises(HostRefused, match="enrolled key"):  # another key, the lender's id
        placement.beat(victim, metrics, identity.sign(stranger, "heartbeat", victim, time.time(), metrics))
    island_key = identity.host_key(network.settings.state_dir, "island-1")  # a real host's key, another's id
    fake = a_host(victim, karma=1.0, last_heartbeat_at=time.time())
    with pytest.raises(HostRefused, match="enrolled key"):
        placement.register(fake, identity.sign(island_key, "register", victim, time.time(), fake))
    with pytest.raises(HostRefused, match="signed"):
        placement.register(a_host("h-invented", last_heartbeat_at=time.time()))
    with pytest.raises(HostRefused, match="not enrolled"):
        sneaky = a_host("h-invented", last_heartbeat_at=time.time())
        placement.register(sneaky, identity.sign(stranger, "register", HostId("h-invented"), time.time(), sneaky))
    assert "h-invented" not in {h.host_id for h in placement.hosts()}


def test_a_revoked_host_is_cut_off_and_its_running_job_moves(network: EmbeddedNetwork, http: httpx.Client,
                                                             lender: dict[str, Any]) -> None:
    host_id = lender_id(lender)
    created = http.post("/api/v1/jobs", json={"workload": "test-ticks", "input": {}, "region": LENDER_REGION})
    assert created.status_code == 201, created.text
    job_id = created.json()["data"]["id"]
    eventually(lambda: http.get(f"/api/v1/jobs/{job_id}").json()["data"]["host_id"] == host_id, timeout_s=30)
    revoked = http.post(f"/api/v1/hosts/{host_id}/revoke", json={"reason": "test"})
    assert revoked.status_code == 200 and revoked.json()["data"]["revoked"], revoked.text
    assert host_id not in {h["id"] for h in http.get("/api/v1/hosts").json()["data"]
                           if h["status"] == "online"}
    moved = eventually(lambda: (j := http.get(f"/api/v1/jobs/{job_id}").json()["data"])["status"]
                       in ("completed", "failed", "cancelled", "timeout") and j, timeout_s=60)
    assert moved["status"] == "completed" and moved["host_id"] == "island-1", moved
    again = job_on(http, "wasm-hash", {"text": "after"}, LENDER_REGION)
    assert again["host_id"] == "island-1"
    key = identity.load_or_create_key(identity.machine_key_path(lender["state"]))
    metrics: dict[str, Any] = {"active_jobs": 0}
    placement = PlacementClient.connect(network.settings)
    snapshot = a_host(host_id, last_heartbeat_at=time.time())
    with pytest.raises(HostRefused, match="revoked"):  # its own key, its own id: still refused
        placement.register(snapshot, identity.sign(key, "register", host_id, time.time(), snapshot))
    assert not placement.beat(host_id, metrics, identity.sign(key, "heartbeat", host_id, time.time(), metrics))
