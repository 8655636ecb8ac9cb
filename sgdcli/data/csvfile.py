"""Datasets: file and built-in loaders, label encoding, splits and feature scaling."""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sgdcli.errors import DataError

MAX_NPZ_BYTES = 4 * 1024**3  # refuse to inflate more than this from an .npz (zip bombs)


@dataclass(frozen=True)
class Dataset:
    """Features x (N, D) and targets y: class indices (N,) int64, or values (N, K) float64.

    x is float64 for tables and stays in its stored type (uint8) for images until scaling, so a
    large image set is converted to float once, straight into the training dtype.
    `sample_shape` is the shape of one sample before flattening ((28, 28) for an image).
    """

    x: np.ndarray
    y: np.ndarray
    source: str
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...] | None = None  # None for regression targets
    sample_shape: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index: np.ndarray) -> "Dataset":
        return replace(self, x=self.x[index], y=self.y[index])


# ---------------------------------------------------------------- labels
def encode_labels(raw: list[str] | np.ndarray, source: str, class_names: tuple[str, ...] | None = None,
                  rows: np.ndarray | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class labels -> indices 0..C-1 and the class names.

    Non-negative integer labels keep their value (label 3 is class 3, names "0".."max"); other
    labels are sorted strings. With `class_names` given (a trained model's), labels must be
    among them.
    """
    values = np.asarray(raw).astype(str)
    if class_names is None:
        unique = sorted(set(values.tolist()))
        if all(_is_int(v) and int(v) >= 0 for v in unique):
            class_names = tuple(str(i) for i in range(max(int(v) for v in unique) + 1))
            values = np.array([str(int(v)) for v in values.tolist()])
        else:
            class_names = tuple(unique)
    elif all(_is_int(v) for v in class_names):
        values = np.array([str(int(v)) if _is_int(v) else v for v in values.tolist()])
    lookup = {name: i for i, name in enumerate(class_names)}
    indices = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values.tolist()):
        index = lookup.get(value)
        if index is None:
            row = f"row {rows[i]}" if rows is not None else f"sample {i}"
            known = ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else "")
            raise DataError(f"{row}: class label {value!r} was not seen in training (known: {known})", source=source)
        indices[i] = index
    return indices, class_names


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- CSV
def load_csv(path: Path, target: str, features: list[str] | tuple[str, ...] | None, classification: bool,
             class_names: tuple[str, ...] | None = None) -> Dataset:
    """A CSV file with a header row; every feature cell must be a finite number."""
    source = str(path)
    header, rows, lines = _read_csv_rows(path)
    if target not in header:
        raise DataError(f"no target column {target!r}; the header has: {', '.join(header)}", source=source)
    names = list(features) if features is not None else [c for c in header if c != target]
    missing = [c for c in names if c not in header]
    if missing:
        raise DataError(f"feature column(s) {', '.join(map(repr, missing))} not in the header ({', '.join(header)})",
                        source=source)
    if not names:
        raise DataError("expected at least one feature column besides the target", source=source)
    table = np.array(rows, dtype=object).reshape(len(rows), len(header))
    columns = [header.index(c) for c in names]
    x = _to_numbers(table[:, columns], names, lines, source)
    target_cells = table[:, header.index(target)]
    empty = np.flatnonzero(np.char.strip(target_cells.astype(str)) == "")
    if len(empty):
        raise DataError(f"row {lines[empty[0]]}, column {target!r}: empty target cell", source=source)
    if classification:
        y, class_names = encode_labels(np.char.strip(target_cells.astype(str)), source, class_names, lines)
        return Dataset(x, y, source, tuple(names), class_names)
    y = _to_numbers(target_cells[:, None], [target], lines, source)
    return Dataset(x, y, source, tuple(names))


def _read_csv_rows(path: Path) -> tuple[list[str], list[list[str]], np.ndarray]:
    source = str(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise DataError("the file is empty; expected a header row and data rows", source=source)
            header = [h.strip() for h in header]
            duplicates = sorted({h for h in header if header.count(h) > 1})
            if duplicates:
                raise DataError(f"header names column(s) {', '.join(duplicates)} more than once", source=source)
            rows, lines = [], []
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(header):
                    raise DataError(f"row {reader.line_num}: expected {len(header)} cells like the header, "
                                    f"received {len(row)}", source=source)
                rows.append(row)
                lines.append(reader.line_num)
    except FileNotFoundError:
        raise DataError("file not found", source=source) from None
    except IsADirectoryError:
        raise DataError("expected a CSV file, received a directory", source=source) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text (bad byte at offset {exc.start})", source=source) from None
    except csv.Error as exc:
        raise DataError(f"not valid CSV: {exc}", source=source) from None
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror}", source=source) from None
    if not rows:
        raise DataError("no data rows after the header", source=source)
    return header, rows, np.array(lines)


def _to_numbers(cells: np.ndarray, names: list[str], lines: np.ndarray, source: str) -> np.ndarray:
    """String cells -> float64; the first bad cell is reported by row and column."""
    try:
        values = cells.astype(np.float64)
    except ValueError:
        for (i, j), cell in np.ndenumerate(cells):
            try:
                float(cell)
            except ValueError:
                what = "empty cell" if not str(cell).strip() else f"expected a number, received {cell!r}"
                raise DataError(f"row {lines[i]}, column {names[j]!r}: {what}", source=source) from None
        raise
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        i, j = bad[0]
        raise DataError(f"row {lines[i]}, column {names[j]!r}: expected a finite number, received {cells[i, j]!r}",
                        source=source)
    return values


# ---------------------------------------------------------------- NPZ
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
        return Dataset(x, labels, source, names, class_names)
    if y.dtype.kind not in "biuf":
        raise DataError(f"y: expected numeric targets, received {y.dtype}", source=source)
    y = y.reshape(len(y), -1).astype(np.float64)
    if not np.isfinite(y).all():
        raise DataError(f"y[{np.argwhere(~np.isfinite(y))[0][0]}]: expected a finite number", source=source)
    return Dataset(x, y, source, names)


def _is_one_hot(y: np.ndarray) -> bool:
    return bool(np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all())


# ---------------------------------------------------------------- IDX images
def load_idx(images: Path, labels: Path, class_names: tuple[str, ...] | None = None,
             known_classes: tuple[str, ...] | None = None) -> Dataset:
    """An IDX image/label pair; labels are class indices, named by `class_names` when given."""
    from sgdcli import idx

    pixels, raw_labels = idx.load_idx_pair(images, labels, cache_dir=idx.default_cache_dir())
    source = str(images)
    sample_shape = tuple(pixels.shape[1:])
    if raw_labels.min() < 0:
        raise DataError(f"label {int(raw_labels.min())} is negative; expected class indices 0, 1, ...",
                        source=str(labels))
    count = int(raw_labels.max()) + 1
    names = known_classes or class_names or tuple(str(i) for i in range(count))
    if count > len(names):
        what = "the model was trained on" if known_classes else "data.class_names gives"
        raise DataError(f"label {count - 1} is out of range: {what} {len(names)} classes", source=str(labels))
    width = int(np.prod(sample_shape))
    return Dataset(pixels.reshape(len(pixels), width), raw_labels.astype(np.int64), source,
                   tuple(f"pixel_{i}" for i in range(width)), tuple(names), sample_shape)


# ---------------------------------------------------------------- built-in sets
def synthetic(name: str, samples: int, noise: float, rng: np.random.Generator) -> Dataset:
    """Small generated problems: xor, spirals, moons, circles (2-D, 2 classes) and sine (1-D regression)."""
    n = samples
    if name == "sine":
        x = rng.uniform(-3.0, 3.0, size=(n, 1))
        y = np.sin(x) + noise * rng.standard_normal((n, 1))
        return Dataset(x, y, f"synthetic:{name}", ("x",))
    half = n // 2
    labels = np.r_[np.zeros(half, np.int64), np.ones(n - half, np.int64)]
    if name == "xor":
        x = rng.uniform(-1.0, 1.0, size=(n, 2))
        labels = (x[:, 0] * x[:, 1] < 0).astype(np.int64)
    elif name == "spirals":
        t = np.sqrt(rng.uniform(0.0, 1.0, n)) * 3 * np.pi  # sqrt: even density along the arm
        angle = t + np.pi * labels
        x = np.c_[t * np.cos(angle), t * np.sin(angle)] / (3 * np.pi)
    elif name == "moons":
        t = rng.uniform(0.0, np.pi, n)
        x = np.where(labels[:, None] == 0, np.c_[np.cos(t), np.sin(t)], np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
    elif name == "circles":
        t = rng.uniform(0.0, 2 * np.pi, n)
        radius = np.where(labels == 0, 1.0, 0.5)
        x = np.c_[radius * np.cos(t), radius * np.sin(t)]
    else:
        raise ValueError(f"unknown synthetic dataset {name!r}")
    x = x + noise * rng.standard_normal(x.shape)
    return Dataset(x, labels, f"synthetic:{name}", ("x0", "x1"), ("0", "1"))


# ---------------------------------------------------------------- splits and scaling
def split(data: Dataset, fraction: float, rng: np.random.Generator, stratify: bool) -> tuple[Dataset, Dataset | None]:
    """Hold out `fraction` of the samples (per class when `stratify`); both parts keep file order."""
    if fraction <= 0:
        return data, None
    groups = [np.flatnonzero(data.y == c) for c in np.unique(data.y)] if stratify else [np.arange(len(data))]
    held = []
    for members in groups:
        count = int(round(fraction * len(members)))
        held.append(rng.permutation(members)[:count])
    val_index = np.sort(np.concatenate(held))
    if len(val_index) == 0 or len(val_index) == len(data):
        raise DataError(f"a validation fraction of {fraction} leaves an empty split of {len(data)} samples",
                        source=data.source)
    train_mask = np.ones(len(data), bool)
    train_mask[val_index] = False
    return data.subset(np.flatnonzero(train_mask)), data.subset(val_index)


CHUNK = 4096  # rows converted at a time: temporaries stay a few MB whatever the data size


@dataclass(frozen=True)
class Scaler:
    """x -> (x - shift) / scale per feature, fit on the training split."""

    shift: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, kind: str) -> "Scaler":
        """standard: mean and standard deviation; minmax: to [0, 1]; unit: integer pixels / their
        type's maximum (uint8: 255); none: unchanged."""
        width = x.shape[1]
        shift, scale = np.zeros(width), np.ones(width)
        if kind == "standard":
            shift, variance = _moments(x)
            scale = np.sqrt(variance)
        elif kind == "minmax":
            shift = x.min(axis=0).astype(np.float64)
            scale = x.max(axis=0) - shift
        elif kind == "unit" and x.dtype.kind in "ui":
            scale = np.full(width, float(np.iinfo(x.dtype).max))
        scale = np.where(scale > 0, scale, 1.0)  # constant features stay constant (0)
        return cls(shift.astype(np.float64), scale.astype(np.float64))

    def transform(self, x: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """A new array of `dtype`, filled chunk by chunk (no full-size float64 temporary)."""
        out = np.empty(x.shape, dtype=dtype)
        for start in range(0, len(x), CHUNK):
            out[start : start + CHUNK] = (x[start : start + CHUNK] - self.shift) / self.scale
        return out


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and variance in float64, merging chunk statistics (Chan et al.)."""
    count, mean, m2 = 0, np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for start in range(0, len(x), CHUNK):
        chunk = x[start : start + CHUNK].astype(np.float64)
        n = len(chunk)
        chunk_mean = chunk.mean(axis=0)
        chunk_m2 = ((chunk - chunk_mean) ** 2).sum(axis=0)
        delta = chunk_mean - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + chunk_m2 + delta**2 * (count * n / total)
        count = total
    return mean, m2 / max(count, 1)
