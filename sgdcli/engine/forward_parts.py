"""A dense layer's training product x @ W in parts of W's rows, each part on the core that updates those rows.

An optimizer's update of a large weight array runs in parts on OpenBLAS's threads (``engine/pool``), each
part the same whole rows of W every update (its own rows of the gradient too: ``BatchProduct.rows_call``),
so the rows a core updates stay in its cache. OpenBLAS's own two-thread product x @ W splits W by
columns instead: each thread reads half of its columns from rows the other core has just written.
Where the two cores have separate caches (this project's 2-core VM moves between placements, README
Performance) that is a cache-to-cache copy of half of W every update, and, as the timings suggest, the
next update then writes rows whose lines the other core holds (the product in parts is itself slower, the
whole update faster). Here each part computes x[:, rows] @ W[rows] on
its own core (one single-thread ``sgemm``/``dgemm`` reading x's columns and W's rows in place) and the
parts' products are added in row order. Measured in one process, epochs alternating with OpenBLAS's
product (``/tmp`` script, the batch-128 race's 784-512-10 model): with separate caches Adam 0.89-0.91
of the time, SGD with momentum 0.93; with a shared cache Adam 1.02 (0.98-1.15) and a full-batch
update of 4,096-row chunks 1.02. Two one-thread products of half the inner dimension take ~8% longer
than OpenBLAS's one two-thread product (598 against 552 us, alone), and the parts' sum is one more
pass over (parts - 1) N x M products, while the split saves moving a part's rows of W: so it runs
only for batches of at most a part's row count (N <= D / parts: 392 rows of 784 on two cores).

The parts' sum is the product whether the parts run at once or, when the pool runs them whole
(``pool.split``'s timing guard, another busy process), in turn on one thread: the same bits either way,
and the same as a resumed run's. They can differ from OpenBLAS's own product's (a different order of
the sums; on this machine's kernels K = 784 gives the same bits, as OpenBLAS sums it in two blocks of
392 too), so training and evaluating the same batch may differ in the last bits, as they already do
between batch sizes. With one BLAS thread (batch 1, MPI ranks on a 2-core machine), a W too small to
split (``pool.MIN_ELEMENTS``) or a larger batch, the product is OpenBLAS's x @ W.
"""

from __future__ import annotations

import numpy as np

from . import blas, pool


def product(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """x @ weight, x (N, D), weight (D, M) -> a new C-contiguous (N, M) array in their dtype, computed in
    parts of weight's rows where the pool can split (module doc); ``x @ weight`` elsewhere."""
    n, m = len(x), weight.shape[1]
    if n < 2 or weight.size < pool.MIN_ELEMENTS:  # (batch 1 first: its 54,000 updates an epoch ask)
        return x @ weight
    unit = pool.row_unit(m)
    edges = pool.cuts(weight.size, unit)
    rows = [edge // m for edge in edges]
    if len(rows) < 3 or n > max(b - a for a, b in zip(rows, rows[1:])) or not _fits(x, weight):
        return x @ weight
    out = np.empty((n, m), dtype=x.dtype)
    partial = {first: out if first == 0 else np.empty((n, m), dtype=x.dtype) for first in rows[:-1]}

    def calls(start: int, stop: int) -> list:
        first, last = start // m, stop // m
        if first not in partial or rows[rows.index(first) + 1] != last:  # cut elsewhere: no buffer is its
            raise _CutElsewhere
        return [blas.gemm_nn_rows_call(x, weight, partial[first], first, last)]

    try:
        pool.split_calls(weight.size, calls, unit, timing_key="forward")
    except _CutElsewhere:  # the pool's thread count changed since ``cuts``: the same parts, in turn
        _in_turn(calls, edges)
    for first in rows[1:-1]:
        out += partial[first]
    return out


class _CutElsewhere(Exception):
    """A part's range is not one ``cuts`` gave (the pool's thread count changed meanwhile)."""


def _in_turn(calls, edges: list[int]) -> None:
    """Every part's product on this thread, BLAS on one thread, as a part computes it."""
    with blas.threads(1):
        for start, stop in zip(edges, edges[1:]):
            pool.run(calls(start, stop))


def _fits(x: np.ndarray, weight: np.ndarray) -> bool:
    """Arrays a part's ``gemm`` reads in place: float32 or float64 of one dtype, C-contiguous, aligned, with an
    output of ``blas.MIN_SIZE`` elements or more."""
    return (x.ndim == 2 and weight.ndim == 2 and x.shape[1] == weight.shape[0] and x.dtype == weight.dtype
            and len(x) * weight.shape[1] >= blas.MIN_SIZE  # each part's product a BLAS one (blas.writes_in_place)
            and x.dtype in (np.float32, np.float64) and x.flags.c_contiguous and weight.flags.c_contiguous
            and x.flags.aligned and weight.flags.aligned and blas.numpy_blas_library() is not None)
