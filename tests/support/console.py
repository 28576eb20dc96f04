"""The console's browser tests: the real stack (Azurite, the Graph and TRAML simulators, the dev host
enforcing function keys like Azure) and Debian's Chromium driven by Python playwright.

`ConsoleWorld` starts it all once per test module; `browser()` launches Chromium headless from
/usr/bin/chromium (no browser download). Screenshots go to artifacts/console-*.png.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.stack import CLIENT_ID, ROOT, TENANT, WEBHOOK_KEY, Stack, stop_all
from tools.sim.traml import DEMO_API_KEY, TramlSim

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts"
TEMPLATE = "Thanks"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}



def require_chromium() -> None:
    """Skip without Chromium on a developer's machine; fail in CI (CI=true), where .ci/run installs
    it first: a missing install step must not pass as a skip."""
    if os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK):
        return
    reason = f"Chromium is not installed at {CHROMIUM} (.ci/run installs Debian's chromium; set CHROMIUM to another)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI installs it: a missing install step)")
    pytest.skip(reason)


@contextmanager
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class ConsoleWorld:
    """One stack for a test module: client `demo` (works; its secret 'expires' in 10 days), client
    `broken` (a wrong secret), TRAML with template `Thanks`, the embedded CRM, keys enforced."""

    def __init__(self) -> None:
        self.traml = TramlSim().start()
        self.traml.add_template(TEMPLATE, "<p>Your ticket $$helpdesknumber$$</p>", "Your ticket $$helpdesknumber$$")
        self.traml.add_template("Holiday", "<p>We are away</p>", "We are away")
        # a date 11 days ahead: its midnight is 10 to 11 days away whatever the time of day
        expires = (datetime.now(timezone.utc) + timedelta(days=11)).date().isoformat()
        clients = {"demo": {"tenant_id": TENANT, "client_id": CLIENT_ID, "credential": "secret", "secret_expires": expires},
                   "broken": {"tenant_id": TENANT, "client_id": CLIENT_ID, "credential": "secret"}}
        self.stack = Stack(extra_settings={
            "GRAPH_CLIENTS": json.dumps(clients), "GRAPH_CLIENT_SECRET_BROKEN": "not-the-secret",
            "TRAML_BASE_URL": self.traml.api_url, "TRAML_API_KEY": DEMO_API_KEY})
        try:
            self.stack.start()
        except BaseException:
            self.traml.stop()
            raise
        # Enforce function keys as Azure does (Stack starts the dev host without): the console must
        # carry the key it was opened with on every call.
        host = self.stack.host
        host._function_key = host._master_key = WEBHOOK_KEY
        host.enforce_keys = True
        self.stack.http.headers["x-functions-key"] = WEBHOOK_KEY

    def stop(self) -> None:
        stop_all(self.stack, self.traml)

    @property
    def graph(self) -> Any:
        return self.stack.graph

    def url(self, hash_: str = "", **query: str) -> str:
        extra = "".join(f"&{k}={v}" for k, v in query.items())
        return f"{self.stack.url}/api/manage/dashboard?code={WEBHOOK_KEY}{extra}" + (f"#{hash_}" if hash_ else "")

    def open(self, page: Any, hash_: str = "") -> Any:
        """Load the console afresh on a screen and wait until it has rendered."""
        self._loads = getattr(self, "_loads", 0) + 1
        page.goto(self.url(hash_, load=str(self._loads)))  # a new document, even when only the hash differs
        wait_ready(page)
        return page


def wait_ready(page: Any, previous: int | None = None, timeout: float = 30.0) -> int:
    """Wait for the router to finish a render (after `previous` renders, when given); its count.
    Polls with page.evaluate: playwright's wait_for_function evaluates strings in the page, which
    the console's Content-Security-Policy (rightly) refuses."""
    deadline = time.monotonic() + timeout
    while True:
        state, count, error = page.evaluate(
            "[document.body.dataset.state, Number(document.body.dataset.renders || 0), document.body.dataset.error]")
        if state in ("ready", "error") and count > (previous or 0):
            assert state == "ready", error
            return count
        if time.monotonic() > deadline:
            raise AssertionError(f"the console did not finish rendering (state {state}, renders {count}, error {error})")
        time.sleep(0.05)


def wait_for(page: Any, expression: str, timeout: float = 30.0, what: str = "") -> Any:
    """Poll a JS expression until it is truthy (see wait_ready for why not wait_for_function)."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or expression}")
        time.sleep(0.05)


def renders(page: Any) -> int:
    return int(page.evaluate("document.body.dataset.renders || 0"))


def shot(page: Any, name: str, full_page: bool = True) -> Path:
    path = ARTIFACTS / f"console-{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    return path


class Watch:
    """What one browser page did: its console errors (CSP violations among them), page errors, the
    manage API requests it sent, and each state the console's body went through."""

    # runs before the console's own script (through DevTools, which the page's CSP does not govern)
    STATES = """
        window.__states = [];
        new MutationObserver(() => {
          const s = document.body && document.body.dataset.state;
          const main = document.getElementById('main');
          window.__states.push([s, main ? main.querySelectorAll('.state.loading').length : 0]);
        }).observe(document, {subtree: true, attributes: true, attributeFilter: ['data-state']});
    """

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.allowed: list[str] = []  # console errors a test causes on purpose (e.g. "404")
        self.requests: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("request", lambda r: self.requests.append(r.url) if "/api/" in r.url else None)
        self.refused: list[str] = []  # "404 GET /api/manage/..." for each answer >= 400
        page.on("response", lambda r: self.refused.append(f"{r.status} {r.request.method} {r.url.split('?')[0]}")
                if r.status >= 400 else None)
        page.add_init_script(self.STATES)

    def unexpected_errors(self, *allowed: str) -> list[str]:
        """Console errors other than failed loads the test caused on purpose (`allowed` substrings),
        with the refused requests named (the console message does not say which)."""
        found = [e for e in self.errors if not any(a in e for a in allowed)]
        return found + (self.refused if found else [])


@contextmanager
def watched_page(chromium: Any, viewport: dict[str, int] = DESKTOP, **context: Any) -> Iterator[tuple[Any, Watch]]:
    ctx = chromium.new_context(viewport=viewport, **context)
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    watch = Watch(page)
    try:
        yield page, watch
    finally:
        ctx.close()


def no_horizontal_overflow(page: Any) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def click_and_wait(page: Any, selector: str) -> int:
    """Click something that makes the console render again, and wait for that render."""
    before = renders(page)
    page.click(selector)
    return wait_ready(page, before)
