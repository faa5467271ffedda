"""Ray nodes started by this process: the coordinator's head and local hosts, stopped by PID.

Each node is a real ``ray start --block`` process in a session of its own. Stopping one never touches
another Ray on the machine: we signal exactly the processes of that node's session (and the tree we
remembered), never Ray processes by name. A node never outlives the process that started it: a
watchdog kills its session when its owner dies, however it dies (SIGKILL included).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import importlib.util
import json
import logging
import os
import pwd
import secrets
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from archipelag.errors import ConfigError

log = logging.getLogger(__name__)

COORDINATOR_RESOURCE = "archipelag_coordinator"
HOST_RESOURCE = "archipelag_host"
LABEL_HOST_ID = "archipelag.io/host-id"
LABEL_REGION = "archipelag.io/region"
# New at every start of a host's node: which node of the cluster is this start's, where the host's previous node
# still counts as alive (the cluster finds a node gone by its missed health checks, ~15 s).
LABEL_NODE_START = "archipelag.io/node-start"


def runtime_dir(state_dir: Path) -> Path:
    """The coordinator's folder for the two heads' sockets and session files and the bridge's socket: short, as a
    Unix socket's path has at most 107 bytes, and one per state folder. The hosts' head's account may pass
    through it to its own folder in it (``hosts``), and into nothing else."""
    tag = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
    return Path("/tmp") / f"ap-{tag}"


def services_dir(state_dir: Path) -> Path:
    """The services' folder in the runtime folder, the coordinator's account's alone: their Ray head's temp dir, and
    the sockets of the jobs service, placement and the ledger (``socket_path`` in ``jobs.client``,
    ``placement.client`` and ``ledger.client``)."""
    return runtime_dir(state_dir) / "services"


def hosts_dir(state_dir: Path) -> Path:
    """The hosts' head's folder in the runtime folder: its Ray temp dir, its copy of the hosts' token, the bridge's
    socket. The hosts' account's, when the hosts' head runs as one."""
    return runtime_dir(state_dir) / "hosts"


def host_resource(host_id: str) -> str:
    """The custom resource only this host's node carries (pins its agent there)."""
    return f"{HOST_RESOURCE}:{host_id}"


# Ray 2.60 replaces a loopback node address with the machine's outward one: `ray start --node-ip-address=127.0.0.1`
# and `ray.init(address="127.0.0.1:…")` go through `ray._private.services.resolve_ip_for_localhost`, which turns
# 127.0.0.1 and ::1 into the address of the default route. Every Ray server then listens beyond loopback: each binds
# to loopback only when its node's address is loopback, else to all interfaces (GCS, raylet, object manager and
# core workers on `::`, the dashboard agent's gRPC and metrics on 0.0.0.0, the runtime-env agent and Ray Client on
# the outward address; measured, tests/e2e/test_exposure.py). No setting turns the rewrite off for a worker node
# (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 does it for a head, but makes `ray start --address` abort), so the processes
# that start or join a node keep a loopback address as it is. Other addresses go through Ray's rule unchanged.
#
# A head also starts no Ray Client server: nothing here uses one, it is one more port open to every member, and
# `ray start` has no option to leave it out (it binds 10001 whenever Ray Client is installed, so the coordinator's
# two heads would race for it). Ray reads "no Ray Client installed" as "no server".
#
# `ray start` stays running beside its node, so what it imports is paid on every node. Its CLI also offers
# `ray serve`, `ray job` and the state commands, each imported whole (Serve and FastAPI among them) before the
# CLI parses its arguments: more than half of its start-up CPU. It adds each only if the import works, so marking
# those modules absent leaves `ray start` as it is and the rest out.
#
# Nothing here reads Ray's dashboard (`leave_out_ray_dashboard`).
_LOOPBACK = frozenset({"127.0.0.1", "::1"})
_RAY_CLI_EXTRAS = ("ray.serve.scripts", "ray.dashboard.modules.job.cli", "ray.util.state.state_cli")
_RAY_START = f"""
import sys
sys.modules.update(dict.fromkeys({_RAY_CLI_EXTRAS!r}))
from archipelag.nodes import keep_loopback_node_addresses, leave_out_ray_dashboard
keep_loopback_node_addresses()
leave_out_ray_dashboard()
from ray.scripts import scripts
scripts.get_ray_client_dependency_error = lambda: "Archipelag starts no Ray Client server"
sys.argv[0] = "ray"
sys.exit(scripts.main())
"""


