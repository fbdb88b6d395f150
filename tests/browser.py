"""Headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium) and a TensorBoard
server on a loopback port, for the tests that look at what a user sees.

Without Chromium the browser tests are skipped with one line, except where RSAM_REQUIRE_BROWSER=1
(set by .ci/run, which installs Chromium): there a missing browser fails them.

    with tensorboard_server(logdir) as url, chromium() as page:
        page.get(f"{url}/#scalars")
        deep_texts(page, ".heading-label.name")
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from processes import free_port, kill_tree

REQUIRE_ENV = "RSAM_REQUIRE_BROWSER"
TENSORBOARD = str(Path(sys.executable).with_name("tensorboard"))


def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver), or skip (fail where RSAM_REQUIRE_BROWSER=1) when either is missing."""
    chromium_binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium_binary and driver:
        return chromium_binary, driver
    message = "browser tests need Chromium and ChromeDriver: apt-get install chromium chromium-driver"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1: CI must run them)", pytrace=False)
    pytest.skip(message)


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium page (a Selenium WebDriver), closed on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    page = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield page
    finally:
        page.quit()


@contextmanager
def tensorboard_server(logdir: Path, timeout_s: float = 90.0) -> Iterator[str]:
    """`tensorboard --logdir logdir` on a free loopback port until it lists its runs; yields its URL
    and stops it on exit (only the process started here)."""
    port = free_port()
    with tempfile.TemporaryFile("w+") as log:  # TensorBoard's own output, shown if it never comes up
        server = subprocess.Popen([TENSORBOARD, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_until(lambda: _runs(url) not in (None, b"[]"), timeout_s, f"TensorBoard on {logdir}")
            except AssertionError as err:
                log.seek(0)
                raise AssertionError(f"{err}; it said:\n{log.read()[-3000:]}") from None
            yield url
        finally:
            kill_tree(server.pid)  # the server we started and anything it started, nothing else
            server.wait()


def _runs(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(f"{url}/data/runs", timeout=2) as response:
            return response.read()
    except OSError:
        return None


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)


# TensorBoard's dashboards live in nested shadow roots: CSS selectors do not reach into them, so
# these scripts walk every shadow root themselves.
_DEEP_QUERY = """
const selector = arguments[0];
const found = [];
function visit(root) {
  for (const element of root.querySelectorAll('*')) {
    if (element.matches(selector)) found.push(element);
    if (element.shadowRoot) visit(element.shadowRoot);
  }
}
visit(document);
return found;
"""


def deep_elements(page, selector: str) -> list[Any]:
    """Every element matching `selector`, inside shadow roots too."""
    return page.execute_script(_DEEP_QUERY, selector)


def deep_texts(page, selector: str) -> list[str]:
    return [element.get_attribute("textContent").strip() for element in deep_elements(page, selector)]


_PIXEL_SPREAD = """
const image = arguments[0];
const canvas = document.createElement('canvas');
canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
const context = canvas.getContext('2d');
context.drawImage(image, 0, 0);
const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
let low = 255, high = 0;
for (let i = 0; i < data.length; i += 4) {
  const grey = (data[i] + data[i + 1] + data[i + 2]) / 3;
  if (grey < low) low = grey;
  if (grey > high) high = grey;
}
return high - low;
"""


def pixel_spread(page, image) -> float:
    """Brightest minus darkest pixel of a loaded <img> (0 for a blank one), as the browser decoded it."""
    return page.execute_script(_PIXEL_SPREAD, image)
