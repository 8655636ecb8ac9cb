"""What runs on a Dask worker: one sweep member as an `sgdcli train` subprocess (resumed from its own
checkpoint when a lost worker made Dask retry it), and the probe that checks the shared folder."""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sgdcli.runs.directory import CHECKPOINTS, LOCK

POLL_SECONDS = 0.5  # how often a running member asks the scheduler whether the sweep was stopped
LOCK_WAIT_SECONDS = 300  # a retry waits this long for an orphaned attempt to save and let go of the run
KEPT_LINES = 50  # error and warning lines sent back to the driver (the output stays bounded)

# This worker's member trainings by sweep (the name of the sweep's stop Event), so that `interrupt`
# reaches them at once; each entry is [process, whether it was sent SIGINT].
_TRAININGS: dict[str, list[list]] = {}
_TRAININGS_LOCK = threading.Lock()


def run_member(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one member on this worker; a Dask task. Nothing but strings and numbers crosses the network.

    spec: `name`, `run_dir` (absolute, on the shared folder; fixed by the driver, so a retried attempt
    finds what an earlier one wrote), `config` (the member's resolved config as YAML text, data paths
    absolute) and `stop` (the name of the Dask Event the driver sets on Ctrl-C). The first attempt runs
    `sgdcli train CONFIG --run-dir RUN_DIR`; an attempt that finds a checkpoint there runs `sgdcli
    train --resume RUN_DIR CONFIG`, which refuses a run whose config is not this member's.

    Returns `exit_code` (None: not started, the sweep was stopped first), `stdout` (its last line: the
    run directory), `stderr` (the `error:` and `warning:` lines), `worker` (this host) and `resumed`.
    """
    from distributed import Event  # on a worker, distributed is there

    stop = Event(spec["stop"])
    result: dict[str, Any] = {"exit_code": None, "stdout": "", "stderr": "", "worker": socket.gethostname(),
                              "resumed": False}
    if stop.is_set():
        return result
    run_dir = Path(spec["run_dir"])
    notes = []
    with tempfile.TemporaryDirectory(prefix="sgdcli-member-") as folder:
        config = Path(folder) / f"{spec['name']}.yaml"
        config.write_text(spec["config"], encoding="utf-8")
        if has_checkpoint(run_dir):
            result["resumed"] = True
            if not wait_unlocked(run_dir, stop.is_set):
                return result
            command = ["train", "--resume", str(run_dir), str(config)]
        else:
            if os.path.lexists(run_dir):  # an attempt that stopped before its first checkpoint: keep, start over
                aside = run_dir.with_name(f"{run_dir.name}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}")
                os.rename(run_dir, aside)
                notes.append(f"warning: {run_dir} had no checkpoint to resume from (an earlier attempt stopped "
                             f"before its first one); kept as {aside.name}, trained again")
            command = ["train", str(config), "--run-dir", str(run_dir)]
        code, out, err = _train(command, stop.is_set, spec["stop"])
    # The member's config file is a temporary copy on this worker: messages name the user's config instead.
    lines = [line.replace(str(config), spec.get("source", str(config)))
             for line in err.splitlines() if line.startswith(("error: ", "warning: "))]
    result.update(exit_code=code, stdout="\n".join(out.splitlines()[-1:]),
                  stderr="\n".join([*notes, *lines][-KEPT_LINES:]))
    return result


def has_checkpoint(run_dir: Path) -> bool:
    """Whether an earlier attempt left a checkpoint (an objective run, which has none, starts over)."""
    folder = run_dir / CHECKPOINTS
    return folder.is_dir() and any(path.suffix == ".safetensors" for path in folder.iterdir())


def wait_unlocked(run_dir: Path, stopped) -> bool:
    """Wait until no process holds the run's lock: the `sgdcli train` of a worker that died gets
    SIGTERM (see _die_with_parent) and is saving its checkpoint. False when the sweep was stopped."""
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return True  # no lock file: nobody holds it (and resume reports what is wrong)
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while time.monotonic() < deadline:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return True
            except BlockingIOError:
                if stopped():
                    return False
                time.sleep(POLL_SECONDS)
        return True  # still held: resume then says who holds it
    finally:
        os.close(fd)


def _train(arguments: list[str], stopped, sweep: str) -> tuple[int, str, str]:
    """`python -m sgdcli ARGUMENTS` with this worker's Python; SIGINT forwarded when the sweep stops: at
    once when the driver calls `interrupt`, or when this task's poll of the sweep's stop Event sees it."""
    command = [sys.executable, "-m", "sgdcli", *arguments]
    # Output goes to files, not pipes: a chatty child can never block on a full pipe.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, text=True,
                                   preexec_fn=_die_with_parent(os.getpid()))
        entry = [process, False]
        with _TRAININGS_LOCK:
            _TRAININGS.setdefault(sweep, []).append(entry)
        try:
            while process.poll() is None:
                if stopped():
                    _interrupt(entry)
                try:
                    process.wait(POLL_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            with _TRAININGS_LOCK:
                _TRAININGS[sweep].remove(entry)
                if not _TRAININGS[sweep]:
                    del _TRAININGS[sweep]
        out.seek(0)
        err.seek(0)
        return process.returncode, out.read(), err.read()


def interrupt(sweep: str) -> int:
    """Run on every worker (Client.run) when the driver stops the sweep whose stop Event is named
    `sweep`: SIGINT at once to this worker's trainings of that sweep, none of another sweep's. Each
    finishes its update and saves a checkpoint. Returns how many were signalled."""
    with _TRAININGS_LOCK:
        entries = list(_TRAININGS.get(sweep, []))
    return sum(_interrupt(entry) for entry in entries)


def _interrupt(entry: list) -> bool:
    """SIGINT to a running training, once (a second one would be ignored anyway)."""
    with _TRAININGS_LOCK:
        process, signalled = entry
        if signalled or process.poll() is not None:
            return False
        entry[1] = True
        process.send_signal(signal.SIGINT)  # it finishes its update and saves a checkpoint: resumable
        return True


def _die_with_parent(parent: int):
    """Linux: the child gets SIGTERM when the worker dies (prctl PR_SET_PDEATHSIG), so a killed worker
    leaves no orphan training on; it saves a checkpoint at its current update and stops (exit 143)."""
    def arrange() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the worker died before the call above
                os.kill(os.getpid(), signal.SIGTERM)
    return arrange


def probe(folder: str, name: str, token: str, paths: list[str]) -> list[str]:
    """Run on every worker before a sweep (Client.run): what this worker cannot see of what the driver
    sees. `folder/name` holds `token`, written by the driver; each of `paths` (the members' data files)
    must exist. Returns the problems, one sentence each (empty: all is well)."""
    problems = []
    try:
        seen = (Path(folder) / name).read_text(encoding="utf-8")
    except OSError as exc:
        seen = f"({exc.strerror})"
    if seen != token:
        problems.append(f"cannot see the file {name} the driver wrote in the runs folder {folder} "
                        f"(it reads {seen[:40]!r} there)")
    else:
        mine = Path(folder) / f"{name}.{socket.gethostname()}.{os.getpid()}"
        try:
            mine.write_text(token, encoding="utf-8")
            mine.unlink()
        except OSError as exc:
            problems.append(f"cannot write in the runs folder {folder} ({exc.strerror})")
    problems += [f"cannot see the data file {path}" for path in paths if not os.path.exists(path)]
    return problems
