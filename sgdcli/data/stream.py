"""Feature rows of a file read a batch at a time, so a file of any length is predicted in bounded memory."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sgdcli.data import idx
from sgdcli.errors import DataError
from sgdcli.fileio import reading

MAX_HEADER_BYTES = 1 << 20  # a header row longer than this is not read as one


@dataclass(frozen=True)
class FeatureBatch:
    """Raw (unscaled) features x (n, D) of consecutive rows, and the `keep` columns as read (text)."""

    x: np.ndarray
    kept: dict[str, list[str]]


def csv_batches(path: Path, features: Sequence[str], keep: Sequence[str], rows: int) -> Iterator[FeatureBatch]:
    """A CSV with a header row, `rows` data rows at a time; columns are found by name, others ignored.

    Cells are read as text by pandas and converted here, so a bad cell is reported like the training
    reader does: "row R, column 'C': expected a number, received 'x'" (R is the line of the file).
    """
    import pandas as pd  # several hundred ms to import: only for the commands that read CSV in chunks

    source = str(path)
    header = _header(path)
    missing = [c for c in [*features, *keep] if c not in header]
    if missing:
        raise DataError(f"column(s) {', '.join(map(repr, missing))} not in the header ({', '.join(header)})",
                        source=source)
    done = 0  # data rows before this chunk
    try:
        reader = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, index_col=False,
                             chunksize=rows, encoding="utf-8-sig", skipinitialspace=False)
        with reader:
            for chunk in reader:
                chunk.columns = header
                x = _numbers(chunk[list(features)], list(features), done, path)
                yield FeatureBatch(x, {c: chunk[c].tolist() for c in keep})
                done += len(chunk)
    except pd.errors.EmptyDataError:
        raise DataError("no data rows after the header", source=source) from None
    except pd.errors.ParserError as exc:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        what = (f"row {found[2]}: expected {found[1]} cells like the header, received {found[3]}" if found
                else f"not valid CSV: {exc}")
        raise DataError(what, source=source) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text (bad byte at offset {exc.start})", source=source) from None
    if done == 0:
        raise DataError("no data rows after the header", source=source)


def _header(path: Path) -> list[str]:
    source = str(path)
    with reading(path, DataError, "a CSV file"):
        with open(path, "rb") as handle:
            first = handle.readline(MAX_HEADER_BYTES)
    try:
        header = next(csv.reader([first.decode("utf-8-sig")]), None)
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text (bad byte at offset {exc.start})", source=source) from None
    except csv.Error as exc:
        raise DataError(f"not valid CSV: {exc}", source=source) from None
    if not header:
        raise DataError("the file is empty; expected a header row and data rows", source=source)
    header = [h.strip() for h in header]
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise DataError(f"header names column(s) {', '.join(duplicates)} more than once", source=source)
    return header


def _numbers(frame, names: list[str], first_row: int, path: Path) -> np.ndarray:
    """Text cells (a DataFrame, n x D, data rows first_row, first_row + 1, ...) -> float64; the first
    cell that is not a finite number is an error naming its row (the file's line) and column."""
    import pandas as pd

    values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        i, j = bad[0]
        cell = str(frame.iat[i, j])
        try:
            float(cell)  # parses, so it is inf or nan
            what = f"expected a finite number, received {cell!r}"
        except ValueError:
            what = "empty cell" if not cell.strip() else f"expected a number, received {cell!r}"
        raise DataError(f"row {_line_of(path, first_row + i)}, column {names[j]!r}: {what}", source=str(path))
    return values


def _line_of(path: Path, index: int) -> int:
    """The file line (the header is line 1) of data row `index` (0-based), counting the blank lines that
    are skipped and multi-line quoted cells as the training reader does. Read only to word an error."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        rows = (reader.line_num for row in reader if row and (len(row) > 1 or row[0].strip()))
        return next((line for seen, line in enumerate(rows) if seen == index), index + 2)


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
