"""`mpiexec -n P sgdcli train` for real: the venv's MPICH (pip install 'sgdcli[mpi]'), P processes on
this machine. The maths is checked in-process by tests/test_parallel.py; here the launch, rank 0's
run directory, the agreement on Ctrl-C, resume, and the messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, tiny_config
from sgdcli.runs import checkpoint

pytest.importorskip("mpi4py", reason="mpi4py is not installed: pip install 'sgdcli[mpi]'")
MPIEXEC = Path(sys.executable).parent / "mpiexec"
if not MPIEXEC.exists():
    pytest.skip(f"no mpiexec next to {sys.executable} (the mpich wheel brings one)", allow_module_level=True)

# float64, dropout, 97 training rows in batches of 10: the last batch (7 rows) is cut 3, 2, 2 on three ranks
CONFIG = tiny_config(**{"model__dtype": "float64", "data__samples": 130, "training__epochs": 6,
                        "training__batch": {"mode": "minibatch", "size": 10},
                        "optimizer": {"type": "adam", "learning_rate": 0.02},
                        "model__layers": [{"type": "dense", "units": 16, "activation": "tanh"},
                                          {"type": "dropout", "rate": 0.2}, {"type": "dense", "units": 2}]})


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MPI_", "HYDRA_"))}
    return {**env, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def sgdcli(cwd: Path, *args: str, processes: int = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    """`sgdcli ARGS` (processes 0) or `mpiexec -n P sgdcli ARGS`, in `cwd`."""
    command = [sys.executable, "-m", "sgdcli", *args]
    if processes:
        command = [str(MPIEXEC), "-n", str(processes), *command]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, env=env or environment())


def write(tmp_path: Path, config: dict = CONFIG) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_dirs(tmp_path: Path, runs: str) -> list[Path]:
    return sorted((tmp_path / runs).glob("*/"))


def weights(run: Path, which: str = "last") -> dict[str, np.ndarray]:
    return checkpoint.load(run / "checkpoints" / f"{which}{checkpoint.SUFFIX}").params


def train(tmp_path: Path, runs: str, processes: int) -> Path:
    result = sgdcli(tmp_path, "train", "config.yaml", "--runs-dir", runs, processes=processes)
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(tmp_path, runs)
    assert result.stdout.strip() == str(Path(runs) / run.name)  # one path printed: rank 0's
    assert result.stderr.count("training tiny:") == 1
    assert (f"data-parallel on {processes} MPI processes" in result.stderr) == (processes > 1)
    return run


def test_two_and_three_processes_train_the_single_process_weights(tmp_path):
    write(tmp_path)
    alone, two, again, three = (train(tmp_path, runs, p) for runs, p in
                                (("one", 0), ("two", 2), ("again", 2), ("three", 3)))
    state = {run: checkpoint.load(run / "checkpoints" / "last.safetensors") for run in (alone, two, again, three)}
    for run in (two, three):  # the weights, and the whole optimizer state each rank kept a slice of (sharded)
        for name, value in weights(alone).items():
            np.testing.assert_allclose(weights(run)[name], value, rtol=1e-12, atol=1e-15)
        assert state[run].optimizer.keys() == state[alone].optimizer.keys()
        for name, value in state[alone].optimizer.items():
            np.testing.assert_allclose(state[run].optimizer[name], value, rtol=1e-12, atol=1e-15, err_msg=name)
    assert all(np.array_equal(state[again].optimizer[k], v) for k, v in state[two].optimizer.items())
    assert all(np.array_equal(weights(two)[k], v) for k, v in weights(again).items())  # bit-identical
    for run, processes in ((alone, 1), (two, 2), (three, 3)):
        assert checkpoint.load(run / "checkpoints" / "last.safetensors").meta["processes"] == processes
        summary = yaml.safe_load((run / "summary.json").read_text())
        assert summary["processes"] == processes and summary["status"] == "completed"
    metrics_one = (alone / "metrics.csv").read_text().splitlines()
    metrics_two = (two / "metrics.csv").read_text().splitlines()
    assert len(metrics_two) == len(metrics_one) == 7  # one writer: a header and one row per epoch

    # Resume on another number of processes: refused naming both, the run unchanged
    before = (two / "checkpoints" / "last.safetensors").read_bytes()
    for run, processes, said in ((two, 0, "trained on 2 processes and this resume runs on 1 process"),
                                 (two, 3, "trained on 2 processes and this resume runs on 3 processes"),
                                 (alone, 2, "trained on 1 process and this resume runs on 2 processes")):
        result = sgdcli(tmp_path, "train", "--resume", str(run), "--set", "training.epochs=7", processes=processes)
        assert result.returncode == 4, result.stderr
        assert result.stderr.count(said) == 1 and "Traceback" not in result.stderr
    assert (two / "checkpoints" / "last.safetensors").read_bytes() == before


@pytest.mark.parametrize("change,key", [
    ({"training": {"epochs": 1, "batch": {"mode": "sgd"}}}, "training.batch.mode: sgd"),
    ({"training": {"epochs": 1, "batch": {"mode": "minibatch", "size": 1}}}, "training.batch.size"),
    # a bad config is read by rank 0 alone: one message, not one per process
    ({"model": {"layers": [{"type": "dense", "units": -1}]}}, "model.layers.0.units: expected greater than"),
])
def test_what_cannot_be_split_is_refused_once_with_nothing_written(tmp_path, change, key):
    write(tmp_path, {**CONFIG, **change})
    result = sgdcli(tmp_path, "train", "config.yaml", "--runs-dir", "runs", processes=2)
    assert result.returncode == 2
    assert result.stderr.count(key) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_config_file_that_cannot_be_read_is_one_message(tmp_path):
    for args in (["train", "missing.yaml"], ["train", "--resume", "runs/none", "missing.yaml"]):
        result = sgdcli(tmp_path, *args, processes=2)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.count("error:") == 1, result.stderr


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_signal_to_mpiexec_stops_every_rank_after_one_update_and_resume_is_bit_identical(tmp_path, sig, code):
    long = {**CONFIG, "data": {**CONFIG["data"], "samples": 2000}, "training": {**CONFIG["training"], "epochs": 12}}
    write(tmp_path, long)  # 150 updates an epoch
    process = subprocess.Popen([str(MPIEXEC), "-n", "2", sys.executable, "-m", "sgdcli", "train", "config.yaml",
                                "--runs-dir", "runs"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=environment(), start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
            len(p.read_text().splitlines()) > 1 for p in (tmp_path / "runs").glob("*/metrics.csv")):
        time.sleep(0.05)
    process.send_signal(sig)  # mpiexec (hydra) passes it on to every rank
    out, err = process.communicate(timeout=60)  # a rank left waiting for another's update would hang here
    assert process.returncode == code, err
    assert err.count("interrupted after update") == 1 and "Traceback" not in err
    (run,) = run_dirs(tmp_path, "runs")
    assert yaml.safe_load((run / "summary.json").read_text())["status"] == "interrupted"
    stopped = checkpoint.load(run / "checkpoints" / "last.safetensors").meta
    assert 0 < stopped["updates"] < 12 * 150 and stopped["position"]["batch"] > 0  # inside the loop
    assert f"mpiexec -n 2 sgdcli train --resume runs/{run.name}" in err.replace("\n", " ")
    if sig == signal.SIGTERM:
        return  # the rest is the same as after Ctrl-C
    result = sgdcli(tmp_path, "train", "--resume", str(run), processes=2)
    assert result.returncode == 0, result.stderr
    assert checkpoint.load(run / "checkpoints" / "last.safetensors").meta["updates"] == 12 * 150
    uninterrupted = train(tmp_path, "straight", 2)
    assert all(np.array_equal(weights(run)[k], v) for k, v in weights(uninterrupted).items())


def test_missing_mpi4py_is_one_message_and_exit_2(tmp_path):
    write(tmp_path)
    fake = tmp_path / "no-mpi4py" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named mpi4py (simulated)')\n")
    env = {**environment(), "PYTHONPATH": str(fake.parent)}
    result = sgdcli(tmp_path, "train", "config.yaml", "--runs-dir", "runs", processes=2, env=env)
    assert result.returncode == 2
    assert result.stderr.count("pip install 'sgdcli[mpi]'") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_plain_train_never_imports_mpi4py(tmp_path):
    write(tmp_path, {**CONFIG, "training": {**CONFIG["training"], "epochs": 1}})
    script = ("import sys; from sgdcli.cli.app import main; sys.argv = ['sgdcli', 'train', 'config.yaml'];\n"
              "try: main()\nexcept SystemExit: pass\nassert 'mpi4py' not in sys.modules, 'mpi4py was imported'")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, env=environment())
    assert result.returncode == 0, result.stderr


BROKEN_RANK = """import sys
from sgdcli.errors import DataError
from sgdcli.training import provenance
def unreadable(path):
    raise DataError("cannot read: Permission denied (only this process)", source=str(path))
