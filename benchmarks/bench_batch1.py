"""The batch-1 races of benchmarks/bench.py: one sample per update, seconds per update for sgdcli and
PyTorch, fresh and after several thousand updates (subnormal momentum included), for plain SGD, SGD
with momentum (also sgdcli with its subnormal flush off), Adam and RMSProp (issue 16)."""

from __future__ import annotations

import math
from pathlib import Path

from bench_common import (
    Bench,
    PlacementProbe,
    Race,
    SgdcliRun,
    TorchRun,
    experiment,
    subnormal_fraction,
    timed_round,
)

# Plain SGD and momentum as in configs/fashion-batch-modes (step sizes that train at batch 1);
# Adam and RMSProp at their usual 1e-3.
BATCH1_CASES = {
    "sgd": {"type": "sgd", "learning_rate": 0.005},
    "sgd-momentum": {"type": "sgd", "learning_rate": 0.001, "momentum": 0.9},
    "adam": {"type": "adam", "learning_rate": 0.001},
    "rmsprop": {"type": "rmsprop", "learning_rate": 0.001},
}
STATE = {"sgd-momentum": ("velocity", "momentum_buffer"), "adam": ("first_moment", "exp_avg"),
         "rmsprop": ("mean_square", "square_avg")}  # sgdcli's state name, torch's


def race_batch_one(case: str, updates: int, warm: int, rounds: int, x, y, data_dir: Path, torch
                   ) -> tuple[Race, Race, dict]:
    """Seconds per update over the first `updates` updates (fresh), and over stretches of as many
    after those and `warm` more (rounded up to whole stretches).

    One "epoch" here is the first `updates` training images, one update each, so an epoch of
    train_epochs is exactly the timed stretch. With momentum, sgdcli also runs with its subnormal
    flush off.
    """
    warm_rounds = math.ceil(warm / updates)
    optimizer = BATCH1_CASES[case]
    config = experiment(optimizer, {"mode": "sgd"}, data_dir)
    xs, ys = x[:updates], y[:updates]
    ours = SgdcliRun(config, xs, ys)
    unflushed = SgdcliRun(config, xs, ys) if case == "sgd-momentum" else None
    if unflushed:
        unflushed.problem.optimizer.FLUSH_EVERY = 1 << 62  # never: the subnormals stay
    theirs = TorchRun(torch, ours, optimizer, xs, ys) if torch else None
    fresh = Race(f"batch 1 (fresh), {case}", "update")
    later = Race(f"batch 1 (after {updates * (1 + warm_rounds):,} updates), {case}", "update")

    probe = PlacementProbe()

    def one_round(race: Race | None, r: int) -> None:
        order = ours.next_order()
        runs = [("sgdcli", ours.epoch)]
        if unflushed:
            runs.append(("sgdcli, no flush", unflushed.epoch))
        if theirs:
            runs.append(("torch", lambda: theirs.epoch(order, 1)))
        times, placement = timed_round(runs, r, probe)
        if race is not None:
            race.add_round(times, placement, per=updates)

    one_round(fresh, 0)
    for r in range(warm_rounds):
        one_round(None, r)
    for r in range(rounds):
        one_round(later, r)
    subnormals = {}
    if case in STATE:
        ours_name, torch_name = STATE[case]
        subnormals["sgdcli"] = subnormal_fraction(ours.problem.optimizer.state_dict()[f"{ours_name}/0.weight"])
        if unflushed:
            subnormals["sgdcli, no flush"] = subnormal_fraction(
                unflushed.problem.optimizer.state_dict()[f"{ours_name}/0.weight"])
        if theirs:
            subnormals["torch"] = subnormal_fraction(theirs.optimizer.state[theirs.net[0].weight][torch_name].numpy())
        later.note = (f"first-layer {ours_name} entries that are subnormal floats: "
                      + ", ".join(f"{k} {v:.0%}" for k, v in subnormals.items()))
    return fresh, later, subnormals


def run_races(bench: Bench, updates: int, warm: int, cases: list[str] | None = None) -> list[Race]:
    races = []
    for case in cases or BATCH1_CASES:
        print(f"racing batch 1, {case} ({updates:,} updates per stretch, {warm:,} between) ...", flush=True)
        fresh, later, _ = race_batch_one(case, updates, warm, max(2, bench.rounds // 2 + 1), bench.x, bench.y,
                                         bench.data_dir, bench.torch)
        races += [fresh, later]
    return races
