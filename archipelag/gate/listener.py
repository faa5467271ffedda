"""The gate's socket file: where it is, who may open it, and how it gets there without a window for anyone else.

The socket is bound in a private staging folder, given its owner and mode there, then renamed into place, so
nobody connects before its permissions are final (and no process-wide umask changes while other threads run).
Its folder must be writable only by the gate's user or root: whoever could write it could swap the staging
folder between bind and chown. The mode is the first fence; the peer check on each connection
(gate/server.py, SO_PEERCRED) is the boundary.
"""

from __future__ import annotations

import logging
import os
import pwd
import socket
import stat
import tempfile
from pathlib import Path
from typing import Final

from archipelag.errors import ConfigError
from archipelag.unix_sockets import answers

log = logging.getLogger(__name__)

MAX_PATH_BYTES: Final = 107  # sun_path on Linux, less its terminating NUL
_STAGING_PREFIX: Final = ".gate-"  # tempfile adds 8 characters


def listen(path: Path, allowed: frozenset[int], socket_gid: int | None) -> tuple[socket.socket, int]:
    """Bind in a private folder, set the socket's owner and mode, then move it into place: nobody can connect
    before its permissions are final (no umask games in a process with other threads)."""
    staged_example = path.parent / f"{_STAGING_PREFIX}{'x' * 8}" / "s"
    if max(len(os.fsencode(path)), len(os.fsencode(staged_example))) > MAX_PATH_BYTES:
        raise ConfigError(f"the gate socket path {path} is longer than a Unix socket allows; use a shorter one "
                          "(ARCHIPELAG_GATE_SOCKET)")
    path.parent.mkdir(parents=True, exist_ok=True)
    _check_folder(path.parent)
    _clear_stale(path)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=path.parent))
    staged = staging / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(staged))
        _grant(staged, allowed, socket_gid)
        sock.listen(64)
        os.rename(staged, path)
        inode = path.lstat().st_ino
    except BaseException:
        sock.close()
        staged.unlink(missing_ok=True)
        raise
    finally:
        staging.rmdir()
    return sock, inode


def _check_folder(folder: Path) -> None:
    """The socket's folder must be this user's or root's, and writable by no one else (a sticky one like /tmp
    aside): whoever can write it could swap our staging folder between bind and chown, and have the gate give
    them any file a link there points to."""
    st = os.stat(folder)
    loose = st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX
    if st.st_uid not in (os.geteuid(), 0) or loose:
        raise ConfigError(f"the gate socket's folder {folder} can be written by others (owner uid {st.st_uid}, mode "
                          f"{stat.S_IMODE(st.st_mode):o}); use a folder only you or root can write, that the Ray "
                          "node's user can enter")


def _grant(staged: Path, allowed: frozenset[int], socket_gid: int | None) -> None:
    """Who may open the socket: root and its owner always; one other uid (the Ray node's user) by owning it,
    when the gate runs as root; else a group (``socket_gid``) the allowed users share. The peer check on every
    connection stays the real boundary."""
    others = sorted(allowed - {os.geteuid(), 0})
    if os.geteuid() == 0 and len(others) == 1 and socket_gid is None:
        os.chown(staged, others[0], -1, follow_symlinks=False)
        os.chmod(staged, 0o600)
        return
    if others:
        gid = socket_gid if socket_gid is not None else _primary_gid(others[0])
        try:
            os.chown(staged, -1, gid, follow_symlinks=False)
        except PermissionError:
            log.warning("the gate cannot give its socket to group %d; uids %s can connect only if they share "
                        "group %d with the gate", gid, others, os.getegid())
        os.chmod(staged, 0o660)
        return
    os.chmod(staged, 0o600)


def _primary_gid(uid: int) -> int:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return os.getegid()


def _clear_stale(path: Path) -> None:
    """A socket left by a gate that was killed is removed; one that still answers is another gate's."""
    if not path.exists() and not path.is_symlink():
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise ConfigError(f"{path} exists and is not a socket; remove it or choose another gate socket path")
    if not answers(path):
        path.unlink()
        return
    raise ConfigError(f"another gate answers at {path}; stop it first, or choose another socket path")
