"""A real headless browser (Debian's chromium, driven by Playwright) uses the UI.

It opens the timeline, filters it through the form, opens a record, and sees
the diff and the kubectl command. The screenshots are the README's tour: they
are written to docs/screenshots/ and copied to ci-artifacts/ (the CI output
folder). Playwright never downloads a browser here: it launches
/usr/bin/chromium (apt-get install -y chromium); without it the test skips.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.query_support import BACKUPS, EVENTS, FIXTURES
from tests.ui_support import running_ui, ui_command, wait_for

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "docs" / "screenshots"
ARTIFACTS = REPO / "ci-artifacts" / "ui-screenshots"
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def _log(folder: Path) -> Path:
    for backup in BACKUPS:
        shutil.copy(backup, folder / backup.name)
    shutil.copy(EVENTS, folder / "kube-audit-rest-2026-11-23T08-00-00.000.log")
    active = folder / "kube-audit-rest.log"
    shutil.copy(FIXTURES / "kube-audit-rest.log", active)
    return active


def test_browser_filters_the_timeline_and_reads_a_record(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    log = _log(tmp_path)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    with running_ui(ui_command(log, tmp_path / "index")) as ui, sync_api.sync_playwright() as pw:
        wait_for(lambda: ui.get("/")[2].count('class="record-link"') >= 30)
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(30_000)
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

            page.goto(ui.base + "/")
            assert page.title().startswith("Timeline")
            assert page.locator("a.record-link").count() >= 30
            shots.append(SCREENSHOTS / "timeline.png")
            page.screenshot(path=str(shots[-1]))

            page.fill("#f-namespace", "shop")
            page.fill("#f-resource", "deployments")
            page.fill("#f-name", "web")
            page.click("#apply")
            page.wait_for_url("**/?*namespace=shop*")
            rows = page.locator("#timeline tbody tr")
            texts = rows.all_inner_texts()
            assert texts and all("shop/web" in text for text in texts), texts
            assert any("replicas 2→3" in text for text in texts)
            shots.append(SCREENSHOTS / "timeline-filtered.png")
            page.screenshot(path=str(shots[-1]))

            scale = rows.filter(has_text="apps/deployments/scale").filter(has_text="replicas 2→3")
            scale.locator("a.record-link").click()
            page.wait_for_url("**/record/*")
            assert "replicas 2→3" in page.inner_text("#summary")
            diff = page.inner_text("#diff")
            assert "-  replicas: 2" in diff and "+  replicas: 3" in diff, diff
            assert page.locator("#diff span.add").count() >= 1
            assert "kubectl -n shop scale deployment web --replicas=3" in page.inner_text(
                "#kubectl"
            )
            shots.append(SCREENSHOTS / "record.png")
            page.screenshot(path=str(shots[-1]), full_page=True)

            page.click("#link-object")
            page.wait_for_url("**/?*name=web*")
            assert all(
                "shop/web" in t for t in page.locator("#timeline tbody tr").all_inner_texts()
            )
            # The stylesheet loaded under the CSP, and nothing was blocked.
            assert page.evaluate("getComputedStyle(document.querySelector('header')).color")
            assert errors == [], errors
        finally:
            browser.close()
    for shot in shots:
        assert shot.stat().st_size > 10_000
        shutil.copy(shot, ARTIFACTS / shot.name)
