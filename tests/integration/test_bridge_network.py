"""The bridge on a real network (bridge/): the coordinator's services reach the host's agent only through it (jobs,
the join benchmark), a bridge that dies is started again, and a run whose caller leaves is cancelled on the host."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from catalog_builders import network_catalog
from netutil import api_client, eventually, network_settings

from archipelag.bridge.client import BridgedAgent
from archipelag.catalog import load_catalog
from archipelag.ids import HostId, JobId, WorkloadSlug
from archipelag.network import EmbeddedNetwork, start_network
from archipelag.runtimes.base import JobSpec
from archipelag.unix_sockets import answers

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.ray_driver]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNetwork]:
    root = tmp_path_factory.mktemp("bridge")
    net = start_network(network_settings(root / "state", workloads_dir=network_catalog(root)), hosts=1)
    yield net
    net.stop()


@pytest.fixture(scope="module")
def http(network: EmbeddedNetwork) -> Iterator[httpx.Client]:
    with api_client(network) as client:
        yield client


def host_of(network: EmbeddedNetwork) -> BridgedAgent:
    return BridgedAgent(HostId(network.hosts[0].host_id), network.coordinator.bridge.path)  # type: ignore[union-attr]


def run_to_the_end(http: httpx.Client, text: str) -> dict[str, object]:
    created = http.post("/api/v1/jobs", json={"workload": "wasm-echo-stream", "input": {"text": text, "repeat": 2}})
    assert created.status_code == 201, created.text
    job_id = created.json()["data"]["id"]
    return eventually(lambda: (job := http.get(f"/api/v1/jobs/{job_id}").json()["data"])["status"] in
                      ("completed", "failed", "cancelled", "timed_out") and job, timeout_s=60)


def test_a_job_runs_through_the_bridge(network: EmbeddedNetwork, http: httpx.Client) -> None:
    job = run_to_the_end(http, "over the bridge")
    assert job["status"] == "completed", job


def test_the_join_benchmark_runs_on_the_hosts_node_through_the_bridge(network: EmbeddedNetwork,
                                                                     http: httpx.Client) -> None:
    host_id = network.hosts[0].host_id

    def measured() -> dict[str, Any] | None:
        view: dict[str, Any] | None = http.get(f"/api/v1/hosts/{host_id}").json()["data"]["measured"]
        return view if view is not None and (view["benchmark"] or "benchmark_failed" in view["flags"]) else None

    view = eventually(measured, timeout_s=30)
    assert "benchmark_failed" not in view["flags"] and view["benchmark"]["cpu_single_mb_s"] > 0, view


def test_a_run_whose_caller_leaves_is_cancelled_on_the_host(network: EmbeddedNetwork) -> None:
    manifest = load_catalog(network.settings.workloads_dir)[WorkloadSlug("test-ticks")]
    spec = JobSpec(JobId("bridge-leaves-1"), manifest, {},
                   manifest.limits_under(network.settings.limits_for(manifest.tier)))
    agent = host_of(network)

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
    bridge = network.coordinator.bridge
    assert bridge is not None and bridge.pid is not None
    killed = bridge.pid
    os.kill(killed, signal.SIGKILL)
    started = time.monotonic()
    eventually(lambda: bridge.pid != killed and answers(bridge.path), timeout_s=60)
    print(f"bridge back in {time.monotonic() - started:.1f} s")
    job = run_to_the_end(http, "after the restart")
    assert job["status"] == "completed", job
