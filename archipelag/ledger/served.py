"""The ledger as Ray runs it on the head: ``Ledger``, with a socket for the jobs service on the same machine.

The jobs service makes most of the ledger's calls (every job is created, started and settled through it), and
each one through Ray cost a Ray hop each way: ``bench llm``'s jobs service asked for a job's record 4.1 ms before
the ledger began it, while the ledger took 2.4 ms. So the jobs service calls over ``services/ledger.sock``
(``socket_calls.OrderedCalls``: one connection, in the order the calls are made, as Ray kept one caller's calls);
everyone else still calls through Ray. Every public method takes one lock, so a call over the socket and one through
Ray's thread run one at a time, as Ray alone ran them (``max_concurrency=1``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Final

from archipelag.ledger.ledger import Ledger
from archipelag.socket_calls import public_methods, serve_in_thread, take_turns

# Every public method: over the socket the jobs service may call what it may call through Ray.
SOCKET_METHODS: Final = public_methods(Ledger)


class _OneAtATime(Ledger):
    def __init__(self, url: str, *, socket: Path, **kwargs: Any) -> None:
        self._turn = threading.RLock()
        with self._turn:
            super().__init__(url, **kwargs)
        serve_in_thread(self, SOCKET_METHODS, socket, "ledger")


take_turns(_OneAtATime)
_OneAtATime.__name__ = "Ledger"  # Ray names its process by it (`ray::Ledger`)
ServedLedger: Final = _OneAtATime
