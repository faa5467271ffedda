"""Module cache: compiled WASM modules by SHA-256, in memory and on disk, checked before they run.

Compiling a module with Cranelift takes ~100 ms; deserializing the compiled artifact takes well
under a millisecond, so every module is compiled once per host and then read back from
``<cache_dir>/<sha256>-<wasmtime version>.cwasm``. The cache directory is host-local state with
the same trust as the host's own code: wasmtime runs a deserialized artifact as native code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import wasmtime

from archipelag.catalog import Manifest
from archipelag.errors import ConfigError, WorkloadRefused

log = logging.getLogger(__name__)

WASM_PAGE_BYTES = 64 * 1024
_ARTIFACT_SUFFIX = f"-wasmtime{version('wasmtime')}.cwasm"


@dataclass(frozen=True)
class LoadedModule:
    """A verified, compiled module ready to instantiate in a store of the cache's engine."""

    sha256: str
    pre: wasmtime.InstancePre
    min_memory_bytes: int  # the memory the module asks for at instantiation


@dataclass
class CacheStats:
    """How modules were obtained; the benchmark and the tests read these."""

    memory_hits: int = 0
    disk_hits: int = 0
    compiles: int = 0


class ModuleCache:
    """Verifies a workload's module against its manifest's SHA-256 and hands back a compiled module."""

    def __init__(self, engine: wasmtime.Engine, linker: wasmtime.Linker, cache_dir: Path | None,
                 max_in_memory: int = 64) -> None:
        self._engine = engine
        self._linker = linker
        self._cache_dir = cache_dir
        self._max_in_memory = max_in_memory
        self._modules: OrderedDict[str, LoadedModule] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)

    def load(self, workload: Manifest) -> LoadedModule:
        """The workload's compiled module; raises WorkloadRefused if its bytes are missing or do not
        match the manifest's SHA-256 (nothing is compiled or run then)."""
        expected = (workload.sha256 or "").lower()
        if not expected:
            raise WorkloadRefused(f"workload {workload.slug} has no sha256 in its manifest; refusing to run it")
        try:
            path = workload.module_path()
            data = path.read_bytes()
        except ConfigError as exc:
            raise WorkloadRefused(exc.message) from None
        except OSError as exc:
            raise WorkloadRefused(f"workload {workload.slug}: cannot read module {workload.module!r} "
                                  f"({exc.strerror}); rebuild the WASM workloads") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise WorkloadRefused(f"workload {workload.slug}: module SHA-256 is {actual}, the catalog says "
                                  f"{expected}; refusing to run it")
        with self._lock:
            cached = self._modules.get(actual)
            if cached is not None:
                self._modules.move_to_end(actual)
                self.stats.memory_hits += 1
                return cached
        loaded = self._compile_or_read(actual, data, workload)
        with self._lock:
            self._modules[actual] = loaded
            while len(self._modules) > self._max_in_memory:
                self._modules.popitem(last=False)
        return loaded

    def _compile_or_read(self, sha256: str, data: bytes, workload: Manifest) -> LoadedModule:
        artifact = self._cache_dir / f"{sha256}{_ARTIFACT_SUFFIX}" if self._cache_dir else None
        module: wasmtime.Module | None = None
        if artifact is not None and artifact.is_file():
            try:
                module = wasmtime.Module.deserialize_file(self._engine, str(artifact))
                self.stats.disk_hits += 1
            except wasmtime.WasmtimeError:
                log.warning("compiled module %s is stale or corrupt; compiling again", artifact.name)
        if module is None:
            try:
                module = wasmtime.Module(self._engine, data)
            except wasmtime.WasmtimeError as exc:
                raise WorkloadRefused(f"workload {workload.slug}: module is not valid WebAssembly: "
                                      f"{_first_line(str(exc))}") from None
            self.stats.compiles += 1
            if artifact is not None:
                _write_atomically(artifact, bytes(module.serialize()))
        try:
            pre = self._linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise WorkloadRefused(f"workload {workload.slug}: module imports something the WASM sandbox does "
                                  f"not offer (only WASI stdin/stdout): {_first_line(str(exc))}") from None
        return LoadedModule(sha256=sha256, pre=pre, min_memory_bytes=_min_memory_bytes(module))


def _min_memory_bytes(module: wasmtime.Module) -> int:
    pages = 0
    types = [item.type for item in module.exports] + [item.type for item in module.imports]
    for item_type in types:
        if isinstance(item_type, wasmtime.MemoryType):
            pages += item_type.limits.min
    return pages * WASM_PAGE_BYTES


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".cwasm")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError:
        log.warning("could not write compiled module %s", path.name, exc_info=True)
        Path(tmp).unlink(missing_ok=True)


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "unknown error"
