"""The HTTP API over a real supervisor (fake trainer processes), through a real HTTP server."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi.routing import APIRoute

from supervisor.jobfiles.layout import JobLayout
from tests.support.harness import wait_for
from tests.support.resume_oracle import best_not_newest, best_of
from tests.web.conftest import TOKEN, WebEnv, fake_template

GPU = {"index": 0, "uuid": "GPU-1234", "name": "NVIDIA H100 80GB HBM3", "health": "degraded",
       "reasons": ["temperature 88 C"], "jobs": ["digits-abc123"], "temperature_c": 88,
       "memory_used_mib": 1024, "memory_total_mib": 81559, "processes": [], "quarantined_since": None}


def _launch(web: WebEnv, values: dict[str, Any] | None = None, **body: Any) -> httpx.Response:
    return web.client.post("/api/launch", json={"template": "fake", "values": values or {}, **body})


def _protected_routes(web: WebEnv) -> list[tuple[str, str]]:
    """Every (method, path) the app serves but the page's shell, path parameters filled in."""
    routes = []
    for route in web.server.app.routes:
        if isinstance(route, APIRoute) and route.path != "/":
            path = re.sub(r"\{[^}]+\}", "some-job", route.path)
            routes.extend((method, path) for method in sorted(route.methods))
    return routes


