"""The identity of a run's data: each file's SHA-256 and size, and the validation split itself.

Recorded in every checkpoint at training time (meta `data`), and checked before a run's own data
is used again (eval, landscape, resume), so a file that changed since training is refused instead
of silently giving other rows, other classes or a split that mixes training and validation rows.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from sgdcli.config import data_sources
from sgdcli.config.schema import ExperimentConfig
from sgdcli.data.dataset import Dataset
from sgdcli.errors import CheckpointError, DataError, UsageError
from sgdcli.training import build

CHUNK = 1 << 20
ROLES_OF_SPLIT = {"train": ("train", "validation"), "val": ("train", "validation"), "test": ("test",)}


def file_identity(path: Path) -> dict[str, Any]:
    """{"path", "sha256" (hex, of the file's bytes), "size" (bytes)} of one data file."""
    digest, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror or exc}", source=str(path)) from None
    return {"path": str(path), "sha256": digest.hexdigest(), "size": size}


def record(config: ExperimentConfig, mask: np.ndarray | None) -> dict[str, Any]:
    """What a checkpoint stores about its data: every file with its role, and the split.

    `split.validation_mask` is the base64 of np.packbits of the (N,) validation mask over the
    training file's rows (both splits keep file order, so the mask determines them exactly).
    """
    files = [{"role": role, **file_identity(path)} for role, path in data_files(config)]
    split: dict[str, Any] = {"rows": None if mask is None else int(len(mask))}
    if mask is not None:
        split["validation_rows"] = int(mask.sum())
        split["validation_mask"] = base64.b64encode(np.packbits(mask).tobytes()).decode("ascii")
    return {"files": files, "split": split}


def data_files(config: ExperimentConfig) -> list[tuple[str, Path]]:
    """Every file the config's data is read from, with its role: train, validation or test."""
    data = config.data
    if isinstance(data, data_sources.IdxDataConfig):
        found = [(split, build.idx_files(data, split)) for split in ("train", "test")]
        return [(split, path) for split, pair in found if pair is not None for path in pair]
    roles = [("train", getattr(data, "path", None)), ("validation", getattr(data, "validation_file", None)),
             ("test", getattr(data, "test_file", None))]
    return [(role, Path(path)) for role, path in roles if path is not None]


def decode_mask(split: dict[str, Any]) -> np.ndarray | None:
    """The (N,) bool validation mask stored by `record` (None: the run had no drawn split)."""
    if split.get("rows") is None:
        return None
    bits = np.frombuffer(base64.b64decode(split["validation_mask"], validate=True), np.uint8)
    mask = np.unpackbits(bits, count=int(split["rows"])).astype(bool)
    if int(mask.sum()) != int(split["validation_rows"]):
        raise ValueError("the validation mask does not hold the recorded number of rows")
    return mask


def verify(recorded: dict[str, Any], roles: tuple[str, ...], hint: str) -> None:
    """DataError (exit 3) naming the first file of `roles` that is missing or changed since training."""
    for entry in recorded.get("files", []):
        if entry.get("role") not in roles:
            continue
        path = Path(entry["path"])
        if not path.exists():
            raise DataError(f"missing: the run was trained on this file (SHA-256 {entry['sha256'][:12]}…, "
                            f"{entry['size']} bytes){hint}", source=str(path))
        now = file_identity(path)
        if (now["sha256"], now["size"]) != (entry["sha256"], entry["size"]):
            raise DataError(f"changed since training: it was {entry['size']} bytes with SHA-256 "
                            f"{entry['sha256'][:12]}…, it is now {now['size']} bytes with SHA-256 "
                            f"{now['sha256'][:12]}…{hint}", source=str(path))


def own_split(config: ExperimentConfig, meta: dict[str, Any], class_names: tuple[str, ...] | None,
              split: str, source: str, instead: str) -> Dataset:
    """One split ("train", "val" or "test") of a run's own data, exactly as it was in training.

    Raises DataError when a data file changed since training (a checkpoint written before sgdcli
    recorded its data is not checked, and its split is redrawn from the seed), CheckpointError when
    the recorded identity is unreadable, UsageError (suggesting `instead`) when the run has no such split.
    """
    recorded = meta.get("data")
    if recorded is not None:
        try:
            verify(recorded, ROLES_OF_SPLIT[split], "; to evaluate the data as it is now, give it with --data")
        except (KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"damaged record of the training data ({exc!r})", source=source) from None
    if split == "test":
        dataset = build.load_test_set(config, class_names, tuple(meta.get("feature_names") or ()) or None)
        if dataset is None:
            raise UsageError("--split test: the run's config names no test data (data.test_file, or an IDX "
                             f"test pair); {instead}")
        return dataset
    mask = None
    if recorded is not None:
        try:
            mask = decode_mask(recorded["split"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"damaged record of the validation split ({exc})", source=source) from None
    rngs = build.Rngs.from_seed(config.seed)
    train_set, val_set = build.split_with_mask(config, rngs, mask)[:2] if mask is not None else build.split_data(
        config, rngs)
    if split == "val" and val_set is None:
        raise UsageError("--split val: the run had no validation split (data.validation is 0)")
    return train_set if split == "train" else val_set
