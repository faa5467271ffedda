"""The bridge's process: a Ray driver of the hosts' cluster that answers the coordinator's services on a Unix
socket (``bridge/wire.py``), a request per connection, and reaches each host's agent by its name.

Started by the coordinator (``bridge/client.py``: ``BridgeProcess``) with one line on its input,
``{"op": "start", "settings", "address", "socket"}``; it answers ``{"ok": {}}`` on what was its standard output
once it listens, and leaves the cluster and exits when its input closes (the coordinator stopped or died).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Final

from archipelag.actors.client import actor_name
from archipelag.bridge import wire
from archipelag.catalog import Manifest, load_catalog, lookup
from archipelag.errors import ArchipelagError, HostLost, ValidationFailed
from archipelag.gate.wire import TICKET_BYTES
from archipelag.ids import HostId
from archipelag.metrics.trace import TRACE
from archipelag.protocol import holds_output
from archipelag.runtimes.base import JobSpec
from archipelag.settings import Settings

log = logging.getLogger(__name__)

ASK_TIMEOUT_S: Final = {"cancel": 10.0, "control": 30.0, "view": 10.0, "report": 10.0, "kill": 10.0}


class Bridge:
    """The requests' handlers; the agents' handles, found by name and dropped when found gone."""

    def __init__(self, settings: Settings, catalog: dict[Any, Manifest]) -> None:
        self._settings = settings
        self._catalog = catalog
        self._agents: dict[HostId, Any] = {}
        self.max_request_bytes = settings.max_job_input_bytes + TICKET_BYTES

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await reader.readline()
            except ValueError:  # past the reader's limit
                raise ValidationFailed("a bridge request is one line within the bridge's limit") from None
            request = wire.parse_request(line, self.max_request_bytes)
            if isinstance(request, wire.Run):
                await self._run(request, reader, writer)
            else:
                writer.write(wire.encode({"ok": await self._ask(request)}))
        except ArchipelagError as exc:
            writer.write(wire.encode(wire.error_answer(exc)))
        except Exception as exc:  # the caller hears it; the bridge serves the next request
            log.exception("bridge request failed")
            writer.write(wire.encode(wire.error_answer(HostLost(f"the bridge failed the request: {exc!r}"))))
        finally:
            try:
                await writer.drain()
                writer.close()
            except OSError:  # the caller left
                pass

    async def _ask(self, request: wire.Ask) -> Any:
        """One answer; a handle found gone is looked up again once (the host may have joined anew)."""
        import ray

        from archipelag.actors.client import LOST

        if request.op == "measure":
            return await self._measure(request)
        for retry in (True, False):
            handle = await self._agent(request.host)
            try:
                return await asyncio.wait_for(self._call(handle, request), ASK_TIMEOUT_S[request.op])
            except LOST:
                self._agents.pop(request.host, None)
                if not retry:
                    raise HostLost(f"host {request.host} does not answer: its agent is gone",
                                   host_id=request.host) from None
            except TimeoutError:
                raise HostLost(f"host {request.host} does not answer within {ASK_TIMEOUT_S[request.op]:g} s",
                               host_id=request.host) from None
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, ArchipelagError):
                    raise exc.cause from None
                raise HostLost(f"host {request.host} failed the request: {exc.cause!r}",
                               host_id=request.host) from None
        raise AssertionError("unreachable")

    @staticmethod
    async def _call(handle: Any, request: wire.Ask) -> Any:
        import ray

        from archipelag.actors.driver import view_dict

        if request.op == "cancel":
            return bool(await handle.cancel.remote(request.job_id, request.reason))
        if request.op == "control":
            return view_dict(await handle.control.remote(request.command, request.by, request.reason))
        if request.op == "view":
            return view_dict(await handle.view.remote())
        if request.op == "report":
            await handle.report.remote()
            return None
        ray.kill(handle, no_restart=True)
        return None

    async def _measure(self, request: wire.Ask) -> dict[str, Any]:
        """The join benchmark on the node the host registered with (the prober's own checks and deadline)."""
        from archipelag.placement.prober import RayProber

        assert request.claims is not None
        try:
            measured = await asyncio.to_thread(RayProber(self._settings.benchmark).measure, request.host,
                                               request.node_id, request.claims)
        except Exception as exc:  # noqa: BLE001 - any failure is the host's: placement flags it
            raise HostLost(f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"[:wire.MAX_TEXT],
                           host_id=request.host) from None
        return dataclasses.asdict(measured)

    async def _run(self, request: wire.Run, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The host's batches as they come, then how the stream ended; the caller leaving cancels the run."""
        import ray

        job = request.job
        if job.limits is None:
            raise ValidationFailed("a run names its limits", errors={"limits": "missing"})
        spec = JobSpec(job.job_id, lookup(self._catalog, job.workload), job.input, job.limits, job.ticket,
                       job.attempt)
        handle = await self._agent(request.host)
        if TRACE.on:
            TRACE.stamp(job.job_id, "bridge_in")
        stream = handle.run.remote(spec)
        left = asyncio.ensure_future(reader.read(1))  # the caller closing its end
        forward = asyncio.ensure_future(self._forward(request.host, job.job_id, stream, writer))
        done, _ = await asyncio.wait({left, forward}, return_when=asyncio.FIRST_COMPLETED)
        if forward in done and not isinstance(forward.exception(), ConnectionError):
            left.cancel()
            forward.result()
            return
        forward.cancel()  # the caller left (its end closed, or a write to it failed)
        try:
            ray.cancel(stream, recursive=False)
        except Exception:  # best effort: the dispatcher's lease fenced this run already
            log.debug("could not cancel the run of %s on %s", job.job_id, request.host, exc_info=True)

    async def _forward(self, host_id: HostId, job_id: str, stream: Any, writer: asyncio.StreamWriter) -> None:
        from ray.exceptions import RayTaskError, TaskCancelledError

        from archipelag.actors.client import LOST

        last: dict[str, Any]
        first = TRACE.on
        batches = _Pump(stream)
        try:
            while (batch := await batches.next()) is not None:
                if first and holds_output(batch):
                    TRACE.stamp(job_id, "bridge_out")
                    first = False
                writer.write(wire.encode({"batch": batch}))
                await writer.drain()
            last = {"end": True}
        except LOST as exc:
            self._agents.pop(host_id, None)
            last = {"lost": f"host {host_id} was lost while running the job: {type(exc).__name__}"}
        except TaskCancelledError:
            last = {"cancelled": "the job's run was cancelled"}
        except RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, ArchipelagError) else HostLost(
                f"host {host_id} failed the job's run: {exc.cause!r}", host_id=host_id)
            last = wire.error_answer(cause)
        finally:
            batches.stop()
        writer.write(wire.encode(last))
        await writer.drain()

    async def _agent(self, host_id: HostId) -> Any:
        import ray

        handle = self._agents.get(host_id)
        if handle is None:
            try:
                handle = await asyncio.to_thread(ray.get_actor, actor_name(host_id),
                                                 namespace=self._settings.ray_namespace)
            except ValueError:
                raise HostLost(f"host {host_id} has no running agent", host_id=host_id) from None
            self._agents[host_id] = handle
        return handle


class _Pump:
    """A host's Ray stream read by a thread of its own: there a blocking read of each item costs less time and
    CPU than awaiting it on the loop, where each item crossed threads twice as futures (a micro-benchmark of both,
    items 10 ms apart: 1.2–1.5 ms from the host's yield to the reader against 1.65–1.7 ms, and 0.9–1.1 ms of this
    process's CPU per item against 1.4). ``next`` gives the batches in order, then None at the stream's end, or
    raises what reading it raised. The thread looks for ``stop`` at least every ``POLL_S``, so one whose host
    hangs does not outlive its run."""

    POLL_S: Final = 1.0

    def __init__(self, stream: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue[list[Any] | BaseException | None] = asyncio.Queue()
        self._stopped = threading.Event()
        threading.Thread(target=self._read, args=(stream,), name="bridge-stream", daemon=True).start()

    async def next(self) -> list[Any] | None:
        item = await self._items.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        self._stopped.set()

    def _read(self, stream: Any) -> None:
        import ray

        item: BaseException | None = None  # None: the end
        try:
            while not self._stopped.is_set():
                ready, _ = ray.wait([stream], timeout=self.POLL_S)
                if not ready:
                    continue
                try:
                    ref = next(stream)
                except StopIteration:
                    break
                self._put(list(ray.get(ref)))
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which raises it in `next`
            item = exc
        self._put(item)

    def _put(self, item: list[Any] | BaseException | None) -> None:
        if self._stopped.is_set():
            return
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:  # the loop closed: the bridge is stopping
            self._stopped.set()


async def _serve(settings: Settings, path: Path, replies: Any) -> None:
    TRACE.configure(settings.trace_file)
    bridge = Bridge(settings, load_catalog(settings.workloads_dir))
    path.unlink(missing_ok=True)  # one left by a bridge that was killed
    server = await asyncio.start_unix_server(bridge.connection, path=str(path),
                                             limit=bridge.max_request_bytes + 2)
    path.chmod(0o600)
    _reply(replies, {"ok": {}})
    closed = asyncio.Event()

    def read_input() -> None:
        if not os.read(sys.stdin.fileno(), 4096):  # end of input: the coordinator is gone
            closed.set()

    asyncio.get_running_loop().add_reader(sys.stdin.fileno(), read_input)
    async with server:
        await closed.wait()


def _reply(replies: Any, answer: dict[str, Any]) -> None:
    replies.write(json.dumps(answer) + "\n")
    replies.flush()


def main() -> None:
    """The answer to ``start`` goes to the coordinator on what was standard output; anything else printed goes to
    standard error (the bridge's log)."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING)
    try:
        start = json.loads(sys.stdin.readline())
        if not isinstance(start, dict) or start.get("op") != "start":
            raise ValidationFailed("a bridge's first request is start")
        settings = Settings.model_validate(start["settings"])
        import ray

        from archipelag.nodes import keep_loopback_node_addresses

        keep_loopback_node_addresses()
        ray.init(address=start["address"], namespace=settings.ray_namespace, logging_level=logging.WARNING,
                 log_to_driver=False)
    except Exception as exc:  # said to the coordinator, and in the log
        log.exception("the bridge did not start")
        _reply(replies, {"error": {"code": HostLost.code, "message": f"the bridge did not start: {exc!r}"}})
        raise SystemExit(1) from None
    try:
        asyncio.run(_serve(settings, Path(start["socket"]), replies))
    finally:
        ray.shutdown()
