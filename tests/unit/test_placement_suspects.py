"""A report that a host was lost is a suspicion placement checks with the host: any joined node can make one."""

from __future__ import annotations

import pytest
from builders import NOW, LedgerWord, a_host, a_job

from archipelag import identity
from archipelag.errors import HostRefused
from archipelag.ids import HostId
from archipelag.ledger.records import HostIdentity
from archipelag.lifecycle import HostStatus
from archipelag.placement.actor import PlacementActor
from archipelag.placement.suspects import Suspects
from archipelag.settings import PlacementSettings, Settings

A, B = HostId("a"), HostId("b")


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Witness:
    """Records whom placement asked to report; the test plays the host's answer (or its silence)."""

    def __init__(self) -> None:
        self.asked: list[tuple[HostId, str]] = []

    def ask(self, host_id: HostId, ticket: str) -> None:
        self.asked.append((host_id, ticket))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def witness() -> Witness:
    return Witness()


@pytest.fixture
def placement(clock: Clock, witness: Witness) -> PlacementActor:
    settings = Settings(heartbeat_interval_s=10, missed_heartbeats_offline=3,
                        placement=PlacementSettings(loss_doubt_s=60))
    ledger = LedgerWord()
    ledger.says_karma(B, 0.1)  # A ranks first when it is in
    actor = PlacementActor(settings, clock, witness=witness, book=ledger)
    actor.register(a_host(A))
    actor.register(a_host(B))
    return actor


def test_a_healthy_host_reported_lost_by_a_stranger_is_back_when_it_answers(
        placement: PlacementActor, witness: Witness, clock: Clock) -> None:
    placement.mark_offline(A, "red team")
    assert placement.rank(a_job()) == [B]  # out while it is asked: the report may be true
    [(asked, ticket)] = witness.asked
    assert asked == A
    clock.now += 0.05
    placement.heartbeat(A, {})  # the host's signed answer
    assert placement.rank(a_job()) == [A, B]
    placement.checked(A, ticket)  # the witness is done: the host had answered
    assert placement.get(A).status == HostStatus.ONLINE


def test_a_lost_host_leaves_at_once_and_is_not_picked_while_it_is_checked(
        placement: PlacementActor, witness: Witness) -> None:
    placement.mark_offline(A, "its agent died mid-job")
    assert placement.rank(a_job()) == [B]
    placement.mark_offline(A, "lost again")  # out already: nothing more to check
    assert len(witness.asked) == 1
    placement.checked(A, witness.asked[0][1])  # no heartbeat came
    assert placement.get(A).status == HostStatus.OFFLINE
    assert placement.rank(a_job()) == [B]


def test_a_lie_repeated_soon_after_it_was_proved_false_leaves_the_host_in(
        placement: PlacementActor, witness: Witness, clock: Clock) -> None:
    placement.mark_offline(A, "red team")
    placement.heartbeat(A, {})
    for _ in range(100):  # a joined node in a loop
        placement.mark_offline(A, "red team")
        assert placement.rank(a_job()) == [A, B]
    assert len(witness.asked) == 2  # asked once more, not a hundred times
    placement.heartbeat(A, {})
    clock.now += 61  # a report long after the last false one is believed at once again
    placement.heartbeat(A, {})
    placement.heartbeat(B, {})
    placement.mark_offline(A, "its agent died mid-job")
    assert placement.rank(a_job()) == [B]


def test_a_host_left_in_while_checked_leaves_when_it_does_not_answer(
        placement: PlacementActor, witness: Witness) -> None:
    placement.mark_offline(A, "red team")
    placement.heartbeat(A, {})
    placement.mark_offline(A, "its agent died mid-job")  # true this time
    assert placement.rank(a_job()) == [A, B]
    placement.checked(A, "forged")  # only the awaited ticket counts
    assert placement.rank(a_job()) == [A, B]
    placement.checked(A, witness.asked[-1][1])
    assert placement.rank(a_job()) == [B]
    placement.heartbeat(A, {})  # it came back by itself: a heartbeat is always believed
    assert placement.rank(a_job()) == [A, B]


def test_suspects_bookkeeping() -> None:
    suspects = Suspects(doubt_s=10, answer_within_s=2)
    first = suspects.suspect(A, 0.0)
    assert first.believed and first.ticket is not None
    assert suspects.suspect(A, 0.1).ticket is None  # under check
    assert suspects.heard(A, 0.2) and not suspects.heard(A, 0.3)
    assert not suspects.unanswered(A, first.ticket)  # answered already
    second = suspects.suspect(A, 5.0)
    assert not second.believed and second.ticket is not None
    assert suspects.unanswered(A, second.ticket)
    assert suspects.suspect(A, 6.0).believed  # it did not answer: no more doubt in its favour
    suspects.heard(A, 8.5)  # it answered, but late (it hung, then woke): back, yet it proved nothing
    assert suspects.suspect(A, 9.0).believed


def test_only_the_ledgers_word_suspends_reinstates_or_forgets_a_host() -> None:
    """Any joined node can call placement: an operator's and an owner's calls are checked against the ledger."""
    key = identity.generate_key()
    enrolled = {A: HostIdentity(A, identity.public_hex(key), 1, revoked=False)}
    placement = PlacementActor(Settings(report_max_skew_s=60), lambda: NOW, identities=enrolled.get)
    snapshot = a_host(A)
    placement.register(snapshot, identity.sign(key, "register", A, NOW, snapshot))
    with pytest.raises(HostRefused, match="holds no suspension"):
        placement.suspend(A, "red team")
    with pytest.raises(HostRefused, match="not revoked"):
        placement.forget(A)
    assert placement.get(A).status == HostStatus.ONLINE
    enrolled[A] = HostIdentity(A, identity.public_hex(key), 1, revoked=False, suspended_reason="the operator's")
    placement.suspend(A, "another reason")
    assert placement.suspensions() == {A: "the operator's"}  # the ledger's reason, not the caller's
    enrolled[A] = HostIdentity(A, identity.public_hex(key), 1, revoked=True)
    placement.forget(A)
    assert placement.ping() == 0
