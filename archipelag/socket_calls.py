"""Calls over a local Unix socket: how a client on the same machine reaches an object in an actor without a Ray
hop each way (``SocketCalls``, a ``remote.Calls``; ``OrderedCalls``, which keeps one caller's calls in order), and
the actor's side that answers them (``CallServer``, or ``serve_in_thread`` for an actor whose thread Ray holds).

On the first token's path each Ray call or streamed item between two of the coordinator's processes took 1–2.5 ms
(0.7–1.0 ms on an idle machine), where a frame over a kept Unix socket took 0.1–0.4 ms. The API's replicas run on
the jobs service's machine (the coordinator's resource), so they reach it this way, as the jobs service reaches
placement. Frames are pickles, as Ray's are between the same processes: both ends check that the other runs as
their own account (SO_PEERCRED), and the sockets lie in a folder only that account may enter
(``nodes.services_dir``).

A call runs to its end even when its caller leaves (as ``remote.remote_apart`` sends Ray calls); a stream whose
reader leaves early is cancelled where it runs, as ``RayCalls.stream`` cancels its generator.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import logging
import os
import pickle
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Final

from archipelag.errors import ArchipelagError
from archipelag.remote import Unreachable
from archipelag.unix_sockets import peer_uid

log = logging.getLogger(__name__)

_LENGTH: Final = struct.Struct("!I")
MAX_IDLE_CONNECTIONS: Final = 16  # kept open for the next call; more, while many streams run, are closed after

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _frame(value: Any) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


async def _read_frame(reader: asyncio.StreamReader, ahead: bytes = b"") -> Any:
    """The next frame's value (``ahead``: its first bytes, already read); None when the other end closed between
    frames."""
    try:
        header = ahead + await reader.readexactly(_LENGTH.size - len(ahead))
    except asyncio.IncompleteReadError as exc:
        if not exc.partial and not ahead:
            return None
        raise
    return pickle.loads(await reader.readexactly(_LENGTH.unpack(header)[0]))  # our own account's: see the module


def _own_account(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    return sock is not None and peer_uid(sock) == os.getuid()


def _as_raised(exc: BaseException, what: str) -> ArchipelagError:
    """What the caller gets: an error raised on purpose as itself (``RayCalls`` does the same), any other as a
    failure of ``what``."""
    if isinstance(exc, ArchipelagError):
        try:
            pickle.dumps(exc)
        except Exception:  # noqa: BLE001 - an error that does not travel is said in words
            log.warning("%s: %r does not pickle", what, exc)
        else:
            return exc
    return ArchipelagError(f"{what} failed: {exc!r}")


class CallServer:
    """Answers ``SocketCalls`` and ``OrderedCalls`` for ``target``'s ``methods`` (coroutine functions; plain
    methods, run in turn as their frames come; async generators, for streams), on the event loop it is started
    on."""

    def __init__(self, target: Any, methods: Iterable[str], path: Path, what: str) -> None:
        self._target = target
        self._methods = frozenset(methods)
        self.path = path
        self._what = what
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def listen(self) -> None:
        """Listen at ``path`` (again, if the file went away); whatever was left there goes first."""
        if self._server is not None and self.path.exists():
            return
        if self._server is not None:
            self._server.close()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, str(self.path))
        self.path.chmod(0o600)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not _own_account(writer):
            log.warning("%s: refused a connection from another account", self._what)
            writer.close()
            return
        ahead: bytes | None = b""
        try:
            while ahead is not None and (request := await _read_frame(reader, ahead)) is not None:
                kind, method, args, kwargs = request
                ahead = b""
                if kind == "send":
                    if method in self._methods:
                        self._sent(method, args, kwargs)
                    continue  # no answer
                if method not in self._methods:
                    writer.write(_frame(("raise", ArchipelagError(f"{self._what} has no method {method!r}"))))
                elif kind == "call":
                    writer.write(await self._called(method, args, kwargs))
                else:
                    ahead = await self._streamed(reader, writer, method, args)  # None: the reader left
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ValueError, TypeError, pickle.UnpicklingError):
            pass  # the caller went away, or sent what is no frame: its connection ends
        finally:
            writer.close()

    async def _called(self, method: str, args: Any, kwargs: Any) -> bytes:
        """The answer's frame. A plain method runs here, before the connection's next frame is read (so a target
        that runs one call at a time answers them in order); a coroutine as a task that runs on if this connection
        goes."""
        try:
            result = getattr(self._target, method)(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await asyncio.shield(self._spawn(result))
            return _frame(("ok", result))
        except Exception as exc:  # handed to the caller (a value that does not pickle too)
            if not isinstance(exc, ArchipelagError):
                log.warning("%s.%s failed", self._what, method, exc_info=exc)
            return _frame(("raise", _as_raised(exc, self._what)))

    def _sent(self, method: str, args: Any, kwargs: Any) -> None:
        try:
            result = getattr(self._target, method)(*args, **kwargs)
        except Exception:  # a notice's failure is nobody's to hear
            log.warning("%s.%s failed", self._what, method, exc_info=True)
            return
        if inspect.isawaitable(result):
            self._spawn(result).add_done_callback(self._said)

    async def _streamed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str,
                        args: Any) -> bytes | None:
        """Send the generator's items, then its end or error. A caller sends nothing while its stream runs, so
        anything it sends before the end means it left: the generator is cancelled, and None returned. Else
        what it sent as the end went out (the start of its next request, read while watching), usually b""."""
        pump = asyncio.ensure_future(self._pump(writer, getattr(self._target, method)(*args)))
        gone = asyncio.ensure_future(reader.read(1))
        await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        if pump.done():
            pump.result()  # a failed write: the connection ends
            if not gone.done():
                gone.cancel()  # a read cancelled in its wait takes no byte
                await asyncio.wait({gone})  # its wait ended: the next request's read may wait in its place
            return b"" if gone.cancelled() else gone.result() or None
        pump.cancel()
        await asyncio.wait({pump})  # the generator's own cleanup runs before the connection ends
        return None

    async def _pump(self, writer: asyncio.StreamWriter, items: AsyncIterator[Any]) -> None:
        try:
            async for item in items:
                writer.write(_frame(("item", item)))
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            writer.write(_frame(("raise", _as_raised(exc, self._what))))
        else:
            writer.write(_frame(("end", None)))

    def _spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _said(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s: a notice failed", self._what, exc_info=task.exception())


class SocketCalls:
    """Calls to the ``CallServer`` at ``path``, over connections kept open between calls (on the event loop that
    first calls; another loop connects per call). ``wake``: what brings the server up when nothing answers at
    ``path`` (its actor restarted: a Ray call to its ``start``), tried once before the call fails as
    ``Unreachable``."""

    def __init__(self, path: Path, what: str, wake: Callable[[], Awaitable[None]] | None = None) -> None:
        self._path = path
        self._what = what
        self._wake = wake
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[Connection] = []
        self._sends: set[asyncio.Task[None]] = set()

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        reader, writer = await self._take()
        kept = False
        try:
            writer.write(_frame(("call", method, args, kwargs)))
            await writer.drain()
            answer = await _read_frame(reader)
            if answer is None:
                raise self._lost()
            kept = True
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise self._lost(exc) from None
        finally:
            self._release(reader, writer, kept)
        return _value(answer)

    def send(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Fire-and-forget: a lost notice is logged, never raised."""
        task = asyncio.get_running_loop().create_task(self._send(method, args, kwargs))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, method: str, args: Any, kwargs: Any) -> None:
        try:
            reader, writer = await self._take()
            writer.write(_frame(("send", method, args, kwargs)))
            await writer.drain()
        except (ArchipelagError, OSError):
            log.warning("%s.%s was not sent", self._what, method, exc_info=True)
        else:
            self._release(reader, writer, True)

    async def stream(self, method: str, *args: Any) -> AsyncIterator[Any]:
        """The items the generator ``method`` yields, each as it comes. Leaving early closes the connection,
        which cancels the generator where it runs."""
        reader, writer = await self._take()
        finished = False
        try:
            writer.write(_frame(("stream", method, args, {})))
            await writer.drain()
            while True:
                answer = await _read_frame(reader)
                if answer is None:
                    raise self._lost()
                kind, value = answer
                if kind == "item":
                    yield value
                    continue
                finished = True
                if kind == "raise":
                    raise value
                return
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise self._lost(exc) from None
        finally:
            self._release(reader, writer, finished)

    async def _take(self) -> Connection:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        if self._loop is loop:
            while self._idle:
                reader, writer = self._idle.pop()
                if not reader.at_eof() and not writer.is_closing():
                    return reader, writer
                writer.close()
        return await self._connect()

    def _release(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, whole: bool) -> None:
        """Keep a connection whose exchange ended whole for the next call, unless it is another loop's or enough
        are kept; close any other."""
        if whole and asyncio.get_running_loop() is self._loop and len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append((reader, writer))
        else:
            writer.close()

    async def _connect(self) -> Connection:
        return await _connect(self._path, self._what, self._wake)

    def _lost(self, exc: BaseException | None = None) -> Unreachable:
        return _lost(self._what, exc)


