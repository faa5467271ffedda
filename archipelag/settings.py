"""Settings: the one typed configuration object; the only reader of ``os.environ`` (ARCHIPELAG_*).

Build it once at an entry point (`Settings()`) and pass it down, into actor constructors too.
Nested fields use ``__``: ``ARCHIPELAG_PLACEMENT__WEIGHT_KARMA=0.5``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from archipelag.sandbox import Limits, Tier

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS_DIR = Path.home() / ".cache" / "archipelag" / "models"  # where a host keeps model weights


class TierSettings(BaseModel):
    memory_mb: int
    timeout_s: float
    network: bool
    gpu: bool
    fuel: int
    output_bytes: int = 8 * 1024 * 1024
    line_bytes: int = 4 * 1024 * 1024
    output_events: int = 100_000
    pids_limit: int = 128
    cpus: float = 1.0
    tmp_mb: int = 64

    def limits(self) -> Limits:
        return Limits(**self.model_dump())


class RestrictedTier(TierSettings):
    memory_mb: int = 256
    timeout_s: float = 60
    network: bool = False
    gpu: bool = False
    fuel: int = 2_000_000_000


class StandardTier(TierSettings):
    memory_mb: int = 1024
    timeout_s: float = 300
    network: bool = False
    gpu: bool = True
    fuel: int = 20_000_000_000
    pids_limit: int = 256
    cpus: float = 2.0
    tmp_mb: int = 256


class ElevatedTier(TierSettings):
    memory_mb: int = 8192
    timeout_s: float = 600
    network: bool = True
    gpu: bool = True
    fuel: int = 100_000_000_000
    pids_limit: int = 1024
    cpus: float = 4.0
    tmp_mb: int = 1024


class Tiers(BaseModel):
    """Limits per sandbox tier (DESIGN §5); each field can be set alone, e.g.
    ``ARCHIPELAG_TIERS__RESTRICTED__TIMEOUT_S=30``."""

    restricted: RestrictedTier = Field(default_factory=RestrictedTier)
    standard: StandardTier = Field(default_factory=StandardTier)
    elevated: ElevatedTier = Field(default_factory=ElevatedTier)


class PlacementSettings(BaseModel):
    weight_karma: float = 0.30
    weight_proximity: float = 0.30
    weight_load: float = 0.20
    weight_fit: float = 0.10
    weight_warm: float = 0.10  # below the proximity gap to another region: a warm host far away loses
    # Below the proximity gap between the caller's region and its neighbour (0.4 × 0.3): a faster host does not
    # pull a job out of the caller's region, and a host that fakes a fast benchmark gains at most this much.
    weight_speed: float = 0.10
    max_candidates: int = 8  # length of the ranked list handed back
    # A host reported lost is asked for a heartbeat at once (placement/suspects.py): no answer within this long and
    # it stays out. One that answered within ``loss_answer_within_s`` (a round trip: slower, it was hung or busy)
    # proved the report false and stays in on the next one within ``loss_doubt_s``, until its check goes
    # unanswered: a joined node repeating the lie takes it out one round trip per ``loss_doubt_s``.
    loss_check_timeout_s: float = Field(default=5.0, gt=0)
    loss_answer_within_s: float = Field(default=1.0, gt=0)
    loss_doubt_s: float = Field(default=60.0, ge=0)
    # How long placement's thread waits for the ledger's answer on karma and asks (placement/book.py): longer, it
    # answers rankings on what it holds and applies the answer when it comes; it does not wait at all while the
    # ledger is known not to answer (restarting, down).
    ledger_read_timeout_s: float = Field(default=0.5, gt=0)


class BenchmarkSettings(BaseModel):
    """The join benchmark (actors/benchmark.py) the coordinator runs on each new host's node, and how placement
    reads it (placement/measured.py): e.g. ``ARCHIPELAG_BENCHMARK__REFERENCE_CPU_SINGLE_MB_S=1500``."""

    enabled: bool = True  # off: hosts stay `unmeasured` (speed 0, claims uncapped)
    cpu_single_s: float = Field(default=0.2, gt=0)  # one thread hashing
    cpu_all_s: float = Field(default=0.3, gt=0)  # one thread per claimed core hashing at once
    max_threads: int = Field(default=256, gt=0)  # claims above it are tested with this many (and capped)
    memory_probe_mb: int = Field(default=128, ge=0)  # allocate and touch the claimed RAM up to this
    gpu_s: float = Field(default=0.3, gt=0)  # fp16 matmul, when torch with CUDA is there
    timeout_s: float = Field(default=60.0, gt=0)  # no answer by then: the host is flagged benchmark_failed
    core_tolerance: float = Field(default=1.5, ge=1.0)  # claimed cores above ⌈cores observed × this⌉ are capped
    # What a speed of 1.0 means: a recent desktop core with SHA extensions, eight of them, a data-centre GPU.
    reference_cpu_single_mb_s: float = Field(default=2000.0, gt=0)
    reference_cpu_all_mb_s: float = Field(default=16000.0, gt=0)
    reference_gpu_tflops: float = Field(default=100.0, gt=0)


class KarmaSettings(BaseModel):
    """Karma's amounts and thresholds (ledger/karma_rules.py builds ``KarmaRules`` from them), e.g.
    ``ARCHIPELAG_KARMA__COOLDOWN_BELOW=-5``. Chosen so an honest host failing 5 % of its jobs is never suspended
    and one failing 30 % cools down within 50 jobs (tests/unit/test_karma_simulation.py)."""
    points_per_compute_hour: float = Field(default=1.0, ge=0)  # completed compute earns this per hour
    min_job_points: float = Field(default=0.08, ge=0)  # a completed job earns at least this
    payout_threshold: float = 10.0  # below this total, earnings are boosted
    boost_below_threshold: float = Field(default=1.5, ge=1.0)
    failed_points: float = Field(default=-1.0, le=0)  # the host itself failed (internal error)
    timed_out_points: float = Field(default=-1.0, le=0)  # ran past the wall-clock budget on this host
    dropped_points: float = Field(default=-2.0, le=0)  # lost mid-job (died, cut off, silent past its lease)
    artifact_refused_points: float = Field(default=-2.0, le=0)  # refused a signed, pinned catalog artifact
    bad_receipt_points: float = Field(default=-3.0, le=0)  # sent what cannot be true
    verification_failed_points: float = Field(default=-10.0, le=0)
    neutral_score: float = Field(default=0.5, ge=0, le=1)  # a new host's placement score
    saturation_points: float = Field(default=10.0, gt=0)  # the score is 1 (0) at ± this total
    cooldown_below: float = -3.0  # below this total the host cools down
    suspend_below: float = -10.0  # below this total it is suspended
    cooldown_share: float = Field(default=0.25, ge=0, le=1)  # chance a cooled-down host keeps its ranked place
    recovery_per_day: float = Field(default=1.0, ge=0)  # a negative total rises toward 0 by this a day


class MarketSettings(BaseModel):
    """The exchange (market/pricing.py): the bounds on hosts' asks, tier multipliers and surge, e.g.
    ``ARCHIPELAG_MARKET__SURGE_MULTIPLIER=1.5``."""

    min_ask_ratio: float = Field(default=0.1, ge=0)  # a workload's ask below catalog × this is refused
    max_ask_ratio: float = Field(default=10.0, ge=0)  # above catalog × this too (a family's is held within)
    tier_multipliers: dict[str, float] = Field(default_factory=lambda: {"cpu": 1.0, "gpu": 1.0})
    surge_multiplier: float = Field(default=1.25, ge=1.0)
    surge_queue_factor: float = Field(default=2.0, ge=0)  # surge while queued > factor × free slots
    history_bucket_s: int = Field(default=3600, gt=0)  # /market/history buckets


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ARCHIPELAG_", env_nested_delimiter="__", extra="ignore")

    state_dir: Path = Path(".archipelag")  # ledger, caches, ray temp files, api key of `up`
    database_url: str = ""  # empty → SQLite in state_dir; else e.g. postgresql+psycopg://user@host/db
    workloads_dir: Path = REPO_ROOT / "workloads"

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    ray_namespace: str = "archipelag"
    # The hosts' Ray head (the cluster hosts join; the coordinator's services run in a cluster of their own, on
    # loopback, whose port Ray picks): its port, and the address its Ray ports listen on — loopback for a network
    # on one machine (`make up`); the LAN or public address hosts on other machines reach (behind TLS across the
    # internet: README, deployment).
    ray_head_port: int = 6380
    ray_head_ip: str = "127.0.0.1"
    # The account the hosts' head and the bridge run as (the coordinator must be root to use it): whatever a
    # host runs on that head, or makes the bridge run, runs as it. Empty: the coordinator's own account.
    hosts_ray_user: str = ""
    ray_auth: Literal["token", "disabled"] = "token"  # Ray's token auth for every join (DESIGN §10)
    ray_temp_dir: Path = Path("/tmp/archipelag")  # short: Ray's socket paths must stay under 107 bytes
    serve_throughput_optimized: bool = True  # Ray Serve's RAY_SERVE_THROUGHPUT_OPTIMIZED mode (see ray_env)

    heartbeat_interval_s: float = 10.0
    missed_heartbeats_offline: int = 3
    host_slots: int = 12  # jobs one host runs at once: 4 sandboxes + a full llm-chat batch (runtimes.workers)
    max_attempts: int = 3  # placements before a job whose hosts keep vanishing fails
    image_cache_max: int = 20  # workload images a host keeps (LRU beyond)
    warm_ttl_s: float = 600.0  # an image used this recently makes its workload warm on the host
    # Where a host fetches a workload image it lacks (the network's API, `GET /api/v1/images/{id}`); each is kept
    # only if its ID is the one the signed catalog pins. Empty: a host enrolled by pairing uses the API it paired
    # with; any other host refuses the job (`image_missing`).
    image_source: str = ""
    image_fetch_max_bytes: int = Field(default=8 * 1024**3, gt=0)  # one image's tarball, at most
    image_fetch_timeout_s: float = Field(default=900.0, gt=0)  # one image's whole transfer and load, at most
    image_fetch_retry_s: float = Field(default=30.0, ge=0)  # a failed fetch is not tried again for this long
    image_downloads_per_min: int = Field(default=30, gt=0)  # coordinator: image downloads per client address
    queue_timeout_s: float = 120.0  # how long a job waits in the queue for a free slot before it fails
    queue_max_jobs: int = 1000  # jobs waiting at once; past it a new job gets 503 with Retry-After
    priority_aging_s: float = Field(default=1.0, gt=0)  # a queued job gains a point of priority per this wait
    batch_max_inputs: int = Field(default=1000, gt=0)  # inputs one POST /api/v1/jobs/batch may fan out
    # The share of the queue's places a batch's children may hold at once: the rest stays free for single jobs.
    batch_queue_share: float = Field(default=0.5, gt=0, le=1)
    lease_s: float = 3.0  # a running job's host silent this long has lost it (it runs again elsewhere)
    keepalive_s: float = 1.0  # a host sends an empty batch this often while a job is quiet (keeps its lease)
    # `host leave` and Ctrl-C on `host join`: running jobs get this long to finish before the host leaves
    # anyway (what still runs then fails over to another host).
    drain_timeout_s: float = Field(default=600.0, ge=0)
    relay_checkpoint_s: float = 0.5  # live streams are saved this often, so a restart resumes them
    ingress_replicas: int = 2  # API processes (Ray Serve replicas) on the head; any serves any job
    trace_file: Path | None = None  # stamps of each job's path to its first output (metrics.trace; the benchmark)
    # The host's gate (gate/server.py): when set, the host's agent starts containers only through this socket
    # (its Ray node cannot reach the Docker engine); unset, the agent talks to the engine itself (one machine, tests).
    gate_socket: Path | None = None

    # Models (LLM and image weights): looked up by file name here, verified against the catalog's SHA-256.
    models_dir: Path = DEFAULT_MODELS_DIR
    model_idle_ttl_s: float = 300.0  # a warm model worker idle this long is stopped, freeing its memory
    max_model_workers: int = 2  # warm model workers one host keeps at once (least recently used goes first)
    model_memory_reserve_mb: int = 1024  # a new worker starts only if the host keeps this much free after it

    rate_limit_per_min: int = 100
    # Request limits (hardening): what one request may hold, refused before it costs more (DESIGN §8, §10).
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)  # 413 past it, checked before the body is read
    max_json_depth: int = Field(default=32, gt=0)  # a JSON body nested deeper: 422
    # The longest one JSON string may be: 413 past it. A file sent to pdf-extract or image-resize is one string.
    max_json_string_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    max_json_items: int = Field(default=100_000, gt=0)  # JSON values in a body: 413 past it (parsing is per value)
    # A job's input as JSON: 413 past it; a manifest's `[limits] input_bytes` narrows it for its workload.
    max_job_input_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    initial_credits: float = 1000.0  # credits for an account created by `up`

    # Accounts: who may sign up, what they get, how long links and sessions last, where mail goes.
    signup_policy: Literal["open", "invite", "closed"] = "invite"  # `archipelag up` makes its network open
    signup_credits: float = 10_000.0  # granted when a new account verifies its address
    platform_fee_bps: int = Field(default=1_000, ge=0, le=10_000)  # of each job's price; host owners earn the rest
    auth_failures_per_min: int = 20  # failed sign-ins and bad keys one client address may send a minute
    trusted_proxies: list[str] = Field(default_factory=list)  # e.g. a TLS proxy: its X-Forwarded-For hop counts
    session_ttl_s: float = 7 * 24 * 3600.0
    session_cookie_secure: bool = True  # browsers keep Secure cookies on http://localhost and 127.0.0.1 too
    verify_link_ttl_s: float = 48 * 3600.0
    reset_link_ttl_s: float = 3600.0
    invite_ttl_s: float = 14 * 24 * 3600.0
    public_api_url: str = ""  # the API's address in links that mail carries; empty → http://api_host:api_port
    coordinator_api: str = ""  # the API a host reports to; empty → the paired API, or the Ray address' machine
    host_reports_per_min: int = Field(default=600, gt=0)  # signed reports one address may send for one host
    smtp_host: str = ""  # empty → mail is written to state_dir/logs/mail.log on the coordinator
    smtp_port: int = 587
    smtp_starttls: bool = True
    smtp_username: str = ""
    smtp_password: SecretStr | None = None
    smtp_from: str = "Archipelag <noreply@localhost>"

    # The signed catalog (DESIGN §10): hosts run only what a trusted key signed. Keys are Ed25519 public keys
    # in base64; list several to rotate. `up` trusts the dev key it makes; production keeps its key offline.
    trusted_catalog_keys: list[str] = Field(default_factory=list)
    # The coordinator keys whose job tickets a host's gate honours (gate/tickets.py), hex; an enrolled host gets
    # them sealed with its join credentials. Empty: the key in this state dir (the coordinator's own machine).
    trusted_ticket_keys: list[str] = Field(default_factory=list)
    catalog_signing_key: Path | None = None  # None → state_dir/catalog_signing.key (dev only)
    allowed_image_sources: list[str] = Field(default_factory=lambda: ["archipelag/*"])  # image repo patterns

    # Hosts enrol with a pairing code their owner approves (DESIGN §10); what they report is signed with their key.
    pairing_ttl_s: float = 600.0  # a pairing code is valid this long, once
    enrolments_per_min: int = 10  # pairing requests and polls one client address may send a minute, unsigned
    pairing_failures_per_min: int = 10  # wrong codes one account may try a minute
    report_max_skew_s: float = 60.0  # a signed host report this far from the coordinator's clock is refused
    public_ray_address: str = ""  # the Ray address approved hosts join; empty → the hosts' head's

    tiers: Tiers = Field(default_factory=Tiers)
    placement: PlacementSettings = Field(default_factory=PlacementSettings)
    benchmark: BenchmarkSettings = Field(default_factory=BenchmarkSettings)
    karma: KarmaSettings = Field(default_factory=KarmaSettings)
    market: MarketSettings = Field(default_factory=MarketSettings)

    @field_validator("state_dir", "workloads_dir", "models_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'archipelag.db').resolve()}"

    def api_for_hosts(self) -> str:
        """Where a host sends its signed reports: the API it paired with, else this network's own."""
        return (self.coordinator_api or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    def public_url(self) -> str:
        """The API's address as people reach it (links in mail)."""
        return (self.public_api_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    def ray_env(self) -> dict[str, str]:
        """Environment for every Ray process of the hosts' cluster (nodes, drivers), so all agree on auth: its
        token is the one hosts hold."""
        return self._ray_env(self.state_dir / "ray_auth_token")

    def services_ray_env(self) -> dict[str, str]:
        """Environment for the coordinator's own Ray cluster: a token no host is given. Serve's controller checks
        its deployments every 0.5 s instead of Ray's 0.1 s: each check asks the GCS for the nodes' resources and
        drains, which kept the idle controller at 39–48 mcore (15–21 now) and its GCS at 24–30 (13–17); the
        ingress deploys as fast (README, Benchmarks)."""
        return {**self._ray_env(self.state_dir / "services_ray_token"), "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5"}

    def _ray_env(self, token: Path) -> dict[str, str]:
        env = {"RAY_AUTH_MODE": self.ray_auth, "RAY_TMPDIR": str(self.ray_temp_dir)}
        if self.serve_throughput_optimized:
            # Ray Serve's documented low-overhead mode: user code on the replica's own loop, the router on the
            # caller's loop, gRPC between proxy and replica. Halves Serve's hop here (GET /health 8.6 → 4.3 ms).
            env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
            env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "0"  # each replica listens on the API's port itself (listener)
        if self.ray_auth == "token":
            env["RAY_AUTH_TOKEN_PATH"] = str(token.resolve())
        return env

    def to_env(self) -> dict[str, str]:
        """These settings as ARCHIPELAG_* variables, for child processes (a local host's join)."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if name == "smtp_password":
                value = self.smtp_password.get_secret_value() if self.smtp_password else None
            if value is None:
                continue
            env[f"ARCHIPELAG_{name.upper()}"] = json.dumps(value) if isinstance(value, dict | list) else str(value)
        return env

    def limits_for(self, tier: Tier) -> Limits:
        tier_settings: TierSettings = getattr(self.tiers, tier.value)
        return tier_settings.limits()

    def redacted(self) -> dict[str, Any]:
        """The effective settings for `archipelag config show`, secrets hidden."""
        data = self.model_dump(mode="json")
        url = self.effective_database_url()
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            creds, host = rest.rsplit("@", 1)
            user = creds.split(":", 1)[0]
            url = f"{scheme}://{user}:***@{host}" if ":" in creds else url
        data["database_url"] = url
        data["smtp_password"] = "***" if self.smtp_password else None
        return data
