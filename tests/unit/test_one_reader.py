"""Every file a trainer, its monitor or a batch script can write is read through ``jobfiles.safe_read`` (issue 33).

This is the lint: every call in ``supervisor/`` that opens, reads or lists a file by other means (``open``,
``os.open``, ``Path.read_text``/``read_bytes``/``open``/``iterdir``/``glob``, ``os.listdir``/``scandir``,
``OmegaConf.load``) must be one of the known ones below, each with why it is not a job file the user's code
can write (or why it is written, not read). A new one fails here: read the file with ``safe_read`` (or the
typed readers on top of it: ``read_heartbeat``, ``read_exit_record``, ``read_monitor_*``,
``atomic.read_json``/``read_json_lines``), or add it with its reason.
"""

from __future__ import annotations

import ast

from tests.support.harness import REPO

CALLS = {"open", "os.open", "os.fdopen", "os.listdir", "os.scandir", "OmegaConf.load"}
METHODS = {"read_text", "read_bytes", "iterdir", "glob", "rglob", "open"}
NOT_FILES = {"self.supervisor.open", "self.sup.open"}  # the core's own open(), not a file

# (file, function, call) -> why it is not a read of a file the user's code can write
KNOWN: dict[tuple[str, str, str], str] = {
    # the reader itself, and the writers
    ("supervisor/jobfiles/safe_read.py", "_open_regular", "os.open"): "the one reader",
    ("supervisor/jobfiles/safe_read.py", "list_dir.names", "os.open"): "the one reader (listing)",
    ("supervisor/jobfiles/safe_read.py", "list_dir.names", "os.scandir"): "the one reader (listing)",
    ("supervisor/jobfiles/atomic.py", "write_json_atomic", "os.open"): "writes a fresh temp file (O_EXCL|O_NOFOLLOW)",
    ("supervisor/jobfiles/atomic.py", "append_json_line", "os.open"): "appends: regular files only, O_NONBLOCK",
    ("supervisor/jobfiles/atomic.py", "_fsync_dir", "os.open"): "fsyncs a directory the writer just wrote in",
    # the daemon's own files, outside any job's writable dirs
    ("supervisor/api/views.py", "_frozen_config", "OmegaConf.load"):
        "config.yaml: written by submit in the job dir, which stays the daemon's (core.submit.hand_over)",
    ("supervisor/api/server.py", "open_to_group", "state_dir.iterdir"): "the state dir (the daemon's)",
    ("supervisor/processes/control.py", "try_lock", "os.open"): "the daemon's and the jobs' lock files",
    ("supervisor/processes/control.py", "spawn_attempt_monitor", "os.open"): "monitor.log, written (O_NOFOLLOW)",
    ("supervisor/runners/standby.py", "StandbyLocalRunner._exec_standby", "os.open"): "the job's lock file",
    ("supervisor/runners/zygote.py", "start_zygote", "os.open"): "zygote.log in the job dir, written (O_NOFOLLOW)",
    ("supervisor/processes/stacks.py", "_write_report", "os.open"): "py-spy's report, written (O_NOFOLLOW)",
    ("supervisor/processes/stacks.py", "_write_report", "os.fdopen"): "py-spy's report, written",
    ("supervisor/settings.py", "load_settings", "OmegaConf.load"): "the daemon's settings file",
    ("supervisor/config/safe_yaml.py", "read_config_text", "open"): "a job config a user submits (1 MiB cap)",
    ("supervisor/gpu/simulated.py", "FakeNvmlBackend.__init__", "self.path.read_bytes"): "the simulated NVML file",
    ("supervisor/gpu/simulated.py", "FakeNvmlBackend._refresh", "self.path.read_bytes"): "the simulated NVML file",
    ("supervisor/_entry.py", "_provided_names", "dist.read_text"): "installed packages' metadata",
    ("supervisor/processes/boot.py", "current_boot_id", "?.read_text"): "/proc",
    ("supervisor/processes/stacks.py", "_sigusr2_caught", "open"): "/proc/<pid>/status",
    # the attempt monitor's own writes (its process, not the daemon's)
    ("supervisor/processes/attempt_monitor.py", "_children_of", "open"): "/proc/<pid>/task/<pid>/children",
    ("supervisor/processes/attempt_monitor.py", "_failed_to_start", "open"): "the monitor appends to stderr.log",
    ("supervisor/processes/rank_group.py", "start_ranks", "open"): "the monitor opens each rank's logs to write",
    # commands and workers that are not the daemon: the caller's own files
    ("supervisor/cli/common.py", "submit_request", "?.read_text"): "supervisorctl reads the config it submits",
    ("supervisor/cli/sweep.py", "run_sweep_command", "?.read_text"): "supervisorctl reads the sweep file",
    ("supervisor/cli/project.py", "list_examples", "where.glob"): "ml-supervisor examples: the package's configs",
    ("supervisor/cli/project.py", "init_project", "?.read_text"): "ml-supervisor init: the package's starter files",
    ("supervisor/alerts/wandb_worker.py", "main", "os.fdopen"): "the W&B worker's stdout",
    ("supervisor/alerts/wandb_worker.py", "main", "?.read_text"): "the W&B worker's input, from the daemon",
    ("supervisor/sweep/files.py", "list_sweeps", "parent.iterdir"): "the state dir's sweeps (the daemon's)",
    ("supervisor/sweep/manager.py", "SweepManager._spawn", "open"): "the sweep worker's log, written",
    ("supervisor/sweep/ops.py", "create_sweep", "?.read_text"): "the job config a sweep names (its submitter's)",
    ("supervisor/sweep/spec.py", "load_sweep_file", "?.read_text"): "the sweep file (its submitter's)",
    ("supervisor/sweep/values.py", "validation_values", "layout.attempts.iterdir"):
        "attempts/ (the daemon's dir; each attempt's metrics.jsonl is read with read_json_lines)",
    ("supervisor/sweep/worker.py", "SweepWorker.settle", "OmegaConf.load"): "a job's frozen config (the daemon's)",
    # the web page's own files
    ("supervisor/web/inspect.py", "Inspector._run", "template_path.read_text"): "a launch template (the operator's)",
    ("supervisor/web/inspect.py", "Inspector._child", "open"): "the inspection child's output, in our temp dir",
    ("supervisor/web/inspect.py", "_data_uri", "path.read_bytes"): "an image the inspection wrote in our temp dir",
    ("supervisor/web/templates.py", "find_templates", "folder.iterdir"): "the templates folder (the operator's)",
    ("supervisor/web/token.py", "load_or_create_token", "os.open"): "the web token, written (O_EXCL)",
    ("supervisor/web/token.py", "_read_token_file", "path.read_text"): "the web token (the daemon's)",
    ("supervisor/web/token.py", "write_endpoint", "os.open"): "the web endpoint file, written (O_EXCL)",
    ("supervisor/web/token.py", "read_web_url", "?.read_text"): "the web endpoint file (the daemon's)",
}


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value) or '?'}.{node.attr}"
    return None


