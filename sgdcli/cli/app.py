"""The command line: each command parses, calls one library function, renders. No numpy here."""

from __future__ import annotations

import functools
import signal
from enum import Enum
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import typer

from sgdcli.cli import ranks
from sgdcli.cli.before_numpy import config_and_numpy, load_numpy_for_run, spin_for_file
from sgdcli.cli.sweeping import SweepExecutor
from sgdcli.errors import SgdcliError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: rich markup would eat "[default: ...]" in help texts and label every flag <bool>.
    rich_markup_mode=None,
    help="Train neural networks with gradient descent from YAML configs.\n\n"
    "Exit status: 0 success, 2 bad usage or config, 3 bad data, 4 bad checkpoint or run directory, "
    "5 training diverged, 6 disk full or file-size limit, 130 interrupted (143 on SIGTERM).",
)

INTERRUPTED = 130
DIVERGED = 5


def _boundary(command: Callable) -> Callable:
    """Our own errors become one message on stderr and the documented exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from sgdcli.cli import render
        from sgdcli.training.interrupts import graceful_stop

        ranks.speak()  # (under mpiexec: what this process says is ranks.error's choice)
        try:
            if command.__name__ != "train":  # under mpiexec only train runs
                ranks.one_process({"evaluate": "eval"}.get(command.__name__, command.__name__.replace("_", "-")))
            with graceful_stop():  # Ctrl-C (130) or SIGTERM (143) stop any command at once; train defers
                return command(*args, **kwargs)
        except SgdcliError as exc:
            ranks.error(render.error, str(exc), exc.exit_code, exc.only_here)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:  # before training started (or a Stopped from a signal handler)
            signum = getattr(exc, "signum", signal.SIGINT)
            ranks.error(render.error, "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}",
                        128 + signum)
            raise typer.Exit(128 + signum) from None

    return wrapper


def _choices(name: str, *values: str) -> type[Enum]:
    """A str Enum of `values` (each member's name and value), the choices of an option."""
    return Enum(name, [(value, value) for value in values], type=str)


Split = _choices("Split", "test", "val", "train")
XAxis = _choices("XAxis", "epoch", "step", "updates", "samples", "forward_passes", "seconds")
PredictFormat = _choices("PredictFormat", "csv", "json")
ExportFormat = _choices("ExportFormat", "onnx", "torch", "npz")
Format = _choices("Format", "table", "markdown", "csv", "json")


TARGET_HELP = "A run directory (its best checkpoint, else last) or a checkpoint file."
FORCE = typer.Option(False, "--force", metavar="",
                     help="Replace the output file(s) if they exist (otherwise an existing file is never "
                          "overwritten).")
SET_HELP = "Override a config value by dotted path, e.g. optimizer.momentum=0.9 or model.layers.0.units=128 (repeatable)."


@app.command()
@_boundary
def train(
    config: Optional[Path] = typer.Argument(None, help="Experiment config (YAML). Optional with --resume."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP, metavar="KEY=VALUE"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where run directories are created."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default: the config's name)."),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN_DIR",
                                          help="Continue this run from its newest valid checkpoint, exactly where it "
                                               "stopped. A CONFIG or --set may only raise training.epochs."),
    sweep: List[str] = typer.Option([], "--sweep", metavar="KEY=V1,V2,...",
                                    help="Train every combination of the listed values (repeatable), each a normal "
                                         "run named after its values, then print their comparison."),
    jobs: int = typer.Option(1, "--jobs", help="Sweep members trained at the same time (separate processes)."),
    executor: SweepExecutor = typer.Option(SweepExecutor.local, "--executor", help="Where sweep members train: "
                                           "local processes, or tasks on a Dask cluster (needs --scheduler)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", metavar="tcp://HOST:PORT",
                                            help="With --executor dask: the Dask scheduler's address."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", metavar="DIR", help="Train into exactly this new "
                                           "directory (instead of RUNS_DIR/<name>-<time>); refused if it exists."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="With --sweep or --seeds: where the overlaid loss curves "
                                        "go [default: compare.png]."),
    seeds: Optional[int] = typer.Option(None, "--seeds", metavar="K",
                                        help="Train with K seeds (the config's and the next K-1), then compare them "
                                             "as mean ± standard deviation with a min-max band."),
    force: bool = typer.Option(False, "--force", metavar="", help="With --sweep or --seeds: replace the comparison's "
                               "plots if they exist (otherwise an existing file is never overwritten)."),
) -> None:
    """Train a model; writes runs/<name>-<time>/ and prints its path."""
    from sgdcli.cli import render
    from sgdcli.errors import UsageError
    from sgdcli.training.interrupts import graceful_stop

    if config is None and resume is None:
        raise UsageError("give a CONFIG file to train, or --resume RUN_DIR")
    if resume is not None and (name is not None or sweep or seeds is not None or run_dir is not None):
        raise UsageError("--resume continues one run as it was: it takes no --name, --sweep, --seeds or --run-dir")
    if sweep or seeds is not None or executor is not SweepExecutor.local or scheduler is not None:
        from sgdcli.cli.sweeping import sweep_command

        raise typer.Exit(sweep_command(config, set_, sweep, runs_dir, jobs, name, plot or Path("compare.png"), seeds,
                                       executor, scheduler, run_dir, force))
    if force or plot is not None:
        raise UsageError(f"{'--force' if force else '--plot'} is for a sweep's comparison plots (with --sweep or "
                         "--seeds); one run draws its own loss.png in its run directory")
    spin_for_file(config, set_, run=resume)  # the config is read (and any error reported) by api below
    from sgdcli import api
    reporter = render.TrainingReporter()
    try:
        with graceful_stop() as stop:
            if resume is not None:  # the config files are read inside: under mpiexec, by rank 0 alone
                result = api.resume(resume, config, set_, reporter=reporter, should_stop=stop)
            else:
                result = api.train(config, runs_dir=runs_dir, name=name, reporter=reporter, should_stop=stop,
                                   run_dir=run_dir, overrides=set_)
    finally:
        reporter.close()
    if result.message and result.status == "completed":  # a resume with nothing left to do
        render.warning(result.message)
    render.training_summary(result.summary, str(result.run_dir))
    if result.status == "diverged":
        raise typer.Exit(DIVERGED)
    if result.status == "interrupted":
        raise typer.Exit(INTERRUPTED if stop.signal in (None, signal.SIGINT) else 128 + stop.signal)


