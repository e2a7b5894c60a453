"""The page's jobs list, a page at a time (issue 35), in Chromium: the active jobs with their progress bars,
then the finished ones 50 at a time, the latest to end first, with Older / Newer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.api.ops import Operations
from supervisor.core import Supervisor
from supervisor.web.app import create_app
from supervisor.web.server import WebServer
from tests.support.harness import REPO
from tests.unit.clone_jobs import clone_jobs, read_seeds
from tests.unit.inprocess_core import core_factory
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS, TOKEN

pytestmark = pytest.mark.e2e


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """123 finished jobs (3 the core ran, 120 copies of them) and one that runs, served on a free port."""
    opened: list[Supervisor] = []
    open_core = core_factory(tmp_path, monkeypatch, opened)
    core = open_core()
    seeds = [core.run_job(checkpoints=2) for _ in range(3)]
    running = core.submit()
    core.start(running)
    runner = core.runner
    core.sup.close()
    clone_jobs(core.sup.state_dir, read_seeds(core.sup.state_dir / "supervisor.db", seeds), 120, files=False)
    core = open_core(runner)
    ops = Operations(core.sup)
    server = WebServer(create_app(ops, token=TOKEN, templates_dir=REPO / "configs"), "127.0.0.1", 0)
    server.start()
    try:
        yield {"url": server.url, "ops": ops, "running": running}
    finally:
        server.stop()
        for sup in opened:
            sup.close()


def test_the_jobs_list_pages_through_finished_jobs(served: dict[str, Any]) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    expect = sync_api.expect
    newest_first = [j["id"] for j in served["ops"].op_list()[1:]]
    assert len(newest_first) == 123

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{served['url']}#token={TOKEN}")
            page.evaluate("location.hash = '#/jobs'")
            rows = page.locator('[data-testid="jobs"] tbody tr')
            expect(rows).to_have_count(1 + 50)
            expect(page.get_by_test_id("page-range")).to_have_text("finished jobs 1–50 of 123")
            first = rows.nth(0)
            expect(first).to_contain_text(served["running"])  # the active job first, with its bar
            expect(first.get_by_test_id("progress")).to_have_count(1)
            expect(rows.nth(1)).to_contain_text(newest_first[0])
            expect(rows.nth(1).get_by_test_id("finished")).to_contain_text("finished")
            expect(page.get_by_test_id("newer")).to_be_disabled()

            page.get_by_test_id("older").click()
            expect(page.get_by_test_id("page-range")).to_have_text("finished jobs 51–100 of 123")
            expect(rows.nth(1)).to_contain_text(newest_first[50])
            page.get_by_test_id("older").click()
            expect(page.get_by_test_id("page-range")).to_have_text("finished jobs 101–123 of 123")
            expect(rows).to_have_count(1 + 23)
            expect(rows.nth(23)).to_contain_text(newest_first[-1])
            expect(page.get_by_test_id("older")).to_be_disabled()
            page.get_by_test_id("newer").click()
            expect(page.get_by_test_id("page-range")).to_have_text("finished jobs 51–100 of 123")
            assert errors == []
        finally:
            browser.close()
