"""The profile pages as a person sees them: a real ``badgestream api`` process, a real headless Chromium.

Chromium is Debian's (``deploy/install-system-deps.sh`` installs it), driven by Playwright with
``executable_path`` (Playwright's own browser download is not used). In CI a browser that cannot
start fails the test instead of skipping it. Screenshots go to var/test-artifacts/ and their paths
are printed, so a reviewer can look at what was checked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from deploy.kafka.broker import free_port
from streams import db
from tests.conftest import unavailable
from tests.functional.api_data import CATALOG, award, fill

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "var" / "test-artifacts"
CHROMIUM = os.environ.get("BADGESTREAM_CHROMIUM", "/usr/bin/chromium")


def _serve_api(tmp_path: Path, database_url: str) -> Iterator[str]:
    """``badgestream api`` as its own process over ``database_url``, explaining with the database's catalog."""
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(CATALOG))
    port = free_port()
    env = {**os.environ, "BADGESTREAM_DATABASE_URL": database_url, "BADGESTREAM_API_CACHE_TTL_S": "0",
           "BADGESTREAM_CATALOG_PATH": str(catalog)}
    env.pop("BADGESTREAM_API_TOKEN", None)
    env.pop("BADGESTREAM_WORKER_URL", None)
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "api", "--port", str(port)], env=env, cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"badgestream api did not come up: {(tmp_path / 'api.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API over the read API tests' database (``api_data``); stopped afterwards."""
    tmp_path = tmp_path_factory.mktemp("api")
    database_url = f"sqlite:///{tmp_path / 'awards.db'}"
    fill(database_url).dispose()
    yield from _serve_api(tmp_path, database_url)


@pytest.fixture(scope="module")
def profile_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same database where u-1 has also earned silver, recruiter a second time and the level Regular."""
    tmp_path = tmp_path_factory.mktemp("profile")
    database_url = f"sqlite:///{tmp_path / 'awards.db'}"
    engine = fill(database_url)
    with engine.begin() as conn:
        db.write_records(conn, [award("u-1", "quiz_master", "silver", days=6, points=20),
                                award("u-1", "recruiter", occurrence=2, days=7, points=5),
                                award("u-1", "regular", days=7)], [])
    engine.dispose()
    yield from _serve_api(tmp_path, database_url)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import Error, sync_playwright

    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        unavailable(f"Chromium ({CHROMIUM}; run deploy/install-system-deps.sh)")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        except Error as exc:
            unavailable(f"a headless Chromium ({exc})")
        yield chromium
        chromium.close()


def shoot(page: object, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    print(f"screenshot: {path}")
    return path


def test_a_profile_page_shows_earned_badges_progress_and_never_an_unearned_hidden_badge(
    api_url: str, browser: object
) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})  # type: ignore[attr-defined]
    page.goto(f"{api_url}/users/u-1")
    earned = page.locator("section[aria-labelledby=earned] li h3").all_inner_texts()
    assert [" ".join(text.split()) for text in earned] == ["First Quiz", "Quiz Master BRONZE", "Recruiter"]
    assert page.get_by_text("Earned 2026-11-21").is_visible()
    assert page.get_by_text("Held by 75% of users").is_visible()
    progress = page.locator("section[aria-labelledby=in-progress] ul.cards > li")
    assert progress.count() == 2
    assert page.get_by_text("13 to go").is_visible() and page.get_by_text("37 of 50").is_visible()
    assert page.get_by_text("2 to go").is_visible()
    assert page.locator("section[aria-labelledby=in-progress] progress").first.get_attribute("max") == "5"
    # How to earn, in words, on the cards under way.
    assert page.get_by_text("2 more different quiz id values in quiz completed events").is_visible()
    assert page.get_by_text("13 more quiz completed events for silver").is_visible()
    body = page.locator("body").inner_text()
    assert "Secret Society" not in body  # hidden and not earned
    assert "35 points" in body and "15 points to Regular" in body
    # Readable on a phone: nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shoot(page, "profile-u-1")

    page.goto(f"{api_url}/users/nobody")
    locked = page.locator("section[aria-labelledby=locked] li h3").all_inner_texts()
    assert locked == ["Explorer", "First Quiz", "Quiz Master"]
    assert page.get_by_text("No badges yet.").is_visible()
    how = page.locator("section[aria-labelledby=locked] li[data-badge=first_quiz] .how li").all_inner_texts()
    assert how == ["1 more quiz completed event"]
    shoot(page, "profile-nobody")


def test_tiers_and_repeats_are_one_card_and_the_level_is_a_bar(profile_url: str, browser: object) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})  # type: ignore[attr-defined]
    page.goto(f"{profile_url}/users/u-1")
    earned = page.locator("section[aria-labelledby=earned] li h3").all_inner_texts()
    assert [" ".join(text.split()) for text in earned] == ["First Quiz", "Quiz Master BRONZE SILVER",
                                                           "Recruiter \u00d72"]
    level = page.locator("section[aria-labelledby=level]")
    assert "Level Regular · 60 points" in " ".join(level.inner_text().split())
    assert level.get_by_text("40 points to Expert").is_visible()
    bar = level.locator("progress")
    assert (bar.get_attribute("max"), bar.get_attribute("value")) == ("50", "10")  # 10 of the 50 from Regular to Expert
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shoot(page, "profile-u-1-grouped")


def test_the_front_page_shows_the_leaderboard_and_the_visible_badges(api_url: str, browser: object) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})  # type: ignore[attr-defined]
    page.goto(api_url + "/")
    rows = page.locator("section[aria-labelledby=leaderboard] tbody tr").all_inner_texts()
    assert [row.split() for row in rows] == [["1", "u-1", "3"], ["2", "u-2", "2"], ["3", "u-3", "1"]]
    badges = page.locator("section[aria-labelledby=all-badges] li h3").all_inner_texts()
    assert badges == ["Explorer", "First Quiz", "Quiz Master"]
    assert "Recruiter" not in page.locator("body").inner_text()
    assert page.get_by_text("3 holders · 75% of users").is_visible()
    assert page.get_by_role("link", name="All time").get_attribute("aria-current") == "page"
    page.get_by_role("link", name="This month").click()
    page.wait_for_url(f"{api_url}/?period=month")
    assert page.get_by_role("link", name="This month").get_attribute("aria-current") == "page"
    assert page.get_by_role("link", name="All time").get_attribute("aria-current") is None
    shoot(page, "front-page-this-month")
    page.get_by_role("link", name="All time").click()
    page.wait_for_url(f"{api_url}/?period=all")
    page.get_by_role("link", name="u-2").first.click()
    page.wait_for_url(f"{api_url}/users/u-2")
    assert page.locator("h1").inner_text() == "u-2"
    shoot(page, "front-page")
