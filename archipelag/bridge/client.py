"""The coordinator's side of the bridge: its process (``BridgeProcess``), and each host as the jobs service, the
API and placement see it (``BridgedAgent``), reached through the bridge's socket in JSON lines that are checked
here field by field. No Ray in this module."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, Final

from archipelag.actors.controls import AgentView, Command, Controller
from archipelag.actors.driver import end_child, read_view
from archipelag.bridge import wire
from archipelag.errors import ArchipelagError, BridgeDown, HostLost, JobCancelled
from archipelag.ids import HostId, JobId
from archipelag.nodes import RunAs, die_with_parent, hosts_dir
from archipelag.placement.measured import Claims, Measurement
from archipelag.protocol import Event, error_event
from archipelag.runtimes.base import JobSpec
from archipelag.settings import Settings

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES: Final = 64 * 1024 * 1024  # one batch of a host's events (the relay holds each job to its budget)
MAX_BATCH_EVENTS: Final = 100_000
START_TIMEOUT_S: Final = 90.0
STOP_TIMEOUT_S: Final = 10.0
RESTART_PAUSE_S: Final = 1.0


def socket_path(settings: Settings) -> Path:
    """In the hosts' head's folder (``nodes.hosts_dir``), which the bridge's account owns."""
    return hosts_dir(settings.state_dir) / "bridge.sock"


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class BridgedAgent:
    """One host's agent, through the bridge: what the dispatcher (``jobs.ports.HostRunner``), the API's host
    controls and placement's witness ask of it. ``spare``: where its runs take their connection."""

    def __init__(self, host_id: HostId, path: Path, spare: SpareConnection | None = None) -> None:
        self.host_id = host_id
        self._path = path
        self._spare = spare

    async def run_batches(self, spec: JobSpec) -> AsyncGenerator[list[Event], None]:
        """The job's events in the batches the host sends (an empty one: alive, the job quiet); HostLost when the
        host or the bridge goes. Leaving early closes the connection, which cancels the run."""
        reader, writer = await (self._spare.take(self.host_id) if self._spare is not None else self._open())
        try:
            writer.write(wire.run_request(self.host_id, spec))
            await writer.drain()
            while True:
                answer = await self._answer(reader, None)
                if self._spare is not None:
                    self._spare.refill(self.host_id)
                if "batch" in answer:
                    yield self._batch(answer["batch"])
                elif answer.get("end") is True:
                    return
                elif "cancelled" in answer:
                    yield [error_event("cancelled: the job's run was cancelled", JobCancelled.code)]
                    return
                elif "lost" in answer:
                    raise HostLost(_said(answer["lost"]) or f"host {self.host_id} was lost", host_id=self.host_id)
                else:
                    raise wire.raised(answer.get("error"), self.host_id)
        except OSError as exc:
            raise BridgeDown(f"the bridge dropped the run on host {self.host_id}: {exc}", host_id=self.host_id) from None
        finally:
            writer.close()

    async def cancel(self, job_id: JobId, reason: str = "cancelled by the user") -> bool:
        try:
            return await self._ask(wire.ask("cancel", self.host_id, job_id=job_id, reason=reason[:wire.MAX_TEXT]),
                                   15) is True
        except HostLost:
            return False

    async def control_async(self, command: Command, by: Controller, reason: str) -> AgentView:
        """Pause, resume or drain the host; its state after. The agent's refusal (Conflict) comes back as itself."""
        view = await self._ask(wire.ask("control", self.host_id, command=command, by=by,
                                        reason=reason[:wire.MAX_TEXT]), 35)
        return self._view(view)

    async def view_async(self) -> AgentView:
        return self._view(await self._ask(wire.ask("view", self.host_id), 15))

    async def report(self) -> None:
        """A signed heartbeat to placement now, from the host's agent."""
        await self._ask(wire.ask("report", self.host_id), 15)

    async def kill(self) -> None:
        await self._ask(wire.ask("kill", self.host_id), 15)

    async def measure(self, node_id: str, claims: Claims, timeout_s: float) -> Measurement:
        """The join benchmark, run on the node the host registered with."""
        return wire.measurement(await self._ask(wire.measure_request(self.host_id, node_id, claims), timeout_s),
                                self.host_id)

    async def _ask(self, request: bytes, timeout_s: float) -> Any:
        reader, writer = await self._open()
        try:
            writer.write(request)
            await writer.drain()
            answer = await self._answer(reader, timeout_s)
        except OSError as exc:
            raise BridgeDown(f"the bridge dropped a request for host {self.host_id}: {exc}",
                             host_id=self.host_id) from None
        finally:
            writer.close()
        if "error" in answer:
            raise wire.raised(answer["error"], self.host_id)
        return answer.get("ok")

    async def _open(self) -> Connection:
        return await _connect(self._path, self.host_id)

    async def _answer(self, reader: asyncio.StreamReader, timeout_s: float | None) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout_s)
        except TimeoutError:
            raise HostLost(f"the bridge did not answer for host {self.host_id} in {timeout_s:g} s",
                           host_id=self.host_id) from None
        except ValueError:  # past the limit
            raise HostLost(f"the bridge sent more than a line may hold for host {self.host_id}",
                           host_id=self.host_id) from None
        if not line:
            raise BridgeDown(f"the bridge closed the connection for host {self.host_id}", host_id=self.host_id)
        return wire.parse_answer(line, self.host_id)

    def _batch(self, raw: Any) -> list[Event]:
        """A list of objects; each event's fields are the relay's to check (``protocol.received``)."""
        if not isinstance(raw, list) or len(raw) > MAX_BATCH_EVENTS or not all(isinstance(e, dict) for e in raw):
            raise HostLost(f"the bridge sent what is not a batch of events for host {self.host_id}",
                           host_id=self.host_id)
        return raw

    def _view(self, raw: Any) -> AgentView:
        try:
            return read_view(raw if isinstance(raw, dict) else {})
        except HostLost as exc:
            raise HostLost(f"host {self.host_id}: {exc.message}", host_id=self.host_id) from None


