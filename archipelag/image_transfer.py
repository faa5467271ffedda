"""Image transfer: the rules an image's trip from the coordinator to a host follows. Pure: no Docker, no HTTP.

A host that lacks a workload's image fetches it from the network's API (``GET /api/v1/images/{image_id}``, a
``docker save`` tarball of the image the signed catalog pins). Both ends agree here on what an image ID looks like
(``sha256:`` and 64 lowercase hex digits: Docker's ID, the digest of the image's config, so the content decides
it), where an image is served, the byte and time budget one transfer gets, and that jobs needing the same missing
image fetch it once (``KeyedLocks``).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from archipelag.errors import RuntimeUnavailable, ValidationFailed

IMAGE_ID: Final = re.compile(r"sha256:[0-9a-f]{64}")
IMAGES_PATH: Final = "/api/v1/images/"


def parse_image_id(text: str) -> str:
    """``text`` when it is a full image ID (``sha256:`` + 64 lowercase hex digits); ValidationFailed otherwise."""
    if not isinstance(text, str) or IMAGE_ID.fullmatch(text) is None:
        raise ValidationFailed("an image ID is `sha256:` followed by 64 lowercase hex digits",
                               errors={"image_id": "not a full image ID"})
    return text


def image_url(api_url: str, image_id: str) -> str:
    """Where the network at ``api_url`` (``http(s)://host[:port][/prefix]``) serves the image ``image_id``."""
    parts = urlsplit(api_url)
    if parts.scheme not in {"http", "https"} or not parts.netloc or parts.query or parts.fragment:
        raise ValidationFailed(f"the image source {api_url!r} is not an http(s) address of the network's API",
                               errors={"image_source": "not an http(s) URL"})
    return f"{api_url.rstrip('/')}{IMAGES_PATH}{parse_image_id(image_id)}"


class TransferStopped(RuntimeUnavailable):
    """A transfer went past its byte or time budget, or its job was cancelled: this host cannot have the image
    now (the job goes to another host). ``reason`` says which: ``image_too_large``, ``image_fetch_timeout``,
    ``image_fetch_cancelled``."""


@dataclass(frozen=True)
class Budget:
    """What one image transfer may take: ``max_bytes`` in all, until ``timeout_s`` after it starts."""

    max_bytes: int
    timeout_s: float

    def check_declared(self, length: int | None) -> None:
        """Refuse before reading when the sender says in advance that it will send too much."""
        if length is not None and length > self.max_bytes:
            raise _too_large(self.max_bytes, f"the network serves {length} bytes")

    def bounded(self, chunks: Iterable[bytes], *, cancelled: Callable[[], bool] = lambda: False,
                clock: Callable[[], float] = time.monotonic) -> Iterator[bytes]:
        """``chunks`` as they come, stopped by TransferStopped once they pass ``max_bytes``, the deadline, or a
        cancel. Whatever the sender claimed, no more than ``max_bytes`` are handed on."""
        deadline = clock() + self.timeout_s
        received = 0
        for chunk in chunks:
            if cancelled():
                raise TransferStopped("the job was cancelled while its image was being fetched",
                                      reason="image_fetch_cancelled")
            if clock() > deadline:
                raise TransferStopped(f"fetching the image took longer than {self.timeout_s:g} s "
                                      "(ARCHIPELAG_IMAGE_FETCH_TIMEOUT_S)", reason="image_fetch_timeout")
            received += len(chunk)
            if received > self.max_bytes:
                raise _too_large(self.max_bytes, "the network sent more")
            yield chunk


def _too_large(max_bytes: int, what: str) -> TransferStopped:
    return TransferStopped(f"the image is larger than this host takes ({max_bytes} bytes, "
                           f"ARCHIPELAG_IMAGE_FETCH_MAX_BYTES): {what}", reason="image_too_large")


class KeyedLocks:
    """One lock per key, held only while someone uses it: jobs that need the same missing image wait for the one
    fetching it, and jobs needing other images do not."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[threading.Lock, int]] = {}
        self._guard = threading.Lock()

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class RecentFailures:
    """Fetches that failed lately, each remembered for ``retry_s``: a job placed here again meanwhile is turned
    away at once instead of downloading again what did not fit or did not come."""

    def __init__(self, retry_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._retry_s = retry_s
        self._clock = clock
        self._failed: dict[str, tuple[float, RuntimeUnavailable]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        """Raise the failure remembered for ``key``, if it is recent."""
        with self._lock:
            failed = self._failed.get(key)
            if failed is not None and self._clock() >= failed[0]:
                del self._failed[key]
                failed = None
        if failed is not None:
            error = failed[1]
            raise type(error)(f"{error.message} (a fetch of this image failed within the last "
                              f"{self._retry_s:g} s; not tried again yet)", **error.details)

    def remember(self, key: str, error: RuntimeUnavailable) -> None:
        if self._retry_s <= 0:
            return
        with self._lock:
            self._failed[key] = (self._clock() + self._retry_s, error)

    def forget(self, key: str) -> None:
        with self._lock:
            self._failed.pop(key, None)
