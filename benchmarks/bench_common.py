"""What every part of benchmarks/bench.py shares: the network, the three runners (sgdcli as `sgdcli
train` runs it, PyTorch from the same weights on the same batches, scikit-learn), the interleaved
Race, the check that sgdcli and PyTorch compute the same updates, and the table printing."""

from __future__ import annotations

import copy
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sgdcli.engine.spin import kernel_for, load_numpy  # noqa: E402

# OpenBLAS as `sgdcli train` loads it for a float32 minibatch dense network (engine/spin.py's spin and kernel);
# a no-op where NumPy is loaded already (bench.py and bench_cnn.py load it for their own models first).
load_numpy(False, kernel_for(False))

import numpy as np  # noqa: E402

from sgdcli.config.loading import load_config
from sgdcli.engine import blas, metrics
from sgdcli.engine.busy import machine_busy_seconds
from sgdcli.training import build
from sgdcli.training.loop import Interrupted, Position, Problem, train_epochs

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


busy_cpu_seconds = machine_busy_seconds  # CPU seconds the whole machine has spent busy (/proc/stat)


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


def subnormal_fraction(array: np.ndarray) -> float:
    magnitude = np.abs(array)
    return float(((magnitude > 0) & (magnitude < np.finfo(array.dtype).tiny)).mean())


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
    placements: list[str] = field(default_factory=list)  # each round's (``timed_round``), when probed

    def add(self, who: str, seconds: float) -> None:
        self.times.setdefault(who, []).append(seconds)

    def add_round(self, times: dict[str, float], placement: str, per: int = 1) -> None:
        """A round's times (each divided by ``per``: seconds per update of a stretch) and its placement."""
        for who, seconds in times.items():
            self.add(who, seconds / per)
        self.placements.append(placement)

    def median(self, who: str) -> float | None:
        return statistics.median(self.times[who]) if who in self.times else None

    def ratio(self, who: str, other: str, placement: str | None = None) -> tuple[float, float, float] | None:
        """Median, min and max over rounds of who's time / other's time in the same round (only the rounds
        ``placement`` describes, when given)."""
        if who not in self.times or other not in self.times:
            return None
        ratios = [a / b for i, (a, b) in enumerate(zip(self.times[who], self.times[other]))
                  if placement is None or self.placements[i] == placement]
        return (statistics.median(ratios), min(ratios), max(ratios)) if ratios else None

    def placement_counts(self) -> dict[str, int]:
        """How many rounds each placement had, in PLACEMENTS order, then MIXED and ONE_THREAD."""
        return {p: self.placements.count(p) for p in (*PLACEMENTS, MIXED, ONE_THREAD) if p in self.placements}


# ---------------------------------------------------------------- where the process's two cores are
# A virtual machine's two cores are placed by its host, which moves them while a run goes on (phases of
# seconds to minutes). Two cores sharing a last-level cache hand data to each other in ~0.1 µs; in
# separate caches (another chiplet) in ~0.7 µs, so every array one BLAS thread writes and the other
# reads costs more; two hardware threads of one core share its arithmetic units, so a second BLAS
# thread adds almost nothing. Ratios of two frameworks that split their work differently move with it.
PLACEMENTS = {
    "one L3": "two cores sharing a last-level cache",
    "two L3s": "two cores with separate last-level caches",
    "one core": "two hardware threads of one core",
}
MIXED = "mixed"  # the placement changed within the round
ONE_THREAD = "one thread"  # NumPy's BLAS has one thread: no placement to tell


class PlacementProbe:
    """Which of PLACEMENTS the process runs on now, from the time of one 128x784 @ 784x512 float32 product on
    two BLAS threads over its time on one (the fastest of ``repeats`` each, ~30 ms in all). On the 2-core AMD
    EPYC VM, next to a C core-to-core ping-pong (a cache line handed back and forth between two pinned
    threads): 0.52-0.56 with round trips of 50-300 ns, 0.65-0.75 at 650-820 ns, 0.96-0.98 at 95-160 ns.
    None of it applies with one BLAS thread: the probe then answers "one thread"."""

    def __init__(self, repeats: int = 15) -> None:
        rng = np.random.default_rng(0)
        self.x = rng.random((BATCH, 784), dtype=np.float32)
        self.w = rng.standard_normal((784, HIDDEN), dtype=np.float32)
        self.out = np.empty((BATCH, HIDDEN), np.float32)
        self.repeats = repeats
        self.threads = numpy_blas_threads()

    def _fastest(self) -> float:
        best = math.inf
        for _ in range(self.repeats):
            start = time.perf_counter()
            np.matmul(self.x, self.w, out=self.out)
            best = min(best, time.perf_counter() - start)
        return best

    def __call__(self) -> str:
        if self.threads < 2:
            return ONE_THREAD
        np.matmul(self.x, self.w, out=self.out)
        two = self._fastest()
        with blas.threads(1):
            one = self._fastest()
        return "one L3" if two / one < 0.62 else "two L3s" if two / one < 0.85 else "one core"


