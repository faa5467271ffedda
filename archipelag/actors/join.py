"""Join: a machine becomes a host — detect its hardware, start its Ray node, start its agent, and stay
joined: when the node dies under it (its coordinator's head went away), join the same coordinator again."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from archipelag import identity
from archipelag.actors.controls import HostControls, lent
from archipelag.actors.hardware import Hardware, detect
from archipelag.actors.pairing import is_api_url, pair, refresh
from archipelag.actors.schedule import Schedule
from archipelag.errors import ArchipelagError, ConfigError, HostLost, HostRefused
from archipelag.ids import HostId, new_host_id
from archipelag.nodes import RayNodeProcess, RunAs, start_host_node
from archipelag.settings import Settings

if TYPE_CHECKING:
    from archipelag.actors.driver import HostDriver
    from archipelag.gate.server import GateServer

log = logging.getLogger(__name__)

# Between two tries to rejoin a coordinator that is not (yet) back: short, as a restarted head is
# usually up within seconds, and a try costs nothing but a TCP connect while it is away.
REJOIN_INTERVAL_S = 2.0
# Starts of a host's Ray node per join: on a loaded machine a raylet may abort as it starts (Ray gives the node's
# dashboard agent 15 s to say its port), and the same start a moment later succeeds.
NODE_START_TRIES = 3


@dataclass(frozen=True)
class JoinRequest:
    """What a host asked for when it joined: enough to join again the same way, as the same host."""

    settings: Settings
    coordinator: str
    host_id: HostId
    region: str
    name: str
    hardware: Hardware
    accepts: tuple[str, ...]
    node_ip: str | None
    timeout_s: float
    run_as: RunAs | None = None  # the unprivileged account its Ray node runs as (`--ray-user`)
    api: str | None = None  # the network's API when it enrolled by pairing: where fresh credentials come from
    asks: Mapping[str, int] = field(default_factory=dict)  # its prices (`--price`): its registration carries them

    @property
    def record_path(self) -> Path:
        return (self.settings.state_dir / "hosts" / f"{self.host_id}.json").resolve()


@dataclass
class JoinedHost:
    request: JoinRequest
    node: RayNodeProcess
    driver: HostDriver  # talks to the cluster for `host join` (actors/driver.py)
    gate: GateServer | None = None  # the only way to the Docker engine when the Ray node runs as another user

    @property
    def host_id(self) -> HostId:
        return self.request.host_id

    @property
    def hardware(self) -> Hardware:
        return self.request.hardware

    @property
    def settings(self) -> Settings:
        return self.request.settings

    def stay(self, stop: threading.Event, controls: HostControls | None = None,
             leave_asked: threading.Event | None = None, poll_s: float = 0.5) -> None:
        """Serve as a host until ``stop`` is set, or until ``controls`` say it has drained (or its leave's deadline
        passed). ``leave_asked`` (Ctrl-C) starts a leave: a drain with the settings' deadline. A Ray node exits
        when its GCS is gone (the head was killed or restarted); the host then rejoins the same coordinator,
        every ``REJOIN_INTERVAL_S`` until it is back, without anyone restarting it, in the state it was in."""
        leaving = False
        while not stop.wait(poll_s):
            if not self.node.alive() or not self.driver.alive():  # either may be stopped from the node's account
                gone = "its Ray node exited" if not self.node.alive() else "its driver exited"
                log.warning("host %s: %s (see %s); rejoining %s", self.host_id, gone, self.node.log_path,
                            self.request.coordinator)
                if not self._rejoin(stop):
                    return
                if controls is not None:
                    controls.restore()
                continue
            if controls is None:
                continue
            if leave_asked is not None and leave_asked.is_set() and not leaving:
                leaving = True
                try:
                    controls.leave(self.settings.drain_timeout_s)
                except ArchipelagError as exc:  # it leaves anyway; placement hears it at the end
                    log.warning("host %s: could not start draining: %s", self.host_id, exc.message)
                    return
            if controls.tick():
                return

    def controls(self, schedule: Schedule | None) -> HostControls:
        """The owner's controls of this host (served on its control socket by `host join`)."""
        hw = self.hardware
        limits = {"cpu_cores": hw.cpu_cores, "ram_mb": hw.ram_mb, "gpu_model": hw.gpu_model,
                  "gpu_memory_mb": hw.gpu_vram_mb, "accepts": list(self.request.accepts) or ["*"]}
        info = {"name": self.request.name, "region": self.request.region, "coordinator": self.request.coordinator,
                "limits": limits}
        return HostControls(self.host_id, lambda: self.driver, info, self.settings.drain_timeout_s, schedule)

    def _rejoin(self, stop: threading.Event) -> bool:
        """Join the coordinator again until it answers (True) or ``stop`` is set; False once the network refuses
        this host (revoked), which then leaves. A host enrolled by pairing fetches its credentials first: the
        cluster's token may have been rotated meanwhile."""
        self.driver.close()  # the driver's GCS is gone with the node's
        self.node.stop(grace_s=0)
        attempt = 0
        while not stop.is_set():
            attempt += 1
            try:
                if self.request.api is not None:
                    self.request = _refreshed(self.request, self.request.api)
                self.node, self.driver = _connect(self.request)
                log.warning("host %s rejoined %s (try %d)", self.host_id, self.request.coordinator, attempt)
                return True
            except HostRefused as exc:
                log.error("host %s: the network refuses it (%s); it leaves", self.host_id, exc.message)
                return False
            except Exception as exc:  # noqa: BLE001 - a try fails in any of Ray's ways; the host keeps trying
                log.warning("host %s: rejoin try %d failed: %s; next try in %.0f s", self.host_id, attempt,
                            getattr(exc, "message", exc), REJOIN_INTERVAL_S)
            stop.wait(REJOIN_INTERVAL_S)
        return False

    def leave(self) -> None:
        """Stop taking jobs, tell placement, leave the cluster, and stop this host's Ray node. Only the
        node's stop is certain: with the node (or its head) gone there is nobody to tell.

        The record goes as soon as the driver is off the cluster: whoever stops the whole network
        waits for that before stopping the head (a driver whose GCS is gone takes ~5 s to shut down)."""
        if self.node.alive():
            self.driver.leave()
        else:
            self.driver.close()
        self.request.record_path.unlink(missing_ok=True)
        self.node.stop()
        if self.request.run_as is not None:
            _remove_node_dirs(self.host_id, self.request.run_as)
        if self.gate is not None:
            self.gate.close()