class SpareConnection:
    """A connection to the bridge opened ahead of the next run. A run takes it, and opens the next once its host's
    first answer is in, so a job's request goes out without waiting for a connect (on the jobs service's busy event
    loop the connect took 1.55 ms, p50, of the first token's path; bench llm) and the bridge accepts the next one
    off that path. The bridge reads nothing from a connection until its request comes; one found closed (the bridge
    restarted) is dropped for a new one. Bound to the event loop it is first taken on; elsewhere a run connects as
    it comes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next: asyncio.Task[Connection] | None = None

    async def take(self, host_id: HostId) -> Connection:
        loop = asyncio.get_running_loop()
        if self._loop not in (None, loop):
            return await _connect(self._path, host_id)
        self._loop = loop
        spare, self._next = self._next, None
        if spare is not None:
            try:
                reader, writer = await spare
            except BridgeDown:
                pass  # connecting anew says so, for this host
            else:
                if not reader.at_eof() and not writer.is_closing():
                    return reader, writer
                writer.close()
        return await _connect(self._path, host_id)

    def refill(self, host_id: HostId) -> None:
        """Open the next run's connection, unless one is open or opening (or this is not the spare's loop)."""
        loop = asyncio.get_running_loop()
        if self._next is None and self._loop is loop:
            self._next = loop.create_task(_connect(self._path, host_id))
            self._next.add_done_callback(_quietly)


class BridgeHosts:
    """The jobs service's ``Hosts``: each host through the bridge at ``path``, their runs on spare connections."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._spare = SpareConnection(path)

    def __call__(self, host_id: HostId) -> BridgedAgent:
        return BridgedAgent(host_id, self._path, self._spare)


def bridged(settings: Settings, host_id: HostId) -> BridgedAgent:
    return BridgedAgent(host_id, socket_path(settings))


