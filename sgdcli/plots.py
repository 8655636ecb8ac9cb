"""PNG loss curves (matplotlib is imported only when a plot is drawn)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from sgdcli.fileio import atomic_write

AXIS_LABELS = {"epoch": "epoch", "step": "updates (optimizer steps)", "updates": "updates (optimizer steps)",
               "samples": "samples seen", "seconds": "training seconds"}


@dataclass(frozen=True)
class Curve:
    label: str
    x: list[float]
    train: list[float | None]
    val: list[float | None]

    @classmethod
    def from_rows(cls, label: str, rows: list[dict], column: str) -> "Curve":
        """Train loss (the whole-set measurement when recorded) and validation loss against `column`."""
        train_col = "train_loss_full" if any(r.get("train_loss_full") is not None for r in rows) else "train_loss"
        rows = [r for r in rows if r.get(column) is not None]
        return cls(label, [r[column] for r in rows], [r.get(train_col) for r in rows], [r.get("val_loss") for r in rows])


def loss_curves(curves: list[Curve], x_axis: str, path: Path) -> Path:
    """One axes: each run one colour, training loss solid, validation loss dashed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    try:
        positive = True
        for index, curve in enumerate(curves):
            colour = f"C{index % 10}"
            for values, style, kind in ((curve.train, "-", "train"), (curve.val, "--", "val")):
                points = [(x, y) for x, y in zip(curve.x, values) if y is not None]
                if not points:
                    continue
                xs, ys = zip(*points)
                positive = positive and min(ys) > 0
                axes.plot(xs, ys, style, color=colour, marker="o" if len(xs) < 3 else None, markersize=3,
                          label=f"{curve.label} ({kind})")
        if positive and _spread(curves) > 30:
            axes.set_yscale("log")
        axes.set_xlabel(AXIS_LABELS.get(x_axis, x_axis))
        axes.set_ylabel("loss")
        axes.set_title("training (solid) and validation (dashed) loss")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7, loc="best")
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    atomic_write(path, buffer.getvalue())
    return path


def _spread(curves: list[Curve]) -> float:
    values = [v for c in curves for v in c.train + c.val if v is not None and v > 0]
    return max(values) / min(values) if values else 1.0
