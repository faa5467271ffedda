"""Prober: the join benchmark — placement asks (``BridgeProber``), the bridge starts ``actors/benchmark.run`` as a
Ray task on the node of the host that just registered (``RayProber``), and the answer goes back to placement.

The task is pinned twice: to the node id the host registered with (hard node affinity) and to the custom resource
that only that host's node carries (``nodes.host_resource``). A host that registers with another node's id gets no
measurement from that node: the task cannot be placed there, and the host is flagged ``benchmark_failed``. The
answer goes to placement as a call through its own actor handle, so it is applied in turn with every other call
(placement runs one call at a time) and never from a background thread; it carries the probe's one-time ticket,
without which placement ignores it (placement/measured.py ``Measurements``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from archipelag.ids import HostId
from archipelag.nodes import host_resource
from archipelag.placement.measured import Claims, Measurement
from archipelag.settings import BenchmarkSettings

log = logging.getLogger(__name__)

NODE_WAIT_S = 10.0  # a node that registered its agent is in Ray's node table; give the table this long


class Prober(Protocol):
    """What placement needs to have a host measured: start it, and be told later (``PlacementActor.measured``)."""

    def probe(self, host_id: HostId, node_id: str, claims: Claims, ticket: str) -> None: ...


def _measure(claims: Claims, settings: BenchmarkSettings) -> Measurement:
    from archipelag.actors.benchmark import run

    return run(claims, settings)


def _node_carries(node_id: str, resource: str) -> bool:
    """Whether the live node ``node_id`` carries ``resource`` (Ray's node table, kept by the head)."""
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return any(n.get("NodeID") == node_id and n.get("Alive") and resource in n.get("Resources", {}) for n in nodes)


class Reporting:
    """A prober's half in placement's process: measures in the background (placement must not wait ~1 s per joining
    host), then hands the answer to placement's actor handle. The answer carries ``ticket``, which never leaves
    placement's process: the benchmark task does not get it."""

    def measure(self, host_id: HostId, node_id: str, claims: Claims) -> Measurement:
        raise NotImplementedError

    def probe(self, host_id: HostId, node_id: str, claims: Claims, ticket: str) -> None:
        import ray

        placement = ray.get_runtime_context().current_actor
        threading.Thread(target=self._measure_and_report, args=(placement, host_id, node_id, claims, ticket),
                         name=f"benchmark-{host_id}", daemon=True).start()

    def _measure_and_report(self, placement: Any, host_id: HostId, node_id: str, claims: Claims,
                            ticket: str) -> None:
        try:
            measurement = self.measure(host_id, node_id, claims)
        except Exception as exc:  # noqa: BLE001 - any failure of the task is the host's: flagged, never fatal
            why = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
            log.warning("host %s: join benchmark failed: %s", host_id, why)
            placement.measure_failed.remote(host_id, node_id, ticket, why[:500])
            return
        log.info("host %s measured: %.0f MB/s single, %.0f MB/s on %d threads, %d MB verified, %.2f s",
                 host_id, measurement.cpu_single_mb_s, measurement.cpu_all_mb_s, measurement.threads,
                 measurement.memory_verified_mb, measurement.duration_s)
        placement.measured.remote(host_id, node_id, ticket, measurement)


class BridgeProber(Reporting):
    """Placement's prober in a network: the bridge runs the benchmark on the host's node."""

    def __init__(self, settings: BenchmarkSettings, bridge: Path) -> None:
        self._settings = settings
        self._bridge = bridge

    def measure(self, host_id: HostId, node_id: str, claims: Claims) -> Measurement:
        from archipelag.bridge.client import BridgedAgent

        agent = BridgedAgent(host_id, self._bridge)
        return asyncio.run(agent.measure(node_id, claims, self._settings.timeout_s + NODE_WAIT_S + 5))


class RayProber(Reporting):
    """Runs the benchmark as a Ray task pinned to the host's node: what the bridge does for placement."""

    def __init__(self, settings: BenchmarkSettings) -> None:
        self._settings = settings

    def measure(self, host_id: HostId, node_id: str, claims: Claims) -> Measurement:
        """Run the benchmark on the node and wait for it; raises when the node is not the host's or it fails."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        resource = host_resource(host_id)
        deadline = time.monotonic() + NODE_WAIT_S
        while not _node_carries(node_id, resource):
            if time.monotonic() > deadline:
                raise LookupError(f"no live node {node_id[:12]}… carries {resource}: the host registered with a "
                                  "node that is not its own")
            time.sleep(0.2)
        task = ray.remote(_measure).options(
            num_cpus=0, max_retries=0, resources={resource: 0.001},
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        )
        ref = task.remote(claims, self._settings)
        try:
            measurement: Measurement = ray.get(ref, timeout=self._settings.timeout_s)
        except BaseException:
            try:
                ray.cancel(ref, force=True)  # an infeasible or hung task must not stay queued on the host
            except Exception:  # it may have ended meanwhile
                log.debug("benchmark of %s not cancelled", host_id, exc_info=True)
            raise
        return measurement
