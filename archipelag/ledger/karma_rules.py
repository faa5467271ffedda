"""Karma rules: how many points each host outcome is worth, how a total recovers with time, and the score and
standing derived from it. Pure: no database, no Ray (DESIGN §7). ``KarmaRules.from_settings`` builds them from
``ARCHIPELAG_KARMA__*`` (settings.KarmaSettings); every amount and threshold is one of its fields.

- Completed compute earns one point per 60 compute-minutes (at least ``min_job_points`` per job, so short jobs
  count), 1.5× while the host's total is below the +10 payout threshold.
- Outcomes that are the host's fault cost points (``fault_of`` says which end codes are): a failure of the host
  itself, a timeout, a drop (host lost mid-job), a refused catalog artifact, a bad receipt, a failed
  verification. A workload's own error (its bad input, its crash, its budget) is not the host's and costs nothing.
- A negative total recovers toward 0 by ``recovery_per_day`` (pro rata, between events and up to now): computed
  from the events' times alone, so no background writer is needed (``total_at`` is the definition; the ledger
  banks the recovery up to each new event as a ``recovery`` event, so a total is a SQL sum plus the recovery
  since the host's last event). A positive total does not decay.
- The score placement reads is the total mapped linearly onto [0, 1]: ``neutral_score`` for a new host,
  1.0 at ``+saturation_points``, 0.0 at ``-saturation_points``.
- Below ``cooldown_below`` a host cools down: placement keeps its ranked place only with probability
  ``cooldown_share`` and otherwise ranks it after every host in good standing (it still takes work nobody else
  can). Below ``suspend_below`` it is suspended: out of placement until its karma recovers above the threshold,
  when it re-enters cooled down (the cool-down share is its probation).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from archipelag.settings import KarmaSettings

DAY_S = 86_400.0


class KarmaKind(StrEnum):
    JOB_SUCCEEDED = "job_succeeded"  # completed compute: earns points by compute time
    JOB_FAILED = "job_failed"  # the host failed a job it accepted (not the workload's own error)
    JOB_TIMED_OUT = "job_timed_out"  # ran past the wall-clock budget on this host
    HOST_DROPPED = "host_dropped"  # the host vanished while running a job
    ARTIFACT_REFUSED = "artifact_refused"  # the host refused a catalog artifact (signed and pinned by the network)
    BAD_RECEIPT = "bad_receipt"  # the host sent what cannot be true (usage, output past its ticket)
    VERIFICATION_FAILED = "verification_failed"  # a re-run elsewhere disagreed with this host's result
    ADJUSTMENT = "adjustment"  # an operator's correction, points given explicitly
    RECOVERY = "recovery"  # a negative total's recovery over time, banked when the host's next event is written


class Standing(StrEnum):
    GOOD = "good"  # placed normally
    COOLDOWN = "cooldown"  # placed less often
    SUSPENDED = "suspended"  # not placed at all


# A job's end code (protocol error events, errors.py codes) → the host's karma event when the end is its fault.
# Absent codes (workload_error, budget_exceeded, protocol_violation, bad_request, cancelled …) are the
# workload's or the user's doing and cost the host nothing.
HOST_FAULTS: dict[str, KarmaKind] = {
    "timed_out": KarmaKind.JOB_TIMED_OUT,
    "workload_refused": KarmaKind.ARTIFACT_REFUSED,
    "bad_receipt": KarmaKind.BAD_RECEIPT,
    "internal_error": KarmaKind.JOB_FAILED,
    "host_lost": KarmaKind.HOST_DROPPED,
}


def fault_of(code: str | None) -> KarmaKind | None:
    """The host's karma event for a job that ended with ``code``; None when the end is not the host's fault."""
    return HOST_FAULTS.get(code) if code else None


@dataclass(frozen=True)
class KarmaState:
    """A host's karma now: what placement acts on and what the owner sees."""

    total: float
    score: float
    standing: Standing
    share: float  # the chance placement keeps its ranked place: 1 good, ``cooldown_share`` cooled down, 0
    reason: str | None  # why it is cooled down or suspended; None in good standing


