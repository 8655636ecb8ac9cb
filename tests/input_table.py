"""The row format of the input table (issue 11): an input, a command, the exit code and the words
its one message must contain. `tests/test_input_table.py` runs every row of every case list.

A row's files are written into a fresh temporary folder, the command runs there in-process
(typer's CliRunner, stdin closed), and the check is the promise for bad input: the documented
exit code, every expected word in stderr (case-insensitive), no traceback, and, unless the row
says the command writes, no file created or changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from conftest import tiny_config

FileMaker = Callable[[Path], None]  # for inputs that need code to build (npz, gzip, symlinks)


@dataclass(frozen=True)
class Case:
    """One row: `files` maps a name to its text, bytes, a config dict (written as YAML) or a
    FileMaker; `args` are sgdcli's arguments, with "{tmp}" replaced by the folder's path."""

    id: str
    files: dict[str, str | bytes | dict | FileMaker]
    args: tuple[str, ...]
    exit_code: int
    words: tuple[str, ...] = ()
    writes: bool = False  # True when the command may legitimately create files (e.g. a run directory)
    stdout_words: tuple[str, ...] = field(default=())


def config_text(**changes) -> str:
    """tiny_config() with changes (dotted keys spelled with __), as YAML text."""
    return yaml.safe_dump(tiny_config(**changes), sort_keys=False)


def materialise(case: Case, folder: Path) -> None:
    for name, content in case.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif isinstance(content, dict):
            path.write_text(yaml.safe_dump(content, sort_keys=False))
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def arguments(case: Case, folder: Path) -> list[str]:
    return [arg.replace("{tmp}", str(folder)) for arg in case.args]
