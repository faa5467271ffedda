"""Generation commands: `chat` and `image`, talking to a network's OpenAI-compatible API through the SDK.

    archipelag chat "Why is the sea salty?"        tokens to the terminal as they come; usage on stderr
    echo "Summarise: …" | archipelag chat          the prompt from stdin when piped
    archipelag chat                                a conversation (REPL) when stdin is a terminal (or -i)
    archipelag image "a red fox" --out fox.png     a progress bar per denoising step; prints the path and seed

Errors are one line on stderr and exit code 1 (2 for usage, 130 when interrupted). Ctrl-C while an answer
or an image is being made cancels that job; in the REPL it only ends the current answer.
Mount them with ``register(app)``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from archipelag.cli.jobs import KeyOption, UrlOption, connected, fail, note
from archipelag.errors import ArchipelagError
from archipelag.sdk import DEFAULT_URL, Client
from archipelag.sdk.generation import DEFAULT_CHAT_MODEL

EXIT_WORDS = frozenset({"exit", "quit", "/exit", "/quit"})


def register(app: typer.Typer) -> None:
    """Add `chat` and `image` to the `archipelag` command (or any Typer app)."""
    app.command("chat")(chat)
    app.command("image")(image)


# --- chat -----------------------------------------------------------------------------------------


def stream_answer(client: Client, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
    """Print the answer's pieces as they come, then the usage on stderr; return the whole answer.
    Ctrl-C stops the answer (closing the stream cancels its job) and is raised on."""
    stream = client.chat_stream(messages, **params)
    try:
        for piece in stream:
            typer.echo(piece, nl=False)
    except KeyboardInterrupt:
        stream.close()
        typer.echo()
        raise
    typer.echo()
    usage = stream.usage
    if usage is not None:
        cut = ", cut at --max-tokens" if stream.finish_reason == "length" else ""
        note(f"[{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens{cut}, "
             f"job {stream.job_id}]")
    return stream.content


def repl(client: Client, system: str | None, params: dict[str, Any]) -> None:
    """A conversation: each answer joins the history. Empty line: skipped; `exit`, Ctrl-D: the end."""
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    note(f"chatting with {params['model']}: `exit` or Ctrl-D ends, Ctrl-C stops an answer")
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            typer.echo()
            return
        if not line.strip():
            continue
        if line.strip().lower() in EXIT_WORDS:
            return
        history.append({"role": "user", "content": line})
        try:
            answer = stream_answer(client, history, params)
        except KeyboardInterrupt:
            note("(stopped)")
            history.pop()
            continue
        except ArchipelagError as exc:
            typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
            history.pop()
            continue
        history.append({"role": "assistant", "content": answer})


def chat(
    prompt: Annotated[str | None, typer.Argument(help="What to ask; omitted: stdin when piped, else a REPL.")]
        = None,
    model: Annotated[str, typer.Option("--model", "-m", help="A chat model id or its workload's slug.")]
        = DEFAULT_CHAT_MODEL,
    system: Annotated[str | None, typer.Option("--system", "-s", help="A system prompt.")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1, max=4096,
                                                   help="The answer's length limit (default 256).")] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, max=2.0, help="0 is most predictable.")]
        = None,
    seed: Annotated[int | None, typer.Option(min=0, help="The same seed and prompt give the same answer.")]
        = None,
    interactive: Annotated[bool | None, typer.Option("--interactive/--once", "-i",
                                                     help="Force a conversation, or a single answer.")]
        = None,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """Chat with a model on the network: the answer streams to the terminal as it is made."""
    params: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": temperature,
                              "seed": seed}
    as_repl = interactive if interactive is not None else prompt is None and sys.stdin.isatty()
    if as_repl:
        with connected(url, api_key) as client:
            repl(client, system, params)
        return
    text = prompt if prompt is not None else sys.stdin.read()
    if not text.strip():
        fail("nothing to ask: give a PROMPT, or pipe the prompt into stdin", code=2)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    with connected(url, api_key) as client:
        try:
            stream_answer(client, messages, params)
        except KeyboardInterrupt:
            fail("interrupted; the answer's job was cancelled", code=130)


# --- image ----------------------------------------------------------------------------------------


def image(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Where to save the PNG "
                                             "(default: archipelag-<seed>.png here).")] = None,
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT, e.g. 64x64 (default: the model's).")] = None,
    steps: Annotated[int | None, typer.Option(min=1, max=150, help="Denoising steps.")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="The same seed and prompt give the same image.")]
        = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="An image model (default: the first "
                                              "the network can run).")] = None,
    negative: Annotated[str | None, typer.Option("--negative", help="What the image should not show.")]
        = None,
    guidance: Annotated[float | None, typer.Option(min=0.0, max=30.0,
                                                   help="How closely to follow the prompt.")] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """Generate an image on the network, with a progress bar, and save it as a PNG."""
    if out is not None and not out.parent.is_dir():
        fail(f"cannot save to {out}: the folder {out.parent} does not exist", code=2)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with connected(url, api_key) as client, Progress(*columns, console=Console(stderr=True),
                                                     transient=True) as progress:
        task = progress.add_task("waiting for a host", total=None)

        def on_progress(step: int, total: int) -> None:
            progress.update(task, description="denoising", completed=step, total=total)

        try:
            result = client.generate_image(prompt, on_progress=on_progress, model=model, size=size,
                                           steps=steps, seed=seed, negative_prompt=negative,
                                           guidance_scale=guidance)
        except KeyboardInterrupt:
            progress.stop()
            fail("interrupted; the image's job was cancelled", code=130)
    path = out or Path(f"archipelag-{result.seed if result.seed is not None else result.job_id}.png")
    try:
        path.write_bytes(result.png)
    except OSError as exc:
        fail(f"cannot save to {path}: {exc.strerror}")
    typer.echo(f"saved {path} ({result.width}x{result.height}, seed {result.seed})")
    note(f"job {result.job_id}")
