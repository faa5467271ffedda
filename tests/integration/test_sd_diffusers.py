"""sd-diffusers on the real engine: the image built offline as `make containers` does, the tiny random-weight
pipeline made inside it (``make_tiny.py --via-docker``), and the program run in the hardened shape the Docker
runtime gives it (read-only root, tmpfs /tmp, no network, no capabilities, user 10001, 1 GB, one core, the model
mounted read-only) — one-shot and as a worker serving several requests, with a cancel mid-way. Started with the
docker CLI so these tests see the image alone; the host's worker pool has tests of its own."""

from __future__ import annotations

import base64
import io
import json
import queue
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_engine import SESSION_SUFFIX, DockerEnv, docker_env  # noqa: F401 - docker_env is a fixture
from PIL import Image
from workload_files import built_workload, load_module

from archipelag.protocol import Event, is_final, parse_line
from archipelag.runtimes.models import folder_sha256
from archipelag.settings import REPO_ROOT

pytestmark = [pytest.mark.docker, pytest.mark.slow]

WORKLOADS = REPO_ROOT / "workloads"
FOLDER = WORKLOADS / "sd-diffusers"
MOUNT = "/models/sd-tiny"
EVENT_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def image(docker_env: DockerEnv) -> str:  # noqa: F811
    """The sd-diffusers image, staged and built as `make containers` does; its ID."""
    return str(built_workload(docker_env.client, "sd-diffusers").image_id)


