"""The host's check before it runs anything: the job's workload must match the signed catalog."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from test_catalog_builders import IMAGE_ID, a_key, a_signed_catalog

from archipelag.catalog import Manifest
from archipelag.catalog_signing import (
    CatalogGuard,
    CatalogRefused,
    SignedCatalog,
    build_catalog,
    check_workload,
    image_repository,
    image_source_allowed,
    load_signed_catalog,
    sign_catalog,
    verify_spec,
)
from archipelag.errors import WorkloadRefused
from archipelag.ids import JobId, WorkloadSlug
from archipelag.runtimes.base import JobSpec
from archipelag.sandbox import Limits
from archipelag.settings import Settings

ALLOWED = ("archipelag/*",)
LIMITS = Limits(memory_mb=64, timeout_s=5, network=False, gpu=False, fuel=10, output_bytes=10, line_bytes=10)


@pytest.fixture
def signed(tmp_path: Path) -> SignedCatalog:
    public = a_key(tmp_path / "k")
    return load_signed_catalog(a_signed_catalog(tmp_path, tmp_path / "k"), [public.encoded()],
                               tmp_path / "workloads")


def refused(job: Manifest, catalog: SignedCatalog, allowed: tuple[str, ...] = ALLOWED) -> WorkloadRefused:
    with pytest.raises(WorkloadRefused) as caught:
        check_workload(job, catalog, allowed)
    assert caught.value.code == "workload_refused"
    return caught.value


def test_a_job_matching_the_signed_entry_runs_the_signed_manifest(signed: SignedCatalog) -> None:
    job = replace(signed.manifests[WorkloadSlug("echo")], directory="/elsewhere/on/the/coordinator")
    assert check_workload(job, signed, ALLOWED) == signed.manifests[WorkloadSlug("echo")]


def test_an_unknown_workload_is_refused(signed: SignedCatalog) -> None:
    job = replace(signed.manifests[WorkloadSlug("echo")], slug=WorkloadSlug("sneaky"))
    error = refused(job, signed)
    assert error.details["reason"] == "unknown_workload" and "'sneaky' is not in the signed catalog" in error.message


def test_a_mismatched_module_hash_is_refused(signed: SignedCatalog) -> None:
    job = replace(signed.manifests[WorkloadSlug("echo")], sha256="0" * 64)
    error = refused(job, signed)
    assert error.details == {"reason": "manifest_mismatch", "field": "sha256"}
    assert "sha256 is '000" in error.message and "signed catalog says" in error.message


def test_a_mismatched_image_id_is_refused(signed: SignedCatalog) -> None:
    job = replace(signed.manifests[WorkloadSlug("boxed")], image_id="sha256:" + "cd" * 32)
    error = refused(job, signed)
    assert error.details["field"] == "image_id" and IMAGE_ID in error.message


def test_a_mismatched_image_is_refused(signed: SignedCatalog) -> None:
    job = replace(signed.manifests[WorkloadSlug("boxed")], image="archipelag/other:1")
    assert refused(job, signed).details["field"] == "image"


@pytest.mark.parametrize("change", [{"trust_level": 3}, {"limits": {"timeout_s": 600}}, {"runtime": "container"}])
def test_a_job_that_raises_its_trust_or_limits_is_refused(signed: SignedCatalog, change: dict[str, object]) -> None:
    job = replace(signed.manifests[WorkloadSlug("echo")], **change)  # type: ignore[arg-type]
    assert refused(job, signed).details["field"] == next(iter(change))


def test_a_job_without_an_image_id_takes_the_signed_one(signed: SignedCatalog) -> None:
    job = replace(signed.manifests[WorkloadSlug("boxed")], image_id=None)
    assert check_workload(job, signed, ALLOWED).image_id == IMAGE_ID


def test_an_image_from_a_source_not_allowed_is_refused(tmp_path: Path) -> None:
    public = a_key(tmp_path / "k")
    path = a_signed_catalog(tmp_path, tmp_path / "k", image="evil.example/miner:latest")
    catalog = load_signed_catalog(path, [public.encoded()], tmp_path / "workloads")
    error = refused(catalog.manifests[WorkloadSlug("boxed")], catalog)
    assert error.details["reason"] == "image_source"
    assert "'evil.example/miner:latest' is not from an allowed source (archipelag/*)" in error.message
    assert check_workload(catalog.manifests[WorkloadSlug("boxed")], catalog, ("evil.example/*",))


@pytest.mark.parametrize(("image", "repository"), [
    ("archipelag/x:1", "archipelag/x"), ("archipelag/x", "archipelag/x"),
    ("localhost:5000/archipelag/x:2", "localhost:5000/archipelag/x"),
    ("archipelag/x@sha256:abc", "archipelag/x"),
])
def test_image_repository_drops_tag_and_digest(image: str, repository: str) -> None:
    assert image_repository(image) == repository


def test_image_source_patterns_match_the_whole_repository() -> None:
    assert image_source_allowed("archipelag/pdf-extract:1", ["archipelag/*"])
    assert not image_source_allowed("archipelag-evil/x:1", ["archipelag/*"])
    assert not image_source_allowed("docker.io/archipelag/x:1", ["archipelag/*"])
    assert not image_source_allowed("archipelag/x:1", [])


def a_spec(manifest: Manifest) -> JobSpec:
    return JobSpec(job_id=JobId("j1"), workload=manifest, input={"text": "hi"}, limits=LIMITS)


def test_verify_spec_returns_the_spec_to_run(signed: SignedCatalog) -> None:
    job = replace(signed.manifests[WorkloadSlug("boxed")], image_id=None, directory="/coordinator")
    spec = verify_spec(a_spec(job), signed, ALLOWED)
    assert spec.workload.image_id == IMAGE_ID and spec.input == {"text": "hi"} and spec.job_id == "j1"


def test_the_guard_follows_a_re_signed_catalog_and_keeps_the_last_good_one_on_tamper(tmp_path: Path) -> None:
    public = a_key(tmp_path / "k")
    path = a_signed_catalog(tmp_path, tmp_path / "k")
    guard = CatalogGuard.from_file(path, [public.encoded()], tmp_path / "workloads", ALLOWED)
    echo = guard.catalog.manifests[WorkloadSlug("echo")]
    assert guard.admit(a_spec(echo)).workload == echo

    original = path.read_bytes()
    path.write_bytes(original.replace(b'"trust_level": 0', b'"trust_level": 3'))
    os.utime(path, ns=(1, 1))
    with pytest.raises(WorkloadRefused, match="trust_level"):
        guard.admit(a_spec(replace(echo, trust_level=3)))  # the tampered entry is not believed
    assert guard.admit(a_spec(echo)).workload == echo


def test_a_host_without_a_verifiable_catalog_cannot_build_a_guard(tmp_path: Path) -> None:
    a_key(tmp_path / "k")
    path = a_signed_catalog(tmp_path, tmp_path / "k")
    with pytest.raises(CatalogRefused):
        CatalogGuard.from_file(path, [a_key(tmp_path / "other").encoded()], tmp_path / "workloads", ALLOWED)


def test_the_guard_picks_up_a_rebuilt_and_re_signed_catalog(tmp_path: Path) -> None:
    public = a_key(tmp_path / "k")
    path = a_signed_catalog(tmp_path, tmp_path / "k")
    guard = CatalogGuard.from_file(path, [public.encoded()], tmp_path / "workloads", ALLOWED)
    manifest = tmp_path / "workloads" / "echo" / "manifest.toml"
    manifest.write_text(manifest.read_text().replace("timeout_s = 5", "timeout_s = 4"))
    build_catalog(tmp_path / "workloads", path)
    sign_catalog(path, tmp_path / "k")
    assert guard.catalog.manifests[WorkloadSlug("echo")].limits["timeout_s"] == 4


def test_a_spec_that_asks_for_more_than_its_signed_tier_runs_within_the_tier(tmp_path: Path) -> None:
    """Whoever hands a host a job (the dispatcher, or any node of the cluster calling the agent), the limits the
    host applies come from the signed tier: a request can only narrow them (issue 11, containment 4)."""
    public = a_key(tmp_path / "k")
    path = a_signed_catalog(tmp_path, tmp_path / "k")
    settings = Settings()
    guard = CatalogGuard.from_file(path, [public.encoded()], tmp_path / "workloads", ALLOWED,
                                   limits_for=settings.limits_for)
    echo = guard.catalog.manifests[WorkloadSlug("echo")]
    tier = echo.limits_under(settings.limits_for(echo.tier))
    greedy = Limits(memory_mb=10**6, timeout_s=10**6, network=True, gpu=True, fuel=10**15, output_bytes=10**12,
                    line_bytes=10**9, pids_limit=10**5, cpus=512.0, tmp_mb=10**6, output_events=10**9)
    assert guard.admit(replace(a_spec(echo), limits=greedy)).limits == tier
    assert not tier.network and tier.timeout_s == 5  # restricted, and the manifest's own narrowing
    modest = replace(tier, memory_mb=tier.memory_mb // 2, timeout_s=1.0)
    assert guard.admit(replace(a_spec(echo), limits=modest)).limits == modest  # narrower stays narrower
