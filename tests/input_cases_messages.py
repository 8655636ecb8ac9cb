"""Input-table rows (issue 11) for messages and tracebacks: every command, checkpoints, validate, sweeps, pipes."""

from __future__ import annotations

from input_table import Case

MESSAGE_CASES: list[Case] = []
