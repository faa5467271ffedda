"""Calls over a local Unix socket (socket_calls): the same behaviour as a Ray call to an actor — values and errors
come back as themselves, streams stream and are cancelled when their reader leaves, a call outlives its caller —
over connections kept between calls, and only for the server's own account."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from archipelag.errors import ArchipelagError, NotFound
from archipelag.remote import Unreachable
from archipelag.socket_calls import CallServer, OrderedCalls, SocketCalls, serve_in_thread


class Target:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.stream_ended = asyncio.Event()
        self.call_ended = asyncio.Event()
        self.generator_closed = asyncio.Event()

    async def add(self, a: int, b: int = 0) -> int:
        return a + b

    async def missing(self, job_id: str) -> None:
        raise NotFound(f"job {job_id} does not exist")

    async def broken(self) -> None:
        raise KeyError("a bug")

    async def slow(self, wait_s: float) -> str:
        await asyncio.sleep(wait_s)
        self.call_ended.set()
        return "done"

    async def note(self, text: str) -> None:
        self.sent.append(text)

    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        self.stream_ended.set()

    async def forever(self) -> AsyncIterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
                await asyncio.sleep(0.01)
        finally:
            self.generator_closed.set()

    async def fails_midway(self) -> AsyncIterator[int]:
        yield 1
        raise NotFound("gone midway")

    async def hidden(self) -> int:
        return 42

    async def unpicklable(self) -> Any:
        return lambda: "a closure cannot travel"


METHODS = ("add", "missing", "broken", "slow", "note", "count", "forever", "fails_midway", "unpicklable")


class CountingServer(CallServer):
    accepted = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        await super()._serve(reader, writer)


def served(test: Callable[[Target, CountingServer, SocketCalls], Awaitable[None]], tmp_path: Path) -> None:
    async def run() -> None:
        target = Target()
        server = CountingServer(target, METHODS, tmp_path / "s" / "calls.sock", "test service")
        await server.listen()
        try:
            await test(target, server, SocketCalls(server.path, "test service"))
        finally:
            server.close()

    asyncio.run(run())


def test_calls_return_their_values_over_one_kept_connection(tmp_path: Path) -> None:
    async def test(target: Target, server: CountingServer, calls: SocketCalls) -> None:
        for i in range(10):
            assert await calls.call("add", i, b=1) == i + 1
        assert server.accepted == 1
        assert oct(server.path.stat().st_mode & 0o777) == "0o600"

    served(test, tmp_path)


def test_an_error_raised_on_purpose_comes_back_as_itself_and_a_bug_in_words(tmp_path: Path) -> None:
    async def test(target: Target, server: CountingServer, calls: SocketCalls) -> None:
        with pytest.raises(NotFound, match="job j1 does not exist"):
            await calls.call("missing", "j1")
        with pytest.raises(ArchipelagError, match="test service failed: KeyError") as raised:
            await calls.call("broken")
        assert type(raised.value) is ArchipelagError
        with pytest.raises(ArchipelagError, match="has no method 'hidden'"):
            await calls.call("hidden")
        with pytest.raises(ArchipelagError, match="test service failed: .*pickle"):
            await calls.call("unpicklable")
        assert await calls.call("add", 2, 3) == 5  # the connection is still good
        assert server.accepted == 1

    served(test, tmp_path)


def test_a_stream_yields_each_item_then_its_end_and_the_connection_serves_on(tmp_path: Path) -> None:
    async def test(target: Target, server: CountingServer, calls: SocketCalls) -> None:
        assert [i async for i in calls.stream("count", 5)] == [0, 1, 2, 3, 4]
        assert target.stream_ended.is_set()
        with pytest.raises(NotFound, match="gone midway"):
            async for item in calls.stream("fails_midway"):
                assert item == 1
        assert [i async for i in calls.stream("count", 2)] == [0, 1]
        assert await calls.call("add", 1) == 1
        assert server.accepted == 1

    served(test, tmp_path)


def test_leaving_a_stream_early_cancels_its_generator_where_it_runs(tmp_path: Path) -> None:
    async def test(target: Target, server: CountingServer, calls: SocketCalls) -> None:
        stream = calls.stream("forever")
        assert [await anext(stream) for _ in range(3)] == [0, 1, 2]
        await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(target.generator_closed.wait(), 5)
        assert await calls.call("add", 1) == 1  # on a new connection: the left one is closed
        assert server.accepted == 2

    served(test, tmp_path)


def test_a_call_runs_to_its_end_when_its_caller_is_cancelled(tmp_path: Path) -> None:
    async def test(target: Target, server: CountingServer, calls: SocketCalls) -> None:
        caller = asyncio.ensure_future(calls.call("slow", 0.3))
        await asyncio.sleep(0.1)
        caller.cancel()
        await asyncio.wait_for(target.call_ended.wait(), 5)

    served(test, tmp_path)


def test_a_sent_notice_arrives_without_an_answer(tmp_path: Path) -> None:
    async def test(target: Target, server: CountingServer, calls: SocketCalls) -> None:
        calls.send("note", "first")
        calls.send("hidden")  # not served: dropped, and nothing is answered that a later call would read
        calls.send("note", "second")
        for _ in range(100):
            if len(target.sent) == 2:
                break
            await asyncio.sleep(0.01)
        assert target.sent == ["first", "second"]
        assert await calls.call("add", 7) == 7

    served(test, tmp_path)


def test_nobody_listening_is_unreachable_unless_waking_brings_the_server_up(tmp_path: Path) -> None:
    async def run() -> None:
        target = Target()
        server = CallServer(target, METHODS, tmp_path / "calls.sock", "test service")
        with pytest.raises(Unreachable, match="test service is not answering"):
            await SocketCalls(server.path, "test service").call("add", 1)
        calls = SocketCalls(server.path, "test service", wake=server.listen)
        assert await calls.call("add", 1) == 1
        server.close()

    asyncio.run(run())


def test_a_server_started_again_is_reached_on_a_new_connection(tmp_path: Path) -> None:
    """An actor restarted by Ray listens anew at the same path; a kept connection to the old one is dropped."""
    async def run() -> None:
        first = CallServer(Target(), METHODS, tmp_path / "calls.sock", "test service")
        await first.listen()
        calls = SocketCalls(first.path, "test service")
        assert await calls.call("add", 1) == 1
        first.close()
        first.path.unlink()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:  # its connection's handler ends
            task.cancel()
        await asyncio.sleep(0.05)
        second = CallServer(Target(), METHODS, first.path, "test service")
        await second.listen()
        assert await calls.call("add", 2) == 2
        second.close()

    asyncio.run(run())


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder any account can reach (pytest's own are root's alone), for the other account's end."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another account")
    folder = Path(tempfile.mkdtemp(prefix="socket-calls-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder)


def test_another_account_is_refused_even_where_the_files_mode_lets_it_connect(open_dir: Path) -> None:
    """The attack: a process of another account (a host's node runs as one) finds the socket open to it. It gets
    no answer, and nothing runs."""
    async def run() -> None:
        target = Target()
        server = CallServer(target, METHODS, open_dir / "calls.sock", "test service")
        await server.listen()
        server.path.chmod(0o666)
        request = (b"import os, pickle, socket, struct, sys\n"
                   b"os.setgid(65534); os.setuid(65534)\n"
                   b"s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                   b"notice = pickle.dumps(('send', 'note', ('intruder',), {}))\n"
                   b"call = pickle.dumps(('call', 'add', (1,), {}))\n"
                   b"try:\n"
                   b"    s.sendall(struct.pack('!I', len(notice)) + notice)\n"
                   b"    s.sendall(struct.pack('!I', len(call)) + call); print(repr(s.recv(100)))\n"
                   b"except (ConnectionResetError, BrokenPipeError):\n"
                   b"    print('reset')\n")
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", request, str(server.path),
                                                     stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(child.communicate(), 30)
        assert out.strip() in (b"b''", b"reset"), out  # closed without a word
        assert target.sent == []
        server.close()

    asyncio.run(run())


def test_a_client_does_not_call_a_socket_another_account_serves(open_dir: Path) -> None:
    """The other way round: a server of another account at the path (one left by an attacker) is not spoken to."""
    path = open_dir / "calls.sock"
    script = ("import os, socket, sys, time\n"
              "os.setgid(65534); os.setuid(65534)\n"
              "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(); print('up', flush=True)\n"
              "c, _ = s.accept(); print(repr(c.recv(100)), flush=True); time.sleep(5)\n")

    async def run() -> tuple[Any, bytes]:
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(path),
                                                     stdout=asyncio.subprocess.PIPE)
        assert child.stdout is not None
        assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"up"
        with pytest.raises(Unreachable):
            await SocketCalls(path, "test service").call("add", 1)
        said = await asyncio.wait_for(child.stdout.readline(), 30)
        child.kill()
        await child.wait()
        return child.returncode, said

    _, said = asyncio.run(run())
    assert said.strip() == b"b''"  # the client sent nothing


class OneAtATime:
    """A plain target, as placement is: each call runs at once, in turn."""

    def __init__(self) -> None:
        self.handled: list[str] = []

    def note(self, text: str) -> None:
        self.handled.append(text)

    def rank(self, text: str) -> list[str]:
        self.handled.append(text)
        return list(self.handled)

    def refuse(self) -> None:
        raise NotFound("no such host")


def test_ordered_calls_are_handled_in_the_order_made_notices_included(tmp_path: Path) -> None:
    """As Ray runs one caller's calls to a one-at-a-time actor: a notice made before a call is handled first."""
    target = OneAtATime()
    server = serve_in_thread(target, ("note", "rank", "refuse"), tmp_path / "placement.sock", "placement")

    async def run() -> None:
        calls = OrderedCalls(server.path, "placement")
        calls.send("note", "assigned h1")
        first = asyncio.ensure_future(calls.call("rank", "rank 1"))
        calls.send("note", "released h1")
        second = asyncio.ensure_future(calls.call("rank", "rank 2"))
        assert await first == ["assigned h1", "rank 1"]
        assert await second == ["assigned h1", "rank 1", "released h1", "rank 2"]
        with pytest.raises(NotFound, match="no such host"):
            await calls.call("refuse")
        assert await calls.call("rank", "after") == [*target.handled]

    asyncio.run(run())
    assert target.handled[-1] == "after"


def test_ordered_calls_made_before_the_server_listens_wait_for_it_in_order(tmp_path: Path) -> None:
    target = OneAtATime()
    path = tmp_path / "placement.sock"
    servers: list[CallServer] = []

    async def wake() -> None:  # as a Ray call waits for the actor to be up
        servers.append(serve_in_thread(target, ("note", "rank"), path, "placement"))

    async def run() -> None:
        calls = OrderedCalls(path, "placement", wake)
        calls.send("note", "first")
        assert await calls.call("rank", "second") == ["first", "second"]

    asyncio.run(run())
    assert len(servers) == 1


def test_ordered_calls_waiting_when_the_server_goes_fail_and_the_next_connects_again(tmp_path: Path) -> None:
    path = tmp_path / "placement.sock"

    async def run() -> None:
        first = CallServer(Target(), METHODS, path, "placement")
        await first.listen()
        calls = OrderedCalls(path, "placement")
        waiting = asyncio.ensure_future(calls.call("slow", 5))
        await asyncio.sleep(0.1)
        first.close()
        for task in asyncio.all_tasks() - {asyncio.current_task(), waiting}:
            if "_serve" in repr(task.get_coro()):
                task.cancel()  # the server's end of the connection closes
        with pytest.raises(Unreachable, match="placement is not answering"):
            await asyncio.wait_for(waiting, 5)
        second = CallServer(Target(), METHODS, path, "placement")
        await second.listen()
        assert await calls.call("add", 2, 3) == 5
        second.close()

    asyncio.run(run())
