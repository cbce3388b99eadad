"""A real headless Chromium (Debian's `chromium`, driven by Playwright) on the embedded stack.

Every request the page makes is recorded, so a test can say that none left for another origin; screenshots
go to test-artifacts/dashboard/ (or $SECATEURS_TEST_ARTIFACTS) and stay after the run."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.api.conftest import Stack, embedded  # noqa: F401  (the same session stack as the API tests)

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("SECATEURS_CHROMIUM", "/usr/bin/chromium")


@dataclass
class Browsing:
    page: object
    stack: Stack
    requests: list[str] = field(default_factory=list)

    def screenshot(self, name: str) -> Path:
        out = Path(os.environ.get("SECATEURS_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "dashboard" / f"{name}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(out), full_page=True)
        return out

    def foreign_requests(self) -> list[str]:
        return [u for u in self.requests if not (u.startswith(self.stack.url + "/") or u.startswith(("blob:", "data:")))]


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not shutil.which(CHROMIUM):
        raise RuntimeError(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (scripts/debian-tools.sh)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def browsing(browser, embedded: Stack) -> Iterator[Browsing]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(20_000)
    page = context.new_page()
    b = Browsing(page, embedded)
    context.on("request", lambda r: b.requests.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "401" not in m.text else None)
    try:
        yield b
    finally:
        context.close()
    assert not errors, f"the page logged errors: {errors}"
