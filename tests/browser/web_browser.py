"""The browser of the web app's tests: Debian's chromium driven by Playwright (its bundled driver, no browser
download), signing in, what a page shows as it changes (an answer growing, a progress bar moving), and the checks
every page passes: axe-core's serious and critical rules, and a keyboard that reaches every control and submits
every form with Enter."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, Playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags chromium keeps calling home, and the network here is closed.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 800}
AXE = Path(__file__).parent / "vendor" / "axe.min.js"  # axe-core 4.14.1 (MPL-2.0), from `npm pack axe-core`
BLOCKING_IMPACTS = ("serious", "critical")


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def sign_in(page: Page, url: str, email: str, password: str) -> None:
    """Sign in through the /signin page; it lands on /chat."""
    page.goto(f"{url}/signin")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/chat")


def settle(page: Page, timeout_ms: float = 5000) -> None:
    """Wait until the page's first requests are answered (a page that streams stays busy: then the timeout)."""
    with contextlib.suppress(PlaywrightTimeout):  # a live page never idles, and that is fine
        page.wait_for_load_state("networkidle", timeout=timeout_ms)


# --- what a page shows as it changes ----------------------------------------------------------------------

_WATCH_ANSWERS = """() => {
  const log = document.querySelector('[role="log"]');
  window.__growth = [];
  window.__sentAt = null;
  document.addEventListener('submit', () => { window.__sentAt = performance.now(); window.__growth = []; }, true);
  const lengthOf = (answer) => answer.textContent.length - [...answer.querySelectorAll('[data-role="cost"]')]
    .reduce((sum, cost) => sum + cost.textContent.length, 0);
  new MutationObserver(() => {
    const answers = log.querySelectorAll('[data-role="answer"]');
    if (!answers.length) return;
    const length = lengthOf(answers[answers.length - 1]);
    const last = window.__growth[window.__growth.length - 1];
    if (!last || last.length !== length) window.__growth.push({at: performance.now(), length});
  }).observe(log, {childList: true, characterData: true, subtree: true});
}"""


@dataclass(frozen=True)
class Growth:
    """The lengths an answer had, in order, and when the first visible piece came after Send."""

    lengths: list[int]
    first_token_ms: float | None


def watch_answers(page: Page) -> None:
    """Record the last answer's length at each change of the conversation, from the next Send on."""
    page.evaluate(_WATCH_ANSWERS)


def answer_growth(page: Page) -> Growth:
    seen: dict[str, Any] = page.evaluate("() => ({growth: window.__growth, sentAt: window.__sentAt})")
    lengths = [g["length"] for g in seen["growth"]]
    first = next((g["at"] for g in seen["growth"] if g["length"] > 0), None)
    return Growth(lengths, None if first is None or seen["sentAt"] is None else first - seen["sentAt"])


_WATCH_PROGRESS = """() => {
  const bar = document.querySelector('progress');
  window.__progress = [];
  new MutationObserver(() => window.__progress.push([bar.value, bar.max]))
    .observe(bar, {attributes: true, attributeFilter: ['value', 'max']});
}"""


def watch_progress(page: Page) -> None:
    """Record the page's ``<progress>`` (value, max) at each change."""
    page.evaluate(_WATCH_PROGRESS)


def progress_seen(page: Page) -> list[tuple[float, float]]:
    return [(value, top) for value, top in page.evaluate("() => window.__progress")]


# --- checks every page passes -----------------------------------------------------------------------------


def axe_violations(page: Page) -> list[str]:
    """axe-core's violations of serious or critical impact on the page as it is now, one line each."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        # Evaluated, not added as a <script>: the pages' Content-Security-Policy refuses inline scripts.
        page.evaluate(AXE.read_text())
    found = page.evaluate("""async () => (await axe.run(document, {resultTypes: ['violations']})).violations
        .map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' '))}))""")
    return [f"{v['id']} ({v['impact']}): {v['help']} — {', '.join(v['nodes'][:5])}"
            for v in found if v["impact"] in BLOCKING_IMPACTS]


_CONTROLS = """() => {
  const controls = [...document.querySelectorAll('a[href], button, input:not([type="hidden"]), select, textarea')]
    .filter(el => !el.disabled && el.checkVisibility({visibilityProperty: true}));
  controls.forEach((el, i) => { el.dataset.tabProbe = String(i); });
  return controls.map(el => `${el.tagName.toLowerCase()} "${(el.labels && el.labels[0] ? el.labels[0].textContent
    : el.textContent || el.getAttribute('aria-label') || el.name || '').trim().replace(/\\s+/g, ' ').slice(0, 40)}"`);
}"""


def unreachable_by_tab(page: Page) -> list[str]:
    """The visible, enabled links, buttons and form controls that pressing Tab from the top never focuses."""
    controls: list[str] = page.evaluate(_CONTROLS)
    page.evaluate("() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); }")
    reached: set[int] = set()
    for _ in range(len(controls) + 10):
        page.keyboard.press("Tab")
        probe = page.evaluate("() => document.activeElement && document.activeElement.dataset.tabProbe")
        if probe is not None:
            reached.add(int(probe))
        if len(reached) == len(controls):
            break
    return [control for i, control in enumerate(controls) if i not in reached]


_CATCH_SUBMITS = """() => {
  window.__submitted = [];
  document.addEventListener('submit', (event) => {
    event.preventDefault();
    event.stopImmediatePropagation();  // the page's own handler does not run: nothing is sent
    window.__submitted.push(event.target.dataset.enterProbe);
  }, true);
  const forms = [...document.forms].filter(form => form.checkVisibility());
  forms.forEach((form, i) => { form.dataset.enterProbe = String(i); form.noValidate = true; });
  return forms.map(form => form.id || form.getAttribute('aria-label') || `form ${form.dataset.enterProbe}`);
}"""

# Where a person presses Enter: the form's first text field, else its textarea, else its submit button.
_ENTER_FIELD = ("input:not([type=hidden]):not([type=checkbox]):not([type=radio]):not([type=submit])"
                ":not([type=button]):not([disabled]):visible")


def forms_not_submitted_by_enter(page: Page) -> list[str]:
    """The visible forms that pressing Enter in their first field does not submit. Submissions are caught
    before the page's handlers see them (and validation is off), so the check sends nothing."""
    forms: list[str] = page.evaluate(_CATCH_SUBMITS)
    missed = []
    for i, name in enumerate(forms):
        form = page.locator(f'form[data-enter-probe="{i}"]')
        for selector in (_ENTER_FIELD, "textarea:visible", "button[type=submit]:visible, button:not([type]):visible"):
            if form.locator(selector).count():
                form.locator(selector).first.press("Enter")
                break
        if str(i) not in page.evaluate("() => window.__submitted"):
            missed.append(name)
    return missed
