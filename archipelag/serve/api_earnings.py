"""Earnings API: what the caller's hosts earned (per host, per day), payouts of it, and the caller's usage.

- ``GET /api/v1/account/earnings?from=YYYY-MM-DD&to=YYYY-MM-DD&host_id=…``: day buckets per host in the period
  (default: the last 30 days), totals for the period, and what was ever earned, paid out, and is unpaid now.
- ``GET /api/v1/account/usage?from=&to=``: the caller's spend per day and per workload.
- ``POST /api/v1/account/payouts {"amount": credits}``: a payout of unpaid earnings (403 while none of the
  caller's hosts has reached the karma payout threshold, 409 for more than is unpaid, 422 for a bad amount);
  ``GET /api/v1/account/payouts``: their history, newest first.

Amounts are credits on the wire (micro-credits in the ledger), as in the rest of the API.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from archipelag.catalog import MICRO
from archipelag.errors import ValidationFailed
from archipelag.ledger.records import DayAmount, Payout, period
from archipelag.serve.api_jobs import Reader, Svc, Writer
from archipelag.serve.responses import data, page
from archipelag.serve.views import iso

router = APIRouter(prefix="/api/v1/account")

MAX_PERIOD_DAYS = 366  # one answer covers at most a year of days
From = Annotated[date | None, Query(alias="from", description="First day (UTC), included.")]
To = Annotated[date | None, Query(alias="to", description="Last day (UTC), included.")]
HostFilter = Annotated[str | None, Query(min_length=1, max_length=64)]


class PayoutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: float = Field(gt=0, le=1e12, allow_inf_nan=False)  # credits


def _checked(start: date | None, end: date | None) -> tuple[date, date]:
    """The period asked for (the last 30 days by default); 422 when it runs backwards or is too long."""
    start, end = period(start, end, datetime.now(UTC).date())
    if start > end:
        raise ValidationFailed(f"`from` ({start}) is after `to` ({end})")
    if (end - start).days >= MAX_PERIOD_DAYS:
        raise ValidationFailed(f"a period is at most {MAX_PERIOD_DAYS} days; ask for a shorter one")
    return start, end


def _credits(micro: int) -> float:
    return micro / MICRO


def _day(entry: DayAmount, key: str) -> dict[str, Any]:
    return {"day": entry.day.isoformat(), key: entry.key, "amount": _credits(entry.amount_micro), "jobs": entry.jobs}


def payout_view(paid: Payout) -> dict[str, Any]:
    return {"id": paid.id, "amount": _credits(paid.amount_micro), "at": iso(paid.at)}


@router.get("/earnings")
async def get_earnings(caller: Reader, svc: Svc, start: From = None, end: To = None,
                       host_id: HostFilter = None) -> Response:
    start, end = _checked(start, end)
    found = await svc.ledger.earnings(caller.account_id, start, end, host_id)
    return data({
        "from": found.start.isoformat(), "to": found.end.isoformat(), "host_id": host_id,
        "days": [_day(entry, "host_id") for entry in found.days],
        "by_host": {host: _credits(amount) for host, amount in found.by_host_micro.items()},
        "period_total": _credits(found.period_micro), "earned_total": _credits(found.earned_micro),
        "paid_out": _credits(found.paid_out_micro), "unpaid": _credits(found.unpaid_micro),
    })


@router.get("/usage")
async def get_usage(caller: Reader, svc: Svc, start: From = None, end: To = None) -> Response:
    start, end = _checked(start, end)
    found = await svc.ledger.usage(caller.account_id, start, end)
    return data({
        "from": found.start.isoformat(), "to": found.end.isoformat(),
        "days": [_day(entry, "workload") for entry in found.days],
        "by_workload": {slug: _credits(amount) for slug, amount in found.by_workload_micro.items()},
        "total": _credits(found.total_micro),
    })


@router.post("/payouts", status_code=201)
async def request_payout(body: PayoutRequest, caller: Writer, svc: Svc) -> Response:
    amount_micro = round(body.amount * MICRO)
    if amount_micro <= 0:
        raise ValidationFailed("a payout is at least one micro-credit (0.000001)")
    paid = await svc.ledger.payout(caller.account_id, amount_micro)
    return data(payout_view(paid), status_code=201)


@router.get("/payouts")
async def list_payouts(caller: Reader, svc: Svc) -> Response:
    paid = await svc.ledger.payouts(caller.account_id)
    return page([payout_view(p) for p in paid], len(paid), len(paid), 0)
