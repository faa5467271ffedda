"""Hardware: what a host machine has — CPU cores, RAM, GPU model and VRAM — and how busy it is.

This is what the host *claims* (read by the host itself). Placement believes it only as far as the join benchmark
the coordinator runs on the host's node confirms it (actors/benchmark.py, placement/measured.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psutil

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hardware:
    cpu_cores: int
    ram_mb: int
    gpu_model: str | None = None
    gpu_vram_mb: int = 0
    runtimes: frozenset[str] = field(default_factory=lambda: frozenset({"wasm"}))

    def as_capabilities(self) -> dict[str, Any]:
        """The API's host `capabilities` object (DESIGN §8)."""
        return {
            "cpu_cores": self.cpu_cores,
            "ram_mb": self.ram_mb,
            "gpu_model": self.gpu_model,
            "gpu_vram_mb": self.gpu_vram_mb,
            "runtimes": sorted(self.runtimes),
        }

    @classmethod
    def from_capabilities(cls, data: dict[str, Any]) -> Hardware:
        return cls(int(data["cpu_cores"]), int(data["ram_mb"]), data.get("gpu_model"), int(data["gpu_vram_mb"]),
                   frozenset(data["runtimes"]))


def gpus() -> list[tuple[str, int, int]]:
    """(model, total VRAM MB, free VRAM MB) per NVIDIA GPU; empty without a driver."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            found.append((name if isinstance(name, str) else name.decode(), int(memory.total) >> 20,
                          int(memory.free) >> 20))
        return found
    except pynvml.NVMLError as exc:
        log.warning("GPU detection failed, continuing CPU-only: %s", exc)
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def detect(max_memory_mb: int | None = None, max_cores: int | None = None) -> Hardware:
    """Measure this machine; the owner's caps (``--max-memory-mb``) only ever lower what is lent."""
    cores = psutil.cpu_count(logical=True) or 1
    ram_mb = psutil.virtual_memory().total >> 20
    found = gpus()
    return Hardware(
        cpu_cores=min(cores, max_cores) if max_cores else cores,
        ram_mb=min(ram_mb, max_memory_mb) if max_memory_mb else ram_mb,
        gpu_model=found[0][0] if found else None,
        gpu_vram_mb=found[0][1] if found else 0,
        runtimes=frozenset({"wasm"}),
    )


def metrics(hardware: Hardware) -> dict[str, Any]:
    """A heartbeat's live system metrics."""
    memory = psutil.virtual_memory()
    found = gpus() if hardware.gpu_model else []
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": memory.percent,
        "free_ram_mb": min(hardware.ram_mb, memory.available >> 20),
        "free_vram_mb": found[0][2] if found else 0,
    }
