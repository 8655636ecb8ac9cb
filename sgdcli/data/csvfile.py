"""CSV tables: a header row, numeric feature cells, a numeric or class target column.

Parsed by pyarrow's CSV reader (multi-threaded C++, streamed in blocks): a 218 MB table loads
in about 3 s with a peak of 0.8 GB (benchmarks/csv_load.py). It is strict where we want it
(every row must have the header's number of cells; with no null spellings, an empty cell or
`NA` is not a number), so a file it accepts needs no second pass. When it refuses a file,
`csvrows` reads the rows again in Python to name the first bad row and column.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from sgdcli.data import csvrows
from sgdcli.data.dataset import Dataset, DataShape
from sgdcli.data.labels import encode_codes
from sgdcli.errors import DataError
from sgdcli.fileio import check_fits, format_bytes, regular_file_size

BLOCK_BYTES = 16 * 1024 * 1024  # one parse block; a row must fit in one
CSV_MEMORY_FACTOR = 4  # peak memory of a load / file size, rounded up from benchmarks/csv_load.py
PROGRESS_AFTER = 2.0  # seconds before the first progress line, and between lines

Progress = Callable[[int, int], None]  # (bytes read so far, file size)


def load_csv(path: Path, target: str, features: list[str] | tuple[str, ...] | None, classification: bool,
             class_names: tuple[str, ...] | None = None, progress: Progress | None = None) -> Dataset:
    """A CSV file with a header row; every feature cell must be a finite number.

    x (N, D) float64 in the order of `features` (default: every column but the target); y is
    class indices (N,) int64 (labels encoded by labels.encode_codes; with `class_names`, a
    trained model's classes) or targets (N, 1) float64. DataError naming the file, and the row
    and column, for anything else. Loads longer than PROGRESS_AFTER seconds report progress to
    `progress` (default: a line on stderr every few seconds).
    """
    source = str(path)
    table, size = _open_table(path, target, features, classification)
    with _parsing(table):
        x, y = _read(table, size, progress)
    if len(x) == 0:
        raise DataError("no data rows after the header", source=source)
    if not np.isfinite(x).all() or (not classification and not np.isfinite(y).all()):
        raise table.problem("expected finite numbers")
    if not classification:
        return Dataset(x, y, source, tuple(table.names))
    labels, classes = _encode(y, table, class_names)
    return Dataset(x, labels, source, tuple(table.names), classes)


def csv_shape(path: Path, target: str, features: list[str] | tuple[str, ...] | None, classification: bool,
              class_names: tuple[str, ...] | None = None) -> DataShape:
    """load_csv's checks on what they need: the header, the row count and the target column. The
    feature cells are not parsed (a bad one is found by `train`); every row's width still is.

    DataError naming the file (and the row and column) as load_csv words it.
    """
    source = str(path)
    table, _ = _open_table(path, target, features, classification)
    names = table.names
    target_only = replace(table, names=[])
    with _parsing(target_only), pa.OSFile(source, "r") as handle:  # streamed: one block of the file at a time
        y = pa.chunked_array([batch.column(0) for batch in pacsv.open_csv(handle, **_options(target_only))],
                             type=pa.string() if classification else pa.float64())
    if len(y) == 0:
        raise DataError("no data rows after the header", source=source)
    if not classification:
        if not np.isfinite(y.to_numpy()).all():
            raise target_only.problem("expected finite numbers")
        return DataShape(len(y), source, tuple(names), (len(names),))
    labels, classes = _encode(y, target_only, class_names)
    return DataShape(len(y), source, tuple(names), (len(names),), labels, classes)


@dataclass(frozen=True)
class _Table:
    """Where the columns are: what the fast reader and the row-by-row reader both need."""

    path: str
    header: list[str]
    header_lines: int  # a quoted name can span lines; pyarrow skips lines, not rows
    names: list[str]  # feature columns
    target: str
    classification: bool

    def problem(self, fallback: str) -> DataError:
        """The first bad row or cell, found by reading the rows again; `fallback` if none is found."""
        found = csvrows.first_problem(self.path, self.header, self.names, self.target, not self.classification)
        return found or DataError(fallback, source=self.path)


def _open_table(path: Path, target: str, features, classification: bool) -> tuple[_Table, int]:
    """The file's size, checked against memory (measured: a 218 MB file of 7-character numbers peaks
    at 0.8 GB, values held twice while parsing), and its header and columns."""
    source = str(path)
    size = regular_file_size(path, DataError, "a CSV file")
    check_fits(CSV_MEMORY_FACTOR * size, source, f"loading this {format_bytes(size)} CSV file (about "
               f"{CSV_MEMORY_FACTOR} times its size)", DataError)
    header, header_lines = csvrows.read_header(source)
    return _Table(source, header, header_lines, _columns(header, target, features, source), target,
                  classification), size


@contextmanager
def _parsing(table: _Table) -> Iterator[None]:
    """pyarrow's and the system's errors while reading, as a DataError naming the row if one is bad."""
    try:
        yield
    except pa.ArrowInvalid as exc:
        raise table.problem(f"not valid CSV: {exc}") from None
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror or exc}", source=table.path) from None


def _columns(header: list[str], target: str, features, source: str) -> list[str]:
    counts = Counter(header)
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        raise DataError(f"header names column(s) {', '.join(duplicates)} more than once", source=source)
    if target not in counts:
        raise DataError(f"no target column {target!r}; the header has: {_listing(header)}", source=source)
    names = list(features) if features is not None else [c for c in header if c != target]
    missing = [c for c in names if c not in counts]
    if missing:
        raise DataError(f"feature column(s) {', '.join(map(repr, missing[:10]))} not in the header "
                        f"({_listing(header)})", source=source)
    if not names:
        raise DataError("expected at least one feature column besides the target", source=source)
    return names


def _listing(header: list[str]) -> str:
    return ", ".join(header[:20]) + (f", ... ({len(header)} columns)" if len(header) > 20 else "")


def _read(table: _Table, size: int, progress: Progress | None) -> tuple[np.ndarray, pa.ChunkedArray | np.ndarray]:
    """Stream the file block by block: x as float64 blocks, the target as strings (classes) or floats."""
    columns = [*table.names, table.target]
    options = _options(table)
    report = progress or _Progress(table.path)
    started = time.monotonic()
    blocks, targets = [], []
    feature_columns = list(range(len(table.names)))
    with pa.OSFile(table.path, "r") as handle:  # read natively: no Python buffer of a block's size
        reader = pacsv.open_csv(handle, **options)
        assert reader.schema.names == columns, "pyarrow returns include_columns in their order"
        for batch in reader:
            # one C++ copy of the block's float64 columns into a row-major (rows, D) array
            blocks.append(np.asarray(batch.select(feature_columns).to_tensor(row_major=True)))
            targets.append(batch.column(len(feature_columns)))
            if time.monotonic() - started >= PROGRESS_AFTER:
                report(handle.tell(), size)
    if isinstance(report, _Progress):
        report.done(sum(len(b) for b in blocks))
    x = np.concatenate(blocks) if blocks else np.empty((0, len(feature_columns)))
    del blocks
    y_column = pa.chunked_array(targets, type=pa.string() if table.classification else pa.float64())
    if table.classification:
        return x, y_column
    return x, y_column.to_numpy().reshape(-1, 1)


def _options(table: _Table) -> dict:
    """pyarrow's reader options for the table's feature columns (float64) and its target column."""
    types = {name: pa.float64() for name in table.names}
    types[table.target] = pa.string() if table.classification else pa.float64()
    return reader_options(table.header, table.header_lines, types)


def reader_options(header: list[str], header_lines: int, types: dict[str, pa.DataType]) -> dict:
    """Keyword arguments for `pyarrow.csv.open_csv`: the columns of `types`, in that order and of those
    types, after the header's lines; no null spellings (an empty cell or `NA` is not a number), rows
    of only spaces skipped like blank lines."""
    return {
        "read_options": pacsv.ReadOptions(column_names=header, skip_rows=header_lines, block_size=BLOCK_BYTES),
        "parse_options": pacsv.ParseOptions(invalid_row_handler=skip_blank),
        "convert_options": pacsv.ConvertOptions(include_columns=list(types), column_types=types, null_values=[],
                                                strings_can_be_null=False, quoted_strings_can_be_null=False),
    }


def skip_blank(row) -> str:
    """Rows of only spaces are skipped like blank lines; any other row of the wrong width is an error."""
    return "skip" if not row.text.strip() else "error"


def _encode(y: pa.ChunkedArray, table: _Table, class_names: tuple[str, ...] | None
            ) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class labels via the column's dictionary: only the distinct labels become Python strings."""
    if pc.any(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(y)), 0)).as_py():
        raise table.problem(f"column {table.target!r}: empty target cell")
    encoded = y.combine_chunks().dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return encode_codes(encoded.dictionary.to_pylist(), codes, table.path, class_names,
                        locate=lambda i: csvrows.row_of(table.path, i))


class _Progress:
    """A line on stderr every PROGRESS_AFTER seconds while a load takes longer than that."""

    def __init__(self, source: str) -> None:
        self.source, self.started, self.last = source, time.monotonic(), 0.0

    def __call__(self, done: int, size: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_AFTER:
            self.last = now
            share = min(done / size, 1.0) if size else 1.0
            print(f"reading {self.source}: {share:.0%} of {format_bytes(size)} ({now - self.started:.0f} s)",
                  file=sys.stderr, flush=True)

    def done(self, rows: int) -> None:
        if self.last:
            print(f"read {self.source}: {rows:,} rows in {time.monotonic() - self.started:.1f} s",
                  file=sys.stderr, flush=True)
