"""The CNN race of issue 13: sgdcli against PyTorch CPU at the same thread count, interleaved in one
process, from the same weights on the same batches, after a check that both compute the same updates.

    conv3x3(1->32) relu maxpool2 -> conv3x3(32->64) relu maxpool2 -> flatten -> dense 10
    (and --batch-norm: a batch_norm after each conv), Fashion-MNIST, batch 128, Adam (lr 1e-3)

    flock /tmp/sgdcli-heavy.lock python benchmarks/bench_cnn.py [--rounds 3] [--markdown]

Prints: the same-computation check, epoch times per round and their ratio, peak resident memory of
each framework training alone in a child process (its VmHWM), and where sgdcli's time goes by op.

sgdcli runs as `sgdcli train` runs a conv model: NumPy is loaded through engine/spin.py's
`load_numpy`, the one rule that chooses OpenBLAS's idle spin for a process (2^18 cycles for a model
with conv2d layers, unless OPENBLAS_THREAD_TIMEOUT is set: then that), before anything else imports
NumPy. The header line says which spin OpenBLAS read. `env OPENBLAS_THREAD_TIMEOUT=N python ...`
races another spin, as a user's own setting would.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sgdcli.engine.spin import kernel_for, load_numpy, loaded_spin  # noqa: E402

load_numpy(True, kernel_for(False))  # both race networks have conv2d layers (checked in main), float32, batch 128:
# the spin and kernels `sgdcli train` gives them

import numpy as np  # noqa: E402

from bench_common import TorchRun, numpy_blas_threads  # noqa: E402

from sgdcli.config.loading import load_config  # noqa: E402
from sgdcli.engine.allocator import retain_freed_memory  # noqa: E402
from sgdcli.engine.conv import Conv2d  # noqa: E402
from sgdcli.engine.fusion import stages  # noqa: E402
from sgdcli.engine.layers import Dense  # noqa: E402
from sgdcli.engine.normalization import BatchNorm  # noqa: E402
from sgdcli.training import build  # noqa: E402
from sgdcli.training.loop import Position, Problem, train_epochs  # noqa: E402

DATA = Path("/usr/share/datasets/fashion-mnist")
BATCH, LR, CLASSES = 128, 1e-3, 10


def experiment(batch_norm: bool, shuffle: bool = True):
    norm = [{"type": "batch_norm"}] if batch_norm else []
    layers = [{"type": "conv2d", "filters": 32, "kernel_size": 3, "activation": "relu"}, *norm,
              {"type": "max_pool2d", "pool_size": 2},
              {"type": "conv2d", "filters": 64, "kernel_size": 3, "activation": "relu"}, *norm,
              {"type": "max_pool2d", "pool_size": 2}, {"type": "flatten"}, {"type": "dense", "units": CLASSES}]
    return load_config({
        "name": "bench-cnn", "seed": 0, "data": {"source": "idx", "path": str(DATA), "validation": 0},
        "model": {"layers": layers}, "loss": {"type": "cross_entropy"},
        "optimizer": {"type": "adam", "learning_rate": LR},
        "training": {"epochs": 1000, "batch": {"mode": "minibatch", "size": BATCH}, "shuffle": shuffle}})


def load_data():
    config = experiment(False)
    prepared = build.prepare_data(config, build.Rngs.from_seed(0))
    return prepared.x_train, prepared.y_train


class Ours:
    """The Problem `sgdcli train` builds, trained by train_epochs one epoch (or a few updates) at a time."""

    def __init__(self, config, x: np.ndarray, y: np.ndarray) -> None:
        self.rngs = build.Rngs.from_seed(config.seed)
        model = build.build_model(config.model, (28, 28), CLASSES, self.rngs.init)
        self.problem = Problem(model=model, loss=build.build_loss(config.loss),
                               optimizer=build.build_optimizer(config.optimizer),
                               schedule=build.build_schedule(config.optimizer, math.ceil(len(x) / BATCH), 1000),
                               x=x, y=y, batch_size=BATCH, shuffle=config.training.shuffle)
        self.position = Position()

    def next_order(self) -> np.ndarray:
        import copy
        return copy.deepcopy(self.rngs.shuffle).permutation(len(self.problem.x))

    def epoch(self, losses: list | None = None) -> float:
        start = time.perf_counter()
        on_batch = None if losses is None else (lambda done, value: losses.append(value))
        next(train_epochs(self.problem, self.position, self.position.epoch + 1, self.rngs.shuffle,
                          self.rngs.dropout, on_batch))
        return time.perf_counter() - start


class Theirs(TorchRun):
    """The same network in PyTorch, with sgdcli's initial weights (dense weight transposed); TorchRun's epoch."""

    def __init__(self, torch, ours: Ours, x: np.ndarray, y: np.ndarray) -> None:
        nn, self.torch = torch.nn, torch
        layers = []
        for layer in ours.problem.model.layers:
            if isinstance(layer, Conv2d):
                conv = nn.Conv2d(layer.in_channels, layer.filters, layer.kernel_size)
                with torch.no_grad():
                    conv.weight.copy_(torch.from_numpy(layer.weight))
                    conv.bias.copy_(torch.from_numpy(layer.bias))
                layers += [conv, nn.ReLU()]
            elif isinstance(layer, BatchNorm):
                layers.append(nn.BatchNorm2d(layer.features, eps=layer.epsilon, momentum=layer.momentum))
            elif isinstance(layer, Dense):
                dense = nn.Linear(layer.in_features, layer.units)
                with torch.no_grad():
                    dense.weight.copy_(torch.from_numpy(layer.weight.T.copy()))
                    dense.bias.copy_(torch.from_numpy(layer.bias))
                layers.append(dense)
            elif type(layer).__name__ == "MaxPool2d":
                layers.append(nn.MaxPool2d(layer.pool_size, layer.stride))
            else:
                layers.append(nn.Flatten())
        self.net = nn.Sequential(*layers)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8)
        self.x, self.y = torch.from_numpy(x).reshape(-1, 1, 28, 28), torch.from_numpy(y)

    def weights(self) -> list[np.ndarray]:
        return [p.detach().numpy() for p in self.net.parameters()]


def same_computation(torch, x, y, batch_norm: bool, updates: int = 5) -> dict:
    """`updates` Adam steps from the same weights on the same batches; errors relative to the distance moved."""
    x, y = x[: updates * BATCH], y[: updates * BATCH]
    ours = Ours(experiment(batch_norm, shuffle=False), x, y)
    start = [a.copy() for a in _ours_in_torch_order(ours)]
    theirs = Theirs(torch, ours, x, y)
    our_losses, their_losses = [], []
    ours.epoch(our_losses)
    theirs.epoch(None, BATCH, losses=their_losses)
    errors = [float(np.linalg.norm(a - b) / np.linalg.norm(b - s))
              for a, b, s in zip(_ours_in_torch_order(ours), theirs.weights(), start)]
    loss_error = max(abs(a - b) / abs(b) for a, b in zip(our_losses, their_losses))
    return {"update_error": max(errors), "loss_error": loss_error, "ok": max(errors) < 1e-3 and loss_error < 1e-4}


def _ours_in_torch_order(ours: Ours) -> list[np.ndarray]:
    arrays = []
    for layer in ours.problem.model.layers:
        for name, array in layer.params.items():
            arrays.append(array.T if isinstance(layer, Dense) and name == "weight" else array)
    return arrays


def peak_memory(which: str, batch_norm: bool, threads: int) -> float:
    """MiB of the peak resident memory of a child process that loads the data and trains 100 updates,
    alone. The child reports its own VmHWM: ru_maxrss would also count the parent's pages it was
    forked with (the high-water mark survives exec), and RUSAGE_CHILDREN is the maximum over every
    child so far."""
    command = [sys.executable, __file__, "--child", which, "--threads", str(threads)] + (["--batch-norm"] * batch_norm)
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def child(which: str, batch_norm: bool, threads: int) -> None:
    x, y = load_data()
    x, y = x[: 100 * BATCH], y[: 100 * BATCH]
    ours = Ours(experiment(batch_norm), x, y)
    if which == "torch":
        import torch
        torch.set_num_threads(threads)
        Theirs(torch, ours, x, y).epoch(ours.next_order(), BATCH)
    else:
        ours.epoch()
    status = Path("/proc/self/status").read_text()
    print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))  # KiB


def profile(x, y, batch_norm: bool, updates: int = 60) -> list[tuple[str, float]]:
    """Seconds per update of each stage's forward and backward (a layer, or a conv and its max pool run
    as one: engine/fusion.py), the loss and the optimizer step."""
    retain_freed_memory()  # as train_epochs does
    ours = Ours(experiment(batch_norm), x, y)
    model, loss, optimizer, params = ours.problem.model, ours.problem.loss, ours.problem.optimizer, \
        ours.problem.model.parameters()
    times: dict[str, float] = defaultdict(float)
    order = ours.next_order()
    for step in range(updates):
        index = order[step * BATCH:(step + 1) * BATCH]
        tick = time.perf_counter()
        out = model._input(x[index])
        caches = []
        times["batch gather"] += time.perf_counter() - tick
        plan = [(f"{i} {type(stage).__name__}", i, stage) for i, stage in stages(model.layers)]
        for name, _, stage in plan:
            tick = time.perf_counter()
            out, cache = stage.forward(out, training=True, rng=ours.rngs.dropout)
            caches.append(cache)
            times[f"{name} forward"] += time.perf_counter() - tick
        tick = time.perf_counter()
        _, dout = loss.value_and_grad(out, y[index])
        times["loss"] += time.perf_counter() - tick
        grads = {}
        for number in range(len(plan) - 1, -1, -1):
            name, i, stage = plan[number]
            tick = time.perf_counter()
            dout, g = stage.backward(dout, caches[number], need_dx=number > 0)
            grads.update({f"{i}.{k}": v for k, v in g.items()})
            times[f"{name} backward"] += time.perf_counter() - tick
        tick = time.perf_counter()
        optimizer.step(params, grads, LR)
        times["Adam step"] += time.perf_counter() - tick
    return [(name, seconds / updates) for name, seconds in times.items()]


def table(header: list[str], rows: list[list[str]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(header) + " |\n|" + "|".join(" --- " for _ in header) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))


def race(torch, x, y, batch_norm: bool, rounds: int) -> dict:
    ours = Ours(experiment(batch_norm), x, y)
    theirs = Theirs(torch, ours, x, y)
    times = defaultdict(list)
    for r in range(rounds):  # alternate who goes first, so drift hits both
        order = ours.next_order()
        runs = [("sgdcli", ours.epoch), ("torch", lambda: theirs.epoch(order, BATCH))]
        for who, run in (runs if r % 2 == 0 else runs[::-1]):
            times[who].append(run())
            print(f"  round {r + 1}: {who} {times[who][-1]:.2f} s", flush=True)
    ratios = [a / b for a, b in zip(times["sgdcli"], times["torch"])]
    return {"sgdcli": statistics.median(times["sgdcli"]), "torch": statistics.median(times["torch"]),
            "ratio": statistics.median(ratios), "ratio_range": (min(ratios), max(ratios))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--batch-norm", action="store_true", help="only the race with batch norm")
    parser.add_argument("--no-batch-norm", action="store_true", help="only the race without batch norm")
    parser.add_argument("--profile-only", action="store_true")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--child", choices=["sgdcli", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = args.threads or numpy_blas_threads()
    if args.child:
        return child(args.child, args.batch_norm, threads)
    import torch
    torch.set_num_threads(threads)
    assert all(experiment(batch_norm).model.convolutional for batch_norm in (False, True))
    x, y = load_data()
    variants = [False, True]
    if args.batch_norm or args.no_batch_norm:
        variants = [args.batch_norm]
    print(f"# CNN race: Fashion-MNIST {len(x)} images, batch {BATCH}, Adam, {threads} threads "
          f"(NumPy's BLAS and torch.set_num_threads), torch {torch.__version__}, NumPy {np.__version__}, "
          f"OPENBLAS_THREAD_TIMEOUT as OpenBLAS read it: {loaded_spin()} (0: its default, 28)\n")
    rows, profiles = [], {}
    for batch_norm in variants:
        name = "with batch norm" if batch_norm else "plain"
        if args.memory_only:
            mem = {who: peak_memory(who, batch_norm, threads) for who in ("sgdcli", "torch")}
            print(f"{name}: peak RSS sgdcli {mem['sgdcli']:.0f} MiB, PyTorch {mem['torch']:.0f} MiB")
            continue
        profiles[name] = profile(x, y, batch_norm)
        if args.profile_only:
            continue
        check = same_computation(torch, x, y, batch_norm)
        print(f"## {name}: 5 updates from the same weights: weights differ by {check['update_error']:.1e} of the "
              f"distance moved, losses by {check['loss_error']:.1e}: {'agree' if check['ok'] else 'DISAGREE'}")
        if not check["ok"]:
            sys.exit("ABORT: sgdcli and PyTorch do not compute the same thing")
        result = race(torch, x, y, batch_norm, args.rounds)
        mem = {who: peak_memory(who, batch_norm, threads) for who in ("sgdcli", "torch")}
        low, high = result["ratio_range"]
        rows.append([name, f"{result['sgdcli']:.2f} s", f"{result['torch']:.2f} s",
                     f"{result['ratio']:.2f} ({low:.2f}-{high:.2f})", f"{mem['sgdcli']:.0f} MiB",
                     f"{mem['torch']:.0f} MiB"])
    if rows:
        print(f"\n## Epoch time (median of {args.rounds} interleaved rounds) and peak memory (100 updates, alone)\n")
        table(["network", "sgdcli", "PyTorch", "sgdcli / PyTorch", "sgdcli peak RSS", "PyTorch peak RSS"], rows,
              args.markdown)
    for name, ops in profiles.items():
        total = sum(seconds for _, seconds in ops)
        print(f"\n## Where sgdcli's time goes, {name} ({total * 1e3:.1f} ms an update, "
              f"{total * math.ceil(len(x) / BATCH):.1f} s an epoch by this sum)\n")
        table(["op", "ms per update", "share"],
              [[op, f"{seconds * 1e3:.2f}", f"{seconds / total:.0%}"] for op, seconds in ops], args.markdown)


if __name__ == "__main__":
    main()
