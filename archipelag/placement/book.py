"""Book: the ledger's word on hosts' karma and asks as placement reads it, and ``LedgerCalls``, which reads it
without placement's thread waiting on the ledger.

The ledger is a Ray actor that can be restarting (the coordinator's restart, a crash); a call to it then waits up
to its timeout, and placement answers the rankings of every job submission on the one thread that would wait. So
placement hands its calls to ``LedgerCalls``: they run one at a time, in the order asked, on a thread of their own;
placement waits for their answers at most ``wait_s`` (a healthy ledger answers in milliseconds), and not at all
while the ledger is known not to answer, and takes answers that came later at its next call, on its own thread
(``answers``). A failed call changes nothing: hosts keep what placement holds, and the next fleet round asks again
(asks a registration named that the ledger did not store are stored first then).
A read asked for while one of its kind waits its turn joins it, so rounds repeated while the ledger is down add no
calls. With ``thread=False`` (an in-process ledger, which does not hang) each call runs at once, on the caller's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from archipelag.ids import HostId
from archipelag.ledger.karma_rules import KarmaState

log = logging.getLogger(__name__)


class Book(Protocol):
    """The ledger's word on hosts' karma and asks, as placement reads it, and the one thing placement writes there:
    the asks a host's signed registration names. ``Ledger`` has these methods (in-process); ``LedgerBook`` in
    placement/client.py calls them on the ledger actor."""

    def karma_states(self, host_ids: Collection[str]) -> Mapping[HostId, KarmaState]: ...

    def asking_prices(self, host_id: str | None = None) -> Mapping[HostId, dict[str, int]]: ...

    def set_asking_prices(self, host_id: str, asks: Mapping[str, int]) -> dict[str, int]: ...


class Word(StrEnum):
    """What placement reads of a host from the ledger."""

    KARMA = "karma"
    ASKS = "asks"


@dataclass(frozen=True)
class Answer:
    """The ledger's word on ``hosts``: their karma (those it returned), or their asks (a host absent asks
    nothing, i.e. the catalog's prices)."""

    word: Word
    hosts: frozenset[HostId]
    karma: Mapping[HostId, KarmaState] = field(default_factory=dict)
    asks: Mapping[HostId, dict[str, int]] = field(default_factory=dict)


@dataclass
class _Call:
    word: Word
    hosts: set[HostId]
    every: bool = False  # asks: one read of every host's (``hosts``: those placement knew when it asked)
    store: dict[str, int] | None = None  # asks a host's registration names, stored before they are read back


class LedgerCalls:
    def __init__(self, book: Book, wait_s: float, thread: bool = True) -> None:
        self._book = book
        self._wait_s = wait_s
        self._thread = thread
        self._lock = threading.Condition()  # guards everything below; never held during a call to the ledger
        self._queue: list[_Call] = []
        self._running: _Call | None = None
        self._answers: list[Answer] = []
        self._unstored: dict[HostId, dict[str, int]] = {}  # registrations' asks the ledger did not store: again
        self._down = False  # the last call failed or was not answered in time, and none has been answered since
        self._worker: threading.Thread | None = None

    # --- asking (placement's thread) -----------------------------------------------------------------

    def karma(self, hosts: Collection[HostId]) -> None:
        self._ask(_Call(Word.KARMA, set(hosts)))

    def asks(self, hosts: Collection[HostId], every: bool = False) -> None:
        self._ask(_Call(Word.ASKS, set(hosts), every=every))

    def store_asks(self, host_id: HostId, asks: Mapping[str, int]) -> None:
        self._ask(_Call(Word.ASKS, {host_id}, store=dict(asks)))

    def _ask(self, call: _Call) -> None:
        """Queue ``call``, after the stores that failed (a newer store of the same host replaces one)."""
        with self._lock:
            if call.store is not None:
                self._unstored.pop(next(iter(call.hosts)), None)
            calls = [_Call(Word.ASKS, {host_id}, store=asks) for host_id, asks in self._unstored.items()] + [call]
            self._unstored.clear()
            if self._thread:
                for each in calls:
                    self._queue_up(each)
                if self._worker is None:
                    self._worker = threading.Thread(target=self._work, name="placement-ledger", daemon=True)
                    self._worker.start()
                self._lock.notify_all()
                return
        for each in calls:
            answer = self._call(each)
            with self._lock:
                self._answered(each, answer)

    def _queue_up(self, call: _Call) -> None:
        waiting = next((queued for queued in self._queue
                        if queued.word is call.word and queued.store is None and call.store is None), None)
        if waiting is None:
            self._queue.append(call)
        else:  # it has not started: it reads these hosts too
            waiting.hosts |= call.hosts
            waiting.every = waiting.every or call.every

    def answers(self, wait: bool = False) -> list[Answer]:
        """The answers come since last asked, in the order of the calls. With ``wait``, first wait up to
        ``wait_s`` for the calls asked so far, unless the ledger is known not to answer."""
        with self._lock:
            if wait and not self._down and not self._lock.wait_for(self._idle, self._wait_s):
                self._fell(f"no answer within {self._wait_s} s")
            answers, self._answers = self._answers, []
            return answers

    def _idle(self) -> bool:
        return not self._queue and self._running is None

    # --- calling (the worker's thread) ---------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: bool(self._queue))
                call = self._running = self._queue.pop(0)
            answer = self._call(call)
            with self._lock:
                self._answered(call, answer)
                self._running = None
                self._lock.notify_all()

    def _call(self, call: _Call) -> Answer | None:
        hosts = frozenset(call.hosts)
        try:
            if call.word is Word.KARMA:
                return Answer(Word.KARMA, hosts, karma=dict(self._book.karma_states(sorted(hosts))))
            if call.store is not None:
                (host_id,) = hosts
                return Answer(Word.ASKS, hosts, asks={host_id: dict(self._book.set_asking_prices(host_id,
                                                                                                 call.store))})
            one = next(iter(hosts)) if len(hosts) == 1 and not call.every else None
            return Answer(Word.ASKS, hosts, asks=dict(self._book.asking_prices(one)))
        except Exception as exc:  # noqa: BLE001 - whatever the ledger's failure, placement keeps what it holds
            with self._lock:
                self._fell(f"{type(exc).__name__}: {exc}")
            return None

    def _answered(self, call: _Call, answer: Answer | None) -> None:
        if answer is None:
            if call.store is not None and not any(queued.store is not None and queued.hosts == call.hosts
                                                  for queued in self._queue):
                self._unstored[next(iter(call.hosts))] = call.store
            return
        self._answers.append(answer)
        if self._down:
            self._down = False
            log.info("placement reads hosts' karma and asks from the ledger again")

    def _fell(self, why: str) -> None:
        """The ledger did not answer: said once, until it answers again."""
        if not self._down:
            self._down = True
            log.warning("placement cannot read hosts' karma and asks from the ledger (%s): hosts keep what "
                        "placement holds, a host that joins meanwhile takes no jobs until they are read, and "
                        "placement does not wait for the ledger until it answers again", why)
