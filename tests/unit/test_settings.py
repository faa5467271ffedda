from __future__ import annotations

import pytest

from archipelag.catalog import Manifest
from archipelag.ids import WorkloadSlug
from archipelag.sandbox import Tier, tier_for_trust
from archipelag.settings import Settings


def test_defaults_run_on_a_laptop_with_sqlite_in_the_state_dir(tmp_path: object) -> None:
    settings = Settings(state_dir=tmp_path)
    assert settings.effective_database_url().startswith("sqlite:///")
    assert settings.api_host == "127.0.0.1" and settings.api_port == 8000


def test_environment_overrides_nested_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIPELAG_API_PORT", "9001")
    monkeypatch.setenv("ARCHIPELAG_PLACEMENT__WEIGHT_KARMA", "0.9")
    monkeypatch.setenv("ARCHIPELAG_TIERS__RESTRICTED__TIMEOUT_S", "5")
    settings = Settings()
    assert settings.api_port == 9001
    assert settings.placement.weight_karma == 0.9
    assert settings.limits_for(Tier.RESTRICTED).timeout_s == 5


def test_redacted_settings_hide_database_and_smtp_passwords() -> None:
    shown = Settings(database_url="postgresql+psycopg://arch:s3cret@db:5432/arch", smtp_password="m41lpw").redacted()
    assert "s3cret" not in str(shown) and "m41lpw" not in str(shown)
    assert shown["database_url"] == "postgresql+psycopg://arch:***@db:5432/arch"


@pytest.mark.parametrize("trust,tier", [(0, Tier.RESTRICTED), (1, Tier.STANDARD), (2, Tier.STANDARD),
                                        (3, Tier.ELEVATED)])
def test_trust_levels_map_onto_tiers(trust: int, tier: Tier) -> None:
    assert tier_for_trust(trust) == tier


def test_tier_limits_follow_the_design() -> None:
    settings = Settings()
    restricted, standard, elevated = (settings.limits_for(t) for t in Tier)
    assert (restricted.memory_mb, restricted.timeout_s, restricted.network, restricted.gpu) == (256, 60, False, False)
    assert (standard.memory_mb, standard.timeout_s, standard.network, standard.gpu) == (1024, 300, False, True)
    assert (elevated.memory_mb, elevated.timeout_s, elevated.network) == (8192, 600, True)


def test_a_manifest_can_narrow_its_tier_limits_but_never_widen_them() -> None:
    manifest = Manifest(slug=WorkloadSlug("x"), name="x", description="", runtime="wasm", trust_level=0,
                        price_micro=0, limits={"timeout_s": 5, "memory_mb": 10_000})
    limits = manifest.limits_under(Settings().limits_for(manifest.tier))
    assert limits.timeout_s == 5 and limits.memory_mb == 256
