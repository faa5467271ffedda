"""A coordinator SIGKILLed with jobs queued and running, then started again, as a deployment runs it: the
coordinator (`archipelag up --hosts 0`: a head and the API) and a host (`archipelag host join`) are separate
processes. The host's node dies with the head and rejoins; the queued job runs, the running one runs again,
the SDK's stream carries on across the restart without a repeat or a gap, and no reservation stays held."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from catalog_builders import network_catalog
from ledger_contract import network_database, postgres_url  # noqa: F401 - a fixture
from netutil import enrol_local_host, eventually, free_port
from up_process import network_processes, start_up, still_running, up_env

from archipelag.catalog_signing import ensure_dev_signed_catalog
from archipelag.sdk import Client
from archipelag.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.beside_ray]

TICKS = 40


# On PostgreSQL, where a deployment that restarts its coordinator keeps its ledger. Most other e2e tests run `up`
# on SQLite, and tests/integration/test_jobs_core.py restarts the jobs service over a SQLite ledger.
@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with network_database(request) as url:
        yield url


def test_a_coordinator_killed_with_jobs_queued_and_running_resumes_them_when_it_starts_again(
        tmp_path: Path, database_url: str) -> None:
    state, workloads = tmp_path / "state", network_catalog(tmp_path)
    port, head_port = free_port(), free_port()
    _, catalog_key = ensure_dev_signed_catalog(Settings(state_dir=state, workloads_dir=workloads))
    settings = {"workloads_dir": str(workloads), "host_slots": "1", "trusted_catalog_keys": json.dumps([catalog_key]),
                "database_url": database_url}
    coordinator, _ = start_up(state, port, head_port, hosts=0, **settings)
    enrol_local_host(Settings(state_dir=state, database_url=database_url), "island-r")  # as `up` does its own
    host_log = (tmp_path / "host.log").open("wb")
    host = subprocess.Popen(
        [sys.executable, "-m", "archipelag", "host", "join", "--coordinator", f"127.0.0.1:{head_port}",
         "--region", "eu-west", "--host-id", "island-r", "--node-ip", "127.0.0.1"],
        env=up_env(state, head_port, api_port=str(port), **settings), stdout=host_log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True)
    restarted: subprocess.Popen[str] | None = None
    try:
        client = Client(f"http://127.0.0.1:{port}", api_key=(state / "api_key").read_text().strip(), timeout_s=30)
        eventually(lambda: [h for h in client.hosts() if h.status == "online"], timeout_s=120)
        credits_before = client.account().credits
        running = client.submit("test-ticks", {})
        queued = client.submit("wasm-hash", {"text": "after the restart"})  # one slot: it waits
        events: list[dict[str, Any]] = []
        reader = threading.Thread(target=lambda: events.extend(running.stream()), daemon=True)
        reader.start()
        eventually(lambda: sum(e["type"] == "token" for e in events) >= 5, timeout_s=60)
        assert client.get_job(queued.job_id).status == "queued"

        doomed = network_processes(coordinator.pid)
        killed_at = time.time()
        coordinator.kill()  # SIGKILL: its head goes with it, as on a machine that lost power
        eventually(lambda: not still_running(doomed), timeout_s=20)
        ray_pid = json.loads((state / "hosts" / "island-r.json").read_text())["ray_pid"]
        eventually(lambda: not psutil.pid_exists(ray_pid) or psutil.Process(ray_pid).status() == "zombie",
                   timeout_s=30)  # the host's node notices its head is gone
        restarted, _ = start_up(state, port, head_port, hosts=0, **settings)
        restarted_at = time.time()

        reader.join(timeout=180)
        assert not reader.is_alive(), "the SDK's stream did not resume across the restart"
        assert [e["seq"] for e in events] == list(range(len(events)))
        assert "".join(e["content"] for e in events if e["type"] == "token") == "tick " * TICKS
        assert events[-1]["type"] == "done"
        done = client.wait_job(running.job_id, timeout=60)
        assert done.status == "completed" and done.attempt == 2 and done.output == "tick " * TICKS
        after = client.wait_job(queued.job_id, timeout=60)
        assert after.status == "completed" and after.host_id == "island-r"
        assert done.completed_at is not None and after.completed_at is not None
        print(f"coordinator SIGKILL → restarted: {restarted_at - killed_at:.1f} s; → the queued job done: "
              f"{after.completed_at.timestamp() - killed_at:.1f} s; → the running one done again: "
              f"{done.completed_at.timestamp() - killed_at:.1f} s")
        jobs = client.list_jobs(limit=10).items
        assert all(job.status == "completed" for job in jobs)
        spent = sum(job.usage.credits_used for job in jobs)
        assert client.account().credits == pytest.approx(credits_before - spent)  # nothing stays reserved
    finally:
        for process in (restarted, host, coordinator):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in (restarted, host, coordinator):
            if process is not None:
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
        host_log.close()
