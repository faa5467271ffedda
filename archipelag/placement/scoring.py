"""Scoring: which hosts may take a job (hard filters) and how good each one is (weighted terms). Pure.

This module is the definition of placement (DESIGN §6). ``rank`` here is the plain reference over a list of
snapshots; ``fleet.Fleet`` computes the same answer with numpy over columns, and a test holds the two equal.
To keep them equal to the last bit, every score is summed in one fixed order (see ``score``).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import TYPE_CHECKING

from archipelag.ids import HostId, WorkloadSlug
from archipelag.lifecycle import HostStatus
from archipelag.market.pricing import NO_MARKET, Market, credits_text, tier_of
from archipelag.placement.regions import proximity

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from archipelag.placement.measured import HardwareCheck
    from archipelag.settings import PlacementSettings


@dataclass(frozen=True)
class HostSnapshot:
    """What placement knows about one host: its capabilities, policy, and last reported load."""

    host_id: HostId
    name: str
    region: str
    status: HostStatus
    runtimes: frozenset[str]  # e.g. {"wasm", "container"}
    cpu_cores: int
    ram_mb: int
    free_ram_mb: int
    gpu_model: str | None
    vram_mb: int
    free_vram_mb: int
    slots: int  # jobs it runs at once
    active_jobs: int
    karma: float  # derived trust score, 0..1
    accepts: tuple[str, ...]  # fnmatch patterns of workload slugs it takes; empty = all
    warm: frozenset[str]  # workload slugs whose image or model is cached
    speed: float  # 0..1, from the join benchmark (placement.measured); what a host reports is overwritten
    last_heartbeat_at: float  # epoch seconds, the coordinator's clock
    node_id: str  # Ray node id (hex)
    hardware: HardwareCheck | None = None  # the claims, what the benchmark measured, what was capped and why
    # Micro-credits it asks per job, by workload slug or fnmatch family (market.pricing.ask_for); empty: the
    # catalog's prices. From its signed registration or its owner (placement checks the bounds).
    asks: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class JobRequest:
    """What one job needs from a host, and the caller's policy."""

    workload: WorkloadSlug
    runtime: str
    required_ram_mb: int = 0
    required_vram_mb: int = 0
    required_cores: int = 0
    caller_region: str | None = None
    allowed_regions: frozenset[str] | None = None  # None: any region
    min_karma: float = 0.0
    bid_micro: int | None = None  # the most the job pays per job; None: no price filter
    catalog_price_micro: int = 0  # the workload's catalog price: what a host without an ask for it asks


@dataclass(frozen=True)
class Weights:
    karma: float = 0.30
    proximity: float = 0.30
    load: float = 0.25
    fit: float = 0.15
    warm: float = 0.0
    speed: float = 0.0  # the default Settings give it weight (PlacementSettings.weight_speed)

    @classmethod
    def from_settings(cls, settings: PlacementSettings) -> Weights:
        return cls(
            karma=settings.weight_karma, proximity=settings.weight_proximity, load=settings.weight_load,
            fit=settings.weight_fit, warm=settings.weight_warm, speed=settings.weight_speed,
        )


# --- hard filters ----------------------------------------------------------------------------------
# Applied in this order; the first stage that leaves no host names the 503 reason.
# The price goes before the slots: a host that asks too much is no place to wait for, a full one is.
STAGES: tuple[str, ...] = ("online", "runtime", "accepts", "region", "karma", "cores", "ram", "vram", "price",
                           "slots")


def fresh_since(now: float, stale_after_s: float) -> float:
    """The oldest heartbeat time that still counts as alive."""
    return now - stale_after_s


@lru_cache(maxsize=65536)
def accepts(patterns: tuple[str, ...], workload: str) -> bool:
    """Whether a host's accept list takes a workload; an empty list takes all."""
    return not patterns or any(fnmatchcase(workload, p) for p in patterns)


