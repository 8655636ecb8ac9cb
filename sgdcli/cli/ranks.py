"""What the command line does when an MPI launcher started it as one of several processes: only
`sgdcli train` runs (``one_process``), rank 0 alone speaks for all of them, so a message comes once, not
once per process, and a process that stops before training never leaves the others waiting.

A process that MPI never starts strands the others: MPI_Init waits for every process the launcher
started (MPICH's `mpiexec -n 1 A : -n 1 B` with B's usage error spun A forever, silent). So a process
that fails before training (a usage error, a refused command, Ctrl-C) still starts MPI and sends its exit
status in the same collective that `sgdcli train` begins with (``DataParallel.status``, training/mpi_run.py:
every rank's status, one int64 each; one that ends at once without an error, ``--help``, sends
``NOT_TRAINING``). Then each knows who failed: a process whose failure rank 0 shares
(the same command line everywhere: the usual case) leaves the message to rank 0; one that failed alone says
why, prefixed ``MPI process k:``, and rank 0 says which process stopped. While the arguments are parsed, what
a process other than rank 0 would print (click's usage errors, ``--help``) is held (``quiet_others``) and
shown only if that process failed alone. Without mpi4py a process cannot take part: it stops as before."""

from __future__ import annotations

import io
import os
import sys

from sgdcli.errors import UsageError
from sgdcli.training import launch

_stderr = None  # the real standard error of a process other than rank 0, while its arguments are parsed
_held: io.StringIO | None = None  # what it would have printed there meanwhile
_statuses: list[int] | None = None  # every process's exit status, once exchanged (``exchange``)


def quiet_others() -> None:
    """On every process but rank 0 (none without a launcher): nothing on standard output for good (rank 0
    prints the results), and standard error held until ``speak`` (while the arguments are parsed)."""
    global _stderr, _held
    if launch.launched_rank() > 0:
        _held = io.StringIO()
        _stderr, sys.stdout, sys.stderr = sys.stderr, open(os.devnull, "w", encoding="utf-8"), _held  # noqa: SIM115


def speak() -> None:
    """The arguments parsed, a command runs: standard error back (what was held is dropped: parsing
    succeeded), so a bug's traceback shows on every process; ``error`` decides what our messages say."""
    global _stderr
    if _stderr is not None:
        sys.stderr, _stderr = _stderr, None


def error(say, message: str, code: int, only_here: bool = False) -> None:
    """``say(message)`` (render.error) where it belongs: without a launcher, always; under one, for a failure
    before training on the process that failed alone (after ``exchange``) or on rank 0, and after training has
    started (MPI running: training/mpi_run.py has told the others) on rank 0 or for an error ``only_here``."""
    if launch.launched_size() > 1 and not _mpi_started():
        if _alone(exchange(code)):
            say(f"MPI process {launch.launched_rank()}: {message}")
            return
    if only_here or not launch.launched_rank():
        say(message)


def run(app) -> None:
    """``app()`` (the command line), as one of several processes where a launcher started it so (see above)."""
    quiet_others()
    try:
        app()
    except SystemExit as exc:
        leaving(exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1)
        raise
    except BaseException:  # a bug's traceback (or Ctrl-C past the parser): the others must not wait for this one
        leaving(1)
        raise


def leaving(code: int) -> None:
    """A process ending with exit status ``code`` (from ``main``) before MPI started (a usage error from the
    argument parser, Ctrl-C while parsing, ``--help``, which ends with 0: sent as NOT_TRAINING) sends its
    status too, and shows what it held if it stopped alone (its exit status named when it held nothing)."""
    if launch.launched_size() <= 1 or _mpi_started():
        return
    from sgdcli.training.parallel import NOT_TRAINING

    alone = _alone(exchange(code or NOT_TRAINING))
    speak()
    if alone and code:  # (one that ended without an error: rank 0 names it)
        held = _held.getvalue() if _held is not None else ""
        stop = {130: "interrupted", 143: "stopped by SIGTERM"}.get(code, f"ended with exit status {code}")
        sys.stderr.write(f"MPI process {launch.launched_rank()}: {held}" if held.strip()
                         else f"error: MPI process {launch.launched_rank()}: {stop}\n")


def exchange(code: int) -> list[int] | None:
    """Every process's status, this one's ``code``: MPI started here, then the collective `sgdcli train` begins
    with (``DataParallel.status``). None without mpi4py (the others then wait: nothing can tell them)."""
    global _statuses
    if _statuses is None:
        try:
            from mpi4py import MPI
        except ImportError:
            return None
        import numpy as np

        statuses = np.zeros((MPI.COMM_WORLD.Get_size(), 1), np.int64)
        MPI.COMM_WORLD.Allgather(np.array([code], np.int64), statuses)
        _statuses = [int(s) for s in statuses[:, 0]]
    return _statuses


def _alone(statuses: list[int] | None) -> bool:
    """Whether this process, not rank 0, stopped while rank 0 went on to train: then it says why itself."""
    return bool(launch.launched_rank()) and statuses is not None and statuses[0] == 0


def _mpi_started() -> bool:
    """Whether this process has started MPI (training did, or ``exchange``): then the others know."""
    module = sys.modules.get("mpi4py.MPI")
    return module is not None and module.Is_initialized()


def one_process(command: str) -> None:
    """For a command that runs on one process (all but `sgdcli train`): under a launcher that started more,
    UsageError (exit 2, said by rank 0 alone), since P copies would each do the work and write it (lr-find:
    P directories; predict --out: P writers of one file)."""
    if launch.launched_size() > 1:
        raise UsageError(f"sgdcli {command} runs on one process; run it without mpiexec (mpiexec -n P sgdcli train "
                         "trains one model on P processes)")
