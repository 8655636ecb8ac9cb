"""A trained model on two input features, drawn from a checkpoint (`sgdcli boundary RUN [--units]`):
the decision regions, and optionally each first-layer unit's activation over the same plane, as
TensorFlow Playground draws them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from sgdcli import plots
from sgdcli.analysis import landscape as line
from sgdcli.engine.layers import Dense
from sgdcli.errors import UsageError
from sgdcli.fileio import atomic_write
from sgdcli.training import boundary, build
from sgdcli.training.trained import load_trained

MAX_UNITS = 64  # maps drawn at most (the first 64 units)


def default_prefix(run: str | Path) -> Path:
    """`boundary-<run name>` in the current directory: never inside the run."""
    run = Path(run)
    return Path(f"boundary-{run.name if run.is_dir() else run.stem}")


def output_paths(prefix: str | Path, units: bool) -> list[Path]:
    """PREFIX.png and, with `units`, PREFIX-units.png."""
    prefix = Path(prefix)
    return [prefix.with_name(prefix.name + ".png")] + ([prefix.with_name(prefix.name + "-units.png")] if units else [])


def draw(run: str | Path, checkpoint: str | None = None, units: bool = False,
         out: str | Path | None = None) -> tuple[list[Path], np.ndarray | None]:
    """PREFIX.png (regions and data of the checkpoint, default the run's best) and, with `units`,
    PREFIX-units.png: the output of every first-layer unit (after its activation) over the plane.
    Returns the files and the unit activations (units, GRID, GRID) (None without `units`)."""
    run = Path(run)
    path = line._find_checkpoint(run, checkpoint) if run.is_dir() else run
    trained = load_trained(path)
    config = trained.config
    prepared = build.prepare_data(config, build.Rngs.from_seed(config.seed))
    recorder = boundary.build_recorder(prepared, config.is_classification, int(trained.meta["outputs"]), 1)
    if recorder is None or not config.is_classification:
        raise UsageError(f"sgdcli boundary draws classifiers on two input features; {path} has "
                         f"{len(trained.feature_names)} feature(s)"
                         f"{'' if config.is_classification else ' and a regression loss'}")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a diverged model's outputs: inf, NaN
        recorder.record(int(trained.meta.get("epoch") or 0), trained.model, last=True)
    prefix = Path(out) if out is not None else default_prefix(run)
    title = f"{run.name if run.is_dir() else path.name}"
    png_path, *units_paths = output_paths(prefix, units)
    files = recorder.write_png(png_path, title)
    if not units:
        return files, None
    first = next((layer for layer in trained.model.layers if isinstance(layer, Dense)), None)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        activations, _ = first.forward(recorder.points.astype(trained.model.dtype), training=False)
    maps = np.asarray(activations, dtype=np.float64).T.reshape(-1, boundary.GRID, boundary.GRID)
    units_path = units_paths[0]
    atomic_write(units_path, _units_png(maps[:MAX_UNITS], recorder, title, len(maps)))
    return [*files, units_path], maps


def _units_png(maps: np.ndarray, recorder: boundary.BoundaryRecorder, title: str, total: int) -> bytes:
    columns = min(8, len(maps))
    rows = math.ceil(len(maps) / columns)
    extent = (recorder.axes[0][0], recorder.axes[0][-1], recorder.axes[1][0], recorder.axes[1][-1])
    x, y = recorder.data["train"]

    def draw(figure: Any, axes: Any) -> None:
        for index, each in enumerate(axes.flat):
            each.set_xticks([])
            each.set_yticks([])
            if index >= len(maps):
                each.axis("off")
                continue
            values = maps[index]
            reach = float(np.abs(values).max()) or 1.0
            each.imshow(values, origin="lower", extent=extent, aspect="auto", cmap="RdBu_r", vmin=-reach, vmax=reach)
            each.scatter(x[:, 0], x[:, 1], s=0.5, c=[f"C{c % 10}" for c in y], alpha=0.5, linewidths=0)
            each.set_title(f"unit {index}", fontsize=7)
        shown = f"first {len(maps)} of {total}" if total > len(maps) else f"all {total}"
        figure.suptitle(f"{title}: first-layer units over the plane ({shown}; red > 0 > blue)", fontsize=8)

    return plots.figure_png(draw, rows, columns, (1.6 * columns, 1.6 * rows + 0.5), dpi=100)
