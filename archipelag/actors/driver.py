"""The host's Ray driver: the process of `host join` that talks to the cluster — it waits for the host's node,
starts the host's agent there, and asks the agent what the owner's controls need (``HostControls``).

A driver unpickles whatever it reads back through Ray, and any member of the cluster can choose that: it may run a
closure inside the host's agent (``__ray_call__``) or any task on the host's node, and make the agent's answers
pickles that run code where they are read (tests/security/test_red_team.py). Where the node runs as the owner's
own account, that gains nothing, and the driver is `host join` itself (``InProcessDriver``). Where it runs as
another account (`host join --ray-user`), `host join` is the owner's — root where it runs the gate — and must not
be a driver at all: it starts this module as the node's account (``SeparateDriver``), which is the driver and
answers the owner in JSON lines that the owner checks field by field. The worst such a driver can tell the owner
is a wrong status; what it could run, it could already run as the node's account.

The wire, one JSON object per line. The owner sends ``{"op": "start", …}`` first (what to join as), then
``{"op": "view"}``, ``{"op": "control", "command", "by", "reason"}``, ``{"op": "leave"}``; each gets one answer,
``{"ok": …}`` or ``{"error": {"code", "message"}}``. After ``leave``, or when its input closes, the driver leaves
the cluster and exits.
"""

from __future__ import annotations

import json
import logging
import math
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from archipelag import identity
from archipelag.actors.controls import AgentView, Command, Controller, ControlState
from archipelag.actors.hardware import Hardware
from archipelag.errors import ArchipelagError, ConfigError, Conflict, HostLost, HostRefused, ValidationFailed
from archipelag.ids import HostId, JobId
from archipelag.lifecycle import HostStatus
from archipelag.nodes import LABEL_NODE_START, RunAs, host_resource
from archipelag.settings import Settings

if TYPE_CHECKING:  # the client imports Ray, which must not load before its environment is set
    from archipelag.actors.client import HostAgentClient

log = logging.getLogger(__name__)

MAX_LINE_BYTES: Final = 64 * 1024  # an answer longer than this is not one
MAX_RUNNING: Final = 1024  # job ids in one view
MAX_TEXT: Final = 1000  # characters of a reason or an error message
CONTROL_TIMEOUT_S: Final = 30.0
VIEW_TIMEOUT_S: Final = 10.0
LEAVE_TIMEOUT_S: Final = 5.0  # telling a coordinator that may be gone (a live one answers in well under 1 s)
STOP_TIMEOUT_S: Final = 10.0  # a driver leaving the cluster; then it is killed
_ERRORS: Final[Mapping[str, type[ArchipelagError]]] = {
    cls.code: cls for cls in (HostLost, Conflict, HostRefused, ConfigError, ValidationFailed)}


class HostDriver(Protocol):
    """What `host join` asks of its host's driver."""

    node_id: str

    def capabilities(self) -> dict[str, Any]: ...
    def control(self, command: Command, by: Controller, reason: str) -> AgentView: ...
    def view(self) -> AgentView: ...
    def leave(self) -> None: ...
    def close(self) -> None: ...
    def alive(self) -> bool: ...


# --- what any driver does ------------------------------------------------------------------------------


def attach(settings: Settings, host_id: HostId, name: str, region: str, hardware: Hardware,
           accepts: tuple[str, ...], asks: Mapping[str, int], timeout_s: float, node_start: str,
           node_alive: Callable[[], str | None]) -> tuple[str, HostAgentClient]:
    """In a process that is already a driver of the cluster: wait for the host's node (the one labelled
    ``node_start``: a previous one may still count as alive), then for the coordinator's API (the host reports
    there; a coordinator that is still starting has none yet), and start the host's agent on the node.
    ``node_alive`` says why the node is gone (None while it runs)."""
    from archipelag.actors.client import HostAgentClient

    node_id = _wait_for_node(host_id, node_start, timeout_s, node_alive)
    _wait_for_api(settings, host_id, timeout_s, node_alive)
    agent = HostAgentClient.start(settings, host_id, name, region, hardware, accepts, node_id, asks)
    return node_id, agent


def say_goodbye(settings: Settings, host_id: HostId) -> None:
    """Placement hears that the host left, signed like its other reports: by whoever holds the host's key, the
    owner's process (a driver of the node's account may not read it)."""
    from archipelag.actors.reports import Reports

    try:
        key = identity.host_key(settings.state_dir, host_id)
        report = identity.status_report(HostStatus.OFFLINE)
        Reports(settings.api_for_hosts(), timeout_s=LEAVE_TIMEOUT_S).set_status(
            host_id, HostStatus.OFFLINE, identity.sign(key, "status", host_id, time.time(), report))
    except Exception:  # it leaves anyway; placement finds it gone by its silence
        log.warning("could not tell placement that %s left", host_id, exc_info=True)


