"""Issue 11, items 9 and 12, which no in-process table row can show: Ctrl-C or SIGTERM during a long
data load stops at once and leaves no run directory; a closed stdout ends a command the Unix way."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

# A data load that takes as long as the test wants, in pure Python: it stands for a large file
# (its loader returns to the interpreter often, as a chunked reader does).
SLOW_LOAD = """
import sys, time
from sgdcli.training import build
def slow_load(*args, **kwargs):
    print("loading", file=sys.stderr, flush=True)
    for _ in range(3000):
        time.sleep(0.01)
    raise SystemExit("the load was not interrupted")
build.load_dataset = slow_load
from sgdcli.cli.app import main
sys.argv = ["sgdcli", *sys.argv[1:]]
main()
"""


def start_slow(tmp_path: Path, *args: str) -> subprocess.Popen:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config()))
    process = subprocess.Popen([sys.executable, "-c", SLOW_LOAD, *args, str(config)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr.readline().strip() == "loading"  # now inside the data load
    return process


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("command", ["train", "validate", "gradcheck"])
def test_signal_during_data_load_stops_at_once_leaving_nothing(tmp_path, sig, code, command):
    options = ("--runs-dir", str(tmp_path / "runs")) if command == "train" else ()
    process = start_slow(tmp_path, command, *options)
    sent = time.monotonic()
    process.send_signal(sig)
    try:
        _, err = process.communicate(timeout=10)
    finally:
        process.kill()
    waited = time.monotonic() - sent
    assert process.returncode == code, err
    assert waited < 1.5, f"took {waited:.1f} s to stop"  # the load itself would take 30 s
    assert "Traceback" not in err and ("interrupted" in err or "SIGTERM" in err), err
    assert not list((tmp_path / "runs").glob("*")), "a run directory was left behind"


def run_with_closed_stdout(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run sgdcli with a stdout pipe whose reader has already gone (as `| head -1` after its line)."""
    process = subprocess.Popen([sys.executable, "-m", "sgdcli", *args], cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read()
    process.wait(timeout=60)
    return subprocess.CompletedProcess(args, process.returncode, b"", err)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    from sgdcli import api

    folder = tmp_path_factory.mktemp("pipe")
    return api.train(api.load_config(tiny_config(training__epochs=1)), runs_dir=folder / "runs").run_dir


@pytest.mark.parametrize("args", [("eval", "{run}"), ("eval", "{run}", "--json"), ("optimizers",), ("--help",),
                                  ("validate", "{run}/config.yaml"),
                                  ("compare", "{run}", "--plot", "{tmp}/c.png")])
def test_closed_stdout_ends_quietly_as_sigpipe_does(trained_run, tmp_path, args):
    args = tuple(a.replace("{run}", str(trained_run)).replace("{tmp}", str(tmp_path)) for a in args)
    result = run_with_closed_stdout(*args, cwd=tmp_path)
    # Killed by SIGPIPE, as `yes | head -1` is: the shell reports 141, never gradcheck's 1.
    assert result.returncode == -signal.SIGPIPE, result.stderr.decode()
    assert result.stderr == b""
