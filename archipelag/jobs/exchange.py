"""Exchange: the jobs core's side of the market (DESIGN §7) — the bid a job carries, the asks placement holds, and
the caches that keep both off a submission's path.

- **The bid chain.** A job's bid is the request's ``bid_price``, else the account's saved preference for the
  workload (a slug or a family, the most specific winning as for asks), else the market rate, else the catalog
  price. It reserves ``bid + token part`` (``reserve_micro``). ``bid_for`` reads only memory: every account's
  saved bids are read once at start and changed here (``set_bid_preference``), and the market rates are
  refreshed each fleet round (``refresh``).
- **Asks.** An owner's asks (``set_asks``) are checked against the network's bounds and stored; placement then
  applies what the ledger holds (any joined node can call placement, so it takes asks from no caller). The asks
  a host's signed registration names (`host join --price`) placement checks and stores itself; a host that
  registers naming none gets the stored ones. Nothing here reads asks back from placement.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from archipelag.catalog import Manifest, max_price_micro
from archipelag.errors import ArchipelagError, ValidationFailed
from archipelag.ids import AccountId, HostId, WorkloadSlug
from archipelag.jobs.ports import AskBoard, JobLedger
from archipelag.market.pricing import ask_for, check_asks
from archipelag.settings import MarketSettings

log = logging.getLogger(__name__)

NO_PRICE = -1  # ``ask_for``'s answer when no saved bid matches (prices are never negative)


def reserve_micro(manifest: Manifest, job_input: dict[str, Any], bid_micro: int) -> int:
    """What a job reserves: its bid in place of the catalog's per-job price, plus the most its tokens may cost."""
    return max_price_micro(manifest, job_input) - manifest.price_micro + bid_micro


class Exchange:
    def __init__(self, catalog: Mapping[WorkloadSlug, Manifest], settings: MarketSettings, ledger: JobLedger,
                 placement: AskBoard) -> None:
        self._catalog = catalog
        self._settings = settings
        self._ledger = ledger
        self._placement = placement
        self._bids: dict[AccountId, dict[str, int]] | None = None  # None until read from the ledger
        self._rates: dict[str, dict[str, Any]] = {}

    @property
    def catalog_prices(self) -> dict[str, int]:
        return {slug: manifest.price_micro for slug, manifest in self._catalog.items()}

    # --- the bid chain (memory only) ---------------------------------------------------------------

    def bid_for(self, account_id: int, manifest: Manifest, requested_micro: int | None) -> int:
        """The job's bid: the request's, else the saved one, else the market rate, else the catalog price."""
        if requested_micro is not None:
            return requested_micro
        saved = ask_for((self._bids or {}).get(AccountId(account_id), {}), manifest.slug, NO_PRICE)
        if saved != NO_PRICE:
            return saved
        rate = self._rates.get(manifest.slug, {}).get("rate_micro")
        return int(rate) if isinstance(rate, int) else manifest.price_micro

    def rates(self) -> dict[str, dict[str, Any]]:
        """The market rates as last refreshed, per workload slug."""
        return dict(self._rates)

    async def refresh(self) -> None:
        """Read the saved bids if not cached yet, and the market rates now; a part that fails is tried again on
        the next call."""
        try:
            if self._bids is None:
                self._bids = dict(await self._ledger.all_bid_preferences())
        except ArchipelagError as exc:
            log.warning("saved bids not read (tried again next round): %s", exc.message)
        await self.refresh_rates()

    async def refresh_rates(self) -> None:
        try:
            self._rates = dict(await self._placement.market_rates_async(self.catalog_prices))
        except ArchipelagError as exc:
            log.warning("market rates not refreshed: %s", exc.message)

    async def set_bid_preference(self, account_id: int, pattern: str, price_micro: int | None) -> dict[str, int]:
        """Save (or with None, forget) the account's bid for ``pattern``; 422 for a pattern no workload
        matches. The account's saved bids."""
        if price_micro is not None and not check_pattern(pattern, self._catalog):
            raise ValidationFailed(f"{pattern!r} matches no workload in the catalog",
                                   errors={pattern: "matches no workload"})
        saved = await self._ledger.set_bid_preference(account_id, pattern, price_micro)
        if self._bids is not None:
            self._bids[AccountId(account_id)] = dict(saved)
        return saved

    # --- asks --------------------------------------------------------------------------------------

    async def set_asks(self, host_id: HostId, asks: dict[str, int]) -> dict[str, int]:
        """Replace a host's asks: 422 naming each one outside the network's bounds (nothing stored then); stored,
        then placement applies what the ledger holds (a host not joined now reads them when it registers). The
        asks as stored."""
        reasons = check_asks(asks, self.catalog_prices, self._settings)
        if reasons:
            raise ValidationFailed("asks outside the network's bounds: " + "; ".join(reasons),
                                   errors={reason.split(":", 1)[0]: reason for reason in reasons})
        stored = await self._ledger.set_asking_prices(host_id, asks)
        await self._placement.refresh_asks_async(host_id)
        await self.refresh_rates()  # the rate the bid chain falls back on moves with the asks
        return stored


def check_pattern(pattern: str, catalog: Mapping[WorkloadSlug, Manifest]) -> bool:
    """Whether ``pattern`` (a slug or a family) names some workload of the catalog."""
    return any(ask_for({pattern: 0}, slug, NO_PRICE) == 0 for slug in catalog)
