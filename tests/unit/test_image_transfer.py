"""Image transfer's pure rules: what an image ID is, where it is served, the byte and time budget a transfer gets,
one fetch per image at a time, and a failed fetch remembered for a while."""

from __future__ import annotations

import threading
import time

import pytest

from archipelag.errors import RuntimeUnavailable, ValidationFailed
from archipelag.image_transfer import (
    Budget,
    KeyedLocks,
    RecentFailures,
    TransferStopped,
    image_url,
    parse_image_id,
)

GOOD = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text", [
    "sha256:" + "AB" * 32, "sha256:" + "ab" * 31, "sha256:" + "ab" * 33, "ab" * 32, "sha512:" + "ab" * 32,
    GOOD + "\n", " " + GOOD, "sha256:" + "g" * 64, "sha256:../../etc/passwd", "", GOOD + "/x",
])
def test_only_a_full_lowercase_image_id_is_one(text: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_image_id(text)


def test_a_full_image_id_passes_as_it_is() -> None:
    assert parse_image_id(GOOD) == GOOD


def test_an_image_is_served_under_the_api_address() -> None:
    assert image_url("https://net.example/", GOOD) == f"https://net.example/api/v1/images/{GOOD}"
    assert image_url("http://10.0.0.1:8000/x", GOOD) == f"http://10.0.0.1:8000/x/api/v1/images/{GOOD}"


@pytest.mark.parametrize("source", ["10.0.0.1:6380", "file:///etc", "https://", "https://a/?q=1", "ftp://a"])
def test_a_source_that_is_no_http_address_is_refused(source: str) -> None:
    with pytest.raises(ValidationFailed):
        image_url(source, GOOD)


def test_a_transfer_stops_once_it_passes_its_bytes_whatever_was_declared() -> None:
    budget = Budget(max_bytes=10, timeout_s=60)
    budget.check_declared(10)
    budget.check_declared(None)
    with pytest.raises(TransferStopped) as declared:
        budget.check_declared(11)
    assert declared.value.details["reason"] == "image_too_large"
    handed: list[bytes] = []
    with pytest.raises(TransferStopped) as sent:
        handed.extend(budget.bounded(iter([b"12345", b"67890", b"x"])))
    assert b"".join(handed) == b"1234567890"  # never a byte past the budget
    assert sent.value.details["reason"] == "image_too_large" and isinstance(sent.value, RuntimeUnavailable)


def test_a_transfer_stops_at_its_deadline_and_on_cancel() -> None:
    now = [0.0]

    def slow() -> object:
        for _ in range(10):
            now[0] += 4.0
            yield b"x"

    with pytest.raises(TransferStopped) as late:
        list(Budget(1 << 20, timeout_s=10).bounded(slow(), clock=lambda: now[0]))  # type: ignore[arg-type]
    assert late.value.details["reason"] == "image_fetch_timeout"
    cancel = threading.Event()
    chunks = Budget(1 << 20, 60).bounded(iter([b"a", b"b"]), cancelled=cancel.is_set)
    assert next(chunks) == b"a"
    cancel.set()
    with pytest.raises(TransferStopped) as cancelled:
        next(chunks)
    assert cancelled.value.details["reason"] == "image_fetch_cancelled"


def test_jobs_needing_one_image_wait_for_one_fetch_and_others_do_not() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    release = threading.Event()

    def fetch(key: str) -> None:
        with locks.hold(key):
            inside.append(key)
            release.wait(5)

    first = threading.Thread(target=fetch, args=("a",))
    first.start()
    while not inside:
        time.sleep(0.01)
    second, other = threading.Thread(target=fetch, args=("a",)), threading.Thread(target=fetch, args=("b",))
    second.start()
    other.start()
    time.sleep(0.2)
    assert sorted(inside) == ["a", "b"]  # the second "a" waits; "b" does not
    release.set()
    for thread in (first, second, other):
        thread.join(5)
    assert inside.count("a") == 2 and len(locks) == 0  # no lock is kept once nobody holds it


def test_a_failed_fetch_is_remembered_until_it_may_be_tried_again() -> None:
    now = [0.0]
    failures = RecentFailures(retry_s=30, clock=lambda: now[0])
    failures.check("a")
    failures.remember("a", TransferStopped("too large", reason="image_too_large"))
    with pytest.raises(TransferStopped, match="not tried again yet") as again:
        failures.check("a")
    assert again.value.details["reason"] == "image_too_large"
    failures.check("b")
    now[0] = 30.0
    failures.check("a")
    failures.remember("a", TransferStopped("x", reason="image_too_large"))
    failures.forget("a")
    failures.check("a")
    RecentFailures(retry_s=0).remember("a", TransferStopped("x"))  # 0: nothing is remembered
