"""A computed landscape as files: PREFIX.csv (the numbers) and PREFIX.png (the curve)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sgdcli import plots
from sgdcli.analysis.directions import parse_direction
from sgdcli.analysis.landscape import Landscape
from sgdcli.fileio import atomic_write, write_error


def default_prefix(run: str | Path, direction: str) -> Path:
    """`landscape-<run name>-<direction>` in the current directory: never inside the run."""
    run = Path(run)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(parse_direction(direction))).strip("-")
    return Path(f"landscape-{run.name if run.is_dir() else run.stem}-{slug}")


def output_paths(prefix: str | Path) -> tuple[Path, Path]:
    """PREFIX.csv and PREFIX.png (a line's files and a plane's, sgdcli.analysis.plane)."""
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + ".csv"), prefix.with_name(prefix.name + ".png")


def write(result: Landscape, prefix: str | Path) -> tuple[Path, Path]:
    """PREFIX.csv and PREFIX.png, each written atomically; both are rendered before either is written."""
    prefix = Path(prefix)
    csv_path, png_path = output_paths(prefix)
    table, image = csv_text(result).encode("utf-8"), png_bytes(result)
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(prefix.parent, exc) from None
    atomic_write(csv_path, table)
    atomic_write(png_path, image)
    return csv_path, png_path


def csv_text(result: Landscape) -> str:
    """alpha[,value],loss[,tangent]: `value` is the coefficient's value, `tangent` origin_loss + slope·α."""
    columns = {"alpha": result.alphas}
    if result.origin_x is not None:
        columns["value"] = result.x
    columns["loss"] = result.losses
    if result.tangent:
        columns["tangent"] = result.tangent_losses
    rows = zip(*columns.values())
    return "".join([",".join(columns) + "\n"] + [",".join(repr(float(v)) for v in row) + "\n" for row in rows])


def png_bytes(result: Landscape) -> bytes:
    """Loss against x; the checkpoint (and other marks) as dots; the tangent dashed."""
    x, losses = result.x, result.losses
    finite = np.isfinite(losses)

    def draw(axes) -> None:
        axes.plot(x[finite], losses[finite], "-", color="C0", label="loss")
        if result.tangent:
            step = "α" if result.origin_x is None else f"(x {'+' if result.origin_x < 0 else '−'} {abs(result.origin_x):.4g})"
            axes.plot(x, result.tangent_losses, "--", color="C1", label=f"tangent (first-order prediction): "
                      f"{result.origin_loss:.4g} {'+' if result.slope >= 0 else '−'} {abs(result.slope):.4g}·{step}")
        for number, (alpha, label) in enumerate(result.marks):
            at = np.flatnonzero(result.alphas == alpha)
            if len(at) and finite[at[0]]:
                axes.plot(x[at[0]], losses[at[0]], "o", color=f"C{number + 2}", label=label, zorder=3)
        if finite.any():  # the tangent may leave the curve's range: keep the curve in view
            low, high = losses[finite].min(), losses[finite].max()
            pad = 0.05 * (high - low) or 0.05 * abs(high) or 0.05
            axes.set_ylim(low - pad, high + pad)
        axes.set_xlabel(result.x_label, fontsize=8)
        axes.set_ylabel("loss")
        axes.set_title(f"loss along {result.direction}\n{result.checkpoint}\n{result.data}", fontsize=9)

    return plots.png(draw)
