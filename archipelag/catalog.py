"""Catalog: the workloads the network offers, read from ``workloads/<slug>/manifest.toml``. Pure.

A manifest looks like::

    slug = "wasm-hash"
    name = "SHA-256 of a text"
    description = "..."
    runtime = "wasm"                 # "wasm" or "container"
    module = "wasm_hash.wasm"        # wasm: module file beside the manifest
    sha256 = "…"                     # wasm: the module's SHA-256, checked before it runs
    trust_level = 0                  # 0-3 → sandbox tier
    price = 0.01                     # credits per job
    required_ram_mb = 64
    required_vram_mb = 0
    [limits]                         # optional; may only narrow the tier's limits
    timeout_s = 10
    fuel = 500000000
    [input]                          # optional: JSON-schema-ish field list for validation
    required = ["text"]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archipelag.errors import ConfigError, NotFound
from archipelag.ids import WorkloadSlug
from archipelag.sandbox import Limits, Tier, tier_for_trust

RUNTIMES = frozenset({"wasm", "container"})
MICRO = 1_000_000  # micro-credits per credit


@dataclass(frozen=True)
class Manifest:
    slug: WorkloadSlug
    name: str
    description: str
    runtime: str
    trust_level: int
    price_micro: int
    required_ram_mb: int = 0
    required_vram_mb: int = 0
    module: str | None = None
    sha256: str | None = None
    image: str | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    required_inputs: tuple[str, ...] = ()
    directory: str = ""  # where the manifest was read from

    @property
    def tier(self) -> Tier:
        return tier_for_trust(self.trust_level)

    @property
    def price(self) -> float:
        return self.price_micro / MICRO

    def module_path(self) -> Path:
        if not self.module:
            raise ConfigError(f"workload {self.slug} has no module file")
        return Path(self.directory) / self.module

    def limits_under(self, tier_limits: Limits) -> Limits:
        return tier_limits.narrowed(
            memory_mb=self.limits.get("memory_mb"),
            timeout_s=self.limits.get("timeout_s"),
            fuel=self.limits.get("fuel"),
            output_bytes=self.limits.get("output_bytes"),
        )


def parse_manifest(data: dict[str, Any], directory: Path) -> Manifest:
    try:
        runtime = str(data["runtime"])
        if runtime not in RUNTIMES:
            raise ConfigError(f"{directory}: runtime must be one of {sorted(RUNTIMES)}, not {runtime!r}")
        return Manifest(
            slug=WorkloadSlug(str(data["slug"])),
            name=str(data["name"]),
            description=str(data.get("description", "")),
            runtime=runtime,
            trust_level=int(data.get("trust_level", 0)),
            price_micro=round(float(data.get("price", 0)) * MICRO),
            required_ram_mb=int(data.get("required_ram_mb", 0)),
            required_vram_mb=int(data.get("required_vram_mb", 0)),
            module=data.get("module"),
            sha256=data.get("sha256"),
            image=data.get("image"),
            limits=dict(data.get("limits", {})),
            required_inputs=tuple(data.get("input", {}).get("required", ())),
            directory=str(directory.resolve()),
        )
    except KeyError as missing:
        raise ConfigError(f"{directory}/manifest.toml is missing {missing}") from None


def load_catalog(workloads_dir: Path) -> dict[WorkloadSlug, Manifest]:
    """Every manifest under ``workloads_dir``, by slug, in slug order."""
    catalog: dict[WorkloadSlug, Manifest] = {}
    for path in sorted(workloads_dir.glob("*/manifest.toml")):
        with path.open("rb") as fh:
            manifest = parse_manifest(tomllib.load(fh), path.parent)
        if manifest.slug in catalog:
            raise ConfigError(f"two workloads use the slug {manifest.slug!r}")
        catalog[manifest.slug] = manifest
    return dict(sorted(catalog.items()))


def lookup(catalog: dict[WorkloadSlug, Manifest], slug: str) -> Manifest:
    try:
        return catalog[WorkloadSlug(slug)]
    except KeyError:
        raise NotFound(f"unknown workload {slug!r}; GET /api/v1/workloads lists them") from None
