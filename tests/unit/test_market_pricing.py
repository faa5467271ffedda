"""The exchange's pricing rules, table by table: which ask applies, the bounds, effective asks, surge, rate."""

from __future__ import annotations

import pytest

from archipelag.errors import ValidationFailed
from archipelag.market.pricing import (
    NO_MARKET,
    Market,
    ask_for,
    check_asks,
    credits_text,
    effective_ask,
    market_rate,
    parse_asks,
    surge,
    tier_of,
)
from archipelag.settings import MarketSettings, Settings

CATALOG = {"llm-chat": 2_000, "llm-code": 4_000, "wasm-hash": 1_000, "sdxl": 200_000}


@pytest.mark.parametrize(("asks", "slug", "expected"), [
    ({}, "llm-chat", 2_000),  # no ask: the catalog's price
    ({"*": 3_000}, "llm-chat", 3_000),
    ({"*": 3_000, "llm-*": 2_500}, "llm-chat", 2_500),  # the longer pattern is more specific
    ({"*": 3_000, "llm-*": 2_500, "llm-chat": 2_100}, "llm-chat", 2_100),  # the exact slug wins
    ({"llm-c*": 1, "llm-*t": 2}, "llm-chat", 2),  # equal lengths: the lexicographically first ("*" < "c")
    ({"llm-*t": 2, "llm-c*": 1}, "llm-chat", 2),  # whatever order they were posted in
    ({"llm-cha?": 7, "llm-*": 9}, "llm-chat", 7),
    ({"wasm-*": 500}, "llm-chat", 2_000),  # a family that does not match: the catalog's price
    ({"LLM-*": 500}, "llm-chat", 2_000),  # patterns are case-sensitive, as accept lists are
])
def test_the_most_specific_ask_applies(asks: dict[str, int], slug: str, expected: int) -> None:
    assert ask_for(asks, slug, CATALOG.get(slug, 0)) == expected


@pytest.mark.parametrize(("asks", "refused"), [
    ({}, []),
    ({"llm-chat": 200}, []),  # 0.1 × the catalog's 2 000: the lowest taken
    ({"llm-chat": 20_000}, []),  # 10 ×: the highest
    ({"llm-chat": 199}, ["llm-chat"]),
    ({"llm-chat": 20_001}, ["llm-chat"]),
    ({"llm-*": 3_000}, []),  # within the bounds of llm-chat (200–20 000) and llm-code (400–40 000)
    ({"llm-*": 300}, []),  # below llm-code's lowest: a family's ask is held within each workload's bounds
    ({"*": 20_000}, []),  # above wasm-hash's highest (10 000): the same
    ({"llm-chta": 2_000}, ["llm-chta"]),  # a typo matches no workload
    ({"llm-chat": -1}, ["llm-chat"]),
])
def test_asks_are_held_within_the_catalog_bounds(asks: dict[str, int], refused: list[str]) -> None:
    reasons = check_asks(asks, CATALOG, MarketSettings())
    assert sorted({r.split(":")[0] for r in reasons}) == refused


@pytest.mark.parametrize(("asks", "slug", "expected"), [
    ({"*": 20_000}, "wasm-hash", 10_000),  # one price for every workload: held at wasm-hash's highest
    ({"*": 20_000}, "llm-chat", 20_000),  # within llm-chat's bounds: as asked
    ({"*": 20_000}, "sdxl", 20_000),  # sdxl's lowest is 20 000
    ({"*": 300}, "sdxl", 20_000),  # raised to sdxl's lowest
    ({"llm-chat": 20_000, "*": 1}, "llm-chat", 20_000),  # an exact ask was checked when it was posted
    ({}, "llm-chat", 2_000),
])
def test_a_familys_ask_is_held_within_each_workloads_bounds(asks: dict[str, int], slug: str,
                                                           expected: int) -> None:
    assert Market.of(MarketSettings()).ask(asks, slug, CATALOG[slug]) == expected


def test_an_out_of_bounds_reason_says_the_bounds_in_credits() -> None:
    [why] = check_asks({"llm-chat": 30_000}, CATALOG, MarketSettings())
    assert why == "llm-chat: 0.03 credits for llm-chat is outside 0.0002–0.02 (0.1× to 10× its catalog price of 0.002)"


