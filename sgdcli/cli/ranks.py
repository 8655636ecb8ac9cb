"""What the command line does when an MPI launcher started it as one of several processes: only
`sgdcli train` runs (``one_process``), and rank 0 alone speaks for all of them (``quiet_others``, ``error``),
so a message comes once, not once per process; the other processes print only an error they alone saw
(``SgdcliError.only_here``: their data file unreadable, say) and our bugs' tracebacks."""

from __future__ import annotations

import os
import sys

from sgdcli.errors import UsageError
from sgdcli.training import launch

_stderr = None  # the real standard error of a quiet process, until ``speak``


def quiet_others() -> None:
    """On every process but rank 0 (none without a launcher): nothing on standard output for good (rank 0
    prints the results), and nothing on standard error until ``speak``, that is while the arguments are parsed
    (a usage error, ``--help``), which every process does alike."""
    global _stderr
    if launch.launched_rank() > 0:
        quiet = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the life of the process
        _stderr, sys.stdout, sys.stderr = sys.stderr, quiet, quiet


def speak() -> None:
    """The arguments parsed, a command runs: standard error back (``error`` decides what this process says
    there, and a bug's traceback shows on every process)."""
    global _stderr
    if _stderr is not None:
        sys.stderr, _stderr = _stderr, None


def error(say, message: str, only_here: bool = False) -> None:
    """``say(message)`` (render.error) on rank 0, or on another process for an error ``only_here``."""
    if only_here or not launch.launched_rank():
        say(message)


def one_process(command: str) -> None:
    """For a command that runs on one process (all but `sgdcli train`): under a launcher that started more,
    UsageError (exit 2, said by rank 0 alone), since P copies would each do the work and write it (lr-find:
    P directories; predict --out: P writers of one file)."""
    if launch.launched_size() > 1:
        raise UsageError(f"sgdcli {command} runs on one process; run it without mpiexec (mpiexec -n P sgdcli train "
                         "trains one model on P processes)")
