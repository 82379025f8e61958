"""A real headless Chromium (Debian's chromium + chromium-driver) driven through selenium.

``HASUPD_TEST_NO_BROWSER=1`` skips the browser tests explicitly; without it a missing browser fails them
with the reason. Screenshots go to ``HASUPD_SCREENSHOTS`` when set, else to the test's tmp dir.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.support.harness import require

OPT_OUT = "HASUPD_TEST_NO_BROWSER"
CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
SCREENSHOTS_ENV = "HASUPD_SCREENSHOTS"


def screenshot_dir(tmp_path: Path) -> Path:
    """Return (made) the folder the test run writes its screenshots to."""
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900, dark: bool = False) -> Iterator[Any]:
    """Yield a selenium WebDriver on a fresh headless Chromium; quit it afterwards."""
    require(
        os.path.exists(CHROMIUM) and os.path.exists(DRIVER) and shutil.which("chromedriver") is not None,
        "Debian's chromium and chromium-driver are needed (apt-get install chromium chromium-driver)",
        OPT_OUT,
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",  # nothing leaves the machine
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    if dark:
        options.add_argument("--blink-settings=preferredColorScheme=0")
        options.add_argument("--force-dark-mode")
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
