"""WorkerPool and the worker protocol's demultiplexer with the scripted worker program of
``tests/fixtures/docker/fake-worker`` on socket pairs (the real containers: test_llm_worker.py and test_sd_worker.py
run the same paths on the engine): reuse, LRU eviction, the memory reserve, a late cancel; and for a multiplexed
worker, requests side by side, a cancel, a timeout or a budget that stops one request only, a worker that ignores
a cancel or breaks the protocol killed with every request failing."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
from workload_files import load_module

from archipelag.catalog import Manifest
from archipelag.errors import (
    BudgetExceeded,
    HostBusy,
    JobCancelled,
    ProtocolViolation,
    WorkloadError,
    WorkloadTimedOut,
)
from archipelag.ids import JobId, WorkloadSlug
from archipelag.metrics.trace import TRACE
from archipelag.metrics.trace import read as read_trace
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.container_io import Output
from archipelag.runtimes.workers import Started, WorkerPool
from archipelag.settings import REPO_ROOT, Settings

PROGRAM = load_module(REPO_ROOT / "tests" / "fixtures" / "docker" / "fake-worker" / "worker.py", "fake_worker")


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
    with contextlib.suppress(OSError):
        while data := sock.recv(65536):
            yield 1, data


def program(peer: socket.socket, multiplexed: bool) -> None:
    """The fixture program on one end of a socket pair; it ends like a process: its socket closes."""
    with contextlib.suppress(OSError, ValueError):
        PROGRAM.Worker(peer.makefile("rb"), peer.makefile("wb"), multiplexed).serve()
    with contextlib.suppress(OSError):
        peer.shutdown(socket.SHUT_RDWR)


@dataclass
class Engine:
    started: list[FakeContainer] = field(default_factory=list)

    def start(self, spec: JobSpec, image_id: str, model: Path | None) -> Started:
        ours, theirs = socket.socketpair()
        threading.Thread(target=program, args=(theirs, spec.workload.parallel > 1), daemon=True).start()
        container = FakeContainer(theirs)
        self.started.append(container)
        return Started(container, ours, Output(frames(ours)))


def spec(slug: str, parallel: int = 1, **job: Any) -> JobSpec:
    manifest = Manifest(slug=WorkloadSlug(slug), name=slug, description="", runtime="container", trust_level=1,
                        price_micro=0, worker=True, parallel=parallel)
    limits = Settings().limits_for(manifest.tier)
    return JobSpec(JobId(f"job-{slug}"), manifest, job or {"act": "tokens"}, limits)


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
    busy = pool.serve(spec("b", act="wait"), "sha256:img", None, CancelToken())
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


def test_a_worker_that_exits_between_requests_is_replaced_by_a_fresh_one(engine: Engine) -> None:
    pool = WorkerPool(engine.start, free_memory_mb=lambda: 100_000)
    run(pool, "a")
    engine.started[0].exit()  # the program exits; its reader sees the output end
    eventually(lambda: not pool.workers()[0].alive)
    assert run(pool, "a") == ["token", "token", "done"] and len(engine.started) == 2
    pool.close()


# --- a multiplexed worker (parallel > 1) ----------------------------------------------------------------------

PARALLEL = 3


def eventually(check: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


class Chats:
    """Requests of one multiplexed worker run on threads; each one's events, or the error that ended it."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.results: dict[str, list[dict[str, Any]] | Exception] = {}
        self.cancels: dict[str, CancelToken] = {}
        self.threads: list[threading.Thread] = []
        self.first: dict[str, threading.Event] = {}

    def start(self, name: str, **job: Any) -> None:
        self.cancels[name] = CancelToken()
        self.first[name] = threading.Event()
        thread = threading.Thread(target=self._run, args=(name, spec("m", PARALLEL, **job)))
        self.threads.append(thread)
        thread.start()

    def _run(self, name: str, job: JobSpec) -> None:
        events: list[dict[str, Any]] = []
        try:
            for event in self.pool.serve(job, "sha256:img", None, self.cancels[name]):
                events.append(event)
                self.first[name].set()
            self.results[name] = events
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            self.results[name] = exc
        finally:
            self.first[name].set()

    def join(self) -> dict[str, list[dict[str, Any]] | Exception]:
        for thread in self.threads:
            thread.join(10)
        return self.results


@pytest.fixture
def chats(engine: Engine) -> Iterator[Chats]:
    pool = WorkerPool(engine.start, free_memory_mb=lambda: 100_000, cancel_grace_s=0.3)
    yield Chats(pool)
    pool.close()


def test_requests_overlap_on_one_worker_and_each_gets_only_its_own_events(chats: Chats, engine: Engine) -> None:
    for n in range(PARALLEL):
        chats.start(f"c{n}", act="tokens", n=5 + n, delay_s=0.01)
    results = chats.join()
    for n in range(PARALLEL):
        events = results[f"c{n}"]
        assert isinstance(events, list)
        assert [e["content"] for e in events[:-1]] == [f"t{i} " for i in range(5 + n)]
        assert events[-1] == {"type": "done", "usage": {"completion_tokens": 5 + n}}  # no rid left on it
    assert len(engine.started) == 1


def test_past_its_parallelism_a_request_waits_for_a_free_slot(chats: Chats) -> None:
    for n in range(PARALLEL):
        chats.start(f"w{n}", act="wait")
    for n in range(PARALLEL):
        assert chats.first[f"w{n}"].wait(5)
    chats.start("late", act="tokens")
    assert not chats.first["late"].wait(0.3)  # every slot is taken
    chats.cancels["w0"].cancel("make room")
    assert chats.first["late"].wait(5)
    for n in range(1, PARALLEL):
        chats.cancels[f"w{n}"].cancel()
    results = chats.join()
    assert isinstance(results["late"], list) and results["late"][-1]["type"] == "done"


