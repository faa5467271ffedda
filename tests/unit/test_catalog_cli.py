"""`archipelag catalog build | keygen | sign | verify`, driven through Typer's runner."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
import typer
from test_catalog_builders import a_workloads_dir
from typer.testing import CliRunner

from archipelag.cli.catalog import register


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("ARCHIPELAG_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("ARCHIPELAG_WORKLOADS_DIR", str(a_workloads_dir(tmp_path)))
    monkeypatch.delenv("ARCHIPELAG_TRUSTED_CATALOG_KEYS", raising=False)
    return CliRunner()


def app() -> typer.Typer:
    root = typer.Typer()
    register(root)
    return root


def keygen(cli: CliRunner, *args: str) -> str:
    result = cli.invoke(app(), ["catalog", "keygen", *args])
    assert result.exit_code == 0, result.output
    match = re.search(r"public key: (\S+)", result.output)
    assert match and re.search(r"key id:\s+[0-9a-f]{16}", result.output)
    return match.group(1)


def test_build_keygen_sign_verify(cli: CliRunner, tmp_path: Path) -> None:
    built = cli.invoke(app(), ["catalog", "build"])
    assert built.exit_code == 0, built.output
    assert "2 workloads" in built.output and (tmp_path / "state" / "catalog.json").is_file()
    public = keygen(cli)
    assert stat.S_IMODE((tmp_path / "state" / "catalog_signing.key").stat().st_mode) == 0o600
    signed = cli.invoke(app(), ["catalog", "sign"])
    assert signed.exit_code == 0 and (tmp_path / "state" / "catalog.json.sig").is_file()
    verified = cli.invoke(app(), ["catalog", "verify", "--trusted", public])
    assert verified.exit_code == 0, verified.output
    assert "valid, signed by key" in verified.output


def test_a_second_build_of_the_same_manifests_reports_unchanged(cli: CliRunner, tmp_path: Path) -> None:
    cli.invoke(app(), ["catalog", "build"])
    first = (tmp_path / "state" / "catalog.json").read_bytes()
    again = cli.invoke(app(), ["catalog", "build"])
    assert "unchanged" in again.output and (tmp_path / "state" / "catalog.json").read_bytes() == first


def test_verify_refuses_a_catalog_signed_by_a_key_not_trusted(cli: CliRunner, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cli.invoke(app(), ["catalog", "build"])
    keygen(cli, "--key", str(tmp_path / "old.key"))
    new = keygen(cli, "--key", str(tmp_path / "new.key"))
    assert cli.invoke(app(), ["catalog", "sign", "--key", str(tmp_path / "old.key")]).exit_code == 0
    refused = cli.invoke(app(), ["catalog", "verify", "--trusted", new])
    assert refused.exit_code == 1 and "does not trust" in refused.output
    monkeypatch.setenv("ARCHIPELAG_TRUSTED_CATALOG_KEYS", f'["{new}"]')
    assert cli.invoke(app(), ["catalog", "sign", "--key", str(tmp_path / "new.key")]).exit_code == 0
    assert cli.invoke(app(), ["catalog", "verify"]).exit_code == 0


def test_verify_refuses_an_unsigned_catalog(cli: CliRunner) -> None:
    cli.invoke(app(), ["catalog", "build"])
    public = keygen(cli)
    refused = cli.invoke(app(), ["catalog", "verify", "--trusted", public])
    assert refused.exit_code == 1 and "not signed" in refused.output


def test_keygen_will_not_overwrite_a_key_without_force(cli: CliRunner) -> None:
    first = keygen(cli)
    again = cli.invoke(app(), ["catalog", "keygen"])
    assert again.exit_code == 1 and "already exists" in again.output
    assert keygen(cli, "--force") != first


def test_sign_without_a_catalog_says_to_build_first(cli: CliRunner) -> None:
    keygen(cli)
    result = cli.invoke(app(), ["catalog", "sign"])
    assert result.exit_code == 1 and "catalog build" in result.output
