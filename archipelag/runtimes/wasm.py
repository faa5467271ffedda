"""WASM runtime: runs one job's module in wasmtime under fuel, wall-clock, memory and output budgets.

One Engine serves every job. Each job gets its own Store (fuel, memory cap, WASI with stdin = the
job input bytes and stdout = a pipe, nothing else) and runs on a pooled worker thread, while ``run``
— a generator on the caller's thread — reads the pipe and yields protocol events as they appear.
The pipe gives backpressure for free: a module that out-writes its consumer blocks, it does not
fill the host's memory. (A stdout *callback* would run Python on wasmtime's tokio threads, which
aborts the process when it happens during interpreter shutdown.)

Stopping one job without touching the others: every store's epoch deadline is one tick ahead and
its deadline callback decides, per store, whether to go on (push the deadline one tick further) or
trap. Incrementing the shared engine's epoch therefore makes every running store ask its callback
once; only the job marked stopped traps. Cancellation, the wall-clock watchdog, an output overrun
and a protocol violation all stop a job that way, within microseconds of the mark. wasmtime-py 50
wraps neither that callback nor WASI stdin-from-bytes, so those two C-API calls go through its
ctypes bindings (``wasmtime._ffi``).
"""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import wasmtime
from wasmtime import _ffi as ffi

from archipelag.errors import (
    ArchipelagError,
    BudgetExceeded,
    JobCancelled,
    ProtocolViolation,
    WorkloadError,
    WorkloadTimedOut,
)
from archipelag.protocol import Event, is_final, parse_line
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.wasm_cache import WASM_PAGE_BYTES, CacheStats, LoadedModule, ModuleCache
from archipelag.sandbox import Limits

MIB: Final = 1024 * 1024
READ_BYTES: Final = 64 * 1024
AFTER_FINAL_GRACE_S: Final = 0.05  # time a module gets to exit on its own after its final event


class WasmRuntime:
    """Runs WASM workloads (DESIGN §5). ``cache_dir`` keeps compiled modules across restarts;
    ``None`` caches in memory only. Thread-safe: many jobs may run at once."""

    name = "wasm"

    def __init__(self, cache_dir: Path | None = None, max_parallel_jobs: int = 64) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        self._engine = wasmtime.Engine(config)
        linker = wasmtime.Linker(self._engine)
        linker.define_wasi()
        self._modules = ModuleCache(self._engine, linker, cache_dir)
        self._watchdog = _Watchdog()
        self._workers = ThreadPoolExecutor(max_workers=max_parallel_jobs, thread_name_prefix="wasm-job")

    @property
    def cache_stats(self) -> CacheStats:
        return self._modules.stats

    def warm(self, now: float) -> frozenset[str]:
        """None to report: compiling a module takes ~0.1 s once, then the cache serves every host job."""
        return frozenset()

    def close(self) -> None:
        """Stop the watchdog and the idle worker threads (after the jobs still running end)."""
        self._watchdog.close()
        self._workers.shutdown(wait=True)

    def run(self, spec: JobSpec, cancel: CancelToken) -> Iterator[Event]:
        module = self._modules.load(spec.workload)  # refuses a bad artifact before anything runs
        cap_bytes = spec.limits.memory_mb * MIB
        if module.min_memory_bytes > cap_bytes:
            raise BudgetExceeded(f"out of memory: the module needs {module.min_memory_bytes // MIB} MB at start, "
                                 f"over its {spec.limits.memory_mb} MB cap")
        job = _Job(self._engine, spec.limits)
        cancel.on_cancel(lambda: job.stop(JobCancelled(cancel.reason or "cancelled")))
        return self._stream(job, module, spec)

    def _stream(self, job: _Job, module: LoadedModule, spec: JobSpec) -> Iterator[Event]:
        read_fd, write_fd = os.pipe()
        try:
            wasi = _wasi_config(json.dumps(spec.input).encode(), str(spec.workload.slug), write_fd)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # the WASI context holds its own; EOF comes when the store is freed
        deadline = self._watchdog.watch(job, spec.limits.timeout_s)
        worker = self._workers.submit(_execute, job, module, wasi)
        ended = False
        try:
            for event in _events(job, read_fd):
                yield event
                if is_final(event):
                    job.finish()
                    return
            ended = True
        finally:
            self._watchdog.forget(deadline)
            exit_ = _wait(job, worker, read_fd, ended)
        raise _failure(job, exit_, spec.limits)


