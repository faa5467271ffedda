"""WorkerPool's bookkeeping with scripted workers on socket pairs (the real containers: test_llm_worker.py and
test_sd_worker.py run the same paths on the engine): reuse, LRU eviction, the memory reserve, a late cancel."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from archipelag.catalog import Manifest
from archipelag.errors import HostBusy
from archipelag.ids import JobId, WorkloadSlug
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.container_io import Output
from archipelag.runtimes.workers import Started, WorkerPool
from archipelag.settings import Settings


@dataclass
class FakeContainer:
    """What Worker calls on a container; the scripted program stops when killed."""

    peer: socket.socket
    killed: bool = False
    removed: bool = False

    def kill(self) -> None:
        self.killed = True
        self.exit()

    def exit(self) -> None:
        with contextlib.suppress(OSError):
            self.peer.shutdown(socket.SHUT_RDWR)

    def remove(self, force: bool = False, v: bool = False) -> None:
        self.removed = True

    def wait(self, timeout: float) -> dict[str, int]:
        return {"StatusCode": 1}

    def reload(self) -> None:
        pass

    attrs: ClassVar[dict[str, dict[str, bool]]] = {"State": {"OOMKilled": False}}


def frames(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    while data := sock.recv(65536):
        yield 1, data


def program(peer: socket.socket) -> None:
    """A worker that answers each request with two tokens and done; `{"cancel": n}` lines are ignored."""
    reader = peer.makefile("rb")
    try:
        for line in reader:
            message = json.loads(line)
            if "cancel" in message:
                continue
            for event in ({"type": "token", "content": "a"}, {"type": "token", "content": "b"}, {"type": "done"}):
                peer.sendall(json.dumps(event).encode() + b"\n")
    except (OSError, ValueError):
        pass


@dataclass
class Engine:
    started: list[FakeContainer] = field(default_factory=list)

    def start(self, spec: JobSpec, image_id: str, model: Path | None) -> Started:
        ours, theirs = socket.socketpair()
        threading.Thread(target=program, args=(theirs,), daemon=True).start()
        container = FakeContainer(theirs)
        self.started.append(container)
        return Started(container, ours, Output(frames(ours)))  # type: ignore[arg-type]


def spec(slug: str) -> JobSpec:
    manifest = Manifest(slug=WorkloadSlug(slug), name=slug, description="", runtime="container", trust_level=1,
                        price_micro=0, worker=True)
    limits = Settings().limits_for(manifest.tier)
    return JobSpec(JobId(f"job-{slug}"), manifest, {"prompt": "x"}, limits)


def run(pool: WorkerPool, slug: str, cancel: CancelToken | None = None) -> list[str]:
    return [e["type"] for e in pool.serve(spec(slug), "sha256:img", None, cancel or CancelToken())]


@pytest.fixture
def engine() -> Engine:
    return Engine()


def test_one_worker_per_model_serves_request_after_request(engine: Engine) -> None:
    pool = WorkerPool(engine.start, free_memory_mb=lambda: 100_000)
    assert run(pool, "llm-chat") == run(pool, "llm-chat") == ["token", "token", "done"]
    assert len(engine.started) == 1 and pool.warm() == {"llm-chat"}
    pool.close()
    assert engine.started[0].removed


def test_past_max_workers_the_least_recently_used_idle_worker_goes(engine: Engine) -> None:
    pool = WorkerPool(engine.start, max_workers=2, free_memory_mb=lambda: 100_000)
    run(pool, "a")
    run(pool, "b")
    run(pool, "a")  # b is now the least recently used
    run(pool, "c")
    assert pool.warm() == {"a", "c"}
    assert [c.removed for c in engine.started] == [False, True, False]
    pool.close()


def test_a_new_model_stops_an_idle_one_for_memory_and_is_turned_away_while_the_other_works(
        engine: Engine) -> None:
    pool = WorkerPool(engine.start, reserve_mb=1024, free_memory_mb=lambda: 2600 - 1024 * len(pool.workers()))
    run(pool, "a")
    pool.check_room(spec("b"), "sha256:img", None)  # 1.5 GB free: a 1 GB worker + 1 GB reserve needs a's room
    assert pool.warm() == set() and engine.started[0].removed
    run(pool, "b")
    busy = pool.serve(spec("b"), "sha256:img", None, CancelToken())
    next(busy)  # b is mid-request
    with pytest.raises(HostBusy, match="no room for another model worker"):
        pool.check_room(spec("c"), "sha256:img", None)
    busy.close()
    pool.close()


def test_a_cancel_after_the_request_ended_leaves_the_worker_alone(engine: Engine) -> None:
    pool = WorkerPool(engine.start, free_memory_mb=lambda: 100_000)
    cancel = CancelToken()
    run(pool, "a", cancel)
    cancel.cancel("too late")
    threading.Event().wait(0.1)
    (worker,) = pool.workers()
    assert worker.alive and not engine.started[0].killed
    assert run(pool, "a") == ["token", "token", "done"]
    pool.close()


def test_a_worker_that_dies_is_replaced_by_a_fresh_one(engine: Engine) -> None:
    pool = WorkerPool(engine.start, free_memory_mb=lambda: 100_000)
    run(pool, "a")
    engine.started[0].exit()  # the program exits
    with pytest.raises(Exception, match="exited|stopped"):
        run(pool, "a")
    assert run(pool, "a") == ["token", "token", "done"] and len(engine.started) == 2
    pool.close()
