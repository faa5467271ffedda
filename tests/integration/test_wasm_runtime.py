"""The WASM runtime against real wasmtime: budgets, misbehaving modules, cancel, cleanup, the module cache."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from archipelag.catalog import Manifest
from archipelag.errors import (
    BudgetExceeded,
    JobCancelled,
    ProtocolViolation,
    WorkloadError,
    WorkloadRefused,
    WorkloadTimedOut,
)
from archipelag.ids import JobId, WorkloadSlug
from archipelag.protocol import Event
from archipelag.runtimes.base import CancelToken, JobSpec, Runtime
from archipelag.runtimes.wasm import WasmRuntime
from archipelag.sandbox import Limits

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wasm"

SMALL = Limits(memory_mb=4, timeout_s=5.0, network=False, gpu=False, fuel=50_000_000,
               output_bytes=64 * 1024, line_bytes=4 * 1024)


def a_module(name: str, directory: Path, sha256: str | None = None) -> Manifest:
    """A manifest for the fixture ``<name>.wat``, compiled into ``directory``."""
    wasm = wasmtime.wat2wasm((FIXTURES / f"{name}.wat").read_text())
    (directory / f"{name}.wasm").write_bytes(wasm)
    return Manifest(slug=WorkloadSlug(f"test-{name}"), name=name, description="", runtime="wasm", trust_level=0,
                    price_micro=0, module=f"{name}.wasm", sha256=sha256 or hashlib.sha256(wasm).hexdigest(),
                    directory=str(directory))


def a_job(workload: Manifest, limits: Limits = SMALL, **input: object) -> JobSpec:
    return JobSpec(job_id=JobId("job-test"), workload=workload, input=dict(input), limits=limits)


def run_all(runtime: WasmRuntime, spec: JobSpec, cancel: CancelToken | None = None) -> list[Event]:
    return list(runtime.run(spec, cancel or CancelToken()))


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[WasmRuntime]:
    rt = WasmRuntime(cache_dir=tmp_path / "cache")
    yield rt
    rt.close()


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    directory = tmp_path / "modules"
    directory.mkdir()
    return directory


def assert_still_works(runtime: WasmRuntime, modules: Path) -> None:
    assert run_all(runtime, a_job(a_module("tiny", modules))) == [{"type": "done", "output": "ok"}]


def test_wasm_runtime_satisfies_the_runtime_protocol(runtime: WasmRuntime) -> None:
    rt: Runtime = runtime
    assert rt.name == "wasm"


def test_a_well_behaved_module_yields_its_done_event(runtime: WasmRuntime, modules: Path) -> None:
    assert run_all(runtime, a_job(a_module("tiny", modules))) == [{"type": "done", "output": "ok"}]


@pytest.mark.parametrize(
    ("fixture", "limits", "error", "words"),
    [
        ("loop", SMALL, BudgetExceeded, "fuel"),
        ("loop", Limits(4, 0.2, False, False, 10**15, 65536, 4096), WorkloadTimedOut, "timed out"),
        ("invalid_json", SMALL, ProtocolViolation, "not valid JSON"),
        ("unknown_type", SMALL, ProtocolViolation, "unknown event type"),
        ("flood", Limits(4, 5.0, False, False, 10**15, 65536, 4096), BudgetExceeded, "output limit"),
        ("long_line", Limits(4, 5.0, False, False, 10**15, 10**9, 4096), BudgetExceeded, "longer than 4096"),
        ("ticks", Limits(4, 5.0, False, False, 10**15, 10**9, 4096, output_events=10), BudgetExceeded,
         "more than 10 events"),
        ("grow_memory", SMALL, BudgetExceeded, "out of memory"),
        ("no_done", SMALL, ProtocolViolation, "exited without a done event"),
        ("trap", SMALL, WorkloadError, "unreachable"),
    ],
)
def test_a_misbehaving_module_ends_with_the_right_error_and_the_runtime_keeps_working(
    runtime: WasmRuntime, modules: Path, fixture: str, limits: Limits, error: type[Exception], words: str
) -> None:
    started = time.monotonic()
    with pytest.raises(error, match=words) as raised:
        run_all(runtime, a_job(a_module(fixture, modules), limits))
    assert type(raised.value) is error
    assert time.monotonic() - started < limits.timeout_s + 1.0
    assert_still_works(runtime, modules)


def test_a_timed_out_module_stops_on_time(runtime: WasmRuntime, modules: Path) -> None:
    limits = Limits(4, 0.3, False, False, 10**15, 65536, 4096)
    started = time.monotonic()
    with pytest.raises(WorkloadTimedOut):
        run_all(runtime, a_job(a_module("loop", modules), limits))
    assert 0.3 <= time.monotonic() - started < 0.6


def test_events_stream_before_the_module_exits(runtime: WasmRuntime, modules: Path) -> None:
    cancel = CancelToken()
    events = runtime.run(a_job(a_module("status_then_loop", modules)), cancel)
    assert next(events) == {"type": "status", "message": "working"}  # the module is still looping
    cancel.cancel()
    with pytest.raises(JobCancelled):
        next(events)


def test_a_module_with_the_wrong_hash_is_refused_before_it_runs(runtime: WasmRuntime, modules: Path) -> None:
    workload = a_module("tiny", modules, sha256="0" * 64)
    with pytest.raises(WorkloadRefused, match="SHA-256"):
        run_all(runtime, a_job(workload))
    assert runtime.cache_stats.compiles == 0


def test_a_missing_module_file_is_refused(runtime: WasmRuntime, modules: Path) -> None:
    workload = a_module("tiny", modules)
    (modules / "tiny.wasm").unlink()
    with pytest.raises(WorkloadRefused, match="cannot read module"):
        run_all(runtime, a_job(workload))


def test_a_manifest_without_a_hash_is_refused(runtime: WasmRuntime, modules: Path) -> None:
    workload = a_module("tiny", modules)
    unpinned = Manifest(**{**workload.__dict__, "sha256": None})
    with pytest.raises(WorkloadRefused, match="no sha256"):
        run_all(runtime, a_job(unpinned))


def test_cancel_from_another_thread_stops_a_looping_module(runtime: WasmRuntime, modules: Path) -> None:
    cancel = CancelToken()
    limits = Limits(4, 30.0, False, False, 10**15, 65536, 4096)
    timer = threading.Timer(0.1, cancel.cancel, kwargs={"reason": "the user cancelled"})
    timer.start()
    started = time.monotonic()
    with pytest.raises(JobCancelled, match="the user cancelled"):
        run_all(runtime, a_job(a_module("loop", modules), limits), cancel)
    assert time.monotonic() - started < 0.5
    timer.join()
    assert_still_works(runtime, modules)


def test_a_job_cancelled_before_it_starts_does_not_run(runtime: WasmRuntime, modules: Path) -> None:
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(JobCancelled):
        run_all(runtime, a_job(a_module("loop", modules), Limits(4, 30.0, False, False, 10**15, 65536, 4096)),
                cancel)


def test_cancelling_one_job_leaves_a_concurrent_job_running(runtime: WasmRuntime, modules: Path) -> None:
    limits = Limits(4, 30.0, False, False, 10**15, 65536, 4096)
    keep, stop = CancelToken(), CancelToken()
    kept = runtime.run(a_job(a_module("status_then_loop", modules), limits), keep)
    stopped = runtime.run(a_job(a_module("status_then_loop", modules), limits), stop)
    assert next(kept)["type"] == "status"
    assert next(stopped)["type"] == "status"
    stop.cancel()
    with pytest.raises(JobCancelled):
        next(stopped)
    time.sleep(0.05)
    assert threading.active_count() >= 2  # the kept job's worker is still alive
    keep.cancel()
    with pytest.raises(JobCancelled):
        next(kept)


def test_the_generator_returns_after_done_even_if_the_module_keeps_running(
    runtime: WasmRuntime, modules: Path
) -> None:
    limits = Limits(4, 30.0, False, False, 10**15, 65536, 4096)
    started = time.monotonic()
    assert run_all(runtime, a_job(a_module("done_then_loop", modules), limits)) == [
        {"type": "done", "output": "ok"}
    ]
    assert time.monotonic() - started < 1.0


def test_closing_the_generator_early_stops_the_module_and_leaks_no_thread(
    runtime: WasmRuntime, modules: Path
) -> None:
    assert_still_works(runtime, modules)  # starts the watchdog thread
    before = set(threading.enumerate())  # an earlier test's thread may still be on its way out
    limits = Limits(4, 30.0, False, False, 10**15, 65536, 4096)
    for _ in range(5):
        events = runtime.run(a_job(a_module("status_then_loop", modules), limits), CancelToken())
        assert next(events)["type"] == "status"
        events.close()
    assert [t for t in threading.enumerate() if t not in before] == []


def test_the_second_run_uses_the_compiled_module_from_memory(runtime: WasmRuntime, modules: Path) -> None:
    workload = a_module("tiny", modules)
    run_all(runtime, a_job(workload))
    run_all(runtime, a_job(workload))
    stats = runtime.cache_stats
    assert (stats.compiles, stats.memory_hits) == (1, 1)


def test_a_new_runtime_reads_the_compiled_module_from_disk(tmp_path: Path, modules: Path) -> None:
    workload = a_module("tiny", modules)
    first, second = WasmRuntime(tmp_path / "cache"), WasmRuntime(tmp_path / "cache")
    try:
        run_all(first, a_job(workload))
        assert run_all(second, a_job(workload)) == [{"type": "done", "output": "ok"}]
        assert (second.cache_stats.compiles, second.cache_stats.disk_hits) == (0, 1)
    finally:
        first.close()
        second.close()


def test_a_corrupt_compiled_module_on_disk_is_compiled_again(tmp_path: Path, modules: Path) -> None:
    workload = a_module("tiny", modules)
    cache = tmp_path / "cache"
    WasmRuntime(cache).close()
    first = WasmRuntime(cache)
    run_all(first, a_job(workload))
    first.close()
    for artifact in cache.glob("*.cwasm"):
        artifact.write_bytes(b"garbage")
    second = WasmRuntime(cache)
    try:
        assert run_all(second, a_job(workload)) == [{"type": "done", "output": "ok"}]
        assert second.cache_stats.compiles == 1
    finally:
        second.close()


def test_a_module_that_is_not_webassembly_is_refused(runtime: WasmRuntime, modules: Path) -> None:
    (modules / "bad.wasm").write_bytes(b"\0asm garbage")
    workload = Manifest(slug=WorkloadSlug("test-bad"), name="bad", description="", runtime="wasm", trust_level=0,
                        price_micro=0, module="bad.wasm", sha256=hashlib.sha256(b"\0asm garbage").hexdigest(),
                        directory=str(modules))
    with pytest.raises(WorkloadRefused, match="not valid WebAssembly"):
        run_all(runtime, a_job(workload))


def test_many_concurrent_jobs_all_finish(runtime: WasmRuntime, modules: Path) -> None:
    workload = a_module("tiny", modules)
    results: list[list[Event]] = []

    def worker() -> None:
        for _ in range(20):
            results.append(run_all(runtime, a_job(workload)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [[{"type": "done", "output": "ok"}]] * 80
