"""Training while other processes keep the cores busy, with and without each BLAS thread pinned to a core of
its own (sgdcli/engine/placement.py): ms an update, run after run, the two ways alternating.

    python benchmarks/busy_placement.py --busy 2 --runs 8     # two `while True: pass` processes beside each run
    python benchmarks/busy_placement.py --together --runs 3   # two trainings at once (a --jobs 2 sweep's case)

Each run is a fresh process (the scheduler's placement is decided anew): a 784-1024-512-512-10 network with
momentum at batch 64 on Fashion-MNIST, OpenBLAS loaded as `sgdcli train` loads it, `--updates` updates; it
prints the mean ms an update over each 100 after the first 100 (data loading, warm-up). Without pins a run
can keep both BLAS threads on one core for good: 113-199 ms against 15-28 (README Performance, session 14).
Both ways give the same bits (tests/test_placement.py); this only times them. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = r"""
import sys, time
from sgdcli.engine import spin
spin.load_numpy(False, spin.kernel_for(False, False))
from sgdcli import api
from sgdcli.config.loading import load_config
from sgdcli.engine import pool
if sys.argv[2] == "unpinned":
    pool.PLACEMENT.off = True
config = {"name": "busy", "seed": 0,
          "data": {"source": "idx", "path": "/usr/share/datasets/fashion-mnist", "validation": 0.1},
          "model": {"layers": [{"type": "dense", "units": 1024, "activation": "relu"},
                               {"type": "dense", "units": 512, "activation": "relu"},
                               {"type": "dense", "units": 512, "activation": "relu"}, {"type": "dense", "units": 10}]},
          "loss": {"type": "cross_entropy"}, "optimizer": {"type": "sgd", "learning_rate": 0.01, "momentum": 0.9},
          "training": {"epochs": 1, "batch": {"mode": "minibatch", "size": 64}}}
updates = int(sys.argv[1])

class Stop:
    def __init__(self): self.done, self.times = 0, []
    def start(self, info): pass
    def epoch(self, row): pass
    def warn(self, message): pass
    def batch(self, done, total, loss):
        self.done += 1
        if self.done % 100 == 0:
            self.times.append(time.perf_counter())
    def __call__(self): return self.done >= updates

stop = Stop()
api.train(load_config(config), runs_dir=sys.argv[3], reporter=stop, should_stop=stop)
print(" ".join(f"{(b - a) * 10:.1f}" for a, b in zip(stop.times, stop.times[1:])))
"""


def run(way: str, updates: int, busy: int, together: bool, folder: Path) -> list[str]:
    """One run (two at once with `together`) beside `busy` busy loops: each run's ms an update per 100."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        trainings = [subprocess.Popen([sys.executable, "-c", RUN, str(updates), way, str(folder)],
                                      stdout=subprocess.PIPE, text=True) for _ in range(2 if together else 1)]
        return [training.communicate()[0].strip() for training in trainings]
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes beside each run (default 2)")
    parser.add_argument("--together", action="store_true", help="two trainings at once instead (no busy loops)")
    parser.add_argument("--runs", type=int, default=6, help="runs each way (default 6)")
    parser.add_argument("--updates", type=int, default=300, help="updates a run (default 300)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for number in range(args.runs):
            for way in ("unpinned", "pinned"):
                times = run(way, args.updates, 0 if args.together else args.busy, args.together, Path(folder))
                print(f"run {number + 1} {way:>8}: ms an update per 100 updates: {' | '.join(times)}", flush=True)


if __name__ == "__main__":
    main()