@pytest.mark.parametrize(("ask", "multiplier", "expected"), [
    (1_000, 1.0, 1_000),
    (1_000, 1.1, 1_100),  # 1100.0000000000002 in floats: still 1 100
    (1_000, 1.25, 1_250),
    (1_001, 1.25, 1_252),  # 1 251.25 rounds up: a host never earns less than it asked
    (3, 1 / 3, 1),
    (1_000, 0.1, 100),
    (0, 1.25, 0),
    (10**15, 1.25, 1_250_000_000_000_000),
])
def test_an_effective_ask_is_rounded_up(ask: int, multiplier: float, expected: int) -> None:
    assert effective_ask(ask, multiplier) == expected


@pytest.mark.parametrize(("tier", "surge_now", "expected"), [
    ("cpu", 1.0, 1_000), ("gpu", 1.0, 2_000), ("cpu", 1.25, 1_250), ("gpu", 1.25, 2_500), ("tpu", 1.0, 1_000),
])
def test_the_tier_multiplier_and_the_surge_both_apply(tier: str, surge_now: float, expected: int) -> None:
    market = Market.of(MarketSettings(tier_multipliers={"cpu": 1.0, "gpu": 2.0}), surge_now)
    assert market.effective(1_000, tier) == expected
    assert NO_MARKET.effective(1_000, tier) == 1_000


def test_a_host_lending_a_gpu_is_in_the_gpu_tier() -> None:
    assert (tier_of(None), tier_of("RTX 4090")) == ("cpu", "gpu")


@pytest.mark.parametrize(("queued", "free_slots", "expected"), [
    (0, 0, 1.0), (0, 10, 1.0), (20, 10, 1.0), (21, 10, 1.25), (1, 0, 1.25),
])
def test_surge_while_the_queue_outgrows_the_free_slots(queued: int, free_slots: int, expected: float) -> None:
    assert surge(queued, free_slots, MarketSettings()) == expected


@pytest.mark.parametrize(("asks", "surge_now", "expected"), [
    ([], 1.0, 2_000),  # no host: the catalog's price
    ([], 1.25, 2_500),  # … times the surge
    ([1_500], 1.0, 1_500),
    ([3_000, 1_000, 2_000], 1.0, 2_000),
    ([1_000, 2_001], 1.0, 1_501),  # even count: the middle two's mean, rounded up
    ([1_000, 1_000, 5_000, 9_000], 1.0, 3_000),
])
def test_the_market_rate_is_the_median_effective_ask(asks: list[int], surge_now: float, expected: int) -> None:
    assert market_rate(asks, 2_000, surge_now) == expected


def test_market_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIPELAG_MARKET__SURGE_MULTIPLIER", "1.5")
    monkeypatch.setenv("ARCHIPELAG_MARKET__TIER_MULTIPLIERS", '{"cpu": 1.0, "gpu": 1.2}')
    market = Settings().market
    assert market.surge_multiplier == 1.5 and market.tier_multipliers == {"cpu": 1.0, "gpu": 1.2}
    assert (market.min_ask_ratio, market.max_ask_ratio, market.surge_queue_factor) == (0.1, 10.0, 2.0)


@pytest.mark.parametrize(("prices", "asks"), [
    ([], {}),
    (["0.02"], {"*": 20_000}),  # every workload
    (["llm-*=0.05", "llm-chat=0.03"], {"llm-*": 50_000, "llm-chat": 30_000}),
    (["0.001", "wasm-hash=0"], {"*": 1_000, "wasm-hash": 0}),
    ([" llm-chat = 1.5 "], {"llm-chat": 1_500_000}),
])
def test_host_join_prices_are_credits_by_pattern(prices: list[str], asks: dict[str, int]) -> None:
    assert parse_asks(prices) == asks


@pytest.mark.parametrize("price", ["cheap", "-0.01", "0.0000001", "llm-chat=", "nan", "inf"])
def test_a_price_that_is_not_whole_micro_credits_is_refused(price: str) -> None:
    with pytest.raises(ValidationFailed, match="--price"):
        parse_asks([price])


@pytest.mark.parametrize(("micro", "text"), [(2_000, "0.002"), (1, "0.000001"), (20_000_000, "20"), (0, "0"),
                                             (1_500_000, "1.5")])
def test_credits_read_as_decimals_in_messages(micro: int, text: str) -> None:
    assert credits_text(micro) == text
