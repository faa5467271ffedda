"""`archipelag up` as a user starts it: how long until its first answer, and what each host holds in memory, beside
Ray alone doing the same on the same machine in the same run.

- Time from launching `archipelag up --hosts 3` to its first finished job (wasm-hash through the API, with the key
  `up` saved), beside the baseline: the same five Ray nodes (two heads, three hosts, the same flags) started with
  Ray's own `ray start`, and a first task run on a host's node.
- One host's resident memory in that network (USS: what the machine gets back when the host stops), process by
  process, beside one node of the baseline: what a host costs its owner's machine over what Ray's node itself does.

The set-up a fresh machine needs before this (the virtualenv, the llama.cpp wheel, images) is timed by CI's
fresh clone, not here (README, Tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import httpx
import psutil

from archipelag.nodes import session_members
from bench.bench_network import _free_port
from bench.cpu import role_of

Row = tuple[str, str, str]
HOSTS = 3
READY = b"Ray runtime started"
RAY_START = ("python -c … start", "ray.scripts.scripts start")  # ours (archipelag.nodes), Ray's own


def _mib(processes: Iterable[psutil.Process]) -> dict[str, float]:
    """USS in MiB by role (processes of one role summed)."""
    by_role: dict[str, float] = defaultdict(float)
    for process in processes:
        try:
            by_role[_role(process)] += process.memory_full_info().uss / 2**20
        except psutil.Error:
            continue
    return dict(by_role)


def _role(process: psutil.Process) -> str:
    role = role_of(process)
    if role in RAY_START:
        return "ray start"
    if role == "IDLE":
        return "idle Ray workers"
    if role.startswith("python -c … ") and role.rsplit(" ", 1)[-1].isdigit():
        return "the node's watchdog"  # archipelag.nodes: it takes the node down with the process that started it
    return role


def _tree(root: psutil.Process) -> list[psutil.Process]:
    """``root``, its descendants, and the members of every session one of them leads (Ray's nodes run in sessions
    of their own, and Ray reparents some of their processes)."""
    found = {root.pid: root}
    for process in root.children(recursive=True):
        found.setdefault(process.pid, process)
    for pid in list(found):
        for member in session_members(pid):
            found.setdefault(member.pid, member)
    return list(found.values())


def _settled(host: psutil.Process, deadline: float) -> None:
    """Wait until the host's join benchmark has run and its worker has ended (nodes.NODE_ENV): it can still be
    running when the first job is answered, and what is measured is a host that lends, not one that joins."""
    while time.monotonic() < deadline:
        roles = set()
        for process in _tree(host):
            with contextlib.suppress(psutil.Error):  # one that ends meanwhile
                roles.add(role_of(process))
        if not {"_measure", "IDLE"} & roles:
            return
        time.sleep(0.5)


def _first_answer(url: str, key: str, deadline: float) -> None:
    """Submit wasm-hash until a host takes it (503 while none is online yet), and read its stream to its end."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        while True:
            created = http.post("/api/v1/jobs", json={"workload": "wasm-hash", "input": {"text": "first"}})
            if created.status_code == 201:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"up never took a job: {created.status_code} {created.text}")
            time.sleep(0.2)
        job_id = created.json()["data"]["id"]
        with http.stream("GET", f"/api/v1/jobs/{job_id}/stream") as stream:  # as a user waits: its events
            for line in stream.iter_lines():
                if line.startswith("data:") and (kind := json.loads(line[5:])["type"]) in ("done", "error"):
                    if kind == "error":
                        raise RuntimeError(f"up's first job failed: {line}")
                    return
        raise RuntimeError("up's first job's stream ended without its end")


