"""The `archipelag` command: parse, build Settings, call one function, map errors to exit codes."""

from __future__ import annotations

import json
import logging
import shlex
import signal
import sys
import threading
import time
from typing import Annotated

import typer

from archipelag.cli import catalog, chat, gate, host_controls, jobs, market, people
from archipelag.errors import ArchipelagError
from archipelag.settings import Settings

app = typer.Typer(help="Archipelag: run AI and utility workloads on lent machines.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
host_app = typer.Typer(help="Lend this machine to a network.", no_args_is_help=True)
db_app = typer.Typer(help="The ledger's database.", no_args_is_help=True)
config_app = typer.Typer(help="Settings.", no_args_is_help=True)
app.add_typer(host_app, name="host")
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _stop_cleanly_on_sigterm() -> None:
    """SIGTERM while starting up unwinds like Ctrl-C, so what was started is stopped."""
    signal.signal(signal.SIGTERM, _interrupt)


def _stop_on_signal() -> threading.Event:
    """An event set by Ctrl-C or SIGTERM: the foreground commands run until it is set, then stop."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@app.command()
def up(
    hosts: Annotated[int, typer.Option(help="Local hosts to start.", min=0, max=16)] = 3,
    regions: Annotated[str, typer.Option(help="Comma-separated regions, assigned round-robin.")] =
        "eu-west,us-east,ap-south",
    port: Annotated[int | None, typer.Option(help="API port (default 8000).")] = None,
    rotate_token: Annotated[bool, typer.Option(
        "--rotate-token", help="Start with a new cluster token: hosts enrolled by pairing fetch it as they rejoin; "
        "revoked hosts and any node holding the old one are out.")] = False,
) -> None:
    """Run the whole network on this machine: a coordinator, N hosts, the API. Ctrl-C stops it."""
    from archipelag.network import start_network

    logging.basicConfig(level=logging.WARNING)
    settings = Settings(api_port=port) if port else Settings()
    if "signup_policy" not in settings.model_fields_set:  # a network on one machine: anyone here may sign up
        settings = settings.model_copy(update={"signup_policy": "open"})
    region_list = tuple(r.strip() for r in regions.split(",") if r.strip())
    typer.echo(f"starting the network: a coordinator and {hosts} hosts in {', '.join(region_list)} …")
    _stop_cleanly_on_sigterm()
    try:
        network = start_network(settings, hosts, region_list, rotate_token=rotate_token)
    except ArchipelagError as exc:
        _fail(exc.message)
        return
    stop = _stop_on_signal()  # before the banner: a Ctrl-C as soon as it is read stops the network, exit 0
    try:
        typer.echo(f"""
Archipelag is up: {network.url}   ({hosts} hosts: {', '.join(f'{h.host_id} [{h.region}]' for h in network.hosts)})

  export ARCHIPELAG_API_KEY=$(cat {shlex.quote(str((settings.state_dir / 'api_key').resolve()))})
  archipelag submit wasm-hash --input '{{"text": "hello"}}' --stream
  archipelag chat "Write a haiku about islands"
  archipelag image "a red boat" --out boat.png
  curl -s -H "Authorization: Bearer $ARCHIPELAG_API_KEY" {network.url}/api/v1/hosts
  OpenAI clients: base_url={network.url}/v1, api_key=$ARCHIPELAG_API_KEY, model=smollm2-135m-instruct

Ctrl-C stops everything this command started.""", err=False)
        sys.stdout.flush()
        stop.wait()
    finally:
        typer.echo("stopping the network …")
        started = time.monotonic()
        network.stop()
        typer.echo(f"stopped in {time.monotonic() - started:.1f} s.")


@host_app.command("join")
def host_join(
    coordinator: Annotated[str, typer.Option(help=(
        "The network's API, https://… (this machine enrols with a pairing code its owner approves), or the Ray "
        "address HOST:PORT of a coordinator this host is already enrolled with (archipelag up's own hosts)."))],
    region: Annotated[str, typer.Option(help="Where this machine is, e.g. eu-west.")],
    name: Annotated[str | None, typer.Option(help="A display name.")] = None,
    accept: Annotated[str, typer.Option(help="Comma-separated workload patterns to accept (default all).")] = "",
    max_memory_mb: Annotated[int | None, typer.Option(help="Lend at most this much RAM.")] = None,
    max_cores: Annotated[int | None, typer.Option(help="Lend at most this many cores.")] = None,
    max_gpu_memory_mb: Annotated[int | None, typer.Option(help="Lend at most this much GPU memory.", min=0)]
        = None,
    no_gpu: Annotated[bool, typer.Option("--no-gpu", help="Lend no GPU (CPU jobs only).")] = False,
    schedule: Annotated[str | None, typer.Option(
        help="Local hours the host takes work, e.g. 22:00-07:00 or 08:00-12:00,13:00-17:00; paused outside.")]
        = None,
    host_id: Annotated[str | None, typer.Option(help="Keep a stable host id across joins.")] = None,
    node_ip: Annotated[str | None, typer.Option(help="This machine's address as the coordinator sees it.")]
        = None,
    price: Annotated[list[str] | None, typer.Option(metavar="ASK", help=(
        "What this host asks per job, in credits; repeat it: 0.02 (every workload), 'llm-*=0.05' (a family), "
        "llm-chat=0.03 (one workload; the most specific wins). A workload's own ask must lie within the "
        "network's bounds around its catalog price, else the join is refused; a family's is held within each "
        "workload's bounds. Default: the catalog's prices."))] = None,
    ray_user: Annotated[str | None, typer.Option(help=(
        "Run this host's Ray node as this unprivileged user (run `host join` as root): what other members of "
        "the cluster run here cannot reach your files, the Docker engine or root; containers start through "
        "this process's gate, for coordinator-signed tickets only."))] = None,
) -> None:
    """Join a network as a host; stays in the foreground. Ctrl-C (or `archipelag host leave`) drains: no new
    jobs, running ones finish (up to ARCHIPELAG_DRAIN_TIMEOUT_S), then it leaves; a second Ctrl-C (or SIGTERM)
    leaves at once. `archipelag host pause|resume|drain|status` control it meanwhile. When the coordinator goes
    away it keeps trying to join it again."""
    from archipelag.actors.control_socket import ControlServer, refuse_if_joined, socket_path
    from archipelag.actors.join import join
    from archipelag.actors.schedule import parse_schedule
    from archipelag.market.pricing import parse_asks

    logging.basicConfig(level=logging.WARNING)
    settings = Settings()
    accepts = tuple(p.strip() for p in accept.split(",") if p.strip())
    _stop_cleanly_on_sigterm()
    try:
        hours = parse_schedule(schedule) if schedule is not None else None
        if host_id is not None:
            refuse_if_joined(socket_path(settings, host_id))  # before joining: a second join would take its agent
        joined = join(settings, coordinator, region, name, accepts, max_memory_mb, max_cores, host_id, node_ip,
                      max_gpu_memory_mb=max_gpu_memory_mb, no_gpu=no_gpu, ray_user=ray_user,
                      asks=parse_asks(price or []))
    except ArchipelagError as exc:
        _fail(exc.message)
        return
    # From here Ctrl-C drains and SIGTERM leaves, also one that comes before the line below is read.
    leave_now, leave_asked = _leave_on_signals(settings.drain_timeout_s)
    hw = joined.hardware
    runtimes = joined.driver.capabilities()["runtimes"]
    controls = joined.controls(hours)
    server = ControlServer(socket_path(settings, joined.host_id), controls.handle)
    try:
        server.start()
    except ArchipelagError as exc:
        joined.leave()
        _fail(exc.message)
    typer.echo(f"host {joined.host_id} joined {coordinator} in {region}: {hw.cpu_cores} cores, {hw.ram_mb} MB RAM, "
               f"GPU {hw.gpu_model or 'none'}, runtimes {', '.join(runtimes)}"
               + (f", schedule {hours}" if hours else "") + ". Ctrl-C drains and leaves; twice leaves at once.")
    sys.stdout.flush()
    try:
        joined.stay(leave_now, controls, leave_asked)
    finally:
        server.close(keep_path=True)  # no more requests: they would reach for Ray while it shuts down
        try:
            joined.leave()
        finally:
            server.close()  # the socket goes last: `host drain --wait` returns once the host has left
        typer.echo(f"host {joined.host_id} left.")


@host_app.command("models")
def host_models() -> None:
    """Check the model weights the catalog's workloads need on this machine, and write those a host derives
    (requantized weights, a few seconds each), so a host's first chat does not wait for them. Exit 1 when a
    model here does not match the catalog's hash."""
    from archipelag.catalog import load_catalog
    from archipelag.runtimes.models import ModelStore

    settings = Settings()
    store = ModelStore(settings.models_dir)
    wrong = False
    for manifest in load_catalog(settings.workloads_dir).values():
        model = manifest.model
        if model is None:
            continue
        if not store.has(model):
            typer.echo(f"{model.id}: not here (its manifest's [model] source says how to supply it)")
            continue
        try:
            typer.echo(f"{model.id}: {store.verified(model)}")
        except ArchipelagError as exc:
            typer.echo(f"{model.id}: {exc.message}", err=True)
            wrong = True
    if wrong:
        raise typer.Exit(1)


def _leave_on_signals(drain_timeout_s: float) -> tuple[threading.Event, threading.Event]:
    """(leave now, leave asked): the first Ctrl-C asks to leave (a drain), the second leaves now; SIGTERM (a
    service manager, `archipelag up` stopping its hosts) leaves now."""
    leave_now, leave_asked = threading.Event(), threading.Event()

    def on_interrupt(*_: object) -> None:
        if leave_asked.is_set():
            leave_now.set()
            return
        leave_asked.set()
        typer.echo(f"draining: no new jobs; running ones have {drain_timeout_s:.0f} s to finish. "
                   "Ctrl-C again leaves now (they move to other hosts).")

    signal.signal(signal.SIGINT, on_interrupt)
    signal.signal(signal.SIGTERM, lambda *_: leave_now.set())
    return leave_now, leave_asked


@db_app.command("migrate")
def db_migrate() -> None:
    """Create or upgrade the ledger's schema and sync the catalog into it."""
    from archipelag.coordinator import prepare_ledger

    settings = Settings()
    prepare_ledger(settings)
    typer.echo(f"ledger ready at {settings.redacted()['database_url']}")


@config_app.command("show")
def config_show() -> None:
    """Print the effective settings, secrets redacted."""
    typer.echo(json.dumps(Settings().redacted(), indent=2, sort_keys=True))


host_controls.register(host_app)
gate.register(host_app)
jobs.register(app)
catalog.register(app)
chat.register(app)
people.register(app)
market.register(app)


def main() -> None:
    try:
        app()
    except ArchipelagError as exc:
        _fail(exc.message)
