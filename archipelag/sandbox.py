"""Sandbox tiers: how much a workload of each trust level may use (DESIGN §5). Pure."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Tier(StrEnum):
    RESTRICTED = "restricted"  # trust level 0: small, short, no network, no GPU
    STANDARD = "standard"  # trust levels 1-2: GPU allowed
    ELEVATED = "elevated"  # trust level 3: network allowed


def tier_for_trust(trust_level: int) -> Tier:
    if trust_level <= 0:
        return Tier.RESTRICTED
    if trust_level <= 2:
        return Tier.STANDARD
    return Tier.ELEVATED


@dataclass(frozen=True)
class Limits:
    """The budget one job runs under. Built from settings for the workload's tier, then narrowed
    by the workload's own manifest (a manifest may ask for less, never more)."""

    memory_mb: int
    timeout_s: float
    network: bool
    gpu: bool
    fuel: int  # WASM instructions budget (wasmtime fuel units)
    output_bytes: int  # total stdout a job may write
    line_bytes: int  # longest single output line
    pids_limit: int = 128  # containers: processes and threads at once
    cpus: float = 1.0  # containers: CPU quota in cores (capped at the host's core count)
    tmp_mb: int = 64  # containers: size of the writable /tmp (a tmpfs, counted in memory)
    output_events: int = 100_000  # protocol events a job may write (each is an object held on the head)

    def within(self, bound: Limits) -> Limits:
        """These limits, nowhere wider than ``bound``: each budget the smaller of the two, network and GPU only
        when both allow them. A host runs a job within its signed tier's limits whatever the request says."""
        mine, theirs = vars(self), vars(bound)
        return Limits(**{name: (value and theirs[name]) if isinstance(value, bool) else min(value, theirs[name])
                         for name, value in mine.items()})

    def narrowed(self, memory_mb: int | None = None, timeout_s: float | None = None,
                 fuel: int | None = None, output_bytes: int | None = None) -> Limits:
        return Limits(
            memory_mb=min(self.memory_mb, memory_mb) if memory_mb else self.memory_mb,
            timeout_s=min(self.timeout_s, timeout_s) if timeout_s else self.timeout_s,
            network=self.network,
            gpu=self.gpu,
            fuel=min(self.fuel, fuel) if fuel else self.fuel,
            output_bytes=min(self.output_bytes, output_bytes) if output_bytes else self.output_bytes,
            line_bytes=self.line_bytes,
            pids_limit=self.pids_limit,
            cpus=self.cpus,
            tmp_mb=self.tmp_mb,
            output_events=self.output_events,
        )
