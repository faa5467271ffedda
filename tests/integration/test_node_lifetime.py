"""Nodes live as long as their owner: a stopped node leaves nothing behind, a node whose owner is killed
goes with it, a host whose node dies as it starts starts it again, and a host whose coordinator's head is killed
and started again joins it by itself."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import ray
from netutil import enrol_local_host, eventually, network_settings
from up_process import network_processes, still_running

from archipelag import ray_agent
from archipelag.bridge.client import BridgedAgent, socket_path
from archipelag.catalog_signing import ensure_dev_signed_catalog
from archipelag.coordinator import Coordinator, prepare_ray_env, start_coordinator
from archipelag.errors import ArchipelagError
from archipelag.ids import HostId
from archipelag.nodes import kill_processes, start_head
from archipelag.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OWNER = """
import sys, time
from pathlib import Path
from archipelag.nodes import start_head
head = start_head(int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
head.wait_started()
print(head.pid, flush=True)
time.sleep(600)
"""


def gone(processes: list[psutil.Process]) -> bool:
    return not still_running(processes)


def node_processes(root_pid: int) -> list[psutil.Process]:
    """A process, its descendants, and everything in the sessions of those that lead one (Ray's nodes)."""
    return [psutil.Process(root_pid), *network_processes(root_pid)]


def test_a_node_goes_with_the_process_that_started_it_even_when_that_is_killed(tmp_path: Path) -> None:
    settings = network_settings(tmp_path / "state")
    env = {**os.environ, **prepare_ray_env(settings)}
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(settings.ray_head_port), str(settings.ray_temp_dir),
                              str(tmp_path / "logs")], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert owner.stdout is not None
        head_pid = int(owner.stdout.readline())
        processes = [p for p in node_processes(owner.pid) if p.pid != owner.pid]
        assert any(p.pid == head_pid for p in processes) and len(processes) > 2
        owner.kill()
        killed = time.monotonic()
        eventually(lambda: gone(processes), timeout_s=15)
        print(f"\nthe node was gone {time.monotonic() - killed:.1f} s after its owner was killed")
    finally:
        owner.kill()
        owner.wait()


def test_a_node_runs_neither_rays_dashboard_nor_its_agents_and_once_stopped_leaves_no_process(tmp_path: Path) -> None:
    settings = network_settings(tmp_path / "state")
    head = start_head(settings.ray_head_port, settings.ray_temp_dir, tmp_path / "logs", env=prepare_ray_env(settings))
    try:
        head.wait_started()
        processes = node_processes(head.pid)
        commands = {p.pid: " ".join(p.cmdline()) for p in processes}
        assert not any("dashboard/dashboard.py" in command for command in commands.values())
        agents = {p.cmdline()[4]: p for p in processes if p.cmdline()[1:4] == ["-u", "-m", "archipelag.ray_agent"]}
        assert sorted(agents) == sorted(str(Path(ray.__file__).parent / script) for script in (
            "dashboard/agent.py", "_private/runtime_env/agent/main.py"))  # both of the raylet's agents are ours
        assert not any("_raylet" in (m.path or "") for a in agents.values() for m in a.memory_maps())  # no Ray
        raylet = next(c for c in map(psutil.Process.cmdline, processes) if c[0].endswith("/raylet"))
        session = Path(next(a for a in raylet if a.startswith("--session_dir=")).split("=", 1)[1])  # this head's
        for name in ray_agent.NO_PORTS:  # the ports the raylet read: the head is up
            assert [p.read_text() for p in session.glob(f"{name}_*")] == ["-1"]
        assert [int(p.read_text()) > 0 for p in session.glob(f"{ray_agent.RUNTIME_ENV_PORT}_*")] == [True]
        started = time.monotonic()
        head.stop()
        print(f"\nthe head stopped in {time.monotonic() - started:.1f} s")
        assert gone(processes)
        assert head.watchdog is not None and head.watchdog.poll() is not None
    finally:
        head.stop()


@pytest.fixture
def head_settings(tmp_path: Path) -> Iterator[Settings]:
    """A network's settings with the signed catalog its hosts' agents verify at start."""
    settings = network_settings(tmp_path / "state")
    _, key = ensure_dev_signed_catalog(settings)
    settings = settings.model_copy(update={"trusted_catalog_keys": [*settings.trusted_catalog_keys, key]})
    prepare_ray_env(settings)
    enrol_local_host(settings, "islet")  # placement takes only enrolled hosts' signed reports
    yield settings
    ray.shutdown()


def crash(coordinator: Coordinator) -> None:
    """The coordinator's heads vanish as a crashed machine's would; then what is left of it stops."""
    ray.shutdown()
    for head in (coordinator.head, coordinator.hosts_head):
        kill_processes(head.processes())
        head.stop(grace_s=0)
    coordinator.stop()


def agent_answers(settings: Settings, host_id: HostId) -> bool:
    """Whether the host's agent answers the coordinator (through the bridge, as the coordinator's services ask)."""
    try:
        asyncio.run(asyncio.wait_for(BridgedAgent(host_id, socket_path(settings)).view_async(), 2))
        return True
    except (ArchipelagError, TimeoutError):
        return False


def host_join(settings: Settings, host_id: HostId, join_log: Path) -> subprocess.Popen[bytes]:
    """`archipelag host join` of one core against the network of ``settings``, its output in ``join_log``."""
    with join_log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "archipelag", "host", "join", "--coordinator",
             f"127.0.0.1:{settings.ray_head_port}", "--region", "eu-west", "--host-id", host_id, "--node-ip",
             "127.0.0.1", "--max-cores", "1"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **settings.to_env()})


