"""The compiled catalog: canonical bytes, round trip, image pinning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_catalog_builders import IMAGE_ID, a_workloads_dir

from archipelag.catalog import (
    Manifest,
    compile_catalog,
    load_catalog,
    parse_compiled_catalog,
    write_catalog,
)
from archipelag.catalog_signing import build_catalog, pin_images
from archipelag.errors import ConfigError
from archipelag.ids import WorkloadSlug
from archipelag.settings import REPO_ROOT


def test_the_same_manifests_compile_to_the_same_bytes_in_any_order(tmp_path: Path) -> None:
    manifests = list(load_catalog(a_workloads_dir(tmp_path)).values())
    first = compile_catalog(manifests, "2025-01-01T00:00:00Z")
    assert compile_catalog(list(reversed(manifests)), "2025-01-01T00:00:00Z") == first
    document = json.loads(first)
    assert list(document) == sorted(document) and list(document["workloads"]) == sorted(document["workloads"])


def test_catalog_records_artifact_identity_requirements_trust_price_and_limits(tmp_path: Path) -> None:
    document = json.loads(compile_catalog(load_catalog(a_workloads_dir(tmp_path)).values(), "t"))
    wasm, box = document["workloads"]["echo"], document["workloads"]["boxed"]
    assert len(wasm["sha256"]) == 64 and wasm["module"] == "module.wasm" and wasm["tier"] == "restricted"
    assert box["image"] == "archipelag/boxed:1" and box["image_id"] == IMAGE_ID
    assert (box["required_ram_mb"], box["required_vram_mb"], box["required_cores"], box["requires_gpu"]) == \
        (512, 2048, 2, True)
    assert box["trust_level"] == 1 and box["price_micro"] == 20_000 and box["limits"] == {"timeout_s": 30}
    assert len(document["version"]) == 64 and document["format"] == 1


def test_a_catalog_reads_back_as_the_manifests_it_was_built_from(tmp_path: Path) -> None:
    workloads = a_workloads_dir(tmp_path)
    source = load_catalog(workloads)
    compiled = parse_compiled_catalog(compile_catalog(source.values(), "t"), workloads)
    assert compiled.manifests == source
    assert compiled.manifests[WorkloadSlug("echo")].module_path().is_file()


def test_rebuilding_unchanged_manifests_leaves_the_file_and_its_timestamp_alone(tmp_path: Path) -> None:
    manifests = list(load_catalog(a_workloads_dir(tmp_path)).values())
    out = tmp_path / "state" / "catalog.json"
    assert write_catalog(out, manifests, "2025-01-01T00:00:00Z") is True
    before = out.read_bytes()
    assert write_catalog(out, manifests, "2030-01-01T00:00:00Z") is False
    assert out.read_bytes() == before


def test_a_changed_manifest_changes_the_version_and_rewrites_the_file(tmp_path: Path) -> None:
    workloads = a_workloads_dir(tmp_path)
    out = tmp_path / "catalog.json"
    write_catalog(out, load_catalog(workloads).values(), "t1")
    version = json.loads(out.read_bytes())["version"]
    manifest = workloads / "echo" / "manifest.toml"
    manifest.write_text(manifest.read_text().replace("price = 0.001", "price = 0.002"))
    assert write_catalog(out, load_catalog(workloads).values(), "t2") is True
    assert json.loads(out.read_bytes())["version"] != version


def test_a_hand_edited_catalog_file_is_rewritten_by_the_next_build(tmp_path: Path) -> None:
    manifests = list(load_catalog(a_workloads_dir(tmp_path)).values())
    out = tmp_path / "catalog.json"
    write_catalog(out, manifests, "t")
    out.write_bytes(out.read_bytes().replace(b'"trust_level": 0', b'"trust_level": 3'))
    assert write_catalog(out, manifests) is True
    assert b'"trust_level": 3' not in out.read_bytes()


def test_a_container_workload_needs_its_image_id_pinned(tmp_path: Path) -> None:
    workloads = a_workloads_dir(tmp_path, pin_image=False)
    manifests = list(load_catalog(workloads).values())
    with pytest.raises(ConfigError, match="image_id"):
        compile_catalog(manifests, "t")
    with pytest.raises(ConfigError, match="not built on this machine"):
        pin_images(manifests, lambda image: None)
    assert [m.slug for m in pin_images(manifests, lambda image: None, skip_unbuilt=True)] == ["echo"]
    pinned = {m.slug: m for m in pin_images(manifests, {"archipelag/boxed:1": IMAGE_ID}.get)}
    assert pinned[WorkloadSlug("boxed")].image_id == IMAGE_ID


def test_build_catalog_resolves_unpinned_images(tmp_path: Path) -> None:
    out = tmp_path / "catalog.json"
    build_catalog(a_workloads_dir(tmp_path, pin_image=False), out, resolve=lambda image: IMAGE_ID)
    assert json.loads(out.read_bytes())["workloads"]["boxed"]["image_id"] == IMAGE_ID


def test_the_repository_workloads_compile(tmp_path: Path) -> None:
    workloads = tmp_path / "workloads"
    shutil.copytree(REPO_ROOT / "workloads", workloads, ignore=shutil.ignore_patterns("vendor", "system-libs"))
    out = tmp_path / "catalog.json"
    build_catalog(workloads, out, resolve=lambda image: f"sha256:{'ab' * 32}")  # as if every image were built
    compiled = parse_compiled_catalog(out.read_bytes(), workloads)
    assert "wasm-hash" in compiled.manifests and "pdf-extract" in compiled.manifests
    assert compiled.manifests["pdf-extract"].image_id == f"sha256:{'ab' * 32}"
    assert all(isinstance(m, Manifest) and m.sha256 for m in compiled.manifests.values() if m.runtime == "wasm")


def test_a_batched_worker_keeps_its_parallelism_through_the_signed_catalog(tmp_path: Path) -> None:
    workloads = tmp_path / "workloads"
    shutil.copytree(REPO_ROOT / "workloads", workloads, ignore=shutil.ignore_patterns("vendor", "system-libs"))
    out = tmp_path / "catalog.json"
    build_catalog(workloads, out, resolve=lambda image: f"sha256:{'ab' * 32}")
    entries = json.loads(out.read_bytes())["workloads"]
    assert entries["llm-chat"]["parallel"] == 8 and entries["sd-diffusers"]["parallel"] == 1
    compiled = parse_compiled_catalog(out.read_bytes(), workloads)
    assert compiled.manifests[WorkloadSlug("llm-chat")].parallel == 8
    del entries["sd-diffusers"]["parallel"]  # a catalog compiled before the field existed
    older = json.dumps({**json.loads(out.read_bytes()), "workloads": entries}).encode()
    assert parse_compiled_catalog(older, workloads).manifests[WorkloadSlug("sd-diffusers")].parallel == 1


@pytest.mark.parametrize(("fields", "says"), [
    ("worker = true\nparallel = 0", "parallel must be a whole number ≥ 1"),
    ('worker = true\nparallel = "8"', "parallel must be a whole number ≥ 1"),
    ("parallel = 4", "needs worker = true"),
])
def test_parallel_is_a_count_for_a_worker_only(tmp_path: Path, fields: str, says: str) -> None:
    folder = tmp_path / "w" / "x"
    folder.mkdir(parents=True)
    (folder / "manifest.toml").write_text(f'slug = "x"\nname = "x"\nruntime = "container"\n{fields}\n')
    with pytest.raises(ConfigError, match=says):
        load_catalog(tmp_path / "w")


def test_a_malformed_catalog_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a valid compiled catalog"):
        parse_compiled_catalog(b'{"format": 1, "workloads": {"x": {}}}', tmp_path)
    with pytest.raises(ConfigError, match="format"):
        parse_compiled_catalog(b'{"format": 99}', tmp_path)


# --- prices: per job, and per completion token for LLM workloads (DESIGN §7) ---------------------------


def test_a_per_token_workload_reserves_its_max_tokens_and_charges_what_it_made() -> None:
    from archipelag.catalog import Manifest, max_price_micro, price_micro

    chat = Manifest(slug=WorkloadSlug("llm-chat"), name="chat", description="", runtime="container", trust_level=1,
                    price_micro=2_000, token_price_micro=20_000)  # 0.002 per chat + 0.02 per 1k tokens
    assert max_price_micro(chat, {"max_tokens": 100}) == 2_000 + 2_000
    assert max_price_micro(chat, {}) == 2_000 + 256 * 20  # llm-chat's default max_tokens
    assert price_micro(chat, {"prompt_tokens": 30, "completion_tokens": 7}) == 2_000 + 140
    assert price_micro(chat, {}) == 2_000
    flat = Manifest(slug=WorkloadSlug("t"), name="t", description="", runtime="wasm", trust_level=0,
                    price_micro=2_000)
    assert max_price_micro(flat, {"max_tokens": 100}) == price_micro(flat, {"completion_tokens": 9}) == 2_000
