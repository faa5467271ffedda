"""A host's karma as its owner and users see it — `GET /api/v1/hosts/{id}`, `/karma`, `/karma/history` and
`archipelag hosts karma ID [--history]` — on the real API app, jobs service, placement and ledger (scripted
hosts), the CLI through CliRunner on a real socket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from fastapi.testclient import TestClient
from model_network import ModelNetwork, a_model_network, serve
from typer.testing import CliRunner

from archipelag.cli.jobs import register
from archipelag.ledger import KarmaKind

APP = typer.Typer()
register(APP)


@pytest.fixture
def net(tmp_path: Path) -> ModelNetwork:
    return a_model_network(tmp_path, hosts=2)


@pytest.fixture
def api(net: ModelNetwork) -> Iterator[TestClient]:
    with net.client() as client:
        assert client.get("/api/v1/hosts").status_code == 200  # the jobs service records the fleet
        yield client


def sink(net: ModelNetwork, points: float) -> None:
    net.ledger.record_karma("host-a", KarmaKind.ADJUSTMENT, adjustment=points, reason="scripted")


def test_a_host_in_good_standing(api: TestClient) -> None:
    host = api.get("/api/v1/hosts/host-a").json()["data"]
    assert (host["karma_standing"], host["suspended_reason"], host["karma_score"]) == ("good", None, 0.5)
    karma = api.get("/api/v1/hosts/host-a/karma").json()["data"]
    assert (karma["standing"], karma["placement_share"], karma["reason"], karma["events"]) == ("good", 1.0, None, [])


def test_a_cooled_down_then_suspended_host_says_why(net: ModelNetwork, api: TestClient) -> None:
    sink(net, -4.0)
    karma = api.get("/api/v1/hosts/host-a/karma").json()["data"]
    assert (karma["standing"], karma["placement_share"]) == ("cooldown", 0.25)
    assert "cool-down threshold" in karma["reason"] and karma["karma_total"] == pytest.approx(-4.0, abs=1e-3)
    sink(net, -7.0)
    host = api.get("/api/v1/hosts/host-a").json()["data"]
    assert host["karma_standing"] == "suspended" and "suspension threshold" in host["suspended_reason"]
    karma = api.get("/api/v1/hosts/host-a/karma").json()["data"]
    assert karma["standing"] == "suspended" and karma["placement_share"] == 0.0
    # newest first; the recovery since the first event is banked when the next one is written
    assert [e["kind"] for e in karma["events"]] == ["adjustment", "recovery", "adjustment"]
    assert [e["points"] for e in karma["events"]][::2] == [-7.0, -4.0]


def test_the_history_pages_and_refuses_bad_pages(net: ModelNetwork, api: TestClient) -> None:
    for _ in range(3):
        sink(net, 1.0)
    page = api.get("/api/v1/hosts/host-a/karma/history", params={"limit": 2, "offset": 1}).json()
    assert page["meta"] == {"total": 3, "limit": 2, "offset": 1} and len(page["data"]) == 2
    assert api.get("/api/v1/hosts/host-a/karma/history", params={"limit": 0}).status_code == 422
    assert api.get("/api/v1/hosts/host-a/karma/history", params={"offset": -1}).status_code == 422
    assert api.get("/api/v1/hosts/nobody/karma/history").status_code == 404
    assert api.get("/api/v1/hosts/nobody/karma").status_code == 404


def test_the_cli_shows_standing_reason_and_history(net: ModelNetwork, api: TestClient,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sink(net, -11.0)
    with serve(net.app) as url:
        monkeypatch.setenv("ARCHIPELAG_URL", url)
        monkeypatch.setenv("ARCHIPELAG_API_KEY", net.key)
        monkeypatch.setenv("COLUMNS", "200")
        cli = CliRunner()
        shown = cli.invoke(APP, ["hosts", "karma", "host-a"])
        assert shown.exit_code == 0, shown.output
        assert "suspended" in shown.output and "suspension threshold" in shown.output
        history = cli.invoke(APP, ["hosts", "karma", "host-a", "--history", "--json"])
        assert history.exit_code == 0, history.output
        body = json.loads(history.output)
        assert body["meta"]["total"] == 1 and body["data"][0]["kind"] == "adjustment"
        table = cli.invoke(APP, ["hosts", "karma", "host-a", "--history"])
        assert table.exit_code == 0 and "adjustment" in table.output and "1–1 of 1" in table.output
