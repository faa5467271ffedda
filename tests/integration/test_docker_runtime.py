"""The Docker runtime against a real engine: streaming, input, protocol faults, cancel, image checks, cleanup."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest
from docker_engine import LIMITS, DockerEnv, a_job_id, docker_env  # noqa: F401

from archipelag.errors import JobCancelled, ProtocolViolation, WorkloadRefused
from archipelag.protocol import Event
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.container_spec import JOB_LABEL
from archipelag.runtimes.docker import DockerRuntime, HostFacts

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def runtime(docker_env: DockerEnv) -> DockerRuntime:  # noqa: F811
    return DockerRuntime(docker_env.client, HostFacts(cpu_count=2))


def spec_for(env: DockerEnv, name: str, job: dict[str, Any], image_id: str | None = None, **limits: Any) -> JobSpec:
    return JobSpec(a_job_id(name), env.probe(image_id=image_id), job, dataclasses.replace(LIMITS, **limits))


def test_events_stream_as_the_workload_writes_them(runtime: DockerRuntime, docker_env: DockerEnv) -> None:  # noqa: F811
    arrived: list[tuple[float, Event]] = []
    for event in runtime.run(spec_for(docker_env, "stream", {"attack": "stream", "sleep_s": 1.5}), CancelToken()):
        arrived.append((time.monotonic(), event))
    assert [e["type"] for _, e in arrived] == ["token", "token", "done"]
    assert arrived[1][0] - arrived[0][0] > 0.5  # the first token came while the workload still slept
    assert docker_env.leftovers() == []


def test_input_goes_to_stdin_and_every_token_comes_back(runtime: DockerRuntime,
                                                        docker_env: DockerEnv) -> None:  # noqa: F811
    events = list(runtime.run(spec_for(docker_env, "tokens", {"attack": "tokens", "n": 5000}), CancelToken()))
    assert len(events) == 5001 and events[-1] == {"type": "done"}
    echoed = list(runtime.run(spec_for(docker_env, "echo", {"attack": "echo", "text": "a b c"}), CancelToken()))
    assert "".join(e["content"] for e in echoed if e["type"] == "token") == "a b c "
    assert echoed[-1]["usage"] == {"completion_tokens": 3}


@pytest.mark.parametrize(("attack", "reason"), [("garbage", "not valid JSON"),
                                                ("no_done", "exited without a done event")])
def test_protocol_faults_fail_the_job(runtime: DockerRuntime, docker_env: DockerEnv,  # noqa: F811
                                      attack: str, reason: str) -> None:
    with pytest.raises(ProtocolViolation, match=reason):
        list(runtime.run(spec_for(docker_env, attack, {"attack": attack}), CancelToken()))
    assert docker_env.leftovers() == []


def test_cancel_from_another_thread_kills_the_container(runtime: DockerRuntime,
                                                        docker_env: DockerEnv) -> None:  # noqa: F811
    cancel = CancelToken()
    events = runtime.run(spec_for(docker_env, "cancel", {"attack": "stream", "sleep_s": 120}), cancel)
    first = next(events)
    assert first["content"] == "first"
    threading.Timer(0.2, cancel.cancel, ["stopped by the test"]).start()
    started = time.monotonic()
    with pytest.raises(JobCancelled, match="stopped by the test"):
        list(events)
    assert time.monotonic() - started < 60
    assert docker_env.leftovers() == []


def test_a_consumer_walking_away_removes_the_container(runtime: DockerRuntime,
                                                       docker_env: DockerEnv) -> None:  # noqa: F811
    events = runtime.run(spec_for(docker_env, "walk-away", {"attack": "stream", "sleep_s": 120}), CancelToken())
    next(events)
    assert len(docker_env.leftovers()) == 1
    events.close()
    assert docker_env.leftovers() == []


def test_the_container_is_created_hardened(runtime: DockerRuntime, docker_env: DockerEnv) -> None:  # noqa: F811
    spec = spec_for(docker_env, "inspect", {"attack": "stream", "sleep_s": 120})
    events = runtime.run(spec, CancelToken())
    next(events)
    try:
        (container,) = docker_env.client.containers.list(filters={"label": f"{JOB_LABEL}={spec.job_id}"})
        host = container.attrs["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert any(opt.startswith("seccomp=") for opt in host["SecurityOpt"])
        assert host["NetworkMode"] == "none"
        assert host["PidsLimit"] == LIMITS.pids_limit
        assert host["Memory"] == host["MemorySwap"] == LIMITS.memory_mb * 1024 * 1024
        assert host["NanoCpus"] == 1_000_000_000
        assert "size=16m" in host["Tmpfs"]["/tmp"] and "mode=1777" in host["Tmpfs"]["/tmp"]
        assert container.attrs["Config"]["User"] == "10001:10001"
        assert container.attrs["Config"]["StdinOnce"] is True
    finally:
        events.close()
    assert docker_env.leftovers() == []


@pytest.mark.parametrize("image_id", ["sha256:" + "0" * 64, None])
def test_an_image_not_pinned_by_the_catalog_is_refused_before_running(
        runtime: DockerRuntime, docker_env: DockerEnv, image_id: str | None) -> None:  # noqa: F811
    workload = dataclasses.replace(docker_env.probe(), image_id=image_id)
    spec = JobSpec(a_job_id("mismatch"), workload, {"attack": "write_root"}, LIMITS)
    with pytest.raises(WorkloadRefused):
        runtime.run(spec, CancelToken())
    assert docker_env.client.containers.list(all=True, filters={"label": f"{JOB_LABEL}={spec.job_id}"},
                                             ignore_removed=True) == []


def test_an_image_missing_here_is_refused(runtime: DockerRuntime, docker_env: DockerEnv) -> None:  # noqa: F811
    workload = dataclasses.replace(docker_env.probe(), image="archipelag/not-built-here:1",
                                   image_id="sha256:" + "1" * 64)
    with pytest.raises(WorkloadRefused, match="not on this host") as refused:
        runtime.run(JobSpec(a_job_id("missing"), workload, {}, LIMITS), CancelToken())
    assert refused.value.details["reason"] == "image_missing"


def test_an_image_is_found_by_its_pinned_id_whatever_its_tag(runtime: DockerRuntime,
                                                             docker_env: DockerEnv) -> None:  # noqa: F811
    """Tags prove nothing (a loaded tarball may move them); the ID, the digest of the image's config, does."""
    workload = dataclasses.replace(docker_env.probe(), image="archipelag/not-built-here:1")
    events = list(runtime.run(JobSpec(a_job_id("by-id"), workload, {"attack": "echo", "text": "a"}, LIMITS),
                              CancelToken()))
    assert events[-1]["type"] == "done"