@dataclass(frozen=True)
class KarmaRules:
    points_per_compute_hour: float = 1.0
    min_job_points: float = 0.08
    payout_threshold: float = 10.0  # below this total, earnings are boosted
    boost_below_threshold: float = 1.5
    failed_points: float = -1.0
    timed_out_points: float = -1.0
    dropped_points: float = -2.0
    artifact_refused_points: float = -2.0
    bad_receipt_points: float = -3.0
    verification_failed_points: float = -10.0
    neutral_score: float = 0.5
    saturation_points: float = 10.0
    cooldown_below: float = -3.0
    suspend_below: float = -10.0
    cooldown_share: float = 0.25
    recovery_per_day: float = 1.0

    @classmethod
    def from_settings(cls, settings: KarmaSettings) -> KarmaRules:
        return cls(**settings.model_dump())

    def points_for(
        self, kind: KarmaKind, *, total_before: float = 0.0, compute_s: float = 0.0, adjustment: float = 0.0
    ) -> float:
        """Points one event is worth, given the host's total before it."""
        if kind is KarmaKind.JOB_SUCCEEDED:
            earned = max(self.min_job_points, self.points_per_compute_hour * max(compute_s, 0.0) / 3600.0)
            return earned * self.boost_below_threshold if total_before < self.payout_threshold else earned
        if kind in (KarmaKind.ADJUSTMENT, KarmaKind.RECOVERY):
            return adjustment
        return {
            KarmaKind.JOB_FAILED: self.failed_points,
            KarmaKind.JOB_TIMED_OUT: self.timed_out_points,
            KarmaKind.HOST_DROPPED: self.dropped_points,
            KarmaKind.ARTIFACT_REFUSED: self.artifact_refused_points,
            KarmaKind.BAD_RECEIPT: self.bad_receipt_points,
            KarmaKind.VERIFICATION_FAILED: self.verification_failed_points,
        }[kind]

    def recovered(self, total: float, elapsed_s: float) -> float:
        """A total ``elapsed_s`` later with no event: a negative one rises toward 0, never past it."""
        if total >= 0 or self.recovery_per_day <= 0 or elapsed_s <= 0:
            return total
        return min(0.0, total + self.recovery_per_day * elapsed_s / DAY_S)

    def total_at(self, events: Iterable[tuple[datetime, float]], now: datetime) -> float:
        """The total of ``(at, points)`` events in the order they were written, with recovery up to ``now``."""
        total, last = 0.0, None
        for at, points in events:
            if last is not None:
                total = self.recovered(total, (at - last).total_seconds())
            total += points
            last = at
        return total if last is None else self.recovered(total, (now - last).total_seconds())

    def score(self, total: float) -> float:
        """The derived score in [0, 1] that placement reads."""
        if total >= 0:
            raw = self.neutral_score + (1.0 - self.neutral_score) * total / self.saturation_points
        else:
            raw = self.neutral_score + self.neutral_score * total / self.saturation_points
        return min(1.0, max(0.0, raw))

    def standing(self, total: float) -> Standing:
        if total < self.suspend_below:
            return Standing.SUSPENDED
        if total < self.cooldown_below:
            return Standing.COOLDOWN
        return Standing.GOOD

    def state(self, total: float) -> KarmaState:
        """The score, standing, placement share and reason of a total."""
        standing = self.standing(total)
        if standing is Standing.SUSPENDED:
            share, reason = 0.0, (f"karma {total:.2f} is below the suspension threshold {self.suspend_below:g}: "
                                  f"no jobs until it recovers (by {self.recovery_per_day:g} a day)")
        elif standing is Standing.COOLDOWN:
            share, reason = self.cooldown_share, (
                f"karma {total:.2f} is below the cool-down threshold {self.cooldown_below:g}: placement gives it "
                f"{self.cooldown_share:.0%} of its usual share until it recovers")
        else:
            share, reason = 1.0, None
        return KarmaState(total=total, score=self.score(total), standing=standing, share=share, reason=reason)


DEFAULT_RULES = KarmaRules()
