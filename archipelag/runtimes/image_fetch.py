"""Image fetch: a host brings a workload image it lacks from the network, and keeps it only if it is the one pinned.

The network's API serves each image its signed catalog pins as a ``docker save`` tarball
(``GET /api/v1/images/{image_id}``, serve/api_images.py). ``ImageFetcher.fetch`` streams that tarball straight into
the engine's ``docker load`` (never whole in memory, never on disk here), within a byte and time budget
(``image_transfer.Budget``), then checks that the engine now holds the pinned ID. Docker's image ID is the digest
of the image's config, which names every layer's digest, so a tarball changed on the way (or a hostile
coordinator's) cannot come out under the pinned ID: whatever it loaded instead is removed and the job refused
(``image_mismatch``). Nothing runs before that check. Tags a tarball carries are not trusted: the runtime finds a
workload's image by its pinned ID, and the image is tagged with the catalog's name only once it checked out.

A fetch that cannot happen (the API does not answer or has no such image, the tarball is past the budget, the job
was cancelled) is ``RuntimeUnavailable`` with ``reason``: the host turns the job away to the next one, and loses
no karma — it did not lie about an artifact, it could not get it. That failure is remembered for
``image_fetch_retry_s``, so a job placed here again meanwhile is turned away at once. Jobs needing the same image
wait for one fetch (``KeyedLocks``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import docker
import docker.errors
import httpx
import requests.exceptions
from docker.utils import parse_repository_tag

from archipelag.catalog import Manifest
from archipelag.errors import (
    ArchipelagError,
    ConfigError,
    RuntimeUnavailable,
    ValidationFailed,
    WorkloadRefused,
)
from archipelag.image_transfer import IMAGE_ID, Budget, KeyedLocks, RecentFailures, TransferStopped, image_url
from archipelag.settings import Settings

log = logging.getLogger(__name__)

CHUNK_BYTES: Final = 1 << 20


@dataclass(frozen=True)
class ImageSource:
    """Where this host fetches images it lacks, and the budget one fetch gets."""

    api_url: str
    budget: Budget
    retry_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageSource | None:
        """The settings' source (``image_source``: set by pairing, or by hand); None when there is none."""
        if not settings.image_source:
            return None
        try:
            image_url(settings.image_source, "sha256:" + "0" * 64)
        except ValidationFailed as exc:
            raise ConfigError(f"{exc.message} (ARCHIPELAG_IMAGE_SOURCE)") from None
        return cls(settings.image_source, Budget(settings.image_fetch_max_bytes, settings.image_fetch_timeout_s),
                   settings.image_fetch_retry_s)


