"""The launch page's Inspect actions (``POST /api/inspect``) and the job page's profiler report route.

Inspections run the real ``python -m trainer inspect`` in a child process on the
digits example, as a template with knobs; the daemon side (this process's app)
never imports torch.
"""

from __future__ import annotations

import base64
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from supervisor.jobfiles.layout import JobLayout
from supervisor.web.inspect import InspectFailed, Inspector
from tests.support.harness import REPO
from tests.web.conftest import WebEnv

DIGITS = REPO / "configs" / "digits.yaml"


def digits_template() -> dict[str, Any]:
    cfg = yaml.safe_load(DIGITS.read_text())
    cfg["ui"] = {"title": "Digits", "knobs": [
        {"key": "model.init_args.hidden_size", "label": "Hidden size", "choices": [32, 128]},
        {"key": "data.init_args.batch_size", "label": "Batch size", "choices": [16, 64]},
    ]}
    return cfg


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.lightning
class _CountingSubprocess:
    """``supervisor.web.inspect``'s view of ``subprocess``, counting the processes it starts."""

    def __init__(self) -> None:
        self.started: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def Popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        self.started.append(args[0] if args else kwargs.get("args"))
        return subprocess.Popen(*args, **kwargs)


def test_inspect_model_and_data_for_the_chosen_knob_values_cached(make_web: Callable[..., WebEnv],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    children = _CountingSubprocess()
    monkeypatch.setattr("supervisor.web.inspect.subprocess", children)
    web = make_web(with_template=False)
    web.write_template("digits", digits_template())
    body = {"template": "digits", "values": {"model.init_args.hidden_size": 32, "data.init_args.batch_size": 16},
            "what": "model"}
    answer = web.client.post("/api/inspect", json=body, timeout=240)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["cached"] is False and result["what"] == "model"
    report = result["report"]
    assert report["flops"] == 2 * 16 * (64 * 32 + 32 * 10) and report["batch_size"] == 16
    assert report["total_params"] == 64 * 32 + 32 + 32 * 10 + 10 and report["device"] == "cpu"
    assert len(children.started) == 1

    again = web.client.post("/api/inspect", json=body).json()
    assert again["cached"] is True and again["report"] == report
    assert len(children.started) == 1  # no child process this time

    data = web.client.post("/api/inspect", json={**body, "what": "data"}, timeout=240).json()
    assert data["report"]["label_counts"] is not None and data["report"]["shown_as"] == "images"
    prefix = "data:image/png;base64,"
    assert data["image"].startswith(prefix)
    assert png_size(base64.b64decode(data["image"][len(prefix):])) == (8 * 150, 2 * 150)  # 16 images, 8 a row


@pytest.mark.lightning
def test_inspect_lr_gives_every_rules_rate_and_the_plot(make_web: Callable[..., WebEnv]) -> None:
    web = make_web(with_template=False)
    web.write_template("digits", digits_template())
    body = {"template": "digits", "values": {"model.init_args.hidden_size": 32}, "what": "lr"}
    answer = web.client.post("/api/inspect", json=body, timeout=240)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    report = result["report"]
    assert [s["rule"] for s in report["suggestions"]] == ["valley", "steepest_descent", "minimum_div_10", "lightning"]
    assert report["suggested_lr"] is not None and report["default_rule"] is not None
    assert report["override"] == f"model.init_args.lr={report['suggested_lr']:.3g}"
    assert report["config_lr"] == 0.003 and report["verify"] is None and report["plot"] == "lr_find.png"
    prefix = "data:image/png;base64,"
    assert result["image"].startswith(prefix)
    assert png_size(base64.b64decode(result["image"][len(prefix):])) == (960, 560)


def test_inspect_refuses_values_outside_the_knobs(make_web: Callable[..., WebEnv]) -> None:
    web = make_web(with_template=False)
    web.write_template("digits", digits_template())
    answer = web.client.post("/api/inspect", json={"template": "digits", "what": "model",
                                                   "values": {"model.init_args.hidden_size": 33}})
    assert answer.status_code == 422
    assert set(answer.json()["error"]["fields"]) == {"model.init_args.hidden_size"}
    answer = web.client.post("/api/inspect", json={"template": "digits", "what": "model",
                                                   "values": {"model.class_path": "os.system"}})
    assert answer.status_code == 422 and "model.class_path" in answer.json()["error"]["fields"]
    assert web.client.post("/api/inspect", json={"template": "digits", "what": "weights"}).status_code == 400
    assert web.client.post("/api/inspect", json={"template": "nope", "what": "data"}).status_code == 404


def test_an_inspection_past_its_timeout_is_killed_with_its_children(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    template = tmp_path / "digits.yaml"
    template.write_text(yaml.safe_dump(digits_template()))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(InspectFailed, match=r"did not finish within 1s"):
        Inspector(timeout=1.0).inspect(template, [], "model", tmp_path)
    assert {p.pid for p in psutil.Process().children(recursive=True)} == before


def test_profile_route_serves_the_attempts_reports(web: WebEnv) -> None:
    job = web.client.post("/api/launch", json={"template": "fake", "values": {"model.init_args.steps": 5}}).json()
    web.wait_state(job["id"], "completed")
    attempt_dir = JobLayout(Path(job["job_dir"])).attempt(1).dir
    assert web.client.get(f"/api/jobs/{job['id']}/profile").json() == {"attempt": 1, "files": []}
    # what trainer/profiling.py has Lightning write (the real writer is tested in tests/trainer)
    (attempt_dir / "fit-profile.txt").write_text("FIT Profiler Report\nrun_training_epoch  1.0\n")
    answer = web.client.get(f"/api/jobs/{job['id']}/profile", params={"attempt": 1}).json()
    assert answer["files"] == [{"name": "fit-profile.txt", "size": 44, "truncated": False,
                                "text": "FIT Profiler Report\nrun_training_epoch  1.0\n"}]
    assert web.client.get(f"/api/jobs/{job['id']}/profile", params={"attempt": 7}).json()["files"] == []