provenance.file_identity = unreadable
from sgdcli.cli.app import main
sys.argv = ["sgdcli", "train", "config.yaml", "--runs-dir", "runs"]
main()
"""


def test_an_error_only_another_process_sees_reaches_the_user_and_no_run_is_left(tmp_path):
    iris = {**CONFIG, "data": {"source": "csv", "path": str(REPO / "data" / "iris.csv"), "target": "species"},
            "model": {"layers": [{"type": "dense", "units": 3}]}}
    write(tmp_path, iris)
    command = [str(MPIEXEC), "-n", "1", sys.executable, "-m", "sgdcli", "train", "config.yaml", "--runs-dir", "runs",
               ":", "-n", "1", sys.executable, "-c", BROKEN_RANK]  # rank 1 alone cannot read the data
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=environment())
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("MPI process 1: ") == 1 and "only this process" in result.stderr
    assert result.stderr.count("MPI process 1 stopped with an error (exit status 3") == 1
    assert "could not start" in result.stderr and "Traceback" not in result.stderr
    assert not any((tmp_path / "runs").iterdir())


SHARED_CHECK = """
import numpy as np
from sgdcli.training.communicator import MpiCommunicator
comm = MpiCommunicator()
rows = comm.shared((comm.size, 4), np.float32)
assert rows is not None and not rows.any()  # one machine: granted, zero-filled
comm.barrier()
for update in range(50):  # each rank writes its row, then reads every other rank's
    rows[comm.rank] = update * 10 + comm.rank
    comm.fence(); comm.barrier(); comm.fence()
    assert (rows == update * 10 + np.arange(comm.size)[:, None]).all(), rows
    comm.fence(); comm.barrier(); comm.fence()
