"""The loss over a plane through weight space, w(α, β) = w_c + α·d₁ + β·d₂ (Li et al., "Visualizing the
Loss Landscape of Neural Nets", 2018), with the run's trajectory projected onto it; CSV and PNG."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sgdcli import plots
from sgdcli.analysis import landscape as line
from sgdcli.analysis import landscape_files
from sgdcli.errors import RunDirError, UsageError
from sgdcli.fileio import atomic_write, atomic_write_text
from sgdcli.runs import checkpoint as checkpoints
from sgdcli.runs import directory as runs
from sgdcli.training import build, trajectory
from sgdcli.training.trained import load_trained

Weights = dict[str, np.ndarray]
DIRECTIONS = ("random", "pca")
DEFAULT_SAMPLES = 2000  # the loss of each grid point is measured on at most this many samples
RANDOM_STREAMS = (3, 4)  # streams of `seed` for d₁ and d₂ (the line landscape uses 1 and 2)


@dataclass(frozen=True)
class Plane:
    """Loss on a (len(betas), len(alphas)) grid, and the trajectory's (T, 2) coordinates on the plane."""

    directions: str
    alphas: np.ndarray
    betas: np.ndarray
    losses: np.ndarray  # [i, j]: at α = alphas[j], β = betas[i]
    path: np.ndarray  # (T, 2) projected trajectory, in (α, β)
    path_epochs: np.ndarray  # (T,)
    centre: str
    data: str
    axis_labels: tuple[str, str]


def filter_normalized(weights: Weights, rng: np.random.Generator) -> Weights:
    """Li et al. 2018's filter-normalised Gaussian direction: per output unit of each weight matrix
    (column j of a (D, M) dense weight), d[:, j] · ‖w[:, j]‖ / ‖d[:, j]‖; biases get 0 (their
    `ignore biasbn` default)."""
    direction = {}
    for key, array in weights.items():
        if array.ndim < 2:
            direction[key] = np.zeros_like(array)
            continue
        d = rng.standard_normal(array.shape)
        axes = tuple(range(array.ndim - 1))  # every axis but the output one: one filter per output unit
        d *= np.linalg.norm(array, axis=axes, keepdims=True) / np.maximum(np.linalg.norm(d, axis=axes, keepdims=True),
                                                                         1e-300)
        direction[key] = d
    return direction