@pytest.fixture(scope="module")
def model(image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline, made in the image as `make models` does (which also checks the pinned hash)."""
    out = tmp_path_factory.mktemp("models") / "sd-tiny"
    load_module(FOLDER / "make_tiny.py").make_via_docker(out)
    return out


class Sandbox:
    """One container of the image, run as the runtime runs it, read event by event."""

    def __init__(self, image: str, model: Path, worker: bool) -> None:
        self.name = f"test-sd-{time.monotonic_ns()}{SESSION_SUFFIX}"
        command = ["docker", "run", "-i", "--rm", "--name", self.name, "--network", "none", "--read-only",
                   "--tmpfs", "/tmp:rw,size=64m,mode=1777,noexec", "--cap-drop", "ALL",
                   "--security-opt", "no-new-privileges", "--pids-limit", "128", "--memory", "1g",
                   "--memory-swap", "1g", "--cpus", "1", "--user", "10001:10001",
                   "-v", f"{model}:{MOUNT}:ro", "-e", f"ARCHIPELAG_MODEL={MOUNT}", "-e", "ARCHIPELAG_THREADS=1",
                   *(["-e", "ARCHIPELAG_WORKER=1"] if worker else []), image]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        self.lines: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(b"")

    def send(self, message: dict[str, Any], close: bool = False) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()
        if close:
            self.process.stdin.close()

    def next_event(self) -> Event:
        line = self.lines.get(timeout=EVENT_TIMEOUT_S)
        assert line, f"the container ended; stderr: {self.stderr()[-800:]!r}"
        return parse_line(line)

    def until_final(self) -> list[Event]:
        events = [self.next_event()]
        while not is_final(events[-1]):
            events.append(self.next_event())
        return events

    def exit_status(self) -> int:
        return self.process.wait(timeout=EVENT_TIMEOUT_S)

    def stderr(self) -> str:
        if self.process.poll() is None:
            return ""
        assert self.process.stderr is not None
        return self.process.stderr.read().decode(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, check=False)
            self.process.wait(timeout=30)


@pytest.fixture
def sandboxes(image: str, model: Path) -> Iterator[list[Sandbox]]:
    started: list[Sandbox] = []
    yield started
    for sandbox in started:
        sandbox.close()


def start(sandboxes: list[Sandbox], image: str, model: Path, worker: bool = False) -> Sandbox:
    sandboxes.append(Sandbox(image, model, worker))
    return sandboxes[-1]


def the_image(events: list[Event]) -> tuple[Image.Image, str]:
    (event,) = [e for e in events if e["type"] == "image"]
    picture = Image.open(io.BytesIO(base64.b64decode(event["data"])))
    assert event["format"] == "png" and picture.format == "PNG"
    assert picture.size == (event["width"], event["height"]) and picture.mode == "RGB"
    return picture, event["data"]


def steps_of(events: list[Event]) -> list[tuple[int, int]]:
    return [(e["step"], e["total"]) for e in events if e["type"] == "progress"]


def test_the_tiny_model_made_in_the_image_has_the_pinned_hash(model: Path) -> None:
    with (FOLDER / "manifest.toml").open("rb") as fh:
        pinned = tomllib.load(fh)["model"]["sha256"]
    assert folder_sha256(model) == pinned
    assert (model / "model_index.json").is_file() and not list(model.rglob("*.bin"))


def test_one_shot_makes_an_image_with_progress_per_step(sandboxes: list[Sandbox], image: str, model: Path) -> None:
    sandbox = start(sandboxes, image, model)
    sandbox.send({"prompt": "a lighthouse at dusk", "width": 64, "height": 96, "steps": 5, "seed": 11}, close=True)
    events = sandbox.until_final()
    assert sandbox.exit_status() == 0, sandbox.stderr()
    assert events[0] == {"type": "status", "message": "loading model"}
    assert steps_of(events) == [(n, 5) for n in range(1, 6)]
    picture, _ = the_image(events)
    assert picture.size == (64, 96)
    assert events[-1] == {"type": "done", "seed": 11}


def test_one_shot_bad_input_is_one_error_event(sandboxes: list[Sandbox], image: str, model: Path) -> None:
    sandbox = start(sandboxes, image, model)
    sandbox.send({"prompt": "x", "width": 100}, close=True)
    assert sandbox.until_final() == [{"type": "error", "message": "field 'width' must be a multiple of 8 (the "
                                                                  "latent grid), not 100; try 96 or 104"}]
    assert sandbox.exit_status() == 0


def test_a_worker_loads_once_and_serves_requests_one_after_another(
        sandboxes: list[Sandbox], image: str, model: Path) -> None:
    sandbox = start(sandboxes, image, model, worker=True)
    job = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 4, "seed": 3}
    sandbox.send({"id": 1, "input": job})
    first = sandbox.until_final()
    sandbox.send({"id": 2, "input": {"prompt": "a red fox", "steps": 0}})
    refused = sandbox.until_final()
    sandbox.send({"id": 3, "input": job})
    second = sandbox.until_final()
    sandbox.send({"id": 4, "input": {"prompt": "a blue fox", "steps": 2}}, close=True)
    third = sandbox.until_final()
    assert sandbox.exit_status() == 0  # EOF on stdin ends the worker
    assert {"type": "status", "message": "loading model"} in first
    assert all(e.get("message") != "loading model" for e in second + third)  # loaded once
    assert refused == [{"type": "error", "message": "field 'steps' must be from 1 to 100, not 0"}]
    assert first[-1]["type"] == second[-1]["type"] == "done" and steps_of(second) == [(n, 4) for n in range(1, 5)]
    assert the_image(first)[1] == the_image(second)[1]  # the same seed gives the same picture
    assert third[-1]["type"] == "done" and the_image(third)[0].size == (64, 64)  # the model's native size
    assert 0 <= third[-1]["seed"] <= 2**32 - 1


def test_a_cancel_mid_way_stops_the_request_and_the_worker_serves_the_next(
        sandboxes: list[Sandbox], image: str, model: Path) -> None:
    sandbox = start(sandboxes, image, model, worker=True)
    sandbox.send({"id": 7, "input": {"prompt": "slow", "width": 256, "height": 256, "steps": 100, "seed": 1}})
    events = [sandbox.next_event()]
    while events[-1]["type"] != "progress" or events[-1]["step"] < 2:
        events.append(sandbox.next_event())
    sandbox.send({"cancel": 6})  # another request's id: ignored
    sandbox.send({"cancel": 7})
    events += sandbox.until_final()
    assert events[-1] == {"type": "error", "message": "cancelled"}
    assert 2 <= len(steps_of(events)) < 100 and not [e for e in events if e["type"] == "image"]
    sandbox.send({"id": 8, "input": {"prompt": "next", "steps": 2, "seed": 5}}, close=True)
    after = sandbox.until_final()
    assert after[-1]["type"] == "done" and after[-1]["seed"] == 5 and steps_of(after) == [(1, 2), (2, 2)]
    assert sandbox.exit_status() == 0
