"""A batch-1 momentum update's passes over the first layer, its arrays on a cache line or 16, 32, 48 bytes past one.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/alignment.py [--rounds 6] [--updates 3000]

malloc aligns a block to 16 bytes, so where a weight array's first element falls against a 64-byte
cache line depends on the heap (sgdcli/engine/allocator.py). This times the three passes a batch-1
SGD-momentum update makes over the 784 x 512 float32 first layer of benchmarks/bench.py, through the
engine's own calls (the ones ``SGD`` prepares) and on one BLAS thread as the training loop runs batch 1:
the forward product x @ W, the velocity's rank-1 update v' = v - (lr / m) x dzᵀ (BLAS ger) and
(w, v) = (w + m v', m v') (BLAS rotm: ``SGD._rank_one_calls``), with W and v placed at each offset from a
cache line. Inputs are Fashion-MNIST training images when the Debian package is there, else random images
with the same share of zeros.

It first checks that every placement computes the same bits (the same calls on the same values), then
times each placement round by round in a rotating order and prints the median per pass and in all.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from bench_common import DATA, experiment

from sgdcli.engine import blas
from sgdcli.engine.allocator import ALIGNMENT
from sgdcli.engine.gradients import OuterProduct
from sgdcli.engine.optimizers import SGD
from sgdcli.training import build

D, M = 784, 512
OFFSETS = (0, 16, 32, 48)  # bytes past a cache line; malloc gives any of them


def placed(values: np.ndarray, offset: int) -> np.ndarray:
    """A copy of values whose first element lies `offset` bytes past a multiple of ALIGNMENT."""
    buffer = np.empty(values.nbytes + 2 * ALIGNMENT, dtype=np.uint8)
    start = -buffer.ctypes.data % ALIGNMENT + offset
    array = buffer[start : start + values.nbytes].view(values.dtype).reshape(values.shape)
    array[...] = values
    return array


def images(count: int) -> np.ndarray:
    try:
        config = experiment({"type": "sgd", "learning_rate": 0.001, "momentum": 0.9}, {"mode": "sgd"}, DATA)
        return build.prepare_data(config, build.Rngs.from_seed(0)).x_train[:count]
    except Exception:  # no Fashion-MNIST here: random pixels, half of them 0 as in the real images
        rng = np.random.default_rng(0)
        return (rng.random((count, D)) * (rng.random((count, D)) < 0.5)).astype(np.float32)


def updates(x: np.ndarray, dz: np.ndarray, weight: np.ndarray, velocity: np.ndarray) -> np.ndarray:
    """Seconds spent in each of the three passes, summed over the rows of x (the calls are prepared untimed)."""
    spent = np.zeros(3)
    clock = time.perf_counter
    optimizer, scratch = SGD(momentum=0.9), np.empty_like(weight)
    for row in range(len(x)):
        xb = x[row : row + 1]
        calls = optimizer._calls(weight, OuterProduct(xb[0], dz[row]), {"velocity": velocity}, 0.001, scratch)
        names = [getattr(function, "__name__", "") for function, _ in calls]
        if len(calls) != 2 or "ger" not in names[0] or "rotm" not in names[1]:
            raise SystemExit(f"SGD prepares {names} here, not ger then rotm: not the update this script times")
        (ger, ger_arguments), (rotm, rotm_arguments) = calls
        start = clock()
        xb @ weight
        product = clock()
        ger(*ger_arguments)
        rank_one = clock()
        rotm(*rotm_arguments)
        spent += (product - start, rank_one - product, clock() - rank_one)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--updates", type=int, default=3000)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    x = images(args.updates)
    dz = (rng.standard_normal((args.updates, M)) * 1e-3).astype(np.float32)
    weight0 = (rng.standard_normal((D, M)) * 0.05).astype(np.float32)
    arrays = {offset: (placed(weight0, offset), placed(np.zeros_like(weight0), offset)) for offset in OFFSETS}
    with blas.threads(1):
        results = {}
        for offset, (weight, velocity) in arrays.items():
            updates(x[:50], dz, weight, velocity)
            results[offset] = weight.copy()
        reference = results[0]
        if not all(np.array_equal(reference, other) for other in results.values()):
            raise SystemExit("the placements computed different weights: not the same computation")
        print(f"same computation: {len(OFFSETS)} placements give identical weights after 50 updates\n")
        times: dict[int, list[np.ndarray]] = {offset: [] for offset in OFFSETS}
        for r in range(args.rounds):
            order = OFFSETS[r % len(OFFSETS):] + OFFSETS[: r % len(OFFSETS)]
            for offset in order:
                times[offset].append(updates(x, dz, *arrays[offset]) / len(x))
    ger_pass, rotm_pass = "v' = v - (lr/m) x dzᵀ", "w, v = w + m v', m v'"
    print(f"{'offset from a cache line':>26}  {'x @ W':>8}  {ger_pass:>22}  {rotm_pass:>22}  {'all three':>10}")
    for offset, rounds in times.items():
        median = [statistics.median(r[k] for r in rounds) * 1e6 for k in range(3)]
        total = statistics.median(float(r.sum()) for r in rounds) * 1e6
        print(f"{offset:>23} B  {median[0]:6.1f} us  {median[1]:19.1f} us  {median[2]:19.1f} us  {total:7.1f} us")


if __name__ == "__main__":
    main()
