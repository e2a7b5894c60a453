"""``inspect data``, ``inspect model`` and ``tune lr`` on the digits example and on a user's own module.

Real Lightning modules and DataModules, real batches, real PNG files, and W&B
in offline mode read back from the run file. The user's module lives outside
the project: ``inspect_user/usermods.py`` is copied to a temporary folder that
the config names as its ``workdir``.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from trainer_testkit import DIGITS_CONFIG, REPO, trainer_env
from wandb_tables import finished_records, logged_tables

from supervisor.errors import ConfigError
from trainer.inspect import find_lr, inspect_data, inspect_model

pytestmark = pytest.mark.lightning
USERMODS = Path(__file__).resolve().parent / "inspect_user" / "usermods.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # staged table files: ours to read
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def user_config(tmp_path: Path, model: str = "TinyMLP", data_args: dict[str, Any] | None = None,
                model_args: dict[str, Any] | None = None, data: str = "DictData", **extra: Any) -> Path:
    """A job config for the user's module, its workdir a folder outside the project."""
    workdir = tmp_path / "userproject"
    workdir.mkdir(exist_ok=True)
    shutil.copy(USERMODS, workdir / "usermods.py")
    cfg = {
        "name": "user-job",
        "workdir": str(workdir),
        "model": {"class_path": f"usermods.{model}", "init_args": model_args or {}},
        "data": {"class_path": f"usermods.{data}", "init_args": data_args or {}},
        "trainer": {"accelerator": "cpu", "max_epochs": 50, "enable_progress_bar": False},
        "logger": {"wandb": {"mode": "offline", "project": "inspect-tests"}},
        **extra,
    }
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- inspect model ----------------------------------------------------------------------------------

def test_model_digits_params_and_flops_match_the_hand_count() -> None:
    from trainer.examples.digits import DigitsClassifier

    report = inspect_model(str(DIGITS_CONFIG), ["model.init_args.hidden_size=32", "data.init_args.batch_size=16"],
                           cpu=True)
    reference = DigitsClassifier(hidden_size=32)
    assert report.total_params == sum(p.numel() for p in reference.parameters()) == 64 * 32 + 32 + 32 * 10 + 10
    assert report.trainable_params == report.total_params
    assert report.batch_size == 16
    assert report.input_shape == [16, 64] and report.output_shape == [16, 10]
    # two Linear layers: a (B, in) x (in, out) matmul is 2·B·in·out FLOPs; ReLU, dropout, bias not counted
    assert report.flops == 2 * 16 * (64 * 32 + 32 * 10)
    rows = {row.name: row for row in report.layers}
    assert rows["net.0"].type == "Linear" and rows["net.0"].params == 64 * 32 + 32
    assert rows["net.0"].output_shape == [16, 32] and rows["net.0"].flops == 2 * 16 * 64 * 32
    assert rows["net.3"].output_shape == [16, 10]
    assert rows["loss_fn"].output_shape is None  # not called by forward


def test_model_of_a_users_module_with_dict_batches(tmp_path: Path) -> None:
    report = inspect_model(str(user_config(tmp_path, data_args={"batch_size": 6})), cpu=True)
    assert report.input_source == "batch keys: features"
    assert report.total_params == sum(i * o + o for i, o in ((10, 20), (20, 30), (30, 5)))
    assert report.flops == 2 * 6 * (10 * 20 + 20 * 30 + 30 * 5)
    assert report.input_shape == {"features": [6, 10]} and report.output_shape == [6, 5]
    assert [r.name for r in report.layers if r.type == "Linear"] == ["body.0", "body.2", "body.4"]


def test_model_says_what_to_set_when_no_batch_key_fits(tmp_path: Path) -> None:
    config = user_config(tmp_path, model="KeywordOnly")
    with pytest.raises(ConfigError) as caught:
        inspect_model(str(config), cpu=True)
    message = caught.value.message
    assert message.startswith(f"{config}: model: the batch is a dict with keys ['caption', 'features', 'label']")
    assert "set `example_input_array` on the module" in message and "\n" not in message


def test_model_uses_example_input_array_when_the_module_has_one(tmp_path: Path) -> None:
    report = inspect_model(str(user_config(tmp_path, model="WithExample")), cpu=True)
    assert report.input_source == "example_input_array" and report.batch_size == 2
    assert report.flops == 2 * 2 * (10 * 20 + 20 * 30 + 30 * 5)


# -- inspect data -----------------------------------------------------------------------------------