def _reachable(address: str, timeout_s: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _connect(request: JoinRequest) -> tuple[RayNodeProcess, HostDriver]:
    """Start this host's node against its coordinator, then its driver, which starts its agent there; record who
    runs it. The driver is this process where the node runs as its account, and a process of the node's account
    where it runs as another (`--ray-user`): this one must then read nothing back through Ray (actors/driver.py).
    A node that dies while it starts is started again, up to ``NODE_START_TRIES`` times."""
    if not _reachable(request.coordinator):
        raise HostLost(f"the coordinator at {request.coordinator} does not answer", host_id=request.host_id)
    for attempt in range(1, NODE_START_TRIES + 1):
        node, env, temp_dir = _start_node(request)
        try:
            driver = _start_driver(request, node, env, temp_dir)
            break
        except BaseException as exc:
            failed = _node_failed(node)
            node.stop(grace_s=0)
            if failed is None or attempt == NODE_START_TRIES or not isinstance(exc, Exception):
                raise
            log.warning("host %s: its Ray node failed to start (%s); starting it again (try %d of %d)",
                        request.host_id, failed, attempt + 1, NODE_START_TRIES)
    request.record_path.parent.mkdir(parents=True, exist_ok=True)
    written = request.record_path.with_suffix(".tmp")  # renamed into place: readers never see half of it
    written.write_text(json.dumps({
        "host_id": request.host_id, "pid": os.getpid(), "ray_pid": node.pid, "node_id": driver.node_id,
        "region": request.region}))
    written.replace(request.record_path)
    return node, driver


def _start_node(request: JoinRequest) -> tuple[RayNodeProcess, dict[str, str], Path]:
    """The host's node, started; the environment and temp dir it was started with."""
    settings = request.settings
    log_dir = (settings.state_dir / "logs").resolve()
    env, temp_dir = settings.ray_env(), _own_temp_dir(settings.ray_temp_dir, request.host_id)
    if request.run_as is not None:  # a new folder at every start (`_hand_over`)
        env, temp_dir = _hand_over(request, request.run_as, env)
    node = start_host_node(request.coordinator, request.host_id, request.region, request.hardware.cpu_cores,
                           log_dir, node_ip=request.node_ip, env=env, temp_dir=temp_dir, run_as=request.run_as)
    return node, env, temp_dir


def _start_driver(request: JoinRequest, node: RayNodeProcess, env: dict[str, str], temp_dir: Path) -> HostDriver:
    from archipelag.actors.driver import InProcessDriver, SeparateDriver

    joining = (request.settings, request.host_id, request.name, request.region, request.hardware, request.accepts,
               request.asks, request.coordinator, request.timeout_s, node.start_label)

    def node_alive() -> str | None:
        return _node_failed(node)

    if request.run_as is None:
        driver: HostDriver = InProcessDriver.start(*joining, node_alive)
    else:
        log_dir = (request.settings.state_dir / "logs").resolve()
        driver = SeparateDriver.start(*joining, node_alive, request.run_as, env, temp_dir,
                                      log_dir / f"driver-{request.host_id}.log")
    node.remember_tree()
    return driver


def _node_failed(node: RayNodeProcess) -> str | None:
    """Why the node will not run (None while it may)."""
    if not node.alive():
        return f"see {node.log_path}"
    if node.raylet_exited():
        return f"its raylet exited; see {node.log_path}"
    return None


def _own_temp_dir(ray_temp_dir: Path, host_id: HostId) -> Path:
    """The host node's own folder for Ray's sockets and session files, under the machine's Ray temp dir: nodes
    that share a folder race for the same socket names when they start at once (the embedded network starts its
    hosts together). Short, as Ray's socket paths must stay under 107 bytes."""
    return ray_temp_dir / f"h-{hashlib.sha256(host_id.encode()).hexdigest()[:6]}"


def _refreshed(request: JoinRequest, api: str) -> JoinRequest:
    """``request`` with the credentials the network at ``api`` gives this host now (a rotated token, its Ray
    address)."""
    from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]

    enrolled = refresh(request.settings, api)
    AuthenticationTokenLoader.instance().reset_cache()  # this process reads the token file again
    return replace(request, settings=enrolled.settings, coordinator=enrolled.ray_address)


