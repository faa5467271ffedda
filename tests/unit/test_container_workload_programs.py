"""The container workloads' programs (``workloads/<slug>/main.py``), run directly with this interpreter: one JSON
object on stdin, protocol events on stdout. No Docker: tests/integration/test_container_workloads.py runs the same
programs in their images on the real engine."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from archipelag.catalog import load_catalog
from archipelag.protocol import Event, is_final, parse_line
from archipelag.settings import REPO_ROOT

WORKLOADS = REPO_ROOT / "workloads"
INPUTS = REPO_ROOT / "tests" / "fixtures" / "container-inputs"
CONTAINER_SLUGS = sorted(m.slug for m in load_catalog(WORKLOADS).values()  # entries with a program of their own
                         if m.runtime == "container" and (Path(m.directory) / "main.py").is_file())
ENV = {**os.environ, "PYTHONPATH": str(WORKLOADS / "container_sdk"), "PYTHONDONTWRITEBYTECODE": "1"}


def run(slug: str, job: Any = None, raw: bytes | None = None) -> tuple[list[Event], int]:
    """The program's events (each checked against the protocol) and its exit status."""
    stdin = raw if raw is not None else json.dumps(job).encode()
    result = subprocess.run([sys.executable, str(WORKLOADS / slug / "main.py")], input=stdin, capture_output=True,
                            env=ENV, timeout=60, check=False)
    assert b"Traceback" not in result.stdout
    events = [parse_line(line) for line in result.stdout.splitlines()]
    assert events, f"{slug} wrote no events; stderr: {result.stderr[-500:]!r}"
    assert is_final(events[-1]) and not any(is_final(e) for e in events[:-1])
    return events, result.returncode


def output_of(slug: str, **job: Any) -> tuple[Any, list[Event]]:
    events, status = run(slug, job)
    assert events[-1]["type"] == "done", events[-1]
    assert status == 0 and events[0]["type"] == "status"
    return events[-1].get("output"), events


def error_of(slug: str, job: Any = None, raw: bytes | None = None) -> str:
    events, status = run(slug, job, raw)
    assert events[-1]["type"] == "error", events[-1]
    assert status == 0
    return str(events[-1]["message"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def a_png(width: int, height: int, mode: str = "RGBA") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), 128).save(out, "PNG")
    return out.getvalue()


def a_noisy_png(size: int) -> bytes:
    out = io.BytesIO()
    Image.effect_noise((size, size), 64).save(out, "PNG")
    return out.getvalue()


# --- every container workload --------------------------------------------------------------------------


@pytest.mark.parametrize("slug", CONTAINER_SLUGS)
def test_a_container_workload_builds_from_the_base_and_runs_as_non_root(slug: str) -> None:
    folder = WORKLOADS / slug
    manifest = tomllib.loads((folder / "manifest.toml").read_text())
    dockerfile = (folder / "Dockerfile").read_text()
    assert manifest["image"] == f"archipelag/{slug}:1" and manifest["trust_level"] in (0, 1)
    assert "ARG BASE" in dockerfile and "FROM ${BASE}" in dockerfile
    assert dockerfile.strip().splitlines()[-2] == "USER 10001:10001"
    # every workload names its required inputs, but chat, which takes `messages` or a `prompt`
    assert (folder / "main.py").is_file() and (manifest.get("input", {}).get("required") or slug == "llm-chat")


@pytest.mark.parametrize("slug", CONTAINER_SLUGS)
def test_input_that_is_not_a_json_object_is_an_error_event(slug: str) -> None:
    assert "not valid JSON" in error_of(slug, raw=b"{nope")
    assert "must be a JSON object" in error_of(slug, [1, 2])


@pytest.mark.parametrize("slug", CONTAINER_SLUGS)
def test_a_missing_required_field_is_named_in_the_error(slug: str) -> None:
    required = tomllib.loads((WORKLOADS / slug / "manifest.toml").read_text()).get("input", {}).get(
        "required", ["prompt"])  # llm-chat: a prompt, when no messages
    assert f"missing field {required[0]!r}" in error_of(slug, {})


@pytest.mark.parametrize("slug", CONTAINER_SLUGS)
def test_an_input_past_the_size_cap_is_refused_before_it_is_parsed(slug: str) -> None:
    assert "larger than this workload's limit" in error_of(slug, raw=b" " * (25 * 1024 * 1024) + b"{}")


# --- pdf-extract -----------------------------------------------------------------------------------------


