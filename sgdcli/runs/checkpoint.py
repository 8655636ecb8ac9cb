"""Checkpoint files: safetensors arrays plus JSON metadata, with a content checksum. Never pickle.

Layout (readable by any safetensors reader): tensors `model/<layer>.<param>` (the weights),
`optimizer/<state>/<layer>.<param>` and `optimizer/iterations` (the optimizer state),
`data/shift` and `data/scale` (feature scaling). The header's `__metadata__` holds
`format` = "sgdcli-checkpoint", `format_version`, `sha256` (over the `meta` text, then every
tensor's name, dtype, shape and bytes, in name order) and `meta`, a JSON object: epoch, updates, samples, RNG states,
best validation loss, class and feature names, and the resolved config.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from sgdcli.errors import CheckpointError
from sgdcli.fileio import atomic_write, read_bytes

FORMAT = "sgdcli-checkpoint"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
MAX_HEADER_BYTES = 16 * 1024 * 1024


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
    return save_tensors(tensors, metadata=metadata)


def save(path: Path, checkpoint: Checkpoint, before_replace: Callable[[], None] | None = None) -> None:
    """Write atomically; `before_replace` runs when the new file is on disk, before it takes the name."""
    atomic_write(path, encode(checkpoint), before_replace)


def load(path: Path) -> Checkpoint:
    """Read and verify a checkpoint; CheckpointError naming the file for anything wrong."""
    source = str(path)
    raw = read_bytes(path, CheckpointError, "a checkpoint file")
    metadata = _read_metadata(raw, source)
    try:
        tensors = load_tensors(raw)
    except Exception as exc:  # safetensors raises its own error types for every malformed layout
        raise CheckpointError(f"damaged checkpoint: {exc}", source=source) from None
    if not isinstance(metadata.get("meta"), str) or checksum(tensors, metadata["meta"]) != metadata.get("sha256"):
        raise CheckpointError("checksum mismatch: the file is damaged", source=source)
    try:
        meta = json.loads(metadata["meta"])
        if not isinstance(meta, dict):
            raise ValueError
    except ValueError:
        raise CheckpointError("damaged checkpoint: metadata is not valid JSON", source=source) from None
    try:
        return Checkpoint(
            params={k[6:]: v for k, v in tensors.items() if k.startswith("model/")},
            optimizer={k[10:]: v for k, v in tensors.items() if k.startswith("optimizer/")},
            shift=tensors["data/shift"],
            scale=tensors["data/scale"],
            meta=meta,
        )
    except KeyError as exc:
        raise CheckpointError(f"damaged checkpoint: tensor {exc} is missing", source=source) from None


def _read_metadata(raw: bytes, source: str) -> dict[str, str]:
    """Parse the safetensors header ourselves first, so a hostile file is refused cheaply."""
    what = "not an sgdcli checkpoint (expected a safetensors file"
    if len(raw) < 8:
        raise CheckpointError(f"{what}; received {len(raw)} bytes)", source=source)
    (size,) = struct.unpack("<Q", raw[:8])
    # A safetensors header is JSON right after its 8-byte length, whose bytes may be anything
    # (a length of 0x1580 starts with 0x80 like a pickle): sniff other formats only without it.
    if raw[8:9] != b"{" and raw[:1] == b"\x80":
        raise CheckpointError(f"{what}; received a pickle, which sgdcli never loads)", source=source)
    if raw[8:9] != b"{" and raw[:2] == b"PK":
        raise CheckpointError(f"{what}; received a zip archive (PyTorch?))", source=source)
    if size > MAX_HEADER_BYTES:
        raise CheckpointError(f"{what}; received unknown bytes claiming a {size}-byte header)", source=source)
    if size > len(raw) - 8:
        raise CheckpointError(f"damaged (truncated?): the header needs {size} bytes, the file holds {len(raw) - 8}",
                              source=source)
    try:
        header = json.loads(raw[8 : 8 + size])
        metadata = header["__metadata__"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{what} with sgdcli metadata)", source=source) from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(f"{what} written by sgdcli)", source=source)
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"checkpoint format version {metadata.get('format_version')!r} is not supported "
                              f"(expected {FORMAT_VERSION})", source=source)
    return metadata
