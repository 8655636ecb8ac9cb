"""PNG plots: loss curves and optimizer paths (matplotlib is imported only when a plot is drawn)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sgdcli.fileio import atomic_write

AXIS_LABELS = {"epoch": "epoch", "step": "updates (optimizer steps)", "updates": "updates (optimizer steps)",
               "samples": "samples seen", "forward_passes": "forward passes", "seconds": "training seconds"}


@dataclass(frozen=True)
class Curve:
    label: str
    x: list[float]
    train: list[float | None]
    val: list[float | None]
    diverged: bool = False

    @classmethod
    def from_rows(cls, label: str, rows: list[dict], column: str, diverged: bool = False) -> "Curve":
        """Train loss (the whole-set measurement when recorded) and validation loss against `column`."""
        train_col = "train_loss_full" if any(r.get("train_loss_full") is not None for r in rows) else "train_loss"
        rows = [r for r in rows if r.get(column) is not None]
        return cls(label, [r[column] for r in rows], [r.get(train_col) for r in rows], [r.get("val_loss") for r in rows],
                   diverged)


def legend(axes: Any, **options: Any) -> None:
    """A legend on `axes` when something on it is labelled: none (no empty box, no matplotlib warning) otherwise."""
    if axes.get_legend_handles_labels()[0]:
        axes.legend(**options)


def png(draw: Callable[[Any], None], size: tuple[float, float] = (8, 5)) -> bytes:
    """Draw on one fresh axes with `draw(axes)`, add a grid and legend, return the PNG bytes."""

    def draw_one(figure: Any, axes: Any) -> None:
        draw(axes[0, 0])
        axes[0, 0].grid(True, alpha=0.3)
        legend(axes[0, 0], fontsize=7, loc="best")

    return figure_png(draw_one, 1, 1, size)


def loss_curves(curves: list[Curve], x_axis: str, path: Path) -> Path:
    """One axes: each run one colour, training loss solid, validation loss dashed.

    The y range comes from the runs that did not diverge (all runs if every one did), so a run
    whose loss blew up does not squash the others; it is drawn up to its last finite point and
    marked there with an x ("diverged")."""
    steady = [c for c in curves if not c.diverged] or curves

    def draw(axes: Any) -> None:
        ends = []  # (x, y, colour) of each diverged run's last finite point
        for index, curve in enumerate(curves):
            colour = f"C{index % 10}"
            for values, style, kind in ((curve.train, "-", "train"), (curve.val, "--", "val")):
                points = [(x, y) for x, y in zip(curve.x, values) if y is not None and math.isfinite(y)]
                if not points:
                    continue
                xs, ys = zip(*points)
                axes.plot(xs, ys, style, color=colour, marker="o" if len(xs) < 3 else None, markersize=3,
                          label=f"{curve.label} ({kind}{', diverged' if curve.diverged else ''})")
                if curve.diverged:
                    ends.append((xs[-1], ys[-1], colour))
        low, high = _finite_range(steady)
        log = low is not None and low > 0 and high / low > 30 and high <= LOG_TOP
        if log:
            axes.set_yscale("log")
        if low is not None and (len(steady) < len(curves) or max(abs(low), abs(high)) > LOG_TOP):
            axes.set_ylim(*_padded(low, high, log))
        bottom, top = axes.get_ylim()
        for x, y, colour in ends:  # off the chart: marked at its edge, where the curve leaves it
            axes.plot([x], [min(max(y, bottom), top)], "x", color=colour, markersize=10, markeredgewidth=2,
                      clip_on=False)
        axes.set_xlabel(AXIS_LABELS.get(x_axis, x_axis))
        axes.set_ylabel("loss")
        axes.set_title("training (solid) and validation (dashed) loss"
                       + ("; x: where a diverged run stopped" if len(steady) < len(curves) else ""))

    atomic_write(path, png(draw))
    return path


# Losses above LOG_TOP are drawn on a linear axis, with limits set here: matplotlib's log locator puts
# ticks up to two strides of decades past the top, which overflow to inf (an OverflowError) near 1e300.
# Its linear locator fails on a range near float max, so a linear axis ends at AXIS_LIMIT at most (a
# curve above it leaves the chart at the top).
LOG_TOP, AXIS_LIMIT = 1e200, 1e300


def _padded(low: float, high: float, log: bool) -> tuple[float, float]:
    """y limits 5% beyond [low, high] (of the decades on a log axis), finite and within AXIS_LIMIT."""
    if log:
        pad = 10 ** (0.05 * math.log10(high / low))
        bottom, top = low / pad, high * pad
        return (bottom if bottom > 0 else low), min(top, AXIS_LIMIT)
    low, high = max(low, -AXIS_LIMIT), min(high, AXIS_LIMIT)
    pad = 0.05 * (high - low or abs(high) or 1.0)
    return max(low - pad, -AXIS_LIMIT), min(high + pad, AXIS_LIMIT)


def _finite_range(curves: list[Curve]) -> tuple[float | None, float | None]:
    values = [v for c in curves for v in c.train + c.val if v is not None and math.isfinite(v)]
    return (min(values), max(values)) if values else (None, None)


def objective_path(objective: Any, path: np.ndarray, losses: np.ndarray, title: str, out: Path) -> Path:
    """The parameters' path drawn over the function: a curve in 1-D, a contour map in 2-D."""
    window = [_window(low, high, path[:, d]) for d, (low, high) in enumerate(objective.view)]
    shown = np.all([(path[:, d] >= window[d][0]) & (path[:, d] <= window[d][1]) for d in range(path.shape[1])],
                   axis=0)
    one_dim = path.shape[1] == 1

    def draw(axes: Any) -> None:
        if one_dim:
            xs = np.linspace(*window[0], 400)
            axes.plot(xs, [objective.value(np.array([x])) for x in xs], color="0.4", label="f(w)")
            axes.plot(path[shown, 0], losses[shown], "-o", color="C1", markersize=3, linewidth=0.8, label="path")
            axes.set_xlabel("w")
            axes.set_ylabel("f(w)")
        else:
            contour(axes, objective, window)
            axes.plot(path[shown, 0], path[shown, 1], "-o", color="C1", markersize=2.5, linewidth=0.8, label="path")
        end = path[shown][-1] if shown.any() else path[0]
        axes.plot(*((path[0, 0], losses[0]) if one_dim else path[0]), "s", color="C3", markersize=7, label="start")
        axes.plot(*((end[0], objective.value(end)) if one_dim else end), "*", color="C2", markersize=12,
                  label=f"end (step {len(path) - 1})")
        hidden = int((~shown).sum())
        axes.set_title(title + (f"\n({hidden} points off the chart)" if hidden else ""), fontsize=9)

    atomic_write(out, png(draw, (7, 5)))
    return out


