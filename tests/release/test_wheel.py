"""The wheel is the product: build it, install it in a fresh venv outside the checkout, use it as a new user would.

Built once for the module (``python -m build``: the sdist, then the wheel from the sdist,
so a file the sdist lacks fails here too; ``twine check`` on both), installed with
``pip install --no-deps`` into a new venv whose only view of the dependencies is a ``.pth``
line naming the dev venv's site-packages (torch, Lightning and the rest are not installed
again: seconds, not minutes, and no network). A ``.pth`` line adds a directory to
``sys.path`` without running the ``.pth`` files in it, so the dev venv's editable install
of this checkout stays out: ``supervisor`` and ``trainer`` come from the wheel (checked).
Every command runs from a folder outside the checkout, with no ``PYTHONPATH``.

Then: ``--version`` (one version, the package's); ``examples`` lists the bundled configs at
their installed paths; ``install-systemd --user`` writes a unit for the venv's interpreter,
and the daemon is started with the unit's own ``ExecStart``; the web API lists the bundled
templates; ``init`` + ``run`` of the starter project as written (3 short epochs on a CPU) through
that daemon exits 0; ``status`` shows the version.

Under ``.ci/run`` the build and the install are ``.ci/release-check``'s: a venv with the wheel
and its dependencies resolved from the wheel's own metadata (``pip install dist/*.whl``), named by
``ML_SUPERVISOR_RELEASE_VENV``; this module then uses it instead of building again, so CI builds
once and runs the starter once.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from supervisor import __version__
from tests.support.harness import REPO, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


RELEASE_VENV = "ML_SUPERVISOR_RELEASE_VENV"  # .ci/release-check's venv: the wheel installed with its dependencies


@dataclass
class Installed:
    venv: Path
    home: Path  # outside the checkout: the commands' cwd and HOME
    timings: dict[str, float]

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "VIRTUAL_ENV", "NOTIFY_SOCKET") and not k.startswith("ML_SUPERVISOR_")}
        env.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"), WANDB_MODE="offline",
                   WANDB_SILENT="true", PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}", **extra)
        return env

    def run(self, *argv: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(list(argv), cwd=self.home, env=self.env(**extra), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done


def _timed(timings: dict[str, float], name: str, argv: list[str], **kwargs: object) -> None:
    start = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, timeout=600, **kwargs)  # type: ignore[call-overload]
    timings[name] = round(time.monotonic() - start, 1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("release")
    assert not root.resolve().is_relative_to(REPO.resolve())
    dist, venv, home = root / "dist", root / "venv", root / "home"
    home.mkdir()
    timings: dict[str, float] = {}
    if os.environ.get(RELEASE_VENV):  # CI: built, checked and installed by .ci/release-check
        yield Installed(venv=Path(os.environ[RELEASE_VENV]), home=home, timings=timings)
        print(f"\nrelease test timings (s): {json.dumps(timings)}")
        return
    _timed(timings, "build", [sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)])
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    assert [w.name for w in wheels] == [f"ml_supervisor-{__version__}-py3-none-any.whl"]
    assert [s.name for s in sdists] == [f"ml_supervisor-{__version__}.tar.gz"]
    _timed(timings, "twine check", [sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels + sdists)])
    # a fresh venv of the base interpreter; the dev venv's dependencies through one .pth line (no editable install)
    _timed(timings, "venv", [getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)])
    # the wheel first: pip must not see the dev venv (its ml-supervisor is the editable install of this checkout)
    _timed(timings, "pip install", [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                                    "--no-index", str(wheels[0])])
    fresh_site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; "
                                      "print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True,
                                     check=True).stdout.strip())
    (fresh_site / "dev-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    yield Installed(venv=venv, home=home, timings=timings)
    print(f"\nrelease test timings (s): {json.dumps(timings)}")


def test_the_package_comes_from_the_wheel_and_says_its_version(installed: Installed) -> None:
    where = installed.run(str(installed.bin / "python"), "-c",
                          "import supervisor, trainer; print(supervisor.__file__); print(trainer.__file__)")
    for path in where.stdout.split():
        assert Path(path).is_relative_to(installed.venv), path  # not the checkout
    assert installed.run("ml-supervisor", "--version").stdout.strip() == f"ml-supervisor {__version__}"
    assert installed.run("supervisorctl", "--version").stdout.strip() == f"supervisorctl (ml-supervisor) {__version__}"
    # every requirement the wheel declares is met where it runs (importlib.metadata: read-only, unlike pip)
    installed.run(str(installed.bin / "python"), "-c", _REQUIREMENTS_MET, __version__)


def test_examples_lists_the_bundled_configs_at_their_installed_paths(installed: Installed) -> None:
    out = installed.run("ml-supervisor", "examples").stdout
    listed = [Path(line.split()[-1]) for line in out.splitlines() if line.startswith(("job ", "sweep "))]
    names = sorted(p.relative_to(installed.venv).as_posix().split("/site-packages/")[1] for p in listed)
    assert names == ["supervisor/examples/configs/digits.yaml", "supervisor/examples/configs/sweeps/digits.yaml"]
    assert all(p.is_file() for p in listed)


def test_init_and_run_the_starter_through_the_daemon_the_unit_starts(installed: Installed) -> None:
    # install-systemd --user: a unit for this venv's interpreter (in $XDG_CONFIG_HOME, under the test's HOME)
    installed.run("ml-supervisor", "install-systemd", "--user")
    unit = (installed.home / ".config" / "systemd" / "user" / "ml-supervisor.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))[len("ExecStart="):]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).parent == installed.bin and Path(argv[0]).name.startswith("python")  # this venv's interpreter
    state = installed.home / "state"
    env = installed.env(ML_SUPERVISOR_STATE_DIR=str(state))  # the unit names none: the environment's (or the default)
    daemon = subprocess.Popen([*argv, "web.port=0"], cwd=installed.home, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        url = wait_for(lambda: daemon.poll() is not None or _web_url(installed, state), timeout=120,
                       what="the daemon's web page")
        assert daemon.poll() is None, daemon.communicate()[0]
        base, token = url.split("#token=")
        templates = _get(base.rstrip("/") + "/api/templates", token)
        bundled = {t["name"]: t for t in templates}
        assert set(bundled) == {"digits"} and bundled["digits"]["error"] is None
        ping = _get(base.rstrip("/") + "/api/ping", token)
        assert ping["version"] == __version__
        assert Path(ping["templates_dir"]).is_relative_to(installed.venv)

        installed.run("ml-supervisor", "init", "myproject")
        config = installed.home / "myproject" / "job.yaml"
        assert (installed.home / "myproject" / "model.py").is_file()
        start = time.monotonic()
        run = installed.run("ml-supervisor", "--state-dir", str(state), "run", str(config), timeout=600)  # as is
        installed.timings["starter run"] = round(time.monotonic() - start, 1)
        assert "submitting to the daemon" in run.stdout and "completed (max_epochs)" in run.stdout
        status = installed.run("supervisorctl", "--state-dir", str(state), "status").stdout
        assert status.splitlines()[0].startswith(f"ml-supervisor {__version__} · pid {daemon.pid}")
    finally:
        daemon.terminate()
        out, _ = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, out


_REQUIREMENTS_MET = """
import sys
from importlib import metadata
from packaging.requirements import Requirement
dist = next(d for d in metadata.distributions() if d.metadata["Name"] == "ml-supervisor" and d.version == sys.argv[1])
missing = []
for line in dist.requires or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        if not req.specifier.contains(metadata.version(req.name), prereleases=True):
            missing.append(f"{req} (have {metadata.version(req.name)})")
    except metadata.PackageNotFoundError:
        missing.append(str(req))
assert not missing, missing
"""


def _web_url(installed: Installed, state: Path) -> str | None:
    done = subprocess.run(["supervisorctl", "--state-dir", str(state), "web-url"], cwd=installed.home,
                          env=installed.env(), capture_output=True, text=True, timeout=60)
    return done.stdout.strip() if done.returncode == 0 else None


def _get(url: str, token: str) -> object:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())