def test_pdf_extract_returns_text_pages_and_metadata() -> None:
    output, events = output_of("pdf-extract", pdf_base64=b64((INPUTS / "hello.pdf").read_bytes()))
    assert output["text"] == "Hello from page one\n\nSecond page says goodbye"
    assert output["pages"] == 2 and output["pages_read"] == 2 and not output["truncated"]
    assert output["metadata"]["title"] == "Quarterly report" and output["metadata"]["author"] == "Ada Lovelace"
    assert output["metadata"]["created"] == "2024-01-02T03:04:05+00:00"
    assert [(e["step"], e["total"]) for e in events if e["type"] == "progress"] == [(1, 2), (2, 2)]


def test_pdf_extract_reads_only_max_pages() -> None:
    output, _ = output_of("pdf-extract", pdf_base64=b64((INPUTS / "hello.pdf").read_bytes()), max_pages=1)
    assert output["text"] == "Hello from page one" and output["pages"] == 2 and output["truncated"]


def test_pdf_extract_opens_an_encrypted_pdf_only_with_its_password() -> None:
    encrypted = b64((INPUTS / "encrypted.pdf").read_bytes())
    assert "encrypted; send its password" in error_of("pdf-extract", {"pdf_base64": encrypted})
    assert "does not open it" in error_of("pdf-extract", {"pdf_base64": encrypted, "password": "wrong"})
    output, _ = output_of("pdf-extract", pdf_base64=encrypted, password="secret")
    assert "Second page says goodbye" in output["text"] and output["metadata"]["encrypted"]


@pytest.mark.parametrize(("data", "says"), [
    (b64(b"GIF89a not a pdf"), "does not hold a PDF"),
    (b64(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage"), "damaged"),
    ("%%% not base64 %%%", "not valid base64"),
])
def test_pdf_extract_says_why_it_cannot_read_an_input(data: str, says: str) -> None:
    assert says in error_of("pdf-extract", {"pdf_base64": data})


# --- image-resize ----------------------------------------------------------------------------------------


def decoded(event: Event) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(event["data"])))
    assert image.size == (event["width"], event["height"])
    return image


@pytest.mark.parametrize(("job", "size"), [
    ({"width": 100}, (100, 50)),
    ({"height": 25}, (50, 25)),
    ({"width": 100, "height": 100}, (100, 50)),
    ({"width": 100, "height": 100, "fit": "exact"}, (100, 100)),
    ({}, (400, 200)),
])
def test_image_resize_keeps_the_aspect_ratio_unless_told_not_to(job: dict[str, Any], size: tuple[int, int]) -> None:
    output, events = output_of("image-resize", image_base64=b64(a_png(400, 200)), format="png", **job)
    image_event = next(e for e in events if e["type"] == "image")
    assert decoded(image_event).format == "PNG" and (image_event["width"], image_event["height"]) == size
    assert output is None  # the job's output is the image event (DESIGN §8's image shape)


