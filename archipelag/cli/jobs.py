"""Client commands: `submit`, `jobs`, `hosts`, `workloads`, `keys`, `account`, talking to a network over HTTP.

Each command parses, builds one ``archipelag.sdk.Client``, makes its calls, and prints a rich table or,
with ``--json``, the API's objects. Errors become one line on stderr and exit code 1 (2 for usage).
Mount them with ``register(app)``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from archipelag.errors import ArchipelagError
from archipelag.sdk import DEFAULT_URL, Client, Event, Job, JobState, Page

UrlOption = Annotated[str, typer.Option("--url", envvar="ARCHIPELAG_URL", help="The network's API.")]
KeyOption = Annotated[str | None, typer.Option("--api-key", envvar="ARCHIPELAG_API_KEY", show_default=False,
                                               help="An API key (ak_…).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]

jobs_app = typer.Typer(help="Jobs: list, inspect, cancel, verify.", no_args_is_help=True)
hosts_app = typer.Typer(help="The hosts of the network.", no_args_is_help=True)
workloads_app = typer.Typer(help="The workload catalog.", no_args_is_help=True)
keys_app = typer.Typer(help="Your API keys.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the client commands to the `archipelag` command (or any Typer app), `batch` and `account`
    (with its earnings, payout and usage subcommands) among them."""
    from archipelag.cli import account, batch  # they build on this module's helpers

    app.command("submit")(submit)
    account.register(app)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(hosts_app, name="hosts")
    app.add_typer(workloads_app, name="workloads")
    app.add_typer(keys_app, name="keys")
    batch.register(app)


# --- plumbing -------------------------------------------------------------------------------------


def fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def note(message: str) -> None:
    typer.secho(message, fg=typer.colors.BRIGHT_BLACK, err=True)


@contextmanager
def connected(url: str, api_key: str | None) -> Iterator[Client]:
    """A client for the command's duration; any ArchipelagError becomes one line and exit code 1."""
    try:
        with Client(url, api_key) as client:
            yield client
    except ArchipelagError as exc:
        fail(exc.message)


def dumped(value: BaseModel | Page[Any]) -> Any:
    if isinstance(value, Page):
        return {"data": [dumped(item) for item in value.items],
                "meta": {"total": value.total, "limit": value.limit, "offset": value.offset}}
    return value.model_dump(mode="json")


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], caption: str | None = None) -> None:
    table = Table(*columns, caption=caption, header_style="bold")
    table.columns[0].no_wrap = True
    for row in rows:
        table.add_row(*(text(cell) for cell in row))
    Console().print(table)


def print_fields(model: BaseModel) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in model.model_dump(mode="json").items():
        table.add_row(name, text(value))
    Console().print(table)


def parse_input(raw: str) -> dict[str, Any]:
    """`--input`: a JSON object given inline, as @FILE, or as `-` for stdin."""
    source = raw
    if raw == "-":
        source = sys.stdin.read()
    elif raw.startswith("@"):
        try:
            source = Path(raw[1:]).read_text()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {raw[1:]}: {exc.strerror}", param_hint="--input") from None
    try:
        value = json.loads(source)
    except ValueError as exc:
        raise typer.BadParameter(f"not valid JSON ({exc})", param_hint="--input") from None
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object, e.g. '{\"prompt\": \"hi\"}'", param_hint="--input")
    return value


# --- submit ---------------------------------------------------------------------------------------


