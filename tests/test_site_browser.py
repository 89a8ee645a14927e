"""The built site in a real browser: headless Chromium through Selenium opens it from the file system (file://, no
server), sorts a column, filters by kind, follows a number to its record page and reads the rendered text.

Screenshots of the main table, a method page and a record page are saved with the test output: under
``$ZSBENCH_SCREENSHOTS`` when set (tox sets it to ``.tox/screenshots``), else in the test's temporary folder.
Chromium and chromedriver come from Debian (``apt-get install chromium chromium-driver``; .ci/run installs them when
missing). Without them the test is skipped, except under CI (``CI`` set), where a missing browser fails it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from robustbench_zs.cli import main

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> tuple[str, str] | None:
    binary = next((b for b in map(shutil.which, BROWSERS) if b), None)
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if Path(p).is_file()), None
    )
    return (binary, driver) if binary and driver else None


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    found = _browser()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(
                "CI needs Chromium and chromedriver for the site's browser test: apt-get install chromium chromium-driver"
            )
        pytest.skip("no Chromium/chromedriver here (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    # the driver path is given: Selenium Manager never runs (it would try to download a driver)
    d = webdriver.Chrome(service=Service(driver_path), options=options)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def site(site_world, site_submissions, tmp_path_factory):
    out = tmp_path_factory.mktemp("browser") / "site"
    argv = ["site", "--out", str(out), "--submissions", str(site_submissions), "--results", str(site_world["results"])]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("ZSBENCH_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _screenshot(d, folder: Path, name: str) -> Path:
    d.set_window_size(1400, 800)  # measure the page itself, not the window the last page left
    height = d.execute_script("return document.documentElement.scrollHeight")
    d.set_window_size(1400, min(max(int(height) + 120, 800), 8000))
    path = folder / f"{name}.png"
    assert d.save_screenshot(str(path)), path
    assert path.stat().st_size > 10_000  # a rendered page, not an empty canvas
    print(f"screenshot: {path}")
    return path


def _table_rows(table) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    return [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")
        if tr.is_displayed()
    ]


def test_the_site_sorts_filters_and_links_from_the_file_system(driver, site, shots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d = driver
    d.get((site / "index.html").as_uri())
    assert d.title == "Robust zero-shot CLIP leaderboard", d.title
    body = d.find_element(By.TAG_NAME, "body").text
    assert "Adversarially robust zero-shot CLIP" in body
    assert "TeCoA (tiny test)" in body and "CLIP zero-shot" in body
    assert "Reported by the authors, not re-evaluated" in body

    table = d.find_element(By.CSS_SELECTOR, "table.sortable")
    headers = table.find_elements(By.CSS_SELECTOR, "thead th")
    names = [h.text.split("\n")[0].strip(" ↕▲▼") for h in headers]
    method_col = names.index("Method")
    clean_col = next(i for i, n in enumerate(names) if n.startswith("Clean"))
    before = [r[method_col] for r in _table_rows(table)]
    assert sorted(before) == sorted(["TeCoA (tiny test)", "CLIP zero-shot"])

    # sort by the method's name, twice (ascending, then descending), as a reader clicks it
    headers[method_col].click()
    assert headers[method_col].get_attribute("aria-sort") == "ascending"
    up = [r[method_col] for r in _table_rows(table)]
    assert up == sorted(before, key=str.lower)
    headers[method_col].click()
    assert [r[method_col] for r in _table_rows(table)] == up[::-1]
    # a numeric column sorts by value, highest first on the first click
    headers[clean_col].click()
    clean = [float(r[clean_col].split()[0]) for r in _table_rows(table)]
    assert clean == sorted(clean, reverse=True)

    # the kind filter hides the rows of the other kind, everywhere on the page
    Select(d.find_element(By.ID, "filter-kind")).select_by_visible_text("fine-tuned")
    assert [r[method_col] for r in _table_rows(table)] == ["TeCoA (tiny test)"]
    Select(d.find_element(By.ID, "filter-kind")).select_by_visible_text("all")
    assert len(_table_rows(table)) == 2
    _screenshot(d, shots, "site-main-table")

    # an average links to the per-dataset table of its threat, whose every number links to its record page
    robust_col = next(i for i, n in enumerate(names) if n.startswith("Robust"))
    first = table.find_elements(By.CSS_SELECTOR, "tbody tr")[0]
    first.find_elements(By.TAG_NAME, "td")[robust_col].find_element(By.TAG_NAME, "a").click()
    assert "protocol-world.html#" in d.current_url
    link = d.find_element(By.CSS_SELECTOR, "table.datasets tbody td a.num")
    shown, title = link.text, link.get_attribute("title")
    assert "Wilson 95%" in title and " of 256 images" in title
    link.click()
    assert "/records/" in d.current_url and d.current_url.startswith("file://")
    record = d.find_element(By.TAG_NAME, "body").text
    assert "Wilson 95% interval" in record and "indices sha256" in record
    assert shown in record  # the same accuracy on the record page
    _screenshot(d, shots, "site-record-page")

    # the method page from the main table: its card and its per-dataset numbers
    d.get((site / "index.html").as_uri())
    d.find_element(By.LINK_TEXT, "TeCoA (tiny test)").click()
    assert "/methods/" in d.current_url
    page = d.find_element(By.TAG_NAME, "body").text
    assert "arXiv:2212.07016" in page and "ICLR 2023" in page and "hashed from the file by zsbench submit" in page
    assert "World: colour" in page or "world-colour" in page
    # its plots (SVG, loaded from the file system) and stylesheet arrived
    d.get((site / "index.html").as_uri())
    images = d.find_elements(By.CSS_SELECTOR, "img")
    assert images and all(
        d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i) for i in images
    )
    colour = d.execute_script("return getComputedStyle(document.querySelector('table.sortable thead th')).cursor")
    assert colour == "pointer"  # site.css was applied
    d.get(next((site / "methods").glob("tecoa-*.html")).as_uri())
    _screenshot(d, shots, "site-method-page")
