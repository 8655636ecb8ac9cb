"""Feature rows of a file read a batch at a time, so a file of any length is predicted in bounded memory."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from sgdcli.data import csvrows, idx
from sgdcli.data.csvfile import reader_options
from sgdcli.errors import DataError
from sgdcli.fileio import regular_file_size


@dataclass(frozen=True)
class FeatureBatch:
    """Raw (unscaled) features x (n, D) of consecutive rows, and the `keep` columns as read (text)."""

    x: np.ndarray
    kept: dict[str, list[str]]


def csv_batches(path: Path, features: Sequence[str], keep: Sequence[str], rows: int) -> Iterator[FeatureBatch]:
    """A CSV with a header row, at most `rows` data rows at a time; columns are found by name, others
    ignored. Parsed by pyarrow's streaming reader, like training data (csvfile.py): feature cells as
    float64, `keep` columns as text; a bad row or cell is reported as the training reader reports it
    ("row R, column 'C': expected a number, received 'x'", R the line of the file)."""
    source = str(path)
    regular_file_size(path, DataError, "a CSV file")
    header, header_lines = csvrows.read_header(source)
    missing = [c for c in dict.fromkeys([*features, *keep]) if c not in header]
    if missing:
        raise DataError(f"column(s) {', '.join(map(repr, missing))} not in the header ({', '.join(header[:20])})",
                        source=source)
    if len(set(header)) != len(header):
        duplicates = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"header names column(s) {', '.join(duplicates)} more than once", source=source)
    columns = list(dict.fromkeys([*features, *keep]))
    # a kept feature column is read as a number
    types = {name: pa.float64() if name in features else pa.string() for name in columns}
    options = reader_options(header, header_lines, types)

    def problem(fallback: str) -> DataError:  # the first bad row or cell, found by reading the rows again
        return csvrows.first_problem(source, header, list(features), None, False) or DataError(fallback, source=source)

    feature_at = [columns.index(name) for name in features]
    done = 0
    try:
        with pa.OSFile(source, "r") as handle:
            for block in pacsv.open_csv(handle, **options):
                for start in range(0, block.num_rows, rows):
                    part = block.slice(start, rows)
                    x = np.asarray(part.select(feature_at).to_tensor(row_major=True), dtype=np.float64)
                    if not np.isfinite(x).all():
                        raise problem("expected finite numbers")
                    kept = {c: [str(v) if not isinstance(v, str) else v for v in part.column(c).to_pylist()]
                            for c in keep}
                    yield FeatureBatch(x, kept)
                done += block.num_rows
    except pa.ArrowInvalid as exc:
        raise problem(f"not valid CSV: {exc}") from None
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror or exc}", source=source) from None
    if done == 0:
        raise DataError("no data rows after the header", source=source)


def array_batches(x: np.ndarray, rows: int) -> Iterator[FeatureBatch]:
    """Rows of an array already in memory (NPZ `x`, IDX images), `rows` at a time."""
    for start in range(0, len(x), rows):
        yield FeatureBatch(x[start : start + rows], {})


def idx_images(path: Path) -> tuple[np.ndarray, tuple[int, ...]]:
    """Images (N, H*W) as stored (uint8) and one image's shape, from an IDX images file or a folder
    (its test images, else its training images)."""
    path = Path(path)
    images = idx.find_images(path) if path.is_dir() else path
    pixels = idx.read_idx(images)
    if pixels.ndim < 2:
        raise DataError(f"expected an idx3 image file, received {pixels.ndim} dimension(s)", source=str(images))
    return pixels.reshape(len(pixels), -1), tuple(pixels.shape[1:])