def keep_loopback_node_addresses() -> None:
    """In this process, a Ray node or GCS address of 127.0.0.1 or ::1 stays what it is (see above)."""
    from ray._private import services

    resolve = services.resolve_ip_for_localhost
    if getattr(resolve, "keeps_loopback", False):
        return

    def keep_loopback(host: str) -> str:
        return host if host in _LOOPBACK else resolve(host)

    keep_loopback.keeps_loopback = True  # type: ignore[attr-defined]
    services.resolve_ip_for_localhost = keep_loopback


def leave_out_ray_dashboard() -> None:
    """In this `ray start` process: a head starts no dashboard, and each node's two agents run as `ray_agent`.

    Nothing here reads the dashboard or its agent: no Ray metrics, state API or job submission. Ray starts the
    dashboard even with ``--include-dashboard=false``, and a full agent starts gRPC and HTTP servers and reports
    every 5 s. A node cannot run without its agents: the raylet waits for their ports and ends when one ends. The
    dashboard agent writes "no port" (-1) for each of its ports, as Ray's agent does in its minimal mode (the raylet
    and the core workers read it as "no metrics"); the runtime-env agent holds its port and becomes Ray's agent
    only if a runtime environment is ever asked for. A second call changes nothing."""
    from ray._private import node, ray_constants, services, utils

    if node.Node.start_api_server is _no_dashboard:
        return

    # Ray reads its dashboard's dependencies as not installed, so `ray start` checks none of them (it imported
    # them whole to see that they were there).
    missing = ImportError("Archipelag runs Ray without its dashboard")
    utils.get_dashboard_dependency_error = lambda: missing
    python_command = services._build_python_executable_command_memory_profileable

    def agent_command(component: str, session_dir: str, unbuffered: bool = True) -> list[str]:
        command: list[str] = python_command(component, session_dir, unbuffered)
        if component in (ray_constants.PROCESS_TYPE_DASHBOARD_AGENT, ray_constants.PROCESS_TYPE_RUNTIME_ENV_AGENT):
            command += ["-m", "archipelag.ray_agent"]  # then Ray's agent script and its arguments
        return command

    services._build_python_executable_command_memory_profileable = agent_command
    node.Node.start_api_server = _no_dashboard  # type: ignore[method-assign]


def _no_dashboard(self: Any, **_: object) -> None:
    self._webui_url = None  # as Ray leaves it when its dashboard fails to start


def ray_start_command() -> list[str]:
    """`ray start`, run by this interpreter with loopback node addresses kept."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("Ray is not installed; run `make up` or `pip install 'ray[serve]'`")
    return [sys.executable, "-c", _RAY_START, "start"]


# A host's raylet gives up on a GCS that is gone after this long (Ray's default: 60 s) and its node exits,
# so `host join` notices and rejoins a restarted coordinator within seconds.
HOST_GCS_RECONNECT_TIMEOUT_S = 5
# How long `ray start --block` may shut its node down on its own before its session gets SIGKILL. Its
# graceful path stops its processes one kind after another, up to 1 s each; nothing a node holds needs
# more than this to close.
GRACEFUL_STOP_S = 2.0

_STARTED = b"Ray runtime started"
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when its parent dies (None elsewhere).

    The kernel tracks the *thread* that forked the child: spawn long-lived children from a thread
    that lives as long as the process (the main thread). prctl is looked up here, before the fork,
    so the child only makes the call."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took hold
            os.kill(os.getpid(), sig)

    return arm


# The watchdog: a tiny process that holds the read end of a pipe its owner writes nothing to. The pipe
# closes when the owner dies, however it dies; the watchdog then SIGKILLs the node's whole session. The
# parent-death signal of `ray start` alone is not enough: Ray's own fate sharing takes gcs_server and
# the raylet with it, but the raylet's dashboard and runtime-env agents outlived it by 20 s and more
# (measured). Its own session and ignored SIGINT/SIGHUP keep terminal signals from ending it early; a
# clean stop ends it by PID first.
_WATCHDOG = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
sid = int(sys.argv[1])
while sys.stdin.buffer.read(4096):
    pass
for _ in range(3):
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()] if os.path.isdir("/proc") else []
    for pid in [sid] + pids:
        try:
            if os.getsid(pid) == sid:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


def session_members(sid: int) -> list[psutil.Process]:
    """Every process whose session is ``sid``: a node's processes, even those Ray reparented to init."""
    members = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == sid:
                members.append(psutil.Process(pid))
        except (OSError, psutil.Error):
            continue
    return members


