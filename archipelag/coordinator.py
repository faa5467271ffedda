"""Coordinator: its two Ray heads — its services' (ledger, catalog, placement, the jobs service, the API) and the
hosts' — and the bridge between them."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archipelag.bridge.client import BridgeProcess
from archipelag.catalog import load_catalog
from archipelag.ledger import Ledger
from archipelag.nodes import (
    COORDINATOR_RESOURCE,
    RayNodeProcess,
    RunAs,
    head_address,
    hosts_dir,
    runtime_dir,
    services_dir,
    start_head,
)
from archipelag.settings import Settings

log = logging.getLogger(__name__)

# How long a start waits for the services' actors to be up and for the jobs service to resume what a previous run
# left (as long as the jobs service waited alone before).
SERVICES_TIMEOUT_S = 120


def prepare_ray_env(settings: Settings, rotate_token: bool = False) -> dict[str, str]:
    """Write the two clusters' auth tokens (once, or anew with ``rotate_token``) and put the coordinator's own
    cluster's environment into this process. The hosts' token is the one hosts hold; a new one takes effect as
    the hosts' head starts with it: hosts enrolled by pairing fetch it themselves when they rejoin (a revoked one
    is refused it); other nodes, those of a revoked host included, are out. No host ever holds the services'."""
    env = settings.services_ray_env()
    private_state_dir(settings)
    settings.ray_temp_dir.mkdir(parents=True, exist_ok=True)
    for token_path in (settings.ray_env().get("RAY_AUTH_TOKEN_PATH"), env.get("RAY_AUTH_TOKEN_PATH")):
        if token_path and (rotate_token or not Path(token_path).exists()):
            fresh = Path(token_path).with_suffix(".new")
            fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never briefly readable by others
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
            fresh.replace(token_path)
    os.environ.update(env)
    if "ray" in sys.modules:  # Ray read its settings as it was imported: it reads them, and the token, again
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    return env


def prepare_ledger(settings: Settings) -> Ledger:
    """Schema up to date and the catalog synced: what the API needs before it starts."""
    ledger = Ledger.from_settings(settings)
    ledger.migrate()
    ledger.sync_catalog(load_catalog(settings.workloads_dir).values())
    return ledger


def private_state_dir(settings: Settings) -> None:
    """The coordinator's state dir as the hosts' head's account finds it: it may pass through (a host's node of
    `host join --ray-user` beside it keeps its WASM cache there) but not list it. The ledger's SQLite file (and
    its journal, which SQLite makes with the database's mode) and the logs are the coordinator's alone; tokens and
    keys are written 0600."""
    state = settings.state_dir
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o711)
    (state / "logs").mkdir(exist_ok=True)
    (state / "logs").chmod(0o700)
    if not settings.database_url:
        database = state / "archipelag.db"
        database.touch(mode=0o600)  # an empty file is a new database to SQLite
        database.chmod(0o600)


def _fresh_runtime_dir(settings: Settings, run_as: RunAs | None) -> tuple[Path, Path]:
    """(the services' Ray temp dir, the hosts' head's folder), made anew: whatever was at those names (an earlier
    run's, or what the hosts' account put there) goes first. /tmp is sticky, so nobody but root can replace the
    root folder made here; the hosts' folder is handed over only once made and filled (``RunAs.own`` follows no
    link). Ray makes its temp dir open to all, so each sits inside a folder of its owner's alone."""
    root = runtime_dir(settings.state_dir)
    try:
        if stat.S_ISDIR(root.lstat().st_mode):
            shutil.rmtree(root)
        else:
            root.unlink()
    except FileNotFoundError:
        pass
    root.mkdir(mode=0o711)  # fails if someone made the name again meanwhile
    root.chmod(0o711)
    services, hosts = services_dir(settings.state_dir), hosts_dir(settings.state_dir)
    services.mkdir(mode=0o700)
    hosts.mkdir(mode=0o700)
    (hosts / "ray").mkdir(mode=0o700)
    if run_as is not None:
        token = settings.ray_env().get("RAY_AUTH_TOKEN_PATH")
        if token:
            run_as.copy_to(Path(token), hosts / "ray_auth_token")
        run_as.own(hosts / "ray", hosts, mode=0o700)
    return services / "ray", hosts


def hosts_env(settings: Settings) -> dict[str, str]:
    """The environment of the hosts' head and the bridge: the hosts' cluster's, with the copy of its token the
    hosts' account may read when it runs them."""
    env = settings.ray_env()
    copy = hosts_dir(settings.state_dir) / "ray_auth_token"
    if settings.hosts_ray_user and "RAY_AUTH_TOKEN_PATH" in env:
        env["RAY_AUTH_TOKEN_PATH"] = str(copy)
    return env


def hosts_account(settings: Settings) -> RunAs | None:
    return RunAs.named(settings.hosts_ray_user) if settings.hosts_ray_user else None


