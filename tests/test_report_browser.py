"""The report as a person sees it: opened in real headless Chromium, offline and script-free.

Uses Debian's ``chromium`` and ``chromium-driver`` packages; Selenium is pointed at
``/usr/bin/chromedriver`` so Selenium Manager never tries to download a browser.

``docs/report-screenshot.png`` is the demo's label-flip batch as the browser shows it; to
refresh it from the current detectors, run this module with ``POISONGUARD_SCREENSHOT`` set
to that path (the test only writes under its own tmp_path otherwise)::

    POISONGUARD_SCREENSHOT=docs/report-screenshot.png .venv/bin/python -m pytest \\
        tests/test_report_browser.py -k screenshot
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from poisonguard.config import load_config
from poisonguard.pipeline import process_landing, report_paths
from poisonguard.report import render_html, write_report
from poisonguard.store import open_store
from test_report import SECTION_HEADINGS, hostile_report, sample_report

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Where the full-page screenshot of the demo's label-flip batch is also copied, when set.
SCREENSHOT = os.environ.get("POISONGUARD_SCREENSHOT")
WIDTH = 1280


def _missing() -> list[str]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium Python package")
    return missing


if _missing():
    pytest.skip(
        "the browser test needs Debian's chromium and chromium-driver and the selenium "
        f"package: missing {', '.join(_missing())}",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

from landed import keep_only  # noqa: E402


@dataclass
class Loaded:
    """A page as the browser loaded it, with everything it logged while loading."""

    driver: Any
    url: str
    console: list[dict[str, Any]]
    requests: list[str]


def _start(profile: Path) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--window-size={WIDTH},1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def _load(driver: Any, page: Path) -> Loaded:
    url = page.resolve().as_uri()
    # Reading a log drains it: empty both (the browser's own start-up page logs too), then
    # everything read after the load belongs to this page.
    driver.get("about:blank")
    driver.get_log("browser")
    driver.get_log("performance")
    driver.get(url)
    console = driver.get_log("browser")
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            requests.append(message["params"]["request"]["url"])
    return Loaded(driver, url, console, requests)


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[Any]:
    profile = Path(tempfile.mkdtemp(prefix="pg-chromium-"))
    driver = _start(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def full_page(browser, tmp_path_factory) -> Loaded:
    report = sample_report(np.random.default_rng(7))
    _, html_path = write_report(report, tmp_path_factory.mktemp("report"))
    return _load(browser, html_path)


@pytest.fixture(scope="module")
def hostile_page(browser, tmp_path_factory) -> Loaded:
    """Markup that would run if unescaped, in the batch id and every other text field."""
    page = tmp_path_factory.mktemp("hostile") / "hostile.html"
    page.write_text(render_html(hostile_report(np.random.default_rng(7))), encoding="utf-8")
    return _load(browser, page)


@pytest.fixture(scope="module")
def demo_page(browser, demo_inputs, tmp_path_factory) -> tuple[Loaded, Any]:
    """The report of the demo's label-flip batch, judged by the current detectors."""
    from poisonguard.demo import LABEL
    from poisonguard.initialize import init_dataset

    root = tmp_path_factory.mktemp("demo-page") / "demo"
    shutil.copytree(demo_inputs, root)
    keep_only(root / "landing", "batch-01-label-flips.parquet")
    init_dataset(
        root / "trusted.parquet", label=LABEL, directory=root, id_column="row_id", name="digits"
    )
    config = load_config(root / "poisonguard.toml")
    (record,) = process_landing(config).records
    html_path, _ = report_paths(open_store(config), record.batch_id)
    return _load(browser, html_path), record


def _assert_offline(loaded: Loaded) -> None:
    others = [u for u in loaded.requests if u != loaded.url and not u.startswith("data:")]
    assert loaded.url in loaded.requests
    assert others == []


def _assert_quiet(loaded: Loaded) -> None:
    severe = [e for e in loaded.console if e.get("level") == "SEVERE"]
    assert severe == []


