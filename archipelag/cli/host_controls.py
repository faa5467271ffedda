"""Host control commands: `archipelag host pause | resume | drain | leave | status`, run on the lent machine.

They talk to the running `host join` through its control socket (actors/control_socket.py), so they need no key:
the socket answers only the user who lent the machine. Mount with ``register(host_app)``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from archipelag.actors.control_socket import ask, socket_path
from archipelag.cli.jobs import JsonOption, fail, print_json
from archipelag.errors import ArchipelagError
from archipelag.settings import Settings

HostIdOption = Annotated[str | None, typer.Option(
    "--host-id", help="Which host, when several are joined from this state directory.")]
WaitOption = Annotated[bool, typer.Option("--wait", help="Return only once the host has left.")]


def register(host_app: typer.Typer) -> None:
    host_app.command("pause")(pause)
    host_app.command("resume")(resume)
    host_app.command("drain")(drain)
    host_app.command("leave")(leave)
    host_app.command("status")(status)


def _send(host_id: str | None, request: dict[str, Any]) -> dict[str, Any]:
    try:
        return ask(socket_path(Settings(), host_id), request)
    except ArchipelagError as exc:
        fail(exc.message)


def _show(answer: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(answer)
        return
    why = f" ({answer['reason']})" if answer.get("reason") else ""
    typer.echo(f"host {answer['host_id']}: {answer['status']}{why}")
    running = answer.get("running_jobs") or []
    typer.echo(f"  running jobs: {len(running)}" + (f" ({', '.join(running)})" if running else ""))
    if answer.get("leaves_by"):
        typer.echo(f"  leaves by:    {answer['leaves_by']}")
    if answer.get("schedule"):
        state = "open now" if answer.get("schedule_open") else "closed now"
        typer.echo(f"  schedule:     {answer['schedule']} ({state})")
    limits = answer.get("limits") or {}
    if limits:
        gpu = f"{limits.get('gpu_model')} ({limits.get('gpu_memory_mb')} MB)" if limits.get("gpu_model") else "none"
        typer.echo(f"  lends:        {limits.get('cpu_cores')} cores, {limits.get('ram_mb')} MB RAM, GPU {gpu}; "
                   f"accepts {', '.join(limits.get('accepts') or ['*'])}")
    typer.echo(f"  coordinator:  {answer.get('coordinator')} (region {answer.get('region')})")


def _wait_gone(host_id: str | None, timeout_s: float) -> None:
    path = socket_path(Settings(), host_id)
    deadline = time.monotonic() + timeout_s
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    if path.exists():
        fail(f"the host has not left within {timeout_s:.0f} s; `archipelag host status` says why")
    typer.echo("the host has left.")


def pause(host_id: HostIdOption = None, json_out: JsonOption = False) -> None:
    """Take no new jobs; running ones continue."""
    _show(_send(host_id, {"command": "pause"}), json_out)


def resume(host_id: HostIdOption = None, json_out: JsonOption = False) -> None:
    """Take jobs again (inside the schedule, when there is one)."""
    _show(_send(host_id, {"command": "resume"}), json_out)


def drain(host_id: HostIdOption = None, wait: WaitOption = False, json_out: JsonOption = False) -> None:
    """Take no new jobs, let the running ones finish however long they take, then leave the network."""
    _show(_send(host_id, {"command": "drain"}), json_out)
    if wait:
        _wait_gone(host_id, timeout_s=7 * 24 * 3600)


def leave(host_id: HostIdOption = None,
          timeout_s: Annotated[float | None, typer.Option(
              help="How long running jobs may take (default ARCHIPELAG_DRAIN_TIMEOUT_S); then they move to "
                   "other hosts.", min=0)] = None,
          now: Annotated[bool, typer.Option("--now", help="Leave at once; running jobs move to other hosts.")]
          = False,
          wait: WaitOption = False, json_out: JsonOption = False) -> None:
    """Drain, then leave; past the timeout, leave anyway (what still runs moves to another host)."""
    request: dict[str, Any] = {"command": "leave"}
    if now or timeout_s is not None:
        request["timeout_s"] = 0.0 if now else timeout_s
    answer = _send(host_id, request)
    _show(answer, json_out)
    if wait:
        allowed_s = float(request.get("timeout_s", Settings().drain_timeout_s))
        _wait_gone(host_id, timeout_s=allowed_s + 60)


def status(host_id: HostIdOption = None, json_out: JsonOption = False) -> None:
    """Where the host stands: its status and why, running jobs, schedule, what it lends, its coordinator."""
    _show(_send(host_id, {"command": "status"}), json_out)
