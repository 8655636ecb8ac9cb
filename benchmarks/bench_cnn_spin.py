"""Which OpenBLAS idle spin suits conv models: the CNN race's two networks (bench_cnn.py) trained at each
OPENBLAS_THREAD_TIMEOUT value, one fresh process per value and round (OpenBLAS reads the variable once,
when NumPy loads), in alternating order, so that the VM's drift hits every value alike.

    flock /tmp/sgdcli-heavy.lock python benchmarks/bench_cnn_spin.py [--values 16,18,20] [--rounds 3]

Prints ms per update (the median of --rounds processes, each timing --updates updates after a
warm-up) for the plain and the batch-norm network. engine/spin.py's CONV_SPIN is the value chosen.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent


def child(updates: int) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    import bench_cnn  # loads NumPy through engine/spin.py: the user's (here: our) variable wins

    from sgdcli.engine.allocator import retain_freed_memory
    from sgdcli.engine.spin import loaded_spin

    retain_freed_memory()  # as train_epochs does
    x, y = bench_cnn.load_data()
    times = []
    for batch_norm in (False, True):
        warm, count = 20 * bench_cnn.BATCH, updates * bench_cnn.BATCH
        ours = bench_cnn.Ours(bench_cnn.experiment(batch_norm), x[:warm], y[:warm])
        ours.epoch()
        ours.problem.x, ours.problem.y = x[:count], y[:count]
        times.append(ours.epoch() / updates * 1e3)
    print(loaded_spin(), *(f"{t:.2f}" for t in times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--values", default="14,16,18,20,22,28")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.updates)
    values = args.values.split(",")
    times: dict[str, list[list[float]]] = {value: [] for value in values}
    for r in range(args.rounds):
        for value in values if r % 2 == 0 else values[::-1]:
            environ = {**os.environ, "OPENBLAS_THREAD_TIMEOUT": value}
            result = subprocess.run([sys.executable, __file__, "--child", "--updates", str(args.updates)],
                                    env=environ, capture_output=True, text=True, check=True)
            read, plain, norm = result.stdout.split()
            if read != value:
                sys.exit(f"ABORT: OpenBLAS read OPENBLAS_THREAD_TIMEOUT={read}, expected {value}")
            times[value].append([float(plain), float(norm)])
            print(f"  round {r + 1}: 2^{value}: plain {plain} ms, batch norm {norm} ms an update", flush=True)
    print("\n| OPENBLAS_THREAD_TIMEOUT | plain, ms an update | batch norm, ms an update |\n| --- | --- | --- |")
    for value, rows in times.items():
        cells = [f"{statistics.median(c):.1f} ({min(c):.1f}–{max(c):.1f})" for c in zip(*rows)]
        print(f"| {value} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
