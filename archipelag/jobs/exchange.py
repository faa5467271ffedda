"""Exchange: the jobs core's side of the market (DESIGN §7) — the bid a job carries, the asks placement holds, and
the caches that keep both off a submission's path.

- **The bid chain.** A job's bid is the request's ``bid_price``, else the account's saved preference for the
  workload (a slug or a family, the most specific winning as for asks), else the market rate, else the catalog
  price. It reserves ``bid + token part`` (``reserve_micro``). ``bid_for`` reads only memory: every account's
  saved bids are read once at start and changed here (``set_bid_preference``), and the market rates are
  refreshed each fleet round (``refresh_rates``).
- **Asks.** An owner's asks (``set_asks``) are checked against the network's bounds, stored, and handed to
  placement. As hosts register, ``sync`` reconciles: asks a host's signed registration names are its latest word
  and are stored; a host that registers naming none gets the stored ones from placement (after a coordinator
  or placement restart, too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from archipelag.catalog import Manifest, max_price_micro
from archipelag.errors import ArchipelagError, NotFound, ValidationFailed
from archipelag.ids import AccountId, HostId, WorkloadSlug
from archipelag.jobs.ports import AskBoard, JobLedger
from archipelag.market.pricing import ask_for, check_asks
from archipelag.placement.scoring import HostSnapshot
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
        self._asks: dict[HostId, dict[str, int]] | None = None  # what the ledger holds, as last read or written
        self._rates: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()  # one change of asks at a time: an owner's, or a registration's

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
        """Read what is not cached yet (saved bids, stored asks) and the market rates now; a part that fails is
        tried again on the next call."""
        try:
            if self._bids is None:
                self._bids = dict(await self._ledger.all_bid_preferences())
            if self._asks is None:
                self._asks = dict(await self._ledger.asking_prices())
        except ArchipelagError as exc:
            log.warning("saved bids or asks not read (tried again next round): %s", exc.message)
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
        """Replace a host's asks: 422 naming each one outside the network's bounds (nothing stored then), handed
        to placement, then stored. The asks as stored."""
        reasons = check_asks(asks, self.catalog_prices, self._settings)
        if reasons:
            raise ValidationFailed("asks outside the network's bounds: " + "; ".join(reasons),
                                   errors={reason.split(":", 1)[0]: reason for reason in reasons})
        async with self._lock:
            try:  # placement first: what it refuses is not stored
                await self._placement.set_asks_async(host_id, dict(asks))
            except NotFound:  # not joined now: placement hears them when it registers (``sync``)
                pass
            stored = await self._ledger.set_asking_prices(host_id, asks)
            if self._asks is not None:
                self._asks[host_id] = dict(stored)
        await self.refresh_rates()  # the rate the bid chain falls back on moves with the asks
        return stored

    async def sync(self, snapshots: Iterable[HostSnapshot]) -> None:
        """Reconcile each host's asks in placement with the stored ones (see the module's note)."""
        if self._asks is None:
            return
        async with self._lock:
            for snap in snapshots:
                told, stored = dict(snap.asks), self._asks.get(snap.host_id, {})
                if told == stored:
                    continue
                try:
                    if told:  # named in its signed registration: the host's latest word
                        self._asks[snap.host_id] = await self._ledger.set_asking_prices(snap.host_id, told)
                    else:
                        await self._placement.set_asks_async(snap.host_id, stored)
                except ArchipelagError as exc:
                    log.warning("asks of host %s not synchronised: %s", snap.host_id, exc.message)


def check_pattern(pattern: str, catalog: Mapping[WorkloadSlug, Manifest]) -> bool:
    """Whether ``pattern`` (a slug or a family) names some workload of the catalog."""
    return any(ask_for({pattern: 0}, slug, NO_PRICE) == 0 for slug in catalog)
