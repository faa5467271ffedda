"""Images API: the container images the signed catalog pins, as ``docker save`` tarballs for hosts that lack them.

``GET /api/v1/images/{image_id}`` answers only for an ID the coordinator's signed catalog pins (a malformed one is
422, any other 404), so it hands out nothing but the network's public workload images — no key is needed, as for
the catalog itself. The tarball is saved from the coordinator's engine on the first request for it
(runtimes/image_store.py; later ones read the saved file) and streamed from disk. Downloads are limited per client
address (``image_downloads_per_min``): each is large. What a host does with it — and why it need not trust this
answer — is in runtimes/image_fetch.py.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from archipelag.catalog import parse_compiled_catalog
from archipelag.catalog_signing import catalog_files
from archipelag.errors import ConfigError, NotFound
from archipelag.image_transfer import parse_image_id
from archipelag.serve.api_jobs import Svc
from archipelag.serve.auth import client_address
from archipelag.settings import Settings

router = APIRouter(prefix="/api/v1")


@router.get("/images/{image_id}")
async def image_tarball(image_id: str, request: Request, svc: Svc) -> Response:
    """The pinned image ``image_id`` as a tar stream (``docker load`` reads it)."""
    svc.image_downloads.check(client_address(request))
    wanted = parse_image_id(image_id)
    pinned = pinned_images(svc.settings)
    if wanted not in pinned:
        raise NotFound(f"the signed catalog pins no image {wanted}; GET /api/v1/catalog lists what it pins")
    path = await run_in_threadpool(svc.images.saved, wanted, pinned)
    return FileResponse(path, media_type="application/x-tar",
                        filename=f"{wanted.removeprefix('sha256:')[:12]}.tar")


def pinned_images(settings: Settings) -> frozenset[str]:
    """The image IDs of the container workloads in the catalog this coordinator serves."""
    data, _signature = catalog_files(settings)
    try:
        manifests = parse_compiled_catalog(data, settings.workloads_dir).manifests.values()
    except ConfigError:
        raise NotFound("this network's catalog does not parse; rebuild it with `archipelag catalog build`") from None
    return frozenset(m.image_id for m in manifests if m.runtime == "container" and m.image_id)
