"""The Airflow UI in a real browser: Playwright driving Debian's Chromium, headless, against the real stack.

Logs in, finds the model's DAGs, triggers the ingest DAG from its trigger form (once on a good batch, once
on a broken one), sees the first run succeed, opens the failed task's log and follows its Runbook link.
Screenshots of every step are kept in ``test-artifacts/browser/`` (``AIRLOOP_ARTIFACTS`` moves it).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import pytest
from airloop_local import stack

from airloop.sources import nycflights13
from airloop.storage import DataRoot
from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = os.environ.get("AIRLOOP_CHROMIUM", "/usr/bin/chromium")
GOOD, BAD = dt.date(2013, 6, 20), dt.date(2013, 6, 21)
DAG_ID = "flight_delays__ingest"


SHOTS_DIR = Path(os.environ.get("AIRLOOP_ARTIFACTS", REPO / "test-artifacts")) / "browser"


@pytest.fixture(scope="module")
def shots() -> Path:
    shutil.rmtree(SHOTS_DIR, ignore_errors=True)
    SHOTS_DIR.mkdir(parents=True)
    return SHOTS_DIR


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/install-browser.sh (Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


def _trigger(page, base_url: str, day: dt.date, source_uri: str, run_id: str) -> None:
    """Trigger the ingest DAG from its form for the interval of ``day``: the logical date of a manual run
    is the end of its data interval, so it is set to the next midnight (the default, now, lies after the
    replayed feed's end date and would make a run without tasks)."""
    page.goto(f"{base_url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_test_id("datetime-input").click()
    end = day + dt.timedelta(days=1)
    page.get_by_placeholder("YYYY/MM/DD").fill(end.strftime("%Y/%m/%d"))
    page.get_by_placeholder("HH:mm").fill("00:00")
    dialog.get_by_text("Trigger Dag").click()  # closes the date picker
    dialog.get_by_test_id("datetime-input").get_by_text(f"{end:%b %d, %Y} 00:00").wait_for()
    dialog.locator("#element_source_uri").fill(source_uri)
    dialog.get_by_role("button", name="Advanced Options").click()
    dialog.locator("input[name=dagRunId]").fill(run_id)
    page.screenshot(path=SHOTS_DIR / f"trigger-{run_id.split('_')[1]}.png")
    dialog.get_by_role("button", name="Trigger", exact=True).click()
    dialog.wait_for(state="hidden", timeout=30_000)


def _wait_state(api, run_id: str, timeout_s: float = 600) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        if state in ("success", "failed"):
            return state
        time.sleep(3)
    raise AssertionError(f"{run_id} did not finish in {timeout_s} s")


def test_login_find_trigger_succeed_and_follow_a_failed_tasks_runbook(running_stack, browser, shots, cfg):
    s, api = running_stack
    root = DataRoot(s.data_root)
    nycflights13.replay_days(
        root, cfg.name, [GOOD, BAD], file_name=cfg.source.file_name, corruptions={BAD: "out_of_range"}
    )
    api.wait_for_dag(DAG_ID)
    api.unpause(DAG_ID)
    tag = uuid.uuid4().hex[:6]
    good_run, bad_run = f"ui_good_{tag}", f"ui_bad_{tag}"

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(30_000)
    # 1. log in through the simple auth manager's form
    page.goto(f"{s.base_url}/")
    page.locator("input[name=username]").fill("admin")
    page.locator("input[name=password]").fill(stack.admin_password(s))
    page.screenshot(path=shots / "01-login.png")
    page.get_by_role("button", name=re.compile("sign in", re.I)).click()
    page.wait_for_url(re.compile(r"/$"))

    # 2. the model's DAGs, found by search; each renders its doc
    page.goto(f"{s.base_url}/dags?search=flight_delays")
    for verb in ("ingest", "release", "features", "train", "deploy", "drift", "rollback"):
        page.get_by_role("link", name=f"flight_delays__{verb}", exact=True).first.wait_for()
    page.screenshot(path=shots / "02-dags.png", full_page=True)
    page.goto(f"{s.base_url}/dags/{DAG_ID}")
    page.get_by_role("button", name=re.compile("Dag Docs", re.I)).click()
    docs = page.get_by_role("dialog")
    docs.get_by_text("flight_delays: ingest and validate one batch").wait_for()
    docs.get_by_text("On call").first.wait_for()
    page.screenshot(path=shots / "02b-dag-docs.png")
    page.keyboard.press("Escape")
    docs.wait_for(state="hidden")

    # 3. trigger from the UI's form (logical date, source_uri param, own run id): a good batch succeeds...
    _trigger(page, s.base_url, GOOD, f"{s.data_root}/landing/{cfg.name}/ds={GOOD}/flights.csv", good_run)
    _trigger(page, s.base_url, BAD, f"{s.data_root}/landing/{cfg.name}/ds={BAD}/flights.csv", bad_run)
    page.screenshot(path=shots / "03-triggered.png", full_page=True)
    assert _wait_state(api, good_run) == "success"
    tis = {t["task_id"]: t["state"] for t in api.task_instances(DAG_ID, good_run)}
    assert tis == {"ingest_batch": "success", "validate_batch": "success"}
    run = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{good_run}")
    assert (run["data_interval_start"][:10], run["conf"]["source_uri"].endswith(f"ds={GOOD}/flights.csv")) == (
        str(GOOD),
        True,
    )
    page.goto(f"{s.base_url}/dags/{DAG_ID}/runs/{good_run}")
    page.get_by_text("Success").first.wait_for()
    page.screenshot(path=shots / "04-run-succeeded.png", full_page=True)

    # 4. ...a broken one fails at the gate: its log says why, its Runbook link says what to do
    assert _wait_state(api, bad_run) == "failed"
    tis = {t["task_id"]: (t["state"], t["try_number"]) for t in api.task_instances(DAG_ID, bad_run)}
    assert tis == {"ingest_batch": ("success", 1), "validate_batch": ("failed", 1)}
    page.goto(f"{s.base_url}/dags/{DAG_ID}/runs/{bad_run}/tasks/validate_batch")
    page.get_by_text("failed validation").first.wait_for()
    page.screenshot(path=shots / "05-failed-task-log.png", full_page=True)
    page.goto(f"{s.base_url}/dags/{DAG_ID}/runs/{bad_run}/tasks/validate_batch/details")
    page.get_by_role("link", name="Validation report").wait_for()
    page.get_by_role("link", name="Runbook").click()
    page.wait_for_url(re.compile(r"/airloop/runbooks/batch_quarantined$"))
    page.get_by_text("airloop quarantine release").first.wait_for()
    page.screenshot(path=shots / "06-runbook.png", full_page=True)
    assert len(list(shots.glob("*.png"))) == 9
