"""`archipelag batch submit|status` through CliRunner, against the real API app, ledger and jobs service with a
scripted host over a real socket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from model_network import a_model_network, serve
from typer.testing import CliRunner, Result

from archipelag.cli.jobs import register

APP = typer.Typer()
register(APP)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    net = a_model_network(tmp_path_factory.mktemp("cli-batch"), credits_micro=100_000_000)
    with serve(net.app) as url:
        yield url, net.key


@pytest.fixture
def cli(network: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("ARCHIPELAG_URL", network[0])
    monkeypatch.setenv("ARCHIPELAG_API_KEY", network[1])
    monkeypatch.setenv("COLUMNS", "200")
    return CliRunner()


def invoke(cli: CliRunner, *args: str, stdin: str | None = None) -> Result:
    return cli.invoke(APP, list(args), input=stdin)


def lines(*prompts: str) -> str:
    return "\n".join(json.dumps({"messages": [{"role": "user", "content": p}], "max_tokens": 8})
                     for p in prompts) + "\n\n"


def test_batch_submit_wait_prints_the_merged_output(cli: CliRunner, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(lines("one", "two three"))
    result = invoke(cli, "batch", "submit", "llm-chat", "--inputs", str(inputs), "--wait", "--max-parallelism", "1")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == ["one", "two three"]
    assert "[progress]" in result.stderr


def test_batch_submit_prints_the_id_and_batch_status_shows_the_children(cli: CliRunner) -> None:
    submitted = invoke(cli, "batch", "submit", "llm-chat", "--inputs", "-", stdin=lines("a", "b"))
    assert submitted.exit_code == 0, submitted.output
    batch_id = submitted.stdout.strip()
    waited = invoke(cli, "batch", "status", batch_id, "--json")
    progress = json.loads(waited.stdout)
    assert progress["parent_id"] == batch_id and progress["chunk_count"] == 2
    table = invoke(cli, "batch", "status", batch_id)
    assert table.exit_code == 0 and batch_id in table.stdout and "state" in table.stdout


def test_a_failed_batch_exits_1_and_bad_inputs_are_usage_errors(cli: CliRunner, tmp_path: Path) -> None:
    failed = invoke(cli, "batch", "submit", "llm-chat", "--inputs", "-", "--wait", "--fail-mode", "fail_fast",
                    stdin=lines("please fail", "fine"))
    assert failed.exit_code == 1 and "fail_fast" in failed.stderr
    not_json = invoke(cli, "batch", "submit", "llm-chat", "--inputs", "-", stdin='{"a": 1}\nnope\n')
    assert not_json.exit_code == 2 and "line 2" in not_json.output
    empty = invoke(cli, "batch", "submit", "llm-chat", "--inputs", "-", stdin="\n")
    assert empty.exit_code == 2
    wrong = invoke(cli, "batch", "submit", "llm-chat", "--inputs", "-", stdin='{"max_tokens": 0}\n')
    assert wrong.exit_code == 1 and "inputs[0]" in wrong.stderr
    missing = invoke(cli, "batch", "status", "no-such-batch")
    assert missing.exit_code == 1
