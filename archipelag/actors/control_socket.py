"""Control socket: how `archipelag host pause|resume|drain|leave|status` reaches the running `host join` process.

A Unix socket in the host's state directory (``control/<host id>.sock``): the folder is 0700 and the socket 0600,
so only the user who lent the machine (and root) can connect; the server also checks the peer's uid
(SO_PEERCRED), in case the folder was made readable by hand. One small JSON request per connection, one JSON
answer: ``{"data": …}`` or ``{"error": {"message", "code"}}``, as the API answers. Nothing here reaches the
network: a local channel needs no key, and the kernel says who is calling.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from archipelag.errors import (
    ArchipelagError,
    ConfigError,
    Forbidden,
    PayloadTooLarge,
    RequestError,
    ValidationFailed,
)
from archipelag.settings import Settings
from archipelag.unix_sockets import answers, peer_uid

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4096
READ_TIMEOUT_S = 2.0  # a client that connects and says nothing does not hold the socket
DRAIN_TIMEOUT_S = 0.5  # after the answer: for the rest of a refused request to arrive
MAX_PATH_BYTES = 107  # sun_path on Linux, less its terminating NUL

Handler = Callable[[Mapping[str, Any]], dict[str, Any]]


def control_dir(settings: Settings) -> Path:
    return (settings.state_dir / "control").resolve()


def socket_path(settings: Settings, host_id: str | None) -> Path:
    """The socket of ``host_id``, or of the one host joined from this state directory."""
    folder = control_dir(settings)
    if host_id is not None:
        return folder / f"{host_id}.sock"
    found = sorted(folder.glob("*.sock")) if folder.is_dir() else []
    if not found:
        raise ConfigError(f"no host is joined from {settings.state_dir.resolve()} (no socket in {folder}); "
                          "start `archipelag host join`, or set ARCHIPELAG_STATE_DIR to the one it uses")
    if len(found) > 1:
        raise ConfigError(f"several hosts are joined from here ({', '.join(p.stem for p in found)}); "
                          "say which with --host-id")
    return found[0]


class ControlServer:
    """Serves control requests on a thread of `host join`, one connection at a time (they are rare and quick)."""

    def __init__(self, path: Path, handle: Handler) -> None:
        if len(os.fsencode(path)) > MAX_PATH_BYTES:
            raise ConfigError(f"the control socket path {path} is longer than a Unix socket allows "
                              f"({MAX_PATH_BYTES} bytes); use a shorter ARCHIPELAG_STATE_DIR")
        self.path = path
        self._handle = handle
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, name=f"control-{path.stem}", daemon=True)

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        self._clear_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o600)  # the folder is already private: nobody else could race in between
        sock.listen(8)
        self._sock = sock
        self._thread.start()

    def close(self, keep_path: bool = False) -> None:
        """Stop serving; ``keep_path`` leaves the socket's file (clients are refused) until a later ``close``."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None
        if not keep_path:
            self.path.unlink(missing_ok=True)

    def _clear_stale(self) -> None:
        """A socket left by a `host join` that was killed; refuse to take over one that still answers."""
        if self.path.exists():
            refuse_if_joined(self.path)
            self.path.unlink()

    def _serve(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    conn.settimeout(READ_TIMEOUT_S)
                    conn.sendall(_encode(self._answer(conn)))
                    conn.shutdown(socket.SHUT_WR)
                    conn.settimeout(DRAIN_TIMEOUT_S)
                    _drain(conn)
                except OSError:
                    log.debug("a control client went away", exc_info=True)

    def _answer(self, conn: socket.socket) -> dict[str, Any]:
        try:
            _check_peer(conn)
            request = json.loads(_read_line(conn))
            if not isinstance(request, dict):
                raise ValidationFailed("a control request is a JSON object", errors={"request": "not an object"})
            return {"data": self._handle(request)}
        except ArchipelagError as exc:
            return {"error": exc.to_dict()}
        except (ValueError, UnicodeDecodeError):
            return {"error": ValidationFailed("a control request is one line of JSON").to_dict()}
        except Exception as exc:  # the host keeps serving whatever one request did
            log.exception("control request failed")
            return {"error": {"message": f"the host could not do it: {type(exc).__name__}: {exc}",
                              "code": "internal_error"}}


def refuse_if_joined(path: Path) -> None:
    """ConfigError when a `host join` answers at ``path``: the same host must not join twice from one machine."""
    if not path.exists():
        return
    if not stat.S_ISSOCK(path.stat().st_mode):
        raise ConfigError(f"{path} exists and is not a socket; remove it")
    if not answers(path):
        return  # left by a `host join` that was killed
    raise ConfigError(f"host {path.stem} is already joined from this machine (its control socket {path} answers); "
                      "`archipelag host status` shows it")


def _check_peer(conn: socket.socket) -> None:
    uid = peer_uid(conn)
    if uid not in (os.getuid(), 0):
        raise Forbidden(f"only the user who lent this machine controls it (uid {os.getuid()}), not uid {uid}")


def _read_line(conn: socket.socket) -> str:
    received = b""
    while b"\n" not in received:
        chunk = conn.recv(MAX_REQUEST_BYTES + 1 - len(received))
        if not chunk:
            break
        received += chunk
        if len(received) > MAX_REQUEST_BYTES:
            raise PayloadTooLarge(f"a control request is at most {MAX_REQUEST_BYTES} bytes",
                                  limit_bytes=MAX_REQUEST_BYTES)
    return received.split(b"\n", 1)[0].decode()


def _drain(conn: socket.socket, limit_bytes: int = 64 * 1024) -> None:
    """Read what the client still sends (a refused or oversized request) before closing: closing on unread bytes
    resets the connection, and the client would see that instead of the answer."""
    left = limit_bytes
    while left > 0 and (chunk := conn.recv(min(left, 65536))):
        left -= len(chunk)


def _encode(answer: dict[str, Any]) -> bytes:
    return (json.dumps(answer) + "\n").encode()


def ask(path: Path, request: Mapping[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
    """Send one request to a host's control socket; its data, or the host's error raised as a RequestError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise ConfigError(f"no host answers at {path}: is `archipelag host join` running?") from None
        except PermissionError:
            raise Forbidden(f"{path} belongs to another user: run this as the user who lent the machine") from None
        except ConnectionRefusedError:
            raise ConfigError(f"the host at {path} is gone (its socket is left over)") from None
        sock.sendall((json.dumps(dict(request)) + "\n").encode())
        answer = json.loads(_read_all(sock))
    finally:
        sock.close()
    if "error" in answer:
        error = answer["error"]
        raise RequestError(str(error.get("message")), host_code=str(error.get("code")))
    data: dict[str, Any] = answer["data"]
    return data


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)