async def _connect(path: Path, what: str, wake: Callable[[], Awaitable[None]] | None) -> Connection:
    """A connection to the server at ``path``, which must run as this account; ``wake`` it once if nobody answers."""
    try:
        return await _open(path)
    except OSError as exc:
        if wake is None:
            raise _lost(what, exc) from None
    await wake()
    try:
        return await _open(path)
    except OSError as exc:
        raise _lost(what, exc) from None


async def _open(path: Path) -> Connection:
    reader, writer = await asyncio.open_unix_connection(str(path))
    if not _own_account(writer):
        writer.close()
        raise ConnectionRefusedError(f"{path} is not served by this account")
    return reader, writer


def _lost(what: str, exc: BaseException | None = None) -> Unreachable:
    why = f" ({type(exc).__name__})" if exc is not None else ""
    return Unreachable(f"the {what} is not answering{why}; retry shortly")


class OrderedCalls:
    """Calls and notices over one connection, handled in the order they are made, as Ray keeps one caller's calls
    to an actor that runs one call at a time (placement): a notice made before a call is handled before it. Each
    frame is written as it is made (pipelined); the answers come back in order, each to its call. Used on one
    event loop. ``wake``: what brings the server up when nothing answers (a Ray call that returns once the actor
    is up), tried once per connection before its calls fail as ``Unreachable``."""

    def __init__(self, path: Path, what: str, wake: Callable[[], Awaitable[None]] | None = None) -> None:
        self._path = path
        self._what = what
        self._wake = wake
        self._link: _Link | None = None

    def call(self, method: str, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """The call's answer, to await; the call goes out now, before anything made after it (as Ray's ``remote``
        sends it), whenever the answer is awaited."""
        answer: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()
        self._issue(("call", method, args, kwargs), answer)
        return _answer(answer)

    def send(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Fire-and-forget: a notice that cannot go (or is lost with its connection) is logged, never raised."""
        try:
            self._issue(("send", method, args, kwargs), None)
        except Exception:  # e.g. an argument that does not pickle
            log.warning("%s.%s was not sent", self._what, method, exc_info=True)

    def _issue(self, request: tuple[str, str, Any, Any], answer: asyncio.Future[tuple[str, Any]] | None) -> None:
        if self._link is None or self._link.closed:
            self._link = _Link(self._path, self._what, self._wake)
        self._link.issue(_frame(request), answer)


async def _answer(answer: asyncio.Future[tuple[str, Any]]) -> Any:
    return _value(await answer)  # a caller that leaves does not stop the call: its answer is dropped


def _value(answer: tuple[str, Any]) -> Any:
    """A call's answer frame as its caller gets it: the value, or the error raised."""
    kind, value = answer
    if kind == "raise":
        raise value
    return value


class _Link:
    """One connection of ``OrderedCalls``: frames made while it connects wait, in order, and go out once it is up;
    the answers are matched to their calls in order. When it fails, every call still waiting on it fails."""

    def __init__(self, path: Path, what: str, wake: Callable[[], Awaitable[None]] | None) -> None:
        self._what = what
        self.closed = False
        self._writer: asyncio.StreamWriter | None = None
        self._held: list[tuple[bytes, asyncio.Future[tuple[str, Any]] | None]] = []
        self._waiting: collections.deque[asyncio.Future[tuple[str, Any]]] = collections.deque()
        self._task = asyncio.get_running_loop().create_task(self._run(path, wake))

    def issue(self, frame: bytes, answer: asyncio.Future[tuple[str, Any]] | None) -> None:
        if self._writer is None:
            self._held.append((frame, answer))
            return
        self._write(frame, answer)

    def _write(self, frame: bytes, answer: asyncio.Future[tuple[str, Any]] | None) -> None:
        assert self._writer is not None
        if answer is not None:
            self._waiting.append(answer)
        self._writer.write(frame)

    async def _run(self, path: Path, wake: Callable[[], Awaitable[None]] | None) -> None:
        writer: asyncio.StreamWriter | None = None
        failure: BaseException | None = None
        try:
            reader, writer = await _connect(path, self._what, wake)
            self._writer = writer
            for frame, answer in self._held:
                self._write(frame, answer)
            self._held.clear()
            while (answer := await _read_frame(reader)) is not None:
                waiting = self._waiting.popleft()
                if not waiting.done():
                    waiting.set_result(answer)
        except (ArchipelagError, OSError, asyncio.IncompleteReadError, IndexError, pickle.UnpicklingError) as exc:
            failure = exc
        finally:
            self.closed = True
            if writer is not None:
                writer.close()
            lost = failure if isinstance(failure, Unreachable) else _lost(self._what, failure)
            for waiting in [*self._waiting, *(a for _, a in self._held if a is not None)]:
                if not waiting.done():
                    waiting.set_exception(lost)
            dropped = sum(1 for _, a in self._held if a is None)
            if dropped:
                log.warning("%s: %d notices were not sent", self._what, dropped)


def public_methods(cls: type) -> tuple[str, ...]:
    """The names of ``cls``'s public methods, its bases' included."""
    return tuple(name for name, _ in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_"))


def take_turns(cls: type) -> None:
    """Make every public method of ``cls`` run under its instance's ``_turn`` lock (a ``threading.RLock`` the
    instance sets first): for an actor that Ray runs one call at a time and that also serves a socket
    (``serve_in_thread``), so a call from either runs alone, as Ray alone ran them."""
    for name in public_methods(cls):
        setattr(cls, name, _in_turn(getattr(cls, name)))


def _in_turn(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def in_turn(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._turn:
            return method(self, *args, **kwargs)

    return in_turn


def serve_in_thread(target: Any, methods: Iterable[str], path: Path, what: str,
                    timeout_s: float = 10.0) -> CallServer:
    """A ``CallServer`` for ``target`` on an event loop of its own, in a daemon thread, listening when this
    returns: for an actor whose own thread Ray holds (a plain, one-call-at-a-time actor; the target then takes
    its own lock, since Ray's calls run beside these)."""
    server = CallServer(target, methods, path, what)
    listening = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(server.listen())
        except BaseException as exc:  # noqa: BLE001 - said to the starting thread
            failed.append(exc)
            listening.set()
            return
        listening.set()
        loop.run_forever()

    threading.Thread(target=run, name=f"{what} socket", daemon=True).start()
    if not listening.wait(timeout_s) or failed:
        raise ArchipelagError(f"the {what} could not listen at {path}: {failed[0] if failed else 'timed out'}")
    return server
