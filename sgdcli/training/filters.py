"""filters.png: the first conv layer's kernels of a run, as initialised next to as trained."""

from __future__ import annotations

from pathlib import Path

from sgdcli import plots
from sgdcli.engine.conv import Conv2d
from sgdcli.engine.model import Sequential
from sgdcli.runs import checkpoint
from sgdcli.runs import directory as runs

FILTERS_PLOT = "filters.png"


def write_filters_plot(run_dir: Path, model: Sequential) -> Path | None:
    """Draw the first Conv2d layer's weight from the run's initial checkpoint and from `model`; None
    for a model without conv layers (or a run whose initial checkpoint was deleted)."""
    index = next((i for i, layer in enumerate(model.layers) if isinstance(layer, Conv2d)), None)
    initial_path = run_dir / runs.CHECKPOINTS / runs.INITIAL
    if index is None or not initial_path.is_file():
        return None
    layer = model.layers[index]
    initial = checkpoint.load(initial_path).params[f"{index}.weight"]
    f, c, kh, kw = layer.weight.shape
    title = f"layer {index} (conv2d): {f} filters of {c} × {kh} × {kw}" + ("" if c in (1, 3) else ", mean over channels")
    return plots.conv_filters(initial, layer.weight, title, run_dir / FILTERS_PLOT)
