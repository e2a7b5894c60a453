"""Which rank endings blame the node rather than the job (pure): a node to leave out of the next step.

A rank that died of an uncorrectable ECC error, a lost GPU or a filesystem that turned
read-only would die again on the same node; a Python error, a NaN or an NCCL timeout would
not be cured by another node. The marks are the messages PyTorch, CUDA and the kernel put
in the exception the trainer records (``exit.rank<N>.json``); they are matched in the
exception's type and message, case-insensitively. A host OOM kill or an Xid the trainer
never saw leave no record: Slurm's node state (DOWN/DRAIN) is what tells those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from supervisor.jobfiles.exitrecord import ExitRecord

# (mark in the exception, the words a person reads). The one place that says what a node-level cause is.
NODE_LEVEL_MARKS: tuple[tuple[str, str], ...] = (
    ("uncorrectable ECC error", "uncorrectable ECC error"),
    ("GPU is lost", "GPU lost"),
    ("fallen off the bus", "GPU fell off the bus"),
    ("uncorrectable NVLink error", "NVLink error"),
    ("busy or unavailable", "GPU busy or unavailable"),
    ("no CUDA-capable device is detected", "no GPU detected"),
    ("Read-only file system", "filesystem turned read-only"),
    ("Input/output error", "I/O error"),
)


def node_fault(record: ExitRecord | None) -> str | None:
    """The node-level cause a rank's exit record names (``"uncorrectable ECC error"``), else None."""
    if record is None or record.status != "exception":
        return None
    exception = record.exception or {}
    text = " ".join(str(exception.get(k) or "") for k in ("type", "message")) + " " + (record.message or "")
    lowered = text.lower()
    return next((words for mark, words in NODE_LEVEL_MARKS if mark.lower() in lowered), None)


def rank_node(rank: int, step_nodes: Sequence[str], per_node: int) -> str | None:
    """The node rank ``rank`` ran on: srun's block distribution, ``per_node`` ranks per node in node order."""
    index = rank // max(1, per_node)
    return step_nodes[index] if 0 <= index < len(step_nodes) else None


def faulty_nodes(records: Mapping[int, ExitRecord | None], step_nodes: Sequence[str],
                 per_node: int) -> dict[str, str]:
    """Node -> why, for each node one of whose ranks died of a node-level cause (the lowest such rank)."""
    faulty: dict[str, str] = {}
    for rank in sorted(records):
        cause = node_fault(records[rank])
        node = rank_node(rank, step_nodes, per_node) if cause else None
        if node is not None and node not in faulty:
            faulty[node] = f"node fault: {cause} (rank {rank})"
    return faulty
