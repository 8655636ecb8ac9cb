"""Checkpoint files: safetensors arrays plus JSON metadata, with a content checksum. Never pickle.

Layout (readable by any safetensors reader): tensors `model/<layer>.<param>` (the weights),
`optimizer/<state>/<layer>.<param>` and `optimizer/iterations` (the optimizer state),
`data/shift` and `data/scale` (feature scaling). The header's `__metadata__` holds
`format` = "sgdcli-checkpoint", `format_version`, `sha256` (over the `meta` text, then every
tensor's name, dtype, shape and bytes, in name order) and `meta`, a JSON object: epoch, updates, samples, RNG states,
best validation loss, class and feature names, and the resolved config.

`meta` is the one JSON sgdcli writes with Python's NaN and Infinity (deliberately not strict, unlike
sgdcli.strict_json's outputs): it is resume state that must come back bit for bit (a partial epoch's
sums, the last metrics row), and null would lose it. Everything of it shown to people passes through
a strict writer (summary.json, eval, export metadata).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from sgdcli.errors import CheckpointError, DamagedCheckpointError
from sgdcli.fileio import atomic_write, read_bytes

FORMAT = "sgdcli-checkpoint"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
# How a safetensors header holding our metadata begins (safetensors writes the keys in any order)
OUR_HEADER_START = re.compile(rb'\{"__metadata__":\{"(format|format_version|meta|sha256)":"')
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit: every header its writer makes loads


@dataclass
class Checkpoint:
    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    shift: np.ndarray
    scale: np.ndarray
    meta: dict[str, Any]


def _contiguous(array: np.ndarray) -> np.ndarray:
    # np.ascontiguousarray would turn a 0-d array (a step counter) into shape (1,)
    return np.array(array, order="C", copy=None)


def checksum(tensors: dict[str, np.ndarray], meta: str) -> str:
    """sha256 over the `meta` JSON text, then each tensor's name, dtype, shape and bytes in name order."""
    digest = hashlib.sha256(meta.encode("utf-8"))
    for name in sorted(tensors):
        array = _contiguous(tensors[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def encode(checkpoint: Checkpoint) -> bytes:
    tensors = {f"model/{k}": v for k, v in checkpoint.params.items()}
    tensors.update({f"optimizer/{k}": v for k, v in checkpoint.optimizer.items()})
    tensors["data/shift"], tensors["data/scale"] = checkpoint.shift, checkpoint.scale
    tensors = {k: _contiguous(v) for k, v in tensors.items()}
    meta = json.dumps(checkpoint.meta, sort_keys=True)
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "sha256": checksum(tensors, meta), "meta": meta}
    try:
        return save_tensors(tensors, metadata=metadata)
    except Exception as exc:  # safetensors refuses a header above MAX_HEADER_BYTES
        raise CheckpointError(f"cannot encode the checkpoint: {exc}") from None


def save(path: Path, checkpoint: Checkpoint, before_replace: Callable[[], None] | None = None) -> None:
    """Write atomically; `before_replace` runs when the new file is on disk, before it takes the name."""
    atomic_write(path, encode(checkpoint), before_replace)


def load(path: Path) -> Checkpoint:
    """Read and verify a checkpoint.

    Raises DamagedCheckpointError for a file sgdcli wrote that is truncated or fails its checksum,
    CheckpointError (naming the file) for anything else that is not a checkpoint sgdcli can read.
    """
    source = str(path)
    return decode(read_bytes(path, CheckpointError, "a checkpoint file", regular_only=True), source)


def decode(raw: bytes, source: str) -> Checkpoint:
    """A checkpoint from the bytes `encode` made (a file's, or sent by another process), verified as `load` does."""
    metadata = _read_metadata(raw, source)
    try:
        tensors = load_tensors(raw)
    except Exception as exc:  # safetensors raises its own error types for every malformed layout
        raise DamagedCheckpointError(f"damaged checkpoint: {exc}", source=source) from None
    if not isinstance(metadata.get("meta"), str) or checksum(tensors, metadata["meta"]) != metadata.get("sha256"):
        raise DamagedCheckpointError("checksum mismatch: the file is damaged", source=source)
    try:
        meta = json.loads(metadata["meta"])
        if not isinstance(meta, dict):
            raise ValueError
    except ValueError:
        raise DamagedCheckpointError("damaged checkpoint: metadata is not valid JSON", source=source) from None
    try:
        return Checkpoint(
            params={k[6:]: v for k, v in tensors.items() if k.startswith("model/")},
            optimizer={k[10:]: v for k, v in tensors.items() if k.startswith("optimizer/")},
            shift=tensors["data/shift"],
            scale=tensors["data/scale"],
            meta=meta,
        )
    except KeyError as exc:
        raise DamagedCheckpointError(f"damaged checkpoint: tensor {exc} is missing", source=source) from None


def _foreign_kind(raw: bytes, source: str) -> str | None:
    """What a file that is not a checkpoint looks like (ONNX, gzip, IDX, CSV, JSON, YAML, text), or None.

    A safetensors file starts with its header length as 8 little-endian bytes, so it is never text."""
    if source.endswith(".onnx"):
        return "an ONNX model (sgdcli writes ONNX with sgdcli export but trains and reads its own checkpoints)"
    if raw[:2] == b"\x1f\x8b":
        return "a gzip-compressed file (IDX images or labels?)"
    if raw[:2] == b"\x00\x00" and len(raw) > 3 and raw[2] in (0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E) and 1 <= raw[3] <= 4:
        return "an IDX data file (images or labels)"
    head = raw[:65536]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # only a character cut at the end of the sample is still text
            return None
        text = head[: exc.start].decode("utf-8")
    if "\x00" in text or not text.strip():
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    first = lines[0].lstrip("\ufeff")
    if source.endswith((".csv", ".tsv")) or ("," in first and len(lines) > 1 and lines[1].count(",") == first.count(",")):
        return f"a CSV file (header: {first[:60]}{'...' if len(first) > 60 else ''}), data for --data"
    if first.lstrip().startswith(("{", "[")):
        return "a JSON file"
    if source.endswith((".yaml", ".yml")) or any(": " in line or line.rstrip().endswith(":")
                                                  for line in lines[:5] if not line.startswith("#")):
        return "a YAML file (a config? train it with sgdcli train)"
    return "a text file"


def _read_metadata(raw: bytes, source: str) -> dict[str, str]:
    """Parse the safetensors header ourselves first, so a hostile file is refused cheaply.

    A file is judged by parsing it: its first 8 bytes are the header length (little-endian u64),
    so they can be any bytes at all (a header of length 128 mod 256 begins with 0x80, the pickle
    opcode). Byte signatures only choose the wording once parsing has failed.
    """
    size = struct.unpack("<Q", raw[:8])[0] if len(raw) >= 8 else None
    looks_like_header = raw[8:9] == b"{"  # safetensors headers are JSON objects
    if size is None:
        _foreign(raw, source, f"{len(raw)} bytes")
    if size > MAX_HEADER_BYTES:
        _foreign(raw, source, f"unknown bytes claiming a {size}-byte header")
    if size > len(raw) - 8:
        if looks_like_header and (FORMAT.encode() in raw[8:] or OUR_HEADER_START.match(raw, 8) is not None):
            raise DamagedCheckpointError(f"damaged (truncated): the header needs {size} bytes, the file holds "
                                         f"{len(raw) - 8}", source=source)
        _foreign(raw, source, f"unknown bytes claiming a {size}-byte header, longer than the file")
    header_text = raw[8 : 8 + size]
    try:
        header = json.loads(header_text)
        metadata = header["__metadata__"]
    except (ValueError, KeyError, TypeError):
        if looks_like_header and b'"format":"' + FORMAT.encode() in header_text:
            raise DamagedCheckpointError("damaged checkpoint: its header is not valid JSON", source=source) from None
        _foreign(raw, source, "a file without sgdcli metadata")
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        _foreign(raw, source, "a safetensors file not written by sgdcli")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"checkpoint format version {metadata.get('format_version')!r} is not supported "
                              f"(expected {FORMAT_VERSION}; written by another version of sgdcli?)", source=source)
    return metadata


def _foreign(raw: bytes, source: str, received: str) -> NoReturn:
    """The error for a file that did not parse as an sgdcli checkpoint; its first bytes (and its name)
    choose the wording, in people's words where the kind of file is recognisable."""
    kind = _foreign_kind(raw, source)
    if kind is not None:
        raise CheckpointError(f"this is {kind}, not a checkpoint; expected a run directory or a {SUFFIX} "
                              "checkpoint written by sgdcli train", source=source)
    if raw[:1] == b"\x80":
        received = "a pickle, which sgdcli never loads"
    elif raw[:2] == b"PK":
        received = ("a NumPy .npz archive: data, not a model" if source.endswith(".npz")
                    else "a zip archive (PyTorch?)")
    raise CheckpointError(f"not an sgdcli checkpoint (expected a safetensors file with sgdcli metadata; "
                          f"received {received})", source=source)