def _wait_for_node(host_id: HostId, node_start: str, timeout_s: float, node_alive: Callable[[], str | None]) -> str:
    import ray

    deadline = time.monotonic() + timeout_s
    resource = host_resource(host_id)
    while time.monotonic() < deadline:
        nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
        for info in nodes:
            if info.get("Alive") and resource in info.get("Resources", {}) \
                    and info.get("Labels", {}).get(LABEL_NODE_START) == node_start:
                return str(info["NodeID"])
        if (gone := node_alive()) is not None:
            raise HostLost(f"the Ray node of {host_id} exited while joining; {gone}", host_id=host_id)
        time.sleep(0.2)
    raise HostLost(f"the Ray node of {host_id} did not join within {timeout_s:.0f} s", host_id=host_id)


def _wait_for_api(settings: Settings, host_id: HostId, timeout_s: float,
                  node_alive: Callable[[], str | None]) -> None:
    import httpx

    url = settings.api_for_hosts()
    deadline = time.monotonic() + timeout_s
    # One client for every try: each `httpx.get` builds a TLS context first (27 ms of CPU here), and a host that
    # starts with its coordinator asks for 10-15 s, on the cores the coordinator is starting on.
    with httpx.Client(timeout=2) as http:
        while True:
            try:
                if http.get(f"{url}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if (gone := node_alive()) is not None:
                raise HostLost(f"the Ray node of {host_id} exited while joining; {gone}", host_id=host_id)
            if time.monotonic() > deadline:
                raise HostLost(f"the coordinator's API at {url} did not answer within {timeout_s:.0f} s (a host "
                               "reports there: set ARCHIPELAG_COORDINATOR_API where it is not this machine's)",
                               host_id=host_id)
            time.sleep(0.2)


# --- the driver in `host join` itself (the node runs as the owner) --------------------------------------


class InProcessDriver:
    """`host join` is the driver: the node runs as the same account, so nothing it reads back crosses a
    boundary."""

    def __init__(self, settings: Settings, host_id: HostId, node_id: str, agent: HostAgentClient) -> None:
        self._settings = settings
        self._host_id = host_id
        self.node_id = node_id
        self._agent = agent

    @classmethod
    def start(cls, settings: Settings, host_id: HostId, name: str, region: str, hardware: Hardware,
              accepts: tuple[str, ...], asks: Mapping[str, int], coordinator: str, timeout_s: float,
              node_start: str, node_alive: Callable[[], str | None]) -> InProcessDriver:
        import ray

        ray.init(address=coordinator, namespace=settings.ray_namespace, logging_level=logging.WARNING,
                 log_to_driver=False)
        try:
            node_id, agent = attach(settings, host_id, name, region, hardware, accepts, asks, timeout_s,
                                    node_start, node_alive)
        except BaseException:
            ray.shutdown()
            raise
        return cls(settings, host_id, node_id, agent)

    def capabilities(self) -> dict[str, Any]:
        return self._agent.capabilities()

    def control(self, command: Command, by: Controller, reason: str) -> AgentView:
        return self._agent.control(command, by, reason)

    def view(self) -> AgentView:
        return self._agent.view()

    def leave(self) -> None:
        """Say goodbye for at most LEAVE_TIMEOUT_S: with its coordinator gone, Ray's calls wait for a GCS that
        does not come back, and the owner pressed Ctrl-C."""
        import ray

        def leave() -> None:
            self._agent.leave()
            say_goodbye(self._settings, self._host_id)

        if ray.is_initialized():
            goodbye = threading.Thread(target=leave, name=f"goodbye-{self._host_id}", daemon=True)
            goodbye.start()
            goodbye.join(LEAVE_TIMEOUT_S)
            if goodbye.is_alive():
                log.warning("host %s: its coordinator did not hear it leave within %.0f s; leaving anyway",
                            self._host_id, LEAVE_TIMEOUT_S)
        ray.shutdown()

    def close(self) -> None:
        import ray

        ray.shutdown()

    def alive(self) -> bool:
        import ray

        return bool(ray.is_initialized())


# --- the driver as a process of the node's account (`host join --ray-user`) --------------------------------


class SeparateDriver:
    """The owner's side of a driver that runs as the node's account: requests out, checked answers back. One
    request at a time; every answer has a deadline, after which the driver counts as gone (HostLost)."""

    def __init__(self, process: subprocess.Popen[bytes], settings: Settings, host_id: HostId, node_id: str = "",
                 runtimes: tuple[str, ...] = ()) -> None:
        self._process = process
        self._settings = settings
        self._host_id = host_id
        self.node_id = node_id
        self._runtimes = runtimes
        self._buffer = b""
        self._lock = threading.Lock()

    @classmethod
    def start(cls, settings: Settings, host_id: HostId, name: str, region: str, hardware: Hardware,
              accepts: tuple[str, ...], asks: Mapping[str, int], coordinator: str, timeout_s: float,
              node_start: str, node_alive: Callable[[], str | None], run_as: RunAs, env: Mapping[str, str],
              temp_dir: Path, log_path: Path) -> SeparateDriver:
        """Start the driver as ``run_as`` with the node's environment, and have it join; its answer comes once
        the host's agent runs (HostLost, or the driver's own error, when it does not)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "archipelag.actors.driver"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=out, env={**os.environ, **env}, cwd=temp_dir, start_new_session=True,
                user=run_as.uid, group=run_as.gid, extra_groups=[],
            )
        driver = cls(process, settings, host_id)
        start = {"op": "start", "settings": settings.model_dump(mode="json", exclude={"smtp_password"}),
                 "host_id": host_id, "name": name, "region": region, "hardware": hardware.as_capabilities(),
                 "accepts": list(accepts), "asks": dict(asks), "coordinator": coordinator, "timeout_s": timeout_s,
                 "node_start": node_start, "temp_dir": str(temp_dir.resolve())}
        try:
            ready = driver._ask(start, timeout_s + 150, node_alive)  # the node, placement, then the agent (120 s)
            driver.node_id = _text(ready.get("node_id"), "node_id", 64)
            runtimes = ready.get("runtimes")
            if not isinstance(runtimes, list) or len(runtimes) > 16:
                raise HostLost(f"host {host_id}'s driver named no runtimes", host_id=host_id)
            driver._runtimes = tuple(_text(r, "runtime", 32) for r in runtimes)
        except BaseException:
            driver.close()
            raise
        return driver

    def capabilities(self) -> dict[str, Any]:
        return {"runtimes": list(self._runtimes)}

    def control(self, command: Command, by: Controller, reason: str) -> AgentView:
        answer = self._ask({"op": "control", "command": str(command), "by": str(by), "reason": reason},
                           CONTROL_TIMEOUT_S)
        return read_view(answer)

    def view(self) -> AgentView:
        return read_view(self._ask({"op": "view"}, VIEW_TIMEOUT_S))

    def leave(self) -> None:
        """The agent stops (the driver tells it, at most LEAVE_TIMEOUT_S), placement hears it (this process holds
        the host's key), and the driver stops."""
        try:
            self._ask({"op": "leave"}, LEAVE_TIMEOUT_S)
        except ArchipelagError as exc:
            log.warning("the host's driver did not say goodbye: %s", exc.message)
            self._process.kill()  # it hangs on a coordinator that is gone: nothing more to wait for
        else:
            say_goodbye(self._settings, self._host_id)
        self.close()

    def close(self) -> None:
        """The driver leaves the cluster (its input closes) and exits, or is killed."""
        end_child(self._process, STOP_TIMEOUT_S)
        if self._process.stdout is not None:
            self._process.stdout.close()

    def alive(self) -> bool:
        return self._process.poll() is None

    def _ask(self, request: Mapping[str, Any], timeout_s: float,
             node_alive: Callable[[], str | None] = lambda: None) -> dict[str, Any]:
        with self._lock:
            stdin = self._process.stdin
            if stdin is None or stdin.closed or not self.alive():
                raise HostLost("the host's driver is gone")
            try:
                stdin.write(json.dumps(request).encode() + b"\n")
                stdin.flush()
            except OSError:
                raise HostLost("the host's driver is gone") from None
            line = self._line(time.monotonic() + timeout_s, node_alive)
        try:
            answer = json.loads(line)
        except ValueError:
            raise HostLost("the host's driver answered what is not JSON") from None
        if not isinstance(answer, dict):
            raise HostLost("the host's driver answered what is not an object")
        if "error" in answer:
            raise _error(answer["error"])
        ok = answer.get("ok")
        return ok if isinstance(ok, dict) else {}

    def _line(self, deadline: float, node_alive: Callable[[], str | None]) -> bytes:
        stdout = self._process.stdout
        assert stdout is not None
        fd = stdout.fileno()
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE_BYTES:
                raise HostLost("the host's driver answered more than a line may hold")
            left = deadline - time.monotonic()
            if left <= 0:
                raise HostLost("the host's driver did not answer in time")
            if (gone := node_alive()) is not None:
                raise HostLost(f"the host's Ray node exited; {gone}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise HostLost("the host's driver exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


def end_child(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Close a child's input, which tells it to leave the cluster and exit; kill it if it has not within
    ``timeout_s``."""
    if process.stdin is not None and not process.stdin.closed:
        try:
            process.stdin.close()
        except OSError:
            pass
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def read_view(answer: Mapping[str, Any]) -> AgentView:
    """An AgentView from a driver's answer, every field checked: a driver may say anything."""
    state = answer.get("state")
    running = answer.get("running")
    if not isinstance(state, dict) or not isinstance(running, list) or len(running) > MAX_RUNNING:
        raise HostLost("the host's driver answered what is not a view of its agent")
    try:
        status = HostStatus(str(state.get("status")))
        by = None if state.get("by") is None else Controller(str(state.get("by")))
    except ValueError:
        raise HostLost("the host's driver answered an unknown status") from None
    if status not in (HostStatus.ONLINE, HostStatus.PAUSED, HostStatus.DRAINING):
        raise HostLost(f"the host's driver answered a status an agent does not hold: {status}")
    since = state.get("since")
    if isinstance(since, bool) or not isinstance(since, (int, float)) or not math.isfinite(since):
        raise HostLost("the host's driver answered a time that is not one")
    return AgentView(ControlState(status, by, _text(state.get("reason"), "reason", MAX_TEXT), float(since)),
                     tuple(JobId(_text(job, "job id", 128)) for job in running))


def _text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise HostLost(f"the host's driver answered a {what} that is not one")
    return value


def _error(error: Any) -> ArchipelagError:
    if not isinstance(error, dict):
        return HostLost("the host's driver failed without saying why")
    message = str(error.get("message", ""))[:MAX_TEXT] or "no reason given"
    return _ERRORS.get(str(error.get("code")), HostLost)(message)


# --- the driver's own process ------------------------------------------------------------------------------


def view_dict(view: AgentView) -> dict[str, Any]:
    return {"state": view.state.as_dict(), "running": list(view.running)}


def _serve(replies: Any, start: dict[str, Any]) -> None:
    import ray

    from archipelag.nodes import keep_loopback_node_addresses

    settings = Settings.model_validate(start["settings"])
    host_id = HostId(start["host_id"])
    keep_loopback_node_addresses()
    ray.init(address=start["coordinator"], namespace=settings.ray_namespace, logging_level=logging.WARNING,
             log_to_driver=False, _temp_dir=start["temp_dir"])  # its own node's folder: the node it attaches to
    try:
        node_id, agent = attach(settings, host_id, start["name"], start["region"],
                                Hardware.from_capabilities(start["hardware"]), tuple(start["accepts"]), start["asks"],
                                float(start["timeout_s"]), str(start["node_start"]), lambda: None)
        runtimes = sorted(agent.capabilities().get("runtimes", []))
        _reply(replies, {"ok": {"node_id": node_id, "runtimes": runtimes}})
        for line in sys.stdin:
            request = json.loads(line)
            op = request.get("op")
            try:
                if op == "view":
                    _reply(replies, {"ok": view_dict(agent.view())})
                elif op == "control":
                    view = agent.control(Command(request["command"]), Controller(request["by"]),
                                         str(request["reason"]))
                    _reply(replies, {"ok": view_dict(view)})
                elif op == "leave":  # the owner tells placement: the host's key is the owner's
                    agent.leave()
                    _reply(replies, {"ok": {}})
                    return
                else:
                    raise ValidationFailed(f"unknown request {op!r}")
            except ArchipelagError as exc:
                _reply(replies, {"error": {"code": exc.code, "message": exc.message}})
            except Exception as exc:  # noqa: BLE001 - e.g. an agent that answered nonsense: the owner hears it
                _reply(replies, {"error": {"code": HostLost.code, "message": f"the agent failed: {exc!r}"}})
    finally:
        ray.shutdown()


def _reply(replies: Any, answer: Mapping[str, Any]) -> None:
    replies.write(json.dumps(answer) + "\n")
    replies.flush()


def main() -> None:
    """The driver's process: answers go to the owner on what was stdout; anything else printed goes to stderr
    (the driver's log), so a library's print cannot break the wire."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING)
    line = sys.stdin.readline()
    try:
        start = json.loads(line)
        if not isinstance(start, dict) or start.get("op") != "start":
            raise ValidationFailed("a driver's first request is start")
        _serve(replies, start)
    except ArchipelagError as exc:
        _reply(replies, {"error": {"code": exc.code, "message": exc.message}})
        raise SystemExit(1) from None
    except Exception as exc:  # said to the owner, and in the log
        log.exception("the host's driver failed")
        _reply(replies, {"error": {"code": HostLost.code, "message": f"the host's driver failed: {exc!r}"}})
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
