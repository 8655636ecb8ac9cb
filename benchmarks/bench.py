"""sgdcli's training loop against PyTorch and scikit-learn on Fashion-MNIST: speed, memory, accuracy.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench.py [--quick] [--markdown]

(Unsetting the two OpenBLAS variables for this one command lets sgdcli pick OpenBLAS's kernel for the
processor as `sgdcli train` does (engine/spin.py; OpenBLAS's own choice elsewhere); the script prints
which kernel ran. Tests and CI never change them.)

The network is the 784-512-10 ReLU MLP, float32, on the 60,000 Fashion-MNIST training images.
sgdcli is run exactly as `sgdcli train` runs it: config -> `sgdcli.training.build` ->
`sgdcli.training.loop.Problem` -> `sgdcli.training.loop.train_epochs`; no benchmark-only path.
PyTorch (CPU, as many threads as NumPy's BLAS) starts from the same weights and sees the same
batches in the same order; scikit-learn's MLPClassifier (float32, `partial_fit` per epoch) starts
from its own. Their epochs are interleaved in one process, round by round in a rotating order, so
machine noise hits all alike; ratios are computed per round and reported as the median with the
min-max spread.

Before timing anything it checks that sgdcli and PyTorch compute the same thing (five updates
from identical weights on identical batches, per optimizer) and aborts if they do not.

Optional extras: `pip install -e '.[bench]'` (torch, scikit-learn); without them those columns are
skipped. Peak memory is read from the kernel (VmHWM / ru_maxrss) in separate subprocesses.

This file parses the options, runs the parts in order and prints the time and targets tables;
the parts are bench_common.py (runners, Race, the check), bench_minibatch.py, bench_batch1.py,
bench_full.py and bench_memory.py (peak memory, `sgdcli --help`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sgdcli.engine.spin import kernel_for, load_numpy  # noqa: E402


def batch1_only(argv: list[str]) -> bool:
    """Whether the command line races batch 1 alone (``--cases`` within check and batch1)."""
    cases = argparse.ArgumentParser(add_help=False)
    cases.add_argument("--cases", nargs="+", default=[])
    asked = set(cases.parse_known_args(argv)[0].cases)
    return "batch1" in asked and asked <= {"check", "batch1"}


# OpenBLAS loaded as `sgdcli train` loads it for the raced models (engine/spin.py), before anything imports
# NumPy: a batch-1 config keeps OpenBLAS's own kernels where a minibatch one gets others (on AMD Zen 4).
BATCH1_ONLY = batch1_only(sys.argv[1:])
LOADED_WITH = load_numpy(False, kernel_for(False, BATCH1_ONLY))

import bench_batch1  # noqa: E402
import bench_full  # noqa: E402
import bench_memory  # noqa: E402
import bench_minibatch  # noqa: E402
import numpy as np  # noqa: E402
from bench_common import (  # noqa: E402
    BATCH,
    CASES,
    DATA,
    MIXED,
    ONE_THREAD,
    PLACEMENTS,
    Bench,
    Race,
    blas_info,
    busy_cpu_seconds,
    experiment,
    fmt_ratio,
    fmt_seconds,
    numpy_blas_threads,
    optional,
    own_cpu_seconds,
    print_table,
    same_computation,
)

from sgdcli.training import build

TARGETS = {  # upper bounds on sgdcli's time divided by the other's, side by side (issues 5 and 16)
    ("sgd-momentum", "torch"): 0.8, ("adam", "torch"): 0.8, ("rmsprop", "torch"): 0.8,
    ("sgd-momentum", "sklearn"): 0.6, ("adam", "sklearn"): 0.6,
    ("batch-1 sgd", "torch"): 0.5, ("batch-1 sgd-momentum", "torch"): 0.5, ("full-batch", "torch"): 0.9,
}


def target_key(race: Race) -> str:
    """The race's first part of a TARGETS key: its optimizer case, "batch-1 <case>" or "full-batch"."""
    if race.name.startswith("batch 1 ("):
        return "batch-1 " + race.name.split(", ")[-1]
    return "full-batch" if race.name.startswith("full") else race.name.split(", ")[-1]


def verdict(ratio: tuple[float, float, float] | None, target: float | None) -> str:
    if ratio is None or target is None:
        return ""
    return f"≤ {target:g}: {'met' if ratio[0] <= target else 'NOT met'}"


