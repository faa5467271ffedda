"""`archipelag host gate`: the host's gate in the foreground, run by the machine's owner (who has the Docker engine).

`host join` starts the gate itself; this command is for a host whose Ray node its owner runs apart (another
service, another user): the node's settings then carry ``ARCHIPELAG_GATE_SOCKET`` = ``--socket``. Mount with
``register(host_app)``.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from archipelag.gate import tickets
from archipelag.ids import HostId
from archipelag.settings import Settings


def register(host_app: typer.Typer) -> None:
    host_app.command("gate")(gate)


def gate(
    socket: Annotated[Path, typer.Option("--socket", help=(
        "Where the gate listens; the host's Ray node gets the same path as ARCHIPELAG_GATE_SOCKET."))],
    ray_uid: Annotated[list[int], typer.Option("--ray-uid", help=(
        "The uid the host's Ray node runs as: the only one (repeat for several) whose connections the gate "
        "serves."))],
    host_id: Annotated[str, typer.Option(help="The host id the coordinator's tickets must name (`host join`'s).")],
    coordinator_key: Annotated[list[str] | None, typer.Option(help=(
        "The coordinator's ticket key (hex), repeatable; default: the coordinator key in this state directory "
        "(a host on the coordinator's own machine)."))] = None,
) -> None:
    """Run the host's gate until Ctrl-C: the one process that starts containers here, each only for a job ticket
    the coordinator signed for this host, from the signed catalog, within its tier."""
    from archipelag.gate.server import start_gate

    settings = Settings().model_copy(update={"gate_socket": socket.absolute()})
    keys = tickets.trusted_keys(list(coordinator_key or []), settings.state_dir)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = start_gate(settings, HostId(host_id), keys, ray_uid)
    try:
        typer.echo(f"gate of host {host_id} on {server.path} for uid {', '.join(map(str, ray_uid))}; "
                   "Ctrl-C stops it (running containers are stopped).")
        sys.stdout.flush()
        stop.wait()
    finally:
        server.close()
