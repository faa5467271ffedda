"""A host that lacks a workload's image fetches it from the coordinator's API and runs the job only if the image is
the one the catalog pins — on the real engine, against the real API app served over HTTP.

Each test works on an image of its own (built FROM the local base with a nonce inside), removed with ``docker
rmi`` before the host asks for it; no other test's image is touched."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from docker_engine import ENGINE_URL, LIMITS, DockerEnv, a_job_id, docker_env  # noqa: F401
from gate_builders import Coordinator as TicketSigner
from gate_builders import a_gate, guard_for
from image_builders import (
    TestImage,
    a_tarball_server,
    a_test_image,
    pin_in_catalog,
    present,
    remove_image,
    saved_tarball,
    with_entrypoint,
)
from unit.model_network import a_model_network, serve

from archipelag.errors import RuntimeUnavailable, WorkloadRefused
from archipelag.gate.client import GatedRuntime
from archipelag.image_transfer import Budget
from archipelag.protocol import Event
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.docker import DockerRuntime, HostFacts
from archipelag.runtimes.image_fetch import ImageSource

pytestmark = pytest.mark.docker

BUDGET = Budget(max_bytes=1 << 30, timeout_s=120)


@dataclasses.dataclass
class Coordinator:
    url: str
    image: TestImage
    tarball: Path  # what the coordinator saved and serves


@pytest.fixture(scope="module")
def coordinator(docker_env: DockerEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:  # noqa: F811
    """The real API app on a local port, its catalog pinning a fresh image it has saved; then the image is removed
    from the engine (this machine's engine is the coordinator's and the host's at once)."""
    state = tmp_path_factory.mktemp("coordinator")
    image = a_test_image(docker_env.client, state)
    net = a_model_network(state)
    pin_in_catalog(net.services.settings, image.manifest)
    try:
        with serve(net.app) as url:
            first = httpx.get(f"{url}/api/v1/images/{image.image_id}", timeout=120)
            assert first.status_code == 200, first.text
            assert first.headers["content-type"] == "application/x-tar"
            tarball = net.services.images.path_of(image.image_id)
            assert tarball.read_bytes() == first.content
            yield Coordinator(url, image, tarball)
    finally:
        remove_image(docker_env.client, image.image_id)


@pytest.fixture
def absent(coordinator: Coordinator, docker_env: DockerEnv) -> TestImage:  # noqa: F811
    remove_image(docker_env.client, coordinator.image.image_id)
    assert not present(docker_env.client, coordinator.image.image_id)
    return coordinator.image


def a_host(env: DockerEnv, source: str, budget: Budget = BUDGET) -> DockerRuntime:
    return DockerRuntime(env.client, HostFacts(cpu_count=2), images_from=ImageSource(source, budget, retry_s=0))


def a_spec(image: TestImage, name: str, text: str = "hello") -> JobSpec:
    return JobSpec(a_job_id(name), image.manifest, {"text": text}, LIMITS)


def test_a_host_without_the_image_fetches_it_and_runs_the_job(coordinator: Coordinator, absent: TestImage,
                                                               docker_env: DockerEnv) -> None:  # noqa: F811
    host = a_host(docker_env, coordinator.url)
    events = list(host.run(a_spec(absent, "fetched"), CancelToken()))
    assert events[0] == {"type": "token", "content": "hello"} and events[-1]["type"] == "done"
    assert present(docker_env.client, absent.image_id)  # back under the pinned ID
    assert absent.tag in docker_env.client.images.get(absent.image_id).tags  # named as the catalog names it
    assert docker_env.leftovers() == []


def test_without_an_image_source_a_missing_image_is_refused_as_before(absent: TestImage,
                                                                      docker_env: DockerEnv) -> None:  # noqa: F811
    host = DockerRuntime(docker_env.client, HostFacts(cpu_count=2))
    with pytest.raises(WorkloadRefused) as refused:
        host.run(a_spec(absent, "no-source"), CancelToken())
    assert refused.value.details["reason"] == "image_missing"


def test_jobs_needing_the_same_missing_image_fetch_it_once(coordinator: Coordinator, absent: TestImage,
                                                           docker_env: DockerEnv) -> None:  # noqa: F811
    with a_tarball_server(coordinator.tarball.read_bytes()) as served:
        host = a_host(docker_env, served.url)
        results: list[str] = []

        def job(n: int) -> None:
            events = list(host.run(a_spec(absent, f"together-{n}"), CancelToken()))
            results.append(events[-1]["type"])

        threads = [threading.Thread(target=job, args=(n,)) for n in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert results == ["done"] * 3
    assert served.requests == [absent.image_id]


def test_a_tampered_image_is_refused_and_nothing_of_it_stays(coordinator: Coordinator, absent: TestImage,
                                                             docker_env: DockerEnv) -> None:  # noqa: F811
    """A man in the middle changes the entrypoint: the config's digest, so the image's ID, changes with it."""
    images_before = {i.id for i in docker_env.client.images.list(all=True)}
    evil = with_entrypoint(coordinator.tarball.read_bytes(), ["python3", "-c", "print('owned')"])
    with a_tarball_server(evil) as served, pytest.raises(WorkloadRefused) as refused:
        a_host(docker_env, served.url).run(a_spec(absent, "tampered"), CancelToken())
    assert refused.value.details["reason"] == "image_mismatch"
    assert not present(docker_env.client, absent.image_id)
    assert {i.id for i in docker_env.client.images.list(all=True)} <= images_before  # what it loaded is gone
    assert docker_env.leftovers() == []


def test_a_layer_changed_on_the_way_does_not_load_and_nothing_of_it_stays(coordinator: Coordinator, absent: TestImage,
                                                                          docker_env: DockerEnv) -> None:  # noqa: F811
    """A file inside a layer changed (same length, the tar headers intact): the layer's digest no longer matches the
    one the config names, so the engine refuses the load."""
    tarball = coordinator.tarball.read_bytes()
    assert tarball.count(absent.nonce.encode()) == 1
    evil = tarball.replace(absent.nonce.encode(), b"f" * len(absent.nonce))
    images_before = {i.id for i in docker_env.client.images.list(all=True)}
    with a_tarball_server(evil) as served, pytest.raises(WorkloadRefused, match="does not load") as refused:
        a_host(docker_env, served.url).run(a_spec(absent, "layer"), CancelToken())
    assert refused.value.details["reason"] == "image_mismatch"
    assert not present(docker_env.client, absent.image_id)
    assert {i.id for i in docker_env.client.images.list(all=True)} <= images_before


def test_another_image_served_under_the_pinned_id_is_refused_and_removed(
        coordinator: Coordinator, absent: TestImage, docker_env: DockerEnv, tmp_path: Path) -> None:  # noqa: F811
    other = a_test_image(docker_env.client, tmp_path, "other")
    try:
        tarball = saved_tarball(docker_env.client, other.image_id)
        remove_image(docker_env.client, other.image_id)
        with a_tarball_server(tarball) as served, pytest.raises(WorkloadRefused, match="catalog pins") as refused:
            a_host(docker_env, served.url).run(a_spec(absent, "other"), CancelToken())
        assert refused.value.details["reason"] == "image_mismatch"
        assert not present(docker_env.client, other.image_id) and not present(docker_env.client, absent.image_id)
    finally:
        remove_image(docker_env.client, other.image_id)


def test_an_image_past_the_budget_is_refused_declared_or_not(coordinator: Coordinator, absent: TestImage,
                                                             docker_env: DockerEnv) -> None:  # noqa: F811
    size = coordinator.tarball.stat().st_size
    small = Budget(max_bytes=size // 2, timeout_s=120)
    with pytest.raises(RuntimeUnavailable, match="larger than this host takes") as declared:  # Content-Length
        a_host(docker_env, coordinator.url, small).run(a_spec(absent, "large"), CancelToken())
    assert declared.value.details["reason"] == "image_too_large"
    images_before = {i.id for i in docker_env.client.images.list(all=True)}
    with a_tarball_server(coordinator.tarball.read_bytes()) as served, \
            pytest.raises(RuntimeUnavailable, match="larger than this host takes") as streamed:  # no length sent
        a_host(docker_env, served.url, small).run(a_spec(absent, "large-streamed"), CancelToken())
    assert streamed.value.details["reason"] == "image_too_large"
    assert not present(docker_env.client, absent.image_id)
    assert {i.id for i in docker_env.client.images.list(all=True)} <= images_before


def test_a_source_without_the_image_turns_the_job_away_and_is_not_asked_again_at_once(
        absent: TestImage, docker_env: DockerEnv) -> None:  # noqa: F811
    with a_tarball_server(b'{"error": {"message": "no", "code": "not_found"}}', status=404) as served:
        host = DockerRuntime(docker_env.client, HostFacts(cpu_count=2),
                             images_from=ImageSource(served.url, BUDGET, retry_s=30))
        for _ in range(2):
            with pytest.raises(RuntimeUnavailable, match="HTTP 404") as refused:
                host.run(a_spec(absent, "not-served"), CancelToken())
            assert refused.value.details["reason"] == "image_unavailable"
        assert served.requests == [absent.image_id]


def test_the_api_serves_only_what_the_catalog_pins(coordinator: Coordinator) -> None:
    unpinned = httpx.get(f"{coordinator.url}/api/v1/images/sha256:{'0' * 64}")
    assert unpinned.status_code == 404 and unpinned.json()["error"]["code"] == "not_found"
    for bad in ("latest", "sha256:" + "A" * 64, "sha256:..%2F..%2Fetc"):
        assert httpx.get(f"{coordinator.url}/api/v1/images/{bad}").status_code in (404, 422)


def test_through_the_gate_the_gate_fetches_and_the_agent_only_asks(coordinator: Coordinator, absent: TestImage,
                                                                    docker_env: DockerEnv) -> None:  # noqa: F811
    """As on a lent machine (`--ray-user`): the agent holds no engine and no image source; the gate, the owner's
    process, fetches and verifies before it answers the ticket."""
    signer = TicketSigner()

    def through_a_gate(source: str, name: str) -> list[Event]:
        runtime = DockerRuntime.connect(ENGINE_URL, images_from=ImageSource(source, BUDGET, retry_s=0))
        with a_gate(runtime, guard_for(absent.manifest), (signer.public,)) as gate:
            spec = signer.spec(absent.manifest, {"text": name}, job_id=a_job_id(name), limits=LIMITS)
            return list(GatedRuntime(gate.path).run(spec, CancelToken()))

    events = through_a_gate(coordinator.url, "gated")
    assert events[0] == {"type": "token", "content": "gated"} and events[-1]["type"] == "done"
    assert present(docker_env.client, absent.image_id)

    deadline = time.monotonic() + 30
    while docker_env.leftovers() and time.monotonic() < deadline:  # the gate removes it just after done
        time.sleep(0.1)
    remove_image(docker_env.client, absent.image_id)
    evil = with_entrypoint(coordinator.tarball.read_bytes(), ["python3", "-c", "print('owned')"])
    with a_tarball_server(evil) as served, pytest.raises(WorkloadRefused) as refused:
        through_a_gate(served.url, "gate-evil")
    assert refused.value.details["reason"] == "image_mismatch"
    assert not present(docker_env.client, absent.image_id)
