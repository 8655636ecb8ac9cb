"""The subprocess parts of benchmarks/bench.py: peak memory (the kernel's high-water marks of
resident memory, each job alone in its own process) and the wall time of `sgdcli --help`."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import HIDDEN, REPO, Bench

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
from bench_common import CASES, SgdcliRun, TorchRun, experiment
from sgdcli.training import build

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


CLI_MODULE = "sgdcli.cli.app"  # what `sgdcli` imports to build its command line


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
    trace = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {CLI_MODULE}"], capture_output=True,
                           text=True, check=True).stderr
    lines = []  # (depth, cumulative ms, module); a module's imports are printed before it, one level deeper
    for line in trace.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)", line)
        if match:
            lines.append((len(match.group(3)), int(match.group(2)) / 1000, match.group(4)))
    at = next(i for i, (_, _, name) in enumerate(lines) if name == CLI_MODULE)
    depth, total = lines[at][0], lines[at][1]
    children = []
    for child_depth, ms, name in reversed(lines[:at]):
        if child_depth <= depth:
            break
        if child_depth == depth + 2:
            children.append((ms, name))
    startup = sum(ms for d, ms, _ in lines if d == min(x[0] for x in lines) and _ != CLI_MODULE)
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
from sgdcli.training import build
from sgdcli.config.loading import load_config
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


def run_memory(bench: Bench) -> None:
    print("\n## Peak memory (kernel high-water marks in separate processes; tracemalloc misses BLAS and torch buffers)")
    torch, threads = bench.torch, bench.threads
    cli = cli_train_memory(bench.data_dir)
    print(f"  {cli['command']}: peak RSS {cli['peak_mb']:.0f} MB (target ≤ 400 MB: "
          f"{'met' if cli['peak_mb'] <= 400 else 'NOT met'}), {cli['seconds']:.1f} s wall, exit {cli['exit']}"
          + (f"; it reports {cli['seconds_per_epoch']:.3f} s of training per epoch (54,000 images, dropout, Adam)"
             if cli.get("seconds_per_epoch") else ""))
    bench.report["memory"] = {"cli": cli}
    bench.target("peak RSS of `sgdcli train configs/fashion-mlp.yaml --set training.epochs=1`",
                 f"{cli['peak_mb']:.0f} MB", "≤ 400 MB", cli["peak_mb"] <= 400)
    if torch:
        tm = torch_train_memory(bench.data_dir, threads)
        print(f"  {tm['command']}: peak RSS {tm['peak_mb']:.0f} MB, {tm['seconds']:.1f} s, exit {tm['exit']}")
        bench.report["memory"]["torch_cli_equivalent"] = tm
    activation = len(bench.x) * HIDDEN * bench.x.dtype.itemsize / 2**20
    alone = {}
    for which in ["sgdcli", "sgdcli-full"] + (["torch", "torch-full"] if torch else []):
        full = which.endswith("full")
        phase = phase_memory(which, bench.data_dir, threads, repeats=3 if full else 1)
        if phase:
            extra = phase["peak"] - phase["before"]
            label = "full-batch updates" if full else "a batch-128 Adam epoch"
            print(f"  {which.split('-')[0]:6s} {label}, alone in a process after a warm-up one: RSS "
                  f"{phase['before']:.0f} MB before (data + model), peak {phase['peak']:.0f} MB: +{extra:.0f} MB"
                  + (f" = {extra / activation:.2f} x an N x 512 float32 activation ({activation:.0f} MB); "
                     f"{statistics.median(phase['times']):.3f} s per update" if full else ""))
            bench.report["memory"][which] = phase
            if full:
                alone[which.split("-")[0]] = statistics.median(phase["times"])
            if which == "sgdcli-full":
                # the activation itself and the gradient arriving from layer 2 are inherent; one more is allowed
                bench.target("full-batch update: activation-sized (N x 512) buffers at peak", f"{extra / activation:.2f}",
                             "≤ 3 (activation, incoming gradient, one extra)", extra / activation <= 3.1)
    if len(alone) == 2:
        ratio = alone["sgdcli"] / alone["torch"]
        print(f"  full batch, each alone: sgdcli/PyTorch {ratio:.2f} per update (interleaved in one process, "
              "each pays for the pages the other just released: see the time table)")
        bench.target("full batch, each framework alone in its process: sgdcli / PyTorch per update", f"{ratio:.2f}",
                     "≤ 1", ratio <= 1)


def run_help(bench: Bench) -> None:
    print("\n## `sgdcli --help`")
    info = help_time(7)
    print(f"  {info['command']}: {info['median'] * 1e3:.0f} ms median of 7 (target ≤ 300 ms: "
          f"{'met' if info['median'] <= 0.3 else 'NOT met'}); bare `python -c pass` {info['python_startup'] * 1e3:.0f} ms")
    print(f"  python -X importtime: import {CLI_MODULE} {info['import_sgdcli_cli_ms']:.0f} ms, of which "
          + ", ".join(f"{name} {ms:.1f}" for ms, name in info["imports"])
          + f" ms; interpreter start-up imports (site, .pth files) {info['startup_imports_ms']:.0f} ms. "
          "The rest of --help is typer/click building and rich rendering the help text.")
    bench.report["help"] = info
    bench.target("`sgdcli --help` wall time", f"{info['median'] * 1e3:.0f} ms", "≤ 300 ms", info["median"] <= 0.3)
