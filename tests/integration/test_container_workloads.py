"""The utility container workloads in ``workloads/``, built offline into images on the real engine and run by the real
Docker runtime (read-only root, no capabilities, no network, user 10001, the restricted tier's seccomp profile)."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import docker.errors
import pytest
from docker_engine import DockerEnv, a_job_id, docker_env  # noqa: F401 - docker_env is a fixture
from PIL import Image
from workload_files import build_script

from archipelag.catalog import Manifest
from archipelag.protocol import Event
from archipelag.runtimes import images
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.container_spec import WORKLOAD_USER
from archipelag.runtimes.docker import DockerRuntime, HostFacts
from archipelag.runtimes.orphans import OWNER_LABEL, owner_tag
from archipelag.settings import REPO_ROOT, Settings

pytestmark = [pytest.mark.docker, pytest.mark.slow]

WORKLOADS = REPO_ROOT / "workloads"
INPUTS = REPO_ROOT / "tests" / "fixtures" / "container-inputs"
SLUGS = ["csv-stats", "image-resize", "json-format", "markdown-to-html", "pdf-extract", "qr-encode", "text-stats"]


@pytest.fixture(scope="module")
def builder() -> ModuleType:
    return build_script()


@pytest.fixture(scope="module")
def workloads(docker_env: DockerEnv, builder: ModuleType) -> dict[str, Manifest]:  # noqa: F811
    """Every container workload, staged and built as `make` does, with its image ID pinned."""
    built = {}
    for manifest in builder.container_workloads():
        if manifest.model is not None:
            continue  # model workloads have tests of their own (test_llm_worker.py, test_sd_diffusers.py)
        builder.stage(Path(manifest.directory), builder.DEFAULT_WHEELS, offline=False)
        built[manifest.slug] = replace(manifest, image_id=images.build_workload(docker_env.client, manifest))
    return built


@pytest.fixture(scope="module")
def runtime(docker_env: DockerEnv) -> Iterator[DockerRuntime]:  # noqa: F811
    yield DockerRuntime(docker_env.client, HostFacts.detect())
    # the client belongs to docker_env, which closes it


def run(runtime: DockerRuntime, workload: Manifest, job: dict[str, Any]) -> list[Event]:
    limits = workload.limits_under(Settings().limits_for(workload.tier))
    spec = JobSpec(job_id=a_job_id(workload.slug), workload=workload, input=job, limits=limits)
    return list(runtime.run(spec, CancelToken()))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def a_png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (width, height), (200, 30, 30, 128)).save(out, "PNG")
    return out.getvalue()


def the_image(events: list[Event]) -> Image.Image:
    event = next(e for e in events if e["type"] == "image")
    image = Image.open(io.BytesIO(base64.b64decode(event["data"])))
    assert image.size == (event["width"], event["height"])
    return image


# slug → (input, check of the events); each runs in its image through the Docker runtime
HAPPY: dict[str, tuple[dict[str, Any], Callable[[list[Event]], bool]]] = {
    "csv-stats": ({"csv": "a,b\n1,x\n3,y\n"},
                  lambda ev: ev[-1]["output"]["columns"][0]["mean"] == 2 and ev[-1]["output"]["rows"] == 2),
    "image-resize": ({"image_base64": b64(a_png(200, 100)), "width": 50, "format": "webp"},
                     lambda ev: the_image(ev).format == "WEBP" and the_image(ev).size == (50, 25)),
    "json-format": ({"json": '{"a":[1,2]}', "indent": 0}, lambda ev: ev[-1]["output"]["formatted"] == '{"a":[1,2]}'),
    "markdown-to-html": ({"markdown": "*hi*"}, lambda ev: ev[-1]["output"]["html"] == "<p><em>hi</em></p>\n"),
    "pdf-extract": ({"pdf_base64": b64((INPUTS / "hello.pdf").read_bytes())},
                    lambda ev: "Second page says goodbye" in ev[-1]["output"]["text"]
                    and ev[-1]["output"]["metadata"]["author"] == "Ada Lovelace"),
    "qr-encode": ({"text": "archipelag"}, lambda ev: the_image(ev).format == "PNG"),
    "text-stats": ({"text": "One two. Three!"}, lambda ev: ev[-1]["output"]["words"] == 3),
}
BAD: dict[str, tuple[dict[str, Any], str]] = {
    "csv-stats": ({"csv": "a,b\n1,2,3\n"}, "row 2 has 3 fields"),
    "image-resize": ({"image_base64": b64(b"not an image"), "format": "png"}, "not an image"),
    "json-format": ({"json": "{"}, "not valid JSON"),
    "markdown-to-html": ({"markdown": 7}, "must be a string"),
    "pdf-extract": ({"pdf_base64": b64(b"hello")}, "does not hold a PDF"),
    "qr-encode": ({"text": "x", "error": "z"}, "must be one of l, m, q, h"),
    "text-stats": ({}, "missing field 'text'"),
}


def test_every_container_workload_is_covered(workloads: dict[str, Manifest]) -> None:
    assert sorted(workloads) == SLUGS == sorted(HAPPY) == sorted(BAD)


@pytest.mark.parametrize("slug", SLUGS)
def test_an_image_is_built_on_the_base_and_runs_as_the_workload_user(
        slug: str, workloads: dict[str, Manifest], docker_env: DockerEnv) -> None:  # noqa: F811
    image = docker_env.client.images.get(workloads[slug].image_id)
    assert f"archipelag/{slug}:1" in image.tags
    assert image.attrs["Config"]["User"] == WORKLOAD_USER
    assert image.labels.get(images.CONTENT_HASH_LABEL, "").startswith("sha256:")


@pytest.mark.parametrize("slug", SLUGS)
def test_a_workload_answers_in_its_hardened_container(
        slug: str, workloads: dict[str, Manifest], runtime: DockerRuntime) -> None:
    job, check = HAPPY[slug]
    events = run(runtime, workloads[slug], job)
    assert events[0]["type"] == "status" and events[-1]["type"] == "done"
    assert check(events), events[-1]


@pytest.mark.parametrize("slug", SLUGS)
def test_bad_input_ends_with_one_error_event_in_the_container(
        slug: str, workloads: dict[str, Manifest], runtime: DockerRuntime) -> None:
    job, says = BAD[slug]
    events = run(runtime, workloads[slug], job)
    assert [e["type"] for e in events].count("error") == 1 and events[-1]["type"] == "error"
    assert says in events[-1]["message"]


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_pillow_encodes_every_format_inside_the_sandbox(
        fmt: str, workloads: dict[str, Manifest], runtime: DockerRuntime) -> None:
    events = run(runtime, workloads["image-resize"], {"image_base64": b64(a_png(640, 480)), "width": 320,
                                                      "height": 320, "format": fmt})
    assert the_image(events).size == (320, 240) and events[-1] == {"type": "done"}


def test_an_encrypted_pdf_opens_with_its_password_in_the_container(
        workloads: dict[str, Manifest], runtime: DockerRuntime) -> None:
    events = run(runtime, workloads["pdf-extract"], {"pdf_base64": b64((INPUTS / "encrypted.pdf").read_bytes()),
                                                     "password": "secret"})
    assert events[-1]["output"]["metadata"]["encrypted"] and "page one" in events[-1]["output"]["text"]


def test_staging_needs_no_network_once_the_wheels_are_cached(
        workloads: dict[str, Manifest], builder: ModuleType, tmp_path: Path) -> None:
    for slug in ("image-resize", "markdown-to-html"):
        folder = tmp_path / slug
        shutil.copytree(WORKLOADS / slug, folder, ignore=shutil.ignore_patterns("vendor", "system-libs"))
        assert builder.stage(folder, builder.DEFAULT_WHEELS, offline=True)
        assert (folder / "vendor" / "workload_io.py").is_file()
    assert (tmp_path / "image-resize" / "system-libs").is_dir()  # what Pillow links and the base lacks


def test_no_container_is_left_behind(workloads: dict[str, Manifest], runtime: DockerRuntime,
                                     docker_env: DockerEnv) -> None:  # noqa: F811
    run(runtime, workloads["text-stats"], {"text": "last"})
    # only this process's: other test processes and sessions share the engine and run the same workloads
    ours = docker_env.client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner_tag()}"},
                                             ignore_removed=True)
    assert ours == []


def test_an_image_is_found_again_by_its_content_not_by_its_files_times_or_its_tag(
        docker_env: DockerEnv, tmp_path: Path) -> None:  # noqa: F811
    """A fresh clone has new file times, and another checkout on the same engine may have moved the tag:
    neither rebuilds an image whose content is already there."""
    tag = f"archipelag-test/content-{uuid.uuid4().hex[:8]}:1"
    first, second = tmp_path / "clone-1", tmp_path / "clone-2"
    first.mkdir()
    (first / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nCOPY note.txt /app/note.txt\n")
    (first / "note.txt").write_text(f"{tag}\n")
    made = [images.build_image(docker_env.client, first, tag)]
    try:
        shutil.copytree(first, second)  # the same files, written now: other times
        for path in second.iterdir():
            os.utime(path, (1, 1))
        docker_env.client.images.get(docker_env.probe_image_id).tag(*tag.split(":"))  # the tag moved away
        assert images.build_image(docker_env.client, second, tag) == made[0]
        assert docker_env.client.images.get(tag).id == made[0]
        (second / "note.txt").write_text("other content\n")
        made.append(images.build_image(docker_env.client, second, tag))
        assert made[1] != made[0]
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_env.client.images.remove(tag)  # an untag only, should the probe still hold it
        for image_id in made:
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_env.client.images.remove(image_id, force=True)


def test_an_image_built_from_a_workload_image_never_stands_in_for_it(
        docker_env: DockerEnv, tmp_path: Path) -> None:  # noqa: F811
    """An image built FROM a workload image inherits its labels, the content hash among them (a developer's
    experiment on the same engine did this, and a lookup by label moved the workload's tag onto it). The lookup is
    by the content's own tag: the workload's image is found, and its tag put back on it."""
    tag = f"archipelag-test/derived-{uuid.uuid4().hex[:8]}:1"
    workload, experiment = tmp_path / "workload", tmp_path / "experiment"
    workload.mkdir()
    experiment.mkdir()
    (workload / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nCOPY note.txt /app/note.txt\n")
    (workload / "note.txt").write_text(f"{tag}\n")
    made = images.build_image(docker_env.client, workload, tag)
    derived = None
    try:
        (experiment / "Dockerfile").write_text(f"FROM {made}\nCOPY other.txt /app/other.txt\n")
        (experiment / "other.txt").write_text("an experiment\n")
        derived, _ = docker_env.client.images.build(path=str(experiment), rm=True, forcerm=True)
        label = images.CONTENT_HASH_LABEL
        assert derived.labels[label] == docker_env.client.images.get(made).labels[label]  # inherited
        derived.tag(*tag.split(":"))  # and it holds the workload's tag now
        assert images.build_image(docker_env.client, workload, tag) == made
        assert docker_env.client.images.get(tag).id == made
    finally:
        for image in (derived.id if derived is not None else None, made):
            with contextlib.suppress(docker.errors.ImageNotFound, docker.errors.APIError, TypeError):
                docker_env.client.images.remove(image, force=True)
