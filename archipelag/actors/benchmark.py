"""Benchmark: the short measurement of a host's machine that placement believes instead of its claims — CPU
throughput on one core and on all claimed cores, a real allocation of the claimed RAM (bounded), and the GPU when
NVML finds one. About a second in all with the default settings.

Deterministic units: MB/s of SHA-256 over 1 MiB buffers. ``hashlib`` releases the GIL for buffers over 2 KiB,
so threads hash in parallel and the all-cores pass measures how many cores really run at once. The coordinator
runs ``run`` on the host's node (``placement/prober.py``); ``placement/measured.py`` says what the numbers
cap and why a hostile host can still slow or fake them (they cap upward lies only).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

import psutil

from archipelag.actors.hardware import gpus
from archipelag.placement.measured import Claims, Measurement

if TYPE_CHECKING:
    from archipelag.settings import BenchmarkSettings

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # one hashed buffer; big enough that hashing, not Python, is what is timed
PAGE_BYTES = 4096
COPY_BYTES = 16 << 20  # the block the memory pass writes at a time


def hash_rate(threads: int, seconds: float) -> tuple[float, float]:
    """(MB/s of SHA-256 that ``threads`` threads reach together for ``seconds``, CPU seconds this process used per
    second meanwhile). The second is how many cores really ran at once: it cannot exceed the machine's cores,
    however many threads run, and unlike a throughput ratio it is not inflated when a single thread's share of a
    busy machine was small."""
    data = os.urandom(CHUNK_BYTES)
    counts = [0] * threads
    start_line = threading.Barrier(threads + 1)

    def work(index: int) -> None:
        start_line.wait()
        deadline = time.perf_counter() + seconds
        done = 0
        while time.perf_counter() < deadline:
            hashlib.sha256(data).digest()
            done += 1
        counts[index] = done

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    start_line.wait()
    started, cpu_started = time.perf_counter(), time.process_time()
    for worker in workers:
        worker.join()
    elapsed = max(time.perf_counter() - started, 1e-9)
    return sum(counts) * CHUNK_BYTES / (1 << 20) / elapsed, (time.process_time() - cpu_started) / elapsed


def memory_probe(size_mb: int) -> tuple[int, float]:
    """(MB allocated with every page written, write MB/s). An allocation refused (MemoryError) halves the ask
    until one succeeds: what a host can really get, not what it says it has."""
    ask = size_mb
    while ask > 0:
        try:
            buffer = bytearray(ask << 20)
        except MemoryError:
            ask //= 2
            continue
        view = memoryview(buffer)
        block = b"\xa5" * min(COPY_BYTES, len(buffer))
        started = time.perf_counter()
        for offset in range(0, len(buffer), len(block)):
            end = min(offset + len(block), len(buffer))
            view[offset:end] = block[: end - offset]  # writes every page: calloc'd pages exist only when touched
        elapsed = time.perf_counter() - started
        touched = sum(buffer[::PAGE_BYTES * 256])  # read back: the writes happened
        del view, buffer
        if touched == 0:
            return 0, 0.0
        return ask, ask / max(elapsed, 1e-9)
    return 0, 0.0


def gpu_tflops(seconds: float) -> float | None:
    """fp16 matmul TFLOPS on the first CUDA device; None without torch or CUDA (then NVML's facts only)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    n = 4096
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    (a @ b).sum().item()  # warm-up: kernels chosen, clocks up
    runs = 0
    torch.cuda.synchronize()
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()
        runs += 10
    elapsed = time.perf_counter() - started
    return 2 * n**3 * runs / elapsed / 1e12


def run(claims: Claims, settings: BenchmarkSettings) -> Measurement:
    """Measure this machine against what its host claims."""
    started = time.perf_counter()
    threads = max(1, min(claims.cpu_cores, settings.max_threads))
    single, single_share = hash_rate(1, settings.cpu_single_s)
    together, parallelism = hash_rate(threads, settings.cpu_all_s)
    verified_mb, memory_mb_s = memory_probe(min(claims.ram_mb, settings.memory_probe_mb))
    found = gpus()
    tflops = gpu_tflops(settings.gpu_s) if found else None
    return Measurement(
        threads=threads, cpu_single_mb_s=single, cpu_all_mb_s=together, cpu_single_share=single_share,
        cpu_parallelism=parallelism,
        memory_probe_mb=min(claims.ram_mb, settings.memory_probe_mb), memory_verified_mb=verified_mb,
        memory_mb_s=memory_mb_s, node_ram_mb=psutil.virtual_memory().total >> 20,
        gpu_model=found[0][0] if found else None, gpu_vram_mb=found[0][1] if found else 0, gpu_tflops=tflops,
        duration_s=time.perf_counter() - started,
    )
