from __future__ import annotations

from archipelag.runtimes.image_cache import ImageCache


def test_images_beyond_the_limit_are_evicted_least_recently_used_first() -> None:
    cache = ImageCache(max_images=2, warm_ttl_s=60)
    for t, image in enumerate(["a", "b", "c"]):
        cache.acquire(image, f"w-{image}", now=float(t))
        cache.release(image, now=float(t))
    cache.acquire("a", "w-a", now=10.0)
    assert cache.release("a", now=10.0) == ["b"]


def test_an_image_in_use_is_never_evicted() -> None:
    cache = ImageCache(max_images=1)
    cache.acquire("old", "w-old", now=0.0)
    cache.acquire("new", "w-new", now=1.0)
    assert cache.release("new", now=2.0) == ["new"]  # "old" is older but still running
    cache.forget("new")
    assert cache.release("old", now=3.0) == []


def test_warm_workloads_are_those_used_within_the_ttl() -> None:
    cache = ImageCache(max_images=5, warm_ttl_s=100)
    cache.acquire("a", "pdf-extract", now=0.0)
    cache.release("a", now=0.0)
    cache.acquire("b", "csv-stats", now=50.0)
    assert cache.warm(now=120.0) == {"csv-stats"}
    cache.forget("b")
    assert cache.warm(now=120.0) == frozenset()
