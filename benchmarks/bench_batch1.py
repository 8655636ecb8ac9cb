"""The batch-1 race of benchmarks/bench.py: pure SGD with momentum, seconds per update for sgdcli
(with and without its subnormal flush) and PyTorch, fresh and after several thousand updates."""

from __future__ import annotations

import math
from pathlib import Path

from bench_common import (
    Bench,
    Race,
    SgdcliRun,
    TorchRun,
    experiment,
    rotate,
    subnormal_fraction,
)


def race_batch_one(updates: int, warm: int, rounds: int, x, y, data_dir: Path, torch) -> tuple[Race, Race, dict]:
    """Pure SGD with momentum: seconds per update when fresh, and after `warm` more updates.

    One "epoch" here is the first `updates` training images, one update each, so an epoch of
    train_epochs is exactly the timed stretch. Also runs sgdcli with its subnormal flush off.
    """
    optimizer = {"type": "sgd", "learning_rate": 0.001, "momentum": 0.9}
    config = experiment(optimizer, {"mode": "sgd"}, data_dir)
    xs, ys = x[:updates], y[:updates]
    ours, unflushed = SgdcliRun(config, xs, ys), SgdcliRun(config, xs, ys)
    unflushed.problem.optimizer.FLUSH_EVERY = 1 << 62  # never: the subnormals stay
    theirs = TorchRun(torch, ours, optimizer, xs, ys) if torch else None
    fresh, later = Race("batch 1 (fresh)", "update"), Race(f"batch 1 (after {warm:,} updates)", "update")

    def one_round(race: Race | None, r: int) -> None:
        order = ours.next_order()
        runs = [("sgdcli", ours.epoch), ("sgdcli, no flush", unflushed.epoch)]
        if theirs:
            runs.append(("torch", lambda: theirs.epoch(order, 1)))
        for who, run in rotate(runs, r):
            seconds = run()
            if race is not None:
                race.add(who, seconds / updates)

    one_round(fresh, 0)
    for r in range(max(1, math.ceil(warm / updates))):
        one_round(None, r)
    for r in range(rounds):
        one_round(later, r)
    subnormals = {"sgdcli": subnormal_fraction(ours.problem.optimizer.state_dict()["velocity/0.weight"]),
                  "sgdcli, no flush": subnormal_fraction(unflushed.problem.optimizer.state_dict()["velocity/0.weight"])}
    if theirs:
        buffer = theirs.optimizer.state[theirs.net[0].weight]["momentum_buffer"]
        subnormals["torch"] = subnormal_fraction(buffer.numpy())
    later.note = ("first-layer momentum entries that are subnormal floats: "
                  + ", ".join(f"{k} {v:.0%}" for k, v in subnormals.items()))
    return fresh, later, subnormals


def run_races(bench: Bench, updates: int, warm: int) -> list[Race]:
    print(f"racing batch 1 ({updates:,} updates per stretch, {warm:,} between) ...", flush=True)
    fresh, later, _ = race_batch_one(updates, warm, max(2, bench.rounds // 2 + 1), bench.x, bench.y, bench.data_dir,
                                     bench.torch)
    return [fresh, later]
