"""A large batch's mean loss and gradient, computed CHUNK_ROWS rows at a time (gradient accumulation).

A full batch of 60,000 Fashion-MNIST images holds each hidden activation as a 123 MB array
(60,000 x 512 float32), and every pass between the products (bias, ReLU, its gradient, the bias
gradient) streams it from main memory. Chunks of CHUNK_ROWS rows keep those arrays in the cache from
the product that writes them to the pass that reads them, and the memory a batch holds at once
is a chunk's. The result is the same mean: the loss is each chunk's mean weighted by its share
of the rows, and dL/dpred of a chunk is scaled by that share before backprop, so each chunk's
gradient is its part of the batch's, summed into ``into`` (a dense weight's by a gemm straight
into it, ``materialize`` / ``add_to``). Only the rounding differs from one pass over the whole batch
(the sums run in another order): same chunks, same bits, so a resumed run stays bit-identical.

Only for models whose layers treat each sample on its own (``Sequential.per_sample``): batch norm
normalises with the whole batch's statistics, so a batch-norm model takes its batch whole.
Dropout's masks are the whole batch's too: each chunk's draw is taken from the place in the random
stream where one draw over the whole batch puts those rows (``BatchPositions``), and the generator
ends where that draw leaves it. A data-parallel process chunks its shard the same way (``batch``:
the shard's place in the batch), so P processes still train the weights one process trains.

On the 784-512-10 ReLU network's full batch (``python benchmarks/chunk_rows.py``, interleaved in one
process) a gradient took 576 ms in chunks of 4,096 rows against 768 ms whole (0.74 of the time per
round; chunks of 1,024 / 2,048 / 8,192 rows: 596 / 571 / 589 ms), and the update held 5 MB beyond the
data and the model instead of 442 MB.
"""

from __future__ import annotations

import math

import numpy as np

from .allocator import aligned_empty
from .gradients import BatchProduct, OuterProduct
from .losses import Loss
from .model import Sequential

CHUNK_ROWS = 4096


def chunked(model: Sequential, rows: int, chunk_rows: int | None = None) -> bool:
    """Whether a batch of ``rows`` rows is computed in chunks: more rows than a chunk, and a model
    whose layers treat each sample on its own."""
    return rows > (CHUNK_ROWS if chunk_rows is None else chunk_rows) and model.per_sample


