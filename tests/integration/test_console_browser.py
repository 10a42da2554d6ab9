"""The web console in a real browser (issue 12, §2): Debian's chromium and chromedriver
(installed by ``make tools``: deploy/tools/install-validators.sh), driven headless by
selenium against the running demo pipeline. Logs in as the demo operator, sees replayed
devices change activity live (no reload), sees the scripted fall arrive with its cue,
acknowledges it in the browser, and checks through the alert API that it is acknowledged by
that operator with the note. The demo pipeline runs the history service (the console
calls it with the demo operator's key), so the device page shows today's activity bands and the
daily summaries; the raw signal before the fall is read back from the raw topic. Every
page is saved to ``reports/console-*.png``.

Nothing is downloaded at run time: the driver and browser paths are given, and Selenium
Manager is kept offline (``SE_OFFLINE``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import threading
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.demo.cli import register_devices
from services.demo.pipeline import DEMO_OPERATOR, Pipeline, PipelineConfig
from services.demo.run import DemoResult, demo_devices, run_replay

pytestmark = pytest.mark.integration

REPORTS = Path(__file__).resolve().parents[2] / "reports"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Replay speed: slow enough that activities visibly change while the browser watches.
SPEED = 10.0
WAIT_S = 90.0
NOTE = "on my way (browser test)"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """The demo pipeline, history service included (the console's device page reads it)."""
    config = PipelineConfig(
        workdir=tmp_path_factory.mktemp("console-pipeline"),
        partitions=2,
        service_env={
            "alerting": {"HARSTREAM_ALERTING_CONSOLE__UPDATE_INTERVAL_S": "0.5"},
            # Segments of a device gone quiet are counted sooner than the default 10 s.
            "history": {"HARSTREAM_HISTORY_IDLE_FLUSH_S": "2"},
        },
    )
    with Pipeline(config) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(path), (
            f"{path} missing: run `make tools` (apt chromium chromium-driver)"
        )
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class _BackgroundReplay:
    """``run_replay`` on a thread of its own, cancelled at teardown whatever the test did. A
    replay left running after a failed test (one CI run) kept retrying against the stopped
    pipeline, logged its Kafka consumer's errors into the next tests' logs (failing their
    no-errors check) and drew from the global random generators while a later test checked
    that seeded training repeats bit for bit."""

    def __init__(self, replay: Coroutine[Any, Any, DemoResult]) -> None:
        self._replay = replay
        self._task: asyncio.Task[DemoResult] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-replay", daemon=True)
        self.result: DemoResult | None = None

    def _run(self) -> None:
        async def main() -> DemoResult:
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
            self._started.set()
            return await self._replay

        with contextlib.suppress(asyncio.CancelledError):  # stopped at teardown
            self.result = asyncio.run(main())

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def join(self, timeout_s: float) -> DemoResult | None:
        self._thread.join(timeout_s)
        return self.result

    def stop(self) -> None:
        if self._thread.is_alive() and self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join(30)
        assert not self._thread.is_alive(), "the replay did not stop within 30 s of its cancel"


def _text(browser: Any, css: str) -> str:
    """The text of the element ``css`` selects, found and read in one script."""
    return str(browser.execute_script(f"return document.querySelector({css!r}).innerText"))


def _api(pipeline: Pipeline, path: str) -> Any:
    request = urllib.request.Request(
        f"{pipeline.alerting_url}{path}", headers=pipeline.alert_api_headers()
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


#: Visible form controls without a label (script for execute_script).
_UNLABELLED = (
    "return [...document.querySelectorAll('input, select, textarea')]"
    ".filter(e => e.offsetParent !== null && e.labels.length === 0).map(e => e.outerHTML)"
)


def _through_rerenders(browser: Any, what: str, action: Callable[[Any], Any]) -> Any:
    """``action(browser)``'s first truthy result, run again whenever an element it found was
    replaced before it was used (StaleElementReferenceException): the live inbox re-renders
    its items whenever an alert changes, twice after an acknowledgement (the API's answer,
    then the pushed event). An open <details> and a typed note survive a re-render
    (console.js keeps them by alert id), so doing the step again is safe."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(action, what)


def _shot(driver: Any, name: str) -> None:
    REPORTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(REPORTS / f"console-{name}.png"))


def test_console_in_a_browser_against_the_demo_pipeline(  # type: ignore[no-untyped-def]
    pipeline, browser, hapt_cache, request
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)
    assert pipeline.operator_password is not None

    # Log in as the operator `harstream demo` prints.
    browser.get(pipeline.console_url)
    wait.until(ec.visibility_of_element_located((By.ID, "login-name")), "login form")
    _shot(browser, "login")
    # By keyboard only: name, Tab to the password, Enter submits.
    browser.find_element(By.ID, "login-name").send_keys(DEMO_OPERATOR, Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "login-password"
    browser.switch_to.active_element.send_keys(
        pipeline.operator_password.get_secret_value(), Keys.ENTER
    )
    wait.until(ec.visibility_of_element_located((By.ID, "fleet-view")), "fleet page after login")
    wait.until(
        ec.text_to_be_present_in_element((By.ID, "fleet-live"), "connected"), "live connection"
    )
    # Set once: still there at the end proves no reload happened in between.
    browser.execute_script("window.__harstreamNoReload = true;")

    # Replay subject 2's recordings and the scripted fall, in the background.
    devices = demo_devices(hapt_cache, [2], scripted=True)
    tokens = register_devices(pipeline.registry_url, [d.device_id for d in devices])
    replay = _BackgroundReplay(
        run_replay(pipeline, devices, tokens, SPEED, 250, console=None, drain_timeout_s=60)
    )
    request.addfinalizer(replay.stop)
    replay.start()

    # The replayed devices appear and change activity, pushed live.
    first_seen: dict[str, str] = {}

    def changed_activity(driver: Any) -> str | None:
        rows = driver.execute_script(
            "return [...document.querySelectorAll('#fleet-body tr')].map("
            "r => [r.dataset.device, r.querySelector('.activity').textContent])"
        )
        for device, activity in rows:
            if activity in ("–", ""):
                continue
            before = first_seen.setdefault(device, activity)
            if activity != before:
                return f"{device}: {before} -> {activity}"
        return None

    change = wait.until(changed_activity, "activity change")
    assert "->" in change
    assert browser.execute_script(_UNLABELLED) == []
    # Read in one script: the live page re-renders the counts at any moment, and an element
    # found first and read next can be gone in between (StaleElementReferenceException).
    counts = _text(browser, "[data-count=devices] strong")
    assert int(counts) >= 2
    _shot(browser, "fleet")

    # The scripted fall: the banner (role=alert) names the device.
    wait.until(ec.text_to_be_present_in_element((By.ID, "fall-banner"), "demo-fall"), "fall banner")
    assert browser.find_element(By.ID, "fall-banner").is_displayed()
    _shot(browser, "fall-cue")
    assert browser.execute_script("return window.__harstreamNoReload === true")

    # Acknowledge it in the inbox, with a note.
    browser.find_element(By.CSS_SELECTOR, "#fall-banner a").click()
    fall_item = (By.CSS_SELECTOR, "#alert-list li[data-type=FALL_SUSPECTED][data-state=open]")
    wait.until(ec.visibility_of_element_located(fall_item), "open fall in the inbox")
    alert_id = _through_rerenders(
        browser, "the fall's id", lambda d: d.find_element(*fall_item).get_attribute("data-alert")
    )
    in_inbox = (By.CSS_SELECTOR, f"#alert-list li[data-alert='{alert_id}']")
    _shot(browser, "alerts")

    def note_typed(driver: Any) -> bool:
        area = driver.find_element(*in_inbox).find_element(By.TAG_NAME, "textarea")
        if area.get_attribute("value") != NOTE:
            area.clear()
            area.send_keys(NOTE)
        typed = driver.find_element(*in_inbox).find_element(By.TAG_NAME, "textarea")
        return bool(typed.get_attribute("value") == NOTE)

    _through_rerenders(browser, "note typed", note_typed)
    # Every form control of the inbox has a label; the acknowledgement works by keyboard.
    assert browser.execute_script(_UNLABELLED) == []
    _through_rerenders(
        browser,
        "acknowledged by keyboard",
        lambda d: (
            d.find_element(*in_inbox)
            .find_element(By.CSS_SELECTOR, "button.ack")
            .send_keys(Keys.ENTER)
            or True
        ),
    )
    wait.until(
        ec.text_to_be_present_in_element((By.ID, "announce"), "acknowledged"),
        "acknowledgement announced",
    )
    browser.find_element(By.CSS_SELECTOR, ".tabs button[data-state=acknowledged]").click()
    acked = (By.CSS_SELECTOR, f"#alert-list li[data-alert='{alert_id}'][data-state=acknowledged]")
    wait.until(ec.visibility_of_element_located(acked), "acknowledged fall")
    _through_rerenders(
        browser,
        "history opened",
        lambda d: d.find_element(*acked).find_element(By.TAG_NAME, "summary").click() or True,
    )
    wait.until(ec.text_to_be_present_in_element(acked, NOTE), "note in the history")
    _shot(browser, "alert-acknowledged")

    # The alert API agrees: acknowledged by the operator who logged in, with the note.
    alert = _api(pipeline, f"/v1/alerts/{alert_id}")
    assert alert["state"] == "acknowledged"
    assert alert["device_id"] == "demo-fall"
    assert alert["acknowledged_by"] == DEMO_OPERATOR
    events = _api(pipeline, f"/v1/alerts/{alert_id}/history")["events"]
    assert (events[-1]["event"], events[-1]["operator"], events[-1]["note"]) == (
        "acknowledged",
        DEMO_OPERATOR,
        NOTE,
    )

    # The device page: today's activity bands and the 7 daily summaries from the history
    # service (asked again until it has stored the fall's segments), and the raw signal
    # before the fall, read back from the raw topic.
    browser.set_window_size(1280, 1900)
    browser.get(f"{pipeline.console_url}#/device/demo-fall")

    def bands(driver: Any) -> int | None:
        n = driver.execute_script(
            "const c = document.querySelectorAll('#device-timeline svg.bands');"
            "return c.length === 2 ? c[1].querySelectorAll('rect').length : 0"
        )
        if n > 2:  # the last hour's background and at least two activities
            return int(n)
        driver.execute_script("loadDevice('demo-fall', true)")
        return None

    wait.until(bands, "activity bands from the history service")
    assert "unavailable" not in _text(browser, "#device-timeline")
    summaries = browser.execute_script(
        "return [...document.querySelectorAll('#device-summaries figure')].map(f => f.innerText)"
    )
    assert len(summaries) == 7
    assert "min with data" in summaries[-1]  # today
    wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#device-raw svg polyline")),
        "raw signal plot",
    )
    _shot(browser, "device")
    browser.set_window_size(1280, 1000)

    # The pipeline page: every service's figures from its own /metrics.
    browser.get(f"{pipeline.console_url}#/pipeline")
    for service in ("ingest", "preprocess", "inference", "alerting"):
        wait.until(
            ec.presence_of_element_located((By.CSS_SELECTOR, f"section[data-service={service}]")),
            f"{service} figures",
        )
    wait.until(
        ec.text_to_be_present_in_element((By.ID, "pipeline-body"), "end-to-end p99"),
        "latency figures",
    )
    # The second refresh (5 s) has rates; the consumer groups' lag is read from Kafka.
    wait.until(
        ec.text_to_be_present_in_element((By.ID, "pipeline-body"), "/s ("), "rates (second refresh)"
    )
    wait.until(
        ec.text_to_be_present_in_element((By.ID, "pipeline-body"), "records"), "consumer lag"
    )
    _shot(browser, "pipeline")

    # A phone-sized screen: the fleet as cards, still usable.
    browser.set_window_size(390, 844)
    browser.get(f"{pipeline.console_url}#/fleet")
    wait.until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, "#fleet-body tr")),
        "fleet cards on a phone-sized screen",
    )
    _shot(browser, "fleet-phone")

    result = replay.join(WAIT_S)
    assert result is not None and result.load.packets_accepted > 0
