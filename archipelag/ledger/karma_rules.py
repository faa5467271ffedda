"""Karma rules: how many points each host outcome is worth, and the score and standing derived from a total.
Pure: no database, no Ray (DESIGN §7).

- Completed compute earns one point per 60 compute-minutes (at least ``min_job_points`` per job, so short jobs
  count), 1.5× while the host's total is below the +10 payout threshold.
- Failures, timeouts, drops (host lost mid-job) and failed verifications cost points.
- The score placement reads is the total mapped linearly onto [0, 1]: ``neutral_score`` for a new host,
  1.0 at ``+saturation_points``, 0.0 at ``-saturation_points``.
- Below ``cooldown_below`` a host cools down (placement sends it fewer jobs); below ``suspend_below`` it is
  suspended.

The thresholds live in ``KarmaRules``; a later change can build it from Settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class KarmaKind(StrEnum):
    JOB_SUCCEEDED = "job_succeeded"  # completed compute: earns points by compute time
    JOB_FAILED = "job_failed"  # the host failed a job it accepted (not the workload's own error)
    JOB_TIMED_OUT = "job_timed_out"  # ran past the wall-clock budget on this host
    HOST_DROPPED = "host_dropped"  # the host vanished while running a job
    VERIFICATION_FAILED = "verification_failed"  # a re-run elsewhere disagreed with this host's result
    ADJUSTMENT = "adjustment"  # an operator's correction, points given explicitly


class Standing(StrEnum):
    GOOD = "good"  # placed normally
    COOLDOWN = "cooldown"  # placed less often
    SUSPENDED = "suspended"  # not placed at all


@dataclass(frozen=True)
class KarmaRules:
    points_per_compute_hour: float = 1.0
    min_job_points: float = 0.01
    payout_threshold: float = 10.0  # below this total, earnings are boosted
    boost_below_threshold: float = 1.5
    failed_points: float = -0.5
    timed_out_points: float = -1.0
    dropped_points: float = -2.0
    verification_failed_points: float = -10.0
    neutral_score: float = 0.5
    saturation_points: float = 10.0
    cooldown_below: float = -3.0
    suspend_below: float = -10.0

    def points_for(
        self, kind: KarmaKind, *, total_before: float = 0.0, compute_s: float = 0.0, adjustment: float = 0.0
    ) -> float:
        """Points one event is worth, given the host's total before it."""
        if kind is KarmaKind.JOB_SUCCEEDED:
            earned = max(self.min_job_points, self.points_per_compute_hour * max(compute_s, 0.0) / 3600.0)
            return earned * self.boost_below_threshold if total_before < self.payout_threshold else earned
        if kind is KarmaKind.ADJUSTMENT:
            return adjustment
        return {
            KarmaKind.JOB_FAILED: self.failed_points,
            KarmaKind.JOB_TIMED_OUT: self.timed_out_points,
            KarmaKind.HOST_DROPPED: self.dropped_points,
            KarmaKind.VERIFICATION_FAILED: self.verification_failed_points,
        }[kind]

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


DEFAULT_RULES = KarmaRules()
