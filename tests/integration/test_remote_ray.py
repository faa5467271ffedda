"""Remote calls on a real local Ray: what a caller sends outlives the caller's own cancel.

Ray cancels a cancelled task's children with it, and Serve cancels a request's task when its client goes away.
A chat's Stop once cancelled, that way, the ledger's record of a job that the jobs service had sent, and the hole
it left in the ledger's in-order queue failed every later call from the jobs service 30 s after."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netutil import local_ray

# tests/conftest.py sets RAY_AUTH_MODE=disabled and RAY_TMPDIR before any test imports ray.
pytestmark = [pytest.mark.integration, pytest.mark.ray_driver]


@pytest.fixture(scope="module")
def ray() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    with local_ray("remote-test"):
        yield ray


def actors(ray: Any, signals: Path) -> tuple[Any, Any]:
    """A one-call-at-a-time book (as the ledger is) and a caller that writes to it through RayCalls (as the jobs
    service and the API do). Defined here, so Ray ships them by value. The book starts once the test says so, so
    the caller's calls wait for it, as they do for an actor that is starting or restarting (and as a busy one's
    queue holds them); the caller says in a file when it has sent them."""
    from archipelag.remote import RayCalls

    @ray.remote(max_concurrency=1)
    class Book:
        def __init__(self) -> None:
            self.lines: list[str] = []
            while not (signals / "open").exists():
                time.sleep(0.02)

        def write(self, line: str) -> str:
            self.lines.append(line)
            return line

        def read(self) -> list[str]:
            return self.lines

    @ray.remote
    class Writer:
        def __init__(self, book: Any) -> None:
            self.book = RayCalls(book, "book")

        async def send_then_write(self, line: str) -> None:
            self.book.send("write", line)
            ref = self.book.call("write", f"{line} (awaited)")
            (signals / "sent").touch()
            await ref

        async def follow(self, line: str) -> Any:
            self.book.send("write", line)
            written = asyncio.ensure_future(self.book.call("write", f"{line} (awaited)"))  # as the jobs service
            await asyncio.sleep(0)  # sends the call                                      # spawns a job's work
            yield "started"
            yield await written

        async def write(self, line: str) -> str:
            written: str = await self.book.call("write", line)
            return written

    book = Book.remote()
    return book, Writer.remote(book)


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never came"
        time.sleep(0.02)


def test_a_cancelled_caller_does_not_cancel_what_it_sent(ray: Any, tmp_path: Path) -> None:
    book, writer = actors(ray, tmp_path)
    task = writer.send_then_write.remote("job 1 ended")
    wait_for(tmp_path / "sent")
    ray.cancel(task)  # recursive, as Ray's default is and as Serve cancels a request whose client went away
    (tmp_path / "open").touch()

    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(task, timeout=30)
    assert ray.get(writer.write.remote("job 2 ended"), timeout=60) == "job 2 ended"
    assert ray.get(book.read.remote(), timeout=30) == ["job 1 ended", "job 1 ended (awaited)", "job 2 ended"]


def test_a_reader_leaving_a_stream_does_not_cancel_what_its_generator_sent(ray: Any, tmp_path: Path) -> None:
    from archipelag.remote import RayCalls

    book, writer = actors(ray, tmp_path)
    follower = RayCalls(writer, "writer")

    async def leave_after_the_first_item() -> None:
        async with contextlib.aclosing(follower.stream("follow", "job 3 ended")) as stream:
            async for item in stream:
                assert item == "started"
                break  # leaving cancels the generator, as a chat's Stop does

    asyncio.run(leave_after_the_first_item())
    (tmp_path / "open").touch()
    assert ray.get(writer.write.remote("job 4 ended"), timeout=60) == "job 4 ended"
    assert ray.get(book.read.remote(), timeout=30) == ["job 3 ended", "job 3 ended (awaited)", "job 4 ended"]
