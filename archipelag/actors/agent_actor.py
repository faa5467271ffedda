"""HostAgentActor: the Ray shell around HostAgent, one per host node, pinned to that node."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import replace
from typing import Any

import ray

from archipelag import identity
from archipelag.actors.controls import AgentView, Command, Controller, share_of
from archipelag.actors.hardware import Hardware, metrics
from archipelag.actors.heartbeat import Heartbeat
from archipelag.actors.host_agent import HostAgent
from archipelag.actors.reports import Reports
from archipelag.catalog import Manifest, ModelSpec
from archipelag.catalog_signing import CatalogGuard
from archipelag.errors import NoCapacity, NotFound, RuntimeUnavailable
from archipelag.ids import HostId, JobId, WorkloadSlug
from archipelag.lifecycle import HostStatus
from archipelag.metrics.trace import TRACE
from archipelag.placement.scoring import HostSnapshot, accepts
from archipelag.protocol import Event, holds_output
from archipelag.runtimes.base import JobSpec, Runtime
from archipelag.runtimes.models import ModelStore
from archipelag.settings import Settings

log = logging.getLogger(__name__)


def build_runtimes(settings: Settings, host_id: HostId, hardware: Hardware) -> dict[str, Runtime]:
    """WASM always; containers through the host's gate when one is configured (this node cannot reach the Docker
    engine then), else when this machine's Docker engine answers."""
    from archipelag.runtimes.models import ModelStore
    from archipelag.runtimes.wasm import WasmRuntime

    runtimes: dict[str, Runtime] = {
        "wasm": WasmRuntime(cache_dir=(settings.state_dir / "wasm-cache" / host_id).resolve()),
    }
    try:
        if settings.gate_socket is not None:
            from archipelag.gate.client import GatedRuntime

            runtimes["container"] = GatedRuntime.connect(settings.gate_socket, ModelStore(settings.models_dir),
                                                         image_fetch_s=settings.image_fetch_timeout_s)
        else:
            from archipelag.runtimes.docker import DockerRuntime

            runtimes["container"] = DockerRuntime.from_settings(settings, gpu=hardware.gpu_model is not None,
                                                                lent_cores=hardware.cpu_cores)
    except RuntimeUnavailable as exc:
        log.warning("host %s offers no container runtime: %s", host_id, exc.message)
    return runtimes


def host_signer(settings: Settings, host_id: HostId) -> identity.Signer:
    """The host's gate where it has one: it holds the host's key, which this node's account cannot read. Else the
    key on this machine (the node runs as the owner, who holds it anyway)."""
    if settings.gate_socket is not None:
        from archipelag.gate.client import gate_signer

        return gate_signer(settings.gate_socket, host_id)
    return identity.key_signer(identity.host_key(settings.state_dir, host_id), host_id)


def accepts_with_models(patterns: tuple[str, ...], manifests: Mapping[WorkloadSlug, Manifest],
                        has_model: Callable[[ModelSpec], bool]) -> tuple[str, ...]:
    """The operator's accept patterns, less the workloads whose model weights this host lacks: then an explicit
    list of slugs (placement never sends the others here). Pure."""
    lacking = {slug for slug, m in manifests.items() if m.model is not None and not has_model(m.model)}
    if not lacking:
        return patterns
    able = tuple(slug for slug in manifests if slug not in lacking and accepts(patterns, slug))
    return able or ("-none-",)  # an empty list would mean "everything"


