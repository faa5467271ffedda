"""Hardware measured, not claimed: the join benchmark's kernels, the caps and flags placement derives from a
measurement, and the speed term it feeds — pure, plus the placement actor with an in-process prober."""

from __future__ import annotations

import os

import pytest
from builders import NOW, a_host, a_job

from archipelag.actors import benchmark
from archipelag.errors import NoCapacity
from archipelag.ids import HostId
from archipelag.placement.actor import PlacementActor
from archipelag.placement.fleet import Fleet
from archipelag.placement.measured import (
    BENCHMARK_FAILED,
    CORES_CAPPED,
    GPU_NOT_FOUND,
    RAM_CAPPED,
    UNMEASURED,
    VRAM_CAPPED,
    Claims,
    Measurement,
    Measurements,
    Rules,
    check,
    speed,
)
from archipelag.placement.scoring import Weights, rank
from archipelag.serve.views import host_view
from archipelag.settings import BenchmarkSettings, PlacementSettings, Settings

QUICK = BenchmarkSettings(cpu_single_s=0.05, cpu_all_s=0.05, memory_probe_mb=16, gpu_s=0.05)
RULES = Rules()


def a_measurement(**fields: object) -> Measurement:
    """A 4-core machine with 16 GB, measured: 1,000 MB/s per core, four of them in parallel; as many cores busy
    as the throughput scaled to, unless said otherwise."""
    rates: dict[str, object] = {"cpu_single_mb_s": 1000.0, "cpu_all_mb_s": 4000.0, **fields}
    single, together = float(rates["cpu_single_mb_s"]), float(rates["cpu_all_mb_s"])  # type: ignore[arg-type]
    values: dict[str, object] = {
        "threads": 4, "cpu_single_share": 1.0, "cpu_parallelism": together / single if single else 0.0,
        "memory_probe_mb": 256,
        "memory_verified_mb": 256, "memory_mb_s": 5000.0, "node_ram_mb": 16384, "gpu_model": None, "gpu_vram_mb": 0,
        "gpu_tflops": None, "duration_s": 0.8, **rates,
    }
    return Measurement(**values)  # type: ignore[arg-type]


# --- the kernels ------------------------------------------------------------------------------------------


def test_hash_rate_is_positive_mb_per_second_for_any_thread_count() -> None:
    for threads in (1, 8):
        mb_s, parallelism = benchmark.hash_rate(threads, 0.05)
        assert mb_s > 10 and 0 < parallelism <= (os.cpu_count() or 1) + 0.5


def test_the_memory_probe_allocates_and_touches_what_it_is_asked() -> None:
    verified, mb_s = benchmark.memory_probe(8)
    assert verified == 8 and mb_s > 0
    assert benchmark.memory_probe(0) == (0, 0.0)


def test_the_benchmark_measures_this_machine_within_its_budget() -> None:
    measured = benchmark.run(Claims(cpu_cores=3, ram_mb=64, gpu_model=None, vram_mb=0), QUICK)
    assert measured.threads == 3
    assert measured.memory_probe_mb == measured.memory_verified_mb == 16  # the claimed 64 MB, bounded
    assert measured.cpu_single_mb_s > 0 and measured.cpu_all_mb_s > 0 and measured.parallel_speedup > 0
    assert measured.node_ram_mb > 0
    assert measured.duration_s < 2.0
    if measured.gpu_model is None:
        assert (measured.gpu_vram_mb, measured.gpu_tflops) == (0, None)


def test_a_host_claiming_64_cores_on_this_box_is_capped_and_flagged() -> None:
    claims = Claims(cpu_cores=64, ram_mb=1024, gpu_model=None, vram_mb=0)
    verdict = check(claims, benchmark.run(claims, QUICK), RULES)
    assert CORES_CAPPED in verdict.flags
    assert 1 <= verdict.cpu_cores <= 4 * (os.cpu_count() or 1)  # load can inflate it, never to 64
    assert verdict.claims.cpu_cores == 64


