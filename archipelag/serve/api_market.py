"""Market API: the exchange (DESIGN §7) — hosts' asking prices, the market rates they make, the history of the
prices jobs cleared at, and an account's saved bids.

- ``POST /api/v1/market/asking-prices {"host_id", "prices": {pattern: credits}}``: replace what a host asks per
  job, by workload slug or fnmatch family (``llm-*``, ``*``); its owner's or an admin's (403 for another's host,
  404 for one never enrolled, 422 naming each ask outside the network's bounds — nothing is stored then).
  ``GET /api/v1/market/asking-prices?host_id=``: one host's asks, or every host the caller owns.
- ``GET /api/v1/market/rates``, ``/market/rates/{slug}``: per workload the rate (the median effective ask of the
  hosts that could run it, or the catalog price × surge with none), how many hosts ask, the lowest and highest
  ask, the surge multiplier and the catalog price.
- ``GET /api/v1/market/history/{slug}?since=&bucket=``: the prices its settled jobs cleared at, per bucket of
  ``bucket`` seconds since ``since`` (default: the last day in buckets of ``ARCHIPELAG_MARKET__HISTORY_BUCKET_S``).
- ``GET|PUT /api/v1/account/bid-preferences``: the caller's saved bids, used when a request names no
  ``bid_price``; PUT ``{"prices": {pattern: credits or null}}`` saves each (null forgets it).

Amounts are credits on the wire (micro-credits in the ledger), as in the rest of the API.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from archipelag.catalog import MICRO, lookup
from archipelag.errors import Forbidden, NotFound, ValidationFailed
from archipelag.ids import HostId
from archipelag.serve.api_jobs import Reader, Svc, Writer
from archipelag.serve.auth import Caller
from archipelag.serve.responses import data
from archipelag.serve.services import Services
from archipelag.serve.views import iso

router = APIRouter(prefix="/api/v1")

MAX_CREDITS = 1_000_000
MAX_PATTERNS = 64
MAX_BUCKETS = 10_000  # one history answer
HISTORY_DEFAULT_S = 86_400
Pattern = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._*?\[\]!-]+$")]
Credits = Annotated[Decimal, Field(ge=0, le=MAX_CREDITS, decimal_places=6, allow_inf_nan=False)]
SlugPath = Annotated[str, Path(min_length=1, max_length=100)]


class AskingPrices(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    prices: dict[Pattern, Credits] = Field(max_length=MAX_PATTERNS)


class BidPreferences(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prices: dict[Pattern, Credits | None] = Field(min_length=1, max_length=MAX_PATTERNS)


def micro(credits: Decimal) -> int:
    return int(credits * MICRO)


def credits_of(prices: dict[str, int]) -> dict[str, float]:
    return {pattern: price / MICRO for pattern, price in sorted(prices.items())}


def _credits(value: Any) -> float | None:
    return value / MICRO if isinstance(value, int) else None


# --- asking prices ----------------------------------------------------------------------------------


async def _owned(caller: Caller, host_id: str, svc: Services) -> HostId:
    """The host, if the caller may set its asks: its owner or an admin. 404 for a host never enrolled."""
    identity = await svc.ledger.host_identity(host_id)
    if identity is None:
        raise NotFound(f"no host {host_id} is enrolled in this network", host_id=host_id)
    if not caller.is_admin and identity.owner_account_id != caller.account_id:
        raise Forbidden(f"host {host_id} is not yours: only its owner or an admin sets its asking prices")
    return HostId(host_id)


def asks_view(host_id: str, asks: dict[str, int]) -> dict[str, Any]:
    return {"host_id": host_id, "prices": credits_of(asks)}


@router.post("/market/asking-prices")
async def set_asking_prices(body: AskingPrices, caller: Writer, svc: Svc) -> Response:
    host_id = await _owned(caller, body.host_id, svc)
    stored = await svc.jobs.set_asks(host_id, {pattern: micro(price) for pattern, price in body.prices.items()})
    return data(asks_view(host_id, stored))


@router.get("/market/asking-prices")
async def asking_prices(caller: Reader, svc: Svc,
                        host_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None) -> Response:
    if host_id is not None:
        hid = await _owned(caller, host_id, svc)
        return data([asks_view(hid, (await svc.ledger.asking_prices(hid)).get(hid, {}))])
    owned = await svc.ledger.owned_hosts(caller.account_id)
    every = await svc.ledger.asking_prices() if owned else {}
    return data([asks_view(host.id, every.get(host.id, {})) for host in owned])


# --- rates and history ------------------------------------------------------------------------------


async def _rates(svc: Services) -> dict[str, dict[str, Any]]:
    prices: dict[str, int] = {slug: manifest.price_micro for slug, manifest in svc.catalog.items()}
    return dict(await svc.placement.market_rates_async(prices))


def rate_view(slug: str, rate: dict[str, Any], catalog_price_micro: int) -> dict[str, Any]:
    return {"workload": slug, "rate": _credits(rate.get("rate_micro")), "hosts": int(rate.get("hosts") or 0),
            "lowest": _credits(rate.get("lowest_micro")), "highest": _credits(rate.get("highest_micro")),
            "surge": float(rate.get("surge") or 1.0), "catalog_price": catalog_price_micro / MICRO}


@router.get("/market/rates")
async def market_rates(caller: Reader, svc: Svc) -> Response:
    rates = await _rates(svc)
    return data([rate_view(slug, rates.get(slug, {}), manifest.price_micro)
                 for slug, manifest in sorted(svc.catalog.items())])


@router.get("/market/rates/{slug}")
async def market_rate(slug: SlugPath, caller: Reader, svc: Svc) -> Response:
    manifest = lookup(svc.catalog, slug)
    return data(rate_view(manifest.slug, (await _rates(svc)).get(manifest.slug, {}), manifest.price_micro))


def bucket_view(bucket: dict[str, Any]) -> dict[str, Any]:
    return {"start": iso(bucket["start"]), "count": bucket["count"], "min": bucket["min_micro"] / MICRO,
            "median": bucket["median_micro"] / MICRO, "avg": bucket["avg_micro"] / MICRO,
            "max": bucket["max_micro"] / MICRO}


@router.get("/market/history/{slug}")
async def market_history(slug: SlugPath, caller: Reader, svc: Svc,
                         since: Annotated[datetime | None, Query()] = None,
                         bucket: Annotated[int | None, Query(ge=1, le=366 * 86_400)] = None) -> Response:
    manifest = lookup(svc.catalog, slug)
    now = datetime.now(UTC)
    start = since if since is not None else now - timedelta(seconds=HISTORY_DEFAULT_S)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    bucket_s = bucket or svc.settings.market.history_bucket_s
    if (now - start).total_seconds() / bucket_s > MAX_BUCKETS:
        raise ValidationFailed(f"that is more than {MAX_BUCKETS} buckets; ask for a later since or a longer bucket",
                               errors={"bucket": f"at most {MAX_BUCKETS} buckets"})
    buckets = await svc.ledger.market_history(manifest.slug, start, bucket_s)
    return data({"workload": manifest.slug, "since": iso(start), "bucket_s": bucket_s,
                 "buckets": [bucket_view(b) for b in buckets]})


# --- saved bids -------------------------------------------------------------------------------------


@router.get("/account/bid-preferences")
async def bid_preferences(caller: Reader, svc: Svc) -> Response:
    return data({"prices": credits_of(await svc.ledger.bid_preferences(caller.account_id))})


@router.put("/account/bid-preferences")
async def set_bid_preferences(body: BidPreferences, caller: Writer, svc: Svc) -> Response:
    saved: dict[str, int] = {}
    for pattern, price in body.prices.items():
        saved = await svc.jobs.set_bid_preference(caller.account_id, pattern,
                                                  micro(price) if price is not None else None)
    return data({"prices": credits_of(saved)})
