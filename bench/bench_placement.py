"""Placement benchmark: time of one decision over synthetic fleets, vectorized Fleet vs the pure reference, and
the exchange's price filter (a bid against every host's effective ask) beside the same decisions without it.

Run: .venv/bin/python bench/bench_placement.py [--decisions N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

from archipelag.ids import HostId, WorkloadSlug
from archipelag.lifecycle import HostStatus
from archipelag.market.pricing import Market
from archipelag.placement.fleet import Fleet, Heartbeat
from archipelag.placement.scoring import HostSnapshot, JobRequest, Weights, rank
from archipelag.settings import PlacementSettings

NOW = 1_700_000_000.0
STALE_AFTER_S = 30.0
REGIONS = ("eu-west", "eu-central", "eu-north", "us-east", "us-west", "ap-south", "ap-east", "sa-east")
WORKLOADS = ("wasm-hash", "wasm-echo", "llm-chat", "image-gen")
STATUSES = (HostStatus.ONLINE,) * 17 + (HostStatus.PAUSED, HostStatus.DRAINING, HostStatus.OFFLINE)
CATALOG_PRICE = {"wasm-hash": 1_000, "llm-chat": 2_000}  # micro-credits
MARKET = Market((("cpu", 1.0), ("gpu", 1.2)), 1.0)  # GPU hosts' asks count 1.2×


def synthetic_host(rng: random.Random, index: int) -> HostSnapshot:
    """A plausible home machine: mostly online, a fifth with a GPU, some load, a few stale."""
    gpu = rng.random() < 0.2
    ram_mb = rng.choice((4096, 8192, 16384, 32768, 65536))
    vram_mb = rng.choice((8192, 12288, 24576)) if gpu else 0
    slots = rng.choice((2, 4, 8))
    runtimes = {"wasm"} | ({"container"} if rng.random() < 0.6 else set()) | ({"llama"} if gpu else set())
    return HostSnapshot(
        host_id=HostId(f"host-{index:08x}"), name=f"island-{index}", region=rng.choice(REGIONS),
        status=rng.choice(STATUSES), runtimes=frozenset(runtimes), cpu_cores=rng.choice((2, 4, 8, 16)),
        ram_mb=ram_mb, free_ram_mb=rng.randint(ram_mb // 8, ram_mb), gpu_model="RTX 4090" if gpu else None,
        vram_mb=vram_mb, free_vram_mb=rng.randint(0, vram_mb), slots=slots, active_jobs=rng.randint(0, slots),
        karma=rng.random(), accepts=rng.choice(((),) * 8 + (("wasm-*",), ("llm-*", "image-*"))),
        warm=frozenset(rng.sample(WORKLOADS, rng.randint(0, 2))), speed=rng.random(),
        last_heartbeat_at=NOW - rng.uniform(0, 12) - (60 if rng.random() < 0.02 else 0), node_id=f"{index:056x}",
        asks=synthetic_asks(rng),
    )


def synthetic_asks(rng: random.Random) -> dict[str, int]:
    """Half the hosts ask the catalog's prices; the others post a family or a workload ask, 0.5× to 2×."""
    if rng.random() < 0.5:
        return {}
    return {rng.choice(("*", "wasm-*", "llm-*", "llm-chat", "wasm-hash")): rng.choice((500, 800, 1_000, 1_500, 2_000))}


def priced(job: JobRequest, rng: random.Random) -> JobRequest:
    """The job with a bid between half and twice its catalog price."""
    price = CATALOG_PRICE[job.workload]
    return replace(job, catalog_price_micro=price, bid_micro=int(price * rng.choice((0.5, 0.8, 1.0, 1.5, 2.0))))


def requests(rng: random.Random, count: int) -> list[JobRequest]:
    """A mix of small WASM jobs (most hosts fit) and GPU LLM jobs (a few do), from every region."""
    out = []
    for _ in range(count):
        if rng.random() < 0.7:
            job = JobRequest(WorkloadSlug("wasm-hash"), "wasm", required_ram_mb=rng.choice((64, 256, 1024)),
                             caller_region=rng.choice(REGIONS))
        else:
            job = JobRequest(WorkloadSlug("llm-chat"), "llama", required_ram_mb=4096, required_vram_mb=6144,
                             caller_region=rng.choice((*REGIONS, None)), min_karma=0.2)
        out.append(job)
    return out


def timed(decide: Callable[[JobRequest], list[HostId]], jobs: list[JobRequest]) -> tuple[float, float]:
    """p50 and p99 of one decision, in milliseconds."""
    samples = []
    for job in jobs:
        start = time.perf_counter()
        decide(job)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decisions", type=int, default=300)
    parser.add_argument("--limit", type=int, default=PlacementSettings().max_candidates)
    args = parser.parse_args(argv)
    weights = Weights.from_settings(PlacementSettings(weight_warm=0.1, weight_speed=0.05))
    rng = random.Random(7)
    jobs = requests(rng, args.decisions)
    bids = [priced(job, rng) for job in jobs]
    print(f"{'hosts':>8}  {'engine':<16} {'p50 ms':>9} {'p99 ms':>9}")
    for size in (1_000, 10_000, 100_000):
        hosts = [synthetic_host(rng, i) for i in range(size)]
        fleet = Fleet(weights, STALE_AFTER_S)
        for host in hosts:
            fleet.upsert(host)
        p50, p99 = timed(lambda job, fleet=fleet: fleet.rank(job, NOW, args.limit), jobs)
        print(f"{size:>8}  {'fleet (numpy)':<16} {p50:>9.3f} {p99:>9.3f}")
        for job in bids[:2] + [b for b in bids if b.workload != bids[0].workload][:1]:
            fleet.rank(job, NOW, args.limit, MARKET)  # each workload's ask column is built once, then kept
        p50, p99 = timed(lambda job, fleet=fleet: fleet.rank(job, NOW, args.limit, MARKET), bids)
        print(f"{size:>8}  {'fleet + bid':<16} {p50:>9.3f} {p99:>9.3f}  (the price filter: ask ≤ bid)")
        if size <= 10_000:
            few = jobs[: max(20, args.decisions // 10)]
            p50, p99 = timed(lambda job, hosts=hosts: rank(hosts, job, weights, NOW, STALE_AFTER_S, args.limit), few)
            print(f"{size:>8}  {'reference (py)':<16} {p50:>9.3f} {p99:>9.3f}")
        start = time.perf_counter()
        for host in hosts[:1000]:
            fleet.heartbeat(host.host_id, NOW, _beat(rng, host))
        per_beat_us = (time.perf_counter() - start) * 1e6 / 1000
        print(f"{size:>8}  {'heartbeat':<16} {per_beat_us / 1000:>9.4f} {'':>9}  (one update)")


def _beat(rng: random.Random, host: HostSnapshot) -> Heartbeat:
    return Heartbeat(free_ram_mb=rng.randint(0, host.ram_mb), active_jobs=rng.randint(0, host.slots))


if __name__ == "__main__":
    main()