def test_the_thread_count_is_bounded_however_many_cores_are_claimed() -> None:
    measured = benchmark.run(Claims(cpu_cores=100_000, ram_mb=0, gpu_model=None, vram_mb=0),
                             QUICK.model_copy(update={"max_threads": 16}))
    assert measured.threads == 16 and measured.memory_probe_mb == 0


# --- capping and flagging ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("claims", "measured", "believed", "flags"), [
    (Claims(4, 8192, None, 0), a_measurement(), (4, 8192, None, 0), ()),
    (Claims(2, 4096, None, 0), a_measurement(), (2, 4096, None, 0), ()),  # under-claiming stands
    (Claims(6, 8192, None, 0), a_measurement(), (6, 8192, None, 0), ()),  # within ⌈4 × 1.5⌉
    (Claims(7, 8192, None, 0), a_measurement(), (6, 8192, None, 0), (CORES_CAPPED,)),
    (Claims(64, 8192, None, 0), a_measurement(cpu_all_mb_s=1900.0), (3, 8192, None, 0), (CORES_CAPPED,)),
    (Claims(4, 8192, None, 0), a_measurement(cpu_all_mb_s=1000.0), (2, 8192, None, 0), (CORES_CAPPED,)),
    (Claims(64, 8192, None, 0), a_measurement(cpu_single_mb_s=250.0, cpu_parallelism=2.0), (3, 8192, None, 0),
     (CORES_CAPPED,)),  # a low single rate without a busy machine behind it does not inflate the cores
    (Claims(2, 8192, None, 0), a_measurement(cpu_all_mb_s=1200.0, cpu_single_share=0.5, cpu_parallelism=0.6,
                                             threads=2), (2, 8192, None, 0), ()),  # an honest host under load
    (Claims(4, 65536, None, 0), a_measurement(), (4, 16384, None, 0), (RAM_CAPPED,)),  # more than the node has
    (Claims(4, 8192, None, 0), a_measurement(memory_verified_mb=64), (4, 64, None, 0), (RAM_CAPPED,)),
    (Claims(4, 8192, "H100", 81920), a_measurement(), (4, 8192, None, 0), (GPU_NOT_FOUND,)),
    (Claims(4, 8192, "L4", 81920), a_measurement(gpu_model="L4", gpu_vram_mb=23034),
     (4, 8192, "L4", 23034), (VRAM_CAPPED,)),
    (Claims(4, 8192, "L4", 20000), a_measurement(gpu_model="L4", gpu_vram_mb=23034), (4, 8192, "L4", 20000), ()),
    (Claims(64, 10**7, "H100", 81920), a_measurement(cpu_all_mb_s=1000.0, memory_verified_mb=0),
     (2, 0, None, 0), (CORES_CAPPED, RAM_CAPPED, GPU_NOT_FOUND)),
], ids=["honest", "under", "tolerated", "one-too-many", "64-on-2", "busy-box", "slow-single", "loaded", "ram-node", "ram-alloc", "no-gpu",
        "vram", "vram-under", "all-lies"])
def test_claims_the_measurement_contradicts_are_capped_and_flagged(claims, measured, believed, flags) -> None:  # type: ignore[no-untyped-def]
    verdict = check(claims, measured, RULES)
    assert (verdict.cpu_cores, verdict.ram_mb, verdict.gpu_model, verdict.vram_mb) == believed
    assert verdict.flags == flags
    assert verdict.claims == claims and verdict.measurement == measured


@pytest.mark.parametrize(("measured", "expected"), [
    (a_measurement(cpu_single_mb_s=2000.0, cpu_all_mb_s=16000.0), 1.0),
    (a_measurement(cpu_single_mb_s=1000.0, cpu_all_mb_s=4000.0), (0.5 + 0.25) / 2),
    (a_measurement(cpu_single_mb_s=9000.0, cpu_all_mb_s=90000.0), 1.0),  # each ratio at most 1
    (a_measurement(cpu_single_mb_s=1000.0, cpu_all_mb_s=4000.0, gpu_tflops=50.0), (0.5 + 0.25 + 0.5) / 3),
    (a_measurement(cpu_single_mb_s=0.0, cpu_all_mb_s=0.0), 0.0),
])
def test_speed_is_each_rate_over_its_reference_averaged(measured: Measurement, expected: float) -> None:
    assert speed(measured, RULES) == pytest.approx(expected)


