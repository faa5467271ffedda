"""The network on a real multi-node Ray cluster: real `ray start` hosts, wasmtime, the SQLite ledger, HTTP.

One network for the module (starting it costs ~15 s); the tests that kill a host run last.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import ray
from catalog_builders import network_catalog
from docker_engine import engine_lease
from hosts_cluster import hosts_driver
from netutil import api_client, eventually, network_settings

from archipelag.bridge.client import BridgedAgent
from archipelag.catalog import load_catalog
from archipelag.ids import HostId, JobId, WorkloadSlug
from archipelag.jobs import client as jobs_client
from archipelag.ledger import client as ledger_client
from archipelag.network import EmbeddedNetwork, LocalHost, start_network
from archipelag.nodes import COORDINATOR_RESOURCE, HOST_RESOURCE
from archipelag.runtimes.base import JobSpec
from archipelag.sdk import Job
from archipelag.sdk.client import verified_receipt
from archipelag.unix_sockets import answers

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.ray_driver]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNetwork]:
    root = tmp_path_factory.mktemp("network")
    settings = network_settings(root / "state", workloads_dir=network_catalog(root), host_slots=2)
    with engine_lease():  # the hosts offer containers when an engine answers (the container test skips if not)
        net = start_network(settings, hosts=3)
        yield net
        net.stop()


@pytest.fixture(scope="module")
def http(network: EmbeddedNetwork) -> Iterator[httpx.Client]:
    with api_client(network) as client:
        yield client


def run_job(http: httpx.Client, workload: str, job_input: dict[str, Any], **extra: Any) -> tuple[dict[str, Any],
                                                                                                 list[dict[str, Any]]]:
    created = http.post("/api/v1/jobs", json={"workload": workload, "input": job_input, **extra})
    assert created.status_code == 201, created.text
    job_id = created.json()["data"]["id"]
    events = stream(http, job_id)
    return http.get(f"/api/v1/jobs/{job_id}").json()["data"], events


def stream(http: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    with http.stream("GET", f"/api/v1/jobs/{job_id}/stream") as response:
        assert response.status_code == 200
        return [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]


def test_hosts_join_a_cluster_of_their_own_which_holds_none_of_the_coordinators_services(
        network: EmbeddedNetwork) -> None:
    """The coordinator's services run in a Ray cluster of their own (this test process is one of its drivers);
    hosts, each with a node of its own, join another, whose head carries nothing a job or actor may ask for."""
    services = [n for n in ray.nodes() if n["Alive"]]
    assert len(services) == 1 and COORDINATOR_RESOURCE in services[0]["Resources"]
    assert not any(HOST_RESOURCE in n["Resources"] for n in services)
    with hosts_driver(network) as driver:
        nodes = driver.nodes()
        named = driver.in_driver(ray.util.list_named_actors, True)
    head = [n for n in nodes if HOST_RESOURCE not in n["Resources"]]
    hosts = [n for n in nodes if HOST_RESOURCE in n["Resources"]]
    assert len(head) == 1 and not head[0]["Resources"].get("CPU")
    assert not any(COORDINATOR_RESOURCE in n["Resources"] for n in nodes)
    assert len(hosts) == 3
    assert sorted(n["Labels"]["archipelag.io/region"] for n in hosts) == ["ap-south", "eu-west", "us-east"]
    assert {a["name"] for a in named} == {f"host-agent:island-{i}" for i in (1, 2, 3)}, named


def test_a_task_with_a_runtime_environment_starts_rays_runtime_env_agent_on_its_node(
        network: EmbeddedNetwork) -> None:
    """Each node's runtime-env agent holds its port and nothing else (`archipelag.ray_agent`) until a task or actor
    asks for a runtime environment; then it becomes Ray's agent, and the task runs in its environment."""
    @ray.remote(num_cpus=0)
    def read_env() -> tuple[int, str | None]:
        return os.getppid(), os.environ.get("ARCHIPELAG_TEST_ENV")

    raylet, unset = ray.get(read_env.remote(), timeout=60)  # a worker's parent is its node's raylet
    assert unset is None
    agent = next(p for p in psutil.Process(raylet).children()
                 if "runtime_env/agent/main.py" in " ".join(p.cmdline()))
    assert agent.cmdline()[1:4] == ["-u", "-m", "archipelag.ray_agent"] and agent.memory_full_info().uss < 20 * 2**20
    _, value = ray.get(read_env.options(runtime_env={"env_vars": {"ARCHIPELAG_TEST_ENV": "set"}}).remote(),
                       timeout=120)
    assert value == "set"
    assert agent.is_running() and agent.cmdline()[0].startswith("ray::RuntimeEnvAgent")  # the same process, Ray's


