"""IDX files (the MNIST / Fashion-MNIST format): decoding, finding the standard pair, caching.

Cache design: each source file is read once; with a cache dir, the sha256 of those same bytes
(~15 ms for a 26 MB .gz, versus ~250 ms to gunzip and decode it) plus the byte count names
`v1-<sha256>-<size>.npy`, written via a temp file and os.replace. Re-hashing on every load is
cheap enough that no (path, mtime) index is kept, so an edited file can never be served stale.
An entry is read with allow_pickle=False and used only if its dtype and shape match the source's
own header; otherwise it is rewritten. Any OSError on the cache side just skips caching.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

from sgdcli.data.dataset import Dataset, DataShape
from sgdcli.data.labels import encode_codes
from sgdcli.errors import DataError
from sgdcli.fileio import check_fits, read_bytes, regular_file_size

STANDARD_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_HEADER = 4 + 4 * 255
_CACHE_VERSION = "v1"
_HEADER_READ = 1 << 20  # compressed bytes read for a header: far more than 1,024 inflated bytes need


def read_idx(path: str | Path) -> np.ndarray:
    """Decode one IDX file (raw or gzip) into an array of the header's shape, native byte order."""
    return _decode(_read_bytes(path), str(path))


def find_idx_files(folder: str | Path) -> dict[str, tuple[Path, Path]]:
    """Map "train" (required) and "test" (if present) to (images, labels) paths in `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder; expected a folder holding IDX files", source=str(folder))
    found: dict[str, tuple[Path, Path]] = {}
    for split, (images_name, labels_name) in STANDARD_NAMES.items():
        images, labels = _find_one(folder, images_name), _find_one(folder, labels_name)
        if images and labels:
            found[split] = (images, labels)
        elif split == "train" or images or labels:
            # Half a test pair is an error too: silently dropping the test set would mislead.
            missing = images_name if images is None else labels_name
            raise DataError(
                f"missing {missing}[.gz]; expected the {split} pair "
                f"{images_name}[.gz] and {labels_name}[.gz] "
                f"(the dotted spelling, e.g. {_dotted(images_name)}, is accepted too)",
                source=str(folder),
            )
    return found


def find_images(folder: str | Path) -> Path:
    """The images file to predict on in `folder`: the test images, else the training images (no labels needed)."""
    folder = Path(folder)
    for split in ("test", "train"):
        found = _find_one(folder, STANDARD_NAMES[split][0])
        if found is not None:
            return found
    names = " or ".join(f"{STANDARD_NAMES[split][0]}[.gz]" for split in ("test", "train"))
    raise DataError(f"no IDX images file in the folder; expected {names}", source=str(folder))


def load_idx_pair(
    images: str | Path, labels: str | Path, cache_dir: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load matching images (N, ...) and integer labels (N,), via a decode cache if `cache_dir`."""
    x = _load_cached(images, cache_dir)
    y = _load_cached(labels, cache_dir)
    _check_pair(x.shape, y, images, labels)
    return x, y


def _check_pair(shape: tuple[int, ...], y: np.ndarray, images: str | Path, labels: str | Path) -> None:
    """Images of `shape` (N, ...) and labels `y` (N,) of integers, or a DataError naming the file."""
    if len(shape) < 2:
        raise DataError(
            f"expected an idx3 image file with at least 2 dimensions, "
            f"received {len(shape)} (shape {_shape_text(shape)})",
            source=str(images),
        )
    if y.ndim != 1:
        raise DataError(
            f"expected an idx1 label file with 1 dimension, "
            f"received {y.ndim} (shape {_shape_text(y.shape)})",
            source=str(labels),
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"expected integer labels, received {y.dtype}", source=str(labels))
    if shape[0] != len(y):
        raise DataError(
            f"holds {shape[0]} images but {labels} holds {len(y)} labels; the counts must match",
            source=str(images),
        )


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/sgdcli/idx, or ~/.cache/sgdcli/idx when that is unset or relative."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "sgdcli" / "idx"


