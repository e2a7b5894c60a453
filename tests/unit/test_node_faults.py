"""Which rank endings blame the node (pure): the node-level causes, rank -> node, and the nodes to leave out."""

from __future__ import annotations

from supervisor.jobfiles.exitrecord import ExitRecord
from supervisor.rules.node_faults import faulty_nodes, node_fault, rank_node


def _raised(kind: str, message: str, rank: int = 0) -> ExitRecord:
    return ExitRecord(status="exception", time=1.0, pid=7, rank=rank, exception={"type": kind, "message": message})


def test_node_level_causes_are_told_from_the_job_s_own_errors() -> None:
    assert node_fault(_raised("RuntimeError", "CUDA error: uncorrectable ECC error encountered")) == \
        "uncorrectable ECC error"
    assert node_fault(_raised("RuntimeError", "CUDA error: CUDA-capable device(s) is/are busy or unavailable")) == \
        "GPU busy or unavailable"
    assert node_fault(_raised("OSError", "[Errno 30] Read-only file system: '/scratch/x'")) == \
        "filesystem turned read-only"
    # the job's own faults: another node would not cure them
    assert node_fault(_raised("RuntimeError", "CUDA out of memory. Tried to allocate 2.00 GiB")) is None
    assert node_fault(_raised("ValueError", "loss is nan")) is None
    assert node_fault(_raised("RuntimeError", "NCCL watchdog timeout")) is None
    assert node_fault(ExitRecord(status="completed", time=1.0, pid=7)) is None and node_fault(None) is None


def test_a_rank_s_node_follows_srun_s_block_distribution() -> None:
    nodes = ["n1", "n3"]
    assert [rank_node(r, nodes, 2) for r in range(5)] == ["n1", "n1", "n3", "n3", None]
    records = {0: None, 1: _raised("RuntimeError", "boom"), 2: _raised("RuntimeError", "GPU is lost", rank=2),
               3: _raised("RuntimeError", "uncorrectable ECC error", rank=3)}
    # rank 2's GPU was lost on n3 (the lowest such rank names it); n1's rank 1 died of its own error
    assert faulty_nodes(records, nodes, 2) == {"n3": "node fault: GPU lost (rank 2)"}
    assert faulty_nodes(records, ["n1", "n2", "n3"], 1) == {"n3": "node fault: GPU lost (rank 2)"}  # rank 3: none
    assert faulty_nodes({0: None}, nodes, 2) == {}
