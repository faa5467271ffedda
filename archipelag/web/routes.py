"""Web: the web app's pages — server-rendered templates, served by the coordinator beside its API, working
offline (every script, style and the vendored Chart.js ship in this package; no CDN).

Pages hold no authority of their own: they read the signed-in person from the session cookie (the same check
the API makes) to choose between the page and a redirect to sign-in, and render what the person may already
read through the API. Everything that changes state is the page's JavaScript calling the JSON API with the
session and its CSRF token (``static/app.js``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from archipelag import __version__, receipts
from archipelag.errors import Forbidden, NotFound, RateLimited, Unauthorized
from archipelag.ledger.records import Account
from archipelag.receipts import Receipt
from archipelag.serve.api_hosts import owned_view
from archipelag.serve.api_jobs import MAX_ID_CHARS, Svc
from archipelag.serve.api_openai import model_manifests
from archipelag.serve.auth import SESSION_COOKIE, Caller, authenticate
from archipelag.serve.views import host_view, job_view, workload_view

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)

JOBS_PER_PAGE = 50
TERMINAL = frozenset({"completed", "failed", "cancelled", "timeout"})  # public job statuses that end a job
# Pages load nothing from elsewhere and run no inline script; generated images arrive as data: URLs.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'self'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",  # verification and reset pages carry a token in their address
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",  # a page holds the session's CSRF token
}


def install_web(app: FastAPI) -> None:
    """Serve the pages and their static files from ``app``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")


@dataclass(frozen=True)
class Visitor:
    """Who is looking at a page: nobody (signed out), or a person with their session."""

    caller: Caller | None = None
    account: Account | None = None

    @property
    def is_admin(self) -> bool:
        return self.account is not None and self.account.is_admin


async def visitor(request: Request, svc: Svc) -> Visitor:
    """The signed-in person, by the session cookie; signed out when there is none or it no longer works."""
    if not request.cookies.get(SESSION_COOKIE):
        return Visitor()
    try:
        caller = await authenticate(request, svc)
        if caller.session_id is None:
            return Visitor()
        return Visitor(caller, await svc.ledger.get_account(caller.account_id))
    except (Unauthorized, Forbidden, NotFound, RateLimited):  # a stale cookie's page view: signed out
        return Visitor()


Seen = Annotated[Visitor, Depends(visitor)]


