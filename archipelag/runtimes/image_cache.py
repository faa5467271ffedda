"""Image cache: which workload images a host holds, when each was last used, and which to evict. Pure.

A host keeps at most ``max_images`` workload images (LRU beyond that; an image in use is never evicted).
An image used within ``warm_ttl_s`` is *warm*: its workload starts without a build or load, so the host
reports it in its heartbeat and placement prefers it for that workload.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class CachedImage:
    image_id: str
    slug: str
    last_used: float
    in_use: int = 0


class ImageCache:
    def __init__(self, max_images: int = 20, warm_ttl_s: float = 600.0) -> None:
        self._max_images = max_images
        self._warm_ttl_s = warm_ttl_s
        self._images: dict[str, CachedImage] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._images)

    def acquire(self, image_id: str, slug: str, now: float) -> None:
        """A job starts on this image."""
        with self._lock:
            entry = self._images.setdefault(image_id, CachedImage(image_id, slug, now))
            entry.last_used, entry.in_use = now, entry.in_use + 1

    def release(self, image_id: str, now: float) -> list[str]:
        """A job on this image ended; returns the images to evict now (least recently used first)."""
        with self._lock:
            entry = self._images.get(image_id)
            if entry is not None:
                entry.last_used, entry.in_use = now, max(0, entry.in_use - 1)
            return self._evictable()

    def forget(self, image_id: str) -> None:
        with self._lock:
            self._images.pop(image_id, None)

    def warm(self, now: float) -> frozenset[str]:
        """Workload slugs whose image was used within the warm TTL."""
        with self._lock:
            return frozenset(e.slug for e in self._images.values() if now - e.last_used <= self._warm_ttl_s)

    def _evictable(self) -> list[str]:
        surplus = len(self._images) - self._max_images
        if surplus <= 0:
            return []
        idle = sorted((e for e in self._images.values() if e.in_use == 0), key=lambda e: (e.last_used, e.image_id))
        return [e.image_id for e in idle[:surplus]]
