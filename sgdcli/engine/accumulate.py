"""A large batch's mean loss and gradient, computed CHUNK_ROWS rows at a time (gradient accumulation).

A full batch of 60,000 Fashion-MNIST images holds each hidden activation as a 123 MB array
(60,000 x 512 float32), and every pass between the products (bias, ReLU, its gradient, the bias
gradient) streams it from main memory. Chunks of CHUNK_ROWS rows keep those arrays in the cache from
the product that writes them to the pass that reads them, and the memory a batch holds at once
is a chunk's. The result is the same mean: the loss is each chunk's mean weighted by its share
of the rows, and dL/dpred of a chunk is scaled by that share before backprop, so each chunk's
gradient is its part of the batch's, summed into ``into`` (a dense weight's by a gemm straight
into it, ``gradients.add_scaled``). Only the rounding differs from one pass over the whole batch
(the sums run in another order): same chunks, same bits, so a resumed run stays bit-identical.

Only for models whose layers treat each sample on its own (``Sequential.per_sample``): batch norm
normalises with the whole batch's statistics, so a batch-norm model takes its batch whole.
Dropout draws its numbers chunk by chunk, so with one dropout layer the masks are those of the
whole batch; with several, each layer's rows come in another order of the same random stream.

On the 784-512-10 ReLU network's full batch (``python benchmarks/chunk_rows.py``, interleaved in one
process) a gradient took 576 ms in chunks of 4,096 rows against 768 ms whole (0.74 of the time per
round; chunks of 1,024 / 2,048 / 8,192 rows: 596 / 571 / 589 ms), and the update held 5 MB beyond the
data and the model instead of 442 MB.
"""

from __future__ import annotations

import numpy as np

from .gradients import BatchProduct, OuterProduct
from .losses import Loss
from .model import Sequential

CHUNK_ROWS = 4096


def chunked(model: Sequential, rows: int, chunk_rows: int | None = None) -> bool:
    """Whether a batch of ``rows`` rows is computed in chunks: more rows than a chunk, and a model
    whose layers treat each sample on its own."""
    return rows > (CHUNK_ROWS if chunk_rows is None else chunk_rows) and model.per_sample


def value_and_gradients(model: Sequential, loss: Loss, x: np.ndarray, y: np.ndarray,
                        rng: np.random.Generator | None, into: dict[str, np.ndarray],
                        chunk_rows: int | None = None) -> float:
    """The mean loss over the N rows of ``x`` (N, ...) and ``y`` (N, ...), with d(mean loss)/d(parameter)
    written into ``into`` (arrays keyed, shaped and typed like ``model.parameters()``; their contents
    are overwritten), from forward and backward passes over ``chunk_rows`` rows at a time
    (CHUNK_ROWS by default). Training mode; ``rng`` is dropout's generator. Raises ValueError for an
    empty batch or a model that mixes samples (``Sequential.per_sample`` False)."""
    n = len(x)
    step = CHUNK_ROWS if chunk_rows is None else int(chunk_rows)
    if n == 0 or step < 1:
        raise ValueError(f"value_and_gradients needs rows and a chunk of at least 1 row, got {n} and {step}")
    if not model.per_sample:
        raise ValueError("value_and_gradients: a layer of this model mixes the samples of a batch (batch norm); "
                         "its gradient needs the whole batch at once")
    value = 0.0
    for start in range(0, n, step):
        stop = min(n, start + step)
        share = (stop - start) / n
        outputs, caches = model.forward(x[start:stop], training=True, rng=rng)
        chunk_value, dout = loss.value_and_grad(outputs, y[start:stop])
        value += chunk_value * share
        dout *= share  # d(batch mean)/d(outputs) of these rows
        for key, grad in model.backward(dout, caches, factored=True).items():
            _add(into[key], grad, first=start == 0)
        del outputs, caches, dout  # the next chunk's arrays replace these, not join them
    return value


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