@ray.remote(num_cpus=0, max_restarts=0)
class HostAgentActor:
    """Thin shell: every method forwards to HostAgent; the heartbeat thread reports to placement."""

    def __init__(self, settings: Settings, host_id: HostId, name: str, region: str, hardware: Hardware,
                 accepts: tuple[str, ...], asks: Mapping[str, int] | None = None) -> None:
        self._settings = settings
        TRACE.configure(settings.trace_file)
        self._host_id = host_id
        self._name = name
        self._region = region
        self._hardware = hardware
        self._accepts = accepts
        self._asks = dict(asks or {})  # `host join --price`: in its signed registration, bounds-checked by placement
        self._guard = CatalogGuard.from_settings(settings)
        runtimes = build_runtimes(settings, host_id, hardware)
        self._sign = host_signer(settings, host_id)  # it signs job receipts and every report to placement
        self._agent = HostAgent(host_id, runtimes, settings.host_slots, self._guard.admit,
                                share=share_of(hardware, accepts), signer=self._sign)
        self._models: ModelStore | None = getattr(runtimes.get("container"), "models", None)
        self._reports = Reports.from_settings(settings)  # to placement, through the coordinator's API
        self._report_lock = threading.Lock()  # reports leave signed in the order of their timestamps
        try:
            self._register()
        except NoCapacity as exc:  # placement or the ledger busy or restarting: the first heartbeat registers it
            log.warning("host %s: registration not taken yet (%s); the next heartbeat registers it", host_id, exc)
        self._heartbeat = Heartbeat(self._beat, settings.heartbeat_interval_s, name=f"heartbeat-{host_id}")
        self._heartbeat.start()

    def _snapshot(self) -> HostSnapshot:
        live = self._metrics()
        load = self._agent.load()
        return HostSnapshot(
            host_id=self._host_id, name=self._name, region=self._region, status=self._agent.state.status,
            runtimes=self._agent.runtimes, cpu_cores=self._hardware.cpu_cores, ram_mb=self._hardware.ram_mb,
            free_ram_mb=live["free_ram_mb"], gpu_model=self._hardware.gpu_model,
            vram_mb=self._hardware.gpu_vram_mb, free_vram_mb=live["free_vram_mb"], slots=load.slots,
            active_jobs=load.active_jobs, karma=0.5, accepts=self._effective_accepts(), warm=self._agent.warm(time.time()),
            speed=0.5,
            last_heartbeat_at=time.time(), node_id=ray.get_runtime_context().get_node_id(), asks=dict(self._asks),
        )

    def _effective_accepts(self) -> tuple[str, ...]:
        """Re-read when the host registers again (a model copied in later counts from then)."""
        has = self._models.has if self._models is not None else (lambda _: False)
        return accepts_with_models(self._accepts, self._guard.catalog.manifests, has)

    def _metrics(self) -> dict[str, Any]:
        live = metrics(self._hardware)
        return {**live, "free_vram_mb": min(live["free_vram_mb"], self._hardware.gpu_vram_mb)}  # only what is lent

    def _beat(self) -> None:
        live = self._metrics()
        load = self._agent.load()
        warm = sorted(self._agent.warm(time.time()))
        report = {**live, "active_jobs": load.active_jobs, "warm": warm}
        with self._report_lock:
            known = self._reports.beat(self._host_id, report, self._sign("heartbeat", report))
        if not known:
            self._register()
        else:
            self._agent.restate(self._set_status)

    def report(self) -> None:
        """A signed heartbeat now, not at the next tick: placement asks when someone reported this host lost
        (placement/suspects.py), and believes only the host's own key."""
        self._beat()

    def control(self, command: Command, by: Controller, reason: str) -> AgentView:
        """Pause, resume or drain this host (its owner, the schedule, an admin)."""
        return self._agent.control(Command(command), Controller(by), reason, time.time(), self._tell_placement)

    def view(self) -> AgentView:
        return self._agent.view()

    def _set_status(self, status: HostStatus) -> None:
        with self._report_lock:
            self._reports.set_status(self._host_id, status, self._sign("status", identity.status_report(status)))

    def _tell_placement(self, status: HostStatus) -> None:
        try:
            self._set_status(status)
        except NotFound:  # placement restarted and has not heard from this host yet
            self._register(replace(self._snapshot(), status=status))

    def _register(self, snapshot: HostSnapshot | None = None) -> None:
        """Tell placement who this host is and what it has, signed with the host's key (placement refuses an
        unsigned registration)."""
        with self._report_lock:
            snapshot = snapshot or self._snapshot()
            self._reports.register(snapshot, self._sign("register", snapshot))

    def run(self, spec: JobSpec) -> Generator[list[Event], None, None]:
        batches = self._agent.run_batched(spec, self._settings.keepalive_s)
        if not TRACE.on:
            yield from batches
            return
        TRACE.stamp(spec.job_id, "host")
        first = True
        try:
            for batch in batches:
                if first and holds_output(batch):
                    TRACE.stamp(spec.job_id, "host_out")
                    first = False
                yield batch
        finally:
            batches.close()

    def cancel(self, job_id: JobId, reason: str = "cancelled by the user") -> bool:
        return self._agent.cancel(job_id, reason)

    def capabilities(self) -> dict[str, Any]:
        return {**self._hardware.as_capabilities(), "runtimes": sorted(self._agent.runtimes)}

    def ping(self) -> str:
        return self._host_id

    def leave(self) -> None:
        """Stop heartbeating and cancel what runs; the node is about to go."""
        self._heartbeat.stop()
        self._agent.close()
        self._reports.close()
