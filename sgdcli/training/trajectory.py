"""The weights along the way, for plane landscapes (`sgdcli landscape RUN --plane`): a few snapshots
of every parameter in `trajectory.safetensors`, bounded in size."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from sgdcli.errors import RunDirError
from sgdcli.fileio import atomic_write

FILE = "trajectory.safetensors"
MAX_SNAPSHOTS = 41  # the initial weights, every k = ceil(epochs / 40) epochs, and the last epoch
MAX_BYTES = 4 * 1024 * 1024  # a run grows by at most this much; bigger models keep fewer snapshots


class TrajectoryRecorder:
    """Float32 copies of the weights at epochs 0, k, 2k, ... and the last, at most `snapshots` of them
    (and never more than MAX_BYTES): `record` after each epoch, `write` at the end of the run."""

    def __init__(self, params: dict[str, np.ndarray], epochs: int) -> None:
        self.names = list(params)
        size = sum(array.size for array in params.values()) * 4
        self.snapshots = min(MAX_SNAPSHOTS, MAX_BYTES // max(size, 1))
        self.every = max(1, math.ceil(epochs / max(self.snapshots - 2, 1)))
        self.epochs: list[int] = []
        self.weights: dict[str, list[np.ndarray]] = {name: [] for name in self.names}

    def record(self, epoch: int, params: dict[str, np.ndarray], last: bool = False) -> None:
        if self.snapshots < 2 or (epoch % self.every and not last) or (self.epochs and self.epochs[-1] >= epoch):
            return
        if len(self.epochs) >= self.snapshots:  # only a `last` beyond the plan: replace the previous extra one
            self._drop(-1)
        self.epochs.append(epoch)
        for name in self.names:
            self.weights[name].append(params[name].astype(np.float32))

    def _drop(self, index: int) -> None:
        del self.epochs[index]
        for stack in self.weights.values():
            del stack[index]

    def resume_from(self, run_dir: Path, epoch: int) -> None:
        """Continue the run's saved trajectory: keep its snapshots up to `epoch` (where training resumes)."""
        saved = read(run_dir)
        if saved is None or list(saved[1]) != self.names:
            return
        epochs, weights = saved
        keep = [i for i, e in enumerate(epochs) if e <= epoch]
        self.epochs = [int(epochs[i]) for i in keep]
        self.weights = {name: [weights[name][i] for i in keep] for name in self.names}

    def write(self, run_dir: Path) -> Path | None:
        if len(self.epochs) < 2:
            return None
        tensors = {f"weights/{name}": np.stack(self.weights[name]) for name in self.names}
        tensors["epochs"] = np.array(self.epochs, dtype=np.int64)
        path = run_dir / FILE
        atomic_write(path, save_tensors(tensors, metadata={"format": "sgdcli-trajectory"}))
        return path


def read(run_dir: Path) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """(epochs (T,), {parameter: (T, *shape)}) from a run's trajectory file, or None without one."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return None
    try:
        tensors = load_tensors(path.read_bytes())
        epochs = tensors.pop("epochs")
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise RunDirError(f"damaged trajectory file ({exc})", source=str(path)) from None
    return epochs, {key.removeprefix("weights/"): value for key, value in tensors.items()}