def submit(
    workload: Annotated[str, typer.Argument(help="The workload's slug, e.g. llm-chat.")],
    input: Annotated[str, typer.Option("--input", "-i", help="A JSON object, @FILE, or - for stdin.")] = "{}",
    stream: Annotated[bool, typer.Option("--stream", help="Print output as it comes.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the job to end; print its output.")] = False,
    region: Annotated[str | None, typer.Option(help="Your region, for placing the job near you.")] = None,
    priority: Annotated[int | None, typer.Option(help="0-100: higher runs sooner; a waiting job gains a point per "
                                                      "second, a new one loses one per job of yours already waiting.",
                                                 min=0, max=100)] = None,
    timeout_s: Annotated[float | None, typer.Option("--timeout", help="Seconds --wait waits.")] = None,
    bid: Annotated[float | None, typer.Option(help="The most to pay per job, in credits (default: your saved bid, "
                                                   "else the market rate).", min=0)] = None,
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """Submit a job. Exit code 1 when, with --stream or --wait, the job does not complete."""
    job_input = parse_input(input)
    with connected(url, api_key) as client:
        job = client.create_job(workload, job_input, priority=priority, region=region, bid_price=bid)
        if stream:
            ok = stream_job(client, job, json_out)
        elif wait:
            ok = show_finished(client.wait_job(job.id, timeout_s), json_out)
        else:
            print_json(dumped(job)) if json_out else print_fields(job)
            return
    if not ok:
        raise typer.Exit(1)


def stream_job(client: Client, job: Job, json_out: bool) -> bool:
    """Tokens to stdout as they come; status, progress and usage to stderr. True when it completed."""
    if not json_out:
        note(f"job {job.id} {job.status.value}")
    printed = False
    last: Event | None = None
    try:
        for event in client.stream(job.id):
            last = event
            if json_out:
                typer.echo(json.dumps(event))
            elif event["type"] == "token":
                typer.echo(event.get("content", ""), nl=False)
                printed = True
            else:
                show_side_event(event)
    except KeyboardInterrupt:
        fail(f"interrupted; the job goes on (archipelag jobs cancel {job.id})", code=130)
    if printed:
        typer.echo()
    if last is None or last["type"] == "error":
        if not json_out:
            error = last.get("error") or last.get("message") if last else "the stream ended without events"
            typer.secho(f"error: job {job.id} did not complete: {error}", fg=typer.colors.RED, err=True)
        return False
    if not json_out and not printed:
        output = last.get("output")
        if output is None:
            output = client.wait_job(job.id, timeout=10).output
        if output is not None:
            typer.echo(output if isinstance(output, str) else json.dumps(output))
    if not json_out and last.get("usage"):
        note("usage: " + ", ".join(f"{k} {text(v)}" for k, v in last["usage"].items()))
    return True


def show_side_event(event: Event) -> None:
    kind = event["type"]
    if kind == "status":
        note(f"[status] {event.get('message', '')}")
    elif kind == "progress":
        note(f"[progress] {event.get('step')}/{event.get('total')}")
    elif kind == "image":
        size = len(event.get("image_data") or "")
        shape = f"{event.get('width')}x{event.get('height')}"
        note(f"[image] {event.get('format')} {shape} ({size} base64 chars)")
    elif kind not in {"done", "error"}:
        note(f"[{kind}] {json.dumps(event)}")


def show_finished(job: Job, json_out: bool) -> bool:
    if json_out:
        print_json(dumped(job))
    elif job.output is not None:
        typer.echo(job.output)
    if job.status is not JobState.COMPLETED:
        typer.secho(f"error: job {job.id} ended {job.status.value}: {job.error or 'no reason given'}",
                    fg=typer.colors.RED, err=True)
        return False
    if not json_out:
        usage = job.usage
        note(f"usage: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens, "
             f"{usage.credits_used:g} credits")
    return True


# --- jobs -----------------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list(
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    json_out: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None,
) -> None:
    """Your jobs, newest first."""
    with connected(url, api_key) as client:
        page = client.list_jobs(limit=limit, offset=offset)
    if json_out:
        print_json(dumped(page))
        return
    first = page.offset + 1 if len(page) else 0
    caption = f"{first}–{page.offset + len(page)} of {page.total}"
    print_table(("ID", "WORKLOAD", "STATUS", "HOST", "CREATED", "MS", "CREDITS"),
                ((j.id, j.workload_slug, j.status.value, j.host_id, j.created_at, j.duration_ms,
                  j.usage.credits_used) for j in page), caption=caption)


