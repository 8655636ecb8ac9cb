"""Peak memory of `sgdcli predict` on a 1,000,000-row CSV (issue 12: at most 500 MB).

Writes a CSV of ROWS rows (an id, FEATURES numeric columns and a class label) into a temporary
folder, trains a small classifier on its first 5,000 rows, then runs `sgdcli predict RUN --data
big.csv --out pred.csv --keep id` alone in a child process and reads the kernel's high-water mark
of its resident memory (ru_maxrss). Run it under the machine-wide lock:

    flock /tmp/sgdcli-heavy.lock python benchmarks/predict_memory.py [--rows N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

FEATURES = 10
TARGET_MB = 500
PEAK_CHILD = r"""
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
print(code, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    """id, f0..f9, label: the label is which of three directions the features point to most."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(FEATURES, 3))
    header = "id," + ",".join(f"f{i}" for i in range(FEATURES)) + ",label\n"
    with open(path, "w") as handle:
        handle.write(header)
        for start in range(0, rows, 100_000):
            x = rng.normal(size=(min(100_000, rows - start), FEATURES))
            labels = np.array(["north", "east", "south"])[(x @ directions).argmax(axis=1)]
            lines = [f"{start + i}," + ",".join(f"{v:.5f}" for v in row) + f",{label}\n"
                     for i, (row, label) in enumerate(zip(x.tolist(), labels))]
            handle.write("".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        big = folder / "big.csv"
        write_csv(big, args.rows)
        with open(big) as handle:
            (folder / "train.csv").write_text("".join(next(handle) for _ in range(5_001)))
        config = {"name": "predict-bench", "seed": 0,
                  "data": {"source": "csv", "path": "train.csv", "target": "label", "features": [f"f{i}" for i in range(FEATURES)]},
                  "model": {"layers": [{"type": "dense", "units": 64, "activation": "relu"}, {"type": "dense", "units": 3}]},
                  "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "learning_rate": 0.01},
                  "training": {"epochs": 5, "batch": {"mode": "minibatch", "size": 64}}}
        (folder / "c.yaml").write_text(yaml.safe_dump(config))
        sgdcli = [sys.executable, "-m", "sgdcli"]
        trained = subprocess.run([*sgdcli, "train", str(folder / "c.yaml"), "--runs-dir", str(folder / "runs")],
                                 capture_output=True, text=True, check=True)
        run_dir = trained.stdout.strip().splitlines()[-1]
        out = folder / "pred.csv"
        command = [*sgdcli, "predict", run_dir, "--data", str(big), "--out", str(out), "--keep", "id"]
        code, seconds, peak_kb = subprocess.run([sys.executable, "-c", PEAK_CHILD, *command], capture_output=True,
                                                text=True, check=True).stdout.split()
        with open(out) as handle:
            written = sum(1 for _ in handle) - 1
        peak = int(peak_kb) / 1024
        print(f"rows {args.rows:,}  csv {big.stat().st_size / 1e6:.0f} MB  exit {code}  written {written:,}  "
              f"{float(seconds):.1f} s  peak RSS {peak:.0f} MB (target <= {TARGET_MB} MB): "
              f"{'met' if peak <= TARGET_MB and written == args.rows and code == '0' else 'NOT MET'}")


if __name__ == "__main__":
    main()