def host_ask(host: HostSnapshot, request: JobRequest, market: Market = NO_MARKET) -> int:
    """What the host asks in effect for a job of ``request`` now: its ask × its tier's multiplier × the surge."""
    return market.effective(market.ask(host.asks, request.workload, request.catalog_price_micro),
                            tier_of(host.gpu_model))


def passes(host: HostSnapshot, request: JobRequest, stage: str, fresh_after: float,
           market: Market = NO_MARKET) -> bool:
    """Whether one host passes one filter stage."""
    if stage == "online":
        return host.status == HostStatus.ONLINE and host.last_heartbeat_at >= fresh_after
    if stage == "runtime":
        return request.runtime in host.runtimes
    if stage == "accepts":
        return accepts(host.accepts, request.workload)
    if stage == "region":
        return request.allowed_regions is None or host.region in request.allowed_regions
    if stage == "karma":
        return host.karma >= request.min_karma
    if stage == "cores":
        return host.cpu_cores >= request.required_cores
    if stage == "ram":
        return host.free_ram_mb >= request.required_ram_mb
    if stage == "vram":
        return host.free_vram_mb >= request.required_vram_mb
    if stage == "price":
        return request.bid_micro is None or host_ask(host, request, market) <= request.bid_micro
    if stage == "slots":
        return host.active_jobs < host.slots
    raise ValueError(f"unknown filter stage {stage!r}")


def eligible(host: HostSnapshot, request: JobRequest, now: float, stale_after_s: float,
             market: Market = NO_MARKET) -> bool:
    after = fresh_since(now, stale_after_s)
    return all(passes(host, request, stage, after, market) for stage in STAGES)


# --- score terms, each in [0, 1] -------------------------------------------------------------------


def load_term(slots: int, active_jobs: int) -> float:
    """The fraction of the host's slots that are free."""
    return (slots - active_jobs) / slots if slots > 0 else 0.0


def peak(ratio: float) -> float:
    """1.0 when a job takes half of what is free, falling to 0 when it takes nothing or everything."""
    return 1.0 - abs(ratio - 0.5) * 2.0


def fit_term(request: JobRequest, free_ram_mb: int, free_vram_mb: int) -> float:
    """Not too tight (no room to breathe), not too loose (a big host wasted on a small job)."""
    ram = peak(request.required_ram_mb / max(free_ram_mb, 1))
    if request.required_vram_mb <= 0:
        return ram
    return (ram + peak(request.required_vram_mb / max(free_vram_mb, 1))) * 0.5


def standing(karma: float, speed: float, slots: int, active_jobs: int, weights: Weights) -> float:
    """The request-independent part of a host's score; the fleet keeps it per host."""
    return weights.karma * karma + weights.load * load_term(slots, active_jobs) + weights.speed * speed


def score(host: HostSnapshot, request: JobRequest, weights: Weights) -> float:
    """The weighted sum, always added in this order (the fleet's numpy sum follows it exactly)."""
    total = standing(host.karma, host.speed, host.slots, host.active_jobs, weights)
    total = total + weights.proximity * proximity(request.caller_region, host.region)
    total = total + weights.fit * fit_term(request, host.free_ram_mb, host.free_vram_mb)
    return total + weights.warm * (1.0 if request.workload in host.warm else 0.0)


# --- the reference ranking -------------------------------------------------------------------------


def rank(hosts: Iterable[HostSnapshot], request: JobRequest, weights: Weights, now: float,
         stale_after_s: float, limit: int, market: Market = NO_MARKET) -> list[HostId]:
    """The best ``limit`` eligible hosts, best first; equal scores go to the smaller host id."""
    scored = [(-score(h, request, weights), h.host_id) for h in hosts
              if eligible(h, request, now, stale_after_s, market)]
    return [host_id for _, host_id in heapq.nsmallest(limit, scored)]


# --- karma cool-down -------------------------------------------------------------------------------


