"""OpenBLAS's idle spin and kernel are chosen per process from the model a command runs (engine/spin.py): the
short spin reaches OpenBLAS for conv models only, the Haswell kernels for float32 models on AMD Zen 4 only, a
user's own OPENBLAS_THREAD_TIMEOUT or OPENBLAS_CORETYPE wins, and nothing is left in the environment for
child processes. Each case runs the command in a fresh Python process,
because OpenBLAS reads the variable once, when NumPy loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config
from test_cli import train
from test_cnn_runs import cnn_config, image_npz

from sgdcli.cli import before_numpy
from sgdcli.config.loading import load_config
from sgdcli.engine import spin
from sgdcli.runs import checkpoint, directory

# Runs one sgdcli command in this fresh process, then says what OpenBLAS read and runs and what the
# environment holds now (what a child process would inherit).
SCRIPT = """
import os, sys
from sgdcli.cli.app import app
try:
    app(sys.argv[1:], prog_name="sgdcli")
except SystemExit as stop:
    code = stop.code
from sgdcli.engine.blas import kernel
from sgdcli.engine.spin import loaded_spin
print("SPIN", code, loaded_spin(), os.environ.get("OPENBLAS_THREAD_TIMEOUT", "unset"), kernel(),
      os.environ.get("OPENBLAS_CORETYPE", "unset"))
"""


def fresh_process(*args, **user_settings: str) -> tuple[int, int, str, str, str]:
    """(exit code, the OPENBLAS_THREAD_TIMEOUT OpenBLAS read (0: none), the variable afterwards, the kernels
    OpenBLAS runs, OPENBLAS_CORETYPE afterwards); `user_settings`: variables the user set."""
    environ = {k: v for k, v in os.environ.items() if k not in (spin.VARIABLE, spin.KERNEL_VARIABLE)}
    environ.update(user_settings)
    result = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args)], capture_output=True, text=True,
                            env=environ, timeout=120)
    line = [line for line in result.stdout.splitlines() if line.startswith("SPIN ")]
    assert line, result.stdout + result.stderr
    code, read, after, kernel, kernel_after = line[-1].split()[1:]
    return int(code), int(read), after, kernel, kernel_after


def in_fresh_process(*args, user_setting: str | None = None) -> tuple[int, int, str]:
    """(exit code, the OPENBLAS_THREAD_TIMEOUT OpenBLAS read (0: none), the variable afterwards)."""
    return fresh_process(*args, **({} if user_setting is None else {spin.VARIABLE: user_setting}))[:3]


def kernel_in_fresh_process(*args, user_setting: str | None = None) -> tuple[int, str, str]:
    """(exit code, the kernels NumPy's OpenBLAS runs, OPENBLAS_CORETYPE afterwards)."""
    code, _, _, kernel, after = fresh_process(*args, **({} if user_setting is None else {spin.KERNEL_VARIABLE: user_setting}))
    return code, kernel, after


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A conv config and run, a dense config and run (trained in this process: only files are needed)."""
    folder = tmp_path_factory.mktemp("spin")
    conv = folder / "conv.yaml"
    conv.write_text(yaml.safe_dump(cnn_config(image_npz(folder / "images.npz"), training__epochs=1)))
    dense = folder / "dense.yaml"
    dense.write_text(yaml.safe_dump(tiny_config(training__epochs=1)))
    return {"conv": conv, "dense": dense, "conv run": train(conv, folder / "runs"),
            "dense run": train(dense, folder / "runs")}


def test_the_rule() -> None:
    assert spin.spin_for(True, {}) == spin.CONV_SPIN == 18
    assert spin.spin_for(False, {}) is None
    assert spin.spin_for(True, {spin.VARIABLE: "24"}) is None  # the user's own setting wins
    assert spin.spin_for(True, {spin.VARIABLE: ""}) is None  # even an empty one: it is theirs


def test_a_model_is_convolutional_when_it_has_a_conv2d_layer(runs) -> None:
    assert load_config(runs["conv"]).model.convolutional
    assert not load_config(runs["dense"]).model.convolutional


@pytest.mark.parametrize("command", [
    ["gradcheck", "{conv}", "--samples", "4"],
    ["lr-find", "{conv}", "--updates", "3", "--out", "{tmp}"],
    ["train", "{conv}", "--runs-dir", "{tmp}"],
    ["train", "--resume", "{conv run}"],
    ["eval", "{conv run}"],
    ["eval", "{conv run}/checkpoints/last.safetensors"],
    ["predict", "{conv run}", "--data", "{images}", "--out", "{tmp}/p.csv"],
    ["landscape", "{conv run}", "--points", "3", "--out", "{tmp}/l"],
])
def test_a_command_running_a_conv_model_loads_openblas_with_the_short_spin(runs, tmp_path, command) -> None:
    names = {"conv": runs["conv"], "conv run": runs["conv run"], "tmp": tmp_path,
             "images": runs["conv"].parent / "images.npz"}
    code, read, after = in_fresh_process(*[part.format(**names) for part in command])
    assert code == 0
    assert read == spin.CONV_SPIN
    assert after == "unset"  # this process's choice only: a child decides from its own model


@pytest.mark.parametrize("command", [
    ["gradcheck", "{dense}", "--samples", "4"],
    ["train", "{dense}", "--runs-dir", "{tmp}"],
    ["eval", "{dense run}"],
    ["train", "--resume", "{dense run}"],
])
def test_a_dense_model_keeps_openblas_default(runs, tmp_path, command, openblas_own_kernel) -> None:
    """The default spin; and the kernels: a new float32 minibatch model's (Haswell's on Zen 4, else OpenBLAS's own),
    and for the run trained in this test process (on this process's kernels, recorded: the user's OPENBLAS_CORETYPE
    where the environment has one) the recorded ones where sgdcli resumes on them, else OpenBLAS's own. The command
    runs without the variable, so the rules are asked about an environment without it too."""
    from sgdcli.engine import blas

    names = {"dense": runs["dense"], "dense run": runs["dense run"], "tmp": tmp_path}
    code, read, after, kernel, kernel_after = fresh_process(*[part.format(**names) for part in command])
    assert (code, read, after, kernel_after) == (0, 0, "unset", "unset")
    if "{dense}" in command:
        chosen = spin.kernel_for(False, environ={})
    else:
        chosen = spin.resumed_kernel(blas.kernel(), environ={})
    assert kernel == (chosen or openblas_own_kernel)


@pytest.fixture(scope="module")
def openblas_own_kernel() -> str:
    """The kernels NumPy's OpenBLAS picks for this processor by itself (no OPENBLAS_CORETYPE), in a fresh process."""
    environ = {k: v for k, v in os.environ.items() if k != spin.KERNEL_VARIABLE}
    script = "import numpy\nfrom sgdcli.engine.blas import kernel\nprint(kernel())"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environ,
                          timeout=120, check=True).stdout.strip()