def race_rows(races: list[Race]) -> tuple[list[str], list[list[str]]]:
    header = ["case", "per", "sgdcli", "PyTorch", "scikit-learn", "sgdcli/PyTorch (min-max)", "target",
              "sgdcli/sklearn (min-max)", "target", "test accuracy sgdcli / torch / sklearn"]
    rows = []
    for race in races:
        key = target_key(race)
        vs_torch, vs_sklearn = race.ratio("sgdcli", "torch"), race.ratio("sgdcli", "sklearn")
        accuracy = " / ".join(f"{race.accuracy[k]:.4f}" if k in race.accuracy else "-"
                              for k in ("sgdcli", "torch", "sklearn")) if race.accuracy else ""
        targets_apply = not race.name.startswith("batch 1 (fresh)")
        rows.append([race.name, race.unit, fmt_seconds(race.median("sgdcli")), fmt_seconds(race.median("torch")),
                     fmt_seconds(race.median("sklearn")), fmt_ratio(vs_torch),
                     verdict(vs_torch, TARGETS.get((key, "torch"))) if targets_apply else "",
                     fmt_ratio(vs_sklearn), verdict(vs_sklearn, TARGETS.get((key, "sklearn"))), accuracy])
        for placement, count in placement_rows(race):
            ratio = race.ratio("sgdcli", "torch", placement)
            rows.append([f"  rounds on {placement_text(placement)} ({count})", race.unit, "", "", "", fmt_ratio(ratio),
                         verdict(ratio, TARGETS.get((key, "torch"))) if targets_apply else "", "", "", ""])
        if "sgdcli, no flush" in race.times:
            rows.append([race.name + ", sgdcli without the subnormal flush", race.unit,
                         fmt_seconds(race.median("sgdcli, no flush")), fmt_seconds(race.median("torch")), "",
                         fmt_ratio(race.ratio("sgdcli, no flush", "torch")), "", "", "", ""])
    return header, rows


def placement_rows(race: Race) -> list[tuple[str, int]]:
    """(placement, rounds) of a race raced against PyTorch whose rounds were probed (bench_common.PlacementProbe),
    a row each; none when every round had one BLAS thread."""
    if "torch" not in race.times:
        return []
    return [(p, n) for p, n in race.placement_counts().items() if p != ONE_THREAD]


def placement_text(placement: str) -> str:
    return PLACEMENTS.get(placement, "cores that moved within the round" if placement == MIXED else placement)


def print_races(bench: Bench) -> None:
    """The time table of every race run, and their ratios against the targets."""
    races = bench.races
    print("\n## Time (medians over rounds; ratios are per round: median, min-max)")
    header, rows = race_rows(races)
    print_table(header, rows, markdown=False)
    for race in races:
        if race.note:
            print(f"  {race.name}: {race.note}")
    if any(placement_rows(race) for race in races):
        print("  Placement: a virtual machine's host moves its cores while a run goes on; each round is probed before "
              "each contestant and after the last (benchmarks/bench_common.py, PlacementProbe), and counted under "
              "the one placement all its probes saw, else as mixed.")
    bench.report["races"] = [{"name": r.name, "unit": r.unit, "times": r.times, "accuracy": r.accuracy,
                              "placements": r.placements} for r in races]
    for race in races:
        if race.name.startswith("batch 1 (fresh)"):
            continue
        for other, label in (("torch", "PyTorch"), ("sklearn", "scikit-learn")):
            ratio, goal = race.ratio("sgdcli", other), TARGETS.get((target_key(race), other))
            if ratio and goal:
                bench.target(f"{race.name}: sgdcli / {label} per {race.unit}", fmt_ratio(ratio), f"≤ {goal:g}",
                             ratio[0] <= goal)
                for placement, count in placement_rows(race) if other == "torch" else []:
                    part = race.ratio("sgdcli", other, placement)
                    bench.target(f"  in the {count} round{'s' if count > 1 else ''} on {placement_text(placement)}",
                                 fmt_ratio(part), f"≤ {goal:g}", part[0] <= goal)


