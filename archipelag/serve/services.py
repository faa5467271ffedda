"""Services: what the API's handlers share inside one ingress replica, built once from Settings.

A replica holds HTTP only: jobs live in the jobs service (``JobsClient``), records in the ledger
(``LedgerClient``), the fleet in placement (``PlacementClient``). Any replica serves any request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from archipelag.catalog import Manifest, load_catalog
from archipelag.ids import WorkloadSlug
from archipelag.jobs.client import JobsClient
from archipelag.ledger.client import LedgerClient
from archipelag.placement.client import PlacementClient
from archipelag.serve.auth import KeyCache, RateLimiter
from archipelag.settings import Settings


@dataclass
class Services:
    settings: Settings
    ledger: LedgerClient
    jobs: JobsClient
    placement: PlacementClient
    catalog: dict[WorkloadSlug, Manifest]
    keys: KeyCache = field(default_factory=KeyCache)
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(0))

    @classmethod
    def build(cls, settings: Settings) -> Services:
        return cls(
            settings=settings,
            ledger=LedgerClient.connect(settings),
            jobs=JobsClient.connect(settings),
            placement=PlacementClient.connect(settings),
            catalog=load_catalog(settings.workloads_dir),
            limiter=RateLimiter(replica_share(settings.rate_limit_per_min, settings.ingress_replicas)),
        )


def replica_share(per_min: int, replicas: int) -> int:
    """Each replica's part of a key's rate limit: Serve spreads requests over the replicas, so together they
    allow about ``per_min`` (without a shared counter, a Ray hop per request). 0 stays 0: no limit."""
    return per_min if per_min <= 0 else max(1, per_min // max(1, replicas))
