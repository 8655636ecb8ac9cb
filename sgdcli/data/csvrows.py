"""Row-by-row reading of a CSV file, for what the fast reader cannot say: which row and column.

Only used once a problem is known to exist (or to name the row of a sample), so its speed
does not matter; its rules are the fast reader's: blank lines are skipped, every other row has
the header's number of cells, a number is a decimal number (labels.NUMBER).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from typing import BinaryIO

from sgdcli.data.labels import NUMBER
from sgdcli.errors import DataError

MAX_HEADER_BYTES = 64 * 1024 * 1024  # 100,000 column names fit many times over


def lines(handle: BinaryIO, source: str, limit: int | None = None) -> Iterator[str]:
    """Decoded physical lines (BOM dropped); a non-UTF-8 byte is a DataError naming its row."""
    number = 0
    while True:
        raw = handle.readline(-1 if limit is None else limit + 1)
        if not raw:
            return
        number += 1
        if limit is not None and len(raw) > limit:
            raise DataError(f"row {number} is longer than {limit:,} bytes; expected a header row", source=source)
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"row {number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} "
                            f"of the row)", source=source) from None


def records(handle: BinaryIO, source: str) -> Iterator[tuple[int, list[str]]]:
    """(row number, cells) of every non-blank row after the header; row numbers count lines from 1."""
    reader = csv.reader(lines(handle, source))
    try:
        next(reader, None)
        for row in reader:
            if row and not (len(row) == 1 and not row[0].strip()):
                yield reader.line_num, row
    except csv.Error as exc:
        raise DataError(f"row {reader.line_num + 1}: not valid CSV ({exc})", source=source) from None


def read_header(path: str) -> tuple[list[str], int]:
    """The header row's names, stripped, and how many lines it spans (a quoted name may hold a
    line break); at most MAX_HEADER_BYTES are read."""
    with open(path, "rb") as handle:
        reader = csv.reader(lines(handle, path, MAX_HEADER_BYTES))
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise DataError(f"row 1: not valid CSV ({exc})", source=path) from None
    if not header or (len(header) == 1 and not header[0].strip()):
        raise DataError("the file is empty; expected a header row and data rows", source=path)
    return [name.strip() for name in header], reader.line_num


def row_of(path: str, index: int) -> str:
    """'row L' for data sample `index` (0-based, blank lines not counted)."""
    with open(path, "rb") as handle:
        for count, (line, _) in enumerate(records(handle, path)):
            if count == index:
                return f"row {line}"
    return f"sample {index}"


def first_problem(path: str, header: list[str], features: list[str], target: str | None,
                  numeric_target: bool) -> DataError | None:
    """The first bad row or cell in file order, as the DataError to raise; None if none is found.
    A file without data rows is such a problem too. `target` None: no target column is read (predict)."""
    position = {name: j for j, name in enumerate(header)}
    numeric = [(position[name], name) for name in features]
    if numeric_target and target is not None:
        numeric.append((position[target], target))
    target_at = None if target is None else position[target]
    rows = 0
    with open(path, "rb") as handle:
        for line, row in records(handle, path):
            rows += 1
            if len(row) != len(header):
                return DataError(f"row {line}: expected {len(header)} cells like the header, received {len(row)}",
                                 source=path)
            for j, name in numeric:
                problem = number_problem(row[j])
                if problem:
                    return DataError(f"row {line}, column {name!r}: {problem}", source=path)
            if target_at is not None and not row[target_at].strip():
                return DataError(f"row {line}, column {target!r}: empty target cell", source=path)
    return None if rows else DataError("no data rows after the header", source=path)


def number_problem(cell: str) -> str | None:
    """What is wrong with one numeric cell, or None if it is a finite number."""
    if not cell.strip():
        return "empty cell"
    if not NUMBER.match(cell):
        return f"expected a number, received {cell!r}"
    if not math.isfinite(float(cell)):
        return f"expected a finite number, received {cell!r}"
    return None
