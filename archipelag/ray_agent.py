"""A Ray node's two agents, reduced to what a node here needs of them.

A raylet starts two agents, waits for the ports they write and ends when either ends. Nothing here reads the
dashboard agent's (Ray's metrics, state API, job submission and dashboard), and nothing here asks for a runtime
environment, yet each agent imports Ray and its servers before it writes a port: 1.1–1.8 and 0.6–1.1 CPU-s to
start on this machine, 66 and 45 MiB, on every node. So `ray start` (`nodes.leave_out_ray_dashboard`) gives the
raylet ``python -u -m archipelag.ray_agent SCRIPT ARGS`` for each, where SCRIPT is Ray's own agent, and here:

- the dashboard agent writes "no port" (-1) for the metrics agent, the metrics export and its HTTP server, as Ray's
  agent does in its minimal mode, and waits;
- the runtime-env agent binds its port as Ray's does and writes it, then waits for a first request. Should one
  come (a task or actor with a runtime environment), it becomes Ray's agent on that port (``exec``, same pid): the
  raylet retries its request meanwhile. Without an agent on the port the raylet ends at such a request.

Neither imports anything beyond the standard library until then. Both end with their raylet (`end_with`).
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import sys
from pathlib import Path

# The port files the raylet waits for, named as Ray 2.60 names them (`ray._raylet.get_port_filename`; a unit test
# checks both against Ray's).
NO_PORTS = ("metrics_agent_port", "metrics_export_port", "dashboard_agent_listen_port")
RUNTIME_ENV_PORT = "runtime_env_agent_port"
RUNTIME_ENV_AGENT_SCRIPT = os.path.join("runtime_env", "agent", "main.py")
NO_PORT = -1
_PR_SET_PDEATHSIG = 1


def port_file(session_dir: Path, node_id: str, name: str) -> Path:
    return session_dir / f"{name}_{node_id}"


def write_port(session_dir: Path, node_id: str, name: str, port: int) -> None:
    """A port for the raylet, written whole before it can be seen."""
    path = port_file(session_dir, node_id, name)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(str(port))
    partial.replace(path)


def option(args: list[str], name: str) -> str:
    """``--name=value`` among the agent's arguments (the raylet passes them so)."""
    prefix = f"--{name}="
    found = [arg[len(prefix):] for arg in args if arg.startswith(prefix)]
    if not found:
        raise SystemExit(f"archipelag.ray_agent: no {prefix}… among the agent's arguments")
    return found[-1]


def with_option(args: list[str], name: str, value: str) -> list[str]:
    prefix = f"--{name}="
    return [f"{prefix}{value}" if arg.startswith(prefix) else arg for arg in args]


def dashboard_agent(args: list[str]) -> None:
    session_dir, node_id = Path(option(args, "session-dir")), option(args, "node-id")
    for name in NO_PORTS:
        write_port(session_dir, node_id, name, NO_PORT)
    while True:
        signal.pause()  # until SIGTERM (from the raylet as the node stops) or its raylet's end


def runtime_env_agent(script: str, args: list[str]) -> None:
    """Ray's runtime-env agent once it is asked for: until then a bound port and nothing else."""
    host, port = option(args, "node-ip-address"), int(option(args, "runtime-env-agent-port") or 0)
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as listener:  # as Ray's agent binds it
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen()
        port = listener.getsockname()[1]
        write_port(Path(option(args, "session-dir")), option(args, "node-id"), RUNTIME_ENV_PORT, port)
        select.select([listener], [], [])  # a first request: the raylet retries it while Ray's agent starts
    _prctl(_PR_SET_PDEATHSIG, 0)  # Ray's agent watches its raylet itself
    os.execv(sys.executable, [sys.executable, "-u", script, *with_option(args, "runtime-env-agent-port", str(port))])


def end_with(raylet: int) -> bool:
    """This process ends once its raylet has (Ray's agents check every few seconds; here the kernel tells). The
    kernel signals when the raylet's thread that started it ends, so the signal is checked against the parent, not
    taken as the end. Whether the raylet is still there now."""
    def parent_gone(*_: object) -> None:
        if os.getppid() != raylet:
            os._exit(0)

    signal.signal(signal.SIGUSR1, parent_gone)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGUSR1)
    return os.getppid() == raylet  # else it ended before the line above


def _prctl(option: int, value: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(option, value)


def main(argv: list[str]) -> None:
    script, args = argv[0], argv[1:]
    if not end_with(int(os.environ["RAY_RAYLET_PID"])):
        return
    if script.endswith(RUNTIME_ENV_AGENT_SCRIPT):
        runtime_env_agent(script, args)
    else:
        dashboard_agent(args)


if __name__ == "__main__":
    main(sys.argv[1:])
