"""CSV loading speed and memory (issue 11, item 8): sgdcli's CSV loader on two generated files.

    flock /tmp/sgdcli-heavy.lock python benchmarks/csv_load.py [--keep DIR]

- tall: 310,000 rows x 100 numbers (d.dddd) + a class column (c0..c9), about 218 MB;
  target: loaded in <= 6 s with a peak RSS <= 1.2 GB;
- wide: 50 rows x 100,000 numbers + a class column, about 36 MB; target: <= 5 s.

Each file is written into a temporary folder and loaded by `sgdcli.data.csvfile.load_csv` in a
child process of its own, which reports the load's wall time and its own peak RSS (ru_maxrss,
which includes Python, NumPy and pyarrow themselves: about 60 MB). Exit status 1 if a target is
missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CASES = {
    # name: (rows, columns, seconds target, peak RSS target in bytes or None)
    "tall": (310_000, 100, 6.0, 1.2e9),
    "wide": (50, 100_000, 5.0, None),
}

CHILD = """
import json, resource, sys, time
from sgdcli.data.csvfile import load_csv
started = time.perf_counter()
data = load_csv(sys.argv[1], "class", None, classification=True, progress=lambda done, size: None)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "shape": list(data.x.shape), "classes": len(data.class_names)}))
"""


def write_csv(path: Path, rows: int, columns: int, seed: int = 0, chunk: int = 10_000) -> None:
    """Numbers d.dddd and a class cN, built as bytes with NumPy (a few seconds for 218 MB)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(chunk, 2_000_000 // columns))
    with open(path, "wb") as handle:
        handle.write((",".join([f"f{i}" for i in range(columns)] + ["class"]) + "\n").encode())
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            digits = rng.integers(0, 10, size=(n, columns, 5), dtype=np.uint8) + ord("0")
            cells = np.empty((n, columns, 7), np.uint8)
            cells[:, :, 0] = digits[:, :, 0]
            cells[:, :, 1] = ord(".")
            cells[:, :, 2:6] = digits[:, :, 1:]
            cells[:, :, 6] = ord(",")
            tail = np.empty((n, 3), np.uint8)
            tail[:, 0], tail[:, 1], tail[:, 2] = ord("c"), rng.integers(0, 10, n) + ord("0"), ord("\n")
            handle.write(np.concatenate([cells.reshape(n, -1), tail], axis=1).tobytes())


def measure(path: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"loading {path} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="write the files here and keep them (default: a temporary folder)")
    args = parser.parse_args()
    missed = False
    with tempfile.TemporaryDirectory(prefix="sgdcli-csv-") as temp:
        folder = args.keep or Path(temp)
        folder.mkdir(parents=True, exist_ok=True)
        print("| file | size | shape | load seconds | target | peak RSS | target |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, (rows, columns, seconds_target, rss_target) in CASES.items():
            path = folder / f"{name}.csv"
            write_csv(path, rows, columns)
            result = measure(path)
            ok_time = result["seconds"] <= seconds_target
            ok_rss = rss_target is None or result["peak_rss"] <= rss_target
            missed |= not (ok_time and ok_rss)
            rss_goal = "–" if rss_target is None else f"≤ {rss_target / 1e9:.1f} GB"
            print(f"| {name} | {path.stat().st_size / 1e6:.0f} MB | {result['shape'][0]:,} × {result['shape'][1]:,} "
                  f"| {result['seconds']:.2f} s{'' if ok_time else ' MISSED'} | ≤ {seconds_target:.0f} s "
                  f"| {result['peak_rss'] / 1e9:.2f} GB{'' if ok_rss else ' MISSED'} | {rss_goal} |", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
