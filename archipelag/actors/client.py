"""HostAgentClient: the typed wrapper around one host's agent actor, for the host's own driver (and the bridge's
errors: ``LOST``). The coordinator's services reach an agent through the bridge (bridge/client.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Final

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
    RayError,
    RayTaskError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from archipelag.actors.agent_actor import HostAgentActor
from archipelag.actors.controls import AgentView, Command, Controller
from archipelag.actors.hardware import Hardware
from archipelag.errors import ArchipelagError, HostLost
from archipelag.ids import HostId
from archipelag.settings import Settings

LOST = (ActorDiedError, ActorUnavailableError, RayActorError)  # what Ray raises for an agent that is gone
log = logging.getLogger(__name__)
STALE_AGENT_TRIES: Final = 5  # tries at ending an agent left on a node that is gone and starting anew (``start``)
STALE_AGENT_PAUSE_S: Final = 0.5  # for the cluster to free the ended agent's name


def actor_name(host_id: HostId) -> str:
    return f"host-agent:{host_id}"


def _last_line(error: str) -> str:
    """The error an actor's constructor raised, from Ray's report of it (the traceback's last line, less the
    exception's module path)."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else error
    name, _, message = last.partition(": ")
    return message if message and "." in name and " " not in name else last


class HostAgentClient:
    def __init__(self, host_id: HostId, handle: Any) -> None:
        self.host_id = host_id
        self._handle = handle

    @classmethod
    def start(cls, settings: Settings, host_id: HostId, name: str, region: str, hardware: Hardware,
              accepts: tuple[str, ...], node_id: str, asks: Mapping[str, int] | None = None) -> HostAgentClient:
        """Create the host's agent, detached and pinned to its node (it dies with the node), or take the one that
        runs there already. ``asks``: its prices (``host join --price``), which its registration carries.

        An agent of this name that does not answer is the one on the host's previous node, which the cluster has
        not yet found gone (Ray's health checks take ~15 s): it is ended, and this node's own started, instead of
        the host rejoining only once the cluster has noticed."""
        for attempt in range(1, STALE_AGENT_TRIES + 1):
            handle = HostAgentActor.options(  # type: ignore[attr-defined]
                name=actor_name(host_id), namespace=settings.ray_namespace, lifetime="detached",
                get_if_exists=True, max_concurrency=settings.host_slots + 8,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            ).remote(settings, host_id, name, region, hardware, accepts, dict(asks or {}))
            try:
                ray.get(handle.ping.remote(), timeout=120)
                break
            except RayActorError as exc:
                if exc.actor_init_failed:  # e.g. placement refused its registration: say why, not just that it died
                    raise HostLost(f"host {host_id}'s agent did not start: {_last_line(exc.error_msg)}",
                                   host_id=host_id) from None
                if attempt == STALE_AGENT_TRIES:
                    raise HostLost(f"host {host_id} does not answer: {type(exc).__name__}", host_id=host_id) from None
                log.info("host %s: its agent does not answer (%s), as on a node that is gone; starting a new one",
                         host_id, type(exc).__name__)
                ray.kill(handle, no_restart=True)
                time.sleep(STALE_AGENT_PAUSE_S)
            except GetTimeoutError:
                raise HostLost(f"host {host_id} does not answer: its agent did not start within 120 s",
                               host_id=host_id) from None
        return cls(host_id, handle)

    @classmethod
    def connect(cls, settings: Settings, host_id: HostId) -> HostAgentClient:
        if not ray.is_initialized():  # an API without a cluster (tests); get_actor would start a Ray of its own
            raise HostLost(f"host {host_id} has no running agent: this process is not part of a network",
                           host_id=host_id)
        try:
            handle = ray.get_actor(actor_name(host_id), namespace=settings.ray_namespace)
        except ValueError:
            raise HostLost(f"host {host_id} has no running agent", host_id=host_id) from None
        return cls(host_id, handle)

    def ping(self, timeout_s: float = 10) -> str:
        try:
            return str(ray.get(self._handle.ping.remote(), timeout=timeout_s))
        except (*LOST, GetTimeoutError) as exc:
            raise HostLost(f"host {self.host_id} does not answer: {type(exc).__name__}",
                           host_id=self.host_id) from None

    def capabilities(self, timeout_s: float = 10) -> dict[str, Any]:
        try:
            return dict(ray.get(self._handle.capabilities.remote(), timeout=timeout_s))
        except (*LOST, GetTimeoutError) as exc:
            raise HostLost(f"host {self.host_id} does not answer: {type(exc).__name__}",
                           host_id=self.host_id) from None

    def control(self, command: Command, by: Controller, reason: str, timeout_s: float = 30) -> AgentView:
        """Pause, resume or drain the host; its state after. The agent's refusal (Conflict) comes back as itself."""
        return self._get(self._handle.control.remote(command, by, reason), timeout_s)

    def view(self, timeout_s: float = 10) -> AgentView:
        return self._get(self._handle.view.remote(), timeout_s)

    def _get(self, ref: Any, timeout_s: float) -> AgentView:
        try:
            view: AgentView = ray.get(ref, timeout=timeout_s)
        except RayTaskError as exc:
            raise _cause(exc, self.host_id) from None
        except (RayError, ConnectionError) as exc:  # gone, timed out, or its cluster is: all mean not reachable now
            raise HostLost(f"host {self.host_id} does not answer: {type(exc).__name__}", host_id=self.host_id) from None
        return view

    def leave(self) -> None:
        try:
            ray.get(self._handle.leave.remote(), timeout=10)
        except (*LOST, GetTimeoutError):
            pass


def _cause(exc: RayTaskError, host_id: HostId) -> ArchipelagError:
    """The error the agent raised on purpose, or HostLost for anything else it raised."""
    if isinstance(exc.cause, ArchipelagError):
        return exc.cause
    return HostLost(f"host {host_id} failed the request: {exc.cause!r}", host_id=host_id)