def test_references_come_from_settings() -> None:
    rules = Rules.from_settings(BenchmarkSettings(reference_cpu_single_mb_s=1000, reference_cpu_all_mb_s=4000))
    assert speed(a_measurement(), rules) == 1.0


# --- what placement believes ------------------------------------------------------------------------------


def test_an_unmeasured_host_keeps_its_claims_but_earns_no_speed_whatever_it_reports() -> None:
    book = Measurements(RULES)
    held, ticket = book.registered(a_host("h", cpu_cores=64, speed=1.0, node_id="n1"))
    assert ticket and held.speed == 0.0 and held.cpu_cores == 64
    assert held.hardware is not None and held.hardware.flags == (UNMEASURED,)


def test_a_measured_host_is_capped_and_a_second_registration_on_its_node_is_not_measured_again() -> None:
    book = Measurements(RULES)
    _, ticket = book.registered(a_host("h", cpu_cores=64, node_id="n1"))
    assert ticket is not None
    verdict = book.measured(HostId("h"), "n1", ticket, a_measurement(cpu_all_mb_s=2000.0))
    assert verdict is not None and verdict.cpu_cores == 3 and verdict.flags == (CORES_CAPPED,)
    again, ticket = book.registered(a_host("h", cpu_cores=128, free_ram_mb=9000, ram_mb=9000, node_id="n1"))
    assert ticket is None and again.cpu_cores == 3 and again.speed == verdict.speed > 0
    _, old = book.registered(a_host("h", cpu_cores=64, node_id="n2"))
    moved, ticket = book.registered(a_host("h", cpu_cores=64, node_id="n3"))
    assert ticket and moved.hardware is not None and moved.hardware.flags == (UNMEASURED,)
    assert old is not None and book.measured(HostId("h"), "n2", old, a_measurement()) is None  # a late answer


def test_a_failed_benchmark_is_flagged_and_measured_again_at_the_next_registration() -> None:
    book = Measurements(RULES)
    _, ticket = book.registered(a_host("h", node_id="n1"))
    assert ticket is not None
    verdict = book.failed(HostId("h"), "n1", ticket, "LookupError: not its own node")
    assert verdict is not None and verdict.flags == (BENCHMARK_FAILED,) and verdict.speed == 0.0
    assert book.registered(a_host("h", node_id="n1"))[1]


def test_an_answer_without_the_probes_ticket_is_ignored() -> None:
    book = Measurements(RULES)
    _, ticket = book.registered(a_host("h", cpu_cores=4, node_id="n1"))
    assert ticket is not None
    assert book.measured(HostId("h"), "n1", "0" * 32, a_measurement(cpu_single_mb_s=9e9, cpu_all_mb_s=9e9)) is None
    assert book.failed(HostId("h"), "n1", "guess", "forged") is None
    assert book.measured(HostId("h"), "n1", ticket, a_measurement()) is not None
    assert book.measured(HostId("h"), "n1", ticket, a_measurement()) is None  # a ticket serves once


class InProcessProber:
    """Measures this machine at once and answers the actor directly: the Ray prober's path without Ray. With
    ``measure=False`` it only keeps each probe's ticket, for a test to answer with a measurement of its own."""

    def __init__(self, measure: bool = True) -> None:
        self.measure = measure
        self.actor: PlacementActor | None = None
        self.probed: list[tuple[str, str, Claims]] = []
        self.tickets: dict[str, str] = {}

    def probe(self, host_id: HostId, node_id: str, claims: Claims, ticket: str) -> None:
        self.probed.append((host_id, node_id, claims))
        self.tickets[host_id] = ticket
        if self.measure:
            assert self.actor is not None
            self.actor.measured(host_id, node_id, ticket, benchmark.run(claims, QUICK))