@jobs_app.command("get")
def jobs_get(job_id: str, json_out: JsonOption = False, url: UrlOption = DEFAULT_URL,
             api_key: KeyOption = None) -> None:
    """One job, with its output."""
    with connected(url, api_key) as client:
        job = client.get_job(job_id)
    print_json(dumped(job)) if json_out else print_fields(job)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, json_out: JsonOption = False, url: UrlOption = DEFAULT_URL,
                api_key: KeyOption = None) -> None:
    """Cancel a job (a job that already ended stays as it was)."""
    with connected(url, api_key) as client:
        job = client.cancel_job(job_id)
    print_json(dumped(job)) if json_out else typer.echo(f"job {job.id} {job.status.value}")


@jobs_app.command("stream")
def jobs_stream(job_id: str, json_out: JsonOption = False, url: UrlOption = DEFAULT_URL,
                api_key: KeyOption = None) -> None:
    """Follow a job's output (replayed when it already ended)."""
    with connected(url, api_key) as client:
        ok = stream_job(client, client.get_job(job_id), json_out)
    if not ok:
        raise typer.Exit(1)


@jobs_app.command("verify")
def jobs_verify(job_id: str, json_out: JsonOption = False, url: UrlOption = DEFAULT_URL,
                api_key: KeyOption = None) -> None:
    """Check a completed job's receipt here: its host's signature over the job, its usage and its output."""
    with connected(url, api_key) as client:
        receipt = client.verify_receipt(job_id)
    if json_out:
        print_json(dumped(receipt))
        return
    typer.echo(f"receipt verified: signed by host {receipt.host_id} (key {receipt.host_public_key})")


# --- hosts, workloads, keys, account --------------------------------------------------------------


