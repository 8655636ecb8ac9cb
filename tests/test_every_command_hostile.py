"""Issue 11, item 6: a corpus of hostile inputs fed to every command the CLI has — found from the app
itself, so a command added later is fed the same corpus — each ending with a documented exit code
and one message, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from hostile_inputs import CRAFTED, CRAFTED_FOR_RESUME, config_text, crafted_run, huge_model, with_character
from input_table import Case, materialise
from typer.testing import CliRunner

from sgdcli.cli.app import app

DOCUMENTED = {0, 1, 2, 3, 4, 5, 6, 130, 143}  # README "Exit status"
COMMANDS = typer.main.get_command(app).commands  # name -> the command typer built

# Each input is one path (a file or folder written by materialise) that a command is given
# wherever it takes a path: a config where it wants a config, a run directory where it wants a run.
CONFIGS = {
    "NUL in the YAML": config_text().replace("seed: 0", "seed: 0\x00"),
    "escape character in the YAML": with_character("\x1b"),
    "not UTF-8": b"name: tiny\xff\xfe\n",
    "binary junk": bytes(range(256)) * 4,
    "empty file": "",
    "a list, not a mapping": "- a\n- b\n",
    "model too large for memory": huge_model(),
    "data file missing": config_text(data={"source": "csv", "path": "missing.csv", "target": "y"}),
    "output layer wrong for the classes": config_text(model__layers__1__units=5),
    "batch larger than the data": config_text(training__batch__size=10_000),
    "a device as the CSV data": config_text(data={"source": "csv", "path": "/dev/zero", "target": "y"}),
    "a device as the NPZ data": config_text(data={"source": "npz", "path": "/dev/zero"}),
    "a device as the IDX images": config_text(data={"source": "idx", "train_images": "/dev/zero",
                                                    "train_labels": "/dev/zero"}),
}
RUNS = {f"checkpoint: {label}": crafted_run(craft)
        for label, (craft, _) in {**CRAFTED, **CRAFTED_FOR_RESUME}.items()}
RUNS.update({
    "an empty folder": lambda path: path.mkdir(),
    "a run whose checkpoint is junk": lambda path: _junk_run(path),
})
ANYTHING = {**CONFIGS, **RUNS, "no such path": None}

CONFIG_PARAMETERS = {"config"}
RUN_PARAMETERS = {"run", "runs", "target", "checkpoint", "model", "run_dir"}


def _junk_run(path: Path) -> None:
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.yaml").write_text(config_text())
    for name in ("best", "last", "initial"):
        (path / "checkpoints" / f"{name}.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b"x" * 64)


def _first_path_argument(command) -> str | None:
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    return arguments[0].name if arguments else None


def _corpus(command) -> dict:
    name = _first_path_argument(command)
    if name is None:
        return {}
    if name in CONFIG_PARAMETERS:
        return {**CONFIGS, "no such path": None}
    if name in RUN_PARAMETERS:
        return {**RUNS, "a config where a run belongs": config_text(), "no such path": None}
    return ANYTHING  # a command this test does not know yet: every input


def _options(command_name: str) -> tuple[str, ...]:
    # Keep whatever a command writes inside the test's folder.
    return {"train": ("--runs-dir", "{tmp}/runs"), "compare": ("--plot", "{tmp}/c.png"),
            "landscape": ("--out", "{tmp}/ls")}.get(command_name, ())


CASES = [(command, label, content)
         for command in sorted(COMMANDS) for label, content in _corpus(COMMANDS[command]).items()]
# A command that also takes a run through an option (`train --resume RUN`) is fed the runs that way.
RESUMING = sorted(c for c in COMMANDS if any(p.name == "resume" for p in COMMANDS[c].params))
CASES += [(f"{command} --resume", label, content) for command in RESUMING for label, content in RUNS.items()]
CASES += [(command, "an unknown option", None)
          for command in sorted(COMMANDS) if _first_path_argument(COMMANDS[command]) is None]


def test_every_command_is_fed_the_corpus():
    fed = {command.split()[0] for command, _, _ in CASES}
    assert fed == set(COMMANDS) and "train --resume" in {command for command, _, _ in CASES} and {"train", "validate", "eval", "compare", "gradcheck", "landscape",
                                     "optimizers"} <= fed


@pytest.mark.parametrize("command,label,content", CASES, ids=[f"{c}-{label}" for c, label, _ in CASES])
def test_hostile_input(command: str, label: str, content, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if label == "an unknown option":
        args = [command, "--no-such-option"]
    else:
        if content is not None:
            materialise(Case(label, {"input": content}, (), 0), tmp_path)
        args = [*command.split(), str(tmp_path / "input"),
                *(a.replace("{tmp}", str(tmp_path)) for a in _options(command.split()[0]))]
    result = CliRunner().invoke(app, args)
    shown = f"{args}\nexit {result.exit_code}\nstdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
    assert result.exit_code in DOCUMENTED, shown
    assert isinstance(result.exception, (SystemExit, type(None))), shown
    assert "Traceback" not in result.stderr + result.stdout, shown
    if result.exit_code != 0:
        assert result.stderr.strip(), f"refused without a message\n{shown}"
