"""sgdcli's training loop against PyTorch and scikit-learn on Fashion-MNIST: speed, memory, accuracy.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench.py [--quick] [--markdown]

(Unsetting the two OpenBLAS variables for this one command lets OpenBLAS pick its kernel for
the processor; the script prints which kernel ran. Tests and CI never change them.)

The network is the 784-512-10 ReLU MLP, float32, on the 60,000 Fashion-MNIST training images.
sgdcli is run exactly as `sgdcli train` runs it: config -> `sgdcli.build` -> `sgdcli.train.Problem`
-> `sgdcli.train.train_epochs`; no benchmark-only path. PyTorch (CPU, as many threads as NumPy's
BLAS) starts from the same weights and sees the same batches in the same order; scikit-learn's
MLPClassifier (float32, `partial_fit` per epoch) starts from its own. Their epochs are
interleaved in one process, round by round in a rotating order, so machine noise hits all alike;
ratios are computed per round and reported as the median with the min-max spread.

Before timing anything it checks that sgdcli and PyTorch compute the same thing (five updates
from identical weights on identical batches, per optimizer) and aborts if they do not.

Optional extras: `pip install -e '.[bench]'` (torch, scikit-learn); without them those columns are
skipped. Peak memory is read from the kernel (VmHWM / ru_maxrss) in separate subprocesses.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sgdcli import build, checkpoint, metrics
from sgdcli.config import load_config
from sgdcli.train import Interrupted, Position, Problem, train_epochs

DATA = Path("/usr/share/datasets/fashion-mnist")
HIDDEN, CLASSES, BATCH = 512, 10, 128

# The optimizer cases: sgdcli config, and the same hyperparameters in each framework's terms.
# Our SGD momentum (v = m v - lr g; w += v) equals PyTorch's (b = m b + g; w -= lr b) for a
# constant lr; our RMSProp rho is torch's alpha; epsilon sits outside the square root in both.
CASES = {
    "sgd-momentum": {"type": "sgd", "learning_rate": 0.01, "momentum": 0.9},
    "adam": {"type": "adam", "learning_rate": 0.001},
    "rmsprop": {"type": "rmsprop", "learning_rate": 0.001},
}
TARGETS = {  # issue 5: upper bounds on sgdcli's time divided by the other's, side by side
    ("sgd-momentum", "torch"): 1.0, ("adam", "torch"): 0.85, ("rmsprop", "torch"): 0.85,
    ("sgd-momentum", "sklearn"): 0.6, ("adam", "sklearn"): 0.6,
    ("batch-1", "torch"): 0.5, ("full-batch", "torch"): 1.0,
}


# ---------------------------------------------------------------- environment
def blas_info() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{**{k: pool.get(k) for k in ("internal_api", "version", "architecture", "num_threads")},
             "library": Path(pool["filepath"]).name} for pool in threadpool_info() if pool.get("user_api") == "blas"]


def numpy_blas_threads() -> int:
    for pool in blas_info():
        if pool["internal_api"] in ("openblas", "mkl", "blis") and pool.get("num_threads"):
            return int(pool["num_threads"])
    return os.cpu_count() or 1


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (all processes), from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def optional(name: str):
    try:
        return __import__(name)
    except ImportError:
        return None


# ---------------------------------------------------------------- sgdcli, built as `sgdcli train` builds it
def experiment(optimizer: dict, batch: dict, data_dir: Path, shuffle: bool = True):
    return load_config({
        "name": "bench", "seed": 0,
        "data": {"source": "idx", "path": str(data_dir), "validation": 0},
        "model": {"layers": [{"type": "dense", "units": HIDDEN, "activation": "relu"},
                             {"type": "dense", "units": CLASSES}]},
        "loss": {"type": "cross_entropy"},
        "optimizer": optimizer,
        "training": {"epochs": 1000, "batch": batch, "shuffle": shuffle},
    })


class SgdcliRun:
    """One sgdcli training run: the Problem `sgdcli train` would build, trained an epoch at a time."""

    def __init__(self, config, x: np.ndarray, y: np.ndarray) -> None:
        self.rngs = build.Rngs.from_seed(config.seed)
        model = build.build_model(config.model, x.shape[1], CLASSES, self.rngs.init)
        size = build.batch_size(config.training, len(x))
        self.problem = Problem(
            model=model, loss=build.build_loss(config.loss), optimizer=build.build_optimizer(config.optimizer),
            schedule=build.build_schedule(config.optimizer, math.ceil(len(x) / size), config.training.epochs),
            x=x, y=y, batch_size=size, shuffle=config.training.shuffle, clip_norm=config.optimizer.clip_norm)
        self.position = Position()

    def next_order(self) -> np.ndarray | None:
        """The order the next epoch will visit the samples in (drawn from a copy of the loop's stream)."""
        p = self.problem
        return copy.deepcopy(self.rngs.shuffle).permutation(len(p.x)) if p.shuffle and p.batch_size < len(p.x) else None

    def epoch(self, on_batch=None, stop_after: int | None = None) -> float:
        """Seconds for one epoch of train_epochs (or for its first `stop_after` updates)."""
        done = [0]

        def should_stop() -> bool:
            done[0] += 1
            return stop_after is not None and done[0] >= stop_after

        start = time.perf_counter()
        try:
            next(train_epochs(self.problem, self.position, self.position.epoch + 1, self.rngs.shuffle,
                              self.rngs.dropout, on_batch, should_stop))
        except Interrupted:
            pass
        return time.perf_counter() - start

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return metrics.loss_and_accuracy(self.problem.model, self.problem.loss, x, y, True)[1]


# ---------------------------------------------------------------- PyTorch: same weights, same batches
class TorchRun:
    def __init__(self, torch, source: SgdcliRun, optimizer: dict, x: np.ndarray, y: np.ndarray) -> None:
        self.torch = torch
        nn = torch.nn
        self.net = nn.Sequential(nn.Linear(x.shape[1], HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES))
        params = source.problem.model.parameters()
        with torch.no_grad():  # torch keeps weight as (out, in): ours transposed
            for index, layer in ((0, self.net[0]), (1, self.net[2])):
                layer.weight.copy_(torch.from_numpy(params[f"{index}.weight"].T.copy()))
                layer.bias.copy_(torch.from_numpy(params[f"{index}.bias"].copy()))
        lr, kind = optimizer["learning_rate"], optimizer["type"]
        if kind == "sgd":
            self.optimizer = torch.optim.SGD(self.net.parameters(), lr=lr, momentum=optimizer.get("momentum", 0.0),
                                             nesterov=optimizer.get("nesterov", False))
        elif kind == "adam":
            self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
        else:
            self.optimizer = torch.optim.RMSprop(self.net.parameters(), lr=lr, alpha=0.9, eps=1e-8,
                                                 momentum=optimizer.get("momentum", 0.0))
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)

    def epoch(self, order: np.ndarray | None, batch: int, stop_after: int | None = None, losses=None) -> float:
        torch, n = self.torch, len(self.x)
        loss_fn = torch.nn.functional.cross_entropy
        index = None if order is None else torch.from_numpy(order)
        start = time.perf_counter()
        for count, first in enumerate(range(0, n, batch), 1):
            if index is None:
                xb, yb = self.x[first:first + batch], self.y[first:first + batch]
            else:
                rows = index[first:first + batch]
                xb, yb = self.x[rows], self.y[rows]
            self.optimizer.zero_grad()
            loss = loss_fn(self.net(xb), yb)
            loss.backward()
            self.optimizer.step()
            if losses is not None:
                losses.append(loss.item())
            if stop_after is not None and count >= stop_after:
                break
        return time.perf_counter() - start

    def weights(self) -> dict[str, np.ndarray]:
        net = self.net
        return {"0.weight": net[0].weight.detach().numpy().T, "0.bias": net[0].bias.detach().numpy(),
                "1.weight": net[2].weight.detach().numpy().T, "1.bias": net[2].bias.detach().numpy()}

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        with self.torch.no_grad():
            return float((self.net(self.torch.from_numpy(x)).argmax(1).numpy() == y).mean())


