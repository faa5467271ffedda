"""Settings: the one typed configuration object; the only reader of ``os.environ`` (ARCHIPELAG_*).

Build it once at an entry point (`Settings()`) and pass it down, into actor constructors too.
Nested fields use ``__``: ``ARCHIPELAG_PLACEMENT__WEIGHT_KARMA=0.5``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from archipelag.sandbox import Limits, Tier

REPO_ROOT = Path(__file__).resolve().parent.parent


class TierSettings(BaseModel):
    memory_mb: int
    timeout_s: float
    network: bool
    gpu: bool
    fuel: int
    output_bytes: int = 8 * 1024 * 1024
    line_bytes: int = 4 * 1024 * 1024

    def limits(self) -> Limits:
        return Limits(**self.model_dump())


def _default_tiers() -> dict[Tier, TierSettings]:
    return {
        Tier.RESTRICTED: TierSettings(memory_mb=256, timeout_s=60, network=False, gpu=False, fuel=2_000_000_000),
        Tier.STANDARD: TierSettings(memory_mb=1024, timeout_s=300, network=False, gpu=True, fuel=20_000_000_000),
        Tier.ELEVATED: TierSettings(memory_mb=8192, timeout_s=600, network=True, gpu=True, fuel=100_000_000_000),
    }


class PlacementSettings(BaseModel):
    weight_karma: float = 0.30
    weight_proximity: float = 0.30
    weight_load: float = 0.25
    weight_fit: float = 0.15
    weight_warm: float = 0.0
    weight_speed: float = 0.0
    max_candidates: int = 8  # length of the ranked list handed back


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ARCHIPELAG_", env_nested_delimiter="__", extra="ignore")

    state_dir: Path = Path(".archipelag")  # ledger, caches, ray temp files, api key of `up`
    database_url: str = ""  # empty → SQLite in state_dir; else e.g. postgresql+psycopg://user@host/db
    workloads_dir: Path = REPO_ROOT / "workloads"

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    ray_namespace: str = "archipelag"
    ray_head_port: int = 6380
    ray_address: str = ""  # empty → the local head started by `up`

    heartbeat_interval_s: float = 10.0
    missed_heartbeats_offline: int = 3
    host_slots: int = 4  # jobs one host runs at once
    max_attempts: int = 3  # placements before a job whose hosts keep vanishing fails

    rate_limit_per_min: int = 100
    initial_credits: float = 1000.0  # credits for an account created by `up`
    admin_api_key: SecretStr | None = None

    tiers: dict[Tier, TierSettings] = Field(default_factory=_default_tiers)
    placement: PlacementSettings = Field(default_factory=PlacementSettings)

    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'archipelag.db').resolve()}"

    def limits_for(self, tier: Tier) -> Limits:
        return self.tiers[tier].limits()

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
        data["admin_api_key"] = "***" if self.admin_api_key else None
        return data