def kill_processes(processes: Iterable[psutil.Process], timeout_s: float = 5.0) -> list[psutil.Process]:
    """SIGKILL these processes and wait for them; what is still there after ``timeout_s`` is returned."""
    procs = list(processes)
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    return list(alive)


@dataclass
class RayNodeProcess:
    """One ``ray start --block`` process (a session leader) and the Ray processes it spawned."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    watchdog: subprocess.Popen[bytes] | None = None
    log_offset: int = 0  # where this run's output starts in a log that earlier runs wrote to
    start_label: str = ""  # a host's node: its LABEL_NODE_START
    _tree: set[int] = field(default_factory=set)
    _raylet: psutil.Process | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def raylet_exited(self) -> bool:
        """Whether the node's raylet started and is gone. `ray start --block` exits within a second of that once
        the node has registered, but a raylet that aborts before it registers (on a loaded machine: Ray gives
        the node's dashboard agent 15 s to write its port, then the raylet aborts) leaves `ray start` waiting
        30 s for a node that will not come."""
        if self._raylet is None:
            try:
                children = psutil.Process(self.process.pid).children()
            except psutil.NoSuchProcess:
                return False
            self._raylet = next((p for p in children if _named(p, "raylet")), None)
            return False
        try:
            return bool(self._raylet.status() == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return True

    def remember_tree(self) -> None:
        """Record the node's descendants now, so they can be stopped even after the parent is gone."""
        try:
            parent = psutil.Process(self.process.pid)
            self._tree |= {child.pid for child in parent.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass

    def processes(self) -> list[psutil.Process]:
        """The node's processes still running: its session, and the tree remembered (in case one left it)."""
        found = {p.pid: p for p in session_members(self.pid)}
        for pid in self._tree - found.keys():
            try:
                found[pid] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                continue
        return list(found.values())

    def wait_started(self, timeout_s: float = 90) -> None:
        """Block until `ray start` reports its node running (connecting earlier can fail for good:
        a driver that reached a half-started token-auth GCS kept being refused)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as log_file:
                log_file.seek(self.log_offset)
                if _STARTED in log_file.read():
                    return
            if not self.alive():
                raise ConfigError(f"the Ray node {self.name} exited at start; see {self.log_path}")
            time.sleep(0.1)
        raise ConfigError(f"the Ray node {self.name} did not start within {timeout_s:.0f} s; see {self.log_path}")

    def ask_to_stop(self) -> None:
        """The graceful part, without waiting: SIGINT lets `ray start --block` stop its processes. Not
        SIGTERM: on SIGTERM Ray first drains the node, for up to 30 s."""
        self.remember_tree()
        if self.alive():
            _signal(self.process.pid, signal.SIGINT)

    def stop(self, grace_s: float = GRACEFUL_STOP_S) -> None:
        """Stop the node: ``grace_s`` for `ray start` to stop it, then SIGKILL to what is left of its session.

        Returns once every process of the node is gone."""
        self.ask_to_stop()
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        left = kill_processes([*self.processes(), *_alive(self.process.pid)])
        if left:
            log.warning("node %s: processes %s survived SIGKILL", self.name, [p.pid for p in left])
        self.process.poll()
        self._end_watchdog()

    def _end_watchdog(self) -> None:
        if self.watchdog is not None and self.watchdog.poll() is None:
            self.watchdog.kill()  # by PID, before its pipe closes: a clean stop needs no killing
            self.watchdog.wait()


def stop_all(nodes: Iterable[RayNodeProcess], grace_s: float = GRACEFUL_STOP_S) -> None:
    """Stop several nodes at once: all get their graceful chance together, not one after another."""
    nodes = list(nodes)
    for node in nodes:
        node.ask_to_stop()
    deadline = time.monotonic() + grace_s
    for node in nodes:
        try:
            node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for node in nodes:
        node.stop(grace_s=0)


def _alive(pid: int) -> list[psutil.Process]:
    try:
        return [psutil.Process(pid)]
    except psutil.NoSuchProcess:
        return []


def _named(process: psutil.Process, name: str) -> bool:
    try:
        return bool(process.name() == name)
    except psutil.Error:
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@dataclass(frozen=True)
class RunAs:
    """An unprivileged account a host's Ray node runs as (``host join --ray-user``): whatever another member of
    the cluster runs on this node runs as it, without the owner's files, groups (docker) or root."""

    name: str
    uid: int
    gid: int

    @classmethod
    def named(cls, name: str) -> RunAs:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ConfigError(f"there is no user {name!r} to run the Ray node as; create it first "
                              f"(e.g. `useradd --system --no-create-home {name}`)") from None
        if entry.pw_uid == 0:
            raise ConfigError(f"{name!r} is root; the Ray node must run as an unprivileged user")
        return cls(name, entry.pw_uid, entry.pw_gid)

    def copy_to(self, source: Path, copy: Path) -> Path:
        """A copy of ``source`` (a token) that only this account reads: made new (never through a link), then
        handed over."""
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(source.read_bytes())
        self.own(copy)
        return copy

    def own(self, *paths: Path, mode: int | None = None) -> None:
        """Make these (existing) files or folders this account's (and ``mode``), never through a link: where the
        account may have replaced a path of its own by a link (its folder's entry in /tmp), root would otherwise
        hand it what the link names. Opened without following links and without blocking (a FIFO put there
        instead), then changed through that descriptor."""
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                raise ConfigError(f"cannot hand {path} to {self.name}: {exc.strerror} (a link is refused)") from None
            try:
                kind = os.fstat(fd).st_mode
                if not (stat.S_ISDIR(kind) or stat.S_ISREG(kind)):
                    raise ConfigError(f"cannot hand {path} to {self.name}: not a file or folder")
                os.fchown(fd, self.uid, self.gid)
                if mode is not None:
                    os.fchmod(fd, mode)
            finally:
                os.close(fd)


# What a node of ours leaves out, since nothing here uses it and each costs a Python process's start (a second
# or more of CPU) and its polling after: the log monitor, which streams workers' output to drivers (ours say
# log_to_driver=False; workers' logs stay in files), the idle workers Ray starts ahead for the first driver, and
# idle workers kept for later tasks. Ray keeps up to a node's CPU count of those (its soft limit); on a host the
# only tasks are its join benchmark's, after which two workers sat idle for good: 47 MiB each of the lender's
# memory and, like every Ray worker, ~8 ms of CPU a second (its core worker checks for signals every 10 ms). With
# the limit at 0 a worker idle for a second ends; our services and host agents are actors, which keep theirs.
NODE_OPTIONS = ("--include-log-monitor=false",)
NODE_ENV = {"RAY_prestart_worker_first_driver": "0", "RAY_num_workers_soft_limit": "0"}


def _spawn(name: str, args: list[str], log_dir: Path, env: dict[str, str] | None,
           run_as: RunAs | None = None) -> RayNodeProcess:
    """`ray start --block` in a session of its own, so terminal signals reach only us and we decide
    how it stops. Tied to this process twice: the parent-death signal for `ray start` itself (armed after the
    switch to ``run_as``: changing the user clears it), and a watchdog for the processes it daemonizes."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as out:
        offset = out.tell()
        process = subprocess.Popen(
            [*ray_start_command(), "--block", "--disable-usage-stats", *NODE_OPTIONS, *args],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **NODE_ENV, **(env or {})}, start_new_session=True,
            preexec_fn=die_with_parent(),  # noqa: PLW1509 - only a prctl call, looked up before the fork
            user=run_as.uid if run_as else None, group=run_as.gid if run_as else None,
            extra_groups=[] if run_as else None,
        )
    watchdog = subprocess.Popen(
        [sys.executable, "-S", "-c", _WATCHDOG, str(process.pid)], stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    return RayNodeProcess(name=name, process=process, log_path=log_path, watchdog=watchdog, log_offset=offset)


def start_head(port: int, temp_dir: Path, log_dir: Path, node_ip: str = "127.0.0.1",
               object_store_mb: int = 200, env: dict[str, str] | None = None, name: str = "head",
               resources: dict[str, int] | None = None, num_cpus: int = 1,
               run_as: RunAs | None = None) -> RayNodeProcess:
    """A head node; by default the coordinator's services' own, which carries only the coordinator resource, so no
    job lands on it. ``port`` 0: Ray picks one (``head_address`` reads it once the head runs). On a loopback
    ``node_ip`` everything it runs listens on loopback only, and so does this process's ``ray.init``. ``run_as``:
    the account it runs as, which must own ``temp_dir`` (its home too)."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    keep_loopback_node_addresses()
    resources = {COORDINATOR_RESOURCE: 1000} if resources is None else resources
    args = ["--head", f"--port={port}", f"--node-ip-address={node_ip}", f"--temp-dir={temp_dir.resolve()}",
            f"--num-cpus={num_cpus}", "--include-dashboard=false", f"--object-store-memory={object_store_mb << 20}",
            "--no-monitor"]  # the autoscaler's monitor: there is no autoscaler to serve
    if resources:
        args.append(f"--resources={json.dumps(resources)}")
    if run_as is not None:
        env = {**(env or {}), "HOME": str(temp_dir.resolve()), "RAY_TMPDIR": str(temp_dir.resolve()),
               "USER": run_as.name, "LOGNAME": run_as.name}
    return _spawn(name, args, log_dir, env, run_as)


def head_address(temp_dir: Path, timeout_s: float = 10) -> str:
    """The GCS address of the head started in ``temp_dir`` (Ray writes it there once the head runs)."""
    path = temp_dir / "ray_current_cluster"
    deadline = time.monotonic() + timeout_s
    while not path.exists() or not path.read_text().strip():
        if time.monotonic() > deadline:
            raise ConfigError(f"the head in {temp_dir} did not say its address within {timeout_s:g} s")
        time.sleep(0.02)
    return path.read_text().strip()


def start_host_node(address: str, host_id: str, region: str, cpu_cores: int, log_dir: Path,
                    labels: dict[str, str] | None = None, node_ip: str | None = None,
                    object_store_mb: int = 200, env: dict[str, str] | None = None,
                    temp_dir: Path | None = None, run_as: RunAs | None = None) -> RayNodeProcess:
    """A host's node: resources and labels that say which host it is and where. With a loopback ``node_ip`` (a
    host on the coordinator's machine) it listens on loopback only, and so does this process's ``ray.init``.
    ``temp_dir``: the host's own folder for Ray's sockets and session files (without it Ray takes the head's path;
    two nodes starting at once in one folder race for the same socket names). ``run_as``: the account the node
    runs as; it gets a ``temp_dir`` of its own (required then), which is also its home."""
    keep_loopback_node_addresses()
    if run_as is not None and temp_dir is None:
        raise ConfigError("a Ray node run as another user needs a temp dir of its own")
    resources = {HOST_RESOURCE: 1, host_resource(host_id): 1}
    start_label = secrets.token_hex(8)
    all_labels = {LABEL_HOST_ID: host_id, LABEL_REGION: region, LABEL_NODE_START: start_label, **(labels or {})}
    args = [
        f"--address={address}", f"--num-cpus={cpu_cores}", f"--resources={json.dumps(resources)}",
        "--labels=" + ",".join(f"{k}={v}" for k, v in all_labels.items()),
        f"--object-store-memory={object_store_mb << 20}",
    ]
    if node_ip:
        args.append(f"--node-ip-address={node_ip}")
    node_env = {"RAY_gcs_rpc_server_reconnect_timeout_s": str(HOST_GCS_RECONNECT_TIMEOUT_S), **(env or {})}
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        args.append(f"--temp-dir={temp_dir.resolve()}")
    if run_as is not None and temp_dir is not None:
        run_as.own(temp_dir, mode=0o700)
        node_env |= {"HOME": str(temp_dir.resolve()), "RAY_TMPDIR": str(temp_dir.resolve()),
                     "USER": run_as.name, "LOGNAME": run_as.name}
    node = _spawn(f"host-{host_id}", args, log_dir, node_env, run_as)
    node.start_label = start_label
    return node
