"""`archipelag signup | verify | login | admin …` against the real API app and ledger (scripted hosts), served on a
real socket, through CliRunner; `admin create` straight on a ledger database."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from model_network import ModelNetwork, a_model_network, serve
from typer.testing import CliRunner, Result

from archipelag.cli.people import register
from archipelag.ledger import Ledger

APP = typer.Typer()
register(APP)
PASSWORD = "a long pass phrase"


@pytest.fixture
def net(tmp_path: Path) -> ModelNetwork:
    return a_model_network(tmp_path, signup_policy="open")


@pytest.fixture
def cli(net: ModelNetwork, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    with serve(net.app) as url:
        monkeypatch.setenv("ARCHIPELAG_URL", url)
        monkeypatch.setenv("ARCHIPELAG_API_KEY", net.key)  # the network's admin
        monkeypatch.setenv("COLUMNS", "200")
        yield CliRunner()


def invoke(cli: CliRunner, *args: str, stdin: str | None = None) -> Result:
    return cli.invoke(APP, list(args), input=stdin)


def test_a_stranger_signs_up_verifies_and_logs_in(net: ModelNetwork, cli: CliRunner) -> None:
    opened = invoke(cli, "signup", "jo@example.org", "--password-stdin", stdin=PASSWORD + "\n")
    assert opened.exit_code == 0, opened.output
    token = re.search(r"token=([\w-]+)", net.services.mailer.outbox.read_text())
    assert token is not None
    verified = invoke(cli, "verify", token.group(1))
    assert verified.exit_code == 0 and "10000 credits" in verified.output
    logged = invoke(cli, "login", "jo@example.org", "--password-stdin", stdin=PASSWORD + "\n")
    assert logged.exit_code == 0, logged.output
    key = re.search(r"export ARCHIPELAG_API_KEY=(ak_[\w-]+)", logged.stdout)
    assert key is not None and PASSWORD not in logged.output
    account, _ = net.ledger.authenticate(key.group(1))
    assert account.email == "jo@example.org"
    wrong = invoke(cli, "login", "jo@example.org", "--password-stdin", stdin="not it at all\n")
    assert wrong.exit_code == 1 and "wrong email or password" in wrong.output


def test_an_admin_searches_grants_suspends_invites(net: ModelNetwork, cli: CliRunner) -> None:
    invoke(cli, "signup", "kim@example.org", "--password-stdin", stdin=PASSWORD + "\n")
    kim = net.ledger.find_account("kim@example.org")
    assert kim is not None
    listed = invoke(cli, "admin", "accounts", "--search", "kim", "--json")
    assert listed.exit_code == 0 and [a["email"] for a in json.loads(listed.stdout)] == ["kim@example.org"]
    granted = invoke(cli, "admin", "grant", str(kim.id), "42", "--memo", "hello")
    assert granted.exit_code == 0 and "42 credits" in granted.output
    assert invoke(cli, "admin", "suspend", str(kim.id), "--reason", "spam").exit_code == 0
    assert net.ledger.get_account(kim.id).suspended
    assert invoke(cli, "admin", "reinstate", str(kim.id)).exit_code == 0
    invite = invoke(cli, "admin", "invite", "--email", "lee@example.org")
    assert invite.exit_code == 0 and len(invite.stdout.strip()) >= 20
    stats = invoke(cli, "admin", "stats")
    assert stats.exit_code == 0 and json.loads(stats.stdout)["accounts"] == 2


def test_admin_commands_refuse_a_non_admin_key(net: ModelNetwork, cli: CliRunner) -> None:
    other = net.ledger.create_account("pat@example.org", 0)
    _, key = net.ledger.create_api_key(other.id, "k")
    refused = invoke(cli, "admin", "stats", "--api-key", key)
    assert refused.exit_code == 1 and "admin" in refused.output


def test_admin_create_makes_or_promotes_an_admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIPELAG_STATE_DIR", str(tmp_path))
    runner = CliRunner()
    made = runner.invoke(APP, ["admin", "create", "ops@example.org", "--password-stdin"], input=PASSWORD + "\n")
    assert made.exit_code == 0, made.output
    assert "export ARCHIPELAG_API_KEY=ak_" in made.stdout
    ledger = Ledger(f"sqlite:///{tmp_path / 'archipelag.db'}")
    ops = ledger.find_account("ops@example.org")
    assert ops is not None and ops.is_admin and ops.verified
    second = ledger.create_account("second@example.org", 0)
    assert not second.is_admin
    promoted = runner.invoke(APP, ["admin", "create", "second@example.org"])
    assert promoted.exit_code == 0 and ledger.get_account(second.id).is_admin


def test_an_admin_suspends_and_reinstates_a_host(net: ModelNetwork, cli: CliRunner) -> None:
    assert invoke(cli, "admin", "suspend-host", "host-a", "--reason", "lies").exit_code == 0
    listed = invoke(cli, "admin", "hosts", "--json")
    assert next(h["suspended_reason"] for h in json.loads(listed.stdout) if h["id"] == "host-a").startswith("lies")
    assert invoke(cli, "admin", "reinstate-host", "host-a").exit_code == 0
    assert "lies" not in invoke(cli, "admin", "hosts").stdout


def test_a_mailed_token_never_reads_as_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """`archipelag verify TOKEN` takes the token as typed: one starting with "-" would be a usage error."""
    from archipelag.ledger import accounts

    drawn = iter(["-starts-with-a-dash", "fine-token"])
    monkeypatch.setattr(accounts.secrets, "token_urlsafe", lambda _n: next(drawn))
    assert accounts.typeable_token(24) == "fine-token"
