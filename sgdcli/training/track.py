"""Layer statistics during training (`training.track`): per parameter tensor, the gradient norm, the
weight norm and the update ratio ‖Δw‖/‖w‖, as metrics columns and `layers.png`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from sgdcli import plots
from sgdcli.engine.gradients import Gradient, squared_norm
from sgdcli.errors import ConfigError

STATISTICS = ("grad_norm", "weight_norm", "update_ratio")
SAMPLED_UPDATES = 4  # updates measured per epoch, spread evenly: bounds the cost whatever the batch size
LAYERS_PLOT = "layers.png"
TYPICAL_UPDATE_RATIO = 1e-3  # cs231n's rule of thumb for ‖Δw‖/‖w‖ per update
LABELS = {"grad_norm": "gradient norm ‖g‖ (mean of the sampled updates)",
          "weight_norm": "weight norm ‖w‖ (end of epoch)",
          "update_ratio": "update ratio ‖Δw‖/‖w‖ per update (mean of the sampled updates)"}


def column(statistic: str, name: str) -> str:
    """The metrics.csv column of one statistic of one parameter tensor, e.g. `grad_norm/0.weight`."""
    return f"{statistic}/{name}"


class LayerTracker:
    """Measures the tracked statistics on SAMPLED_UPDATES updates per epoch (every update when an
    epoch has fewer), evenly spaced, always including the epoch's last update.

    Per tensor w with gradient g (after clipping, as the optimizer receives it) and the update
    Δw = w_after − w_before: grad_norm = mean ‖g‖₂, update_ratio = mean ‖Δw‖₂ / ‖w_before‖₂ over the
    sampled updates (those with w_before ≠ 0: a bias starting at 0 has no ratio yet); weight_norm =
    ‖w‖₂ after the epoch's last update. Called by the training loop
    through `before_step` / `after_step`; `epoch_row` closes an epoch.
    """

    def __init__(self, statistics: list[str], params: dict[str, np.ndarray], updates_per_epoch: int) -> None:
        self.statistics = [s for s in STATISTICS if s in statistics]
        self.names = list(params)
        self.stride = max(1, math.ceil(updates_per_epoch / SAMPLED_UPDATES))
        self.last = updates_per_epoch - 1
        self._before = {name: np.empty_like(p) for name, p in params.items()} if "update_ratio" in statistics else {}
        self._old_norms: dict[str, float] = {}
        self._reset()

    @property
    def columns(self) -> list[str]:
        return [column(s, name) for s in self.statistics for name in self.names]

    def _reset(self) -> None:
        self._sums = {s: dict.fromkeys(self.names, 0.0) for s in ("grad_norm", "update_ratio")}
        self._counts = {s: dict.fromkeys(self.names, 0) for s in ("grad_norm", "update_ratio")}

    def before_step(self, batch: int, params: dict[str, np.ndarray], grads: dict[str, Gradient]) -> bool:
        """Batch `batch` (0-based within the epoch) is about to be applied; True if it is measured."""
        if batch % self.stride != self.stride - 1 and batch != self.last:
            return False
        if "grad_norm" in self.statistics:
            sums, counts = self._sums["grad_norm"], self._counts["grad_norm"]
            for name, grad in grads.items():
                sums[name] += math.sqrt(squared_norm(grad))
                counts[name] += 1
        for name, before in self._before.items():
            np.copyto(before, params[name])
            flat = before.reshape(-1)
            self._old_norms[name] = math.sqrt(float(np.dot(flat, flat)))
        return True

    def after_step(self, params: dict[str, np.ndarray]) -> None:
        sums, counts = self._sums["update_ratio"], self._counts["update_ratio"]
        for name, before in self._before.items():
            old = self._old_norms[name]
            if old > 0:
                np.subtract(before, params[name], out=before)
                flat = before.reshape(-1)
                sums[name] += math.sqrt(float(np.dot(flat, flat))) / old
                counts[name] += 1

    def partial(self) -> dict[str, Any]:
        """The sums and counts of the epoch in progress, as JSON (floats round-trip exactly), for a checkpoint
        taken mid-epoch: a resumed run's row for that epoch then equals the uninterrupted run's."""
        return {"sums": self._sums, "counts": self._counts}

    def resume_partial(self, saved: dict[str, Any]) -> None:
        """Go on from ``partial``'s sums and counts. Raises KeyError, TypeError or ValueError when they do
        not fit this tracker's statistics and tensors (the caller's checkpoint error)."""
        sums = {s: {name: float(saved["sums"][s][name]) for name in self.names} for s in self._sums}
        counts = {s: {name: int(saved["counts"][s][name]) for name in self.names} for s in self._counts}
        self._sums, self._counts = sums, counts

    def epoch_row(self, params: dict[str, np.ndarray]) -> dict[str, float | None]:
        """The epoch's statistics as metrics columns; starts the next epoch's sums."""
        row: dict[str, float | None] = {}
        for statistic in self.statistics:
            for name in self.names:
                if statistic == "weight_norm":
                    flat = params[name].reshape(-1)
                    value: float | None = math.sqrt(float(np.dot(flat, flat)))
                else:
                    count = self._counts[statistic][name]
                    value = self._sums[statistic][name] / count if count else None
                row[column(statistic, name)] = value
        self._reset()
        return row


def build_tracker(statistics: list[str], params: dict[str, np.ndarray], updates_per_epoch: int,
                  gradient_method: bool) -> LayerTracker | None:
    """A tracker for `training.track`, or None when nothing is tracked."""
    if not statistics:
        return None
    needs_gradients = [s for s in statistics if s != "weight_norm"]
    if needs_gradients and not gradient_method:
        raise ConfigError(f"training.track: {', '.join(needs_gradients)} need a gradient optimizer; "
                          "perturb takes no gradient steps (track weight_norm only)")
    return LayerTracker(statistics, params, updates_per_epoch)


def plot(rows: list[dict[str, Any]], statistics: list[str], names: list[str], title: str, out: Path) -> Path:
    """layers.png: one panel per statistic, one line per parameter tensor against epoch (log y)."""
    shown = [s for s in STATISTICS if s in statistics]

    def draw(axes_list: list[Any]) -> None:
        for axes, statistic in zip(axes_list, shown):
            for index, name in enumerate(names):
                points = [(r["epoch"], r.get(column(statistic, name))) for r in rows]
                points = [(x, y) for x, y in points if y is not None and y > 0 and math.isfinite(y)]
                if points:
                    xs, ys = zip(*points)
                    style = "-" if name.endswith("weight") else ":"
                    axes.plot(xs, ys, style, color=f"C{index // 2 % 10}", marker="o" if len(xs) < 3 else None,
                              markersize=3, label=name)
            if statistic == "update_ratio":
                axes.axhline(TYPICAL_UPDATE_RATIO, color="0.5", linestyle="--", linewidth=0.8, label="1e-3")
            axes.set_yscale("log")
            axes.set_ylabel(statistic)
            axes.set_title(LABELS[statistic], fontsize=8)
        axes_list[-1].set_xlabel("epoch")
        axes_list[0].figure.suptitle(title, fontsize=9)

    return plots.write_panels(draw, len(shown), out)