def cooled(ranked: Sequence[HostId], shares: Mapping[HostId, float], draw: Callable[[], float]) -> list[HostId]:
    """A ranking with cooled-down hosts (karma share < 1) held back: each keeps its place only when ``draw()``
    (uniform in [0, 1)) falls below its share, else it goes after every host that kept its place, in rank order.

    A share of the host's own jobs rather than a score multiplier: a multiplier's effect depends on the
    competition (alone in its region a cooled host would still win everything; among near-equals it would win
    nothing), while this gives it ``share`` of what it would have won — and a job no other host can take still
    goes to it (cool-down lowers a host's share, it does not strand work)."""
    kept: list[HostId] = []
    held: list[HostId] = []
    for host_id in ranked:
        share = shares.get(host_id, 1.0)
        (kept if share >= 1.0 or draw() < share else held).append(host_id)
    return kept + held


# --- why nothing matched ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Funnel:
    """How many hosts are left after each filter stage (``survivors[i]`` after ``STAGES[i]``)."""

    total: int
    survivors: tuple[int, ...]
    lowest_ask_micro: int | None = None  # the lowest effective ask among the hosts the price stage looked at


def funnel(hosts: Sequence[HostSnapshot], request: JobRequest, now: float, stale_after_s: float,
           market: Market = NO_MARKET) -> Funnel:
    after = fresh_since(now, stale_after_s)
    left = list(hosts)
    survivors = []
    lowest = None
    for stage in STAGES:
        if stage == "price" and request.bid_micro is not None and left:
            lowest = min(host_ask(h, request, market) for h in left)
        left = [h for h in left if passes(h, request, stage, after, market)]
        survivors.append(len(left))
    return Funnel(total=len(hosts), survivors=tuple(survivors), lowest_ask_micro=lowest)


def blocking_stage(funnel: Funnel) -> str | None:
    """The first filter stage that left no host (None when some host passed them all)."""
    for stage, left in zip(STAGES, funnel.survivors, strict=True):
        if left == 0:
            return stage
    return None


def reason(funnel: Funnel, request: JobRequest) -> str:
    """The 503 message for a funnel that ends empty: the first stage that left no host."""
    if funnel.total == 0:
        return "no host has joined the network yet; start one with `archipelag host join`"
    before = funnel.total
    for stage, left in zip(STAGES, funnel.survivors, strict=True):
        if left == 0:
            return _stage_reason(stage, before, request, funnel.lowest_ask_micro)
        before = left
    return "a host is available"  # the funnel did not end empty


def _stage_reason(stage: str, before: int, request: JobRequest, lowest_ask_micro: int | None) -> str:
    slug, runtime = request.workload, request.runtime
    if stage == "price":
        return (f"no host asks ≤ your bid of {credits_text(request.bid_micro or 0)} credits; the lowest ask is "
                f"{credits_text(lowest_ask_micro or 0)} credits for {slug!r} (bid at least that, or retry later)")
    messages = {
        "online": f"none of the {before} known hosts is online; retry when one comes back",
        "runtime": f"no online host supports runtime {runtime!r}",
        "accepts": f"no online host with runtime {runtime!r} accepts workload {slug!r} (a host takes only the "
                   "workloads its operator allows and whose model weights it holds)",
        "region": f"no host in regions {', '.join(sorted(request.allowed_regions or ()))} can run {slug!r}; "
                  "allow more regions or retry later",
        "karma": f"no host able to run {slug!r} has karma ≥ {request.min_karma:.2f}; lower min_karma",
        "cores": f"no host able to run {slug!r} has {request.required_cores} CPU cores",
        "ram": f"no host able to run {slug!r} has {request.required_ram_mb} MB of RAM free; retry later",
        "vram": f"no host able to run {slug!r} has {request.required_vram_mb} MB of GPU memory free; retry later",
        "slots": f"all {before} eligible hosts are full; retry shortly",
    }
    return messages[stage]


def explain_no_match(hosts: Sequence[HostSnapshot], request: JobRequest, now: float,
                     stale_after_s: float, market: Market = NO_MARKET) -> str:
    """Why no host can take ``request`` now, in words for the API's 503."""
    return reason(funnel(hosts, request, now, stale_after_s, market), request)
