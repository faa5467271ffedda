"""Placement while the ledger does not answer (restarting, down): rankings never wait on a read of karma or asks,
hosts keep what placement holds until the ledger's next answer, and a host that joins meanwhile takes no jobs until
its karma and asks are read. No Ray: the actor's calls to the book run on their own thread, as in the Ray actor."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field

import pytest
from builders import NOW, LedgerWord, a_host, a_job

from archipelag.errors import NoCapacity
from archipelag.ids import HostId
from archipelag.ledger.karma_rules import KarmaState
from archipelag.lifecycle import HostStatus
from archipelag.placement.actor import PlacementActor
from archipelag.placement.client import PlacementClient, _LocalCalls
from archipelag.settings import PlacementSettings, Settings

A, B, C = HostId("a"), HostId("b"), HostId("c")
EU_JOB = a_job(caller_region="eu-west")
WHY = "karma -10.50 is below the suspension threshold -10"


@dataclass
class StallingLedger(LedgerWord):
    """The ledger's word, from a ledger that can stop answering: while stalled (a restart) each call waits until
    ``resume``; while ``failing`` each raises as an unreachable ledger does (``LedgerBook``)."""

    answering: threading.Event = field(default_factory=threading.Event)
    called: threading.Event = field(default_factory=threading.Event)  # a call is waiting for the ledger
    failing: bool = False

    def __post_init__(self) -> None:
        self.answering.set()

    def stall(self) -> None:
        self.called.clear()
        self.answering.clear()

    def resume(self) -> None:
        self.answering.set()

    def _answer(self) -> None:
        if self.failing:
            raise NoCapacity("placement could not ask the ledger for hosts' karma; retry shortly")
        if not self.answering.is_set():
            self.called.set()
            assert self.answering.wait(30), "the test never resumed the ledger"

    def karma_states(self, host_ids: Collection[str]) -> dict[HostId, KarmaState]:
        self._answer()
        return super().karma_states(host_ids)

    def asking_prices(self, host_id: str | None = None) -> dict[HostId, dict[str, int]]:
        self._answer()
        return super().asking_prices(host_id)

    def set_asking_prices(self, host_id: str, asks: Mapping[str, int]) -> dict[str, int]:
        self._answer()
        return super().set_asking_prices(host_id, asks)


@pytest.fixture
def ledger() -> Iterator[StallingLedger]:
    ledger = StallingLedger()
    yield ledger
    ledger.resume()  # a call still waiting ends with the test


def placement_on(ledger: StallingLedger, thread: bool = True) -> PlacementClient:
    settings = Settings(heartbeat_interval_s=10, missed_heartbeats_offline=3,
                        placement=PlacementSettings(ledger_read_timeout_s=0.05))
    return PlacementClient(_LocalCalls(PlacementActor(settings, lambda: NOW, book=ledger, book_thread=thread)))


def eventually(check: Callable[[], bool], within_s: float = 10.0) -> None:
    """A generous bound for what a thread does next: the behaviour is asserted, not its speed."""
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "it did not happen"
        time.sleep(0.01)


def test_rankings_answer_while_a_read_of_the_ledger_hangs(ledger: StallingLedger) -> None:
    placement = placement_on(ledger)
    placement.register(a_host("a", region="eu-west"))
    placement.register(a_host("b", region="us-east"))
    assert placement.rank(EU_JOB) == [A, B]
    ledger.stall()
    placement.refresh_karma()  # the fleet round's read hangs
    placement.refresh_asks()
    placement.refresh_karma([A])  # a fault of a's own
    assert ledger.called.is_set() and not ledger.answering.is_set()
    for _ in range(3):
        assert placement.rank(EU_JOB) == [A, B]  # on what placement holds, while the read still hangs
    assert not ledger.answering.is_set()


def test_the_ledgers_word_is_applied_once_it_answers_again(ledger: StallingLedger) -> None:
    placement = placement_on(ledger)
    placement.register(a_host("a", region="eu-west"))
    placement.register(a_host("b", region="us-east"))
    ledger.stall()
    placement.refresh_karma()
    ledger.says_karma(A, 0.0, 0.0, WHY)  # the ledger suspended a meanwhile
    ledger.asks[B] = {"wasm-hash": 2000}
    placement.refresh_asks()
    assert placement.rank(EU_JOB) == [A, B]
    ledger.resume()
    eventually(lambda: placement.get(A).status == HostStatus.SUSPENDED)
    eventually(lambda: placement.get(B).asks == {"wasm-hash": 2000})
    assert placement.rank(EU_JOB) == [B]


def test_a_host_joining_while_the_ledger_hangs_takes_no_jobs_until_its_karma_is_read(
        ledger: StallingLedger) -> None:
    placement = placement_on(ledger)
    placement.register(a_host("a", region="us-east"))
    ledger.stall()
    placement.register(a_host("c", region="eu-west"))  # returns while its reads hang
    placement.heartbeat(C, {"active_jobs": 0})  # heartbeats do not let it in
    assert not ledger.answering.is_set()
    assert placement.get(C).status == HostStatus.JOINING and placement.rank(EU_JOB) == [A]
    ledger.resume()
    eventually(lambda: placement.get(C).status == HostStatus.ONLINE)
    assert placement.rank(EU_JOB) == [C, A]  # the caller's region, now that placement holds its karma


def test_a_suspended_host_rejoining_while_the_ledger_hangs_never_gets_a_job(ledger: StallingLedger) -> None:
    """A restarted placement knows nothing of a host: the neutral score it would start with must not let a host the
    ledger suspended in because the ledger was slow to say so."""
    placement = placement_on(ledger)
    placement.register(a_host("a", region="us-east"))
    ledger.says_karma(C, 0.0, 0.0, WHY)
    ledger.stall()
    placement.register(a_host("c", region="eu-west"))
    assert placement.rank(EU_JOB) == [A]
    ledger.resume()
    eventually(lambda: placement.get(C).status == HostStatus.SUSPENDED)
    assert placement.rank(EU_JOB) == [A]


def test_a_failed_read_keeps_what_placement_holds_and_the_next_round_reads_again(ledger: StallingLedger) -> None:
    placement = placement_on(ledger, thread=False)  # the calls run at once: each round is its own step
    placement.register(a_host("a", region="eu-west"))
    placement.register(a_host("b", region="us-east"))
    ledger.failing = True
    ledger.says_karma(A, 0.0, 0.0, WHY)
    placement.register(a_host("c", region="eu-west"))  # joins while the ledger fails: held
    placement.refresh_karma()
    placement.refresh_asks()
    assert placement.get(A).status == HostStatus.ONLINE and placement.get(C).status == HostStatus.JOINING
    assert placement.rank(EU_JOB) == [A, B]
    ledger.failing = False
    placement.refresh_karma()  # the next round: karma alone, so c still waits for its asks
    assert placement.rank(EU_JOB) == [B]
    placement.refresh_asks()
    assert placement.rank(EU_JOB) == [C, B]


def test_an_outage_is_logged_once_until_the_ledger_answers_again(ledger: StallingLedger,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    placement = placement_on(ledger, thread=False)
    placement.register(a_host("a"))
    caplog.set_level(logging.INFO, logger="archipelag.placement.book")

    def outage() -> None:
        ledger.failing = True
        for _ in range(3):
            placement.refresh_karma()
            placement.refresh_asks()
        ledger.failing = False
        placement.refresh_karma()

    outage()
    outage()
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in said] == [logging.WARNING, logging.INFO] * 2
    assert "cannot read hosts' karma and asks from the ledger (NoCapacity" in said[0][1]


def test_asks_a_host_joins_with_are_stored_once_the_ledger_answers(ledger: StallingLedger) -> None:
    placement = placement_on(ledger, thread=False)
    ledger.failing = True
    placement.register(a_host("c", region="eu-west", asks={"wasm-hash": 2000}))
    placement.refresh_asks()  # the ledger still fails: the asks wait to be stored
    assert placement.get(C).asks == {} and C not in ledger.asks
    ledger.failing = False
    placement.refresh_karma()  # the next round stores them before it reads
    placement.refresh_asks()
    assert ledger.asks[C] == {"wasm-hash": 2000} and placement.get(C).asks == {"wasm-hash": 2000}
    assert placement.rank(EU_JOB) == [C]
