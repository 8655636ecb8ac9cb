"""Data-parallel synchronous SGD: each global batch cut into contiguous shards, one per process,
their summed gradients combined in a fixed rank order (one allgather per update), every process
applying the same update. The communicator is MPI (mpi4py) under `mpiexec`; tests pass a fake one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

import numpy as np

from sgdcli.config.image_layers import BatchNormConfig
from sgdcli.config.schema import GRADIENT_OPTIMIZERS, ExperimentConfig
from sgdcli.errors import ConfigError, SgdcliError, UsageError
from sgdcli.training.loop import Problem

# What MPI launchers tell the processes they start: MPICH's hydra and Intel MPI (PMI_SIZE, also
# set by srun --mpi=pmi2), Open MPI (OMPI_COMM_WORLD_SIZE), MVAPICH (MV2_COMM_WORLD_SIZE).
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
INSTALL_HINT = "pip install 'sgdcli[mpi]'"
STOP = 1.0  # the control slot of an update: 0 go on, 1 a process was asked to stop, -code a process failed


def _launched(variables: tuple[str, ...], default: int) -> int:
    for name in variables:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return default


def launched_size() -> int:
    """The number of processes an MPI launcher started (1 when not launched by one); reads only the environment."""
    return _launched(SIZE_VARIABLES, 1)


def launched_rank() -> int:
    return _launched(RANK_VARIABLES, 0)


class Communicator(Protocol):
    """The two collectives data-parallel training needs, rooted at or gathered from every rank."""

    rank: int
    size: int

    def allgather(self, send: np.ndarray, out: np.ndarray) -> None:
        """out[r] = rank r's `send`, for every r; `send` (K,), `out` (size, K), same dtype everywhere."""

    def broadcast(self, data: bytes | None) -> bytes:
        """Rank 0's `data` on every rank (the others pass None)."""


class MpiCommunicator:
    """MPI_COMM_WORLD through mpi4py's buffer interface (NumPy arrays, no pickling)."""

    def __init__(self) -> None:
        try:
            from mpi4py import MPI
        except ImportError:
            raise QuietExit(2) if launched_rank() else UsageError(
                f"mpiexec started {launched_size()} processes but mpi4py is not installed; "
                f"data-parallel training needs it: {INSTALL_HINT}") from None
        self._comm = MPI.COMM_WORLD
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()

    def allgather(self, send: np.ndarray, out: np.ndarray) -> None:
        self._comm.Allgather(send, out)

    def broadcast(self, data: bytes | None) -> bytes:
        length = np.array([0 if data is None else len(data)], np.int64)
        self._comm.Bcast(length, root=0)
        buffer = np.frombuffer(data, np.uint8).copy() if data is not None else np.empty(int(length[0]), np.uint8)
        self._comm.Bcast(buffer, root=0)
        return buffer.tobytes()


class QuietExit(SystemExit):
    """A process other than rank 0 ends with this exit status (`code`) and says nothing: rank 0 reports.
    A SystemExit, so it passes every error boundary and ends the process without a traceback."""


