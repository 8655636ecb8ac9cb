"""Issue 15 (a): sweeps on a real Dask cluster on loopback — a scheduler and two workers started from the
venv's `dask` command — against the local executor, bit for bit, also when a worker dies mid-member or
the driver is stopped with Ctrl-C; and one clear message for each bad set-up."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from sgdcli.cli.app import app

REPO = Path(__file__).resolve().parent.parent
DASK = Path(sys.executable).parent / "dask"
# sgd-mode members train for about a second (room to kill one mid-way), full-batch ones a blink.
SWEEP = ["--sweep", "training.batch.mode=sgd,full", "--sweep", "optimizer.momentum=0,0.9"]
EPOCHS = 40


def _start(command: list[str], log: Path) -> subprocess.Popen:
    """A process in its own group (so a test can end it with everything it started), output to `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _end(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _worker_command(address: str) -> list[str]:
    return [str(DASK), "worker", address, "--nworkers", "1", "--nthreads", "1", "--host", "127.0.0.1",
            "--dashboard-address", "127.0.0.1:0"]


class Cluster:
    def __init__(self, address: str, folder: Path, processes: list[subprocess.Popen]) -> None:
        self.address, self.folder, self.processes = address, folder, processes

    def workers(self) -> dict:
        import distributed

        with distributed.Client(self.address, timeout=10, set_as_default=False) as client:
            return client.scheduler_info(n_workers=-1)["workers"]

    def wait_for_workers(self, count: int) -> None:
        import distributed

        with distributed.Client(self.address, timeout=10, set_as_default=False) as client:
            deadline = time.monotonic() + 60
            while len(client.scheduler_info(n_workers=-1)["workers"]) != count:
                assert time.monotonic() < deadline, f"expected {count} workers"
                time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    """`dask scheduler` and two `dask worker --nworkers 1 --nthreads 1`, every port on 127.0.0.1; ended
    (their process groups killed) however the tests end."""
    pytest.importorskip("distributed")
    folder = tmp_path_factory.mktemp("cluster")
    processes: list[subprocess.Popen] = []
    request.addfinalizer(lambda: [_end(p) for p in processes])
    scheduler_file = folder / "scheduler.json"
    processes.append(_start([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                             "127.0.0.1:0", "--scheduler-file", str(scheduler_file)], folder / "scheduler.log"))
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() or not scheduler_file.read_text().strip().endswith("}"):
        assert processes[0].poll() is None and time.monotonic() < deadline, (folder / "scheduler.log").read_text()
        time.sleep(0.05)
    address = json.loads(scheduler_file.read_text())["address"]
    assert address.startswith("tcp://127.0.0.1:")
    for i in range(2):
        processes.append(_start(_worker_command(address), folder / f"worker{i}.log"))
    found = Cluster(address, folder, processes)
    found.wait_for_workers(2)
    return found


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """Iris, its data path relative to the config's folder (config/ and data/ side by side)."""
    folder = tmp_path_factory.mktemp("experiment")
    (folder / "data").mkdir()
    shutil.copy(REPO / "data" / "iris.csv", folder / "data" / "iris.csv")
    (folder / "config").mkdir()
    config = {"name": "iris", "seed": 0,
              "data": {"source": "csv", "path": "../data/iris.csv", "target": "species", "validation": 0.2},
              "model": {"layers": [{"type": "dense", "units": 8, "activation": "relu"}, {"type": "dense", "units": 3}]},
              "loss": {"type": "cross_entropy"}, "optimizer": {"type": "sgd", "learning_rate": 0.01},
              "training": {"epochs": EPOCHS, "batch": {"mode": "minibatch", "size": 16}}}
    path = folder / "config" / "iris.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _command(config: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "sgdcli", "train", str(config), *SWEEP, "--runs-dir", "runs", "--plot",
            "compare.png", *options]


def _sweep(config: Path, cwd: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(config, *options), cwd=cwd, capture_output=True, text=True, timeout=300)


def _dask_driver(config: Path, cwd: Path, address: str) -> subprocess.Popen:
    return subprocess.Popen(_command(config, "--executor", "dask", "--scheduler", address), cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def local_runs(experiment, tmp_path_factory) -> Path:
    """The same sweep with the local executor: what every Dask sweep must equal."""
    folder = tmp_path_factory.mktemp("local")
    done = _sweep(experiment, folder, "--jobs", "2")
    assert done.returncode == 0, done.stderr
    return folder / "runs"


def _by_member(runs: Path) -> dict[str, Path]:
    """member name -> its run directory (the name without the -YYYYmmdd-HHMMSS the run got)."""
    found = {}
    for run in sorted(runs.iterdir()):
        if run.is_dir():
            member = run.name.rsplit("-", 2)[0]
            assert member not in found, f"two runs of {member} in {runs}"
            found[member] = run
    return found


def _metrics_without_seconds(run: Path) -> list[list[str]]:
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
    column = rows[0].index("seconds")
    return [row[:column] + row[column + 1:] for row in rows]


def _assert_same_runs(runs: Path, expected: Path, every_member: bool = True) -> None:
    """Every run in `runs` completed, its metrics (but seconds) and checkpoints equal to the same member's
    in `expected`; with `every_member`, all four members are there."""
    from safetensors.numpy import load_file

    mine, theirs = _by_member(runs), _by_member(expected)
    assert len(theirs) == 4 and set(mine) <= set(theirs) and (len(mine) == 4 or not every_member)
    for member, run in mine.items():
        assert json.loads((run / "summary.json").read_text())["status"] == "completed", member
        assert _metrics_without_seconds(run) == _metrics_without_seconds(theirs[member]), member
        assert len(_metrics_without_seconds(run)) == EPOCHS + 1
        for checkpoint in ("last", "best"):
            a = load_file(run / "checkpoints" / f"{checkpoint}.safetensors")
            b = load_file(theirs[member] / "checkpoints" / f"{checkpoint}.safetensors")
            assert sorted(a) == sorted(b) and any(k.startswith("model/") for k in a)
            for key in a:
                assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (member, checkpoint, key)


def _trainings(runs: Path) -> list[tuple[int, int, Path]]:
    """(pid, parent pid, run dir) of every live `sgdcli train` process training into `runs`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        for flag in ("--run-dir", "--resume"):
            if "train" in argv and flag in argv and str(runs) in argv[argv.index(flag) + 1]:
                found.append((int(entry.name), parent, Path(argv[argv.index(flag) + 1])))
    return found


def _alive(pid: int) -> bool:
    """Running (an orphan that has exited may stay a zombie until PID 1 reaps it)."""
    try:
        return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _rows(run: Path) -> int:
    try:
        return len((run / "metrics.csv").read_text().splitlines()) - 1
    except OSError:
        return 0


def _wait_for_training(runs: Path, driver: subprocess.Popen, rows: int) -> tuple[int, int, Path]:
    """A member training in sgd mode with at least `rows` epochs written and more to come."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert driver.poll() is None, driver.communicate()
        for pid, parent, run in _trainings(runs):
            if "mode-sgd" in run.name and rows <= _rows(run) < EPOCHS - 10:
                return pid, parent, run
        time.sleep(0.02)
    raise AssertionError("no member was seen training")


def test_dask_sweep_equals_the_local_sweep(cluster, experiment, local_runs, tmp_path):
    done = _sweep(experiment, tmp_path, "--executor", "dask", "--scheduler", cluster.address)
    assert done.returncode == 0, done.stderr
    _assert_same_runs(tmp_path / "runs", local_runs)
    assert done.stderr.count("completed") >= 4 and "runs compared" in done.stdout + done.stderr
    assert (tmp_path / "compare.png").exists() and (tmp_path / "sweep.png").exists()
    assert not list((tmp_path / "runs").glob(".sgdcli-probe*"))  # the probe file is gone again


def test_a_worker_killed_mid_member_still_gives_identical_results(cluster, experiment, local_runs, tmp_path):
    driver = _dask_driver(experiment, tmp_path, cluster.address)
    try:
        pid, worker, run = _wait_for_training(tmp_path / "runs", driver, 3)
        before = _rows(run)
        os.kill(worker, signal.SIGKILL)  # the worker process running the member's task (its nanny restarts one)
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        stopped_at = _rows(run)  # its training got SIGTERM with the worker (PR_SET_PDEATHSIG) and saved
        out, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err
    assert 3 <= before <= stopped_at < EPOCHS  # killed mid-member; the retry resumed it (a fresh start is refused)
    _assert_same_runs(tmp_path / "runs", local_runs)
    assert _trainings(tmp_path / "runs") == []  # the killed worker's training did not live on as an orphan
    cluster.wait_for_workers(2)


def test_ctrl_c_stops_the_sweep_and_leaves_every_member_resumable(cluster, experiment, local_runs, tmp_path):
    driver = _dask_driver(experiment, tmp_path, cluster.address)
    try:
        _, _, run = _wait_for_training(tmp_path / "runs", driver, 2)
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, err
    assert _trainings(tmp_path / "runs") == []  # every member's process has stopped
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    statuses = {member: json.loads((member_run / "summary.json").read_text())["status"]
                for member, member_run in _by_member(tmp_path / "runs").items()}
    assert "interrupted" in statuses.values() and set(statuses.values()) <= {"interrupted", "completed"}
    resumes = [subprocess.Popen([sys.executable, "-m", "sgdcli", "train", "--resume", str(member_run)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for member, member_run in _by_member(tmp_path / "runs").items() if statuses[member] != "completed"]
    for resumed in resumes:
        assert resumed.wait(120) == 0, resumed.stderr.read()
    shown = " ".join(err.split())
    for member in set(_by_member(local_runs)) - set(statuses):  # no run directory: not started, or stopped
        assert f"not started {member}" in shown or f"interrupted {member}" in shown  # while it started up
    _assert_same_runs(tmp_path / "runs", local_runs, every_member=False)


def test_no_scheduler_at_the_address_is_one_message_and_exit_2(experiment, tmp_path):
    pytest.importorskip("distributed")
    with socket.socket() as free:  # a port nobody listens on
        free.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{free.getsockname()[1]}"
    started = time.monotonic()
    done = _sweep(experiment, tmp_path, "--executor", "dask", "--scheduler", address)
    assert done.returncode == 2, done.stderr
    assert f"no Dask scheduler answers at {address}" in done.stderr and "dask scheduler" in done.stderr
    assert "Traceback" not in done.stderr and time.monotonic() - started < 15
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare -m (root)")
def test_a_worker_that_cannot_see_the_runs_folder_or_the_data_is_named(cluster, tmp_path):
    """A third worker in its own mount namespace with an empty tmpfs over the experiment's folder: the
    runs folder and the data are there for the driver and the two other workers, not for it."""
    (tmp_path / "data").mkdir()
    shutil.copy(REPO / "data" / "iris.csv", tmp_path / "data" / "iris.csv")
    config = tmp_path / "iris.yaml"
    config.write_text((REPO / "configs" / "iris.yaml").read_text().replace("../data/iris.csv", "data/iris.csv"))
    blind = _start(["unshare", "-m", "sh", "-c", f"mount -t tmpfs none {tmp_path} && exec " +
                    " ".join(_worker_command(cluster.address))], tmp_path.parent / f"{tmp_path.name}-blind.log")
    try:
        cluster.wait_for_workers(3)
        done = _sweep(config, tmp_path, "--executor", "dask", "--scheduler", cluster.address)
    finally:
        _end(blind)
        cluster.wait_for_workers(2)
    assert done.returncode == 2, done.stderr
    message = " ".join(done.stderr.split())
    assert "shared filesystem" in message and str(tmp_path / "runs") in message
    assert f"cannot see the data file {tmp_path / 'data' / 'iris.csv'}" in message
    assert message.count("worker tcp://") == 1  # only the blind one; the other two see everything
    assert not [p for p in (tmp_path / "runs").iterdir()]  # nothing submitted, the probe removed


def test_the_probe_names_what_a_worker_cannot_see(tmp_path):
    from sgdcli.training.dask_member import probe

    (tmp_path / "p").write_text("token")
    assert probe(str(tmp_path), "p", "token", [str(tmp_path / "p")]) == []
    problems = probe(str(tmp_path), "p", "other", [str(tmp_path / "missing.csv")])
    assert "cannot see the file p the driver wrote in the runs folder" in problems[0]
    assert problems[1] == f"cannot see the data file {tmp_path / 'missing.csv'}"
    assert "cannot see" in probe(str(tmp_path / "elsewhere"), "p", "token", [])[0]


runner = CliRunner()


@pytest.mark.parametrize("options, expected", [
    (["--scheduler", "tcp://127.0.0.1:8786"], "--scheduler is for --executor dask"),
    (["--executor", "dask"], "--executor dask needs --scheduler tcp://HOST:PORT"),
    (["--executor", "dask", "--scheduler", "tcp://127.0.0.1:8786", "--jobs", "2"], "--jobs is for --executor local"),
    (["--executor", "dask", "--scheduler", "127.0.0.1"], "--scheduler: expected tcp://HOST:PORT"),
    (["--executor", "dask", "--scheduler", "udp://127.0.0.1:8786"], "--scheduler: expected tcp://HOST:PORT"),
    (["--executor", "dask", "--scheduler", "tcp://127.0.0.1:8786", "--run-dir", "x"], "--run-dir names one run"),
])
def test_executor_options_that_do_not_fit_are_usage_errors(experiment, tmp_path, options, expected):
    pytest.importorskip("distributed")
    result = runner.invoke(app, ["train", str(experiment), *SWEEP, "--runs-dir", str(tmp_path / "runs"), *options])
    assert result.exit_code == 2 and expected in " ".join(result.output.split()), result.output
    assert not (tmp_path / "runs").exists()


def test_executor_without_a_sweep_is_a_usage_error(experiment, tmp_path):
    result = runner.invoke(app, ["train", str(experiment), "--executor", "dask", "--scheduler", "tcp://h:1"])
    assert result.exit_code == 2 and "give --sweep" in result.output


def test_dask_not_installed_names_the_extra(experiment, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now raises ImportError
    result = runner.invoke(app, ["train", str(experiment), *SWEEP, "--runs-dir", str(tmp_path / "runs"),
                                 "--executor", "dask", "--scheduler", "tcp://127.0.0.1:8786"])
    assert result.exit_code == 2, result.output
    assert "pip install 'sgdcli[dask]'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_dask_is_imported_only_by_a_dask_sweep():
    code = ("import sys; from typer.testing import CliRunner; from sgdcli.cli.app import app; "
            "r = CliRunner().invoke(app, ['train', '--help']); assert r.exit_code == 0 and '--executor' in r.output; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_run_dir_trains_into_exactly_that_directory_and_never_reuses_it(tmp_path, write_config):
    from conftest import tiny_config

    config = write_config(tiny_config())
    first = runner.invoke(app, ["train", str(config), "--run-dir", str(tmp_path / "a" / "member")])
    assert first.exit_code == 0, first.output
    assert (tmp_path / "a" / "member" / "checkpoints" / "last.safetensors").exists()
    before = (tmp_path / "a" / "member" / "metrics.csv").read_bytes()
    again = runner.invoke(app, ["train", str(config), "--run-dir", str(tmp_path / "a" / "member")])
    assert again.exit_code == 4 and "never reused" in " ".join(again.output.split())
    assert (tmp_path / "a" / "member" / "metrics.csv").read_bytes() == before


class _Event:
    """Stands in for distributed.Event in a task run outside a cluster."""

    def __init__(self, name: str, is_set: bool = False) -> None:
        self.name, self._set = name, is_set

    def is_set(self) -> bool:
        return self._set


def test_a_member_task_sets_aside_an_attempt_without_checkpoint_and_refuses_another_experiments_run(
        tmp_path, write_config, monkeypatch):
    """What a retried task finds in its run directory: no checkpoint (an attempt stopped before its first
    one) -> kept aside, trained again; a checkpoint of another config -> resume refuses (exit 2)."""
    distributed = pytest.importorskip("distributed")
    from conftest import tiny_config

    from sgdcli.training.dask_member import run_member

    monkeypatch.setattr(distributed, "Event", _Event)
    run_dir = tmp_path / "runs" / "tiny-20260101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: tiny\n")  # an attempt killed between mkdir and its checkpoint
    spec = {"name": "tiny", "run_dir": str(run_dir), "config": yaml.safe_dump(tiny_config()), "stop": "s"}
    answer = run_member(spec)
    assert answer["exit_code"] == 0 and not answer["resumed"], answer
    aside = [p for p in run_dir.parent.iterdir() if p.name.startswith(f"{run_dir.name}.set-aside-")]
    assert len(aside) == 1 and (aside[0] / "config.yaml").read_text() == "name: tiny\n"
    assert f"kept as {aside[0].name}" in answer["stderr"] and answer["stdout"].endswith(run_dir.name)
    other = run_member({**spec, "config": yaml.safe_dump(tiny_config(optimizer__learning_rate=0.5))})
    assert other["resumed"] and other["exit_code"] == 2 and "optimizer.learning_rate" in other["stderr"], other
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    monkeypatch.setattr(distributed, "Event", lambda name: _Event(name, is_set=True))  # the sweep was stopped
    assert run_member({**spec, "run_dir": str(tmp_path / "runs" / "never")})["exit_code"] is None
    assert not (tmp_path / "runs" / "never").exists()


def test_a_member_lost_with_its_workers_is_a_failed_row_naming_its_resume(tmp_path):
    from sgdcli.training.dask_sweep import _finish
    from sgdcli.training.sweep import Member

    class Lost:
        def cancelled(self) -> bool:
            return False

        def result(self):
            raise RuntimeError("Attempted to run task 'sgdcli-x' on 4 different workers, but all those workers died")

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.safetensors").write_bytes(b"")
    member = Member("x", [])
    _finish(member, Lost(), str(tmp_path / "run"))
    assert member.status == "failed" and member.exit_code == 1 and member.run_dir == tmp_path / "run"
    assert "all those workers died" in member.message and f"--resume {tmp_path / 'run'}" in member.message


def test_an_address_that_is_not_a_dask_scheduler_is_named_without_a_hang(cluster, experiment, tmp_path,
                                                                        monkeypatch):
    """A server that accepts and never answers (a Dask Client would wait forever), and a worker's address."""
    from sgdcli.training import dask_sweep

    monkeypatch.setattr(dask_sweep, "CONNECT_SECONDS", 1)
    worker = next(iter(cluster.workers()))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        results = {where: runner.invoke(app, ["train", str(experiment), *SWEEP, "--runs-dir", str(tmp_path / "runs"),
                                              "--executor", "dask", "--scheduler", where]) for where in (address, worker)}
    assert time.monotonic() - started < 10
    assert results[address].exit_code == 2 and "does not answer as Dask does within 1 s" in results[address].output
    assert results[worker].exit_code == 2 and f"{worker} is a Dask Worker, not a Dask scheduler" in " ".join(
        results[worker].output.split())
    assert not (tmp_path / "runs").exists()


def test_data_missing_on_the_driver_too_fails_each_member_as_a_local_sweep_does(experiment, tmp_path):
    """Not a shared-folder problem: the members fail with the local executor's message and exit 3,
    and nothing is asked of a cluster (there is none at this address)."""
    pytest.importorskip("distributed")
    config = tmp_path / "moved.yaml"
    config.write_text(experiment.read_text())  # its ../data/iris.csv does not exist from tmp_path
    local = _sweep(config, tmp_path, "--runs-dir", "local")
    done = _sweep(config, tmp_path, "--executor", "dask", "--scheduler", "tcp://127.0.0.1:9",
                  "--force")  # the local sweep's sweep.png (its failures' heatmap) is in the same folder
    missing = str((tmp_path / ".." / "data" / "iris.csv").resolve())
    assert local.returncode == done.returncode == 3, (local.stderr, done.stderr)
    message = " ".join(done.stderr.split())
    assert f"{missing}: file not found" in message and "scheduler" not in message and "shared" not in message
    assert message.count("file not found") == " ".join(local.stderr.split()).count("file not found") >= 4  # as locally


@pytest.mark.parametrize("typed", ["tcp://127.0.0.1:{port}/", " tcp://127.0.0.1:{port} ", "127.0.0.1:{port}"])
def test_a_scheduler_address_is_read_as_dask_prints_it_give_or_take_a_slash_or_a_space(experiment, tmp_path, typed):
    pytest.importorskip("distributed")
    with socket.socket() as free:  # a port nobody listens on: the message shows the address as read
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    done = _sweep(experiment, tmp_path, "--executor", "dask", "--scheduler", typed.format(port=port))
    assert done.returncode == 2, done.stderr
    assert f"no Dask scheduler answers at tcp://127.0.0.1:{port} (" in " ".join(done.stderr.split())


@pytest.mark.parametrize("typed", ["tcp://127.0.0.1:8786/status", "tcp://127.0.0.1:8786?x=1"])
def test_a_scheduler_address_with_a_path_is_a_format_error(experiment, tmp_path, typed):
    pytest.importorskip("distributed")
    done = _sweep(experiment, tmp_path, "--executor", "dask", "--scheduler", typed)
    assert done.returncode == 2 and "expected tcp://HOST:PORT" in done.stderr, done.stderr


def test_a_failed_members_message_names_the_users_config_not_the_workers_copy(cluster, experiment, tmp_path):
    done = subprocess.run([sys.executable, "-m", "sgdcli", "train", str(experiment), "--sweep",
                           "model.layers.1.units=2", "--runs-dir", "runs", "--executor", "dask", "--scheduler",
                           cluster.address], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    message = " ".join(done.stderr.split())
    assert done.returncode == 2, done.stderr
    assert f"{experiment}: model.layers.1.units" in message and "sgdcli-member-" not in message


class _Scheduler:
    address = "tcp://127.0.0.1:8786"


class _CountingClient:
    """A client whose scheduler reports the next count of `counts` each time it is asked."""

    scheduler = _Scheduler()

    def __init__(self, counts: list[int]) -> None:
        self.counts, self.asked = counts, 0

    def scheduler_info(self, n_workers: int = -1) -> dict:
        self.asked += 1
        return {"n_workers": self.counts.pop(0), "workers": {}}


def test_a_cluster_without_workers_is_reported_once_after_a_while_and_again_when_they_are_back():
    from sgdcli.training.dask_sweep import ALONE_SECONDS, Workers

    notes: list[str] = []
    client = _CountingClient([2, 0, 0, 0, 0, 1, 0])
    workers = Workers(client, notes.append)
    for now in (0.0, 0.5, 1.0, 2.0, 1.0 + ALONE_SECONDS - 0.5):  # not asked at 0.5; none since 1.0: 9.5 s alone
        workers.check(now)
    assert client.asked == 4 and notes == []
    workers.check(1.0 + ALONE_SECONDS + 0.5)
    assert len(notes) == 1 and notes[0].startswith(f"no Dask worker has been connected to tcp://127.0.0.1:8786 "
                                                   f"for {ALONE_SECONDS} s: the sweep waits for workers to join")
    workers.check(100.0)  # a worker is back
    assert notes[1:] == ["1 Dask worker connected again: the sweep goes on"]
    workers.check(101.0)  # alone again: a new wait, not reported before its own ALONE_SECONDS
    assert len(notes) == 2 and client.counts == []
    silent = _CountingClient([0])
    Workers(silent, None).check(0.0)
    assert silent.asked == 0  # nobody to tell: the scheduler is not asked


def test_the_workers_count_is_read_from_a_real_scheduler(cluster):
    import distributed

    from sgdcli.training.dask_sweep import Workers

    with distributed.Client(cluster.address, timeout=10, set_as_default=False) as client:
        assert Workers(client, None).count() == len(cluster.workers()) == 2