# ---------------------------------------------------------------- scikit-learn
class SklearnRun:
    def __init__(self, optimizer: dict, x: np.ndarray, y: np.ndarray) -> None:
        from sklearn.neural_network import MLPClassifier

        self.x, self.y = x, y
        self.model = MLPClassifier(
            hidden_layer_sizes=(HIDDEN,), activation="relu", solver="sgd" if optimizer["type"] == "sgd" else "adam",
            alpha=0.0, batch_size=BATCH, learning_rate_init=optimizer["learning_rate"],
            momentum=optimizer.get("momentum", 0.9), nesterovs_momentum=False, shuffle=True, random_state=0)

    def epoch(self) -> float:
        start = time.perf_counter()
        self.model.partial_fit(self.x, self.y, classes=np.arange(CLASSES))
        return time.perf_counter() - start

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(self.model.score(x, y))


# ---------------------------------------------------------------- results
@dataclass
class Race:
    """Per-round times of several contestants running the same work."""

    name: str
    unit: str  # what one time measures: "epoch", "update"
    times: dict[str, list[float]] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    note: str = ""
    bounds: list[dict] = field(default_factory=list)  # GEMM-only bounds measured in its rounds

    def add(self, who: str, seconds: float) -> None:
        self.times.setdefault(who, []).append(seconds)

    def median(self, who: str) -> float | None:
        return statistics.median(self.times[who]) if who in self.times else None

    def ratio(self, who: str, other: str) -> tuple[float, float, float] | None:
        """Median, min and max over rounds of who's time / other's time in the same round."""
        if who not in self.times or other not in self.times:
            return None
        ratios = [a / b for a, b in zip(self.times[who], self.times[other])]
        return statistics.median(ratios), min(ratios), max(ratios)


