"""Files a command writes outside a run directory: new unless --force, never a device or FIFO (README, Commands).

The kind: every such output (compare's plots, landscape's and boundary's files, a sweep's comparison, predict,
export, schema) is checked before the command's work starts, refuses an existing file without --force, and
never replaces anything that is not a regular file (renaming a new file over /dev/null would destroy it).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import typer
from conftest import tiny_config
from typer.testing import CliRunner

from sgdcli import fileio
from sgdcli.cli.app import app
from sgdcli.errors import RunDirError, UsageError
from sgdcli.training import sweep as sweep_module

runner = CliRunner()


def run(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny run (two features, a classifier: boundary can draw it)."""
    import yaml

    folder = tmp_path_factory.mktemp("outputs")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(training__epochs=2)))
    result = run("train", config, "--run-dir", folder / "run")
    assert result.exit_code == 0, result.output
    return folder / "run"


# Each command writing files outside a run: (arguments before the output option, option, the files it writes
# from the value given).
def _commands(run_dir: Path) -> dict[str, tuple[list, str, callable]]:
    return {
        "compare": (["compare", run_dir], "--plot", lambda p: [p]),
        "landscape": (["landscape", run_dir, "--points", "5"], "--out", lambda p: [p.with_name(p.name + ".csv"),
                                                                                   p.with_name(p.name + ".png")]),
        "plane": (["landscape", run_dir, "--plane", "--points", "5"], "--out",
                  lambda p: [p.with_name(p.name + ".csv"), p.with_name(p.name + ".png")]),
        "boundary": (["boundary", run_dir, "--units"], "--out", lambda p: [p.with_name(p.name + ".png"),
                                                                          p.with_name(p.name + "-units.png")]),
        "export": (["export", run_dir, "--format", "npz"], "--out", lambda p: [p]),
        "schema": (["schema"], "--out", lambda p: [p]),
    }


@pytest.mark.parametrize("command", ["compare", "landscape", "plane", "boundary", "export", "schema"])
def test_an_existing_output_is_replaced_only_with_force(tmp_path, trained, command):
    args, option, files = _commands(trained)[command]
    target = tmp_path / "out"
    paths = files(target)
    paths[-1].write_text("mine")  # one of the command's files already exists: the last one it would write
    result = run(*args, option, target)
    assert result.exit_code == 2 and "already exists" in result.stderr and "--force" in result.stderr
    assert paths[-1].read_text() == "mine" and not any(p.exists() for p in paths[:-1])  # nothing written at all
    result = run(*args, option, target, "--force")
    assert result.exit_code == 0, result.output
    assert all(p.is_file() for p in paths) and paths[-1].read_bytes() != b"mine"


@pytest.mark.parametrize("command", ["compare", "landscape", "plane", "boundary", "export", "schema"])
def test_a_fifo_is_never_replaced_even_with_force(tmp_path, trained, command):
    args, option, files = _commands(trained)[command]
    target = tmp_path / "out"
    for path in files(target):
        os.mkfifo(path)
    result = run(*args, option, target, "--force")
    assert result.exit_code == 2 and "is a FIFO, not a regular file" in result.stderr, result.output
    assert all(stat.S_ISFIFO(os.lstat(p).st_mode) for p in files(target))


def test_devices_fifos_and_sockets_are_refused_at_the_lowest_level(tmp_path):
    assert fileio.special_kind(Path("/dev/null")) == "a character device"
    with pytest.raises(UsageError, match="is a character device, not a regular file"):
        fileio.check_new_output(Path("/dev/null"), overwrite=True)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(RunDirError, match="it is a FIFO, not a regular file; it is left as it is"):
        fileio.atomic_write(fifo, b"data")  # every writer, not only the commands' checks
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and not list(tmp_path.glob(fileio.TEMP_PREFIX + "*"))
    for plain in (tmp_path / "new.png", tmp_path):
        assert fileio.special_kind(plain) is None
    link = tmp_path / "link"
    link.symlink_to(fifo)
    assert fileio.special_kind(link) is None  # a link is replaced, its target left alone
    fileio.atomic_write(link, b"data")
    assert link.read_bytes() == b"data" and not link.is_symlink() and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_sweep_checks_its_comparison_files_before_the_first_member(tmp_path):
    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(training__epochs=1)))
    (tmp_path / "compare.png").write_text("mine")
    result = run("train", config, "--runs-dir", tmp_path / "runs", "--sweep", "optimizer.learning_rate=0.1,0.2",
                 "--plot", tmp_path / "compare.png")
    assert result.exit_code == 2 and "compare.png: already exists" in result.stderr
    assert not (tmp_path / "runs").exists() and (tmp_path / "compare.png").read_text() == "mine"
    for option in (["--force"], ["--plot", tmp_path / "p.png"]):  # not a sweep: nothing to replace or draw
        result = run("train", config, "--runs-dir", tmp_path / "runs", *option)
        assert result.exit_code == 2 and f"{option[0]} is for a sweep's comparison plots" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_every_command_that_names_an_output_file_has_force():
    """The guard: a new command (or option) writing a file outside a run directory must offer --force."""
    exempt = {("lr-find", "out")}  # a folder: each test writes a new time-stamped folder inside it
    outputs = {"out", "plot"}
    commands = typer.main.get_command(app).commands
    missing = []
    for name, command in commands.items():
        options = {param.name for param in command.params}
        for option in options & outputs:
            if (name, option) not in exempt and "force" not in options:
                missing.append(f"{name} --{option}")
    assert not missing, f"no --force beside: {missing}"


