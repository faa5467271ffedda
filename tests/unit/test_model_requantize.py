"""Weights a host derives: a Q4_1 GGUF rewritten as Q8_0 (runtimes/requantize.py), found, derived once and
checked by ``ModelStore`` against the catalog's hashes, and the catalog fields that ask for it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, LlamaFileType, quants
from tiny_gguf import write_tiny_llama

from archipelag.catalog import ModelSpec
from archipelag.errors import ConfigError, WorkloadRefused
from archipelag.runtimes.models import ModelStore, file_sha256
from archipelag.runtimes.requantize import requantize

Q4_1, Q8_0 = GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("src") / "tiny.Q4_1.gguf", quantized=Q4_1)


@pytest.fixture(scope="module")
def derived(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("out") / "tiny.Q8_0.gguf"
    requantize(source, target, "q8_0")
    return target


def _weights(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    return {t.name: (t.tensor_type.name, quants.dequantize(np.asarray(t.data), t.tensor_type))
            for t in GGUFReader(path).tensors}


def test_q4_1_matrices_become_q8_0_holding_the_same_weights(source: Path, derived: Path) -> None:
    before, after = _weights(source), _weights(derived)
    assert after.keys() == before.keys()
    for name, (kind, values) in before.items():
        new_kind, new_values = after[name]
        assert new_kind == ("Q8_0" if kind == "Q4_1" else kind)
        assert new_values.shape == values.shape
        # a Q8_0 step is its block's largest weight / 127 (kept as a float16): each weight within one
        bound = np.abs(values).max() / 127
        assert np.abs(new_values - values).max() <= bound, name


def test_metadata_is_copied_and_the_file_type_says_q8_0(source: Path, derived: Path) -> None:
    old, new = GGUFReader(source).fields, GGUFReader(derived).fields
    for key in ("general.architecture", "tokenizer.ggml.tokens", "tokenizer.chat_template", "llama.block_count"):
        assert new[key].contents() == old[key].contents(), key
    assert new["general.file_type"].contents() == LlamaFileType.MOSTLY_Q8_0


def test_the_same_source_gives_the_same_bytes(source: Path, derived: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.gguf"
    requantize(source, again, "q8_0")
    assert again.read_bytes() == derived.read_bytes()
    assert not list(tmp_path.glob(".*partial"))


def test_an_unknown_quantization_is_refused(source: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="q2_k"):
        requantize(source, tmp_path / "x.gguf", "q2_k")


# --- ModelStore ---------------------------------------------------------------------------------


def _spec(source: Path, derived: Path) -> ModelSpec:
    return ModelSpec(id="tiny", kind="gguf", file="tiny.Q8_0.gguf", sha256=file_sha256(derived),
                     quantize="q8_0", source_file=source.name, source_sha256=file_sha256(source))


def test_a_host_with_the_source_derives_the_model_once(source: Path, derived: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    (tmp_path / source.name).write_bytes(source.read_bytes())
    spec = _spec(source, derived)
    assert store.locate(spec) is None and store.has(spec)
    path = store.verified(spec)
    assert path == (tmp_path / "tiny.Q8_0.gguf").resolve() and path.read_bytes() == derived.read_bytes()
    stamp = path.stat().st_mtime_ns
    assert store.verified(spec) == path and path.stat().st_mtime_ns == stamp  # not written again


def test_a_source_that_is_not_the_catalogs_is_refused_and_nothing_written(source: Path, derived: Path,
                                                                           tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    (tmp_path / source.name).write_bytes(source.read_bytes() + b"tampered")
    with pytest.raises(WorkloadRefused, match="catalog pins") as refused:
        store.verified(_spec(source, derived))
    assert refused.value.details["reason"] == "model_mismatch"
    assert not (tmp_path / "tiny.Q8_0.gguf").exists()


def test_a_derived_file_that_is_not_the_pinned_one_is_refused(source: Path, derived: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    (tmp_path / source.name).write_bytes(source.read_bytes())
    with pytest.raises(WorkloadRefused, match="catalog pins"):
        store.verified(replace(_spec(source, derived), sha256="0" * 64))


def test_without_the_source_the_model_is_missing(source: Path, derived: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    spec = _spec(source, derived)
    assert not store.has(spec)
    with pytest.raises(WorkloadRefused, match="not on this host"):
        store.verified(spec)


# --- the catalog's fields ------------------------------------------------------------------------

BASE = {"id": "m", "kind": "gguf", "file": "m.Q8_0.gguf", "sha256": "A" * 64}


def test_a_manifest_asks_for_a_derived_model() -> None:
    spec = ModelSpec.parse({**BASE, "quantize": "q8_0", "source_file": "m.Q4_1.gguf", "source_sha256": "B" * 64},
                           "m")
    assert (spec.quantize, spec.source_file, spec.source_sha256) == ("q8_0", "m.Q4_1.gguf", "b" * 64)


@pytest.mark.parametrize(("extra", "says"), [
    ({"quantize": "q2_k", "source_file": "s.gguf", "source_sha256": "b" * 64}, "cannot be requantized"),
    ({"quantize": "q8_0"}, "source_file and source_sha256"),
    ({"quantize": "q8_0", "source_file": "../s.gguf", "source_sha256": "b" * 64}, "plain name"),
    ({"kind": "diffusers", "quantize": "q8_0", "source_file": "s", "source_sha256": "b" * 64}, "diffusers"),
])
def test_a_wrong_derivation_is_a_config_error(extra: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        ModelSpec.parse({**BASE, **extra}, "m")


def test_llama_cpp_loads_the_derived_file_and_decodes_with_it(derived: Path) -> None:
    from llama_cpp import Llama

    llm = Llama(model_path=str(derived), n_ctx=64, n_threads=1, verbose=False)
    tokens = llm.tokenize(b"hello the")
    llm.eval(tokens)
    assert llm.n_tokens == len(tokens)