def rotate(items: list, by: int) -> list:
    by %= len(items)
    return items[by:] + items[:by]


# ---------------------------------------------------------------- 1. the same computation?
def check_same_computation(torch, x: np.ndarray, y: np.ndarray, data_dir: Path, updates: int = 5) -> list[dict]:
    """Five updates from identical weights on identical batches: sgdcli's train_epochs vs PyTorch."""
    x, y = x[: updates * BATCH], y[: updates * BATCH]
    rows = []
    for case, optimizer in CASES.items():
        config = experiment(optimizer, {"mode": "minibatch", "size": BATCH}, data_dir, shuffle=False)
        ours = SgdcliRun(config, x, y)
        start = {k: v.copy() for k, v in ours.problem.model.parameters().items()}
        theirs = TorchRun(torch, ours, optimizer, x, y)
        our_losses, their_losses = [], []
        ours.epoch(on_batch=lambda batch, value, losses=our_losses: losses.append(value))
        theirs.epoch(None, BATCH, losses=their_losses)
        after, reference = ours.problem.model.parameters(), theirs.weights()
        # The error relative to how far the weights moved: float32 rounding gives ~1e-6.
        update_error = max(float(np.linalg.norm(after[k] - reference[k]) / np.linalg.norm(reference[k] - start[k]))
                           for k in after)
        loss_error = max(abs(a - b) / abs(b) for a, b in zip(our_losses, their_losses))
        rows.append({"case": case, "updates": len(our_losses), "update_error": update_error, "loss_error": loss_error,
                     "ok": len(our_losses) == len(their_losses) == updates and update_error < 1e-4 and loss_error < 1e-5})
    return rows


# ---------------------------------------------------------------- 2. timed races
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

    for r in range(rounds):
        order = ours.next_order()
        runs = [("sgdcli", ours.epoch), ("GEMM bound", bound)]
        if theirs:
            runs.append(("torch", lambda order=order: theirs.epoch(order, BATCH)))
        if sk:
            runs.append(("sklearn", sk.epoch))
        for who, run in rotate(runs, r):
            race.add(who, run())
    race.accuracy["sgdcli"] = ours.accuracy(x_test, y_test)
    if theirs:
        race.accuracy["torch"] = theirs.accuracy(x_test, y_test)
    if sk:
        race.accuracy["sklearn"] = sk.accuracy(x_test, y_test)
    race.note = f"{rounds} epoch{'s' if rounds > 1 else ''} each; test accuracy after them"
    race.bounds = bounds
    return race


def subnormal_fraction(array: np.ndarray) -> float:
    magnitude = np.abs(array)
    return float(((magnitude > 0) & (magnitude < np.finfo(array.dtype).tiny)).mean())


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


def race_full_batch(rounds: int, x, y, data_dir: Path, torch) -> Race:
    optimizer = {"type": "sgd", "learning_rate": 0.5}
    config = experiment(optimizer, {"mode": "full"}, data_dir)
    ours = SgdcliRun(config, x, y)
    theirs = TorchRun(torch, ours, optimizer, x, y) if torch else None
    race = Race(f"full batch ({len(x):,} images), sgd", "update")
    ours.epoch()  # one warm-up update each: the first pays for BLAS buffers and fresh pages
    if theirs:
        theirs.epoch(None, len(x))
    for r in range(rounds):
        runs = [("sgdcli", ours.epoch)]
        if theirs:
            runs.append(("torch", lambda: theirs.epoch(None, len(x))))
        for who, run in rotate(runs, r):
            race.add(who, run())
    return race


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


# ---------------------------------------------------------------- where sgdcli's time goes
def stage_profile(config, x: np.ndarray, y: np.ndarray, updates: int) -> dict[str, float]:
    """Microseconds per update in each step of train.py's loop (the same calls, timed one by one)."""
    from sgdcli.train import _check_gradients

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
            grads = p.model.backward(dout, caches)
            t4 = clock()
            _check_gradients(grads, run.position)
            t5 = clock()
            p.optimizer.step(params, grads, p.schedule(0))
            t6 = clock()
            if not warm_up:
                for key, seconds in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
                    spent[key] += seconds
    return {key: seconds / updates * 1e6 for key, seconds in spent.items()}


