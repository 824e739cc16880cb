"""Headless Chromium for the browser tests: Debian's chromium driven by Playwright's sync API
(Playwright's own browser download cannot work here), and the fields of the Prefect UI's
parameter forms found by their titles."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing() -> str | None:
    """Why a browser test cannot run here (the skip reason), or None when it can."""
    if importlib.util.find_spec("playwright") is None:
        return "the Python package playwright is not installed (pip install -c constraints.txt -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"Debian's chromium is not at {CHROMIUM} (apt-get install chromium; `make test` does it as root)"
    return None


@contextlib.contextmanager
def browser_page(tmp: Path) -> Iterator[Page]:
    """A page of headless Chromium on a fresh profile in ``tmp``; if the block fails, a
    screenshot of the page as it was goes to ``tmp/failure.png`` (its path is printed)."""
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},  # wide enough for the UI's side bar
        )
        try:
            page = context.new_page()
            try:
                yield page
            except BaseException:
                with contextlib.suppress(Error):  # a page that is gone has nothing to show
                    page.screenshot(path=tmp / "failure.png", full_page=True)
                    print(f"screenshot of the failed page: {tmp / 'failure.png'}")
                raise
        finally:
            context.close()


def form_field(page: Page, title: str) -> Locator:
    """The block of the Prefect UI's (V2) parameter form that holds the optional field titled
    ``title``: its label and its inputs. A field's label names its input only when the input is
    the field's one control; a field that may be None (a tab per type) or is a list (an input
    per item) has unnamed inputs, found inside this block by their roles."""
    label = f"{title} (Optional)"
    return page.locator(f"xpath=//label[normalize-space(.)='{label}']/ancestor::div[fieldset][1]")
