"""The dashboard in a real headless Chromium: every page loads, buttons work, it shows the store.

Skipped when Chromium or its driver is missing, unless ``CI`` is set: then it fails. Each
page's screenshot goes to the test's temporary folder; ``SCREENSHOTS_DIR=docs`` refreshes the
ones the README shows.
"""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.http.conftest import HttpSupervisor, versioned
from tests.supervisor.harness import write_script


def _chrome() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture
def browser() -> Iterator["object"]:
    found = _chrome()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI: chromium and chromium-driver must be installed (see .ci/run)")
        pytest.skip("chromium / chromedriver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--lang=en-US"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(found[1]))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: "object", name: str, tmp: Path) -> None:
    folder = Path(os.environ.get("SCREENSHOTS_DIR") or tmp)
    folder.mkdir(exist_ok=True)
    # the whole page, not just the window: the actor page's versions are below the fold
    height, chrome = driver.execute_script(  # type: ignore[attr-defined]
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]"
    )
    driver.set_window_size(1280, max(900, min(int(height) + int(chrome), 1600)))  # type: ignore[attr-defined]
    try:
        driver.save_screenshot(str(folder / f"dashboard-{name}.png"))  # type: ignore[attr-defined]
    finally:
        driver.set_window_size(1280, 900)  # type: ignore[attr-defined]


def paused_attr(driver: "object") -> str | None:
    """The echo row's ``data-paused``, or None while the page is being replaced."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        row = driver.find_element(By.ID, "actor-echo")  # type: ignore[attr-defined]
        value: str | None = row.get_attribute("data-paused")
        return value
    except (NoSuchElementException, StaleElementReferenceException):
        return None


@pytest.mark.timeout(180)
def test_pages_buttons_and_store_agree(
    http_sup: HttpSupervisor, browser: "object", tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    d, http, base = browser, http_sup.http, http_sup.base
    run_ids = [http.post("/api/v1/actors/echo/runs?wait=30", json={"i": i}).json()["run_id"]
               for i in range(3)]  # fmt: skip
    failed = http.post("/api/v1/actors/fail/runs?wait=30").json()["run_id"]

    d.get(base + "/")  # no session yet: the sign-in form, which names the token file
    assert d.find_element(By.ID, "token-file").text == str(http_sup.sup.folder / "state/http-token")
    shot(d, "login", tmp_path)
    d.find_element(By.NAME, "token").send_keys(http_sup.token)
    d.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait_for(lambda: d.find_elements(By.ID, "health"), 10, "the overview after signing in")
    assert d.find_element(By.ID, "health").text.lower().count("healthy") == 1
    store = http_sup.sup.store()
    try:
        finished = [r for r in store.list_runs(limit=1000) if r.finished_at is not None]
    finally:
        store.close()
    assert f"{len(finished)} attempts finished" in d.page_source.replace("\n", " ")
    shot(d, "overview", tmp_path)

    d.get(base + "/actors")
    row = d.find_element(By.ID, "actor-echo")
    assert row.get_attribute("data-paused") == "false"
    row.find_element(By.CSS_SELECTOR, "button[data-action=pause]").click()
    wait_for(lambda: paused_attr(d) == "true",
             10, "the echo row to show paused")  # fmt: skip
    assert http.get("/api/v1/actors/echo").json()["paused"] is True
    store = http_sup.sup.store()
    try:
        assert store.load_task_states()["echo"].is_paused  # the store holds what the page shows
    finally:
        store.close()
    shot(d, "actors", tmp_path)
    d.find_element(By.ID, "actor-echo").find_element(
        By.CSS_SELECTOR, "button[data-action=resume]"
    ).click()
    wait_for(lambda: paused_attr(d) == "false",
             10, "the echo row to show active again")  # fmt: skip
    assert http.get("/api/v1/actors/echo").json()["paused"] is False

    d.get(base + "/actors/echo")
    table = d.find_element(By.ID, "runs").text
    for run_id in run_ids:
        assert run_id[:12] in table
    assert table.count("succeeded") == 3

    # roll dbcode back to 1.0.0 by clicking (it runs its stored code, so the page offers it)
    for i in range(3):
        http.post("/api/v1/actors/dbcode/runs?wait=30", json={"i": i})
    write_script(http_sup.sup.folder, "dbcode.py", versioned(2))
    assert http_sup.sup.cli("deploy", "dbcode").returncode == 0
    d.get(base + "/actors/dbcode")
    form = d.find_element(By.ID, "rollback")
    assert form.find_element(By.NAME, "to_version").get_attribute("value") == "1.0.0"
    form.find_element(By.CSS_SELECTOR, "button[data-action=rollback]").click()
    wait_for(lambda: http.get("/api/v1/actors/dbcode/versions").json()["versions"][0]["change_type"]
             == "rollback", 10, "the rollback to be recorded")  # fmt: skip
    wait_for(lambda: "rollback to 1.0.0" in d.find_element(By.TAG_NAME, "main").text,
             10, "the actor page to show the rollback")  # fmt: skip
    done = http.post("/api/v1/actors/dbcode/runs?wait=30", json={}).json()
    assert done["output"] == {"version": 1}
    d.get(base + "/actors/dbcode?a=1.0.1&b=1.0.2")  # the rollback undid this change
    assert '-print(json.dumps({"version": 2}))' in d.find_element(By.TAG_NAME, "pre").text
    shot(d, "actor", tmp_path)

    d.get(base + f"/runs/{failed}")
    assert "failed permanent" in d.page_source
    assert "failing on purpose" in d.find_element(By.TAG_NAME, "main").text
    shot(d, "run", tmp_path)

    d.get(base + "/events?actor=echo")
    events = d.find_element(By.ID, "events").text
    assert "actor_paused" in events and "actor_resumed" in events
    d.get(base + "/events")
    shot(d, "events", tmp_path)
    d.get(base + "/events?limit=5")  # newest first, then older pages through the cursor
    newest = d.find_element(By.ID, "events").text
    assert newest.splitlines()[1].split()[3] == "run_succeeded"  # "N s ago run_succeeded ..."
    d.find_element(By.ID, "older").click()
    wait_for(lambda: "cursor=" in d.current_url, 10, "the older page")
    assert d.find_element(By.ID, "events").text != newest


@pytest.mark.timeout(60)
def test_forms_without_csrf_are_refused(http_sup: HttpSupervisor) -> None:
    response = http_sup.http.post("/ui/actors/echo/pause", data={"next": "/actors"})
    assert response.status_code == 403
    assert http_sup.http.get("/api/v1/actors/echo").json()["paused"] is False
    rollback = http_sup.http.post("/ui/actors/dbcode/rollback", data={"to_version": "1.0.0"})
    assert rollback.status_code == 403
    versions = http_sup.http.get("/api/v1/actors/dbcode/versions").json()["versions"]
    assert [v["change_type"] for v in versions] == ["initial"]