def _find_one(folder: Path, name: str) -> Path | None:
    # Raw first: with both present it skips a gunzip; the contents are the same.
    for candidate in (name, name + ".gz", _dotted(name), _dotted(name) + ".gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def _dotted(name: str) -> str:
    # "train-images-idx3-ubyte" -> "train-images.idx3-ubyte"
    stem, _, tail = name.rpartition("-idx")
    return f"{stem}.idx{tail}"


def _read_bytes(path: str | Path) -> bytes:
    """A regular file's bytes (a device or pipe is refused: it has no size to check first)."""
    size = regular_file_size(path, DataError, "an IDX file")
    check_fits(size, str(path), "reading this file", DataError)
    return read_bytes(path, DataError, "an IDX file", limit=size)


def _decode(raw: bytes, source: str) -> np.ndarray:
    """Gunzip if needed, check the header against the length, return a native-order copy.

    The header is read first and what it declares is checked against memory before the rest is
    inflated, and never more than the declared size (+1 byte, to detect trailing data) is inflated.
    """
    gz_named = source.endswith(".gz")
    if raw.startswith(_GZIP_MAGIC):
        dtype, shape, offset = _parse_header(_gunzip(raw, _MAX_HEADER, source), source, gz_named)
    else:
        dtype, shape, offset = _parse_header(raw, source, gz_named)
    expected = math.prod(shape) * dtype.itemsize
    check_fits(2 * expected + 4 * math.prod(shape), source,
               f"the header's shape {_shape_text(shape)} of {dtype.name} (decoded, then as float32)", DataError)
    gzipped = raw.startswith(_GZIP_MAGIC)
    data = _gunzip(raw, offset + expected + 1, source) if gzipped else raw
    received = len(data) - offset
    if received != expected:
        what = "truncated" if received < expected else "trailing bytes after the data"
        raise DataError(
            f"{what}: expected {expected} bytes of data for shape {_shape_text(shape)} "
            f"of {dtype.name}, received {received}{' or more' if gzipped and received > expected else ''}",
            source=source,
        )
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset)
    return array.reshape(shape).astype(dtype.newbyteorder("="))


def _gunzip(raw: bytes, limit: int, source: str) -> bytes:
    """At most `limit` bytes inflated from a gzip file (one member or several, as gzip writes them)."""
    parts, size, rest = [], 0, raw
    try:
        while rest and size < limit:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            part = inflater.decompress(rest, limit - size)
            parts.append(part)
            size += len(part)
            if not inflater.eof:
                if inflater.unconsumed_tail or size >= limit:
                    break
                raise DataError("not a valid gzip file: it ends before the end of its compressed data",
                                source=source)
            rest = inflater.unused_data
    except zlib.error as exc:
        raise DataError(f"not a valid gzip file: {exc}", source=source) from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _parse_header(
    data: bytes, source: str, gz_named: bool = False
) -> tuple[np.dtype, tuple[int, ...], int]:
    """Return (big-endian dtype, shape, data offset) from the start of a decompressed IDX file."""
    if len(data) < 4:
        raise DataError(
            f"too short for an IDX header: expected at least 4 bytes, received {len(data)}",
            source=source,
        )
    type_code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00":
        hint = " (the name ends in .gz but the file is not gzip-compressed)" if gz_named else ""
        raise DataError(
            f"not an IDX file: expected magic bytes 00 00 <type> <ndim>, "
            f"received {data[:4].hex(' ')}{hint}",
            source=source,
        )
    if type_code not in _TYPES:
        known = ", ".join(f"0x{code:02X}" for code in _TYPES)
        raise DataError(
            f"unknown IDX type byte 0x{type_code:02X}; expected one of {known}", source=source
        )
    if ndim == 0:
        raise DataError("IDX header declares 0 dimensions; expected at least 1", source=source)
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataError(
            f"truncated header: expected {offset} header bytes for {ndim} dimensions, "
            f"received {len(data)}",
            source=source,
        )
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if 0 in shape:
        raise DataError(
            f"IDX header has an empty dimension: shape {_shape_text(shape)}", source=source
        )
    return _TYPES[type_code], shape, offset


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(size) for size in shape)


def _load_cached(path: str | Path, cache_dir: str | Path | None) -> np.ndarray:
    raw = _read_bytes(path)
    if cache_dir is None:
        return _decode(raw, str(path))
    entry = Path(cache_dir) / f"{_CACHE_VERSION}-{hashlib.sha256(raw).hexdigest()}-{len(raw)}.npy"
    cached = _read_entry(entry, raw)
    if cached is not None:
        return cached
    array = _decode(raw, str(path))
    _write_entry(entry, array)
    return array


