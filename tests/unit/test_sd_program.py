"""The sd-diffusers program (``workloads/sd-diffusers/main.py``) without torch: its input checks, which run before
the model is touched, the program's answers in one-shot and worker mode when no model is mounted, and the tiny
model's helpers in ``make_tiny.py``. The real pipeline runs in its image: tests/integration/test_sd_diffusers.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from workload_files import load_module

from archipelag.catalog import load_catalog, lookup
from archipelag.catalog_signing import pin_images
from archipelag.protocol import Event, parse_line
from archipelag.runtimes.models import folder_sha256
from archipelag.settings import REPO_ROOT

WORKLOADS = REPO_ROOT / "workloads"
FOLDER = WORKLOADS / "sd-diffusers"
SDK = WORKLOADS / "container_sdk"
IMAGE = "archipelag/sd-diffusers:1"


@pytest.fixture(scope="module")
def program() -> Iterator[ModuleType]:
    sys.path.insert(0, str(SDK))  # main.py imports workload_io, as it does in its image
    try:
        yield load_module(FOLDER / "main.py", "sd_diffusers_main")
    finally:
        sys.path.remove(str(SDK))


@pytest.fixture(scope="module")
def make_tiny() -> ModuleType:
    return load_module(FOLDER / "make_tiny.py", "sd_make_tiny")


def run(stdin: str, worker: bool = False) -> tuple[list[Event], int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIPELAG_")}
    env.update(PYTHONPATH=str(SDK), PYTHONDONTWRITEBYTECODE="1", ARCHIPELAG_MODEL="/nonexistent")
    if worker:
        env["ARCHIPELAG_WORKER"] = "1"
    result = subprocess.run([sys.executable, str(FOLDER / "main.py")], input=stdin.encode(), capture_output=True,
                            env=env, timeout=60, check=False)
    return [parse_line(line) for line in result.stdout.splitlines()], result.returncode


# --- input -------------------------------------------------------------------------------------------------


def test_a_prompt_alone_gets_the_defaults_and_a_random_seed(program: ModuleType) -> None:
    first, second = program.parameters({"prompt": "a lighthouse"}), program.parameters({"prompt": "a lighthouse"})
    assert first["steps"] == 20 and first["guidance_scale"] == 7.5 and first["negative_prompt"] is None
    assert first["width"] is None and first["height"] is None  # the model's native size, known once loaded
    assert 0 <= first["seed"] <= 2**32 - 1 and first["seed"] != second["seed"]


def test_given_values_are_kept(program: ModuleType) -> None:
    params = program.parameters({"prompt": "p", "negative_prompt": "blur", "width": 64, "height": 128, "steps": 3,
                                 "guidance_scale": 0, "seed": 2**32 - 1})
    assert params == {"prompt": "p", "negative_prompt": "blur", "width": 64, "height": 128, "steps": 3,
                      "guidance_scale": 0.0, "seed": 2**32 - 1}


@pytest.mark.parametrize(("job", "says"), [
    ({}, "missing field 'prompt'"),
    ({"prompt": "  "}, "field 'prompt' is empty"),
    ({"prompt": 7}, "field 'prompt' must be a string"),
    ({"prompt": "x" * 2001}, "past the limit of 2000"),
    ({"prompt": "x", "negative_prompt": ["no"]}, "'negative_prompt' must be a string"),
    ({"prompt": "x", "width": 60}, "'width' must be from 64 to 1024, not 60"),
    ({"prompt": "x", "height": 1032}, "'height' must be from 64 to 1024"),
    ({"prompt": "x", "width": 100}, "multiple of 8 (the latent grid), not 100; try 96 or 104"),
    ({"prompt": "x", "width": 64.5}, "whole number"),
    ({"prompt": "x", "steps": 0}, "'steps' must be from 1 to 100"),
    ({"prompt": "x", "steps": 101}, "'steps' must be from 1 to 100"),
    ({"prompt": "x", "steps": True}, "whole number"),
    ({"prompt": "x", "guidance_scale": 20.5}, "'guidance_scale' must be from 0 to 20"),
    ({"prompt": "x", "guidance_scale": "high"}, "must be a number from 0 to 20"),
    ({"prompt": "x", "seed": -1}, "'seed' must be from 0 to 4294967295"),
    ({"prompt": "x", "seed": 2**32}, "'seed' must be from 0 to 4294967295"),
])
def test_bad_input_is_refused_with_what_to_send(program: ModuleType, job: dict[str, Any], says: str) -> None:
    with pytest.raises(program.InputError) as raised:
        program.parameters(job)
    assert says in str(raised.value)


@pytest.mark.parametrize(("sample_size", "scale", "side"), [(8, 8, 64), (64, 8, 512), (128, 8, 1024),
                                                             (4, 8, 64), (256, 8, 1024)])
def test_the_default_side_is_the_models_native_one_within_bounds(
        program: ModuleType, sample_size: int, scale: int, side: int) -> None:
    pipeline = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(sample_size=sample_size)),
                               vae_scale_factor=scale)
    assert program.native_side(pipeline) == side


# --- the program, with no model mounted ------------------------------------------------------------------


def test_one_shot_bad_input_is_an_error_event_before_any_model_is_loaded() -> None:
    events, status = run(json.dumps({"prompt": "x", "steps": 500}))
    assert [e["type"] for e in events] == ["error"] and "'steps' must be from 1 to 100" in events[0]["message"]
    assert status == 0


def test_one_shot_without_a_model_is_an_internal_error() -> None:
    events, status = run(json.dumps({"prompt": "x"}))
    assert [e["type"] for e in events] == ["error"] and "internal error" in events[0]["message"]
    assert status == 1


def test_a_worker_answers_each_request_and_ends_with_stdin() -> None:
    requests = [{"id": 1, "input": {"prompt": "x", "width": 7}}, {"id": 2, "input": {"prompt": ""}}]
    events, status = run("".join(json.dumps(r) + "\n" for r in requests), worker=True)
    assert [e["type"] for e in events] == ["error", "error"] and status == 0
    assert "'width' must be from 64" in events[0]["message"] and "'prompt' is empty" in events[1]["message"]


# --- make_tiny.py and the manifests --------------------------------------------------------------------------


def test_make_tiny_hashes_a_folder_as_the_host_does(make_tiny: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    (tmp_path / "model_index.json").write_text('{"a": 1}')
    (tmp_path / "z").write_bytes(b"\0" * 10)
    assert make_tiny.folder_sha256(tmp_path) == folder_sha256(tmp_path)


def test_the_tiny_tokenizer_vocabulary_covers_every_byte_and_merge(make_tiny: ModuleType) -> None:
    vocab, merges = make_tiny.clip_vocabulary()
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert all(char in vocab and char + "</w>" in vocab for char in make_tiny._bytes_to_unicode().values())
    assert all(a in vocab and b in vocab and a + b in vocab for a, b in merges)
    assert vocab["<|startoftext|>"] == 0 and "<|endoftext|>" in vocab


def test_sd_tiny_and_sdxl_share_one_image_which_the_catalog_pins_for_both() -> None:
    catalog = load_catalog(WORKLOADS)
    tiny, xl = lookup(catalog, "sd-diffusers"), lookup(catalog, "sdxl")
    assert tiny.image == xl.image == IMAGE and tiny.worker and xl.worker
    assert not (Path(xl.directory) / "Dockerfile").exists()  # built once, from sd-diffusers' folder
    pinned = {m.slug: m.image_id for m in pin_images([tiny, xl], {IMAGE: "sha256:" + "ab" * 32}.get)}
    assert pinned == {"sd-diffusers": "sha256:" + "ab" * 32, "sdxl": "sha256:" + "ab" * 32}
    assert tiny.model is not None and xl.model is not None
    assert (tiny.model.kind, xl.model.kind) == ("diffusers", "diffusers")
    assert xl.requires_gpu and xl.required_vram_mb >= 8192 and not tiny.requires_gpu


def test_the_tiny_model_hash_in_the_manifest_is_the_one_make_tiny_checks(make_tiny: ModuleType) -> None:
    with (FOLDER / "manifest.toml").open("rb") as fh:
        manifest = tomllib.load(fh)
    assert make_tiny.pinned_sha256() == manifest["model"]["sha256"]
    assert len(manifest["model"]["sha256"]) == 64 and manifest["model"]["file"] == "sd-tiny"


def test_torch_is_pinned_to_the_cpu_wheel_so_no_resolver_fetches_a_cuda_build() -> None:
    pins = [line for line in (FOLDER / "requirements.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert "torch==2.13.0+cpu" in pins and all("==" in line for line in pins)
