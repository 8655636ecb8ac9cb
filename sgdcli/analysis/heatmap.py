"""A two-key sweep as a picture (`sweep.png`): the final loss of every combination as a heatmap, diverged
cells marked, and for the `valley` objective the textbook optimal step size and momentum."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sgdcli import plots
from sgdcli.config.schema import AnyConfig, ObjectiveConfig
from sgdcli.fileio import atomic_write

FILE = "sweep.png"
DIVERGING = ("diverged", "diverging")


@dataclass
class Grid:
    """Loss per cell, [i, j] for y value i and x value j; NaN where no run finished."""

    x_key: str
    y_key: str
    x_values: list[str]
    y_values: list[str]
    losses: np.ndarray
    statuses: list[list[str]]
    metric: str  # which loss the colours are


def optimal_heavy_ball(smoothness: float, strong_convexity: float) -> tuple[float, float]:
    """Polyak's heavy ball on a quadratic with curvatures in [μ, L]: step 4/(√L + √μ)² and momentum
    ((√κ − 1)/(√κ + 1))², κ = L/μ (Goh, "Why Momentum Really Works", Distill 2017)."""
    root_l, root_mu = math.sqrt(smoothness), math.sqrt(strong_convexity)
    root_kappa = root_l / root_mu
    return 4 / (root_l + root_mu) ** 2, ((root_kappa - 1) / (root_kappa + 1)) ** 2


def grid(keys: list[str], values: list[list[str]], cells: list[dict[str, Any]]) -> Grid:
    """`cells`: one dict per sweep member with its two values (as given on --sweep) under the keys,
    `status`, the losses of compare's row and `first_loss` (the run's first recorded training loss).
    Colours: the final validation loss where every finished run has one, else the final training
    loss. A run whose final training loss is above its first is `diverging` (marked like
    `diverged`, its non-finite end not reached yet) and, like it, gets no colour."""
    x_key, y_key = keys
    has_val = all(c.get("final_val_loss") is not None for c in cells if c.get("status") != "failed")
    metric = "final_val_loss" if has_val else "final_train_loss"
    x_values, y_values = values
    losses = np.full((len(y_values), len(x_values)), np.nan)
    statuses = [["missing"] * len(x_values) for _ in y_values]
    for cell in cells:
        i, j = y_values.index(str(cell[y_key])), x_values.index(str(cell[x_key]))
        value, first, final = cell.get(metric), cell.get("first_loss"), cell.get("final_train_loss")
        status = str(cell.get("status"))
        if status == "completed" and first is not None and final is not None and not final <= first:
            status = "diverging"
        finite = isinstance(value, (int, float)) and math.isfinite(value) and status not in DIVERGING
        losses[i, j] = value if finite else np.nan
        statuses[i][j] = status
    return Grid(x_key, y_key, x_values, y_values, losses, statuses, metric)


def _edges(values: list[str]) -> tuple[np.ndarray, bool] | None:
    """Cell edges on a numeric axis (log when the values are positive and span more than 10×), or None."""
    try:
        numbers = np.array([float(v) for v in values])
    except ValueError:
        return None
    if len(numbers) < 2 or np.any(np.diff(numbers) <= 0):
        return None
    log = bool(np.all(numbers > 0) and numbers.max() / numbers.min() > 10)
    scaled = np.log10(numbers) if log else numbers
    middle = (scaled[1:] + scaled[:-1]) / 2
    edges = np.concatenate([[2 * scaled[0] - middle[0]], middle, [2 * scaled[-1] - middle[-1]]])
    return (10**edges if log else edges), log


def draw(data: Grid, title: str, out: Path, optimum: tuple[float, float] | None = None) -> Path:
    """The heatmap (log colour scale), each cell's loss written in it, diverged and diverging cells
    hatched, and `optimum` (x, y) as a star when the axes are numeric."""

    def paint(axes: Any) -> None:
        from matplotlib.colors import LogNorm

        x_edges, y_edges = _edges(data.x_values), _edges(data.y_values)
        numeric = x_edges is not None and y_edges is not None
        xe = x_edges[0] if numeric else np.arange(len(data.x_values) + 1) - 0.5
        ye = y_edges[0] if numeric else np.arange(len(data.y_values) + 1) - 0.5
        finite = data.losses[np.isfinite(data.losses) & (data.losses > 0)]
        norm = LogNorm(finite.min(), max(finite.max(), finite.min() * 1.0001)) if finite.size else None
        mesh = axes.pcolormesh(xe, ye, np.ma.masked_invalid(data.losses), cmap="viridis_r", norm=norm)
        if finite.size:
            axes.figure.colorbar(mesh, ax=axes, label=data.metric.replace("_", " "))
        for i in range(len(data.y_values)):
            for j in range(len(data.x_values)):
                cx, cy = _centre(xe, j, numeric and x_edges[1]), _centre(ye, i, numeric and y_edges[1])
                status, value = data.statuses[i][j], data.losses[i, j]
                if status in DIVERGING:
                    axes.fill([xe[j], xe[j + 1], xe[j + 1], xe[j]], [ye[i], ye[i], ye[i + 1], ye[i + 1]],
                              facecolor="0.9", hatch="xx", edgecolor="C3", linewidth=0)
                    axes.text(cx, cy, "diverged" if status == "diverged" else "grew", ha="center", va="center",
                              fontsize=7, color="C3", backgroundcolor="0.9")
                elif np.isfinite(value):  # dark text on the light (low-loss) end of viridis_r
                    light = norm is not None and value > 0 and norm(value) < 0.4
                    axes.text(cx, cy, f"{value:.3g}", ha="center", va="center", fontsize=7, color="k" if light else "w")
                else:
                    axes.text(cx, cy, status, ha="center", va="center", fontsize=7, color="0.3")
        if numeric:
            axes.set_xscale("log" if x_edges[1] else "linear")
            axes.set_yscale("log" if y_edges[1] else "linear")
            axes.set_xticks([float(v) for v in data.x_values], data.x_values)
            axes.set_yticks([float(v) for v in data.y_values], data.y_values)
            axes.minorticks_off()
            if optimum is not None:
                axes.plot(*optimum, "*", color="C1", markeredgecolor="k", markersize=16,
                          label=f"textbook optimum: {data.x_key.rsplit('.', 1)[-1]} {optimum[0]:.3g}, "
                                f"{data.y_key.rsplit('.', 1)[-1]} {optimum[1]:.3g}")
        else:
            axes.set_xticks(range(len(data.x_values)), data.x_values)
            axes.set_yticks(range(len(data.y_values)), data.y_values)
        axes.set_xlim(xe[0], xe[-1])
        axes.set_ylim(ye[0], ye[-1])
        axes.set_xlabel(data.x_key)
        axes.set_ylabel(data.y_key)
        axes.set_title(title, fontsize=9)
        axes.grid(False)

    atomic_write(out, plots.png(paint, (7.5, 5.5)))
    return out


def _centre(edges: np.ndarray, index: int, log: bool) -> float:
    low, high = edges[index], edges[index + 1]
    return math.sqrt(low * high) if log else (low + high) / 2


def for_sweep(base: AnyConfig, parsed: list[tuple[str, list]], members, rows: list[dict[str, Any]], records,
              out: Path) -> Path:
    """sweep.png of a two-key sweep (`parsed`: the keys and their values; `members`: the sweep's
    members; `rows`: the comparison's table; `records`: the finished runs' records); for the valley
    objective swept over step size and momentum, Polyak's optimum marked."""
    keys = [key for key, _ in parsed]
    by_run = {row["run"]: row for row in rows}
    first = {record.name: record.metrics[0].get("train_loss") for record in records if record.metrics}
    cells = []
    for member in members:
        name = member.run_dir.name if member.run_dir is not None else member.name
        cells.append({**by_run.get(name, {}), **dict(o.split("=", 1) for o in member.overrides),
                      "status": member.status, "first_loss": first.get(name)})
    optimum = None
    if (isinstance(base, ObjectiveConfig) and base.objective.type == "valley"
            and set(keys) == {"optimizer.learning_rate", "optimizer.momentum"}):
        step, momentum = optimal_heavy_ball(base.objective.condition, 1.0)  # L = condition, μ = 1
        optimum = (step, momentum) if keys[0] == "optimizer.learning_rate" else (momentum, step)
    data = grid(keys, [values for _, values in parsed], cells)
    return draw(data, f"{base.name}: {data.metric.replace('_', ' ')} per combination", out, optimum)