@hosts_app.command("list")
def hosts_list(json_out: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """The hosts the network knows, with their capabilities and karma."""
    with connected(url, api_key) as client:
        page = client.hosts()
    if json_out:
        print_json(dumped(page))
        return
    print_table(("ID", "NAME", "STATUS", "REGION", "CORES", "RAM MB", "GPU", "KARMA", "JOBS"),
                ((h.id, h.name, h.status, h.region, h.capabilities.cpu_cores, h.capabilities.ram_mb,
                  h.capabilities.gpu_model, h.karma_score, h.active_jobs) for h in page))


@hosts_app.command("get")
def hosts_get(host_id: str, json_out: JsonOption = False, url: UrlOption = DEFAULT_URL,
              api_key: KeyOption = None) -> None:
    """One host."""
    with connected(url, api_key) as client:
        host = client.host(host_id)
    print_json(dumped(host)) if json_out else print_fields(host)


@hosts_app.command("karma")
def hosts_karma(
    host_id: str,
    history: Annotated[bool, typer.Option("--history", help="Its karma events, newest first, a page at a time.")]
    = False,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    json_out: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None,
) -> None:
    """A host's karma: score, standing (good, cooldown, suspended) and why, and its latest events."""
    with connected(url, api_key) as client:
        if not history:
            karma = client.host_karma(host_id)
            print_json(dumped(karma)) if json_out else print_fields(karma)
            return
        page = client.host_karma_history(host_id, limit=limit, offset=offset)
    if json_out:
        print_json({"data": list(page.items), "meta": {"total": page.total, "limit": page.limit,
                                                       "offset": page.offset}})
        return
    first = page.offset + 1 if len(page) else 0
    print_table(("AT", "KIND", "POINTS", "JOB", "REASON"),
                ((e.get("at"), e.get("kind"), e.get("points"), e.get("job_id"), e.get("reason")) for e in page),
                caption=f"{first}–{page.offset + len(page)} of {page.total}")


@hosts_app.command("approve")
def hosts_approve(code: str, json_out: JsonOption = False, url: UrlOption = DEFAULT_URL,
                  api_key: KeyOption = None) -> None:
    """Approve the pairing code a machine shows (`archipelag host join --coordinator https://…`): it becomes
    your host and joins."""
    with connected(url, api_key) as client:
        host = client.approve_host(code)
    print_json(dumped(host)) if json_out else typer.echo(f"host {host.id} ({host.name}, {host.region}) is yours; "
                                                         "it joins within seconds")


@hosts_app.command("revoke")
def hosts_revoke(host_id: str, reason: Annotated[str, typer.Option(help="Why, for the record.")] =
                 "revoked by its owner", json_out: JsonOption = False, url: UrlOption = DEFAULT_URL,
                 api_key: KeyOption = None) -> None:
    """Cut one of your hosts off for good (admins: any host); its running jobs move to other hosts."""
    with connected(url, api_key) as client:
        host = client.revoke_host(host_id, reason)
    print_json(dumped(host)) if json_out else typer.echo(f"host {host.id} revoked")


@hosts_app.command("mine")
def hosts_mine(json_out: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """The hosts your account owns."""
    with connected(url, api_key) as client:
        page = client.my_hosts()
    if json_out:
        print_json(dumped(page))
        return
    print_table(("ID", "NAME", "STATUS", "REGION", "KARMA", "JOBS", "REVOKED"),
                ((h.id, h.name, h.status, h.region, h.karma_score, h.active_jobs, h.revoked) for h in page))


@workloads_app.command("list")
def workloads_list(json_out: JsonOption = False, url: UrlOption = DEFAULT_URL,
                   api_key: KeyOption = None) -> None:
    """The catalog: what you can submit."""
    with connected(url, api_key) as client:
        page = client.workloads()
    if json_out:
        print_json(dumped(page))
        return
    print_table(("SLUG", "NAME", "RUNTIME", "PRICE", "RAM MB", "VRAM MB", "TRUST", "ENABLED"),
                ((w.slug, w.name, w.runtime_type, w.price_per_job, w.required_ram_mb, w.required_vram_mb,
                  w.trust_level, w.is_enabled) for w in page))


@workloads_app.command("get")
def workloads_get(slug: str, json_out: JsonOption = False, url: UrlOption = DEFAULT_URL,
                  api_key: KeyOption = None) -> None:
    """One workload."""
    with connected(url, api_key) as client:
        workload = client.workload(slug)
    print_json(dumped(workload)) if json_out else print_fields(workload)


@keys_app.command("list")
def keys_list(json_out: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Your API keys (their prefixes; a full key is shown only once, when created)."""
    with connected(url, api_key) as client:
        page = client.api_keys()
    if json_out:
        print_json(dumped(page))
        return
    print_table(("ID", "NAME", "PREFIX", "SCOPES", "CREATED", "LAST USED", "EXPIRES"),
                ((k.id, k.name, k.prefix, ",".join(k.scopes), k.created_at, k.last_used_at, k.expires_at)
                 for k in page))


@keys_app.command("create")
def keys_create(
    name: str,
    scope: Annotated[list[str] | None, typer.Option(help="read or write; repeat for both (default: both).")]
        = None,
    json_out: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None,
) -> None:
    """Create an API key and print it: it is shown this once."""
    with connected(url, api_key) as client:
        key = client.create_api_key(name, scope or None)
    if json_out:
        print_json(dumped(key))
        return
    typer.echo(key.key)
    note(f"key {key.id} ({key.name}, {','.join(key.scopes) or 'default scopes'}): store it now, "
         "it is not shown again")


@keys_app.command("revoke")
def keys_revoke(key_id: str, json_out: JsonOption = False, url: UrlOption = DEFAULT_URL,
                api_key: KeyOption = None) -> None:
    """Revoke an API key."""
    with connected(url, api_key) as client:
        key = client.revoke_api_key(key_id)
    print_json(dumped(key)) if json_out else typer.echo(f"key {key.id} ({key.name}) revoked")


def account(json_out: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Your account and its credits."""
    with connected(url, api_key) as client:
        acct = client.account()
    print_json(dumped(acct)) if json_out else print_fields(acct)