def pca_directions(snapshots: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Li et al. §7: the top-2 principal components of the trajectory's offsets θ_i − θ_c
    (snapshots (T, P), centre (P,)); like scikit-learn's PCA the offsets' column mean is removed
    before the SVD. Returns (d₁ (P,), d₂ (P,), explained variance ratios (2,)); unit vectors."""
    offsets = snapshots - centre
    offsets = offsets[np.linalg.norm(offsets, axis=1) > 0]
    if len(offsets) < 2:
        raise UsageError("--directions pca needs at least three different weight snapshots along the run; "
                         "train longer, or use --directions random")
    centred = offsets - offsets.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    variance = singular**2
    ratios = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    if len(vt) < 2 or singular[1] == 0:
        raise UsageError("--directions pca: the trajectory lies on a line; use --directions random")
    return vt[0], vt[1], ratios


def project(offsets: np.ndarray, d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """Coordinates (α, β) minimising ‖offset − α·d₁ − β·d₂‖ (least squares; for orthonormal d the
    dot products). offsets (T, P) -> (T, 2)."""
    basis = np.stack([d1, d2], axis=1)
    return np.linalg.lstsq(basis, offsets.T, rcond=None)[0].T


def compute(run: str | Path, directions: str = "random", checkpoint: str | None = None, points: int = 41,
            span: tuple[float, float] | None = None, split: str = "train", samples: int | None = None,
            seed: int = 0) -> Plane:
    """The loss on a points×points grid through a checkpoint of `run` (default its last: the
    trajectory ends there), along two random filter-normalised directions (α, β ∈ span, default
    [−1, 1]) or the trajectory's top-2 PCA directions (span: the projected path ± 25%). The loss is
    measured on a seeded subset of at most `samples` (default DEFAULT_SAMPLES) samples of `split`."""
    if directions not in DIRECTIONS:
        raise UsageError(f"--directions: expected random or pca, received {directions!r}")
    if isinstance(points, bool) or not isinstance(points, int) or not 3 <= points <= 401:
        raise UsageError(f"--points: expected an integer from 3 to 401 for a plane, received {points!r}")
    run = Path(run)
    if not run.is_dir():
        raise RunDirError("--plane needs a run directory (for the trajectory)", source=str(run))
    path = line._find_checkpoint(run, checkpoint or "last")
    trained = load_trained(path)
    model = line._float64_model(trained)
    centre = line._copy(model.parameters())
    loss = build.build_loss(trained.config.loss)
    x, y, data = line._data(trained, split, DEFAULT_SAMPLES if samples is None else samples, seed)
    keys = list(centre)
    flat_centre = np.concatenate([centre[k].reshape(-1) for k in keys])
    epochs, snapshots = _trajectory(run, keys, centre, int(trained.meta.get("epoch") or 0))
    if directions == "random":
        d1, d2 = (filter_normalized(centre, np.random.default_rng([seed, s])) for s in RANDOM_STREAMS)
        v1, v2 = (np.concatenate([d[k].reshape(-1) for k in keys]) for d in (d1, d2))
        labels = (f"α (d₁: filter-normalised Gaussian, seed {seed})",
                  f"β (d₂: filter-normalised Gaussian, seed {seed})")
    else:
        v1, v2, ratios = pca_directions(snapshots, flat_centre)
        d1, d2 = _unflatten(v1, centre), _unflatten(v2, centre)
        labels = (f"α (1st PCA direction, {ratios[0]:.1%} of the variance)",
                  f"β (2nd PCA direction, {ratios[1]:.1%} of the variance)")
    coords = project(snapshots - flat_centre, v1, v2)
    if span is not None and not (len(span) == 2 and all(map(math.isfinite, span)) and span[0] < span[1]):
        raise UsageError(f"--span: expected two finite numbers FROM < TO, received {tuple(span)!r}")
    if span is not None:
        spans = (span, span)
    else:
        spans = ((-1.0, 1.0),) * 2 if directions == "random" else (_cover(coords[:, 0]), _cover(coords[:, 1]))
    alphas, betas = (np.linspace(low, high, points) for low, high in spans)
    losses = np.empty((len(betas), len(alphas)))
    for i, beta in enumerate(betas):
        shifted = {k: centre[k] + beta * d2[k] for k in keys}
        losses[i] = line.loss_along(model, loss, x, y, shifted, d1, alphas)
    at = f"{path.name.removesuffix(checkpoints.SUFFIX)} (epoch {trained.meta.get('epoch')})"
    return Plane(directions, alphas, betas, losses, coords, epochs, at, data, labels)


def _trajectory(run: Path, keys: list[str], centre: Weights, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(epochs (T,), flat float64 weights (T, P)): the run's trajectory file, else its epoch and
    initial checkpoints followed by the centre (at `epoch`)."""
    saved = trajectory.read(run)
    if saved is not None and set(saved[1]) == set(keys):
        epochs, weights = saved
        return np.asarray(epochs), np.concatenate([weights[k].reshape(len(epochs), -1).astype(np.float64)
                                                   for k in keys], axis=1)
    found = []
    folder = run / runs.CHECKPOINTS
    for file in sorted(folder.glob("*" + checkpoints.SUFFIX)):
        if file.name.startswith("epoch-") or file.name == runs.INITIAL:
            state = checkpoints.load(file)
            found.append((int(state.meta.get("epoch", 0)), np.concatenate(
                [np.asarray(state.params[k], dtype=np.float64).reshape(-1) for k in keys])))
    found.sort(key=lambda item: item[0])
    if not found or found[-1][0] < epoch:
        found.append((epoch, np.concatenate([centre[k].reshape(-1) for k in keys])))
    return np.array([e for e, _ in found]), np.stack([w for _, w in found])


def _unflatten(vector: np.ndarray, like: Weights) -> Weights:
    out, at = {}, 0
    for key, array in like.items():
        out[key] = vector[at:at + array.size].reshape(array.shape)
        at += array.size
    return out


def _cover(coords: np.ndarray) -> tuple[float, float]:
    """A symmetric-enough span holding every projected point and the origin, with 25% to spare."""
    low, high = min(0.0, float(coords.min())), max(0.0, float(coords.max()))
    pad = 0.25 * ((high - low) or 1.0)
    return low - pad, high + pad


def default_prefix(run: str | Path, directions: str) -> Path:
    """`landscape-<run name>-plane-<directions>` in the current directory: never inside the run."""
    return Path(f"landscape-{Path(run).name}-plane-{directions}")


def write(plane: Plane, prefix: Path | str) -> tuple[Path, Path]:
    """PREFIX.csv (alpha, beta, loss: one row per grid point) and PREFIX.png (contours, the path)."""
    csv_path, png_path = landscape_files.output_paths(prefix)
    lines = ["alpha,beta,loss"] + [f"{float(a)!r},{float(b)!r},{float(plane.losses[i, j])!r}"
                                   for i, b in enumerate(plane.betas) for j, a in enumerate(plane.alphas)]
    atomic_write_text(csv_path, "\n".join(lines) + "\n")
    atomic_write(png_path, plots.png(lambda axes: _draw(axes, plane), (7, 6)))
    return csv_path, png_path


def _draw(axes, plane: Plane) -> None:
    finite = np.where(np.isfinite(plane.losses), plane.losses, np.nan)
    lowest = np.nanmin(finite)
    levels = np.log1p(np.clip(finite - lowest, 0, None))
    filled = axes.contourf(plane.alphas, plane.betas, levels, levels=30, cmap="viridis", alpha=0.85)
    axes.contour(plane.alphas, plane.betas, levels, levels=15, colors="w", linewidths=0.4, alpha=0.6)
    axes.figure.colorbar(filled, ax=axes, label=f"log(1 + loss − {lowest:.3g})")
    path = plane.path
    axes.plot(path[:, 0], path[:, 1], "-o", color="C3", markersize=3, linewidth=1, label="trajectory")
    axes.plot(*path[0], "s", color="w", markeredgecolor="k", markersize=7, label=f"epoch {plane.path_epochs[0]}")
    axes.plot(*path[-1], "*", color="C1", markeredgecolor="k", markersize=13,
              label=f"epoch {plane.path_epochs[-1]}")
    axes.plot(0, 0, "+", color="k", markersize=12, label=plane.centre)
    axes.set_xlim(plane.alphas[0], plane.alphas[-1])
    axes.set_ylim(plane.betas[0], plane.betas[-1])
    axes.set_xlabel(plane.axis_labels[0], fontsize=8)
    axes.set_ylabel(plane.axis_labels[1], fontsize=8)
    axes.set_title(f"loss over a plane through {plane.centre}, {plane.directions} directions\n{plane.data}",
                   fontsize=9)
