"""Data-parallel synchronous SGD: each global batch cut into contiguous shards, one per process,
their summed gradients combined in a fixed rank order, every process ending the update with the
same weights. By default the update itself is sharded too (ZeRO stage 1, `sharding`): each process
adds up only its slice of every process's gradient, in rank order, agrees with the others on the
divergence check (a small allgather), steps that slice of the weights and optimizer state, and the
updated slices reach every process's weights. Across machines the gradient slices travel by one
alltoall and the updated slices by one allgather; on one machine they are not sent at all: each
process computes its gradient into memory every process shares (`communicator`) and reads its
slice of the others' there, and the updated slices pass through that memory after a barrier.
The communicator is MPI (mpi4py) under `mpiexec`; tests pass a fake one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sgdcli.config.image_layers import BatchNormConfig
from sgdcli.engine import accumulate, metrics
from sgdcli.engine.losses import Loss
from sgdcli.engine.model import Sequential
from sgdcli.config.schema import GRADIENT_OPTIMIZERS, ExperimentConfig
from sgdcli.errors import ConfigError, SgdcliError, UsageError
from sgdcli.training.communicator import (  # noqa: F401 - launched_*, MpiCommunicator: this module's API too
    Communicator,
    MpiCommunicator,
    QuietExit,
    launched_rank,
    launched_size,
)
from sgdcli.training.loop import Problem, nonfinite
from sgdcli.training.sharding import FlatLayout, ShardedOptimizer, ShardRng, flatten_parameters, ordered_sum, shard

STOP = 1.0  # the control slot of an update: 0 go on, 1 a process was asked to stop, -code a process failed


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


UPDATE, CHECK, WEIGHTS = "update", "check", "weights"  # the collective a process does next (see DataParallel)
NOT_TRAINING = 256  # the status a process sends that ends at once without an error (--help): beyond any exit status
TOLD = "told"  # a process that failed measuring an epoch, having sent its exit status: no collective left


def needs_whole_gradient(config: ExperimentConfig, problem: Problem) -> bool:
    """Whether every process needs the whole combined gradient: clipping by its global norm, or
    `training.track: [grad_norm]`; such runs take the replicated update instead of the sharded one."""
    return problem.clip_norm is not None or "grad_norm" in config.training.track


class DataParallel:
    """This process's part of synchronous data-parallel training (one object per process).

    `gradient` is called by the loop once per update: it computes this process's shard and returns
    the batch's mean loss and the combined mean gradient; `nonfinite` is the loop's divergence check.
    Two ways to update, with bit-identical results:

    - **sharded** (ZeRO stage 1, Rajbhandari et al. 2020; `sharding`), the default: the weights are
      views of one flat vector cut into P slices. An alltoall brings each process every process's part
      of its own slice (plus two slots per slice: the shard's loss sum and the control value), added in
      rank order; the divergence check exchanges each slice's squared gradient norms (a small
      allgather); the optimizer steps this process's slice of the weights and of its state; an
      allgather of the updated slices writes every process's weights in place. When the processes
      share memory (all on one machine; asked at the first update), each computes its gradient into
      its row of a shared (P + 1, P x slice) array instead, one small allgather exchanges the loss
      sums and control values, each process adds its slice's column of the rows in rank order, and
      the updated slices go through the last row (written, a barrier, read): nothing is sent. After
      an epoch's last update, or the update every process stops after, the optimizer state is
      gathered too (rank 0's checkpoint holds all of it).
    - **replicated**, when every process needs the whole gradient (`needs_whole_gradient`), or
      `shard_update=False`: one allgather of every gradient, every process adds all of them in rank
      order and applies the whole update.

    The control value carries Ctrl-C/SIGTERM (every rank stops after the same update) and a failed
    rank (every other rank stops before updating); `finish` completes whatever collective of the
    update the other processes wait in (`phase`).
    """

    def __init__(self, comm: Communicator, shard_update: bool = True) -> None:
        self.comm, self.size, self.rank = comm, comm.size, comm.rank
        self.shard_update, self.sharded = shard_update, False
        self.local_stop: Callable[[], bool] | None = None
        self.stop_agreed = self.gather_due = False
        self.phase = UPDATE
        self.rows: np.ndarray | None = None  # the shared gradient rows, when the processes share memory
        self._chunk_sums: dict[str, np.ndarray] | None = None  # the shard's gradient, summed over its chunks (messages)
        self._asked = False  # whether they were asked (a collective, at the first update)

    def attach(self, config: ExperimentConfig, problem: Problem) -> None:
        """Check that `config` can be split (ConfigError, exit 2, if not), then train `problem` sharded:
        its model's parameters become views of one flat vector, and (sharded update) its optimizer a
        `ShardedOptimizer`. Call before anything holds the parameters or the optimizer state."""
        refuse(config, self.size)
        if self.size > problem.batch_size:
            raise ConfigError(f"training.batch.size: expected at least one sample per MPI process ({self.size} "
                              f"processes), received a batch of {problem.batch_size}", source=config.file)
        self.model, self.loss = problem.model, problem.loss
        problem.parallel = self
        params = self.model.parameters()
        self.names = list(params)
        self.sharded = self.shard_update and not needs_whole_gradient(config, problem)
        self.layout = layout = FlatLayout(params, self.size if self.sharded else 1)
        self.weights = flatten_parameters(self.model, layout)
        width, dtype = layout.width, self.weights.dtype
        rows = self.size if self.sharded else 1  # sharded: one row per destination; replicated: one for all
        self.send = np.zeros((rows, width + 2), dtype)
        self.received = np.zeros((self.size, width + 2), dtype)
        self.total = np.zeros(width + 2, dtype)
        # where each gradient's pieces for the other ranks go in the send buffer (replicated: all of them)
        own = self.rank if self.sharded else -1
        self._copies = [(piece.key, self.send[piece.owner, piece.lo - piece.owner * width : piece.hi - piece.owner * width],
                         piece.inner) for owner in range(layout.size) if owner != own for piece in layout.pieces(owner)]
        mine = layout.pieces(max(own, 0))
        offset = max(own, 0) * width
        self.grads = {piece.key: self.total[piece.lo - offset : piece.hi - offset] for piece in mine}
        # this rank's own pieces are added straight from its gradients: never copied, never sent
        self._own = [(piece.key, piece.inner, slice(piece.lo - offset, piece.hi - offset)) for piece in mine]
        if not self.sharded:
            self.grads = {key: grad.reshape(layout.shapes[key]) for key, grad in self.grads.items()}
            self.send = self.send[0]
            self._exchange = self.comm.allgather
            return
        self._exchange = self.comm.alltoall
        self.norms = np.zeros(2 * len(self.names) + 1, dtype)  # squared norms, finite flags, control
        self.all_norms = np.zeros((self.size, len(self.norms)), dtype)
        self.optimizer = problem.optimizer = ShardedOptimizer(problem.optimizer, layout, self.rank, self.weights,
                                                              self._share)

    def watch(self, local_stop: Callable[[], bool] | None) -> Callable[[], bool]:
        """The stop rule for the loop: this rank's signal flag is sent with each update, and the
        returned callable answers with what every rank agreed at the latest update."""
        self.local_stop = local_stop
        return lambda: self.stop_agreed

    def shard(self, count: int) -> tuple[int, int]:
        return shard(count, self.size, self.rank)

    def gradient(self, xb: np.ndarray, yb: np.ndarray, count: int, dropout_rng: np.random.Generator,
                 ends_epoch: bool = False) -> tuple[float, dict[str, np.ndarray]]:
        """Mean loss and mean gradient over a global batch of `count` rows, of which this rank holds
        `xb`, `yb` (rows `shard(count)`): each rank's summed gradient divided by `count` (its shard's
        mean gradient times rows / count, applied to dloss/dlogits before backprop, so the combined
        buffer needs no pass of its own), exchanged, and added in rank order. Sharded: the gradient
        is this rank's pieces only (flat, keyed by parameter). `ends_epoch`: the epoch's last update
        (then the optimizer state is gathered after it)."""
        self._share_memory()
        lo, _ = self.shard(count)
        rows, send = len(xb), self.send
        seekable = accumulate.seekable(dropout_rng)
        if rows and seekable and self.model.per_sample:
            # engine/accumulate.py: a chunk of rows at a time when the shard is large, each with the batch's
            # dropout numbers for its rows taken from their place in the stream (none drawn for other rows)
            if self.rows is not None:
                grads = self.into
            else:
                if self._chunk_sums is None:
                    self._chunk_sums = accumulate.gradient_sums(self.model.parameters())
                grads = self._chunk_sums
            value = accumulate.value_and_gradients(self.model, self.loss, xb, yb, dropout_rng, grads,
                                                   scale=rows / count, batch=(lo, count))
        elif rows:
            outputs, caches = self.model.forward(xb, training=True, rng=ShardRng(dropout_rng, count, lo))
            value, dout = self.loss.value_and_grad(outputs, yb)
            dout = dout * (rows / count)  # the shard's summed gradient over the global batch size
            grads = self.model.backward(dout, caches, into=self.into if self.rows is not None else None)
        if rows:
            if self.rows is None:
                for key, destination, part in self._copies:
                    np.copyto(destination, grads[key].reshape(-1)[part])
            send[..., -2] = value * rows
            own = grads
        else:  # a last batch smaller than the number of processes: an empty shard, whose forward pass
            # over one dummy row only moves the generator past the batch's dropout numbers, as the other ranks do
            positions = accumulate.BatchPositions(dropout_rng, count) if seekable else ShardRng(dropout_rng, count, 0)
            self.model.forward(np.zeros((1, *xb.shape[1:]), xb.dtype), training=True, rng=positions)
            if seekable:
                positions.finish()
            send[..., :-1] = 0
            if self.rows is not None:
                self.rows[self.rank] = 0
            own = None
        send[..., -1] = STOP if self.local_stop is not None and self.local_stop() else 0.0
        control = self._send_update()
        self._raise_failed(control)
        self.stop_agreed = bool((control >= STOP).any())
        self.gather_due = self.stop_agreed or ends_epoch
        if self.sharded:
            self._add(own)
        else:
            ordered_sum(self.received, self.total)
        return float(self.total[-2]) / count, self.grads

    def _share_memory(self) -> None:
        """Sharded, at the first update (when every process takes part, whatever order they set up in):
        ask for shared memory for the gradient rows and one more row for the updated weights; if
        granted, this process's gradients are computed into views of its row (`into`), only the loss
        sum and control value are sent, and the updated slices pass through the last row."""
        if not self.sharded or self._asked:
            return
        self._asked = True
        layout, dtype = self.layout, self.weights.dtype
        shared = self.comm.shared((self.size + 1, self.size * layout.width), dtype)
        if shared is None:
            return
        self.rows, self.into, self.exchange = shared[:-1], layout.views(shared[self.rank]), shared[-1]
        start = self.rank * layout.width
        self._slices = [slice(rank * layout.width, (rank + 1) * layout.width) for rank in range(self.size)]
        self._columns = [row[start : start + layout.width] for row in self.rows]  # this slice, rank by rank
        self.send, self.received = np.zeros(2, dtype), np.zeros((self.size, 2), dtype)
        self._copies = self._own = []  # the message path's, unused here (and its send buffer freed)

    def _send_update(self) -> np.ndarray:
        """The update's first collective; returns every rank's control value."""
        if self.rows is not None:  # the gradients are in shared memory: exchange the two slots
            self.comm.fence()
            self.comm.allgather(self.send, self.received)
            self.comm.fence()
            self.phase = CHECK
            return self.received[:, -1]
        self._exchange(self.send, self.received)
        if self.sharded:  # this rank's own row is not sent: its two slots are copied
            self.received[self.rank, -2:] = self.send[self.rank, -2:]
        self.phase = CHECK if self.sharded else UPDATE
        return self.received[:, -1]

    def _add(self, own: dict[str, np.ndarray] | None) -> None:
        """This rank's slice of the sum, in rank order: the other ranks' parts as received, its own part
        read from its gradients (`own`; None: an empty shard, whose row of `received` holds zeros)."""
        received, rank = self.received, self.rank
        ordered_sum(received[:, -2:], self.total[-2:])  # the shards' loss sums (and control values)
        if self.rows is not None:  # the whole slice at once, padding included (zeros)
            ordered_sum(self._columns, self.total[:-2])
            return
        for key, part, at in self._own:
            mine = received[rank, at] if own is None else own[key].reshape(-1)[part]
            ordered_sum([*received[:rank, at], mine, *received[rank + 1 :, at]], self.total[at])

    def nonfinite(self, grads: dict[str, np.ndarray]) -> tuple[str, bool] | None:
        """The first parameter (in model order) whose combined gradient's sum of squares is not finite,
        and whether all its entries are finite (an overflow), or None: `loop.nonfinite` of the whole
        gradient. Sharded: each slice's sums of squares (in the model's dtype) and finite flags are
        gathered and added in rank order (a small collective), so every rank reaches the same verdict."""
        if not self.sharded:
            return nonfinite(grads)
        count, norms = len(self.names), self.norms
        norms[:count], norms[count:] = 0, 1
        for key, grad in grads.items():
            index = self.names.index(key)
            norms[index] = np.dot(grad, grad)
            if not np.isfinite(norms[index]):
                norms[count + index] = np.isfinite(grad).all()
        norms[-1] = 0
        self.comm.allgather(norms, self.all_norms)
        self.phase = WEIGHTS
        self._raise_failed(self.all_norms[:, -1])
        with np.errstate(over="ignore", invalid="ignore"):
            sums = np.add.accumulate(self.all_norms[:, :count], axis=0)[-1]  # rank 0 first, in the dtype
        for index, name in enumerate(self.names):
            if not np.isfinite(sums[index]):
                return name, bool(self.all_norms[:, count + index].all())
        return None

    def _share(self) -> None:
        """After this rank's slice was updated: every slice into every rank's weights (in place), then,
        when due, the optimizer state. In shared memory: each rank puts its slice in the exchange row,
        and after a barrier copies the others' slices from it."""
        if self.rows is None:
            self.comm.allgather_slices(self.weights.reshape(self.size, -1))
        else:
            own = self._slices[self.rank]
            np.copyto(self.exchange[own], self.weights[own])
            self.comm.fence()
            self.comm.barrier()
            self.comm.fence()
            for rank, part in enumerate(self._slices):
                if rank != self.rank:
                    np.copyto(self.weights[part], self.exchange[part])
        if self.gather_due:
            self.optimizer.gather_state(self.comm.allgather_slices)
        self.phase = UPDATE

    def _raise_failed(self, control: np.ndarray) -> None:
        failed = [(rank, -int(value)) for rank, value in enumerate(control) if value < 0]
        if failed:
            rank, code = failed[0]
            raise self.peer_failed(rank, code)

    def peer_failed(self, rank: int, code: int,
                    outcome: str = "every process stopped before the next update; the run keeps its last "
                                   "checkpoint") -> BaseException:
        if code == NOT_TRAINING:  # (its command line ends without training: --help)
            code, why = UsageError.exit_code, "ended without training (its command line does not train: --help?)"
        else:
            why = f"stopped with an error (exit status {code}; its message is above)"
        return QuietExit(code) if self.rank else PeerFailed(f"MPI process {rank} {why}: {outcome}", code)

    def loss_and_accuracy(self, model: Sequential, loss: Loss, x: np.ndarray, y: np.ndarray,
                          classification: bool) -> tuple[float, float | None]:
        """``metrics.loss_and_accuracy`` of the whole set, each rank evaluating its ``shard`` of the chunks: one
        small allgather brings every rank every chunk's sums (0 from the ranks that did not take it, so each
        sum is exact) and each adds them in chunk order: every rank has the same numbers (early stopping
        decides alike). A rank that fails sends its exit status in the control slot and raises; the others
        raise ``peer_failed``."""
        count = metrics.chunk_count(len(x))
        send, out = np.zeros(2 * count + 1), np.zeros((self.size, 2 * count + 1))
        try:
            chunks = range(*shard(count, self.size, self.rank))
            send[:-1] = metrics.chunk_sums(model, loss, x, y, classification, chunks).reshape(-1)
        except BaseException as exc:
            send[-1], self.phase = -exit_code(exc), TOLD
            self.comm.allgather(send, out)
            raise
        self.comm.allgather(send, out)
        self._raise_failed(out[:, -1])
        return metrics.combine_chunks(out[:, :-1].sum(axis=0).reshape(count, 2), len(x), classification)

    def finish(self, code: int) -> None:
        """Every rank's last collective, whatever the outcome: its exit status, sent as the control
        value of the collective the other ranks wait in (so a rank still waiting for the next update,
        or in the middle of one, learns that this one failed). A rank that stopped between the
        sharded update's check and its weights first completes the weights' allgather."""
        if self.phase == TOLD:
            return
        if self.phase == CHECK:
            self.norms[-1] = -code
            self.comm.allgather(self.norms, self.all_norms)
            control = self.all_norms[:, -1]
        else:
            if self.phase == WEIGHTS:
                self._share()
            self._share_memory()  # the others ask at their first update: a rank failing before it asks too
            self.send[..., -1] = -code
            control = self._send_update()
        codes = -control
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
