"""A workloads folder for network tests: the real catalog plus misbehaving modules from tests/fixtures/wasm."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import wasmtime

from archipelag.settings import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "wasm"


def _fixture(root: Path, slug: str, wat: str, limits: dict[str, int | float], sha256: str | None = None,
             required_ram_mb: int = 16, trust_level: int = 0) -> None:
    folder = root / slug
    folder.mkdir()
    module = wasmtime.wat2wasm((FIXTURES / wat).read_text())
    (folder / "module.wasm").write_bytes(module)
    digest = sha256 or hashlib.sha256(module).hexdigest()
    lines = [f'slug = "{slug}"', f'name = "{slug}"', 'runtime = "wasm"', 'module = "module.wasm"',
             f'sha256 = "{digest}"', f"trust_level = {trust_level}", "price = 0.001",
             f"required_ram_mb = {required_ram_mb}", "[limits]", *(f"{k} = {v}" for k, v in limits.items())]
    (folder / "manifest.toml").write_text("\n".join(lines) + "\n")


def network_catalog(root: Path) -> Path:
    """Copy the real workloads (built) and add the test modules; returns the folder."""
    workloads = root / "workloads"
    shutil.copytree(REPO_ROOT / "workloads", workloads,
                    ignore=shutil.ignore_patterns("*.zig", "wasm_sdk", "*.py", "vendor", "system-libs"))
    _fixture(workloads, "test-loop", "loop.wat", {"timeout_s": 20, "fuel": 50_000_000})
    # Standard tier (trust 1): its fuel budget outlasts these wall-clock budgets.
    _fixture(workloads, "test-slow-loop", "status_then_loop.wat", {"timeout_s": 2}, trust_level=1)
    _fixture(workloads, "test-spin", "status_then_loop.wat", {"timeout_s": 60}, trust_level=1)
    _fixture(workloads, "test-count", "count_then_done.wat", {"timeout_s": 60}, trust_level=1)
    _fixture(workloads, "test-ticks", "ticks.wat", {"timeout_s": 60}, trust_level=1)
    _fixture(workloads, "test-invalid-json", "invalid_json.wat", {"timeout_s": 5})
    _fixture(workloads, "test-flood", "flood.wat", {"timeout_s": 20, "output_bytes": 65_536})
    _fixture(workloads, "test-trap", "trap.wat", {"timeout_s": 5})
    _fixture(workloads, "test-grow-memory", "grow_memory.wat", {"timeout_s": 5, "memory_mb": 2})
    _fixture(workloads, "test-tampered", "tiny.wat", {"timeout_s": 5}, sha256="0" * 64)
    _fixture(workloads, "test-huge", "tiny.wat", {"timeout_s": 5}, required_ram_mb=10**9)
    return workloads
