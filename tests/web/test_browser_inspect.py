"""The launch page's Inspect actions and the job page's profiler report, in a real browser (Debian's chromium
driven by Playwright), on the real digits template with the real trainer (Lightning on CPU, W&B offline).

Screenshots go to ``$ML_SUPERVISOR_SCREENSHOTS`` (docs/screenshots/ when refreshing the docs), else to the
test's tmp dir.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.api.ops import Operations
from supervisor.web.app import create_app
from supervisor.web.server import WebServer
from tests.support.harness import REPO
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS, RUN_TIMEOUT_MS, TOKEN, start_supervisor, stop_supervisor

pytestmark = pytest.mark.e2e



@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    sup = start_supervisor(tmp_path / "state", "trainer")
    ops = Operations(sup)
    server = WebServer(create_app(ops, token=TOKEN, templates_dir=REPO / "configs"), "127.0.0.1", 0)
    server.start()
    try:
        yield {"ops": ops, "url": server.url}
    finally:
        server.stop()
        stop_supervisor(sup)


def test_inspect_before_start_then_the_profiler_report_on_the_job_page(served: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    sync_api.expect.set_options(timeout=60_000)  # a loaded 2-core box renders slowly; 5 s raced it
    shots = Path(os.environ.get("ML_SUPERVISOR_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    url, ops = served["url"], served["ops"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}#token={TOKEN}")
            page.wait_for_selector("#template")
            page.select_option("#template", "digits")
            page.select_option("#knob-model-init_args-hidden_size", label="32")
            page.select_option("#knob-data-init_args-batch_size", label="32")

            page.click("#inspect-model")
            table = page.locator('[data-testid="model-table"] tbody tr')
            sync_api.expect(table).to_have_count(6, timeout=RUN_TIMEOUT_MS)  # net, 4 layers, loss_fn
            sync_api.expect(table.nth(1)).to_contain_text("Linear")
            # 2·32·(64·32 + 32·10) = 151,552 FLOPs for the two Linear layers, with the chosen knob values
            sync_api.expect(page.locator('[data-testid="model-totals"]')).to_contain_text(
                "151.6 KFLOPs for one forward of a batch of 32")

            page.click("#inspect-data")
            image = page.locator('[data-testid="samples-image"]')
            sync_api.expect(image).to_be_visible(timeout=RUN_TIMEOUT_MS)
            assert image.evaluate("img => img.naturalWidth") == 8 * 150  # 16 digits, 8 a row of 150 px
            sync_api.expect(page.locator(".inspect-out ul.facts")).to_contain_text("train 1438")
            page.screenshot(path=str(shots / "launch-inspect.png"), full_page=True)

            page.click("#inspect-lr")  # the finder's rules: four rates and the config's, the plot
            rows = page.locator('[data-testid="lr-table"] tbody tr')
            sync_api.expect(rows).to_have_count(5, timeout=RUN_TIMEOUT_MS)
            sync_api.expect(page.locator('[data-testid="lr-suggestion"]')).to_contain_text("Suggested learning rate")
            sync_api.expect(page.locator('[data-testid="lr-table"] tr.default')).to_have_count(1)
            assert page.locator('[data-testid="lr-plot"]').evaluate("img => img.naturalWidth") == 960
            page.screenshot(path=str(shots / "launch-inspect-lr.png"), full_page=True)
            assert ops.op_list() == []  # looking starts no job

            page.select_option("#knob-trainer-profiler", label="simple")
            page.fill("#knob-trainer-max_epochs", "1")
            page.click("#start")
            page.wait_for_url("**/#/jobs/digits-*", timeout=RUN_TIMEOUT_MS)
            state = page.locator('h1 + [data-testid="state"]')
            sync_api.expect(state).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
            report = page.locator('[data-testid="profile-text"]')
            sync_api.expect(report).to_contain_text("Profiler Report", timeout=30_000)
            sync_api.expect(page.locator("#profile h2")).to_have_text("Profiler report · attempt 1")
            page.screenshot(path=str(shots / "job-profile.png"), full_page=True)
            assert errors == [], errors
        finally:
            browser.close()
