"""Coordinator: the head node and what runs on it — ledger, catalog, placement, the jobs service, and the API."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from archipelag.bridge.client import BridgeProcess
from archipelag.catalog import load_catalog
from archipelag.ledger import Ledger
from archipelag.nodes import COORDINATOR_RESOURCE, RayNodeProcess, start_head
from archipelag.settings import Settings

log = logging.getLogger(__name__)


def prepare_ray_env(settings: Settings, rotate_token: bool = False) -> dict[str, str]:
    """Write the cluster's auth token (once, or anew with ``rotate_token``) and put Ray's environment into this
    process. A new token takes effect as the head starts with it: hosts enrolled by pairing fetch it themselves
    when they rejoin (a revoked one is refused it); other nodes, those of a revoked host included, are out."""
    env = settings.ray_env()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    settings.ray_temp_dir.mkdir(parents=True, exist_ok=True)
    token_path = env.get("RAY_AUTH_TOKEN_PATH")
    if token_path and (rotate_token or not Path(token_path).exists()):
        fresh = Path(token_path).with_suffix(".new")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never briefly readable by others
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
        fresh.replace(token_path)
    os.environ.update(env)
    return env


def prepare_ledger(settings: Settings) -> Ledger:
    """Schema up to date and the catalog synced: what the API needs before it starts."""
    ledger = Ledger.from_settings(settings)
    ledger.migrate()
    ledger.sync_catalog(load_catalog(settings.workloads_dir).values())
    return ledger


@dataclass
class Coordinator:
    settings: Settings
    head: RayNodeProcess | None
    address: str
    ledger: Ledger  # migrated and synced with the catalog at start
    bridge: BridgeProcess | None = None

    def start_services(self) -> None:
        """The ledger, revocations, placement and jobs actors on the head, the bridge to the hosts, then the
        API."""
        from archipelag.accounts.revocations import RevocationsClient
        from archipelag.jobs.client import JobsClient
        from archipelag.ledger.client import LedgerClient
        from archipelag.placement.client import PlacementClient
        from archipelag.serve.app import deploy

        LedgerClient.start(self.settings, resources={COORDINATOR_RESOURCE: 1})
        RevocationsClient.start(self.settings, resources={COORDINATOR_RESOURCE: 1})
        PlacementClient.start(self.settings, resources={COORDINATOR_RESOURCE: 1})
        self.bridge = BridgeProcess(self.settings, self.address,
                                    self.settings.state_dir / "logs" / "bridge.log").start()
        JobsClient.start(self.settings, resources={COORDINATOR_RESOURCE: 1})  # resumes what a previous run left
        deploy(self.settings)

    def stop(self) -> None:
        """Take the coordinator down. A head of its own goes with everything it runs (Serve's graceful shutdown
        would drain the ingress replicas for up to 30 s, with nothing to hand over: jobs resume from the ledger
        at the next start); on a head someone else runs, its apps are taken down and the head stays."""
        import ray

        from archipelag.serve.app import undeploy

        if self.head is None:
            try:
                undeploy()
            except Exception:
                log.warning("serve did not shut down cleanly", exc_info=True)
        ray.shutdown()
        if self.bridge is not None:
            self.bridge.stop()
        if self.head is not None:
            self.head.stop()


def start_coordinator(settings: Settings, log_dir: Path, timeout_s: float = 90,
                      rotate_token: bool = False) -> Coordinator:
    """Start a head node (unless settings name one), then placement and the API on it."""
    coordinator = open_coordinator(settings, log_dir, timeout_s, rotate_token)
    try:
        coordinator.start_services()
    except BaseException:
        coordinator.stop()
        raise
    return coordinator


def open_coordinator(settings: Settings, log_dir: Path, timeout_s: float = 90,
                     rotate_token: bool = False) -> Coordinator:
    """The head node (unless settings name one) with this process connected to it, and the ledger ready; its
    services start with ``Coordinator.start_services``. Hosts may start joining in between: they wait for
    placement (``actors/join.py``), and their nodes come up while the services do."""
    env = prepare_ray_env(settings, rotate_token)  # before Ray is imported: it reads its auth settings at import

    import ray

    from archipelag.gate import tickets

    ledger = prepare_ledger(settings)
    tickets.coordinator_key(settings.state_dir)  # made once, here, before the API hands it out and jobs sign
    head = None
    address = settings.ray_address
    if not address:
        head = start_head(settings.ray_head_port, settings.ray_temp_dir, log_dir, node_ip=settings.ray_head_ip,
                          env=env)
        address = f"{settings.ray_head_ip}:{settings.ray_head_port}"
    try:
        if head is not None:
            head.wait_started(timeout_s)
        ray.init(address=address, namespace=settings.ray_namespace, logging_level=logging.WARNING,
                 log_to_driver=False)
    except BaseException:
        if head is not None:
            head.stop()
        raise
    if head is not None:
        head.remember_tree()
    return Coordinator(settings=settings, head=head, address=address, ledger=ledger)


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
