"""HostAgentClient: the typed wrapper around one host's agent actor; the only place that calls it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
    TaskCancelledError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from archipelag.actors.agent_actor import HostAgentActor
from archipelag.actors.hardware import Hardware
from archipelag.errors import HostLost, JobCancelled
from archipelag.ids import HostId, JobId
from archipelag.protocol import Event, error_event
from archipelag.runtimes.base import JobSpec
from archipelag.settings import Settings

_LOST = (ActorDiedError, ActorUnavailableError, RayActorError)


def actor_name(host_id: HostId) -> str:
    return f"host-agent:{host_id}"


class HostAgentClient:
    def __init__(self, host_id: HostId, handle: Any) -> None:
        self.host_id = host_id
        self._handle = handle

    @classmethod
    def start(cls, settings: Settings, host_id: HostId, name: str, region: str, hardware: Hardware,
              accepts: tuple[str, ...], node_id: str) -> HostAgentClient:
        """Create the host's agent, detached and pinned to its node (it dies with the node)."""
        handle = HostAgentActor.options(  # type: ignore[attr-defined]
            name=actor_name(host_id), namespace=settings.ray_namespace, lifetime="detached",
            get_if_exists=True, max_concurrency=settings.host_slots + 8,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote(settings, host_id, name, region, hardware, accepts)
        client = cls(host_id, handle)
        client.ping(timeout_s=120)
        return client

    @classmethod
    def connect(cls, settings: Settings, host_id: HostId) -> HostAgentClient:
        try:
            handle = ray.get_actor(actor_name(host_id), namespace=settings.ray_namespace)
        except ValueError:
            raise HostLost(f"host {host_id} has no running agent", host_id=host_id) from None
        return cls(host_id, handle)

    def ping(self, timeout_s: float = 10) -> str:
        try:
            return str(ray.get(self._handle.ping.remote(), timeout=timeout_s))
        except (*_LOST, GetTimeoutError) as exc:
            raise HostLost(f"host {self.host_id} does not answer: {type(exc).__name__}",
                           host_id=self.host_id) from None

    def capabilities(self, timeout_s: float = 10) -> dict[str, Any]:
        try:
            return dict(ray.get(self._handle.capabilities.remote(), timeout=timeout_s))
        except (*_LOST, GetTimeoutError) as exc:
            raise HostLost(f"host {self.host_id} does not answer: {type(exc).__name__}",
                           host_id=self.host_id) from None

    async def run(self, spec: JobSpec) -> AsyncIterator[Event]:
        """The job's events as the host yields them; HostLost when the host vanishes mid-job."""
        try:
            stream = self._handle.run.remote(spec)
            async for ref in stream:
                for event in await ref:  # the host sends what it has, in lists
                    yield event
        except _LOST as exc:
            raise HostLost(f"host {self.host_id} was lost while running the job: {type(exc).__name__}",
                           host_id=self.host_id) from None
        except TaskCancelledError:
            # Serve cancels a request's Ray calls when its client disconnects: the job ends as cancelled.
            yield error_event("cancelled: the client that started the job went away", JobCancelled.code)

    async def cancel(self, job_id: JobId, reason: str = "cancelled by the user") -> bool:
        try:
            return bool(await asyncio.wait_for(self._handle.cancel.remote(job_id, reason), timeout=10))
        except (*_LOST, TimeoutError):
            return False

    def leave(self) -> None:
        try:
            ray.get(self._handle.leave.remote(), timeout=10)
        except (*_LOST, GetTimeoutError):
            pass

    def kill(self) -> None:
        ray.kill(self._handle, no_restart=True)
