"""The optimizer step sharded across data-parallel processes: ZeRO stage 1 (Rajbhandari et al. 2020,
"ZeRO: Memory Optimizations Toward Training Trillion Parameter Models"; PyTorch's
ZeroRedundancyOptimizer). Every weight is a view of one flat vector cut into P equal slices; each
process owns one slice of the weights and of the optimizer state, steps only that slice, and the
updated slices are gathered back into every process's weights. And how the rows of a batch are cut
among the processes (``shard``), their sums added (``ordered_sum``) and dropout drawn for them (``ShardRng``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sgdcli.engine.allocator import aligned_full
from sgdcli.engine.model import Sequential
from sgdcli.engine.optimizers import Optimizer

ALIGN = 16  # a slice is a multiple of 16 values: every slice starts on a 64-byte boundary in float32


def shard(count: int, size: int, rank: int) -> tuple[int, int]:
    """Rows [lo, hi) of a batch of `count` rows that `rank` of `size` computes: contiguous, in rank
    order, the first count % size ranks one row more (10 rows on 3 ranks: 4, 3, 3; NumPy's array_split)."""
    base, extra = divmod(count, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def ordered_sum(rows: np.ndarray | Sequence[np.ndarray], out: np.ndarray) -> np.ndarray:
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


@dataclass(frozen=True)
class Piece:
    """The part of parameter `key` that slice `owner` holds: flat positions [lo, hi) of the whole
    vector, which are positions [lo - start, hi - start) of the parameter's own flattened values."""

    key: str
    owner: int
    lo: int
    hi: int
    start: int  # where the parameter begins in the flat vector

    @property
    def inner(self) -> slice:
        return slice(self.lo - self.start, self.hi - self.start)


class FlatLayout:
    """Where every parameter sits in the flat vector (in `Sequential.parameters()` order, back to back)
    and how the vector is cut into `size` slices of `width` values each (the last ones padded with 0).

    `pieces(rank)` is what slice `rank` holds, parameter by parameter; a parameter may be cut between
    two slices, and a slice may hold no parameter at all (a tiny model on many processes)."""

    def __init__(self, params: dict[str, np.ndarray], size: int) -> None:
        self.size, self.shapes, self.starts = size, {k: p.shape for k, p in params.items()}, {}
        self.sizes = {k: int(p.size) for k, p in params.items()}  # values per parameter
        offset = 0
        for key, param in params.items():
            self.starts[key] = offset
            offset += param.size
        self.total = offset
        self.width = ALIGN * -(-offset // (size * ALIGN))  # ceil(total / size), rounded up to ALIGN
        self._pieces = [self._cut(rank) for rank in range(size)]

    def _cut(self, rank: int) -> list[Piece]:
        first, last = rank * self.width, (rank + 1) * self.width
        pieces = []
        for key, start in self.starts.items():
            lo, hi = max(start, first), min(start + self.sizes[key], last)
            if lo < hi:
                pieces.append(Piece(key, rank, lo, hi, start))
        return pieces

    def pieces(self, rank: int) -> list[Piece]:
        return self._pieces[rank]

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Every parameter as a view of the flat vector `flat` (size * width values), shaped as the parameter."""
        return {key: flat[start : start + self.sizes[key]].reshape(self.shapes[key])
                for key, start in self.starts.items()}


def flatten_parameters(model: Sequential, layout: FlatLayout) -> np.ndarray:
    """Move `model`'s parameters into one flat vector (returned) and make each layer's parameter a view
    of it, so that gathering the vector writes every weight in place. Call before anything (an
    optimizer's state, a training loop) holds the old arrays."""
    flat = aligned_full((layout.size * layout.width,), model.dtype, 0)  # starting on a cache line (allocator.py)
    views = layout.views(flat)
    for index, layer in enumerate(model.layers):
        for name, array in layer.params.items():
            view = views[f"{index}.{name}"]
            np.copyto(view, array)
            layer.params[name] = view
    return flat


class ShardedOptimizer:
    """`optimizer` applied to one slice of the weights (ZeRO stage 1): what the training loop steps when
    data-parallel training shards the update.

    `step` applies the update to this process's pieces of the weights, with the pieces of the combined
    gradient it is handed (keyed by parameter, flat), and keeps optimizer state for those pieces only;
    then `share()` (the caller's collectives) gathers every process's slice into every process's weights.
    Every optimizer here is elementwise (also weight decay and the subnormal flush), so a slice's update
    is bit for bit that slice of the whole update. `gather_state(allgather)` assembles the whole state
    (each process's slices, gathered in place); `state_dict` returns the state as of that gather (or of
    `load_state_dict`), shaped as the parameters, exactly what a single process's optimizer holds.
    """

    def __init__(self, optimizer: Optimizer, layout: FlatLayout, rank: int, flat: np.ndarray,
                 share: Callable[[], None]) -> None:
        self.optimizer, self.layout, self.rank, self.share = optimizer, layout, rank, share
        self.full_params = layout.views(flat)
        self.params = {piece.key: flat[piece.lo : piece.hi] for piece in layout.pieces(rank)}
        # The state's names, as the optimizer makes them for any parameter (a slice may hold none).
        self.names = list(optimizer._init_state(np.zeros(1, flat.dtype)))
        self._whole: dict[str, np.ndarray] = {"iterations": np.array(0, np.int64)}
        self._whole_at = optimizer.iterations
        self._gathered: np.ndarray | None = None

    @property
    def iterations(self) -> int:
        return self.optimizer.iterations

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], learning_rate: float) -> None:
        """Update this process's slice with `grads` (its pieces), then every process's weights (`share`).
        `params` are the whole weights the loop steps: views of the same flat vector."""
        self.optimizer.step(self.params, grads, learning_rate)
        self.share()

    def gather_state(self, allgather: Callable[[np.ndarray], None]) -> None:
        """Assemble the whole optimizer state from every process's slices; a collective (every process
        calls it after the same update). `allgather(buffer)`: buffer (P, K) in place, row r from rank r."""
        iterations = self.optimizer.iterations
        whole: dict[str, np.ndarray] = {}
        if iterations and self.names:
            layout, count = self.layout, len(self.names)
            if self._gathered is None:
                self._gathered = np.zeros((layout.size, count, layout.width), self.params_dtype)
            mine, own = self._gathered[self.rank], self.optimizer.state_dict()
            for piece in layout.pieces(self.rank):
                for k, name in enumerate(self.names):
                    at = piece.lo - self.rank * layout.width
                    mine[k, at : at + piece.hi - piece.lo] = own[f"{name}/{piece.key}"]
            allgather(self._gathered.reshape(layout.size, -1))
            flats = [np.ascontiguousarray(self._gathered[:, k, :]).reshape(-1) for k in range(count)]
            for key, start in layout.starts.items():
                size = layout.sizes[key]
                for name, flat in zip(self.names, flats):
                    whole[f"{name}/{key}"] = flat[start : start + size].reshape(layout.shapes[key]).copy()
        whole["iterations"] = np.array(iterations, np.int64)
        self._whole, self._whole_at = whole, iterations

    @property
    def params_dtype(self) -> np.dtype:
        return next(iter(self.full_params.values())).dtype

    def state_dict(self) -> dict[str, np.ndarray]:
        """The whole state (as `Optimizer.state_dict`), as last gathered; RuntimeError if steps were
        taken since (a checkpoint must never hold a stale state)."""
        if self._whole_at != self.optimizer.iterations:
            raise RuntimeError(f"the sharded optimizer state was gathered after update {self._whole_at}, "
                               f"but {self.optimizer.iterations} updates were applied")
        return {key: value.copy() for key, value in self._whole.items()}

    def load_state_dict(self, state: dict[str, np.ndarray], params: dict[str, np.ndarray] | None = None) -> None:
        """Load a whole state (a single process's, or a gathered one): checked against the whole
        parameters (ValueError, as `Optimizer.load_state_dict`), then cut to this process's slice."""
        self.optimizer.load_state_dict(state, self.full_params)  # validates and casts, or changes nothing
        whole = self.optimizer.state_dict()
        pieces = {f"{name}/{piece.key}": whole[f"{name}/{piece.key}"].reshape(-1)[piece.inner]
                  for piece in self.layout.pieces(self.rank) for name in self.names
                  if f"{name}/{piece.key}" in whole}
        pieces["iterations"] = whole["iterations"]
        self.optimizer.load_state_dict(pieces, self.params)
        self._whole, self._whole_at = whole, self.optimizer.iterations

    def __repr__(self) -> str:
        return f"ShardedOptimizer({self.optimizer!r}, slice {self.rank} of {self.layout.size})"
