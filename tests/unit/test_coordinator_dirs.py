"""The coordinator's folders as the hosts' head's account finds them: its state dir passable but closed, its runtime
folder made anew whatever was put at its name, the hosts' part handed over only once made."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from archipelag.coordinator import _fresh_runtime_dir, hosts_env, private_state_dir
from archipelag.nodes import RunAs, runtime_dir
from archipelag.settings import Settings


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    made = Settings(state_dir=tmp_path / "state")
    yield made
    root = runtime_dir(made.state_dir)
    if root.is_symlink() or root.is_file():
        root.unlink()
    elif root.exists():
        shutil.rmtree(root)


def test_the_state_dir_may_be_passed_but_not_listed_and_its_database_and_logs_are_the_coordinators(
        settings: Settings) -> None:
    private_state_dir(settings)
    assert mode(settings.state_dir) == 0o711
    assert mode(settings.state_dir / "logs") == 0o700
    assert mode(settings.state_dir / "archipelag.db") == 0o600


def test_an_existing_database_is_closed_too(settings: Settings) -> None:
    settings.state_dir.mkdir(parents=True)
    (settings.state_dir / "archipelag.db").write_bytes(b"")
    (settings.state_dir / "archipelag.db").chmod(0o644)
    private_state_dir(settings)
    assert mode(settings.state_dir / "archipelag.db") == 0o600


def test_a_link_put_where_the_runtime_folder_goes_is_replaced_and_its_target_untouched(
        settings: Settings, tmp_path: Path) -> None:
    target = tmp_path / "roots-own"
    target.mkdir(mode=0o700)
    runtime_dir(settings.state_dir).symlink_to(target)
    services, hosts = _fresh_runtime_dir(settings, None)
    root = runtime_dir(settings.state_dir)
    assert not root.is_symlink() and mode(root) == 0o711 and root.stat().st_uid == os.getuid()
    assert mode(services.parent) == 0o700 and mode(hosts) == 0o700
    assert list(target.iterdir()) == [] and mode(target) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a folder to another account needs root")
def test_the_hosts_folder_and_a_copy_of_the_hosts_token_are_the_hosts_accounts_alone(settings: Settings) -> None:
    settings.state_dir.mkdir(parents=True)
    (settings.state_dir / "ray_auth_token").write_text("hosts' token")
    nobody = pwd.getpwnam("nobody")
    run_as = RunAs("nobody", nobody.pw_uid, nobody.pw_gid)
    settings = settings.model_copy(update={"hosts_ray_user": "nobody"})
    services, hosts = _fresh_runtime_dir(settings, run_as)
    assert services.parent.stat().st_uid == 0 and mode(services.parent) == 0o700
    for path in (hosts, hosts / "ray", hosts / "ray_auth_token"):
        assert path.stat().st_uid == nobody.pw_uid
    assert mode(hosts) == 0o700 and mode(hosts / "ray_auth_token") == 0o600
    assert Path(hosts_env(settings)["RAY_AUTH_TOKEN_PATH"]).read_text() == "hosts' token"
