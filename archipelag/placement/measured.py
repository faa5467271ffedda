"""Measured hardware: what the join benchmark found on a host's node, and how placement believes that instead of
the host's claims — claims the measurement contradicts are capped and flagged, and the speed term comes from the
measurement alone. Pure (no Ray, no psutil): ``actors/benchmark.py`` measures, ``placement/prober.py`` carries.

What this does and does not stop. The benchmark is started by the coordinator as a Ray task pinned to the node
that carries the host's own resource, so a host cannot answer for it with a number it writes itself, nor have
another (faster) node measured in its place. But the task runs on the host's machine, under the host operator's
control: a hostile operator can slow it down, starve it, or replace the Ray worker's code and return anything.
So the measurement only caps claims upward: a host that claims 64 cores on a 2-core box gets 2, a host that
under-reports gets what it claimed. A faked *fast* result raises only the speed term (weight 0.1 by default,
below the gap between the caller's region and its neighbour), never what a host may take past its claims.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from archipelag.ids import HostId

if TYPE_CHECKING:
    from archipelag.placement.scoring import HostSnapshot
    from archipelag.settings import BenchmarkSettings

# Flags on a host's hardware check; each names one claim the measurement contradicted, or why there is none.
UNMEASURED = "unmeasured"  # the benchmark has not answered yet: claims stand, speed 0
BENCHMARK_FAILED = "benchmark_failed"  # it failed or timed out: claims stand, speed 0
CORES_CAPPED = "cpu_cores_capped"  # more cores claimed than the parallel hashing speed supports
RAM_CAPPED = "ram_capped"  # more RAM claimed than the node has, or than an allocation could get
VRAM_CAPPED = "gpu_vram_capped"  # more GPU memory claimed than NVML reports
GPU_NOT_FOUND = "gpu_not_found"  # a GPU claimed, none found


@dataclass(frozen=True)
class Claims:
    """What a host said it lends, and what the benchmark should test: one thread per claimed core, and an
    allocation of the claimed RAM up to the benchmark's bound."""

    cpu_cores: int
    ram_mb: int
    gpu_model: str | None
    vram_mb: int


@dataclass(frozen=True)
class Measurement:
    """What the join benchmark found on the node (units in the names; SHA-256 MB/s is deterministic work)."""

    threads: int  # threads run in the all-cores pass (the claimed cores, bounded)
    cpu_single_mb_s: float  # SHA-256 of 1 MiB buffers, one thread
    cpu_all_mb_s: float  # the same with ``threads`` threads at once (hashlib releases the GIL)
    cpu_single_share: float  # CPU seconds per wall second the one thread got: below 1 on a busy machine
    cpu_parallelism: float  # CPU seconds per wall second during the all-cores pass: cores that really ran at once
    memory_probe_mb: int  # the allocation asked for: the claimed RAM up to the bound
    memory_verified_mb: int  # how much of it was allocated and every page written
    memory_mb_s: float  # write bandwidth into that allocation
    node_ram_mb: int  # total RAM as the node's kernel reports it
    gpu_model: str | None  # as NVML names it; None without a GPU
    gpu_vram_mb: int
    gpu_tflops: float | None  # fp16 matmul, when torch with CUDA is there
    duration_s: float

    @property
    def parallel_speedup(self) -> float:
        """How many single threads' worth the all-cores pass did."""
        return self.cpu_all_mb_s / self.cpu_single_mb_s if self.cpu_single_mb_s > 0 else 0.0

    @property
    def cores_observed(self) -> float:
        """The cores the claims can count on. The cores busy at once (never more than the machine has), or, on a
        machine busy with other work, that over the share one thread got alone — as long as the hashing really
        scaled that far. A 2-core box under load showed 0.6 cores busy for 2 threads, 0.5 for one: 1.2 cores."""
        normalised = self.cpu_parallelism / self.cpu_single_share if self.cpu_single_share > 0 else 0.0
        return max(self.cpu_parallelism, min(self.parallel_speedup, normalised))


