"""Network: the embedded network `archipelag up` runs — a coordinator and N local hosts.

Each local host is a real `archipelag host join` process (the same path a remote machine takes),
with its own Ray node, region, resources and labels, and its own key: it is enrolled, owned by the network's
own account, before it starts (the step an owner's approval of a pairing code takes), so placement checks its
signed reports as it checks any host's.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from archipelag import identity
from archipelag.catalog_signing import ensure_dev_signed_catalog
from archipelag.coordinator import Coordinator, ensure_local_account, open_coordinator
from archipelag.errors import ConfigError
from archipelag.nodes import GRACEFUL_STOP_S, die_with_parent, kill_processes, session_members
from archipelag.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_REGIONS = ("eu-west", "us-east", "ap-south")
# A local host's leave takes well under this (its agent stops, placement hears it, its node gets
# GRACEFUL_STOP_S); past it the host is killed, so a stuck host never holds the network's stop.
LEAVE_GRACE_S = GRACEFUL_STOP_S + 3.0


@dataclass
class LocalHost:
    host_id: str
    region: str
    process: subprocess.Popen[bytes]
    log_path: Path
    ray_pid: int | None = None  # its Ray node's `ray start`, a session leader; known once it has joined

    def record(self, settings: Settings) -> dict[str, object]:
        """What the host wrote of itself once it joined; empty before, and once it drops it as it leaves (which
        may come between any two looks at the file)."""
        try:
            record = dict(json.loads((settings.state_dir / "hosts" / f"{self.host_id}.json").read_text()))
        except FileNotFoundError:
            return {}
        ray_pid = record.get("ray_pid")
        if isinstance(ray_pid, int):
            self.ray_pid = ray_pid
        return record

    def ask_to_leave(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # `host join` leaves at once (Ctrl-C would drain first)

    def off_cluster(self, settings: Settings) -> bool:
        """Whether the host no longer needs the head: it has gone, or it has dropped its record (which it
        does once its driver has left the cluster, before it stops its own node)."""
        return self.process.poll() is not None or not self.record(settings)

    def wait_gone(self, settings: Settings, timeout_s: float) -> None:
        """Wait for the host to have left; past ``timeout_s`` it is killed, its node with it."""
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("host %s did not leave within %.1f s; killing it", self.host_id, timeout_s)
            self.kill(settings)

    def processes(self, settings: Settings) -> list[psutil.Process]:
        """The join process and every process of its Ray node's session (raylet, workers, the host's agent)."""
        self.record(settings)
        processes = []
        try:
            processes.append(psutil.Process(self.process.pid))
        except psutil.NoSuchProcess:
            pass
        if self.ray_pid is not None:
            processes += session_members(self.ray_pid)
        return processes

    def kill(self, settings: Settings) -> None:
        """SIGKILL the join process and every process of its Ray node's session, and wait for them."""
        kill_processes(self.processes(settings))
        self.process.wait(timeout=10)


