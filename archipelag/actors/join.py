"""Join: a machine becomes a host — detect its hardware, start its Ray node, start its agent."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archipelag.actors.hardware import Hardware, detect
from archipelag.errors import ConfigError, HostLost
from archipelag.ids import HostId, new_host_id
from archipelag.nodes import RayNodeProcess, host_resource, start_host_node
from archipelag.settings import Settings

if TYPE_CHECKING:  # the client imports Ray, which must not load before its environment is set
    from archipelag.actors.client import HostAgentClient

log = logging.getLogger(__name__)


@dataclass
class JoinedHost:
    settings: Settings
    host_id: HostId
    hardware: Hardware
    node: RayNodeProcess
    agent: HostAgentClient
    record_path: Path

    def leave(self) -> None:
        """Stop taking jobs, tell placement, and stop this host's Ray node."""
        import ray

        from archipelag.lifecycle import HostStatus
        from archipelag.placement.client import PlacementClient

        self.agent.leave()
        try:
            PlacementClient.connect(self.settings).set_status(self.host_id, HostStatus.OFFLINE)
        except Exception:
            log.warning("could not tell placement that %s left", self.host_id, exc_info=True)
        ray.shutdown()
        self.node.stop()
        self.record_path.unlink(missing_ok=True)


def _wait_for_node(host_id: HostId, node: RayNodeProcess, timeout_s: float) -> str:
    import ray

    deadline = time.monotonic() + timeout_s
    resource = host_resource(host_id)
    while time.monotonic() < deadline:
        nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
        for info in nodes:
            if info.get("Alive") and resource in info.get("Resources", {}):
                return str(info["NodeID"])
        if not node.alive():
            raise HostLost(f"the Ray node of {host_id} exited while joining; see {node.log_path}", host_id=host_id)
        time.sleep(0.2)
    raise HostLost(f"the Ray node of {host_id} did not join within {timeout_s:.0f} s; see {node.log_path}",
                   host_id=host_id)


def join(settings: Settings, coordinator: str, region: str, name: str | None = None,
         accepts: tuple[str, ...] = (), max_memory_mb: int | None = None, max_cores: int | None = None,
         host_id: str | None = None, node_ip: str | None = None, timeout_s: float = 120) -> JoinedHost:
    env = settings.ray_env()
    token_path = env.get("RAY_AUTH_TOKEN_PATH")
    if token_path and not Path(token_path).exists():
        raise ConfigError(f"no Ray auth token at {token_path}: a host needs the token its coordinator's owner "
                          "approved (copy it there, or set ARCHIPELAG_STATE_DIR to where it lies)")
    os.environ.update(env)  # before Ray is imported: it reads its auth settings at import

    import ray

    from archipelag.actors.client import HostAgentClient

    hardware = detect(max_memory_mb, max_cores)
    hid = HostId(host_id) if host_id else new_host_id()
    log_dir = (settings.state_dir / "logs").resolve()
    node = start_host_node(coordinator, hid, region, hardware.cpu_cores, log_dir, node_ip=node_ip, env=env)
    try:
        ray.init(address=coordinator, namespace=settings.ray_namespace, logging_level=logging.WARNING,
                 log_to_driver=False)
        node_id = _wait_for_node(hid, node, timeout_s)
        node.remember_tree()
        agent = HostAgentClient.start(settings, hid, name or hid, region, hardware, accepts, node_id)
    except BaseException:
        ray.shutdown()
        node.stop()
        raise
    record = (settings.state_dir / "hosts" / f"{hid}.json").resolve()
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"host_id": hid, "pid": os.getpid(), "ray_pid": node.pid, "node_id": node_id,
                                  "region": region}))
    return JoinedHost(settings, hid, hardware, node, agent, record)