def contour(axes: Any, objective: Any, window: list[tuple[float, float]]) -> None:
    """Contour lines of log(1 + f − min f) of a 2-parameter objective over `window`, axes labelled."""
    xs, ys = np.linspace(*window[0], 300), np.linspace(*window[1], 300)
    grid = np.array([[objective.value(np.array([x, y])) for x in xs] for y in ys])
    lowest = min(grid.min(), min(objective.value(np.array(m)) for m in objective.minima))
    axes.contour(xs, ys, np.log1p(grid - lowest), levels=25, cmap="viridis", linewidths=0.7)
    names = getattr(objective, "axis_names", ("x", "y"))
    axes.set_xlabel(names[0])
    axes.set_ylabel(names[1])


def objective_paths(objective: Any, paths: list[tuple[str, np.ndarray]], title: str, out: Path) -> Path:
    """Several runs' paths (label, (steps + 1, 2) array) over one contour map of the same 2-D objective."""
    everything = np.concatenate([path for _, path in paths])
    window = [_window(low, high, everything[:, d]) for d, (low, high) in enumerate(objective.view)]

    def draw(axes: Any) -> None:
        contour(axes, objective, window)
        for index, (label, path) in enumerate(paths):
            axes.plot(path[:, 0], path[:, 1], "-o", color=f"C{(index + 1) % 10}", markersize=2, linewidth=0.8,
                      label=f"{label} ({len(path) - 1} steps)")
            axes.plot(*path[-1], "*", color=f"C{(index + 1) % 10}", markersize=11)
        for minimum in objective.minima:
            axes.plot(*minimum, "+", color="k", markersize=12, label="minimum")
        axes.plot(*paths[0][1][0], "s", color="0.2", markersize=6, label="start")
        axes.set_xlim(*window[0])
        axes.set_ylim(*window[1])
        axes.set_title(title, fontsize=9)

    atomic_write(out, png(draw, (7, 5.5)))
    return out