def test_a_cancel_stops_its_request_only(chats: Chats) -> None:
    chats.start("stays", act="tokens", n=40, delay_s=0.01)
    chats.start("goes", act="wait")
    assert chats.first["goes"].wait(5)
    chats.cancels["goes"].cancel("user went away")
    results = chats.join()
    assert isinstance(results["goes"], JobCancelled) and "user went away" in str(results["goes"])
    stays = results["stays"]
    assert isinstance(stays, list) and stays[-1]["type"] == "done" and len(stays) == 41
    (worker,) = chats.pool.workers()
    assert worker.alive and worker.idle


def test_a_consumer_that_walks_away_cancels_only_its_request(chats: Chats, engine: Engine) -> None:
    chats.start("stays", act="tokens", n=30, delay_s=0.01)
    walker = chats.pool.serve(spec("m", PARALLEL, act="wait"), "sha256:img", None, CancelToken())
    assert next(walker)["type"] == "token"
    walker.close()
    results = chats.join()
    assert isinstance(results["stays"], list) and results["stays"][-1]["type"] == "done"
    (worker,) = chats.pool.workers()
    eventually(lambda: worker.idle)  # the program answered the cancel: its slot is free again
    assert worker.alive and not engine.started[0].killed


def test_a_request_past_its_wall_clock_fails_alone_when_the_worker_stops_it(chats: Chats) -> None:
    short = replace(spec("m", PARALLEL, act="wait"), limits=replace(spec("m").limits, timeout_s=0.2))
    chats.start("stays", act="tokens", n=40, delay_s=0.01)
    with pytest.raises(WorkloadTimedOut, match="wall-clock"):
        list(chats.pool.serve(short, "sha256:img", None, CancelToken()))
    results = chats.join()
    assert isinstance(results["stays"], list) and results["stays"][-1]["type"] == "done"
    assert chats.pool.workers()[0].alive


def test_a_request_that_ignores_its_cancel_gets_the_worker_killed_and_every_request_fails(
        chats: Chats, engine: Engine) -> None:
    chats.start("bystander", act="wait")
    chats.start("deaf", act="deaf")
    assert chats.first["deaf"].wait(5) and chats.first["bystander"].wait(5)
    chats.cancels["deaf"].cancel("stop it")
    results = chats.join()
    assert isinstance(results["deaf"], JobCancelled)
    bystander = results["bystander"]
    assert isinstance(bystander, WorkloadError) and "did not stop within 0.3 s" in str(bystander)
    assert engine.started[0].killed
    assert chats.pool.workers() == [] or not chats.pool.workers()[0].alive


def test_an_output_budget_overrun_fails_that_request_only(chats: Chats) -> None:
    tight = spec("m", PARALLEL, act="tokens", n=50)
    tight = replace(tight, limits=replace(tight.limits, output_events=10))
    chats.start("stays", act="tokens", n=20, delay_s=0.01)
    with pytest.raises(BudgetExceeded, match="more than 10 events"):
        list(chats.pool.serve(tight, "sha256:img", None, CancelToken()))
    results = chats.join()
    assert isinstance(results["stays"], list) and results["stays"][-1]["type"] == "done"
    assert chats.pool.workers()[0].alive


@pytest.mark.parametrize(("act", "says"), [
    ("stranger", "for request 1001, which is not in flight"),
    ("garbage", "not valid JSON"),
    ("untagged", "without the id of its request"),
])
def test_a_worker_that_breaks_the_protocol_is_killed_and_every_request_fails(chats: Chats, engine: Engine,
                                                                               act: str, says: str) -> None:
    chats.start("bystander", act="wait")
    assert chats.first["bystander"].wait(5)
    chats.start("culprit", act=act)
    results = chats.join()
    for name in ("bystander", "culprit"):
        assert isinstance(results[name], ProtocolViolation) and says in str(results[name]), results[name]
    assert engine.started[0].killed
    assert run_on(chats.pool) == ["token", "token", "done"]  # the next request gets a fresh worker
    assert len(engine.started) == 2


def test_a_worker_that_dies_fails_every_request_in_flight(chats: Chats, engine: Engine) -> None:
    chats.start("one", act="wait")
    chats.start("two", act="wait")
    assert chats.first["one"].wait(5) and chats.first["two"].wait(5)
    engine.started[0].exit()
    results = chats.join()
    for name in ("one", "two"):
        assert isinstance(results[name], WorkloadError) and "exited with status 1" in str(results[name])


def run_on(pool: WorkerPool) -> list[str]:
    return [e["type"] for e in pool.serve(spec("m", PARALLEL), "sha256:img", None, CancelToken())]


def test_traced_a_request_is_stamped_on_the_workers_stdin_and_at_its_first_output(engine: Engine,
                                                                                 tmp_path: Path) -> None:
    TRACE.configure(tmp_path / "trace.txt")
    try:
        pool = WorkerPool(engine.start, free_memory_mb=lambda: 100_000)
        run(pool, "llm-chat")
        pool.close()
    finally:
        TRACE.configure(None)
    stamps = read_trace(tmp_path / "trace.txt")["job-llm-chat"]
    # By time, not by line: the reader thread may write its stamp before the writer's.
    assert set(stamps) == {"worker_in", "worker_out"} and stamps["worker_in"] <= stamps["worker_out"]
