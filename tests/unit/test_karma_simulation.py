"""Karma over simulated job streams: the rules (ledger/karma_rules.py) and the placement share they drive
(placement/scoring.py ``cooled``), seeded so every run is the same. Pure: no ledger, no Ray.

Each offer is a job the simulated host ranks first for, against an equal peer; placement's cool-down decides
whether the host keeps it, a suspended host gets none, and 30 s pass between offers (karma recovers with time).
The issue's figures: an honest host failing 5 % of its jobs is never suspended over 2,000 jobs; a host failing
30 % is cooled down within 50 of its jobs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from archipelag.ids import HostId
from archipelag.ledger.karma_rules import DEFAULT_RULES, KarmaKind, KarmaRules, Standing
from archipelag.placement.scoring import cooled

HOST, PEER = HostId("sim"), HostId("peer")
SEEDS = range(10)
OFFER_EVERY_S = 30.0
JOB_S = 20.0  # compute per job: short jobs earn min_job_points


@dataclass
class Stream:
    offers: int = 0
    jobs: int = 0  # offers the host kept and ran
    standings: list[Standing] = field(default_factory=list)  # after each of its jobs
    cooled_offers: int = 0  # offers made while it was cooled down
    cooled_jobs: int = 0  # of which it kept
    suspended_offers: int = 0
    suspended_jobs: int = 0  # must stay 0
    events: list[tuple[datetime, float]] = field(default_factory=list)
    total: float = 0.0


def simulate(rules: KarmaRules, failure_rate: float, offers: int, seed: int) -> Stream:
    outcomes, draws = random.Random(seed), random.Random(10_000 + seed)
    stream, now = Stream(), datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(offers):
        now += timedelta(seconds=OFFER_EVERY_S)
        stream.total = rules.recovered(stream.total, OFFER_EVERY_S) if stream.events else 0.0
        state = rules.state(stream.total)
        stream.offers += 1
        suspended = state.standing is Standing.SUSPENDED
        stream.suspended_offers += suspended
        stream.cooled_offers += state.standing is Standing.COOLDOWN
        ranked = [] if suspended else cooled([HOST, PEER], {HOST: state.share}, draws.random)
        if not ranked or ranked[0] != HOST:
            continue
        stream.jobs += 1
        stream.suspended_jobs += suspended
        stream.cooled_jobs += state.standing is Standing.COOLDOWN
        kind = KarmaKind.JOB_FAILED if outcomes.random() < failure_rate else KarmaKind.JOB_SUCCEEDED
        points = rules.points_for(kind, total_before=stream.total, compute_s=JOB_S)
        stream.total += points
        stream.events.append((now, points))
        stream.standings.append(rules.standing(stream.total))
    return stream


@pytest.mark.parametrize("seed", SEEDS)
def test_an_honest_host_failing_five_percent_is_never_suspended_over_2000_jobs(seed: int) -> None:
    stream = simulate(DEFAULT_RULES, 0.05, 2000, seed)
    assert Standing.SUSPENDED not in stream.standings
    assert stream.jobs >= 0.9 * stream.offers  # it keeps (nearly) its whole share
    # The incremental total the simulation kept is the ledger's: its events' total, recovery included.
    assert DEFAULT_RULES.total_at(stream.events, stream.events[-1][0]) == pytest.approx(stream.total)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_host_failing_thirty_percent_is_cooled_down_within_50_jobs(seed: int) -> None:
    stream = simulate(DEFAULT_RULES, 0.30, 50, seed)
    assert Standing.COOLDOWN in stream.standings[:50] or Standing.SUSPENDED in stream.standings[:50]


@pytest.mark.parametrize("seed", SEEDS)
def test_a_host_failing_thirty_percent_gets_fewer_jobs_then_none(seed: int) -> None:
    """Cooled down it keeps about its share of the offers; suspended it gets none, ever, until it recovers."""
    stream = simulate(DEFAULT_RULES, 0.30, 2000, seed)
    assert Standing.SUSPENDED in stream.standings
    assert stream.suspended_jobs == 0 and stream.suspended_offers > 0
    assert stream.jobs < 0.5 * stream.offers


def test_over_many_offers_a_cooled_host_keeps_its_share() -> None:
    draws = random.Random(7)
    kept = sum(cooled([HOST, PEER], {HOST: 0.25}, draws.random)[0] == HOST for _ in range(20_000))
    assert kept / 20_000 == pytest.approx(0.25, abs=0.01)


def test_a_suspended_host_recovers_with_time_through_probation() -> None:
    """At ``recovery_per_day`` a host just past suspension is back on probation (cooled down) in a day and in
    good standing once its total is back above the cool-down threshold."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = [(start, -10.5)]
    standing = [DEFAULT_RULES.standing(DEFAULT_RULES.total_at(events, start + timedelta(days=d)))
                for d in (0, 1, 7, 8)]
    assert standing == [Standing.SUSPENDED, Standing.COOLDOWN, Standing.COOLDOWN, Standing.GOOD]


def test_figures() -> None:
    """Prints what the streams look like (pytest -s): jobs until cool-down and suspension, shares."""
    for rate in (0.05, 0.30):
        firsts = []
        for seed in SEEDS:
            stream = simulate(DEFAULT_RULES, rate, 2000, seed)
            cool = next((i + 1 for i, s in enumerate(stream.standings) if s is not Standing.GOOD), None)
            gone = next((i + 1 for i, s in enumerate(stream.standings) if s is Standing.SUSPENDED), None)
            firsts.append((cool, gone, round(stream.jobs / stream.offers, 3),
                           round(stream.cooled_jobs / max(stream.cooled_offers, 1), 3)))
        print(f"failing {rate:.0%}: (first cool-down job, first suspension job, share of offers, share while "
              f"cooled) per seed: {firsts}")
