"""Registry: every metric the network exposes — name, help, labels, buckets — in one place. Pure (prometheus_client
only). The README's "Metrics" section documents the same list; keep them together.

Each ``Instruments`` has its own ``CollectorRegistry``: no process-wide state, so two services in one test
process never share a count, and nothing but these metrics is exposed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # Prometheus' text format, version 0.0.4
PREFIX = "archipelag"

# Waiting for a job's first output, from admission: a warm host answers in milliseconds, a cold model in seconds.
WAIT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# One ranking by placement, seen from the jobs service (the actor call included).
PLACEMENT_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass
class Instruments:
    """The network's metrics, registered on a registry of their own."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        self.jobs_submitted = Counter(
            f"{PREFIX}_jobs_submitted", "Jobs admitted (input valid, a host able to run them online), by workload.",
            ["workload"], registry=r)
        self.jobs = Counter(
            f"{PREFIX}_jobs", "Jobs that ended, by workload and outcome (succeeded, failed, cancelled, timed_out).",
            ["workload", "outcome"], registry=r)
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth", "Jobs waiting in the queue for a free host.", registry=r)
        self.time_to_first_event = Histogram(
            f"{PREFIX}_time_to_first_event_seconds",
            "From a job's admission to the first event its host sent (a status, a token, …), by workload.",
            ["workload"], buckets=WAIT_BUCKETS_S, registry=r)
        self.time_to_first_token = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "From a job's admission to its first token (chat workloads), by workload.",
            ["workload"], buckets=WAIT_BUCKETS_S, registry=r)
        self.placement_decision = Histogram(
            f"{PREFIX}_placement_decision_seconds",
            "One ranking of hosts for a job by placement, by outcome (ranked: some host fits; no_capacity: none).",
            ["outcome"], buckets=PLACEMENT_BUCKETS_S, registry=r)
        self.hosts = Gauge(
            f"{PREFIX}_hosts", "Hosts placement knows, by status and region (as of the last fleet round).",
            ["status", "region"], registry=r)
        self.ledger_transactions = Counter(
            f"{PREFIX}_ledger_transactions",
            "Credit transfers the jobs core wrote to the ledger, by kind (reserve, settle, refund).",
            ["kind"], registry=r)
        self.http_requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests the API answered, on every replica, by method, route template and status.",
            ["method", "route", "status"], registry=r)

    def render(self) -> str:
        """The text exposition of every metric."""
        return generate_latest(self.registry).decode()
