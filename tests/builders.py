"""Builders: hosts and jobs for placement tests, with defaults that place anywhere; say only what matters."""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from archipelag.ids import HostId, WorkloadSlug
from archipelag.ledger.karma_rules import DEFAULT_RULES, KarmaState, Standing
from archipelag.lifecycle import HostStatus
from archipelag.placement.scoring import HostSnapshot, JobRequest

NOW = 1_700_000_000.0  # a fixed clock for unit tests
REGIONS = ("eu-west", "eu-central", "us-east", "us-west", "ap-south", "ap-east", "sa-east", "lab-1")


def a_host(host_id: str = "host-a", *, region: str = "eu-west", status: HostStatus = HostStatus.ONLINE,
           runtimes: frozenset[str] = frozenset({"wasm"}), ram_mb: int = 8192, free_ram_mb: int | None = None,
           gpu_model: str | None = None, vram_mb: int = 0, free_vram_mb: int | None = None, cpu_cores: int = 4,
           slots: int = 4, active_jobs: int = 0, karma: float = 0.5, accepts: tuple[str, ...] = (),
           warm: frozenset[str] = frozenset(), speed: float = 0.5, last_heartbeat_at: float = NOW,
           asks: dict[str, int] | None = None, **extra: Any) -> HostSnapshot:
    return HostSnapshot(
        host_id=HostId(host_id), name=extra.pop("name", host_id), region=region, status=status,
        runtimes=runtimes, cpu_cores=cpu_cores, ram_mb=ram_mb,
        free_ram_mb=ram_mb if free_ram_mb is None else free_ram_mb, gpu_model=gpu_model, vram_mb=vram_mb,
        free_vram_mb=vram_mb if free_vram_mb is None else free_vram_mb, slots=slots, active_jobs=active_jobs,
        karma=karma, accepts=accepts, warm=warm, speed=speed, last_heartbeat_at=last_heartbeat_at,
        node_id=extra.pop("node_id", "0" * 56), asks=asks or {},
    )


def a_job(workload: str = "wasm-hash", *, runtime: str = "wasm", required_ram_mb: int = 256,
          required_vram_mb: int = 0, required_cores: int = 0, caller_region: str | None = "eu-west",
          allowed_regions: frozenset[str] | None = None, min_karma: float = 0.0, bid_micro: int | None = None,
          catalog_price_micro: int = 1_000) -> JobRequest:
    return JobRequest(
        workload=WorkloadSlug(workload), runtime=runtime, required_ram_mb=required_ram_mb,
        required_vram_mb=required_vram_mb, required_cores=required_cores, caller_region=caller_region,
        allowed_regions=allowed_regions, min_karma=min_karma, bid_micro=bid_micro,
        catalog_price_micro=catalog_price_micro,
    )


def a_random_host(rng: random.Random, index: int, now: float = NOW) -> HostSnapshot:
    """A varied host; values come from small sets so that equal scores (ties) are common."""
    gpu = rng.random() < 0.2
    ram_mb = rng.choice((2048, 4096, 8192, 16384, 65536))
    vram_mb = rng.choice((8192, 24576, 81920)) if gpu else 0
    slots = rng.choice((1, 2, 4, 8))
    return a_host(
        f"host-{index:06d}", region=rng.choice(REGIONS),
        status=rng.choices(list(HostStatus), weights=(1, 12, 1, 1, 1, 1))[0],
        runtimes=frozenset(rng.sample(("wasm", "container", "llama"), rng.randint(1, 3))),
        ram_mb=ram_mb, free_ram_mb=rng.choice((ram_mb, ram_mb // 2, ram_mb // 8, 0)), gpu_model="L4" if gpu else None,
        vram_mb=vram_mb, free_vram_mb=rng.choice((vram_mb, vram_mb // 2)), cpu_cores=rng.choice((2, 4, 16)),
        slots=slots, active_jobs=rng.randint(0, slots), karma=rng.choice((0.0, 0.25, 0.5, 0.75, 1.0)),
        accepts=rng.choice(((), (), ("wasm-*",), ("llm-*", "wasm-hash"), ("image-*",))),
        warm=frozenset(rng.sample(("wasm-hash", "llm-chat", "image-gen"), rng.randint(0, 2))),
        speed=rng.choice((0.25, 0.5, 1.0)), last_heartbeat_at=now - rng.choice((0.0, 5.0, 25.0, 40.0)),
    )


def a_random_job(rng: random.Random) -> JobRequest:
    workload, runtime = rng.choice((("wasm-hash", "wasm"), ("llm-chat", "llama"), ("image-gen", "container"),
                                    ("wasm-echo", "wasm")))
    return a_job(
        workload, runtime=runtime, required_ram_mb=rng.choice((0, 64, 1024, 4096)),
        required_vram_mb=rng.choice((0, 0, 4096)), required_cores=rng.choice((0, 0, 4)),
        caller_region=rng.choice((*REGIONS, None)),
        allowed_regions=rng.choice((None, None, frozenset({"eu-west", "eu-central"}))),
        min_karma=rng.choice((0.0, 0.0, 0.5)),
    )


@dataclass
class LedgerWord:
    """The ledger's word on karma and asks as placement reads it (``placement.book.Book``), set by a test: what
    ``Ledger`` would derive, without its events. ``says_karma`` writes a host's state the way the ledger holds it."""

    karma: dict[HostId, KarmaState] = field(default_factory=dict)
    asks: dict[HostId, dict[str, int]] = field(default_factory=dict)

    def says_karma(self, host_id: str, score: float, share: float = 1.0, suspended: str | None = None) -> None:
        standing = Standing.SUSPENDED if suspended else Standing.COOLDOWN if share < 1.0 else Standing.GOOD
        self.karma[HostId(host_id)] = KarmaState(total=0.0, score=score, standing=standing, share=share,
                                                 reason=suspended)

    def karma_states(self, host_ids: Collection[str]) -> dict[HostId, KarmaState]:
        """As the ledger: a host it has no word on is neutral."""
        return {HostId(h): self.karma.get(HostId(h), DEFAULT_RULES.state(0.0)) for h in host_ids}

    def asking_prices(self, host_id: str | None = None) -> dict[HostId, dict[str, int]]:
        return {h: dict(a) for h, a in self.asks.items() if a and host_id in (None, h)}

    def set_asking_prices(self, host_id: str, asks: Mapping[str, int]) -> dict[str, int]:
        self.asks[HostId(host_id)] = dict(asks)
        return dict(asks)
