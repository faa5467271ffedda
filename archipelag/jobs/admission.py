"""Admission: what a job must pass before it is queued — the workload exists, its input is complete, the queue
has room, some host could ever run it — and what it reserves. Pure apart from the ranking it is handed."""

from __future__ import annotations

from typing import Any

from archipelag.catalog import Manifest, lookup, max_price_micro
from archipelag.errors import NoCapacity, ValidationFailed
from archipelag.ids import HostId, WorkloadSlug
from archipelag.placement.scoring import JobRequest


def job_request(manifest: Manifest, region: str | None) -> JobRequest:
    """What placement is asked for a job of ``manifest`` from ``region``."""
    return JobRequest(workload=manifest.slug, runtime=manifest.runtime, required_ram_mb=manifest.required_ram_mb,
                      required_vram_mb=manifest.required_vram_mb, caller_region=region)


def validate_input(manifest: Manifest, job_input: dict[str, Any]) -> None:
    missing = {f"input.{name}": "field required" for name in manifest.required_inputs if name not in job_input}
    if missing:
        raise ValidationFailed(f"{manifest.slug} needs {', '.join(sorted(missing))}", errors=missing)


def admit(catalog: dict[WorkloadSlug, Manifest], slug: str, job_input: dict[str, Any]) -> tuple[Manifest, int]:
    """The workload and the credits to reserve (its maximum price); NotFound or ValidationFailed when the
    request is wrong."""
    manifest = lookup(catalog, slug)
    validate_input(manifest, job_input)
    return manifest, max_price_micro(manifest, job_input)


def hosts_now(ranking: list[HostId] | NoCapacity) -> list[HostId]:
    """The hosts to try first; raises when no online host could ever run the job (503 before anything is
    written). Hosts that could but are all busy give an empty list: the job waits in the queue."""
    if isinstance(ranking, NoCapacity):
        if ranking.details.get("full"):
            return []
        raise ranking
    return ranking