async def _connect(path: Path, host_id: HostId) -> Connection:
    try:
        return await asyncio.open_unix_connection(str(path), limit=MAX_ANSWER_BYTES)
    except OSError as exc:
        raise BridgeDown(f"host {host_id} cannot be reached: the bridge is not running ({exc.strerror})",
                         host_id=host_id) from None


def _quietly(task: asyncio.Task[Connection]) -> None:
    """A spare that failed is not an error until a run needs it (then that run connects and says why)."""
    if not task.cancelled():
        task.exception()


def _said(value: Any) -> str:
    return value[:wire.MAX_TEXT] if isinstance(value, str) else ""


class BridgeProcess:
    """The bridge, run by the coordinator: started as a driver of the cluster at ``address``, started again if it
    exits while the coordinator runs, stopped with it (its input closes: it leaves the cluster and exits), and
    killed by the kernel if the coordinator dies."""

    def __init__(self, settings: Settings, address: str, log_path: Path, env: dict[str, str],
                 run_as: RunAs | None = None) -> None:
        self._settings = settings
        self._address = address
        self._log_path = log_path
        self._env = env  # the hosts' cluster's Ray environment (its token)
        self._run_as = run_as
        self.path = socket_path(settings)
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # a bridge started again as the coordinator stops is stopped, not kept
        self._watch: threading.Thread | None = None

    def start(self) -> BridgeProcess:
        self._process = self._spawn()
        self._watch = threading.Thread(target=self._keep_running, name="bridge-watch", daemon=True)
        self._watch.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is not None:
            end_child(process, STOP_TIMEOUT_S)
        if self._watch is not None:
            self._watch.join(timeout=STOP_TIMEOUT_S)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        run_as, env = self._run_as, {**os.environ, **self._env}
        if run_as is not None:
            env |= {"HOME": str(self.path.parent), "USER": run_as.name, "LOGNAME": run_as.name}
        with self._log_path.open("ab") as out:
            process = subprocess.Popen([sys.executable, "-m", "archipelag.bridge"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=out, start_new_session=True, env=env,
                                       user=run_as.uid if run_as else None, group=run_as.gid if run_as else None,
                                       extra_groups=[] if run_as else None,
                                       preexec_fn=die_with_parent())  # noqa: PLW1509 - only a prctl call
        start = {"op": "start", "settings": bridge_settings(self._settings), "address": self._address,
                 "socket": str(self.path)}
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(json.dumps(start).encode() + b"\n")
            process.stdin.flush()
            answer = _first_line(process, time.monotonic() + START_TIMEOUT_S)
            if "ok" not in answer:
                raise wire.raised(answer.get("error"), HostId("-"))
        except BaseException:
            process.kill()
            process.wait()
            raise
        return process

    def _keep_running(self) -> None:
        while not self._stopping.wait(0.5):
            exited = self._process
            if exited is None or exited.poll() is None:
                continue
            log.warning("the bridge exited (%s); starting it again", exited.returncode)
            if self._stopping.wait(RESTART_PAUSE_S):
                return
            try:
                process = self._spawn()
            except (ArchipelagError, OSError, ValueError):
                log.exception("the bridge did not start again; trying once more")
                continue
            with self._lock:
                if self._stopping.is_set():
                    end_child(process, STOP_TIMEOUT_S)
                    return
                self._process = process


def bridge_settings(settings: Settings) -> dict[str, Any]:
    """What the bridge is told of the settings: nothing secret, since hosts can make it run their code."""
    secret = {"smtp_password", "smtp_username", "database_url", "catalog_signing_key"}
    return settings.model_dump(mode="json", exclude=secret)


def _first_line(process: subprocess.Popen[bytes], deadline: float) -> dict[str, Any]:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    buffer = b""
    while b"\n" not in buffer:
        left = deadline - time.monotonic()
        if left <= 0:
            raise HostLost(f"the bridge did not start within {START_TIMEOUT_S:g} s")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise HostLost(f"the bridge exited while starting ({process.wait()})")
            buffer += chunk
    answer = json.loads(buffer.partition(b"\n")[0])
    return answer if isinstance(answer, dict) else {}
