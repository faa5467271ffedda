"""Each node's agents (`archipelag.ray_agent`): the port files Ray's raylet waits for, written without importing Ray;
the runtime-env agent's port held until a first request, which starts Ray's agent in its place; and both end with
their raylet. `test_node_lifetime` runs them under a real raylet, `test_network` asks one for a runtime
environment."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import ray._raylet

from archipelag import ray_agent

NODE_ID = "ab" * 28


def agent_command(session: Path) -> list[str]:
    script = str(Path(ray._raylet.__file__).parent / "dashboard" / "agent.py")
    return [sys.executable, "-u", "-m", "archipelag.ray_agent", script, f"--node-id={NODE_ID}",
            f"--session-dir={session}", "--minimal"]


def wait_for(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_port_files_are_the_ones_ray_waits_for() -> None:
    assert ray_agent.NO_PORTS == (ray._raylet.METRICS_AGENT_PORT_NAME, ray._raylet.METRICS_EXPORT_PORT_NAME,
                                  ray._raylet.DASHBOARD_AGENT_LISTEN_PORT_NAME)
    assert ray_agent.RUNTIME_ENV_PORT == ray._raylet.RUNTIME_ENV_AGENT_PORT_NAME
    assert (Path(ray._raylet.__file__).parent / "_private" / ray_agent.RUNTIME_ENV_AGENT_SCRIPT).is_file()
    for name in (*ray_agent.NO_PORTS, ray_agent.RUNTIME_ENV_PORT):
        assert ray_agent.port_file(Path("/s"), NODE_ID, name).name == ray._raylet.get_port_filename(NODE_ID, name)


def test_the_agent_writes_no_ports_without_importing_ray_and_ends_on_sigterm(tmp_path: Path) -> None:
    agent = subprocess.Popen(agent_command(tmp_path), env={**os.environ, "RAY_RAYLET_PID": str(os.getpid())})
    try:
        files = [ray_agent.port_file(tmp_path, NODE_ID, name) for name in ray_agent.NO_PORTS]
        wait_for(lambda: all(f.exists() for f in files))
        assert [f.read_text() for f in files] == ["-1"] * 3
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in files)  # no partial left
        maps = [m.path for m in psutil.Process(agent.pid).memory_maps()]
        assert not any("_raylet" in path or "site-packages" in path for path in maps), maps
        assert agent.poll() is None  # it waits, as the raylet expects of its agent
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == -signal.SIGTERM
    finally:
        agent.kill()
        agent.wait()


RAYLET = """
import os, subprocess, sys, time
agent = subprocess.Popen(sys.argv[1:], env={**os.environ, "RAY_RAYLET_PID": str(os.getpid())})
print(agent.pid, flush=True)
time.sleep(600)
"""


def test_the_agent_ends_when_its_raylet_ends(tmp_path: Path) -> None:
    """Its parent, standing in for the raylet, starts it and is killed: the agent follows."""
    parent = subprocess.Popen([sys.executable, "-c", RAYLET, *agent_command(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    assert parent.stdout is not None
    agent = psutil.Process(int(parent.stdout.readline()))
    try:
        wait_for(lambda: ray_agent.port_file(tmp_path, NODE_ID, ray_agent.NO_PORTS[-1]).exists())
        parent.kill()
        parent.wait()
        wait_for(lambda: not agent.is_running() or agent.status() == psutil.STATUS_ZOMBIE, timeout_s=10)
    finally:
        if agent.is_running():
            agent.kill()


RAYLET_THREAD = """
import os, pathlib, subprocess, sys, threading, time
started = []

def start():  # and stay until the agent has written its ports (so it listens for its parent's end by then)
    started.append(subprocess.Popen(sys.argv[2:], env={**os.environ, "RAY_RAYLET_PID": str(os.getpid())}))
    while not pathlib.Path(sys.argv[1]).exists():
        time.sleep(0.02)

thread = threading.Thread(target=start)
thread.start()
thread.join()  # the thread that started the agent has ended; the process goes on
print(started[0].pid, flush=True)
time.sleep(600)
"""


def test_the_agent_outlives_the_raylet_thread_that_started_it(tmp_path: Path) -> None:
    """The kernel's parent-death signal comes when the parent *thread* ends: that is not the raylet's end."""
    written = ray_agent.port_file(tmp_path, NODE_ID, ray_agent.NO_PORTS[-1])
    parent = subprocess.Popen([sys.executable, "-c", RAYLET_THREAD, str(written), *agent_command(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    agent = psutil.Process(int(parent.stdout.readline()))
    try:
        time.sleep(1)
        assert agent.status() != psutil.STATUS_ZOMBIE and agent.is_running()
        parent.kill()
        parent.wait()
        wait_for(lambda: not agent.is_running() or agent.status() == psutil.STATUS_ZOMBIE, timeout_s=10)
    finally:
        parent.kill()
        if agent.is_running():
            agent.kill()


def test_an_agent_whose_raylet_is_already_gone_writes_nothing_and_ends(tmp_path: Path) -> None:
    env = {**os.environ, "RAY_RAYLET_PID": "1"}  # not its parent
    assert subprocess.run(agent_command(tmp_path), env=env, timeout=30, check=False).returncode == 0
    assert list(tmp_path.iterdir()) == []


def test_the_runtime_env_agent_holds_its_port_until_a_first_request_then_becomes_rays_agent(tmp_path: Path) -> None:
    """Ray's agent stands here as a script at the same relative path that records how it was started."""
    script = tmp_path / "ray" / "_private" / ray_agent.RUNTIME_ENV_AGENT_SCRIPT
    script.parent.mkdir(parents=True)
    started = tmp_path / "started.json"
    script.write_text(f"import json, os, sys\njson.dump([os.getpid(), sys.argv], open({str(started)!r}, 'w'))\n")
    session = tmp_path / "session"
    session.mkdir()
    args = [f"--node-id={NODE_ID}", "--node-ip-address=127.0.0.1", "--runtime-env-agent-port=0",
            f"--session-dir={session}", "--log-dir=/nowhere"]
    env = {**os.environ, "RAY_RAYLET_PID": str(os.getpid())}
    agent = subprocess.Popen([sys.executable, "-u", "-m", "archipelag.ray_agent", str(script), *args], env=env)
    try:
        port_file = ray_agent.port_file(session, NODE_ID, ray_agent.RUNTIME_ENV_PORT)
        wait_for(port_file.exists)
        port = int(port_file.read_text())
        assert port > 0
        maps = [m.path for m in psutil.Process(agent.pid).memory_maps()]
        assert not any("_raylet" in path or "site-packages" in path for path in maps), maps
        time.sleep(0.5)
        assert agent.poll() is None and not started.exists()  # nothing asked: it waits
        with socket.create_connection(("127.0.0.1", port), timeout=10):  # the raylet's first request
            pass
        assert agent.wait(timeout=20) == 0
        pid, argv = json.loads(started.read_text())
        assert pid == agent.pid  # the same process, so the raylet's watch on it holds
        assert argv == [str(script), *[f"--runtime-env-agent-port={port}" if a.endswith("-port=0") else a
                                       for a in args]]
    finally:
        agent.kill()
        agent.wait()
