"""Measures changes to sgdcli/training/loop.py's loop that bench.py suggests, without editing loop.py.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/train_variants.py [--epochs N] [--batch 128]

`loop` below is loop.py's `train_epochs` for gradient optimizers, cut to one epoch and with
the batch gather and the gradient check made swappable. Each variant trains its own copy of
the same model from the same weights on the same batch order; their epochs are interleaved
round by round, and each is compared with the unchanged loop run in the same round.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import CASES, DATA, SgdcliRun, experiment

from sgdcli.training import build
from sgdcli.training.loop import _check_gradients


def fancy(x, index, buffer):  # loop.py today: x[index], a new array per batch
    return x[index]


def take_into(x, index, buffer):  # np.take into one preallocated batch buffer
    return np.take(x, index, axis=0, out=buffer[: len(index)])


def sorted_fancy(x, index, buffer):  # the same samples, gathered in memory order
    return x[np.sort(index)]


def loop(run: SgdcliRun, order: np.ndarray, gather, check: bool) -> float:
    """One epoch of loop.py's loop (gradient optimizers) with `gather` and the gradient check swappable."""
    p = run.problem
    model, x, y, size = p.model, p.x, p.y, p.batch_size
    params = model.parameters()
    buffer = np.empty((size,) + x.shape[1:], x.dtype)
    start_time = time.perf_counter()
    for start in range(0, len(x), size):
        index = order[start:start + size]
        if gather is sorted_fancy:
            index = np.sort(index)
        xb, yb = gather(x, index, buffer), y[index]
        outputs, caches = model.forward(xb, training=True, rng=run.rngs.dropout)
        value, dout = p.loss.value_and_grad(outputs, yb)
        if not math.isfinite(value):
            raise RuntimeError("diverged")
        grads = model.backward(dout, caches)
        if check:
            _check_gradients(grads, run.position)
        p.optimizer.step(params, grads, p.schedule(run.position.updates))
        run.position.updates += 1
    return time.perf_counter() - start_time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--optimizer", choices=list(CASES), default="sgd-momentum")
    args = parser.parse_args()
    config = experiment(CASES[args.optimizer], {"mode": "minibatch", "size": args.batch}, DATA)
    prepared = build.prepare_data(config, build.Rngs.from_seed(0))
    x, y = prepared.x_train, prepared.y_train
    variants = {
        "loop.py today (x[index], gradient check)": (fancy, True),
        "np.take(x, index, axis=0, out=buffer)": (take_into, True),
        "x[np.sort(index)]": (sorted_fancy, True),
        "no gradient check (its cost, not a proposal)": (fancy, False),
    }
    runs = {name: SgdcliRun(config, x, y) for name in variants}
    times: dict[str, list[float]] = {name: [] for name in variants}
    order_rng = np.random.default_rng(1)
    for r in range(args.epochs):
        order = order_rng.permutation(len(x))
        names = list(variants)
        names = names[r % len(names):] + names[: r % len(names)]
        for name in names:
            times[name].append(loop(runs[name], order, *variants[name]))
    base = "loop.py today (x[index], gradient check)"
    updates = math.ceil(len(x) / args.batch)
    print(f"batch {args.batch}, {args.optimizer}, {args.epochs} interleaved epochs of {updates} updates")
    for name in variants:
        ratios = [a / b for a, b in zip(times[name], times[base])]
        median = statistics.median(times[name])
        print(f"  {name:45s} {median:.3f} s/epoch ({median / updates * 1e6:.0f} µs/update), "
              f"vs today {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