def test_the_page_loads_with_its_title_and_every_section(full_page):
    """The title names the batch; the header, badge and every section heading are there."""
    driver = full_page.driver
    assert driver.title == "poisonguard report · batch-01-label-flips-3f9a1c2b7d4e"
    assert driver.find_element(By.TAG_NAME, "h1").text == "Batch batch-01-label-flips-3f9a1c2b7d4e"
    assert driver.find_element(By.CSS_SELECTOR, ".badge").text.lower() == "committed"
    headings = [h.text for h in driver.find_elements(By.TAG_NAME, "h2")]
    assert headings == list(SECTION_HEADINGS)
    assert len(driver.find_elements(By.CSS_SELECTOR, "figure.histogram svg")) == 3


def test_the_plots_have_size_on_screen(full_page):
    """Each SVG is laid out with real width and height, and its bars and points are drawn."""
    driver = full_page.driver
    for svg in driver.find_elements(By.TAG_NAME, "svg"):
        assert svg.size["width"] > 300 and svg.size["height"] > 150
    bars = driver.find_elements(By.CSS_SELECTOR, "rect.bar")
    assert bars and all(b.size["height"] >= 0 for b in bars)
    assert any(b.size["height"] > 20 for b in bars)
    points = driver.find_elements(By.CSS_SELECTOR, "path.points")
    assert len(points) == 3 and all(p.size["width"] > 50 for p in points)


def test_the_page_logs_no_console_error(full_page):
    """Nothing is blocked by the page's CSP and nothing fails to load."""
    _assert_quiet(full_page)


def test_the_page_makes_no_network_request_but_its_own_file(full_page):
    _assert_offline(full_page)


def test_injected_markup_shows_as_text_and_never_runs(hostile_page):
    """A ``<script>`` in the batch id, reason, labels and columns neither runs nor is blocked.

    Escaped markup never reaches the parser as a tag, so the page's CSP has nothing to
    refuse: a CSP refusal would show up as a SEVERE console entry.
    """
    driver = hostile_page.driver
    assert driver.title.startswith("poisonguard report · <script>")
    assert driver.title != "pwned"
    assert driver.execute_script("return typeof window.__pg_pwned") == "undefined"
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018
    assert driver.find_elements(By.TAG_NAME, "script") == []
    assert driver.find_elements(By.TAG_NAME, "img") == []
    assert "<script>window.__pg_pwned=1" in driver.find_element(By.TAG_NAME, "h1").text
    assert "<script>" in driver.find_element(By.CSS_SELECTOR, ".callout").text
    _assert_quiet(hostile_page)
    _assert_offline(hostile_page)


def test_the_demo_page_shows_the_ledgers_counts(demo_page):
    """On screen, the label-flip batch's counts are the ledger's and its stages add up."""
    loaded, record = demo_page
    driver = loaded.driver
    driver.get(loaded.url)  # the browser is shared: another test may have moved it on
    shown = {
        e.get_attribute("data-count"): int(e.text.replace(",", ""))
        for e in driver.find_elements(By.CSS_SELECTOR, ".card [data-count]")
    }
    assert (shown["rows_in"], shown["clean"], shown["quarantined"], shown["rejected"]) == (
        record.rows_in,
        record.rows_clean,
        record.rows_quarantined,
        record.rows_rejected,
    )
    stages = [shown[k] for k in shown if k.startswith("held-")]
    assert len(stages) == 4 and sum(stages) == record.rows_quarantined > 0
    assert len(driver.find_elements(By.CSS_SELECTOR, "figure.histogram svg")) >= 4
    _assert_quiet(loaded)
    _assert_offline(loaded)


def test_a_full_page_screenshot_is_saved(demo_page, tmp_path):
    """The demo's label-flip batch, the whole page at its full height, as a PNG under tmp_path
    (and where POISONGUARD_SCREENSHOT says, when set)."""
    loaded, record = demo_page
    driver = loaded.driver
    driver.get(loaded.url)  # the browser is shared: another test may have moved it on
    assert driver.title.endswith(record.batch_id)
    height = int(driver.execute_script("return Math.ceil(document.documentElement.scrollHeight)"))
    assert height > 1500
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        shot = tmp_path / "report-screenshot.png"
        assert driver.save_screenshot(str(shot))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, tall = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, tall) == (WIDTH, height)
    if SCREENSHOT:
        shutil.copyfile(shot, SCREENSHOT)
