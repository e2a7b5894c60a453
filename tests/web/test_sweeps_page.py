"""Sweeps on the web page, for real: a real daemon (fake trainer) serving the page, a sweep started from a
template with knob ranges in Chromium, its trials table sorted and its best highlighted, one plot per parameter."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from supervisor.web.token import read_web_url
from tests.support.harness import DaemonProc, fake_env, wait_for, write_config
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.e2e


@pytest.fixture
def web_daemon(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A real daemon with its page on a free port, and a fake-trainer template whose knobs x and y are searched."""
    templates = tmp_path / "templates"
    templates.mkdir()
    base = write_config(templates, "bowl", steps=20, step_time=0.02, ckpt_every=5, val_every=5, x=0.5, y=0.7)
    cfg = yaml.safe_load(base.read_text())
    cfg["ui"] = {"title": "Bowl", "knobs": [
        {"key": "model.init_args.x", "label": "x", "type": "float", "min": 0.0, "max": 1.0},
        {"key": "model.init_args.y", "label": "y", "choices": [0.7, 1.0]},
    ]}
    base.write_text(yaml.safe_dump(cfg))
    state = tmp_path / "state"
    d = DaemonProc(state, templates, fake_env(state))
    d.start("web.enabled=true", "web.port=0", f"web.templates_dir={templates}")
    url = wait_for(lambda: _url(state), what="the web page")
    base_url, _, token = url.partition("#token=")
    yield {"daemon": d, "url": base_url.rstrip("/"), "token": token}
    d.kill()
    d.kill_leftovers()


def _url(state: Path) -> str | None:
    try:
        return read_web_url(state)
    except Exception:
        return None


def test_sweep_routes_refuse_bad_ranges_and_non_knobs(web_daemon: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {web_daemon['token']}"}
    post = lambda body: httpx.post(f"{web_daemon['url']}/api/sweeps", json=body, headers=headers, timeout=60)  # noqa: E731
    base = {"template": "bowl", "method": "random", "metric": "val_loss", "run_cap": 2}
    r = post({**base, "ranges": {"model.init_args.x": {"min": -1.0, "max": 1.0}}})
    assert r.status_code == 422 and "model.init_args.x" in r.json()["error"]["fields"]
    r = post({**base, "ranges": {"python": {"values": ["/bin/sh"]}}})
    assert r.status_code == 422 and r.json()["error"]["fields"] == {"python": "not a knob of template bowl"}
    r = post({**base, "method": "grid", "ranges": {"model.init_args.x": {"min": 0.0, "max": 1.0}}})
    assert r.status_code == 422 and "method grid needs discrete values" in r.json()["error"]["message"]
    assert httpx.get(f"{web_daemon['url']}/api/sweeps", timeout=10).status_code == 401
    assert httpx.get(f"{web_daemon['url']}/api/sweeps", headers=headers, timeout=10).json() == []
    assert httpx.get(f"{web_daemon['url']}/api/sweeps/nope", headers=headers, timeout=10).status_code == 404


def test_start_a_sweep_from_the_page_and_read_its_trials(web_daemon: dict[str, Any], tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    sync_api.expect.set_options(timeout=60_000)  # a loaded 2-core box renders slowly; 5 s raced it
    shots = Path(os.environ.get("ML_SUPERVISOR_SCREENSHOTS") or tmp_path)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.goto(f"{web_daemon['url']}/#token={web_daemon['token']}")
            page.wait_for_selector("#template")  # the launch view has rendered: it cannot overwrite ours later
            page.goto(f"{web_daemon['url']}/#/sweeps/new")
            page.select_option("#sweep-method", "random")
            page.fill("#sweep-run-cap", "4")
            page.fill("#sweep-parallel", "2")
            page.check("input[data-search='model.init_args.x']")
            page.fill("input[data-min='model.init_args.x']", "0")
            page.fill("input[data-max='model.init_args.x']", "1")
            page.check("input[data-search='model.init_args.y']")
            page.click("#start-sweep")
            page.wait_for_url("**/#/sweeps/bowl-sweep-*", timeout=60_000)
            page.wait_for_selector("#sweep-state :text('completed')", timeout=120_000)
            expect = sync_api.expect  # the page's CSP forbids eval: wait_for_function(string) cannot run
            expect(page.locator("[data-testid=trials] tbody tr")).to_have_count(4, timeout=30_000)
            sweep_id = page.url.split("#/sweeps/")[1]
            status = web_daemon["daemon"].client().call("sweep_status", sweep=sweep_id)
            values = sorted(t["value"] for t in status["trials"])
            best_row = page.locator("[data-testid=trials] tr.best")
            assert best_row.count() == 1 and status["best"]["job_id"] in best_row.inner_text()
            page.click("#sort-value")
            expect(page.locator("#sort-value")).to_contain_text("▲")
            shown = [float(v) for v in page.locator("[data-testid=trials] td.value").all_inner_texts()]
            assert shown == pytest.approx(values, rel=1e-3)
            page.click("#sort-value")
            expect(page.locator("#sort-value")).to_contain_text("▼")
            shown = [float(v) for v in page.locator("[data-testid=trials] td.value").all_inner_texts()]
            assert shown == pytest.approx(values[::-1], rel=1e-3)
            for key in ("model.init_args.x", "model.init_args.y"):
                assert page.locator(f"svg[data-param='{key}'] circle").count() == 4
            assert page.locator("svg circle.best").count() == 2  # the best trial in both plots
            page.screenshot(path=str(shots / "sweep.png"), full_page=True)
            link = page.locator("[data-testid=trials] tr.best a")
            link.click()
            page.wait_for_url(f"**/#/jobs/{status['best']['job_id']}")
        finally:
            browser.close()
