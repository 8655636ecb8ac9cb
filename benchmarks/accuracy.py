"""Accuracy targets of the shipped configs, measured the way a user gets them: train, then eval.

    python benchmarks/accuracy.py            # digits, iris, diabetes, quickstart, fashion-mlp, the two CNNs (~25 minutes)
    python benchmarks/accuracy.py --all      # also the digits batch modes and the Fashion-MNIST batch-mode configs
    python benchmarks/accuracy.py --only digits-cnn.yaml --only fashion-cnn.yaml    # just these configs

Prints a markdown table (config, split, metric, value, target, met?, training seconds per epoch)
and exits 1 if a target is missed. Fashion-MNIST rows are skipped when the dataset is absent
(bash benchmarks/setup.sh installs it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from sgdcli import api

REPO = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")

# (config, overrides, split, metric, target or None, needs Fashion-MNIST, only with --all)
CASES = [
    ("quickstart.yaml", [], "val", "accuracy", None, False, False),
    ("digits-mlp.yaml", [], "val", "accuracy", 0.95, False, False),
    ("iris.yaml", [], "val", "accuracy", 0.93, False, False),
    ("diabetes.yaml", [], "val", "r2", 0.40, False, False),
    ("fashion-mlp.yaml", [], "test", "accuracy", 0.89, True, False),
    ("digits-cnn.yaml", [], "val", "accuracy", 0.98, False, False),
    ("fashion-cnn.yaml", [], "test", "accuracy", 0.92, True, False),
    ("digits-mlp.yaml", ["training.batch.mode=sgd"], "val", "accuracy", None, False, True),
    ("digits-mlp.yaml", ["training.batch.mode=full"], "val", "accuracy", None, False, True),
    ("fashion-batch-modes/sgd.yaml", [], "test", "accuracy", None, True, True),
    ("fashion-batch-modes/minibatch.yaml", [], "test", "accuracy", None, True, True),
    ("fashion-batch-modes/full.yaml", [], "test", "accuracy", None, True, True),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="also the batch-mode runs (several minutes more)")
    parser.add_argument("--only", action="append", default=[], metavar="CONFIG",
                        help="run only this config (a name in configs/, repeatable)")
    args = parser.parse_args()
    rows, missed = [], 0
    with tempfile.TemporaryDirectory() as runs:
        for name, overrides, split, metric, target, fashion, extra in CASES:
            if (extra and not args.all and not args.only) or (args.only and name not in args.only):
                continue
            label = " ".join([name, *(f"--set {o}" for o in overrides)])
            if fashion and not FASHION.is_dir():
                rows.append(f"| `{label}` | {split} | {metric} | skipped: Fashion-MNIST not installed | | | |")
                continue
            result = api.train(api.load_config(REPO / "configs" / name, overrides), runs_dir=runs)
            report = api.evaluate(result.run_dir, split=split)
            value = report[metric]
            met = "" if target is None else ("met" if value >= target else "NOT met")
            missed += met == "NOT met"
            per_epoch = result.summary["seconds_per_epoch"]
            rows.append(f"| `{label}` | {split} | {metric} | {value:.4f} | {'' if target is None else f'≥ {target}'}"
                        f" | {met} | {per_epoch:.3g} s |")
            print(rows[-1], file=sys.stderr, flush=True)
    print("| config | split | metric | value | target | | training per epoch |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