# ---------------------------------------------------------------- 4. bookkeeping per epoch
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


# ---------------------------------------------------------------- 5. subprocess measurements
PEAK_CHILD = r"""
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
print(code, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def run_with_peak(command: list[str], env: dict | None = None) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS in MB) of `command`, run alone under a small parent so that
    ru_maxrss (the kernel's high-water mark of resident memory) is that command's own."""
    out = subprocess.run([sys.executable, "-c", PEAK_CHILD, *command], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    return int(out[0]), float(out[1]), int(out[2]) / 1024


PHASE_CHILD = r"""
import json, resource, sys
sys.path.insert(0, {bench_dir!r})
from pathlib import Path
from bench import CASES, SgdcliRun, TorchRun, build, experiment

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

which, data_dir, full = {which!r}, Path({data!r}), {which!r}.endswith("full")
batch = {{"mode": "full"}} if full else {{"mode": "minibatch", "size": 128}}
optimizer = {{"type": "sgd", "learning_rate": 0.5}} if full else CASES["adam"]
config = experiment(optimizer, batch, data_dir)
prepared = build.prepare_data(config, build.Rngs.from_seed(0))
x, y = prepared.x_train, prepared.y_train
ours = SgdcliRun(config, x, y)
if which.startswith("torch"):
    import torch
    torch.set_num_threads({threads})
    theirs = TorchRun(torch, ours, optimizer, x, y)
    order = ours.next_order()
    run = lambda: theirs.epoch(order, len(x) if full else 128)
else:
    run = ours.epoch
run()  # warm-up: BLAS buffers, allocator and page tables reach their steady state
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # VmHWM := VmRSS (Linux >= 4.0): the peak of what follows
    f.write("5")
times = [run() for _ in range({repeats})]
print(json.dumps({{"before": before, "peak": status("VmHWM"), "times": times}}))
"""


def phase_memory(which: str, data_dir: Path, threads: int, repeats: int) -> dict | None:
    """Resident memory before and at the peak of `repeats` runs (after a warm-up one) of a phase,
    alone in a fresh process, with the seconds each run took."""
    code = PHASE_CHILD.format(bench_dir=str(Path(__file__).resolve().parent), which=which, data=str(data_dir),
                              threads=threads, repeats=repeats)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        print(f"  ({which} memory phase failed: {done.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def sgdcli_command() -> list[str]:
    exe = Path(sys.executable).with_name("sgdcli")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sgdcli"]


def help_time(runs: int) -> dict:
    command = sgdcli_command() + ["--help"]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    bare = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - start)
    trace = subprocess.run([sys.executable, "-X", "importtime", "-c", "import sgdcli.cli"], capture_output=True,
                           text=True, check=True).stderr
    lines = []  # (depth, cumulative ms, module); a module's imports are printed before it, one level deeper
    for line in trace.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)", line)
        if match:
            lines.append((len(match.group(3)), int(match.group(2)) / 1000, match.group(4)))
    at = next(i for i, (_, _, name) in enumerate(lines) if name == "sgdcli.cli")
    depth, total = lines[at][0], lines[at][1]
    children = []
    for child_depth, ms, name in reversed(lines[:at]):
        if child_depth <= depth:
            break
        if child_depth == depth + 2:
            children.append((ms, name))
    startup = sum(ms for d, ms, _ in lines if d == min(x[0] for x in lines) and _ != "sgdcli.cli")
    return {"command": " ".join(Path(command[0]).name if i == 0 else c for i, c in enumerate(command)),
            "median": statistics.median(times), "python_startup": statistics.median(bare),
            "import_sgdcli_cli_ms": total, "imports": sorted(children, reverse=True)[:6],
            "startup_imports_ms": startup}


def cli_train_memory(data_dir: Path) -> dict:
    with tempfile.TemporaryDirectory() as runs:
        config = REPO / "configs" / "fashion-mlp.yaml"
        command = sgdcli_command() + ["train", str(config), "--set", "training.epochs=1", "--set",
                                      f"data.path={data_dir}", "--runs-dir", runs]
        code, wall, peak = run_with_peak(command)
        summaries = list(Path(runs).glob("*/summary.json"))
        per_epoch = json.loads(summaries[0].read_text()).get("seconds_per_epoch") if summaries else None
    return {"command": "sgdcli train configs/fashion-mlp.yaml --set training.epochs=1", "exit": code,
            "seconds": wall, "peak_mb": peak, "seconds_per_epoch": per_epoch}


