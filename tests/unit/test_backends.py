"""The backend records: one per ``supervision.backend`` value, each answering for its rank layout and its attempts."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config import parse_job_config
from supervisor.config.schema import BACKENDS as CONFIG_BACKENDS
from supervisor.core.runner_set import RunnerSet
from supervisor.errors import SupervisorError
from supervisor.runners.base import RankLayout
from supervisor.runners.registry import BACKENDS, backend_named, backend_of, job_world_size
from supervisor.store import AttemptRow
from tests.support.fake_runner import FakeRunner

DDP = """
name: ddp
model: {class_path: fake.Model}
data: {class_path: fake.Data}
trainer: {devices: 2, strategy: ddp, accelerator: cpu}
"""

SLURM = """
name: slurm
model: {class_path: fake.Model}
data: {class_path: fake.Data}
supervision: {backend: slurm}
slurm: {nodes: 2, ntasks_per_node: 3}
"""


def test_every_backend_the_config_accepts_has_a_record_and_no_other() -> None:
    assert sorted(BACKENDS) == sorted(CONFIG_BACKENDS)
    assert all(name == record.name for name, record in BACKENDS.items())


def test_an_unknown_backend_is_one_line_naming_the_known_ones() -> None:
    with pytest.raises(SupervisorError, match=r"^no backend 'k8s' \(known: local, slurm\)$"):
        backend_named("k8s")


def test_the_local_backend_runs_one_rank_per_device_on_this_node() -> None:
    cfg = parse_job_config(DDP, source="ddp.yaml")
    assert backend_of(cfg).name == "local"
    assert backend_of(cfg).rank_layout(cfg) == RankLayout(world_size=2, local_ranks=(0, 1))
    assert job_world_size(cfg) == 2
    assert backend_of(cfg).options(cfg) == {}
    assert backend_of(cfg).supports_standby and backend_of(cfg).supports_run_as


def test_the_slurm_backend_spreads_its_ranks_over_nodes_and_passes_its_section() -> None:
    cfg = parse_job_config(SLURM, source="slurm.yaml")
    backend = backend_of(cfg)
    assert backend.rank_layout(cfg) == RankLayout(world_size=6, local_ranks=(0, 1, 2))
    assert backend.rank_layout(cfg).nodes == 2
    assert backend.options(cfg)["slurm"]["ntasks_per_node"] == 3
    # standbys are steps of a held allocation, only with `supervision.standby: on` (never auto)
    assert backend.supports_standby and not backend.standby_auto and not backend.supports_run_as


def test_status_shows_a_slurm_attempt_by_its_job_and_nodes_and_a_local_one_by_nothing_extra() -> None:
    shown = BACKENDS["slurm"].describe({"slurm_job_id": "42", "state": "RUNNING", "nodes": "n[1-2]"})
    assert shown["where"] == "slurm 42" and shown["placement"] == "n[1-2]" and shown["slurm_state"] == "RUNNING"
    assert BACKENDS["slurm"].describe({})["where"] is None  # not submitted yet: the table falls back to the pid
    step = BACKENDS["slurm"].describe({"slurm_job_id": "42", "slurm_step_id": "3", "nodes": "n[1,3]",
                                       "in_allocation": 2})
    assert step["where"] == "slurm 42.3" and step["slurm_step_id"] == "3" and step["in_allocation"] == 2
    # what a launch inside the allocation adds to its event, and the events it owes; the local backend: nothing
    news = BACKENDS["slurm"].launch_news({"launch_note": "inside allocation 42 on n1,n3 (n2 drained)",
                                          "node_events": [{"kind": "node_excluded", "node": "n2", "message": "m"}]})
    assert news.note == "inside allocation 42 on n1,n3 (n2 drained)"
    assert news.events == [("node_excluded", "m", {"kind": "node_excluded", "node": "n2", "message": "m"})]
    assert BACKENDS["local"].launch_news({"pid": 1}).note is None and BACKENDS["local"].launch_news({}).events == []
    assert BACKENDS["local"].describe({"monitor_pid": 7}) == {}
    # a Slurm restart's alert waits for its launch (which says where it went); a local one goes with the decision
    assert BACKENDS["slurm"].restart_alert_at_launch and not BACKENDS["local"].restart_alert_at_launch


def test_the_runner_set_finds_runners_by_backend_and_by_the_kind_an_attempt_recorded(tmp_path: Path) -> None:
    fake = FakeRunner(kind="fake")
    runners = RunnerSet({"local": fake})
    cfg = parse_job_config(DDP, source="ddp.yaml")
    assert runners.for_job(cfg) is fake
    assert runners.standby_for(cfg) is None  # the fake keeps no standbys: the local backend then starts cold
    row = AttemptRow(job_id="j", n=1, started_at=0.0, runner_kind="fake")
    assert runners.for_attempt(row) is fake
    with pytest.raises(SupervisorError, match="runner 'slurm', which this daemon does not have"):
        runners.for_attempt(AttemptRow(job_id="j", n=2, started_at=0.0, runner_kind="slurm"))
    with pytest.raises(SupervisorError, match="this daemon has no 'slurm' runner"):
        runners.for_job(parse_job_config(SLURM, source="slurm.yaml"))