@dataclass(frozen=True)
class Rules:
    """How strict the caps are and what a speed of 1.0 means (settings: ``ARCHIPELAG_BENCHMARK__*``)."""

    # Claimed cores stand up to ⌈cores observed × this⌉ and are capped there: a machine busy with its owner's
    # work scales below one per core (2 honest cores measured 0.98 here under load), 64 claimed on 2 do not.
    core_tolerance: float = 1.5
    reference_cpu_single_mb_s: float = 2000.0
    reference_cpu_all_mb_s: float = 16000.0
    reference_gpu_tflops: float = 100.0

    @classmethod
    def from_settings(cls, settings: BenchmarkSettings) -> Rules:
        return cls(core_tolerance=settings.core_tolerance,
                   reference_cpu_single_mb_s=settings.reference_cpu_single_mb_s,
                   reference_cpu_all_mb_s=settings.reference_cpu_all_mb_s,
                   reference_gpu_tflops=settings.reference_gpu_tflops)


@dataclass(frozen=True)
class HardwareCheck:
    """Placement's verdict on one host's claims: what it believes, why, and the measurement behind it."""

    claims: Claims
    cpu_cores: int
    ram_mb: int
    gpu_model: str | None
    vram_mb: int
    speed: float  # 0..1, the speed term
    flags: tuple[str, ...] = ()
    note: str = ""  # why the benchmark failed
    measurement: Measurement | None = None
    node_id: str = ""  # the node it was measured on

    def view(self) -> dict[str, Any]:
        """The API's ``measured`` object on a host (GET /api/v1/hosts/{id})."""
        m = self.measurement
        return {
            "flags": list(self.flags),
            "speed": round(self.speed, 4),
            "claimed": {"cpu_cores": self.claims.cpu_cores, "ram_mb": self.claims.ram_mb,
                        "gpu_model": self.claims.gpu_model, "gpu_vram_mb": self.claims.vram_mb},
            "note": self.note or None,
            "benchmark": None if m is None else {
                "cpu_single_mb_s": round(m.cpu_single_mb_s, 1), "cpu_all_mb_s": round(m.cpu_all_mb_s, 1),
                "threads": m.threads, "parallel_speedup": round(m.parallel_speedup, 2),
                "cpu_single_share": round(m.cpu_single_share, 2), "cpu_parallelism": round(m.cpu_parallelism, 2),
                "memory_probe_mb": m.memory_probe_mb, "memory_verified_mb": m.memory_verified_mb,
                "memory_mb_s": round(m.memory_mb_s, 1), "node_ram_mb": m.node_ram_mb, "gpu_model": m.gpu_model,
                "gpu_vram_mb": m.gpu_vram_mb,
                "gpu_tflops": None if m.gpu_tflops is None else round(m.gpu_tflops, 2),
                "duration_s": round(m.duration_s, 3),
            },
        }


def claims_of(snapshot: HostSnapshot) -> Claims:
    return Claims(snapshot.cpu_cores, snapshot.ram_mb, snapshot.gpu_model, snapshot.vram_mb)


def unmeasured(claims: Claims, flag: str = UNMEASURED, note: str = "") -> HardwareCheck:
    """Before a measurement (or without one): the claims stand, and nothing measured earns no speed."""
    return HardwareCheck(claims, claims.cpu_cores, claims.ram_mb, claims.gpu_model, claims.vram_mb, speed=0.0,
                         flags=(flag,), note=note)


def speed(measurement: Measurement, rules: Rules) -> float:
    """The mean of each measured rate over its reference, each at most 1 (the GPU counts only where measured)."""
    ratios = [measurement.cpu_single_mb_s / rules.reference_cpu_single_mb_s,
              measurement.cpu_all_mb_s / rules.reference_cpu_all_mb_s]
    if measurement.gpu_tflops is not None:
        ratios.append(measurement.gpu_tflops / rules.reference_gpu_tflops)
    return sum(min(1.0, max(0.0, r)) for r in ratios) / len(ratios)


