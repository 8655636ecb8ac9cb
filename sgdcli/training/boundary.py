"""What a model with one or two input features draws while it trains: decision regions over the
plane (classification, two features) or the fitted curve (regression, one feature), as
`boundary.png` (the final model) and `boundary.gif` (frames across training)."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from sgdcli import plots
from sgdcli.engine.model import Sequential
from sgdcli.errors import RunDirError
from sgdcli.fileio import atomic_write

MAX_FRAMES = 60  # frames every k = ceil(epochs / 60) epochs, plus the initial and the final model
GRID = 100  # grid points per axis (classification) or along x (regression)
MARGIN = 0.15  # of the data's range, on each side
PNG_NAME, GIF_NAME = "boundary.png", "boundary.gif"
FRAMES_NAME = "boundary.safetensors"  # the frames themselves, so that a resumed run's GIF keeps the earlier ones


@dataclass
class BoundaryRecorder:
    """Keeps, for epochs 0, k, 2k, ... and the last, the model's prediction over a fixed grid in the
    data's own (unscaled) units: class indices (GRID, GRID) or curve values (GRID,)."""

    axes: list[np.ndarray]  # grid coordinates per input feature, original units
    points: np.ndarray  # (GRID², D) or (GRID, 1): the grid, scaled as the model sees it
    classes: int  # 0 for regression; 2 for a single logit (binary cross-entropy)
    every: int
    data: dict[str, Any]  # train / validation points in original units, with targets, and names
    frames: list[tuple[int, np.ndarray]] = field(default_factory=list)

    def record(self, epoch: int, model: Sequential, last: bool = False) -> None:
        if epoch % self.every and not last or (self.frames and self.frames[-1][0] == epoch):
            return
        outputs = model.predict(self.points, batch_size=8192).astype(np.float64)
        if not self.classes:
            self.frames.append((epoch, outputs[:, 0]))
            return
        labels = (outputs[:, 0] > 0).astype(np.int8) if outputs.shape[1] == 1 else outputs.argmax(axis=1)
        self.frames.append((epoch, labels.astype(np.int8).reshape(GRID, GRID)))

    def write(self, run_dir: Path, title: str) -> list[Path]:
        """The frames as arrays (FRAMES_NAME: epochs (T,) int64, frames (T, GRID, GRID) int8 or (T, GRID) float64)
        first: they are only in memory, while boundary.png (the last frame) and boundary.gif (every frame,
        matplotlib's Pillow writer), written after them, are drawn again from them by a resume."""
        if not self.frames:
            return []
        gif_path, frames_path = run_dir / GIF_NAME, run_dir / FRAMES_NAME
        atomic_write(frames_path, save_tensors({"epochs": np.array([e for e, _ in self.frames], dtype=np.int64),
                                                "frames": np.stack([f for _, f in self.frames])},
                                               metadata={"format": "sgdcli-boundary-frames"}))
        png = self.write_png(run_dir / PNG_NAME, title)
        atomic_write(gif_path, self._gif(title))
        return [*png, gif_path, frames_path]

    def resume_from(self, run_dir: Path, epoch: int) -> None:
        """Continue a resumed run's frames: those its file kept for the scheduled epochs up to `epoch` (where
        training resumes), when they fit this grid. Raises RunDirError for a damaged frames file."""
        path = Path(run_dir) / FRAMES_NAME
        if not path.is_file():
            return
        try:
            tensors = load_tensors(path.read_bytes())
            epochs, frames = tensors["epochs"], tensors["frames"]
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise RunDirError(f"damaged boundary frames file ({exc})", source=str(path)) from None
        shape = (GRID,) if not self.classes else (GRID, GRID)
        if frames.shape[1:] != shape or len(epochs) != len(frames):
            return
        # the scheduled ones: a frame drawn when a run was interrupted between them held mid-epoch weights
        self.frames = [(int(e), f) for e, f in zip(epochs, frames) if e <= epoch and e % self.every == 0]

    def write_png(self, path: Path, title: str) -> list[Path]:
        """The last frame as a PNG."""
        atomic_write(path, plots.png(lambda axes: self._draw(axes, len(self.frames) - 1, title), (6.5, 5)))
        return [path]

    def _draw(self, axes: Any, index: int, title: str) -> dict[str, Any]:
        """Draw frame `index`; returns the artists `_update` changes for the next frames."""
        epoch, values = self.frames[index]
        data, artists = self.data, {}
        if self.classes:
            from matplotlib.colors import ListedColormap

            colours = [f"C{i % 10}" for i in range(self.classes)]
            extent = (self.axes[0][0], self.axes[0][-1], self.axes[1][0], self.axes[1][-1])
            artists["regions"] = axes.imshow(values, origin="lower", extent=extent, aspect="auto", alpha=0.3,
                                             cmap=ListedColormap(colours), vmin=-0.5, vmax=self.classes - 0.5,
                                             interpolation="nearest")
            for part, marker, size in (("train", "o", 2.5), ("val", "x", 4)):
                if data[part] is None:
                    continue
                x, y = data[part]
                for c in range(self.classes):
                    chosen = y == c
                    if chosen.any():  # Line2D markers: several times faster to draw than a scatter
                        axes.plot(x[chosen, 0], x[chosen, 1], marker, markersize=size, color=colours[c],
                                  markeredgewidth=0.6, linestyle="none", label=f"{data['class_names'][c]} ({part})")
            axes.set_ylabel(data["feature_names"][1])
        else:
            for part, marker, size in (("train", "o", 2.5), ("val", "x", 4)):
                if data[part] is not None:
                    x, y = data[part]
                    axes.plot(x[:, 0], y, marker, markersize=size, color="C0" if part == "train" else "C1",
                              markeredgewidth=0.6, linestyle="none", label=f"{part} data")
            (artists["curve"],) = axes.plot(self.axes[0], values, color="C3", linewidth=1.5, label="model")
            axes.set_ylim(*data["y_range"])
            axes.set_ylabel(data["target_name"])
        axes.set_xlabel(data["feature_names"][0])
        artists["title"] = axes.set_title(f"{title}: epoch {epoch}", fontsize=9)
        return artists

    def _update(self, artists: dict[str, Any], index: int, title: str) -> None:
        epoch, values = self.frames[index]
        if "regions" in artists:
            artists["regions"].set_data(values)
        else:
            artists["curve"].set_ydata(values)
        artists["title"].set_text(f"{title}: epoch {epoch}")

    def _gif(self, title: str) -> bytes:
        """One figure whose regions (or curve) and title change per frame: matplotlib's Pillow writer."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
        figure, axes = plt.subplots(figsize=(5.5, 4.2), dpi=72)
        try:
            artists = self._draw(axes, 0, title)
            axes.legend(fontsize=6, loc="upper right")
            figure.tight_layout()
            writer = _canvas_pillow_writer()(fps=6)
            with tempfile.TemporaryDirectory() as folder:
                target = Path(folder) / GIF_NAME
                with writer.saving(figure, target, dpi=72):
                    for index in range(len(self.frames)):
                        self._update(artists, index, title)
                        writer.grab_frame()
                return target.read_bytes()
        finally:
            plt.close(figure)


def _canvas_pillow_writer() -> type:
    """matplotlib's PillowWriter, grabbing each frame from the figure's canvas (half the time of its
    savefig-based grab_frame, which lays the figure out again for every frame)."""
    from matplotlib.animation import PillowWriter
    from PIL import Image

    class CanvasPillowWriter(PillowWriter):
        def grab_frame(self, **savefig_kwargs) -> None:
            canvas = self.fig.canvas
            canvas.draw()
            rgba = Image.frombuffer("RGBA", canvas.get_width_height(), bytes(canvas.buffer_rgba()), "raw", "RGBA", 0, 1)
            self._frames.append(rgba.convert("RGB"))

    return CanvasPillowWriter


def build_recorder(prepared: Any, classification: bool, outputs: int, epochs: int) -> BoundaryRecorder | None:
    """A recorder for two input features (classification) or one (single-output regression); else None."""
    width = prepared.x_train.shape[1]
    if not ((classification and width == 2) or (not classification and width == 1 and outputs == 1)):
        return None
    scaler = prepared.scaler

    def unscaled(x: np.ndarray | None) -> np.ndarray | None:
        return None if x is None else x.astype(np.float64) * scaler.scale + scaler.shift

    x_train, x_val = unscaled(prepared.x_train), unscaled(prepared.x_val)
    both = x_train if x_val is None else np.concatenate([x_train, x_val])
    low, high = both.min(axis=0), both.max(axis=0)
    pad = MARGIN * np.where(high > low, high - low, 1.0)
    axes = [np.linspace(low[d] - pad[d], high[d] + pad[d], GRID) for d in range(width)]
    grid = np.stack([a.reshape(-1) for a in np.meshgrid(*axes)], axis=1) if width == 2 else axes[0][:, None]
    points = ((grid - scaler.shift) / scaler.scale).astype(prepared.x_train.dtype)
    y_train = np.asarray(prepared.y_train).reshape(len(x_train), -1)[:, 0]
    y_val = None if x_val is None else np.asarray(prepared.y_val).reshape(len(x_val), -1)[:, 0]
    data: dict[str, Any] = {"train": (x_train, y_train), "val": None if x_val is None else (x_val, y_val),
                            "feature_names": list(prepared.feature_names)}
    if classification:
        data["train"] = (x_train, y_train.astype(np.int64))
        data["val"] = None if x_val is None else (x_val, y_val.astype(np.int64))
        classes = max(2, outputs)
        data["class_names"] = list(prepared.class_names or map(str, range(classes)))
    else:
        classes = 0
        targets = y_train if y_val is None else np.concatenate([y_train, y_val])
        spread = float(targets.max() - targets.min()) or 1.0
        data["y_range"] = (float(targets.min()) - 0.3 * spread, float(targets.max()) + 0.3 * spread)
        data["target_name"] = "target"
    every = max(1, math.ceil(epochs / MAX_FRAMES))
    return BoundaryRecorder(axes, points, classes, every, data)
