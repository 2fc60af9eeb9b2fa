"""The console driven in Debian's Chromium through its chromedriver, as an auditor uses it: from the overview to a
run, its changes filtered, a subject's timeline, a search, a run started and followed to its end; every page
rendered at 1,280 px without horizontal overflow."""

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sync.config import Config, JobOutline, Outline
from sync.console.actions import Actions
from sync.console.app import Settings
from sync.console.server import ConsoleServer
from sync.dev.receiver import Receiver
from sync.run.runner import Runner
from sync.store import Store
from tests.conftest import RecordingSleep, Warehouse, job_dict, make_config

WIDTH = 1280
USERS = [f"u{i:03d}" for i in range(60)]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module's tests."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CI"):
            raise RuntimeError("Chromium and chromedriver are required in CI (.ci/run installs them)")
        pytest.skip("Chromium or chromedriver is not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or ""
    profile = tempfile.mkdtemp()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", f"--window-size={WIDTH},900"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or ""), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def console(store: Store, warehouse: Warehouse, sleep: RecordingSleep, receiver: Receiver) -> Iterator[str]:
    warehouse.set_members("vip", USERS)
    warehouse.set_members("beta", USERS[::3])
    raw = job_dict(
        warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip"), warehouse.audience("Beta", "beta")]
    )
    config = make_config("sqlite://", [raw])
    runner = Runner(store, sleep=sleep)
    assert runner.run(config.jobs[0]).status == "succeeded"
    warehouse.set_members("vip", USERS[10:])
    assert runner.run(config.jobs[0]).status == "succeeded"

    def load(job: str) -> Config:
        return config

    outline = Outline(state_url="unused://", jobs=(JobOutline(name="contacts"),))
    with ConsoleServer(Settings(outline, actions=Actions(store, load)), store) as server:
        yield server.url


def heading(browser: Any, starts: str) -> str:
    """The page's heading once a page whose heading starts with ``starts`` has loaded (within 20 s)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    def loaded(driver: Any) -> str | bool:
        try:
            text = str(driver.find_element(By.TAG_NAME, "h1").text)
        except StaleElementReferenceException:
            return False
        return text if text.startswith(starts) else False

    return str(WebDriverWait(browser, 20).until(loaded))


def looked_at(browser: Any, tmp_path: Path, name: str) -> None:
    """The page as a person sees it: drawn, and as wide as the window at most."""
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= WIDTH, f"{name}: {width} px wide at a {WIDTH} px window"
    shot = tmp_path / f"{name}.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 5000, f"{name} rendered blank"


def test_an_auditor_goes_from_the_overview_to_a_subject_and_starts_a_run(
    browser: Any, console: str, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.wait import WebDriverWait

    browser.get(console + "/")
    looked_at(browser, tmp_path, "overview")
    browser.find_element(By.LINK_TEXT, "contacts").click()
    assert heading(browser, "Job ") == "Job contacts"
    looked_at(browser, tmp_path, "job")
    browser.find_element(By.LINK_TEXT, "2").click()  # run 2: ten users left vip
    heading(browser, "Run 2 of contacts")
    browser.find_element(By.NAME, "key").send_keys("vip")
    Select(browser.find_element(By.NAME, "change")).select_by_visible_text("exited")
    browser.find_element(By.XPATH, "//button[text()='Filter']").click()
    WebDriverWait(browser, 20).until(lambda driver: "change=exited" in driver.current_url)
    rows = browser.find_elements(By.CSS_SELECTOR, "table:last-of-type tbody tr")
    cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    assert sorted(cell[0] for cell in cells) == USERS[:10]
    assert {(cell[1], cell[2]) for cell in cells} == {("vip", "exited")}
    looked_at(browser, tmp_path, "run")
    browser.find_element(By.LINK_TEXT, "u003").click()
    assert heading(browser, "u003") == "u003 in contacts"
    timeline = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "tbody tr td:nth-child(4)")]
    assert "exited" in timeline and "entered" in timeline
    looked_at(browser, tmp_path, "subject")
    search = browser.find_element(By.NAME, "q")
    search.send_keys("u042")
    search.submit()
    assert heading(browser, "Subject") == "Subject u042"
    assert browser.find_element(By.LINK_TEXT, "contacts")
    looked_at(browser, tmp_path, "search")
    browser.get(console + "/jobs/contacts")
    browser.find_element(By.XPATH, "//button[text()='Run now']").click()
    WebDriverWait(browser, 20).until(lambda driver: not driver.current_url.endswith("/jobs/contacts"))
    assert "/runs/3" in browser.current_url, browser.current_url + browser.find_element(By.TAG_NAME, "body").text
    heading(browser, "Run 3 of contacts")
    for _ in range(100):  # bounded: the page follows the run every 2 s; a run with nothing to send ends at once
        if "running" not in heading(browser, "Run 3"):
            break
        time.sleep(0.2)
        browser.refresh()
    assert heading(browser, "Run 3") == "Run 3 of contacts: succeeded"
    assert "started by console" in browser.find_element(By.CSS_SELECTOR, "p.meta").text
    looked_at(browser, tmp_path, "started run")


def test_without_the_token_the_browser_is_sent_to_sign_in(browser: Any, store: Store) -> None:
    from selenium.webdriver.common.by import By

    outline = Outline(state_url="unused://", jobs=(JobOutline(name="contacts"),))
    with ConsoleServer(Settings(outline, token="t0ken"), store) as server:
        browser.delete_all_cookies()
        assert said(browser, server.url + "/api/v1/jobs") == '{"error":"a valid token is required"}'  # the 401
        browser.get(server.url + "/jobs/contacts")
        assert browser.current_url.endswith("/login")
        browser.find_element(By.NAME, "token").send_keys("wrong")
        browser.find_element(By.TAG_NAME, "form").submit()
        assert "That token is not the console's." in browser.find_element(By.CSS_SELECTOR, "p.failed").text
        assert said(browser, server.url + "/api/v1/jobs") == '{"error":"a valid token is required"}'  # no cookie
        browser.get(server.url + "/login")
        browser.find_element(By.NAME, "token").send_keys("t0ken")
        browser.find_element(By.TAG_NAME, "form").submit()
        assert heading(browser, "Jobs") == "Jobs"
        assert said(browser, server.url + "/api/v1/jobs").startswith('[{"job":"contacts"')


def said(browser: Any, url: str) -> str:
    """The text the browser shows for ``url``."""
    from selenium.webdriver.common.by import By

    browser.get(url)
    return str(browser.find_element(By.TAG_NAME, "body").text)


def test_without_allow_actions_the_console_shows_no_buttons_and_refuses_actions(
    browser: Any, store: Store, warehouse: Warehouse, sleep: RecordingSleep, receiver: Receiver
) -> None:
    from selenium.webdriver.common.by import By

    warehouse.set_members("vip", USERS)
    raw = job_dict(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
    job = make_config("sqlite://", [raw]).jobs[0]
    assert Runner(store, sleep=sleep).run(job).status == "succeeded"
    outline = Outline(state_url="unused://", jobs=(JobOutline(name="contacts"),))
    with ConsoleServer(Settings(outline), store) as server:
        browser.delete_all_cookies()
        browser.get(server.url + "/jobs/contacts")
        assert heading(browser, "Job ") == "Job contacts"
        assert browser.find_elements(By.XPATH, "//button[text()='Run now']") == []
        # The form a console with actions would show, posted from the console's own page: refused all the same.
        post = (
            "const f = document.createElement('form'); f.method = 'post'; f.action = '/jobs/contacts/actions';"
            "for (const [k, v] of [['action', 'run'], ['csrf', 'x']]) { const i = document.createElement('input');"
            "i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i); } document.body.appendChild(f); f.submit();"
        )
        browser.execute_script(post)
        body = browser.find_element(By.TAG_NAME, "body")
        assert "actions are off: start the console with --allow-actions" in body.text
    assert [run.trigger for run in store.runs("contacts")] == ["manual"]  # nothing ran
    control = store.schedule("contacts")
    assert control is None or not control.paused