TORCH_TRAIN = r"""
import sys, numpy as np, torch
sys.path.insert(0, {repo!r})
from sgdcli import build
from sgdcli.config import load_config
torch.set_num_threads({threads})
config = load_config({repo!r} + "/configs/fashion-mlp.yaml", ["training.epochs=1", "data.path={data}"])
prepared = build.prepare_data(config, build.Rngs.from_seed(0))
x, y = torch.from_numpy(prepared.x_train), torch.from_numpy(prepared.y_train)
xv, yv = torch.from_numpy(prepared.x_val), torch.from_numpy(prepared.y_val)
net = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(512, 10))
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
order = torch.randperm(len(x))
for start in range(0, len(x), 128):
    rows = order[start:start + 128]
    opt.zero_grad(); loss = torch.nn.functional.cross_entropy(net(x[rows]), y[rows]); loss.backward(); opt.step()
net.eval()
with torch.no_grad():
    for xs, ys in ((x, y), (xv, yv)):
        for start in range(0, len(xs), 4096):
            torch.nn.functional.cross_entropy(net(xs[start:start + 4096]), ys[start:start + 4096])
torch.save({{"model": net.state_dict(), "opt": opt.state_dict()}}, {checkpoint!r})
"""


def torch_train_memory(data_dir: Path, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        code = TORCH_TRAIN.format(repo=str(REPO), threads=threads, data=str(data_dir),
                                  checkpoint=str(Path(folder) / "last.pt"))
        exit_code, wall, peak = run_with_peak([sys.executable, "-c", code])
    return {"command": "the same job in PyTorch (same data loading, 1 epoch, eval passes, torch.save)",
            "exit": exit_code, "seconds": wall, "peak_mb": peak}


# ---------------------------------------------------------------- printing
def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def fmt_ratio(r: tuple[float, float, float] | None) -> str:
    return "-" if r is None else f"{r[0]:.2f} ({r[1]:.2f}-{r[2]:.2f})"


def verdict(ratio: tuple[float, float, float] | None, target: float | None) -> str:
    if ratio is None or target is None:
        return ""
    return f"≤ {target:g}: {'met' if ratio[0] <= target else 'NOT met'}"


def race_rows(races: list[Race]) -> tuple[list[str], list[list[str]]]:
    header = ["case", "per", "sgdcli", "PyTorch", "scikit-learn", "sgdcli/PyTorch (min-max)", "target",
              "sgdcli/sklearn (min-max)", "target", "test accuracy sgdcli / torch / sklearn"]
    rows = []
    for race in races:
        key = "batch-1" if race.name.startswith("batch 1 (") else "full-batch" if race.name.startswith("full") else \
            race.name.split(", ")[-1]
        vs_torch, vs_sklearn = race.ratio("sgdcli", "torch"), race.ratio("sgdcli", "sklearn")
        accuracy = " / ".join(f"{race.accuracy[k]:.4f}" if k in race.accuracy else "-"
                              for k in ("sgdcli", "torch", "sklearn")) if race.accuracy else ""
        targets_apply = not race.name.startswith("batch 1 (fresh)")
        rows.append([race.name, race.unit, fmt_seconds(race.median("sgdcli")), fmt_seconds(race.median("torch")),
                     fmt_seconds(race.median("sklearn")), fmt_ratio(vs_torch),
                     verdict(vs_torch, TARGETS.get((key, "torch"))) if targets_apply else "",
                     fmt_ratio(vs_sklearn), verdict(vs_sklearn, TARGETS.get((key, "sklearn"))), accuracy])
        if "sgdcli, no flush" in race.times:
            rows.append([race.name + ", sgdcli without the subnormal flush", race.unit,
                         fmt_seconds(race.median("sgdcli, no flush")), fmt_seconds(race.median("torch")), "",
                         fmt_ratio(race.ratio("sgdcli, no flush", "torch")), "", "", "", ""])
    return header, rows


def print_table(header: list[str], rows: list[list[str]], markdown: bool) -> None:
    keep = [i for i in range(len(header)) if any(row[i] for row in rows)]
    header, rows = [header[i] for i in keep], [[row[i] for i in keep] for row in rows]
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join(" --- " for _ in header) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())


