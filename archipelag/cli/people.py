"""People commands: `signup`, `verify`, `login` for anyone, and `admin …` for a network's operators.

`admin create` works on the coordinator's machine, straight on the ledger's database (how the first admin of a
deployed network comes to be); every other command talks to the API over HTTP like any client. Passwords are
read without echo (or from stdin with ``--password-stdin``) and never printed. Mount with ``register(app)``.
"""

from __future__ import annotations

import socket
import sys
from typing import Annotated, Any

import httpx
import typer

from archipelag.cli.jobs import JsonOption, KeyOption, UrlOption, fail, note, print_json, print_table
from archipelag.errors import ArchipelagError
from archipelag.sdk import DEFAULT_URL, wire
from archipelag.sdk.client import headers_for, resolve_api_key

admin_app = typer.Typer(help="Run a network: accounts, credits, hosts, invitations (needs an admin account).",
                        no_args_is_help=True)
PasswordStdin = Annotated[bool, typer.Option("--password-stdin", help="Read the password from standard input.")]


def register(app: typer.Typer) -> None:
    app.command("signup")(signup)
    app.command("verify")(verify)
    app.command("login")(login)
    app.add_typer(admin_app, name="admin")


def _password(from_stdin: bool, confirm: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    value: str = typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    return value


def _call(url: str, method: str, path: str, api_key: str | None = None, **kwargs: Any) -> Any:
    """One API call; its data, or the error as one line and exit code 1."""
    try:
        with httpx.Client(base_url=url.rstrip("/"), timeout=60,
                          headers=headers_for(resolve_api_key(api_key)) if api_key != "" else {}) as http:
            try:
                response = http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise wire.unreachable(exc, url) from exc
            return wire.data_of(response)
    except ArchipelagError as exc:
        fail(exc.message)


# --- anyone --------------------------------------------------------------------------------------------


def signup(email: str, invite: Annotated[str | None, typer.Option(help="An invitation code.")] = None,
           password_stdin: PasswordStdin = False, url: UrlOption = DEFAULT_URL) -> None:
    """Open an account; verify it with the link that is mailed to you, then `archipelag login`."""
    body = {"email": email, "password": _password(password_stdin, confirm=True)}
    if invite:
        body["invite_code"] = invite
    _call(url, "POST", "/api/v1/auth/signup", "", json=body)
    typer.echo(f"account opened for {email}: follow the link mailed to you (or `archipelag verify TOKEN`), "
               "then `archipelag login`.")


def verify(token: str, url: UrlOption = DEFAULT_URL) -> None:
    """Verify your address with the token from the mailed link; your sign-up credits arrive."""
    answer = _call(url, "POST", "/api/v1/auth/verify", "", json={"token": token})
    typer.echo(f"{answer['account']['email']} verified: {answer['account']['credits']:g} credits.")


def login(email: str, password_stdin: PasswordStdin = False, url: UrlOption = DEFAULT_URL) -> None:
    """Sign in and create an API key for this machine; prints the `export` line that puts it to use."""
    password = _password(password_stdin, confirm=False)
    try:
        with httpx.Client(base_url=url.rstrip("/"), timeout=60) as http:
            signed = wire.data_of(http.post("/api/v1/auth/signin", json={"email": email, "password": password}))
            # httpx keeps a Secure cookie out of plain-http requests: send the session back by hand.
            session = {"X-CSRF-Token": signed["csrf_token"],
                       "Cookie": f"archipelag_session={http.cookies.get('archipelag_session', '')}"}
            http.cookies.clear()
            name = f"cli on {socket.gethostname()}"[:100]
            key = wire.data_of(http.post("/api/v1/api-keys", headers=session,
                                         json={"name": name, "scopes": ["read", "write", "keys"]}))["key"]
            http.post("/api/v1/auth/signout", headers=session)
    except httpx.TransportError as exc:
        fail(wire.unreachable(exc, url).message)
    except ArchipelagError as exc:
        fail(exc.message)
    note(f"signed in as {email}; a key named {name!r} was made for this machine.")
    typer.echo(f"export ARCHIPELAG_API_KEY={key}")


# --- operators -----------------------------------------------------------------------------------------


@admin_app.command("create")
def admin_create(email: str, password_stdin: PasswordStdin = False) -> None:
    """Make EMAIL an admin, on the coordinator's machine (straight on the ledger's database): an existing
    account is promoted, otherwise a verified account is made with the password you type. Prints an API key
    with every scope (shown once) for the `admin` commands."""
    from archipelag.accounts import passwords
    from archipelag.catalog import MICRO
    from archipelag.coordinator import prepare_ledger
    from archipelag.settings import Settings

    settings = Settings()
    ledger = prepare_ledger(settings)
    try:
        account = ledger.find_account(email)
        if account is None:
            password = _password(password_stdin, confirm=True)
            passwords.check_new(password, email)
            account = ledger.create_account(email, round(settings.signup_credits * MICRO),
                                            password_hash=passwords.hash_password(password), is_admin=True)
        else:
            account = ledger.set_admin(account.id, True)
        _, key = ledger.create_api_key(account.id, "admin (archipelag admin create)", ("keys", "read", "write"))
    except ArchipelagError as exc:
        fail(exc.message)
    finally:
        ledger.close()
    note(f"{account.email} (account {account.id}) is an admin. Its new API key, shown once:")
    typer.echo(f"export ARCHIPELAG_API_KEY={key}")


@admin_app.command("accounts")
def admin_accounts(search: Annotated[str | None, typer.Option(help="Part of an email address.")] = None,
                   limit: int = 50, offset: int = 0, json_out: JsonOption = False, url: UrlOption = DEFAULT_URL,
                   api_key: KeyOption = None) -> None:
    """List and search accounts."""
    params: dict[str, Any] = {"limit": limit, "offset": offset, **({"q": search} if search else {})}
    found = _call(url, "GET", "/api/v1/admin/accounts", api_key, params=params)
    if json_out:
        print_json(found)
        return
    print_table(("ID", "EMAIL", "CREDITS", "VERIFIED", "ADMIN", "SUSPENDED", "CREATED"),
                ((a["id"], a["email"], a["credits"], a["email_verified"], a["is_admin"],
                  a["suspended_reason"] or a["suspended"], a["created_at"]) for a in found))


@admin_app.command("grant")
def admin_grant(account_id: int, amount: float, memo: Annotated[str | None, typer.Option()] = None,
                url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Grant AMOUNT credits to an account (a double-entry posting from the network's mint)."""
    body: dict[str, Any] = {"amount": amount, **({"memo": memo} if memo else {})}
    account = _call(url, "POST", f"/api/v1/admin/accounts/{account_id}/credits", api_key, json=body)
    typer.echo(f"{account['email']} now has {account['credits']:g} credits.")


@admin_app.command("suspend")
def admin_suspend(account_id: int, reason: Annotated[str, typer.Option(help="Why (the account sees it).")],
                  url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Suspend an account: its keys and sessions stop working at once."""
    account = _call(url, "POST", f"/api/v1/admin/accounts/{account_id}/suspend", api_key, json={"reason": reason})
    typer.echo(f"{account['email']} suspended.")


@admin_app.command("reinstate")
def admin_reinstate(account_id: int, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Lift a suspension."""
    account = _call(url, "POST", f"/api/v1/admin/accounts/{account_id}/reinstate", api_key)
    typer.echo(f"{account['email']} reinstated.")


@admin_app.command("hosts")
def admin_hosts(json_out: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """The fleet, with each host's suspension and why."""
    found = _call(url, "GET", "/api/v1/admin/hosts", api_key)
    if json_out:
        print_json(found)
        return
    print_table(("ID", "NAME", "STATUS", "REGION", "KARMA", "SUSPENDED"),
                ((h["id"], h["name"], h["status"], h["region"], h["karma_score"], h["suspended_reason"] or "")
                 for h in found))


@admin_app.command("suspend-host")
def admin_suspend_host(host_id: str, reason: Annotated[str, typer.Option(help="Why (kept with the host).")],
                       url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Suspend a host: it gets no new jobs (its running ones finish) until reinstated."""
    _call(url, "POST", f"/api/v1/admin/hosts/{host_id}/suspend", api_key, json={"reason": reason})
    typer.echo(f"host {host_id} suspended.")


@admin_app.command("reinstate-host")
def admin_reinstate_host(host_id: str, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Lift a host's suspension."""
    _call(url, "POST", f"/api/v1/admin/hosts/{host_id}/reinstate", api_key)
    typer.echo(f"host {host_id} reinstated.")


def _control_host(host_id: str, action: str, reason: str | None, url: str, api_key: str | None) -> None:
    body = {"reason": reason} if reason else None
    host = _call(url, "POST", f"/api/v1/admin/hosts/{host_id}/{action}", api_key, json=body)
    control = host["control"]
    why = f" ({control['reason']})" if control.get("reason") else ""
    typer.echo(f"host {host_id}: {control['status']}{why}; {len(host['running_jobs'])} jobs running.")


ReasonOption = Annotated[str | None, typer.Option(help="Why (the host's owner sees it in `host status`).")]


@admin_app.command("pause-host")
def admin_pause_host(host_id: str, reason: ReasonOption = None, url: UrlOption = DEFAULT_URL,
                     api_key: KeyOption = None) -> None:
    """Pause a host: no new jobs; its running ones continue."""
    _control_host(host_id, "pause", reason, url, api_key)


@admin_app.command("resume-host")
def admin_resume_host(host_id: str, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Let a paused host take jobs again."""
    _control_host(host_id, "resume", None, url, api_key)


@admin_app.command("drain-host")
def admin_drain_host(host_id: str, reason: ReasonOption = None, url: UrlOption = DEFAULT_URL,
                     api_key: KeyOption = None) -> None:
    """Drain a host: no new jobs, its running ones finish, then it leaves the network."""
    _control_host(host_id, "drain", reason, url, api_key)


@admin_app.command("invite")
def admin_invite(email: Annotated[str | None, typer.Option(help="Only this address may use it.")] = None,
                 url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """An invitation code for a network whose sign-up policy is `invite` (shown once)."""
    invite = _call(url, "POST", "/api/v1/admin/invites", api_key, json={"email": email} if email else {})
    note(f"valid until {invite['expires_at']}" + (f", for {invite['email']} only" if invite["email"] else ""))
    typer.echo(invite["invite_code"])


@admin_app.command("stats")
def admin_stats(url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Network statistics: accounts, jobs by status, credits, hosts."""
    print_json(_call(url, "GET", "/api/v1/admin/stats", api_key))
