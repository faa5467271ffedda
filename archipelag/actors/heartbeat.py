"""Heartbeat: a daemon thread that calls a function every interval until stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, beat: Callable[[], None], interval_s: float, name: str = "heartbeat") -> None:
        self._beat = beat
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._beat()
            except Exception:  # a missed beat is reported by placement's staleness, not by a crash here
                log.warning("heartbeat failed", exc_info=True)
            self._stop.wait(self._interval_s)
