"""Builders for the signed-catalog tests (no tests here): a small workloads folder, keys, a signed catalog."""

from __future__ import annotations

import hashlib
from pathlib import Path

from archipelag.catalog_signing import PublicKey, build_catalog, generate_signing_key, sign_catalog

IMAGE_ID = "sha256:" + "ab" * 32
MODULE = b"\0asm\1\0\0\0"  # the smallest valid WASM module


def a_workloads_dir(root: Path, pin_image: bool = True, image: str = "archipelag/boxed:1") -> Path:
    """Two workloads: `echo` (wasm) and `boxed` (container)."""
    workloads = root / "workloads"
    (workloads / "echo").mkdir(parents=True)
    (workloads / "echo" / "module.wasm").write_bytes(MODULE)
    (workloads / "echo" / "manifest.toml").write_text(f'''slug = "echo"
name = "Echo"
runtime = "wasm"
module = "module.wasm"
sha256 = "{hashlib.sha256(MODULE).hexdigest()}"
trust_level = 0
price = 0.001
required_ram_mb = 16
[limits]
timeout_s = 5
fuel = 1000000
[input]
required = ["text"]
''')
    (workloads / "boxed").mkdir()
    pinned = f'image_id = "{IMAGE_ID}"\n' if pin_image else ""
    (workloads / "boxed" / "manifest.toml").write_text(f'''slug = "boxed"
name = "Boxed"
runtime = "container"
image = "{image}"
{pinned}trust_level = 1
price = 0.02
required_ram_mb = 512
required_vram_mb = 2048
required_cores = 2
[limits]
timeout_s = 30
''')
    return workloads


def a_key(path: Path) -> PublicKey:
    return generate_signing_key(path)


def a_signed_catalog(root: Path, key_path: Path, image: str = "archipelag/boxed:1") -> Path:
    """Build and sign a catalog of `a_workloads_dir` under ``root``; returns the catalog path."""
    out = root / "catalog.json"
    build_catalog(a_workloads_dir(root, image=image), out)
    sign_catalog(out, key_path)
    return out
