"""The client commands (`submit`, `jobs`, `hosts`, …) against the fake network, through CliRunner."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from fake_api import KEY, READ_ONLY_KEY, FakeNetwork, build_app, free_port_url
from netutil import serve
from typer.testing import CliRunner, Result

from archipelag.cli.jobs import register

NET = FakeNetwork()
APP = typer.Typer()
register(APP)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve(build_app(NET)) as base:
        yield base


@pytest.fixture
def cli(url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    NET.__init__()  # type: ignore[misc]
    monkeypatch.setenv("ARCHIPELAG_URL", url)
    monkeypatch.setenv("ARCHIPELAG_API_KEY", KEY)
    monkeypatch.setenv("COLUMNS", "200")
    return CliRunner()


def invoke(cli: CliRunner, *args: str, stdin: str | None = None) -> Result:
    return cli.invoke(APP, list(args), input=stdin)


# --- submit -----------------------------------------------------------------------------------------


def test_submit_prints_the_job(cli: CliRunner) -> None:
    result = invoke(cli, "submit", "echo", "--input", '{"text": "hi"}', "--json")
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["workload_slug"] == "echo" and job["status"] == "completed"
    table = invoke(cli, "submit", "echo", "--input", '{"text": "hi"}')
    assert table.exit_code == 0 and "workload_slug" in table.stdout and "echo" in table.stdout


def test_submit_stream_prints_tokens_on_stdout_and_the_rest_on_stderr(cli: CliRunner) -> None:
    result = invoke(cli, "submit", "echo", "--input", '{"text": "one two three"}', "--stream")
    assert result.exit_code == 0, result.output
    assert result.stdout == "one two three\n"
    assert "[status] starting" in result.stderr
    assert "usage: prompt_tokens 1, completion_tokens 3" in result.stderr


def test_submit_stream_of_structured_output_prints_the_output(cli: CliRunner) -> None:
    result = invoke(cli, "submit", "image", "-i", '{"prompt": "a cat"}', "--stream")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["seed"] == 7
    assert "[progress] 2/2" in result.stderr and "[image] png 64x64" in result.stderr


def test_submit_stream_of_a_failing_job_exits_1(cli: CliRunner) -> None:
    result = invoke(cli, "submit", "broken", "--stream")
    assert result.exit_code == 1
    assert "the workload crashed" in result.stderr and "Traceback" not in result.output


def test_submit_stream_json_prints_one_event_per_line(cli: CliRunner) -> None:
    result = invoke(cli, "submit", "echo", "-i", '{"text": "a b"}', "--stream", "--json")
    assert result.exit_code == 0
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["type"] for e in events] == ["status", "token", "token", "done"]


def test_submit_wait_prints_the_output_and_exits_by_outcome(cli: CliRunner) -> None:
    ok = invoke(cli, "submit", "echo", "-i", '{"text": "done deal"}', "--wait", "--timeout", "5")
    assert ok.exit_code == 0 and ok.stdout == "done deal\n" and "0.25 credits" in ok.stderr
    failed = invoke(cli, "submit", "broken", "--wait")
    assert failed.exit_code == 1 and "ended failed: the workload crashed" in failed.stderr


def test_submit_wait_past_its_timeout_exits_1(cli: CliRunner) -> None:
    result = invoke(cli, "submit", "slow", "--wait", "--timeout", "0.1")
    assert result.exit_code == 1 and "still running" in result.stderr


def test_submit_reads_input_from_a_file_or_stdin(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "input.json"
    path.write_text('{"text": "from file"}')
    assert invoke(cli, "submit", "echo", "-i", f"@{path}", "--wait").stdout == "from file\n"
    assert invoke(cli, "submit", "echo", "-i", "-", "--wait", stdin='{"text": "piped"}').stdout == "piped\n"


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", "@/no/such/file.json"])
def test_bad_input_is_a_usage_error(cli: CliRunner, bad: str) -> None:
    result = invoke(cli, "submit", "echo", "--input", bad)
    assert result.exit_code == 2 and "--input" in result.output


def test_submit_passes_region_and_priority(cli: CliRunner) -> None:
    result = invoke(cli, "submit", "echo", "--region", "eu-west", "--priority", "5", "--json")
    assert result.exit_code == 0, result.output


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "key", "message"), [
    (("jobs", "get", "nope"), KEY, "no job 'nope'"),
    (("account",), "ak_wrong", "a valid API key is required"),
    (("submit", "echo"), READ_ONLY_KEY, "this key lacks the write scope"),
    (("submit", "pricey"), KEY, "not enough credits"),
    (("submit", "nocap"), KEY, "no online host can take this job"),
    (("jobs", "list", "--limit", "0"), KEY, "Invalid value"),
])
def test_errors_are_one_line_on_stderr(cli: CliRunner, args: tuple[str, ...], key: str, message: str) -> None:
    result = invoke(cli, *args, "--api-key", key)
    assert result.exit_code == (2 if "--limit" in args else 1)
    assert message in result.stderr and "Traceback" not in result.output


def test_an_unreachable_network_says_how_to_start_it(cli: CliRunner) -> None:
    url = free_port_url()
    result = invoke(cli, "hosts", "list", "--url", url)
    assert result.exit_code == 1
    assert result.stderr == f"error: cannot reach the network at {url}: is `make up` running?\n"


# --- jobs, hosts, workloads, keys, account ----------------------------------------------------------


def test_jobs_list_get_cancel(cli: CliRunner) -> None:
    slow = json.loads(invoke(cli, "submit", "slow", "--json").stdout)
    listed = json.loads(invoke(cli, "jobs", "list", "--json", "--limit", "5").stdout)
    assert listed["meta"] == {"total": 1, "limit": 5, "offset": 0}
    assert listed["data"][0]["id"] == slow["id"]
    table = invoke(cli, "jobs", "list")
    assert table.exit_code == 0 and slow["id"] in table.stdout and "1–1 of 1" in table.stdout
    got = invoke(cli, "jobs", "get", slow["id"])
    assert got.exit_code == 0 and "running" in got.stdout
    cancelled = invoke(cli, "jobs", "cancel", slow["id"])
    assert cancelled.stdout == f"job {slow['id']} cancelled\n"


def test_jobs_stream_replays_a_finished_job(cli: CliRunner) -> None:
    job = json.loads(invoke(cli, "submit", "echo", "-i", '{"text": "again"}', "--json").stdout)
    result = invoke(cli, "jobs", "stream", job["id"])
    assert result.exit_code == 0 and result.stdout == "again\n"


def test_hosts_list_get_karma(cli: CliRunner) -> None:
    table = invoke(cli, "hosts", "list")
    assert table.exit_code == 0
    assert "host-a1" in table.stdout and "RTX 4090" in table.stdout and "us-east" in table.stdout
    listed = json.loads(invoke(cli, "hosts", "list", "--json").stdout)
    assert [h["id"] for h in listed["data"]] == ["host-a1", "host-b2"]
    assert json.loads(invoke(cli, "hosts", "get", "host-b2", "--json").stdout)["status"] == "paused"
    assert "job_completed" in invoke(cli, "hosts", "karma", "host-a1").stdout
    missing = invoke(cli, "hosts", "get", "host-zz")
    assert missing.exit_code == 1 and "no host 'host-zz'" in missing.stderr


def test_workloads_list_and_get(cli: CliRunner) -> None:
    table = invoke(cli, "workloads", "list")
    assert table.exit_code == 0 and "echo" in table.stdout and "Tiny image" in table.stdout
    assert json.loads(invoke(cli, "workloads", "get", "image", "--json").stdout)["price_per_job"] == 2.0


def test_account(cli: CliRunner) -> None:
    result = invoke(cli, "account")
    assert result.exit_code == 0 and "ada@example.org" in result.stdout and "99.5" in result.stdout
    assert json.loads(invoke(cli, "account", "--json").stdout)["credits"] == 99.5


def test_keys_create_list_revoke(cli: CliRunner) -> None:
    created = invoke(cli, "keys", "create", "laptop", "--scope", "read")
    assert created.exit_code == 0 and created.stdout == "ak_new1secret\n"
    assert "not shown again" in created.stderr
    assert "laptop" in invoke(cli, "keys", "list").stdout
    assert invoke(cli, "keys", "revoke", "1").stdout == "key 1 (laptop) revoked\n"


def test_register_mounts_the_commands() -> None:
    app = typer.Typer()
    register(app)
    help_text = CliRunner().invoke(app, ["--help"]).stdout
    for name in ("submit", "account", "jobs", "hosts", "workloads", "keys"):
        assert name in help_text