class _FileCalls(ast.NodeVisitor):
    """The file calls of one module, each with its enclosing function (``Class.method``, ``outer.inner``)."""

    def __init__(self, rel: str) -> None:
        self.rel = rel
        self.scope: list[str] = []
        self.found: list[tuple[str, str, str, int]] = []

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]
    visit_ClassDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Call(self, node: ast.Call) -> None:
        called = _name(node.func)
        if called and called not in NOT_FILES and (
                called in CALLS or (isinstance(node.func, ast.Attribute) and node.func.attr in METHODS)):
            self.found.append((self.rel, ".".join(self.scope), called, node.lineno))
        self.generic_visit(node)


def file_calls() -> list[tuple[str, str, str, int]]:
    """(file, enclosing function, call, line) of every call that opens, reads or lists a file in supervisor/."""
    found: list[tuple[str, str, str, int]] = []
    for path in sorted((REPO / "supervisor").rglob("*.py")):
        visitor = _FileCalls(str(path.relative_to(REPO)))
        visitor.visit(ast.parse(path.read_text(), filename=visitor.rel))
        found += visitor.found
    return found


def test_no_file_is_opened_read_or_listed_outside_the_one_reader_unless_known() -> None:
    unknown = [f"{file}:{line}: {function}: {call}(...)" for file, function, call, line in file_calls()
               if (file, function, call) not in KNOWN]
    assert not unknown, ("read these through supervisor.jobfiles.safe_read (a trainer's file may be a FIFO, a "
                         "50 GB sparse file or on a filesystem that does not answer), or add them to KNOWN with "
                         "the reason they are not:\n" + "\n".join(unknown))


def test_the_lint_sees_what_it_looks_for() -> None:
    calls = {(file, function, call) for file, function, call, _ in file_calls()}
    assert ("supervisor/jobfiles/safe_read.py", "_open_regular", "os.open") in calls
    assert ("supervisor/processes/boot.py", "current_boot_id", "?.read_text") in calls