@pytest.mark.parametrize("text, values", [
    ("sgd,full", ["sgd", "full"]),
    ("{type: step, every_epochs: 1},{type: cosine}", ["{type: step, every_epochs: 1}", "{type: cosine}"]),
    ("[{type: dense, units: 3}],[{units: 8}, {units: 3}]", ["[{type: dense, units: 3}]", "[{units: 8}, {units: 3}]"]),
    ("'a,b',c", ["'a,b'", "c"]),
    ('"a\\",b",c', ['"a\\",b"', "c"]),
    ("'it''s, fine',x", ["'it''s, fine'", "x"]),
    ("it's,b", ["it's", "b"]),  # an apostrophe inside a plain value opens no quote (YAML)
    ("{k: 'a,b'},{k: [1, 2]}", ["{k: 'a,b'}", "{k: [1, 2]}"]),
])
def test_sweep_values_split_at_top_level_commas_only(text, values):
    assert sweep_module.split_values(text) == values


@pytest.mark.parametrize("text, message", [
    ("[1,2", "'[' is never closed"), ("1]", "an unmatched ']'"), ("{a: [1}", "an unmatched '}'"),
    ("'a,b", "a quote is never closed"), ("x,{k: \"v}", "a quote is never closed"),
])
def test_an_unbalanced_sweep_value_is_refused(text, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        sweep_module.parse([f"key={text}"])


def test_a_sweep_over_mappings_trains_one_member_per_mapping(tmp_path):
    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(training__epochs=2)))
    result = run("train", config, "--runs-dir", tmp_path / "runs", "--plot", tmp_path / "c.png", "--sweep",
                 "optimizer.schedule={type: step, every_epochs: 1, factor: 0.5},{type: cosine}")
    assert result.exit_code == 0, result.output
    members = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(members) == 2, members
    schedules = sorted(yaml.safe_load((tmp_path / "runs" / m / "config.yaml").read_text())["optimizer"]["schedule"]
                       ["type"] for m in members)
    assert schedules == ["cosine", "step"]


@pytest.mark.parametrize("command", ["compare", "landscape", "plane", "boundary", "export", "schema"])
def test_no_output_goes_into_a_run_directory_even_with_force(trained, command):
    """README: the commands only read runs. `compare --plot RUN/checkpoints/best.safetensors --force` turned the
    run's best checkpoint into a PNG (a tester's report); any file inside a run is refused, its own or new."""
    args, option, files = _commands(trained)[command]
    before = {p: p.read_bytes() for p in trained.rglob("*") if p.is_file() and p.name != "run.lock"}
    for target in (trained / "checkpoints" / "best.safetensors", trained / "summary.json", trained / "new-file"):
        result = run(*args, option, target, "--force")
        assert result.exit_code == 2 and f"is inside the run directory {trained}" in result.stderr, result.output
    after = {p: p.read_bytes() for p in trained.rglob("*") if p.is_file() and p.name != "run.lock"}
    assert after == before


def test_a_sweep_whose_plot_and_heatmap_share_a_path_is_refused_before_it_starts(tmp_path):
    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(training__epochs=1)))
    result = run("train", config, "--runs-dir", tmp_path / "runs", "--sweep", "optimizer.learning_rate=0.1,0.2",
                 "--sweep", "optimizer.momentum=0,0.5", "--plot", tmp_path / "sweep.png")
    assert result.exit_code == 2 and "would write two of its files here (sweep.png and sweep.png)" in result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sweep.png").exists()
    result = run("train", config, "--runs-dir", tmp_path / "runs", "--sweep", "optimizer.learning_rate=0.1,0.2",
                 "--name", "b/d")
    assert result.exit_code == 2 and result.stderr.startswith("error: --name: name: expected a string matching")
    assert not (tmp_path / "runs").exists()
