"""The full-batch race of benchmarks/bench.py: plain SGD on all 60,000 images at once, seconds per
update for sgdcli and PyTorch. (Its memory, each framework alone in a process, is in bench_memory.py.)"""

from __future__ import annotations

from pathlib import Path

from bench_common import (
    Bench,
    PlacementProbe,
    Race,
    SgdcliRun,
    TorchRun,
    experiment,
    timed_round,
)


def race_full_batch(rounds: int, x, y, data_dir: Path, torch) -> Race:
    optimizer = {"type": "sgd", "learning_rate": 0.5}
    config = experiment(optimizer, {"mode": "full"}, data_dir)
    ours = SgdcliRun(config, x, y)
    theirs = TorchRun(torch, ours, optimizer, x, y) if torch else None
    race = Race(f"full batch ({len(x):,} images), sgd", "update")
    ours.epoch()  # one warm-up update each: the first pays for BLAS buffers and fresh pages
    if theirs:
        theirs.epoch(None, len(x))
    probe = PlacementProbe()
    for r in range(rounds):
        runs = [("sgdcli", ours.epoch)]
        if theirs:
            runs.append(("torch", lambda: theirs.epoch(None, len(x))))
        race.add_round(*timed_round(runs, r, probe))
    return race


def run_races(bench: Bench) -> list[Race]:
    print("racing full batch ...", flush=True)
    return [race_full_batch(max(2, bench.rounds // 2 + 1), bench.x, bench.y, bench.data_dir, bench.torch)]
