"""Placement acting on karma: a cooled-down host is held back (scoring.cooled), a karma-suspended one is out
with its reason, and an operator's suspension and karma's never lift each other; the karma is the ledger's, read by
placement, never a caller's. No Ray, a fake clock, the ledger's word as a test sets it (``LedgerWord``)."""

from __future__ import annotations

import asyncio
import random

import pytest
from builders import NOW, LedgerWord, a_host, a_job

from archipelag.errors import InvalidTransition, NoCapacity
from archipelag.ids import HostId
from archipelag.lifecycle import HostStatus
from archipelag.placement.actor import PlacementActor
from archipelag.placement.client import PlacementClient, _LocalCalls
from archipelag.placement.scoring import cooled
from archipelag.settings import Settings

A, B, C = HostId("a"), HostId("b"), HostId("c")
EU_JOB = a_job(caller_region="eu-west")
WHY = "karma -10.50 is below the suspension threshold -10"


@pytest.mark.parametrize(("ranked", "shares", "draws", "expected"), [
    ([A, B, C], {}, [], [A, B, C]),  # nobody cooled: no draw, same order
    ([A, B, C], {A: 0.25}, [0.1], [A, B, C]),  # the draw fell inside its share: it keeps its place
    ([A, B, C], {A: 0.25}, [0.3], [B, C, A]),  # outside: after every host that kept its place
    ([A, B, C], {A: 0.25, B: 0.25}, [0.9, 0.9], [C, A, B]),  # held-back hosts keep their rank order
    ([A], {A: 0.25}, [0.9], [A]),  # the only host able to run it still gets the job
    ([A, B], {A: 0.0}, [0.0], [B, A]),  # share 0: always held back
    ([A, B], {A: 1.0}, [], [A, B]),  # share 1: never drawn for
])
def test_cooled_holds_back_a_cooled_down_host_by_its_share(ranked: list[HostId], shares: dict[HostId, float],
                                                           draws: list[float], expected: list[HostId]) -> None:
    left = iter(draws)
    assert cooled(ranked, shares, lambda: next(left)) == expected
    assert next(left, None) is None  # exactly one draw per cooled host


def placement_with(draw: float, ledger: LedgerWord) -> PlacementClient:
    actor = PlacementActor(Settings(heartbeat_interval_s=10, missed_heartbeats_offline=3), lambda: NOW,
                           draw=lambda: draw, book=ledger)
    return PlacementClient(_LocalCalls(actor))


def says(ledger: LedgerWord, placement: PlacementClient, host_id: HostId, score: float, share: float = 1.0,
         suspended: str | None = None) -> None:
    """The ledger's karma for a host changes, and placement is asked to read it (as the jobs service asks)."""
    ledger.says_karma(host_id, score, share, suspended)
    placement.refresh_karma([host_id])


def test_a_cooled_down_host_is_ranked_after_good_ones_unless_its_draw_keeps_it() -> None:
    ledger = LedgerWord()
    unlucky, lucky = placement_with(0.9, ledger), placement_with(0.1, ledger)
    for placement in (unlucky, lucky):
        placement.register(a_host("a", region="eu-west"))  # the better host: the caller's region
        placement.register(a_host("b", region="us-east"))
        says(ledger, placement, A, 0.3, 0.25)
    assert unlucky.rank(EU_JOB) == [B, A] and lucky.rank(EU_JOB) == [A, B]
    says(ledger, unlucky, A, 0.5)  # recovered: its place back
    assert unlucky.rank(EU_JOB) == [A, B]


def test_the_share_over_many_rankings_is_the_setting() -> None:
    draws = random.Random(3)
    ledger = LedgerWord()
    actor = PlacementActor(Settings(), lambda: NOW, draw=draws.random, book=ledger)
    placement = PlacementClient(_LocalCalls(actor))
    placement.register(a_host("a", region="eu-west"))
    placement.register(a_host("b", region="us-east"))
    says(ledger, placement, A, 0.3, 0.25)
    firsts = sum(placement.rank(EU_JOB)[0] == A for _ in range(4000))
    assert firsts / 4000 == pytest.approx(0.25, abs=0.03)


def test_a_karma_suspended_host_is_out_with_its_reason_and_back_when_karma_recovers() -> None:
    ledger = LedgerWord()
    placement = placement_with(0.9, ledger)
    placement.register(a_host("a"))
    placement.register(a_host("b"))
    says(ledger, placement, A, 0.0, 0.0, WHY)
    assert placement.get(A).status == HostStatus.SUSPENDED and placement.rank(EU_JOB) == [B]
    placement.register(a_host("a"))  # rejoining does not lift it
    assert placement.get(A).status == HostStatus.SUSPENDED
    with pytest.raises(InvalidTransition, match="suspension threshold"):
        placement.set_status(A, HostStatus.ONLINE)  # nor can its owner
    assert asyncio.run(placement.suspensions_async()) == {}  # the operator's list is the operator's
    says(ledger, placement, A, 0.05, 0.25)  # recovered above the threshold: back, on probation (cooled)
    assert placement.get(A).status == HostStatus.ONLINE and placement.rank(EU_JOB) == [B, A]


def test_an_operator_suspension_and_a_karma_suspension_do_not_lift_each_other() -> None:
    ledger = LedgerWord()
    placement = placement_with(0.9, ledger)
    placement.register(a_host("a"))
    asyncio.run(placement.suspend_async(A, "cheating"))
    says(ledger, placement, A, 0.0, 0.0, WHY)
    says(ledger, placement, A, 0.5)  # karma recovers: the operator's suspension holds
    assert placement.get(A).status == HostStatus.SUSPENDED
    says(ledger, placement, A, 0.0, 0.0, WHY)
    asyncio.run(placement.reinstate_async(A))  # the operator lifts theirs: karma's holds
    assert placement.get(A).status == HostStatus.SUSPENDED
    with pytest.raises(NoCapacity):
        placement.rank(EU_JOB)
    says(ledger, placement, A, 0.5)
    assert placement.get(A).status == HostStatus.ONLINE and placement.rank(EU_JOB) == [A]


def test_karma_is_what_the_ledger_holds_whoever_asks_placement_to_read_it() -> None:
    """Any joined node can call placement: asking it to read karma changes nothing the ledger does not say, and
    there is no call that hands it a value."""
    ledger = LedgerWord()
    placement = placement_with(0.9, ledger)
    placement.register(a_host("a"))
    placement.register(a_host("b"))
    ledger.says_karma(B, 0.9)  # the ledger's word on b, not read yet
    placement.refresh_karma([A, B, HostId("nobody")])  # a stranger asks; a host placement does not know is skipped
    assert placement.get(A).karma == 0.5 and placement.get(B).karma == 0.9
    assert not hasattr(PlacementActor, "set_karma")
    ledger.says_karma(A, 0.0, 0.0, WHY)
    placement.refresh_karma()  # the fleet round: every host placement knows, in one read
    assert placement.get(A).status == HostStatus.SUSPENDED


def test_a_karma_suspended_host_rejoining_a_restarted_placement_stays_out() -> None:
    ledger = LedgerWord()
    ledger.says_karma(A, 0.0, 0.0, WHY)
    placement = placement_with(0.9, ledger)  # a new placement: it has heard nothing of a
    placement.register(a_host("a"))
    assert placement.get(A).status == HostStatus.SUSPENDED
