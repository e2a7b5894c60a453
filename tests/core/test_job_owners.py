"""Jobs have owners: the operations a non-owner asks for find no job, and an owner's attempts run as them.

In-process (real store, fake runner). A job of another user is made by giving a
submitted job another ``owner_uid``; submitting as a real other user is the
end-to-end test's (tests/integration/test_shared_server.py).
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
import yaml

from supervisor.access import Caller, RunAs
from supervisor.api.arguments import BadRequest
from supervisor.api.ops import Operations
from supervisor.core.spec import attempt_spec
from supervisor.core.submit import SubmitRequest
from supervisor.errors import JobNotFound, SupervisorError
from supervisor.rules.causes import EventKind
from supervisor.rules.resume import ResumeChoice
from supervisor.rules.states import JobState
from supervisor.runners.local_backend import LOCAL
from supervisor.sweep.ops import SweepNotFound
from tests.core.conftest import Core, MakeCore
from tests.support.harness import write_config

ALICE, BOB = 4242, 4343  # uids with no passwd entry: nothing here runs as them


def _running(core: Core, name: str, owner: int) -> str:
    job_id = core.submit(name)
    core.store.update_job(job_id, now=core.clock(), owner_uid=owner)
    core.runner.start(job_id, 1)
    core.tick()
    assert core.state(job_id) is JobState.RUNNING
    return job_id


def test_a_non_owner_finds_no_job_and_cannot_stop_or_restart_it(make_core: MakeCore) -> None:
    core = make_core()
    alices = _running(core, "shared", ALICE)
    bobs = _running(core, "shared", BOB)
    ops = Operations(core.sup)
    alice, bob = ops.for_caller(Caller(ALICE, admin=False)), ops.for_caller(Caller(BOB, admin=False))

    for op, args in (("stop", {"job": alices}), ("restart", {"job": alices}), ("status", {"job": alices}),
                     ("history", {"job": alices}), ("logs", {"job": alices}), ("events", {"job": alices})):
        with pytest.raises(JobNotFound, match=f"no job '{alices}'"):
            bob.dispatch(op, args)
    assert core.state(alices) is JobState.RUNNING
    assert core.runner.ops("graceful_stop") == []

    assert [j["id"] for j in alice.dispatch("list", {})] == [alices]
    assert [j["id"] for j in bob.dispatch("list", {})] == [bobs]
    assert {e["job_id"] for e in bob.dispatch("events", {})} == {bobs}
    assert bob.dispatch("job_states", {"jobs": [alices, bobs]}).keys() == {bobs}
    # "shared" prefixes both jobs' ids: for bob it names his one job, and never lists alice's
    assert bob.dispatch("status", {"job": "shared"})["id"] == bobs
    with pytest.raises(JobNotFound, match="ambiguous") as ambiguous:
        ops.dispatch("status", {"job": "shared"})  # the daemon's own user (an admin) sees both
    assert alices in str(ambiguous.value) and bobs in str(ambiguous.value)
    assert {j["id"] for j in ops.dispatch("list", {})} == {alices, bobs}
    admin = ops.for_caller(Caller(BOB, admin=True))
    assert admin.dispatch("status", {"job": alices})["state"] == "running"


def test_identity_never_comes_from_the_request(make_core: MakeCore) -> None:
    core = make_core()
    alices = _running(core, "mine", ALICE)
    bob = Operations(core.sup).for_caller(Caller(BOB, admin=False))
    with pytest.raises(BadRequest, match="unknown argument 'caller'"):
        bob.dispatch("stop", {"job": alices, "caller": {"uid": ALICE, "admin": True}})
    with pytest.raises(BadRequest, match="config_text: required"):
        bob.dispatch("submit", {"config_path": "/etc/shadow", "cwd": "/"})  # read as the daemon: never
    assert core.state(alices) is JobState.RUNNING


def test_sweeps_on_a_shared_daemon_are_for_admins(make_core: MakeCore) -> None:
    core = make_core()
    bob = Operations(core.sup).for_caller(Caller(BOB, admin=False))
    with pytest.raises(SupervisorError, match="sweeps on a shared daemon are for admins"):
        bob.dispatch("sweep_create", {"sweep_path": "s.yaml", "cwd": "/", "sweep_text": "name: s\n"})
    assert bob.dispatch("sweep_list", {}) == []
    with pytest.raises(SweepNotFound):
        bob.dispatch("sweep_status", {"sweep": "s"})


def test_a_job_whose_owner_has_no_user_is_never_launched_as_the_daemon(make_core: MakeCore) -> None:
    core = make_core()
    job_id = _running(core, "orphaned", ALICE)
    core.runner.end(job_id, 1, exit_code=1, ended_at=core.clock())  # a crash: the policy relaunches at once
    core.turn()
    assert core.runner.ops("launch") == [(job_id, 1)]  # attempt 2 was not started (as root or anyone)
    assert core.state(job_id) is JobState.BACKOFF
    (failed,) = [e for e in core.store.events(job_id=job_id) if e.kind == EventKind.LAUNCH_FAILED]
    assert f"uid {ALICE} has no user on this machine" in failed.message


def test_the_attempt_of_another_users_job_runs_as_them_with_their_home(make_core: MakeCore) -> None:
    core = make_core()
    path = write_config(core.work, "theirs")
    path.write_text(path.read_text() + yaml.safe_dump({"env": {"EXTRA": "1", "HOME": "/from/config"}}))
    job = core.sup.submit(SubmitRequest(config_path=str(path), cwd=str(core.work)))
    core.turn()
    job_id = job.id
    user = RunAs(uid=ALICE, gid=ALICE, groups=(ALICE, 44), name="alice", home="/home/alice")
    spec = attempt_spec(job, core.sup.job_config(job), 2, ResumeChoice(None, None, "scratch", ()), backend=LOCAL,
                        gpus=[], first_started_at=0.0, trainer_module="fake_trainer", boot_id="b", state_dir=Path("/s"),
                        base_env={"HOME": "/root", "USER": "root", "LOGNAME": "root", "PATH": "/usr/bin"},
                        run_as=user)
    assert spec.run_as == user
    assert (spec.env["USER"], spec.env["LOGNAME"], spec.env["PATH"]) == ("alice", "alice", "/usr/bin")
    assert spec.env["HOME"] == "/from/config" and spec.env["EXTRA"] == "1"  # the job's own env still wins
    # the daemon's own jobs: nobody to switch to
    own = core.runner.attempts[(job_id, 1)].spec
    assert own is not None and own.run_as is None and own.env.get("USER") == os.environ.get("USER")
    assert job.owner_uid == os.getuid() == pwd.getpwuid(os.getuid()).pw_uid


def test_the_nodes_gpus_are_cleared_by_admins_only(make_core: MakeCore) -> None:
    core = make_core()
    ops = Operations(core.sup)
    with pytest.raises(SupervisorError, match=r"gpus clear: for admins \(root or access.admin_group\)"):
        ops.for_caller(Caller(BOB, admin=False)).dispatch("gpus_clear", {"index": 0})
    with pytest.raises(SupervisorError, match="no NVML on this node"):  # an admin gets past the check
        ops.for_caller(Caller(BOB, admin=True)).dispatch("gpus_clear", {"index": 0})


def test_another_users_job_cannot_use_a_backend_that_runs_as_the_daemon(tmp_path: Path) -> None:
    """sbatch from the daemon submits as the daemon: refused at submit, before anything runs as anyone."""
    from supervisor.core.submit import prepare_job
    from supervisor.errors import ConfigError

    try:
        other = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.skip("needs a 'nobody' user to submit as")
    if other == os.getuid():
        pytest.skip("runs as nobody: nobody else to submit as")
    path = write_config(tmp_path, "sl", supervision={"backend": "slurm"})
    path.write_text(path.read_text() + "slurm:\n  nodes: 2\n  ntasks_per_node: 1\n")
    (tmp_path / "jobs").mkdir()
    with pytest.raises(ConfigError) as refused:
        prepare_job(SubmitRequest(config_path=str(path), cwd=str(tmp_path)), jobs_dir=tmp_path / "jobs",
                    trainer_module="fake_trainer", gpu_count=None, check_timeout=60, owner_uid=other)
    assert str(refused.value) == (f"{path}: supervision.backend: slurm runs jobs as the daemon's user only; "
                                  "on a shared daemon use local (or your own daemon)")
    assert list((tmp_path / "jobs").iterdir()) == []
