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
from archipelag.runtimes.image_store import ImageStore
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
    limiter: RateLimiter = field(init=False)  # per account
    auth_failures: RateLimiter = field(init=False)  # per client address
    enrolments: RateLimiter = field(init=False)  # pairing requests, per client address (they carry no key)
    polls: RateLimiter = field(init=False)  # waiting hosts' polls, per client address
    pairing_failures: RateLimiter = field(init=False)  # wrong pairing codes, per account
    image_downloads: RateLimiter = field(init=False)  # image tarballs, per client address (they carry no key)
    images: ImageStore = field(init=False)  # the pinned images hosts fetch, saved from the coordinator's engine
    mailer: Mailer = field(init=False)

    def __post_init__(self) -> None:
        TRACE.configure(self.settings.trace_file)
        # Each replica counts the whole limit: the kernel spreads connections, not requests, over the replicas,
        # so a client on one keep-alive connection meets one replica. One spreading its requests over many
        # connections reaches at most ``ingress_replicas`` times a limit (no shared counter: a hop per request).
        self.limiter = RateLimiter(self.settings.rate_limit_per_min)
        self.host_reports = RateLimiter(self.settings.host_reports_per_min, "host reports")  # per address and host
        self.auth_failures = RateLimiter(self.settings.auth_failures_per_min, "failed authentications")
        self.enrolments = RateLimiter(self.settings.enrolments_per_min, "pairing requests")
        self.polls = RateLimiter(self.settings.enrolments_per_min * 6, "enrolment polls")
        self.pairing_failures = RateLimiter(self.settings.pairing_failures_per_min, "wrong pairing codes")
        self.image_downloads = RateLimiter(self.settings.image_downloads_per_min, "image downloads")
        self.images = ImageStore(self.settings.state_dir / "images")
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