@dataclass
class EmbeddedNetwork:
    settings: Settings
    coordinator: Coordinator
    api_key: str
    owner_account_id: int = 0  # the network's own account: it owns the local hosts
    hosts: list[LocalHost] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def enrol(self, host_id: str, region: str, name: str | None = None) -> None:
        """Give the host its key (once, in the state dir) and enrol it under the network's own account."""
        key = identity.load_or_create_key(identity.named_key_path(self.settings.state_dir, host_id))
        self.coordinator.ledger.enrol_host(host_id, identity.public_hex(key), self.owner_account_id,
                                           name or host_id, region)

    def add_host(self, region: str, host_id: str, name: str | None = None, args: tuple[str, ...] = ()) -> LocalHost:
        """Start a local `host join`; ``args`` are more of its options (e.g. ``("--schedule", "22:00-07:00")``)."""
        self.enrol(host_id, region, name)
        (self.settings.state_dir / "hosts" / f"{host_id}.json").unlink(missing_ok=True)  # an earlier run's
        log_dir = (self.settings.state_dir / "logs").resolve()
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"join-{host_id}.log"
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "archipelag", "host", "join", "--coordinator", self.coordinator.address,
                 "--region", region, "--name", name or host_id, "--host-id", host_id, "--node-ip", "127.0.0.1", *args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, **self.settings.to_env()},
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - only a prctl call, looked up before the fork
            )
        host = LocalHost(host_id, region, process, log_path)
        self.hosts.append(host)
        return host

    def wait_node(self, host: LocalHost, timeout_s: float = 60) -> None:
        """Wait until the host has joined the hosts' cluster: its node runs and its driver is connected, as the
        record it writes then says (each node has a Ray temp dir of its own, so hosts may start together)."""
        deadline = time.monotonic() + timeout_s
        while not host.record(self.settings):
            if host.process.poll() is not None:
                raise ConfigError(f"host {host.host_id} failed to join; see {host.log_path}")
            if time.monotonic() > deadline:
                raise ConfigError(f"host {host.host_id}'s node did not join in {timeout_s:.0f} s")
            time.sleep(0.1)

    def wait_online(self, host_ids: list[str], timeout_s: float = 120) -> None:
        from archipelag.lifecycle import HostStatus
        from archipelag.placement.client import PlacementClient

        placement = PlacementClient.connect(self.settings)
        deadline = time.monotonic() + timeout_s
        while True:
            online = {s.host_id for s in placement.hosts() if s.status == HostStatus.ONLINE}
            if set(host_ids) <= online:
                return
            for host in self.hosts:
                if host.host_id in host_ids and host.process.poll() is not None:
                    raise ConfigError(f"host {host.host_id} failed to join; see {host.log_path}")
            if time.monotonic() > deadline:
                raise ConfigError(f"hosts {sorted(set(host_ids) - online)} did not come online in {timeout_s:.0f} s")
            time.sleep(0.2)

    def kill_host(self, host_id: str) -> None:
        """Make a host vanish as a machine would: SIGKILL its Ray node's processes and its join process."""
        self._host(host_id).kill(self.settings)

    def hang_host(self, host_id: str) -> list[psutil.Process]:
        """Make a host hang as a machine that froze would: SIGSTOP all its processes (alive to Ray, silent to
        us); ``resume_host`` lets them go on."""
        processes = self._host(host_id).processes(self.settings)
        _signal_all(processes, signal.SIGSTOP)
        return processes

    def resume_host(self, host_id: str) -> None:
        _signal_all(self._host(host_id).processes(self.settings), signal.SIGCONT)

    def _host(self, host_id: str) -> LocalHost:
        return next(h for h in self.hosts if h.host_id == host_id)

    def stop(self, leave_grace_s: float = LEAVE_GRACE_S) -> None:
        """Stop everything within seconds. Hosts leave all at once; the head stops as soon as they are off
        the cluster (each then stops its own node, in parallel with the head); a host still there after
        ``leave_grace_s`` is killed with its node."""
        deadline = time.monotonic() + leave_grace_s
        try:
            for host in self.hosts:
                host.record(self.settings)  # remember its node, in case it must be killed
                host.ask_to_leave()
            while time.monotonic() < deadline and not all(h.off_cluster(self.settings) for h in self.hosts):
                time.sleep(0.05)
        finally:  # whatever went wrong with a host, the coordinator goes (and this process leaves its cluster)
            self.coordinator.stop()
        deadline = max(deadline, time.monotonic() + 1.0)
        for host in self.hosts:
            host.wait_gone(self.settings, max(0.0, deadline - time.monotonic()))


def _signal_all(processes: list[psutil.Process], sig: int) -> None:
    for proc in processes:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def start_network(settings: Settings, hosts: int = 3, regions: tuple[str, ...] = DEFAULT_REGIONS,
                  timeout_s: float = 180, rotate_token: bool = False,
                  named: Mapping[str, tuple[str, ...]] | None = None) -> EmbeddedNetwork:
    """The coordinator and ``hosts`` local hosts (island-1, …, over ``regions`` in turn), and the ``named`` ones:
    each host id with more of its `host join` options (e.g. ``("--price", "wasm-*=0.001")``), in the first
    region. All hosts start while the coordinator's services do; returns once every one is online."""
    log_dir = (settings.state_dir / "logs").resolve()
    # The embedded network signs its own catalog with a dev key its hosts trust; a deployment signs
    # offline and hands hosts the public key (README).
    _, key = ensure_dev_signed_catalog(settings)
    settings = settings.model_copy(update={"trusted_catalog_keys": [*settings.trusted_catalog_keys, key]})
    coordinator = open_coordinator(settings, log_dir, rotate_token=rotate_token)
    network = EmbeddedNetwork(settings, coordinator, api_key="")
    try:
        network.api_key = ensure_local_account(settings, coordinator.ledger)
        network.owner_account_id = coordinator.ledger.authenticate(network.api_key)[0].id
        ids = [f"island-{i + 1}" for i in range(hosts)]
        # The hosts' nodes start while the coordinator's services do (their agents wait for placement).
        joining = [network.add_host(regions[index % len(regions)], host_id) for index, host_id in enumerate(ids)]
        joining += [network.add_host(regions[0], host_id, args=args) for host_id, args in (named or {}).items()]
        ids += list(named or {})
        coordinator.start_services()
        for host in joining:
            network.wait_node(host, timeout_s)
        network.wait_online(ids, timeout_s)
    except BaseException:
        network.stop()
        raise
    return network
