"""RunAs.own: root hands a path to the Ray node's account only as what it is, never through a link or to a FIFO
the account put in its place (tests/security/test_red_team.py runs the attack on a real joined node)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from archipelag.errors import ConfigError
from archipelag.nodes import RunAs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="handing paths to another account needs root")


@pytest.fixture
def nobody() -> RunAs:
    entry = pwd.getpwnam("nobody")
    return RunAs("nobody", entry.pw_uid, entry.pw_gid)


def test_a_file_and_a_folder_are_handed_over(tmp_path: Path, nobody: RunAs) -> None:
    folder, file = tmp_path / "folder", tmp_path / "file"
    folder.mkdir()
    file.write_text("x")
    nobody.own(folder, mode=0o700)
    nobody.own(file)
    assert folder.stat().st_uid == nobody.uid and folder.stat().st_mode & 0o777 == 0o700
    assert file.stat().st_uid == nobody.uid


def test_a_link_is_refused_and_what_it_names_stays_roots(tmp_path: Path, nobody: RunAs) -> None:
    roots = tmp_path / "roots"
    roots.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(roots)
    with pytest.raises(ConfigError, match="link is refused"):
        nobody.own(link, mode=0o777)
    assert roots.stat().st_uid == 0 and roots.stat().st_mode & 0o777 == 0o700


def test_a_fifo_is_refused_without_blocking(tmp_path: Path, nobody: RunAs) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a file or folder"):
        nobody.own(fifo)