def test_every_api_route_refuses_a_request_without_the_right_token(web: WebEnv) -> None:
    routes = _protected_routes(web)
    assert len(routes) >= 14 and ("POST", "/api/launch") in routes and ("GET", "/metrics") in routes
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong-" + TOKEN[6:]}, {"X-Auth-Token": TOKEN[:-1]},
                        {"Authorization": TOKEN}, {"Cookie": f"token={TOKEN}"}):
            answer = web.anon.request(method, path, headers=headers, json={"template": "fake"})
            assert answer.status_code == 401, (method, path, headers, answer.text)
            assert answer.json()["error"]["code"] == "unauthorized"
            assert answer.headers["www-authenticate"] == "Bearer"
        # the token in the query string is not accepted either: it would end up in logs and histories
        assert web.anon.request(method, path, params={"token": TOKEN}).status_code == 401
    assert web.anon.get("/api/ping", headers={"X-Auth-Token": TOKEN}).status_code == 200
    assert web.anon.get("/api/ping", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    assert web.ops.op_list() == []  # nothing was launched by the refused requests


def test_the_page_shell_needs_no_token_and_carries_a_strict_policy(web: WebEnv) -> None:
    page = web.anon.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js">' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    script = web.anon.get("/static/app.js")
    assert script.status_code == 200 and "Authorization" in script.text
    assert web.anon.get("/static/../templates.py").status_code == 404


def test_launch_with_a_changed_value_runs_the_job_with_that_value(web: WebEnv) -> None:
    answer = _launch(web, {"model.init_args.steps": 30, "model.init_args.step_time": 0.05}, name="web-run")
    assert answer.status_code == 201, answer.text
    job = answer.json()
    assert job["name"] == "web-run" and job["state"] == "queued"
    assert job["config_source"] == str(web.templates / "fake.yaml")
    layout = JobLayout(Path(job["job_dir"]))
    frozen = layout.config.read_text()
    assert "steps: 30" in frozen and "step_time: 0.05" in frozen and "class_path: fake.Model" in frozen
    submitted = json.loads((layout.root / "submitted.json").read_text())
    assert "model.init_args.steps=30" in submitted["overrides"]
    final = web.wait_state(job["id"], "completed", "failed", "stopped")
    assert final["state"] == "completed" and final["global_step"] == 30
    assert final["best_checkpoint"]["path"] == best_of(final["job_dir"])  # step 25: step 30 scores worse
    assert final["best_checkpoint"]["step"] == 25

    history = web.client.get(f"/api/jobs/{job['id']}/history").json()
    assert [(a["n"], a["reason"], a["resumed_from"]) for a in history] == [(1, "completed", None)]
    events = web.client.get(f"/api/jobs/{job['id']}/events").json()
    assert events[0]["kind"] == "submitted" and events[-1]["data"]["end_reason"] == "finished"
    later = web.client.get(f"/api/jobs/{job['id']}/events", params={"after": events[-2]["id"]}).json()
    assert [e["id"] for e in later] == [events[-1]["id"]]
    assert web.client.get("/api/events").json()[-1]["id"] == events[-1]["id"]

    logs = web.client.get(f"/api/jobs/{job['id']}/logs").json()
    assert logs["attempt"] == 1 and "fake trainer attempt 1 from step 0" in logs["stdout"]
    tail = web.client.get(f"/api/jobs/{job['id']}/logs", params={"tail": 10}).json()
    assert tail["stdout"] == logs["stdout"][-10:] and tail["offsets"] == logs["offsets"]

    listed = web.client.get("/api/jobs").json()
    assert [j["id"] for j in listed] == [job["id"]]
    text = web.client.get("/metrics").text
    assert f'ml_supervisor_job_state{{job="{job["id"]}",name="web-run",state="completed"}} 1' in text
    assert 'ml_supervisor_jobs{state="completed"} 1' in text


def test_the_curve_route_reads_each_attempts_metrics_incrementally(web: WebEnv) -> None:
    job = _launch(web, {"model.init_args.steps": 5}).json()
    web.wait_state(job["id"], "completed")
    metrics = JobLayout(Path(job["job_dir"])).attempt(1).metrics
    # The fake trainer writes no metrics.jsonl; lines in the trainer's format stand in for its heartbeats.
    metrics.write_text('{"time": 1.0, "step": 1, "epoch": 0, "metrics": {"train_loss": 2.5}}\n'
                       '{"time": 2.0, "step": 2, "epoch": 0, "metrics": {"train_loss": 2.1}}\n')
    first = web.client.get(f"/api/jobs/{job['id']}/metrics").json()
    assert [(p["attempt"], p["step"], p["metrics"]) for p in first["points"]] == [
        (1, 1, {"train_loss": 2.5}), (1, 2, {"train_loss": 2.1})]
    assert first["cursor"] == {"attempt": 1, "offset": metrics.stat().st_size} and first["more"] is False
    with metrics.open("a") as f:
        f.write('{"time": 3.0, "step": 3, "epoch": 1, "metrics": {"train_loss": 1.7}}\n{"time": 4.0, "st')
    again = web.client.get(f"/api/jobs/{job['id']}/metrics", params=first["cursor"]).json()
    assert [p["step"] for p in again["points"]] == [3]  # the half-written line waits for its end


def test_a_request_naming_a_class_path_or_a_config_is_refused_and_starts_nothing(web: WebEnv) -> None:
    answer = _launch(web, {"model.class_path": "os.system"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "not_a_knob"
    assert error["fields"] == {"model.class_path": "a class_path cannot be set from the web page"}
    for key in ("python", "env.LD_PRELOAD", "workdir", "trainer.max_epochs"):
        assert _launch(web, {key: "x"}).status_code == 400
    for extra in ({"config_path": "/etc/passwd"}, {"python": "/bin/sh"}, {"overrides": ["model.class_path=os.x"]},
                  {"config_text": "name: x"}, {"cwd": "/"}):
        answer = _launch(web, {}, **extra)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "bad_request", extra
        assert "Extra inputs are not permitted" in answer.json()["error"]["message"]
    for name in ("../fake", "fake.yaml", "/etc/passwd", "missing"):
        answer = web.client.post("/api/launch", json={"template": name})
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "template_not_found", name
    assert web.client.post("/api/launch", content=b"not json",
                           headers={"Content-Type": "application/json"}).status_code == 400
    assert web.ops.op_list() == []
    assert list((web.sup.jobs_dir).iterdir()) == []


def test_values_outside_the_declared_choices_and_ranges_come_back_per_field(web: WebEnv) -> None:
    answer = _launch(web, {"model.init_args.steps": 0, "supervision.budget": "1y",
                           "checkpoint.filename": "../../x", "model.init_args.step_time": "0.01"})
    assert answer.status_code == 422
    fields = answer.json()["error"]["fields"]
    assert fields["model.init_args.steps"] == "must be at least 1; got 0"
    assert fields["supervision.budget"] == 'must be one of "5m", "1h", "24h"; got "1y"'
    assert fields["model.init_args.step_time"] == 'must be one of 0.01, 0.05, 0.2; got "0.01"'
    assert "is not allowed here" in fields["checkpoint.filename"]
    assert web.ops.op_list() == []


def test_submit_validation_errors_are_shown_next_to_their_field(web: WebEnv) -> None:
    # A choice the template offers but the job schema refuses: the same validation as `supervisorctl submit`.
    web.write_template("odd", fake_template("odd", knobs=[
        {"key": "supervision.budget", "label": "Budget", "choices": ["1h", "forever"]},
        {"key": "model.init_args.check_error", "choices": [None, "cannot import fake.Model"]}]))
    answer = web.client.post("/api/launch", json={"template": "odd", "values": {"supervision.budget": "forever"}})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "config_invalid"
    assert error["message"].startswith(f"{web.templates / 'odd.yaml'}: supervision.budget: ")
    assert set(error["fields"]) == {"supervision.budget"}
    assert "(set on the command line)" not in error["fields"]["supervision.budget"]

    answer = web.client.post("/api/launch", json={"template": "odd", "values": {}, "name": "bad name!"})
    assert answer.status_code == 422 and set(answer.json()["error"]["fields"]) == {"name"}

    # the import check (the trainer's `--check` in a subprocess) fails: a form-level error
    answer = web.client.post("/api/launch", json={"template": "odd", "values": {
        "model.init_args.check_error": "cannot import fake.Model"}})
    assert answer.status_code == 422
    assert answer.json()["error"]["fields"] == {}
    assert "cannot import fake.Model" in answer.json()["error"]["message"]
    assert web.ops.op_list() == []


def test_templates_are_listed_with_their_knobs_and_an_invalid_one_cannot_be_launched(web: WebEnv) -> None:
    broken = fake_template("broken")
    broken["supervision"]["max_restarts"] = -1
    web.write_template("broken", broken)
    listed = {t["name"]: t for t in web.client.get("/api/templates").json()}
    assert set(listed) == {"fake", "broken"}
    assert listed["fake"]["error"] is None and listed["fake"]["title"] == "Fake trainer"
    steps = next(k for k in listed["fake"]["knobs"] if k["key"] == "model.init_args.steps")
    assert steps == {"key": "model.init_args.steps", "label": "Steps", "type": "int", "default": 20, "choices": [],
                     "labels": [], "min": 1, "max": 100000, "step": None, "pattern": None, "help": None}
    assert "supervision.max_restarts: must be at least 0" in listed["broken"]["error"]
    answer = web.client.post("/api/launch", json={"template": "broken"})
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "template_invalid"


def test_stop_and_restart_from_the_page(web: WebEnv) -> None:
    job = _launch(web, {"model.init_args.steps": 100000, "model.init_args.step_time": 0.05}).json()
    wait_for(lambda: web.client.get(f"/api/jobs/{job['id']}").json()["global_step"] >= 6, what="a checkpoint")
    answer = web.client.post(f"/api/jobs/{job['id']}/stop")
    assert answer.status_code == 200 and answer.json()["state"] in ("stopping", "stopped")
    final = web.wait_state(job["id"], "stopped", "completed", "failed")
    assert final["state"] == "stopped" and final["end_reason"] == "user"
    again = web.client.post(f"/api/jobs/{job['id']}/stop")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_transition"
    restarted = web.client.post(f"/api/jobs/{job['id']}/restart")
    assert restarted.status_code == 200 and restarted.json()["state"] == "queued"
    running = web.wait_state(job["id"], "running")
    # it continues from its best checkpoint, not the newest (the signal save the stop made)
    n = running["attempts"][-1]["n"]
    assert running["attempts"][-1]["resumed_from"] == best_not_newest(running["job_dir"], n)
    web.client.post(f"/api/jobs/{job['id']}/stop")
    web.wait_state(job["id"], "stopped")


def test_an_unknown_job_is_a_404(web: WebEnv) -> None:
    for path in ("/api/jobs/nope", "/api/jobs/nope/history", "/api/jobs/nope/logs", "/api/jobs/nope/metrics"):
        answer = web.client.get(path)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "job_not_found", path
    assert web.client.post("/api/jobs/nope/stop").status_code == 404


def test_gpu_panel_and_metrics_with_and_without_nvml(make_web: Callable[..., WebEnv]) -> None:
    web = make_web(gpus=[GPU])
    assert web.client.get("/api/gpus").json() == {"nvml": True, "gpus": [GPU]}
    text = web.client.get("/metrics").text
    assert "ml_supervisor_nvml_up 1" in text
    assert 'ml_supervisor_gpu_health{gpu="0",UUID="GPU-1234",health="degraded"} 1' in text
    assert 'ml_supervisor_gpu_health{gpu="0",UUID="GPU-1234",health="healthy"} 0' in text
    assert f'ml_supervisor_gpu_memory_total_bytes{{gpu="0",UUID="GPU-1234"}} {81559 * 1024 * 1024}' in text


def test_no_nvml_means_no_gpus(make_web: Callable[..., WebEnv]) -> None:
    web = make_web(gpus=None)
    assert web.client.get("/api/gpus").json() == {"nvml": False, "gpus": []}
    assert "ml_supervisor_nvml_up 0" in web.client.get("/metrics").text


def test_the_job_view_says_how_to_upload_offline_runs_and_links_online_ones(web: WebEnv) -> None:
    offline = fake_template("offline")
    offline["logger"] = {"wandb": {"mode": "offline", "project": "p"}}
    offline["checkpoint"] = {"save_top_k": 3, "save_last": True}
    online = fake_template("online")
    online["logger"] = {"wandb": {"mode": "online", "project": "p", "entity": "team"}}
    web.write_template("offline", offline)
    web.write_template("online", online)

    job = web.client.post("/api/launch", json={"template": "offline", "values": {}}).json()
    view = web.wait_state(job["id"], "completed")
    wandb = view["wandb"]
    assert wandb["url"] is None and wandb["alerts_url"] is None
    assert wandb["sync_command"] == f"wandb sync {Path(wandb['dir']) / 'wandb'}/offline-run-*"
    assert view["checkpointing"] == {"monitor": None, "mode": "min", "save_top_k": 3, "save_last": True,
                                     "every_n_train_steps": None}

    job = web.client.post("/api/launch", json={"template": "online", "values": {}}).json()
    wandb = web.wait_state(job["id"], "completed")["wandb"]
    run = f"https://wandb.ai/team/p/runs/{wandb['run_id']}"
    assert (wandb["url"], wandb["alerts_url"]) == (run, f"{run}-supervisor")
    # no offline run fell back on disk: nothing to sync
    assert wandb["sync_command"] is None
