"""Services: what the API's handlers share inside one ingress replica, built once from Settings.

A replica holds HTTP only: jobs live in the jobs service (``JobsClient``), records in the ledger
(``LedgerClient``), the fleet in placement (``PlacementClient``). Any replica serves any request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from archipelag.accounts.mail import Mailer
from archipelag.accounts.revocations import Notice, RevocationsClient
from archipelag.catalog import Manifest, load_catalog
from archipelag.ids import WorkloadSlug
from archipelag.jobs.client import JobsClient
from archipelag.ledger.client import LedgerClient
from archipelag.metrics.trace import TRACE
from archipelag.placement.client import PlacementClient
from archipelag.serve.auth import CredentialCache, RateLimiter
from archipelag.settings import Settings


@dataclass
class Services:
    settings: Settings
    ledger: LedgerClient
    jobs: JobsClient
    placement: PlacementClient
    catalog: dict[WorkloadSlug, Manifest]
    revocations: RevocationsClient = field(default_factory=RevocationsClient.local)
    credentials: CredentialCache = field(default_factory=CredentialCache)
    limiter: RateLimiter = field(init=False)  # per account, this replica's share
    auth_failures: RateLimiter = field(init=False)  # per client address, this replica's share
    mailer: Mailer = field(init=False)

    def __post_init__(self) -> None:
        TRACE.configure(self.settings.trace_file)
        replicas = self.settings.ingress_replicas
        self.limiter = RateLimiter(replica_share(self.settings.rate_limit_per_min, replicas))
        self.auth_failures = RateLimiter(replica_share(self.settings.auth_failures_per_min, replicas),
                                         "failed authentications")
        self.mailer = Mailer(self.settings)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        return cls(
            settings=settings,
            ledger=LedgerClient.connect(settings),
            jobs=JobsClient.connect(settings),
            placement=PlacementClient.connect(settings),
            catalog=load_catalog(settings.workloads_dir),
            revocations=RevocationsClient.connect(settings),
        )

    async def revoked(self, notice: Notice) -> None:
        """A credential stopped working: drop it here at once, and tell every other replica."""
        self.credentials.forget(notice)
        await self.revocations.publish(notice)


def replica_share(per_min: int, replicas: int) -> int:
    """Each replica's part of a per-minute limit: Serve spreads requests over the replicas, so together they
    allow about ``per_min`` (without a shared counter, a Ray hop per request). 0 stays 0: no limit."""
    return per_min if per_min <= 0 else max(1, per_min // max(1, replicas))