@dataclass
class Coordinator:
    """Two Ray clusters: the services' own (``head``, on loopback: ledger, revocations, placement, jobs, the API),
    which no host joins, and the hosts' (``hosts_head`` at ``address``), which hosts and the bridge join and the
    services do not. Only the bridge's JSON crosses between them, and hosts' signed reports reach the API."""

    settings: Settings
    head: RayNodeProcess
    services_address: str
    hosts_head: RayNodeProcess
    address: str  # the hosts' head: what hosts join
    ledger: Ledger  # migrated and synced with the catalog at start
    bridge: BridgeProcess | None = None

    def start_services(self) -> None:
        """The ledger, revocations, placement and jobs actors on the services' head, the bridge to the hosts and
        the API, starting side by side (each in a process of its own, most of it `import`: one after another, a
        test network's services took 11 s to come up here, side by side 8), then wait until every one is up and
        the jobs service has resumed what a previous run left. A constructor finds the other actors by name:
        they are all created before the API's replicas start."""
        import ray

        from archipelag.accounts import revocations
        from archipelag.jobs import client as jobs
        from archipelag.ledger import client as ledger
        from archipelag.placement import client as placement
        from archipelag.serve.app import deploy

        on_head: dict[str, float] = {COORDINATOR_RESOURCE: 1}
        ledger.LedgerClient.start(self.settings, resources=on_head)
        revocations.RevocationsClient.start(self.settings, resources=on_head)
        placement.PlacementClient.start(self.settings, resources=on_head)
        self.bridge = BridgeProcess(self.settings, self.address, self.settings.state_dir / "logs" / "bridge.log",
                                    hosts_env(self.settings), hosts_account(self.settings)).start()
        jobs.JobsClient.start(self.settings, resources=on_head)
        deploy(self.settings)  # returns once the API's replicas are ready, while the others start too

        def actor(name: str) -> Any:
            return ray.get_actor(name, namespace=self.settings.ray_namespace)

        services = (ledger.ACTOR_NAME, revocations.ACTOR_NAME, placement.ACTOR_NAME)
        ray.get([actor(name).__ray_ready__.remote() for name in services], timeout=SERVICES_TIMEOUT_S)
        ray.get(actor(jobs.ACTOR_NAME).start.remote(), timeout=SERVICES_TIMEOUT_S)  # its resumption, once

    def stop(self) -> None:
        """Take the coordinator down: each head goes with everything it runs (Serve's graceful shutdown would
        drain the ingress replicas for up to 30 s, with nothing to hand over: jobs resume from the ledger at the
        next start), and their runtime folder with them (each node's own log stays in the state dir)."""
        import ray

        ray.shutdown()
        if self.bridge is not None:
            self.bridge.stop()
        self.head.stop()
        self.hosts_head.stop()
        shutil.rmtree(runtime_dir(self.settings.state_dir), ignore_errors=True)  # sockets and session files


def start_coordinator(settings: Settings, log_dir: Path, timeout_s: float = 90,
                      rotate_token: bool = False) -> Coordinator:
    """Start the two heads, then placement and the API."""
    coordinator = open_coordinator(settings, log_dir, timeout_s, rotate_token)
    try:
        coordinator.start_services()
    except BaseException:
        coordinator.stop()
        raise
    return coordinator


def open_coordinator(settings: Settings, log_dir: Path, timeout_s: float = 90,
                     rotate_token: bool = False) -> Coordinator:
    """The two heads, with this process a driver of the services' one, and the ledger ready; the services start
    with ``Coordinator.start_services``. Hosts may start joining in between: they wait for the API
    (``actors/driver.py``), and their nodes come up while the services do."""
    env = prepare_ray_env(settings, rotate_token)  # before ray.init: Ray reads its auth settings from there

    import ray

    from archipelag.gate import tickets

    ledger = prepare_ledger(settings)
    tickets.coordinator_key(settings.state_dir)  # made once, here, before the API hands it out and jobs sign
    run_as = hosts_account(settings)
    if run_as is None and settings.ray_head_ip not in ("127.0.0.1", "::1"):
        log.warning("the hosts' head listens on %s and runs as this account: any host may run code as it and read "
                    "the coordinator's state; set ARCHIPELAG_HOSTS_RAY_USER (README, \"Two Ray clusters\")",
                    settings.ray_head_ip)
    services_temp, hosts_folder = _fresh_runtime_dir(settings, run_as)
    head = start_head(0, services_temp, log_dir, env=env)  # loopback, on a port Ray picks: for this machine only
    hosts_head = start_head(settings.ray_head_port, hosts_folder / "ray", log_dir, node_ip=settings.ray_head_ip,
                            env=hosts_env(settings), name="hosts-head", resources={}, num_cpus=0, run_as=run_as)
    try:
        head.wait_started(timeout_s)
        hosts_head.wait_started(timeout_s)
        services_address = head_address(services_temp)
        ray.init(address=services_address, namespace=settings.ray_namespace, logging_level=logging.WARNING,
                 log_to_driver=False)
    except BaseException:
        head.stop()
        hosts_head.stop()
        raise
    head.remember_tree()
    hosts_head.remember_tree()
    return Coordinator(settings=settings, head=head, services_address=services_address, hosts_head=hosts_head,
                       address=f"{settings.ray_head_ip}:{settings.ray_head_port}", ledger=ledger)


def ensure_local_account(settings: Settings, ledger: Ledger, email: str = "you@localhost") -> str:
    """The embedded network's own account (its first: an admin) and an API key with every scope, saved to
    ``state_dir/api_key`` (mode 600)."""
    from archipelag.catalog import MICRO
    from archipelag.errors import Unauthorized

    key_path = settings.state_dir / "api_key"
    if key_path.exists():
        try:
            ledger.authenticate(key_path.read_text().strip())
            return key_path.read_text().strip()
        except Unauthorized:
            pass
    account = ledger.find_account(email) or ledger.create_account(email, round(settings.initial_credits * MICRO))
    _, key = ledger.create_api_key(account.id, "local", ("keys", "read", "write"))
    key_path.write_text(key)
    key_path.chmod(0o600)
    return key
