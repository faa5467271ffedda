"""Build: compiles every WASM workload from its Zig source and pins the module's SHA-256 in its manifest.

    .venv/bin/python workloads/build_wasm.py           # build, update manifests' sha256
    .venv/bin/python workloads/build_wasm.py --check   # build, fail if a manifest's sha256 is stale

A WASM workload is a folder with ``manifest.toml`` (runtime = "wasm", module = "<name>.wasm") and
``main.zig``; it may ``@import("event")``, the protocol helpers in ``workloads/wasm_sdk/event.zig``.
Builds are reproducible (same source and Zig → same bytes), so committed manifests stay stable.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

WORKLOADS = Path(__file__).resolve().parent
ROOT = WORKLOADS.parent
SDK = WORKLOADS / "wasm_sdk" / "event.zig"
ZIG_CACHE = ROOT / "build" / "zig"
# Zig's global cache (its WASI libc and compiler-rt, most of a first build) lives outside the checkout, so a
# clean checkout (CI) reuses it; Zig keys what it caches by content and locks it for concurrent builds.
ZIG_GLOBAL_CACHE = Path.home() / ".cache" / "archipelag" / "zig"
_SHA_LINE = re.compile(r'^sha256\s*=\s*"[0-9a-fA-F]*"\s*$', re.MULTILINE)


def wasm_workloads() -> list[tuple[Path, str]]:
    """(folder, module file name) for every WASM workload with a Zig source."""
    found = []
    for manifest in sorted(WORKLOADS.glob("*/manifest.toml")):
        data = tomllib.loads(manifest.read_text())
        if data.get("runtime") == "wasm" and (manifest.parent / "main.zig").is_file():
            found.append((manifest.parent, str(data["module"])))
    return found


def compile_module(folder: Path, module: str) -> Path:
    out = folder / module
    cmd = [sys.executable, "-m", "ziglang", "build-exe", "-target", "wasm32-wasi", "-O", "ReleaseSmall",
           "-fstrip", "--cache-dir", str(ZIG_CACHE / "local"), "--global-cache-dir", str(ZIG_GLOBAL_CACHE),
           "--dep", "event", f"-Mroot={(folder / 'main.zig').relative_to(ROOT)}",
           f"-Mevent={SDK.relative_to(ROOT)}", f"-femit-bin={out.relative_to(ROOT)}"]
    result = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"building {folder.name} failed:\n{result.stderr}")
    return out


def pin_sha256(folder: Path, sha256: str, check: bool) -> bool:
    """Write the module's SHA-256 into the manifest; with ``check``, only report whether it matches."""
    manifest = folder / "manifest.toml"
    text = manifest.read_text()
    if tomllib.loads(text).get("sha256") == sha256:
        return True
    if check:
        return False
    if not _SHA_LINE.search(text):
        raise SystemExit(f"{manifest}: add a line `sha256 = \"\"` for the build to fill in")
    manifest.write_text(_SHA_LINE.sub(f'sha256 = "{sha256}"', text, count=1))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a manifest's sha256 is out of date")
    args = parser.parse_args(argv)
    targets = wasm_workloads()
    with ThreadPoolExecutor(max_workers=2) as pool:
        built = list(pool.map(lambda target: compile_module(*target), targets))
    stale = []
    for (folder, _), out in zip(targets, built, strict=True):
        sha256 = hashlib.sha256(out.read_bytes()).hexdigest()
        if not pin_sha256(folder, sha256, args.check):
            stale.append(folder.name)
        print(f"{folder.name:20} {out.stat().st_size:>8} bytes  sha256 {sha256}")
    if stale:
        print(f"stale sha256 in: {', '.join(stale)}; run workloads/build_wasm.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
