"""WASM runtime micro-benchmark: per-job overhead, streaming rate, compile vs cached deserialize.

    .venv/bin/python bench/bench_wasm.py [--jobs N]

Needs the WASM workloads built (`.venv/bin/python workloads/build_wasm.py`).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import wasmtime

from archipelag.catalog import Manifest, load_catalog, lookup
from archipelag.ids import JobId, WorkloadSlug
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.wasm import WasmRuntime
from archipelag.sandbox import Limits
from archipelag.settings import REPO_ROOT

TINY_WAT = REPO_ROOT / "tests" / "fixtures" / "wasm" / "tiny.wat"
LIMITS = Limits(memory_mb=64, timeout_s=10, network=False, gpu=False, fuel=500_000_000,
                output_bytes=8 * 1024 * 1024, line_bytes=1024 * 1024)


def _timed(fn: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def _row(name: str, samples: list[float], unit_per_s: str = "jobs/s") -> str:
    mean = statistics.fmean(samples)
    p50 = statistics.median(samples)
    p99 = sorted(samples)[int(len(samples) * 0.99) - 1] if len(samples) >= 100 else max(samples)
    return f"{name:40} {mean * 1e6:10.1f} {p50 * 1e6:10.1f} {p99 * 1e6:10.1f} {1 / mean:10.0f} {unit_per_s}"


def _tiny_workload(directory: Path) -> Manifest:
    wasm = wasmtime.wat2wasm(TINY_WAT.read_text())
    (directory / "tiny.wasm").write_bytes(wasm)
    return Manifest(slug=WorkloadSlug("bench-tiny"), name="tiny", description="", runtime="wasm", trust_level=0,
                    price_micro=0, module="tiny.wasm", sha256=hashlib.sha256(wasm).hexdigest(),
                    directory=str(directory))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per per-job measurement")
    args = parser.parse_args(argv)
    catalog = load_catalog(REPO_ROOT / "workloads")
    hash_workload = lookup(catalog, "wasm-hash")
    echo_workload = lookup(catalog, "wasm-echo-stream")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        runtime = WasmRuntime(cache_dir=tmp_path / "cache")

        def job(workload: Manifest, **input: object) -> Callable[[], object]:
            spec = JobSpec(job_id=JobId("bench"), workload=workload, input=dict(input), limits=LIMITS)
            return lambda: list(runtime.run(spec, CancelToken()))

        tiny = _tiny_workload(tmp_path)
        print(f"{'measurement':40} {'mean µs':>10} {'p50 µs':>10} {'p99 µs':>10} {'rate':>10}")
        for warm in (job(tiny), job(hash_workload, text="x")):
            warm()
        print(_row("tiny module, whole job (WasmRuntime.run)", _timed(job(tiny), args.jobs)))
        print(_row("wasm-hash 1 KiB text, whole job", _timed(job(hash_workload, text="x" * 1024), args.jobs)))
        tokens = 10_000
        stream = _timed(job(echo_workload, text="w", repeat=tokens), 5)
        print(_row(f"wasm-echo-stream {tokens} tokens, per token", [s / tokens for s in stream], "tokens/s"))

        data = hash_workload.module_path().read_bytes()
        engine = wasmtime.Engine(_config())
        compile_s = _timed(lambda: wasmtime.Module(engine, data), 5)
        artifact = tmp_path / "hash.cwasm"
        artifact.write_bytes(bytes(wasmtime.Module(engine, data).serialize()))
        deserialize_s = _timed(lambda: wasmtime.Module.deserialize_file(engine, str(artifact)), 50)
        print(_row(f"compile wasm-hash ({len(data) // 1024} KiB)", compile_s, "modules/s"))
        print(_row("deserialize compiled wasm-hash from disk", deserialize_s, "modules/s"))
        print(f"compile / deserialize: {statistics.fmean(compile_s) / statistics.fmean(deserialize_s):.0f}x")
        runtime.close()
    return 0


def _config() -> wasmtime.Config:
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    return config


if __name__ == "__main__":
    raise SystemExit(main())