if comm.rank == 0:  # every rank checked the rows (a failed check exits non-zero); one prints them
    print("saw", rows[:, 0].tolist())
"""


def test_processes_on_one_machine_share_the_memory_mpi_gives_them():
    # what the sharded update relies on to skip sending gradients (tests/test_sharding.py: the maths)
    done = subprocess.run([str(MPIEXEC), "-n", "3", sys.executable, "-c", SHARED_CHECK], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env=environment())
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["saw", "[490.0,", "491.0,", "492.0]"]


def test_ranks_on_one_machine_divide_its_cores_between_their_blas_pools(tmp_path):
    """Without a thread count of the user's (empty or non-numeric values, which OpenBLAS reads as "every
    core", are none), each of P ranks on one machine trains on its usable cores // P BLAS threads (two ranks
    with a two-thread pool each on two cores trained 5.3x slower); the count is said at the start and
    recorded in the checkpoints, from which a resume trains on it. Ranks told different counts take the least."""
    env = {**environment(), "OPENBLAS_NUM_THREADS": "", "OMP_NUM_THREADS": "abc"}
    default = subprocess.run([sys.executable, "-c", "from sgdcli.engine import blas; print(blas.thread_count())"],
                             capture_output=True, text=True, timeout=60, env=env)
    if default.stdout.strip() == "None":
        pytest.skip("NumPy's BLAS is not its own OpenBLAS: its thread count cannot be read or set")
    share = min(int(default.stdout), max(1, len(os.sched_getaffinity(0)) // 3))
    write(tmp_path, {**CONFIG, "training": {**CONFIG["training"], "epochs": 1}})
    train = [sys.executable, "-m", "sgdcli", "train", "config.yaml", "--runs-dir"]
    for runs, command in (("shared", ["-n", "3", *train, "shared"]),  # rank 0 told 4 threads, the others nothing
                          ("mixed", ["-n", "1", "-env", "OPENBLAS_NUM_THREADS", "4", *train, "mixed", ":",
                                     "-n", "2", *train, "mixed"])):
        result = subprocess.run([str(MPIEXEC), *command], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                                env=env)
        assert result.returncode == 0, result.stderr
        said = f"data-parallel on 3 MPI processes ({share} BLAS thread{'' if share == 1 else 's'} each)"
        assert result.stderr.count(said) == 1, result.stderr
        (run,) = run_dirs(tmp_path, runs)
        assert checkpoint.load(run / "checkpoints" / "last.safetensors").meta["blas_threads"] == share


LATE_SIGNAL = """
import atexit, os, signal, time
import numpy as np
from sgdcli.training.communicator import MpiCommunicator
comm = MpiCommunicator()
pids = np.zeros((comm.size, 1), np.int64)
comm.allgather(np.array([os.getpid()], np.int64), pids)
if comm.rank == 0:  # rank 1 is in MPI_Finalize, waiting for this one, when Ctrl-C reaches it
    atexit.register(lambda: (time.sleep(1), os.kill(int(pids[1, 0]), signal.SIGINT), time.sleep(1)))
