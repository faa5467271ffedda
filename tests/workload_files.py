"""The workloads' own build files, used by tests as `make` uses them: a script loaded as a module, and a
container workload staged, built on the engine and pinned."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import docker

from archipelag.catalog import Manifest, load_catalog
from archipelag.runtimes import images
from archipelag.settings import REPO_ROOT

WORKLOADS = REPO_ROOT / "workloads"


def load_module(path: Path, name: str | None = None) -> ModuleType:
    """A Python file that is not in a package (a workload's program or build script), as a module."""
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_script() -> ModuleType:
    return load_module(WORKLOADS / "build_containers.py", "build_containers")


def built_workload(client: docker.DockerClient, slug: str) -> Manifest:
    """The catalog entry ``slug`` with its vendor/ staged and its image built as `make containers` does, the
    image's ID pinned."""
    builder = build_script()
    manifest = load_catalog(WORKLOADS)[slug]  # type: ignore[index]
    builder.stage(Path(manifest.directory), builder.DEFAULT_WHEELS, offline=False)
    return replace(manifest, image_id=images.build_workload(client, manifest))