def test_hosts_are_listed_online_with_their_capabilities(http: httpx.Client) -> None:
    hosts = http.get("/api/v1/hosts").json()["data"]
    assert {h["id"] for h in hosts} == {"island-1", "island-2", "island-3"}
    for host in hosts:
        assert host["status"] == "online"
        assert "wasm" in host["capabilities"]["runtimes"] and host["capabilities"]["cpu_cores"] >= 1
        assert host["last_heartbeat_at"]


def test_a_wasm_job_runs_end_to_end_and_its_result_is_stored(http: httpx.Client) -> None:
    job, events = run_job(http, "wasm-hash", {"text": "hello"})
    assert events[0]["type"] == "status" and events[-1]["type"] == "done"
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert job["status"] == "completed"
    assert json.loads(job["output"])["sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert job["host_id"] in {"island-1", "island-2", "island-3"}
    assert job["usage"]["credits_used"] == pytest.approx(0.001)
    assert job["started_at"] and job["completed_at"] and job["duration_ms"] is not None
    assert verified_receipt(Job.model_validate(job)).host_id == job["host_id"]  # signed by its enrolled key
    # A client that connects after the job finished still gets its events.
    assert stream(http, job["id"]) == events


def test_the_job_lands_in_the_callers_region(http: httpx.Client) -> None:
    for region, host in (("eu-west", "island-1"), ("us-east", "island-2"), ("ap-south", "island-3")):
        job, _ = run_job(http, "wasm-hash", {"text": region}, region=region)
        assert job["host_id"] == host, region


def test_events_stream_as_they_are_produced(http: httpx.Client) -> None:
    job, events = run_job(http, "wasm-echo-stream", {"text": "a b c", "repeat": 200})
    assert "".join(e["content"] for e in events if e["type"] == "token").split() == ["a", "b", "c"] * 200
    assert job["status"] == "completed"


@pytest.mark.docker
def test_container_workloads_run_through_the_jobs_api(http: httpx.Client) -> None:
    hosts = http.get("/api/v1/hosts").json()["data"]
    if not any("container" in h["capabilities"]["runtimes"] for h in hosts):
        pytest.skip("no Docker engine on this machine: the hosts offer no container runtime")
    listed = {w["slug"]: w for w in http.get("/api/v1/workloads").json()["data"]}
    assert listed["csv-stats"]["runtime_type"] == "container"
    job, events = run_job(http, "csv-stats", {"csv": "a,b\n1,x\n3,y\n"})
    assert job["status"] == "completed", job["error"]
    columns = {c["name"]: c for c in json.loads(job["output"])["columns"]}
    assert columns["a"]["mean"] == 2 and events[-1]["type"] == "done"
    bad, _ = run_job(http, "text-stats", {"text": 5})
    assert bad["status"] == "failed"
    # The host that ran it holds the image warm, says so in its heartbeat, and placement prefers it.
    eventually(lambda: "csv-stats" in {h["id"]: h for h in http.get("/api/v1/hosts").json()["data"]}[
        job["host_id"]]["warm_workloads"])
    again, _ = run_job(http, "csv-stats", {"csv": "a\n1\n"})
    assert again["host_id"] == job["host_id"]


def test_unknown_workload_is_404(http: httpx.Client) -> None:
    response = http.post("/api/v1/jobs", json={"workload": "nope", "input": {}})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_malformed_bodies_are_422_naming_the_field(http: httpx.Client) -> None:
    response = http.post("/api/v1/jobs", json={"workload": "wasm-hash", "input": "not an object"})
    assert response.status_code == 422 and "input" in response.json()["error"]["errors"]
    response = http.post("/api/v1/jobs", json={"workload": "wasm-hash", "input": {}})
    assert response.status_code == 422 and "input.text" in response.json()["error"]["errors"]
    response = http.post("/api/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422


def test_missing_or_invalid_key_is_401_and_read_only_key_cannot_submit(network: EmbeddedNetwork,
                                                                        http: httpx.Client) -> None:
    assert httpx.get(f"{network.url}/api/v1/jobs").status_code == 401
    bad = httpx.get(f"{network.url}/api/v1/jobs", headers={"Authorization": "Bearer ak_wrong"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized"
    key = http.post("/api/v1/api-keys", json={"name": "ro", "scopes": ["read"]}).json()["data"]["key"]
    read_only = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{network.url}/api/v1/jobs", headers=read_only).status_code == 200
    denied = httpx.post(f"{network.url}/api/v1/jobs", headers=read_only,
                        json={"workload": "wasm-hash", "input": {"text": "x"}})
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"


def test_a_module_that_loops_forever_fails_on_its_fuel_budget_and_the_host_keeps_serving(
        http: httpx.Client) -> None:
    job, events = run_job(http, "test-loop", {}, region="eu-west")
    assert job["status"] == "failed" and "fuel" in job["error"]
    assert events[-1]["type"] == "error" and events[-1]["code"] == "budget_exceeded"
    after, _ = run_job(http, "wasm-hash", {"text": "still here"}, region="eu-west")
    assert after["status"] == "completed" and after["host_id"] == job["host_id"]


def test_a_module_past_its_wall_clock_budget_times_out(http: httpx.Client) -> None:
    started = time.monotonic()
    job, events = run_job(http, "test-slow-loop", {})
    assert job["status"] == "timeout" and events[-1]["code"] == "timed_out"
    assert time.monotonic() - started < 10


def test_invalid_json_and_output_floods_fail_with_a_clear_reason(http: httpx.Client) -> None:
    job, _ = run_job(http, "test-invalid-json", {})
    assert job["status"] == "failed" and "not valid JSON" in job["error"]
    job, _ = run_job(http, "test-flood", {})
    assert job["status"] == "failed" and "output limit" in job["error"]


def test_a_module_that_traps_or_runs_out_of_memory_fails_and_the_host_survives(http: httpx.Client) -> None:
    for workload, reason in (("test-trap", "trapped"), ("test-grow-memory", "out of memory")):
        job, _ = run_job(http, workload, {}, region="us-east")
        assert job["status"] == "failed" and reason in job["error"], job["error"]
        after, _ = run_job(http, "wasm-hash", {"text": "alive"}, region="us-east")
        assert after["status"] == "completed" and after["host_id"] == job["host_id"]


def test_a_module_whose_hash_does_not_match_is_refused_before_it_runs(http: httpx.Client) -> None:
    job, events = run_job(http, "test-tampered", {})
    assert job["status"] == "failed" and events[-1]["code"] == "workload_refused"
    assert "SHA-256" in job["error"] and "refusing to run it" in job["error"]
    assert job["usage"]["credits_used"] == 0


def test_cancelling_a_running_job_stops_it(http: httpx.Client) -> None:
    job_id = http.post("/api/v1/jobs", json={"workload": "test-spin", "input": {}}).json()["data"]["id"]
    eventually(lambda: http.get(f"/api/v1/jobs/{job_id}").json()["data"]["status"] == "running")
    cancelled = http.delete(f"/api/v1/jobs/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["data"]["status"] == "cancelled"
    events = stream(http, job_id)
    assert events[-1]["type"] == "error" and events[-1]["code"] == "cancelled"


def test_no_host_able_to_take_the_job_is_503_with_a_reason(http: httpx.Client) -> None:
    response = http.post("/api/v1/jobs", json={"workload": "test-huge", "input": {}})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_capacity" and response.json()["error"]["message"]


def test_account_credits_and_workloads_are_listed(http: httpx.Client) -> None:
    account = http.get("/api/v1/account").json()["data"]
    assert 0 < account["credits"] < 1000
    workloads = http.get("/api/v1/workloads").json()
    slugs = {w["slug"] for w in workloads["data"]}
    assert {"wasm-hash", "wasm-base64", "wasm-json", "wasm-echo-stream"} <= slugs
    assert workloads["meta"]["total"] == len(workloads["data"])
    hash_workload = http.get("/api/v1/workloads/wasm-hash").json()["data"]
    assert hash_workload["runtime_type"] == "wasm" and isinstance(hash_workload["id"], int)


def test_the_coordinator_serves_the_signed_catalog_hosts_verify(network: EmbeddedNetwork,
                                                                 http: httpx.Client) -> None:
    from archipelag.catalog_signing import verify_catalog

    data, signature = http.get("/api/v1/catalog").content, http.get("/api/v1/catalog.sig").content
    catalog = verify_catalog(data, signature, network.settings.trusted_catalog_keys,
                             network.settings.workloads_dir)
    assert "wasm-hash" in catalog.manifests


# --- the bridge (archipelag/bridge/): the coordinator's services reach the hosts' agents only through it -------


def test_the_join_benchmark_runs_on_the_hosts_node_through_the_bridge(network: EmbeddedNetwork,
                                                                     http: httpx.Client) -> None:
    host_id = network.hosts[0].host_id

    def measured() -> dict[str, Any] | None:
        view: dict[str, Any] | None = http.get(f"/api/v1/hosts/{host_id}").json()["data"]["measured"]
        return view if view is not None and (view["benchmark"] or "benchmark_failed" in view["flags"]) else None

    view = eventually(measured, timeout_s=30)
    assert "benchmark_failed" not in view["flags"] and view["benchmark"]["cpu_single_mb_s"] > 0, view


def test_after_its_join_benchmark_a_hosts_node_keeps_no_idle_ray_worker(network: EmbeddedNetwork,
                                                                        http: httpx.Client) -> None:
    """The benchmark is the only Ray task a host runs; the workers Ray started for it end instead of sitting on the
    lender's machine (47 MiB and a core worker's polling each). The host's agent, an actor, keeps its own."""
    for host in network.hosts:
        eventually(lambda h=host: (http.get(f"/api/v1/hosts/{h.host_id}").json()["data"]["measured"] or {}
                                   ).get("benchmark"), timeout_s=30)

    def workers(host: LocalHost) -> list[str]:
        assert host.record(network.settings) and host.ray_pid is not None
        names = []
        for process in psutil.Process(host.ray_pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                names.append(process.cmdline()[0])
        return [name for name in names if name.startswith("ray::")]

    for host in network.hosts:
        eventually(lambda h=host: "ray::IDLE" not in workers(h), timeout_s=10)
        assert "ray::HostAgentActor" in workers(host)


def test_a_run_whose_caller_leaves_the_bridge_is_cancelled_on_the_host(network: EmbeddedNetwork) -> None:
    manifest = load_catalog(network.settings.workloads_dir)[WorkloadSlug("test-ticks")]
    spec = JobSpec(JobId("bridge-leaves-1"), manifest, {},
                   manifest.limits_under(network.settings.limits_for(manifest.tier)))
    assert network.coordinator.bridge is not None
    agent = BridgedAgent(HostId(network.hosts[0].host_id), network.coordinator.bridge.path)

    async def start_then_leave() -> None:
        stream = agent.run_batches(spec)
        async for batch in stream:
            if any(e.get("type") == "token" for e in batch):
                break
        assert spec.job_id in (await agent.view_async()).running
        await stream.aclose()

    asyncio.run(start_then_leave())
    eventually(lambda: spec.job_id not in asyncio.run(agent.view_async()).running, timeout_s=10)


def test_a_killed_bridge_is_started_again_and_jobs_run_through_the_new_one(network: EmbeddedNetwork,
                                                                            http: httpx.Client) -> None:
    """A job the bridge carried when it went runs again once it is back: whole, and no retry said (no host lost)."""
    bridge = network.coordinator.bridge
    assert bridge is not None and bridge.pid is not None
    created = http.post("/api/v1/jobs", json={"workload": "test-ticks", "input": {}})
    assert created.status_code == 201, created.text
    carried = created.json()["data"]["id"]
    eventually(lambda: http.get(f"/api/v1/jobs/{carried}").json()["data"]["status"] == "running", timeout_s=30)
    time.sleep(0.5)  # a few ticks into its stream
    killed = bridge.pid
    os.kill(killed, signal.SIGKILL)
    started = time.monotonic()
    eventually(lambda: bridge.pid != killed and answers(bridge.path), timeout_s=60)
    print(f"bridge back in {time.monotonic() - started:.1f} s")
    events = stream(http, carried)
    assert "".join(e["content"] for e in events if e["type"] == "token") == "tick " * 40
    assert not [e for e in events if e.get("retry")] and events[-1]["type"] == "done", events[-3:]
    job, _ = run_job(http, "wasm-echo-stream", {"text": "after the restart", "repeat": 2})
    assert job["status"] == "completed", job


def test_the_api_reaches_the_jobs_service_over_its_socket_and_again_once_ray_restarted_it(
        network: EmbeddedNetwork, http: httpx.Client) -> None:
    """The replicas call the jobs service over its Unix socket. Ray restarts the service when its process dies; the
    new one listens once started, and a request that finds nobody there starts it through Ray (while Ray restarts
    it, a request is told 503, retry shortly, as it was when the replicas called it through Ray)."""
    jobs = ray.get_actor("jobs", namespace=network.settings.ray_namespace)
    before = pid_of(jobs)
    socket_path = jobs_client.socket_path(network.settings)
    assert connected(before, socket_path), "no replica is connected to the jobs service's socket"
    ray.kill(jobs, no_restart=False)
    eventually(lambda: not psutil.pid_exists(before), timeout_s=30)
    assert not answers(socket_path)  # the dead one's file is left; nobody listens there
    job_id = submitted_once_served(http, "after the restart")
    assert stream(http, job_id)[-1]["type"] == "done"
    assert pid_of(jobs) != before
    assert answers(socket_path)


def test_the_jobs_service_reaches_the_ledger_over_its_socket_and_again_once_ray_restarted_it(
        network: EmbeddedNetwork, http: httpx.Client) -> None:
    """The jobs service makes its calls to the ledger over the ledger's Unix socket, in order. Ray restarts the
    ledger when its process dies; the jobs service's next call finds nobody there, waits for the new one through
    Ray, and connects again: a job submitted meanwhile is recorded, runs and is settled."""
    ledger = ray.get_actor(ledger_client.ACTOR_NAME, namespace=network.settings.ray_namespace)
    before = pid_of(ledger)
    socket_path = ledger_client.socket_path(network.settings)
    assert connected(before, socket_path), "the jobs service is not connected to the ledger's socket"
    ray.kill(ledger, no_restart=False)
    eventually(lambda: not psutil.pid_exists(before), timeout_s=30)
    job_id = submitted_once_served(http, "after the ledger's restart")
    assert stream(http, job_id)[-1]["type"] == "done"
    eventually(lambda: http.get(f"/api/v1/jobs/{job_id}").json()["data"]["status"] == "completed", timeout_s=30)
    after = pid_of(ledger)
    assert after != before
    assert connected(after, socket_path)


def pid_of(actor: Any) -> int:
    return int(ray.get(actor.__ray_call__.remote(lambda _: os.getpid())))


def connected(pid: int, socket_path: Path) -> bool:
    """Whether the process ``pid`` has a connection accepted on ``socket_path``."""
    return any(c.laddr == str(socket_path) for c in psutil.Process(pid).net_connections("unix"))


def submitted_once_served(http: httpx.Client, text: str) -> str:
    """A job POSTed until the API stops answering 503 (a service restarting; retry shortly, and nothing else): its
    id, once created."""
    created: list[httpx.Response] = []
    body = {"workload": "wasm-echo-stream", "input": {"text": text, "repeat": 2}}

    def served() -> bool:
        created.append(http.post("/api/v1/jobs", json=body))
        return created[-1].status_code != 503

    eventually(served, timeout_s=60)
    assert created[-1].status_code == 201, created[-1].text
    assert {r.json()["error"]["code"] for r in created[:-1]} <= {"service_unavailable"}
    return str(created[-1].json()["data"]["id"])


def test_a_host_lost_mid_job_sends_the_job_to_another_host_then_goes_offline(network: EmbeddedNetwork,
                                                                           http: httpx.Client) -> None:
    started = time.monotonic()
    created = http.post("/api/v1/jobs", json={"workload": "test-count", "input": {}, "region": "eu-west"})
    job_id = created.json()["data"]["id"]
    eventually(lambda: (j := http.get(f"/api/v1/jobs/{job_id}").json()["data"])["status"] == "running"
               and j["host_id"] == "island-1")
    network.kill_host("island-1")
    events = stream(http, job_id)
    job = http.get(f"/api/v1/jobs/{job_id}").json()["data"]
    assert job["status"] == "completed" and job["host_id"] in {"island-2", "island-3"}
    assert job["attempt"] == 2 and job["output"] == "counted"
    assert any("island-1 was lost" in e.get("message", "") for e in events)
    # The lost host is marked offline within its missed-heartbeat budget and gets no new jobs.
    interval = network.settings.heartbeat_interval_s
    eventually(lambda: {h["id"]: h["status"] for h in http.get("/api/v1/hosts").json()["data"]}["island-1"]
               == "offline", timeout_s=interval * 3 + 10)
    assert time.monotonic() - started < 60
    after, _ = run_job(http, "wasm-hash", {"text": "eu caller"}, region="eu-west")
    assert after["status"] == "completed" and after["host_id"] in {"island-2", "island-3"}
    karma = http.get("/api/v1/hosts/island-1/karma").json()["data"]
    assert "host_dropped" in [e["kind"] for e in karma["events"]]


def test_a_host_killed_while_idle_goes_offline_within_three_heartbeats(network: EmbeddedNetwork,
                                                                      http: httpx.Client) -> None:
    network.kill_host("island-3")
    killed = time.monotonic()
    interval = network.settings.heartbeat_interval_s
    eventually(lambda: {h["id"]: h["status"] for h in http.get("/api/v1/hosts").json()["data"]}["island-3"]
               == "offline", timeout_s=interval * 3 + 10, interval_s=0.05)
    # Offline once 3 heartbeats are missed (plus the beat in flight and a poll): well inside 3 s here.
    assert time.monotonic() - killed <= interval * (network.settings.missed_heartbeats_offline + 1) + 1
    job, _ = run_job(http, "wasm-hash", {"text": "ap caller"}, region="ap-south")
    assert job["status"] == "completed" and job["host_id"] == "island-2"
