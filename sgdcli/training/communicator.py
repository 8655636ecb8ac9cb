"""How data-parallel processes talk: the collectives training needs, through MPI (mpi4py) under
`mpiexec` (which processes a launcher started: `launch`, read from the environment alone).

When every process runs on one machine, arrays can also be shared: one copy in memory that every
process reads and writes (MPI-3 shared-memory windows, `MPI_Win_allocate_shared`), so a gradient or
a weight is never copied from one process to another; `fence` orders those accesses (the MPI
standard's pattern for shared windows: `MPI_Win_sync`, a collective, `MPI_Win_sync`).
"""

from __future__ import annotations

import atexit
import math
import signal
from typing import Protocol

import numpy as np

from sgdcli.errors import UsageError
from sgdcli.training.launch import RANK_VARIABLES, SIZE_VARIABLES, launched_rank, launched_size  # noqa: F401 - API

INSTALL_HINT = "pip install 'sgdcli[mpi]'"


class Communicator(Protocol):
    """The collectives data-parallel training needs, rooted at or gathered from every rank; arrays
    have the same dtype and shape on every rank."""

    rank: int
    size: int

    def allgather(self, send: np.ndarray, out: np.ndarray) -> None:
        """out[r] = rank r's `send`, for every r; `send` (K,), `out` (size, K)."""

    def allgather_slices(self, buffer: np.ndarray) -> None:
        """In place: buffer[r] = rank r's buffer[r], for every r; `buffer` (size, K)."""

    def alltoall(self, send: np.ndarray, out: np.ndarray) -> None:
        """out[r] = rank r's send[this rank], for every other rank r (this rank's own row is not sent:
        out[this rank] is left as it is); `send`, `out` (size, K)."""

    def broadcast(self, data: bytes | None) -> bytes:
        """Rank 0's `data` on every rank (the others pass None)."""

    def ranks_on_machine(self) -> int:
        """A collective: how many ranks run on this rank's machine (this one included), which share its cores."""

    def shared(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        """A collective: one zero-filled array of `shape` in memory every rank reads and writes (the same
        bytes, not copies), or None on every rank when they cannot share memory (not all on one machine)."""

    def fence(self) -> None:
        """Orders this rank's accesses to the shared arrays (a memory barrier, no waiting): a rank's
        writes before `fence(); <a collective>; fence()` are seen by every rank after it."""

    def barrier(self) -> None:
        """Waits until every rank has called it."""


class MpiCommunicator:
    """MPI_COMM_WORLD through mpi4py's buffer interface (NumPy arrays, no pickling)."""

    def __init__(self) -> None:
        try:
            from mpi4py import MPI
        except ImportError:
            raise QuietExit(2) if launched_rank() else UsageError(
                f"mpiexec started {launched_size()} processes but mpi4py is not installed; "
                f"data-parallel training needs it: {INSTALL_HINT}") from None
        atexit.register(_ignore_stops_while_mpi_ends)
        self._mpi, self._comm, self._in_place = MPI, MPI.COMM_WORLD, MPI.IN_PLACE
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        self._windows: list = []  # kept open until the process ends: the arrays on them stay valid
        self._node = None  # the ranks on this rank's machine, once asked

    def allgather(self, send: np.ndarray, out: np.ndarray) -> None:
        self._comm.Allgather(send, out)

    def allgather_slices(self, buffer: np.ndarray) -> None:
        self._comm.Allgather(self._in_place, buffer)

    def alltoall(self, send: np.ndarray, out: np.ndarray) -> None:
        width = send.shape[1]
        counts = [0 if rank == self.rank else width for rank in range(self.size)]  # no copy to itself
        displacements = [rank * width for rank in range(self.size)]
        self._comm.Alltoallv([send, (counts, displacements)], [out, (counts, displacements)])

    def broadcast(self, data: bytes | None) -> bytes:
        length = np.array([0 if data is None else len(data)], np.int64)
        self._comm.Bcast(length, root=0)
        buffer = np.frombuffer(data, np.uint8).copy() if data is not None else np.empty(int(length[0]), np.uint8)
        self._comm.Bcast(buffer, root=0)
        return buffer.tobytes()

    def _machine(self):
        """The ranks on this rank's machine (MPI_COMM_TYPE_SHARED), split once: a collective the first time."""
        if self._node is None:
            self._node = self._comm.Split_type(self._mpi.COMM_TYPE_SHARED)
        return self._node

    def ranks_on_machine(self) -> int:
        return self._machine().Get_size()

    def shared(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        MPI, dtype = self._mpi, np.dtype(dtype)
        node = self._machine()
        if node.Get_size() != self.size:  # not all on one machine: the same answer on every rank
            return None
        count = math.prod(shape)
        window = MPI.Win.Allocate_shared(count * dtype.itemsize if self.rank == 0 else 0, dtype.itemsize, comm=node)
        window.Lock_all(MPI.MODE_NOCHECK)  # a passive epoch for the whole run: `fence` orders accesses
        self._windows.append(window)
        memory, _ = window.Shared_query(0)
        array = np.frombuffer(memory, dtype, count).reshape(shape)
        if self.rank == 0:
            array[...] = 0
        self.fence()
        self.barrier()
        self.fence()
        return array

    def fence(self) -> None:
        for window in self._windows:
            window.Sync()

    def barrier(self) -> None:
        self._comm.Barrier()


def _ignore_stops_while_mpi_ends() -> None:
    """At exit (a Python atexit function, after the command has answered every signal its own way): Ctrl-C and
    SIGTERM ignored from here on. mpi4py finalizes MPI later (``Py_AtExit``), after Python has put the
    default handlers back, and MPI_Finalize waits for the other processes: a Ctrl-C then killed a process whose
    run had completed, MPICH reported a crash and mpiexec exited 2."""
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)


class QuietExit(SystemExit):
    """A process other than rank 0 ends with this exit status (`code`) and says nothing: rank 0 reports.
    A SystemExit, so it passes every error boundary and ends the process without a traceback."""

