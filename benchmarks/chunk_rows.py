"""A full-batch gradient, whole against chunks of rows (sgdcli/engine/accumulate.py), interleaved in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/chunk_rows.py [--rounds 6] [--rows 1024 2048 4096 8192]

The 784-512-10 ReLU MLP of benchmarks/bench.py on the 60,000 Fashion-MNIST training images, float32:
one forward and backward pass over the whole batch (as the training loop ran a full batch before
chunking), against ``accumulate.value_and_gradients`` with each chunk size. It first checks that both
give the same loss and gradient (relative differences below 1e-4: float32 sums in another order),
then times them round by round in a rotating order and prints the median and spread per variant.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from bench_common import DATA, SgdcliRun, experiment

from sgdcli.engine import accumulate
from sgdcli.engine.gradients import as_array
from sgdcli.training import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--rows", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    args = parser.parse_args()
    config = experiment({"type": "sgd", "learning_rate": 0.5}, {"mode": "full"}, DATA)
    prepared = build.prepare_data(config, build.Rngs.from_seed(config.seed))
    x, y = prepared.x_train, prepared.y_train
    problem = SgdcliRun(config, x, y).problem
    model, loss = problem.model, problem.loss
    into = {key: np.empty_like(p) for key, p in model.parameters().items()}

    def whole() -> tuple[float, dict[str, np.ndarray]]:
        outputs, caches = model.forward(x, training=True)
        value, dout = loss.value_and_grad(outputs, y)
        return value, {key: as_array(g) for key, g in model.backward(dout, caches, factored=True).items()}

    def chunks(rows: int) -> tuple[float, dict[str, np.ndarray]]:
        return accumulate.value_and_gradients(model, loss, x, y, None, into, chunk_rows=rows), into

    value, grads = whole()
    for rows in args.rows:
        chunk_value, chunk_grads = chunks(rows)
        worst = max(float(np.abs(chunk_grads[k] - g).max() / np.abs(g).max()) for k, g in grads.items())
        print(f"same computation, chunks of {rows}: loss differs by {abs(chunk_value - value) / abs(value):.1e}, "
              f"gradients by {worst:.1e} of their largest entry")
        if abs(chunk_value - value) > 1e-4 * abs(value) or worst > 1e-4:
            raise SystemExit("chunked and whole gradients differ: not timing")
    variants = {"whole batch": whole, **{f"chunks of {rows}": (lambda rows=rows: chunks(rows)) for rows in args.rows}}
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    base = times["whole batch"]
    for name, seconds in times.items():
        ratios = [s / b for s, b in zip(seconds, base)]
        print(f"{name:16s} {statistics.median(seconds) * 1e3:7.1f} ms median ({min(seconds) * 1e3:.0f}-"
              f"{max(seconds) * 1e3:.0f}); / whole per round {statistics.median(ratios):.3f} "
              f"({min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