def _window(low: float, high: float, values: np.ndarray) -> tuple[float, float]:
    """The plotting range: the function's own window, widened for a path that leaves it (within reason)."""
    width = high - low
    near = values[(values > low - 2 * width) & (values < high + 2 * width)]
    if len(near):
        low, high = min(low, near.min()), max(high, near.max())
    pad = 0.03 * (high - low)
    return low - pad, high + pad


def figure_png(draw: Callable[[Any, Any], None], rows: int, columns: int, size: tuple[float, float],
               dpi: int = 110, sharex: bool = False) -> bytes:
    """A rows × columns grid of axes drawn by `draw(figure, axes (rows, columns) array)`; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(rows, columns, figsize=size, dpi=dpi, sharex=sharex, squeeze=False)
    try:
        draw(figure, axes)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    return buffer.getvalue()


def write_panels(draw: Callable[[list[Any]], None], panels: int, out: Path, width: float = 8,
                 panel_height: float = 2.6) -> Path:
    """Panels stacked vertically (shared x axis), drawn by `draw(list of axes)`; each gets a grid and
    a legend. Written atomically to `out` as PNG."""

    def draw_all(figure: Any, axes: Any) -> None:
        axes_list = list(axes[:, 0])
        draw(axes_list)
        for each in axes_list:
            each.grid(True, alpha=0.3)
            legend(each, fontsize=6, loc="best", ncol=2)

    atomic_write(out, figure_png(draw_all, panels, 1, (width, 0.6 + panel_height * panels), sharex=True))
    return out


def conv_filters(initial: np.ndarray, final: np.ndarray, title: str, path: Path) -> Path:
    """A conv layer's kernels (F, C, kh, kw) as small images, initial (left) next to final (right).

    One tile per filter; C = 3 is drawn as RGB, any other C as the mean over channels. Each side is
    scaled symmetrically to its own largest |weight| (grey = 0, light = positive, dark = negative).
    """

    def draw(figure: Any, axes: Any) -> None:
        for side, weights, label in ((axes[0, 0], initial, "initial"), (axes[0, 1], final, "final")):
            side.imshow(_mosaic(weights), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            side.set_title(f"{label} (|w| ≤ {np.abs(weights).max():.3g})", fontsize=9)
            side.set_axis_off()
        figure.suptitle(title, fontsize=10)

    atomic_write(path, figure_png(draw, 1, 2, (9, 4.8)))
    return path


def _mosaic(weights: np.ndarray) -> np.ndarray:
    """Tiles of (F, C, kh, kw) kernels in a near-square grid, values mapped to [0, 1] (0.5 = zero), gaps white."""
    weights = np.asarray(weights, dtype=np.float64)
    tiles = weights.transpose(0, 2, 3, 1) if weights.shape[1] == 3 else weights.mean(axis=1)[..., None]
    tiles = 0.5 + 0.5 * tiles / max(float(np.abs(tiles).max()), 1e-12)
    count, kh, kw, channels = tiles.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    mosaic = np.ones((rows * (kh + 1) - 1, columns * (kw + 1) - 1, channels))
    for index in range(count):
        r, c = divmod(index, columns)
        mosaic[r * (kh + 1) : r * (kh + 1) + kh, c * (kw + 1) : c * (kw + 1) + kw] = tiles[index]
    return mosaic[..., 0] if channels == 1 else mosaic