class PeerFailed(SgdcliError):
    """Another process stopped with an error (its own message is above); this one stops too."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


def exit_code(exc: BaseException) -> int:
    """The exit status the CLI gives `exc` (README "Exit status")."""
    if isinstance(exc, SgdcliError):
        return exc.exit_code
    if isinstance(exc, QuietExit):
        return exc.code
    if isinstance(exc, KeyboardInterrupt):
        return 128 + int(getattr(exc, "signum", 2))
    return 1


def shard(count: int, size: int, rank: int) -> tuple[int, int]:
    """Rows [lo, hi) of a batch of `count` rows that `rank` of `size` computes: contiguous, in rank
    order, the first count % size ranks one row more (10 rows on 3 ranks: 4, 3, 3; NumPy's array_split)."""
    base, extra = divmod(count, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def ordered_sum(rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = rows[0] + rows[1] + ... + rows[P-1], added in that order, so the rounding is the same
    on every rank and in every run (an allreduce may add in any order)."""
    if len(rows) == 1:
        np.copyto(out, rows[0])
        return out
    np.add(rows[0], rows[1], out=out)  # one pass fewer than copying rows[0] first
    for row in rows[2:]:
        out += row
    return out


class ShardRng:
    """Dropout's generator on a shard: draws the whole batch's numbers, as one process would, and
    hands out the shard's rows, so masks (and the generator's state) equal the single-process run's."""

    def __init__(self, rng: np.random.Generator, count: int, lo: int) -> None:
        self.rng, self.count, self.lo = rng, count, lo

    def random(self, size: tuple[int, ...], **kwargs) -> np.ndarray:
        whole = self.rng.random((self.count, *size[1:]), **kwargs)
        return whole[self.lo : self.lo + size[0]]


def refuse(config: ExperimentConfig, processes: int) -> None:
    """ConfigError (exit 2) for what cannot be split across `processes` > 1: one sample per update,
    batch norm (its statistics are the whole batch's), a derivative-free optimizer."""
    source = config.file
    how = f"cannot be split across the {processes} MPI processes; run it without mpiexec"
    if config.training.batch.mode == "sgd":
        raise ConfigError(f"training.batch.mode: sgd (one sample per update) {how}, or use minibatch or full",
                          source=source)
    for index, layer in enumerate(config.model.layers):
        if isinstance(layer, BatchNormConfig):
            raise ConfigError(f"model.layers.{index}: batch_norm normalises with the whole batch's statistics, "
                              f"which cannot be split across the {processes} MPI processes; run it without mpiexec",
                              source=source)
    if not isinstance(config.optimizer, GRADIENT_OPTIMIZERS):
        raise ConfigError(f"optimizer.type: {config.optimizer.type} is derivative-free: it has no gradient to "
                          f"combine and {how}", source=source)


class DataParallel:
    """This process's part of synchronous data-parallel training (one object per process).

    `attach` sizes one flat buffer for every gradient plus two slots (the shard's loss sum and the
    control value); `gradient` is called by the loop once per update and returns the batch's mean
    loss and mean gradient, identical on every rank. The control slot carries Ctrl-C/SIGTERM (every
    rank stops after the same update) and a failed rank (every other rank stops before updating).
    """

    def __init__(self, comm: Communicator) -> None:
        self.comm, self.size, self.rank = comm, comm.size, comm.rank
        self.local_stop: Callable[[], bool] | None = None
        self.stop_agreed = False

    def attach(self, config: ExperimentConfig, problem: Problem) -> None:
        """Check that `config` can be split (ConfigError, exit 2, if not), then train `problem` sharded."""
        refuse(config, self.size)
        if self.size > problem.batch_size:
            raise ConfigError(f"training.batch.size: expected at least one sample per MPI process ({self.size} "
                              f"processes), received a batch of {problem.batch_size}", source=config.file)
        self.model, self.loss = problem.model, problem.loss
        problem.parallel = self
        params = self.model.parameters()
        dtype = next(iter(params.values())).dtype
        self.width = sum(p.size for p in params.values())
        self.send = np.zeros(self.width + 2, dtype)
        self.gathered = np.zeros((self.size, self.width + 2), dtype)
        self.total = np.zeros(self.width + 2, dtype)
        self.grads, offset = {}, 0
        for name, param in params.items():  # views into the combined buffer: no copy per update
            self.grads[name] = self.total[offset : offset + param.size].reshape(param.shape)
            offset += param.size

    def watch(self, local_stop: Callable[[], bool] | None) -> Callable[[], bool]:
        """The stop rule for the loop: this rank's signal flag is sent with each update, and the
        returned callable answers with what every rank agreed at the latest update."""
        self.local_stop = local_stop
        return lambda: self.stop_agreed

    def shard(self, count: int) -> tuple[int, int]:
        return shard(count, self.size, self.rank)

    def gradient(self, xb: np.ndarray, yb: np.ndarray, count: int, dropout_rng: np.random.Generator
                 ) -> tuple[float, dict[str, np.ndarray]]:
        """Mean loss and mean gradient over a global batch of `count` rows, of which this rank holds
        `xb`, `yb` (rows `shard(count)`): each rank's summed gradient divided by `count` (its shard's
        mean gradient times rows / count, applied to dloss/dlogits before backprop, so the combined
        buffer needs no pass of its own), gathered, and added in rank order."""
        lo, _ = self.shard(count)
        rows, send = len(xb), self.send
        if rows:
            outputs, caches = self.model.forward(xb, training=True, rng=ShardRng(dropout_rng, count, lo))
            value, dout = self.loss.value_and_grad(outputs, yb)
            dout = dout * (rows / count)  # the shard's summed gradient over the global batch size
            offset = 0
            for grad in self.model.backward(dout, caches).values():
                send[offset : offset + grad.size] = grad.reshape(-1)
                offset += grad.size
            send[-2] = value * rows
        else:  # a last batch smaller than the number of processes: an empty shard, whose forward pass
            # over one dummy row only draws the batch's dropout numbers, as the other ranks do
            self.model.forward(np.zeros((1, *xb.shape[1:]), xb.dtype), training=True,
                               rng=ShardRng(dropout_rng, count, 0))
            send[:-1] = 0
        send[-1] = STOP if self.local_stop is not None and self.local_stop() else 0.0
        self.comm.allgather(send, self.gathered)
        self._read_control(self.gathered[:, -1])
        ordered_sum(self.gathered, self.total)
        return float(self.total[-2]) / count, self.grads

    def _read_control(self, control: np.ndarray) -> None:
        failed = [(rank, -int(value)) for rank, value in enumerate(control) if value < 0]
        if failed:
            rank, code = failed[0]
            raise self.peer_failed(rank, code)
        self.stop_agreed = bool((control >= STOP).any())

    def peer_failed(self, rank: int, code: int,
                    outcome: str = "every process stopped before the next update; the run keeps its last "
                                   "checkpoint") -> BaseException:
        if self.rank:
            return QuietExit(code)
        return PeerFailed(f"MPI process {rank} stopped with an error (exit status {code}; its message is above): "
                          f"{outcome}", code)

    def finish(self, code: int) -> None:
        """Every rank's last collective, whatever the outcome: its exit status, sent as the control
        value of an update (so a rank still waiting for the next update learns that this one failed)."""
        self.send[:] = 0
        self.send[-1] = -code
        self.comm.allgather(self.send, self.gathered)
        codes = -self.gathered[:, -1]
        if code == 0 and (codes > 0).any():
            rank = int(np.flatnonzero(codes > 0)[0])
            raise self.peer_failed(rank, int(codes[rank]))

    def status(self, code: int) -> None:
        """Each rank's status after setting up: every rank raises (quietly but rank 0) if one failed."""
        out = np.zeros((self.size, 1), np.int64)
        self.comm.allgather(np.array([code], np.int64), out)
        failed = np.flatnonzero(out[:, 0])
        if code == 0 and len(failed):
            raise self.peer_failed(int(failed[0]), int(out[failed[0], 0]), "the run could not start")