def _hand_over(request: JoinRequest, run_as: RunAs, env: dict[str, str]) -> tuple[dict[str, str], Path]:
    """What the unprivileged account of a host's Ray node needs, and nothing more: a temp dir of its own (short:
    Ray's socket paths stay under 107 bytes), the agent's WASM cache, and a copy of the cluster token. The owner's
    other files, the host's key, the Docker engine and root stay out of its reach; the gate (gate/server.py)
    starts containers and signs the agent's reports.

    The temp dir is a new one at every join: the account owns its entry in /tmp, so by a rejoin it may have put a
    link there, and root must not write into, or hand over, whatever a name it chose now names. The folder is
    made (by root, under a name nobody else chose), filled, and only then handed over; the account's folders
    from earlier joins of this host go (``shutil.rmtree`` does not follow links)."""
    settings = request.settings
    try:
        can_run = subprocess.run([sys.executable, "-c", "import archipelag"], user=run_as.uid, group=run_as.gid,
                                 extra_groups=[], capture_output=True, check=False, timeout=60).returncode == 0
    except OSError:  # not even the interpreter
        can_run = False
    if not can_run:
        raise ConfigError(f"user {run_as.name} cannot run this Archipelag ({sys.executable}): install it where "
                          f"{run_as.name} may read it (e.g. a virtual environment under /opt), or let it pass "
                          f"through the closed folders on the way (`setfacl -m u:{run_as.name}:x FOLDER`)")
    _remove_node_dirs(request.host_id, run_as)
    temp_dir = Path(tempfile.mkdtemp(prefix=_node_dir_prefix(request.host_id, run_as), dir="/tmp"))
    token = env.get("RAY_AUTH_TOKEN_PATH")
    if token:
        copy = run_as.copy_to(Path(token), temp_dir / "ray_auth_token")
        env = {**env, "RAY_AUTH_TOKEN_PATH": str(copy)}
    run_as.own(temp_dir, mode=0o700)
    wasm_cache = (settings.state_dir / "wasm-cache" / request.host_id).resolve()
    wasm_cache.mkdir(parents=True, exist_ok=True)
    run_as.own(wasm_cache)
    return env, temp_dir


