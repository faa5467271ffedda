"""An unprivileged account for a host's Ray node (``host join --ray-user``), as a lender sets one up.

``ray_user`` makes the account once (``useradd --system``) and lets it reach this project's interpreter and
checkout: where a directory on the way is closed to others (here Python lives under /root, mode 0700), it grants
that account alone the right to pass through it (an ACL entry ``u:NAME:x``, no listing, no reading), and takes
the entries back at the end. Where none of this can be done (not root, no useradd or setfacl) it yields the
reason, and the tests skip with it (a failure in CI).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from archipelag.settings import REPO_ROOT

NAME = "archipelag-host"


def _closed_dirs(paths: list[Path]) -> list[Path]:
    """The directories on the way to ``paths`` that others may not pass through."""
    closed: list[Path] = []
    for path in paths:
        for parent in reversed(path.parents):
            if not os.stat(parent).st_mode & stat.S_IXOTH and parent not in closed:
                closed.append(parent)
    return closed


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=300)


def _ensure_setfacl() -> str | None:
    if shutil.which("setfacl"):
        return None
    if not shutil.which("apt-get"):
        return "setfacl is missing and there is no apt-get to install the acl package"
    if _run("apt-get", "install", "-y", "-qq", "acl").returncode != 0:
        _run("apt-get", "update", "-qq")
        if _run("apt-get", "install", "-y", "-qq", "acl").returncode != 0:
            return "apt-get could not install the acl package (setfacl)"
    return None


@contextlib.contextmanager
def ray_user(name: str = NAME) -> Iterator[str | None]:
    """Yield None once ``name`` exists and can run this project, else why not."""
    if os.geteuid() != 0:
        yield "making an account for a host's Ray node needs root"
        return
    try:
        pwd.getpwnam(name)
    except KeyError:
        made = _run("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name)
        if made.returncode != 0:
            yield f"useradd {name} failed: {made.stderr.strip()}"
            return
    reached = [Path(os.path.realpath(sys.executable)), Path(sys.executable), REPO_ROOT]
    closed = _closed_dirs(reached)
    why = _ensure_setfacl() if closed else None
    if why:
        yield why
        return
    granted: list[Path] = []
    try:
        for directory in closed:
            if _run("setfacl", "-m", f"u:{name}:x", str(directory)).returncode == 0:
                granted.append(directory)
        yield None
    finally:
        for directory in granted:
            _run("setfacl", "-x", f"u:{name}", str(directory))
