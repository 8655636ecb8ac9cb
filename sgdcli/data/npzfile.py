"""NumPy .npz archives with arrays `x` and `y`, loaded without pickle and within declared sizes.

Each array's .npy header (shape and type) is read and checked against the zip entry's declared
size and the machine's memory before its data is inflated, so neither a zip bomb nor a header
that declares terabytes can allocate more than it declares.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from sgdcli.data.dataset import Dataset, DataShape
from sgdcli.data.labels import encode_codes, encode_labels
from sgdcli.errors import DataError
from sgdcli.fileio import check_fits, format_bytes, regular_file_size

_NUMERIC = "biuf"
# what zipfile and numpy raise for a damaged archive; the last two: an unsupported method, encryption
_UNREADABLE = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, zlib.error,
               NotImplementedError, RuntimeError)


def load_npz(path: Path, classification: bool, class_names: tuple[str, ...] | None = None) -> Dataset:
    """An .npz with numeric arrays `x` (N, D...) and `y` (N,) or (N, K); never unpickles.

    x becomes float64 (N, D); y class indices (N,) int64 (labels, or one-hot rows whose C columns
    are the classes "0".."C-1") or targets (N, K) float64. DataError naming the file otherwise.
    """
    source = str(path)
    (x, y), sample_shape = _read(path, ("x", "y"), classification)
    names = tuple(f"x{i}" for i in range(x.shape[1]))
    if classification:
        labels, classes = _classes(y, source, class_names)
        return Dataset(x, labels, source, names, classes, sample_shape)
    y = _targets(y, source)
    return Dataset(x, y, source, names, sample_shape=sample_shape)


def load_npz_features(path: Path) -> np.ndarray:
    """The archive's `x` as float64 (N, D), checked like training data; `y` is not needed (predict)."""
    (x,), _ = _read(path, ("x",), False)
    return x


def npz_shape(path: Path, classification: bool, class_names: tuple[str, ...] | None = None) -> DataShape:
    """load_npz's checks on the .npy headers and `y`; `x` is not inflated (its values are checked by `train`)."""
    source = str(path)
    regular_file_size(path, DataError, "an .npz file")
    try:
        with zipfile.ZipFile(path) as archive:
            members = _members(archive, ("x", "y"), source)
            heads = [_header(archive, members[f"{key}.npy"], source, key) for key in ("x", "y")]
            _check_shapes(heads[0], heads[1], classification, source)
            _check_memory(heads, ("x", "y"), source)
            y = _inflate(archive, members["y.npy"], heads[1])
    except _UNREADABLE as exc:
        raise DataError(f"not a readable .npz archive ({exc})", source=source) from None
    x_shape = heads[0][0]
    names = tuple(f"x{i}" for i in range(math.prod(x_shape[1:])))
    if classification:
        labels, classes = _classes(y, source, class_names)
        return DataShape(x_shape[0], source, names, tuple(x_shape[1:]), labels, classes)
    y = _targets(y, source)
    return DataShape(x_shape[0], source, names, tuple(x_shape[1:]), target_width=y.shape[1])


def _targets(y: np.ndarray, source: str) -> np.ndarray:
    """Regression targets as finite float64 (N, K), or a DataError naming the first bad sample."""
    y = y.reshape(len(y), -1).astype(np.float64)
    if not np.isfinite(y).all():
        raise DataError(f"y[{np.argwhere(~np.isfinite(y))[0][0]}]: expected a finite number", source=source)
    return y


def _members(archive: zipfile.ZipFile, keys: tuple[str, ...], source: str) -> dict[str, zipfile.ZipInfo]:
    members = {info.filename: info for info in archive.infolist()}
    if any(f"{key}.npy" not in members for key in keys):
        found = sorted(name[:-4] for name in members if name.endswith(".npy"))
        raise DataError(f"expected arrays named {' and '.join(map(repr, keys))}, received {found}", source=source)
    return members


def _check_memory(heads: list, keys: tuple[str, ...], source: str) -> None:
    needed = sum(math.prod(shape) * (dtype.itemsize + 8) for shape, _, dtype in heads)
    shapes = " and ".join(f"{key} {_shape(head[0])}" for key, head in zip(keys, heads))
    check_fits(needed, source, f"loading {shapes} as float64", DataError)