def test_placement_measures_a_registering_host_and_no_longer_believes_its_64_cores() -> None:
    prober = InProcessProber()
    actor = prober.actor = PlacementActor(Settings(), clock=lambda: NOW, prober=prober)
    actor.register(a_host("liar", cpu_cores=64, ram_mb=10**7, free_ram_mb=10**7, speed=1.0, node_id="n1"))
    assert prober.probed == [("liar", "n1", Claims(64, 10**7, None, 0))]
    host = actor.get(HostId("liar"))
    assert host.hardware is not None and {CORES_CAPPED, RAM_CAPPED} <= set(host.hardware.flags)
    assert host.cpu_cores < 64 and host.ram_mb < 10**7 and host.free_ram_mb <= host.ram_mb
    assert 0 < host.speed <= 1 and host.speed != 1.0
    with pytest.raises(NoCapacity, match="CPU cores"):
        actor.rank(a_job(required_cores=32))
    view = host_view(host, 0.5)["measured"]
    assert view["claimed"]["cpu_cores"] == 64 and "cpu_cores_capped" in view["flags"]
    assert view["benchmark"]["threads"] == 64


def test_a_measurement_keeps_the_jobs_placement_handed_the_host_meanwhile() -> None:
    prober = InProcessProber(measure=False)
    actor = PlacementActor(Settings(), clock=lambda: NOW, prober=prober)
    actor.register(a_host("h", slots=4, node_id="n1"))
    actor.job_assigned(HostId("h"))
    actor.measured(HostId("h"), "n1", prober.tickets["h"], a_measurement())
    assert actor.get(HostId("h")).active_jobs == 1 and actor.get(HostId("h")).speed > 0


# --- the speed term in placement --------------------------------------------------------------------------


def test_speed_has_weight_by_default() -> None:
    assert Weights.from_settings(PlacementSettings()).speed > 0


@pytest.mark.parametrize(("faster", "slower", "job", "winner"), [
    (a_host("fast", speed=0.9), a_host("slow", speed=0.2), a_job(), "fast"),
    (a_host("fast", speed=0.9), a_host("slow", speed=0.2, karma=0.9), a_job(), "slow"),  # trust outweighs speed
    (a_host("fast", speed=1.0, region="eu-central"), a_host("slow", speed=0.0, region="eu-west"),
     a_job(caller_region="eu-west"), "slow"),  # the caller's region outweighs full speed
    (a_host("fast", speed=0.6, region="eu-central"), a_host("slow", speed=0.5, region="eu-north"),
     a_job(caller_region="eu-west"), "fast"),  # equally near: the faster one
], ids=["speed", "karma-first", "region-first", "same-distance-speed"])
def test_default_weights_rank_the_measured_speed(faster, slower, job, winner) -> None:  # type: ignore[no-untyped-def]
    weights = Weights.from_settings(PlacementSettings())
    assert rank([slower, faster], job, weights, NOW, 30.0, 2)[0] == winner
    fleet = Fleet(weights, 30.0)
    for host in (slower, faster):
        fleet.upsert(host)
    assert fleet.rank(job, NOW, 2) == rank([slower, faster], job, weights, NOW, 30.0, 2)


def test_the_fleet_ranks_by_the_measured_speed_once_it_arrives() -> None:
    weights = Weights.from_settings(PlacementSettings())
    prober = InProcessProber(measure=False)
    actor = PlacementActor(Settings(), clock=lambda: NOW, prober=prober)
    for host_id in ("a", "b"):
        actor.register(a_host(host_id, speed=1.0 if host_id == "a" else 0.0, node_id=f"n-{host_id}"))
    assert actor.rank(a_job()) == ["a", "b"]  # both unmeasured: speed 0 each, the tie goes to the smaller id
    actor.measured(HostId("b"), "n-b", "forged", a_measurement(cpu_single_mb_s=9e9))  # not from the prober
    assert actor.rank(a_job()) == ["a", "b"]
    actor.measured(HostId("b"), "n-b", prober.tickets["b"], a_measurement())
    assert actor.rank(a_job()) == ["b", "a"]
    hosts = actor.hosts()
    assert actor.rank(a_job()) == rank(hosts, a_job(), weights, NOW, 30.0, 8)