def test_data_digits_grid_counts_and_wandb_table(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = inspect_data(str(DIGITS_CONFIG), split="train", n=12, out=out)
    assert report.shown_as == "images" and report.kinds == {"input": "image", "target": "label"}
    assert report.n == 12
    assert report.batch_shapes == {"input": [64, 64], "target": [64]}
    assert report.dtypes == {"input": "float32", "target": "int64"}
    assert report.num_items == {"train": 1438, "val": 359}
    assert report.label_counts is not None and set(report.label_counts) == {str(d) for d in range(10)}
    assert sum(report.label_counts.values()) == report.num_items["train"] == report.label_counts_items
    # 12 images: 2 rows of 8 cells of 150 px
    assert png_size(out / "samples.png") == (8 * 150, 2 * 150)
    page = (out / "samples.html").read_text()
    assert page.count("<img ") == 12 and "label counts over 1438 train items" in page

    # the table landed in the W&B offline run: a history row pointing at the table file, and the file
    assert report.wandb_run is not None
    (entry,) = logged_tables(Path(report.wandb_run), "samples")
    assert entry["_type"] == "table-file" and entry["nrows"] == 12
    table = entry["table"]
    assert table["columns"] == ["input", "target"]
    assert len(table["data"]) == 12
    assert all(row[0]["_type"] == "image-file" and isinstance(row[1], int) for row in table["data"])
    assert [row[0]["width"] for row in table["data"]] == [8] * 12  # the 64 values drawn as 8×8 images
    assert 1 <= len(entry["images"]) <= 12 and all(png_size(p) == (8, 8) for p in entry["images"])


def test_data_val_split(tmp_path: Path) -> None:
    report = inspect_data(str(DIGITS_CONFIG), split="val", n=3, out=tmp_path, log_wandb=False)
    assert report.label_counts is not None and sum(report.label_counts.values()) == 359
    assert png_size(tmp_path / "samples.png") == (3 * 150, 150)
    assert report.wandb_run is None


def test_data_of_dict_batches_without_labels_is_a_table(tmp_path: Path) -> None:
    config = user_config(tmp_path, data_args={"labels": False, "batch_size": 4})
    report = inspect_data(str(config), n=5, out=tmp_path / "out", log_wandb=False)
    assert report.label_counts is None
    assert report.shown_as == "table"
    assert report.kinds == {"features": "values", "caption": "text"}
    assert report.batch_shapes == {"features": [4, 10], "caption": [4]}
    assert report.n == 5 and report.num_items == {"train": 90, "val": 30}
    width, height = png_size(tmp_path / "out" / "samples.png")
    assert width > 0 and height > 0
    page = (tmp_path / "out" / "samples.html").read_text()
    assert page.count("item number") == 5 and "no class labels" in page


def test_data_of_dict_batches_with_labels_counts_them(tmp_path: Path) -> None:
    report = inspect_data(str(user_config(tmp_path)), n=4, out=tmp_path / "out", log_wandb=False)
    assert report.kinds["label"] == "label"
    assert report.label_counts == {"0": 30, "1": 30, "2": 30}


def test_data_of_colour_images_with_and_without_labels(tmp_path: Path) -> None:
    report = inspect_data(str(user_config(tmp_path, data="ShapeData")), n=10, out=tmp_path / "a")
    assert report.kinds == {"input": "image", "target": "label"} and report.shown_as == "images"
    assert report.batch_shapes["input"] == [8, 3, 12, 12]
    assert report.label_counts == {"0": 10, "1": 10, "2": 10, "3": 10}
    assert png_size(tmp_path / "a" / "samples.png") == (8 * 150, 2 * 150)
    assert report.wandb_run is not None
    (entry,) = logged_tables(Path(report.wandb_run), "samples")
    assert [row[0]["width"] for row in entry["table"]["data"]] == [12] * 10
    assert all(png_size(p) == (12, 12) for p in entry["images"])

    alone = inspect_data(str(user_config(tmp_path, data="ShapeData", data_args={"labels": False})), n=3,
                         out=tmp_path / "b", log_wandb=False)
    assert alone.kinds == {"input": "image"} and alone.label_counts is None
    assert png_size(tmp_path / "b" / "samples.png") == (3 * 150, 150)


# -- tune lr ----------------------------------------------------------------------------------------

# the suggestion rules and --verify: test_lr_rules.py (synthetic curves), test_lr_lightning.py (real fits)

def test_lr_find_without_enough_points_says_why_and_still_plots(tmp_path: Path) -> None:
    report = find_lr(str(user_config(tmp_path)), cpu=True, out=tmp_path, steps=6)
    assert report.suggested_lr is None and report.override is None
    assert report.reason is not None and "recorded 6 points" in report.reason
    assert png_size(Path(report.plot))[0] > 0


def test_lr_find_needs_an_lr_attribute(tmp_path: Path) -> None:
    config = user_config(tmp_path, model="NoLrMLP")
    with pytest.raises(ConfigError) as caught:
        find_lr(str(config), cpu=True, out=tmp_path)
    assert caught.value.message.startswith(f"{config}: model: NoLrMLP exposes no `lr` or `learning_rate`")


def test_onnx_export_is_saved_in_the_wandb_run(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx", reason="the onnx package is not installed (pip install '.[onnx]')")
    path = tmp_path / "model" / "digits.onnx"
    report = inspect_model(str(DIGITS_CONFIG), ["data.init_args.batch_size=4"], cpu=True, onnx=path)
    assert report.onnx == str(path)
    graph = onnx.load(str(path)).graph
    onnx.checker.check_model(onnx.load(str(path)))
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == [4, 64]
    assert report.wandb_run is not None
    records = finished_records(Path(report.wandb_run))
    saved = [f.path for r in records if r.WhichOneof("record_type") == "files" for f in r.files.files]
    assert "digits.onnx" in saved


# -- the command line -------------------------------------------------------------------------------

def test_ml_supervisor_inspect_model_json_under_the_jobs_python(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "supervisor.cli.main", "inspect", "model", str(DIGITS_CONFIG),
                           "data.init_args.batch_size=8", "--json", "--cpu"],
                          cwd=tmp_path, env=trainer_env(PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # stdout holds exactly the one object
    assert report["batch_size"] == 8 and report["flops"] == 2 * 8 * (64 * 128 + 128 * 10)
    assert report["total_params"] == 64 * 128 + 128 + 128 * 10 + 10
    assert {"name", "type", "params"} <= set(report["layers"][0])


def test_ml_supervisor_inspect_bad_config_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "supervisor.cli.main", "inspect", "data", str(DIGITS_CONFIG),
                           "model.init_args.hiden_size=3"],
                          cwd=tmp_path, env=trainer_env(PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"{DIGITS_CONFIG}: model.init_args.hiden_size: not an argument of "
                                   "DigitsClassifier")