def gradient_sums(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays shaped, typed and keyed like ``params`` (on a cache line, allocator.py) for ``value_and_gradients``
    to sum a chunked batch's gradient into; a caller makes them once and reuses them every update."""
    return {key: aligned_empty(param.shape, param.dtype) for key, param in params.items()}


def value_and_gradients(model: Sequential, loss: Loss, x: np.ndarray, y: np.ndarray,
                        rng: np.random.Generator | None, into: dict[str, np.ndarray],
                        chunk_rows: int | None = None, *, scale: float = 1.0,
                        batch: tuple[int, int] | None = None) -> float:
    """The mean loss over the N rows of ``x`` (N, ...) and ``y`` (N, ...), with ``scale`` times
    d(mean loss)/d(parameter) written into ``into`` (arrays keyed, shaped and typed like
    ``model.parameters()``; their contents are overwritten), from forward and backward passes over
    ``chunk_rows`` rows at a time (CHUNK_ROWS by default). Training mode; ``rng`` is dropout's generator.
    ``batch``: (first row, rows) of the batch these rows are a part of (a data-parallel shard, with
    scale = N / rows), whose dropout numbers they get (``BatchPositions``); by default the N rows.
    Raises ValueError for an empty batch or a model that mixes samples (``Sequential.per_sample`` False)."""
    n = len(x)
    step = CHUNK_ROWS if chunk_rows is None else int(chunk_rows)
    if n == 0 or step < 1:
        raise ValueError(f"value_and_gradients needs rows and a chunk of at least 1 row, got {n} and {step}")
    if not model.per_sample:
        raise ValueError("value_and_gradients: a layer of this model mixes the samples of a batch (batch norm); "
                         "its gradient needs the whole batch at once")
    value = 0.0
    first, total = (0, n) if batch is None else batch
    positions = BatchPositions(rng, total, first) if rng is not None and (n > step or batch is not None) else None
    for start in range(0, n, step):
        stop = min(n, start + step)
        share = (stop - start) / n
        if positions is not None:
            positions.chunk(start)
        outputs, caches = model.forward(x[start:stop], training=True, rng=positions or rng)
        chunk_value, dout = loss.value_and_grad(outputs, y[start:stop])
        value += chunk_value * share
        dout *= share * scale  # (scale times) d(batch mean)/d(outputs) of these rows
        for key, grad in model.backward(dout, caches, factored=True).items():
            _add(into[key], grad, first=start == 0)
        del outputs, caches, dout  # the next chunk's arrays replace these, not join them
    if positions is not None:
        positions.finish()
    return value


def seekable(rng: np.random.Generator) -> bool:
    """Whether ``BatchPositions`` can move ``rng`` to any place in its stream: ``advance(k)`` skips k 64-bit
    outputs, one per float64, in PCG64 and PCG64DXSM (Philox's counts blocks of four; MT19937 has none)."""
    return isinstance(rng.bit_generator, (np.random.PCG64, np.random.PCG64DXSM))


class BatchPositions:
    """The random numbers of an n-row batch, handed out a chunk of rows at a time: the chunk starting at row r gets,
    for its k-th draw of shape (rows, *shape), the numbers one draw of (n, *shape) would put in rows r to r +
    rows (r counted from ``first``, for a part of the batch such as a shard), given that the forward pass over
    the whole batch draws once per dropout layer, in layer order. The generator is moved there with
    ``bit_generator.advance`` (PCG64, the generator of ``numpy.random.default_rng``, and PCG64DXSM: one 64-bit
    output per float64), so nothing is drawn twice and the numbers are never stored; ``finish`` leaves it
    where the whole batch's draws would. Another bit generator draws chunk after chunk (the same masks with
    one dropout layer). Only ``random`` (float64) is provided: it is all dropout draws."""

    def __init__(self, rng: np.random.Generator, rows: int, first: int = 0) -> None:
        self.rng, self.rows, self.first = rng, rows, first  # the batch's rows; this part's first row in it
        self.seekable = seekable(rng)
        self.begin = rng.bit_generator.state if self.seekable else None
        self.widths: list[int] = []  # numbers per row of each draw of a forward pass, in order
        self.start = self.draw = 0

    def chunk(self, start: int) -> None:
        """The draws that follow are the forward pass over the chunk starting at row ``start`` of this part."""
        self.start, self.draw = self.first + start, 0

    def random(self, size: tuple[int, ...], **kwargs) -> np.ndarray:
        width = math.prod(size[1:])
        if self.draw == len(self.widths):  # the first chunk's forward pass finds the draws
            self.widths.append(width)
        elif self.widths[self.draw] != width:
            raise ValueError(f"draw {self.draw} of a chunk has {width} numbers a row, "
                             f"the first chunk's {self.widths[self.draw]}")
        if self.seekable:
            self.rng.bit_generator.state = self.begin
            self.rng.bit_generator.advance(self.rows * sum(self.widths[:self.draw]) + self.start * width)
        self.draw += 1
        return self.rng.random(size, **kwargs)

    def finish(self) -> None:
        """Leave the generator where one draw per layer over the whole batch would have."""
        if self.seekable:
            self.rng.bit_generator.state = self.begin
            self.rng.bit_generator.advance(self.rows * sum(self.widths))


def _add(target: np.ndarray, grad, *, first: bool) -> None:
    """target = grad (first chunk) or target += grad; a factored gradient by BLAS straight into target
    (``materialize`` / ``add_to``: a batch's by one gemm), never built on its own."""
    if isinstance(grad, (BatchProduct, OuterProduct)):
        if first:
            grad.materialize(out=target)
        else:
            grad.add_to(target, 1.0)
    elif first:
        np.copyto(target, grad)
    else:
        target += grad
