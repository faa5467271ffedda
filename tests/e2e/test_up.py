"""The network started the way `make up` starts it, driven over HTTP by the SDK and by plain httpx."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from netutil import eventually, free_port
from up_process import network_processes, start_up, still_running

from archipelag.nodes import runtime_dir
from archipelag.sdk import Client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@dataclass
class Up:
    url: str
    api_key: str
    process: subprocess.Popen[str]
    state_dir: Path
    port: int
    head_port: int


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    # On `make up`'s own database, SQLite in the state dir. The same network on PostgreSQL runs in
    # test_restart.py and test_economy_up.py; the ledger's contract tests cover both databases call by call.
    state_dir = tmp_path_factory.mktemp("up")
    port, head_port = free_port(), free_port()
    process, _ = start_up(state_dir, port, head_port, hosts=3)
    api_key = (state_dir / "api_key").read_text().strip()
    yield Up(f"http://127.0.0.1:{port}", api_key, process, state_dir, port, head_port)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)


def test_up_prints_a_working_key_and_serves_health(up: Up) -> None:
    assert up.api_key.startswith("ak_")
    assert httpx.get(f"{up.url}/health").json()["status"] == "ok"


def test_three_hosts_in_three_regions_are_online(up: Up) -> None:
    client = Client(up.url, api_key=up.api_key)
    hosts = eventually(lambda: [h for h in client.hosts() if h.status == "online"] if len(
        [h for h in client.hosts() if h.status == "online"]) == 3 else None)
    assert sorted(h.region for h in hosts) == ["ap-south", "eu-west", "us-east"]


def test_sdk_submit_get_and_stream(up: Up) -> None:
    client = Client(up.url, api_key=up.api_key)
    ref = client.submit("wasm-hash", {"text": "hello"})
    output = json.loads(client.get(ref))
    assert output["sha256"] == hashlib.sha256(b"hello").hexdigest()
    events = list(client.submit("wasm-echo-stream", {"text": "one two three", "repeat": 2}).stream())
    assert "".join(e["content"] for e in events if e["type"] == "token").split()[:3] == ["one", "two", "three"]
    assert events[-1]["type"] == "done"
    assert [e["seq"] for e in events] == list(range(len(events)))


def test_plain_httpx_create_stream_and_get(up: Up) -> None:
    headers = {"Authorization": f"Bearer {up.api_key}"}
    with httpx.Client(base_url=up.url, headers=headers, timeout=30) as http:
        created = http.post("/api/v1/jobs", json={"workload": "wasm-base64",
                                                   "input": {"text": "hi", "mode": "encode"}})
        assert created.status_code == 201, created.text
        job_id = created.json()["data"]["id"]
        with http.stream("GET", f"/api/v1/jobs/{job_id}/stream") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
        assert events[-1]["type"] == "done"
        job = http.get(f"/api/v1/jobs/{job_id}").json()["data"]
        assert job["status"] == "completed" and job["host_id"]
        assert "aGk=" in job["output"]
        listed = http.get("/api/v1/jobs", params={"limit": 1}).json()
        assert listed["meta"]["limit"] == 1 and listed["meta"]["total"] >= 1


def test_the_cli_submits_streams_and_lists(up: Up) -> None:
    env = {**os.environ, "ARCHIPELAG_URL": up.url, "ARCHIPELAG_API_KEY": up.api_key}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "archipelag", *args], capture_output=True, text=True,
                              env=env, timeout=120, check=False)

    submitted = cli("submit", "wasm-hash", "--input", '{"text": "hello"}', "--stream")
    assert submitted.returncode == 0, submitted.stderr
    assert hashlib.sha256(b"hello").hexdigest() in submitted.stdout + submitted.stderr
    listed = cli("jobs", "list", "--json")
    assert listed.returncode == 0 and "wasm-hash" in listed.stdout
    hosts = cli("hosts", "list")
    assert hosts.returncode == 0 and "island-1" in hosts.stdout
    failed = cli("submit", "no-such-workload", "--input", "{}")
    assert failed.returncode == 1 and "unknown workload" in failed.stderr and "Traceback" not in failed.stderr


def test_a_killed_up_takes_its_network_with_it_and_the_next_up_on_its_ports_stops_on_ctrl_c(
        up: Up, tmp_path: Path) -> None:
    """Last: it kills the module's `up`. The next `up`, on the same ports, is the one stopped as users stop it."""
    records = [json.loads(p.read_text()) for p in (up.state_dir / "hosts").glob("*.json")]
    assert len(records) == 3
    processes = network_processes(up.process.pid)
    assert len(processes) > 4  # the hosts' joins, five Ray nodes and their processes
    up.process.kill()
    killed = time.monotonic()
    up.process.wait(timeout=10)
    eventually(lambda: not still_running(processes), timeout_s=20)
    print(f"\nSIGKILL: {len(processes)} processes gone {time.monotonic() - killed:.1f} s after `up` was killed")
    left = runtime_dir(up.state_dir)  # only a coordinator that stops removes it (the next start replaces it)
    assert left.is_dir()
    shutil.rmtree(left)
    second, _ = start_up(tmp_path / "second", up.port, up.head_port, hosts=1)
    try:
        processes = network_processes(second.pid)
        second.send_signal(signal.SIGINT)
        stopping = time.monotonic()
        assert second.wait(timeout=60) == 0
        # Ray's own node processes run in their own sessions; none may outlive `up`.
        eventually(lambda: not still_running(processes), timeout_s=20)
        print(f"Ctrl-C: {len(processes)} processes gone {time.monotonic() - stopping:.1f} s after SIGINT")
    finally:
        second.kill()  # nothing, when the test passed; otherwise its network goes with it
