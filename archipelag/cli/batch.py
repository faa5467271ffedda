"""Batch commands: `batch submit WORKLOAD --inputs FILE.jsonl [--wait]` fans a file of inputs out to child jobs,
`batch status ID` shows how far a batch is. Mounted beside the job commands (``jobs.register``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from archipelag.cli.jobs import (
    JsonOption,
    KeyOption,
    UrlOption,
    connected,
    dumped,
    note,
    print_json,
    print_table,
)
from archipelag.sdk import DEFAULT_URL, BatchProgress, JobFailed

batch_app = typer.Typer(help="Batches: one workload over many inputs, as child jobs.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(batch_app, name="batch")


def read_inputs(source: str) -> list[dict[str, Any]]:
    """`--inputs`: JSON lines, one input object each (blank lines skipped), from a file or `-` for stdin."""
    try:
        lines = sys.stdin.read().splitlines() if source == "-" else Path(source).read_text().splitlines()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {source}: {exc.strerror}", param_hint="--inputs") from None
    inputs: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise typer.BadParameter(f"line {number} is not JSON ({exc})", param_hint="--inputs") from None
        if not isinstance(value, dict):
            raise typer.BadParameter(f"line {number} is not a JSON object", param_hint="--inputs")
        inputs.append(value)
    if not inputs:
        raise typer.BadParameter(f"{source} holds no inputs", param_hint="--inputs")
    return inputs


@batch_app.command("submit")
def batch_submit(
    workload: Annotated[str, typer.Argument(help="The workload's slug, e.g. wasm-hash.")],
    inputs: Annotated[str, typer.Option("--inputs", help="A JSON-lines file, one input object a line (- for stdin).")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the batch to end; print the merged output.")] = False,
    max_parallelism: Annotated[int | None, typer.Option(help="Children running at once (default: as many as fit).",
                                                        min=1)] = None,
    merge: Annotated[str, typer.Option(help="concat (a list of outputs) or flatten (lists spliced in).")] = "concat",
    fail_mode: Annotated[str, typer.Option(help="best_effort or fail_fast (the first failure cancels the rest).")] =
        "best_effort",
    region: Annotated[str | None, typer.Option(help="Your region, for placing the children near you.")] = None,
    bid_price: Annotated[float | None, typer.Option(help="Credits you bid per child.", min=0)] = None,
    priority: Annotated[int | None, typer.Option(help="0-100: higher runs sooner.", min=0, max=100)] = None,
    timeout_s: Annotated[float | None, typer.Option("--timeout", help="Seconds --wait waits.")] = None,
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """Submit a batch. Exit code 1 when, with --wait, the batch fails."""
    job_inputs = read_inputs(inputs)
    with connected(url, api_key) as client:
        batch = client.submit_batch(workload, job_inputs, merge_strategy=merge, fail_mode=fail_mode,
                                    max_parallelism=max_parallelism, region=region, bid_price=bid_price,
                                    priority=priority)
        if not wait:
            if json_out:
                print_json(dumped(batch))
            else:
                typer.echo(batch.id)
                note(f"batch of {batch.batch.chunk_count} {workload} jobs submitted; "
                     f"archipelag batch status {batch.id}")
            return
        note(f"batch {batch.id}: {batch.batch.chunk_count} jobs")
        try:
            client.wait_for_batch(batch.id, poll_interval=1.0, timeout=timeout_s, on_progress=_progress)
        except JobFailed as exc:
            typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.secho(f"interrupted; the batch goes on (archipelag jobs cancel {batch.id})", err=True)
            raise typer.Exit(130) from None
        parent = client.get_job(batch.id)
        if json_out:
            print_json(dumped(parent))
        else:
            typer.echo(parent.output)
        if parent.status.value != "completed":
            typer.secho(f"error: batch {batch.id} ended {parent.status.value}: {parent.error}",
                        fg=typer.colors.RED, err=True)
            raise typer.Exit(1)


def _progress(completed: int, failed: int, total: int) -> None:
    note(f"[progress] {completed} done, {failed} failed, of {total}")


@batch_app.command("status")
def batch_status(
    batch_id: Annotated[str, typer.Argument(help="The batch's id (its parent job's).")],
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """How far a batch is: its state, children per state, and each child."""
    with connected(url, api_key) as client:
        progress = client.get_batch_status(batch_id)
    if json_out:
        print_json(dumped(progress))
        return
    show_progress(progress)


def show_progress(progress: BatchProgress) -> None:
    counts = ", ".join(f"{state} {n}" for state, n in sorted(progress.child_states.items()))
    typer.echo(f"batch {progress.parent_id}: {progress.parent_state} ({progress.chunk_count} jobs: {counts}; "
               f"{progress.merge_strategy}, {progress.fail_mode})")
    print_table(("#", "job", "state", "host", "error"),
                ((c.batch_index, c.id, c.state, c.host_id, c.error) for c in progress.children))
