"""`archipelag up` and `archipelag host join` run as a user runs them, as processes of the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest


def up_env(state_dir: Path, head_port: int, **settings: str) -> dict[str, str]:
    """The environment `archipelag up` and `archipelag host join` get: a state dir and ports of their own, and
    ``settings`` as ARCHIPELAG_* variables (e.g. ``DATABASE_URL``)."""
    env = {**os.environ, "ARCHIPELAG_STATE_DIR": str(state_dir), "ARCHIPELAG_RAY_HEAD_PORT": str(head_port),
           "ARCHIPELAG_RAY_TEMP_DIR": os.environ["RAY_TMPDIR"],  # this pytest process's (conftest)
           "ARCHIPELAG_HEARTBEAT_INTERVAL_S": "1", "ARCHIPELAG_RAY_AUTH": "token", "PYTHONUNBUFFERED": "1",
           "ARCHIPELAG_RATE_LIMIT_PER_MIN": "6000",  # the real limiter, at a pace tests' polling does not reach
           **{f"ARCHIPELAG_{name.upper()}": value for name, value in settings.items()}}
    env.pop("RAY_AUTH_MODE", None)  # `up` decides: token auth, its own token file
    return env


def start_up(state_dir: Path, port: int, head_port: int, hosts: int,
             **settings: str) -> tuple[subprocess.Popen[str], list[str]]:
    """`archipelag up` as a user runs it, read until it says it is up (it is stopped if it never does)."""
    env = up_env(state_dir, head_port, **settings)
    process = subprocess.Popen([sys.executable, "-m", "archipelag", "up", "--hosts", str(hosts), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output: list[str] = []
    deadline = time.monotonic() + 240
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line)
        if "Archipelag is up" in line or time.monotonic() > deadline:
            break
    if not any("Archipelag is up" in line for line in output):
        process.send_signal(signal.SIGINT)  # stop what it started before failing
        rest, _ = process.communicate(timeout=120)
        pytest.fail("archipelag up did not come up:\n" + "".join(output) + rest)
    # Keep reading its output so a full pipe can never block it.
    threading.Thread(target=lambda: output.extend(process.stdout or ()), daemon=True).start()
    return process, output


def network_processes(up_pid: int) -> list[psutil.Process]:
    """Every process `up` started: its descendants, and the sessions Ray's nodes run in (Ray reparents some)."""
    root = psutil.Process(up_pid)
    found = {p.pid: p for p in root.children(recursive=True)}
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) in found:
                found.setdefault(proc.pid, proc)
        except OSError:
            continue
    return list(found.values())


def still_running(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
