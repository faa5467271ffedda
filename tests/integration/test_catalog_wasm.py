"""The signed catalog in front of the real WASM runtime: what the guard admits runs; nothing else does."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from archipelag.catalog import load_catalog, lookup
from archipelag.catalog_signing import CatalogGuard, ensure_dev_signed_catalog
from archipelag.errors import WorkloadRefused
from archipelag.ids import JobId
from archipelag.protocol import Event
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.wasm import WasmRuntime
from archipelag.settings import REPO_ROOT, Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    workloads = tmp_path / "workloads"
    # the manifests and modules the catalog is built from; not the container folders' staged wheels (~1 GB)
    shutil.copytree(REPO_ROOT / "workloads", workloads,
                    ignore=shutil.ignore_patterns("*.zig", "wasm_sdk", "*.py", "vendor", "system-libs", ".*.partial"))
    return Settings(state_dir=tmp_path / "state", workloads_dir=workloads)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[WasmRuntime]:
    rt = WasmRuntime(cache_dir=tmp_path / "wasm-cache")
    yield rt
    rt.close()


def a_job(settings: Settings, slug: str) -> JobSpec:
    """A spec as the coordinator builds it from its own copy of the manifests."""
    workload = lookup(load_catalog(settings.workloads_dir), slug)
    limits = workload.limits_under(settings.limits_for(workload.tier))
    return JobSpec(job_id=JobId("job-signed"), workload=workload, input={"text": "hello"}, limits=limits)


def run(runtime: WasmRuntime, spec: JobSpec) -> list[Event]:
    return list(runtime.run(spec, CancelToken()))


def test_a_workload_admitted_by_the_signed_catalog_runs(settings: Settings, runtime: WasmRuntime) -> None:
    _, public = ensure_dev_signed_catalog(settings)
    guard = CatalogGuard.from_settings(settings.model_copy(update={"trusted_catalog_keys": [public]}))
    events = run(runtime, guard.admit(a_job(settings, "wasm-hash")))
    assert events[-1]["output"]["sha256"] == hashlib.sha256(b"hello").hexdigest()


def test_a_job_naming_a_different_module_hash_is_refused_before_it_runs(settings: Settings) -> None:
    _, public = ensure_dev_signed_catalog(settings)
    guard = CatalogGuard.from_settings(settings.model_copy(update={"trusted_catalog_keys": [public]}))
    spec = a_job(settings, "wasm-hash")
    with pytest.raises(WorkloadRefused, match="sha256"):
        guard.admit(replace(spec, workload=replace(spec.workload, sha256="ab" * 32)))


def test_a_module_swapped_on_the_host_after_signing_is_refused_by_the_runtime(
        settings: Settings, runtime: WasmRuntime) -> None:
    _, public = ensure_dev_signed_catalog(settings)
    guard = CatalogGuard.from_settings(settings.model_copy(update={"trusted_catalog_keys": [public]}))
    admitted = guard.admit(a_job(settings, "wasm-hash"))
    shutil.copy(settings.workloads_dir / "wasm-json" / "wasm_json.wasm", admitted.workload.module_path())
    with pytest.raises(WorkloadRefused, match="SHA-256"):
        run(runtime, admitted)
