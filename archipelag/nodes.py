"""Ray nodes started by this process: the coordinator's head and local hosts, stopped by PID.

Each node is a real ``ray start --block`` process. Stopping one never touches another Ray on the
machine: we remember the node's own process tree and signal exactly those PIDs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from archipelag.errors import ConfigError

log = logging.getLogger(__name__)

COORDINATOR_RESOURCE = "archipelag_coordinator"
HOST_RESOURCE = "archipelag_host"
LABEL_HOST_ID = "archipelag.io/host-id"
LABEL_REGION = "archipelag.io/region"


def host_resource(host_id: str) -> str:
    """The custom resource only this host's node carries (pins its agent there)."""
    return f"{HOST_RESOURCE}:{host_id}"


def ray_executable() -> str:
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if not found:
        raise ConfigError("the `ray` command is not installed; run `make up` or `pip install 'ray[serve]'`")
    return found


@dataclass
class RayNodeProcess:
    """One ``ray start --block`` process and the Ray processes it spawned."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _tree: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def remember_tree(self) -> None:
        """Record the node's descendants now, so they can be stopped even after the parent is gone."""
        try:
            parent = psutil.Process(self.process.pid)
            self._tree |= {child.pid for child in parent.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass

    def wait_started(self, timeout_s: float = 90) -> None:
        """Block until `ray start` reports its node running (connecting earlier can fail for good:
        a driver that reached a half-started token-auth GCS kept being refused)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _STARTED in self.log_path.read_bytes():
                return
            if not self.alive():
                raise ConfigError(f"the Ray node {self.name} exited at start; see {self.log_path}")
            time.sleep(0.1)
        raise ConfigError(f"the Ray node {self.name} did not start within {timeout_s:.0f} s; see {self.log_path}")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Graceful stop: SIGINT lets `ray start --block` shut its node down; after ``timeout_s`` (its
        graceful shutdown can wait long on workers) the node and its processes get SIGKILL."""
        self.remember_tree()
        if self.alive():
            _signal(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _signal(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        deadline = time.monotonic() + 2
        for pid in sorted(self._tree):
            try:
                proc = psutil.Process(pid)
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except psutil.NoSuchProcess:
                continue
            except psutil.TimeoutExpired:
                _signal(pid, signal.SIGKILL)


_STARTED = b"Ray runtime started"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _spawn(name: str, args: list[str], log_dir: Path, env: dict[str, str] | None) -> RayNodeProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            [ray_executable(), "start", "--block", "--disable-usage-stats", *args],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )
    return RayNodeProcess(name=name, process=process, log_path=log_path)


def start_head(port: int, temp_dir: Path, log_dir: Path, node_ip: str = "127.0.0.1",
               object_store_mb: int = 200, env: dict[str, str] | None = None) -> RayNodeProcess:
    """The coordinator's head node: it carries only the coordinator resource, so no job lands on it."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    return _spawn("head", [
        "--head", f"--port={port}", f"--node-ip-address={node_ip}", f"--temp-dir={temp_dir.resolve()}",
        "--num-cpus=1", f"--resources={json.dumps({COORDINATOR_RESOURCE: 1000})}",
        "--include-dashboard=false", f"--object-store-memory={object_store_mb << 20}",
    ], log_dir, env)


def start_host_node(address: str, host_id: str, region: str, cpu_cores: int, log_dir: Path,
                    labels: dict[str, str] | None = None, node_ip: str | None = None,
                    object_store_mb: int = 200, env: dict[str, str] | None = None) -> RayNodeProcess:
    """A host's node: resources and labels that say which host it is and where."""
    resources = {HOST_RESOURCE: 1, host_resource(host_id): 1}
    all_labels = {LABEL_HOST_ID: host_id, LABEL_REGION: region, **(labels or {})}
    args = [
        f"--address={address}", f"--num-cpus={cpu_cores}", f"--resources={json.dumps(resources)}",
        "--labels=" + ",".join(f"{k}={v}" for k, v in all_labels.items()),
        f"--object-store-memory={object_store_mb << 20}",
    ]
    if node_ip:
        args.append(f"--node-ip-address={node_ip}")
    return _spawn(f"host-{host_id}", args, log_dir, env)