def _read(path: Path, keys: tuple[str, ...], classification: bool) -> tuple[list[np.ndarray], tuple[int, ...]]:
    """The arrays named `keys` ("x" first), each header checked against its declared size and the
    memory before it is inflated; x as finite float64 (N, D), and one sample's shape."""
    source = str(path)
    regular_file_size(path, DataError, "an .npz file")
    try:
        with zipfile.ZipFile(path) as archive:
            members = _members(archive, keys, source)
            heads = [_header(archive, members[f"{key}.npy"], source, key) for key in keys]
            _check_shapes(heads[0], heads[1] if len(heads) > 1 else None, classification, source)
            _check_memory(heads, keys, source)
            arrays = [_inflate(archive, members[f"{key}.npy"], head) for key, head in zip(keys, heads)]
    except _UNREADABLE as exc:
        raise DataError(f"not a readable .npz archive ({exc})", source=source) from None
    x = arrays[0].reshape(len(arrays[0]), -1).astype(np.float64, copy=False)
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        raise DataError(f"x[{bad[0][0]}, {bad[0][1]}]: expected a finite number, received {x[tuple(bad[0])]}",
                        source=source)
    return [x, *arrays[1:]], tuple(heads[0][0][1:])  # (28, 28) for images stored as (N, 28, 28)


Header = tuple[tuple[int, ...], bool, np.dtype]  # shape, Fortran order, dtype


def _header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: str, key: str) -> Header:
    """The .npy header of one member (a few hundred bytes inflated), checked against its declared size."""
    with archive.open(info) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise DataError(f"{key}: .npy format version {version} is not supported", source=source)
        offset = stream.tell()
    if dtype.hasobject:
        raise DataError(f"{key}: expected a numeric array, received {dtype} (it cannot be loaded without pickle, "
                        f"which sgdcli never uses)", source=source)
    if dtype.kind not in _NUMERIC + "US":
        raise DataError(f"{key}: expected a numeric array (booleans, integers or real floats), received {dtype}",
                        source=source)
    declared = math.prod(shape) * dtype.itemsize
    if info.file_size - offset != declared:
        raise DataError(f"{key}: the header declares shape {_shape(shape)} of {dtype} ({format_bytes(declared)}) "
                        f"but the archive entry holds {format_bytes(info.file_size - offset)}", source=source)
    return shape, fortran, dtype


def _check_shapes(x_head: Header, y_head: Header | None, classification: bool, source: str) -> None:
    x_shape, _, x_type = x_head
    if x_type.kind not in _NUMERIC or len(x_shape) < 2:
        raise DataError(f"x: expected a numeric array of shape (N, D), received {x_type} {_shape(x_shape)}",
                        source=source)
    if x_shape[0] == 0 or math.prod(x_shape[1:]) == 0:
        raise DataError(f"x: expected at least one sample and one feature, received shape {_shape(x_shape)}",
                        source=source)
    if y_head is None:
        return
    y_shape, _, y_type = y_head
    if len(y_shape) == 0 or y_shape[0] != x_shape[0]:
        received = f"shape {_shape(y_shape)}" if len(y_shape) == 0 else str(y_shape[0])
        raise DataError(f"x has {x_shape[0]} samples but y has {received}", source=source)
    if math.prod(y_shape[1:]) == 0:
        raise DataError(f"y: expected at least one target per sample, received shape {_shape(y_shape)}", source=source)
    if not classification and y_type.kind not in _NUMERIC:
        raise DataError(f"y: expected numeric targets, received {y_type}", source=source)


def _inflate(archive: zipfile.ZipFile, info: zipfile.ZipInfo, head: Header) -> np.ndarray:
    """The member's data read straight into an array of its declared shape (no second copy)."""
    shape, fortran, dtype = head
    array = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    view = memoryview(array.reshape(-1, order="A")).cast("B")
    with archive.open(info) as stream:
        stream.seek(info.file_size - len(view))
        filled = 0
        while filled < len(view):
            count = stream.readinto(view[filled:])
            if not count:
                raise EOFError(f"{info.filename} ends after {filled} of {len(view)} data bytes")
            filled += count
    return array


def _classes(y: np.ndarray, source: str, class_names: tuple[str, ...] | None) -> tuple[np.ndarray, tuple[str, ...]]:
    if y.ndim == 2 and y.dtype.kind in _NUMERIC and _is_one_hot(y):
        width = y.shape[1]
        if width < 2 and class_names is None:
            raise DataError(f"y: one-hot rows need at least 2 columns, received {width}", source=source)
        return encode_codes(list(range(width)), y.argmax(axis=1), source,
                            class_names or tuple(str(i) for i in range(width)))
    if y.ndim != 1:
        raise DataError(f"y: expected class labels of shape (N,) or one-hot rows (N, C), received {y.dtype} "
                        f"{_shape(y.shape)}", source=source)
    return encode_labels(y, source, class_names)


def _is_one_hot(y: np.ndarray) -> bool:
    return bool(np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all())


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(size) for size in shape) + ")"
