"""Comparing runs: one row per run (the config values that differ, losses, accuracy, effort), the overlaid
loss curves, and for runs of one 2-parameter objective their paths on its contour (``sgdcli compare``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgdcli import plots
from sgdcli.analysis import bands as bands_module
from sgdcli.analysis import paths as paths_module
from sgdcli.analysis.run_labels import run_labels
from sgdcli.config.loading import flatten
from sgdcli.errors import ConfigError
from sgdcli.runs import best as best_rule
from sgdcli.runs import directory as runs
from sgdcli.runs.outputs import check_new_outputs

X_AXES = {"epoch": "epoch", "step": "updates", "updates": "updates", "samples": "samples",
          "forward_passes": "forward_passes", "seconds": "seconds"}
IGNORED_KEYS = {"name"}


@dataclass
class Comparison:
    runs: list[runs.RunRecord]
    differing: list[str]
    rows: list[dict[str, Any]]
    plot: Path | None
    paths_plot: Path | None = None  # runs of one 2-parameter objective: their paths on its contour
    sweep_plot: Path | None = None  # a two-key sweep: sweep.png, the heatmap


def compare(paths: Sequence[Path | str], x: str = "epoch", plot: Path | str | None = "compare.png",
            keys: Sequence[str] = (), band: bool = False, overwrite: bool = False) -> Comparison:
    """One row per run (the config values that differ, and `keys`; losses, accuracy, effort) and one
    overlay plot. `band`: runs differing only in seed become one row (mean ± standard deviation)
    and one mean curve with a min–max band (see sgdcli.analysis.bands). The plots are new files unless
    `overwrite` (UsageError before anything is drawn). A path that is not a readable run is a row with its
    `problems` (the command line exits 4 after the table for a path that does not exist)."""
    if x not in X_AXES:
        raise ConfigError(f"--x: expected one of {', '.join(X_AXES)}, received {x!r}")
    if not paths:
        raise ConfigError("expected at least one run directory")
    records = [runs.read_run(Path(p)) for p in paths]
    if plot is not None:
        check_new_outputs(comparison_files(Path(plot), not band and paths_module.shared_objective(records)
                                                   is not None), overwrite)
    flat = [flatten(r.config) if r.config else {} for r in records]
    all_keys = sorted({k for f in flat for k in f} - IGNORED_KEYS)
    differing = [k for k in all_keys if len({repr(f.get(k)) for f in flat if f}) > 1] if len(records) > 1 else []
    differing = list(dict.fromkeys([*keys, *differing]))
    rows = [_compare_row(r, f, differing) for r, f in zip(records, flat)]
    if band:
        groups, rows = bands_module.aggregate(records, flat, rows, differing)
        differing = [k for k in differing if k not in bands_module.IGNORED]
        plot_path = (bands_module.plot(groups, X_AXES[x], plots.AXIS_LABELS.get(x, x), Path(plot))
                     if plot is not None else None)
        return Comparison(records, differing, rows, plot_path)
    plot_path = None
    if plot is not None:
        labels = run_labels([r.name for r in records], rows, differing)  # as the terminal table names them
        curves = [plots.Curve.from_rows(label, r.metrics, X_AXES[x], (r.summary or {}).get("status") == "diverged")
                  for label, r in zip(labels, records) if r.metrics]
        if curves:
            plot_path = plots.loss_curves(curves, x, Path(plot))
    paths_plot = paths_module.overlay(records, _paths_plot(Path(plot))) if plot is not None else None
    return Comparison(records, differing, rows, plot_path, paths_plot)


def _paths_plot(plot: Path) -> Path:
    """compare.png -> compare-paths.png"""
    return plot.with_name(f"{plot.stem}-paths{plot.suffix or '.png'}")


def comparison_files(plot: Path, paths: bool) -> list[Path]:
    """The files a comparison writes: `plot`, and its paths plot when the runs descend one objective (`paths`)."""
    return [plot, _paths_plot(plot)] if paths else [plot]


def _compare_row(record: runs.RunRecord, flat: dict[str, Any], differing: list[str]) -> dict[str, Any]:
    """The run's final epoch, and the metrics *of its best epoch* (sgdcli.runs.best: the epoch whose
    state is checkpoints/best.safetensors, the one `eval` reports), never per-column extremes."""
    rows, summary = record.metrics, record.summary or {}
    last = rows[-1] if rows else {}
    chosen = next((r for r in rows if r.get("epoch") == summary.get("best_epoch")), None) or best_rule.best_row(rows)
    at_best = chosen or {}

    train_col = "train_loss_full" if last.get("train_loss_full") is not None else "train_loss"
    return {
        "run": record.name,
        **{key: flat.get(key) for key in differing},
        "status": summary.get("status", "unknown" if not record.problems else "damaged"),
        # A run that diverged or was stopped mid-epoch got further than its last metrics row: its
        # summary counts every update made.
        **{key: max(int(last[column]) if last else 0, int(summary.get(key) or 0))
           for key, column in (("epochs", "epoch"), ("updates", "updates"), ("samples", "samples"))},
        "forward_passes": int(last["forward_passes"]) if last.get("forward_passes") is not None else None,
        "seconds": last.get("seconds"),
        "wall_seconds": summary.get("wall_seconds"),
        "final_train_loss": last.get(train_col),
        "final_train_accuracy": last.get("train_accuracy"),
        "final_val_loss": last.get("val_loss"),
        "final_val_accuracy": last.get("val_accuracy"),
        "best_epoch": int(chosen["epoch"]) if chosen else None,
        "best_epoch_train_loss": at_best.get(train_col),
        "best_epoch_train_accuracy": at_best.get("train_accuracy"),
        "best_epoch_val_loss": at_best.get("val_loss"),
        "best_epoch_val_accuracy": at_best.get("val_accuracy"),
        "problems": "; ".join(record.problems),
    }
