"""The batch-128 parts of benchmarks/bench.py: the race per optimizer (sgdcli, PyTorch, scikit-learn)
with the GEMM-only lower bound measured in its rounds, the subnormal flush's effect, where
sgdcli's time goes in each step of the loop, and the per-epoch bookkeeping of `sgdcli train`."""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_common import (
    BATCH,
    CASES,
    CLASSES,
    HIDDEN,
    Bench,
    PlacementProbe,
    Race,
    SgdcliRun,
    SklearnRun,
    TorchRun,
    experiment,
    print_table,
    rotate,
    subnormal_fraction,
    timed_round,
)

from sgdcli.engine import metrics
from sgdcli.runs import checkpoint


# ---------------------------------------------------------------- 2. the timed race
def race_minibatch(case: str, rounds: int, x, y, x_test, y_test, data_dir: Path, torch, with_sklearn: bool) -> Race:
    optimizer = CASES[case]
    config = experiment(optimizer, {"mode": "minibatch", "size": BATCH}, data_dir)
    ours = SgdcliRun(config, x, y)
    theirs = TorchRun(torch, ours, optimizer, x, y) if torch else None
    sk = SklearnRun(optimizer, x, y) if with_sklearn and optimizer["type"] in ("sgd", "adam") else None
    race = Race(f"batch {BATCH}, {case}", "epoch")
    bounds = []

    def bound() -> float:  # measured every round too, so that noise hits it like the rest
        bounds.append(gemm_bound(x, BATCH, ours.problem.model.parameters()))
        return bounds[-1]["seconds"]

    probe = PlacementProbe()
    for r in range(rounds):
        order = ours.next_order()
        runs = [("sgdcli", ours.epoch), ("GEMM bound", bound)]
        if theirs:
            runs.append(("torch", lambda order=order: theirs.epoch(order, BATCH)))
        if sk:
            runs.append(("sklearn", sk.epoch))
        race.add_round(*timed_round(runs, r, probe))
    race.accuracy["sgdcli"] = ours.accuracy(x_test, y_test)
    if theirs:
        race.accuracy["torch"] = theirs.accuracy(x_test, y_test)
    if sk:
        race.accuracy["sklearn"] = sk.accuracy(x_test, y_test)
    race.note = f"{rounds} epoch{'s' if rounds > 1 else ''} each; test accuracy after them"
    race.bounds = bounds
    return race


def run_races(bench: Bench) -> list[Race]:
    races = []
    for case in CASES:
        print(f"racing batch {BATCH}, {case} ({bench.rounds} epochs each) ...", flush=True)
        races.append(race_minibatch(case, bench.rounds, bench.x, bench.y, bench.x_test, bench.y_test, bench.data_dir,
                                    bench.torch, bench.with_sklearn))
    return races


# ---------------------------------------------------------------- 3. the GEMM-only lower bound
def gemm_seconds(a: np.ndarray, b: np.ndarray, repeats: int = 5) -> float:
    """The fastest of `repeats` runs of a @ b (after one warm-up)."""
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


