"""Input-table rows (issue 11) for reading data and configs right: labels, scaling, types, bounded reads, CSV."""

from __future__ import annotations

from input_table import Case

DATA_CASES: list[Case] = []
