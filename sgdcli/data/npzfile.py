"""NumPy .npz archives with arrays `x` and `y`, loaded without pickle."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from sgdcli.data.dataset import Dataset
from sgdcli.data.labels import encode_labels
from sgdcli.errors import DataError

MAX_NPZ_BYTES = 4 * 1024**3  # refuse to inflate more than this from an .npz (zip bombs)


def load_npz(path: Path, classification: bool, class_names: tuple[str, ...] | None = None) -> Dataset:
    """An .npz with numeric arrays `x` (N, D) and `y` (N,) or (N, K); never unpickles."""
    source = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
            if inflated > MAX_NPZ_BYTES:
                raise DataError(f"the archive inflates to {inflated} bytes; at most {MAX_NPZ_BYTES} allowed", source=source)
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if not {"x", "y"} <= keys:
                raise DataError(f"expected arrays named 'x' and 'y', received {sorted(keys)}", source=source)
            x, y = archive["x"], archive["y"]
    except FileNotFoundError:
        raise DataError("file not found", source=source) from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"not a readable .npz archive ({exc})", source=source) from None
    except ValueError as exc:
        raise DataError(f"cannot load the arrays without pickle ({exc}); expected numeric arrays", source=source) from None
    if x.dtype.kind not in "biuf" or x.ndim < 2:
        raise DataError(f"x: expected a numeric array of shape (N, D), received {x.dtype} {x.shape}", source=source)
    sample_shape = tuple(x.shape[1:])  # images (H, W) or (C, H, W) keep their shape for conv layers
    x = x.reshape(len(x), -1).astype(np.float64)
    if len(y) != len(x):
        raise DataError(f"x has {len(x)} samples but y has {len(y)}", source=source)
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        raise DataError(f"x[{bad[0][0]}, {bad[0][1]}]: expected a finite number, received {x[tuple(bad[0])]}",
                        source=source)
    names = tuple(f"x{i}" for i in range(x.shape[1]))
    if classification:
        if y.ndim == 2 and y.dtype.kind in "biuf" and _is_one_hot(y):
            y = y.argmax(axis=1)
        if y.dtype.kind not in "biuU" or y.ndim != 1:
            raise DataError(f"y: expected class labels of shape (N,) or one-hot rows (N, C), received {y.dtype} "
                            f"{y.shape}", source=source)
        labels, class_names = encode_labels(y, source, class_names)
        return Dataset(x, labels, source, names, class_names, sample_shape)
    if y.dtype.kind not in "biuf":
        raise DataError(f"y: expected numeric targets, received {y.dtype}", source=source)
    y = y.reshape(len(y), -1).astype(np.float64)
    if not np.isfinite(y).all():
        raise DataError(f"y[{np.argwhere(~np.isfinite(y))[0][0]}]: expected a finite number", source=source)
    return Dataset(x, y, source, names, sample_shape=sample_shape)


def _is_one_hot(y: np.ndarray) -> bool:
    return bool(np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all())