def gemm_bound(x: np.ndarray, batch: int, weights: dict[str, np.ndarray]) -> dict:
    """Seconds an epoch's matrix products take alone, each timed at its own shape and layout."""
    rng = np.random.default_rng(0)
    n = len(x)
    sizes = [batch] * (n // batch) + ([n % batch] if n % batch else [])
    w1, w2 = weights["0.weight"], weights["1.weight"]
    needed = textbook = 0.0
    for size in sorted(set(sizes)):
        count = sizes.count(size)
        xb = np.ascontiguousarray(x[rng.permutation(n)[:size]])
        a = np.maximum(xb @ w1, 0)
        dz2 = rng.normal(size=(size, CLASSES)).astype(x.dtype)
        dz1 = rng.normal(size=(size, HIDDEN)).astype(x.dtype)
        forward = gemm_seconds(xb, w1) + gemm_seconds(a, w2)
        backward = gemm_seconds(a.T, dz2) + gemm_seconds(dz2, w2.T) + gemm_seconds(xb.T, dz1)
        input_grad = gemm_seconds(dz1, w1.T)  # dL/dx of the first layer: nobody computes it
        needed += count * (forward + backward)
        textbook += count * (forward + backward + input_grad)
    forward_flops = 2 * n * (784 * HIDDEN + HIDDEN * CLASSES)
    needed_flops = forward_flops + 2 * n * (784 * HIDDEN + 2 * HIDDEN * CLASSES)
    return {"seconds": needed, "flops": needed_flops, "textbook_seconds": textbook, "textbook_flops": 3 * forward_flops}


def print_gemm_bound(bench: Bench) -> None:
    """The bounds the races measured (nothing when no race did)."""
    bounded = [race for race in bench.races if race.bounds]
    if not bounded:
        return
    print("\n## GEMM-only lower bound of a batch-128 epoch (measured in every round of the races above)")
    bounds = [b for race in bounded for b in race.bounds]
    best = min(bounds, key=lambda b: b["seconds"])
    print(f"  the matrix products an epoch needs (forward 2·N·(784·512+512·10), backward without the "
          f"first layer's input gradient, which nobody computes): {best['flops'] / 1e9:.1f} GFLOP in "
          f"{statistics.median(b['seconds'] for b in bounds):.3f} s median, {best['seconds']:.3f} s best "
          f"({best['flops'] / best['seconds'] / 1e9:.0f} GFLOP/s; each product timed at its own shape and layout)")
    print(f"  the textbook count (backward = 2 x forward): {best['textbook_flops'] / 1e9:.1f} GFLOP in "
          f"{best['textbook_seconds']:.3f} s best")
    for race in bounded:
        parts = []
        for who, label in (("sgdcli", "sgdcli"), ("torch", "PyTorch"), ("sklearn", "scikit-learn")):
            fraction = race.ratio("GEMM bound", who)
            if fraction:
                parts.append(f"{label} {fraction[0]:.0%} ({fraction[1]:.0%}-{fraction[2]:.0%})")
        print(f"  {race.name}: the bound as a fraction of each epoch, per round: " + ", ".join(parts))
    bench.report["gemm"] = {"best": best, "per_race": {r.name: r.bounds for r in bounded}}


# ---------------------------------------------------------------- 4. the subnormal flush
def subnormal_effect(case: str, epochs: int, x, y, data_dir: Path) -> dict:
    """sgdcli with and without its subnormal flush, epoch by epoch (interleaved), batch 128."""
    config = experiment(CASES[case], {"mode": "minibatch", "size": BATCH}, data_dir)
    runs = {"flush": SgdcliRun(config, x, y), "no flush": SgdcliRun(config, x, y)}
    runs["no flush"].problem.optimizer.FLUSH_EVERY = 1 << 62
    times: dict[str, list[float]] = {name: [] for name in runs}
    for e in range(epochs):
        for name in rotate(list(runs), e):
            times[name].append(runs[name].epoch())
    fractions = {name: max(subnormal_fraction(v) for k, v in run.problem.optimizer.state_dict().items()
                           if k.endswith("0.weight")) for name, run in runs.items()}
    return {"times": times, "subnormal": fractions}


def run_subnormal(bench: Bench) -> None:
    epochs = 3 if bench.quick else 4
    print(f"\n## The subnormal flush at batch {BATCH}: seconds per epoch, epochs 1-{epochs}, with and without it")
    bench.report["subnormal"] = {}
    for case in ("rmsprop", "adam", "sgd-momentum"):
        effect = subnormal_effect(case, epochs, bench.x, bench.y, bench.data_dir)
        for name, times in effect["times"].items():
            print(f"  {case:13s} {name:9s} " + "  ".join(f"{t:.3f}" for t in times)
                  + f"   first-layer state entries subnormal at the end: {effect['subnormal'][name]:.1%}")
        bench.report["subnormal"][case] = effect


# ---------------------------------------------------------------- 5. where sgdcli's time goes
def stage_profile(config, x: np.ndarray, y: np.ndarray, updates: int) -> dict[str, float]:
    """Microseconds per update in each step of sgdcli/training/loop.py's loop (the same calls, timed one by one)."""
    from sgdcli.training.loop import _check_gradients

    run = SgdcliRun(config, x, y)
    p = run.problem
    params = p.model.parameters()
    order = run.next_order()
    clock = time.perf_counter
    spent = dict.fromkeys(("batch gather", "forward", "loss", "backward", "gradient check", "optimizer"), 0.0)
    for warm_up in (True, False):
        for b in range(updates):
            start = b * p.batch_size % len(x)
            t0 = clock()
            index = order[start:start + p.batch_size]
            xb, yb = x[index], y[index]
            t1 = clock()
            outputs, caches = p.model.forward(xb, training=True, rng=run.rngs.dropout)
            t2 = clock()
            _, dout = p.loss.value_and_grad(outputs, yb)
            t3 = clock()
            grads = p.model.backward(dout, caches, factored=True)  # as the loop asks
            t4 = clock()
            _check_gradients(grads, run.position)
            t5 = clock()
            p.optimizer.step(params, grads, p.schedule(0))
            t6 = clock()
            if not warm_up:
                for key, seconds in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
                    spent[key] += seconds
    return {key: seconds / updates * 1e6 for key, seconds in spent.items()}


def run_profile(bench: Bench) -> None:
    print("\n## Where sgdcli's time goes: µs per update in each step of the loop (timed one by one)")
    profiles = {
        f"batch {BATCH}, sgd-momentum": (CASES["sgd-momentum"], {"mode": "minibatch", "size": BATCH}, 469),
        f"batch {BATCH}, adam": (CASES["adam"], {"mode": "minibatch", "size": BATCH}, 469),
        f"batch {BATCH}, rmsprop": (CASES["rmsprop"], {"mode": "minibatch", "size": BATCH}, 469),
        "batch 1, sgd-momentum": ({"type": "sgd", "learning_rate": 0.001, "momentum": 0.9}, {"mode": "sgd"}, 3000),
    }
    rows = []
    for name, (optimizer, batch, updates) in profiles.items():
        stages = stage_profile(experiment(optimizer, batch, bench.data_dir), bench.x, bench.y, updates)
        rows.append([name] + [f"{v:.0f}" for v in stages.values()] + [f"{sum(stages.values()):.0f}"])
    header = ["case"] + list(stages) + ["total"]
    print_table(header, rows, markdown=False)
    bounds = [b["seconds"] for race in bench.races for b in race.bounds]
    if bounds:
        per_update = statistics.median(bounds) / math.ceil(len(bench.x) / BATCH) * 1e6
        print(f"  the matrix products inside forward and backward take {per_update:.0f} µs of a batch-{BATCH} "
              "update alone (the GEMM-only bound above)")
    bench.report["profile"] = {"header": header, "rows": rows}


# ---------------------------------------------------------------- 6. bookkeeping per epoch
def bookkeeping(run: SgdcliRun, x, y, shift, scale, validation: float = 0.1) -> dict:
    """What `sgdcli train` does after each epoch besides training: the loss over the whole training
    and validation sets (fashion-mlp.yaml holds out 10%) and one checkpoint save."""
    split = int(len(x) * (1 - validation))
    problem = run.problem
    timings = {}
    start = time.perf_counter()
    metrics.loss_and_accuracy(problem.model, problem.loss, x[:split], y[:split], True)
    timings["train_pass"] = time.perf_counter() - start
    start = time.perf_counter()
    metrics.loss_and_accuracy(problem.model, problem.loss, x[split:], y[split:], True)
    timings["val_pass"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        state = checkpoint.Checkpoint(
            params={k: v.copy() for k, v in problem.model.parameters().items()},
            optimizer=problem.optimizer.state_dict(), shift=shift, scale=scale,
            meta={"epoch": 1, "config": {"note": "as large as a real config does not matter here"}})
        checkpoint.save(Path(folder) / "last.safetensors", state)
        timings["checkpoint"] = time.perf_counter() - start
    timings["train_fraction"] = validation
    return timings


def run_bookkeeping(bench: Bench) -> None:
    print("\n## Per-epoch bookkeeping of `sgdcli train` (loss over train + validation, one checkpoint)")
    x, y, scaler = bench.x, bench.y, bench.prepared.scaler
    run = SgdcliRun(experiment(CASES["adam"], {"mode": "minibatch", "size": BATCH}, bench.data_dir), x, y)
    run.epoch()
    book = min((bookkeeping(run, x, y, scaler.shift, scaler.scale) for _ in range(3)),
               key=lambda b: b["train_pass"] + b["val_pass"] + b["checkpoint"])
    adam = next((r for r in bench.races if r.name.endswith("adam")), None)
    epoch = (adam.median("sgdcli") if adam else run.epoch()) * 0.9  # fashion-mlp trains on 90%
    total = book["train_pass"] + book["val_pass"] + book["checkpoint"]
    print(f"  train-set loss pass {book['train_pass']:.3f} s, validation pass {book['val_pass']:.3f} s, "
          f"checkpoint {book['checkpoint']:.3f} s; a 54,000-image Adam epoch {epoch:.3f} s")
    print(f"  bookkeeping = {total / epoch:.0%} of an epoch (target ≤ 15%: {'met' if total / epoch <= 0.15 else 'NOT met'}); "
          f"with training.eval_train: false {(book['val_pass'] + book['checkpoint']) / epoch:.0%}")
    bench.report["bookkeeping"] = {**book, "epoch": epoch, "fraction": total / epoch}
    bench.target("bookkeeping per epoch (train + val loss pass, checkpoint) / training epoch", f"{total / epoch:.0%}",
                 "≤ 15%", total / epoch <= 0.15)
