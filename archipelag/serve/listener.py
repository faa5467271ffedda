"""Listener: an API replica's own HTTP server on the API's one address, so no proxy stands between a client and
the replica that answers it.

Serve places, starts, health-checks and restarts the API replicas on the head; each of them binds
``api_host:api_port`` itself, with SO_REUSEPORT, and the kernel spreads new connections over the replicas. Serve's
HTTP proxy is not started: it added a hop to every request and every streamed frame (GET /health 4.3 ms through
it against 1.7 ms straight to a replica, 16 ms against 2 ms with the machine busy; `make bench` shows the first
token's path stage by stage). A replica whose server stops fails Serve's health check and is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

from archipelag.errors import ConfigError

log = logging.getLogger(__name__)
KEEP_ALIVE_S = 75.0  # longer than common clients' pools keep an idle connection


@dataclass
class Listener:
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def serving(self) -> bool:
        return not self.task.done()

    async def close(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self.task, 10)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` that the other replicas of this node may bind as well."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"the API cannot listen on {host}:{port}: {exc.strerror}; is another program on it?") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def listen(app: ASGIApp, host: str, port: int) -> Listener:
    """Serve ``app`` on ``host:port`` from this process's running event loop until ``close``."""
    sock = bind(host, port)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    config = uvicorn.Config(app, lifespan="off", access_log=False, log_config=None,
                            timeout_keep_alive=int(KEEP_ALIVE_S))
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    task.add_done_callback(lambda t: log.error("the API listener on %s:%d stopped", host, port))
    return Listener(server, task)
