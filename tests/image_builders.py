"""Builders for image fetch tests: a small image of its own built FROM the local base (a unique ID, so removing it
touches no other test's image), a coordinator's catalog that pins it, and a tarball server that misbehaves on
request (no length, a count of what it was asked)."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from netutil import serve

from archipelag.catalog import Manifest, write_catalog
from archipelag.catalog_signing import catalog_path, signature_path
from archipelag.ids import WorkloadSlug
from archipelag.runtimes import images
from archipelag.settings import Settings

PROGRAM = """import json, sys
job = json.loads(sys.stdin.readline() or "{}")
print(json.dumps({"type": "token", "content": job.get("text", "")}), flush=True)
print(json.dumps({"type": "done", "output": {"nonce": open("/app/nonce").read()}}), flush=True)
"""


@dataclass(frozen=True)
class TestImage:
    __test__ = False  # not a test class, whatever pytest thinks of its name

    tag: str
    image_id: str
    manifest: Manifest
    nonce: str  # the content of /app/nonce in its top layer


def a_test_image(client: docker.DockerClient, folder: Path, name: str = "fetch") -> TestImage:
    """Build a tiny workload image FROM ``archipelag/base:py311`` with a nonce inside: its ID is this test's own."""
    nonce = uuid.uuid4().hex[:12]
    context = folder / f"image-{nonce}"
    context.mkdir(parents=True)
    (context / "Dockerfile").write_text('ARG BASE=archipelag/base:py311\nFROM ${BASE}\nCOPY main.py nonce /app/\n'
                                        'USER 10001:10001\nENTRYPOINT ["python3", "/app/main.py"]\n')
    (context / "main.py").write_text(PROGRAM)
    (context / "nonce").write_text(nonce)
    tag = f"archipelag/test-{name}-{nonce}:1"
    image_id = images.build_image(client, context, tag)
    manifest = Manifest(slug=WorkloadSlug(f"test-{name}"), name=name, description="", runtime="container",
                        trust_level=0, price_micro=0, image=tag, image_id=image_id, directory=str(context))
    return TestImage(tag, image_id, manifest, nonce)


def remove_image(client: docker.DockerClient, image_id: str) -> None:
    """Remove one of this test's own images (all its tags), if it is there."""
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(image_id, force=True)


def present(client: docker.DockerClient, image_id: str) -> bool:
    try:
        return str(client.images.get(image_id).id) == image_id
    except docker.errors.ImageNotFound:
        return False


def pin_in_catalog(settings: Settings, *manifests: Manifest) -> None:
    """The coordinator's catalog (in its state dir) pinning ``manifests``; the signature is beside it, unchecked
    by the coordinator itself."""
    path = catalog_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_catalog(path, manifests)
    signature_path(path).write_text("{}")


def saved_tarball(client: docker.DockerClient, image_id: str) -> bytes:
    return b"".join(client.api.get_image(image_id))


def with_entrypoint(tarball: bytes, entrypoint: list[str]) -> bytes:
    """``tarball`` with its image's entrypoint changed, as a man in the middle would: the config's bytes change."""
    members: list[tuple[tarfile.TarInfo, bytes]] = []
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config_name = manifest[0]["Config"]
        for info in tar.getmembers():
            data = tar.extractfile(info).read() if info.isfile() else b""  # type: ignore[union-attr]
            if info.name == config_name:
                config = json.loads(data)
                config["config"]["Entrypoint"] = entrypoint
                data = json.dumps(config).encode()
                info.size = len(data)
            members.append((info, data))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out.getvalue()


@dataclass
class TarballServer:
    """Serves ``body`` at any image path, in chunks and without a length; counts the requests."""

    body: bytes = b""
    status: int = 200
    requests: list[str] = field(default_factory=list)
    url: str = ""


@contextlib.contextmanager
def a_tarball_server(body: bytes = b"", status: int = 200) -> Iterator[TarballServer]:
    served = TarballServer(body, status)
    app = FastAPI()

    @app.get("/api/v1/images/{image_id}")
    async def image(image_id: str) -> StreamingResponse:
        served.requests.append(image_id)

        async def chunks() -> Iterator[bytes]:  # type: ignore[misc]
            for start in range(0, len(served.body), 64 * 1024):
                yield served.body[start:start + 64 * 1024]

        return StreamingResponse(chunks(), status_code=served.status, media_type="application/x-tar")

    with serve(app) as url:
        served.url = url
        yield served
