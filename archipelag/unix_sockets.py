"""Two facts about local Unix sockets that the host's control socket and its gate both need."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

_UCRED = struct.Struct("3i")  # pid, uid, gid


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end, as the kernel says (SO_PEERCRED), not as it claims."""
    _, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return int(uid)


def answers(path: Path) -> bool:
    """Whether a process still listens on the socket at ``path`` (one left by a killed process does not)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()