def _node_dir_prefix(host_id: HostId, run_as: RunAs) -> str:
    return f"ap-{run_as.uid}-{hashlib.sha256(host_id.encode()).hexdigest()[:6]}-"


def _remove_node_dirs(host_id: HostId, run_as: RunAs) -> None:
    """The temp dirs of this host's earlier nodes, and whatever the node's account put in their place."""
    for earlier in Path("/tmp").glob(f"{_node_dir_prefix(host_id, run_as)}*"):
        if earlier.is_symlink() or not earlier.is_dir():
            earlier.unlink(missing_ok=True)
        else:
            shutil.rmtree(earlier, ignore_errors=True)


def _reclaim_key(state_dir: Path, host_id: HostId) -> None:
    """The host's key is the owner's again where an earlier version handed it to the node's account: the gate
    signs for the node now. Its folder is the owner's, so the name cannot have been swapped for a link."""
    named = identity.named_key_path(state_dir, host_id)
    key = named if named.exists() else identity.machine_key_path(state_dir)
    if key.exists() and key.lstat().st_uid != os.getuid():
        os.chown(key, os.getuid(), os.getgid(), follow_symlinks=False)


def _open_gate(settings: Settings, host_id: HostId, hardware: Hardware, run_as: RunAs) -> GateServer:
    """The host's gate, for the Ray node's account alone: it signs the agent's reports with the host's key, and
    starts containers on this machine's Docker engine (none when no engine answers: the host offers WASM only)."""
    from archipelag.gate import tickets
    from archipelag.gate.server import start_gate

    keys = tickets.trusted_keys(settings.trusted_ticket_keys, settings.state_dir)
    return start_gate(settings, host_id, keys, [run_as.uid], hardware)


def api_beside(ray_address: str, api_port: int) -> str:
    """The API on the machine of a coordinator's Ray address (host:port), at ``api_port``."""
    host = ray_address.rpartition(":")[0] or ray_address
    return f"http://{host}:{api_port}"


def join(settings: Settings, coordinator: str, region: str, name: str | None = None,
         accepts: tuple[str, ...] = (), max_memory_mb: int | None = None, max_cores: int | None = None,
         host_id: str | None = None, node_ip: str | None = None, timeout_s: float = 120,
         max_gpu_memory_mb: int | None = None, no_gpu: bool = False, ray_user: str | None = None,
         asks: Mapping[str, int] | None = None) -> JoinedHost:
    api = coordinator if is_api_url(coordinator) else None
    if api is not None:  # enrol through the API first: its answer says where and how to join
        enrolled = pair(settings, api, name, region, detect(max_memory_mb, max_cores).as_capabilities())
        settings, coordinator, host_id = enrolled.settings, enrolled.ray_address, enrolled.host_id
    elif not settings.coordinator_api:  # joined by a Ray address: the API is on the coordinator's machine
        settings = settings.model_copy(update={"coordinator_api": api_beside(coordinator, settings.api_port)})
    env = settings.ray_env()
    token_path = env.get("RAY_AUTH_TOKEN_PATH")
    if token_path and not Path(token_path).exists():
        raise ConfigError(f"no Ray auth token at {token_path}: a host needs the token its coordinator's owner "
                          "approved (copy it there, or set ARCHIPELAG_STATE_DIR to where it lies)")
    os.environ.update(env)  # before Ray is imported: it reads its auth settings at import

    hid = HostId(host_id) if host_id else new_host_id()
    identity.host_key(settings.state_dir, hid)  # an enrolled host has its key here; placement refuses others
    hardware = lent(detect(max_memory_mb, max_cores), max_gpu_memory_mb, no_gpu)
    run_as = RunAs.named(ray_user) if ray_user else None
    if run_as is not None:
        _reclaim_key(settings.state_dir, hid)
    gate = _open_gate(settings, hid, hardware, run_as) if run_as is not None else None
    if gate is not None:  # the node reaches the engine and the host's key only through it
        settings = settings.model_copy(update={"gate_socket": gate.path})
    request = JoinRequest(settings, coordinator, hid, region, name or hid, hardware, accepts, node_ip, timeout_s,
                          run_as, api, asks=dict(asks or {}))
    try:
        node, driver = _connect(request)
    except BaseException:
        if gate is not None:
            gate.close()
        raise
    return JoinedHost(request, node, driver, gate)
