"""`archipelag chat` and `archipelag image` against the real API app with scripted hosts, through CliRunner."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from model_network import ModelNetwork, a_model_network, serve
from typer.testing import CliRunner, Result

from archipelag.cli.chat import register

APP = typer.Typer()
register(APP)


@pytest.fixture
def net(tmp_path: Path) -> ModelNetwork:
    return a_model_network(tmp_path)


@pytest.fixture
def cli(net: ModelNetwork, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    with serve(net.app) as url:
        monkeypatch.setenv("ARCHIPELAG_URL", url)
        monkeypatch.setenv("ARCHIPELAG_API_KEY", net.key)
        monkeypatch.setenv("COLUMNS", "200")
        yield CliRunner()


def invoke(cli: CliRunner, *args: str, stdin: str | None = None) -> Result:
    return cli.invoke(APP, list(args), input=stdin)


# --- chat ---------------------------------------------------------------------------------------------


def test_chat_prints_the_answer_and_the_usage_on_stderr(cli: CliRunner, net: ModelNetwork) -> None:
    result = invoke(cli, "chat", "hello from the terminal", "--system", "be brief", "--max-tokens", "9",
                    "--temperature", "0", "--seed", "4")
    assert result.exit_code == 0, result.output
    assert result.stdout == "hello from the terminal\n"
    assert "6 prompt + 4 completion tokens" in result.stderr
    assert net.host.ran == [{"messages": [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": "hello from the terminal"}],
                             "max_tokens": 9, "temperature": 0.0, "seed": 4}]


def test_chat_says_when_max_tokens_cut_the_answer(cli: CliRunner) -> None:
    result = invoke(cli, "chat", "one two three", "--max-tokens", "1")
    assert result.stdout == "one\n" and "cut at --max-tokens" in result.stderr


def test_chat_reads_a_piped_prompt(cli: CliRunner, net: ModelNetwork) -> None:
    result = invoke(cli, "chat", stdin="piped words\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "piped words\n"
    assert net.host.ran[0]["messages"] == [{"role": "user", "content": "piped words\n"}]


def test_chat_with_nothing_to_ask_is_a_usage_error(cli: CliRunner) -> None:
    result = invoke(cli, "chat", stdin="  \n")
    assert result.exit_code == 2 and "nothing to ask" in result.stderr


def test_the_repl_keeps_the_conversation_until_exit(cli: CliRunner, net: ModelNetwork) -> None:
    result = invoke(cli, "chat", "-i", "--system", "sys", stdin="first words\n\nsecond refuse\nthird\nexit\nnever\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("> ") == 5  # the blank line asks again; nothing after `exit`
    assert "first words\n" in result.stdout and "third\n" in result.stdout
    assert "error:" in result.stderr and "refused" in result.stderr  # a failed turn does not end the chat
    assert [[m["content"] for m in job["messages"]] for job in net.host.ran] == [
        ["sys", "first words"],
        ["sys", "first words", "first words", "second refuse"],
        ["sys", "first words", "first words", "third"],  # the failed turn left no trace
    ]


def test_the_repl_ends_at_end_of_input(cli: CliRunner) -> None:
    result = invoke(cli, "chat", "--interactive", stdin="hi\n")
    assert result.exit_code == 0 and "hi\n" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("chat", "hi", "--model", "gpt-4o"), "the chat model 'gpt-4o' does not exist"),
    (("chat", "x fail"), "the model crashed"),
    (("chat", "refuse"), "the model refused the input"),
])
def test_chat_errors_are_one_line_and_exit_1(cli: CliRunner, args: tuple[str, ...], message: str) -> None:
    result = invoke(cli, *args)
    assert result.exit_code == 1
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert message in line


def test_chat_without_a_network_says_how_to_start_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIPELAG_URL", "http://127.0.0.1:9")
    result = CliRunner().invoke(APP, ["chat", "hi"])
    assert result.exit_code == 1 and "cannot reach the network" in result.stderr


# --- image --------------------------------------------------------------------------------------------


def test_image_saves_the_png_and_prints_the_path_and_seed(cli: CliRunner, net: ModelNetwork,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "fox.png"
    result = invoke(cli, "image", "a red fox", "--out", str(out), "--size", "64x64", "--steps", "3",
                    "--seed", "12", "--negative", "blur", "--guidance", "4")
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\x89PNG")
    assert result.stdout == f"saved {out} (64x64, seed 12)\n"
    assert net.host.ran == [{"prompt": "a red fox", "width": 64, "height": 64, "steps": 3, "guidance_scale": 4.0,
                             "negative_prompt": "blur", "seed": 12}]


def test_image_names_the_file_by_its_seed_by_default(cli: CliRunner, tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = invoke(cli, "image", "a fox")
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "archipelag-7.png").read_bytes().startswith(b"\x89PNG")
    assert "saved archipelag-7.png" in result.stdout


def test_image_errors_are_one_line(cli: CliRunner, tmp_path: Path) -> None:
    missing_dir = invoke(cli, "image", "fox", "--out", str(tmp_path / "nope" / "x.png"))
    assert missing_dir.exit_code == 2 and "does not exist" in missing_dir.stderr
    bad_size = invoke(cli, "image", "fox", "--size", "huge", "--out", str(tmp_path / "x.png"))
    assert bad_size.exit_code == 1 and "size: must be WIDTHxHEIGHT" in bad_size.stderr
    no_gpu = invoke(cli, "image", "fox", "--model", "sdxl", "--out", str(tmp_path / "x.png"))
    assert no_gpu.exit_code == 1 and "GPU memory" in no_gpu.stderr
    assert not (tmp_path / "x.png").exists()
