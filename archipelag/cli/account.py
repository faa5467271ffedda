"""Account commands: `account` (the account and its credits), `account earnings`, `account payout`, and
`account usage`, talking to a network over HTTP.

Mounted by ``jobs.register`` in place of the plain `account` command it had, so `archipelag account` still shows
the account. Errors become one line on stderr and exit code 1 (2 for usage).
"""

from __future__ import annotations

from typing import Annotated

import typer

from archipelag.cli import jobs
from archipelag.cli.jobs import JsonOption, KeyOption, UrlOption, fail, print_json, print_table
from archipelag.cli.people import _call
from archipelag.sdk import DEFAULT_URL

account_app = typer.Typer(help="Your account and its credits; your hosts' earnings and payouts; your usage.",
                          invoke_without_command=True)
FromOption = Annotated[str | None, typer.Option("--from", help="First day, YYYY-MM-DD (UTC; default: 30 days ago).")]
ToOption = Annotated[str | None, typer.Option("--to", help="Last day, YYYY-MM-DD (default: today).")]


def register(app: typer.Typer) -> None:
    app.add_typer(account_app, name="account")



@account_app.callback()
def account(ctx: typer.Context, json_out: JsonOption = False, url: UrlOption = DEFAULT_URL,
            api_key: KeyOption = None) -> None:
    """Your account and its credits; `earnings`, `payout` and `usage` below."""
    if ctx.invoked_subcommand is None:
        jobs.account(json_out, url, api_key)


def _period(start: str | None, end: str | None) -> dict[str, str]:
    return {name: value for name, value in (("from", start), ("to", end)) if value}


@account_app.command("earnings")
def account_earnings(start: FromOption = None, end: ToOption = None,
                     host: Annotated[str | None, typer.Option("--host", help="Only this host.")] = None,
                     json_out: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """What your hosts earned, per day and host (the price of their jobs less the platform fee), and what is
    unpaid."""
    params = {**_period(start, end), **({"host_id": host} if host else {})}
    found = _call(url, "GET", "/api/v1/account/earnings", api_key, params=params)
    if json_out:
        print_json(found)
        return
    print_table(("DAY", "HOST", "JOBS", "CREDITS"),
                ((d["day"], d["host_id"], d["jobs"], d["amount"]) for d in found["days"]),
                caption=f"{found['from']} to {found['to']}: {found['period_total']:g} earned; ever "
                        f"{found['earned_total']:g}, paid out {found['paid_out']:g}, unpaid {found['unpaid']:g}")


@account_app.command("usage")
def account_usage(start: FromOption = None, end: ToOption = None, json_out: JsonOption = False,
                  url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """What you spent, per day and workload."""
    found = _call(url, "GET", "/api/v1/account/usage", api_key, params=_period(start, end))
    if json_out:
        print_json(found)
        return
    print_table(("DAY", "WORKLOAD", "JOBS", "CREDITS"),
                ((d["day"], d["workload"], d["jobs"], d["amount"]) for d in found["days"]),
                caption=f"{found['from']} to {found['to']}: {found['total']:g} credits")


@account_app.command("payout")
def account_payout(amount: Annotated[float | None, typer.Argument(help="Credits to pay out.")] = None,
                   list_them: Annotated[bool, typer.Option("--list", help="Your payouts, newest first.")] = False,
                   json_out: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Pay AMOUNT of your hosts' unpaid earnings out (once one of them has reached the karma payout threshold),
    or list your payouts with --list."""
    if list_them == (amount is not None):
        fail("give an AMOUNT to pay out, or --list for your payouts", code=2)
    if list_them:
        paid = _call(url, "GET", "/api/v1/account/payouts", api_key)
        if json_out:
            print_json(paid)
            return
        print_table(("ID", "AT", "CREDITS"), ((p["id"], p["at"], p["amount"]) for p in paid))
        return
    payout = _call(url, "POST", "/api/v1/account/payouts", api_key, json={"amount": amount})
    print_json(payout) if json_out else typer.echo(f"payout {payout['id']}: {payout['amount']:g} credits paid out.")
