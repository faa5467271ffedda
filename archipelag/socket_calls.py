"""Calls over a local Unix socket: how a client on the same machine reaches an object in an actor without a Ray
hop each way (``SocketCalls``, a ``remote.Calls``), and the actor's side that answers them (``CallServer``).

On the first token's path each Ray call or streamed item between two of the coordinator's processes took 1–2.5 ms
(0.7–1.0 ms on an idle machine), where a frame over a kept Unix socket took 0.1–0.4 ms. The API's replicas run on
the jobs service's machine (the coordinator's resource), so they reach it this way. Frames are pickles, as Ray's
are between the same processes: both ends check that the other runs as their own account (SO_PEERCRED), and the
socket lies in a folder only that account may enter.

A call runs to its end even when its caller leaves (as ``remote.remote_apart`` sends Ray calls); a stream whose
reader leaves early is cancelled where it runs, as ``RayCalls.stream`` cancels its generator.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import struct
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
    """Answers ``SocketCalls`` for ``target``'s ``methods`` (coroutine functions, or async generators for
    streams), on the event loop it is started on."""

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
                        self._spawn(getattr(self._target, method)(*args, **kwargs))
                    continue  # no answer
                if method not in self._methods:
                    writer.write(_frame(("raise", ArchipelagError(f"{self._what} has no method {method!r}"))))
                elif kind == "call":
                    writer.write(_frame(await self._called(method, args, kwargs)))
                else:
                    ahead = await self._streamed(reader, writer, method, args)  # None: the reader left
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ValueError, TypeError, pickle.UnpicklingError):
            pass  # the caller went away, or sent what is no frame: its connection ends
        finally:
            writer.close()

    async def _called(self, method: str, args: Any, kwargs: Any) -> tuple[str, Any]:
        task = self._spawn(getattr(self._target, method)(*args, **kwargs))  # runs on if this connection goes
        try:
            return "ok", await asyncio.shield(task)
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            return "raise", _as_raised(exc, self._what)

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
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not isinstance(task.exception(),
                                                                                   ArchipelagError):
            log.warning("%s: a call failed", self._what, exc_info=task.exception())


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
            if kept:
                self._give(reader, writer)
            else:
                writer.close()
        kind, value = answer
        if kind == "raise":
            raise value
        return value

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
            self._give(reader, writer)

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
            if finished:
                self._give(reader, writer)
            else:
                writer.close()

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

    def _give(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Keep a connection for the next call, unless it is another loop's or enough are kept."""
        if asyncio.get_running_loop() is self._loop and len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append((reader, writer))
        else:
            writer.close()

    async def _connect(self) -> Connection:
        try:
            return await self._open()
        except OSError as exc:
            if self._wake is None:
                raise self._lost(exc) from None
        await self._wake()
        try:
            return await self._open()
        except OSError as exc:
            raise self._lost(exc) from None

    async def _open(self) -> Connection:
        reader, writer = await asyncio.open_unix_connection(str(self._path))
        if not _own_account(writer):
            writer.close()
            raise ConnectionRefusedError(f"{self._path} is not served by this account")
        return reader, writer

    def _lost(self, exc: BaseException | None = None) -> Unreachable:
        why = f" ({type(exc).__name__})" if exc is not None else ""
        return Unreachable(f"the {self._what} is not answering{why}; retry shortly")