def print_environment(torch, with_sklearn: bool, threads: int) -> dict:
    print("# sgdcli benchmark (issues 5 and 16)")
    print(f"python {platform.python_version()}, numpy {np.__version__}"
          + (f", torch {torch.__version__}" if torch else ", torch not installed")
          + (f", scikit-learn {optional('sklearn').__version__}" if with_sklearn else ", scikit-learn not installed"))
    print(f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; "
          f"BLAS threads {threads} (torch.set_num_threads({threads}))")
    for pool in blas_info():
        print(f"  {pool['library']} ({pool['internal_api']} {pool['version']}): kernel {pool['architecture']}, "
              f"{pool['num_threads']} threads")
    print(f"  loaded as `sgdcli train` loads it (engine/spin.py): {LOADED_WITH or 'OpenBLAS defaults'}")
    if not BATCH1_ONLY and kernel_for(False, True) != kernel_for(False, False):
        print("  note: batch 1 races here on the minibatch models' kernels; `sgdcli train` gives a batch-1 config "
              "OpenBLAS's own (race it alone: --cases check batch1)")
    pinned = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    if pinned:
        print(f"  note: {pinned} is set: OpenBLAS runs that kernel, not the one sgdcli or OpenBLAS picks for this "
              "CPU (run with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` to let them choose)")
    return {"blas": blas_info(), "pinned": pinned, "threads": threads, "loaded_with": LOADED_WITH}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and updates (a smoke run, ~1 minute)")
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs per framework and optimizer (default 5, quick 2)")
    parser.add_argument("--sgd-updates", type=int, default=None, help="batch-1 updates per timed stretch (default 3000)")
    parser.add_argument("--warm", type=int, default=None,
                        help="batch-1 updates between the fresh and the late timing (default 0: late = after 3000)")
    parser.add_argument("--batch1", nargs="+", default=list(bench_batch1.BATCH1_CASES),
                        choices=list(bench_batch1.BATCH1_CASES), help="the batch-1 optimizer cases to race")
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
    warm = args.warm if args.warm is not None else 0
    torch = None if args.no_torch else optional("torch")
    with_sklearn = not args.no_sklearn and optional("sklearn") is not None
    threads = numpy_blas_threads()
    if torch:
        torch.set_num_threads(threads)
    environment = print_environment(torch, with_sklearn, threads)

    machine_start, own_start, wall_start = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    start = time.perf_counter()
    base = experiment(CASES["adam"], {"mode": "minibatch", "size": BATCH}, args.data)
    prepared = build.prepare_data(base, build.Rngs.from_seed(base.seed))
    x = prepared.x_train
    test = build.load_test_set(base, prepared.class_names)
    x_test, y_test = prepared.scaler.transform(test.x, x.dtype), test.y
    print(f"data: {len(x):,} training and {len(x_test):,} test images of {x.shape[1]} pixels, {x.dtype} "
          f"(loaded in {time.perf_counter() - start:.1f} s)\n")
    bench = Bench(data_dir=args.data, quick=args.quick, rounds=rounds, prepared=prepared, x_test=x_test,
                  y_test=y_test, torch=torch, with_sklearn=with_sklearn, threads=threads,
                  report={"environment": environment})

    batch1_cases = {case: bench_batch1.BATCH1_CASES[case] for case in args.batch1}
    if "check" in args.cases and torch and not same_computation(bench, batch1_cases if "batch1" in args.cases else {}):
        return 1
    if "minibatch" in args.cases:
        bench.races += bench_minibatch.run_races(bench)
    if "batch1" in args.cases:
        bench.races += bench_batch1.run_races(bench, sgd_updates, warm, args.batch1)
    if "full" in args.cases:
        bench.races += bench_full.run_races(bench)
    if bench.races:
        print_races(bench)
    bench_minibatch.print_gemm_bound(bench)
    for case, part in (("subnormal", bench_minibatch.run_subnormal), ("profile", bench_minibatch.run_profile),
                       ("bookkeeping", bench_minibatch.run_bookkeeping), ("memory", bench_memory.run_memory),
                       ("help", bench_memory.run_help)):
        if case in args.cases:
            part(bench)

    machine_end = busy_cpu_seconds()
    if machine_start is not None and machine_end is not None:
        others = max(0.0, (machine_end - machine_start) - (own_cpu_seconds() - own_start))
        share = others / ((time.perf_counter() - wall_start) * (os.cpu_count() or 1))
        print(f"\nOther processes kept {share:.0%} of the machine's CPU time busy during this run"
              + (" — noisy: multi-threaded PyTorch suffers more from a busy core than single-threaded NumPy "
                 "elementwise code; rerun on a quiet machine" if share > 0.1 else "") + ".")
        bench.report["others_cpu_share"] = share
    targets = bench.targets
    if targets:
        print("\n## Targets (issues 5 and 16)")
        print_table(["what", "measured", "target", ""], targets, markdown=False)
    if args.markdown:
        print("\n## Markdown (for the README's Performance section)\n")
        kernels = ", ".join(f"{p['internal_api']} {p['version']} {p['architecture']}" for p in blas_info())
        print(f"Measured by `python benchmarks/bench.py` on {os.cpu_count()} cores ({kernels}; {threads} BLAS threads, "
              f"torch.set_num_threads({threads})), NumPy {np.__version__}"
              + (f", PyTorch {torch.__version__}" if torch else "")
              + (f", scikit-learn {optional('sklearn').__version__}" if with_sklearn else "")
              + ". Medians over interleaved rounds; ratios per round, median (min-max).\n")
        if bench.races:
            header, rows = race_rows(bench.races)
            print_table(header, rows, markdown=True)
            print()
        if targets:
            print_table(["what", "measured", "target", ""], targets, markdown=True)
    if args.json:
        args.json.write_text(json.dumps(bench.report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