def _events(job: _Job, read_fd: int) -> Iterator[Event]:
    """Protocol events from the module's stdout as they arrive, until EOF. On a violation the job is
    stopped and the rest of its output drained unread, so a writer blocked on the pipe reaches its trap."""
    limits = job.limits
    too_long = f"output limit: the module wrote a line longer than {limits.line_bytes} bytes"
    pending = b""
    total = 0
    events = 0
    while chunk := os.read(read_fd, READ_BYTES):
        if job.stopping:
            continue
        total += len(chunk)
        if total > limits.output_bytes:
            job.stop(BudgetExceeded(f"output limit: the module wrote more than {limits.output_bytes} bytes"))
            continue
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if len(line) > limits.line_bytes:
                job.stop(BudgetExceeded(too_long))
                break
            try:
                event = parse_line(line)
            except ProtocolViolation as exc:
                job.stop(exc)
                break
            events += 1
            if events > limits.output_events:
                job.stop(BudgetExceeded(f"output limit: the module wrote more than {limits.output_events} events"))
                break
            yield event
        if len(pending) > limits.line_bytes:
            job.stop(BudgetExceeded(too_long))
    if pending and not job.stopping:
        yield parse_line(pending)  # a last line without its newline still counts


def _wait(job: _Job, worker: Future[_Exit], read_fd: int, ended: bool) -> _Exit:
    """Wait for the worker and close the pipe. A module still running is stopped first — after a short
    grace if it already sent its final event, since it is most likely exiting on its own."""
    try:
        if not ended:
            if job.stopping and job.error is None:
                with contextlib.suppress(TimeoutError):
                    worker.result(AFTER_FINAL_GRACE_S)
            if not worker.done():
                job.stop(job.error)
                job.engine.increment_epoch()  # also when stop() was a no-op because finish() came first
    finally:
        os.close(read_fd)  # a module blocked writing to a full pipe gets EPIPE and reaches its trap
    return worker.result()


# --- one job ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Exit:
    """How the module's ``_start`` ended: an exit status, or a trap/host error message."""

    status: int | None = None
    trap: str | None = None
    fuel_left: int = -1
    memory_full: bool = False


class _Job:
    """A running job's stop switch, shared by the generator, the worker, the watchdog and cancel."""

    _ids = itertools.count(1)

    def __init__(self, engine: wasmtime.Engine, limits: Limits) -> None:
        self.id = next(self._ids)
        self.engine = engine
        self.limits = limits
        self.stopping = False  # set once; the module traps at its next epoch check
        self.error: ArchipelagError | None = None  # why it was stopped; None for a normal finish
        self._lock = threading.Lock()

    def stop(self, error: ArchipelagError | None) -> None:
        with self._lock:
            if self.stopping:
                return
            self.stopping = True
            self.error = error
        self.engine.increment_epoch()

    def finish(self) -> None:
        """The final event arrived: later output is ignored; the module may still exit on its own."""
        with self._lock:
            self.stopping = True


class _StoppedEarly(Exception):
    pass


def _execute(job: _Job, module: LoadedModule, wasi: wasmtime.WasiConfig) -> _Exit:
    """The worker: instantiate the module in a fresh store and run ``_start``; report how it ended."""
    store = wasmtime.Store(job.engine)
    instance: wasmtime.Instance | None = None
    status: int | None = None
    trap: str | None = None
    _JOBS[job.id] = job
    try:
        store.set_wasi(wasi)
        store.set_fuel(job.limits.fuel)
        store.set_limits(memory_size=job.limits.memory_mb * MIB, instances=1, memories=1, tables=4)
        store.set_epoch_deadline(1)
        ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), _on_epoch, ctypes.c_void_p(job.id), _no_finalizer)
        if job.stopping:  # stopped before the deadline above was armed: no epoch tick will come
            raise _StoppedEarly
        instance = module.pre.instantiate(store)
        start = instance.exports(store)["_start"]
        if not isinstance(start, wasmtime.Func):
            trap = "the module's _start export is not a function"
        else:
            start(store)
            status = 0
    except _StoppedEarly:
        trap = "stopped before it started"
    except wasmtime.ExitTrap as exc:
        status = exc.code
        exc.__traceback__ = None
    except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
        trap = _cause(str(exc))
        exc.__traceback__ = None  # the traceback holds this frame: a cycle that would keep the store alive
    except Exception as exc:  # noqa: BLE001 - the worker must always report back
        trap = f"{type(exc).__name__}: {exc}"
        exc.__traceback__ = None
    finally:
        _JOBS.pop(job.id, None)
        exit_ = _Exit(status=status, trap=trap, fuel_left=_fuel_left(store),
                      memory_full=_memory_full(store, instance, job.limits))
        instance = None
        store.close()  # frees its memory and WASI context now (closing stdout: the reader sees EOF)
    return exit_


