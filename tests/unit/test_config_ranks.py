"""Ranks and GPUs from a job config (pure): which jobs run several local ranks, and what submit refuses."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.config import parse_job_config
from supervisor.config.ranks import check_ranks, local_ranks
from supervisor.errors import ConfigError

BASE = "name: j\nmodel: {class_path: a.B}\ndata: {class_path: a.C}\n"


@pytest.mark.parametrize(("trainer", "ranks"), [
    ({}, 1),
    ({"devices": 1, "strategy": "ddp"}, 1),
    ({"devices": 4, "strategy": "ddp"}, 4),
    ({"devices": 2}, 2),  # Lightning's "auto" strategy is DDP for several devices
    ({"devices": 2, "strategy": "ddp_find_unused_parameters_true"}, 2),
    ({"devices": "auto", "strategy": "ddp"}, 1),
    ({"devices": [0, 1], "strategy": "ddp"}, 1),
    ({"devices": True}, 1),
])
def test_local_ranks(trainer: dict[str, Any], ranks: int) -> None:
    assert local_ranks(trainer) == ranks


@pytest.mark.parametrize(("trainer", "gpus", "expected"), [
    ({"accelerator": "gpu", "devices": 4, "strategy": "ddp"}, None, 4),
    ({"accelerator": "cuda", "devices": 1}, None, 1),
    ({"accelerator": "cpu", "devices": 2, "strategy": "ddp"}, None, 0),
    ({"accelerator": "auto", "devices": 2}, None, 0),
    ({"accelerator": "gpu", "devices": 2}, 2, 2),
    ({}, 3, 3),
])
def test_supervision_gpus_defaults_to_the_devices_of_a_gpu_job(trainer: dict[str, Any], gpus: int | None,
                                                               expected: int) -> None:
    assert check_ranks(trainer, gpus, "j.yaml") == expected


@pytest.mark.parametrize(("trainer", "gpus", "message"), [
    ({"accelerator": "gpu", "devices": 4, "strategy": "ddp"}, 2,
     "j.yaml: supervision.gpus: 2 does not match trainer.devices 4: each rank needs its own GPU "
     "(leave supervision.gpus unset to take trainer.devices)"),
    ({"devices": 2, "strategy": "ddp_spawn"}, None,
     "j.yaml: trainer.strategy: 'ddp_spawn' starts its ranks itself, out of the supervisor's sight; use ddp "
     "(the supervisor starts one process per device)"),
    ({"devices": 2, "strategy": "fsdp"}, None,
     "j.yaml: trainer.strategy: 'fsdp' is not supported: its sharded checkpoints are directories, which the "
     "supervisor cannot save atomically or verify yet; use ddp"),
    ({"devices": 2, "num_nodes": 2}, None, "j.yaml: trainer.num_nodes: must be 1: the supervisor runs jobs on one "
     "node; got 2"),
    ({"accelerator": "cpu", "devices": 2}, 2, "j.yaml: supervision.gpus: the job asks for 2 GPUs but "
     "trainer.accelerator is 'cpu'; set trainer.accelerator: gpu"),
])
def test_combinations_the_supervisor_cannot_run_are_one_line_errors(trainer: dict[str, Any], gpus: int | None,
                                                                    message: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_ranks(trainer, gpus, "j.yaml")
    assert str(err.value) == message


def test_the_loader_records_the_resolved_gpu_count() -> None:
    cfg = parse_job_config(BASE + "trainer: {accelerator: gpu, devices: 2, strategy: ddp}\n", source="j.yaml")
    assert cfg.supervision.gpus == 2
    cfg = parse_job_config(BASE, source="j.yaml")
    assert cfg.supervision.gpus == 0
    with pytest.raises(ConfigError, match=r"^j\.yaml: supervision\.gpus: 1 does not match trainer\.devices 2"):
        parse_job_config(BASE + "trainer: {accelerator: gpu, devices: 2}\n", source="j.yaml",
                         overrides=["supervision.gpus=1"])