def _read_entry(entry: Path, raw: bytes) -> np.ndarray | None:
    """The cached array, or None if it is absent, unreadable or does not match the header."""
    try:
        cached = np.load(entry, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    try:
        head = raw
        if raw.startswith(_GZIP_MAGIC):
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw, _MAX_HEADER)
        dtype, shape, _ = _parse_header(head, str(entry))
    except (DataError, zlib.error):
        return None
    if not isinstance(cached, np.ndarray) or cached.dtype != dtype.newbyteorder("="):
        return None
    return cached if cached.shape == shape else None


def _write_entry(entry: Path, array: np.ndarray) -> None:
    """Write atomically; a cache that cannot be written is skipped, never an error."""
    tmp_name = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-", suffix=".npy")
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
        os.replace(tmp_name, entry)
    except OSError:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


def load_idx(images: Path, labels: Path, class_names: tuple[str, ...] | None = None,
             known_classes: tuple[str, ...] | None = None, cached: bool = True) -> Dataset:
    """An IDX image/label pair. The distinct labels, in label order, are the classes 0..C-1,
    named by `class_names` (data.class_names, a name per label value) or by the label value;
    with `known_classes` (a trained model's), every label's name must be one of them. `cached`:
    through the decode cache (default_cache_dir); else decoded with nothing written."""
    pixels, raw_labels = load_idx_pair(images, labels, cache_dir=default_cache_dir() if cached else None)
    sample_shape = tuple(pixels.shape[1:])
    y, classes = _classes(raw_labels, labels, class_names, known_classes)
    width = int(np.prod(sample_shape))
    return Dataset(pixels.reshape(len(pixels), width), y, str(images),
                   tuple(f"pixel_{i}" for i in range(width)), classes, sample_shape)


def idx_shape(images: Path, labels: Path, class_names: tuple[str, ...] | None = None,
              known_classes: tuple[str, ...] | None = None) -> DataShape:
    """load_idx's checks on the images' header (count, image shape, memory) and the labels; the
    pixels are neither inflated nor read past the header, so a truncated images file passes here
    and is refused by load_idx."""
    dtype, shape = _read_header(images)
    # the labels are decoded directly (one byte a sample): nothing is written to the decode cache
    y, classes = _classes(read_idx(labels), labels, class_names, known_classes, shape, images)
    width = math.prod(shape[1:])
    return DataShape(shape[0], str(images), tuple(f"pixel_{i}" for i in range(width)), tuple(shape[1:]), y, classes)


def _read_header(path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    """The header of an IDX file (raw or gzip), checked as _decode checks it, from its first bytes."""
    regular_file_size(path, DataError, "an IDX file")
    with open(path, "rb") as handle:
        raw = handle.read(_HEADER_READ)
    gz_named, source = str(path).endswith(".gz"), str(path)
    dtype, shape, _ = _parse_header(_gunzip(raw, _MAX_HEADER, source) if raw.startswith(_GZIP_MAGIC) else raw,
                                    source, gz_named)
    check_fits(2 * math.prod(shape) * dtype.itemsize + 4 * math.prod(shape), source,
               f"the header's shape {_shape_text(shape)} of {dtype.name} (decoded, then as float32)", DataError)
    return dtype, shape


def _classes(raw_labels: np.ndarray, labels: Path, class_names: tuple[str, ...] | None,
             known_classes: tuple[str, ...] | None, shape: tuple[int, ...] | None = None,
             images: Path | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels encoded as load_idx documents; with `shape`, first checked against the images' header."""
    if shape is not None:
        _check_pair(shape, raw_labels, images, labels)
    distinct, codes = np.unique(raw_labels, return_inverse=True)
    if distinct[0] < 0:
        raise DataError(f"label {int(distinct[0])} is negative; expected class labels 0, 1, ...", source=str(labels))
    if class_names is not None and distinct[-1] >= len(class_names):
        raise DataError(f"label {int(distinct[-1])} is out of range: data.class_names gives {len(class_names)} "
                        f"classes", source=str(labels))
    names = [class_names[v] if class_names is not None else str(v) for v in distinct.tolist()]
    if known_classes is None and len(names) < 2:
        raise DataError(f"every label is {names[0]!r}; classification needs at least 2 classes", source=str(labels))
    return encode_codes(names, codes.reshape(-1), str(labels), known_classes or tuple(names),
                        locate=lambda i: f"label {i}")
