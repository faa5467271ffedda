"""The web app's pages on the real API app and ledger (scripted hosts): every page answers HTML with the main
navigation and labelled controls, pages that need an account send strangers to sign in, admins alone see the
admin page, and every asset (the vendored Chart.js too) is served from the package, nothing from elsewhere.

What the pages do in a browser is the browser tests' part (tests/browser)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from model_network import ModelNetwork, a_model_network
from test_accounts_api import PASSWORD, mailed_tokens, sign_up

import archipelag.web
from archipelag.accounts.mail import verification_mail
from archipelag.settings import Settings

WEB = Path(archipelag.web.__file__).parent
NAV = ["Chat", "Images", "Workloads", "Jobs", "Account", "Hosts", "Status"]


class Page(HTMLParser):
    """What a test needs of a page: its elements' attributes, its labels, its buttons' and links' texts."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.labels: dict[str, str] = {}  # for → text
        self.buttons: list[str] = []
        self.links: dict[str, str] = {}  # text → href
        self._open: list[tuple[str, dict[str, str], list[str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        self.elements.append((tag, attributes))
        if tag in {"label", "button", "a"}:
            self._open.append((tag, attributes, []))

    def handle_data(self, data: str) -> None:
        for _, _, texts in self._open:
            texts.append(data)

    def handle_endtag(self, tag: str) -> None:
        if not self._open or self._open[-1][0] != tag:
            return
        _, attributes, texts = self._open.pop()
        text = " ".join("".join(texts).split())
        if tag == "label":
            self.labels[attributes.get("for", "")] = text
        elif tag == "button":
            self.buttons.append(text)
        else:
            self.links[text] = attributes.get("href", "")

    def find(self, tag: str, **wanted: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag and all(a.get(k.replace("_", "-")) == v
                                                                for k, v in wanted.items())]

    def label_of(self, text: str) -> dict[str, str]:
        """The control labelled ``text`` (the label's text starts with it, e.g. "Seed (optional)")."""
        ids = [for_ for for_, label in self.labels.items() if label == text or label.startswith(f"{text} (")]
        assert len(ids) == 1, f"one label {text!r} expected, found {ids} among {self.labels}"
        controls = [a for t, a in self.elements if t in {"input", "select", "textarea", "progress"}
                    and a.get("id") == ids[0]]
        assert len(controls) == 1, f"the label {text!r} names no control"
        return controls[0]


@pytest.fixture
def net(tmp_path: Path) -> ModelNetwork:
    return a_model_network(tmp_path, signup_policy="open", session_cookie_secure=False)


@pytest.fixture
def anon(net: ModelNetwork) -> Iterator[TestClient]:
    with TestClient(net.app) as client:
        yield client


def a_person(net: ModelNetwork, anon: TestClient, email: str, *, admin: bool = False) -> TestClient:
    """A verified person signed in, in a browser-like client of their own (cookies in its jar)."""
    assert sign_up(anon, email).status_code == 201
    assert anon.post("/api/v1/auth/verify", json={"token": mailed_tokens(net, email)[-1]}).status_code == 200
    if admin:
        person_id = anon.get("/api/v1/admin/accounts", params={"q": email},
                             headers={"Authorization": f"Bearer {net.key}"}).json()["data"][0]["id"]
        made = anon.post(f"/api/v1/admin/accounts/{person_id}/role", json={"is_admin": True},
                         headers={"Authorization": f"Bearer {net.key}"})
        assert made.status_code == 200, made.text
    client = TestClient(net.app)
    client.__enter__()
    answer = client.post("/api/v1/auth/signin", json={"email": email, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return client


@pytest.fixture
def person(net: ModelNetwork, anon: TestClient) -> Iterator[TestClient]:
    client = a_person(net, anon, "bo@example.org")
    yield client
    client.__exit__(None, None, None)


@pytest.fixture
def admin(net: ModelNetwork, anon: TestClient) -> Iterator[TestClient]:
    client = a_person(net, anon, "root@example.org", admin=True)
    yield client
    client.__exit__(None, None, None)


def page(client: TestClient, path: str, status: int = 200) -> Page:
    answer = client.get(path, follow_redirects=False)
    assert answer.status_code == status, f"{path}: {answer.status_code} {answer.text[:300]}"
    assert answer.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in answer.headers["content-security-policy"]
    return Page(answer.text)


def an_image_job(client: TestClient) -> str:
    made = client.post("/api/v1/jobs", json={"workload": "sd-diffusers", "input": {
        "prompt": "a quiet harbour", "width": 64, "height": 64, "steps": 2}},
        headers={"X-CSRF-Token": client.cookies["archipelag_csrf"]})
    assert made.status_code == 201, made.text
    job_id: str = made.json()["data"]["id"]
    return job_id


ACCOUNT_PAGES = ["/chat", "/images", "/workloads", "/workloads/llm-chat", "/jobs", "/account", "/hosts",
                 "/hosts/host-a"]
PUBLIC_PAGES = ["/signin", "/signup", "/verify?token=x", "/reset", "/reset/confirm?token=x", "/status"]


def assert_page_shape(found: Page, *, signed_in: bool, admin: bool = False) -> None:
    [nav] = found.find("nav", aria_label="Main")
    assert nav is not None and found.find("main")
    for text in NAV:
        assert text in found.links, f"no {text} link in the main navigation"
    assert ("Admin" in found.links) == admin
    assert ("Sign out" in found.buttons) == signed_in
    assert len(found.find("div", role="status")) == 1 and len(found.find("div", role="alert")) == 1
    controls = [a for t, a in found.elements if t in {"input", "select", "textarea", "progress"}]
    for control in controls:
        assert control.get("id") in found.labels, f"a control without a <label for>: {control}"
    assert all(found.buttons), "a button without visible text"


@pytest.mark.parametrize("path", ACCOUNT_PAGES + PUBLIC_PAGES)
def test_every_page_answers_html_with_the_navigation_and_labelled_controls(person: TestClient, path: str) -> None:
    assert_page_shape(page(person, path), signed_in=True)


@pytest.mark.parametrize("path", PUBLIC_PAGES)
def test_public_pages_answer_strangers(anon: TestClient, path: str) -> None:
    assert_page_shape(page(anon, path), signed_in=False)


@pytest.mark.parametrize("path", [*ACCOUNT_PAGES, "/admin", "/jobs/some-job"])
def test_pages_that_need_an_account_send_strangers_to_sign_in_and_back(anon: TestClient, path: str) -> None:
    answer = anon.get(path, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/signin?next=" + path.replace("/", "%2F")


def test_a_session_that_no_longer_works_counts_as_none(anon: TestClient, person: TestClient) -> None:
    anon.cookies.set("archipelag_session", "not-a-session")
    assert anon.get("/chat", follow_redirects=False).headers["location"].startswith("/signin")
    signed_out = person.post("/api/v1/auth/signout", headers={"X-CSRF-Token": person.cookies["archipelag_csrf"]})
    assert signed_out.status_code == 200
    assert person.get("/account", follow_redirects=False).status_code == 303


def test_the_root_opens_chat_for_a_person_and_sign_in_for_a_stranger(anon: TestClient, person: TestClient) -> None:
    assert anon.get("/", follow_redirects=False).headers["location"] == "/signin"
    assert person.get("/", follow_redirects=False).headers["location"] == "/chat"


def test_the_admin_page_is_for_admins(person: TestClient, admin: TestClient) -> None:
    refused = page(person, "/admin", 403)
    assert_page_shape(refused, signed_in=True)
    assert not refused.find("input", id="search")
    found = page(admin, "/admin")
    assert_page_shape(found, signed_in=True, admin=True)
    assert found.label_of("Search accounts")["type"] == "search"
    assert found.label_of("Email")["type"] == "email"
    assert {"Search", "Create invite"} <= set(found.buttons)
    assert_page_shape(page(admin, "/chat"), signed_in=True, admin=True)  # the Admin link, on every page


def test_sign_up_sign_in_and_reset_pages_have_their_fields(anon: TestClient) -> None:
    signup = page(anon, "/signup")
    assert signup.label_of("Email")["type"] == "email" and signup.label_of("Password")["type"] == "password"
    assert "required" not in signup.label_of("Invite code")
    assert signup.buttons == ["Sign up"]
    signin = page(anon, "/signin")
    assert signin.label_of("Password")["type"] == "password" and signin.buttons == ["Sign in"]
    assert page(anon, "/reset").buttons == ["Send reset link"]
    confirm = page(anon, "/reset/confirm?token=abc")
    assert confirm.label_of("New password")["type"] == "password" and confirm.buttons == ["Set password"]
    assert "Sign in" in page(anon, "/verify?token=abc").links


def test_chat_and_images_pages_have_their_controls(person: TestClient) -> None:
    chat = page(person, "/chat")
    assert chat.label_of("Model") and chat.label_of("Message")
    assert {"Send", "Stop"} <= set(chat.buttons)
    [log] = chat.find("div", role="log")
    assert log["aria-live"] == "polite"
    images = page(person, "/images")
    assert images.label_of("Prompt")
    assert images.label_of("Width")["value"] == "64" and images.label_of("Height")["value"] == "64"
    assert images.label_of("Steps")["value"] == "4" and images.label_of("Seed")
    assert "progress" in [t for t, a in images.elements if a.get("id") == images.label_of("Progress")["id"]]
    assert "Generate" in images.buttons
    assert '"sd-diffusers"' in images.find("form", id="image-form")[0]["data-image-workloads"]


def test_account_page_shows_credits_a_chart_and_the_key_form(person: TestClient) -> None:
    found = page(person, "/account")
    assert found.label_of("Key name") and "Create key" in found.buttons
    assert found.find("canvas", id="usage-chart") and found.find("code", data_role="new-key")
    assert any(a.get("src", "").startswith("/static/vendor/chart.umd.min.js") for t, a in found.elements
               if t == "script")


def test_workloads_page_lists_the_catalog_and_a_workload_page_runs_one(person: TestClient) -> None:
    answer = person.get("/workloads")
    found = Page(answer.text)
    for slug in ("llm-chat", "sd-diffusers", "text-stats", "sdxl"):
        assert found.find("a", href=f"/workloads/{slug}")
    assert "VRAM 8192 MB" in answer.text  # sdxl's requirement
    runner = page(person, "/workloads/text-stats")
    assert runner.label_of("Input (JSON)") and "Run" in runner.buttons and runner.find("div", role="log")
    assert page(person, "/workloads/no-such-workload", 404).find("main")


def test_workload_page_asks_for_each_required_input(tmp_path: Path) -> None:
    from dataclasses import replace

    from model_network import PLAIN
    net = a_model_network(tmp_path, signup_policy="open", session_cookie_secure=False)
    net.services.catalog[PLAIN.slug] = replace(PLAIN, required_inputs=("text",))
    with TestClient(net.app) as anon:
        client = a_person(net, anon, "cy@example.org")
        found = page(client, "/workloads/text-stats")
        assert found.label_of("text")["data-input"] == "text" and found.label_of("Input (JSON)")
        client.__exit__(None, None, None)


def test_jobs_pages_show_the_persons_own_jobs(net: ModelNetwork, anon: TestClient, person: TestClient) -> None:
    job_id = an_image_job(person)
    listing = page(person, "/jobs")
    assert listing.find("a", href=f"/jobs/{job_id}")
    detail = page(person, f"/jobs/{job_id}")
    assert detail.find("section", data_job_id=job_id) and detail.find("div", role="log")
    other = a_person(net, anon, "eve@example.org")
    assert not page(other, "/jobs").find("a", href=f"/jobs/{job_id}")
    page(other, f"/jobs/{job_id}", 404)
    other.__exit__(None, None, None)


def test_hosts_page_lists_the_fleet_and_keeps_a_place_for_pairing(person: TestClient) -> None:
    answer = person.get("/hosts")
    assert "host-a" in answer.text and Page(answer.text).find("section", id="pairing")
    assert Page(answer.text).find("a", href="/hosts/host-a")


def test_a_host_page_charts_its_karma_and_an_unknown_host_is_404(person: TestClient) -> None:
    found = page(person, "/hosts/host-a")
    assert found.find("canvas", id="karma-chart") and found.find("section", id="host")
    page(person, "/hosts/no-such-host", 404)


def test_static_files_and_the_vendored_chart_js_are_served(anon: TestClient) -> None:
    for path, kind in [("/static/app.js", "javascript"), ("/static/app.css", "text/css"),
                       ("/static/pages/chat.js", "javascript"), ("/static/vendor/chart.umd.min.js", "javascript")]:
        answer = anon.get(path)
        assert answer.status_code == 200 and kind in answer.headers["content-type"], path
    assert "Chart.js v4" in anon.get("/static/vendor/chart.umd.min.js").text[:200]
    assert "MIT License" in (WEB / "static" / "vendor" / "chart.js.LICENSE.md").read_text()
    assert anon.get("/static/../routes.py").status_code == 404


def test_pages_and_scripts_load_nothing_from_elsewhere() -> None:
    """Offline: no CDN, no font service; every src and href a path of this site (or a page anchor)."""
    for file in [*WEB.glob("templates/*.html"), *WEB.glob("static/*.js"), *WEB.glob("static/pages/*.js"),
                 WEB / "static" / "app.css"]:
        text = file.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", text), file
        assert "@import" not in text and "url(http" not in text, file
        if file.suffix == ".html":
            assert not re.search(r"<script(?![^>]*\bsrc=)", text), f"{file}: an inline script (the CSP forbids it)"
            assert " style=" not in text, f"{file}: an inline style"


def test_every_template_and_script_is_package_data() -> None:
    """pyproject's package-data globs cover every file the web app serves or renders."""
    import tomllib

    globs = tomllib.loads((WEB.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    covered = {path for pattern in globs["archipelag.web"] for path in WEB.glob(pattern)}
    files = {path for path in WEB.rglob("*") if path.is_file() and "__pycache__" not in path.parts
             and path.suffix != ".py"}
    assert files and files <= covered, sorted(str(p) for p in files - covered)


def test_the_verification_mail_links_to_the_web_page(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, public_api_url="https://net.example.org")
    assert "https://net.example.org/verify?token=tok-1\n" in verification_mail(settings, "a@example.org", "tok-1").body
