"""The live page in a real browser: Debian's chromium, headless, driven by selenium.

selenium talks to Debian's ``chromium-driver`` and the system ``chromium`` (no browser
download: both paths are given, so selenium-manager is never asked). A screenshot of the
toast is saved under ``build/test-artifacts/``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fedmsg_notify.bus.zeromq import Publisher

from tests.conftest import free_port
from tests.needs import missing, require_module
from tests.webserver import WebDaemon, bodhi_comment, start_web_daemon, web_daemons

__all__ = ["web_daemons"]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

webdriver = require_module("selenium.webdriver")
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    missing("needs Debian's chromium and chromium-driver (scripts/setup.d/chromium.sh)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

RULES = """
rules:
  - name: bodhi to the web
    match: {service: bodhi}
    deliver:
      - {via: web, to: bodhi}
"""

HOSTILE_TEMPLATE = """{% extends "@shipped/web/default.j2" %}
{% block title %}{{ message.msg.title or super() }}{% endblock %}
{% block link %}{{ message.msg.link or super() }}{% endblock %}
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,800"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def live_page(daemon: WebDaemon, browser: webdriver.Chrome) -> None:
    browser.get(f"{daemon.base}/feeds/bodhi")
    # The page's EventSource is open (embed.js marks the document) before anything is published.
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.TAG_NAME, "html").get_attribute("data-fn-live") == "1")
    if daemon.publisher is None:
        daemon.publisher = Publisher(daemon.endpoint, username="tester", wait=10.0)
        daemon.publisher.wait_for_subscribers()


def test_the_page_shows_a_toast_within_two_seconds_of_a_publish(
    tmp_path: Path, web_daemons: list[WebDaemon], browser: webdriver.Chrome
) -> None:
    daemon = start_web_daemon(tmp_path, RULES, "web: {backend: web}")
    web_daemons.append(daemon)
    daemon.publish(bodhi_comment("alice", "FEDORA-2026-0001"))
    daemon.wait_for_items("bodhi", 1)
    live_page(daemon, browser)
    # The item published before the page loaded is listed by the server.
    listed = browser.find_elements(By.CSS_SELECTOR, "#fn-items .fn-title")
    assert [e.text for e in listed] == ["alice commented on bodhi update FEDORA-2026-0001 (karma: 1)"]

    published = time.monotonic()
    daemon.publish(bodhi_comment("bob", "FEDORA-2026-0002"))
    toast = WebDriverWait(browser, 2.0, poll_frequency=0.05).until(
        expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, "#fn-toasts .fn-toast"))
    )
    elapsed = time.monotonic() - published
    assert elapsed < 2.0
    title = toast.find_element(By.CSS_SELECTOR, ".fn-title")
    assert title.text == "bob commented on bodhi update FEDORA-2026-0002 (karma: 1)"
    assert title.get_attribute("href") == "https://bodhi.fedoraproject.org/updates/FEDORA-2026-0002"
    assert toast.find_element(By.CSS_SELECTOR, ".fn-category").text == "bodhi"
    # The list grows live too, newest first.
    listed = browser.find_elements(By.CSS_SELECTOR, "#fn-items .fn-title")
    assert [e.text.split(" ")[0] for e in listed] == ["bob", "alice"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "web-toast.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 1000


def test_hostile_content_shows_as_text_in_the_toast(
    tmp_path: Path, web_daemons: list[WebDaemon], browser: webdriver.Chrome
) -> None:
    templates = tmp_path / "templates"
    (templates / "web").mkdir(parents=True)
    (templates / "web" / "default.j2").write_text(HOSTILE_TEMPLATE)
    daemon = start_web_daemon(tmp_path, RULES, "web: {backend: web}", templates=templates)
    web_daemons.append(daemon)
    live_page(daemon, browser)
    hostile = bodhi_comment("alice", "FEDORA-2026-0001")
    hostile["title"] = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"
    hostile["link"] = "javascript:document.title='pwned'"
    daemon.publish(hostile)
    toast = WebDriverWait(browser, 5.0, poll_frequency=0.05).until(
        expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, "#fn-toasts .fn-toast"))
    )
    title = toast.find_element(By.CSS_SELECTOR, ".fn-title")
    assert title.text == hostile["title"]
    # No link was made from the javascript: URL, no element from the markup.
    assert title.tag_name == "span"
    assert toast.find_elements(By.TAG_NAME, "img") == [] and toast.find_elements(By.TAG_NAME, "script") == []
    assert browser.title != "pwned"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "web-toast-hostile.png"))


APP_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>another web app</title></head>
<body><h1>Some Fedora web app</h1>
<script src="{base}/embed.js" data-feed="bodhi"></script>
</body></html>
"""


@pytest.mark.parametrize("allowed", [True, False], ids=["allowed-origin", "other-origin"])
def test_embed_js_shows_toasts_in_another_web_app(
    tmp_path: Path, web_daemons: list[WebDaemon], browser: webdriver.Chrome, allowed: bool
) -> None:
    # The other app: a real HTTP server on another port, i.e. another origin.
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    app_port = free_port()
    origin = f"http://127.0.0.1:{app_port}"
    listed = origin if allowed else "https://apps.example.org"
    daemon = start_web_daemon(tmp_path, RULES, f"web: {{backend: web, cors_origins: ['{listed}']}}")
    web_daemons.append(daemon)
    (app_dir / "index.html").write_text(APP_PAGE.format(base=daemon.base))
    app = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(app_port), "--bind", "127.0.0.1", "--directory", str(app_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{origin}/index.html", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the app's HTTP server never answered"
            time.sleep(0.05)
        browser.get(f"{origin}/index.html")
        WebDriverWait(browser, 10).until(
            lambda d: d.find_element(By.TAG_NAME, "html").get_attribute("data-fn-live") in ("0", "1")
        )
        state = browser.find_element(By.TAG_NAME, "html").get_attribute("data-fn-live")
        if not allowed:
            # The browser refused the stream: no Access-Control-Allow-Origin for this origin.
            assert state == "0"
            return
        assert state == "1"
        daemon.publisher = Publisher(daemon.endpoint, username="tester", wait=10.0)
        daemon.publisher.wait_for_subscribers()
        daemon.publish(bodhi_comment("alice", "FEDORA-2026-0009"))
        toast = WebDriverWait(browser, 5.0, poll_frequency=0.05).until(
            expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, "#fn-toasts .fn-toast"))
        )
        assert toast.find_element(By.CSS_SELECTOR, ".fn-title").text.startswith("alice commented")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "web-embed-toast.png"))
    finally:
        app.terminate()
        app.wait(10)
