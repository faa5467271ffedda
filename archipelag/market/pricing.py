"""Pricing: what a host asks for a workload, what it asks in effect now, and the market's rate. Pure.

A host posts asks per workload slug or per fnmatch family (DESIGN §7); ``ask_for`` picks the one that applies,
``check_asks`` holds them within the network's bounds, ``effective_ask`` applies the hardware tier's multiplier
and the surge, ``market_rate`` is the median effective ask. Money is int micro-credits; an effective ask is
rounded up, so a host never earns less than it asked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from archipelag.catalog import MICRO
from archipelag.errors import ValidationFailed

if TYPE_CHECKING:
    from archipelag.settings import MarketSettings

def credits_text(micro: int) -> str:
    """Micro-credits as people read them in a message: ``0.002``, ``0.000001`` (never ``1e-06``), ``20``."""
    return f"{(Decimal(micro) / MICRO).normalize():f}"


def parse_asks(prices: Iterable[str]) -> dict[str, int]:
    """``host join --price`` values as asks: ``0.02`` asks 0.02 credits for every workload (``*``),
    ``llm-*=0.05`` for a family, ``llm-chat=0.03`` for one workload. ValidationFailed for a price that is not a
    number of credits ≥ 0 to the micro-credit."""
    asks: dict[str, int] = {}
    for text in prices:
        pattern, _, price = text.rpartition("=")
        pattern = pattern.strip() or "*"
        try:
            micro = Decimal(price.strip()) * MICRO
        except InvalidOperation:
            micro = Decimal(-1)
        if not micro.is_finite() or micro < 0 or micro != micro.to_integral_value():
            raise ValidationFailed(f"--price {text!r}: a price is a number of credits, 0 or more, to the "
                                   "micro-credit (e.g. 0.02, or llm-*=0.05)", errors={"price": text})
        asks[pattern] = int(micro)
    return asks


def ask_for(asks: Mapping[str, int], slug: str, catalog_price_micro: int) -> int:
    """The ask that applies to ``slug``: the exact slug, else the longest matching pattern (ties: the
    lexicographically first), else the catalog's price."""
    exact = asks.get(slug)
    if exact is not None:
        return exact
    best: str | None = None
    for pattern in asks:
        if fnmatchcase(slug, pattern) and (best is None or (-len(pattern), pattern) < (-len(best), best)):
            best = pattern
    return catalog_price_micro if best is None else asks[best]


def check_asks(asks: Mapping[str, int], catalog: Mapping[str, int], settings: MarketSettings) -> list[str]:
    """Why ``asks`` cannot stand (empty: they can). ``catalog``: each workload's price. An ask for one workload
    must lie within its bounds; a family's (a pattern, ``*`` included) is held within each workload's bounds where
    it applies (``Market.ask``), since one price rarely fits workloads whose catalog prices differ a hundredfold. A
    family that matches no workload is refused (a typo would otherwise ask nothing)."""
    reasons: list[str] = []
    for pattern, price in sorted(asks.items()):
        if isinstance(price, bool) or not isinstance(price, int) or price < 0:
            reasons.append(f"{pattern}: a price is a whole number of micro-credits, 0 or more")
            continue
        matched = [slug for slug in catalog if fnmatchcase(slug, pattern)]
        if not matched:
            reasons.append(f"{pattern}: matches no workload in the catalog")
        for slug in matched if pattern in catalog else ():
            low, high = bounds(catalog[slug], settings)
            if not low <= price <= high:
                reasons.append(f"{pattern}: {credits_text(price)} credits for {slug} is outside "
                               f"{credits_text(low)}–{credits_text(high)} ({settings.min_ask_ratio:g}× to "
                               f"{settings.max_ask_ratio:g}× its catalog price of {credits_text(catalog[slug])})")
    return reasons


def bounds(catalog_price_micro: int, settings: MarketSettings) -> tuple[int, int]:
    """The lowest and highest ask the network takes for a workload of this catalog price."""
    return _bounds(catalog_price_micro, (settings.min_ask_ratio, settings.max_ask_ratio))


def _bounds(catalog_price_micro: int, ratios: tuple[float, float]) -> tuple[int, int]:
    low, high = ratios
    return (math.ceil(_decimal(catalog_price_micro) * _decimal(low)),
            math.floor(_decimal(catalog_price_micro) * _decimal(high)) if math.isfinite(high) else 2**62)


def tier_of(gpu_model: str | None) -> str:
    """A host's hardware tier: ``gpu`` when it lends a GPU, else ``cpu``."""
    return "cpu" if gpu_model is None else "gpu"


@dataclass(frozen=True)
class Market:
    """What turns an ask into an effective ask now: the tiers' multipliers and the surge. Hashable (placement
    keeps its effective-ask columns by it)."""

    tiers: tuple[tuple[str, float], ...] = field(default=())  # (tier, multiplier); a tier not listed: 1.0
    surge: float = 1.0
    ratios: tuple[float, float] = (0.0, math.inf)  # the bounds around a catalog price a family's ask is held in

    @classmethod
    def of(cls, settings: MarketSettings, surge: float = 1.0) -> Market:
        return cls(tuple(sorted(settings.tier_multipliers.items())), surge,
                   (settings.min_ask_ratio, settings.max_ask_ratio))

    def ask(self, asks: Mapping[str, int], slug: str, catalog_price_micro: int) -> int:
        """The host's ask for ``slug`` (``ask_for``); a family's held within the workload's bounds."""
        ask = ask_for(asks, slug, catalog_price_micro)
        if slug in asks:
            return ask
        low, high = _bounds(catalog_price_micro, self.ratios)
        return min(max(ask, low), high)

    def effective(self, ask_micro: int, tier: str) -> int:
        return effective_ask(ask_micro, dict(self.tiers).get(tier, 1.0), self.surge)


NO_MARKET = Market()  # every multiplier 1: an effective ask is the ask


def effective_ask(ask_micro: int, *multipliers: float) -> int:
    """``ask × multipliers`` (a tier's, the surge), rounded up to a whole micro-credit. In decimal, as the
    multipliers are written: 1 000 × 1.1 is 1 100 (binary floats make it 1 100.0000000000002, rounded up 1 101)."""
    product = _decimal(ask_micro)
    for multiplier in multipliers:
        product *= _decimal(multiplier)
    return math.ceil(product)


def _decimal(number: float) -> Decimal:
    return Decimal(repr(number))


def surge(queued: int, free_slots: int, settings: MarketSettings) -> float:
    """The surge multiplier: ``surge_multiplier`` while queued jobs exceed ``surge_queue_factor`` × the free
    slots of online hosts, else 1."""
    return settings.surge_multiplier if queued > settings.surge_queue_factor * free_slots else 1.0


def market_rate(effective_asks: Sequence[int], catalog_price_micro: int, surge_now: float) -> int:
    """The median effective ask (the upper middle's mean rounded up for an even count), or the catalog price ×
    surge when no host could run the workload."""
    if not effective_asks:
        return effective_ask(catalog_price_micro, surge_now)
    ordered = sorted(effective_asks)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return -(-(ordered[middle - 1] + ordered[middle]) // 2)
