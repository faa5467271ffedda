"""sd-diffusers through the host's Docker runtime: the tiny pipeline (``make sd-model``) verified, mounted
read-only and kept warm in a sandboxed worker; progress per step, one PNG, the seed; a cancel between steps."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from docker_engine import DockerEnv, a_job_id, docker_env  # noqa: F401 - docker_env is a fixture
from PIL import Image
from workload_files import WORKLOADS, built_workload, load_module

from archipelag.catalog import Manifest
from archipelag.errors import JobCancelled
from archipelag.protocol import Event, collect_output
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.docker import DockerRuntime, HostFacts
from archipelag.runtimes.models import ModelStore
from archipelag.runtimes.workers import WorkerPool
from archipelag.settings import Settings

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def sd(docker_env: DockerEnv) -> Manifest:  # noqa: F811
    """The sd-diffusers entry, its image built and pinned, its tiny model made as `make sd-model` does."""
    pinned = built_workload(docker_env.client, "sd-diffusers")
    load_module(WORKLOADS / "sd-diffusers" / "make_tiny.py").make_via_docker(Settings().models_dir / "sd-tiny")
    return pinned


@pytest.fixture
def runtime(docker_env: DockerEnv) -> Iterator[DockerRuntime]:  # noqa: F811
    runtime = DockerRuntime(docker_env.client, HostFacts.detect(), models=ModelStore(Settings().models_dir),
                            pool=lambda start: WorkerPool(start, reap_every_s=0.5))
    yield runtime
    runtime.pool.close()


def spec_of(workload: Manifest, job: dict[str, Any]) -> JobSpec:
    limits = workload.limits_under(Settings().limits_for(workload.tier))
    return JobSpec(a_job_id("sd"), workload, job, replace(limits, cpus=1.0))


def test_an_image_job_streams_progress_then_a_png_and_keeps_the_model_warm(runtime: DockerRuntime,
                                                                             sd: Manifest) -> None:
    first = list(runtime.run(spec_of(sd, {"prompt": "a red boat", "steps": 3, "seed": 4}), CancelToken()))
    second = list(runtime.run(spec_of(sd, {"prompt": "a red boat", "steps": 3, "seed": 4}), CancelToken()))
    assert [(e["step"], e["total"]) for e in second if e["type"] == "progress"] == [(1, 3), (2, 3), (3, 3)]
    assert {"type": "status", "message": "loading model"} in first
    assert all(e.get("message") != "loading model" for e in second)  # loaded once
    image = next(e for e in second if e["type"] == "image")
    picture = Image.open(io.BytesIO(base64.b64decode(image["data"])))
    assert picture.format == "PNG" and picture.size == (64, 64) == (image["width"], image["height"])
    assert second[-1] == {"type": "done", "seed": 4}
    assert image["data"] == next(e for e in first if e["type"] == "image")["data"]  # same seed, same picture
    output = collect_output(second)
    assert output is not None and '"image_data"' in output and '"seed": 4' in output  # DESIGN §8 job output
    assert len(runtime.pool.workers()) == 1 and "sd-diffusers" in runtime.warm(0)


def test_a_cancel_between_steps_stops_the_image_and_the_worker_serves_the_next(runtime: DockerRuntime,
                                                                                sd: Manifest) -> None:
    cancel = CancelToken()
    events: list[Event] = []
    with pytest.raises(JobCancelled):
        for event in runtime.run(spec_of(sd, {"prompt": "slow", "steps": 100, "width": 256, "height": 256}),
                                 cancel):
            events.append(event)
            if event["type"] == "progress" and event["step"] == 2:
                cancel.cancel("enough")
    assert not any(e["type"] == "image" for e in events)
    after = list(runtime.run(spec_of(sd, {"prompt": "next", "steps": 1}), CancelToken()))
    assert after[-1]["type"] == "done" and runtime.pool.workers()[0].alive
