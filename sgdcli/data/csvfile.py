"""CSV tables: a header row, numeric feature cells, a numeric or class target column."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from sgdcli.data.dataset import Dataset
from sgdcli.data.labels import encode_labels
from sgdcli.errors import DataError


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
