"""How much memory a model needs to train, estimated from its config before any array is allocated,
and how much this process may use."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sgdcli.config import schema as cfg
from sgdcli.errors import ConfigError

# Optimizer state arrays kept per parameter array (sgd: the velocity, only with momentum).
STATE_SLOTS = {
    cfg.SgdConfig: lambda c: 1 if c.momentum > 0 else 0,
    cfg.AdagradConfig: lambda c: 1,
    cfg.RmspropConfig: lambda c: 2 if c.momentum > 0 else 1,
    cfg.AdamConfig: lambda c: 2,
    cfg.AdamwConfig: lambda c: 2,
    cfg.PerturbConfig: lambda c: 0,
}
CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")


@dataclass(frozen=True)
class Estimate:
    """Bytes for the parameters, their gradients, the optimizer state and one batch's activations."""

    parameters: int
    gradients: int
    optimizer_state: int
    activations: int
    batch: int  # the rows whose activations are counted: a training batch, or an evaluation chunk
    evaluation: bool = False  # True when the evaluation chunk needs more than a training batch

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_state + self.activations

    def describe(self) -> str:
        parts = [("parameters", self.parameters), ("gradients", self.gradients),
                 ("optimizer state", self.optimizer_state),
                 (f"activations of {'an evaluation pass over' if self.evaluation else 'a batch of'} {self.batch} "
                  "samples", self.activations)]
        shown = ", ".join(f"{label} {size_text(size)}" for label, size in parts if size)
        return f"about {size_text(self.total)} ({shown})"


def estimate(model: cfg.ModelConfig, in_features: int, batch: int, optimizer: cfg.OptimizerConfig | None,
             dtype: str | np.dtype | None = None, eval_rows: int = 0) -> Estimate:
    """The memory one training update of this model needs, in bytes (arithmetic on the config only).

    Parameters: D·M + M per dense layer. Gradients: as many again (none for `perturb`, which takes no
    gradient). Optimizer state: the parameters times the optimizer's state arrays (Adam: m and v).
    Activations: each layer's (batch, width) output kept for the backward pass, plus the input and
    two arrays of the widest layer for the backward pass's dout and dx. The losses measured after
    each epoch run `eval_rows` samples at a time, keeping no caches: the input and output of the widest
    layer; when that is more, it is what counts.
    """
    itemsize = np.dtype(dtype or model.dtype).itemsize
    width, count, outputs = in_features, 0, [in_features]
    for layer in model.layers:
        if isinstance(layer, cfg.DenseConfig):
            count += width * layer.units + layer.units
            width = layer.units
        outputs.append(width)
    parameters = count * itemsize
    slots = STATE_SLOTS[type(optimizer)](optimizer) if optimizer is not None else 0
    gradients = 0 if isinstance(optimizer, cfg.PerturbConfig) else parameters
    activations = batch * (sum(outputs) + 2 * max(outputs)) * itemsize
    evaluation = eval_rows * 2 * max(outputs) * itemsize
    if evaluation > activations:
        return Estimate(parameters, gradients, slots * parameters, evaluation, eval_rows, evaluation=True)
    return Estimate(parameters, gradients, slots * parameters, activations, batch)


def available() -> tuple[int, str]:
    """The most memory this process may use, in bytes, and what sets that limit: the machine's
    physical memory, the address-space limit (`ulimit -v`) or a container's cgroup limit."""
    limits = [(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's physical memory")]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append((soft, "the address-space limit (ulimit -v)"))
    try:
        text = CGROUP_LIMIT.read_text().strip()
        if text.isdigit():
            limits.append((int(text), "the container's memory limit (cgroup memory.max)"))
    except OSError:
        pass
    return min(limits)


def check_fits(needed: Estimate, what: str, source: str | None) -> None:
    """ConfigError (naming `source` and the key `model.layers`) when `needed` exceeds what is available."""
    limit, reason = available()
    hint = "" if needed.evaluation else ", or a smaller batch"  # evaluation chunks do not follow the batch
    if needed.total > limit:
        raise ConfigError(f"model.layers: {what} needs {needed.describe()}; expected at most {size_text(limit)} "
                          f"({reason}). Use fewer or narrower layers{hint}",
                          source=source)


def size_text(size: int) -> str:
    """1536 -> '1.5 KiB', 7.3e12 -> '6.6 TiB' (binary units, as `free -h` shows them)."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