def timed_round(runs: list[tuple[str, object]], r: int, probe: PlacementProbe) -> tuple[dict[str, float], str]:
    """One round of a race: each (name, run) in the order ``rotate(runs, r)``, the placement probed before each
    run and after the last. Returns the seconds of each run and the round's placement: the probes' one answer,
    or MIXED when they differ."""
    seen, times = {probe()}, {}
    for who, run in rotate(runs, r):
        times[who] = run()
        seen.add(probe())
    return times, seen.pop() if len(seen) == 1 else MIXED


def rotate(items: list, by: int) -> list:
    by %= len(items)
    return items[by:] + items[:by]


@dataclass
class Bench:
    """What each part of the benchmark gets (the options, the data, the frameworks) and adds to (the
    races, the report for --json, the rows of the targets table)."""

    data_dir: Path
    quick: bool
    rounds: int  # timed epochs per framework and optimizer
    prepared: build.PreparedData  # the whole training set, loaded as `sgdcli train` loads it
    x_test: np.ndarray
    y_test: np.ndarray
    torch: object | None  # the torch module, or None without it (or with --no-torch)
    with_sklearn: bool
    threads: int
    races: list[Race] = field(default_factory=list)
    report: dict = field(default_factory=dict)
    targets: list[list[str]] = field(default_factory=list)  # what, measured, target, verdict

    @property
    def x(self) -> np.ndarray:
        return self.prepared.x_train

    @property
    def y(self) -> np.ndarray:
        return self.prepared.y_train

    def target(self, what: str, measured: str, goal: str, met: bool) -> None:
        self.targets.append([what, measured, goal, "met" if met else "NOT met"])


# ---------------------------------------------------------------- 1. the same computation?
def check_same_computation(torch, x: np.ndarray, y: np.ndarray, data_dir: Path, updates: int = 5,
                           batch: int = BATCH, cases: dict | None = None) -> list[dict]:
    """Five updates from identical weights on identical batches: sgdcli's train_epochs vs PyTorch."""
    x, y = x[: updates * batch], y[: updates * batch]
    rows = []
    for case, optimizer in (CASES if cases is None else cases).items():
        mode = {"mode": "sgd"} if batch == 1 else {"mode": "minibatch", "size": batch}
        config = experiment(optimizer, mode, data_dir, shuffle=False)
        ours = SgdcliRun(config, x, y)
        start = {k: v.copy() for k, v in ours.problem.model.parameters().items()}
        theirs = TorchRun(torch, ours, optimizer, x, y)
        our_losses, their_losses = [], []
        ours.epoch(on_batch=lambda batch, value, losses=our_losses: losses.append(value))
        theirs.epoch(None, batch, losses=their_losses)
        after, reference = ours.problem.model.parameters(), theirs.weights()
        # The error relative to how far the weights moved: float32 rounding gives ~1e-6.
        update_error = max(float(np.linalg.norm(after[k] - reference[k]) / np.linalg.norm(reference[k] - start[k]))
                           for k in after)
        loss_error = max(abs(a - b) / abs(b) for a, b in zip(our_losses, their_losses))
        rows.append({"case": case, "batch": batch, "updates": len(our_losses), "update_error": update_error, "loss_error": loss_error,
                     "ok": len(our_losses) == len(their_losses) == updates and update_error < 1e-4 and loss_error < 1e-5})
    return rows


def same_computation(bench: Bench, batch1_cases: dict) -> bool:
    """Prints the check (batch 128, and batch 1 for `batch1_cases`); False if sgdcli and PyTorch
    disagree (the benchmark must then stop)."""
    print("## Same computation? 5 updates from the same weights on the same batches, sgdcli vs PyTorch")
    rows = (check_same_computation(bench.torch, bench.x, bench.y, bench.data_dir)
            + check_same_computation(bench.torch, bench.x, bench.y, bench.data_dir, batch=1, cases=batch1_cases))
    for row in rows:
        print(f"  batch {row['batch']:3d} {row['case']:13s} updates {row['updates']}, weights differ by {row['update_error']:.1e} of the "
              f"distance moved, losses by {row['loss_error']:.1e} (relative): {'agree' if row['ok'] else 'DISAGREE'}")
    bench.report["check"] = rows
    if not all(row["ok"] for row in rows):
        print("ABORT: sgdcli and PyTorch do not compute the same updates; a benchmark of different "
              "computations would be worthless.")
        return False
    print()
    return True


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
