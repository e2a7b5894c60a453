"""Read a W&B offline run file (``run-<id>.wandb``) back, for tests.

wandb 0.31 has no Python reader any more (``wandb.sdk.internal.datastore`` is
gone; wandb-core writes the file in Go), so this is a small reader of the format:

    7-byte header: b":W&B", magic 0xBEE1 (little-endian u16), version 0 (u8)
    then 32 KiB blocks of chunks: crc32 (u32 LE) | length (u16 LE) | type (u8) | data
    type 1 = FULL record, 2/3/4 = FIRST/MIDDLE/LAST pieces of a record split over blocks;
    a block tail shorter than a chunk header is zero padding.
    crc32 = zlib.crc32(data, zlib.crc32(bytes([type]))), as LevelDB's log does it.

Each record is a serialized ``wandb.proto.wandb_internal_pb2.Record``. The file
is parsed strictly: a bad header or checksum raises, so a test cannot pass on a
misread file.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

HEADER = b":W&B"
MAGIC = 0xBEE1
VERSION = 0
HEADER_LEN = 7
BLOCK_LEN = 32768
CHUNK_HEADER_LEN = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class LogFormatError(ValueError):
    """The file is not a well-formed W&B transaction log."""


def read_record_bytes(path: str | Path) -> list[bytes]:
    """Every record of the log at ``path``, as raw protobuf bytes, in write order."""
    data = Path(path).read_bytes()
    if len(data) < HEADER_LEN or data[:4] != HEADER:
        raise LogFormatError(f"{path}: no W&B header")
    magic, version = struct.unpack("<HB", data[4:7])
    if magic != MAGIC or version != VERSION:
        raise LogFormatError(f"{path}: magic {magic:#x} version {version}, expected {MAGIC:#x} {VERSION}")
    records: list[bytes] = []
    pending: bytearray | None = None
    pos = HEADER_LEN
    while pos < len(data):
        left_in_block = BLOCK_LEN - pos % BLOCK_LEN
        if left_in_block < CHUNK_HEADER_LEN:
            pos += left_in_block  # zero padding at the end of a block
            continue
        if pos + CHUNK_HEADER_LEN > len(data):
            raise LogFormatError(f"{path}: truncated chunk header at offset {pos}")
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER_LEN])
        start = pos + CHUNK_HEADER_LEN
        chunk = data[start : start + length]
        if len(chunk) != length:
            raise LogFormatError(f"{path}: truncated chunk at offset {pos}")
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise LogFormatError(f"{path}: checksum mismatch at offset {pos}")
        pos = start + length
        if kind == FULL:
            records.append(bytes(chunk))
        elif kind == FIRST:
            pending = bytearray(chunk)
        elif kind in (MIDDLE, LAST):
            if pending is None:
                raise LogFormatError(f"{path}: record piece without a start at offset {pos}")
            pending += chunk
            if kind == LAST:
                records.append(bytes(pending))
                pending = None
        else:
            raise LogFormatError(f"{path}: unknown chunk type {kind} at offset {pos}")
    return records


def read_records(path: str | Path) -> list[Any]:
    """Every record of the log at ``path`` as a parsed ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2  # tests may import wandb; the daemon never does

    out = []
    for raw in read_record_bytes(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        out.append(record)
    return out


def read_alerts(path: str | Path) -> list[dict[str, Any]]:
    """The alert records of the log: ``{"title", "text", "level", "wait_duration_ms"}`` each."""
    return [
        {
            "title": r.alert.title,
            "text": r.alert.text,
            "level": r.alert.level,
            "wait_duration_ms": r.alert.wait_duration,
        }
        for r in read_records(path)
        if r.WhichOneof("record_type") == "alert"
    ]


def read_run_record(path: str | Path) -> Any:
    """The first ``run`` record (id, project, group, job type...)."""
    for record in read_records(path):
        if record.WhichOneof("record_type") == "run":
            return record.run
    raise LogFormatError(f"{path}: no run record")
