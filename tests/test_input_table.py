"""Every input read right or refused clearly (issue 11): one table of inputs, commands, exit codes
and the words of the message. Rows live in the case lists imported below, one list per area."""

from __future__ import annotations

from pathlib import Path

import pytest
from input_cases_data import DATA_CASES
from input_cases_messages import MESSAGE_CASES
from input_table import Case, arguments, materialise
from typer.testing import CliRunner

from sgdcli.cli.app import app

CASES: list[Case] = DATA_CASES + MESSAGE_CASES
ids = [case.id for case in CASES]
assert len(ids) == len(set(ids)), "case ids must be unique"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*")) if not p.is_symlink()}


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_input_table(case: Case, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    materialise(case, tmp_path)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, arguments(case, tmp_path))
    shown = f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.exit_code == case.exit_code, shown
    assert isinstance(result.exception, (SystemExit, type(None))), shown  # no uncaught exception
    assert "Traceback" not in result.stderr, shown
    for word in case.words:
        assert word.lower() in result.stderr.lower(), f"missing {word!r}\n{shown}"
    for word in case.stdout_words:
        assert word.lower() in result.stdout.lower(), f"missing {word!r} on stdout\n{shown}"
    if not case.writes:
        assert snapshot(tmp_path) == before, f"a file was created or changed\n{shown}"