def _wasi_config(stdin: bytes, program: str, stdout_fd: int) -> wasmtime.WasiConfig:
    """WASI with stdin (the input bytes) and stdout (the pipe) only: no preopened dirs, no env, no
    network; stderr is discarded."""
    wasi = wasmtime.WasiConfig()
    wasi.argv = [program]
    wasi.stdout_file = f"/dev/fd/{stdout_fd}"  # opened now, as a new description of the pipe
    vec = ffi.wasm_byte_vec_t()
    ffi.wasm_byte_vec_new(ctypes.byref(vec), len(stdin), (ctypes.c_ubyte * len(stdin)).from_buffer_copy(stdin))
    ffi.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))  # takes ownership of vec
    return wasi


def _fuel_left(store: wasmtime.Store) -> int:
    try:
        return store.get_fuel()
    except wasmtime.WasmtimeError:
        return -1


def _memory_full(store: wasmtime.Store, instance: wasmtime.Instance | None, limits: Limits) -> bool:
    """Whether the module's memory has no room for another page under the cap (a grow was refused)."""
    if instance is None:
        return False
    memory = instance.exports(store).get("memory")
    if not isinstance(memory, wasmtime.Memory):
        return False
    return memory.data_len(store) + WASM_PAGE_BYTES > limits.memory_mb * MIB


def _failure(job: _Job, exit_: _Exit, limits: Limits) -> ArchipelagError:
    """The error for a job whose output ended without a final event."""
    if job.error is not None:
        return job.error
    if exit_.fuel_left == 0:
        return BudgetExceeded(f"fuel exhausted: the module used its whole budget of {limits.fuel} fuel units")
    failed = exit_.trap is not None or exit_.status != 0
    if failed and exit_.memory_full:
        return BudgetExceeded(f"out of memory: the module tried to grow past its {limits.memory_mb} MB cap")
    if exit_.trap is not None:
        return WorkloadError(f"the module trapped: {exit_.trap}")
    if exit_.status != 0:
        return WorkloadError(f"the module exited with status {exit_.status} before a done event")
    return ProtocolViolation("the module exited without a done event")


def _cause(message: str) -> str:
    """The root cause from a wasmtime error message (its 'Caused by:' section), on one line."""
    head, _, cause = message.partition("Caused by:")
    text = cause if cause.strip() else head
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown trap"


# --- the epoch deadline callback -------------------------------------------------------------------

_JOBS: dict[int, _Job] = {}  # running jobs by id, for the C callback (its data pointer is the id)

_EpochCallback = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.POINTER(ffi.wasmtime_context_t), ctypes.c_void_p,
                                  ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint8))
_Finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_CONTINUE: Final = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE


def _epoch_reached(_context: Any, data: int | None, delta: Any, kind: Any) -> int:
    job = _JOBS.get(data or 0)
    if job is None or job.stopping:
        error = ffi.wasmtime_error_new(b"archipelag: job stopped")
        return ctypes.cast(error, ctypes.c_void_p).value or 0  # wasmtime owns and frees it
    delta[0] = 1
    kind[0] = _CONTINUE
    return 0


def _finalize(_data: int | None) -> None:
    return None


_on_epoch = _EpochCallback(_epoch_reached)
_no_finalizer = _Finalizer(_finalize)


# --- the wall-clock watchdog -----------------------------------------------------------------------


@dataclass(order=True)
class _Deadline:
    at: float
    seq: int
    job: _Job | None = field(compare=False)


class _Watchdog:
    """One thread per runtime that stops each job when its wall-clock budget runs out."""

    def __init__(self) -> None:
        self._heap: list[_Deadline] = []
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def watch(self, job: _Job, timeout_s: float) -> _Deadline:
        deadline = _Deadline(time.monotonic() + timeout_s, next(self._seq), job)
        with self._wake:
            heapq.heappush(self._heap, deadline)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._loop, name="wasm-watchdog", daemon=True)
                self._thread.start()
            if self._heap[0] is deadline:
                self._wake.notify()
        return deadline

    def forget(self, deadline: _Deadline) -> None:
        deadline.job = None  # dropped lazily when it reaches the top of the heap

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def _loop(self) -> None:
        with self._wake:
            while not self._closed:
                while self._heap and self._heap[0].job is None:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._wake.wait()
                    continue
                wait_s = self._heap[0].at - time.monotonic()
                if wait_s > 0:
                    self._wake.wait(wait_s)
                    continue
                job = heapq.heappop(self._heap).job
                if job is not None:
                    job.stop(WorkloadTimedOut(f"timed out: the module ran past its {job.limits.timeout_s:g} s "
                                              "wall-clock budget"))
