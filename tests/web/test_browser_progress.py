"""Progress on the page, in Chromium: the jobs list's bar advancing, the job page's bar with speed and ETA, the
time lost to a fault, and the curve's restart mark and shaded redone span, for a fake-trainer job that SIGKILLs
itself once (a real core in this process, the page served on a real port). Screenshots go to
``$ML_SUPERVISOR_SCREENSHOTS``, else to the test's tmp dir."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS, TOKEN, WebEnv, fake_template

pytestmark = pytest.mark.e2e

STEPS = 200


def test_the_page_shows_progress_eta_and_what_a_restart_cost(make_web: Callable[..., WebEnv], tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    shots = Path(os.environ.get("ML_SUPERVISOR_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    web = make_web(with_template=False)
    template = fake_template("prog", steps=STEPS, step_time=0.05, ckpt_every=20, die_at=120, val_every=10)
    template["trainer"] = {"max_steps": STEPS}
    web.write_template("prog", template)
    answer = web.client.post("/api/launch", json={"template": "prog"})
    assert answer.status_code == 201, answer.text
    job = answer.json()["id"]

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{web.server.url}#token={TOKEN}")
            # at once, while the launch view still waits for its templates: their late answer must not draw over
            # the jobs list (it did, before the launch view checked that it was still the view shown)
            page.evaluate("location.hash = '#/jobs'")

            # the jobs list: the job's bar, whose value grows
            bar = page.locator(f'table.jobs tr:has(a:text-is("{job}")) [role="progressbar"]')

            def value() -> int:
                return int(bar.get_attribute("aria-valuenow") or -1)

            sync_api.expect(bar).to_have_count(1, timeout=30_000)
            page.wait_for_function("""() => {
                const b = document.querySelector('table.jobs [role="progressbar"]');
                return b && Number(b.getAttribute('aria-valuenow')) >= 10; }""", timeout=60_000)
            first = value()
            page.wait_for_function(f"""() => Number(document.querySelector('table.jobs [role="progressbar"]')
                .getAttribute('aria-valuenow')) >= {first + 10}""", timeout=60_000)
            row = page.locator(f'table.jobs tr:has(a:text-is("{job}")) [data-testid="progress"]')
            sync_api.expect(row).to_contain_text("it/s")
            sync_api.expect(row).to_contain_text("ETA")
            page.screenshot(path=str(shots / "jobs-progress.png"))

            # the job page: the same bar and numbers, then the restart on the curve
            page.click(f'a:text-is("{job}")')
            progress = page.locator('[data-field="Progress"] [data-testid="progress"]')
            sync_api.expect(progress).to_contain_text("it/s", timeout=30_000)
            sync_api.expect(page.locator('[data-field="Restarts"]')).to_have_text("1", timeout=60_000)
            mark = page.locator('[data-testid="chart"] svg line.restart-mark')
            sync_api.expect(mark).to_have_count(1, timeout=30_000)
            assert mark.get_attribute("data-attempt") == "2"
            shaded = page.locator('[data-testid="chart"] svg rect.recomputed')
            sync_api.expect(shaded).to_have_count(1)
            status = web.client.get(f"/api/jobs/{job}").json()
            restart = status["progress"]["restarts"][0]
            assert restart["reached_step"] > restart["resumed_step"]  # killed at 120, past its checkpoint at 100
            assert f"redid steps {restart['resumed_step']}–" in shaded.locator("title").text_content()
            lost = page.locator('[data-field="Lost to faults"]')
            sync_api.expect(lost).to_contain_text("steps redone")
            sync_api.expect(lost).to_contain_text("% of the run")
            page.screenshot(path=str(shots / "job-progress.png"), full_page=True)
            web.wait_state(job, "completed", timeout=120)
            sync_api.expect(progress).to_contain_text("100%", timeout=30_000)
            assert progress.locator('[role="progressbar"]').get_attribute("aria-valuenow") == "100"
            assert not errors, errors
        finally:
            browser.close()
