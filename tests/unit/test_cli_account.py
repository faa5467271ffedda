"""`archipelag account`, `account earnings`, `account payout` and `account usage` against the real API app and
ledger (served on a local port)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from ledger_contract import a_settled_job, an_owned_host
from model_network import ModelNetwork, a_model_network, serve
from typer.testing import CliRunner, Result

from archipelag.cli.jobs import register

APP = typer.Typer()
register(APP)
SLUG = "text-stats"


@pytest.fixture
def net(tmp_path: Path) -> ModelNetwork:
    network = a_model_network(tmp_path)
    owner = network.ledger.get_account(network.account_id)
    an_owned_host(network.ledger, owner, "host-a", karma=10.0)
    user = network.ledger.create_account("bob@example.org", 1_000_000)
    a_settled_job(network.ledger, user, "host-a", 100_000, workload=SLUG)
    a_settled_job(network.ledger, owner, "host-a", 20_000, workload=SLUG)
    return network


@pytest.fixture
def cli(net: ModelNetwork, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    with serve(net.app) as url:
        monkeypatch.setenv("ARCHIPELAG_URL", url)
        monkeypatch.setenv("ARCHIPELAG_API_KEY", net.key)  # the owner of host-a
        monkeypatch.setenv("COLUMNS", "200")
        yield CliRunner()


def invoke(cli: CliRunner, *args: str) -> Result:
    return cli.invoke(APP, list(args))


def test_account_alone_still_shows_the_account(cli: CliRunner) -> None:
    result = invoke(cli, "account", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["email"] == "ada@example.org"


def test_earnings_per_day_and_host_then_a_payout_and_its_list(cli: CliRunner) -> None:
    result = invoke(cli, "account", "earnings")
    assert result.exit_code == 0, result.output
    assert "host-a" in result.stdout and "0.108" in result.stdout and "unpaid 0.108" in result.stdout
    found = json.loads(invoke(cli, "account", "earnings", "--host", "host-a", "--json").stdout)
    assert found["by_host"] == {"host-a": 0.108}
    result = invoke(cli, "account", "payout", "0.1")
    assert result.exit_code == 0, result.output
    assert "0.1 credits paid out" in result.stdout
    result = invoke(cli, "account", "payout", "0.1")
    assert result.exit_code == 1 and "more than the 0.008 unpaid" in result.output
    listed = json.loads(invoke(cli, "account", "payout", "--list", "--json").stdout)
    assert [p["amount"] for p in listed] == [0.1]


def test_payout_needs_an_amount_or_list(cli: CliRunner) -> None:
    assert invoke(cli, "account", "payout").exit_code == 2
    assert invoke(cli, "account", "payout", "1", "--list").exit_code == 2


def test_a_bad_day_is_one_line_and_exit_1(cli: CliRunner) -> None:
    result = invoke(cli, "account", "earnings", "--from", "someday")
    assert result.exit_code == 1 and "error:" in result.output


def test_usage_per_day_and_workload(cli: CliRunner) -> None:
    result = invoke(cli, "account", "usage")
    assert result.exit_code == 0, result.output
    assert SLUG in result.stdout and "0.02 credits" in result.stdout