def render(request: Request, template: str, who: Visitor, *, title: str, status_code: int = 200,
           **context: Any) -> Response:
    response = templates.TemplateResponse(
        request, template, {"who": who, "title": title, "version": __version__,
                            "csrf_token": who.caller.csrf_token if who.caller else "", **context},
        status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def to_sign_in(request: Request) -> Response:
    """Off to sign in, coming back here afterwards."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/signin?next={quote(here, safe='')}", status_code=303)


def not_found(request: Request, who: Visitor, what: str) -> Response:
    return render(request, "message.html", who, title="Not found", status_code=404,
                  heading="Not found", message=what)


# --- public pages --------------------------------------------------------------------------------------


@router.get("/")
async def home(who: Seen) -> Response:
    return RedirectResponse("/chat" if who.caller else "/signin", status_code=303)


def _public(path: str, template: str, title: str) -> None:
    async def page(request: Request, who: Seen) -> Response:
        return render(request, template, who, title=title)

    page.__name__ = f"page_{template.removesuffix('.html').replace('-', '_')}"
    router.add_api_route(path, page, methods=["GET"], response_class=HTMLResponse)


_public("/signin", "signin.html", "Sign in")
_public("/signup", "signup.html", "Sign up")
_public("/verify", "verify.html", "Verify your address")
_public("/reset", "reset.html", "Reset your password")
_public("/reset/confirm", "reset-confirm.html", "Set a new password")
_public("/status", "status.html", "Network status")


# --- pages that need an account ------------------------------------------------------------------------


def _personal(path: str, template: str, title: str) -> None:
    async def page(request: Request, who: Seen, svc: Svc) -> Response:
        if who.caller is None:
            return to_sign_in(request)
        image_workloads = [m.slug for m in model_manifests(svc.catalog, "image")]
        return render(request, template, who, title=title, image_workloads=json.dumps(image_workloads))

    page.__name__ = f"page_{template.removesuffix('.html')}"
    router.add_api_route(path, page, methods=["GET"], response_class=HTMLResponse)


_personal("/chat", "chat.html", "Chat")
_personal("/images", "images.html", "Images")
_personal("/account", "account.html", "Account")


@router.get("/workloads", response_class=HTMLResponse)
async def workloads_page(request: Request, who: Seen, svc: Svc) -> Response:
    if who.caller is None:
        return to_sign_in(request)
    rows = [workload_view(row) for row in await svc.ledger.list_workloads()]
    return render(request, "workloads.html", who, title="Workloads", workloads=rows)


@router.get("/workloads/{slug}", response_class=HTMLResponse)
async def workload_page(slug: str, request: Request, who: Seen, svc: Svc) -> Response:
    if who.caller is None:
        return to_sign_in(request)
    try:
        workload = workload_view(await svc.ledger.get_workload(slug))
    except NotFound:
        return not_found(request, who, f"There is no workload {slug!r}. The catalog lists the ones there are.")
    manifest = svc.catalog.get(workload["slug"])
    fields = list(manifest.required_inputs) if manifest else []
    return render(request, "workload.html", who, title=workload["name"], workload=workload, fields=fields)


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(request: Request, who: Seen, svc: Svc,
                    page: Annotated[int, Query(ge=1, le=10**6)] = 1) -> Response:
    if who.caller is None:
        return to_sign_in(request)
    found, total = await svc.ledger.list_jobs(who.caller.account_id, JOBS_PER_PAGE, (page - 1) * JOBS_PER_PAGE)
    pages = max(1, math.ceil(total / JOBS_PER_PAGE))
    return render(request, "jobs.html", who, title="Jobs", jobs=[job_view(j) for j in found], total=total,
                  page=page, pages=pages)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(job_id: str, request: Request, who: Seen, svc: Svc) -> Response:
    if who.caller is None:
        return to_sign_in(request)
    try:
        if len(job_id) > MAX_ID_CHARS:
            raise NotFound("no such job")
        job = job_view(await svc.ledger.get_job(job_id, who.caller.account_id))
    except NotFound:
        return not_found(request, who, "You have no job with this id. Your jobs are listed on the Jobs page.")
    receipt = job["receipt"]
    return render(request, "job.html", who, title=f"Job {job['id']}", job=job, live=job["status"] not in TERMINAL,
                  image=_image_of(job), input_json=json.dumps(job["input"], indent=2),
                  receipt_problem=receipts.mismatch(Receipt(**receipt), job["id"], job["output"]) if receipt else None)


@router.get("/hosts", response_class=HTMLResponse)
async def hosts_page(request: Request, who: Seen, svc: Svc) -> Response:
    if who.caller is None:
        return to_sign_in(request)
    hosts = [host_view(s, await svc.ledger.karma_score(s.host_id)) for s in await svc.jobs.hosts()]
    mine = [owned_view(host) for host in await svc.ledger.owned_hosts(who.caller.account_id)]
    return render(request, "hosts.html", who, title="Hosts", hosts=hosts, mine=mine,
                  api_url=svc.settings.public_url())


@router.get("/hosts/{host_id}", response_class=HTMLResponse)
async def host_page(host_id: str, request: Request, who: Seen, svc: Svc) -> Response:
    if who.caller is None:
        return to_sign_in(request)
    snapshot = next((s for s in await svc.jobs.hosts() if s.host_id == host_id), None)
    if snapshot is None:
        return not_found(request, who, "There is no such host now. The Hosts page lists the ones there are.")
    host = host_view(snapshot, await svc.ledger.karma_score(snapshot.host_id))
    return render(request, "host.html", who, title=f"Host {host['name'] or host['id']}", host=host)


@router.get("/admin", response_class=HTMLResponse)
async def admin_page(request: Request, who: Seen) -> Response:
    if who.caller is None:
        return to_sign_in(request)
    if not who.is_admin:
        return render(request, "message.html", who, title="Admin", status_code=403, heading="Admins only",
                      message="This page is for the network's admins, and your account is not one.")
    return render(request, "admin.html", who, title="Admin")


IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}


def _image_of(job: dict[str, Any]) -> str | None:
    """A data: URL of the image in a finished job's output, if its output is an image."""
    try:
        output = json.loads(job["output"]) if isinstance(job["output"], str) else None
    except ValueError:
        return None
    if not isinstance(output, dict) or not isinstance(output.get("image_data"), str):
        return None
    media_type = IMAGE_TYPES.get(str(output.get("format", "png")).lower(), "image/png")
    return f"data:{media_type};base64,{output['image_data']}"