def leave(host: subprocess.Popen[bytes]) -> None:
    host.send_signal(signal.SIGINT)
    try:
        host.wait(timeout=30)
    except subprocess.TimeoutExpired:
        host.kill()


def raylet_of(join_pid: int) -> psutil.Process | None:
    for proc in network_processes(join_pid):
        try:
            if proc.name() == "raylet":
                return proc
        except psutil.Error:  # one that ended meanwhile
            continue
    return None


@pytest.mark.ray_driver
def test_a_host_starts_its_node_again_when_its_raylet_dies_at_start_or_later_and_rejoins_a_restarted_head(
        head_settings: Settings, tmp_path: Path) -> None:
    """Its first raylet is killed as it starts, as a raylet on a loaded machine aborts when its dashboard agent is
    slow to say its port: before the node has registered, so `ray start` itself would wait 30 s more before it
    gives up. Then its running raylet is killed: the host rejoins at its first try, on its new node, though the
    cluster still counts the old one (and the agent there) alive until its health checks fail (~15 s). Then its
    coordinator's heads are killed and started again. One test, as each part needs the same coordinator and host
    to start (half a minute here)."""
    settings, host_id, log_dir, join_log = head_settings, HostId("islet"), tmp_path / "logs", tmp_path / "join.log"
    coordinator = start_coordinator(settings, log_dir)  # its API: a host's agent reports there
    host = host_join(settings, host_id, join_log)
    try:
        raylet = eventually(lambda: raylet_of(host.pid), timeout_s=60, interval_s=0.02)
        raylet.kill()
        killed = time.monotonic()
        eventually(lambda: agent_answers(settings, host_id), timeout_s=90, interval_s=0.5)
        print(f"\nthe host answered {time.monotonic() - killed:.1f} s after its first raylet was killed")
        said = join_log.read_bytes()
        assert b"its Ray node failed to start (its raylet exited" in said and b"(try 2 of 3)" in said

        raylet = raylet_of(host.pid)
        assert raylet is not None
        raylet.kill()
        killed = time.monotonic()
        eventually(lambda: b"rejoined" in join_log.read_bytes(), timeout_s=60)
        eventually(lambda: agent_answers(settings, host_id), timeout_s=30, interval_s=0.5)
        print(f"the host answered {time.monotonic() - killed:.1f} s after its running raylet was killed")
        said = join_log.read_bytes()
        assert b"(try 1)" in said and b"rejoin try" not in said  # no try failed on the old node's agent

        crash(coordinator)
        killed = time.monotonic()
        # Its node goes once its raylet gives up on the GCS (`ray start --head` on this machine refuses to
        # start while a raylet here still points at the old head's address).
        eventually(lambda: b"its Ray node exited" in join_log.read_bytes(), timeout_s=60)
        print(f"the host's node exited {time.monotonic() - killed:.1f} s after its head was killed")
        coordinator = start_coordinator(settings, log_dir)
        eventually(lambda: agent_answers(settings, host_id), timeout_s=120, interval_s=0.5)
        print(f"the host answered again {time.monotonic() - killed:.1f} s after its head was killed")
        eventually(lambda: join_log.read_bytes().count(b"rejoined") == 2)
        assert host.poll() is None
    finally:
        leave(host)
        coordinator.stop()
