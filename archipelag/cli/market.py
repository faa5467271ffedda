"""Market commands: `market rates [SLUG]`, `market history SLUG`, `market ask HOST_ID PATTERN=CREDITS …` and
`market bid [SLUG [CREDITS]]`, talking to a network over HTTP (DESIGN §7).

Prices are credits per job, as the API writes them. Errors become one line on stderr and exit code 1 (2 for
usage).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import typer

from archipelag.cli.jobs import JsonOption, KeyOption, UrlOption, fail, print_json, print_table
from archipelag.cli.people import _call
from archipelag.sdk import DEFAULT_URL

market_app = typer.Typer(help="The exchange: market rates and history, your hosts' asks, your saved bids.",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(market_app, name="market")


def _shown(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float | int) else str(value)


def credits_of(text: str, what: str) -> Decimal:
    """``text`` as credits (a number ≥ 0); exit 2 naming ``what`` otherwise."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        fail(f"{what}: {text!r} is not a number of credits", code=2)
    if not value.is_finite() or value < 0:
        fail(f"{what}: a price is a number of credits, 0 or more", code=2)
    return value


def parse_prices(pairs: list[str]) -> dict[str, float]:
    """``PATTERN=CREDITS`` pairs (``llm-*=0.05``, ``text-stats=0.002``) as the API's prices."""
    prices: dict[str, float] = {}
    for pair in pairs:
        pattern, sep, price = pair.partition("=")
        if not sep or not pattern.strip():
            fail(f"{pair!r}: write PATTERN=CREDITS, e.g. 'llm-*=0.05'", code=2)
        prices[pattern.strip()] = float(credits_of(price.strip(), pattern.strip()))
    return prices


@market_app.command("rates")
def rates(slug: Annotated[str | None, typer.Argument(help="One workload (default: every one).")] = None,
          json_out: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """What each workload costs now: the market rate (the median ask of the hosts that could run it), how many
    hosts ask, the lowest and highest ask, the surge, and the catalog price."""
    found = _call(url, "GET", f"/api/v1/market/rates/{slug}" if slug else "/api/v1/market/rates", api_key)
    listed = [found] if slug else found
    if json_out:
        print_json(found)
        return
    print_table(("WORKLOAD", "RATE", "HOSTS", "LOWEST", "HIGHEST", "SURGE", "CATALOG"),
                ((r["workload"], _shown(r["rate"]), r["hosts"], _shown(r["lowest"]), _shown(r["highest"]),
                  f"×{r['surge']:g}", _shown(r["catalog_price"])) for r in listed),
                caption="credits per job")


@market_app.command("history")
def history(slug: Annotated[str, typer.Argument(help="The workload.")],
            since: Annotated[str | None, typer.Option(help="From this time (ISO 8601; default: a day ago).")] = None,
            bucket: Annotated[int | None, typer.Option(help="Seconds per bucket (default: the network's).",
                                                       min=1)] = None,
            json_out: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """The prices SLUG's settled jobs cleared at, per bucket of time."""
    params = {name: value for name, value in (("since", since), ("bucket", bucket)) if value is not None}
    found = _call(url, "GET", f"/api/v1/market/history/{slug}", api_key, params=params)
    if json_out:
        print_json(found)
        return
    print_table(("FROM", "JOBS", "MIN", "MEDIAN", "AVG", "MAX"),
                ((b["start"], b["count"], _shown(b["min"]), _shown(b["median"]), _shown(b["avg"]), _shown(b["max"]))
                 for b in found["buckets"]),
                caption=f"{found['workload']} since {found['since']}, credits per job")


@market_app.command("ask")
def ask(host_id: Annotated[str, typer.Argument(help="One of your hosts.")],
        prices: Annotated[list[str] | None, typer.Argument(
            help="PATTERN=CREDITS: a workload ('llm-chat=0.03') or a family ('llm-*=0.05', '*=0.02').")] = None,
        clear: Annotated[bool, typer.Option("--clear", help="Ask nothing: the catalog's prices.")] = False,
        json_out: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Set what HOST_ID asks per job (replacing its asks), or show them when no price is given."""
    if prices and clear:
        fail("give prices or --clear, not both", code=2)
    if prices or clear:
        found = _call(url, "POST", "/api/v1/market/asking-prices", api_key,
                      json={"host_id": host_id, "prices": parse_prices(prices or [])})
    else:
        [found] = _call(url, "GET", "/api/v1/market/asking-prices", api_key, params={"host_id": host_id})
    if json_out:
        print_json(found)
        return
    if not found["prices"]:
        typer.echo(f"{host_id} asks the catalog's prices.")
        return
    print_table(("PATTERN", "CREDITS"), ((p, _shown(c)) for p, c in found["prices"].items()),
                caption=f"what {host_id} asks per job")


@market_app.command("bid")
def bid(slug: Annotated[str | None, typer.Argument(help="A workload or a family ('llm-*').")] = None,
        credits: Annotated[str | None, typer.Argument(help="The most to pay per job.", show_default=False)] = None,
        forget: Annotated[bool, typer.Option("--forget", help="Forget the saved bid for SLUG.")] = False,
        json_out: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Save the most you pay per job of SLUG when a job names no bid (else the market rate is bid); with no
    arguments, list your saved bids."""
    if slug is None:
        if credits is not None or forget:
            fail("name the workload (SLUG) first", code=2)
        saved = _call(url, "GET", "/api/v1/account/bid-preferences", api_key)
    else:
        if (credits is None) == (not forget):
            fail(f"give CREDITS to save for {slug}, or --forget", code=2)
        price = None if forget else float(credits_of(str(credits), slug))
        saved = _call(url, "PUT", "/api/v1/account/bid-preferences", api_key, json={"prices": {slug: price}})
    if json_out:
        print_json(saved)
        return
    if not saved["prices"]:
        typer.echo("no saved bids: jobs bid the market rate unless they name a bid_price.")
        return
    print_table(("WORKLOAD", "CREDITS"), ((p, _shown(c)) for p, c in saved["prices"].items()),
                caption="your saved bids, per job")