def _up(state: Path) -> tuple[float, float, dict[str, float]]:
    """(seconds to "Archipelag is up", seconds to the first finished job, one host's USS by role)."""
    port = _free_port()
    env = {**os.environ, "ARCHIPELAG_STATE_DIR": str(state), "ARCHIPELAG_RAY_HEAD_PORT": str(_free_port()),
           "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    up = subprocess.Popen([sys.executable, "-m", "archipelag", "up", "--hosts", str(HOSTS), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        assert up.stdout is not None
        said = b""
        for line in up.stdout:
            said += line
            if b"Archipelag is up" in line:
                break
        else:
            raise RuntimeError("archipelag up ended before it was up:\n" + said.decode(errors="replace"))
        is_up = time.monotonic() - started
        _first_answer(f"http://127.0.0.1:{port}", (state / "api_key").read_text().strip(), started + 300)
        answered = time.monotonic() - started
        time.sleep(2)  # the first job's work settles (its worker, its checkpoint) before memory is read
        joins = [p for p in psutil.Process(up.pid).children() if "join" in p.cmdline()]
        _settled(joins[0], time.monotonic() + 30)
        return is_up, answered, _mib(_tree(joins[0]))
    finally:
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=120)


def _ray_start(args: list[str], temp: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
                                 "--disable-usage-stats", f"--temp-dir={temp}", "--node-ip-address=127.0.0.1",
                                 "--object-store-memory=209715200",
                                 f"--dashboard-agent-listen-port={_free_port()}", *args],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _wait_started(process: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    while READY not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.02)


def _ray_alone(root: Path) -> tuple[float, dict[str, float]]:
    """Ray's own `ray start` for two heads and three host nodes, then a task on a host's node: (seconds to the
    task's answer, one host node's USS by role)."""
    nodes: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    deadline = started + 300
    try:
        heads = []
        for name in ("services", "hosts"):
            port, log = _free_port(), root / f"{name}.log"
            nodes.append(_ray_start(["--head", f"--port={port}", "--include-dashboard=false", "--no-monitor",
                                     "--num-cpus=1", f"--ray-client-server-port={_free_port()}"],
                                    root / name, log))
            heads.append((nodes[-1], log, port))
        for process, log, _ in heads:
            _wait_started(process, log, deadline)
        hosts_head = f"127.0.0.1:{heads[1][2]}"
        host_nodes = []
        for i in range(HOSTS):
            log = root / f"host-{i}.log"
            nodes.append(_ray_start([f"--address={hosts_head}", "--num-cpus=1",
                                     f"--resources={json.dumps({f'host-{i}': 1})}"], root / f"host-{i}", log))
            host_nodes.append((nodes[-1], log))
        for process, log in host_nodes:
            _wait_started(process, log, deadline)
        task = ("import ray; ray.init(address=%r, log_to_driver=False); "
                "print(ray.get(ray.remote(lambda: 'answer').options(resources={'host-0': 1}).remote()))")
        answer = subprocess.run([sys.executable, "-c", task % hosts_head], capture_output=True, text=True,
                                timeout=120, check=True)
        assert "answer" in answer.stdout, answer.stderr
        answered = time.monotonic() - started
        time.sleep(2)
        return answered, _mib(_tree(psutil.Process(host_nodes[0][0].pid)))
    finally:
        for node in reversed(nodes):  # each node's whole session: they are ours alone
            try:
                os.killpg(node.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for node in nodes:
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)


def run() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="archipelag-bench-up-") as state:
        is_up, answered, host = _up(Path(state))
    with tempfile.TemporaryDirectory(prefix="archipelag-bench-ray-") as root:
        alone, node = _ray_alone(Path(root))
    rows: list[Row] = [
        (f"`archipelag up --hosts {HOSTS}`: first job answered", f"{answered:.1f} s",
         f"\"Archipelag is up\" at {is_up:.1f} s; baseline: Ray alone"),
        (f"Ray alone: 2 heads + {HOSTS} nodes, first task (baseline)", f"{alone:.1f} s",
         "plain `ray start`, the same flags"),
        ("one host's resident memory (USS)", f"{sum(host.values()):.0f} MiB",
         f"baseline: one plain Ray node, {sum(node.values()):.0f} MiB"),
    ]
    for role, mib in sorted(host.items(), key=lambda kv: -kv[1]):
        rows.append((f"  host: {role}", f"{mib:.0f} MiB", f"plain Ray node: {node[role]:.0f} MiB" if role in node
                     else ""))
    for role, mib in sorted(node.items(), key=lambda kv: -kv[1]):
        if role not in host:
            rows.append((f"  plain Ray node: {role}", f"{mib:.0f} MiB", "(baseline)"))
    return rows
