"""The WASM workloads in ``workloads/``, built from source and run by the real WASM runtime."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from archipelag.catalog import Manifest, load_catalog, lookup
from archipelag.ids import JobId
from archipelag.protocol import Event
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.wasm import WasmRuntime
from archipelag.settings import REPO_ROOT, Settings

WORKLOADS = REPO_ROOT / "workloads"
SLUGS = ["wasm-base64", "wasm-echo-stream", "wasm-hash", "wasm-json"]


def _modules_are_built(catalog: dict[Any, Manifest]) -> bool:
    for slug in SLUGS:
        path = lookup(catalog, slug).module_path()
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != lookup(catalog, slug).sha256:
            return False
    return True


@pytest.fixture(scope="module")
def catalog() -> dict[Any, Manifest]:
    """The catalog, with its WASM modules built from source if they are missing or stale."""
    current = load_catalog(WORKLOADS)
    if not _modules_are_built(current):
        spec = importlib.util.spec_from_file_location("build_wasm", WORKLOADS / "build_wasm.py")
        assert spec is not None and spec.loader is not None
        build = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(build)
        assert build.main(["--check"]) == 0, "a manifest's sha256 does not match its freshly built module"
    return current


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WasmRuntime]:
    rt = WasmRuntime(cache_dir=tmp_path_factory.mktemp("wasm-cache"))
    yield rt
    rt.close()


def run(runtime: WasmRuntime, catalog: dict[Any, Manifest], slug: str, **input: Any) -> list[Event]:
    workload = lookup(catalog, slug)
    limits = workload.limits_under(Settings().limits_for(workload.tier))
    spec = JobSpec(job_id=JobId("job-test"), workload=workload, input=input, limits=limits)
    return list(runtime.run(spec, CancelToken()))


def test_every_wasm_workload_is_in_the_catalog(catalog: dict[Any, Manifest]) -> None:
    wasm = sorted(slug for slug, manifest in catalog.items() if manifest.runtime == "wasm")
    assert wasm == SLUGS


def test_wasm_hash_returns_the_sha256_and_length(runtime: WasmRuntime, catalog: dict[Any, Manifest]) -> None:
    text = "héllo wörld"
    events = run(runtime, catalog, "wasm-hash", text=text)
    assert events[0] == {"type": "status", "message": "hashing"}
    assert events[-1] == {"type": "done", "output": {"sha256": hashlib.sha256(text.encode()).hexdigest(),
                                                     "length": len(text.encode())}}


@pytest.mark.parametrize(
    ("input", "message"),
    [({}, 'input field "text" is required'), ({"text": 5}, 'input field "text" must be a string')],
)
def test_wasm_hash_reports_bad_input_with_an_error_event(
    runtime: WasmRuntime, catalog: dict[Any, Manifest], input: dict[str, Any], message: str
) -> None:
    assert run(runtime, catalog, "wasm-hash", **input) == [{"type": "error", "message": message}]


@pytest.mark.parametrize("text", ["", "a", "hello, world", "ünïcödé ✓"])
def test_wasm_base64_round_trips(runtime: WasmRuntime, catalog: dict[Any, Manifest], text: str) -> None:
    encoded = run(runtime, catalog, "wasm-base64", text=text, mode="encode")
    assert encoded == [{"type": "done", "output": {"text": base64.b64encode(text.encode()).decode()}}]
    decoded = run(runtime, catalog, "wasm-base64", text=encoded[0]["output"]["text"], mode="decode")
    assert decoded == [{"type": "done", "output": {"text": text}}]


def test_wasm_base64_encodes_when_no_mode_is_given(runtime: WasmRuntime, catalog: dict[Any, Manifest]) -> None:
    assert run(runtime, catalog, "wasm-base64", text="hi") == [{"type": "done", "output": {"text": "aGk="}}]


@pytest.mark.parametrize(
    ("input", "message"),
    [
        ({"text": "not base64!", "mode": "decode"}, "text is not valid base64"),
        ({"text": base64.b64encode(b"\xff\xfe").decode(), "mode": "decode"}, "not UTF-8 text"),
        ({"text": "x", "mode": "rot13"}, 'must be "encode" or "decode"'),
        ({"mode": "encode"}, 'input field "text" is required'),
    ],
)
def test_wasm_base64_reports_bad_input_with_an_error_event(
    runtime: WasmRuntime, catalog: dict[Any, Manifest], input: dict[str, Any], message: str
) -> None:
    [event] = run(runtime, catalog, "wasm-base64", **input)
    assert event["type"] == "error" and message in event["message"]


DOCUMENT = {"a": {"b": [10, {"c": "deep"}], "n": None, "f": 1.5, "t": True}, "list": []}


@pytest.mark.parametrize(
    ("path", "value"),
    [("a.b.1.c", "deep"), ("a.b.0", 10), ("a.n", None), ("a.f", 1.5), ("a.t", True), ("list", []),
     ("", DOCUMENT), ("a.b", [10, {"c": "deep"}])],
)
def test_wasm_json_returns_the_value_at_a_path(
    runtime: WasmRuntime, catalog: dict[Any, Manifest], path: str, value: Any
) -> None:
    assert run(runtime, catalog, "wasm-json", document=DOCUMENT, path=path) == [{"type": "done", "output": value}]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("a.x", 'path "a.x": no key "x" in the object'),
        ("a.b.9", 'path "a.b.9": index 9 is past the end of an array of 2'),
        ("a.b.first", 'path "a.b.first": "first" is not an array index'),
        ("a.f.g", 'path "a.f.g": cannot step into a number'),
    ],
)
def test_wasm_json_reports_a_bad_path_with_an_error_event(
    runtime: WasmRuntime, catalog: dict[Any, Manifest], path: str, message: str
) -> None:
    assert run(runtime, catalog, "wasm-json", document=DOCUMENT, path=path) == [
        {"type": "error", "message": message}
    ]


def test_wasm_json_requires_a_document(runtime: WasmRuntime, catalog: dict[Any, Manifest]) -> None:
    assert run(runtime, catalog, "wasm-json", path="a") == [
        {"type": "error", "message": 'input field "document" is required'}
    ]


def test_wasm_echo_stream_emits_one_token_per_word(runtime: WasmRuntime, catalog: dict[Any, Manifest]) -> None:
    events = run(runtime, catalog, "wasm-echo-stream", text="the  quick\tfox", repeat=3)
    tokens = [event["content"] for event in events if event["type"] == "token"]
    assert len(tokens) == 9
    assert "".join(tokens) == " ".join(["the quick fox"] * 3)
    assert events[-1] == {"type": "done", "output": {"tokens": 9}}


@pytest.mark.parametrize(("repeat", "message"), [(-1, "between 0 and"), ("2", "must be an integer")])
def test_wasm_echo_stream_reports_a_bad_repeat(
    runtime: WasmRuntime, catalog: dict[Any, Manifest], repeat: Any, message: str
) -> None:
    [event] = run(runtime, catalog, "wasm-echo-stream", text="x", repeat=repeat)
    assert event["type"] == "error" and message in event["message"]


def test_a_long_stream_is_delivered_whole(runtime: WasmRuntime, catalog: dict[Any, Manifest]) -> None:
    events = run(runtime, catalog, "wasm-echo-stream", text="w", repeat=20_000)
    assert len(events) == 20_001
    assert events[-1] == {"type": "done", "output": {"tokens": 20_000}}


def test_the_committed_manifests_pin_what_the_sources_build(catalog: dict[Any, Manifest]) -> None:
    for slug in SLUGS:
        manifest = lookup(catalog, slug)
        assert hashlib.sha256(manifest.module_path().read_bytes()).hexdigest() == manifest.sha256
        assert Path(manifest.directory, "main.zig").is_file()
