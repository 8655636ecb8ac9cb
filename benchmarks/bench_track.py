"""The cost of layer statistics (`training.track: [grad_norm, weight_norm, update_ratio]`), issue 14 item 3.

    flock /tmp/sgdcli-heavy.lock python benchmarks/bench_track.py [--rounds 15] [--no-fashion]

For each case, two copies of the same Problem (`sgdcli.training.session`'s build: same weights, same
batch order) train one epoch per round through `train_epochs`, one with the LayerTracker as its
observer plus the epoch's statistics row, one without; the order alternates every round. Reported:
median CPU seconds (this process, all its threads: less disturbed by other processes on a shared
machine than wall time) per epoch of each and the median of the per-round ratios.
Target: tracked / plain ≤ 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from sgdcli.config.loading import load_config
from sgdcli.training import build, track
from sgdcli.training.loop import Position, train_epochs
from sgdcli.training.session import _build

REPO = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
TARGET = 1.05


def cases(fashion: bool) -> dict[str, dict]:
    digits = load_config(REPO / "configs" / "digits-mlp.yaml").to_dict()
    out = {"digits-mlp, batch 32": digits,
           "digits-mlp, batch 1": {**digits, "training": {**digits["training"], "batch": {"mode": "sgd"}}}}
    if fashion and FASHION.is_dir():
        out["fashion-mlp, batch 128"] = load_config(REPO / "configs" / "fashion-mlp.yaml").to_dict()
    return out


class Runner:
    def __init__(self, config, tracked: bool) -> None:
        _, self.problem, self.rngs = _build(config)
        self.position = Position()
        params = self.problem.model.parameters()
        self.tracker = (track.build_tracker(list(track.STATISTICS), params, self.problem.updates_per_epoch, True)
                        if tracked else None)

    def epoch(self) -> float:
        started = time.process_time()
        epochs = train_epochs(self.problem, self.position, self.position.epoch + 1, self.rngs.shuffle,
                              self.rngs.dropout, observer=self.tracker)
        for _ in epochs:
            if self.tracker is not None:
                self.tracker.epoch_row(self.problem.model.parameters())
        return time.process_time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31, help="rounds of the digits cases")
    parser.add_argument("--fashion-rounds", type=int, default=7)
    parser.add_argument("--no-fashion", action="store_true")
    args = parser.parse_args()
    worst = 0.0
    print("| case | plain CPU s/epoch | tracked CPU s/epoch | tracked / plain, median (min-max) |")
    print("| --- | --- | --- | --- |")
    for name, raw in cases(not args.no_fashion).items():
        config = load_config(raw)
        plain, tracked = Runner(config, False), Runner(config, True)
        plain.epoch(), tracked.epoch()  # warm-up
        times = {"plain": [], "tracked": []}
        for round_ in range(args.fashion_rounds if name.startswith("fashion") else args.rounds):
            pair = [("plain", plain), ("tracked", tracked)]
            for label, runner in (pair if round_ % 2 else pair[::-1]):
                times[label].append(runner.epoch())
        ratios = [t / p for t, p in zip(times["tracked"], times["plain"])]
        ratio = statistics.median(ratios)
        worst = max(worst, ratio)
        print(f"| {name} | {statistics.median(times['plain']):.4f} | {statistics.median(times['tracked']):.4f} | "
              f"{ratio:.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |")
    print(f"\nworst median ratio {worst:.3f}; target <= {TARGET}: {'met' if worst <= TARGET else 'NOT met'}")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