@pytest.mark.parametrize("command", [["gradcheck", "{conv}", "--samples", "4"], ["eval", "{conv run}"]])
def test_the_users_own_setting_wins(runs, command) -> None:
    names = {"conv": runs["conv"], "conv run": runs["conv run"]}
    code, read, after = in_fresh_process(*[part.format(**names) for part in command], user_setting="24")
    assert (code, read, after) == (0, 24, "24")  # and stays for their child processes


def test_a_target_that_is_not_a_run_keeps_the_default_and_the_command_reports_it(tmp_path) -> None:
    code, read, _ = in_fresh_process("eval", tmp_path / "missing")
    assert code == 4 and read == 0


def test_a_config_error_is_reported_before_anything_loads(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {layers: [{type: conv2d}]}\n")
    code, read, _ = in_fresh_process("train", bad)
    assert code == 2 and read == 0


def test_loading_numpy_after_it_is_loaded_changes_nothing() -> None:
    assert "numpy" in sys.modules  # this test process: OpenBLAS has read the variable already
    before = dict(os.environ)
    assert spin.load_numpy(True) == {} and spin.load_numpy(False) == {}
    assert dict(os.environ) == before


def test_the_run_layout_names_match_the_run_directory() -> None:
    assert before_numpy.RUN_CONFIG == directory.CONFIG
    assert before_numpy.CHECKPOINTS == directory.CHECKPOINTS
    assert before_numpy.DAMAGED_MARK == directory.DAMAGED_MARK
    assert before_numpy.HEADER_LIMIT == checkpoint.MAX_HEADER_BYTES
    assert before_numpy.PREFERENCE == directory.PREFERENCE


ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu vme avx2 avx512f avx512dq avx512_bf16

processor\t: 1
vendor_id\t: GenuineIntel
"""


@pytest.mark.parametrize("cpuinfo, expected", [
    (ZEN4, "Haswell"),
    (ZEN4.replace(" avx512f avx512dq avx512_bf16", ""), None),  # Zen 3: family 25 without AVX-512 (OpenBLAS: Zen already)
    (ZEN4.replace("cpu family\t: 25", "cpu family\t: 26"), None),  # Zen 5: its SkylakeX kernels are faster (session 15)
    (ZEN4.replace("AuthenticAMD", "GenuineIntel"), None),
    (ZEN4.replace(" avx512f ", " avx512fp16 "), None),  # a flag named alike is not avx512f
    ("", None),
])
def test_the_kernel_rule(cpuinfo, expected) -> None:
    assert spin.kernel_for(False, False, {}, cpuinfo) == expected
    assert spin.kernel_for(True, False, {}, cpuinfo) is None  # float64 products were slower on those kernels
    assert spin.kernel_for(False, True, {}, cpuinfo) is None  # so was batch 1's momentum step
    assert spin.kernel_for(False, False, {spin.KERNEL_VARIABLE: "SkylakeX"}, cpuinfo) is None  # the user's setting wins
    assert spin.kernel_for(False, False, {spin.KERNEL_VARIABLE: ""}, cpuinfo) is None
    # a trained run: the kernels it recorded where they are ours, OpenBLAS's choice for anything else
    assert spin.resumed_kernel("Haswell", {}, cpuinfo) == expected
    for recorded in (None, "SkylakeX", "Sandybridge"):  # (None: a run from before sgdcli recorded them)
        assert spin.resumed_kernel(recorded, {}, cpuinfo) is None
    assert spin.resumed_kernel("Haswell", {spin.KERNEL_VARIABLE: "SkylakeX"}, cpuinfo) is None


def test_a_float32_minibatch_model_gets_the_kernel_chosen_for_this_processor(monkeypatch) -> None:
    """What each command's config asks of ``spin.load_numpy`` (the process-level effect: the fresh-process
    tests): on Zen 4 (this project's machines) Haswell's kernels for a float32 model trained on more than one
    sample an update, OpenBLAS's own choice for a float64 or batch-1 model and for a command without a model."""
    asked = []
    monkeypatch.setattr(spin, "load_numpy", lambda conv, kernel=None: asked.append((conv, kernel)))
    chosen = spin.kernel_for(False)
    for changes in ({}, {"model__dtype": "float64"}, {"training__batch__mode": "sgd"},
                    {"training__batch__size": 1}, {"training__batch__mode": "full"}):
        before_numpy.load_numpy_for(load_config(tiny_config(**changes)))
    before_numpy.load_numpy_for(None)
    assert asked == [(False, chosen), (False, None), (False, None), (False, None), (False, chosen), (False, None)]


def test_the_users_own_kernel_wins(runs, openblas_own_kernel) -> None:
    """Against sgdcli's choice where it makes one (Zen 4: the user's SkylakeX), else against OpenBLAS's own (kernels
    other than those, which this processor can run). Asked with the command's environment, which has no variable."""
    if spin.kernel_for(False, environ={}):
        theirs = "SkylakeX"
    else:
        flags = spin._cpuinfo(None).split()
        runnable = [kernel for kernel, flag in (("Haswell", "avx2"), ("Sandybridge", "avx")) if flag in flags]
        theirs = next((kernel for kernel in runnable if kernel != openblas_own_kernel), None)
        if theirs is None:
            pytest.skip("no kernels other than OpenBLAS's own that this processor can run")
    code, kernel, after = kernel_in_fresh_process("gradcheck", runs["dense"], "--samples", "4", user_setting=theirs)
    assert (code, kernel, after) == (0, theirs, theirs)  # and stays for their child processes


def recorded_as(run: Path, kernel: str | None, name: str = "last.safetensors") -> None:
    """Rewrite the run's checkpoint `name` to record `kernel` (None: no record, as before sgdcli kept one)."""
    path = run / "checkpoints" / name
    state = checkpoint.load(path)
    meta = {key: value for key, value in state.meta.items() if key != "blas_kernel"}
    checkpoint.save(path, checkpoint.Checkpoint(state.params, state.optimizer, state.shift, state.scale,
                                                {**meta, **({} if kernel is None else {"blas_kernel": kernel})}))


def test_the_kernels_a_run_recorded_are_read_before_numpy_loads(tmp_path) -> None:
    from sgdcli import api
    from sgdcli.engine import blas

    run = api.train(load_config(tiny_config(training__epochs=2, training__checkpoint_every=1)), runs_dir=tmp_path).run_dir
    assert before_numpy.recorded_kernel(run) == blas.kernel()
    recorded_as(run, "Haswell")
    assert before_numpy.recorded_kernel(run) == "Haswell"  # last: the most advanced
    recorded_as(run, None)
    assert before_numpy.recorded_kernel(run) is None  # a run from before
    (run / "checkpoints" / "last.safetensors").write_bytes(b"\xff" * 16)  # unreadable: the others decide
    assert before_numpy.recorded_kernel(run) == blas.kernel()
    assert before_numpy.recorded_kernel(tmp_path / "missing") is None


def test_a_command_on_a_trained_run_loads_the_kernels_it_recorded(tmp_path) -> None:
    """`sgdcli eval RUN` (as `train --resume RUN`) loads what the run trained on: Haswell's kernels where it
    recorded them (on Zen 4), OpenBLAS's choice for a run from before sgdcli recorded any."""
    from sgdcli import api

    run = api.train(load_config(tiny_config(training__epochs=1)), runs_dir=tmp_path).run_dir
    recorded_as(run, "Haswell")
    code, _, _, kernel, after = fresh_process("eval", run)
    assert code == 0 and after == "unset"
    recorded_as(run, None)
    code, _, _, default, _ = fresh_process("eval", run)
    assert code == 0
    if spin.zen4(spin._cpuinfo(None)):
        assert kernel == "Haswell" and default != "Haswell"
    else:
        assert kernel == default