class ImageFetcher:
    """Fetches, loads and verifies images on one engine; thread-safe, one transfer per image at a time."""

    def __init__(self, client: docker.DockerClient, source: ImageSource,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._source = source
        self._locks = KeyedLocks()
        self._failures = RecentFailures(source.retry_s, clock)

    def fetch(self, workload: Manifest, cancelled: Callable[[], bool] = lambda: False) -> str:
        """The pinned image of ``workload`` on this engine, fetched when absent; its ID. Raises
        RuntimeUnavailable when it cannot be had now, WorkloadRefused(image_mismatch) when what the network
        served is not the pinned image (nothing of it stays)."""
        pinned = workload.image_id
        if not pinned or IMAGE_ID.fullmatch(pinned) is None:
            raise WorkloadRefused(f"workload {workload.slug!r} pins no full image ID ({pinned!r}); the catalog must "
                                  "pin `sha256:` and 64 hex digits", reason="image_unpinned")
        with self._locks.hold(pinned):
            if self._present(pinned):  # another job fetched it while this one waited
                return pinned
            self._failures.check(pinned)
            started = time.monotonic()
            try:
                self._load(workload, pinned, cancelled)
            except RuntimeUnavailable as exc:
                self._failures.remember(pinned, exc)
                raise
            self._failures.forget(pinned)
            log.info("fetched image %s of workload %s from %s in %.1f s", pinned, workload.slug,
                     self._source.api_url, time.monotonic() - started)
            return pinned

    # --- one transfer ----------------------------------------------------------------------------------------

    def _load(self, workload: Manifest, pinned: str, cancelled: Callable[[], bool]) -> None:
        url = image_url(self._source.api_url, pinned)
        before = self._image_ids()
        budget = self._source.budget
        # Each read may take the whole budget: the first byte waits for the coordinator's first save of the image.
        # The deadline is checked between chunks, so a transfer ends within the budget and one read.
        timeout = httpx.Timeout(budget.timeout_s, connect=10.0)
        try:
            with httpx.Client(timeout=timeout, follow_redirects=False) as http, \
                    http.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
                if response.status_code != 200:
                    raise _unavailable(url, _said(response))
                budget.check_declared(_declared_length(response))
                tarball = _Feed(budget.bounded(response.iter_raw(CHUNK_BYTES), cancelled=cancelled))
                loaded = self._engine_load(tarball, url)
        except httpx.HTTPError as exc:
            raise _unavailable(url, f"{type(exc).__name__}: {exc}") from None
        self._verified(workload, pinned, loaded, before)

    def _engine_load(self, tarball: _Feed, url: str) -> set[str]:
        """``docker load`` of the streamed tarball; the IDs the engine says it loaded."""
        try:
            images = self._client.images.load(tarball)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            if tarball.error is not None:  # the stream stopped it (budget, cancel, the API going away)
                raise tarball.error from None
            if isinstance(exc, (docker.errors.ImageLoadError, docker.errors.APIError)):
                raise WorkloadRefused(f"the image served by {url} does not load ({exc}); refusing to run it",
                                      reason="image_mismatch") from None
            raise RuntimeUnavailable(f"the Docker engine does not answer: {exc}") from None
        if tarball.error is not None:
            raise tarball.error
        return {str(image.id) for image in images}

    def _verified(self, workload: Manifest, pinned: str, loaded: set[str], before: set[str]) -> None:
        """Keep the pinned image (tagged with the catalog's name), remove everything else the load brought."""
        strays = loaded - before - {pinned}
        for image_id in strays:
            self._remove(image_id)
        if not self._present(pinned):
            log.warning("the image served for workload %s is %s, not the pinned %s; removed", workload.slug,
                        ", ".join(sorted(loaded)) or "nothing", pinned)
            raise WorkloadRefused(f"the image served for workload {workload.slug!r} is "
                                  f"{', '.join(sorted(loaded)) or 'no image'}, but the catalog pins {pinned}; "
                                  "refusing to run it", reason="image_mismatch")
        if workload.image:
            repository, tag = parse_repository_tag(workload.image)
            try:
                self._client.images.get(pinned).tag(repository, tag or "latest")
            except (docker.errors.DockerException, requests.exceptions.RequestException):
                log.warning("could not tag image %s as %s", pinned, workload.image, exc_info=True)

    # --- the engine ------------------------------------------------------------------------------------------

    def _present(self, image_id: str) -> bool:
        try:
            return str(self._client.images.get(image_id).id) == image_id
        except docker.errors.ImageNotFound:
            return False
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise RuntimeUnavailable(f"the Docker engine does not answer: {exc}") from None

    def _image_ids(self) -> set[str]:
        try:
            return {str(image.id) for image in self._client.images.list(all=True)}
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise RuntimeUnavailable(f"the Docker engine does not answer: {exc}") from None

    def _remove(self, image_id: str) -> None:
        try:
            self._client.images.remove(image_id, force=True)
        except docker.errors.ImageNotFound:
            pass
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            log.warning("could not remove image %s that a fetch brought", image_id, exc_info=True)


class _Feed:
    """The tarball as the engine's upload reads it. An error the stream raises is kept here: the HTTP library
    under the Docker SDK may hand it on wrapped, or as a broken upload, and it is the real reason."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.error: ArchipelagError | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._chunks
        except ArchipelagError as exc:
            self.error = exc
            raise
        except httpx.HTTPError as exc:
            self.error = RuntimeUnavailable(f"the image's download broke off: {type(exc).__name__}: {exc}",
                                            reason="image_unavailable")
            raise


def _declared_length(response: httpx.Response) -> int | None:
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _said(response: httpx.Response) -> str:
    """What an API's error answer says, briefly (read within a small bound: it may be hostile)."""
    text = b""
    for chunk in response.iter_raw(1024):
        text += chunk
        if len(text) >= 1024:
            break
    return f"HTTP {response.status_code}: {text[:300].decode('utf-8', 'replace')}"


def _unavailable(url: str, why: str) -> RuntimeUnavailable:
    return RuntimeUnavailable(f"this host lacks the image and could not fetch it from {url} ({why})",
                              reason="image_unavailable")


__all__ = ["ImageFetcher", "ImageSource", "TransferStopped"]