@app.command("eval")
@_boundary
def evaluate(
    target: Path = typer.Argument(..., help=TARGET_HELP),
    data: Optional[Path] = typer.Option(None, "--data", help="Evaluate on this file (same format as the training data)."),
    split: Optional[Split] = typer.Option(None, "--split", help="Which split of the run's own data (default: test when the config names test data, else val)."),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print the report as one JSON object."),
) -> None:
    """Loss and metrics of a trained model on held-out data."""
    load_numpy_for_run(target)  # before anything imports NumPy
    from sgdcli import api
    from sgdcli.cli import render

    report = api.evaluate(target, data=data, split=split.value if split else None)
    render.evaluation(report, as_json)


@app.command()
@_boundary
def predict(
    target: Path = typer.Argument(..., help=TARGET_HELP),
    data: Path = typer.Option(..., "--data", help="Rows to predict, in the training data's format (CSV columns by "
                                                  "name, the target column not needed; NPZ x; IDX images or folder)."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE", help="Write here (default: standard output)."),
    fmt: PredictFormat = typer.Option(PredictFormat.csv, "--format", help="csv (a header row) or json (an array of objects)."),
    keep: List[str] = typer.Option([], "--keep", metavar="COL", help="Copy this input column through, e.g. an id (repeatable)."),
    force: bool = FORCE,
) -> None:
    """Predict every row of a file, in batches.

    Writes the predicted class and one probability column per class (p_<class>), or the predicted
    values, for each input row."""
    load_numpy_for_run(target)  # before anything imports NumPy
    from sgdcli import api
    from sgdcli.cli import render

    count = api.predict(target, data, out=out, fmt=fmt.value, keep=keep, overwrite=force)
    if out is not None:
        render.wrote(out, f"{count} predictions")


@app.command()
@_boundary
def export(
    target: Path = typer.Argument(..., help=TARGET_HELP),
    fmt: ExportFormat = typer.Option(..., "--format", help="onnx (needs pip install 'sgdcli[onnx]'), torch "
                                                           "(safetensors in nn.Sequential layout) or npz."),
    out: Path = typer.Option(..., "--out", metavar="FILE", help="The file to write."),
    logits: bool = typer.Option(False, "--logits", metavar="", help="Classifiers: end with the logits, without the "
                                                                    "softmax/sigmoid."),
    force: bool = FORCE,
) -> None:
    """Write a trained model as ONNX, PyTorch or npz.

    The feature scaling, every layer (dropout removed) and a softmax/sigmoid output. For torch, prints
    the nn.Sequential that loads it."""
    from sgdcli import api
    from sgdcli.cli import render

    note = api.export(target, fmt.value, out, probabilities=not logits, overwrite=force)
    if fmt is ExportFormat.torch:
        render.plain(note)
        render.wrote(out, "state dict")
    else:
        render.wrote(out, note)


@app.command()
@_boundary
def schema(
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE", help="Write here (default: standard output)."),
    force: bool = FORCE,
) -> None:
    """Print the config's JSON Schema, for editors.

    Editors that read it complete and check config keys as you type (README: Editor support)."""
    from sgdcli import api
    from sgdcli.cli import render

    text = api.config_schema(out, overwrite=force)
    if out is None:
        render.plain(text)
    else:
        render.wrote(out, "the config's JSON Schema")


@app.command()
@_boundary
def compare(
    runs: List[Path] = typer.Argument(..., help="Run directories."),
    x: XAxis = typer.Option(XAxis.epoch, "--x", help="x axis of the plot (step and updates are the same)."),
    plot: Path = typer.Option(Path("compare.png"), "--plot", help="Where to write the overlaid loss curves (PNG)."),
    fmt: Format = typer.Option(Format.table, "--format", help="Table format."),
    band: bool = typer.Option(False, "--band", help="Runs that differ only in seed: one row (mean ± standard "
                                                    "deviation) and a mean curve with a min-max band."),
    force: bool = FORCE,
) -> None:
    """Side-by-side table of runs and overlaid loss curves.

    Only the config keys that differ between the runs are shown."""
    from sgdcli import api
    from sgdcli.cli import render

    result = api.compare(runs, x=x.value, plot=plot, band=band, overwrite=force)
    render.comparison(result.rows, result.differing, fmt.value, str(result.plot) if result.plot else None)
    if result.paths_plot is not None:
        render.err.print(f"paths: {result.paths_plot}")
    missing = [path for path in runs if not path.exists()]  # a typo, not a damaged run: compared, then exit 4
    if missing:
        from sgdcli.errors import RunDirError

        raise RunDirError("no such run directory", source=str(missing[0]))


@app.command()
@_boundary
def validate(
    config: Path = typer.Argument(..., help="Experiment config (YAML)."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP, metavar="KEY=VALUE"),
) -> None:
    """Check a config and its data as train would, without training.

    Runs every check train runs before its first update. Prints the resolved config (defaults filled in) and, on stderr, the sizes and memory training will use."""
    from sgdcli import api
    from sgdcli.cli import render
    from sgdcli.config.yamlio import dump_yaml

    resolved, checked = api.validate(api.load_config(config, set_))
    render.plain(dump_yaml(resolved))
    render.validation_plan(checked)


@app.command()
@_boundary
def gradcheck(
    config: Path = typer.Argument(..., help="Experiment config (YAML)."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP, metavar="KEY=VALUE"),
    samples: int = typer.Option(16, "--samples", min=1, help="Training samples in the checked batch."),
    eps: float = typer.Option(1e-6, "--eps", min=1e-12, max=1e-1, help="Finite-difference step."),
    max_entries: int = typer.Option(200, "--max-entries", min=1,
                                    help="Larger tensors: this many random entries plus a random direction."),
) -> None:
    """Check backprop against finite differences.

    Compares backprop with central finite differences (L(w+eps) - L(w-eps)) / 2 eps, in float64,
    for every parameter tensor of the config's model on a batch of its own data. Exit 1 on failure."""
    from sgdcli.cli import render
    experiment = config_and_numpy(config, set_)
    from sgdcli import api
    checks = api.gradcheck(experiment, samples=samples, eps=eps, max_entries=max_entries)
    render.gradient_checks(checks)
    if not all(check.passed for check in checks):
        raise typer.Exit(1)


@app.command()
@_boundary
def landscape(
    run: Path = typer.Argument(..., help="A run directory (or a checkpoint file)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="best (default), last, initial, epoch-NNNN or a path."),
    direction: str = typer.Option("init-to-final", "--direction",
                                  help="init-to-final, gradient, random, or one coefficient such as 0.weight[3,5]."),
    span: Optional[Tuple[float, float]] = typer.Option(None, "--span", help="From and to, in steps along the direction."),
    points: Optional[int] = typer.Option(None, "--points", help="Resolution: points along the line [default: 51] "
                                                                "or a side of the plane [default: 41]."),
    split: Split = typer.Option(Split.train, "--split", help="Which data the loss is measured on."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Use a seeded subset of this many samples."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random direction and the subset."),
    out: Optional[Path] = typer.Option(None, "--out", help="Prefix of the CSV and PNG (default: ./landscape-RUN-DIRECTION)."),
    plane: bool = typer.Option(False, "--plane",
                               help="The loss over a plane (Li et al. 2018) with the trajectory on it."),
    directions: str = typer.Option("random", "--directions", help="With --plane: random (filter-normalised) or pca."),
    force: bool = FORCE,
) -> None:
    """Loss along a line through weight space, or over a plane.

    From the initial to the final weights, along the negative gradient, a random
    direction, or one coefficient with the tangent at its value. Writes CSV + PNG. With --plane: the loss
    over a plane through the checkpoint (default last; 41 points a side on at most 2,000 samples)."""
    load_numpy_for_run(run)  # before anything imports NumPy
    from sgdcli import api
    from sgdcli.cli import render

    if plane:
        from sgdcli.cli import show

        show.plane(*api.landscape_plane(run, directions, checkpoint, 41 if points is None else points, span,
                                        split.value, samples, seed, out, force))
        return
    points = 51 if points is None else points
    result, csv_path, png_path = api.landscape(run, checkpoint, direction, span, points, split.value, samples, seed, out,
                                               force)
    render.landscape(result, csv_path, png_path)


@app.command()
@_boundary
def boundary(
    run: Path = typer.Argument(..., help="A run directory (or a checkpoint file) of a classifier on two features."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint",
                                             help="best (default), last, initial, epoch-NNNN or a path."),
    units: bool = typer.Option(False, "--units", help="Also a small map per first-layer unit (TensorFlow Playground)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Prefix of the PNG(s) [default: ./boundary-RUN]."),
    force: bool = FORCE,
) -> None:
    """Decision regions of a two-feature classifier.

    Over the plane of its two features, with the data; --units adds each first-layer unit's
    activation over the same plane."""
    from sgdcli import api
    from sgdcli.cli import show

    show.boundary(*api.boundary(run, checkpoint, units, out, force))


@app.command("lr-find")
@_boundary
def lr_find(
    config: Path = typer.Argument(..., help="Experiment config (YAML)."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP, metavar="KEY=VALUE"),
    start: float = typer.Option(1e-7, "--start", help="Step size of the first update."),
    end: float = typer.Option(10.0, "--end", help="Step size of the last update."),
    updates: int = typer.Option(100, "--updates", help="Updates, step size raised exponentially from start to end."),
    out: Path = typer.Option(Path("lr-find"), "--out", help="Folder for the test's own output folder."),
) -> None:
    """Learning-rate range test: suggested step sizes.

    Smith 2015, fastai's lr_find: raise the step size every update from the initial weights;
    writes the loss curve (CSV + PNG) and prints suggested step sizes."""
    from sgdcli.cli import show
    experiment = config_and_numpy(config, set_)
    from sgdcli import api
    show.lr_find(api.lr_find(experiment, start=start, end=end, updates=updates, out=out))


@app.command()
@_boundary
def optimizers() -> None:
    """Every optimizer's exact update rule.

    With its defaults, and where other libraries' conventions differ."""
    from sgdcli.analysis import reference
    from sgdcli.cli import render

    render.optimizer_reference(reference.optimizers(), reference.WEIGHT_DECAY, reference.EFFECTIVE_STEP)


def main() -> None:
    # Past a file-size limit, fail the write (EFBIG -> exit 6, previous files intact) instead of
    # letting SIGXFSZ kill the process mid-write.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # When the reader of our output goes away (`sgdcli eval RUN | head -1`, `--help | head`), end
    # silently as `yes | head` does, killed by SIGPIPE (the shell shows 141), instead of Python's
    # BrokenPipeError, which click and rich turn into exit status 1 (gradcheck's "mismatch"). The
    # write that fails is a print between updates, never a checkpoint: those are files, written whole.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    ranks.run(app)  # under mpiexec: rank 0 alone says what every process would, and no process is left waiting