def check(claims: Claims, measurement: Measurement, rules: Rules, node_id: str = "") -> HardwareCheck:
    """Cap each claim the measurement contradicts to what was measured, and flag it. Claims below the
    measurement stand: the host lends what it chose to lend."""
    flags: list[str] = []
    cores = claims.cpu_cores
    supported = max(1, math.ceil(measurement.cores_observed * rules.core_tolerance - 1e-9))
    if cores > supported:
        cores = supported
        flags.append(CORES_CAPPED)
    ram = claims.ram_mb
    ram_limit = measurement.node_ram_mb
    if measurement.memory_verified_mb < measurement.memory_probe_mb:
        ram_limit = min(ram_limit, measurement.memory_verified_mb)  # the allocation could not get what was asked
    if ram > ram_limit:
        ram = max(0, ram_limit)
        flags.append(RAM_CAPPED)
    gpu_model, vram = claims.gpu_model, claims.vram_mb
    if (gpu_model is not None or vram > 0) and measurement.gpu_model is None:
        gpu_model, vram = None, 0
        flags.append(GPU_NOT_FOUND)
    elif vram > measurement.gpu_vram_mb:
        vram = measurement.gpu_vram_mb
        flags.append(VRAM_CAPPED)
    return HardwareCheck(claims, cores, ram, gpu_model, vram, speed(measurement, rules), tuple(flags),
                         measurement=measurement, node_id=node_id)


def believed(snapshot: HostSnapshot, verdict: HardwareCheck) -> HostSnapshot:
    """The snapshot as placement uses it: the checked hardware in place of the claimed one."""
    return replace(snapshot, cpu_cores=verdict.cpu_cores, ram_mb=verdict.ram_mb,
                   free_ram_mb=min(snapshot.free_ram_mb, verdict.ram_mb), gpu_model=verdict.gpu_model,
                   vram_mb=verdict.vram_mb, free_vram_mb=min(snapshot.free_vram_mb, verdict.vram_mb),
                   speed=verdict.speed, hardware=verdict)


@dataclass
class Measurements:
    """Each host's last benchmark result, kept by node: a host that registers again on the same node is checked
    against what was measured there, and measured again only on a new node or after a failure.

    Each probe gets a one-time random ticket that only placement and its prober hold (never in a snapshot): an
    answer without it is ignored, so a joined node that calls placement's ``measured`` itself (Ray lets any node
    call any named actor) cannot write a measurement for itself or cap another host."""

    rules: Rules
    _by_host: dict[HostId, HardwareCheck] = field(default_factory=dict)
    _tickets: dict[HostId, tuple[str, str]] = field(default_factory=dict)  # host → (node id, ticket) awaited

    def registered(self, snapshot: HostSnapshot) -> tuple[HostSnapshot, str | None]:
        """The snapshot placement should hold, and the ticket of a benchmark to start on its node (or None)."""
        claims = claims_of(snapshot)
        known = self._by_host.get(snapshot.host_id)
        if known is not None and known.node_id == snapshot.node_id and known.measurement is not None:
            return believed(snapshot, check(claims, known.measurement, self.rules, snapshot.node_id)), None
        self._by_host[snapshot.host_id] = replace(unmeasured(claims), node_id=snapshot.node_id)
        ticket = secrets.token_hex(16)
        self._tickets[snapshot.host_id] = (snapshot.node_id, ticket)
        return believed(snapshot, self._by_host[snapshot.host_id]), ticket

    def _redeem(self, host_id: HostId, node_id: str, ticket: str) -> HardwareCheck | None:
        awaited = self._tickets.get(host_id)
        known = self._by_host.get(host_id)
        if awaited is None or known is None or not secrets.compare_digest(awaited[1], ticket):
            return None
        del self._tickets[host_id]
        return known if awaited[0] == node_id == known.node_id else None

    def measured(self, host_id: HostId, node_id: str, ticket: str, measurement: Measurement) -> HardwareCheck | None:
        """Record a result; None when its ticket is not the one awaited (stale, or not from the prober)."""
        known = self._redeem(host_id, node_id, ticket)
        if known is None:
            return None
        verdict = check(known.claims, measurement, self.rules, node_id)
        self._by_host[host_id] = verdict
        return verdict

    def failed(self, host_id: HostId, node_id: str, ticket: str, why: str) -> HardwareCheck | None:
        known = self._redeem(host_id, node_id, ticket)
        if known is None:
            return None
        verdict = replace(unmeasured(known.claims, BENCHMARK_FAILED, why), node_id=node_id)
        self._by_host[host_id] = verdict
        return verdict
