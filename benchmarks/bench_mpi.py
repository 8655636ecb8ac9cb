"""Data-parallel speed-up: the Fashion-MNIST MLP (784-512-10, ReLU, Adam, float32) trained by
`train_epochs` on P = 2 MPI processes with one BLAS thread each, against P = 1 with one thread.

    flock /tmp/sgdcli-heavy.lock python benchmarks/bench_mpi.py [--rounds 5] [--messages] [--bind-to both]
    flock /tmp/sgdcli-heavy.lock python benchmarks/bench_mpi.py --profile [--case 'full batch'] [--messages]

The script launches its own workers (`python bench_mpi.py --worker` alone, and under the venv's
`mpiexec -n 2`, plain as README shows it, or with `-bind-to core`). It first checks that both compute
the same thing (weights after 3 updates agree to float64 rounding) and aborts if not; then it times,
per case, whole epochs (minibatch 512, 106 updates) or single updates (full batch, 54,000 images), the
variants interleaved with their order alternating, and reports the median time, the speed-up over
P = 1, what combining the gradients costs per update, and the optimizer step alone (P = 2: each
rank's half). Combining is every collective, including any wait for the slower rank, and the ordered
sum: on one machine the loss sums' allgather and the barrier before the updated weights are read from
shared memory; with `--messages`, as across machines, the gradient slices' alltoall and the weights'
allgather instead; then the divergence check's norms and the optimizer state after an epoch.
`--profile` times each phase of an update on every rank. Needs `pip install -e '.[mpi]'` and Fashion-MNIST.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DATA = Path("/usr/share/datasets/fashion-mnist")
MPIEXEC = Path(sys.executable).parent / "mpiexec"
THREADS = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
CASES = {"minibatch 512": {"mode": "minibatch", "size": 512}, "full batch": {"mode": "full"}}


def experiment(batch: dict, dropout: bool, dtype: str = "float32"):
    from sgdcli.config.loading import load_config

    layers = [{"type": "dense", "units": 512, "activation": "relu"}, {"type": "dense", "units": 10}]
    if dropout:
        layers.insert(1, {"type": "dropout", "rate": 0.2})
    return load_config({
        "name": "bench-mpi", "seed": 0, "data": {"source": "idx", "path": str(DATA), "validation": 0.1},
        "model": {"layers": layers, "dtype": dtype}, "loss": {"type": "cross_entropy"},
        "optimizer": {"type": "adam", "learning_rate": 0.001}, "training": {"epochs": 1000, "batch": batch},
    })


class TimedComm:
    """The MPI communicator, timing every collective (the transfer and any wait for the other rank)."""

    def __init__(self, comm) -> None:
        self.comm, self.rank, self.size, self.seconds = comm, comm.rank, comm.size, 0.0

    def _timed(self, collective, *arguments) -> None:
        started = time.perf_counter()
        collective(*arguments)
        self.seconds += time.perf_counter() - started

    def allgather(self, send, out) -> None:
        self._timed(self.comm.allgather, send, out)

    def allgather_slices(self, buffer) -> None:
        self._timed(self.comm.allgather_slices, buffer)

    def alltoall(self, send, out) -> None:
        self._timed(self.comm.alltoall, send, out)

    def broadcast(self, data):
        return self.comm.broadcast(data)

    def shared(self, shape, dtype):
        return self.comm.shared(shape, dtype)

    def fence(self) -> None:
        self.comm.fence()

    def barrier(self) -> None:
        self._timed(self.comm.barrier)


def worker(args) -> None:
    """One process of a measurement: `--updates` updates (or `--epochs` epochs) after one warm-up update."""
    from sgdcli.training import parallel
    from sgdcli.training.loop import Interrupted, Position, train_epochs
    from sgdcli.training.session import _build

    config = experiment(CASES[args.case], args.dropout, "float64" if args.weights else "float32")
    _, problem, rngs = _build(config, config.training.epochs)
    timed, summed = None, [0.0]
    if parallel.launched_size() > 1:
        timed = TimedComm(parallel.MpiCommunicator())
        if args.messages:  # as on several machines: no shared memory, the gradient slices sent by alltoall
            timed.shared = lambda shape, dtype: None
        data_parallel = parallel.DataParallel(timed)
        data_parallel.attach(config, problem)
        plain_sum = parallel.ordered_sum

        def timed_sum(rows, out):
            started = time.perf_counter()
            plain_sum(rows, out)
            summed[0] += time.perf_counter() - started
            return out
        parallel.ordered_sum = timed_sum
    optimizer = getattr(problem.optimizer, "optimizer", problem.optimizer)  # sharded: the slice's own step
    plain_step, stepping = optimizer.step, [0.0]

    def timed_step(*args):
        started = time.perf_counter()
        plain_step(*args)
        stepping[0] += time.perf_counter() - started
    optimizer.step = timed_step
    position, done = Position(), [0]
    limit = [1]  # the warm-up update: BLAS buffers, fresh pages

    def stop() -> bool:
        done[0] += 1
        return done[0] >= limit[0]

    def run(updates: int) -> float:
        limit[0], done[0] = updates, 0
        started = time.perf_counter()
        try:
            for _ in train_epochs(problem, position, 10**6, rngs.shuffle, rngs.dropout, should_stop=stop):
                pass
        except Interrupted:
            pass
        return time.perf_counter() - started

    run(1)
    gather_before, summed[0], stepping[0] = timed.seconds if timed else 0.0, 0.0, 0.0
    seconds = run(args.updates)
    result = {"seconds": seconds, "updates": args.updates, "step": stepping[0],
              "gather": (timed.seconds - gather_before) if timed else 0.0, "sum": summed[0]}
    if args.weights:
        if not timed or timed.rank == 0:
            np.savez(args.weights, **problem.model.parameters())
    if not timed or timed.rank == 0:
        print(json.dumps(result), flush=True)


def profile_worker(args) -> None:
    """Where an update's time goes, phase by phase (the loop's steps written out, timed one by one)."""
    from sgdcli.training import parallel
    from sgdcli.training.loop import nonfinite
    from sgdcli.training.session import _build

    config = experiment(CASES[args.case], args.dropout)
    _, problem, rngs = _build(config, 10)
    data_parallel = None
    if parallel.launched_size() > 1:
        data_parallel = parallel.DataParallel(parallel.MpiCommunicator())
        data_parallel.attach(config, problem)
        if args.messages:  # as on several machines
            data_parallel.comm.shared = lambda shape, dtype: None
        data_parallel._share_memory()  # as the first update does
    model, loss, params = problem.model, problem.loss, problem.model.parameters()
    phases: dict[str, float] = {}

    def timed(name, function, *arguments):
        started = time.perf_counter()
        result = function(*arguments)
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - started
        return result

    size, order, updates = problem.batch_size, rngs.shuffle.permutation(len(problem.x)), 60
    for update in range(updates + 5):
        if update == 5:  # after the warm-up
            phases.clear()
        start = (update * size) % (len(problem.x) - size + 1)
        lo, hi = (0, size) if data_parallel is None else data_parallel.shard(size)
        rows = slice(lo, hi) if size >= len(problem.x) else order[start + lo : start + hi]  # full batch: slices
        xb, yb = timed("batch gather", lambda: (problem.x[rows], problem.y[rows]))
        outputs, caches = timed("forward", model.forward, xb, True, rngs.dropout)
        value, dout = timed("loss", loss.value_and_grad, outputs, yb)
        into = None if data_parallel is None else data_parallel.into if data_parallel.rows is not None else None
        grads = timed("backward", lambda: model.backward(dout * ((hi - lo) / size), caches, into=into))
        if data_parallel is None:
            timed("divergence check", nonfinite, grads)
            timed("optimizer step", problem.optimizer.step, params, grads, 0.001)
            continue
        dp = data_parallel

        def pack():
            for key, destination, part in dp._copies:
                np.copyto(destination, grads[key].reshape(-1)[part])
        if dp.rows is None:
            timed("pack", pack)
            timed("alltoall" if dp.sharded else "allgather", dp._exchange, dp.send, dp.received)
        else:  # the gradients were computed into shared memory: only the loss sums travel
            timed("loss allgather", dp._send_update)
        if dp.sharded:
            timed("ordered sum", dp._add, grads)
        else:
            timed("ordered sum", parallel.ordered_sum, dp.received, dp.total)
        timed("divergence check", dp.nonfinite, dp.grads)
        if dp.sharded:
            timed("optimizer step", dp.optimizer.optimizer.step, dp.optimizer.params, dp.grads, 0.001)
            timed("weights allgather" if dp.rows is None else "weights exchange", dp._share)
        else:
            timed("optimizer step", problem.optimizer.step, params, dp.grads, 0.001)
    # every rank prints: a slower one shows as the others' wait in the collectives
    total = sum(phases.values())
    rank = "" if data_parallel is None else f" rank {data_parallel.rank}"
    print(f"P={1 if data_parallel is None else data_parallel.size}{rank}: {total / updates * 1e3:.2f} ms an update: "
          + ", ".join(f"{name} {seconds / updates * 1e3:.2f}" for name, seconds in phases.items()), flush=True)


def mpiexec(processes: int, bind_to: str) -> list[str]:
    return [str(MPIEXEC), *(["-bind-to", bind_to] if bind_to != "none" else []), "-n", str(processes)]


def launch(case: str, processes: int, updates: int, dropout: bool, weights: Path | None = None,
           messages: bool = False, bind_to: str = "none") -> dict:
    command = [sys.executable, __file__, "--worker", "--case", case, "--updates", str(updates)]
    command += ["--dropout"] * dropout + (["--weights", str(weights)] if weights else []) + ["--messages"] * messages
    if processes > 1:
        command = [*mpiexec(processes, bind_to), *command]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_"))}, **THREADS}
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def check_same(case: str, dropout: bool) -> float:
    """Largest difference between P = 1's and P = 2's weights after 3 updates, relative to how far they
    moved; in float64, where a wrong shard or a gradient counted twice shows above the rounding."""
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"p{p}.npz" for p in (1, 2)]
        for p, path in zip((1, 2), paths):
            launch(case, p, 3, dropout, path)
        one, two = (np.load(path) for path in paths)
        start = launch_initial(case, dropout, Path(folder) / "p0.npz")
        moved = max(float(np.abs(one[k] - start[k]).max()) for k in one.files)
        return max(float(np.abs(one[k] - two[k]).max()) for k in one.files) / moved


def launch_initial(case: str, dropout: bool, path: Path):
    from sgdcli.training.session import _build

    config = experiment(CASES[case], dropout, "float64")
    np.savez(path, **_build(config, 1)[1].model.parameters())
    return np.load(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", default="minibatch 512", choices=list(CASES))
    parser.add_argument("--updates", type=int, default=0)
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--dropout", action="store_true", help="with dropout 0.2 after the hidden layer")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="time each phase of an update of --case instead")
    parser.add_argument("--messages", action="store_true",
                        help="also time P = 2 sending the gradient slices as messages (as across machines)")
    parser.add_argument("--bind-to", default="none", choices=["core", "none", "both"],
                        help="mpiexec's -bind-to (core: each process stays on its own core; both: time each)")
    args = parser.parse_args()
    if args.worker:
        return profile_worker(args) if args.profile else worker(args)
    if args.profile:  # where the time of a minibatch update goes, P = 1 and P = 2
        for processes in (1, 2):
            command = [sys.executable, __file__, "--worker", "--profile", "--case", args.case]
            command += ["--messages"] * args.messages
            bind_to = "core" if args.bind_to == "both" else args.bind_to
            command = [*mpiexec(2, bind_to), *command] if processes > 1 else command
            env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_"))}, **THREADS}
            print(subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout.strip())
        return None
    rows = []
    for case in CASES:
        difference = check_same(case, args.dropout)
        print(f"{case}: P=1 and P=2 float64 weights after 3 updates differ by {difference:.1e} of the distance moved",
              flush=True)
        if difference > 1e-9:
            raise SystemExit("P = 1 and P = 2 do not compute the same updates: not timing them")
        updates = 106 if case.startswith("minibatch") else 5  # one epoch of 54,000 / 512; five full-batch updates
        bindings = ["core", "none"] if args.bind_to == "both" else [args.bind_to]
        variants = {"P=1": (1, False, "none")}
        for bind_to in bindings:
            suffix = f", -bind-to {bind_to}" if len(bindings) > 1 else ""
            variants[f"P=2{suffix}"] = (2, False, bind_to)
            if args.messages:
                variants[f"P=2 messages{suffix}"] = (2, True, bind_to)
        times: dict[str, list[float]] = {name: [] for name in variants}
        combine: dict[str, list[float]] = {name: [] for name in variants}
        step: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(args.rounds):
            for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):  # interleaved, order alternating
                processes, messages, bind_to = variants[name]
                result = launch(case, processes, updates, args.dropout, messages=messages, bind_to=bind_to)
                times[name].append(result["seconds"] / updates)
                step[name].append(result["step"] / updates)
                combine[name].append((result["gather"] + result["sum"]) / updates)
        rows.append((case, times, combine, step))
    print(f"mpiexec -bind-to {args.bind_to}; {args.rounds} rounds")
    print("| case | processes | per update | speed-up over P=1, median (min–max) | speed-up, best rounds | "
          "collectives and ordered sum | optimizer step (P=1: with the first layer's weight-gradient product, "
          "which one process's update computes itself) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for case, times, combine, step in rows:
        one = times["P=1"]
        for name, seconds in times.items():
            ratios = [a / b for a, b in zip(one, seconds)]
            middle = statistics.median(seconds)
            print(f"| {case}{' + dropout' * args.dropout} | {name} | {middle * 1e3:.2f} ms | "
                  f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f}) | "
                  f"{min(one) / min(seconds):.2f}× | {statistics.median(combine[name]) * 1e3:.2f} ms "
                  f"({statistics.median(combine[name]) / middle:.0%}) | {statistics.median(step[name]) * 1e3:.2f} ms |")

if __name__ == "__main__":
    main()
