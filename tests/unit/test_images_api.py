"""GET /api/v1/images/{image_id} (the real app): only what the signed catalog pins, a strict ID, a limit per
address, and a clear answer when the coordinator's engine does not answer (the happy path runs on the real engine
in tests/integration/test_image_fetch.py)."""

from __future__ import annotations

from pathlib import Path

import docker
from fastapi.testclient import TestClient
from image_builders import pin_in_catalog
from model_network import a_model_network

from archipelag.catalog import Manifest
from archipelag.ids import WorkloadSlug
from archipelag.runtimes.image_store import ImageStore

PINNED = "sha256:" + "ab" * 32
WORKLOAD = Manifest(slug=WorkloadSlug("pinned"), name="pinned", description="", runtime="container",
                    trust_level=0, price_micro=0, image="archipelag/pinned:1", image_id=PINNED)


def no_engine() -> docker.DockerClient:
    return docker.DockerClient(base_url="unix:///nonexistent/docker.sock")


def test_only_a_pinned_full_image_id_is_served(tmp_path: Path) -> None:
    net = a_model_network(tmp_path)
    with TestClient(net.app) as client:
        assert client.get(f"/api/v1/images/{PINNED}").status_code == 404  # no catalog yet
        pin_in_catalog(net.services.settings, WORKLOAD)
        unpinned = client.get(f"/api/v1/images/sha256:{'cd' * 32}")
        assert unpinned.status_code == 404 and "pins no image" in unpinned.json()["error"]["message"]
        for bad in ("latest", PINNED.upper(), PINNED[:-1], f"{PINNED}x", "sha256:..%2F..%2Fcatalog.json"):
            answer = client.get(f"/api/v1/images/{bad}")
            assert answer.status_code in (404, 422), bad
            assert answer.headers["content-type"].startswith("application/json")
        assert not (tmp_path / "images").exists() or not any((tmp_path / "images").glob("*.tar"))


def test_an_engine_that_does_not_answer_is_a_503_that_says_so(tmp_path: Path) -> None:
    net = a_model_network(tmp_path)
    pin_in_catalog(net.services.settings, WORKLOAD)
    net.services.images = ImageStore(tmp_path / "images", connect=no_engine)
    with TestClient(net.app) as client:
        answer = client.get(f"/api/v1/images/{PINNED}")
    assert answer.status_code == 503
    assert "Docker engine does not answer" in answer.json()["error"]["message"]
    assert list((tmp_path / "images").glob("*.tar")) == []  # nothing half-written stays


def test_downloads_are_limited_per_address(tmp_path: Path) -> None:
    net = a_model_network(tmp_path, image_downloads_per_min=2)
    pin_in_catalog(net.services.settings, WORKLOAD)
    net.services.images = ImageStore(tmp_path / "images", connect=no_engine)
    with TestClient(net.app) as client:
        codes = [client.get(f"/api/v1/images/{PINNED}").status_code for _ in range(3)]
    assert codes == [503, 503, 429]