@pytest.mark.parametrize(("fmt", "pil_format"), [("jpeg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_image_resize_converts_to_each_format(fmt: str, pil_format: str) -> None:
    _, events = output_of("image-resize", image_base64=b64(a_png(64, 48)), format=fmt.upper(), width=32)
    image_event = next(e for e in events if e["type"] == "image")
    assert image_event["format"] == fmt and decoded(image_event).format == pil_format


def test_image_resize_refuses_too_many_pixels_before_decoding() -> None:
    message = error_of("image-resize", {"image_base64": b64(a_png(5000, 4000, "1")), "format": "png"})
    assert "the limit of 16000000 pixels" in message


@pytest.mark.parametrize(("job", "says"), [
    ({"image_base64": b64(b"just some text"), "format": "png"}, "not an image in a supported format"),
    ({"image_base64": b64(a_noisy_png(64)[:2000]), "format": "png"}, "truncated or damaged"),
    ({"image_base64": b64(a_png(10, 10)), "format": "tiff"}, "must be one of png, jpeg, webp"),
    ({"image_base64": b64(a_png(10, 10))}, "missing field 'format'"),
    ({"image_base64": b64(a_png(10, 10)), "format": "png", "width": 0}, "must be from 1 to 4096"),
    ({"image_base64": b64(a_png(10, 10)), "format": "png", "width": 2.5}, "whole number"),
    ({"image_base64": b64(a_png(10, 1)), "format": "png", "height": 1000}, "give both width and height"),
])
def test_image_resize_says_why_it_cannot_use_an_input(job: dict[str, Any], says: str) -> None:
    assert says in error_of("image-resize", job)


# --- csv-stats -------------------------------------------------------------------------------------------

CSV = "name,age,city\nann,31,Oslo\nbob,,Rome\ncid,40,Oslo\ndee,NA,Oslo\n"


def test_csv_stats_summarizes_numeric_and_text_columns() -> None:
    output, events = output_of("csv-stats", csv=CSV)
    name, age, city = output["columns"]
    assert output["rows"] == 4 and output["delimiter"] == ","
    assert age == {"name": "age", "count": 2, "missing": 2, "type": "numeric", "min": 31, "max": 40,
                   "mean": 35.5, "median": 35.5, "stdev": pytest.approx(6.3639610)}
    assert city["type"] == "text" and city["unique"] == 2 and city["top"][0] == {"value": "Oslo", "count": 3}
    assert name["unique"] == 4 and [e["step"] for e in events if e["type"] == "progress"] == [1, 2, 3]


def test_csv_stats_sniffs_the_delimiter_or_takes_the_given_one() -> None:
    sniffed, _ = output_of("csv-stats", csv=CSV.replace(",", ";"))
    tabbed, _ = output_of("csv-stats", csv=CSV.replace(",", "\t"), delimiter="\\t")
    assert sniffed["delimiter"] == ";" and tabbed["delimiter"] == "\t"
    assert sniffed["columns"][1]["mean"] == tabbed["columns"][1]["mean"] == 35.5


def test_csv_stats_without_a_header_names_the_columns() -> None:
    output, _ = output_of("csv-stats", csv="1,x\n2,y\n", header=False)
    assert [c["name"] for c in output["columns"]] == ["column_1", "column_2"]
    assert output["rows"] == 2 and output["columns"][0]["stdev"] == pytest.approx(0.7071068)


@pytest.mark.parametrize(("job", "says"), [
    ({"csv": "a,b\n1,2,3\n"}, "row 2 has 3 fields but the header has 2"),
    ({"csv": "a,b\n1,2\n", "delimiter": ";;"}, "must be one character"),
    ({"csv": "   "}, "field 'csv' is empty"),
    ({"csv": 42}, "must be a string"),
    ({"csv": 'a\n"unterminated\n'}, "malformed"),
])
def test_csv_stats_says_why_it_cannot_use_an_input(job: dict[str, Any], says: str) -> None:
    assert says in error_of("csv-stats", job)


# --- markdown-to-html, text-stats, json-format, qr-encode ------------------------------------------------


def test_markdown_to_html_renders_commonmark_with_tables_and_escapes_raw_html() -> None:
    text = "# Title\n\n*hi* <script>alert(1)</script> [x](javascript:alert(1))\n\n|a|b|\n|-|-|\n|1|2|\n"
    output, _ = output_of("markdown-to-html", markdown=text)
    html = output["html"]
    assert html.startswith("<h1>Title</h1>") and "<em>hi</em>" in html and "<td>1</td>" in html
    assert "&lt;script&gt;" in html and "<script>" not in html and 'href="javascript' not in html
    allowed, _ = output_of("markdown-to-html", markdown="<b>x</b>", allow_html=True)
    assert allowed["html"].strip() == "<p><b>x</b></p>"


def test_text_stats_counts_words_sentences_and_reading_time() -> None:
    text = "The cat sat. The cat ran!\n\nA dog barked at the cat"
    output, _ = output_of("text-stats", text=text, words_per_minute=60)
    assert output["words"] == 12 and output["sentences"] == 3 and output["paragraphs"] == 2
    assert output["characters"] == len(text) and output["reading_time_s"] == 12.0
    assert output["top_words"][0] == {"word": "cat", "count": 3}
    assert "the" not in [w["word"] for w in output["top_words"]]


def test_text_stats_of_an_empty_text_is_all_zeros_and_a_bad_field_is_an_error() -> None:
    output, _ = output_of("text-stats", text="")
    assert output["words"] == output["sentences"] == output["reading_time_minutes"] == 0
    assert "must be from 1 to 100" in error_of("text-stats", {"text": "x", "top": 0})


def test_json_format_pretty_prints_minifies_and_locates_errors() -> None:
    pretty, _ = output_of("json-format", json='{"b": 1, "a": [1, "é"]}', sort_keys=True)
    minified, _ = output_of("json-format", json='{ "a" : [ 1 , 2 ] }', indent=0)
    assert pretty["formatted"] == '{\n  "a": [\n    1,\n    "é"\n  ],\n  "b": 1\n}' and pretty["type"] == "object"
    assert minified["formatted"] == '{"a":[1,2]}'
    assert "at line 2, column 1" in error_of("json-format", {"json": '{"a": 1,\n}'})
    assert "NaN is not valid JSON" in error_of("json-format", {"json": "[NaN]"})


def test_qr_encode_draws_a_png_or_an_svg() -> None:
    output, events = output_of("qr-encode", text="https://archipelag.io", scale=4)
    image_event = next(e for e in events if e["type"] == "image")
    assert decoded(image_event).format == "PNG" and output["width"] == image_event["width"]
    _, events = output_of("qr-encode", text="hi", format="svg")
    assert base64.b64decode(next(e for e in events if e["type"] == "image")["data"]).startswith(b"<?xml")
    assert "at most 2000" in error_of("qr-encode", {"text": "x" * 2001})
