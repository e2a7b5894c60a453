"""The job config loader: every bad config gets its one exact line; good configs load whole."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from supervisor.config import load_job_config, parse_job_config, to_yaml
from supervisor.config.schema import DEFAULT_ALERTS
from supervisor.errors import ConfigError

BASE = "name: digits\nmodel: {class_path: pkg.models.Net}\ndata: {class_path: pkg.data.Digits}\n"
ALERTS = "restart, hang, gpu_fault, failed, budget, completed, stopped, reboot, straggler, resize"
CLI = " (set on the command line)"

# id, YAML text, overrides, expected message after "<file>: "
BAD = [
    # --- the file itself
    ("invalid-yaml-flow", "name: j\nmodel: [1, 2\n", [],
     "invalid YAML at line 3, column 1: expected ',' or ']', but got '<stream end>'"),
    ("invalid-yaml-indent", "name: j\n  bad: indent\n", [],
     "invalid YAML at line 2, column 6: mapping values are not allowed here"),
    ("invalid-yaml-tab", "name: j\n\tmodel: x\n", [],
     "invalid YAML at line 2, column 1: found character '\\t' that cannot start any token"),
    ("duplicate-key", BASE + "trainer: {max_epochs: 3, max_epochs: 4}\n", [],
     "invalid YAML at line 4, column 26: duplicate key 'max_epochs'"),
    ("duplicate-section", BASE + "name: other\n", [], "invalid YAML at line 4, column 1: duplicate key 'name'"),
    ("top-level-list", "- a\n- b\n", [], "the top level must be a mapping of sections, got list"),
    ("top-level-scalar", "hello\n", [], "the top level must be a mapping of sections, got str"),
    # --- keys
    ("unknown-top-level-key", BASE + "nme: x\n", [], "nme: unknown key"),
    ("unknown-nested-key", BASE + "supervision: {max_restart: 3}\n", [], "supervision.max_restart: unknown key"),
    ("unknown-deep-key", BASE + "logger: {wandb: {projekt: x}}\n", [], "logger.wandb.projekt: unknown key"),
    ("missing-name", "model: {class_path: a.B}\ndata: {class_path: a.D}\n", [], "name: is required"),
    ("empty-file", "", [], "name: is required"),
    ("missing-model-class-path", "name: j\ndata: {class_path: a.D}\n", [], "model.class_path: is required"),
    ("model-without-class-path", "name: j\nmodel: {init_args: {a: 1}}\ndata: {class_path: a.D}\n", [],
     "model.class_path: is required"),
    ("extra-callback-without-class-path", BASE + "callbacks: {extra: [{init_args: {}}]}\n", [],
     "callbacks.extra[0].class_path: is required"),
    # --- types
    ("int-expected", BASE + "supervision: {max_restarts: many}\n", [],
     "supervision.max_restarts: Value 'many' of type 'str' could not be converted to Integer"),
    ("int-expected-got-float", BASE + "supervision: {max_restarts: 2.5}\n", [],
     "supervision.max_restarts: Value '2.5' of type 'float' could not be converted to Integer"),
    ("bool-expected", BASE + "checkpoint: {save_last: maybe}\n", [],
     "checkpoint.save_last: Value 'maybe' is not a valid bool (type str)"),
    ("list-expected", BASE + "supervision: {alerts: restart}\n", [], "supervision.alerts: must be a list, got str"),
    ("list-expected-tags", BASE + "logger: {wandb: {tags: x}}\n", [], "logger.wandb.tags: must be a list, got str"),
    ("list-expected-extra", BASE + "callbacks: {extra: {class_path: a.B}}\n", [],
     "callbacks.extra: must be a list, got dict"),
    ("section-expected", BASE + "supervision: 5\n", [], "supervision: must be a mapping (a section), got int"),
    ("nested-section-expected", BASE + "supervision: {backoff: 5}\n", [],
     "supervision.backoff: must be a mapping (a section), got int"),
    ("model-as-string", "name: j\nmodel: pkg.Net\ndata: {class_path: a.D}\n", [],
     "model: must be a mapping (a section), got str"),
    ("mapping-expected-trainer", BASE + "trainer: [1]\n", [], "trainer: must be a mapping, got list"),
    ("mapping-expected-env", BASE + "env: [A]\n", [], "env: must be a mapping, got list"),
    ("mapping-expected-init-args", BASE.replace("pkg.models.Net}", "pkg.models.Net, init_args: [1]}"), [],
     "model.init_args: must be a mapping, got list"),
    ("mapping-expected-extra-item", BASE + "callbacks: {extra: [5]}\n", [],
     "callbacks.extra[0]: must be a mapping, got int"),
    ("env-value-list", BASE + "env: {A: [1, 2]}\n", [], "env.A: must be a single value, got a list"),
    ("tag-mapping", BASE + "logger: {wandb: {tags: [{a: 1}]}}\n", [],
     "logger.wandb.tags[0]: must be a single value, got a mapping"),
    # --- durations and ranges
    ("bad-duration", BASE + "supervision: {restart_window: soon}\n", [],
     "supervision.restart_window: expected a duration like 30s, 90m or 24h, got 'soon'"),
    ("bad-duration-hang-timeout", BASE + "supervision: {hang_timeout: sometimes}\n", [],
     "supervision.hang_timeout: expected a duration like 30s, 90m or 24h, got 'sometimes'"),
    ("bad-duration-checkpoint-interval", BASE + "checkpoint: {train_time_interval: often}\n", [],
     "checkpoint.train_time_interval: expected a duration like 30s, 90m or 24h, got 'often'"),
    ("negative-duration", BASE + "supervision: {stop_grace: -5}\n", [],
     "supervision.stop_grace: expected a non-negative duration, got '-5'"),
    ("budget-zero", BASE + "supervision: {budget: 0s}\n", [], "supervision.budget: must be longer than zero"),
    ("budget-negative", BASE + "supervision: {budget: -1h}\n", [],
     "supervision.budget: expected a duration like 30s, 90m or 24h, got '-1h'"),
    ("negative-max-restarts", BASE + "supervision: {max_restarts: -1}\n", [],
     "supervision.max_restarts: must be at least 0; got -1"),
    ("zero-no-progress-attempts", BASE + "supervision: {no_progress_attempts: 0}\n", [],
     "supervision.no_progress_attempts: must be at least 1; got 0"),
    ("negative-gpus", BASE + "supervision: {gpus: -1}\n", [], "supervision.gpus: must be at least 0; got -1"),
    ("backoff-factor-below-one", BASE + "supervision: {backoff: {factor: 0.5}}\n", [],
     "supervision.backoff.factor: must be at least 1.0; got 0.5"),
    ("save-top-k", BASE + "checkpoint: {save_top_k: -2}\n", [], "checkpoint.save_top_k: must be at least -1; got -2"),
    ("negative-patience", BASE + "callbacks: {early_stopping: {patience: -1}}\n", [],
     "callbacks.early_stopping.patience: must be at least 0; got -1"),
    # --- choices
    ("bad-resume-from", BASE + "supervision: {resume_from: newest}\n", [],
     "supervision.resume_from: must be one of best, last, auto; got 'newest'"),
    ("bad-checkpoint-mode", BASE + "checkpoint: {mode: lowest}\n", [],
     "checkpoint.mode: must be one of min, max; got 'lowest'"),
    ("bad-early-stopping-mode", BASE + "callbacks: {early_stopping: {mode: up}}\n", [],
     "callbacks.early_stopping.mode: must be one of min, max; got 'up'"),
    ("bad-wandb-mode", BASE + "logger: {wandb: {mode: cloud}}\n", [],
     "logger.wandb.mode: must be one of online, offline, disabled; got 'cloud'"),
    ("bad-watch", BASE + "logger: {wandb: {watch: weights}}\n", [],
     "logger.wandb.watch: must be one of gradients, parameters, all, none; got 'weights'"),
    ("bad-alert", BASE + "supervision: {alerts: [restart, explode]}\n", [],
     f"supervision.alerts[1]: must be one of {ALERTS}; got 'explode'"),
    # --- the rest
    ("class-path-not-dotted", "name: j\nmodel: {class_path: MyModel}\ndata: {class_path: a.D}\n", [],
     "model.class_path: 'MyModel' is not a dotted path like package.module.ClassName"),
    ("data-class-path-empty-part", "name: j\nmodel: {class_path: a.B}\ndata: {class_path: 'a..D'}\n", [],
     "data.class_path: 'a..D' is not a dotted path like package.module.ClassName"),
    ("extra-callback-not-dotted", BASE + "callbacks: {extra: [{class_path: Foo}]}\n", [],
     "callbacks.extra[0].class_path: 'Foo' is not a dotted path"),
    ("bad-name", "name: 'my job'\nmodel: {class_path: a.B}\ndata: {class_path: a.D}\n", [],
     "name: must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"),
    ("two-checkpoint-triggers", BASE + "checkpoint: {every_n_train_steps: 100, every_n_epochs: 1}\n", [],
     "checkpoint.every_n_epochs: set only one of every_n_train_steps, train_time_interval, every_n_epochs "
     "(also set: every_n_train_steps)"),
    ("bad-env-name-digit", BASE + "env: {1BAD: x}\n", [], "env.1BAD: is not a valid environment variable name"),
    ("bad-env-name-dash", BASE + "env: {A-B: x}\n", [], "env.A-B: is not a valid environment variable name"),
    ("unresolvable-interpolation", BASE + "trainer: {max_epochs: '${nope.x}'}\n", [],
     "trainer.max_epochs: cannot resolve interpolation: Interpolation key 'nope.x' not found"),
    ("recursive-interpolation", BASE + "trainer: {a: '${trainer.a}'}\n", [],
     "trainer.a: cannot resolve interpolation: Recursive interpolation detected"),
    ("unset-env-var", BASE + "env: {X: '${oc.env:ML_SUPERVISOR_TEST_SURELY_UNSET}'}\n", [],
     "env.X: cannot resolve interpolation: KeyError raised while resolving interpolation: "
     "\"Environment variable 'ML_SUPERVISOR_TEST_SURELY_UNSET' not found\""),
    # --- overrides
    ("override-without-equals", BASE, ["trainer.max_epochs"], "override 'trainer.max_epochs' must look like key=value"),
    ("override-without-key", BASE, ["=5"], "override '=5' must look like key=value"),
    ("override-delete-unsupported", BASE, ["~trainer"], "override '~trainer' must look like key=value"),
    ("override-unparsable-value", BASE, ["trainer.x=[1,2"],
     "trainer.x: cannot parse the value '[1,2': did not find expected ',' or ']'" + CLI),
    ("override-unknown-key", BASE, ["supervision.max_restart=3"], "supervision.max_restart: unknown key" + CLI),
    ("override-unknown-top-level", BASE, ["foo=1"], "foo: unknown key" + CLI),
    ("override-wrong-type", BASE, ["supervision.max_restarts=abc"],
     "supervision.max_restarts: Value 'abc' of type 'str' could not be converted to Integer" + CLI),
    ("override-section-scalar", BASE, ["supervision=3"], "supervision: must be a mapping (a section), got int" + CLI),
    ("override-mapping-with-list", BASE, ["trainer=[1]"], "trainer: must be a mapping, got list" + CLI),
    ("override-list-expected", BASE, ["supervision.alerts=restart"],
     "supervision.alerts: must be a list, got str" + CLI),
    ("override-bad-duration", BASE, ["supervision.budget=soon"],
     "supervision.budget: expected a duration like 30s, 90m or 24h, got 'soon'" + CLI),
    ("override-bad-choice", BASE, ["supervision.resume_from=x"],
     "supervision.resume_from: must be one of best, last, auto; got 'x'" + CLI),
    ("override-negative", BASE, ["supervision.max_restarts=-1"],
     "supervision.max_restarts: must be at least 0; got -1" + CLI),
    ("override-bad-name", BASE, ["name=bad name"],
     "name: must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit" + CLI),
    ("override-bad-env-name", BASE, ["env.1X=3"], "env.1X: is not a valid environment variable name" + CLI),
    ("override-unresolvable", BASE, ["trainer.max_epochs=${nope}"],
     "trainer.max_epochs: cannot resolve interpolation: Interpolation key 'nope' not found" + CLI),
    ("override-second-trigger", BASE + "checkpoint: {every_n_epochs: 1}\n", ["checkpoint.every_n_train_steps=5"],
     "checkpoint.every_n_train_steps: set only one of every_n_train_steps, train_time_interval, every_n_epochs "
     "(also set: every_n_epochs)" + CLI),
    ("override-both-triggers", BASE, ["checkpoint.every_n_epochs=1", "checkpoint.every_n_train_steps=5"],
     "checkpoint.every_n_train_steps: set only one of every_n_train_steps, train_time_interval, every_n_epochs "
     "(also set: every_n_epochs)" + CLI),
    ("two-triggers-file-and-override-agree", BASE + "checkpoint: {train_time_interval: 10m}\n",
     ["checkpoint.every_n_epochs=2"],
     "checkpoint.every_n_epochs: set only one of every_n_train_steps, train_time_interval, every_n_epochs "
     "(also set: train_time_interval)" + CLI),
    ("override-fixes-nothing-in-file", BASE + "supervision: {max_restarts: -3}\n", ["trainer.max_epochs=2"],
     "supervision.max_restarts: must be at least 0; got -3"),
]


@pytest.mark.parametrize(("text", "overrides", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config_is_one_exact_line(tmp_path: Path, text: str, overrides: list[str], expected: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_job_config(path, overrides)
    message = str(info.value)
    assert message == f"{path}: {expected}"
    assert "\n" not in message and "Traceback" not in message
    assert info.value.code == "config_invalid" and info.value.exit_status == 2


def test_every_table_case_is_distinct() -> None:
    assert len({c[0] for c in BAD}) == len(BAD)
    assert len({(c[1], tuple(c[2])) for c in BAD}) == len(BAD)


@pytest.mark.parametrize("make", ["missing", "directory", "not-utf8"])
def test_unreadable_file(tmp_path: Path, make: str) -> None:
    path = tmp_path / "job.yaml"
    expected = {
        "missing": "cannot read the file: No such file or directory",
        "directory": "cannot read the file: Is a directory",
        "not-utf8": "cannot read the file: not UTF-8 text (byte 0xe9 at offset 9)",
    }[make]
    if make == "directory":
        path.mkdir()
    elif make == "not-utf8":
        path.write_bytes(b"name: caf\xe9\xff\n")
    with pytest.raises(ConfigError) as info:
        load_job_config(path)
    assert str(info.value) == f"{path}: {expected}"


def _as_nobody(call: Callable[[], str]) -> str:
    """``call()`` in a forked child that runs as ``nobody`` (file permissions do not stop root's reads)."""
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, answer on the pipe, never return into pytest
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            os.write(write_end, call().encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        text = answer.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, text
    return text


def test_unreadable_permissions(tmp_path: Path) -> None:
    """Run as ``nobody`` where the suite runs as root (CI does): root reads any file."""
    shared = Path(tempfile.mkdtemp(prefix="mlsv-perm-", dir="/tmp"))  # tmp_path's parents are root's 0700
    try:
        shared.chmod(0o755)
        path = shared / "job.yaml"
        path.write_text(BASE)
        path.chmod(0)

        def load() -> str:
            try:
                load_job_config(path)
            except ConfigError as exc:
                return str(exc)
            return "loaded"

        said = _as_nobody(load) if os.geteuid() == 0 else load()
        assert said == f"{path}: cannot read the file: Permission denied"
    finally:
        shutil.rmtree(shared, ignore_errors=True)


# --- good configs

def test_defaults_are_filled(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(BASE)
    cfg = load_job_config(path)
    assert isinstance(cfg, DictConfig)
    assert cfg.name == "digits" and cfg.model.class_path == "pkg.models.Net" and dict(cfg.model.init_args) == {}
    assert cfg.supervision.budget is None
    assert cfg.supervision.max_restarts == 10 and cfg.supervision.restart_window == "1h"
    assert cfg.supervision.backoff.initial == "10s" and cfg.supervision.backoff.factor == 2.0
    assert cfg.supervision.resume_from == "best" and cfg.supervision.no_progress_attempts == 3
    assert list(cfg.supervision.alerts) == DEFAULT_ALERTS
    assert cfg.checkpoint.save_top_k == 3 and cfg.checkpoint.save_last is True
    assert cfg.logger.wandb.mode == "online" and cfg.logger.wandb.run_id is None


def test_overrides_merge_on_top(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(BASE + "trainer: {max_epochs: 3, accelerator: cpu}\nsupervision: {budget: 1h, max_restarts: 2}\n")
    cfg = load_job_config(path, ["trainer.max_epochs=5", "+trainer.limit_train_batches=0.5",
                                 "supervision.budget=24h", "logger.wandb.tags=[a,b]", "model.init_args.lr=1e-3"])
    assert dict(cfg.trainer) == {"max_epochs": 5, "accelerator": "cpu", "limit_train_batches": 0.5}
    assert cfg.supervision.budget == "24h" and cfg.supervision.max_restarts == 2
    assert list(cfg.logger.wandb.tags) == ["a", "b"]
    assert cfg.model.init_args.lr == pytest.approx(1e-3)


def test_yaml_numbers_read_as_researchers_write_them() -> None:
    cfg = parse_job_config(BASE.replace("pkg.models.Net}", "pkg.models.Net, init_args: {lr: 1e-3, wd: 5E-4, "
                                        "n: 1_000, eps: 1.0e-8, day: 2024-01-01}}"), source="job.yaml")
    assert dict(cfg.model.init_args) == {"lr": 1e-3, "wd": 5e-4, "n": 1000, "eps": 1e-8, "day": "2024-01-01"}
    assert isinstance(cfg.model.init_args.lr, float)


def test_interpolation_is_resolved() -> None:
    cfg = parse_job_config(
        BASE + "trainer: {max_epochs: 4}\n"
        "ui: {epochs: '${trainer.max_epochs}', label: 'run-${name}'}\n",
        source="job.yaml", overrides=["trainer.max_epochs=6"])
    assert dict(cfg.ui) == {"epochs": 6, "label": "run-digits"}
    assert "${" not in to_yaml(cfg)
    # resolved for good: the value no longer follows the key it came from
    cfg.trainer.max_epochs = 9
    assert cfg.ui.epochs == 6


def test_environment_interpolations_are_never_written_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ML_SUPERVISOR_TEST_SECRET", "hunter2-secret")
    cfg = parse_job_config(
        BASE + "trainer: {max_epochs: 4}\n"
        "ui: {epochs: '${trainer.max_epochs}'}\n"
        "env: {TOKEN: '${oc.env:ML_SUPERVISOR_TEST_SECRET}'}\n"
        "logger: {wandb: {entity: 'team-${oc.env:ML_SUPERVISOR_TEST_SECRET}'}}\n",
        source="job.yaml", overrides=["trainer.max_epochs=6"])
    # usable in memory (the daemon validated it) ...
    assert cfg.env.TOKEN == "hunter2-secret" and cfg.logger.wandb.entity == "team-hunter2-secret"
    assert cfg.ui.epochs == 6
    # ... but the frozen text keeps the interpolations, for the trainer to resolve in its own process
    frozen = tmp_path / "config.yaml"
    frozen.write_text(to_yaml(cfg))
    assert "hunter2" not in frozen.read_text()
    assert "${oc.env:ML_SUPERVISOR_TEST_SECRET}" in frozen.read_text()
    monkeypatch.setenv("ML_SUPERVISOR_TEST_SECRET", "in-the-trainer")
    again = load_job_config(frozen)
    assert again.env.TOKEN == "in-the-trainer" and again.ui.epochs == 6
    assert "in-the-trainer" not in to_yaml(again)


def test_to_yaml_round_trips(tmp_path: Path) -> None:
    text = (BASE + "seed: 7\nenv: {OMP_NUM_THREADS: 1}\ntrainer: {max_epochs: 3}\n"
            "checkpoint: {monitor: val_loss, every_n_epochs: 1}\n"
            "callbacks: {extra: [{class_path: pkg.cb.Log, init_args: {every: 2}}],\n"
            "            early_stopping: {monitor: val_loss}}\n"
            "logger: {wandb: {mode: offline, tags: [x]}}\n"
            "supervision: {budget: 1h30m, alerts: [restart, failed], backoff: {initial: 5s}}\n"
            "ui: {epochs: '${trainer.max_epochs}'}\n")
    cfg = parse_job_config(text, source="job.yaml", overrides=["trainer.max_epochs=5"])
    frozen = tmp_path / "config.yaml"
    frozen.write_text(to_yaml(cfg))
    again = load_job_config(frozen)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
    assert to_yaml(again) == to_yaml(cfg)
    assert again.env.OMP_NUM_THREADS == "1" and again.ui.epochs == 5


def test_a_loaded_config_can_be_edited() -> None:
    # The supervisor fixes the W&B run id into the config it freezes.
    cfg = parse_job_config(BASE, source="job.yaml")
    cfg.logger.wandb.run_id = "abc123"
    assert "run_id: abc123" in to_yaml(cfg)


def test_mappings_and_lists_may_come_from_interpolations() -> None:
    cfg = parse_job_config(BASE + "ui: {t: {max_epochs: 2}, tags: [a, b]}\ntrainer: '${ui.t}'\n"
                           "logger: {wandb: {tags: '${ui.tags}'}}\n", source="job.yaml")
    assert dict(cfg.trainer) == {"max_epochs": 2} and list(cfg.logger.wandb.tags) == ["a", "b"]
    cfg = parse_job_config(BASE + "ui: {t: {max_epochs: 3}}\n", source="job.yaml", overrides=["trainer=${ui.t}"])
    assert dict(cfg.trainer) == {"max_epochs": 3}


def test_an_escaped_interpolation_stays_a_literal_through_freezing(tmp_path: Path) -> None:
    path = tmp_path / "esc.yaml"
    path.write_text("name: esc\nmodel: {class_path: a.B, init_args: {home: '\\${oc.env:HOME}', real: '${name}'}}\n"
                    "data: {class_path: a.C}\n")
    cfg = load_job_config(path)
    assert cfg.model.init_args.home == "${oc.env:HOME}"
    assert cfg.model.init_args.real == "esc"
    again = parse_job_config(to_yaml(cfg), source="frozen")
    assert again.model.init_args.home == "${oc.env:HOME}"
    assert again.model.init_args.real == "esc"


def test_a_string_field_takes_an_override_that_is_not_yaml_as_typed(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: j\nmodel: {class_path: a.B}\ndata: {class_path: a.C}\n")
    cfg = load_job_config(path, ["checkpoint.filename={epoch}-{step}-{val_loss:.3f}"])
    assert cfg.checkpoint.filename == "{epoch}-{step}-{val_loss:.3f}"


@pytest.mark.parametrize("written, expected", [("on", "on"), ("off", "off"), ("auto", "auto"), ("'on'", "on")])
def test_supervision_standby_takes_bare_yaml_on_and_off(tmp_path: Path, written: str, expected: str) -> None:
    # YAML 1.1 reads a bare on / off as a boolean: the loader gives the word back
    path = tmp_path / "job.yaml"
    path.write_text(BASE + f"supervision: {{standby: {written}}}\n")
    assert load_job_config(str(path), []).supervision.standby == expected
    assert load_job_config(str(path), [f"supervision.standby={written}"]).supervision.standby == expected


def test_supervision_standby_refuses_other_words(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(BASE + "supervision: {standby: sometimes}\n")
    with pytest.raises(ConfigError) as caught:
        load_job_config(str(path), [])
    assert caught.value.message == f"{path}: supervision.standby: must be one of auto, on, off; got 'sometimes'"


def test_checkpoint_async_is_the_users_key_though_python_cannot_name_a_field_async() -> None:
    cfg = parse_job_config(BASE + "checkpoint: {async: true}\n", source="job.yaml")
    assert cfg.checkpoint["async"] is True
    assert "  async: true" in to_yaml(cfg).splitlines()
    assert parse_job_config(to_yaml(cfg), source="frozen.yaml").checkpoint["async"] is True
    assert parse_job_config(BASE, source="job.yaml").checkpoint["async"] is False
    assert parse_job_config(BASE, source="job.yaml", overrides=["checkpoint.async=true"]).checkpoint["async"]
    with pytest.raises(ConfigError, match=r"^job.yaml: checkpoint.async: Value 'maybe' is not a valid bool"):
        parse_job_config(BASE + "checkpoint: {async: maybe}\n", source="job.yaml")
    with pytest.raises(ConfigError, match=r"^job.yaml: checkpoint.async_save: unknown key"):
        parse_job_config(BASE + "checkpoint: {async_save: true}\n", source="job.yaml")
