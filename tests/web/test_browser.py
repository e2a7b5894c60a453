"""The page in a real browser (Debian's chromium driven by Playwright) launching the real digits template
with the real trainer (Lightning on CPU, W&B offline): queued -> running -> completed.

Screenshots of the pages go to ``$ML_SUPERVISOR_SCREENSHOTS`` (docs/screenshots/ when refreshing the
docs), else to the test's tmp dir.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from supervisor.api.ops import Operations
from supervisor.gpu.backend import FakeNvmlBackend
from supervisor.gpu.health import GpuThresholds
from supervisor.gpu.monitor import GpuMonitor
from supervisor.jobfiles.layout import JobLayout
from supervisor.web.app import create_app
from supervisor.web.server import WebServer
from tests.support.harness import REPO
from tests.support.resume_oracle import resume_for
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS, RUN_TIMEOUT_MS, TOKEN, start_supervisor, stop_supervisor

pytestmark = pytest.mark.e2e



@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A real supervisor running the real trainer, the templates of configs/, served on a free port."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("ML_SUPERVISOR_HEARTBEAT_INTERVAL", "0.3")  # more points on the live curve
    sup = start_supervisor(tmp_path / "state", "trainer")
    ops = Operations(sup)
    # No NVML at first; the test later switches to a GPU monitor over the simulated NVML file.
    gpu_source: dict[str, Callable[[], list[dict[str, Any]] | None]] = {"list": lambda: None}
    server = WebServer(create_app(ops, token=TOKEN, templates_dir=REPO / "configs",
                                  gpus=lambda: gpu_source["list"]()), "127.0.0.1", 0)
    server.start()
    try:
        yield {"ops": ops, "url": server.url, "gpu_source": gpu_source}
    finally:
        server.stop()
        stop_supervisor(sup)


def simulated_gpus(tmp_path: Path) -> Callable[[], list[dict[str, Any]]]:
    """``supervisorctl gpus --json`` entries from a real ``GpuMonitor`` over the simulated NVML file:
    two GPUs, one running hot."""
    nvml = tmp_path / "nvml.json"
    readings = [(1210, 46), (40213, 88)]  # (memory used MiB, temperature C)
    gpus = [{"index": i, "uuid": f"GPU-fake-{i}", "name": "Fake H100", "memory_total_mib": 81559,
             "memory_used_mib": used, "temperature_c": temp} for i, (used, temp) in enumerate(readings)]
    # the hot one also runs slow: half clocks, thermal slowdown, a narrowed PCIe link (a straggler's GPU)
    gpus[1].update(sm_clock_mhz=990, sm_clock_max_mhz=1980, throttle_reasons=["hw_thermal_slowdown"], pcie_gen=5,
                   pcie_gen_max=5, pcie_width=8, pcie_width_max=16)
    nvml.write_text(json.dumps({"gpus": gpus}))
    monitor = GpuMonitor(FakeNvmlBackend(nvml), tmp_path / "quarantine.json", GpuThresholds(), lambda event: None)
    monitor.poll()
    return lambda: [status.as_dict() for status in monitor.snapshot()]


def test_launch_digits_from_the_page_and_watch_it_complete(served: dict[str, Any], tmp_path: Path) -> None:
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
            console_errors: list[str] = []
            # (the browser also logs each refused request it was asked to make; those are expected)
            page.on("console", lambda m: console_errors.append(m.text)
                    if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))

            # The token rides in the fragment; the page moves it into sessionStorage and out of the address.
            page.goto(f"{url}#token={TOKEN}")
            page.wait_for_selector("#template")
            assert TOKEN not in page.url
            page.select_option("#template", "digits")
            page.wait_for_selector("#knob-model-init_args-lr")
            assert page.input_value("#knob-trainer-max_epochs") == "10"  # the template's own value

            # A value outside the declared range: the server's answer shows next to the field.
            page.fill("#knob-trainer-max_epochs", "0")
            page.click("#start")
            error = page.locator('[data-error-for="trainer.max_epochs"]')
            sync_api.expect(error).to_have_text("must be at least 1; got 0")
            assert ops.op_list() == []

            page.select_option("#knob-model-init_args-lr", label="0.01")
            page.fill("#knob-trainer-max_epochs", "2")
            page.screenshot(path=str(shots / "launch.png"), full_page=True)
            page.click("#start")

            page.wait_for_url("**/#/jobs/digits-*", timeout=RUN_TIMEOUT_MS)
            job_id = page.url.split("#/jobs/")[1]
            state = page.locator('h1 + [data-testid="state"]')
            sync_api.expect(state).to_have_text("running", timeout=RUN_TIMEOUT_MS)
            frozen = OmegaConf.load(JobLayout(Path(ops.op_status(job_id)["job_dir"])).config)
            assert frozen.model.init_args.lr == 0.01 and frozen.trainer.max_epochs == 2
            assert frozen.model.class_path == "trainer.examples.digits.DigitsClassifier"

            sync_api.expect(state).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
            status = ops.op_status(job_id)
            assert status["state"] == "completed" and status["end_reason"] == "finished"
            # the page shows what the daemon knows: the curve, the attempt, the best checkpoint, the log
            sync_api.expect(page.locator('[data-testid="chart"] svg path')).to_have_count(1)
            sync_api.expect(page.locator("table.attempts tbody tr")).to_have_count(1)
            sync_api.expect(page.locator("table.attempts tbody tr td").nth(4)).to_have_text("completed")
            best = Path(status["best_checkpoint"]["path"]).name
            sync_api.expect(page.locator('[data-field="Best checkpoint"]')).to_contain_text(best)
            sync_api.expect(page.locator('[data-testid="log"]')).to_contain_text("attempt 1")
            assert page.locator("#stop").is_disabled()
            _check_events_log_and_wandb(page, sync_api, status)
            page.screenshot(path=str(shots / "job.png"), full_page=True)

            # Restart from the page: a second attempt, resumed from the best checkpoint, on the timeline.
            page.on("dialog", lambda dialog: dialog.accept())
            page.click("#restart")
            second = page.locator("table.attempts tbody tr").nth(1)
            sync_api.expect(second.locator("td").nth(4)).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
            sync_api.expect(second.locator("td").nth(6)).to_have_text(best)
            sync_api.expect(page.locator(".timeline .seg")).to_have_count(2)
            manifest = JobLayout(Path(status["job_dir"])).manifest  # the best by the tests' own rule
            assert ops.op_status(job_id)["attempts"][1]["resumed_from"] == resume_for(manifest, 2)
            page.screenshot(path=str(shots / "job-restarted.png"), full_page=True)

            page.goto(f"{url}#/jobs")
            sync_api.expect(page.locator('table.jobs tbody tr [data-testid="state"]')).to_have_text("completed")
            sync_api.expect(page.locator('[data-testid="gpus"]')).to_contain_text("no GPUs")
            served["gpu_source"]["list"] = simulated_gpus(tmp_path)
            sync_api.expect(page.locator('[data-testid="gpus"] .gpu')).to_have_count(2, timeout=20_000)  # polled
            sync_api.expect(page.locator(".gpu.health-degraded")).to_contain_text("temperature")
            slow = page.locator('.gpu.health-degraded [data-testid="gpu-performance"]')
            sync_api.expect(slow).to_contain_text("990/1980 MHz")
            sync_api.expect(slow).to_contain_text("PCIe gen5 x8 (max gen5 x16)")
            sync_api.expect(slow).to_contain_text("throttled: hw_thermal_slowdown")
            page.screenshot(path=str(shots / "jobs.png"), full_page=True)

            # From the same page: a request without the token is refused, and so is one naming a class_path.
            no_token = page.evaluate("fetch('/api/jobs').then(r => r.status)")
            assert no_token == 401
            crafted = page.evaluate("""token => fetch('/api/launch', {method: 'POST',
                headers: {'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json'},
                body: JSON.stringify({template: 'digits', values: {'model.class_path': 'os.system'}})})
                .then(async r => [r.status, await r.json()])""", TOKEN)
            assert crafted[0] == 400 and crafted[1]["error"]["code"] == "not_a_knob"

            # A cross-site form cannot start a run: it cannot set the header the token must travel in.
            attacker = browser.new_page()
            attacker.set_content(
                f'<form method="post" action="{url}api/launch" enctype="text/plain">'
                f"<input name='{json.dumps({'template': 'digits', 'values': {}, 'pad': ''})[:-2]}' value='\"}}'>"
                "</form>")
            with attacker.expect_response(f"{url}api/launch") as answer:
                attacker.evaluate("document.forms[0].submit()")
            assert answer.value.status == 401
            assert [j["id"] for j in ops.op_list()] == [job_id]
            assert console_errors == [], console_errors
        finally:
            browser.close()


def _check_events_log_and_wandb(page: Any, sync_api: Any, status: dict[str, Any]) -> None:
    """The job page after a real Lightning fit: one event line per checkpoint step naming its files,
    Lightning's start-up chatter hidden from the log tail unless asked for, and the `wandb sync` command."""
    lines = page.locator("ol.events li").all_inner_texts()
    saved = [line for line in lines if "checkpoint at step" in line]
    steps = [re.search(r"checkpoint at step (\d+)", line)[1] for line in saved]  # type: ignore[index]
    assert saved and len(steps) == len(set(steps)), lines
    assert any(line.endswith("(top-3, last)") for line in saved), saved  # digits.yaml: save_top_k 3, save_last

    log = page.locator('[data-testid="log"]')
    sync_api.expect(log).to_contain_text("attempt 1")
    sync_api.expect(log).not_to_contain_text("GPU available:")
    sync_api.expect(page.locator("#log-hidden")).to_contain_text("start-up lines hidden")
    page.check("#log-all")
    sync_api.expect(log).to_contain_text("GPU available:")
    page.uncheck("#log-all")
    sync_api.expect(log).not_to_contain_text("GPU available:")

    command = page.locator("#wandb-sync").inner_text()
    assert command == status["wandb"]["sync_command"]
    program, verb, pattern = shlex.split(command)
    assert (program, verb) == ("wandb", "sync")
    runs = glob.glob(pattern)  # what the shell will hand to wandb sync: the job's real offline run dirs
    assert any(run.endswith(f"-{status['wandb']['run_id']}") for run in runs), (pattern, runs)