# ---------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and updates (a smoke run, ~1 minute)")
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs per framework and optimizer (default 5, quick 2)")
    parser.add_argument("--sgd-updates", type=int, default=None, help="batch-1 updates per timed stretch (default 3000)")
    parser.add_argument("--warm", type=int, default=None, help="batch-1 updates before the late timing (default 6000)")
    parser.add_argument("--data", type=Path, default=DATA, help=f"Fashion-MNIST IDX folder (default {DATA})")
    parser.add_argument("--cases", nargs="+", default=["check", "minibatch", "batch1", "full", "subnormal", "profile",
                                                      "bookkeeping", "memory", "help"],
                        help="which parts to run (minibatch includes the GEMM-only bound)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-sklearn", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="also print the tables as markdown (for the README)")
    parser.add_argument("--json", type=Path, help="write every number to this file")
    args = parser.parse_args()
    rounds = args.epochs or (2 if args.quick else 5)
    sgd_updates = args.sgd_updates or (1000 if args.quick else 3000)
    warm = args.warm if args.warm is not None else (3000 if args.quick else 6000)
    torch = None if args.no_torch else optional("torch")
    with_sklearn = not args.no_sklearn and optional("sklearn") is not None
    threads = numpy_blas_threads()
    if torch:
        torch.set_num_threads(threads)
    report: dict = {}
    targets: list[list[str]] = []  # what, measured, target, verdict

    def target(what: str, measured: str, goal: str, met: bool) -> None:
        targets.append([what, measured, goal, "met" if met else "NOT met"])

    print("# sgdcli benchmark (issue 5)")
    print(f"python {platform.python_version()}, numpy {np.__version__}"
          + (f", torch {torch.__version__}" if torch else ", torch not installed")
          + (f", scikit-learn {optional('sklearn').__version__}" if with_sklearn else ", scikit-learn not installed"))
    print(f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; "
          f"BLAS threads {threads} (torch.set_num_threads({threads}))")
    for pool in blas_info():
        print(f"  {pool['library']} ({pool['internal_api']} {pool['version']}): kernel {pool['architecture']}, "
              f"{pool['num_threads']} threads")
    pinned = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    if pinned:
        print(f"  note: {pinned} is set: OpenBLAS runs that kernel, not the best one for this CPU "
              "(run with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` to let it choose)")
    report["environment"] = {"blas": blas_info(), "pinned": pinned, "threads": threads}

    machine_start, own_start, wall_start = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    start = time.perf_counter()
    base = experiment(CASES["adam"], {"mode": "minibatch", "size": BATCH}, args.data)
    prepared = build.prepare_data(base, build.Rngs.from_seed(base.seed))
    x, y = prepared.x_train, prepared.y_train
    test = build.load_test_set(base, prepared.class_names)
    x_test, y_test = prepared.scaler.transform(test.x, x.dtype), test.y
    print(f"data: {len(x):,} training and {len(x_test):,} test images of {x.shape[1]} pixels, {x.dtype} "
          f"(loaded in {time.perf_counter() - start:.1f} s)\n")

    if "check" in args.cases and torch:
        print("## Same computation? 5 updates from the same weights on the same batches, sgdcli vs PyTorch")
        rows = check_same_computation(torch, x, y, args.data)
        for row in rows:
            print(f"  {row['case']:13s} updates {row['updates']}, weights differ by {row['update_error']:.1e} of the "
                  f"distance moved, losses by {row['loss_error']:.1e} (relative): {'agree' if row['ok'] else 'DISAGREE'}")
        report["check"] = rows
        if not all(row["ok"] for row in rows):
            print("ABORT: sgdcli and PyTorch do not compute the same updates; a benchmark of different "
                  "computations would be worthless.")
            return 1
        print()

    races: list[Race] = []
    if "minibatch" in args.cases:
        for case in CASES:
            print(f"racing batch {BATCH}, {case} ({rounds} epochs each) ...", flush=True)
            races.append(race_minibatch(case, rounds, x, y, x_test, y_test, args.data, torch, with_sklearn))
    if "batch1" in args.cases:
        print(f"racing batch 1 ({sgd_updates:,} updates per stretch, {warm:,} between) ...", flush=True)
        fresh, later, _ = race_batch_one(sgd_updates, warm, max(2, rounds // 2 + 1), x, y, args.data, torch)
        races += [fresh, later]
    if "full" in args.cases:
        print("racing full batch ...", flush=True)
        races.append(race_full_batch(max(2, rounds // 2 + 1), x, y, args.data, torch))
    if races:
        print("\n## Time (medians over rounds; ratios are per round: median, min-max)")
        header, rows = race_rows(races)
        print_table(header, rows, markdown=False)
        for race in races:
            if race.note:
                print(f"  {race.name}: {race.note}")
        report["races"] = [{"name": r.name, "unit": r.unit, "times": r.times, "accuracy": r.accuracy} for r in races]
        for race in races:
            if race.name.startswith("batch 1 (fresh)"):
                continue
            key = "batch-1" if race.name.startswith("batch 1 (") else "full-batch" if race.name.startswith("full") else \
                race.name.split(", ")[-1]
            for other, label in (("torch", "PyTorch"), ("sklearn", "scikit-learn")):
                ratio, goal = race.ratio("sgdcli", other), TARGETS.get((key, other))
                if ratio and goal:
                    target(f"{race.name}: sgdcli / {label} per {race.unit}", fmt_ratio(ratio), f"≤ {goal:g}",
                           ratio[0] <= goal)

    bounded = [race for race in races if race.bounds]
    if bounded:
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
        report["gemm"] = {"best": best, "per_race": {r.name: r.bounds for r in bounded}}

    if "subnormal" in args.cases:
        epochs = 3 if args.quick else 4
        print(f"\n## The subnormal flush at batch {BATCH}: seconds per epoch, epochs 1-{epochs}, with and without it")
        report["subnormal"] = {}
        for case in ("rmsprop", "adam", "sgd-momentum"):
            effect = subnormal_effect(case, epochs, x, y, args.data)
            for name, times in effect["times"].items():
                print(f"  {case:13s} {name:9s} " + "  ".join(f"{t:.3f}" for t in times)
                      + f"   first-layer state entries subnormal at the end: {effect['subnormal'][name]:.1%}")
            report["subnormal"][case] = effect

    if "profile" in args.cases:
        print("\n## Where sgdcli's time goes: µs per update in each step of the loop (timed one by one)")
        profiles = {
            f"batch {BATCH}, sgd-momentum": (CASES["sgd-momentum"], {"mode": "minibatch", "size": BATCH}, 469),
            f"batch {BATCH}, adam": (CASES["adam"], {"mode": "minibatch", "size": BATCH}, 469),
            "batch 1, sgd-momentum": ({"type": "sgd", "learning_rate": 0.001, "momentum": 0.9}, {"mode": "sgd"}, 3000),
        }
        rows = []
        for name, (optimizer, batch, updates) in profiles.items():
            stages = stage_profile(experiment(optimizer, batch, args.data), x, y, updates)
            rows.append([name] + [f"{v:.0f}" for v in stages.values()] + [f"{sum(stages.values()):.0f}"])
        header = ["case"] + list(stages) + ["total"]
        print_table(header, rows, markdown=False)
        bounds = [b["seconds"] for race in races for b in race.bounds]
        if bounds:
            per_update = statistics.median(bounds) / math.ceil(len(x) / BATCH) * 1e6
            print(f"  the matrix products inside forward and backward take {per_update:.0f} µs of a batch-{BATCH} "
                  "update alone (the GEMM-only bound above)")
        report["profile"] = {"header": header, "rows": rows}

    if "bookkeeping" in args.cases:
        print("\n## Per-epoch bookkeeping of `sgdcli train` (loss over train + validation, one checkpoint)")
        run = SgdcliRun(experiment(CASES["adam"], {"mode": "minibatch", "size": BATCH}, args.data), x, y)
        run.epoch()
        book = min((bookkeeping(run, x, y, prepared.scaler.shift, prepared.scaler.scale) for _ in range(3)),
                   key=lambda b: b["train_pass"] + b["val_pass"] + b["checkpoint"])
        adam = next((r for r in races if r.name.endswith("adam")), None)
        epoch = (adam.median("sgdcli") if adam else run.epoch()) * 0.9  # fashion-mlp trains on 90%
        total = book["train_pass"] + book["val_pass"] + book["checkpoint"]
        print(f"  train-set loss pass {book['train_pass']:.3f} s, validation pass {book['val_pass']:.3f} s, "
              f"checkpoint {book['checkpoint']:.3f} s; a 54,000-image Adam epoch {epoch:.3f} s")
        print(f"  bookkeeping = {total / epoch:.0%} of an epoch (target ≤ 15%: {'met' if total / epoch <= 0.15 else 'NOT met'}); "
              f"with training.eval_train: false {(book['val_pass'] + book['checkpoint']) / epoch:.0%}")
        report["bookkeeping"] = {**book, "epoch": epoch, "fraction": total / epoch}
        target("bookkeeping per epoch (train + val loss pass, checkpoint) / training epoch", f"{total / epoch:.0%}",
               "≤ 15%", total / epoch <= 0.15)

    if "memory" in args.cases:
        print("\n## Peak memory (kernel high-water marks in separate processes; tracemalloc misses BLAS and torch buffers)")
        cli = cli_train_memory(args.data)
        print(f"  {cli['command']}: peak RSS {cli['peak_mb']:.0f} MB (target ≤ 400 MB: "
              f"{'met' if cli['peak_mb'] <= 400 else 'NOT met'}), {cli['seconds']:.1f} s wall, exit {cli['exit']}"
              + (f"; it reports {cli['seconds_per_epoch']:.3f} s of training per epoch (54,000 images, dropout, Adam)"
                 if cli.get("seconds_per_epoch") else ""))
        report["memory"] = {"cli": cli}
        target("peak RSS of `sgdcli train configs/fashion-mlp.yaml --set training.epochs=1`", f"{cli['peak_mb']:.0f} MB",
               "≤ 400 MB", cli["peak_mb"] <= 400)
        if torch:
            tm = torch_train_memory(args.data, threads)
            print(f"  {tm['command']}: peak RSS {tm['peak_mb']:.0f} MB, {tm['seconds']:.1f} s, exit {tm['exit']}")
            report["memory"]["torch_cli_equivalent"] = tm
        activation = len(x) * HIDDEN * x.dtype.itemsize / 2**20
        alone = {}
        for which in ["sgdcli", "sgdcli-full"] + (["torch", "torch-full"] if torch else []):
            full = which.endswith("full")
            phase = phase_memory(which, args.data, threads, repeats=3 if full else 1)
            if phase:
                extra = phase["peak"] - phase["before"]
                label = "full-batch updates" if full else "a batch-128 Adam epoch"
                print(f"  {which.split('-')[0]:6s} {label}, alone in a process after a warm-up one: RSS "
                      f"{phase['before']:.0f} MB before (data + model), peak {phase['peak']:.0f} MB: +{extra:.0f} MB"
                      + (f" = {extra / activation:.2f} x an N x 512 float32 activation ({activation:.0f} MB); "
                         f"{statistics.median(phase['times']):.3f} s per update" if full else ""))
                report["memory"][which] = phase
                if full:
                    alone[which.split("-")[0]] = statistics.median(phase["times"])
                if which == "sgdcli-full":
                    # the activation itself and the gradient arriving from layer 2 are inherent; one more is allowed
                    target("full-batch update: activation-sized (N x 512) buffers at peak", f"{extra / activation:.2f}",
                           "≤ 3 (activation, incoming gradient, one extra)", extra / activation <= 3.1)
        if len(alone) == 2:
            ratio = alone["sgdcli"] / alone["torch"]
            print(f"  full batch, each alone: sgdcli/PyTorch {ratio:.2f} per update (interleaved in one process, "
                  "each pays for the pages the other just released: see the time table)")
            target("full batch, each framework alone in its process: sgdcli / PyTorch per update", f"{ratio:.2f}",
                   "≤ 1", ratio <= 1)

    if "help" in args.cases:
        print("\n## `sgdcli --help`")
        info = help_time(7)
        print(f"  {info['command']}: {info['median'] * 1e3:.0f} ms median of 7 (target ≤ 300 ms: "
              f"{'met' if info['median'] <= 0.3 else 'NOT met'}); bare `python -c pass` {info['python_startup'] * 1e3:.0f} ms")
        print(f"  python -X importtime: import sgdcli.cli {info['import_sgdcli_cli_ms']:.0f} ms, of which "
              + ", ".join(f"{name} {ms:.1f}" for ms, name in info["imports"])
              + f" ms; interpreter start-up imports (site, .pth files) {info['startup_imports_ms']:.0f} ms. "
              "The rest of --help is typer/click building and rich rendering the help text.")
        report["help"] = info
        target("`sgdcli --help` wall time", f"{info['median'] * 1e3:.0f} ms", "≤ 300 ms", info["median"] <= 0.3)

    machine_end = busy_cpu_seconds()
    if machine_start is not None and machine_end is not None:
        others = max(0.0, (machine_end - machine_start) - (own_cpu_seconds() - own_start))
        share = others / ((time.perf_counter() - wall_start) * (os.cpu_count() or 1))
        print(f"\nOther processes kept {share:.0%} of the machine's CPU time busy during this run"
              + (" — noisy: multi-threaded PyTorch suffers more from a busy core than single-threaded NumPy "
                 "elementwise code; rerun on a quiet machine" if share > 0.1 else "") + ".")
        report["others_cpu_share"] = share
    if targets:
        print("\n## Targets (issue 5)")
        print_table(["what", "measured", "target", ""], targets, markdown=False)
    if args.markdown:
        print("\n## Markdown (for the README's Performance section)\n")
        kernels = ", ".join(f"{p['internal_api']} {p['version']} {p['architecture']}" for p in blas_info())
        print(f"Measured by `python benchmarks/bench.py` on {os.cpu_count()} cores ({kernels}; {threads} BLAS threads, "
              f"torch.set_num_threads({threads})), NumPy {np.__version__}"
              + (f", PyTorch {torch.__version__}" if torch else "")
              + (f", scikit-learn {optional('sklearn').__version__}" if with_sklearn else "")
              + ". Medians over interleaved rounds; ratios per round, median (min-max).\n")
        if races:
            header, rows = race_rows(races)
            print_table(header, rows, markdown=True)
            print()
        if targets:
            print_table(["what", "measured", "target", ""], targets, markdown=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