"""


def test_ctrl_c_while_mpi_finalizes_after_the_run_is_not_a_crash():
    """mpi4py finalizes MPI after Python has put the default handlers back: a Ctrl-C then killed a process
    whose run had completed, MPICH reported a crash ("BAD TERMINATION") and mpiexec exited 2."""
    done = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-c", LATE_SIGNAL], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env=environment())
    assert done.returncode == 0 and "BAD TERMINATION" not in done.stdout + done.stderr, done.stdout + done.stderr


@pytest.mark.parametrize("args,said", [
    (["train"], "error: give a CONFIG file to train"), (["train", "--bogus"], "No such option: --bogus"),
    (["--help"], "Usage: ")])
def test_what_every_process_would_say_is_said_once(tmp_path, args, said):
    """Messages of the command line itself (its errors, click's usage errors, --help) come from rank 0 alone
    (a refused command's, in-process: tests/test_cli.py)."""
    result = sgdcli(tmp_path, *args, processes=2)
    assert (result.stdout + result.stderr).count(said) == 1, result.stdout + result.stderr
    assert result.returncode == (0 if args == ["--help"] else 2) and "Traceback" not in result.stderr


@pytest.mark.parametrize("bogus_rank", [1, 0])
def test_a_process_that_stops_before_training_leaves_no_one_waiting(tmp_path, bogus_rank):
    """`mpiexec -n 1 A : -n 1 B` with a usage error in one command line only: MPI_Init waits for every
    process, so the other one spun for ever, silent. The failing process now starts MPI and sends its status
    in the collective training begins with: it says why (naming itself unless it is rank 0), rank 0 says
    which process stopped, nothing is written, and both end with its status."""
    write(tmp_path)
    train = [sys.executable, "-m", "sgdcli", "train", "config.yaml", "--runs-dir", "runs"]
    commands = [train, [*train, "--bogus"]] if bogus_rank else [[*train, "--bogus"], train]
    result = subprocess.run([str(MPIEXEC), "-n", "1", *commands[0], ":", "-n", "1", *commands[1]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, env=environment())
    assert result.returncode == 2, result.stderr
    said = "MPI process 1: Usage: " if bogus_rank else "Usage: "
    assert result.stderr.count("No such option: --bogus") == 1 and result.stderr.count(said) == 1, result.stderr
    assert result.stderr.count("MPI process 1 stopped with an error (exit status 2") == bogus_rank
    assert not (tmp_path / "runs").exists() and "Traceback" not in result.stderr


def test_a_process_that_ends_at_once_without_an_error_leaves_no_one_waiting(tmp_path):
    """`--help` on one process while another trains: it ends with 0 before MPI starts; it now sends a status
    that is not "ready" (NOT_TRAINING), and the training process stops, saying why (it spun for ever)."""
    write(tmp_path)
    train = [sys.executable, "-m", "sgdcli", "train", "config.yaml", "--runs-dir", "runs"]
    result = subprocess.run([str(MPIEXEC), "-n", "1", *train, ":", "-n", "1", *train, "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, env=environment())
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("MPI process 1 ended without training (its command line does not train: --help?)") == 1
    assert "Usage" not in result.stdout + result.stderr and not (tmp_path / "runs").exists()
